"""Reductions and element-wise extrema in the analyses: the forward error model of the lower bound,
local bounds over balls, and linear regions holding a sum or a mean."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from stabaudit.analyses import linear_regions as R
from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.local import local_bounds
from stabaudit.analyses.lower import ForwardErrorModel
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _graph(nodes: list[Node], shape: tuple[int, ...], output: str = "y") -> Graph:
    g = Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=(output,), nodes=tuple(nodes))
    return with_shapes(g.validate())


def test_forward_error_bound_covers_sums_means_and_extrema() -> None:
    g = _graph([
        Node(name="sum", op=O.ReduceSum(axes=(2,)), inputs=("x",), output="s"),  # [1, 3, 1]
        Node(name="mean", op=O.ReduceMean(axes=(1, 2)), inputs=("x",), output="m"),  # [1, 1, 1]
        Node(name="max", op=O.Max(constant=np.array([0.25])), inputs=("s", "m"), output="t"),
        Node(name="min", op=O.ReduceMin(axes=(1,), keepdims=False), inputs=("t",), output="y"),
    ], (1, 3, 4))
    model = ForwardErrorModel(g, dict(g.shapes))
    rng = np.random.default_rng(3)
    worst = 0.0
    for trial in range(30):
        x = rng.normal(size=(1, 3, 4)) * 10.0 ** rng.integers(-2, 17, size=(1, 3, 4))
        y_hat, bound = model.evaluate(torch.tensor(x.reshape(-1), dtype=torch.float64))
        xf = [[[Fraction(float(v)) for v in row] for row in plane] for plane in x]
        s = [sum(row, Fraction(0)) for row in xf[0]]
        m = sum((sum(row, Fraction(0)) for row in xf[0]), Fraction(0)) / 12
        exact = min(max(v, m, Fraction(0.25)) for v in s)
        err = abs(Fraction(float(y_hat[0])) - exact)
        assert err <= Fraction(bound), trial
        worst = max(worst, float(err))
    assert worst > 0.0  # the cancelling magnitudes do exercise rounding


def test_local_bounds_through_a_mean_are_sound() -> None:
    rng = np.random.default_rng(1)
    g = _graph([
        Node(name="conv", op=O.Conv(weight=rng.normal(size=(3, 1, 3, 3)) * 0.5, bias=rng.normal(size=3) * 0.2,
                                    strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="c"),
        Node(name="relu", op=O.Relu(), inputs=("c",), output="r"),
        Node(name="mean", op=O.ReduceMean(axes=(2, 3), keepdims=False), inputs=("r",), output="m"),
        Node(name="sum", op=O.ReduceSum(axes=(3,)), inputs=("r",), output="s"),
        Node(name="flat", op=O.Reshape(shape=(1, 12)), inputs=("s",), output="f"),
        Node(name="cat", op=O.Concat(axis=1), inputs=("m", "f"), output="y"),
    ], (1, 1, 4, 4))
    x0 = rng.normal(size=(2, 16)) * 0.5
    eps = 0.05
    res = local_bounds(g, x0, eps=eps)
    f = Executor(g, dtype=torch.float64).flat()
    for xi, sample in zip(x0, res.samples, strict=True):
        assert 0.0 < sample.upper < math.inf
        pts = xi + eps * rng.uniform(-1, 1, size=(200, 16))
        with torch.no_grad():
            ys = torch.func.vmap(f)(torch.from_numpy(pts)).numpy()
        q = np.linalg.norm(ys[:100] - ys[100:], axis=1) / np.linalg.norm(pts[:100] - pts[100:], axis=1)
        assert q.max() <= sample.upper


def test_a_linear_region_holds_a_mean() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3))
    g = _graph([
        Node(name="relu", op=O.Relu(), inputs=("x",), output="r"),
        Node(name="sum", op=O.ReduceSum(axes=(2,), keepdims=False), inputs=("r",), output="s"),  # [1, 3]
        Node(name="fc", op=O.Linear(weight=w), inputs=("s",), output="a"),
        Node(name="mean", op=O.ReduceMean(axes=(1,)), inputs=("a",), output="y"),
    ], (1, 3, 5))
    found = R.region_bounds(g, rule_bounds(g))
    assert set(found) == {"y"} and found["y"].x == "r"
    # y = mean(W sum(r)) = (1/4) 1^T W (1_5^T (x) I_3) r: its norm is ||W^T 1|| sqrt(5) / 4
    exact = float(np.linalg.norm(w.sum(axis=0))) * math.sqrt(5) / 4
    assert exact <= found["y"].value <= exact * (1 + 1e-12)
    assert found["y"].value <= found["y"].composed
