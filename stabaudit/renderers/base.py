"""Output formats and the renderer registries: report (or batch) -> str, no IO, no engine access."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from stabaudit.registry import Registry
from stabaudit.report.model import BatchReport, Finding, Report, Status, TrajectoryReport, Waiver


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MD = "md"
    HTML = "html"
    SARIF = "sarif"
    JUNIT = "junit"

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


def status_label(finding: Finding) -> str:
    """The status as shown to people: a failure accepted by a waiver reads "waived"."""
    return "waived" if finding.waiver is not None else finding.status.value


def is_failing(finding: Finding) -> bool:
    """A failed check that no waiver covers (the ones a batch summary lists)."""
    return finding.status is Status.FAIL and finding.waiver is None
