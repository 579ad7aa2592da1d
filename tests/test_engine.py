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
    # one split of the budget: the global methods plan their Newton steps and nodes from their
    # part, the lower-bound search takes what they left (the last stage that plans), so the
    # total is the budget; no clock enters
    assert 0.0 < report.planned["global_methods"] <= plan.STAGE_WEIGHTS["global_methods"] * 0.5
    core = report.planned["equivalence"] + report.planned["layer_bounds"]
    assert 0.0 < core < 1e-3  # the certified core of a small MLP: microseconds, planned first
    assert report.planned["lower_bound"] == pytest.approx(0.5 - core - report.planned["global_methods"], rel=2e-3)
    parts = [v for k, v in report.planned.items() if k != "total"]
    assert report.planned["total"] == pytest.approx(sum(parts), rel=1e-3)
    assert report.planned["total"] == pytest.approx(0.5, rel=1e-3)
    assert report.timings == {}
    again = audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    assert again.planned == report.planned
    line = next(row for row in render_table(report).splitlines() if row.startswith("Work: "))
    assert f"{report.planned['total']:.3g} s planned from --budget" in line and "took" not in line
    with plan.ledger() as spent:
        audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    assert spent == [0.0]  # each stage counts in its own ledger


def test_one_split_of_the_budget_flows_on_to_the_later_stages() -> None:
    from stabaudit.analyses.plan import STAGE_WEIGHTS
    from stabaudit.stages import STAGES, allotment

    at = {stage.name: i for i, stage in enumerate(STAGES)}
    request = AuditRequest(path=SAMPLES / "mlp.onnx", budget_s=10.0, lower_budget_s=10.0)
    # no samples, no domain: the global methods, the residual blocks and the lower bound share it
    weights = STAGE_WEIGHTS["global_methods"] + STAGE_WEIGHTS["residual"] + STAGE_WEIGHTS["lower_bound_search"]
    first, rest = allotment(request, at["global_methods"], {})
    assert first == pytest.approx(10.0 * STAGE_WEIGHTS["global_methods"] / weights) and rest == pytest.approx(10.0 - first)
    # the global methods took 1 s: the residual stage gets its part of the 9 s left; it took none,
    # so the lower-bound search (the last stage that plans) gets all of them
    part, _ = allotment(request, at["residual"], {"global_methods": 1.0})
    assert part == pytest.approx(9.0 * STAGE_WEIGHTS["residual"] / (weights - STAGE_WEIGHTS["global_methods"]))
    assert allotment(request, at["lower_bound_search"], {"global_methods": 1.0}) == (pytest.approx(9.0), 0.0)
    # a stage that went beyond its part leaves nothing: the later ones run their smallest plans
    assert allotment(request, at["lower_bound_search"], {"global_methods": 12.0})[0] == 0.0
    # lower_budget_s bounds the stages after the global methods together
    capped = AuditRequest(path=SAMPLES / "mlp.onnx", budget_s=10.0, lower_budget_s=2.0)
    assert allotment(capped, at["lower_bound_search"], {"global_methods": 1.0, "samples": 0.5})[0] == pytest.approx(1.5)
    # the certified core is charged against --budget, not against that cap
    core = {"equivalence": 0.5, "layer_bounds": 3.0, "global_methods": 1.0, "samples": 0.5}
    assert allotment(capped, at["lower_bound_search"], core)[0] == pytest.approx(1.5)
    assert allotment(request, at["lower_bound_search"], core)[0] == pytest.approx(5.0)
    # with a domain, the domain stage comes after the lower bound and shares what remains
    boxed = AuditRequest(path=SAMPLES / "mlp.onnx", budget_s=10.0, domain=_box_domain())
    part, rest = allotment(boxed, at["lower_bound_search"], {"global_methods": 1.0, "samples": 1.0})
    share = STAGE_WEIGHTS["lower_bound_search"] / (STAGE_WEIGHTS["lower_bound_search"] + STAGE_WEIGHTS["domain_bounds"])
    assert part == pytest.approx(8.0 * share) and rest == pytest.approx(8.0 - part)


