"""A pull-request comment: verdict, bracket, the checks, the per-layer table folded."""

from __future__ import annotations

from stabaudit.renderers.base import RENDERERS, OutputFormat
from stabaudit.renderers.table import mark, num
from stabaudit.report.model import Report


@RENDERERS.register(OutputFormat.MD)
def render_markdown(report: Report) -> str:
    lip = report.lipschitz
    lines = [
        f"### stabaudit: {report.verdict.upper()} — `{report.model.path}`",
        "",
        f"Global Lipschitz (L2): **[{num(lip.lower)}, {num(lip.upper)}]** "
        f"(upper {mark(lip.certified)}: {lip.upper_method})",
        "",
        "| check | status | severity | detail |",
        "|---|---|---|---|",
    ]
    for f in report.checks:
        lines.append(f"| {f.id} {f.name} | {f.status.value} | {f.severity.value} | {f.message} |")
    lines += [
        "",
        "<details><summary>Per-layer bounds</summary>",
        "",
        "| layer | op | lower | upper | method |",
        "|---|---|---|---|---|",
    ]
    for layer in report.layers:
        lb = layer.lipschitz
        lines.append(f"| {layer.name} | {layer.op} | {num(lb.lower)} | {num(lb.upper)} | {lb.method} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)
