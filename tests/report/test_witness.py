"""Large witnesses leave the JSON report: a sidecar .npz beside the file, a digest and norms on stdout."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.report.model import BatchReport, ModelError, Witness
from stabaudit.report.witness import (
    WITNESS_INLINE_MAX,
    externalize,
    externalize_batch,
    sidecar_path,
    witness_digest,
)
from tests.report_factory import make_report

runner = CliRunner()


def _with_witness(n: int):
    report = make_report()
    x = tuple(float(i) / 7 for i in range(n))
    y = tuple(float(-i) / 3 for i in range(n))
    w = Witness(x=x, y=y, quotient=2.5)
    return replace(report, lipschitz=replace(report.lipschitz, witness=w)), x, y


def test_small_witness_stays_inline():
    report, _, _ = _with_witness(WITNESS_INLINE_MAX)
    same, arrays = externalize(report, "r.witness.npz")
    assert same is report and arrays == {}


def test_large_witness_is_replaced_by_its_store():
    report, x, y = _with_witness(WITNESS_INLINE_MAX + 1)
    small, arrays = externalize(report, "r.witness.npz")
    w = small.lipschitz.witness
    assert w is not None and w.x == () and w.y == () and w.quotient == 2.5
    assert w.stored is not None and w.stored.file == "r.witness.npz" and w.stored.arrays == ("x", "y")
    assert arrays == {"x": x, "y": y} and w.stored.entries == WITNESS_INLINE_MAX + 1
    expected = hashlib.sha256(np.array(x, "<f8").tobytes() + np.array(y, "<f8").tobytes()).hexdigest()
    assert w.stored.sha256 == expected
    assert w.stored.x_norm == pytest.approx(math.sqrt(sum(t * t for t in x)), rel=1e-15)
    assert w.stored.y_norm == pytest.approx(math.sqrt(sum(t * t for t in y)), rel=1e-15)
    # on stdout: no file, no array names, the same digest and norms
    summary, _ = externalize(report, None)
    assert summary.lipschitz.witness is not None and summary.lipschitz.witness.stored is not None
    assert summary.lipschitz.witness.stored.file is None and summary.lipschitz.witness.stored.arrays == ()
    assert summary.lipschitz.witness.stored.sha256 == expected


def test_batch_names_each_models_arrays():
    report, x, y = _with_witness(1500)
    small_one, _, _ = _with_witness(10)
    batch = BatchReport(
        tool=report.tool, config="c.yaml", verdict="pass", exit_code=0,
        models=(small_one, ModelError(path="bad.onnx", error="x", exit_code=2), report),
    )
    out, arrays = externalize_batch(batch, "b.witness.npz")
    assert sorted(arrays) == ["m2_x", "m2_y"] and arrays["m2_x"] == x
    assert out.models[0] == small_one and out.models[1] == batch.models[1]


def test_sidecar_path():
    assert sidecar_path(Path("out/report.json")) == Path("out/report.witness.npz")


def test_large_input_report_stays_small_and_the_sidecar_reproduces_the_quotient(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 32 * 32, 3),
    ).eval()
    model = tmp_path / "big.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 64, 64), str(model), dynamo=False)
    cache = tmp_path / "cache"
    out = tmp_path / "report.json"
    args = ["check", str(model), "--cache-dir", str(cache), "--budget", "0.5"]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    side = tmp_path / "report.witness.npz"
    assert out.stat().st_size < 1_000_000 and side.exists()
    w = json.loads(out.read_text())["lipschitz"]["witness"]
    assert w["x"] == [] and w["y"] == [] and w["stored"]["file"] == "report.witness.npz"
    with np.load(side) as z:
        x, y = z["x"], z["y"]
    assert x.shape == (3 * 64 * 64,) and w["stored"]["entries"] == x.size
    assert witness_digest(tuple(x), tuple(y)) == w["stored"]["sha256"]
    assert float(np.linalg.norm(x)) == pytest.approx(w["stored"]["x_norm"], rel=1e-12)
    # the stored pair reproduces the reported quotient |F(x) - F(y)| / |x - y|, in float64
    net64 = net.double()
    with torch.no_grad():
        fx = net64(torch.from_numpy(x).reshape(1, 3, 64, 64)).numpy()
        fy = net64(torch.from_numpy(y).reshape(1, 3, 64, 64)).numpy()
    quotient = np.linalg.norm(fx - fy) / np.linalg.norm(x - y)
    assert quotient == pytest.approx(w["quotient"], rel=1e-9)
    # to stdout (served by the cache): the same witness, summarised by its digest and norms
    shown = runner.invoke(app, [*args, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    printed = json.loads(text[text.index("{"): text.rindex("}") + 1])["lipschitz"]["witness"]
    assert printed["stored"]["file"] is None and printed["stored"]["sha256"] == w["stored"]["sha256"]
    assert len(text) < 1_000_000
