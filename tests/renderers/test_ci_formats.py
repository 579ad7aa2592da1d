"""--format github (workflow commands) and --format gitlab (Code Quality JSON) on hand-built reports."""

from __future__ import annotations

import json
from dataclasses import replace

from stabaudit.renderers import BATCH_RENDERERS, RENDERERS, OutputFormat
from stabaudit.renderers.base import fingerprint
from tests.report_factory import make_batch_report, make_report


def test_github_annotations_escape_and_follow_the_gate():
    report = make_report()
    sa101 = replace(report.checks[0], message="K >= 1.5 > 1, 100% sure:\nsecond line")
    report = replace(report, checks=(sa101, report.checks[1]), model=replace(report.model, path="dir/a,b:c.onnx"))
    lines = RENDERERS.get(OutputFormat.GITHUB)(report).splitlines()
    assert lines[0] == (
        "::warning file=dir/a%2Cb%3Ac.onnx,title=SA101::lipschitz.global: fail: "
        "K >= 1.5 > 1, 100%25 sure:%0Asecond line (layers: fc1)"
    )
    assert lines[1].startswith("::notice title=stabaudit::dir/a,b:c.onnx: PASS (exit code 0)")
    assert len(lines) == 2  # the pass of SA402 is no annotation
    strict = RENDERERS.get(OutputFormat.GITHUB)(replace(report, fail_on="warning"))
    assert strict.startswith("::error file=")


def test_github_batch_reports_models_that_could_not_be_audited():
    lines = BATCH_RENDERERS.get(OutputFormat.GITHUB)(make_batch_report()).splitlines()
    assert lines == [
        "::notice file=models/a.onnx,title=SA101::lipschitz.global: fail: K >= 1.5 > 1 (layers: fc1) "
        "[waived: bracket accepted by review]",
        "::warning file=models/b.pt,title=SA101::lipschitz.global: fail: K >= 12.5 > 1 (layers: fc1)",
        "::error file=models/b.pt,title=SA402::weights.finite: fail: 3 parameters are NaN or infinite (layers: conv)",
        "::error file=models/broken.onnx,title=stabaudit::could not be audited (exit code 2): "
        "not an ONNX model or TorchScript archive",
        "::notice title=stabaudit::batch audit.yaml: ERROR (3 models, exit code 2)",
    ]


def test_gitlab_code_quality_fields():
    issues = json.loads(RENDERERS.get(OutputFormat.GITLAB)(make_report()))
    assert issues == [
        {
            "description": "SA101 lipschitz.global: fail: K >= 1.5 > 1 (layers: fc1)",
            "check_name": "SA101",
            "fingerprint": fingerprint("SA101", "m.onnx", ("fc1",)),
            "severity": "minor",
            "location": {"path": "m.onnx", "lines": {"begin": 1}},
        }
    ]
    batch = json.loads(BATCH_RENDERERS.get(OutputFormat.GITLAB)(make_batch_report()))
    assert [(i["check_name"], i["severity"], i["location"]["path"]) for i in batch] == [
        ("SA101", "info", "models/a.onnx"),  # waived
        ("SA101", "minor", "models/b.pt"),  # below --fail-on error
        ("SA402", "major", "models/b.pt"),  # fails the gate
        ("audit", "blocker", "models/broken.onnx"),
    ]
    assert len({i["fingerprint"] for i in batch}) == 4
