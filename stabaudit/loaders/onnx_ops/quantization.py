"""Translators of quantized operators (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
QLinearMatMul, QLinearConv, MatMulInteger, ConvInteger): integer tensors are IR values holding whole
numbers, each quantization a Quantize node (a clip plus a rounding error, bounds.quantization), and
the integer arithmetic the float map of the dequantized values it computes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Quantized,
    Rescaled,
    Unsupported,
    normalize_axis,
    register,
    resolve_window,
)

# integer ranges by numpy dtype name (int4/uint4/int2/uint2 as ml_dtypes names them)
RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
    "uint4": (0, 15), "int4": (-8, 7), "uint2": (0, 3), "int2": (-2, 1),
}
_ELEMENT_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 21: "uint4", 22: "int4", 25: "uint2", 26: "int2"}


@dataclass(frozen=True, kw_only=True)
class _Steps:
    """Constant scale and zero point (float64, 0-D per tensor or 1-D along ``axis``) and the range."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    qmin: int
    qmax: int

    def shaped(self, values: np.ndarray, rank: int) -> np.ndarray:
        """``values`` (one per step) shaped to broadcast over a tensor of ``rank`` along ``axis``."""
        if self.axis is None:
            return values.reshape(())
        return values.reshape((-1,) + (1,) * (rank - 1 - self.axis))

    def quantize_op(self, *, integer: bool) -> O.Quantize:
        return O.Quantize(scale=tuple(float(s) for s in self.scale.reshape(-1)),
                          zero_point=tuple(float(z) for z in self.zero_point.reshape(-1)),
                          qmin=self.qmin, qmax=self.qmax, axis=self.axis, integer=integer)

    def same(self, rec: Quantized) -> bool:
        return (isinstance(rec.scale, np.ndarray) and isinstance(rec.zero_point, np.ndarray) and rec.axis == self.axis
                and np.array_equal(rec.scale, self.scale) and np.array_equal(rec.zero_point, self.zero_point))


def _range(dtype_name: str, what: str) -> tuple[int, int]:
    if dtype_name not in RANGES:
        raise Unsupported(f"{what}({dtype_name})")
    return RANGES[dtype_name]


def _steps(node: OnnxNode, ctx: Context, scale_index: int, zp_index: int, rank: int, axis: int | None,
           *, default_type: str = "uint8", need_range: bool = True) -> _Steps:
    """The constant scale and zero point of inputs ``scale_index`` and ``zp_index``: one number is per
    tensor, a 1-D tensor per index of ``axis`` (normalised against ``rank``); the integer range is
    the zero point's type (``default_type`` without one), not read unless ``need_range`` (a
    dequantization does not clamp: any integer type, int32 biases included)."""
    if int(node.attr("block_size", 0) or 0):
        raise Unsupported(f"{node.op_type}(blocked quantization)")
    scale = ctx.const(node.input(scale_index))
    if scale is None:
        if ctx.is_var(node.input(scale_index)):
            raise Unsupported(f"{node.op_type}(variable scale)")
        raise ModelLoadError(f"{node.op_type} needs its scale input")
    zp_name = node.input(zp_index)
    zero = ctx.const(zp_name)
    if zp_name is not None and zero is None:
        raise Unsupported(f"{node.op_type}(variable zero point)")
    qmin, qmax = _range(zero.dtype.name if zero is not None else default_type, node.op_type) if need_range else (0, 0)
    if zero is not None and zero.dtype.kind not in "iu" and zero.dtype.name not in RANGES:
        raise Unsupported(f"{node.op_type}({zero.dtype.name})")
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero, dtype=np.float64) if zero is not None else np.zeros_like(s)
    if s.size == 1 and z.size == 1:
        return _Steps(scale=s.reshape(()), zero_point=z.reshape(()), axis=None, qmin=qmin, qmax=qmax)
    if s.ndim != 1 or axis is None:
        raise Unsupported(f"{node.op_type}(scale of shape {list(s.shape)})")
    ax = normalize_axis(axis, rank)
    return _Steps(scale=s, zero_point=np.broadcast_to(z.reshape(-1), s.shape).copy(), axis=ax, qmin=qmin, qmax=qmax)


def _dequantize_constant(values: np.ndarray, st: _Steps) -> np.ndarray:
    """(q - zp) s in float64: exact (an integer of at most 17 bits times a float32 step fits 53 bits)."""
    q = np.asarray(values, dtype=np.float64)
    return (q - st.shaped(st.zero_point, q.ndim)) * st.shaped(st.scale, q.ndim)


