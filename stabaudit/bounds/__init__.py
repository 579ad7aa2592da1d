"""Per-operator Lipschitz bound rules: the registry, filled by explicit imports, and ``bound_node``."""

from __future__ import annotations

import dataclasses
import time

from stabaudit.bounds import (
    activations,
    conv,
    domain,
    linear,
    normalization,
    pooling,
    quantization,
    reduction,
    structural,
)
from stabaudit.bounds.base import (
    RULES,
    Bound,
    BoundSettings,
    Combine,
    Guarantee,
    OpBound,
    Rule,
    RuleContext,
)
from stabaudit.errors import InternalError, StabauditError
from stabaudit.ir.graph import Node

# The rule modules register themselves on import; naming them here keeps registration explicit.
RULE_MODULES = (linear, conv, normalization, activations, pooling, structural, domain, reduction, quantization)


def rule_for(node: Node) -> Rule:
    """The registered rule of the node's op type (an InternalError names the known ones if none)."""
    try:
        rule: Rule = RULES.get(node.op.type)
    except KeyError as exc:
        raise InternalError(f"node {node.name!r} ({node.op.type.value}): no bound rule: {exc}") from exc
    return rule


def bound_node(node: Node, ctx: RuleContext) -> OpBound:
    """Apply the node's rule, timed (``OpBound.seconds``).

    Any exception is re-raised with the node's name and op (STYLE convention 4): a StabauditError
    keeps its class and exit code, anything else becomes an InternalError (exit 3: a bug).
    """
    rule = rule_for(node)
    start = time.perf_counter()
    try:
        result = rule(node, ctx)
    except Exception as exc:
        message = f"node {node.name!r} ({node.op.type.value}): {exc}"
        if isinstance(exc, StabauditError):
            wrapped = StabauditError.__new__(type(exc))
            StabauditError.__init__(wrapped, message, path=exc.path)
            for key, value in vars(exc).items():
                if key not in ("path", "problems"):
                    setattr(wrapped, key, value)
            raise wrapped from exc
        raise InternalError(f"{message} [{type(exc).__name__}]") from exc
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


__all__ = [
    "RULES",
    "RULE_MODULES",
    "Bound",
    "BoundSettings",
    "Combine",
    "Guarantee",
    "OpBound",
    "Rule",
    "RuleContext",
    "bound_node",
    "rule_for",
]
