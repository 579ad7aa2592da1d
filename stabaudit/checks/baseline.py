"""Baseline channel: SA001, certified bounds against a previous report of the same model."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from stabaudit.checks.base import CheckContext, Evidence, check
from stabaudit.report.model import Finding, Severity, Status


def _upper(section: Any) -> float | None:
    if not isinstance(section, dict) or not section.get("certified"):
        return None
    value = section.get("upper")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@check(
    "SA001",
    "baseline.regression",
    severity=Severity.ERROR,
    threshold_key="max_regression",
    default_threshold=0.1,
)
def baseline_regression(ev: Evidence, ctx: CheckContext) -> Finding:
    """No certified upper bound grew beyond the allowed fraction against the baseline report.

    Inequality: upper_new <= (1 + r) * upper_baseline for the global certified upper bound and
    for every layer's certified upper bound (layers matched by name), r = --max-regression
    (default 0.1, i.e. 10%). The baseline is a previous JSON report of the same model
    (`--baseline previous.json`; in a batch report, the entry with the same model path).
    A bound that grew beyond r, or a certified bound that was lost, is a regression: the check
    fails (severity error) and names each one. Bounds that shrank by more than r are reported as
    improvements. Lower bounds come from a search and are not compared. The checks whose status
    changed between pass and fail since the baseline are listed too (information: each check
    gates on its own).
    Skipped without --baseline.
    """
    if ev.baseline is None:
        return ctx.finding(Status.SKIPPED, None, "no --baseline given")
    r = ctx.threshold if ctx.threshold is not None else 0.1
    new_global = ev.lipschitz.upper if ev.lipschitz.certified else None
    pairs = [("global", _upper(ev.baseline.get("lipschitz")), new_global)]
    old_layers = {
        e.get("name"): _upper(e.get("lipschitz"))
        for e in ev.baseline.get("layers", [])
        if isinstance(e, dict)
    }
    for layer in ev.layers:
        if layer.name in old_layers:
            new = layer.lipschitz.upper if layer.lipschitz.certified else None
            pairs.append((f"layer {layer.name}", old_layers[layer.name], new))
    regressions, improvements, where = [], [], []
    for what, old, new in pairs:
        if old is None or old <= 0:
            continue
        if new is None:
            regressions.append(f"{what}: certified bound {old:.6g} lost")
            where.append(what)
            continue
        change = new / old - 1.0
        if change > r:
            regressions.append(f"{what}: {old:.6g} -> {new:.6g} (+{change:.1%})")
            where.append(what)
        elif change < -r:
            improvements.append(f"{what}: {old:.6g} -> {new:.6g} ({change:.1%})")
    value = {"regressions": len(regressions), "improvements": len(improvements)}
    better = f"; improvements: {'; '.join(improvements)}" if improvements else ""
    layers = tuple(w.removeprefix("layer ") for w in where if w.startswith("layer "))
    if regressions:
        return ctx.finding(
            Status.FAIL,
            value,
            f"regression beyond {r:.0%}: {'; '.join(regressions)}{better}",
            layers,
        )
    return ctx.finding(Status.PASS, value, f"no regression beyond {r:.0%}{better}")


def with_status_changes(findings: tuple[Finding, ...], baseline: Any) -> tuple[Finding, ...]:
    """SA001 also lists the checks whose status changed against the baseline (pass -> fail is a
    check that newly fails, fail -> pass one that now holds). Information only: each check gates
    on its own; SA001 fails on the growth of certified bounds."""
    if not isinstance(baseline, dict) or not isinstance(baseline.get("checks"), list):
        return findings
    before = {
        c.get("id"): c.get("status") for c in baseline["checks"] if isinstance(c, dict)
    }
    changes = [
        f"{f.id} {before[f.id]} -> {f.status.value}"
        for f in findings
        if f.id not in ("SA001", "SA002")
        and before.get(f.id) in ("pass", "fail")
        and f.status.value in ("pass", "fail")
        and before[f.id] != f.status.value
    ]
    if not changes:
        return findings
    out = []
    for f in findings:
        if f.id == "SA001" and f.status is not Status.SKIPPED and isinstance(f.value, dict):
            value = {**f.value, "status_changes": changes}
            f = replace(f, value=value, message=f"{f.message}; status changes: {', '.join(changes)}")
        out.append(f)
    return tuple(out)
