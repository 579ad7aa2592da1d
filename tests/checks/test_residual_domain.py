"""SA201/SA202 with the branches' own witnessed lower bounds and over the audit domain; SA302 over a ball domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.samples import BallDomain, UniformDomain, Values
from stabaudit.engine import AuditRequest, audit
from stabaudit.report.model import Finding, Report, Status
from stabaudit.report.serialize import report_from_dict, report_to_dict

N, HIDDEN = 4, 8


def _weights(lip: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded W1 [HIDDEN, N], W2 [N, HIDDEN] (float32) with ||W2 W1||_2 = lip (before rounding)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(HIDDEN, N))
    w2 = rng.normal(size=(N, HIDDEN))
    w2 *= lip / np.linalg.norm(w2 @ w1, 2)
    return w1.astype(np.float32), w2.astype(np.float32)


def tanh_block(path: Path, lip: float, bias: float = 0.0, seed: int = 0) -> Path:
    """ONNX y = x + W2 tanh(W1 x + bias) over x of shape [1, N]."""
    w1, w2 = _weights(lip, seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.full(HIDDEN, bias, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(N, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], name="fc1", transB=1),
        helper.make_node("Tanh", ["z"], ["a"], name="act"),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["fx"], name="fc2", transB=1),
        helper.make_node("Add", ["x", "fx"], ["y"], name="block"),
    ]
    graph = helper.make_graph(nodes, "tanh_block", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _branch(path: Path, bias: float) -> object:
    """The branch b(x) = W2 tanh(W1 x + bias) in float64 from the stored float32 weights."""
    model = onnx.load(path)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    assert np.all(w["b1"] == np.float32(bias))
    return lambda x: w["w2"] @ np.tanh(w["w1"] @ np.asarray(x, dtype=np.float64) + w["b1"]) + w["b2"]


def _check(report: Report, check_id: str) -> Finding:
    (found,) = [f for f in report.checks if f.id == check_id]
    return found


def _quotient(b, x: tuple[float, ...], y: tuple[float, ...]) -> float:  # type: ignore[no-untyped-def]
    xa, ya = np.asarray(x), np.asarray(y)
    return float(np.linalg.norm(b(ya) - b(xa)) / np.linalg.norm(ya - xa))


def test_branch_above_two_fails_with_a_witness(tmp_path: Path) -> None:
    # Lip f >= ||W2 W1|| = 3 (the Jacobian at the pre-activation 0): no samples, no domain
    path = tanh_block(tmp_path / "hi.onnx", 3.0)
    report = audit(AuditRequest(path=path, method="product", lower_budget_s=1.0))
    (block,) = report.residual_blocks
    w = block.lip_f_witness
    assert w is not None and block.lip_f_lower is not None and block.lip_f_upper is not None
    assert 2.0 < block.h * block.lip_f_lower <= block.lip_f_upper
    # the witness is a pair of branch inputs whose exact quotient is at least the reported one
    exact = _quotient(_branch(path, 0.0), w.x, w.y)
    assert w.quotient <= exact * (1 + 1e-12) and block.h * block.lip_f_lower <= w.quotient
    cfl = _check(report, "SA201")
    assert cfl.status is Status.FAIL and "witness pair" in cfl.message and cfl.locations == ("block",)
    # reverse triangle inequality: Lip(block) >= h Lip f - 1 > 1
    growth = _check(report, "SA202")
    assert growth.status is Status.FAIL and growth.value["lower"] == pytest.approx(block.growth_lower)
    assert growth.value["lower"] > 1.0
    gw = block.growth_witness
    assert gw is not None and gw.quotient == block.growth_lower
    b = _branch(path, 0.0)
    gx, gy = np.asarray(gw.x), np.asarray(gw.y)
    block_quotient = float(np.linalg.norm(gy + b(gy) - gx - b(gx)) / np.linalg.norm(gy - gx))
    assert gw.quotient <= block_quotient * (1 + 1e-12)
    # over a box the branch input fills around 0, the violation is proved there too, by a pair in it
    box = UniformDomain(low=Values(values=(-0.1,)), high=Values(values=(0.1,)))
    report = audit(AuditRequest(path=path, method="product", lower_budget_s=1.0, domain=box))
    (block,) = report.residual_blocks
    d = block.domain
    assert d is not None and d.witness is not None and d.lip_f_lower is not None
    assert all(-0.1 <= v <= 0.1 for v in d.witness.x + d.witness.y)  # the block input is x itself
    assert d.witness.quotient <= _quotient(_branch(path, 0.0), d.witness.x, d.witness.y) * (1 + 1e-12)
    cfl = _check(report, "SA201")
    assert cfl.status is Status.FAIL and cfl.message.startswith("over the domain (the box [-0.1, 0.1]")
    assert cfl.value["over"] == "box" and cfl.value["blocks"]["block"] == d.cfl


def test_branch_below_two_on_the_domain_passes_there_only(tmp_path: Path) -> None:
    # tanh saturates on the domain: pre-activations in 3 + W1 [0, 0.1]^4, slopes <= 1 - tanh(2.4)^2
    path = tanh_block(tmp_path / "lo.onnx", 3.0, bias=3.0)
    whole = audit(AuditRequest(path=path, method="product", lower_budget_s=1.0))
    (block,) = whole.residual_blocks
    assert block.cfl is not None and block.cfl > 2.0
    assert _check(whole, "SA201").status is not Status.PASS  # the global bound proves nothing
    box = UniformDomain(low=Values(values=(0.0,)), high=Values(values=(0.1,)))
    report = audit(AuditRequest(path=path, method="product", lower_budget_s=1.0, domain=box))
    (block,) = report.residual_blocks
    d = block.domain
    assert d is not None and d.certified and d.cfl is not None and d.lip_f_upper is not None
    assert block.cfl is not None and d.cfl < 0.2 < 2.0 < block.cfl
    # soundness of the bound over the domain: random pairs of the domain never exceed it
    b = _branch(path, 3.0)
    rng = np.random.default_rng(7)
    pairs = rng.uniform(0.0, 0.1, size=(2000, 2, N))
    assert max(_quotient(b, tuple(p[0]), tuple(p[1])) for p in pairs) <= d.lip_f_upper
    assert d.lip_f_lower is not None and d.lip_f_lower <= d.lip_f_upper
    cfl = _check(report, "SA201")
    assert cfl.status is Status.PASS and cfl.value["over"] == "box"
    assert cfl.message.startswith("over the domain (the box [0, 0.1] on every entry): certified h*Lip(f) <= ")
    assert cfl.value["max_cfl"] == d.cfl
    growth = _check(report, "SA202")
    assert growth.value["blocks"]["block"] == d.growth_upper and growth.message.startswith("over the domain")
    assert d.growth_upper is not None and d.growth_upper <= 1.0 + d.cfl * (1 + 1e-12)
    # the JSON keeps the domain numbers and reads back
    data = report_to_dict(report)
    assert data["residual_blocks"][0]["domain"]["cfl"] == d.cfl
    assert "domain" not in report_to_dict(whole)["residual_blocks"][0]
    assert report_to_dict(report_from_dict(data)) == data
    from stabaudit.renderers.table import render_table

    assert "block: over the domain: Lip f in [" in render_table(report)


def exp_net(path: Path, seed: int = 0) -> Path:
    """ONNX y = W2 exp(W1 x): no global constant, and Exp has no interval Jacobian (SA302's analysis)."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    inits = [
        numpy_helper.from_array((rng.normal(size=(6, N)) * 0.5).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.normal(size=(2, 6)) * 0.5).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["z"], name="fc1", transB=1),
        helper.make_node("Exp", ["z"], ["a"], name="exp"),
        helper.make_node("Gemm", ["a", "w2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(nodes, "exp_net", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_sa302_uses_the_bound_over_a_ball_domain(tmp_path: Path) -> None:
    path = exp_net(tmp_path / "exp.onnx")
    x = np.random.default_rng(1).normal(size=(3, 1, N))

    def sa302(domain: BallDomain | None) -> tuple[dict, dict]:  # type: ignore[type-arg]
        data = report_to_dict(audit(AuditRequest(path=path, method="product", lower_budget_s=0.2, inputs=x,
                                                 eps=0.01, domain=domain)))
        (found,) = [c for c in data["checks"] if c["id"] == "SA302"]
        return data, found

    data, found = sa302(None)
    assert found["status"] == "skipped" and data["lipschitz"]["upper"] is None
    data, found = sa302(BallDomain(eps=0.01))  # the domain's balls are SA302's balls
    upper = data["domain_lipschitz"]["upper"]
    assert upper is not None and found["value"]["upper"] == upper and found["value"]["domain"] == upper
    assert found["value"]["local_analysis"] is None and "the certified bound over the domain" in found["message"]
    assert found["status"] == "inconclusive"  # above the default K_max = 1
    data, found = sa302(BallDomain(eps=0.005))  # smaller balls do not hold SA302's: not used
    assert found["status"] == "skipped"


def test_large_residual_witnesses_leave_the_json() -> None:
    from dataclasses import replace

    from stabaudit.report.model import ResidualBlock, ResidualDomain, Witness
    from stabaudit.report.witness import WITNESS_INLINE_MAX, externalize
    from tests.report_factory import make_report

    n = WITNESS_INLINE_MAX + 1
    big = Witness(x=tuple(float(i) for i in range(n)), y=tuple(float(-i) for i in range(n)), quotient=3.0)
    small = Witness(x=(1.0,), y=(2.0,), quotient=3.0)
    block = ResidualBlock(
        name="b", shortcut="identity", branch=("f",), h=1.0, lip_f_upper=4.0, lip_f_lower=3.0, cfl=4.0,
        growth_upper=5.0, certified=True, lip_f_witness=big, growth_witness=big,
        domain=ResidualDomain(lip_f_upper=4.0, lip_f_lower=3.0, cfl=4.0, growth_upper=5.0, growth_lower=2.0,
                              certified=True, witness=big),
    )
    report = replace(make_report(), residual_blocks=(replace(block, lip_f_witness=small, growth_witness=None), block))
    out, arrays = externalize(report, "r.witness.npz")
    first, second = out.residual_blocks
    assert first.lip_f_witness == small  # small ones stay inline
    assert second.lip_f_witness is not None and second.lip_f_witness.x == ()
    assert second.lip_f_witness.stored is not None and second.lip_f_witness.stored.arrays == ("residual1_x", "residual1_y")
    assert second.domain is not None and second.domain.witness is not None and second.domain.witness.x == ()
    assert first.domain is not None and first.domain.witness is not None and first.domain.witness.x == ()
    assert second.growth_witness is not None and second.growth_witness.x == ()
    assert set(arrays) == {"residual0_domain_x", "residual0_domain_y", "residual1_x", "residual1_y",
                           "residual1_growth_x", "residual1_growth_y", "residual1_domain_x", "residual1_domain_y"}
    assert arrays["residual1_x"] == big.x and arrays["residual1_domain_y"] == big.y
