"""Translators of TorchScript's linear maps: linear, matmul/mm/addmm by constants (and matmul of
two variables), convolutions, cumsum, einsum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.maps import cumulative_sum_weight
from stabaudit.loaders.einsum import EinsumUnsupported, lower_einsum
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    const_array,
    int_list,
    is_float_dtype,
    norm_axis,
    translates,
)
from stabaudit.rounding import scaled_matrix


def _bias(value: Any) -> np.ndarray | None:
    return None if value is None else const_array(value, what="bias")


@translates("aten::linear")
def linear(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var("input")
    weight = const_array(node.arg("weight"), what="weight")
    if weight.ndim != 2:
        raise Unsupported(f"weight of rank {weight.ndim}")
    return [ctx.emit(O.Linear(weight=weight, bias=_bias(node.arg("bias"))), [x])]


def _right_matrix(node: SourceNode, x: Any, w: Any) -> tuple[Var, np.ndarray]:
    """x @ W with W a constant matrix [in, out] -> (x, weight [out, in])."""
    if not isinstance(x, Var):
        raise Unsupported("only variable @ constant-matrix is supported")
    matrix = const_array(w, what="matrix")
    if matrix.ndim != 2:
        raise Unsupported(f"right operand of rank {matrix.ndim}")
    return x, np.ascontiguousarray(matrix.T)


@translates("aten::matmul", "aten::mm", "aten::bmm")
def matmul(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x @ W with a constant matrix W: a Linear. x @ y of two variables (attention's Q K^T and P V)
    of rank 2 or more: a MatMul (numpy's matmul, as torch's: the last two dims multiplied, the
    others broadcast), bounded only over a domain."""
    a, b = node.arg(0), node.arg(1)
    if isinstance(a, Var) and isinstance(b, Var):
        if a.rank < 2 or b.rank < 2:
            raise Unsupported("a product of two variables of rank below 2")
        return [ctx.emit(O.MatMul(), [a, b])]
    if node.kind == "aten::bmm":
        raise Unsupported("bmm with a constant operand")
    x, weight = _right_matrix(node, a, b)
    return [ctx.emit(O.Linear(weight=weight), [x])]


@translates("aten::addmm")
def addmm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    # addmm(b, x, W, beta, alpha) = beta * b + alpha * (x @ W)
    x, weight = _right_matrix(node, node.arg("mat1"), node.arg("mat2"))
    beta = as_float(node.arg("beta", 1), what="beta")
    alpha = as_float(node.arg("alpha", 1), what="alpha")
    bias = const_array(node.arg("self"), what="bias")
    error = 0.0
    if alpha != 1.0:  # the product's rounding (underflow included) goes into the Linear's error
        weight, error = scaled_matrix(weight, alpha)
    if beta != 1.0:
        bias = bias.astype(np.float64) * beta
    out_features = weight.shape[0]
    if bias.size == out_features and bias.ndim <= 2 and bias.shape[-1:] in ((out_features,), ()):
        return [ctx.emit(O.Linear(weight=weight, bias=bias.reshape(out_features), error=error), [x])]
    y = ctx.emit(O.Linear(weight=weight, error=error), [x])
    return [ctx.emit(O.Affine(shift=bias), [y], role="bias")]


