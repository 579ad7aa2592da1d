"""Translators of TorchScript's reductions (sum, mean over any dims, amax, amin, max/min over a
dim, logsumexp, the 2-norm, std and var, argmax/argmin as class indices) and of the element-wise
maximum and minimum."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    Opaque,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    const_array,
    is_float_dtype,
    norm_axis,
    translates,
)


def _axes(x: Var, dims: Any) -> tuple[int, ...]:
    """torch's dim argument: None or [] reduce every axis, an int or a list the named ones."""
    if dims is None:
        return tuple(range(x.rank))
    items = [dims] if isinstance(dims, int) else list(dims)
    if not items:
        return tuple(range(x.rank))
    axes = sorted({norm_axis(int(d), x.rank) for d in items})
    if len(axes) != len(items):
        raise Unsupported("repeated dims")
    return tuple(axes)


def _reduce(ctx: Context, node: SourceNode, kind: type[O.Reduce], dims: Any, keepdim: Any) -> Var:
    x = node.var(0)
    if not is_float_dtype(node.arg("dtype")):
        raise Unsupported("a non-float dtype")
    axes = _axes(x, dims)
    if any(x.shape[a] == 0 for a in axes):
        raise Unsupported("a reduction over an empty dim")
    return ctx.emit(kind(axes=axes, keepdims=bool(keepdim)), [x])


@translates("aten::sum")
def sum_(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_reduce(ctx, node, O.ReduceSum, node.arg("dim"), node.arg("keepdim", False))]


@translates("aten::amax", "aten::amin")
def amax(ctx: Context, node: SourceNode) -> Sequence[Any]:
    kind = O.ReduceMax if node.base == "amax" else O.ReduceMin
    return [_reduce(ctx, node, kind, node.arg("dim"), node.arg("keepdim", False))]


@translates("aten::argmax", "aten::argmin")
def arg_extremum(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """An integer index, piecewise constant with jumps where the extremum moves: no Lipschitz
    constant. A forward output of it is left out of the audit (the notes say so); a value computed
    from it is refused where it is used."""
    return [Opaque(kind=node.kind, detail="its class index is used as a value", label=True)]


@translates("aten::std", "aten::var")
def std_var(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """var = sum((x - mean x)^2) / (n - correction) over the dims (every axis when none is given),
    std its square root, as torch computes them: ReduceMean, Sub, Mul(d, d), ReduceSum, a scale
    by 1 / (n - correction) (a float64 reciprocal, as ONNX's Div by a constant) and Sqrt. The
    square and the root have no global constant: bounded over a domain. ``unbiased`` (correction
    1) or ``correction`` as the overload gives them."""
    x = node.var(0)
    axes = _axes(x, node.arg("dim"))
    if "correction" in node.arg_names:
        given = node.arg("correction")
        correction = 1.0 if given is None else as_float(given, what="correction")
    else:
        correction = 1.0 if node.arg("unbiased", True) else 0.0
    n = math.prod(x.shape[a] for a in axes)
    if not n - correction > 0:
        raise Unsupported(f"a correction of {correction:g} over groups of {n} entries")
    mean = ctx.emit(O.ReduceMean(axes=axes, keepdims=True), [x])
    d = ctx.emit(O.Sub(), [x, mean])
    total = ctx.emit(O.ReduceSum(axes=axes, keepdims=bool(node.arg("keepdim", False))), [ctx.emit(O.Mul(), [d, d])])
    var = ctx.emit(O.Affine(scale=np.array(1.0 / (n - correction))), [total])
    return [ctx.emit(O.Sqrt(), [var]) if node.base == "std" else var]


@translates("aten::logsumexp")
def logsumexp(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_reduce(ctx, node, O.ReduceLogSumExp, node.arg("dim"), node.arg("keepdim", False))]


@translates("aten::linalg_vector_norm")
def norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """The 2-norm (or 1-norm) over dims: torch.norm and torch.linalg.vector_norm trace to this."""
    p = as_float(node.arg("ord", 2), what="ord")
    if p not in (1.0, 2.0):
        raise Unsupported(f"ord={p:g} (only the 1- and 2-norms)")
    kind = O.ReduceL2 if p == 2.0 else O.ReduceL1
    return [_reduce(ctx, node, kind, node.arg("dim"), node.arg("keepdim", False))]


def _extremum(ctx: Context, node: SourceNode, *, is_max: bool) -> Var:
    """max(a, b) of two tensors (a constant one becomes the op's constant)."""
    a, b = node.arg(0), node.arg(1)
    variables = [v for v in (a, b) if isinstance(v, Var)]
    if not variables:
        raise Unsupported("no variable operand")
    constant = None
    if len(variables) == 1:
        constant = const_array(b if isinstance(a, Var) else a, what="other")
    op = O.Max(constant=constant) if is_max else O.Min(constant=constant)
    return ctx.emit(op, variables)


@translates("aten::maximum", "aten::minimum")
def maximum(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_extremum(ctx, node, is_max=node.base == "maximum")]


@translates("aten::max", "aten::min")
def max_(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """max(x): every entry; max(x, dim, keepdim): (values, indices), the indices opaque;
    max(x, other): element-wise."""
    is_max = node.base == "max"
    if "other" in node.arg_names:
        return [_extremum(ctx, node, is_max=is_max)]
    kind = O.ReduceMax if is_max else O.ReduceMin
    if "dim" in node.arg_names:
        dim = node.arg("dim")
        if not isinstance(dim, int):
            raise Unsupported("a dim that is not an int")
        values = _reduce(ctx, node, kind, dim, node.arg("keepdim", False))
        return [values, Opaque(kind=node.kind, detail="its indices are used")]
    if len(node.args) != 1:
        raise Unsupported("an overload without a known schema")
    return [_reduce(ctx, node, kind, None, False)]
