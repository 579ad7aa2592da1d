"""Tests of stabaudit.checks.residual: SA201 residual.cfl and SA202 residual.growth."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stabaudit.analyses.composition import rule_bounds
from stabaudit.checks import CheckPolicy, Evidence, run_checks
from stabaudit.checks.residual import ResidualEvidence, residual_evidence
from stabaudit.engine import AuditRequest, audit
from stabaudit.ir.passes import fold_affine
from stabaudit.loaders import load_model
from stabaudit.report.model import Equivalence, Finding, GlobalLipschitz, ResidualBlock, Status
from tests.analyses.test_residual import linear_block

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
A = 0.625  # the branch f(x) = -A x: h* = 2/A = 3.2


def _evidence(residual: ResidualEvidence | None) -> Evidence:
    return Evidence(
        layers=(),
        lipschitz=GlobalLipschitz(
            upper=1.0, lower=None, upper_method="product", lower_method="", certified=True, witness=None
        ),
        product_upper=1.0,
        depth=1,
        nonfinite={},
        equivalence=Equivalence(
            reference="onnxruntime", max_abs_diff=0.0, tolerance=1e-4, passed=True, samples=1
        ),
        operators=3,
        residual=residual,
    )


def _finding(residual: ResidualEvidence | None, check_id: str, policy: CheckPolicy | None = None) -> Finding:
    (finding,) = [f for f in run_checks(_evidence(residual), policy or CheckPolicy()) if f.id == check_id]
    return finding


def _residual(path: Path, samples: np.ndarray | None) -> ResidualEvidence:
    graph = fold_affine(load_model(path).graph)
    return residual_evidence(graph, rule_bounds(graph), samples, seed=0)


@pytest.mark.parametrize(("h", "status"), [(2 / A * 0.995, Status.PASS), (2 / A * 1.005, Status.FAIL)])
def test_sa201_flips_across_h_equal_two_over_a(tmp_path: Path, h: float, status: Status) -> None:
    samples = np.random.default_rng(0).normal(size=(2, 1, 4))
    ev = _residual(linear_block(tmp_path / "lin.onnx", A, h), samples)
    f = _finding(ev, "SA201")
    assert f.status is status
    assert f.value["mu"] == pytest.approx(-A, abs=1e-12)
    assert f.value["h_star"] == pytest.approx(2 / A, abs=1e-9)
    assert "mu = -0.625" in f.message and "h* = 3.2" in f.message
    if status is Status.FAIL:
        assert f.locations == ("block",)


def test_sa201_far_above_two_fails_without_samples(tmp_path: Path) -> None:
    # an affine branch needs no samples: its Jacobian is exact at x = 0
    ev = _residual(linear_block(tmp_path / "lin.onnx", 50.0), None)
    f = _finding(ev, "SA201")
    assert f.status is Status.FAIL and f.value["max_cfl"] == pytest.approx(50.0)


def test_sa201_inconclusive_and_sa202_on_the_sample_resnet() -> None:
    ev = _residual(SAMPLES / "resnet.onnx", None)  # no samples: no lower bound of Lip f
    assert len(ev.blocks) == 2
    assert _finding(ev, "SA201").status is Status.INCONCLUSIVE
    g = _finding(ev, "SA202")
    assert g.status is Status.INCONCLUSIVE and g.threshold == 1.0
    expected = ev.blocks[0].growth_upper * ev.blocks[1].growth_upper  # type: ignore[operator]
    assert g.value["upper"] == pytest.approx(expected, rel=1e-12) and g.value["upper"] >= expected


def test_sa202_statuses(tmp_path: Path) -> None:
    # x + h*(-A x): the block is (1 - hA) I, growth bound 1 + hA, lower bound |1 - hA|
    ev = _residual(linear_block(tmp_path / "lin.onnx", A, 0.01), None)
    assert _finding(ev, "SA202").status is Status.INCONCLUSIVE  # 0.99375 <= 1 <= 1.00625
    assert _finding(ev, "SA202", CheckPolicy(thresholds={"lipschitz": 1.01})).status is Status.PASS
    low = _finding(ev, "SA202", CheckPolicy(thresholds={"lipschitz": 0.9}))
    assert low.status is Status.FAIL and low.value["lower"] == pytest.approx(1 - 0.01 * A)


def test_skipped_without_residual_blocks() -> None:
    for residual in (None, ResidualEvidence(blocks=())):
        for check_id in ("SA201", "SA202"):
            f = _finding(residual, check_id)
            assert f.status is Status.SKIPPED and "no residual block" in f.message


def test_sa201_skips_projection_only_models() -> None:
    block = ResidualBlock(
        name="add", shortcut="projection", branch=("a",), h=1.0, lip_f_upper=1.0, lip_f_lower=None,
        cfl=1.0, growth_upper=2.0, shortcut_norm=1.0, certified=True,
    )
    f = _finding(ResidualEvidence(blocks=(block,)), "SA201")
    assert f.status is Status.SKIPPED and "projection" in f.message
    assert _finding(replace(ResidualEvidence(blocks=(block,))), "SA202").status is Status.INCONCLUSIVE


def test_engine_reports_residual_blocks(tmp_path: Path) -> None:
    path = linear_block(tmp_path / "lin.onnx", A, 2 / A * 1.005)
    report = audit(AuditRequest(path=path, method="product", lower_budget_s=0.5))
    (block,) = report.residual_blocks
    assert block.name == "block" and block.shortcut == "identity" and block.branch
    # the engine may merge the scale into the Affine before it (then h = 1): h*Lip f is the same
    assert block.cfl == pytest.approx(2.01, rel=1e-6)
    assert {f.id: f.status for f in report.checks}["SA201"] is Status.FAIL
