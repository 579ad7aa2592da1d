"""Translators of TorchScript's structural ops: reshapes, transposes, concat, pad, no-op casts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
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
        if shape != x.shape:  # only the no-op expand: repeating entries is not a reshape
            raise Unsupported(f"broadcasting {list(x.shape)} to {list(shape)}")
        return [x]
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


def _pad(ctx: Context, x: Var, spec: Sequence[int], value: float) -> Var:
    """torch's pad list (last axis first: begin, end, ...) -> IR pads over every axis."""
    if len(spec) % 2 or len(spec) // 2 > x.rank:
        raise Unsupported(f"pad list {list(spec)}")
    if any(p < 0 for p in spec):
        raise Unsupported("negative padding (cropping)")
    begins, ends = [0] * x.rank, [0] * x.rank
    for k in range(len(spec) // 2):
        axis = x.rank - 1 - k
        begins[axis], ends[axis] = int(spec[2 * k]), int(spec[2 * k + 1])
    if not any(begins) and not any(ends):
        return x
    return ctx.emit(O.Pad(pads=tuple(begins + ends), value=value), [x])


@translates("aten::constant_pad_nd")
def constant_pad(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_pad(ctx, node.var(0), node.arg(1), as_float(node.arg("value", 0), what="value"))]


@translates("aten::pad")
def pad(ctx: Context, node: SourceNode) -> Sequence[Any]:
    mode = node.arg("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode {mode!r}")
    value = node.arg("value")
    return [_pad(ctx, node.var(0), node.arg(1), 0.0 if value is None else as_float(value))]
