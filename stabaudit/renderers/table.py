"""The terminal report: per-layer gains, the global bracket, the depth profile, checks, verdict;
for a batch, one row per model and the batch verdict."""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Sequence
from typing import TextIO

from tabulate import tabulate

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    TRAJECTORY_RENDERERS,
    OutputFormat,
    gate_line,
    is_failing,
    status_label,
    waiver_note,
)
from stabaudit.renderers.sections import additive_line, samples_line, sections, work_line
from stabaudit.report.gate import is_warning
from stabaudit.report.model import (
    BatchReport,
    Finding,
    GrowthFit,
    LayerLipschitz,
    ModelError,
    Report,
    TrajectoryChannel,
    TrajectoryPoint,
    TrajectoryReport,
    stopped_line,
)
from stabaudit.report.refusal import is_refusal

# The width of the terminal the table is written to; None (files, pipes): no wrapping, so that a
# report file is the same whatever the terminal it was made from.
WIDTH: contextvars.ContextVar[int | None] = contextvars.ContextVar("table_width", default=None)


def _fit(rows: Sequence[Sequence[object]], headers: list[str], wrap: int) -> str:
    """tabulate, with column ``wrap`` folded so that each line fits WIDTH (when one is set; the
    column keeps at least 16 characters)."""
    width = WIDTH.get()
    text = tabulate(rows, headers=headers, disable_numparse=True)
    if width is None or not rows:
        return text
    column = max(len(str(r[wrap])) for r in [headers, *rows])
    for _ in range(4):  # shrink the folded column by the excess until the lines fit
        excess = max(len(line) for line in text.splitlines()) - width
        if excess <= 0 or column <= 16:
            break
        column = max(16, column - excess)
        widths: list[int | None] = [None] * len(headers)
        widths[wrap] = column
        text = tabulate(rows, headers=headers, disable_numparse=True, maxcolwidths=widths)
    return text


_STATUS_COLOURS = {"PASS": "32", "FAIL": "1;31", "WARN": "33", "INCONCLUSIVE": "36", "WAIVED": "35"}


def colour_enabled(stream: TextIO) -> bool:
    """Colour on a terminal; NO_COLOR (any value) turns it off, FORCE_COLOR on (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


def colourise(text: str) -> str:
    """The table with its status words and verdict in colour (ANSI SGR)."""

    def paint(match: re.Match[str]) -> str:
        word = match.group(0)
        return f"\x1b[{_STATUS_COLOURS[word]}m{word}\x1b[0m"

    pattern = re.compile(r"\b(PASS|FAIL|WARN|INCONCLUSIVE|WAIVED)\b")
    lines = []
    for line in text.split("\n"):
        if re.match(r"(SA\d{3}|verdict:)", line):
            line = pattern.sub(paint, line, count=1)
        lines.append(line)
    return "\n".join(lines)


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def mark(certified: bool) -> str:
    return "certified" if certified else "estimate"


def upper_source(upper: float | None, method: str, certified: bool) -> str:
    """Where an upper end comes from, or that there is none (a method name beside no number
    would read as a bound)."""
    return "none" if upper is None else f"{method} ({mark(certified)})"


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
    if is_refusal(report):
        return _render_refusal(report)
    out = [
        f"stabaudit {report.tool.version}  {m.path}  {report.created}",
        f"format {m.format}  input {list(m.input_shape)}  parameters {m.parameters}  sha256 {m.sha256[:16]}",
        f"equivalence vs {eq.reference}: max |diff| {eq.max_abs_diff:.3g} "
        f"(tolerance {eq.tolerance:.3g}) {'ok' if eq.passed else 'MISMATCH'}",
        *([stopped_line(report.stopped)] if report.stopped is not None else []),
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
    out.append(_fit(rows, ["#", "layer", "op", "lower", "upper", "sound", "method"], wrap=6))
    out.append("")
    out.append(
        f"Global Lipschitz bracket (L2): [{num(lip.lower)}, {num(lip.upper)}]"
        f"  upper: {upper_source(lip.upper, lip.upper_method, lip.certified)}; lower: {lip.lower_method}"
    )
    if lip.lower and lip.upper:
        out.append(f"  upper / lower = {lip.upper / lip.lower:.4g}")
    jumps = additive_line(report)
    if jumps:
        out.append(f"  {jumps}")
    dom = report.domain_lipschitz
    if dom is not None:
        out.append(
            f"Over the domain ({dom.domain.description}): [{num(dom.lower)}, {num(dom.upper)}]"
            f"  upper: {upper_source(dom.upper, dom.upper_method, dom.certified)}"
        )
        out += [f"  {note}" for note in dom.notes]
    for mb in lip.methods:
        state = mark(mb.certified) if mb.upper is not None else "no bound"
        note = f"  ({'; '.join(mb.notes)})" if mb.notes and mb.upper is None else ""
        out.append(f"  method {mb.method}: {num(mb.upper)} [{state}, {mb.seconds:.2f} s]{note}")
    if report.profile:
        ends = report.profile[-1]
        out.append(f"Depth profile: {len(report.profile)} steps, ends at {num(ends.upper)} after {ends.layer}")
    line = samples_line(report)
    if line:
        out.append(f"Samples: {line}")
    line = work_line(report)
    if line:
        out.append(f"Work: {line}")
    for sec in sections(report):
        out += ["", sec.title, tabulate(list(sec.rows), headers=list(sec.headers), disable_numparse=True)]
        out += [f"  {n}" for n in sec.notes]
    out.append("")
    crow = [[f.id, f.name, f.severity.value, status_label(f, report.fail_on).upper(), detail(f)] for f in report.checks]
    out.append(_fit(crow, ["check", "name", "severity", "status", "detail"], wrap=4))
    out.append("")
    out.append(f"gate: {gate_line(report.checks, report.fail_on)}")
    out.append(f"verdict: {report.verdict.upper()} (fail-on {report.fail_on}, exit code {report.exit_code})"
               + (", INCOMPLETE" if not report.complete else ""))
    return "\n".join(out) + "\n"


def _render_refusal(report: Report) -> str:
    crow = [[f.id, f.name, f.severity.value, status_label(f, report.fail_on).upper(), detail(f)] for f in report.checks]
    out = [
        f"stabaudit {report.tool.version}  {report.model.path}  {report.created}",
        f"The audit was refused (exit code {report.exit_code}); no bound was computed.",
        "",
        _fit(crow, ["check", "name", "severity", "status", "detail"], wrap=4),
        "",
        f"gate: {gate_line(report.checks, report.fail_on)}",
        f"verdict: {report.verdict.upper()} (fail-on {report.fail_on}, exit code {report.exit_code})",
    ]
    return "\n".join(out) + "\n"


def detail(finding: Finding) -> str:
    """The check's message, and the waiver that accepts it."""
    if finding.waiver is None:
        return finding.message
    return f"{finding.message} ({waiver_note(finding.waiver)})"