def _dequantized(node: OnnxNode, ctx: Context, name: str, st: _Steps, tag: str | None) -> str:
    """The IR value of (q - zp) s for the integer variable ``name``: the quantized value itself when
    ``name`` is the output of a quantization with these steps, else an Affine map of the integers
    (tagged ``tag``; None: the node's output)."""
    var = ctx.var(name)
    rec = ctx.quantized.get(var)
    if rec is not None and st.same(rec):
        return rec.var
    if rec is not None and isinstance(rec.scale, str):
        raise Unsupported(f"{node.op_type}(dynamically quantized input with a constant scale)")
    rank = len(ctx.shape(var))
    scale = st.shaped(st.scale, rank)
    return ctx.emit(node, O.Affine(scale=scale, shift=-st.shaped(st.zero_point, rank) * scale), [var], tag=tag)


_MOVES = frozenset({O.OpType.RESHAPE, O.OpType.TRANSPOSE})  # ops that only move entries


def carry_quantization(node: OnnxNode, ctx: Context, start: int) -> None:
    """When the IR nodes translated from ``node`` (``ctx.nodes[start:]``) only move the entries of a
    quantized integer value (Flatten, Reshape, Squeeze, Transpose: a chain of Reshape and Transpose),
    the same moves of its dequantized value stand for the result: a quantization with one step
    commutes with moving entries, so a consumer that dequantizes the result gets the quantized
    value itself (and the integers need not be computed)."""
    emitted = ctx.nodes[start:]
    if not emitted or any(n.op.type not in _MOVES or len(n.inputs) != 1 for n in emitted):
        return
    if any(b.inputs[0] != a.output for a, b in zip(emitted, emitted[1:], strict=False)):
        return
    rec = ctx.quantized.get(emitted[0].inputs[0])
    if rec is None or rec.axis is not None:
        return
    var = rec.var
    for i, moved in enumerate(emitted):
        var = ctx.emit(node, moved.op, [var], tag=f"quantized{i}" if i else "quantized")
    ctx.quantized[emitted[-1].output] = Quantized(var=var, scale=rec.scale, zero_point=rec.zero_point)


def _quantize(node: OnnxNode, ctx: Context, var: str, st: _Steps) -> None:
    """Quantize ``var``: the dequantized value (tag "quantized"), and the integers as the node's output."""
    fake = ctx.emit(node, st.quantize_op(integer=False), [var], tag="quantized")
    q = ctx.emit(node, st.quantize_op(integer=True), [var])
    ctx.quantized[q] = Quantized(var=fake, scale=st.scale, zero_point=st.zero_point, axis=st.axis)


@register("QuantizeLinear")
def quantize_linear(node: OnnxNode, ctx: Context) -> None:
    """y = saturate(round(x / scale) + zero_point), round half to even; per tensor or per axis."""
    x = ctx.var(node.inputs[0])
    default = _ELEMENT_TYPES.get(int(node.attr("output_dtype", 0) or 0), "uint8")
    if int(node.attr("output_dtype", 0) or 0) not in (0, *_ELEMENT_TYPES):
        raise Unsupported("QuantizeLinear(to a float type)")
    st = _steps(node, ctx, 1, 2, len(ctx.shape(x)), int(node.attr("axis", 1)), default_type=default)
    _quantize(node, ctx, x, st)


@register("DequantizeLinear")
def dequantize_linear(node: OnnxNode, ctx: Context) -> None:
    """y = (x - zero_point) scale of a variable x; the quantized value itself after a QuantizeLinear or
    DynamicQuantizeLinear with the same scale and zero point (their steps are the same numbers)."""
    x = ctx.var(node.inputs[0])
    rec = ctx.quantized.get(x)
    scale, zero = node.input(1), node.input(2)
    if ctx.is_var(scale):
        if (rec is not None and isinstance(rec.scale, str) and ctx.var(scale or "") == rec.scale
                and zero is not None and ctx.is_var(zero) and ctx.var(zero) == rec.zero_point):
            ctx.alias(node, rec.var)
            return
        raise Unsupported("DequantizeLinear(variable scale)")
    st = _steps(node, ctx, 1, 2, len(ctx.shape(x)), int(node.attr("axis", 1)), need_range=False)
    out = _dequantized(node, ctx, node.inputs[0], st, tag=None)
    if out != node.outputs[0]:
        ctx.alias(node, out)


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: OnnxNode, ctx: Context) -> None:
    """y, y_scale, y_zero_point of uint8 quantization with the step and zero point of x's own range;
    the dequantized value (tag "quantized") is what DequantizeLinear, MatMulInteger and ConvInteger
    by these outputs compute with."""
    x = ctx.var(node.inputs[0])
    fake = ctx.emit(node, O.DynamicQuantize(part=O.QuantPart.DEQUANTIZED), [x], tag="quantized")
    outputs: dict[O.QuantPart, str] = {}
    for index, part in enumerate((O.QuantPart.INTEGER, O.QuantPart.SCALE, O.QuantPart.ZERO_POINT)):
        if index < len(node.outputs) and node.outputs[index]:
            outputs[part] = ctx.emit(node, O.DynamicQuantize(part=part), [x], output_index=index)
    if O.QuantPart.INTEGER in outputs and O.QuantPart.SCALE in outputs and O.QuantPart.ZERO_POINT in outputs:
        step = outputs[O.QuantPart.SCALE]
        ctx.quantized[outputs[O.QuantPart.INTEGER]] = Quantized(var=fake, scale=step,
                                                                zero_point=outputs[O.QuantPart.ZERO_POINT])
        ctx.step_products[step] = (step, np.array(1.0))


