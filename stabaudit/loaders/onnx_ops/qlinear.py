"""Translators of onnxruntime's QOperator-format operators beyond QLinearConv and QLinearMatMul
(domain com.microsoft, as `quantize_static(quant_format=QOperator)` writes a CNN): QLinearAdd,
QLinearMul, QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid,
QLinearLeakyRelu and QLinearSoftmax. Each is quantize(f(dequantize(inputs))) for the float
operator f it stands for: the inputs dequantized (the quantized value itself when they come from
a quantization with the same steps), f translated as the standard operator, and the result
quantized by the output's steps (a Quantize node: the clip and the rounding error)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stabaudit.loaders.onnx_ops.common import TRANSLATORS, Context, OnnxNode, Unsupported, register
from stabaudit.loaders.onnx_ops.quantization import (
    _dequantize_constant,
    _dequantized,
    _quantize,
    _steps,
)

_MS = "com.microsoft."


def _operand(node: OnnxNode, ctx: Context, index: int, scale_index: int, zp_index: int, tag: str) -> str:
    """Input ``index`` dequantized by its per-tensor steps: an IR value, or for a constant integer
    input a new float64 constant (``<output>/<tag>``)."""
    name = node.inputs[index]
    if ctx.is_const(name):
        value = ctx.const(name)
        assert value is not None
        st = _steps(node, ctx, scale_index, zp_index, np.ndim(value), None, need_range=False)
        constant = f"{node.outputs[0]}/{tag}"
        ctx.constants[constant] = _dequantize_constant(value, st)
        return constant
    st = _steps(node, ctx, scale_index, zp_index, len(ctx.shape(name)), None, need_range=False)
    return _dequantized(node, ctx, name, st, tag=tag)


def _float_op(node: OnnxNode, ctx: Context, op_type: str, inputs: Sequence[str], attrs: Mapping[str, Any],
              opset: int | None = None) -> str:
    """The standard ONNX operator ``op_type`` on the dequantized ``inputs``, translated by its own
    translator; the IR value of its result."""
    fake = OnnxNode(op_type=op_type, name=f"{node.name}/{op_type}", inputs=tuple(inputs),
                    outputs=(f"{node.outputs[0]}/float",), attrs=dict(attrs), opset=opset or node.opset,
                    source_op=node.source_op or node.op_type)
    TRANSLATORS.get(op_type)(fake, ctx)
    return ctx.var(fake.outputs[0])


def _requantized(node: OnnxNode, ctx: Context, value: str, scale_index: int, zp_index: int) -> None:
    if ctx.is_const(value):
        raise Unsupported(f"{node.op_type}(of constants only)")
    _quantize(node, ctx, value, _steps(node, ctx, scale_index, zp_index, len(ctx.shape(value)), None))


def _no_channels_last(node: OnnxNode) -> None:
    if int(node.attr("channels_last", 0) or 0):
        raise Unsupported(f"{node.op_type}(channels_last)")


@register(_MS + "QLinearAdd", _MS + "QLinearMul")
def qlinear_binary(node: OnnxNode, ctx: Context) -> None:
    """(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp): quantize(dequantize(A) op dequantize(B)),
    broadcast; B may be a constant (its dequantized value a shift or a scale)."""
    a = _operand(node, ctx, 0, 1, 2, "a_dequantized")
    b = _operand(node, ctx, 3, 4, 5, "b_dequantized")
    y = _float_op(node, ctx, node.op_type.removeprefix("QLinear"), [a, b], {})
    _requantized(node, ctx, y, 6, 7)


@register(_MS + "QLinearConcat")
def qlinear_concat(node: OnnxNode, ctx: Context) -> None:
    """(Y_scale, Y_zp, X_1, X_1_scale, X_1_zp, ...): the inputs dequantized, concatenated along axis
    and quantized once by Y's steps."""
    if (len(node.inputs) - 2) % 3 or len(node.inputs) < 5:
        raise Unsupported("QLinearConcat(inputs not in threes)")
    parts = [_operand(node, ctx, i, i + 1, i + 2, f"x{(i - 2) // 3}_dequantized") for i in range(2, len(node.inputs), 3)]
    y = _float_op(node, ctx, "Concat", parts, {"axis": int(node.attr("axis"))})
    _requantized(node, ctx, y, 0, 1)


@register(_MS + "QLinearGlobalAveragePool")
def qlinear_global_average_pool(node: OnnxNode, ctx: Context) -> None:
    """(X, x_scale, x_zp, y_scale, y_zp), channels first: the mean over the spatial axes."""
    _no_channels_last(node)
    x = _operand(node, ctx, 0, 1, 2, "dequantized")
    _requantized(node, ctx, _float_op(node, ctx, "GlobalAveragePool", [x], {}), 3, 4)


@register(_MS + "QLinearAveragePool")
def qlinear_average_pool(node: OnnxNode, ctx: Context) -> None:
    """(X, x_scale, x_zp, y_scale, y_zp) with AveragePool's attributes, channels first."""
    _no_channels_last(node)
    x = _operand(node, ctx, 0, 1, 2, "dequantized")
    attrs = {k: v for k, v in node.attrs.items() if k != "channels_last"}
    attrs.setdefault("auto_pad", "NOTSET")
    attrs.setdefault("ceil_mode", 0)
    attrs.setdefault("count_include_pad", 0)
    _requantized(node, ctx, _float_op(node, ctx, "AveragePool", [x], attrs, opset=max(node.opset, 11)), 3, 4)


@register(_MS + "QLinearSigmoid", _MS + "QLinearLeakyRelu")
def qlinear_activation(node: OnnxNode, ctx: Context) -> None:
    """(X, X_scale, X_zp, Y_scale, Y_zp): sigmoid, or leaky ReLU of slope alpha (0.01 by default)."""
    x = _operand(node, ctx, 0, 1, 2, "dequantized")
    op_type = node.op_type.removeprefix("QLinear")
    attrs = {"alpha": float(node.attr("alpha", 0.01))} if op_type == "LeakyRelu" else {}
    _requantized(node, ctx, _float_op(node, ctx, op_type, [x], attrs), 3, 4)


@register(_MS + "QLinearSoftmax")
def qlinear_softmax(node: OnnxNode, ctx: Context) -> None:
    """(X, X_scale, x_zp, y_scale, y_zp): Softmax over ``axis`` with the semantics of the ONNX
    opset in its ``opset`` attribute (before 13: over the input coerced to 2-D at axis)."""
    x = _operand(node, ctx, 0, 1, 2, "dequantized")
    opset = int(node.attr("opset", 13))
    y = _float_op(node, ctx, "Softmax", [x], {"axis": int(node.attr("axis", -1 if opset >= 13 else 1))}, opset=opset)
    _requantized(node, ctx, y, 3, 4)