def failing_ids(report: Report) -> str:
    """The ids of the checks that fail the gate, then the warnings (failed below --fail-on) and
    the waived ones, marked as such."""
    ids = [f.id for f in report.checks if is_failing(f, report.fail_on)]
    ids += [f"{f.id} (warn)" for f in report.checks if is_warning(f, report.fail_on)]
    ids += [f"{f.id} (waived)" for f in report.checks if f.waiver is not None]
    return ", ".join(ids) or "-"


@BATCH_RENDERERS.register(OutputFormat.TABLE)
def render_batch_table(batch: BatchReport) -> str:
    rows = []
    errors = []
    for entry in batch.models:
        match entry:
            case ModelError(path=path, error=error):
                rows.append([path, "error", "-", "-", "-", "-"])
                errors.append(f"error: {path}: {error}")
            case Report(model=model, lipschitz=lip):
                rows.append(
                    [model.path, entry.verdict, num(lip.lower), num(lip.upper), mark(lip.certified), failing_ids(entry)]
                )
    out = [
        f"stabaudit {batch.tool.version}  batch {batch.config}  {batch.created}",
        "",
        tabulate(rows, headers=["model", "verdict", "lower", "upper", "upper is", "failing checks"], disable_numparse=True),
    ]
    if errors:
        out += ["", *errors]
    out += ["", f"batch verdict: {batch.verdict.upper()} ({len(batch.models)} models, exit code {batch.exit_code})"]
    return "\n".join(out) + "\n"


def _channel_cell(point: TrajectoryPoint, channel: TrajectoryChannel) -> str:
    b = next((b for b in point.channels if b.channel is channel), None)
    return "-" if b is None else f"[{num(b.lower)}, {num(b.upper)}]"


def trajectory_rows(trajectory: TrajectoryReport) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per checkpoint): step, path, verdict, the global bracket and the other
    channels that some checkpoint has, as [lower, upper]."""
    shown = [
        c.channel for c in trajectory.channels if c.channel is not TrajectoryChannel.LIPSCHITZ
    ]
    headers = ["step", "checkpoint", "verdict", "K lower", "K upper", "upper is", *[c.value for c in shown]]
    rows = []
    for p in trajectory.points:
        lip = next((b for b in p.channels if b.channel is TrajectoryChannel.LIPSCHITZ), None)
        rows.append(
            [
                str(p.step),
                p.path,
                p.verdict,
                num(lip.lower) if lip else "-",
                num(lip.upper) if lip else "-",
                mark(lip.certified) if lip else "-",
                *[_channel_cell(p, c) for c in shown],
            ]
        )
    return headers, rows


def growth_line(name: str, fit: GrowthFit) -> str:
    if fit.slope is None:
        return f"growth exponent of {name}: - ({fit.message})"
    return f"growth exponent of {name}: {fit.slope:.6g} per step (fit residual {num(fit.residual)}, {fit.points} checkpoints)"


@TRAJECTORY_RENDERERS.register(OutputFormat.TABLE)
def render_trajectory_table(trajectory: TrajectoryReport) -> str:
    headers, rows = trajectory_rows(trajectory)
    where = f"  config {trajectory.config}" if trajectory.config else ""
    out = [
        f"stabaudit {trajectory.tool.version}  trajectory of {len(trajectory.points)} checkpoints{where}  {trajectory.created}",
        "",
        tabulate(rows, headers=headers, disable_numparse=True),
        "",
        "Supremum over the checkpoints",
        tabulate(
            [
                [c.channel.value, num(c.sup_lower), num(c.sup_upper), mark(c.certified), num(c.limit), c.status.value.upper()]
                for c in trajectory.channels
            ],
            headers=["channel", "sup lower", "sup upper", "upper is", "limit", "status"],
            disable_numparse=True,
        ),
        "",
        growth_line("K_upper", trajectory.growth_upper),
        growth_line("K_lower", trajectory.growth_lower),
        "",
    ]
    crow = [
        [f.id, f.name, f.severity.value, status_label(f, trajectory.fail_on).upper(), detail(f)]
        for f in trajectory.checks
    ]
    out.append(_fit(crow, ["check", "name", "severity", "status", "detail"], wrap=4))
    errors = [f"error: {p.path}: {p.error}" for p in trajectory.points if p.error]
    if errors:
        out += ["", *errors]
    out += [
        "",
        f"trajectory verdict: {trajectory.verdict.upper()} (fail-on {trajectory.fail_on}, exit code {trajectory.exit_code})",
    ]
    return "\n".join(out) + "\n"
