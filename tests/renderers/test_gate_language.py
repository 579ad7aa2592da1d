"""Every format says what the gate says: on the sample models, JUnit's failures, the Markdown and
the table count exactly the findings that fail the gate at --fail-on, and call the rest warnings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.report.gate import INFO_DOES_NOT_GATE, FailOn, gate, gates, is_warning
from stabaudit.report.model import Report

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture(scope="module")
def sample_reports() -> list[Report]:
    import stabaudit

    return [stabaudit.audit(SAMPLES / name, budget=0.2, seed=0) for name in ("mlp.onnx", "cnn.onnx", "resnet.onnx")]


def _counts_line(report: Report) -> str:
    failing = sum(gates(f, report.fail_on) for f in report.checks)
    warnings = sum(is_warning(f, report.fail_on) for f in report.checks)
    return f"{failing} failing check{'' if failing == 1 else 's'}, {warnings} warning{'' if warnings == 1 else 's'}"


@pytest.mark.parametrize("fail_on", [f.value for f in FailOn])
def test_junit_markdown_and_table_count_the_gating_findings(sample_reports, fail_on):
    seen_warnings = 0
    for base in sample_reports:
        verdict, code = gate(base.checks, FailOn(fail_on))
        report = replace(base, fail_on=fail_on, verdict=verdict, exit_code=code)
        gating = [f.id for f in report.checks if gates(f, fail_on)]
        warnings = [f.id for f in report.checks if is_warning(f, fail_on)]
        seen_warnings += len(warnings)
        root = ET.fromstring(RENDERERS.get(OutputFormat.JUNIT)(report))
        assert int(root.get("failures", "-1")) == len(gating)
        failed_cases = [c.get("name", "").split()[0] for c in root.iter("testcase") if c.find("failure") is not None]
        assert failed_cases == gating
        line = _counts_line(report)
        md = RENDERERS.get(OutputFormat.MD)(report)
        table = RENDERERS.get(OutputFormat.TABLE)(report)
        html = RENDERERS.get(OutputFormat.HTML)(report)
        assert line in md and f"gate: {line}" in table and line in html
        severities = {f.severity.value for f in report.checks if is_warning(f, fail_on)}
        assert (f"warnings do not gate at --fail-on {fail_on}" in md) == bool(severities - {"info"})
        assert (INFO_DOES_NOT_GATE in md) == ("info" in severities)
        # the status column: a warning reads "warn", never "fail"
        md_status = dict(re.findall(r"^\| (SA\d+) [\w.]+ \| (\w+) \|", md, flags=re.M))
        failed = [f.id for f in report.checks if gates(f, fail_on) and f.status.value == "fail"]
        assert sorted(k for k, v in md_status.items() if v == "fail") == sorted(failed)
        assert sorted(k for k, v in md_status.items() if v == "warn") == sorted(warnings)
        assert f"verdict: {verdict.upper()}" in table
        sarif = json.loads(RENDERERS.get(OutputFormat.SARIF)(report))["runs"][0]["results"]
        assert sorted(r["ruleId"] for r in sarif if r["level"] == "error") == sorted(gating)
        gitlab = json.loads(RENDERERS.get(OutputFormat.GITLAB)(report))
        assert sorted(i["check_name"] for i in gitlab if i["severity"] == "major") == sorted(gating)
        github = RENDERERS.get(OutputFormat.GITHUB)(report).splitlines()
        assert sorted(re.findall(r"^::error .*title=(SA\d+)::", "\n".join(github), flags=re.M)) == sorted(gating)
    if fail_on == "error":
        assert seen_warnings > 0  # the sample models do exercise warnings (SA101-SA103 at severity warning)
