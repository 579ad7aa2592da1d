"""The gate: findings + policy -> verdict and exit code (CONTRACT.md exit codes 0 and 1)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from stabaudit.report.model import Finding, Severity, Status


class FailOn(str, Enum):
    """--fail-on: the lowest level of finding that fails the gate."""

    ERROR = "error"
    WARNING = "warning"
    INCONCLUSIVE = "inconclusive"


def gate(findings: Iterable[Finding], fail_on: FailOn) -> tuple[str, int]:
    """A failed check at or above the level fails the gate; with ``inconclusive``, an
    inconclusive check of severity warning or error fails it too. A waived finding never fails it
    (an expired waiver is a failed finding of its own, SA002)."""
    for f in findings:
        if f.waiver is not None:
            continue
        if f.status is Status.FAIL:
            if f.severity is Severity.ERROR:
                return "fail", 1
            if f.severity is Severity.WARNING and fail_on is not FailOn.ERROR:
                return "fail", 1
        if (
            f.status is Status.INCONCLUSIVE
            and fail_on is FailOn.INCONCLUSIVE
            and f.severity.rank >= Severity.WARNING.rank
        ):
            return "fail", 1
    return "pass", 0
