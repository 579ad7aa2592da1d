"""Tests of stabaudit.analyses.exact: LipBaB branch and bound against exhaustive cell enumeration."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from stabaudit.analyses.exact import ExactResult, exact_lipschitz
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "external"


def _params(sizes: tuple[int, ...], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((b, a)).astype(np.float32), rng.standard_normal(b).astype(np.float32))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def _graph(params: list[tuple[np.ndarray, np.ndarray]], act: O.Op | None = None) -> Graph:
    nodes: list[Node] = []
    cur = "x"
    for i, (w, b) in enumerate(params):
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=b), inputs=(cur,), output=f"h{i}"))
        cur = f"h{i}"
        if i < len(params) - 1:
            nodes.append(Node(name=f"act{i}", op=act if act is not None else O.Relu(), inputs=(cur,), output=f"a{i}"))
            cur = f"a{i}"
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, params[0][0].shape[1])),), outputs=(cur,), nodes=tuple(nodes)))


def _jac_norm(params: list[tuple[np.ndarray, np.ndarray]], pattern: list[np.ndarray]) -> float:
    j = params[0][0].astype(np.float64)
    for (w, _), d in zip(params[1:], pattern, strict=True):
        j = w.astype(np.float64) @ (d[:, None] * j)
    return float(np.linalg.norm(j, 2))


def _pattern(params: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> list[np.ndarray]:
    h = x
    out = []
    for w, b in params[:-1]:
        z = w.astype(np.float64) @ h + b.astype(np.float64)
        d = (z > 0).astype(np.float64)
        out.append(d)
        h = d * z
    return out


def _cells_one_layer(w: np.ndarray, b: np.ndarray) -> set[tuple[int, ...]]:
    """Every cell of the arrangement of the lines w_i . x + b_i = 0 in the plane: each cell has an
    edge on some line; sample both sides of the midpoint of every edge (segments between
    consecutive intersections, and the two rays)."""
    w = w.astype(np.float64)
    b = b.astype(np.float64)
    cells: set[tuple[int, ...]] = set()
    for i in range(len(b)):
        n = w[i] / np.linalg.norm(w[i])
        p0 = -b[i] * w[i] / (w[i] @ w[i])
        d = np.array([-n[1], n[0]])
        ts = []
        for j in range(len(b)):
            den = w[j] @ d
            if j != i and abs(den) > 1e-12:
                ts.append(-(w[j] @ p0 + b[j]) / den)
        ts.sort()
        mids = [0.0] if not ts else [ts[0] - 1.0, *((a + c) / 2 for a, c in itertools.pairwise(ts)), ts[-1] + 1.0]
        for t in mids:
            for side in (1e-7, -1e-7):
                x = p0 + t * d + side * n
                cells.add(tuple(int(v) for v in (w @ x + b > 0)))
    return cells


@pytest.mark.parametrize("seed,width", [(0, 5), (1, 8), (2, 10), (3, 12)])
def test_one_hidden_layer_equals_cell_enumeration(seed: int, width: int) -> None:
    params = _params((2, width, 3), seed)
    w1, b1 = params[0]
    cells = _cells_one_layer(w1, b1)
    assert len(cells) == 1 + width + width * (width - 1) // 2  # lines in general position
    truth = max(_jac_norm(params, [np.array(c, dtype=np.float64)]) for c in cells)
    res = exact_lipschitz(_graph(params), budget_s=30.0)
    assert res.exact and res.upper is not None and res.lower is not None
    assert res.lower <= truth * (1 + 1e-12) and truth <= res.upper * (1 + 1e-12)
    assert abs(res.upper - truth) <= 1e-6 * truth
    # the witness realises the value
    assert res.witness is not None
    x = np.array(res.witness.point)
    assert abs(_jac_norm(params, _pattern(params, x)) - res.lower) <= 1e-9 * res.lower


def test_two_hidden_layers_against_grid_and_quotients() -> None:
    params = _params((2, 8, 8, 2), 5)
    res = exact_lipschitz(_graph(params), budget_s=30.0)
    assert res.exact and res.upper is not None and res.lower is not None
    grid = np.linspace(-6.0, 6.0, 241)
    seen: set[tuple[int, ...]] = set()
    grid_max = 0.0
    for x0 in grid:
        for x1 in grid:
            pat = _pattern(params, np.array([x0, x1]))
            key = tuple(int(v) for d in pat for v in d)
            if key not in seen:
                seen.add(key)
                grid_max = max(grid_max, _jac_norm(params, pat))
    assert grid_max <= res.upper * (1 + 1e-12)
    assert res.lower >= grid_max * (1 - 1e-9)  # the optimum region is large enough for this grid

    def f(x: np.ndarray) -> np.ndarray:
        h = x
        for w, b in params[:-1]:
            h = np.maximum(w.astype(np.float64) @ h + b, 0.0)
        return params[-1][0].astype(np.float64) @ h + params[-1][1]

    rng = np.random.default_rng(0)
    for _ in range(300):
        x, y = rng.standard_normal(2) * 3, rng.standard_normal(2) * 3
        assert np.linalg.norm(f(x) - f(y)) <= res.upper * np.linalg.norm(x - y) * (1 + 1e-9)


def test_leaky_relu_exact() -> None:
    params = _params((2, 6, 2), 7)
    res = exact_lipschitz(_graph(params, O.LeakyRelu(alpha=0.1)), budget_s=30.0)
    assert res.exact and res.upper is not None
    w1, b1 = params[0]
    truth = 0.0
    for c in _cells_one_layer(w1, b1):
        d = np.where(np.array(c) > 0, 1.0, 0.1)
        truth = max(truth, _jac_norm(params, [d]))
    assert abs(res.upper - truth) <= 1e-6 * truth


def test_budget_exhaustion_gives_a_bracket() -> None:
    params = _params((2, 16, 16, 2), 3)
    res = exact_lipschitz(_graph(params), budget_s=0.05)
    assert not res.exact
    assert res.upper is not None and res.lower is not None
    assert res.lower <= res.upper
    none = exact_lipschitz(_graph(params), budget_s=0.0)
    assert not none.exact and none.upper is not None and none.lower is not None and none.lower <= none.upper
    assert any("budget" in n for n in res.notes)


def test_deterministic() -> None:
    params = _params((2, 6, 6, 2), 11)
    a = exact_lipschitz(_graph(params), budget_s=30.0, seed=3)
    b = exact_lipschitz(_graph(params), budget_s=30.0, seed=3)
    assert (a.upper, a.lower, a.nodes_explored) == (b.upper, b.lower, b.nodes_explored)


def test_non_chain_gives_a_note() -> None:
    w = np.eye(2, dtype=np.float32)
    nodes = (
        Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="h"),
        Node(name="add", op=O.Add(), inputs=("x", "h"), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=nodes))
    res = exact_lipschitz(g, budget_s=1.0)
    assert isinstance(res, ExactResult)
    assert res.upper is None and not res.exact and res.notes
    tanh = _graph(_params((2, 3, 2), 0), O.Tanh())
    res2 = exact_lipschitz(tanh, budget_s=1.0)
    assert res2.upper is None and "exact mode" in res2.notes[0]


def test_linear_only_is_exact() -> None:
    params = _params((3, 2), 0)
    res = exact_lipschitz(_graph(params), budget_s=1.0)
    assert res.exact and res.upper is not None
    assert abs(res.upper - np.linalg.norm(params[0][0].astype(np.float64), 2)) <= 1e-12 * res.upper


def _jacobian_norms(graph: Graph, points: np.ndarray) -> list[float]:
    """||J(x)|| of the loaded graph at random points, by autograd in float64."""
    import torch

    from stabaudit.ir.executor import Executor

    ex = Executor(graph, dtype=torch.float64)
    shape = graph.inputs[0].shape
    out = []
    for x in points:
        xt = torch.tensor(x, dtype=torch.float64).reshape(shape)
        jac = torch.autograd.functional.jacobian(lambda v: ex(v)[0].reshape(-1), xt).reshape(-1, xt.numel())
        out.append(float(torch.linalg.matrix_norm(jac, ord=2)))
    return out


@pytest.mark.external
def test_real_network_bracket_is_sound() -> None:
    from stabaudit.loaders import load_model

    path = EXTERNAL / "reach_prob_density" / "vdp.onnx"
    if not path.exists():
        pytest.skip("external models absent")
    graph = load_model(path).graph
    res = exact_lipschitz(graph, budget_s=3.0)
    assert res.upper is not None and res.lower is not None and 0.0 < res.lower <= res.upper
    pts = np.random.default_rng(0).standard_normal((20, graph.inputs[0].shape[-1])) * 2.0
    assert max(_jacobian_norms(graph, pts)) <= res.upper
    assert res.witness is not None and len(res.witness.point) == graph.inputs[0].shape[-1]


@pytest.mark.external
@pytest.mark.skipif(not os.environ.get("STABAUDIT_BENCH"), reason="bench: set STABAUDIT_BENCH=1")
def test_bench_real_networks() -> None:
    """Bench line (printed): time and node count with a 60 s budget each."""
    from stabaudit.loaders import load_model

    lines = []
    res = exact_lipschitz(_graph(_params((2, 16, 16, 2), 0)), budget_s=60.0)
    lines.append(f"2-16-16-2: exact={res.exact} [{res.lower:.12g}, {res.upper:.12g}] nodes={res.nodes_explored} s={res.seconds:.2f}")
    for rel in ("reach_prob_density/vdp.onnx", "rl_benchmarks/cartpole.onnx"):
        path = EXTERNAL / rel
        if not path.exists():
            continue
        r = exact_lipschitz(load_model(path).graph, budget_s=60.0)
        assert r.upper is not None and r.lower is not None and r.lower <= r.upper
        lines.append(f"{rel}: exact={r.exact} [{r.lower:.9g}, {r.upper:.9g}] nodes={r.nodes_explored} s={r.seconds:.2f}")
    print("\n" + "\n".join(lines))


# ---- the constant over a box ---------------------------------------------------------------------
def _grid_max(params: list[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray, n: int = 301) -> float:
    """max ||J|| over the patterns met on an n x n grid of the box (each region's Jacobian once)."""
    seen: set[tuple[int, ...]] = set()
    best = 0.0
    for x0 in np.linspace(lo[0], hi[0], n):
        for x1 in np.linspace(lo[1], hi[1], n):
            pat = _pattern(params, np.array([x0, x1]))
            key = tuple(int(v) for d in pat for v in d)
            if key not in seen:
                seen.add(key)
                best = max(best, _jac_norm(params, pat))
    return best


@pytest.mark.parametrize(("center", "radius"), [((0.3, -0.2), 0.4), ((1.5, 1.0), 0.15), ((-2.0, 0.5), 1.0)])
def test_box_constant_equals_the_regions_met_in_the_box(center: tuple[float, float], radius: float) -> None:
    params = _params((2, 8, 8, 2), 5)
    c = np.array(center)
    lo, hi = c - radius, c + radius
    res = exact_lipschitz(_graph(params), budget_s=30.0, box=(lo, hi))
    assert res.exact and res.upper is not None and res.lower is not None
    truth = _grid_max(params, lo, hi)
    # the grid meets every region of the box with an area this grid resolves (same value), and
    # the box's constant is at most the global one
    assert abs(res.upper - truth) <= 1e-6 * truth
    glob = exact_lipschitz(_graph(params), budget_s=30.0)
    assert glob.upper is not None and res.upper <= glob.upper * (1 + 1e-12)
    # the witness lies in the box, and its region's norm is the lower end
    assert res.witness is not None
    x = np.array(res.witness.point)
    assert np.all(lo <= x) and np.all(x <= hi)
    assert abs(_jac_norm(params, _pattern(params, x)) - res.lower) <= 1e-9 * res.lower


def test_box_smaller_than_global_and_inner_points() -> None:
    params = _params((2, 8, 8, 2), 5)
    lo, hi = np.array([1.5, 1.0]) - 0.15, np.array([1.5, 1.0]) + 0.15
    inner = (lo + 0.05, hi - 0.05)
    res = exact_lipschitz(_graph(params), budget_s=30.0, box=(lo, hi), inner=inner)
    glob = exact_lipschitz(_graph(params), budget_s=30.0)
    assert res.upper is not None and glob.upper is not None and res.upper < 0.9 * glob.upper
    assert res.witness is not None
    x = np.array(res.witness.point)
    assert np.all(inner[0] <= x) and np.all(x <= inner[1])


def test_flat_box_gives_no_lower_bound() -> None:
    # a box of zero width in one entry: pairs move along the other only, so a region's full
    # Jacobian norm is no lower bound there; the upper end still holds
    params = _params((2, 8, 8, 2), 5)
    lo, hi = np.array([0.0, -1.0]), np.array([0.0, 1.0])
    res = exact_lipschitz(_graph(params), budget_s=10.0, box=(lo, hi))
    assert res.lower is None and res.witness is None
    assert res.upper is not None
    # the constant along the segment: the largest ||J e_1|| of the regions it crosses
    along = 0.0
    for x1 in np.linspace(-1.0, 1.0, 2001):
        j = params[0][0].astype(np.float64)
        for (w, _), d in zip(params[1:], _pattern(params, np.array([0.0, x1])), strict=True):
            j = w.astype(np.float64) @ (d[:, None] * j)
        along = max(along, float(np.linalg.norm(j[:, 1])))
    assert along > 0 and res.upper >= along
    glob = exact_lipschitz(_graph(params), budget_s=30.0)
    assert glob.upper is not None and res.upper <= glob.upper * (1 + 1e-12)


def test_box_with_an_input_translation_equals_the_folded_network() -> None:
    # x -> W (x + t) + b with t dyadic, so that W t + b is exact in float64: the same constant as
    # the network with bias W t + b, and the witness in the untranslated input's coordinates
    params = _params((2, 6, 6, 2), 3)
    t = np.array([0.5, -0.25], dtype=np.float32)
    w0, b0 = params[0]
    shifted = with_shapes(Graph(
        inputs=_graph(params).inputs,
        outputs=_graph(params).outputs,
        nodes=(Node(name="shift", op=O.Affine(scale=None, shift=t.reshape(1, 2)), inputs=("x",), output="xs"),
               *(Node(name=n.name, op=n.op, inputs=("xs",) if n.inputs == ("x",) else n.inputs, output=n.output)
                 for n in _graph(params).nodes)),
    ))
    folded = [((w0.astype(np.float64)), (w0.astype(np.float64) @ t.astype(np.float64) + b0)), *params[1:]]
    lo, hi = np.array([-0.6, 0.2]), np.array([0.4, 1.0])
    a = exact_lipschitz(shifted, budget_s=30.0, box=(lo, hi))
    ref = _grid_max(folded, lo, hi)  # type: ignore[arg-type]
    assert a.exact and a.upper is not None and abs(a.upper - ref) <= 1e-6 * ref
    assert a.witness is not None
    x = np.array(a.witness.point)
    assert np.all(lo <= x) and np.all(x <= hi)
    assert abs(_jac_norm(params, _pattern(folded, x)) - a.lower) <= 1e-9 * a.lower  # type: ignore[arg-type, operator]
