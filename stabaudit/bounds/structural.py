"""Bound rules of operators that move, select, copy, embed, add or stack entries (Reshape, Transpose,
Pad, Slice, Gather, Tile, Add, Sub, Concat, Where)."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Combine, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import sqrt_int_bounds
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import (
    Add,
    Concat,
    Gather,
    OpType,
    Pad,
    Reshape,
    Slice,
    Sub,
    Tile,
    Transpose,
    Where,
)


def _exact(
    value: float, method: str, *, combine: Combine = Combine.CHAIN, input_gains: tuple[float, ...] = ()
) -> OpBound:
    return OpBound(
        upper=Bound(value=value, guarantee=Guarantee.UPPER, method=method),
        lower=Bound(value=value, guarantee=Guarantee.LOWER, method=method),
        combine=combine,
        input_gains=input_gains,
    )


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


@RULES.register(OpType.RESHAPE)
def bound_reshape(node: Node, ctx: RuleContext) -> OpBound:
    """The flattened tensor is unchanged: an isometry, Lip = 1."""
    match node.op:
        case Reshape():
            return _exact(1.0 if _size(ctx.input_shapes[0]) else 0.0, "isometry")
    raise TypeError(f"bound_reshape got a {type(node.op).__name__}")


@RULES.register(OpType.TRANSPOSE)
def bound_transpose(node: Node, ctx: RuleContext) -> OpBound:
    """A permutation of the entries: an isometry, Lip = 1."""
    match node.op:
        case Transpose():
            return _exact(1.0 if _size(ctx.input_shapes[0]) else 0.0, "isometry")
    raise TypeError(f"bound_transpose got a {type(node.op).__name__}")


@RULES.register(OpType.PAD)
def bound_pad(node: Node, ctx: RuleContext) -> OpBound:
    """Constant padding = an isometric embedding plus a constant: Lip = 1. Negative pads crop (a
    coordinate projection, Lip <= 1, = 1 when any entry survives)."""
    match node.op:
        case Pad(pads=pads):
            pass
        case _:
            raise TypeError(f"bound_pad got a {type(node.op).__name__}")
    shape = ctx.input_shapes[0]
    n = len(shape)
    if len(pads) != 2 * n:
        raise ValueError(f"Pad has {len(pads)} pads for a rank-{n} input")
    kept = all(shape[i] + min(pads[i], 0) + min(pads[i + n], 0) > 0 for i in range(n))
    return _exact(1.0 if kept and _size(shape) else 0.0, "isometry")


def broadcast_repetitions(ctx: RuleContext) -> list[int]:
    """How many times numpy broadcasting copies each entry of each input to the output (0 for an
    empty input or output)."""
    out = _size(ctx.output_shape)
    reps: list[int] = []
    for shape in ctx.input_shapes:
        size = _size(shape)
        if size == 0 or out == 0:
            reps.append(0)
            continue
        if np.broadcast_shapes(tuple(shape), tuple(ctx.output_shape)) != tuple(ctx.output_shape) or out % size:
            raise ValueError(f"input {shape} does not broadcast to the output {ctx.output_shape}")
        reps.append(out // size)
    return reps


def _broadcast_sum(node: Node, ctx: RuleContext) -> OpBound:
    """x_1 +- x_2 with numpy broadcasting.

    Broadcasting input i to the output repeats each of its entries r_i = |out| / |in_i| times,
    so ||B_i d|| = sqrt(r_i) ||d|| exactly: the input gains are sqrt(r_i) and the output obeys
    ||dy|| <= sum_i sqrt(r_i) ||dx_i|| (triangle inequality; Combine.SUM). As a map of the joint
    input (x_1, x_2) its norm is ||[B_1, +-B_2]|| = sqrt(||B_1 B_1^T + B_2 B_2^T||) = sqrt(r_1 + r_2)
    exactly: <= by the triangle inequality on B_i B_i^T (norms r_i), = at the all-ones output
    direction, an eigenvector of both with eigenvalues r_1 and r_2.
    """
    reps = broadcast_repetitions(ctx)
    gains = tuple(sqrt_int_bounds(r)[0] for r in reps)
    upper, lower = sqrt_int_bounds(sum(reps))
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="broadcast-sum"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="broadcast-sum"),
        combine=Combine.SUM,
        input_gains=gains,
    )


@RULES.register(OpType.ADD)
def bound_add(node: Node, ctx: RuleContext) -> OpBound:
    """Add: Combine.SUM with gains sqrt(broadcast repetitions) (see _broadcast_sum)."""
    match node.op:
        case Add():
            return _broadcast_sum(node, ctx)
    raise TypeError(f"bound_add got a {type(node.op).__name__}")


@RULES.register(OpType.SUB)
def bound_sub(node: Node, ctx: RuleContext) -> OpBound:
    """Sub: as Add (a sign changes no norm)."""
    match node.op:
        case Sub():
            return _broadcast_sum(node, ctx)
    raise TypeError(f"bound_sub got a {type(node.op).__name__}")


@RULES.register(OpType.CONCAT)
def bound_concat(node: Node, ctx: RuleContext) -> OpBound:
    """Concatenation places the inputs on disjoint coordinates: ||dy||^2 = sum_i ||dx_i||^2, gains 1,
    Combine.STACK; as a map of the joint input it is a permutation (Lip = 1)."""
    match node.op:
        case Concat():
            pass
        case _:
            raise TypeError(f"bound_concat got a {type(node.op).__name__}")
    gains = tuple(1.0 if _size(s) else 0.0 for s in ctx.input_shapes)
    value = 1.0 if any(gains) else 0.0
    return _exact(value, "isometry", combine=Combine.STACK, input_gains=gains)




@RULES.register(OpType.SLICE)
def bound_slice(node: Node, ctx: RuleContext) -> OpBound:
    """A selection of distinct input entries: a coordinate projection, Lip = 1 when it keeps any
    entry (a kept coordinate direction is mapped to a unit vector), 0 when it keeps none."""
    match node.op:
        case Slice():
            return _exact(1.0 if _size(ctx.output_shape) and _size(ctx.input_shapes[0]) else 0.0, "projection")
    raise TypeError(f"bound_slice got a {type(node.op).__name__}")


@RULES.register(OpType.GATHER)
def bound_gather(node: Node, ctx: RuleContext) -> OpBound:
    """A selection by constant indices along one axis: y = S x with S a 0/1 matrix with one 1 per
    row; column j of S holds m_j ones, the number of times its entry is picked, and the columns
    have disjoint supports, so S^T S = diag(m_j) and Lip = ||S|| = sqrt(max_j m_j) exactly (the
    most repeated index; 1 for distinct indices, 0 when nothing is picked)."""
    match node.op:
        case Gather(indices=indices):
            pass
        case _:
            raise TypeError(f"bound_gather got a {type(node.op).__name__}")
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not flat.size or not _size(ctx.input_shapes[0]) or not _size(ctx.output_shape):
        return _exact(0.0, "selection")
    most = int(np.bincount(flat - flat.min()).max())
    upper, lower = sqrt_int_bounds(most)
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="selection"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="selection"),
    )


@RULES.register(OpType.TILE)
def bound_tile(node: Node, ctx: RuleContext) -> OpBound:
    """Tiling copies every input entry r = prod(repeats) times onto disjoint output entries:
    ||T d||^2 = r ||d||^2, so Lip = sqrt(r) exactly (0 when the output or input is empty)."""
    match node.op:
        case Tile(repeats=repeats):
            pass
        case _:
            raise TypeError(f"bound_tile got a {type(node.op).__name__}")
    r = int(np.prod(repeats)) if _size(ctx.input_shapes[0]) else 0
    upper, lower = sqrt_int_bounds(r)
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="copies"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="copies"),
    )


def selection_counts(selected: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """For an input of ``shape`` broadcast (numpy rules) to the shape of the bool array
    ``selected``: how many selected output entries are copies of each input entry."""
    out = selected.shape
    full = (1,) * (len(out) - len(shape)) + tuple(shape)
    axes = tuple(i for i, (o, d) in enumerate(zip(out, full, strict=True)) if d == 1 and o != 1)
    counts = selected.astype(np.int64).sum(axis=axes, keepdims=True) if axes else selected.astype(np.int64)
    return counts.reshape(shape)


# The gain of the input an IsNaN / IsInf test reads. Its entries only decide the condition, which is
# false wherever that input t is finite: then the true gain is 0. The composition multiplies this
# gain by the certified bound L_t of t, so it is the smallest positive float rather than 0 (with which
# 0 * inf would count as 0): a finite L_t proves t finite at every finite input (a Lipschitz map that
# is finite at one point is finite everywhere), and the term is a negligible L_t * 5e-324 rounded up;
# an infinite L_t (t may be inf at finite inputs, 1/x at 0, and the test may fire) leaves the bound
# infinite.
TESTED_GAIN = math.ulp(0.0)


@RULES.register(OpType.WHERE)
def bound_where(node: Node, ctx: RuleContext) -> OpBound:
    """y = where(c, a, b) with a condition fixed on the finite inputs (a constant mask; IsNaN or
    IsInf of a tensor, false at every finite entry): a selection. Each output entry is one entry
    of a or of b (broadcast), so y = S_a a + S_b b + const with 0/1 matrices whose rows have
    disjoint supports; column j of S_a holds m_j ones, the selected copies of a_j, so
    ||S_a|| = sqrt(max_j m_j) exactly (Gather's rule), and ||dy||^2 = ||S_a da||^2 + ||S_b db||^2:
    Combine.STACK with gains sqrt(max m) per branch and TESTED_GAIN for a tested input (see there);
    jointly ||[S_a, S_b]||^2 = ||S_a S_a^T + S_b S_b^T|| =
    max(||S_a||^2, ||S_b||^2) (the two act on complementary output coordinates), so Lip is the
    larger gain, exactly. A condition computed by comparing data (t > s) is a branch switch:
    infinite, with the reason."""
    from stabaudit.bounds.domain import branch_switch

    match node.op:
        case Where() as op:
            pass
        case _:
            raise TypeError(f"bound_where got a {type(node.op).__name__}")
    fixed = op.fixed_condition()
    if fixed is None:
        return branch_switch(node, ctx, f"where() on a comparison ({op.test}) of data is a data-dependent branch "
                                        "switch: the output jumps where the data cross it, so no Lipschitz "
                                        "constant holds across it")
    out = tuple(ctx.output_shape)
    condition = np.broadcast_to(fixed, out)
    gains: list[float] = [TESTED_GAIN] * op.tested
    lowers: list[float] = [0.0] * op.tested
    branches = [(op.when_true, condition), (op.when_false, ~condition)]
    shapes = iter(ctx.input_shapes[op.tested:])
    for constant, selected in branches:
        if constant is not None:
            continue
        shape = tuple(next(shapes))
        most = int(selection_counts(np.asarray(selected), shape).max(initial=0)) if _size(out) and _size(shape) else 0
        upper, lower = sqrt_int_bounds(most)
        gains.append(upper)
        lowers.append(lower)
    if len(gains) != len(ctx.input_shapes):
        raise ValueError(f"Where reads {len(gains)} inputs but has {len(ctx.input_shapes)}")
    return OpBound(
        upper=Bound(value=max(gains, default=0.0), guarantee=Guarantee.UPPER, method="selection"),
        lower=Bound(value=max(lowers, default=0.0), guarantee=Guarantee.LOWER, method="selection"),
        combine=Combine.STACK,
        input_gains=tuple(gains),
    )
