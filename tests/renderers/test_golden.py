"""Golden files: every format rendered from one hand-built report (regenerate: --update-golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stabaudit.renderers import RENDERERS, OutputFormat
from tests.report_factory import make_report

GOLDEN = Path(__file__).parent / "golden"
SUFFIX = {
    OutputFormat.TABLE: "txt",
    OutputFormat.JSON: "json",
    OutputFormat.MD: "md",
    OutputFormat.SARIF: "sarif",
    OutputFormat.JUNIT: "xml",
}
SCHEMA = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "sarif-schema-2.1.0.json"


def test_every_format_has_a_golden_suffix():
    assert set(SUFFIX) == set(OutputFormat)


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_golden(fmt, update_golden):
    text = RENDERERS.get(fmt)(make_report())
    path = GOLDEN / f"report.{SUFFIX[fmt]}"
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed: rerun with --update-golden if intended"


def test_sarif_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip("../shared/schemas/sarif-schema-2.1.0.json is absent")
    schema = json.loads(SCHEMA.read_text())
    doc = json.loads(RENDERERS.get(OutputFormat.SARIF)(make_report()))
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    run = doc["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["SA101", "SA402"]
    fail = run["results"][0]
    assert fail["kind"] == "fail" and fail["level"] == "warning" and fail["ruleIndex"] == 0
    assert fail["locations"][0]["logicalLocations"] == [{"name": "fc1", "kind": "member"}]
    assert run["results"][1]["kind"] == "pass" and run["results"][1]["level"] == "none"


def test_junit_counts():
    from xml.etree import ElementTree as ET

    root = ET.fromstring(RENDERERS.get(OutputFormat.JUNIT)(make_report()))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
