"""Waivers: SA002 (no expired waiver) and marking failed findings that a valid waiver covers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from stabaudit.checks.base import CheckContext, Evidence, check
from stabaudit.report.model import Finding, Severity, Status, Waiver


def expired(waiver: Waiver, today: str) -> bool:
    """ISO dates compare as strings; a waiver is valid through its expiry day."""
    return bool(waiver.expires) and waiver.expires < today


@check("SA002", "waiver.expired", severity=Severity.ERROR)
def waiver_expired(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every waiver that applies to this model is still valid.

    A waiver (config `waivers:`, with check, model glob, reason and expiry date) accepts a failed
    finding: the finding is still computed and reported, marked waived with its reason, but does
    not fail the gate. A waiver is valid through its `expires` day (the report's date, which
    SOURCE_DATE_EPOCH pins). Once expired it waives nothing and this check fails (severity error),
    naming it, so that an accepted risk is looked at again instead of being forgotten.
    Skipped when no waiver applies to the model.
    """
    if not ev.waivers:
        return ctx.finding(Status.SKIPPED, None, "no waiver applies to this model")
    old = [w for w in ev.waivers if expired(w, ev.today)]
    value = {"waivers": len(ev.waivers), "expired": len(old)}
    if old:
        names = "; ".join(f"{w.check} expired {w.expires} ({w.reason})" for w in old)
        return ctx.finding(Status.FAIL, value, f"expired waiver(s): {names}")
    return ctx.finding(Status.PASS, value, f"{len(ev.waivers)} waiver(s), none expired")


def apply_waivers(findings: Iterable[Finding], waivers: Iterable[Waiver], today: str) -> tuple[Finding, ...]:
    """Failed findings covered by a valid waiver of their check id carry it (first one wins);
    SA002 itself cannot be waived."""
    valid: dict[str, Waiver] = {}
    for w in waivers:
        if not expired(w, today) and w.check != "SA002":
            valid.setdefault(w.check, w)
    return tuple(
        replace(f, waiver=valid[f.id]) if f.status is Status.FAIL and f.id in valid else f
        for f in findings
    )
