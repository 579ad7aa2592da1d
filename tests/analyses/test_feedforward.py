"""Tests of stabaudit.analyses.feedforward: chain extraction from ONNX graphs and the entry point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.composition import compose, rule_bounds
from stabaudit.analyses.feedforward import (
    Chain,
    GlobalBoundResult,
    explain_chain,
    extract_chain,
    global_bounds,
    slope_interval,
)
from stabaudit.errors import UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import fold_affine
from stabaudit.loaders.onnx import load_onnx

F = TensorProto.FLOAT


def _rand(*shape: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _save(tmp_path: Path, nodes: Sequence[Any], inputs: Mapping[str, Sequence[int]], params: Mapping[str, np.ndarray]) -> Path:
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(k, F, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _chain_forward(chain: Chain, x: np.ndarray) -> np.ndarray:
    """The chain's difference map for ReLU slopes (up to biases): used with relu nets only."""
    h = x
    for k, w in enumerate(chain.weights):
        h = h @ w.T
        if k < len(chain.slopes):
            h = np.maximum(h, 0.0)
    return h


def test_matmul_add_chain(tmp_path: Path) -> None:
    w1, b1, w2, b2 = _rand(4, 6, seed=1), _rand(6, seed=2), _rand(6, 3, seed=3), _rand(3, seed=4)
    path = _save(
        tmp_path,
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["a"]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["o"]),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        {"x": [1, 4]},
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
    )
    chain = extract_chain(fold_affine(load_onnx(path).graph))
    assert chain is not None
    assert chain.slopes == ((0.0, 1.0),)
    np.testing.assert_array_equal(chain.weights[0], w1.T.astype(np.float64))
    np.testing.assert_array_equal(chain.weights[1], w2.T.astype(np.float64))
    assert chain.errors == (None, None) and chain.rows == 1


def test_gemm_with_sub_div_normalisation_and_flatten(tmp_path: Path) -> None:
    mean, std = _rand(1, 2, 3, seed=5), np.abs(_rand(1, 2, 3, seed=6)) + 0.5
    w1, b1, w2, b2 = _rand(8, 6, seed=7), _rand(8, seed=8), _rand(2, 8, seed=9), _rand(2, seed=10)
    path = _save(
        tmp_path,
        [
            helper.make_node("Sub", ["x", "mean"], ["c"]),
            helper.make_node("Div", ["c", "std"], ["n"]),
            helper.make_node("Flatten", ["n"], ["f"]),
            helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Gemm", ["t", "w2", "b2"], ["y"], transB=1),
        ],
        {"x": [1, 2, 3]},
        {"mean": mean, "std": std, "w1": w1, "b1": b1, "w2": w2, "b2": b2},
    )
    loaded = load_onnx(path)
    chain = extract_chain(fold_affine(loaded.graph))
    assert chain is not None
    assert chain.slopes == ((0.0, 1.0),)
    # the input-side scale 1/std is merged: W' = W diag(1/std), one rounded product per entry
    expect = w1.astype(np.float64) * (1.0 / std.astype(np.float64)).reshape(-1)[None, :]
    np.testing.assert_allclose(chain.weights[0], expect, rtol=1e-15)
    err = chain.errors[0]
    assert err is not None and np.all(err >= 2.0**-53 * np.abs(chain.weights[0]))
    assert np.all(err <= 1e-15 * np.abs(chain.weights[0]) + 1e-300)
    # global bounds hold for sampled difference quotients of the real model (onnxruntime)
    results = global_bounds(fold_affine(loaded.graph), budget_s=5.0)
    upper = min(r.upper for r in results if r.upper is not None)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.standard_normal((1, 2, 3)).astype(np.float32)
        d = rng.standard_normal((1, 2, 3)).astype(np.float32) * 1e-2
        fx, fy = (np.asarray(loaded.reference({"x": v})[0], dtype=np.float64) for v in (x, x + d))
        q = np.linalg.norm(fx - fy) / np.linalg.norm((x + d).astype(np.float64) - x)
        assert q <= upper * (1 + 1e-4)  # float32 evaluation noise of the reference


