"""The JSON report of CONTRACT.md (single and batch): sorted keys, two-space indent, a trailing newline."""

from __future__ import annotations

import json

from stabaudit.renderers.base import BATCH_RENDERERS, RENDERERS, TRAJECTORY_RENDERERS, OutputFormat
from stabaudit.report.model import BatchReport, Report, TrajectoryReport
from stabaudit.report.serialize import batch_to_dict, report_to_dict, trajectory_to_dict


@RENDERERS.register(OutputFormat.JSON)
def render_json(report: Report) -> str:
    return json.dumps(report_to_dict(report), indent=2, sort_keys=True, allow_nan=False) + "\n"


@BATCH_RENDERERS.register(OutputFormat.JSON)
def render_batch_json(batch: BatchReport) -> str:
    return json.dumps(batch_to_dict(batch), indent=2, sort_keys=True, allow_nan=False) + "\n"


@TRAJECTORY_RENDERERS.register(OutputFormat.JSON)
def render_trajectory_json(trajectory: TrajectoryReport) -> str:
    return json.dumps(trajectory_to_dict(trajectory), indent=2, sort_keys=True, allow_nan=False) + "\n"
