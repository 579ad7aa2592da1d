"""audit() end to end: sample models in both formats, and every external network (soundness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stabaudit.engine import AuditRequest, audit

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
EXTERNAL_MODELS = sorted(EXTERNAL.rglob("*.onnx")) if EXTERNAL.is_dir() else []


def sampled_quotients(path: Path, input_shape: tuple[int, ...], *, pairs: int, seed: int) -> float:
    """The largest |f(x) - f(y)| / |x - y| over random pairs, in float64 (a lower bound, never above K)."""
    from stabaudit.analyses.sampling import sampled_max_quotient
    from stabaudit.loaders import load_model

    return sampled_max_quotient(load_model(path, input_shape=input_shape).graph, pairs=pairs, seed=seed)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_onnx_and_torchscript_twins_give_the_same_bounds(name):
    a = audit(AuditRequest(path=SAMPLES / f"{name}.onnx", lower_budget_s=2.0, budget_s=2.0))
    b = audit(AuditRequest(path=SAMPLES / f"{name}.pt", lower_budget_s=2.0, budget_s=2.0))
    assert a.model.format == "onnx" and b.model.format == "torchscript"
    ua = [
        layer.lipschitz.upper
        for layer in a.layers
        if layer.op in ("Linear", "Conv", "ConvTranspose")
    ]
    ub = [
        layer.lipschitz.upper
        for layer in b.layers
        if layer.op in ("Linear", "Conv", "ConvTranspose")
    ]
    assert len(ua) == len(ub) > 0
    np.testing.assert_allclose(ua, ub, rtol=1e-6)
    assert a.lipschitz.upper == pytest.approx(b.lipschitz.upper, rel=1e-6)
    for report in (a, b):
        assert report.lipschitz.certified
        assert (
            report.lipschitz.lower is not None and report.lipschitz.lower <= report.lipschitz.upper
        )
        assert report.equivalence.passed


@pytest.mark.parametrize("name", ["mlp.onnx", "cnn.onnx", "resnet.pt"])
def test_sample_models_sampled_quotients_below_upper(name):
    report = audit(AuditRequest(path=SAMPLES / name, lower_budget_s=1.0, budget_s=1.0))
    q = sampled_quotients(SAMPLES / name, report.model.input_shape, pairs=256, seed=1)
    assert q <= report.lipschitz.upper
    assert report.lipschitz.lower <= report.lipschitz.upper


@pytest.mark.external
@pytest.mark.corpus
@pytest.mark.parametrize("path", EXTERNAL_MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_external_network_sound_report(path):
    report = audit(AuditRequest(path=path, lower_budget_s=1.0, budget_s=1.0, power_iterations=20))
    assert report.equivalence.passed
    assert report.layers
    lip = report.lipschitz
    assert lip.certified and lip.upper is not None
    assert lip.lower is not None and 0 < lip.lower <= lip.upper
    for layer in report.layers:
        b = layer.lipschitz
        if b.upper is not None and b.lower is not None:
            assert b.lower <= b.upper * (1 + 1e-12), layer.name
    q = sampled_quotients(path, report.model.input_shape, pairs=64, seed=2)
    assert q <= lip.upper


def test_external_folder_has_all_networks():
    if not EXTERNAL.is_dir():
        pytest.skip("../shared/models/external is absent")
    assert len(EXTERNAL_MODELS) == 29


def test_the_report_states_the_planned_work_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from stabaudit.analyses import plan
    from stabaudit.renderers.table import render_table

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    path = Path(__file__).resolve().parents[1] / "sample_models" / "mlp.onnx"
    report = audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    # the lower-bound search plans the budget's units (at least its smallest plan); the global
    # methods their Newton steps and nodes; the total is their sum, and no clock enters
    assert report.planned["lower_bound"] >= 0.5
    assert 0.0 < report.planned["global_methods"] <= 3 * 0.5
    parts = [v for k, v in report.planned.items() if k != "total"]
    assert report.planned["total"] == pytest.approx(sum(parts), rel=1e-3)
    assert report.timings == {}
    again = audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    assert again.planned == report.planned
    line = next(row for row in render_table(report).splitlines() if row.startswith("Work: "))
    assert f"{report.planned['total']:.3g} s planned from --budget" in line and "took" not in line
    with plan.ledger() as spent:
        audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    assert spent == [0.0]  # each stage counts in its own ledger


def test_the_markdown_and_html_reports_state_the_planned_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from stabaudit.renderers.html import render_html
    from stabaudit.renderers.markdown import render_markdown

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    path = Path(__file__).resolve().parents[1] / "sample_models" / "mlp.onnx"
    report = audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    line = f"Work: {report.planned['total']:.3g} s planned from --budget"
    assert line in render_markdown(report) and f"<p>{line}" in render_html(report)
