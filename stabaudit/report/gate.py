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

    @classmethod
    def parse(cls, value: str) -> FailOn:
        """A report's ``fail_on`` string; an empty or unknown one is the default, error."""
        try:
            return cls(value)
        except ValueError:
            return cls.ERROR


def gates(f: Finding, fail_on: FailOn | str) -> bool:
    """Whether this one finding fails the gate: a failed check at or above the level; with
    ``inconclusive``, an inconclusive check of severity warning or error too. A waived finding
    never does (an expired waiver is a failed finding of its own, SA002)."""
    level = fail_on if isinstance(fail_on, FailOn) else FailOn.parse(fail_on)
    if f.waiver is not None:
        return False
    if f.status is Status.FAIL:
        return f.severity is Severity.ERROR or (f.severity is Severity.WARNING and level is not FailOn.ERROR)
    return (
        f.status is Status.INCONCLUSIVE
        and level is FailOn.INCONCLUSIVE
        and f.severity.rank >= Severity.WARNING.rank
    )


def is_warning(f: Finding, fail_on: FailOn | str) -> bool:
    """A failed check, not waived, below the --fail-on level: shown in every format, never a gate
    failure (the same words everywhere: see ``why_not_gating``)."""
    return f.waiver is None and f.status is Status.FAIL and not gates(f, fail_on)


INFO_DOES_NOT_GATE = "informational checks gate at no --fail-on level until you set their threshold"


def why_not_gating(findings: Iterable[Finding], fail_on: FailOn | str) -> str:
    """Why the warnings among ``findings`` (``is_warning``) do not fail the gate, in the words every
    format uses: a check of severity warning is below --fail-on error; a check of severity info (a
    default threshold nobody chose) gates at no level. Empty when there is no warning."""
    level = fail_on if isinstance(fail_on, FailOn) else FailOn.parse(fail_on)
    severities = {f.severity for f in findings if is_warning(f, level)}
    reasons = []
    if severities - {Severity.INFO}:
        reasons.append(f"warnings do not gate at --fail-on {level.value}")
    if Severity.INFO in severities:
        reasons.append(INFO_DOES_NOT_GATE)
    return "; ".join(reasons)


def gate(findings: Iterable[Finding], fail_on: FailOn) -> tuple[str, int]:
    """The verdict: "fail" (exit 1) when any finding gates (see ``gates``), else "pass" (exit 0)."""
    if any(gates(f, fail_on) for f in findings):
        return "fail", 1
    return "pass", 0
