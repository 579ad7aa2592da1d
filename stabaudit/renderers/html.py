"""One self-contained HTML page (inline CSS and SVG, nothing fetched): summary, per-layer bounds and
the depth profile on log scales, the checks; for a batch, a summary table and one section per model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape
from typing import Any

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    OutputFormat,
    gate_line,
    status_label,
    waiver_note,
)
from stabaudit.renderers.sections import additive_line, samples_line, sections, work_line
from stabaudit.renderers.table import failing_ids, mark, num
from stabaudit.report.model import (
    BatchReport,
    Finding,
    Layer,
    ModelError,
    ProfileStep,
    Report,
    stopped_line,
)
from stabaudit.report.refusal import is_refusal

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
  color: #1b1f24; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
h1 code, h2 code { font-size: inherit; }
.verdict-pass, .status-pass { color: #1a7f37; font-weight: 600; }
.verdict-fail, .verdict-error, .status-fail { color: #cf222e; font-weight: 600; }
.status-waived, .status-warn { color: #9a6700; font-weight: 600; }
.status-inconclusive { color: #8250df; font-weight: 600; }
.status-skipped { color: #57606a; }
.waiver { color: #9a6700; font-size: 12px; }
.error { color: #cf222e; }
svg { display: block; margin: 6px 0 12px; }
svg text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; fill: #1b1f24; }
svg .axis { stroke: #8c959f; stroke-width: 1; }
svg .grid { stroke: #d0d7de; stroke-width: 1; }
svg .one { stroke: #57606a; stroke-width: 1; stroke-dasharray: 4 3; }
svg rect.certified { fill: #0969da; }
svg rect.estimate { fill: #bf8700; }
svg rect.unbounded { fill: #cf222e; fill-opacity: 0.35; }
svg .lower { stroke: #1b1f24; stroke-width: 2; }
svg .line { fill: none; stroke: #0969da; stroke-width: 2; }
svg .point { fill: #0969da; }
svg .point.unbounded { fill: #cf222e; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
"""

# Layout of the per-layer chart (pixels): name column, bar area, numbers column.
_NAME_W, _BAR_X, _BAR_W, _ROW_H, _TOP = 220, 230, 520, 22, 28
_CHART_W = 1000
# Layout of the depth-profile chart.
_PROF_H, _PROF_LEFT, _PROF_TOP, _PROF_BOTTOM, _PROF_W = 240, 70, 16, 36, 880
_MAX_NAME = 32


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _f(x: float) -> str:
    """SVG coordinates: two decimals, so the page is byte-stable."""
    return f"{x:.2f}"


def _finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


