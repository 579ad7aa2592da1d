"""Rules of operators with no useful Lipschitz constant on the whole space (products of two
activations, ...): their bound is infinite until a bounded input domain is given, and they say so."""

from __future__ import annotations

import math

from stabaudit.bounds.base import RULES, Bound, Combine, Guarantee, OpBound, RuleContext
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Div, Exp, Log, MatMul, Mul, OpType, Pow, Reciprocal, Sqrt

NEEDS_DOMAIN = "needs-domain"  # the method of a bound that only a bounded input domain makes finite
BRANCH_SWITCH = "branch-switch"  # the method of the infinite bound of a data-dependent switch


def needs_domain(node: Node, ctx: RuleContext, why: str) -> OpBound:
    """An infinite (trivially sound) upper bound, one infinite gain per input, and the reason."""
    gains = tuple(math.inf for _ in ctx.input_shapes)
    return OpBound(
        upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method=NEEDS_DOMAIN),
        combine=Combine.SUM if len(gains) > 1 else Combine.CHAIN,
        input_gains=gains if len(gains) > 1 else (),
        notes=(why,),
    )


def branch_switch(node: Node, ctx: RuleContext, why: str) -> OpBound:
    """An infinite (trivially sound) upper bound of a map that jumps where the data cross a
    threshold: no Lipschitz constant holds across the jump, on any domain that contains it."""
    gains = tuple(math.inf for _ in ctx.input_shapes)
    return OpBound(
        upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method=BRANCH_SWITCH),
        combine=Combine.SUM if len(gains) > 1 else Combine.CHAIN,
        input_gains=gains if len(gains) > 1 else (),
        notes=(why,),
    )


@RULES.register(OpType.MUL)
def bound_mul(node: Node, ctx: RuleContext) -> OpBound:
    """x * y of two variables: d(xy) = y dx + x dy grows with |x| and |y|, so no constant bounds it
    on the whole space."""
    match node.op:
        case Mul():
            return needs_domain(node, ctx, "the product of two variable tensors is Lipschitz only on a "
                                           "bounded domain")
    raise TypeError(f"bound_mul got a {type(node.op).__name__}")


@RULES.register(OpType.DIV)
def bound_div(node: Node, ctx: RuleContext) -> OpBound:
    """x / y of two variables: d(x/y) = dx / y - x dy / y^2, unbounded as y -> 0."""
    match node.op:
        case Div():
            return needs_domain(node, ctx, "the quotient of two variable tensors is Lipschitz only on a "
                                           "bounded domain that keeps the divisor away from 0")
    raise TypeError(f"bound_div got a {type(node.op).__name__}")


@RULES.register(OpType.MATMUL)
def bound_matmul(node: Node, ctx: RuleContext) -> OpBound:
    """A @ B of two variables: d(AB) = dA B + A dB grows with ||A|| and ||B|| (bilinear), so no
    constant bounds it on the whole space."""
    match node.op:
        case MatMul():
            return needs_domain(node, ctx, "the matrix product of two variable tensors is Lipschitz only on "
                                           "a bounded domain")
    raise TypeError(f"bound_matmul got a {type(node.op).__name__}")


# element-wise maps f whose |f'| is unbounded on the domain of f: their reason
_UNBOUNDED_SLOPE = {
    Sqrt: "sqrt has slope 1/(2 sqrt x), unbounded as x -> 0+: Lipschitz only on a bounded domain "
          "away from 0",
    Reciprocal: "1/x has slope -1/x^2, unbounded as x -> 0: Lipschitz only on a bounded domain away from 0",
    Exp: "exp has slope exp(x), unbounded as x -> +inf: Lipschitz only on a bounded domain",
    Log: "log has slope 1/x, unbounded as x -> 0+: Lipschitz only on a bounded domain away from 0",
}


def bound_unbounded_slope(node: Node, ctx: RuleContext) -> OpBound:
    """sqrt, 1/x, exp, log: sup |f'| = inf over the map's domain, so no global constant exists."""
    why = _UNBOUNDED_SLOPE.get(type(node.op))
    if why is None:
        raise TypeError(f"bound_unbounded_slope got a {type(node.op).__name__}")
    return needs_domain(node, ctx, why)


for _op in (OpType.SQRT, OpType.RECIPROCAL, OpType.EXP, OpType.LOG):
    RULES.add(_op, bound_unbounded_slope)


@RULES.register(OpType.POW)
def bound_pow(node: Node, ctx: RuleContext) -> OpBound:
    """x ** p for a constant p >= 1: slope p x^(p-1), unbounded for p > 1 (bounded domain needed);
    p = 1 is the identity (the loader aliases it, but an IR Pow(1) gets the exact constant 1)."""
    match node.op:
        case Pow(exponent=p) if p == 1.0:
            exact = 0.0 if any(int(math.prod(s)) == 0 for s in ctx.input_shapes) else 1.0
            return OpBound(upper=Bound(value=exact, guarantee=Guarantee.UPPER, method="isometry"),
                           lower=Bound(value=exact, guarantee=Guarantee.LOWER, method="isometry"))
        case Pow(exponent=p):
            return needs_domain(node, ctx, f"x ** {p:g} has slope {p:g} x^{p - 1:g}, unbounded as |x| -> inf: "
                                           "Lipschitz only on a bounded domain")
    raise TypeError(f"bound_pow got a {type(node.op).__name__}")