def _ir_graph(nodes: list[Node], in_shape: tuple[int, ...]) -> Graph:
    g = Graph(inputs=(TensorSpec(name="x", shape=in_shape),), outputs=(nodes[-1].output,), nodes=tuple(nodes)).validate()
    return with_shapes(g)


def test_refuses_residual_add_and_conv() -> None:
    w = np.eye(3, dtype=np.float32)
    residual = _ir_graph(
        [
            Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="a"),
            Node(name="r", op=O.Relu(), inputs=("a",), output="b"),
            Node(name="add", op=O.Add(), inputs=("b", "x"), output="y"),
        ],
        (1, 3),
    )
    assert extract_chain(residual) is None
    assert "not on a single path" in str(explain_chain(residual))
    conv = _ir_graph(
        [
            Node(name="conv", op=O.Conv(weight=np.ones((2, 1, 3, 3), np.float32), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), inputs=("x",), output="c"),
            Node(name="flat", op=O.Reshape(shape=(1, 8)), inputs=("c",), output="f"),
            Node(name="fc", op=O.Linear(weight=np.ones((2, 8), np.float32)), inputs=("f",), output="y"),
        ],
        (1, 1, 4, 4),
    )
    assert extract_chain(conv) is None
    res = global_bounds(conv, budget_s=1.0)
    assert [r.method for r in res] == ["eclipse-fast", "eclipse", "lipsdp-neuron"]
    assert all(r.upper is None and not r.certified for r in res)
    assert "convolution" in res[0].notes[0]


def test_rows_transpose_final_activation_and_affine_between() -> None:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((5, 4)).astype(np.float32)
    w2 = rng.standard_normal((3, 5)).astype(np.float32)
    scale = np.array([0.5, 2.0, -1.0, 4.0, 0.25], dtype=np.float32)
    g = _ir_graph(
        [
            Node(name="t", op=O.Transpose(perm=(1, 0)), inputs=("x",), output="xt"),  # (4, 3) -> (3, 4)
            Node(name="fc1", op=O.Linear(weight=w1), inputs=("xt",), output="a"),
            Node(name="lr", op=O.LeakyRelu(alpha=0.1), inputs=("a",), output="b"),
            Node(name="s", op=O.Affine(scale=scale, shift=None), inputs=("b",), output="c"),
            Node(name="fc2", op=O.Linear(weight=w2), inputs=("c",), output="d"),
            Node(name="sg", op=O.Sigmoid(), inputs=("d",), output="y"),
        ],
        (4, 3),
    )
    chain = extract_chain(g)
    assert chain is not None and chain.rows == 3
    assert chain.slopes == ((0.1, 1.0), (0.0, 0.25))
    np.testing.assert_array_equal(chain.weights[1], w2.astype(np.float64) * scale.astype(np.float64)[None, :])
    assert chain.errors[1] is None  # float32 x float32 is exact in float64
    np.testing.assert_array_equal(chain.weights[2], np.eye(3))
    results = global_bounds(g, op_bounds=rule_bounds(g), budget_s=5.0)
    product = compose(g, rule_bounds(g)).upper.value
    x = rng.standard_normal((300, 4, 3))
    y = x + rng.standard_normal((300, 4, 3)) * 1e-3

    def f(v: np.ndarray) -> np.ndarray:
        h = np.swapaxes(v, 1, 2) @ w1.T.astype(np.float64)
        h = np.where(h > 0, h, 0.1 * h) * scale.astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(h @ w2.T.astype(np.float64))))

    q = np.linalg.norm((f(x) - f(y)).reshape(300, -1), axis=1) / np.linalg.norm((x - y).reshape(300, -1), axis=1)
    for r in results:
        assert isinstance(r, GlobalBoundResult) and r.certified and r.upper is not None
        assert q.max() <= r.upper <= product * (1 + 1e-9)


def test_slope_intervals() -> None:
    assert slope_interval(O.Relu()) == (0.0, 1.0)
    assert slope_interval(O.LeakyRelu(alpha=0.2)) == (0.2, 1.0)
    assert slope_interval(O.LeakyRelu(alpha=3.0)) == (1.0, 3.0)
    assert slope_interval(O.Sigmoid()) == (0.0, 0.25)
    lo, hi = slope_interval(O.Gelu()) or (0.0, 0.0)
    xs = np.linspace(-8, 8, 20001)
    from scipy.special import erf

    d = 0.5 * (1 + erf(xs / np.sqrt(2))) + xs * np.exp(-xs**2 / 2) / np.sqrt(2 * np.pi)
    assert lo <= d.min() and d.max() <= hi and d.min() - lo < 1e-5
    assert slope_interval(O.Softmax()) is None


