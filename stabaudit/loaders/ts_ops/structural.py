"""Translators of TorchScript's structural ops: reshapes, transposes, concat, pad, selections (slice,
select, index_select, and the lists of parts of split, chunk and unbind), copies (expand, repeat),
pixel (un)shuffle, no-op casts, constants of the input's shape (zeros_like, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.maps import padding_indices, roll_indices
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    const_array,
    is_float_dtype,
    norm_axis,
    translates,
)


@translates(
    "aten::flatten", "aten::view", "aten::reshape", "aten::squeeze", "aten::unsqueeze",
    "aten::view_as", "aten::reshape_as", "aten::unflatten", "aten::expand_as", "aten::expand",
)
def reshape(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """Every reshape-like op becomes a Reshape to torch's own static output shape."""
    x = node.var(0)
    shape = node.out_shape(0)
    if node.base in ("expand", "expand_as"):
        return [_broadcast(ctx, x, shape)]
    if shape == x.shape:
        return [x]
    return [ctx.emit(O.Reshape(shape=shape), [x])]


@translates("aten::contiguous", "aten::detach", "aten::clone", "aten::alias", "aten::type_as")
def identity(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [node.var(0)]


@translates("aten::to")
def to(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """Casts between float types (float16, bfloat16, float32, float64) and device moves are no-ops
    for the IR: they only change rounding (SA902 compares at the precision the model runs in)."""
    dtype = node.arg("dtype")
    if not is_float_dtype(dtype):
        raise Unsupported(f"cast to dtype {dtype}")
    return [node.var(0)]


@translates(
    "aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::feature_alpha_dropout",
)
def dropout(ctx: Context, node: SourceNode) -> Sequence[Any]:
    if node.arg("train") is not False:
        raise Unsupported("training mode")
    ctx.note("dropout removed (eval mode)")
    return [node.var(0)]


@translates("aten::t", "aten::transpose", "aten::permute", "aten::numpy_T")
def transpose(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    perm = list(range(x.rank))
    if node.base in ("t", "numpy_T"):
        perm.reverse()
    elif node.base == "transpose":
        i, j = norm_axis(int(node.arg(1)), x.rank), norm_axis(int(node.arg(2)), x.rank)
        perm[i], perm[j] = perm[j], perm[i]
    else:
        perm = [norm_axis(int(d), x.rank) for d in node.arg(1)]
    if perm == sorted(perm):
        return [x]
    return [ctx.emit(O.Transpose(perm=tuple(perm)), [x])]


def _vars(value: Any) -> list[Var]:
    items = list(value)
    if not all(isinstance(v, Var) for v in items):
        raise Unsupported("an operand is a constant")
    return items


@translates("aten::cat", "aten::concat", "aten::concatenate")
def cat(ctx: Context, node: SourceNode) -> Sequence[Any]:
    parts = _vars(node.arg(0))
    if len(parts) == 1:
        return parts
    axis = norm_axis(int(node.arg("dim", 0)), parts[0].rank)
    return [ctx.emit(O.Concat(axis=axis), parts)]


@translates("aten::stack")
def stack(ctx: Context, node: SourceNode) -> Sequence[Any]:
    parts = _vars(node.arg(0))
    rank = parts[0].rank + 1
    axis = norm_axis(int(node.arg("dim", 0)), rank)
    lifted = [
        ctx.emit(O.Reshape(shape=p.shape[:axis] + (1,) + p.shape[axis:]), [p], role=f"unsqueeze{i}")
        for i, p in enumerate(parts)
    ]
    if len(lifted) == 1:
        return lifted
    return [ctx.emit(O.Concat(axis=axis), lifted)]


def _pad_amounts(x: Var, spec: Sequence[int]) -> tuple[list[int], list[int]]:
    """torch's pad list (last axis first: begin, end, ...) -> the pads before and after every axis."""
    if len(spec) % 2 or len(spec) // 2 > x.rank:
        raise Unsupported(f"pad list {list(spec)}")
    if any(p < 0 for p in spec):
        raise Unsupported("negative padding (cropping)")
    begins, ends = [0] * x.rank, [0] * x.rank
    for k in range(len(spec) // 2):
        axis = x.rank - 1 - k
        begins[axis], ends[axis] = int(spec[2 * k]), int(spec[2 * k + 1])
    return begins, ends


def _pad(ctx: Context, x: Var, spec: Sequence[int], value: float) -> Var:
    """Constant padding: IR pads over every axis."""
    begins, ends = _pad_amounts(x, spec)
    if not any(begins) and not any(ends):
        return x
    return ctx.emit(O.Pad(pads=tuple(begins + ends), value=value), [x])


@translates("aten::constant_pad_nd")
def constant_pad(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_pad(ctx, node.var(0), node.arg(1), as_float(node.arg("value", 0), what="value"))]


_COPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # torch's name -> ir.maps'


def _copy_pad(ctx: Context, x: Var, spec: Sequence[int], mode: str) -> Var:
    """Reflection, replication or circular padding (torch's pad list, last axis first): each
    padded entry copies an entry of x, a Gather per padded axis."""
    begins, ends = _pad_amounts(x, spec)
    y = x
    for axis, (before, after) in reversed(list(enumerate(zip(begins, ends, strict=True)))):
        if before or after:
            indices = padding_indices(_COPY_MODES[mode], x.shape[axis], before, after)
            if indices is None:
                raise Unsupported(f"mode {mode!r} with padding {before}, {after} for a dim of {x.shape[axis]}")
            y = ctx.emit(O.Gather(axis=axis, indices=indices), [y], role=f"axis{axis}")
    return y


@translates("aten::pad")
def pad(ctx: Context, node: SourceNode) -> Sequence[Any]:
    mode = node.arg("mode", "constant")
    if mode in _COPY_MODES:
        return [_copy_pad(ctx, node.var(0), node.arg(1), mode)]
    if mode != "constant":
        raise Unsupported(f"mode {mode!r}")
    value = node.arg("value")
    return [_pad(ctx, node.var(0), node.arg(1), 0.0 if value is None else as_float(value))]


@translates("aten::reflection_pad1d", "aten::reflection_pad2d", "aten::replication_pad1d", "aten::replication_pad2d")
def copy_pad(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """The padding ops of archives traced before aten::pad took the mode."""
    return [_copy_pad(ctx, node.var(0), node.arg(1), "reflect" if "reflection" in node.kind else "replicate")]


@translates("aten::roll")
def roll(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.roll: a Gather per rolled axis (a permutation of the entries: norm 1); without dims,
    of the flattened tensor, reshaped back."""
    x = node.var(0)
    shifts = node.arg(1)
    dims = node.arg(2, [])
    shifts = [int(shifts)] if isinstance(shifts, int) else [int(s) for s in shifts]
    dims = [int(dims)] if isinstance(dims, int) else [int(d) for d in dims or []]
    if not dims:
        if len(shifts) != 1:
            raise Unsupported(f"shifts {shifts} without dims")
        flat = ctx.emit(O.Reshape(shape=(int(np.prod(x.shape, dtype=np.int64)),)), [x], role="flat")
        rolled = ctx.emit(O.Gather(axis=0, indices=roll_indices(flat.shape[0], shifts[0])), [flat], role="rolled")
        return [ctx.emit(O.Reshape(shape=x.shape), [rolled])]
    if len(dims) != len(shifts):
        raise Unsupported(f"shifts {shifts} for dims {dims}")
    y = x
    for shift, dim in zip(shifts, dims, strict=True):
        axis = norm_axis(dim, x.rank)
        if shift % max(x.shape[axis], 1):
            y = ctx.emit(O.Gather(axis=axis, indices=roll_indices(x.shape[axis], shift)), [y], role=f"axis{axis}")
    return [y]


def _broadcast(ctx: Context, x: Var, shape: tuple[int, ...]) -> Var:
    """x broadcast to ``shape``: a Reshape adding leading 1s, then a Tile of the size-1 axes that grow."""
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    full = (1,) * (len(shape) - x.rank) + tuple(x.shape)
    if len(full) != len(shape) or any(f != s and f != 1 for f, s in zip(full, shape, strict=True)):
        raise Unsupported(f"broadcasting {list(x.shape)} to {list(shape)}")
    lifted = x if full == x.shape else ctx.emit(O.Reshape(shape=full), [x], role="rank")
    repeats = tuple(s // f if f == 1 else 1 for f, s in zip(full, shape, strict=True))
    return lifted if all(r == 1 for r in repeats) else ctx.emit(O.Tile(repeats=repeats), [lifted])


@translates("aten::repeat")
def repeat(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """Tensor.repeat: leading new axes (a Reshape), then a Tile."""
    x = node.var(0)
    repeats = tuple(int(r) for r in node.arg(1))
    if len(repeats) < x.rank or any(r < 0 for r in repeats):
        raise Unsupported(f"repeats {list(repeats)} for rank {x.rank}")
    full = (1,) * (len(repeats) - x.rank) + tuple(x.shape)
    lifted = x if full == x.shape else ctx.emit(O.Reshape(shape=full), [x], role="rank")
    if all(r == 1 for r in repeats):
        return [lifted]
    return [ctx.emit(O.Tile(repeats=repeats), [lifted])]


@translates("aten::slice")
def slice_(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x[..., start:end:step, ...] on one axis, Python's clamping (torch's steps are positive)."""
    x = node.var(0)
    axis = norm_axis(int(node.arg(1, 0)), x.rank)
    start, end, step = node.arg(2), node.arg(3), node.arg(4, 1)
    step = 1 if step is None else int(step)
    if step <= 0:
        raise Unsupported(f"step {step}")
    kept = range(x.shape[axis])[slice(None if start is None else int(start), None if end is None else int(end), step)]
    if kept.start == 0 and kept.stop >= x.shape[axis] and step == 1:
        return [x]
    starts, ends, steps = [0] * x.rank, list(x.shape), [1] * x.rank
    starts[axis], ends[axis], steps[axis] = kept.start, max(kept.stop, kept.start), step
    return [ctx.emit(O.Slice(starts=tuple(starts), ends=tuple(ends), steps=tuple(steps)), [x])]


def _gather(ctx: Context, x: Var, axis: int, index: np.ndarray) -> Var:
    dim = x.shape[axis]
    idx = np.asarray(index).astype(np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise Unsupported(f"index out of range for a dim of {dim}")
    return ctx.emit(O.Gather(axis=axis, indices=np.where(idx < 0, idx + dim, idx)), [x])


@translates("aten::select")
def select(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x.select(dim, i) (x[:, i]): a Gather by a scalar index, which drops the axis."""
    x = node.var(0)
    return [_gather(ctx, x, norm_axis(int(node.arg(1)), x.rank), np.asarray(int(node.arg(2))))]


def _parts(ctx: Context, x: Var, axis: int, sizes: Sequence[int]) -> list[Var]:
    """One Slice per part of consecutive sizes along ``axis`` (as ONNX Split): a list of Vars."""
    dim = x.shape[axis]
    if any(size < 0 for size in sizes) or sum(sizes) != dim:
        raise Unsupported(f"parts of sizes {list(sizes)} for a dim of {dim}")
    out, start = [], 0
    for i, size in enumerate(sizes):
        if size == dim:
            out.append(x)
        else:
            starts, ends, steps = [0] * x.rank, list(x.shape), [1] * x.rank
            starts[axis], ends[axis] = start, start + size
            out.append(ctx.emit(O.Slice(starts=tuple(starts), ends=tuple(ends), steps=tuple(steps)), [x],
                                role=f"part{i}"))
        start += size
    return out


@translates("aten::split", "aten::split_with_sizes", "aten::unsafe_split", "aten::unsafe_split_with_sizes")
def split(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.split by one size (parts of that size, the last one smaller) or by a list of sizes:
    one output, the list of the parts (prim::ListUnpack or __getitem__ reads them)."""
    x = node.var(0)
    axis = norm_axis(int(node.arg("dim", 0)), x.rank)
    dim = x.shape[axis]
    size = node.arg(1)
    if isinstance(size, int):
        if size <= 0 or dim == 0:
            raise Unsupported(f"split size {size} of a dim of {dim}")
        sizes = [min(size, dim - start) for start in range(0, dim, size)]
    else:
        sizes = [int(v) for v in size]
    return [_parts(ctx, x, axis, sizes)]


@translates("aten::chunk", "aten::unsafe_chunk")
def chunk(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.chunk(x, n, dim): parts of ceil(dim / n) entries, the last one smaller (possibly
    fewer than n parts, as torch gives)."""
    x = node.var(0)
    axis = norm_axis(int(node.arg("dim", 0)), x.rank)
    dim, chunks = x.shape[axis], int(node.arg(1))
    if chunks <= 0 or dim == 0:
        raise Unsupported(f"{chunks} chunks of a dim of {dim}")
    size = -(-dim // chunks)
    return [_parts(ctx, x, axis, [min(size, dim - start) for start in range(0, dim, size)])]


@translates("aten::unbind")
def unbind(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.unbind(x, dim): the list of x.select(dim, i), each a Gather by a scalar index."""
    x = node.var(0)
    axis = norm_axis(int(node.arg("dim", 0)), x.rank)
    return [[_gather(ctx, x, axis, np.asarray(i)) for i in range(x.shape[axis])]]


@translates("aten::index_select")
def index_select(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x.index_select(dim, index) with a constant index (a buffer): a Gather."""
    x = node.var(0)
    index = const_array(node.arg(2), what="index")
    if index.ndim != 1:
        raise Unsupported("an index that is not 1-D")
    return [_gather(ctx, x, norm_axis(int(node.arg(1)), x.rank), index)]


@translates("aten::pixel_shuffle", "aten::pixel_unshuffle")
def pixel_shuffle(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """pixel_shuffle (ONNX DepthToSpace CRD) and pixel_unshuffle as Reshape, Transpose, Reshape:
    a permutation of the entries."""
    x = node.var(0)
    if x.rank != 4:
        raise Unsupported(f"rank {x.rank}")
    n, c, h, w = x.shape
    r = int(node.arg(1))
    if node.base == "pixel_shuffle":
        if r <= 0 or c % (r * r):
            raise Unsupported(f"{c} channels by factor {r}")
        split, perm = (n, c // (r * r), r, r, h, w), (0, 1, 4, 2, 5, 3)
    else:
        if r <= 0 or h % r or w % r:
            raise Unsupported(f"{h}x{w} by factor {r}")
        split, perm = (n, c, h // r, r, w // r, r), (0, 1, 3, 5, 2, 4)
    blocks = ctx.emit(O.Reshape(shape=split), [x], role="blocks")
    moved = ctx.emit(O.Transpose(perm=perm), [blocks], role="move")
    return [ctx.emit(O.Reshape(shape=node.out_shape(0)), [moved])]


_FILLS = {"zeros_like": 0.0, "new_zeros": 0.0, "ones_like": 1.0, "new_ones": 1.0}


@translates("aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::new_zeros", "aten::new_ones",
            "aten::new_full")
def filled(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """A tensor of the input's shape (or of given sizes) filled with one number: it depends on the
    input's shape only, which is static, so it is a constant (Lipschitz constant 0 in the input)."""
    import torch

    shape = node.out_shape(0)
    value = _FILLS.get(node.base, node.arg("fill_value"))
    dtype = node.arg("dtype")
    if not isinstance(value, int | float) or isinstance(value, bool) or not is_float_dtype(dtype):
        raise Unsupported(f"a fill of {value!r} as {dtype}")
    # float32 whatever float type is asked: the value is exact in each, and the IR computes in float
    return [torch.full(shape, float(value), dtype=torch.float32)]


@translates("aten::masked_fill")
def masked_fill(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """masked_fill(x, mask, value) with a constant mask and value: a Where with a constant condition
    (exact selection; a value of -inf before a softmax, an attention mask, becomes the softmax's
    mask: ``ir.passes.fuse_masked_softmax``)."""
    x = node.var(0)
    mask = node.arg(1)
    if isinstance(mask, Var):
        raise Unsupported("a mask computed from the input")
    value = node.arg(2)
    if isinstance(value, Var):
        raise Unsupported("a fill value computed from the input")
    cond = const_array(mask, what="mask").astype(bool)
    if cond.ndim > x.rank or tuple(np.broadcast_shapes(cond.shape, x.shape)) != tuple(x.shape):
        raise Unsupported(f"a mask of shape {list(cond.shape)} that does not broadcast to {list(x.shape)}")
    fill = np.asarray(const_array(value, what="value") if not isinstance(value, int | float) else value, dtype=np.float64)
    if fill.size != 1:
        raise Unsupported("a fill value that is not one number")
    return [ctx.emit(O.Where(mask=cond, when_true=fill.reshape(())), [x])]
