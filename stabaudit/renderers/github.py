"""GitHub Actions workflow commands: one annotation per finding that is not a pass or skipped."""

from __future__ import annotations

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    OutputFormat,
    annotation_text,
    gate_line,
    repo_path,
    shown_in_ci,
)
from stabaudit.report.gate import gates
from stabaudit.report.model import (
    BatchReport,
    Finding,
    ModelError,
    Report,
    Severity,
    Status,
    stopped_line,
)


def _data(text: str) -> str:
    # The workflow command syntax: '%', CR and LF are escaped in the message...
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    # ... and ':' and ',' too in a property value (they separate the properties).
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, path: str, title: str, message: str) -> str:
    return f"::{level} file={_prop(repo_path(path))},title={_prop(title)}::{_data(message)}"


def _level(f: Finding, fail_on: str) -> str:
    """error: fails the gate; warning: failed below --fail-on; notice: waived or undecided."""
    if gates(f, fail_on):
        return "error"
    if f.status is Status.FAIL and f.waiver is None and f.severity is not Severity.INFO:
        return "warning"
    return "notice"


def _lines(report: Report) -> list[str]:
    out = []
    for f in report.checks:
        if not shown_in_ci(f):
            continue
        out.append(_command(_level(f, report.fail_on), report.model.path, f.id, annotation_text(f)))
    return out


def _summary(report: Report) -> str:
    lip = report.lipschitz
    bracket = f"[{lip.lower:.4g}, {lip.upper:.4g}]" if lip.lower is not None and lip.upper is not None else "-"
    return (
        f"::notice title=stabaudit::{_data(repo_path(report.model.path))}: {report.verdict.upper()} "
        f"(exit code {report.exit_code}), Lipschitz {bracket}; {_data(gate_line(report.checks, report.fail_on))}"
        + (f"; {_data(stopped_line(report.stopped))}" if report.stopped is not None else "")
    )


@RENDERERS.register(OutputFormat.GITHUB)
def render_github(report: Report) -> str:
    return "\n".join([*_lines(report), _summary(report)]) + "\n"


@BATCH_RENDERERS.register(OutputFormat.GITHUB)
def render_batch_github(batch: BatchReport) -> str:
    out: list[str] = []
    for entry in batch.models:
        match entry:
            case ModelError(path=path, error=error):
                out.append(_command("error", path, "stabaudit", f"could not be audited (exit code {entry.exit_code}): {error}"))
            case Report():
                out += _lines(entry)
    out.append(
        f"::notice title=stabaudit::batch {_data(batch.config)}: {batch.verdict.upper()} "
        f"({len(batch.models)} models, exit code {batch.exit_code})"
    )
    return "\n".join(out) + "\n"