def _padding(value: Any, weight: np.ndarray, dilations: tuple[int, ...]) -> tuple[int, ...]:
    """IR pads (begin..., end...) from torch's symmetric padding or the strings "valid"/"same"."""
    n = weight.ndim - 2
    if isinstance(value, str):
        if value == "valid":
            return (0,) * (2 * n)
        if value == "same":
            # torch puts the odd pixel of the total padding d*(k-1) at the end
            totals = [d * (k - 1) for d, k in zip(dilations, weight.shape[2:], strict=True)]
            return tuple(t // 2 for t in totals) + tuple(t - t // 2 for t in totals)
        raise Unsupported(f"padding {value!r}")
    pads = int_list(value, n, what="padding")
    return pads + pads


def _conv(
    ctx: Context,
    x: Var,
    weight_value: Any,
    bias_value: Any,
    *,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    transposed: bool = False,
    output_padding: Any = 0,
) -> Var:
    weight = const_array(weight_value, what="weight")
    n = weight.ndim - 2
    if n not in (1, 2, 3) or x.rank != n + 2:
        raise Unsupported(f"{n}-d convolution of a rank-{x.rank} input")
    strides = int_list(stride, n, what="stride")
    dilations = int_list(dilation, n, what="dilation")
    pads = _padding(padding, weight, dilations)
    bias = _bias(bias_value)
    if transposed:
        if isinstance(padding, str):
            raise Unsupported("string padding of a transposed convolution")
        return ctx.emit(
            O.ConvTranspose(
                weight=weight, bias=bias, strides=strides, pads=pads, dilations=dilations,
                groups=int(groups), output_padding=int_list(output_padding, n, what="output_padding"),
            ),
            [x],
        )
    return ctx.emit(
        O.Conv(weight=weight, bias=bias, strides=strides, pads=pads, dilations=dilations, groups=int(groups)),
        [x],
    )


@translates("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution_mode")
def conv(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [
        _conv(
            ctx, node.var("input"), node.arg("weight"), node.arg("bias"),
            stride=node.arg("stride", 1), padding=node.arg("padding", 0),
            dilation=node.arg("dilation", 1), groups=node.arg("groups", 1),
        )
    ]


@translates("aten::_convolution", "aten::convolution")
def convolution(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [
        _conv(
            ctx, node.var("input"), node.arg("weight"), node.arg("bias"),
            stride=node.arg("stride"), padding=node.arg("padding"), dilation=node.arg("dilation"),
            groups=node.arg("groups"), transposed=bool(node.arg("transposed")),
            output_padding=node.arg("output_padding"),
        )
    ]


@translates("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
def conv_transpose(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [
        _conv(
            ctx, node.var("input"), node.arg("weight"), node.arg("bias"),
            stride=node.arg("stride", 1), padding=node.arg("padding", 0),
            dilation=node.arg("dilation", 1), groups=node.arg("groups", 1), transposed=True,
            output_padding=node.arg("output_padding", 0),
        )
    ]


def linear_along(ctx: Context, x: Var, axis: int, weight: np.ndarray, *, role: str = "") -> Var:
    """The Linear map ``weight`` [out, in] applied along ``axis`` of x (moved last by a Transpose
    and back when it is not the last axis)."""
    if axis == x.rank - 1:
        return ctx.emit(O.Linear(weight=weight), [x], role=role)
    perm = tuple(a for a in range(x.rank) if a != axis) + (axis,)
    moved = ctx.emit(O.Transpose(perm=perm), [x], role=f"{role}last" if role else "last")
    mapped = ctx.emit(O.Linear(weight=weight), [moved], role=role)
    return ctx.emit(O.Transpose(perm=tuple(int(p) for p in np.argsort(perm))), [mapped], role=f"{role}back" if role else "back")


@translates("aten::cumsum")
def cumsum(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.cumsum along dim: a Linear with the lower-triangular 0/1 weight along that axis."""
    x = node.var(0)
    if not is_float_dtype(node.arg("dtype")):
        raise Unsupported("a non-float dtype")
    if not x.rank:
        return [x]
    axis = norm_axis(int(node.arg(1)), x.rank)
    return [linear_along(ctx, x, axis, cumulative_sum_weight(x.shape[axis]))]


class _TorchBuilder:
    """The einsum lowering's builder over a TorchScript node (roles for its intermediate values)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def emit(self, op: O.Op, inputs: Sequence[Var], tag: str | None) -> Var:
        return self.ctx.emit(op, list(inputs), role=tag or "")

    def shape(self, value: Var) -> tuple[int, ...]:
        return tuple(value.shape)


@translates("aten::einsum")
def einsum(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.einsum of one or two operands, lowered by loaders.einsum as ONNX Einsum is."""
    equation, tensors = node.arg(0), node.arg(1)
    if not isinstance(equation, str) or not isinstance(tensors, list | tuple):
        raise Unsupported("an equation or operand list computed at run time")
    operands = [t if isinstance(t, Var) else None for t in tensors]
    consts = [None if isinstance(t, Var) else const_array(t, what="operand") for t in tensors]
    shapes = [t.shape if isinstance(t, Var) else c.shape for t, c in zip(tensors, consts, strict=True)]  # type: ignore[union-attr]
    try:
        return [lower_einsum(_TorchBuilder(ctx), equation, operands, consts, shapes)]
    except EinsumUnsupported as exc:
        raise Unsupported(str(exc)) from None
