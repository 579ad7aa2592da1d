"""Translators of Conv and ConvTranspose (1-D, 2-D, 3-D) with constant weights."""

from __future__ import annotations

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    Window,
    int_list,
    register,
    resolve_window,
)


def _weights(node: OnnxNode, ctx: Context) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """The constant weight and bias, and the spatial input shape they apply to."""
    weight = ctx.param(node, 1, "weight")
    bias = ctx.param(node, 2, "bias", optional=True)
    assert weight is not None
    spatial = ctx.shape(node.inputs[0])[2:]
    if weight.ndim != len(spatial) + 2 or len(spatial) not in (1, 2, 3):
        raise Unsupported(f"{node.op_type}({weight.ndim - 2}-D kernel on a {len(spatial)}-D input)")
    return weight, bias, spatial


@register("Conv")
def conv(node: OnnxNode, ctx: Context) -> None:
    weight, bias, spatial = _weights(node, ctx)
    w = resolve_window(node, spatial, weight.shape[2:])
    op = O.Conv(weight=weight, bias=bias, strides=w.strides, pads=w.pads, dilations=w.dilations,
                groups=int(node.attr("group")))
    _bind(node, ctx, ctx.emit(node, op, [node.inputs[0]]), bias is not None)


def _bind(node: OnnxNode, ctx: Context, output: str, has_bias: bool) -> None:
    ctx.bind(output, "weight", [ctx.term(node, 1, "weight")])
    if has_bias:
        ctx.bind(output, "bias", [ctx.term(node, 2, "bias")])


@register("ConvTranspose")
def conv_transpose(node: OnnxNode, ctx: Context) -> None:
    weight, bias, spatial = _weights(node, ctx)
    n = len(spatial)
    w = resolve_window(node, spatial, weight.shape[2:], auto_pad=False)
    output_padding = tuple(int_list(node.attr("output_padding")) or [0] * n)
    if len(output_padding) != n:
        raise ModelLoadError("output_padding does not match the spatial rank")
    pads, output_padding = _transpose_pads(node, spatial, w, output_padding)
    op = O.ConvTranspose(weight=weight, bias=bias, strides=w.strides, pads=pads, dilations=w.dilations,
                         groups=int(node.attr("group")), output_padding=output_padding)
    _bind(node, ctx, ctx.emit(node, op, [node.inputs[0]]), bias is not None)


def _transpose_pads(node: OnnxNode, spatial: tuple[int, ...], w: Window,
                    output_padding: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Explicit pads and output_padding of a ConvTranspose with output_shape or auto_pad.

    The full transposed convolution has s*(in-1) + output_padding + (k-1)*d + 1 entries per axis;
    a requested size (output_shape, or in*s for SAME_*) leaves total_padding to crop, split in
    halves with the odd one at the end for SAME_UPPER and at the beginning otherwise (ONNX spec).
    A requested size beyond the full one appends entries that only the bias reaches, as
    onnxruntime does: that is extra output_padding.
    """
    auto_pad = node.attr("auto_pad") or "NOTSET"
    n = len(spatial)
    requested = int_list(node.attr("output_shape"))
    if requested is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        requested = [size * s for size, s in zip(spatial, w.strides, strict=True)]
    if requested is None:
        return ((0,) * (2 * n) if auto_pad == "VALID" else w.pads), output_padding
    begin, end, extra = [], [], list(output_padding)
    for i, size in enumerate(requested[-n:]):
        full = w.strides[i] * (spatial[i] - 1) + output_padding[i] + (w.kernel[i] - 1) * w.dilations[i] + 1
        total = full - size
        small, large = total // 2, total - total // 2
        if total < 0:
            small = large = 0
            extra[i] -= total
            if extra[i] >= max(w.strides[i], w.dilations[i]):
                raise Unsupported("ConvTranspose(output_shape far beyond the full transposed convolution)")
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return (*begin, *end), tuple(extra)
