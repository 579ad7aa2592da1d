"""Baselines: which model a baseline belongs to, and matching batch entries by path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stabaudit.errors import UsageError
from stabaudit.report.baseline import load_baseline, other_model

MLP = Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx"
SHA = "ab" * 32


def _entry(path: str, sha: str = SHA, shape: list[int] | None = None) -> dict:
    return {
        "model": {"path": path, "sha256": sha, "input_shape": shape or [1, 4]},
        "lipschitz": {"upper": 2.0, "certified": True},
        "layers": [],
        "checks": [],
    }


@pytest.mark.parametrize(
    ("sha", "shape", "other"),
    [
        (SHA, (1, 4), False),  # the same model
        ("cd" * 32, (1, 4), False),  # retrained: new bytes, same input
        (SHA, (1, 8), False),  # same bytes at another input shape
        ("cd" * 32, (1, 8), True),  # another model
    ],
)
def test_other_model_needs_both_sha256_and_shape_to_differ(sha, shape, other):
    problem = other_model(_entry("a.onnx"), sha, shape)
    assert (problem is not None) is other
    if other:
        assert problem == (
            f"the baseline is a report of another model (a.onnx: sha256 {SHA[:12]}, input shape [1, 4]; "
            f"this model: sha256 {'cd' * 6}, input shape [1, 8]); pass --baseline-any-model to compare them anyway"
        )


def test_other_model_cannot_tell_without_the_fields():
    assert other_model({"lipschitz": {}}, "cd" * 32, (1, 8)) is None


def test_batch_baseline_entry_is_found_by_path_however_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    baseline = tmp_path / "base.json"
    baseline.write_text(
        json.dumps({"schema_version": "1", "models": [_entry("models/a.onnx"), _entry("models/b.onnx", sha="cd" * 32)]})
    )
    for written in ("models/b.onnx", "./models/b.onnx", str(tmp_path / "models" / "b.onnx")):
        assert load_baseline(baseline, written)["model"]["sha256"] == "cd" * 32
    with pytest.raises(UsageError, match="no entry for models/c.onnx"):
        load_baseline(baseline, "models/c.onnx")


def test_batch_plan_matches_each_model_to_its_own_entry(tmp_path, monkeypatch):
    from stabaudit.batching import plan
    from stabaudit.config import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("a", "b"):
        shutil.copy(MLP, tmp_path / "models" / f"{name}.onnx")
    baseline = tmp_path / "base.json"
    # the previous batch named b by its absolute path, a relatively: both are matched
    entries = [_entry(str(tmp_path / "models" / "b.onnx"), sha="b" * 64), _entry("models/a.onnx", sha="a" * 64)]
    baseline.write_text(json.dumps({"schema_version": "1", "models": entries}))
    cfg = tmp_path / "b.yaml"
    cfg.write_text("models:\n  - path: ./models/a.onnx\n  - path: models/b.onnx\n  - path: models/*.onnx\n")
    jobs = plan(load_config(cfg), baseline=baseline)
    got = [(str(j.request.path), (j.request.baseline or {}).get("model", {}).get("sha256")) for j in jobs]
    assert got[:2] == [("models/a.onnx", "a" * 64), ("models/b.onnx", "b" * 64)]
