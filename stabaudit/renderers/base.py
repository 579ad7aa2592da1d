"""Output formats and the renderer registries: report (or batch) -> str, no IO, no engine access."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from enum import Enum
from pathlib import PurePath, PurePosixPath

from stabaudit.registry import Registry
from stabaudit.report.gate import gates, is_warning, why_not_gating
from stabaudit.report.model import BatchReport, Finding, Report, TrajectoryReport, Waiver


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MD = "md"
    HTML = "html"
    SARIF = "sarif"
    JUNIT = "junit"
    GITHUB = "github"
    GITLAB = "gitlab"

    @classmethod
    def from_suffix(cls, suffix: str) -> OutputFormat | None:
        return {
            ".json": cls.JSON,
            ".md": cls.MD,
            ".txt": cls.TABLE,
            ".html": cls.HTML,
            ".htm": cls.HTML,
            ".sarif": cls.SARIF,
            ".xml": cls.JUNIT,
        }.get(suffix.lower())


Renderer = Callable[[Report], str]
BatchRenderer = Callable[[BatchReport], str]
RENDERERS: Registry[OutputFormat, Renderer] = Registry("renderers")
BATCH_RENDERERS: Registry[OutputFormat, BatchRenderer] = Registry("batch renderers")
TrajectoryRenderer = Callable[[TrajectoryReport], str]
TRAJECTORY_RENDERERS: Registry[OutputFormat, TrajectoryRenderer] = Registry("trajectory renderers")


def waiver_note(waiver: Waiver) -> str:
    """'waived: <reason> (expires <date>)', the same words in every format."""
    expiry = f"expires {waiver.expires}" if waiver.expires else "no expiry"
    return f"waived: {waiver.reason} ({expiry})"


def status_label(finding: Finding, fail_on: str) -> str:
    """The status as shown to people: a failure accepted by a waiver reads "waived", a failure
    below the --fail-on level "warn" (it does not gate), a gating inconclusive "inconclusive"."""
    if finding.waiver is not None:
        return "waived"
    if is_warning(finding, fail_on):
        return "warn"
    return finding.status.value


def is_failing(finding: Finding, fail_on: str) -> bool:
    """A finding that fails the gate at this --fail-on level (report.gate.gates): the ones every
    format counts as failures."""
    return gates(finding, fail_on)


def gate_counts(checks: tuple[Finding, ...], fail_on: str) -> tuple[int, int]:
    """(failing, warnings): findings that gate, and failed findings below the level."""
    return sum(gates(f, fail_on) for f in checks), sum(is_warning(f, fail_on) for f in checks)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def gate_line(checks: tuple[Finding, ...], fail_on: str) -> str:
    """'N failing checks, M warnings (why they do not gate)': the same words in the table, Markdown
    and HTML, and the same counts as JUnit's failures."""
    failing, warnings = gate_counts(checks, fail_on)
    line = f"{plural(failing, 'failing check')}, {plural(warnings, 'warning')}"
    if warnings:
        line += f" ({why_not_gating(checks, fail_on)})"
    return line


def shown_in_ci(finding: Finding) -> bool:
    """Whether a CI annotation format (SARIF by default, GitHub, GitLab) lists the finding: every
    finding that is neither a pass nor skipped (failures, warnings, waived and inconclusive)."""
    return finding.status.value not in ("pass", "skipped")


def annotation_text(finding: Finding) -> str:
    """One CI annotation's text: name, status and message, then the layers and any waiver."""
    where = f" (layers: {', '.join(finding.locations)})" if finding.locations else ""
    waived = f" [waived: {finding.waiver.reason}]" if finding.waiver is not None else ""
    return f"{finding.name}: {finding.status.value}: {finding.message}{where}{waived}"


def repo_path(path: str) -> str:
    """A model path as CI tools want it: relative to the working directory stabaudit runs in (the
    repository root in CI), with forward slashes; never absolute. A path outside it keeps its
    '..' segments (a relative reference still, which code scanning shows without a file link)."""
    p = PurePath(path)
    if p.is_absolute():
        try:
            p = PurePath(os.path.relpath(p))
        except ValueError:  # another drive (Windows): the path below its anchor
            p = PurePath(*p.parts[1:])
    text = PurePosixPath(*p.parts).as_posix() if p.parts else "."
    return text.removeprefix("./")


def fingerprint(rule_id: str, path: str, locations: tuple[str, ...]) -> str:
    """A stable identity of a finding across runs: its rule, the model path relative to the
    working directory and the layers it is about (not the numbers, which move from run to run)."""
    key = "\0".join([rule_id, repo_path(path), ",".join(locations)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