def value_text(value: Any) -> str:
    """A check's value or threshold as text: floats as %.4g, mappings by sorted key."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={value_text(value[k])}" for k in sorted(value, key=str))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


class _LogScale:
    """log10 axis over whole decades covering every finite positive value and 1 (the line that
    separates contracting from expanding), with room below the smallest; zero and negative values
    sit at the left edge."""

    def __init__(self, values: Iterable[float | None], start: float, length: float):
        logs = [math.log10(v) for v in values if v is not None and _finite_positive(v)] + [0.0]
        self.lo = math.floor(min(logs))
        if self.lo == min(logs):
            # A value on the left edge (1 itself, say) would get a bar of length zero: one decade more.
            self.lo -= 1
        self.hi = max(math.ceil(max(logs)), self.lo + 1)
        self.start, self.length = start, length

    def __call__(self, x: float) -> float:
        if x <= 0:
            return self.start
        t = (math.log10(x) - self.lo) / (self.hi - self.lo)
        return self.start + self.length * min(max(t, 0.0), 1.0)

    def ticks(self) -> list[int]:
        # At most ~10 labelled decades, so wide ranges (1e-30 .. 1e30) stay readable.
        step = max(1, math.ceil((self.hi - self.lo) / 10))
        return sorted(set(range(self.lo, self.hi + 1, step)) | {0})


def _decade(k: int) -> str:
    return f"{10.0**k:g}"


def _layer_chart(layers: tuple[Layer, ...]) -> str:
    if not layers:
        return "<p>No layers change distances in this model.</p>"
    values = [v for layer in layers for v in (layer.lipschitz.upper, layer.lipschitz.lower)]
    scale = _LogScale(values, _BAR_X, _BAR_W)
    height = _TOP + _ROW_H * len(layers) + 8
    bottom = height - 4
    out = [
        f'<svg class="layers" width="{_CHART_W}" height="{height}" viewBox="0 0 {_CHART_W} {height}" '
        f'role="img" aria-label="per-layer Lipschitz bounds, log scale">'
    ]
    for k in scale.ticks():
        x = _f(scale(10.0**k))
        css = "one" if k == 0 else "grid"
        out.append(f'<line class="{css}" x1="{x}" y1="{_TOP - 6}" x2="{x}" y2="{bottom}"/>')
        out.append(f'<text x="{x}" y="{_TOP - 10}" text-anchor="middle">{_e(_decade(k))}</text>')
    for i, layer in enumerate(layers):
        lip = layer.lipschitz
        y = _TOP + i * _ROW_H
        mid = _f(y + _ROW_H / 2 + 4)
        out.append(
            f'<text x="{_NAME_W}" y="{mid}" text-anchor="end"><title>{_e(layer.name)} ({_e(layer.op)})</title>'
            f"{_e(_short(layer.name))}</text>"
        )
        # One bar per layer: to the upper bound, or across the whole axis when there is none.
        if lip.upper is None or math.isnan(lip.upper) or lip.upper == math.inf:
            css, width, label = "unbounded", float(_BAR_W), " (no finite upper bound)"
        else:
            css, width, label = ("certified" if lip.certified else "estimate"), scale(lip.upper) - _BAR_X, ""
        out.append(
            f'<rect class="{css}" x="{_BAR_X}" y="{_f(y + 4)}" width="{_f(width)}" height="{_ROW_H - 8}">'
            f"<title>{_e(layer.name)}: upper {_e(num(lip.upper))} ({_e(lip.method)}, {mark(lip.certified)})</title></rect>"
        )
        if lip.lower is not None and math.isfinite(lip.lower):
            x = _f(scale(lip.lower))
            out.append(
                f'<line class="lower" x1="{x}" y1="{_f(y + 1)}" x2="{x}" y2="{_f(y + _ROW_H - 1)}">'
                f"<title>{_e(layer.name)}: lower {_e(num(lip.lower))} ({_e(lip.lower_method or '-')})</title></line>"
            )
        numbers = f"[{num(lip.lower)}, {num(lip.upper)}] {lip.method}{label}"
        out.append(f'<text x="{_BAR_X + _BAR_W + 10}" y="{mid}">{_e(numbers)}</text>')
    out.append(f'<line class="axis" x1="{_BAR_X}" y1="{_TOP - 6}" x2="{_BAR_X}" y2="{bottom}"/>')
    out.append("</svg>")
    legend = (
        '<p class="legend"><span><i class="swatch" style="background:#0969da"></i>certified upper bound</span>'
        '<span><i class="swatch" style="background:#bf8700"></i>estimate</span>'
        '<span><i class="swatch" style="background:#1b1f24"></i>lower bound (tick)</span>'
        '<span>dashed: 1 (non-expansive)</span></p>'
    )
    return "\n".join(out) + "\n" + legend


def _profile_chart(profile: tuple[ProfileStep, ...]) -> str:
    if not profile:
        return "<p>No depth profile.</p>"
    width = _PROF_LEFT + _PROF_W + 20
    height = _PROF_TOP + _PROF_H + _PROF_BOTTOM
    base = _PROF_TOP + _PROF_H
    scale = _LogScale([s.upper for s in profile], 0.0, float(_PROF_H))
    n = len(profile)

    def px(i: int) -> float:
        return _PROF_LEFT + (_PROF_W * i / (n - 1) if n > 1 else _PROF_W / 2)

    def py(v: float) -> float:
        return base - scale(v)

    out = [
        f'<svg class="profile" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="depth profile: running certified bound, log scale">'
    ]
    for k in scale.ticks():
        y = _f(py(10.0**k))
        css = "one" if k == 0 else "grid"
        out.append(f'<line class="{css}" x1="{_PROF_LEFT}" y1="{y}" x2="{_PROF_LEFT + _PROF_W}" y2="{y}"/>')
        out.append(f'<text x="{_PROF_LEFT - 6}" y="{_f(py(10.0**k) + 4)}" text-anchor="end">{_e(_decade(k))}</text>')
    out.append(f'<line class="axis" x1="{_PROF_LEFT}" y1="{base}" x2="{_PROF_LEFT + _PROF_W}" y2="{base}"/>')
    out.append(f'<line class="axis" x1="{_PROF_LEFT}" y1="{_PROF_TOP}" x2="{_PROF_LEFT}" y2="{base}"/>')
    # The line breaks where the running bound is missing or infinite: there is nothing to join.
    segments: list[list[str]] = [[]]
    for i, step in enumerate(profile):
        if step.upper is not None and math.isfinite(step.upper):
            segments[-1].append(f"{_f(px(i))},{_f(py(step.upper))}")
        elif segments[-1]:
            segments.append([])
    for seg in segments:
        if len(seg) > 1:
            out.append(f'<polyline class="line" points="{" ".join(seg)}"/>')
    for i, step in enumerate(profile):
        finite = step.upper is not None and math.isfinite(step.upper)
        # A missing or infinite running bound is drawn at the top edge, in red.
        cy = py(step.upper) if finite and step.upper is not None else float(_PROF_TOP)
        css = "point" if finite else "point unbounded"
        out.append(
            f'<circle class="{css}" cx="{_f(px(i))}" cy="{_f(cy)}" r="3">'
            f"<title>after {_e(step.layer)}: {_e(num(step.upper))}</title></circle>"
        )
    stride = max(1, math.ceil(n / 12))
    for i in range(0, n, stride):
        out.append(f'<text x="{_f(px(i))}" y="{base + 16}" text-anchor="middle">{i + 1}</text>')
    last = profile[-1]
    out.append(
        f'<text x="{_PROF_LEFT + _PROF_W}" y="{base + 30}" text-anchor="end">'
        f"layer (step); ends at {_e(num(last.upper))} after {_e(_short(last.layer))}</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def _message_cell(f: Finding) -> str:
    waiver = "" if f.waiver is None else f'<div class="waiver">{_e(waiver_note(f.waiver))}</div>'
    return f"<td>{_e(f.message)}{waiver}</td>"


def _checks_table(checks: tuple[Finding, ...], fail_on: str) -> str:
    rows = [
        '<table class="checks">',
        "<thead><tr><th>id</th><th>name</th><th>status</th><th>severity</th><th>value</th>"
        "<th>threshold</th><th>message</th></tr></thead>",
        "<tbody>",
    ]
    for f in checks:
        rows.append(
            f'<tr><td>{_e(f.id)}</td><td>{_e(f.name)}</td><td class="status-{_e(status_label(f, fail_on))}">'
            f"{_e(status_label(f, fail_on))}</td><td>{_e(f.severity.value)}</td>"
            f'<td class="num">{_e(value_text(f.value))}</td><td class="num">{_e(value_text(f.threshold))}</td>'
            f"{_message_cell(f)}</tr>"
        )
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def _summary(report: Report) -> str:
    m, lip, eq = report.model, report.lipschitz, report.equivalence
    methods = "; ".join(
        f"{mb.method}: {num(mb.upper)} ({mark(mb.certified) if mb.upper is not None else 'no bound'})"
        for mb in lip.methods
    )
    rows: list[tuple[str, str]] = [
        ("model", f"<code>{_e(m.path)}</code>"),
        ("format", _e(m.format)),
        ("sha256", f"<code>{_e(m.sha256)}</code>"),
        ("parameters", _e(m.parameters)),
        ("input shape", _e(list(m.input_shape))),
        ("verdict", f'<span class="verdict-{_e(report.verdict)}">{_e(report.verdict.upper())}</span>'),
        ("exit code", f"{_e(report.exit_code)} (fail-on {_e(report.fail_on)})"),
        *([("complete", f'<span class="verdict-fail">{_e(stopped_line(report.stopped))}</span>')]
          if report.stopped is not None else []),
        ("gate", _e(gate_line(report.checks, report.fail_on))),
        ("global Lipschitz (L2)", _e(f"[{num(lip.lower)}, {num(lip.upper)}]")),
        ("upper bound", _e(f"{lip.upper_method} ({mark(lip.certified)})")),
        ("certified", "yes" if lip.certified else "no"),
        ("lower bound", _e(lip.lower_method or "-")),
        ("methods tried", _e(methods or "-")),
        *([("branch switches", _e(jumps))] if (jumps := additive_line(report)) else []),
        (
            "equivalence",
            _e(
                f"vs {eq.reference}: max |diff| {eq.max_abs_diff:.3g} (tolerance {eq.tolerance:.3g}) "
                f"{'ok' if eq.passed else 'MISMATCH'}"
            ),
        ),
        ("created", _e(report.created or "-")),
        ("tool", _e(f"{report.tool.name} {report.tool.version}")),
    ]
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    return f'<table class="summary">\n{body}\n</table>' + (f"\n<ul>{notes}</ul>" if notes else "")


def _channel_sections(report: Report, h: str) -> list[str]:
    """Samples, residual blocks and the update channel, when the report has them."""
    parts: list[str] = []
    line = samples_line(report)
    if line:
        parts.append(f"<p>Samples: {_e(line)}</p>")
    line = work_line(report)
    if line:
        parts.append(f"<p>Work: {_e(line)}</p>")
    for sec in sections(report):
        head = "".join(f"<th>{_e(c)}</th>" for c in sec.headers)
        body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in sec.rows)
        notes = "".join(f"<li>{_e(n)}</li>" for n in sec.notes)
        parts.append(f"<{h}>{_e(sec.title)}</{h}>\n<table>\n<tr>{head}</tr>\n{body}\n</table>")
        if notes:
            parts.append(f"<ul>{notes}</ul>")
    return parts


def _report_body(report: Report, level: int) -> str:
    """One model's content; `level` is the heading level of its subsections."""
    h = f"h{level}"
    if is_refusal(report):  # no bound was computed: the reason and the finding, nothing else
        reason = "; ".join(f.message for f in report.checks)
        return "\n".join(
            [
                f'<p class="error">The audit was refused (exit code {_e(report.exit_code)}); no bound was '
                f"computed: {_e(reason)}</p>",
                f"<{h}>Checks</{h}>",
                _checks_table(report.checks, report.fail_on),
            ]
        )
    return "\n".join(
        [
            _summary(report),
            f"<{h}>Per-layer Lipschitz bounds (L2, log scale)</{h}>",
            _layer_chart(report.layers),
            f"<{h}>Depth profile: running certified bound after each layer (log scale)</{h}>",
            _profile_chart(report.profile),
            *_channel_sections(report, h),
            f"<{h}>Checks</{h}>",
            _checks_table(report.checks, report.fail_on),
        ]
    )


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


