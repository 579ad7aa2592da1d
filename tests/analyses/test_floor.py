"""Tests of stabaudit.analyses.floor: the slope-relaxation floor lies between the exact constant and
every slope-relaxation upper bound, and equals the vertex maximum found by brute force."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from stabaudit.analyses.certify import ChainLMI
from stabaudit.analyses.exact import exact_lipschitz
from stabaudit.analyses.feedforward import Chain
from stabaudit.analyses.floor import slope_relaxation_floor
from stabaudit.analyses.layerwise import eclipse_fast
from stabaudit.analyses.sdp import lipsdp, pow2_scaled
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _chain(weights: list[np.ndarray], slopes: tuple[float, float] = (0.0, 1.0)) -> Chain:
    return Chain(
        weights=tuple(weights), slopes=(slopes,) * (len(weights) - 1), errors=(None,) * len(weights),
        rows=1, nodes=tuple(f"fc{i}" for i in range(len(weights))),
    )


def _brute_force(weights: list[np.ndarray], slopes: tuple[float, float]) -> float:
    """max over every vertex pattern of ||W_l D_l ... W_0||_2 (small widths only)."""
    widths = [w.shape[0] for w in weights[:-1]]
    best = 0.0
    for bits in itertools.product(slopes, repeat=sum(widths)):
        diags, at = [], 0
        for n in widths:
            diags.append(np.array(bits[at : at + n]))
            at += n
        m = weights[0]
        for d, w in zip(diags, weights[1:], strict=True):
            m = w @ (d[:, None] * m)
        best = max(best, float(np.linalg.norm(m, 2)))
    return best


@pytest.mark.parametrize(("seed", "slopes"), [(0, (0.0, 1.0)), (1, (0.0, 1.0)), (2, (0.1, 1.0))])
def test_floor_is_the_vertex_maximum_and_below_lipsdp(seed: int, slopes: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    widths = (3, 4, 4, 2)
    weights = [rng.standard_normal((b, a)) for a, b in itertools.pairwise(widths)]
    chain = _chain(weights, slopes)
    floor = slope_relaxation_floor(chain, seed=seed)
    brute = _brute_force(weights, slopes)
    # the ascent finds the vertex maximum on these small chains; its certified value sits just below
    assert floor.estimate == pytest.approx(brute, rel=1e-12)
    assert brute * (1 - 1e-12) <= floor.value <= brute
    # and no slope-relaxation certificate can go below it
    scaled, exponent = pow2_scaled(ChainLMI(weights=chain.weights, slopes=chain.slopes, errors=chain.errors))
    start = eclipse_fast(scaled)
    assert start is not None
    rho, _, _ = lipsdp(scaled, start.rho, list(start.ts), budget_s=10.0)
    assert floor.value <= math.sqrt(rho) * 2.0**exponent * (1 + 1e-9)
    assert floor.value <= math.prod(float(np.linalg.norm(w, 2)) for w in weights) * (1 + 1e-12)


def test_floor_is_above_the_exact_constant_and_meets_it_when_every_pattern_is_reached() -> None:
    # x -> W1 relu(W0 x + b0) with 2 inputs and 5 hidden units: only some patterns are reached
    # (the exact constant is below the floor); with 2 hidden units (W0 invertible) every pattern
    # is reached and the floor is the exact constant
    rng = np.random.default_rng(4)
    for hidden, equal in ((5, False), (2, True)):
        w0, b0 = rng.standard_normal((hidden, 2)), rng.standard_normal(hidden)
        w1 = rng.standard_normal((3, hidden))
        graph = with_shapes(Graph(
            inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",),
            nodes=(Node(name="fc0", op=O.Linear(weight=w0, bias=b0), inputs=("x",), output="h"),
                   Node(name="act", op=O.Relu(), inputs=("h",), output="a"),
                   Node(name="fc1", op=O.Linear(weight=w1, bias=np.zeros(3)), inputs=("a",), output="y")),
        ))
        exact = exact_lipschitz(graph, budget_s=30.0)
        assert exact.exact
        floor = slope_relaxation_floor(_chain([w0, w1]))
        assert floor.value >= exact.lower * (1 - 1e-9)
        if equal:
            assert floor.value == pytest.approx(exact.upper, rel=1e-9)
        else:
            assert floor.estimate > exact.upper * 1.01  # a pattern no input reaches


def test_floor_is_deterministic_and_certifies_its_rounding() -> None:
    rng = np.random.default_rng(7)
    weights = [rng.standard_normal((30, 20)) * 1e3, rng.standard_normal((30, 30)), rng.standard_normal((5, 30)) * 1e-3]
    a = slope_relaxation_floor(_chain(weights), seed=3)
    b = slope_relaxation_floor(_chain(weights), seed=3)
    assert a.value == b.value and all(np.array_equal(x, y) for x, y in zip(a.patterns, b.patterns, strict=True))
    assert 0.0 < a.value < a.estimate <= a.value * (1 + 1e-10)
    m = weights[0]
    for d, w in zip(a.patterns, weights[1:], strict=True):
        m = w @ (d[:, None] * m)
    assert np.linalg.norm(m, 2) == pytest.approx(a.estimate, rel=1e-12)


EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "external"


@pytest.mark.parametrize(("name", "product_over_floor"), [("mnist-net_256x2", 2.84), ("mnist-net_256x4", 4.12)])
def test_floor_of_the_mnist_nets_is_above_a_tenth_of_the_product(name: str, product_over_floor: float) -> None:
    # no slope-relaxation bound of these networks can be 10x below the layer product: a pattern
    # whose Jacobian norm is above product / 10 exists (product / F = 2.84 and 4.12)
    path = EXTERNAL / "mnistfc" / f"{name}.onnx"
    if not path.is_file():
        pytest.skip("../shared/models/external is absent")
    from stabaudit.analyses.feedforward import explain_chain
    from stabaudit.ir.passes import fold_affine
    from stabaudit.loaders import load_model

    chain = explain_chain(fold_affine(load_model(path).graph))
    assert not isinstance(chain, str)
    product = math.prod(float(np.linalg.norm(w, 2)) for w in chain.weights)
    floor = slope_relaxation_floor(chain)
    assert product / floor.value == pytest.approx(product_over_floor, abs=0.01)
    assert floor.value > product / 10


def test_global_bounds_note_the_floor_beside_the_tightest_bound() -> None:
    from stabaudit.analyses.feedforward import global_bounds

    rng = np.random.default_rng(5)
    w0, w1, w2 = rng.standard_normal((12, 6)), rng.standard_normal((12, 12)), rng.standard_normal((3, 12))
    nodes = (
        Node(name="fc0", op=O.Linear(weight=w0, bias=rng.standard_normal(12)), inputs=("x",), output="h0"),
        Node(name="act0", op=O.Relu(), inputs=("h0",), output="a0"),
        Node(name="fc1", op=O.Linear(weight=w1, bias=rng.standard_normal(12)), inputs=("a0",), output="h1"),
        Node(name="act1", op=O.Relu(), inputs=("h1",), output="a1"),
        Node(name="fc2", op=O.Linear(weight=w2, bias=np.zeros(3)), inputs=("a1",), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 6)),), outputs=("y",), nodes=nodes))
    results = global_bounds(graph, budget_s=5.0)
    floor = slope_relaxation_floor(_chain([w0, w1, w2]))
    best = min((r for r in results if r.upper is not None), key=lambda r: r.upper or math.inf)
    notes = [n for r in results for n in r.notes if n.startswith("slope-relaxation floor")]
    assert len(notes) == 1 and notes[0] in best.notes
    assert f"{floor.value:.6g}" in notes[0]
    assert floor.value <= best.upper