def _centered(node: OnnxNode, ctx: Context, name: str, zp_index: int) -> str:
    """x - x_zero_point of the integer variable ``name`` (a constant zero point, one number)."""
    var = ctx.var(name)
    zp_name = node.input(zp_index)
    if zp_name is not None and ctx.is_var(zp_name):
        raise Unsupported(f"{node.op_type}(variable zero point)")
    zero = ctx.const(zp_name)
    if zero is None or not np.any(zero):
        return var
    if zero.size != 1:
        raise Unsupported(f"{node.op_type}(per-row zero point of the variable input)")
    return ctx.emit(node, O.Affine(shift=-np.asarray(zero, dtype=np.float64).reshape(())), [var], tag="centered")


def _centered_weight(node: OnnxNode, ctx: Context, index: int, zp_index: int, axis: int) -> np.ndarray:
    """w - w_zero_point of the constant integer input ``index`` (zero point per tensor or along ``axis``)."""
    w = ctx.param(node, index, "weight")
    assert w is not None
    zp_name = node.input(zp_index)
    zero = ctx.const(zp_name)
    if zp_name is not None and zero is None:
        raise Unsupported(f"{node.op_type}(variable zero point of the weight)")
    out = np.asarray(w, dtype=np.float64)
    if zero is None:
        return out
    z = np.asarray(zero, dtype=np.float64)
    if z.size == 1:
        return out - z.reshape(())
    return out - z.reshape((-1,) + (1,) * (out.ndim - 1 - axis))


def _integer_product(node: OnnxNode, ctx: Context, op: O.Op) -> None:
    """The integer product ``op`` (a Linear or Conv by the centered constant weight) of input 0 minus
    its zero point (input 2). Input 0 dynamically quantized with that zero point: the product of
    its dequantized value, which is the integers' product times the data's step, divided by the
    step (a Div node that the usual Cast + Mul by step x weight scale skips: Rescaled)."""
    var = ctx.var(node.inputs[0])
    rec = ctx.quantized.get(var)
    zp_name = node.input(2)
    if (rec is not None and isinstance(rec.scale, str) and isinstance(rec.zero_point, str)
            and zp_name is not None and ctx.is_var(zp_name) and ctx.var(zp_name) == rec.zero_point):
        scaled = ctx.emit(node, op, [rec.var], tag="scaled")
        out = ctx.emit(node, O.Div(), [scaled, rec.scale])
        ctx.rescaled[out] = Rescaled(var=scaled, step=rec.scale)
        return
    ctx.emit(node, op, [_centered(node, ctx, node.inputs[0], 2)])


@register("MatMulInteger")
def matmul_integer(node: OnnxNode, ctx: Context) -> None:
    """(A - a_zero_point) @ (B - b_zero_point) in int32 with a constant 2-D B (zero point per tensor
    or per column): a Linear whose integer weight is exact in float."""
    b = _centered_weight(node, ctx, 1, 3, axis=1)
    if b.ndim != 2:
        raise Unsupported("MatMulInteger(B not 2-D)")
    _integer_product(node, ctx, O.Linear(weight=np.ascontiguousarray(b.T)))


@register("ConvInteger")
def conv_integer(node: OnnxNode, ctx: Context) -> None:
    """conv(x - x_zero_point, w - w_zero_point) in int32, zero padding after the shift (the ONNX
    reference); the weight's zero point per tensor or per output channel."""
    w = _centered_weight(node, ctx, 1, 3, axis=0)
    spatial = ctx.shape(node.inputs[0])[2:]
    if w.ndim != len(spatial) + 2 or len(spatial) not in (1, 2, 3):
        raise Unsupported(f"ConvInteger({w.ndim - 2}-D kernel on a {len(spatial)}-D input)")
    win = resolve_window(node, spatial, w.shape[2:])
    _integer_product(node, ctx, O.Conv(weight=w, strides=win.strides, pads=win.pads, dilations=win.dilations,
                                       groups=int(node.attr("group"))))


