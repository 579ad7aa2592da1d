"""The terminal report: per-layer gains, the global bracket, the depth profile, checks, verdict."""

from __future__ import annotations

from tabulate import tabulate

from stabaudit.renderers.base import RENDERERS, OutputFormat
from stabaudit.report.model import LayerLipschitz, Report


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def mark(certified: bool) -> str:
    return "certified" if certified else "estimate"


def _layer_mark(lip: LayerLipschitz) -> str:
    """Which of the two numbers are sound: both, only the upper one, or neither."""
    if lip.upper is None:
        return "-"
    if not lip.certified:
        return "estimate"
    if lip.lower is not None and not lip.lower_certified:
        return "upper only"
    return "certified"


@RENDERERS.register(OutputFormat.TABLE)
def render_table(report: Report) -> str:
    m, lip, eq = report.model, report.lipschitz, report.equivalence
    out = [
        f"stabaudit {report.tool.version}  {m.path}  {report.created}",
        f"format {m.format}  input {list(m.input_shape)}  parameters {m.parameters}  sha256 {m.sha256[:16]}",
        f"equivalence vs {eq.reference}: max |diff| {eq.max_abs_diff:.3g} "
        f"(tolerance {eq.tolerance:.3g}) {'ok' if eq.passed else 'MISMATCH'}",
        "",
    ]
    rows = [
        [
            i,
            layer.name,
            layer.op,
            num(layer.lipschitz.lower),
            num(layer.lipschitz.upper),
            _layer_mark(layer.lipschitz),
            layer.lipschitz.method,
        ]
        for i, layer in enumerate(report.layers)
    ]
    out.append("Per-layer Lipschitz constants (L2)")
    out.append(tabulate(rows, headers=["#", "layer", "op", "lower", "upper", "sound", "method"], disable_numparse=True))
    out.append("")
    out.append(
        f"Global Lipschitz bracket (L2): [{num(lip.lower)}, {num(lip.upper)}]"
        f"  upper: {lip.upper_method} ({mark(lip.certified)}); lower: {lip.lower_method}"
    )
    if lip.lower and lip.upper:
        out.append(f"  upper / lower = {lip.upper / lip.lower:.4g}")
    for mb in lip.methods:
        state = mark(mb.certified) if mb.upper is not None else "no bound"
        note = f"  ({'; '.join(mb.notes)})" if mb.notes and mb.upper is None else ""
        out.append(f"  method {mb.method}: {num(mb.upper)} [{state}, {mb.seconds:.2f} s]{note}")
    if report.profile:
        ends = report.profile[-1]
        out.append(f"Depth profile: {len(report.profile)} steps, ends at {num(ends.upper)} after {ends.layer}")
    out.append("")
    crow = [[f.id, f.name, f.severity.value, f.status.value.upper(), f.message] for f in report.checks]
    out.append(tabulate(crow, headers=["check", "name", "severity", "status", "detail"], disable_numparse=True))
    out.append("")
    out.append(f"verdict: {report.verdict.upper()} (fail-on {report.fail_on}, exit code {report.exit_code})")
    return "\n".join(out) + "\n"