def test_unknown_method_is_a_usage_error() -> None:
    g = _ir_graph([Node(name="fc", op=O.Linear(weight=np.eye(2, dtype=np.float32)), inputs=("x",), output="y")], (1, 2))
    with pytest.raises(UsageError):
        global_bounds(g, methods=("nope",))
    # a single Linear: every method gives its norm (1 for the identity), certified
    for r in global_bounds(g, methods=("eclipse-fast", "sdp"), budget_s=2.0):
        assert r.certified and r.upper is not None and 1.0 <= r.upper <= 1.0 + 1e-3


def test_consecutive_linears_get_an_identity_activation() -> None:
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((6, 4)).astype(np.float32)
    w2 = rng.standard_normal((3, 6)).astype(np.float32)
    g = _ir_graph(
        [
            Node(name="fc1", op=O.Linear(weight=w1), inputs=("x",), output="a"),
            Node(name="fc2", op=O.Linear(weight=w2), inputs=("a",), output="y"),
        ],
        (1, 4),
    )
    chain = extract_chain(g)
    assert chain is not None and chain.slopes == ((1.0, 1.0),)
    exact = float(np.linalg.norm(w2.astype(np.float64) @ w1.astype(np.float64), 2))
    for r in global_bounds(g, budget_s=3.0):
        assert r.certified and r.upper is not None
        assert exact <= r.upper
        if r.method == "lipsdp-neuron":  # diagonal multipliers enforce the identity: tight up to the gap
            assert r.upper <= exact * 1.05


def test_the_closed_form_and_its_verification_are_planned_work() -> None:
    """ECLipsE-Fast (and the methods started from it) run only when its closed form and one float64
    verification fit twice the budget left; what they cost is charged to the ledger."""
    from stabaudit.analyses import plan

    graph = load_onnx(str(Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx")).graph
    chain = explain_chain(graph)
    assert not isinstance(chain, str)
    shapes = [tuple(w.shape) for w in chain.weights]
    cost = plan.closed_form_s(shapes) + plan.verify_s(shapes)
    with plan.ledger() as spent:
        starved = global_bounds(graph, budget_s=0.4 * cost, methods=("eclipse-fast", "lipsdp-neuron"))
    assert [r.upper for r in starved] == [None, None] and spent == [0.0]
    assert all("not run: ECLipsE-Fast's closed form" in r.notes[-1] for r in starved)
    with plan.ledger() as spent:
        (fast,) = global_bounds(graph, budget_s=0.6 * cost, methods=("eclipse-fast",))
    assert fast.certified and fast.upper is not None
    assert spent[0] >= cost  # the closed form and at least one verification


def test_no_method_run_scales_no_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The power-of-two scaling of the chain (a norm estimate per weight: seconds at width 4096) is
    computed only when a method runs; a budget that buys none costs no pass over the weights."""
    from stabaudit.analyses import plan, sdp

    graph = load_onnx(str(Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx")).graph
    calls: list[int] = []
    real = sdp.pow2_scaled
    monkeypatch.setattr(sdp, "pow2_scaled", lambda lmi: calls.append(1) or real(lmi))
    chain = explain_chain(graph)
    assert not isinstance(chain, str)
    shapes = [tuple(w.shape) for w in chain.weights]
    cost = plan.closed_form_s(shapes) + plan.verify_s(shapes)
    starved = global_bounds(graph, budget_s=0.4 * cost, methods=("eclipse-fast", "eclipse", "lipsdp-neuron"))
    assert [r.upper for r in starved] == [None, None, None] and calls == []
    (fast, sdp_result) = global_bounds(graph, budget_s=10 * cost, methods=("eclipse-fast", "lipsdp-neuron"))
    assert fast.certified and sdp_result.certified and calls == [1]  # once for both methods
    assert sdp_result.certificate is not None and sdp_result.certificate.exponent == real(chain.lmi())[1]
