"""The report as plain JSON data (CONTRACT.md, schema_version "1"): the one place field names live."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any

from stabaudit.report.model import BatchReport, ModelError, Report


def plain(value: Any) -> Any:
    """Plain JSON values: enums by value, tuples as lists, non-finite floats as null."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def report_to_dict(report: Report) -> dict[str, Any]:
    data = plain(report)
    assert isinstance(data, dict)
    data["tool"] = {"name": report.tool.name, "version": report.tool.version}
    del data["rules"]  # the check catalogue: `stabaudit explain`, SARIF's rules
    return data


def batch_to_dict(batch: BatchReport) -> dict[str, Any]:
    """{"schema_version", "tool", "config", "created", "timings", "models": [report | {"path",
    "error", "exit_code"}], "verdict", "exit_code"} (CONTRACT.md batch report)."""
    data = {f.name: plain(getattr(batch, f.name)) for f in dataclasses.fields(batch) if f.name != "models"}
    data["models"] = [
        plain(m) if isinstance(m, ModelError) else report_to_dict(m) for m in batch.models
    ]
    return data
