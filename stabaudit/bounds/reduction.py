"""Bound rules of reductions (ReduceSum, ReduceMean, ReduceL1, ReduceL2, ReduceMax, ReduceMin,
ReduceLogSumExp; ReduceSumSquare only over a domain) and of the element-wise extrema Max and Min."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Combine, Guarantee, OpBound, RuleContext
from stabaudit.bounds.domain import needs_domain
from stabaudit.bounds.numerics import sqrt_int_bounds
from stabaudit.bounds.structural import broadcast_repetitions
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import (
    Max,
    Min,
    OpType,
    Reduce,
    ReduceL1,
    ReduceL2,
    ReduceLogSumExp,
    ReduceMax,
    ReduceMean,
    ReduceMin,
    ReduceSum,
    ReduceSumSquare,
)


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _bounds(upper: float, lower: float | None, method: str, *, combine: Combine = Combine.CHAIN,
            input_gains: tuple[float, ...] = ()) -> OpBound:
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method=method),
        lower=None if lower is None else Bound(value=lower, guarantee=Guarantee.LOWER, method=method),
        combine=combine,
        input_gains=input_gains,
    )


def group_size(op: Reduce, shape: tuple[int, ...]) -> int:
    """n: the number of input entries each output entry reduces (1 for no axis)."""
    return math.prod(shape[a] for a in op.axes)


@RULES.register(OpType.REDUCE_SUM)
@RULES.register(OpType.REDUCE_MEAN)
@RULES.register(OpType.REDUCE_L1)
def bound_reduce_linear(node: Node, ctx: RuleContext) -> OpBound:
    """Sum (mean) of each group of n entries: the groups are disjoint, so the matrix has orthogonal
    rows of n entries 1 (1/n), and its norm is exactly sqrt(n) (1/sqrt(n)); 0 when nothing is read
    or written. Rounding: sqrt_int_bounds encloses sqrt(n) and 1/sqrt(n) is rounded outward.

    The L1 norm sum_G |x_j| of each group has the sum's constant: |sum |a_j| - sum |b_j|| <=
    sum |a_j - b_j| <= sqrt(n) ||a_G - b_G|| (Cauchy-Schwarz), over disjoint groups, so Lip <=
    sqrt(n); exact, since at a point with every entry positive the map is locally the ReduceSum."""
    match node.op:
        case ReduceSum() | ReduceMean() | ReduceL1():
            op = node.op
        case _:
            raise TypeError(f"bound_reduce_linear got a {type(node.op).__name__}")
    shape = ctx.input_shapes[0]
    n = group_size(op, shape)
    if n == 0 or _size(shape) == 0 or _size(ctx.output_shape) == 0:
        return _bounds(0.0, 0.0, "exact")
    upper, lower = sqrt_int_bounds(n)
    if isinstance(op, ReduceMean):
        upper, lower = math.nextafter(1.0 / lower, math.inf), math.nextafter(1.0 / upper, 0.0)
    return _bounds(upper, lower, "exact")


@RULES.register(OpType.REDUCE_SUM_SQUARE)
def bound_reduce_sum_square(node: Node, ctx: RuleContext) -> OpBound:
    """sum_G x_j^2: its gradient 2 x_G grows with |x|, so no constant bounds it on the whole space."""
    match node.op:
        case ReduceSumSquare():
            return needs_domain(node, ctx, "a sum of squares is Lipschitz only on a bounded domain")
    raise TypeError(f"bound_reduce_sum_square got a {type(node.op).__name__}")


@RULES.register(OpType.REDUCE_L2)
@RULES.register(OpType.REDUCE_MAX)
@RULES.register(OpType.REDUCE_MIN)
@RULES.register(OpType.REDUCE_LOG_SUM_EXP)
def bound_reduce_one(node: Node, ctx: RuleContext) -> OpBound:
    """Each output is a 1-Lipschitz function g of its own group G of entries, the groups disjoint:
    ||y(a) - y(b)||^2 = sum_G (g(a_G) - g(b_G))^2 <= sum_G ||a_G - b_G||^2 = ||a - b||^2, Lip <= 1.
    - L2: | ||a_G|| - ||b_G|| | <= ||a_G - b_G|| (triangle inequality);
    - Max/Min: |max a_G - max b_G| <= max |a_G - b_G| <= ||a_G - b_G||;
    - LogSumExp: its gradient is the softmax s of the group, ||s||_2 <= ||s||_1 = 1 (mean value
      theorem).
    Lower 1: move a single entry e_j of one group along a direction where it dominates (L2: a = t e_j,
    radially; Max: the group's strict max; Min: its strict min); the output moves by exactly as much
    (LogSumExp: its gradient tends to e_j as the entry dominates, so the supremum is 1)."""
    match node.op:
        case ReduceL2() | ReduceMax() | ReduceMin() | ReduceLogSumExp():
            op = node.op
        case _:
            raise TypeError(f"bound_reduce_one got a {type(node.op).__name__}")
    shape = ctx.input_shapes[0]
    if group_size(op, shape) == 0 or _size(shape) == 0 or _size(ctx.output_shape) == 0:
        return _bounds(0.0, 0.0, "exact")
    return _bounds(1.0, 1.0, "exact")


@RULES.register(OpType.MAX)
@RULES.register(OpType.MIN)
def bound_extremum(node: Node, ctx: RuleContext) -> OpBound:
    """y = max(x_1, ..., x_k, c) entry by entry (numpy broadcasting; Min alike).

    |max(a) - max(b)| <= max_i |a_i - b_i| (the constant moves nothing), so with input i broadcast
    to the output by repeating each entry r_i = |out| / |x_i| times:
    ||dy||^2 <= sum_out max_i |dx_i|^2 <= sum_i r_i ||dx_i||^2: Combine.STACK with gains sqrt(r_i).
    As a map of the joint input, ||dy||^2 <= max_i r_i ||dx||^2: upper sqrt(max r_i), exact (lower
    alike) when the constant is finite: where x_i exceeds every other operand (falls below, for Min)
    by a margin, y is the broadcast of x_i and moves by sqrt(r_i) ||dx_i||.
    """
    match node.op:
        case Max(constant=c) | Min(constant=c):
            pass
        case _:
            raise TypeError(f"bound_extremum got a {type(node.op).__name__}")
    reps = broadcast_repetitions(ctx)
    gains = tuple(sqrt_int_bounds(r)[0] for r in reps)
    upper, lower = sqrt_int_bounds(max(reps, default=0))
    finite = c is None or bool(np.all(np.isfinite(np.asarray(c, dtype=np.float64))))
    return _bounds(upper, lower if finite else None, "broadcast-extremum", combine=Combine.STACK,
                   input_gains=gains)
