"""A baseline of another model is refused (exit 2) unless --baseline-any-model, in check and batch."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from stabaudit.cli import app

MLP = Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx"
runner = CliRunner()


def _other_baseline(tmp_path: Path) -> Path:
    """The report of some other model: another sha256 and another input shape."""
    path = tmp_path / "other.json"
    path.write_text(
        json.dumps(
            {
                "schema_version": "1",
                "model": {"path": "other.onnx", "sha256": "0" * 64, "input_shape": [1, 3, 32, 32]},
                "lipschitz": {"upper": 338.361, "certified": True},
                "layers": [],
                "checks": [],
            }
        )
    )
    return path


def test_check_refuses_a_baseline_of_another_model(tmp_path):
    base = _other_baseline(tmp_path)
    cache = tmp_path / "cache"
    common = ["check", str(MLP), "--budget", "0.2", "--cache-dir", str(cache), "--baseline", str(base)]
    out = tmp_path / "r.json"
    refused = runner.invoke(app, [*common, "-o", str(out)])
    assert refused.exit_code == 2
    first = refused.stderr.splitlines()[0]
    assert first.startswith(f"error: {MLP}: --baseline {base}: the baseline is a report of another model (other.onnx")
    assert "pass --baseline-any-model to compare them anyway" in first
    assert json.loads(out.read_text())["checks"][0]["id"] == "SA900"
    accepted = runner.invoke(app, [*common, "--baseline-any-model", "-f", "json", "-q"])
    assert accepted.exit_code == 0, accepted.stderr
    sa001 = next(c for c in json.loads(accepted.stdout)["checks"] if c["id"] == "SA001")
    assert sa001["status"] == "pass" and sa001["value"]["improvements"] == 1  # 338.361 -> the MLP's bound


def test_batch_refuses_the_model_whose_baseline_entry_is_another_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(MLP.read_bytes())
    base = tmp_path / "base.json"
    entry = json.loads(_other_baseline(tmp_path).read_text())
    entry["model"]["path"] = "m.onnx"  # same path, but the file there is now another model
    base.write_text(json.dumps({"schema_version": "1", "models": [entry]}))
    (tmp_path / "b.yaml").write_text("defaults: {budget: 0.2}\nmodels:\n  - path: m.onnx\n")
    args = ["batch", "b.yaml", "--executor", "inprocess", "--baseline", str(base), "--cache-dir", "cache", "-o", "r.json"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[0].startswith("error: m.onnx: --baseline: the baseline is a report of another model")
    assert json.loads((tmp_path / "r.json").read_text())["models"][0]["exit_code"] == 2
    accepted = runner.invoke(app, [*args, "--baseline-any-model"])
    assert accepted.exit_code == 0, accepted.stderr
