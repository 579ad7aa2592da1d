"""Translators of Where and of the bool conditions it reads: IsNaN, IsInf, the comparisons Greater,
GreaterOrEqual, Less, LessOrEqual, Equal, and Not. Conditions on constants (held masks) are folded
before any of these run; a condition computed from variables is kept aside (Context.conditions) and
carried by the Where that reads it."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import Condition, Context, OnnxNode, Unsupported, register

_COMPARISONS = {"Greater": "greater", "GreaterOrEqual": "greater_equal", "Less": "less",
                "LessOrEqual": "less_equal", "Equal": "equal"}
# the comparison with its operands swapped: c R x is x R' c
_SWAPPED = {"greater": "less", "greater_equal": "less_equal", "less": "greater", "less_equal": "greater_equal",
            "equal": "equal"}


def _plain_variable(node: OnnxNode, ctx: Context, name: str) -> str:
    if name in ctx.conditions:
        raise Unsupported(f"{node.op_type}(of a bool condition computed from variables)")
    return name


@register("IsNaN", "IsInf")
def nonfinite_test(node: OnnxNode, ctx: Context) -> None:
    """IsNaN(x), IsInf(x) of a variable: false at every finite entry, kept for the Where that reads it."""
    x = _plain_variable(node, ctx, node.inputs[0])
    ctx.var(x)
    test = "isnan"
    if node.op_type == "IsInf":
        pos, neg = int(node.attr("detect_positive", 1)), int(node.attr("detect_negative", 1))
        if not pos and not neg:  # detects nothing: constant false
            ctx.constants[node.outputs[0]] = np.zeros(ctx.shape(x), dtype=bool)
            return
        test = "isinf" if pos and neg else ("isposinf" if pos else "isneginf")
    ctx.conditions[node.outputs[0]] = Condition(test=test, tested=(x,))


@register(*_COMPARISONS)
def comparison(node: OnnxNode, ctx: Context) -> None:
    """x R c, c R x (swapped to x R' c) or x R y of variables: a data-dependent condition."""
    a, b = node.inputs[0], node.inputs[1]
    test = _COMPARISONS[node.op_type]
    ca, cb = ctx.const(a), ctx.const(b)
    if ca is not None:
        a, b, cb, test = b, a, ca, _SWAPPED[test]
    a = _plain_variable(node, ctx, a)
    ctx.var(a)
    if cb is not None:
        if cb.dtype.kind not in "fiub":
            raise Unsupported(f"{node.op_type}(with a {cb.dtype} constant)")
        ctx.conditions[node.outputs[0]] = Condition(test=test, tested=(a,), other=cb.astype(np.float64))
        return
    b = _plain_variable(node, ctx, b)
    ctx.var(b)
    ctx.conditions[node.outputs[0]] = Condition(test=test, tested=(a, b))


@register("Not")
def not_(node: OnnxNode, ctx: Context) -> None:
    condition = ctx.conditions.get(node.inputs[0])
    if condition is None:
        raise Unsupported("Not(of a variable that is not a condition)")
    ctx.conditions[node.outputs[0]] = Condition(test=condition.test, tested=condition.tested,
                                                other=condition.other, negate=not condition.negate)


def _branch(node: OnnxNode, ctx: Context, name: str) -> tuple[np.ndarray | None, str | None]:
    """(constant, None) or (None, variable) for a branch of Where."""
    value = ctx.const(name)
    if value is not None:
        if value.dtype.kind != "f":
            raise Unsupported(f"Where(of a {value.dtype} constant with a real-valued variable)")
        return np.asarray(value), None
    return None, ctx.var(_plain_variable(node, ctx, name))


@register("Where")
def where(node: OnnxNode, ctx: Context) -> None:
    """where(c, a, b): a constant c (a mask, a held input's comparison) is a fixed selection; c from
    IsNaN/IsInf of a variable is a fixed selection on finite inputs; c from a comparison of
    variables is a data-dependent branch switch (ops.Where)."""
    cond, a, b = node.inputs[0], node.inputs[1], node.inputs[2]
    when_true, var_a = _branch(node, ctx, a)
    when_false, var_b = _branch(node, ctx, b)
    branches = [v for v in (var_a, var_b) if v is not None]
    mask = ctx.const(cond)
    if mask is not None:
        if not branches:  # cannot happen after folding, kept as a guard
            raise Unsupported("Where(of constants)")
        op = O.Where(mask=np.asarray(mask).astype(bool), when_true=when_true, when_false=when_false)
        ctx.emit(node, op, branches)
        return
    condition = ctx.conditions.get(cond)
    if condition is None:
        raise Unsupported("Where(on a condition that is not a comparison or a test of a variable)")
    op = O.Where(test=condition.test, other=condition.other, negate=condition.negate,
                 when_true=when_true, when_false=when_false)
    ctx.emit(node, op, [*condition.tested, *branches])
