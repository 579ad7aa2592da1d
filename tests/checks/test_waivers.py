"""Waivers (SA002 and waived findings) and disabled checks, against hand-built evidence."""

from __future__ import annotations

from dataclasses import replace

from stabaudit.checks import CheckPolicy, run_checks, unknown_check_ids
from stabaudit.checks.waivers import expired
from stabaudit.report.gate import FailOn, gate
from stabaudit.report.model import Status, Waiver
from tests.checks.test_checks import by_id, evidence


def failing(**kw):
    """K proved above the threshold: SA101 fails (lower 5 > 1)."""
    return replace(evidence(5.0, 10.0), **kw)


def test_a_valid_waiver_marks_the_failure_and_the_gate_passes():
    w = Waiver(check="SA101", reason="legacy model", expires="2027-03-01")
    findings = run_checks(
        failing(waivers=(w,), today="2027-03-01"), CheckPolicy(thresholds={"lipschitz": 1.0})
    )
    f = by_id(findings, "SA101")
    assert f.status is Status.FAIL and f.waiver == w
    sa002 = by_id(findings, "SA002")
    assert sa002.status is Status.PASS and sa002.value == {"waivers": 1, "expired": 0}
    assert gate(findings, FailOn.ERROR) == ("pass", 0)
    # without the waiver the same findings fail the gate
    plain = run_checks(failing(), CheckPolicy(thresholds={"lipschitz": 1.0}))
    assert by_id(plain, "SA101").waiver is None
    assert by_id(plain, "SA002").status is Status.SKIPPED
    assert gate(plain, FailOn.ERROR) == ("fail", 1)


def test_an_expired_waiver_fails_and_waives_nothing():
    w = Waiver(check="SA101", reason="legacy model", expires="2027-03-01")
    findings = run_checks(
        failing(waivers=(w,), today="2027-03-02"), CheckPolicy(thresholds={"lipschitz": 1.0})
    )
    assert by_id(findings, "SA101").waiver is None
    sa002 = by_id(findings, "SA002")
    assert sa002.status is Status.FAIL and "SA101 expired 2027-03-01 (legacy model)" in sa002.message
    assert gate(findings, FailOn.ERROR) == ("fail", 1)


def test_a_waiver_never_touches_a_passing_finding_and_without_expiry_never_expires():
    w = Waiver(check="SA101", reason="r")
    assert not expired(w, "9999-12-31")
    findings = run_checks(
        replace(evidence(0.5, 0.9), waivers=(w,), today="2030-01-01"), CheckPolicy()
    )
    assert by_id(findings, "SA101").status is Status.PASS
    assert by_id(findings, "SA101").waiver is None


def test_disabled_checks_are_reported_skipped():
    findings = run_checks(failing(), CheckPolicy(disabled=frozenset({"SA101", "SA102"})))
    for cid in ("SA101", "SA102"):
        f = by_id(findings, cid)
        assert f.status is Status.SKIPPED and f.message == "disabled by the config"
    assert by_id(findings, "SA103").status is not Status.SKIPPED


def test_unknown_check_ids_are_named_with_a_suggestion():
    assert unknown_check_ids({"SA101", "SA402"}) is None
    assert unknown_check_ids({"SA9O2"}) == "unknown check id 'SA9O2' (did you mean 'SA902'?)"
