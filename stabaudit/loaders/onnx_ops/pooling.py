"""Translators of MaxPool, AveragePool and the global pools."""

from __future__ import annotations

from collections.abc import Sequence

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    Window,
    register,
    resolve_window,
)


def _pool_window(node: OnnxNode, ctx: Context) -> tuple[Window, bool]:
    """The window and ceil_mode of a pool; refuses a ceil-mode window that starts in the end
    padding, which onnxruntime drops but a pool over the explicitly padded input keeps."""
    spatial = ctx.shape(node.inputs[0])[2:]
    w = resolve_window(node, spatial)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    if ceil_mode and _last_window_starts_in_padding(spatial, w):
        raise Unsupported(f"{node.op_type}(ceil_mode window starting in the padding)")
    return w, ceil_mode


def _last_window_starts_in_padding(spatial: Sequence[int], w: Window) -> bool:
    n = len(spatial)
    for i, size in enumerate(spatial):
        begin, end = w.pads[i], w.pads[n + i]
        span = (w.kernel[i] - 1) * w.dilations[i] + 1
        count = -(-(size + begin + end - span) // w.strides[i]) + 1  # ceil mode
        if size + begin <= (count - 1) * w.strides[i] < size + begin + end:
            return True
    return False


@register("MaxPool")
def max_pool(node: OnnxNode, ctx: Context) -> None:
    if ctx.is_used(node.outputs[1] if len(node.outputs) > 1 else None):
        raise Unsupported("MaxPool(indices output)")
    w, ceil_mode = _pool_window(node, ctx)
    op = O.MaxPool(kernel=w.kernel, strides=w.strides, pads=w.pads, dilations=w.dilations, ceil_mode=ceil_mode)
    ctx.emit(node, op, [node.inputs[0]])


@register("AveragePool")
def average_pool(node: OnnxNode, ctx: Context) -> None:
    w, ceil_mode = _pool_window(node, ctx)
    if any(d != 1 for d in w.dilations):
        raise Unsupported("AveragePool(dilations)")
    op = O.AvgPool(kernel=w.kernel, strides=w.strides, pads=w.pads, dilations=w.dilations, ceil_mode=ceil_mode,
                   count_include_pad=bool(node.attr("count_include_pad", 0)))
    ctx.emit(node, op, [node.inputs[0]])


@register("GlobalAveragePool")
def global_average_pool(node: OnnxNode, ctx: Context) -> None:
    ctx.emit(node, O.GlobalAvgPool(), [node.inputs[0]])


@register("GlobalMaxPool")
def global_max_pool(node: OnnxNode, ctx: Context) -> None:
    ctx.emit(node, O.GlobalMaxPool(), [node.inputs[0]])
