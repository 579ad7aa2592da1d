"""Checks: analysis results + thresholds -> findings with stable ids (SA101...)."""

from stabaudit.checks import baseline, integrity, nonsmooth, representation  # noqa: F401  (registration)
from stabaudit.checks.base import (
    CHECKS,
    CheckPolicy,
    Evidence,
    canonical_threshold,
    rule_catalogue,
    run_checks,
)

__all__ = [
    "CHECKS",
    "CheckPolicy",
    "Evidence",
    "canonical_threshold",
    "rule_catalogue",
    "run_checks",
]
