"""The checks' documentation as text: one check for `stabaudit explain`, all of them as docs/theory.md."""

from __future__ import annotations

from stabaudit.checks.base import CHECKS, CheckSpec
from stabaudit.report.refusal import AUDIT_REFUSED


def settings_line(spec: CheckSpec) -> str:
    default = "none" if spec.default_threshold is None else f"{spec.default_threshold:g}"
    how = f"; change it with --threshold {spec.threshold_key}=VALUE or `thresholds: {{{spec.threshold_key}: VALUE}}`" if spec.threshold_key else ""
    return (
        f"default severity {spec.severity.value} (change it with `severity: {{{spec.id}: error|warning|info}}`), "
        f"default threshold {default}{how}"
    )


def explain_text(spec: CheckSpec) -> str:
    """What `stabaudit explain ID` prints."""
    return f"{spec.id} {spec.name}\n{settings_line(spec)}\n\n{spec.doc}\n"


def refused_text() -> str:
    """What `stabaudit explain SA900` prints: the finding of a refused audit (not a check that runs)."""
    return (
        f"{AUDIT_REFUSED.id} {AUDIT_REFUSED.name}\nnot a check that runs: the finding of an audit that "
        f"stopped (exit code 2)\n\n{AUDIT_REFUSED.doc}\n"
    )


def theory_markdown() -> str:
    """docs/theory.md: every registered check, in id order, from its docstring (`make docs`)."""
    lines = [
        "# The checks of stabaudit",
        "",
        "Generated from the checks' own documentation by `make docs` (`stabaudit explain --all`);",
        "`stabaudit explain SAxxx` prints one of them. Each states the inequality it relies on and",
        "what it assumes. Every status follows one rule: pass only when a",
        "certified upper bound proves the condition, fail only when a sound lower bound (or a",
        "measurement that is exact for the given samples) proves the violation, inconclusive otherwise,",
        "skipped when the check's inputs were not given.",
        "",
        "| id | name | severity | threshold |",
        "|---|---|---|---|",
    ]
    specs = [CHECKS.get(k) for k in sorted(CHECKS)]
    for spec in specs:
        default = "" if spec.default_threshold is None else f"{spec.default_threshold:g}"
        key = f" (`{spec.threshold_key}`)" if spec.threshold_key else ""
        lines.append(f"| [{spec.id}](#{spec.id.lower()}) | {spec.name} | {spec.severity.value} | {default}{key} |")
    lines.append(f"| [{AUDIT_REFUSED.id}](#{AUDIT_REFUSED.id.lower()}) | {AUDIT_REFUSED.name} | error | (refused audits) |")
    for spec in specs:
        lines += ["", f"## {spec.id}", "", f"**{spec.name}**: {settings_line(spec)}.", "", spec.doc]
    lines += [
        "",
        f"## {AUDIT_REFUSED.id}",
        "",
        f"**{AUDIT_REFUSED.name}**: not a check that runs; the one finding of the report of an audit "
        "that stopped with exit code 2.",
        "",
        AUDIT_REFUSED.doc,
    ]
    return "\n".join(lines) + "\n"
