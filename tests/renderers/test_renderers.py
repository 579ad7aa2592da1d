"""Renderers: one per output format (single report and batch), pure, the JSON form of CONTRACT.md,
waived findings in every format."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from stabaudit.renderers import BATCH_RENDERERS, RENDERERS, OutputFormat
from stabaudit.report.model import GlobalLipschitz, Report, Waiver
from stabaudit.report.serialize import batch_to_dict
from tests.report_factory import make_batch_report, make_report


def _waived_report() -> Report:
    report = make_report()
    sa101, sa402 = report.checks
    waiver = Waiver(check="SA101", reason="wide | bracket <known>", expires="2026-12-31")
    return replace(report, checks=(replace(sa101, waiver=waiver), sa402))


def test_every_format_has_a_renderer():
    for fmt in OutputFormat:
        assert fmt in RENDERERS and isinstance(RENDERERS.get(fmt)(make_report()), str)


def test_every_format_has_a_batch_renderer():
    for fmt in OutputFormat:
        assert fmt in BATCH_RENDERERS and isinstance(BATCH_RENDERERS.get(fmt)(make_batch_report()), str)
    assert len(BATCH_RENDERERS) == len(RENDERERS) == len(OutputFormat)


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [(".html", OutputFormat.HTML), (".HTM", OutputFormat.HTML), (".sarif", OutputFormat.SARIF), (".pdf", None)],
)
def test_format_from_suffix(suffix, fmt):
    assert OutputFormat.from_suffix(suffix) is fmt


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_renderers_are_pure(fmt):
    report, batch = make_report(), make_batch_report()
    assert RENDERERS.get(fmt)(report) == RENDERERS.get(fmt)(report)
    assert BATCH_RENDERERS.get(fmt)(batch) == BATCH_RENDERERS.get(fmt)(batch)
    assert report == make_report() and batch == make_batch_report()


def test_json_has_contract_fields():
    data = json.loads(RENDERERS.get(OutputFormat.JSON)(make_report()))
    assert data["schema_version"] == "1"
    assert data["tool"] == {"name": "stabaudit", "version": "0.1.0"}
    assert set(data["model"]) >= {"path", "format", "sha256", "parameters", "input_shape"}
    assert set(data["equivalence"]) >= {"reference", "max_abs_diff", "passed"}
    layer = data["layers"][0]
    assert set(layer) >= {"name", "op", "lipschitz"}
    assert set(layer["lipschitz"]) >= {"upper", "lower", "method", "certified"}
    assert set(data["lipschitz"]) >= {"norm", "upper", "lower", "upper_method", "certified", "witness"}
    assert data["lipschitz"]["norm"] == "l2"
    assert data["lipschitz"]["witness"] == {"x": [0.0, 1.0], "y": [0.5, 1.0], "quotient": 1.5, "kind": "pair"}
    check = data["checks"][0]
    assert check == {
        "id": "SA101", "name": "lipschitz.global", "status": "fail", "severity": "warning",
        "value": {"lower": 1.5, "upper": 3.125}, "threshold": 1.0, "message": "K >= 1.5 > 1",
        "locations": ["fc1"], "waiver": None,
    }
    assert data["verdict"] == "pass" and data["exit_code"] == 0
    assert "rules" not in data and data["created"] == "2026-01-02T03:04:05Z"


def test_json_is_stable_and_nonfinite_becomes_null():
    report = make_report()
    report = replace(report, lipschitz=replace(report.lipschitz, upper=math.inf))
    a = RENDERERS.get(OutputFormat.JSON)(report)
    assert a == RENDERERS.get(OutputFormat.JSON)(report)
    assert json.loads(a)["lipschitz"]["upper"] is None
    assert isinstance(report.lipschitz, GlobalLipschitz)


def test_table_marks_certified_and_estimates():
    text = RENDERERS.get(OutputFormat.TABLE)(make_report())
    assert "certified" in text and "[1.5, 3.125]" in text
    # SA101 failed at severity warning, below --fail-on error: a warning, and the table says why
    assert "SA101" in text and "WARN" in text and "FAIL" not in text and "verdict: PASS" in text
    assert "gate: 0 failing checks, 1 warning (warnings do not gate at --fail-on error)" in text
    md = RENDERERS.get(OutputFormat.MD)(make_report())
    assert "<details>" in md and "| SA101 lipschitz.global | warn |" in md
    assert "0 failing checks, 1 warning (warnings do not gate at --fail-on error)" in md


def test_waived_finding_in_table_and_markdown():
    table = RENDERERS.get(OutputFormat.TABLE)(_waived_report())
    row = next(line for line in table.splitlines() if line.startswith("SA101"))
    assert "WAIVED" in row and "FAIL" not in row
    assert row.endswith("K >= 1.5 > 1 (waived: wide | bracket <known> (expires 2026-12-31))")
    md = RENDERERS.get(OutputFormat.MD)(_waived_report())
    assert (
        "| SA101 lipschitz.global | waived | warning | "
        "K >= 1.5 > 1 (waived: wide \\| bracket &lt;known> (expires 2026-12-31)) |" in md
    )


def test_waiver_without_expiry_says_so():
    report = _waived_report()
    sa101 = replace(report.checks[0], waiver=Waiver(check="SA101", reason="accepted"))
    report = replace(report, checks=(sa101, report.checks[1]))
    assert "(waived: accepted (no expiry))" in RENDERERS.get(OutputFormat.TABLE)(report)


def test_waived_finding_in_json_sarif_junit():
    from xml.etree import ElementTree as ET

    data = json.loads(RENDERERS.get(OutputFormat.JSON)(_waived_report()))
    assert data["checks"][0]["waiver"] == {
        "check": "SA101", "reason": "wide | bracket <known>", "expires": "2026-12-31", "model": "*",
    }
    sarif = json.loads(RENDERERS.get(OutputFormat.SARIF)(_waived_report()))
    result = sarif["runs"][0]["results"][0]
    assert result["suppressions"] == [{"kind": "external", "justification": "wide | bracket <known>"}]
    assert result["kind"] == "fail"  # still reported as what it is; the suppression hides it
    root = ET.fromstring(RENDERERS.get(OutputFormat.JUNIT)(_waived_report()))
    assert root.get("failures") == "0"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("skipped") == "1"
    skipped = suite.find("testcase/skipped")
    assert skipped is not None
    assert skipped.get("message") == "waived: wide | bracket <known> (expires 2026-12-31)"
    assert suite.find("testcase/failure") is None


def test_batch_json_is_batch_to_dict():
    batch = make_batch_report()
    text = BATCH_RENDERERS.get(OutputFormat.JSON)(batch)
    assert text.endswith("}\n") and json.loads(text) == batch_to_dict(batch)
    data = json.loads(text)
    assert (data["verdict"], data["exit_code"]) == ("error", 2)
    assert data["models"][2] == {"path": "models/broken.onnx", "error": "not an ONNX model or TorchScript archive",
                                 "exit_code": 2}


def test_batch_table_rows_errors_and_verdict():
    lines = BATCH_RENDERERS.get(OutputFormat.TABLE)(make_batch_report()).splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.startswith("models/")}
    assert row["models/a.onnx"][1:6] == ["pass", "1.5", "3.125", "certified", "SA101"]
    assert row["models/b.pt"][1:] == ["fail", "12.5", "40", "estimate", "SA402,", "SA101", "(warn)"]
    assert row["models/broken.onnx"][1] == "error"
    assert "error: models/broken.onnx: not an ONNX model or TorchScript archive" in lines
    assert lines[-1] == "batch verdict: ERROR (3 models, exit code 2)"


def test_batch_markdown_folds_each_model():
    md = BATCH_RENDERERS.get(OutputFormat.MD)(make_batch_report())
    assert md.startswith("### stabaudit batch: ERROR — 3 models")
    assert "| `models/b.pt` | fail | 12.5 | 40 | estimate | SA402, SA101 (warn) |" in md
    assert md.count("<details>") == 3 and md.count("</details>") == 3
    assert (
        "<details><summary><code>models/b.pt</code>: FAIL, 1 failing check, 1 warning "
        "(warnings do not gate at --fail-on error)</summary>" in md
    )
    assert "| SA402 weights.finite | fail | error | 3 parameters are NaN or infinite |" in md
    assert "Could not be audited (exit code 2): not an ONNX model or TorchScript archive" in md
    # The table comes before every folded section.
    assert md.index("| `models/broken.onnx` | error |") < md.index("<details>")


def test_markdown_escapes_user_text():
    report = make_report()
    layer = replace(report.layers[0], name="a|b<script>")
    md = RENDERERS.get(OutputFormat.MD)(replace(report, layers=(layer, *report.layers[1:])))
    assert "| a\\|b&lt;script> | Linear |" in md and "<script>" not in md


def test_the_additive_term_in_table_markdown_json_and_only_when_present():
    from stabaudit.report.model import Additive

    base = make_report()
    add = Additive(value=1.649e-8, certified=True, sources=("act",), method="branch-switch-jumps")
    report = replace(base, lipschitz=replace(base.lipschitz, additive=add))
    table = RENDERERS.get(OutputFormat.TABLE)(report)
    line = "as executed ||F(x) - F(y)|| <= K ||x - y|| + 1.649e-08 (certified; branch switches in act;"
    assert line in table
    md = RENDERERS.get(OutputFormat.MD)(report)
    assert "Branch switches: as executed" in md and "1.649e-08" in md and "act" in md
    assert json.loads(RENDERERS.get(OutputFormat.JSON)(report))["lipschitz"]["additive"]["value"] == 1.649e-8
    html_text = RENDERERS.get(OutputFormat.HTML)(report)
    assert "<th>branch switches</th>" in html_text and "1.649e-08" in html_text
    for fmt in (OutputFormat.TABLE, OutputFormat.MD, OutputFormat.HTML):
        assert "as executed" not in RENDERERS.get(fmt)(base)
