"""Output formats and the renderer registry: report -> str, no IO, no engine access."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from stabaudit.registry import Registry
from stabaudit.report.model import Report


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MD = "md"
    SARIF = "sarif"
    JUNIT = "junit"

    @classmethod
    def from_suffix(cls, suffix: str) -> OutputFormat | None:
        return {
            ".json": cls.JSON,
            ".md": cls.MD,
            ".txt": cls.TABLE,
            ".sarif": cls.SARIF,
            ".xml": cls.JUNIT,
        }.get(suffix.lower())


Renderer = Callable[[Report], str]
RENDERERS: Registry[OutputFormat, Renderer] = Registry("renderers")
