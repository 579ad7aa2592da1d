"""GitLab Code Quality JSON: one issue per finding that is not a pass or skipped."""

from __future__ import annotations

import json
from typing import Any

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    OutputFormat,
    annotation_text,
    fingerprint,
    repo_path,
    shown_in_ci,
)
from stabaudit.report.gate import gates
from stabaudit.report.model import BatchReport, Finding, ModelError, Report, Status


def _severity(f: Finding, fail_on: str) -> str:
    """Code Quality severities: major fails the gate, minor is a warning, info the rest."""
    if gates(f, fail_on):
        return "major"
    if f.status is Status.FAIL and f.waiver is None:
        return "minor"
    return "info"


def _issue(description: str, check_name: str, print_: str, severity: str, path: str) -> dict[str, Any]:
    return {
        "description": description,
        "check_name": check_name,
        "fingerprint": print_,
        "severity": severity,
        # a model file has no lines: the whole file is the location (line 1, as Code Quality needs one)
        "location": {"path": repo_path(path), "lines": {"begin": 1}},
    }


def _issues(report: Report) -> list[dict[str, Any]]:
    out = []
    for f in report.checks:
        if not shown_in_ci(f):
            continue
        out.append(
            _issue(
                f"{f.id} {annotation_text(f)}",
                f.id,
                fingerprint(f.id, report.model.path, f.locations),
                _severity(f, report.fail_on),
                report.model.path,
            )
        )
    return out


def _document(issues: list[dict[str, Any]]) -> str:
    return json.dumps(issues, indent=2, sort_keys=True, allow_nan=False) + "\n"


@RENDERERS.register(OutputFormat.GITLAB)
def render_gitlab(report: Report) -> str:
    return _document(_issues(report))


@BATCH_RENDERERS.register(OutputFormat.GITLAB)
def render_batch_gitlab(batch: BatchReport) -> str:
    issues: list[dict[str, Any]] = []
    for entry in batch.models:
        match entry:
            case ModelError(path=path, error=error):
                issues.append(
                    _issue(
                        f"could not be audited (exit code {entry.exit_code}): {error}",
                        "audit",
                        fingerprint("audit", path, ()),
                        "blocker",
                        path,
                    )
                )
            case Report():
                issues += _issues(entry)
    return _document(issues)
