"""SA401's parameter sensitivity: the certified bound at the samples against autograd values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.parameters import (
    MAX_MEASURED_SAMPLES,
    parameter_sensitivity,
    weight_factor,
)
from stabaudit.analyses.plan import POWER_ITERATIONS, measurement_passes, measurement_plan
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def mlp(widths: list[int], seed: int, act: type[O.Op] = O.Relu) -> Graph:
    rng = np.random.default_rng(seed)
    nodes, cur = [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        w, bias = rng.standard_normal((b, a)), rng.standard_normal(b)
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=bias), inputs=(cur,), output=f"z{i}"))
        cur = f"z{i}"
        if i < len(widths) - 2:
            nodes.append(Node(name=f"act{i}", op=act(), inputs=(cur,), output=f"a{i}"))
            cur = f"a{i}"
    spec = TensorSpec(name="x", shape=(1, widths[0]))
    return with_shapes(Graph(inputs=(spec,), outputs=(cur,), nodes=tuple(nodes)))


def brute_jacobian_norm(graph: Graph, layer: str, x: np.ndarray, h: float = 1e-6) -> float:
    """||d F / d W_layer||_2 by central differences over every weight entry (slow, exact to O(h^2))."""
    import dataclasses

    import torch

    from stabaudit.ir.executor import Executor

    node = next(n for n in graph.nodes if n.name == layer)
    w = np.asarray(node.op.weight, dtype=np.float64)
    cols = []
    for idx in np.ndindex(w.shape):
        outs = []
        for sign in (1.0, -1.0):
            w2 = w.copy()
            w2[idx] += sign * h
            op = dataclasses.replace(node.op, weight=w2)
            g = dataclasses.replace(graph, nodes=tuple(dataclasses.replace(n, op=op) if n is node else n for n in graph.nodes))
            y = Executor(g, dtype=torch.float64)(torch.from_numpy(x.reshape(graph.inputs[0].shape)))[0]
            outs.append(y.reshape(-1).numpy())
        cols.append((outs[0] - outs[1]) / (2 * h))
    return float(np.linalg.norm(np.stack(cols, axis=1), 2))


@pytest.mark.parametrize("seed", range(5))
def test_bound_is_at_least_the_measured_value_on_random_mlps(seed):
    graph = mlp([4, 7, 5, 3], seed)
    samples = np.random.default_rng(100 + seed).standard_normal((6, 1, 4))
    result = parameter_sensitivity(graph, rule_bounds(graph), samples, seed=seed)
    assert [layer.layer for layer in result.layers] == ["fc0", "fc1", "fc2"]
    for layer in result.layers:
        assert layer.bound is not None and layer.measured > 0
        assert layer.bound >= layer.measured
    # the last layer has nothing downstream: its bound is max |x| and is attained (Delta = u x^T / |x|)
    last = result.layers[-1]
    assert last.downstream == pytest.approx(1.0, rel=1e-15)
    assert last.bound == pytest.approx(last.measured, rel=1e-8)


def test_measured_value_matches_finite_differences():
    graph = mlp([3, 4, 2], seed=7, act=O.Tanh)
    x = np.random.default_rng(1).standard_normal((1, 3))
    result = parameter_sensitivity(graph, rule_bounds(graph), x)
    for layer in result.layers:
        assert layer.measured == pytest.approx(brute_jacobian_norm(graph, layer.layer, x), rel=1e-6)


def test_one_linear_layer_bound_equals_the_measured_value():
    # F(x) = W x + b: dF/dW [D] = D x, whose norm from ||D||_F is exactly |x|, the bound's value
    w = np.random.default_rng(0).standard_normal((3, 5))
    nodes = (Node(name="fc", op=O.Linear(weight=w, bias=np.ones(3)), inputs=("x",), output="y"),)
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 5)),), outputs=("y",), nodes=nodes))
    samples = np.random.default_rng(1).standard_normal((4, 5))
    result = parameter_sensitivity(graph, rule_bounds(graph), samples)
    (layer,) = result.layers
    top = max(float(np.linalg.norm(s)) for s in samples)
    assert layer.measured == pytest.approx(top, rel=1e-12)
    assert layer.bound == pytest.approx(top, rel=1e-8) and layer.bound >= layer.measured


def test_many_outputs_use_power_iteration_from_below():
    w = np.random.default_rng(0).standard_normal((80, 3))  # 80 outputs > the exact-Jacobian limit
    nodes = (Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y"),)
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes))
    x = np.array([[1.0, -2.0, 2.0]])  # |x| = 3
    (layer,) = parameter_sensitivity(graph, rule_bounds(graph), x).layers
    assert layer.measured <= 3.0 + 1e-12 and layer.measured == pytest.approx(3.0, rel=1e-9)


def test_conv_bound_holds_and_factor_counts_patches():
    rng = np.random.default_rng(3)
    conv = O.Conv(weight=rng.standard_normal((2, 1, 3, 3)), bias=None, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    assert weight_factor(conv) == pytest.approx(3.0)  # 9 taps at stride 1
    strided = O.Conv(weight=np.ones((1, 1, 2, 2)), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1))
    assert weight_factor(strided) == pytest.approx(1.0)  # stride = kernel: disjoint patches
    nodes = (
        Node(name="conv", op=conv, inputs=("x",), output="c"),
        Node(name="relu", op=O.Relu(), inputs=("c",), output="r"),
        Node(name="flat", op=O.Reshape(shape=(1, 2 * 4 * 4)), inputs=("r",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.standard_normal((3, 32))), inputs=("f",), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 1, 4, 4)),), outputs=("y",), nodes=nodes))
    samples = rng.standard_normal((5, 1, 1, 4, 4))
    result = parameter_sensitivity(graph, rule_bounds(graph), samples)
    for layer in result.layers:
        assert layer.bound is not None and layer.bound >= layer.measured > 0
    assert math.isfinite(result.layers[0].downstream)


def test_measurement_plan_counts_reverse_passes():
    """Full Jacobians cost one pass per output and sample; power iteration one shared probe and
    1 + 2 k passes per layer and sample; fewer samples first, then fewer iterations, one sample
    always."""
    assert measurement_plan(10_000, 10, 3, 16) == (16, None)
    assert measurement_plan(35, 10, 3, 16) == (3, None)
    # fewer passes than one sample's full Jacobian (10 outputs): the shared probe, a pass a sample
    assert measurement_plan(0, 10, 3, 16) == (1, 0)
    assert measurement_plan(9, 10, 3, 16) == (9, 0)
    assert measurement_passes(1, 0, 10, 3) == 1 and measurement_passes(3, None, 10, 3) == 30
    assert measurement_passes(5, 8, 100, 4) == 5 * 69
    # 4 layers: a sample at 8 iterations costs 1 + 4 * 17 = 69 passes
    assert measurement_plan(100_000, 100, 4, 16) == (16, POWER_ITERATIONS)
    assert measurement_plan(69 * 5, 100, 4, 16) == (5, 8)
    assert measurement_plan(68, 100, 4, 16) == (1, 7)  # (68 - 1) // 4 = 16 per layer: 7 iterations
    assert measurement_plan(4, 100, 4, 16) == (1, 0)  # the shared probe only
    assert measurement_plan(5, 100, 4, 0) == (0, None)


def test_a_starved_budget_measures_less_and_stays_below_the_bound():
    """At a budget that buys one reverse pass, one sample is measured with the shared probe only:
    a smaller value, still a lower value of the exact norm and below the certified bound."""
    g = mlp([6, 90, 70], seed=3, act=O.Tanh)  # 70 outputs: power iteration
    samples = np.random.default_rng(1).standard_normal((5, 6))
    full = parameter_sensitivity(g, rule_bounds(g), samples)
    starved = parameter_sensitivity(g, rule_bounds(g), samples, budget_s=0.0)
    assert (full.measured_samples, full.power_iterations) == (5, POWER_ITERATIONS)
    assert (starved.measured_samples, starved.power_iterations) == (1, 0)
    assert MAX_MEASURED_SAMPLES >= 5
    for a, b in zip(full.layers, starved.layers, strict=True):
        exact = brute_jacobian_norm(g, a.layer, samples[0]) if a.layer == "fc1" else None
        assert 0.0 < b.measured <= a.measured * (1 + 1e-9) <= a.bound
        if exact is not None:
            assert b.measured <= exact * (1 + 1e-6)
            assert a.measured >= exact * (1 - 1e-6)


def test_a_sample_where_the_map_is_not_defined_measures_nothing():
    """sqrt(w . x) at a sample where w . x < 0: autograd's gradient is NaN there; that sample is
    skipped and the others are measured (before, the NaN Jacobian made the eigenvalue solver fail)."""
    c = np.array([1.0, 2.0, 3.0])
    nodes = (Node(name="fc", op=O.Linear(weight=c[:, None] * np.ones((3, 5))), inputs=("x",), output="h"),
             Node(name="root", op=O.Sqrt(), inputs=("h",), output="y"))
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 5)),), outputs=("y",), nodes=nodes))
    samples = np.array([[-1.0] * 5, [1.0, 2.0, 0.5, 1.0, 3.0], [0.2] * 5])
    result = parameter_sensitivity(graph, rule_bounds(graph), samples)
    (layer,) = result.layers
    # d sqrt(w_i . x) / dw_i = x / (2 sqrt(w_i . x)), one block per row: the largest at c = 1
    expected = max(float(np.linalg.norm(s)) / (2 * math.sqrt(float(s.sum()))) for s in samples[1:])
    assert layer.measured == pytest.approx(expected, rel=1e-12)
