"""A pull-request comment: verdict, bracket, the checks, the per-layer table folded; for a batch,
the batch verdict, one row per model and each model's failing checks folded."""

from __future__ import annotations

import html

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    TRAJECTORY_RENDERERS,
    OutputFormat,
    gate_line,
    is_failing,
    status_label,
)
from stabaudit.renderers.sections import additive_line, samples_line, sections, work_line
from stabaudit.renderers.table import detail, failing_ids, growth_line, mark, num, trajectory_rows
from stabaudit.report.model import (
    BatchReport,
    ModelError,
    Report,
    Status,
    TrajectoryReport,
    stopped_line,
)
from stabaudit.report.refusal import is_refusal


def cell(text: str) -> str:
    """Text safe inside a table cell: a '|' would end the cell, a newline the row."""
    return " ".join(text.replace("|", "\\|").splitlines())


def prose(text: str) -> str:
    """User text (messages, layer names) as literal text in a table cell: no HTML tags, no entities."""
    return cell(text.replace("&", "&amp;").replace("<", "&lt;"))


def summary_code(text: str) -> str:
    """A path inside <summary>, where Markdown is not parsed: HTML code, escaped."""
    return f"<code>{html.escape(text)}</code>"


def code(text: str) -> str:
    """Inline code whose content may itself hold backticks (CommonMark: a longer fence)."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


@RENDERERS.register(OutputFormat.MD)
def render_markdown(report: Report) -> str:
    lip = report.lipschitz
    if is_refusal(report):
        lines = [
            f"### stabaudit: {report.verdict.upper()} — {code(report.model.path)}",
            "",
            f"The audit was refused (exit code {report.exit_code}); no bound was computed.",
            "",
            f"Gate (fail-on {report.fail_on}, exit code {report.exit_code}): {gate_line(report.checks, report.fail_on)}",
            "",
            "| check | status | severity | detail |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {f.id} {f.name} | {status_label(f, report.fail_on)} | {f.severity.value} | {prose(detail(f))} |"
            for f in report.checks
        ]
        return "\n".join([*lines, ""])
    jumps = additive_line(report)
    dom = report.domain_lipschitz
    lines = [
        f"### stabaudit: {report.verdict.upper()} — {code(report.model.path)}",
        "",
        *([f"**{prose(stopped_line(report.stopped))}**", ""] if report.stopped is not None else []),
        f"Global Lipschitz (L2): **[{num(lip.lower)}, {num(lip.upper)}]** "
        f"(upper {mark(lip.certified)}: {lip.upper_method})",
        *(["", f"Over the domain ({prose(dom.domain.description)}): **[{num(dom.lower)}, {num(dom.upper)}]** "
                f"(upper {mark(dom.certified)}: {dom.upper_method})"] if dom is not None else []),
        *(["", f"Branch switches: {prose(jumps)}"] if jumps else []),
        "",
        f"Gate (fail-on {report.fail_on}, exit code {report.exit_code}): {gate_line(report.checks, report.fail_on)}",
        "",
        "| check | status | severity | detail |",
        "|---|---|---|---|",
    ]
    for f in report.checks:
        lines.append(f"| {f.id} {f.name} | {status_label(f, report.fail_on)} | {f.severity.value} | {prose(detail(f))} |")
    line = samples_line(report)
    if line:
        lines += ["", f"Samples: {prose(line)}"]
    line = work_line(report)
    if line:
        lines += ["", f"Work: {prose(line)}"]
    for sec in sections(report):
        lines += ["", f"<details><summary>{html.escape(sec.title)}</summary>", ""]
        lines += ["| " + " | ".join(sec.headers) + " |", "|" + "---|" * len(sec.headers)]
        lines += ["| " + " | ".join(prose(c) for c in row) + " |" for row in sec.rows]
        lines += [f"- {prose(n)}" for n in sec.notes]
        lines += ["", "</details>"]
    lines += [
        "",
        "<details><summary>Per-layer bounds</summary>",
        "",
        "| layer | op | lower | upper | method |",
        "|---|---|---|---|---|",
    ]
    for layer in report.layers:
        lb = layer.lipschitz
        lines.append(f"| {prose(layer.name)} | {layer.op} | {num(lb.lower)} | {num(lb.upper)} | {lb.method} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _model_details(entry: Report | ModelError) -> list[str]:
    """One model folded: its failing (and waived) checks, or why it could not be audited."""
    match entry:
        case ModelError(path=path, error=error):
            return [
                f"<details><summary>{summary_code(path)}: ERROR</summary>",
                "",
                f"Could not be audited (exit code {entry.exit_code}): {prose(error)}",
                "",
                "</details>",
            ]
        case Report():
            shown = [f for f in entry.checks if f.status is Status.FAIL or is_failing(f, entry.fail_on)]
            lines = [
                f"<details><summary>{summary_code(entry.model.path)}: {entry.verdict.upper()}, "
                f"{html.escape(gate_line(entry.checks, entry.fail_on))}</summary>",
                "",
            ]
            if shown:
                lines += ["| check | status | severity | detail |", "|---|---|---|---|"]
                lines += [
                    f"| {f.id} {f.name} | {status_label(f, entry.fail_on)} | {f.severity.value} | {prose(detail(f))} |"
                    for f in shown
                ]
            else:
                lines.append("No failing checks.")
            return [*lines, "", "</details>"]


@BATCH_RENDERERS.register(OutputFormat.MD)
def render_batch_markdown(batch: BatchReport) -> str:
    lines = [
        f"### stabaudit batch: {batch.verdict.upper()} — {len(batch.models)} models ({code(batch.config)}, "
        f"exit code {batch.exit_code})",
        "",
        "| model | verdict | lower | upper | upper is | failing checks |",
        "|---|---|---|---|---|---|",
    ]
    for entry in batch.models:
        match entry:
            case ModelError(path=path):
                lines.append(f"| {cell(code(path))} | error | - | - | - | - |")
            case Report(model=model, lipschitz=lip):
                lines.append(
                    f"| {cell(code(model.path))} | {entry.verdict} | {num(lip.lower)} | {num(lip.upper)} "
                    f"| {mark(lip.certified)} | {failing_ids(entry)} |"
                )
    for entry in batch.models:
        lines += ["", *_model_details(entry)]
    return "\n".join(lines) + "\n"


@TRAJECTORY_RENDERERS.register(OutputFormat.MD)
def render_trajectory_markdown(trajectory: TrajectoryReport) -> str:
    headers, rows = trajectory_rows(trajectory)
    lines = [
        f"### stabaudit trajectory: {trajectory.verdict.upper()} — {len(trajectory.points)} checkpoints "
        f"(exit code {trajectory.exit_code})",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        row[1] = code(row[1])
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    lines += ["", "| channel | sup lower | sup upper | upper is | limit | status |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {c.channel.value} | {num(c.sup_lower)} | {num(c.sup_upper)} | {mark(c.certified)} | {num(c.limit)} "
        f"| {c.status.value} |"
        for c in trajectory.channels
    ]
    lines += ["", f"- {growth_line('K_upper', trajectory.growth_upper)}", f"- {growth_line('K_lower', trajectory.growth_lower)}"]
    lines += ["", "| check | status | severity | detail |", "|---|---|---|---|"]
    lines += [
        f"| {f.id} {f.name} | {status_label(f, trajectory.fail_on)} | {f.severity.value} | {prose(detail(f))} |"
        for f in trajectory.checks
    ]
    errors = [f"- {code(p.path)}: {prose(p.error)}" for p in trajectory.points if p.error]
    if errors:
        lines += ["", "Checkpoints that could not be audited:", *errors]
    return "\n".join(lines) + "\n"
