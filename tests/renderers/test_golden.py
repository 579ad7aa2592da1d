"""Golden files: every format rendered from one hand-built report and one hand-built batch
(regenerate: --update-golden)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from stabaudit.renderers import BATCH_RENDERERS, RENDERERS, OutputFormat
from stabaudit.renderers.base import fingerprint
from tests.report_factory import make_batch_report, make_report
from tests.sarif_schema import validate_sarif

GOLDEN = Path(__file__).parent / "golden"
SUFFIX = {
    OutputFormat.TABLE: "txt",
    OutputFormat.JSON: "json",
    OutputFormat.MD: "md",
    OutputFormat.HTML: "html",
    OutputFormat.SARIF: "sarif",
    OutputFormat.JUNIT: "xml",
    OutputFormat.GITHUB: "github.txt",
    OutputFormat.GITLAB: "gitlab.json",
}


def _check_golden(path: Path, text: str, update: bool) -> None:
    if update:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed: rerun with --update-golden if intended"


def test_every_format_has_a_golden_suffix():
    assert set(SUFFIX) == set(OutputFormat)


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_golden(fmt, update_golden):
    _check_golden(GOLDEN / f"report.{SUFFIX[fmt]}", RENDERERS.get(fmt)(make_report()), update_golden)


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_batch_golden(fmt, update_golden):
    _check_golden(GOLDEN / f"batch.{SUFFIX[fmt]}", BATCH_RENDERERS.get(fmt)(make_batch_report()), update_golden)


def test_sarif_validates_against_the_schema():
    doc = json.loads(RENDERERS.get(OutputFormat.SARIF)(make_report()))
    validate_sarif(doc)
    run = doc["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["SA101", "SA402"]
    assert all(r["help"]["markdown"].startswith(f"**{r['id']} ") for r in run["tool"]["driver"]["rules"])
    assert run["automationDetails"] == {"id": "stabaudit/m.onnx/"}
    # only the non-passing finding: the pass of SA402 is no result (code scanning opens an alert per result)
    [fail] = run["results"]
    assert fail["kind"] == "fail" and fail["ruleIndex"] == 0
    # SA101 failed at severity warning below --fail-on error: a warning, not an error
    assert fail["level"] == "warning" and fail["properties"]["gating"] is False
    assert fail["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "m.onnx", "uriBaseId": "%SRCROOT%", "index": 0
    }
    assert fail["locations"][0]["logicalLocations"] == [{"name": "fc1", "kind": "member"}]
    assert fail["partialFingerprints"] == {"stabaudit/v1": fingerprint("SA101", "m.onnx", ("fc1",))}
    assert "suppressions" not in fail


def test_sarif_all_results_and_gating_level():
    from stabaudit.renderers.sarif import render_sarif

    report = replace(make_report(), fail_on="warning", verdict="fail", exit_code=1)
    every = json.loads(render_sarif(report, all_results=True, docs_url="https://example.org/theory.md"))
    results = every["runs"][0]["results"]
    assert [(r["ruleId"], r["kind"], r["level"]) for r in results] == [
        ("SA101", "fail", "error"),  # at --fail-on warning the warning-severity failure gates
        ("SA402", "pass", "none"),
    ]
    assert [r["helpUri"] for r in every["runs"][0]["tool"]["driver"]["rules"]] == [
        "https://example.org/theory.md#sa101", "https://example.org/theory.md#sa402"
    ]
    default = json.loads(render_sarif(report))
    assert "helpUri" not in default["runs"][0]["tool"]["driver"]["rules"][0]


def test_sarif_uri_of_an_absolute_path_is_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = make_report()
    model = tmp_path / "models" / "my net.onnx"
    report = replace(report, model=replace(report.model, path=str(model)))
    doc = json.loads(RENDERERS.get(OutputFormat.SARIF)(report))
    run = doc["runs"][0]
    location = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == "models/my%20net.onnx" and location["uriBaseId"] == "%SRCROOT%"
    assert run["artifacts"][0]["location"]["uri"] == "models/my%20net.onnx"
    # the same finding from the relative path has the same fingerprint: it is the same alert
    relative = replace(report, model=replace(report.model, path="models/my net.onnx"))
    again = json.loads(RENDERERS.get(OutputFormat.SARIF)(relative))["runs"][0]["results"][0]
    assert again["partialFingerprints"] == run["results"][0]["partialFingerprints"]
    other = fingerprint("SA101", "models/other.onnx", ("fc1",))
    assert other != again["partialFingerprints"]["stabaudit/v1"]


def test_batch_sarif_is_one_run_over_every_model_file():
    doc = json.loads(BATCH_RENDERERS.get(OutputFormat.SARIF)(make_batch_report()))
    validate_sarif(doc)
    assert len(doc["runs"]) == 1
    run = doc["runs"][0]
    assert run["automationDetails"] == {"id": "stabaudit/batch/audit.yaml/"}
    uris = [a["location"]["uri"] for a in run["artifacts"]]
    assert uris == ["models/a.onnx", "models/b.pt", "models/broken.onnx"]
    assert run["artifacts"][1]["hashes"] == {"sha-256": "cd" * 32}
    located = [
        (r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["artifactLocation"]) for r in run["results"]
    ]
    # the passes of SA402 are no results; the waived failure is one, with its suppression
    assert located == [
        ("SA101", "warning", {"uri": "models/a.onnx", "uriBaseId": "%SRCROOT%", "index": 0}),
        ("SA101", "warning", {"uri": "models/b.pt", "uriBaseId": "%SRCROOT%", "index": 1}),
        ("SA402", "error", {"uri": "models/b.pt", "uriBaseId": "%SRCROOT%", "index": 1}),
    ]
    assert all(len(r["partialFingerprints"]["stabaudit/v1"]) == 32 for r in run["results"])
    assert len({r["partialFingerprints"]["stabaudit/v1"] for r in run["results"]}) == 3
    assert run["results"][2]["locations"][0]["logicalLocations"] == [{"name": "conv", "kind": "member"}]
    waived = run["results"][0]
    assert waived["suppressions"] == [{"kind": "external", "justification": "bracket accepted by review"}]
    assert all("suppressions" not in r for r in run["results"][1:])
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False and invocation["exitCode"] == 2
    assert invocation["toolExecutionNotifications"] == [
        {
            "level": "error",
            "message": {"text": "not an ONNX model or TorchScript archive"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": "models/broken.onnx", "uriBaseId": "%SRCROOT%", "index": 2}
                    }
                }
            ],
            "properties": {"exitCode": 2},
        }
    ]
    assert run["properties"]["verdict"] == "error" and run["properties"]["exitCode"] == 2


def test_batch_sarif_without_errors_ran_successfully():
    batch = make_batch_report()
    ok = replace(batch, models=batch.models[:2], verdict="fail", exit_code=1)
    doc = json.loads(BATCH_RENDERERS.get(OutputFormat.SARIF)(ok))
    validate_sarif(doc)
    invocation = doc["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is True and invocation["toolExecutionNotifications"] == []


def test_junit_counts():
    from xml.etree import ElementTree as ET

    # SA101 failed at severity warning, below --fail-on error: the gate passes, and JUnit agrees
    root = ET.fromstring(RENDERERS.get(OutputFormat.JUNIT)(make_report()))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "0"
    assert root.get("failures") == "0"
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None and cases[1].find("failure") is None
    out = cases[0].find("system-out")
    assert out is not None and "warnings do not gate at --fail-on error" in (out.text or "")
    assert suite.find("properties/property[@name='warnings']").get("value") == "1"  # type: ignore[union-attr]
    # at --fail-on warning the same finding gates: a failure
    strict = replace(make_report(), fail_on="warning", verdict="fail", exit_code=1)
    root = ET.fromstring(RENDERERS.get(OutputFormat.JUNIT)(strict))
    assert root.get("failures") == "1"
    assert root.find("testsuite/testcase/failure") is not None


def test_batch_junit_one_suite_per_model():
    from xml.etree import ElementTree as ET

    root = ET.fromstring(BATCH_RENDERERS.get(OutputFormat.JUNIT)(make_batch_report()))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["models/a.onnx", "models/b.pt", "models/broken.onnx"]
    waived, failing, broken = suites
    assert (waived.get("failures"), waived.get("skipped")) == ("0", "1")
    skipped = waived.find("testcase/skipped")
    assert skipped is not None
    assert skipped.get("message") == "waived: bracket accepted by review (expires 2026-12-31)"
    assert failing.get("failures") == "1" and len(failing.findall("testcase/failure")) == 1
    cases = broken.findall("testcase")
    assert [c.get("name") for c in cases] == ["audit"] and broken.get("errors") == "1"
    error = cases[0].find("error")
    assert error is not None and error.get("message") == "not an ONNX model or TorchScript archive"
