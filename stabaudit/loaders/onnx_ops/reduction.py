"""Translators of the reductions (ReduceSum, ReduceMean, ReduceL1, ReduceL2, ReduceSumSquare,
ReduceMax, ReduceMin, ReduceLogSumExp) and of the element-wise Max and Min."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    Context,
    Dropped,
    OnnxNode,
    Unsupported,
    int_list,
    normalize_axis,
    register,
)

_REDUCE: dict[str, type[O.Reduce]] = {
    "ReduceSum": O.ReduceSum,
    "ReduceMean": O.ReduceMean,
    "ReduceL2": O.ReduceL2,
    "ReduceMax": O.ReduceMax,
    "ReduceMin": O.ReduceMin,
    "ReduceLogSumExp": O.ReduceLogSumExp,
    "ReduceL1": O.ReduceL1,
    "ReduceSumSquare": O.ReduceSumSquare,
}
# the opset from which axes is an input (before: an attribute)
_AXES_INPUT_FROM = {"ReduceSum": 13}


def reduce_axes(node: OnnxNode, ctx: Context, rank: int) -> tuple[int, ...]:
    """The reduced axes, normalised and sorted: the axes attribute (older opsets) or constant input;
    none given: every axis, or no axis (each entry its own group) with noop_with_empty_axes."""
    if node.opset < _AXES_INPUT_FROM.get(node.op_type, 18):
        axes = int_list(node.attr("axes", None))
    else:
        axes = int_list(ctx.param(node, 1, "axes", optional=True))
    if not axes:
        return () if int(node.attr("noop_with_empty_axes", 0) or 0) else tuple(range(rank))
    normalised = sorted({normalize_axis(a, rank) for a in axes})
    if len(normalised) != len(axes):
        raise Unsupported(f"{node.op_type}(repeated axes)")
    return tuple(normalised)


@register(*_REDUCE)
def reduce(node: OnnxNode, ctx: Context) -> None:
    shape = ctx.shape(node.inputs[0])
    axes = reduce_axes(node, ctx, len(shape))
    keepdims = bool(int(node.attr("keepdims", 1)))
    if any(shape[a] == 0 for a in axes):
        raise Unsupported(f"{node.op_type}(over an empty axis)")
    ctx.emit(node, _REDUCE[node.op_type](axes=axes, keepdims=keepdims), [node.inputs[0]])


@register("Max", "Min")
def extremum(node: OnnxNode, ctx: Context) -> None:
    """Max/Min of variables and constants: the constants are combined into one (exact); a single
    variable with a scalar constant c is Clip (max(x, c) = Clip(min=c); 0 there: Relu); a single
    variable alone is the identity."""
    is_max = node.op_type == "Max"
    variables = [name for name in node.present_inputs if not ctx.is_const(name)]
    constants = [np.asarray(ctx.const(name)) for name in node.present_inputs if ctx.is_const(name)]
    if any(c.dtype.kind != "f" for c in constants):
        raise Unsupported(f"{node.op_type}(non-float constant)")
    constant = None
    if constants:
        pick = np.maximum if is_max else np.minimum
        constant = constants[0]
        for c in constants[1:]:
            constant = pick(constant, c)
    if constant is None:
        if len(variables) == 1:
            ctx.alias(node, variables[0])
            return
    elif len(variables) == 1 and constant.size == 1 and constant.ndim <= len(ctx.shape(variables[0])):
        value = float(np.asarray(constant, dtype=np.float64).reshape(-1)[0])
        if not np.isnan(value):
            if is_max and value == 0.0:
                ctx.emit(node, O.Relu(), variables)
            elif is_max:
                ctx.emit(node, O.Clip(min=value), variables)
            else:
                ctx.emit(node, O.Clip(max=value), variables)
            return
    op = O.Max(constant=constant) if is_max else O.Min(constant=constant)
    ctx.emit(node, op, variables)


@register("ArgMax", "ArgMin")
def arg_extremum(node: OnnxNode, ctx: Context) -> None:
    """ArgMax / ArgMin: an integer index, piecewise constant with jumps where the extremum moves, so
    it has no Lipschitz constant. Its value is left out of the audit as a class label is
    (``Dropped``): a graph output of it is not audited nor compared (the notes say so), and a real
    value computed from it (a Gather by the index, a Cast to float) is refused."""
    ctx.dropped[node.outputs[0]] = Dropped(
        kind="a class index", what=f"the index of {node.op_type} {node.name!r}: piecewise constant")
