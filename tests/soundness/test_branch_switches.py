"""Soundness of the figures of models whose executed code switches branch (torch's thresholded
softplus): the certified K with the additive term covers every difference quotient of the module
as executed, pairs straddling a switch included; onnxruntime's Softplus does not switch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stabaudit.bounds.activations import softplus_switch_gap
from stabaudit.engine import AuditRequest, audit
from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.report.model import Report

SHAPE = (1, 4)


class SoftplusNet(nn.Module):
    """fc1 -> Softplus(beta, threshold) [-> fc2 -> Softplus(beta2, threshold2)] -> out, float64."""

    def __init__(self, beta: float, threshold: float, second: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.Softplus(beta=beta, threshold=threshold)
        self.second = second is not None
        self.fc2 = nn.Linear(8, 6)
        self.act2 = nn.Softplus(*(second or (1.0, 20.0)))
        self.out = nn.Linear(6 if second else 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.second:
            h = self.act2(self.fc2(h))
        return self.out(h)


CONFIGS = {
    "default": (1.0, 20.0, None),  # torch's defaults: a jump of 2.06e-9 per unit at x = 20
    "beta2_t5": (2.0, 5.0, None),  # a jump of log1p(exp(-5)) / 2 = 3.4e-3 per unit at x = 2.5
    "two_layers": (1.0, 20.0, (2.0, 5.0)),
}


def _build(name: str, tmp: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(11)
    beta, threshold, second = CONFIGS[name]
    module = SoftplusNet(beta, threshold, second).double().eval()
    path = tmp / f"{name}.pt"
    extra = {"stabaudit.json": json.dumps({"input_shape": list(SHAPE)})}
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return module, path


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def audited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, nn.Module, Report]:
    name = request.param
    module, path = _build(name, tmp_path_factory.mktemp(name))
    report = audit(AuditRequest(path=path, lower_budget_s=0.3, budget_s=0.5))
    return name, module, report


def _f(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x.reshape(SHAPE))).numpy().reshape(-1)


def _straddling_pairs(module: nn.Module, layer: nn.Linear, act: nn.Softplus, upstream, seed: int):
    """Pairs x, y on a line through the input space, one on each side of the switch of one unit:
    beta z_j(x) <= threshold < beta z_j(y) with z = layer(upstream(.)), at distances 1e-3 ... 1e-12,
    found by bisection on the module's own float64 pre-activation."""
    rng = np.random.default_rng(seed)
    pairs = []
    for j in range(layer.out_features):
        for _ in range(3):
            x0, v = rng.standard_normal(4), rng.standard_normal(4)
            v /= np.linalg.norm(v)

            def g(t: float, j: int = j, x0: np.ndarray = x0, v: np.ndarray = v) -> float:
                with torch.no_grad():
                    z = layer(upstream(torch.from_numpy((x0 + t * v).reshape(SHAPE))))
                return float(act.beta * z[0, j]) - act.threshold

            lo, hi = -1e4, 1e4
            if g(lo) * g(hi) > 0 or g(lo) == g(hi):
                continue
            if g(lo) > 0:
                lo, hi = hi, lo
            for _ in range(200):  # bisection: g(lo) <= 0 < g(hi)
                mid = (lo + hi) / 2
                if mid in (lo, hi):
                    break
                lo, hi = (mid, hi) if g(mid) <= 0 else (lo, mid)
            for h in (1e-3, 1e-6, 1e-9, 1e-12):
                x, y = x0 + (lo - h) * v, x0 + (hi + h) * v
                if g(lo - h) <= 0 < g(hi + h):
                    pairs.append((j, x, y))
    return pairs


def _switch_sites(name: str, module: SoftplusNet):
    sites = [(module.fc1, module.act, lambda t: t)]
    if CONFIGS[name][2] is not None:
        sites.append((module.fc2, module.act2, lambda t: module.act(module.fc1(t))))
    return sites


def test_report_states_the_additive_term_and_equivalence_holds(audited) -> None:
    name, module, report = audited
    lip = report.lipschitz
    assert report.equivalence.passed
    assert lip.certified and lip.upper is not None and lip.lower is not None and lip.lower <= lip.upper
    add = lip.additive
    assert add is not None and add.certified and add.value is not None and add.value > 0
    assert add.sources == (("act", "act2") if CONFIGS[name][2] else ("act",))
    sa101 = next(f for f in report.checks if f.id == "SA101")
    assert f"+ {add.value:.6g}" in sa101.message and "smooth part" in sa101.message
    assert sa101.value["additive"] == add.value
    assert json.loads(RENDERERS.get(OutputFormat.JSON)(report))["lipschitz"]["additive"]["sources"] == list(add.sources)
    assert "branch switches in act" in RENDERERS.get(OutputFormat.TABLE)(report)


