"""The report of a refused audit: one failed finding (SA900/SA901/SA902), exit 2, every format."""

from __future__ import annotations

import json

import pytest

from stabaudit.errors import EquivalenceError, ModelLoadError, UnsupportedOperatorError
from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.report.model import ToolInfo
from stabaudit.report.refusal import AUDIT_REFUSED, is_refusal, refusal_report
from stabaudit.report.serialize import report_from_dict, report_to_dict
from tests.sarif_schema import validate_sarif

TOOL = ToolInfo(name="stabaudit", version="0.1.0")


@pytest.mark.parametrize(
    ("exc", "rule", "value"),
    [
        (UnsupportedOperatorError({"Sin": 2, "Cos": 1}, path="m.onnx"), "SA901", {"Cos": 1, "Sin": 2}),
        (EquivalenceError("differs by 0.5 [SA902]", path="m.onnx"), "SA902", None),
        (ModelLoadError("not an ONNX model or TorchScript archive", path="m.onnx"), "SA900", None),
    ],
)
def test_refusal_report_renders_in_every_format(exc, rule, value):
    report = refusal_report(exc, path="m.onnx", fail_on="error", tool=TOOL, created="2026-01-02T03:04:05Z")
    assert is_refusal(report) and (report.verdict, report.exit_code) == ("fail", 2)
    [finding] = report.checks
    assert (finding.id, finding.status.value, finding.severity.value, finding.value) == (rule, "fail", "error", value)
    data = report_to_dict(report)
    assert report_to_dict(report_from_dict(data)) == data  # the JSON contract reads it back
    for fmt in OutputFormat:
        text = RENDERERS.get(fmt)(report)
        assert rule in text, fmt
    sarif = json.loads(RENDERERS.get(OutputFormat.SARIF)(report))
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == [rule]
    if rule == "SA900":
        assert sarif["runs"][0]["tool"]["driver"]["rules"][0]["id"] == AUDIT_REFUSED.id
    validate_sarif(sarif)


def test_explain_knows_the_refusal_finding():
    from typer.testing import CliRunner

    from stabaudit.cli import app

    result = CliRunner().invoke(app, ["explain", "SA900"])
    assert result.exit_code == 0 and result.stdout.startswith("SA900 audit.refused\n")
    assert AUDIT_REFUSED.doc in result.stdout
