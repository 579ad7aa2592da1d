"""Checks: analysis results + thresholds -> findings with stable ids (SA101...)."""

from stabaudit.checks import (  # noqa: F401  (registration)
    baseline,
    integrity,
    nonsmooth,
    parameters,
    representation,
    residual,
    training,
    trajectory,
    waivers,
)
from stabaudit.checks.base import (
    CHECKS,
    CheckPolicy,
    Evidence,
    canonical_threshold,
    rule_catalogue,
    run_checks,
    unknown_check_ids,
)

__all__ = [
    "CHECKS",
    "CheckPolicy",
    "Evidence",
    "canonical_threshold",
    "rule_catalogue",
    "run_checks",
    "unknown_check_ids",
]
