"""Translators of TorchScript's arithmetic: residual add/sub, affine maps by constants, products and
quotients of two variables, and the element-wise exp, log, sqrt, rsqrt, reciprocal, pow and erf."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    const_array,
    translates,
    unary,
)


def _scaled(ctx: Context, x: Var, factor: float, role: str) -> Var:
    if factor == 1.0:
        return x
    return ctx.emit(O.Affine(scale=np.asarray(factor, dtype=np.float64)), [x], role=role)


def _combine(ctx: Context, node: SourceNode, *, sign: float) -> Sequence[Any]:
    """self + sign * alpha * other, for add (sign 1) and sub (sign -1)."""
    a, b = node.arg(0), node.arg(1)
    alpha = as_float(node.arg("alpha", 1), what="alpha")
    if isinstance(a, Var) and isinstance(b, Var):
        if alpha == 1.0:
            return [ctx.emit(O.Add() if sign > 0 else O.Sub(), [a, b])]
        if alpha == -1.0:
            return [ctx.emit(O.Sub() if sign > 0 else O.Add(), [a, b])]
        b_scaled = _scaled(ctx, b, sign * alpha, "alpha")
        return [ctx.emit(O.Add(), [a, b_scaled])]
    if isinstance(a, Var):  # x + sign * alpha * c
        shift = const_array(b, what="other")
        if sign * alpha != 1.0:
            shift = shift.astype(np.float64) * (sign * alpha)
        return [ctx.emit(O.Affine(shift=shift), [a])]
    if isinstance(b, Var):  # c + sign * alpha * x
        scale = np.asarray(sign * alpha, dtype=np.float64)
        shift = const_array(a, what="self")
        return [ctx.emit(O.Affine(scale=None if scale == 1.0 else scale, shift=shift), [b])]
    raise Unsupported("no variable operand")


@translates("aten::add")
def add(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return _combine(ctx, node, sign=1.0)


@translates("aten::sub", "aten::subtract")
def sub(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return _combine(ctx, node, sign=-1.0)


@translates("aten::rsub")
def rsub(ctx: Context, node: SourceNode) -> Sequence[Any]:
    # rsub(self, other, alpha) = other - alpha * self
    a, b = node.arg(0), node.arg(1)
    alpha = as_float(node.arg("alpha", 1), what="alpha")
    if isinstance(a, Var) and isinstance(b, Var):
        return [ctx.emit(O.Sub(), [b, _scaled(ctx, a, alpha, "alpha")])]
    if isinstance(a, Var):
        shift = const_array(b, what="other")
        return [ctx.emit(O.Affine(scale=np.asarray(-alpha, dtype=np.float64), shift=shift), [a])]
    raise Unsupported("no variable operand")


@translates("aten::mul", "aten::multiply")
def mul(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """A product by a constant: an Affine. Of two variables (squeeze-and-excitation and GLU gates,
    x * sigmoid(g(x))): a Mul, bounded only over a domain, as ONNX's Mul of two variables."""
    a, b = node.arg(0), node.arg(1)
    if isinstance(a, Var) and isinstance(b, Var):
        return [ctx.emit(O.Mul(), [a, b])]
    x, c = (a, b) if isinstance(a, Var) else (b, a)
    return [ctx.emit(O.Affine(scale=const_array(c, what="factor")), [x])]


@translates("aten::div", "aten::divide", "aten::true_divide")
def div(ctx: Context, node: SourceNode) -> Sequence[Any]:
    a, b = node.arg(0), node.arg(1)
    if node.arg("rounding_mode") is not None:
        raise Unsupported(f"rounding_mode={node.arg('rounding_mode')!r}")
    if isinstance(a, Var) and isinstance(b, Var):  # a quotient of two variables: bounded only over a domain
        return [ctx.emit(O.Div(), [a, b])]
    if not isinstance(a, Var) or isinstance(b, Var):
        raise Unsupported("only variable / constant or variable / variable")
    divisor = const_array(b, what="divisor").astype(np.float64)
    if np.any(divisor == 0):
        raise Unsupported("division by zero")
    return [ctx.emit(O.Affine(scale=1.0 / divisor), [a])]


@translates("aten::neg", "aten::negative")
def neg(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [ctx.emit(O.Affine(scale=np.asarray(-1.0)), [node.var(0)])]


# the element-wise maps without a global constant (ONNX's Exp, Log, Sqrt, Reciprocal), erf, sin and cos
for _kind, _op in (("aten::exp", O.Exp), ("aten::log", O.Log), ("aten::sqrt", O.Sqrt), ("aten::reciprocal", O.Reciprocal),
                   ("aten::erf", O.Erf), ("aten::sin", O.Sin), ("aten::cos", O.Cos)):
    translates(_kind)(unary(_op))


@translates("aten::rsqrt")
def rsqrt(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """1 / sqrt(x): a Sqrt then a Reciprocal (both need a domain that keeps x away from 0)."""
    return [ctx.emit(O.Reciprocal(), [ctx.emit(O.Sqrt(), [node.var(0)])])]


@translates("aten::pow", "aten::square")
def power(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x ** p for a constant number p (square: 2), as ONNX's Pow: 1 an alias, 0.5 a Sqrt, -1 a
    Reciprocal, p > 1 a Pow (bounded over a domain); other exponents are refused."""
    x = node.arg(0)
    if not isinstance(x, Var):
        raise Unsupported("a constant raised to a variable power")
    if node.kind == "aten::square":
        p = 2.0
    else:
        exponent = node.arg(1)
        if isinstance(exponent, Var):
            raise Unsupported("a variable exponent")
        values = const_array(exponent, what="exponent").reshape(-1)
        if values.size != 1:
            raise Unsupported("an exponent per entry")
        p = float(values[0])
    if p == 1.0:
        return [x]
    if p == 0.5:
        return [ctx.emit(O.Sqrt(), [x])]
    if p == -1.0:
        return [ctx.emit(O.Reciprocal(), [x])]
    if p > 1.0 and math.isfinite(p):
        return [ctx.emit(O.Pow(exponent=p), [x])]
    raise Unsupported(f"the exponent {p:g} (1, 0.5, -1 or above 1)")