@RENDERERS.register(OutputFormat.HTML)
def render_html(report: Report) -> str:
    title = f"stabaudit: {report.verdict.upper()} — {report.model.path}"
    body = f"<h1>{_e(title)}</h1>\n{_report_body(report, 2)}"
    return _page(title, body)


@BATCH_RENDERERS.register(OutputFormat.HTML)
def render_batch_html(batch: BatchReport) -> str:
    title = f"stabaudit batch: {batch.verdict.upper()} — {batch.config}"
    rows = []
    sections = []
    for i, entry in enumerate(batch.models, start=1):
        anchor = f"model-{i}"
        match entry:
            case ModelError(path=path, error=error):
                rows.append(
                    f'<tr><td><a href="#{anchor}"><code>{_e(path)}</code></a></td>'
                    f'<td class="verdict-error">ERROR</td><td class="num">-</td><td class="num">-</td><td>-</td>'
                    f'<td class="error">{_e(error)}</td></tr>'
                )
                sections.append(
                    f'<section id="{anchor}">\n<h2><code>{_e(path)}</code>: ERROR</h2>\n'
                    f'<p class="error">Could not be audited (exit code {_e(entry.exit_code)}): {_e(error)}</p>\n'
                    "</section>"
                )
            case Report(model=model, lipschitz=lip):
                rows.append(
                    f'<tr><td><a href="#{anchor}"><code>{_e(model.path)}</code></a></td>'
                    f'<td class="verdict-{_e(entry.verdict)}">{_e(entry.verdict.upper())}</td>'
                    f'<td class="num">{_e(num(lip.lower))}</td><td class="num">{_e(num(lip.upper))}</td>'
                    f"<td>{mark(lip.certified)}</td><td>{_e(failing_ids(entry))}</td></tr>"
                )
                sections.append(
                    f'<section id="{anchor}">\n<h2><code>{_e(model.path)}</code>: {_e(entry.verdict.upper())}</h2>\n'
                    f"{_report_body(entry, 3)}\n</section>"
                )
    summary = "\n".join(
        [
            '<table class="batch">',
            "<thead><tr><th>model</th><th>verdict</th><th>lower</th><th>upper</th><th>upper is</th>"
            "<th>failing checks</th></tr></thead>",
            "<tbody>",
            *rows,
            "</tbody>",
            "</table>",
            f'<p>Batch verdict: <span class="verdict-{_e(batch.verdict)}">{_e(batch.verdict.upper())}</span>, '
            f"{len(batch.models)} models, exit code {_e(batch.exit_code)}; created {_e(batch.created or '-')}.</p>",
        ]
    )
    body = f"<h1>{_e(title)}</h1>\n{summary}\n" + "\n".join(sections)
    return _page(title, body)
