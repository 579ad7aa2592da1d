"""Translators of reshapes, Transpose, Pad, Concat and the no-ops removed by aliasing."""

from __future__ import annotations

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    FLOAT_TYPES,
    Context,
    OnnxNode,
    Unsupported,
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
    """Constant-mode Pad; pads from the attribute (before opset 11) or a constant input, and
    optional axes (opset 18) expanded to pads over every axis."""
    mode = node.attr("mode") or "constant"
    if mode != "constant":
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
    ctx.emit(node, O.Pad(pads=tuple(full), value=value), [node.inputs[0]])


@register("Concat")
def concat(node: OnnxNode, ctx: Context) -> None:
    names = node.present_inputs
    if any(ctx.is_const(name) for name in names):
        raise Unsupported("Concat(variable with constant)")
    axis = normalize_axis(int(node.attr("axis")), len(ctx.shape(names[0])))
    ctx.emit(node, O.Concat(axis=axis), list(names))
