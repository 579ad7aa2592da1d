"""A first run on the sample models: no FAIL row on default thresholds, one threshold gates one check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stabaudit.cli import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
runner = CliRunner()


@pytest.mark.parametrize("model", ["mlp.onnx", "cnn.onnx", "resnet.onnx"])
def test_defaults_are_informational_and_one_threshold_gates_only_its_check(model, tmp_path):
    args = ["check", str(SAMPLES / model), "--budget", "0.2", "--cache-dir", str(tmp_path / "c")]
    out = tmp_path / "r.json"
    first = runner.invoke(app, [*args, "-o", str(out)])
    assert first.exit_code == 0, first.output
    shown = runner.invoke(app, [*args, "--quiet"])  # the table on stdout (the audit from the cache)
    assert shown.exit_code == 0, shown.output
    table = shown.stdout
    assert not re.search(r"\bFAIL\b", table)  # no failure row: what does not gate is not shown as one
    report = json.loads(out.read_text())
    checks = {c["id"]: c for c in report["checks"]}
    sa101 = checks["SA101"]
    assert sa101["severity"] == "info" and sa101["status"] == "fail"  # K_lower > 1: still honest
    advice = re.search(r"would pass with --threshold lipschitz=(\S+) \(the certified upper bound\)", sa101["message"])
    assert advice is not None and advice.group(1) in table
    upper = report["lipschitz"]["upper"]
    assert upper <= float(advice.group(1)) <= upper * (1 + 1e-5)  # the certified bound, rounded up
    for cid in ("SA101", "SA102", "SA103", "SA201", "SA202", "SA301", "SA302", "SA601", "SA602"):
        assert checks[cid]["severity"] == "info", cid
    # K_max = 50 is below every sample's sound lower bound: SA101 alone becomes an error, and fails
    gated = runner.invoke(app, [*args, "--threshold", "lipschitz=50", "--format", "json", "--quiet"])
    assert gated.exit_code == 1, gated.output
    after = {c["id"]: c for c in json.loads(gated.stdout)["checks"]}
    promoted = sorted(cid for cid in after if after[cid]["severity"] != checks[cid]["severity"])
    assert promoted == ["SA101"]
    assert after["SA101"]["severity"] == "error" and after["SA101"]["status"] == "fail"
    assert report["lipschitz"]["lower"] > 50
