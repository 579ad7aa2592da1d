"""Translators of Gemm and MatMul with constant weights into Linear nodes, and of Einsum."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stabaudit.errors import ModelLoadError, ResourceError
from stabaudit.ir import ops as O
from stabaudit.ir.maps import cumulative_sum_weight
from stabaudit.loaders.base import MAX_ELEMENTS
from stabaudit.loaders.einsum import EinsumUnsupported, lower_einsum
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, register
from stabaudit.rounding import scaled_matrix


@register("Gemm")
def gemm(node: OnnxNode, ctx: Context) -> None:
    """Y = alpha * A' @ B' + beta * C with A' = A or A.T (a Transpose node) and B, C constant.

    The weight is alpha * B' transposed to [out, in]; alpha * b and beta * c are exact in float64
    (the product of two float32 numbers has at most 48 significant bits); for a float64 B the
    product's rounding (underflow included) is bounded in the Linear's ``error``. A bias C whose
    rows are all equal becomes the Linear bias, any other C an Affine shift after it.
    """
    a = node.inputs[0]
    if ctx.const(node.inputs[1]) is None:
        _gemm_of_variables(node, ctx)
        return
    b = ctx.param(node, 1, "B")
    c = ctx.param(node, 2, "C", optional=True)
    assert b is not None
    if len(ctx.shape(a)) != 2 or b.ndim != 2:
        raise Unsupported("Gemm(operands not 2-D)")
    alpha, beta = float(node.attr("alpha")), float(node.attr("beta"))
    weight = b if node.attr("transB") else b.T  # [out, in]
    error = 0.0
    if alpha != 1.0:
        weight, error = scaled_matrix(weight, alpha)
    if node.attr("transA"):
        a = ctx.emit(node, O.Transpose(perm=(1, 0)), [a], tag="transA")
    rows, out = ctx.shape(a)[0], weight.shape[0]
    bias, shift = None, None
    if c is not None:
        if rows * out > MAX_ELEMENTS:  # before C is broadcast to the output's shape
            raise ResourceError(f"Gemm output [{rows}, {out}] is above the limit of {MAX_ELEMENTS} elements")
        c = np.broadcast_to(c.astype(np.float64) * beta if beta != 1.0 else c, (rows, out))
        if (c == c[:1]).all():
            bias = np.ascontiguousarray(c[0])
        else:
            shift = np.ascontiguousarray(c)
    linear = O.Linear(weight=np.ascontiguousarray(weight), bias=bias, error=error)
    w_term = ctx.term(node, 1, "weight (B)", coefficient=alpha, transpose=not node.attr("transB"))
    c_term = ctx.term(node, 2, "bias (C)", coefficient=beta) if c is not None else None
    if shift is None:
        y = ctx.emit(node, linear, [a])
        ctx.bind(y, "weight", [w_term])
        if bias is not None:
            ctx.bind(y, "bias", [c_term])
    else:
        y = ctx.emit(node, linear, [a], tag="linear")
        ctx.bind(y, "weight", [w_term])
        z = ctx.emit(node, O.Affine(shift=shift), [y])
        ctx.bind(z, "shift", [c_term])


def _gemm_of_variables(node: OnnxNode, ctx: Context) -> None:
    """alpha * A' @ B' + beta * C with B variable: Transposes, a MatMul of the two variables, a scale
    alpha and a constant shift beta * C (Affine nodes); a variable C is refused."""
    a, b = node.inputs[0], node.inputs[1]
    if ctx.is_const(a):
        raise Unsupported("Gemm(constant x variable)")
    if len(ctx.shape(a)) != 2 or len(ctx.shape(b)) != 2:
        raise Unsupported("Gemm(operands not 2-D)")
    c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if c_name is not None and not ctx.is_const(c_name):
        raise Unsupported("Gemm(variable C)")
    alpha, beta = float(node.attr("alpha")), float(node.attr("beta"))
    if node.attr("transA"):
        a = ctx.emit(node, O.Transpose(perm=(1, 0)), [a], tag="transA")
    if node.attr("transB"):
        b = ctx.emit(node, O.Transpose(perm=(1, 0)), [b], tag="transB")
    if ctx.shape(a)[1] != ctx.shape(b)[0]:
        raise ModelLoadError(f"Gemm of shapes {list(ctx.shape(a))} and {list(ctx.shape(b))} (after transA/transB)")
    c = ctx.const(c_name)
    last = alpha == 1.0 and c is None
    y = ctx.emit(node, O.MatMul(), [a, b], tag=None if last else "matmul")
    if last:
        return
    out_shape = (ctx.shape(a)[0], ctx.shape(b)[1])
    shift = None
    if c is not None:
        shift = np.ascontiguousarray(np.broadcast_to(np.asarray(c, dtype=np.float64) * beta, out_shape))
    scale = np.array(alpha, dtype=np.float64) if alpha != 1.0 else None
    ctx.emit(node, O.Affine(scale=scale, shift=shift), [y])


@register("MatMul")
def matmul(node: OnnxNode, ctx: Context) -> None:
    """x @ B with a constant 2-D B [in, out] is Linear(weight=B.T); a 1-D b drops the last axis."""
    a, b = node.inputs[0], node.inputs[1]
    if ctx.is_const(a):
        raise Unsupported("MatMul(constant x variable)")
    weight = ctx.const(b)
    if weight is None:
        ctx.emit(node, O.MatMul(), [a, b])  # attention's Q K^T and P V: bounded only over a domain
        return
    if weight.ndim == 2:
        y = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight.T)), [a])
        ctx.bind(y, "weight", [ctx.term(node, 1, "weight (B)", transpose=True)])
    elif weight.ndim == 1:
        y = ctx.emit(node, O.Linear(weight=weight.reshape(1, -1)), [a], tag="linear")
        ctx.bind(y, "weight", [ctx.term(node, 1, "weight (B)")])
        ctx.emit(node, O.Reshape(shape=ctx.shape(y)[:-1]), [y])
    else:
        raise Unsupported("MatMul(batched constant)")


class _OnnxBuilder:
    """The einsum lowering's builder over an ONNX node: tagged intermediate values, the node's
    output for tag None."""

    def __init__(self, node: OnnxNode, ctx: Context) -> None:
        self.node, self.ctx = node, ctx

    def emit(self, op: O.Op, inputs: Sequence[str], tag: str | None) -> str:
        return self.ctx.emit(self.node, op, list(inputs), tag=tag)

    def shape(self, value: str) -> tuple[int, ...]:
        return tuple(self.ctx.shape(value))


@register("Einsum")
def einsum(node: OnnxNode, ctx: Context) -> None:
    """Einsum of one or two operands without repeated letters in an operand (no diagonals), lowered
    by loaders.einsum onto Transpose, ReduceSum, Reshape and a MatMul of the variables, or a Linear
    when the second operand is a constant without batch letters."""
    consts = [ctx.const(name) for name in node.inputs]
    shapes = [ctx.shape(name) if held is None else tuple(np.shape(held)) for name, held in zip(node.inputs, consts, strict=True)]
    operands = [None if held is not None else name for name, held in zip(node.inputs, consts, strict=True)]
    try:
        result = lower_einsum(_OnnxBuilder(node, ctx), str(node.attr("equation")), operands, consts, shapes)
    except EinsumUnsupported as exc:
        raise Unsupported(f"Einsum {exc}") from None
    if result != node.outputs[0]:  # the last value of the lowering is the output (an identity: the input)
        ctx.alias(node, result, removed=result == node.inputs[0])


@register("CumSum")
def cumsum(node: OnnxNode, ctx: Context) -> None:
    """CumSum of a variable along a constant axis: y_i = the sum of x_j over j <= i (j < i when
    ``exclusive``; j >= i or j > i when ``reverse``), a Linear over that axis with a 0/1 triangular
    weight (moved last by a Transpose and back when it is not the last axis)."""
    x = node.inputs[0]
    shape = ctx.shape(x)
    axis_value = ctx.param(node, 1, "axis")
    assert axis_value is not None
    rank = len(shape)
    if not rank:
        raise Unsupported("CumSum(a scalar)")
    axis = int(np.asarray(axis_value).reshape(-1)[0])
    if not -rank <= axis < rank:
        raise ModelLoadError(f"CumSum axis {axis} out of range for rank {rank}")
    axis %= rank
    weight = cumulative_sum_weight(shape[axis], exclusive=bool(int(node.attr("exclusive", 0))),
                                   reverse=bool(int(node.attr("reverse", 0))))
    if axis == rank - 1:
        ctx.emit(node, O.Linear(weight=weight), [x])
        return
    perm = tuple(a for a in range(rank) if a != axis) + (axis,)
    moved = ctx.emit(node, O.Transpose(perm=perm), [x], tag="last")
    summed = ctx.emit(node, O.Linear(weight=weight), [moved], tag="sums")
    ctx.emit(node, O.Transpose(perm=tuple(int(p) for p in np.argsort(perm))), [summed])
