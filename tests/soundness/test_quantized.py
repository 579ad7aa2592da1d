"""Soundness of the figures of quantized models: the certified K of the smooth part with the additive
term of the rounding errors covers every difference quotient of the model as onnxruntime executes
it, pairs across rounding jumps included; the term is the documented formula."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from stabaudit.bounds.quantization import entry_error
from tests.soundness import harness as H
from tests.soundness.cases import CASE_BY_ID, ONNX


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    built = H.build(CASE_BY_ID["onnx_qlinear"], ONNX, tmp_path_factory.mktemp("qlinear"))
    return built, H.audit(built)


def test_additive_term_names_every_quantization_and_is_the_formula(audited) -> None:
    """delta = 2 sum_k S_k J_k: J_k = sqrt(n_k) err_k (half a step per entry and its rounding margin),
    S_k the product of the layer bounds downstream of quantization k (the Relu, Reshape, Slice and
    the quantizations' clips are 1)."""
    built, report = audited
    add = report.lipschitz.additive
    assert add is not None and add.certified and add.value is not None
    assert add.sources == ("quantizelinear_xq/quantized", "qlinearconv_cq/quantized", "quantizelinear_gq/quantized",
                           "qlinearmatmul_yq/quantized")
    upper = {layer.name: layer.lipschitz.upper for layer in report.layers}
    lin, conv = upper["qlinearmatmul_yq/matmul"], upper["qlinearconv_cq/conv"]
    f32 = lambda v: float(np.float32(v))  # noqa: E731 (the stored float32 steps)
    jumps = [  # (entries, step, zero point, range) of x, the conv's output, the MatMul's input and output
        math.sqrt(50) * entry_error(f32(0.02), 128, 0, 255), math.sqrt(27) * entry_error(f32(0.04), 100, 0, 255),
        math.sqrt(12) * entry_error(f32(0.03), -20, -128, 127), math.sqrt(4) * entry_error(f32(0.05), 3, -128, 127),
    ]
    exact = 2 * (conv * lin * jumps[0] + lin * jumps[1] + lin * jumps[2] + jumps[3])
    assert exact <= add.value <= exact * (1 + 1e-9)
    assert report.equivalence.passed
    sa101 = next(f for f in report.checks if f.id == "SA101")
    assert f"+ {add.value:.6g}" in sa101.message and "smooth part" in sa101.message


def test_executed_quotients_need_the_additive_term_and_stay_under_it(audited) -> None:
    built, report = audited
    K, delta = report.lipschitz.upper, report.lipschitz.additive.value
    assert K is not None and delta is not None
    session = ort.InferenceSession(str(built.path), providers=["CPUExecutionProvider"])

    def f(v: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": v.astype(np.float32).reshape(built.input_shape)})[0].astype(np.float64).reshape(-1)

    rng = np.random.default_rng(4)
    checked = needed = 0
    for distance in (1e-3, 1e-1, 1.0, 10.0):  # random pairs near and far
        for _ in range(50):
            x = rng.standard_normal(50).astype(np.float32).astype(np.float64)
            y = (x + rng.standard_normal(50) * distance / math.sqrt(50)).astype(np.float32).astype(np.float64)
            d_in, d_out = float(np.linalg.norm(x - y)), float(np.linalg.norm(f(x) - f(y)))
            assert d_out <= K * d_in + delta, (distance, d_out, K * d_in, delta)
            checked += 1
    for _ in range(20):  # pairs across a jump: bisection on a line to where the executed output changes
        x0, v = rng.standard_normal(50), rng.standard_normal(50)
        lo, hi = 0.0, 1.0
        if np.array_equal(f(x0), f(x0 + v)):
            continue
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.array_equal(f(x0 + mid * v), f(x0)):
                lo = mid
            else:
                hi = mid
        x, y = (x0 + lo * v).astype(np.float32).astype(np.float64), (x0 + hi * v).astype(np.float32).astype(np.float64)
        d_in, d_out = float(np.linalg.norm(x - y)), float(np.linalg.norm(f(x) - f(y)))
        assert d_out <= K * d_in + delta, (d_out, K * d_in, delta)
        needed += d_out > K * d_in
        checked += 1
    assert checked >= 210
    assert needed >= 15  # the rounding jumps are real: K alone is exceeded by the model as executed


def test_dynamic_quantization_is_bounded_over_a_domain(tmp_path) -> None:
    """A dynamic quantization's error grows with its input's range: no certified additive term on the
    whole space; over the box [-1, 1]^5 its input h = x W1 lies in [-a, a] (a = max_j sum_i |W1_ij|),
    so its step is at most 2a / 255 and delta = 2 S sqrt(6) (2a / 255) (1/2 + 2^-12), S the
    downstream layer's bound; every executed quotient in the box stays under K_D d + delta."""
    from stabaudit.analyses.samples import UniformDomain, Values
    from stabaudit.bounds.quantization import dynamic_step_error

    built = H.build(CASE_BY_ID["onnx_dynamic_quant"], ONNX, tmp_path)
    report = H.audit(built, domain=UniformDomain(low=Values(values=(-1.0,)), high=Values(values=(1.0,))))
    whole, dom = report.lipschitz.additive, report.domain_lipschitz
    assert whole is not None and not whole.certified and whole.value is None
    assert dom is not None and dom.additive is not None and dom.additive.certified
    w1 = np.abs(np.asarray(onnx_initializer(built.path, "w1"), dtype=np.float64))
    a = float(w1.sum(axis=0).max())
    downstream = next(layer.lipschitz.upper for layer in report.layers if layer.op == "Linear" and "matmulinteger" in layer.name)
    exact = 2 * downstream * math.sqrt(6) * dynamic_step_error(2 * a)
    assert exact <= dom.additive.value <= exact * (1 + 1e-6)
    sa101 = next(f for f in report.checks if f.id == "SA101")
    assert f"+ {dom.additive.value:.6g} (certified" in sa101.message
    session = ort.InferenceSession(str(built.path), providers=["CPUExecutionProvider"])

    def f(v: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": v.astype(np.float32).reshape(built.input_shape)})[0].astype(np.float64).reshape(-1)

    K = dom.upper
    rng = np.random.default_rng(6)
    for distance in (1e-4, 1e-2, 1.0):
        for _ in range(100):
            x = rng.uniform(-1, 1, 5).astype(np.float32).astype(np.float64)
            y = np.clip(x + rng.standard_normal(5) * distance, -1, 1).astype(np.float32).astype(np.float64)
            d_in, d_out = float(np.linalg.norm(x - y)), float(np.linalg.norm(f(x) - f(y)))
            assert d_out <= K * d_in + dom.additive.value, (d_out, K * d_in, dom.additive.value)


def onnx_initializer(path, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)
