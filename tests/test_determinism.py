"""Same model, options and seed: byte-identical JSON, in one process and across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stabaudit.engine import AuditRequest, audit
from stabaudit.renderers import RENDERERS, OutputFormat

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
EXE = Path(sys.executable).parent / "stabaudit"


def test_same_process_reports_are_identical(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    request = AuditRequest(path=SAMPLES / "cnn.onnx", seed=3, lower_budget_s=0.5, budget_s=0.5)
    a = RENDERERS.get(OutputFormat.JSON)(audit(request))
    b = RENDERERS.get(OutputFormat.JSON)(audit(request))
    assert a == b
    assert '"created": "2023-11-14T22:13:20Z"' in a
    assert '"timings": {}' in a


def test_without_source_date_epoch_timings_are_reported(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    report = audit(AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2, budget_s=0.2))
    assert report.timings["total"] > 0 and report.created.endswith("Z")


def test_seed_changes_the_search_but_not_the_certified_bounds(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    a = audit(AuditRequest(path=SAMPLES / "mlp.onnx", seed=0, lower_budget_s=0.3, budget_s=5.0))
    b = audit(AuditRequest(path=SAMPLES / "mlp.onnx", seed=1, lower_budget_s=0.3, budget_s=5.0))
    assert a.lipschitz.upper == b.lipschitz.upper
    assert a.lipschitz.witness != b.lipschitz.witness


def test_across_processes_byte_identical(tmp_path):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    outputs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        proc = subprocess.run(
            [
                str(EXE),
                "check",
                str(SAMPLES / "resnet.pt"),
                "--budget",
                "0.3",
                "--seed",
                "7",
                "-o",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_bytes())
    if outputs[0] != outputs[1]:  # name what differs: the search's plan, notes and result
        import json

        a, b = (json.loads(o) for o in outputs)
        pick = ("lower", "lower_method")
        diag = [({k: r["lipschitz"].get(k) for k in pick}, r["notes"]) for r in (a, b)]
        pytest.fail(f"reports differ across processes: {diag}")


def test_bad_source_date_epoch_is_a_usage_error(monkeypatch):
    from stabaudit.errors import UsageError

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        audit(AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2, budget_s=0.2))