def test_additive_term_is_the_documented_formula(audited) -> None:
    # delta = 2 * sum_k S_k sqrt(n_k) gap_k, S_k the product of the downstream layer bounds
    name, module, report = audited
    upper = {layer.name: layer.lipschitz.upper for layer in report.layers}
    beta, threshold, second = CONFIGS[name]
    if second is None:
        exact = 2 * upper["out"] * math.sqrt(8) * softplus_switch_gap(beta, threshold)
    else:
        s_act2 = upper["out"]
        s_act = upper["out"] * upper["act2"] * upper["fc2"]
        exact = 2 * (s_act * math.sqrt(8) * softplus_switch_gap(beta, threshold)
                     + s_act2 * math.sqrt(6) * softplus_switch_gap(*second))
    assert report.lipschitz.additive is not None and report.lipschitz.additive.value is not None
    assert exact <= report.lipschitz.additive.value <= exact * (1 + 1e-12)
    # and the spectral norms are those of the weights (float64 SVD)
    w = module.out.weight.detach().numpy()
    assert upper["out"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-9)


def test_bound_with_additive_term_covers_quotients_across_the_switch(audited) -> None:
    name, module, report = audited
    K = report.lipschitz.upper
    delta = report.lipschitz.additive.value  # type: ignore[union-attr]
    assert K is not None and delta is not None
    needed = 0  # pairs whose quotient exceeds K: the additive term is what covers them
    checked = 0
    for site, (layer, act, upstream) in enumerate(_switch_sites(name, module)):
        for _, x, y in _straddling_pairs(module, layer, act, upstream, seed=site):
            d_in = float(np.linalg.norm(x - y))
            d_out = float(np.linalg.norm(_f(module, x) - _f(module, y)))
            assert d_out <= K * d_in + delta, (name, d_out, K * d_in, delta)
            needed += d_out > K * d_in
            checked += 1
    assert checked >= 40
    assert needed >= 5  # the jumps are real: K alone is exceeded by the module as executed
    # far pairs and pairs inside one branch: K alone already covers them, K + delta a fortiori
    rng = np.random.default_rng(5)
    for scale in (1.0, 10.0, 100.0):
        x, y = rng.standard_normal((2, 256, 4)) * scale
        for a, b in zip(x, y, strict=True):
            d_out = float(np.linalg.norm(_f(module, a) - _f(module, b)))
            assert d_out <= K * float(np.linalg.norm(a - b)) + delta


def test_the_issue_quotient_across_20_is_covered() -> None:
    # the bare softplus of torch (beta 1, threshold 20), as the issue found it: two inputs 1e-12
    # apart across 20 have a difference quotient of about 2061, far above Lip = 1 of the smooth
    # part, and within 1 + delta / |x - y| with delta = 2 gap (one unit, downstream bound 1)
    x, y = torch.tensor([20.0], dtype=torch.float64), torch.tensor([20.0 + 1e-12], dtype=torch.float64)
    sp = nn.Softplus()
    q = float((sp(y) - sp(x)).abs() / (y - x).abs())
    assert q > 2000.0
    assert float((sp(y) - sp(x)).abs()) <= 1.0 * float((y - x).abs()) + 2 * softplus_switch_gap(1.0, 20.0)


def _tanh_model(tmp: Path) -> Path:
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    path = tmp / "tanh.pt"
    extra = {"stabaudit.json": json.dumps({"input_shape": list(SHAPE)})}
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


def _onnx_softplus(tmp: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
            helper.make_node("Softplus", ["a"], ["b"]),
            helper.make_node("Gemm", ["b", "w2"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp / "softplus.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("make", [_tanh_model, _onnx_softplus], ids=["torchscript-tanh", "onnx-softplus"])
def test_models_without_a_switch_have_no_additive_term(make, tmp_path: Path) -> None:
    report = audit(AuditRequest(path=make(tmp_path), lower_budget_s=0.2, budget_s=0.2, method="product"))
    assert report.lipschitz.additive is None
    assert "additive" not in json.loads(RENDERERS.get(OutputFormat.JSON)(report))["lipschitz"]
    sa101 = next(f for f in report.checks if f.id == "SA101")
    assert set(sa101.value) == {"lower", "upper"} and "smooth part" not in sa101.message


def test_onnxruntime_softplus_is_smooth_near_and_beyond_20() -> None:
    # onnxruntime computes x > 0 ? x + log(exp(-x) + 1) : log(exp(x) + 1), one formula on both
    # sides; check that nothing switches to x: for x >= 0 within 2 float32 ulps of log1p(exp(x))
    # (float64), where a switch at any threshold t below 13 would err by log1p(exp(-t)) > 2 ulps
    # (below 0, 1 + exp(x) in float32 loses the relative precision: an absolute 2^-23 there)
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softplus", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([np.linspace(-30, 40, 70001), np.linspace(19.9, 20.1, 4001)]).astype(np.float32)
    got = session.run(None, {"x": x})[0].astype(np.float64)
    exact = np.logaddexp(x.astype(np.float64), 0.0)
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    pos = x >= 0
    assert np.all(np.abs(got - exact)[pos] <= 2 * ulp[pos])
    assert np.all(np.abs(got - exact)[~pos] <= 2.0**-23)
    # where the gap to x is above one ulp, onnxruntime keeps it (x = 10: 10.0000454)
    above = (exact - x > 2 * ulp) & (x > 0)
    assert above.sum() > 1000 and np.all(got[above] > x[above])