@register("QLinearMatMul")
def qlinear_matmul(node: OnnxNode, ctx: Context) -> None:
    """quantize(dequantize(a) @ dequantize(b)) with a constant 2-D b: a's steps per tensor (or per
    row), b's per tensor or per column, y's per tensor (or per row); the float product of the
    dequantized values is what the integer arithmetic and its requantization compute."""
    a = ctx.var(node.inputs[0])
    rank = len(ctx.shape(a))
    b = ctx.param(node, 3, "b")
    assert b is not None
    if b.ndim != 2:
        raise Unsupported("QLinearMatMul(b not 2-D)")
    x = _dequantized(node, ctx, node.inputs[0], _steps(node, ctx, 1, 2, rank, rank - 2), tag="dequantized")
    weight = _dequantize_constant(b, _steps(node, ctx, 4, 5, 2, 1))
    y = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight.T)), [x], tag="matmul")
    _quantize(node, ctx, y, _steps(node, ctx, 6, 7, rank, rank - 2))


@register("QLinearConv")
def qlinear_conv(node: OnnxNode, ctx: Context) -> None:
    """quantize(conv(dequantize(x), dequantize(w)) + B x_scale w_scale): x's and y's steps per tensor,
    w's per tensor or per output channel, the int32 bias B dequantized with x_scale w_scale."""
    x_name = node.inputs[0]
    rank = len(ctx.shape(x_name))
    w = ctx.param(node, 3, "weight")
    assert w is not None
    spatial = ctx.shape(x_name)[2:]
    if w.ndim != len(spatial) + 2 or len(spatial) not in (1, 2, 3):
        raise Unsupported(f"QLinearConv({w.ndim - 2}-D kernel on a {len(spatial)}-D input)")
    x_steps = _steps(node, ctx, 1, 2, rank, None)
    w_steps = _steps(node, ctx, 4, 5, w.ndim, 0)
    x = _dequantized(node, ctx, x_name, x_steps, tag="dequantized")
    weight = _dequantize_constant(w, w_steps)
    bias = ctx.param(node, 8, "bias", optional=True)
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64).reshape(-1) * (x_steps.scale * w_steps.scale.reshape(-1))
        bias = np.broadcast_to(bias, (w.shape[0],)).copy()
    win = resolve_window(node, spatial, w.shape[2:])
    conv = O.Conv(weight=weight, bias=bias, strides=win.strides, pads=win.pads, dilations=win.dilations,
                  groups=int(node.attr("group")))
    y = ctx.emit(node, conv, [x], tag="conv")
    _quantize(node, ctx, y, _steps(node, ctx, 6, 7, rank, None))


@register("com.microsoft.QGemm")
def qgemm(node: OnnxNode, ctx: Context) -> None:
    """onnxruntime's QGemm (its static quantization of Gemm): alpha A' B' + C on the dequantized A
    (per tensor) and constant B (per tensor or per output column), C an int32 bias of step
    a_scale b_scale; quantized by y's step when y_scale is given, else a float output."""
    a = ctx.var(node.inputs[0])
    if len(ctx.shape(a)) != 2:
        raise Unsupported("QGemm(A not 2-D)")
    if int(node.attr("transA", 0) or 0):
        a = ctx.emit(node, O.Transpose(perm=(1, 0)), [a], tag="transA")
    b = ctx.param(node, 3, "B")
    assert b is not None
    trans_b = bool(int(node.attr("transB", 0) or 0))
    if b.ndim != 2:
        raise Unsupported("QGemm(B not 2-D)")
    a_steps = _steps(node, ctx, 1, 2, 2, None)
    b_steps = _steps(node, ctx, 4, 5, 2, 0 if trans_b else 1)
    x = _dequantized(node, ctx, a, a_steps, tag="dequantized")
    weight = _dequantize_constant(b, b_steps)
    weight = weight if trans_b else weight.T  # [out, in]
    alpha = float(node.attr("alpha", 1.0) or 1.0)
    bias = ctx.param(node, 6, "C", optional=True)
    if bias is not None:
        bias = np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1) * (a_steps.scale * b_steps.scale.reshape(-1)),
                               (weight.shape[0],)).copy()
    linear = O.Linear(weight=np.ascontiguousarray(weight * alpha if alpha != 1.0 else weight), bias=bias)
    if node.input(7) is None:
        ctx.emit(node, linear, [x])
        return
    y = ctx.emit(node, linear, [x], tag="gemm")
    _quantize(node, ctx, y, _steps(node, ctx, 7, 8, 2, None))
