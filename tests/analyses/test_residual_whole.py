"""A residual block bounded as a whole: sup over Clarke Jacobians of ||I + s W2 D W1||."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.composition import compose, rule_bounds
from stabaudit.analyses.residual import block_bounds, whole_block_bound
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import fold_affine, merge_linear_maps
from stabaudit.ir.patterns import find_residual_blocks
from stabaudit.loaders import load_model

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def block(w1: np.ndarray, w2: np.ndarray, act: O.Op, scale: float | None = None) -> Graph:
    n = w1.shape[1]
    nodes = [
        Node(name="fc1", op=O.Linear(weight=w1, bias=np.ones(w1.shape[0])), inputs=("x",), output="a"),
        Node(name="act", op=act, inputs=("a",), output="r"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("r",), output="f"),
    ]
    last = "f"
    if scale is not None:
        nodes.append(Node(name="scale", op=O.Affine(scale=np.array(scale)), inputs=("f",), output="sf"))
        last = "sf"
    nodes.append(Node(name="add", op=O.Add(), inputs=("x", last), output="y"))
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, n)),), outputs=("y",), nodes=tuple(nodes))
    return with_shapes(g.validate())


def exact_sup(w1, w2, s, a, b) -> float:
    """max over the vertices D in {a, b}^m of ||I + s W2 D W1|| (a convex function of D: its max
    over the box is at a vertex): the exact Lipschitz constant's upper envelope."""
    n, m = w1.shape[1], w1.shape[0]
    best = 0.0
    for d in itertools.product((a, b), repeat=m):
        best = max(best, np.linalg.norm(np.eye(n) + s * w2 @ np.diag(d) @ w1, 2))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("act", "slopes", "scale"), [
    (O.Relu(), (0.0, 1.0), None),
    (O.LeakyRelu(alpha=0.1), (0.1, 1.0), None),
    (O.Relu(), (0.0, 1.0), -0.5),
    (O.Tanh(), (0.0, 1.0), 0.25),
])
def test_whole_block_bound_is_sound_and_tighter(seed, act, slopes, scale):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(6, 4)) * 0.7
    w2 = -w1.T * 0.8 + rng.normal(size=(4, 6)) * 0.2  # a dissipative-looking branch
    g = block(w1, w2, act, scale)
    (m,) = find_residual_blocks(g)
    found = whole_block_bound(g, m, rule_bounds(g))
    assert found is not None
    value, note = found
    s = 1.0 if scale is None else scale
    truth = exact_sup(w1, w2, s, *slopes)
    assert truth <= value
    naive = 1 + abs(s) * slopes[1] * np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
    assert value <= naive * (1 + 1e-12)
    # sampled difference quotients of the block never exceed it
    f = Executor(g, dtype=torch.float64).flat()
    x = torch.from_numpy(rng.normal(size=(200, 4)) * 3)
    y = x + torch.from_numpy(rng.normal(size=(200, 4)) * 0.1)
    q = torch.linalg.norm(torch.func.vmap(f)(x) - torch.func.vmap(f)(y), dim=1) / torch.linalg.norm(x - y, dim=1)
    assert float(q.max()) <= value
    assert "bounded as a whole" in note


def test_composition_uses_the_whole_block_bound():
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(5, 3))
    w2 = -w1.T * 0.5
    g = block(w1, w2, O.Relu())
    ob = rule_bounds(g)
    plain = compose(g, ob).upper.value
    blocks = block_bounds(g, ob)
    assert set(blocks) == {"y"} and blocks["y"].x == "x"
    tight = compose(g, ob, {k: (b.x, b.value) for k, b in blocks.items()}).upper.value
    assert tight == pytest.approx(blocks["y"].value) and tight < plain


def test_sample_resnet_blocks_are_bounded_as_a_whole():
    g = merge_linear_maps(fold_affine(load_model(SAMPLES / "resnet.onnx").graph))
    ob = rule_bounds(g)
    blocks = block_bounds(g, ob)
    assert len(blocks) == 2
    plain = compose(g, ob).upper.value
    assert compose(g, ob, {k: (b.x, b.value) for k, b in blocks.items()}).upper.value < 0.9 * plain


def test_what_is_not_bounded_as_a_whole():
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(5, 3)), rng.normal(size=(3, 5))
    g = block(w1, w2, O.Softmax(axis=-1))  # not an element-wise slope-restricted map
    (m,) = find_residual_blocks(g)
    assert whole_block_bound(g, m, rule_bounds(g)) is None
