"""The JSON report of CONTRACT.md: sorted keys, two-space indent, a trailing newline."""

from __future__ import annotations

import json

from stabaudit.renderers.base import RENDERERS, OutputFormat
from stabaudit.report.model import Report
from stabaudit.report.serialize import report_to_dict


@RENDERERS.register(OutputFormat.JSON)
def render_json(report: Report) -> str:
    return json.dumps(report_to_dict(report), indent=2, sort_keys=True, allow_nan=False) + "\n"
