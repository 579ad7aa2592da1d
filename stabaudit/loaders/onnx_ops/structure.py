"""Translators of reshapes, Transpose, Pad, Concat, the selections (Slice, Split, Gather), the copies
(Expand, Tile), DepthToSpace/SpaceToDepth and the no-ops removed by aliasing."""

from __future__ import annotations

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.maps import padding_indices
from stabaudit.loaders.onnx_ops.common import (
    FLOAT_TYPES,
    Context,
    OnnxNode,
    Unsupported,
    broadcast_var,
    flatten_target,
    int_list,
    normalize_axis,
    register,
    reshape_target,
    squeeze_target,
    unsqueeze_target,
)


def axes_of(node: OnnxNode, ctx: Context, index: int) -> list[int] | None:
    """The axes of Squeeze/Unsqueeze/Pad: an attribute before opset 13, else constant input ``index``."""
    if "axes" in node.attrs:
        return int_list(node.attrs["axes"])
    return int_list(ctx.param(node, index, "axes", optional=True))


def target_shape(node: OnnxNode, ctx: Context, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The static output shape of a Flatten, Reshape, Squeeze or Unsqueeze of ``shape``."""
    match node.op_type:
        case "Flatten":
            return flatten_target(shape, int(node.attr("axis")))
        case "Reshape":
            target = node.attrs["shape"] if "shape" in node.attrs else ctx.param(node, 1, "shape")
            return reshape_target(shape, int_list(target) or [], allowzero=bool(node.attr("allowzero", 0)))
        case "Squeeze":
            return squeeze_target(shape, axes_of(node, ctx, 1))
        case _:  # Unsqueeze
            return unsqueeze_target(shape, axes_of(node, ctx, 1) or [])


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(node: OnnxNode, ctx: Context) -> None:
    shape = target_shape(node, ctx, ctx.shape(node.inputs[0]))
    ctx.emit(node, O.Reshape(shape=shape), [node.inputs[0]])


@register("Transpose")
def transpose(node: OnnxNode, ctx: Context) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    perm = int_list(node.attr("perm")) or list(reversed(range(rank)))
    ctx.emit(node, O.Transpose(perm=tuple(normalize_axis(p, rank) for p in perm)), [node.inputs[0]])


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice's clamping of one axis: negative start/end count from the end, then both are
    clamped to [0, dim] for a positive step and to [-1, dim - 1] for a negative one."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)


@register("Slice")
def slice_(node: OnnxNode, ctx: Context) -> None:
    """Slice with starts/ends/axes/steps as attributes (opset < 10) or constant inputs."""
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    if node.opset < 10:
        starts, ends = int_list(node.attr("starts")) or [], int_list(node.attr("ends")) or []
        axes, steps = int_list(node.attr("axes")), None
    else:
        starts = int_list(ctx.param(node, 1, "starts")) or []
        ends = int_list(ctx.param(node, 2, "ends")) or []
        axes = int_list(ctx.param(node, 3, "axes", optional=True))
        steps = int_list(ctx.param(node, 4, "steps", optional=True))
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ModelLoadError(f"Slice has {len(starts)} starts, {len(ends)} ends, {len(axes)} axes and {len(steps)} steps")
    begin, stop, stride = [0] * rank, list(shape), [1] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(axis, rank)
        if step == 0:
            raise ModelLoadError("Slice step 0")
        begin[a], stop[a] = slice_bounds(shape[a], start, end, step)
        stride[a] = step
    ctx.emit(node, O.Slice(starts=tuple(begin), ends=tuple(stop), steps=tuple(stride)), [node.inputs[0]])


@register("Identity")
def identity(node: OnnxNode, ctx: Context) -> None:
    ctx.alias(node, node.inputs[0])


@register("Dropout")
def dropout(node: OnnxNode, ctx: Context) -> None:
    """Dropout at inference is the identity; its mask output must be unused."""
    training = ctx.const(node.input(2))
    if (training is not None and bool(training.reshape(-1)[0])) or ctx.is_var(node.input(2)):
        raise Unsupported("Dropout(training mode)")
    if ctx.is_used(node.outputs[1] if len(node.outputs) > 1 else None):
        raise Unsupported("Dropout(mask output)")
    ctx.alias(node, node.inputs[0])


@register("Cast")
def cast(node: OnnxNode, ctx: Context) -> None:
    """A Cast between float types (float16, bfloat16, float, double) only changes rounding:
    removed (the engine computes in float32 or float64). A Cast of a variable to an integer,
    bool or 8-bit float type is outside the IR."""
    to = int(node.attr("to"))
    if to not in FLOAT_TYPES:
        raise Unsupported("Cast(variable to a non-float type)")
    ctx.alias(node, node.inputs[0])


@register("CastLike")
def cast_like(node: OnnxNode, ctx: Context) -> None:
    """CastLike of a variable to the type of another float variable: removed like Cast."""
    from onnx import helper

    target = ctx.const(node.inputs[1])
    if target is not None and helper.np_dtype_to_tensor_dtype(target.dtype) not in FLOAT_TYPES:
        raise Unsupported("CastLike(variable to a non-float type)")
    ctx.alias(node, node.inputs[0])


@register("Pad")
def pad(node: OnnxNode, ctx: Context) -> None:
    """Pad; pads from the attribute (before opset 11) or a constant input, and optional axes
    (opset 18) expanded to pads over every axis. Constant mode is a Pad; reflect, edge and wrap
    copy entries of the input (torch's reflection and replication padding, circular padding), a
    Gather per padded axis (an entry copied c times: norm sqrt(c), exact)."""
    mode = node.attr("mode") or "constant"
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"Pad(mode={mode})")
    rank = len(ctx.shape(node.inputs[0]))
    if node.opset < 11:
        pads = int_list(node.attr("pads") or node.attr("paddings")) or []
        value = float(node.attr("value") or 0.0)
    else:
        pads = int_list(ctx.param(node, 1, "pads")) or []
        constant = ctx.param(node, 2, "constant_value", optional=True)
        value = float(constant.reshape(-1)[0]) if constant is not None and constant.size else 0.0
    axes = [normalize_axis(a, rank) for a in (int_list(ctx.param(node, 3, "axes", optional=True)) or range(rank))]
    if len(pads) != 2 * len(axes):
        raise Unsupported("Pad(pads do not match the axes)")
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    if any(p < 0 for p in full):
        raise Unsupported("Pad(negative pads)")
    if mode == "constant":
        ctx.emit(node, O.Pad(pads=tuple(full), value=value), [node.inputs[0]])
        return
    shape = ctx.shape(node.inputs[0])
    padded = [a for a in range(rank) if full[a] or full[rank + a]]
    if not padded:
        ctx.alias(node, node.inputs[0])
        return
    x = node.inputs[0]
    for k, axis in enumerate(padded):
        indices = padding_indices(mode, shape[axis], full[axis], full[rank + axis])
        if indices is None:
            raise Unsupported(f"Pad(mode={mode} with pads {full[axis]}, {full[rank + axis]} for a dim of {shape[axis]})")
        last = k == len(padded) - 1
        x = ctx.emit(node, O.Gather(axis=axis, indices=indices), [x], tag=None if last else f"axis{axis}")


@register("Concat")
def concat(node: OnnxNode, ctx: Context) -> None:
    """Concat of variables; constants among them (class tokens) make it an isometric embedding plus
    a translation: each variable is zero-padded on the axis over the constants that follow it (and,
    for the first, those before it), the padded variables are concatenated, and an Affine shift
    adds the constants at their places (Lip = 1, as Pad)."""
    names = node.present_inputs
    if not any(ctx.is_const(name) for name in names):
        axis = normalize_axis(int(node.attr("axis")), len(ctx.shape(names[0])))
        ctx.emit(node, O.Concat(axis=axis), list(names))
        return
    first_var = next(name for name in names if ctx.is_var(name))
    shape = ctx.shape(first_var)
    rank = len(shape)
    axis = normalize_axis(int(node.attr("axis")), rank)
    lengths: list[int] = []
    for name in names:
        value = ctx.const(name)
        piece = tuple(value.shape) if value is not None else ctx.shape(name)
        if len(piece) != rank or any(piece[i] != shape[i] for i in range(rank) if i != axis):
            raise ModelLoadError(f"Concat input of shape {list(piece)} does not match {list(shape)} off axis {axis}")
        lengths.append(piece[axis])
    variables = [i for i, name in enumerate(names) if ctx.is_var(name)]
    padded: list[str] = []
    for k, i in enumerate(variables):
        begin = sum(lengths[:i]) if k == 0 else 0
        stop = variables[k + 1] if k + 1 < len(variables) else len(names)
        end = sum(lengths[i + 1:stop])
        if begin or end:
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = begin, end
            padded.append(ctx.emit(node, O.Pad(pads=tuple(pads), value=0.0), [names[i]], tag=f"embed{k}"))
        else:
            padded.append(ctx.var(names[i]))
    stacked = padded[0] if len(padded) == 1 else ctx.emit(node, O.Concat(axis=axis), padded, tag="stack")
    constants = [c for c in (ctx.const(n) for n in names) if c is not None]
    dtype = np.result_type(*(c.dtype for c in constants), np.float32)
    parts = []
    for name, length in zip(names, lengths, strict=True):
        value = ctx.const(name)
        piece_shape = [*shape[:axis], length, *shape[axis + 1:]]
        parts.append(np.zeros(piece_shape, dtype) if value is None else np.asarray(value, dtype))
    ctx.emit(node, O.Affine(shift=np.concatenate(parts, axis=axis)), [stacked])


@register("Split")
def split(node: OnnxNode, ctx: Context) -> None:
    """Split along an axis into consecutive parts: one IR Slice per output. The sizes come from the
    ``split`` attribute (opset < 13) or constant input, else equal parts; opset 18's
    ``num_outputs`` gives parts of ceil(dim / num_outputs) with a smaller last one."""
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    axis = normalize_axis(int(node.attr("axis", 0)), rank)
    dim = shape[axis]
    count = len(node.outputs)
    sizes = int_list(node.attr("split", None)) if node.opset < 13 else int_list(
        ctx.param(node, 1, "split", optional=True))
    if sizes is None:
        num = node.attr("num_outputs", None)
        if num is not None:
            chunk = -(-dim // int(num))
            sizes = [max(min(chunk, dim - k * chunk), 0) for k in range(int(num))]
        elif dim % count:
            raise ModelLoadError(f"Split of a dim of {dim} into {count} equal parts")
        else:
            sizes = [dim // count] * count
    if len(sizes) != count or sum(sizes) != dim or any(s < 0 for s in sizes):
        raise ModelLoadError(f"Split sizes {sizes} do not cut a dim of {dim} into {count} outputs")
    start = 0
    for k, size in enumerate(sizes):
        if node.outputs[k]:
            begin, stop = [0] * rank, list(shape)
            begin[axis], stop[axis] = start, start + size
            ctx.emit(node, O.Slice(starts=tuple(begin), ends=tuple(stop), steps=(1,) * rank), [node.inputs[0]],
                     output_index=k)
        start += size


@register("Gather")
def gather(node: OnnxNode, ctx: Context) -> None:
    """Gather of a variable by constant indices (negative ones count from the end). A constant
    table read at variable indices (an embedding lookup) is no function of a float input."""
    if not ctx.is_var(node.inputs[0]):
        raise Unsupported("Gather(variable indices)")
    indices = ctx.param(node, 1, "indices")
    shape = ctx.shape(node.inputs[0])
    axis = normalize_axis(int(node.attr("axis", 0)), len(shape))
    dim = shape[axis]
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ModelLoadError(f"Gather index out of range for a dim of {dim}")
    ctx.emit(node, O.Gather(axis=axis, indices=np.where(idx < 0, idx + dim, idx)), [node.inputs[0]])


@register("GatherND")
def gather_nd(node: OnnxNode, ctx: Context) -> None:
    """GatherND of a variable by constant indices [..., k] (negative ones count from the end),
    batch_dims b: the data's b batch axes and next k axes flattened into one (Reshape), then a
    Gather of the flat positions of each index (with its batch position): the same entries in the
    same order, as torch exports adaptive pooling with uneven windows."""
    data = node.inputs[0]
    if not ctx.is_var(data):
        raise Unsupported("GatherND(variable indices)")
    shape = ctx.shape(data)
    idx = np.asarray(ctx.param(node, 1, "indices"), dtype=np.int64)
    b = int(node.attr("batch_dims", 0))
    k = idx.shape[-1] if idx.ndim else 0
    if idx.ndim < 1 or b < 0 or b + k > len(shape) or tuple(idx.shape[:b]) != tuple(shape[:b]):
        raise ModelLoadError(f"GatherND indices of shape {list(idx.shape)} for data of shape {list(shape)}")
    dims = np.array(shape[b:b + k], dtype=np.int64)
    if idx.size and (np.any(idx < -dims) or np.any(idx >= dims)):
        raise ModelLoadError("GatherND index out of range")
    idx = np.where(idx < 0, idx + dims, idx)
    batch = list(np.indices(idx.shape[:-1])[:b])  # each index's position on the batch axes
    flat = np.ravel_multi_index((*batch, *np.moveaxis(idx, -1, 0)), tuple(shape[:b + k])) if b + k else np.zeros(idx.shape[:-1], np.int64)
    merged = ctx.emit(node, O.Reshape(shape=(int(np.prod(shape[:b + k], dtype=np.int64)), *shape[b + k:])), [data], tag="flat")
    ctx.emit(node, O.Gather(axis=0, indices=np.asarray(flat, dtype=np.int64)), [merged])


@register("GatherElements")
def gather_elements(node: OnnxNode, ctx: Context) -> None:
    """GatherElements of a variable by constant indices along ``axis``: out[i] = x[i with its axis
    coordinate replaced by indices[i]], one Gather of the flattened input by the flat positions,
    in the indices' shape."""
    data = node.inputs[0]
    if not ctx.is_var(data):
        raise Unsupported("GatherElements(variable indices)")
    shape = ctx.shape(data)
    axis = normalize_axis(int(node.attr("axis", 0)), len(shape))
    idx = np.asarray(ctx.param(node, 1, "indices"), dtype=np.int64)
    if idx.ndim != len(shape) or any(i > d for a, (i, d) in enumerate(zip(idx.shape, shape, strict=True)) if a != axis):
        raise ModelLoadError(f"GatherElements indices of shape {list(idx.shape)} for data of shape {list(shape)}")
    if idx.size and (idx.min() < -shape[axis] or idx.max() >= shape[axis]):
        raise ModelLoadError(f"GatherElements index out of range for a dim of {shape[axis]}")
    coords = [np.asarray(c) for c in np.indices(idx.shape)]
    coords[axis] = np.where(idx < 0, idx + shape[axis], idx)
    flat = np.asarray(np.ravel_multi_index(tuple(coords), tuple(shape)), dtype=np.int64)
    merged = ctx.emit(node, O.Reshape(shape=(int(np.prod(shape, dtype=np.int64)),)), [data], tag="flat")
    ctx.emit(node, O.Gather(axis=0, indices=flat), [merged])


@register("Tile")
def tile(node: OnnxNode, ctx: Context) -> None:
    """Tile by constant repeats (opset >= 6)."""
    if node.opset < 6:
        raise Unsupported("Tile(opset < 6)")
    repeats = int_list(ctx.param(node, 1, "repeats")) or []
    if len(repeats) != len(ctx.shape(node.inputs[0])) or any(r < 0 for r in repeats):
        raise ModelLoadError(f"Tile repeats {repeats} do not match the rank")
    ctx.emit(node, O.Tile(repeats=tuple(repeats)), [node.inputs[0]])


@register("Expand")
def expand(node: OnnxNode, ctx: Context) -> None:
    """Expand to a constant shape (numpy broadcasting): a Reshape adding leading 1s, then a Tile of
    the size-1 axes that grow (each entry copied prod(repeats) times)."""
    shape = ctx.shape(node.inputs[0])
    target = int_list(ctx.param(node, 1, "shape")) or []
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(tuple(shape), tuple(target)))
    except ValueError as exc:
        raise ModelLoadError(f"Expand of {list(shape)} to {target}: {exc}") from exc
    if out == tuple(shape):
        ctx.alias(node, node.inputs[0])
        return
    broadcast_var(node, ctx, node.inputs[0], out, tag=None)


@register("DepthToSpace", "SpaceToDepth")
def depth_to_space(node: OnnxNode, ctx: Context) -> None:
    """DepthToSpace (DCR or CRD) and SpaceToDepth as Reshape, Transpose, Reshape: a permutation of
    the entries (ONNX's reference definition)."""
    shape = ctx.shape(node.inputs[0])
    if len(shape) != 4:
        raise Unsupported(f"{node.op_type}(rank {len(shape)})")
    n, c, h, w = shape
    b = int(node.attr("blocksize"))
    mode = node.attr("mode", "DCR") or "DCR"
    if mode not in ("DCR", "CRD"):
        raise ModelLoadError(f"{node.op_type} mode {mode!r}")
    if node.op_type == "DepthToSpace":
        if b <= 0 or c % (b * b):
            raise ModelLoadError(f"DepthToSpace of {c} channels by blocksize {b}")
        if mode == "DCR":
            split_shape, perm = (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)
        else:
            split_shape, perm = (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3)
        final = (n, c // (b * b), h * b, w * b)
    else:
        if b <= 0 or h % b or w % b:
            raise ModelLoadError(f"SpaceToDepth of {h}x{w} by blocksize {b}")
        split_shape = (n, c, h // b, b, w // b, b)
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
        final = (n, c * b * b, h // b, w // b)
    blocks = ctx.emit(node, O.Reshape(shape=split_shape), [node.inputs[0]], tag="blocks")
    moved = ctx.emit(node, O.Transpose(perm=perm), [blocks], tag="move")
    ctx.emit(node, O.Reshape(shape=final), [moved])
