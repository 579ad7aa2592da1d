"""The gate maps findings and --fail-on to a verdict and exit code."""

from __future__ import annotations

import pytest

from stabaudit.report.gate import FailOn, gate
from stabaudit.report.model import Finding, Severity, Status


def finding(status: Status, severity: Severity) -> Finding:
    return Finding(id="SA101", name="x", status=status, severity=severity, value=None, threshold=None, message="")


@pytest.mark.parametrize(
    ("status", "severity", "fail_on", "expected"),
    [
        (Status.FAIL, Severity.ERROR, FailOn.ERROR, 1),
        (Status.FAIL, Severity.WARNING, FailOn.ERROR, 0),
        (Status.FAIL, Severity.WARNING, FailOn.WARNING, 1),
        (Status.FAIL, Severity.INFO, FailOn.WARNING, 0),
        (Status.INCONCLUSIVE, Severity.ERROR, FailOn.ERROR, 0),
        (Status.INCONCLUSIVE, Severity.ERROR, FailOn.WARNING, 0),
        (Status.INCONCLUSIVE, Severity.WARNING, FailOn.INCONCLUSIVE, 1),
        (Status.INCONCLUSIVE, Severity.INFO, FailOn.INCONCLUSIVE, 0),
        (Status.FAIL, Severity.WARNING, FailOn.INCONCLUSIVE, 1),
        (Status.PASS, Severity.ERROR, FailOn.INCONCLUSIVE, 0),
        (Status.SKIPPED, Severity.ERROR, FailOn.INCONCLUSIVE, 0),
    ],
)
def test_gate(status, severity, fail_on, expected):
    verdict, code = gate([finding(status, severity)], fail_on)
    assert code == expected
    assert verdict == ("fail" if expected else "pass")
