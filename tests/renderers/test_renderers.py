"""Renderers: one per output format, pure, and the JSON form of CONTRACT.md."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.report.model import GlobalLipschitz
from tests.report_factory import make_report


def test_every_format_has_a_renderer():
    for fmt in OutputFormat:
        assert isinstance(RENDERERS.get(fmt)(make_report()), str)


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
    assert "SA101" in text and "FAIL" in text and "verdict: PASS" in text
    md = RENDERERS.get(OutputFormat.MD)(make_report())
    assert "<details>" in md and "| SA101 lipschitz.global | fail |" in md
