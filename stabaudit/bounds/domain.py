"""Rules of operators with no useful Lipschitz constant on the whole space (products of two
activations, ...): their bound is infinite until a bounded input domain is given, and they say so."""

from __future__ import annotations

import math

from stabaudit.bounds.base import RULES, Bound, Combine, Guarantee, OpBound, RuleContext
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Mul, OpType

NEEDS_DOMAIN = "needs-domain"  # the method of a bound that only a bounded input domain makes finite


def needs_domain(node: Node, ctx: RuleContext, why: str) -> OpBound:
    """An infinite (trivially sound) upper bound, one infinite gain per input, and the reason."""
    gains = tuple(math.inf for _ in ctx.input_shapes)
    return OpBound(
        upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method=NEEDS_DOMAIN),
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