def _box_domain():  # type: ignore[no-untyped-def]
    from stabaudit.analyses.samples import UniformDomain, Values

    return UniformDomain(low=Values(values=(0.0,)), high=Values(values=(1.0,)))


@pytest.mark.parametrize("name", ["cnn.onnx", "resnet.onnx"])
def test_the_whole_audit_plans_within_its_budget(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples, residual blocks, the lower bound and the domain together plan the budget, not
    each their own copy of it (their smallest plans are far below it on these networks)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    report = audit(AuditRequest(path=SAMPLES / name, budget_s=1.5, lower_budget_s=1.5, domain=_box_domain()))
    assert {"samples", "lower_bound", "domain"} <= set(report.planned)
    assert 1.0 <= report.planned["total"] <= 1.5 * (1 + 1e-3)
    alone = audit(AuditRequest(path=SAMPLES / name, budget_s=1.5, lower_budget_s=1.5))
    # no domain, no samples: what they would have planned flows to the lower-bound search
    assert alone.planned["lower_bound"] > report.planned["lower_bound"]
    assert alone.planned["total"] <= 1.5 * (1 + 1e-3)


def test_the_markdown_and_html_reports_state_the_planned_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from stabaudit.renderers.html import render_html
    from stabaudit.renderers.markdown import render_markdown

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    path = Path(__file__).resolve().parents[1] / "sample_models" / "mlp.onnx"
    report = audit(AuditRequest(path=path, budget_s=0.5, lower_budget_s=0.5))
    line = f"Work: {report.planned['total']:.3g} s planned from --budget"
    assert line in render_markdown(report) and f"<p>{line}" in render_html(report)


def test_sa302_reads_the_samples_the_budget_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local bounds (SA302) take the first samples the sample channels' share plans, as SA301,
    SA303 and SA401 do (plan.sample_count: at least MIN_SAMPLES), and say how many."""
    from stabaudit.analyses import plan

    monkeypatch.setattr(plan, "LOWER_MACS_PER_S", 1e3)  # a budget that buys no more than the floor
    with np.load(SAMPLES / "digits_samples.npz") as data:
        inputs = data["x_image"][:10, None]
    report = audit(AuditRequest(path=SAMPLES / "cnn.onnx", inputs=inputs, budget_s=1.0, lower_budget_s=1.0))
    (finding,) = [f for f in report.checks if f.id == "SA302"]
    assert finding.value["samples"] == plan.MIN_SAMPLES < 10
    assert f"around {plan.MIN_SAMPLES} samples" in finding.message


def test_the_certified_core_is_planned_first_and_the_later_stages_share_what_it_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The equivalence check and the per-layer bounds run whatever the budget; their planned
    seconds (the cost model's, from the shapes) come off --budget before the searches share it."""
    from stabaudit.analyses import plan
    from stabaudit.analyses.lower import forward_macs
    from stabaudit.ir.executor import with_shapes
    from stabaudit.loaders import load_model

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    path = SAMPLES / "cnn.onnx"
    report = audit(AuditRequest(path=path, budget_s=1.0, lower_budget_s=1.0))
    graph = with_shapes(load_model(path).graph)
    assert report.planned["layer_bounds"] == pytest.approx(plan.layer_bounds_s(graph), rel=1e-3)
    # the equivalence check runs the folded graph (BatchNorm into the convolutions): a few percent fewer MACs
    assert report.planned["equivalence"] == pytest.approx(
        plan.equivalence_s(forward_macs(graph, dict(graph.shapes))), rel=0.1)
    assert report.planned["total"] == pytest.approx(1.0, rel=1e-3)
    # a core that costs more than the budget leaves nothing: the searches run their smallest plans
    monkeypatch.setattr(plan, "CORE_DENSE_FLOPS_PER_S", 1e3)
    starved = audit(AuditRequest(path=path, budget_s=1.0, lower_budget_s=1.0))
    assert starved.planned["layer_bounds"] > 1.0
    assert starved.planned["lower_bound"] < 0.5 * report.planned["lower_bound"]
    assert "global_methods" not in starved.planned or starved.planned["global_methods"] < report.planned.get(
        "global_methods", 1.0)
