"""SA001 lists the checks whose status changed against the baseline report."""

from __future__ import annotations

from stabaudit.checks import CheckPolicy, run_checks
from stabaudit.report.model import Status
from tests.checks.test_checks import by_id, evidence


def test_status_changes_are_listed_but_do_not_fail_sa001():
    baseline = {
        "lipschitz": {"upper": 10.0, "certified": True},
        "layers": [],
        "checks": [{"id": "SA101", "status": "pass"}, {"id": "SA103", "status": "fail"}],
    }
    # K proved above 1 now (lower 5): SA101 went pass -> fail; the bound itself did not grow
    findings = run_checks(evidence(5.0, 10.0, baseline=baseline), CheckPolicy())
    sa001 = by_id(findings, "SA001")
    assert sa001.status is Status.PASS
    assert "SA101 pass -> fail" in sa001.value["status_changes"]
    assert "status changes: SA101 pass -> fail" in sa001.message
    # no baseline checks, or no change: nothing listed
    plain = run_checks(evidence(5.0, 10.0, baseline={"lipschitz": {"upper": 10.0, "certified": True}}), CheckPolicy())
    assert "status_changes" not in by_id(plain, "SA001").value
