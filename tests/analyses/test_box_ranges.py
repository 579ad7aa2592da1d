"""Tightened value ranges over a box: symbolic intervals on receptive fields (analyses.symbolic)
and back-substitution through the graph (analyses.backsub), against the executor's values at
points of the box, exact ranges of linear maps and the back-substituted ranges of ReLU chains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabaudit.analyses.backsub import backsub_ranges
from stabaudit.analyses.crown import crown_ranges
from stabaudit.analyses.domain_bound import box_ranges, interval_pass_cost
from stabaudit.analyses.local import _max_candidates
from stabaudit.analyses.plan import ledger
from stabaudit.analyses.ranges import value_ranges
from stabaudit.analyses.symbolic import plain_choice, symbolic_ranges
from stabaudit.bounds.base import Interval
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from tests.analyses.cnn_fixture import ball_points, cnn, values_at


def _box(g: Graph, x0: np.ndarray, eps: float) -> dict[str, Interval]:
    shape = g.inputs[0].shape
    return {g.inputs[0].name: Interval(lo=(x0 - eps).reshape(shape), hi=(x0 + eps).reshape(shape))}


def _width(ranges: dict[str, Interval], name: str) -> float:
    return float(np.mean(np.asarray(ranges[name].hi) - np.asarray(ranges[name].lo)))


def _encloses(ranges: dict[str, Interval], values: dict[str, np.ndarray], names: list[str]) -> None:
    for name in names:
        v = values[name]
        lo = np.asarray(ranges[name].lo).reshape(1, -1)
        hi = np.asarray(ranges[name].hi).reshape(1, -1)
        flat = v.reshape(v.shape[0], -1)
        assert np.all(flat >= lo) and np.all(flat <= hi), name


@pytest.mark.parametrize(("seed", "eps"), [(0, 0.02), (1, 0.1), (2, 0.3)])
def test_the_tightened_ranges_hold_the_executor_s_values(seed: int, eps: float) -> None:
    g = cnn(seed=seed)
    x0 = np.random.default_rng(seed + 10).normal(size=162)
    box = _box(g, x0, eps)
    iv = value_ranges(g, box)
    sym = symbolic_ranges(g, box, iv)
    assert sym is not None
    merged = {**iv, **sym.ranges}
    back = backsub_ranges(g, box, merged, pools=sym.pools)
    assert back is not None
    values = values_at(g, ball_points(x0, eps, 400, seed))
    names = [n.output for n in g.nodes if n.output in back]
    assert {"c1", "a1", "m", "c2", "a2", "s", "f", "y", "z"} <= set(names)
    _encloses(sym.ranges, values, [n for n in names if n in sym.ranges])
    _encloses(back, values, names)
    for name in names:  # inside the ranges given (an intersection)
        assert np.all(np.asarray(back[name].lo) >= np.asarray(merged[name].lo))
        assert np.all(np.asarray(back[name].hi) <= np.asarray(merged[name].hi))
    # the point: the deeper values are tighter than by interval arithmetic (measured: the head's
    # ranges are 0.33 to 0.73 of their interval width, back-substitution below the symbolic one)
    assert _width(back, "c2") <= _width(iv, "c2")
    assert _width(back, "y") < 0.8 * _width(iv, "y")
    assert _width(back, "y") < _width(sym.ranges, "y")


def test_a_linear_network_s_ranges_are_exact() -> None:
    """Without activations the symbolic rows are the network's matrix: the range over the box is
    A x0 + b -/+ |A| r, up to rounding."""
    rng = np.random.default_rng(3)
    nodes = (
        Node(name="c1", op=O.Conv(weight=rng.normal(size=(3, 2, 3, 3)), bias=rng.normal(size=3), strides=(1, 1),
                                  pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="c1"),
        Node(name="c2", op=O.Conv(weight=rng.normal(size=(2, 3, 3, 3)), bias=None, strides=(2, 2),
                                  pads=(0, 0, 0, 0), dilations=(1, 1)), inputs=("c1",), output="c2"),
        Node(name="f", op=O.Reshape(shape=(1, 18)), inputs=("c2",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 18)), bias=rng.normal(size=4)), inputs=("f",), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 7, 7)),), outputs=("y",), nodes=nodes).validate())
    x0 = rng.normal(size=98)
    eps = 0.05
    sym = symbolic_ranges(g, _box(g, x0, eps))
    assert sym is not None
    ex = Executor(g, dtype=torch.float64)
    a = torch.autograd.functional.jacobian(lambda v: ex(v.reshape(1, 2, 7, 7))[0].reshape(-1),
                                           torch.from_numpy(x0)).numpy()
    centre = ex(torch.from_numpy(x0).reshape(1, 2, 7, 7))[0].numpy().reshape(-1)
    spread = np.abs(a).sum(axis=1) * eps
    np.testing.assert_allclose(np.asarray(sym.ranges["y"].lo).reshape(-1), centre - spread, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(sym.ranges["y"].hi).reshape(-1), centre + spread, rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(sym.ranges["y"].lo).reshape(-1) <= centre - spread)
    assert np.all(np.asarray(sym.ranges["y"].hi).reshape(-1) >= centre + spread)


def test_back_substitution_matches_the_chain_form_on_a_relu_chain() -> None:
    """The same CROWN bound as analyses.crown's explicit matrices, for every unit that the
    interval ranges leave across its kink (the others keep their given range)."""
    rng = np.random.default_rng(5)
    sizes = [6, 20, 20, 20, 3]
    nodes = []
    prev = "x"
    for i in range(4):
        nodes.append(Node(name=f"l{i}", op=O.Linear(weight=rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
                                                   bias=rng.normal(size=sizes[i + 1]) * 0.1), inputs=(prev,), output=f"l{i}"))
        prev = f"l{i}"
        if i < 3:
            nodes.append(Node(name=f"r{i}", op=O.Relu(), inputs=(prev,), output=f"r{i}"))
            prev = f"r{i}"
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 6)),), outputs=(prev,), nodes=tuple(nodes)).validate())
    x0 = rng.normal(size=6)
    box = _box(g, x0, 0.4)
    iv = value_ranges(g, box)
    chain = crown_ranges(g, box, iv)
    back = backsub_ranges(g, box, iv)
    assert chain is not None and back is not None
    crossing = 0
    for name in ("l1", "l2"):
        lo, hi = np.asarray(iv[name].lo).ravel(), np.asarray(iv[name].hi).ravel()
        unstable = (lo < 0) & (hi > 0)
        crossing += int(unstable.sum())
        np.testing.assert_allclose(np.asarray(back[name].lo).ravel()[unstable],
                                   np.asarray(chain[name].lo).ravel()[unstable], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(back[name].hi).ravel()[unstable],
                                   np.asarray(chain[name].hi).ravel()[unstable], rtol=1e-9, atol=1e-12)
    assert crossing > 5


def test_max_pool_windows_are_decided_by_the_difference_of_their_candidates() -> None:
    """Neighbouring candidates share most of their inputs: their difference has a far smaller range
    than each, so the symbolic choice decides windows the ranges alone leave open."""
    g = cnn(seed=0)
    x0 = np.random.default_rng(7).normal(size=162)
    box = _box(g, x0, 0.02)
    iv = value_ranges(g, box)
    sym = symbolic_ranges(g, box, iv)
    assert sym is not None
    pool = next(n for n in g.nodes if isinstance(n.op, O.MaxPool))
    lo = torch.from_numpy(np.asarray(sym.ranges[pool.inputs[0]].lo))
    hi = torch.from_numpy(np.asarray(sym.ranges[pool.inputs[0]].hi))
    plain = plain_choice(pool.op, lo, hi, g.shapes[pool.output])
    chosen = sym.pools[pool.output]
    # measured: 9 windows open instead of 10, their gaps summing to 0.83 instead of 2.42
    assert int((chosen.gap > 0).sum()) < int((plain.gap > 0).sum())
    assert torch.all(chosen.gap <= plain.gap) and float(chosen.gap.sum()) < 0.5 * float(plain.gap.sum())
    # every window's max lies in [z_i, z_i + gap] at points of the box
    values = values_at(g, ball_points(x0, 0.02, 300, 1))
    z = values[pool.inputs[0]].reshape(300, -1)[:, chosen.index.reshape(-1).numpy()]
    m = values[pool.output].reshape(300, -1)
    assert np.all(m >= z) and np.all(m <= z + chosen.gap.reshape(1, -1).numpy())
    # the undecided windows are among those with several candidates by the ranges
    cand = _max_candidates(pool.op, lo, hi, g.shapes[pool.output])
    assert torch.all((chosen.gap > 0) <= (cand.sum(dim=2) > 1))


def test_box_ranges_takes_each_step_within_its_budget() -> None:
    g = cnn(seed=1)
    x0 = np.random.default_rng(8).normal(size=162)
    box = _box(g, x0, 0.05)
    plain = value_ranges(g, box)
    first = interval_pass_cost(g)
    assert first > 0
    with ledger():
        assert box_ranges(g, box, budget_s=0.5 * first) is None  # not even the interval pass
    with ledger() as spent:
        found = box_ranges(g, box, budget_s=first)
        assert found is not None and spent[0] == pytest.approx(first)
    only, pools = found
    assert pools == {}
    for name in plain:
        np.testing.assert_array_equal(np.asarray(only[name].lo), np.asarray(plain[name].lo))
    full = box_ranges(g, box)
    assert full is not None
    assert full[1] and _width(full[0], "y") < _width(plain, "y")


def test_the_symbolic_step_is_taken_only_with_the_back_substitution_after_it() -> None:
    # symbolic intervals are bought only where the back-substitution (planned on the interval
    # ranges, which leave more units open) fits after them; else the back-substitution alone
    from stabaudit.analyses.backsub import backsub_cost, backsub_ranges
    from stabaudit.analyses.domain_bound import SYMBOLIC_PER_PATCH
    from stabaudit.analyses.local import MAX_JACOBIAN_ENTRIES
    from stabaudit.analyses.patch_jacobian import MAX_PATCH_ENTRIES, patch_cost

    g = cnn(seed=1)
    box = _box(g, np.random.default_rng(8).normal(size=162), 0.05)
    plain = value_ranges(g, box)
    first = interval_pass_cost(g)
    after = backsub_cost(g, box, plain)
    assert after is not None and after > 0
    with ledger() as spent:
        backed = backsub_ranges(g, box, plain)
    assert backed is not None and 0 < spent[0] <= after  # it plans the open units of the given ranges
    symbolic = SYMBOLIC_PER_PATCH * patch_cost(g, dict(g.shapes), MAX_JACOBIAN_ENTRIES, MAX_PATCH_ENTRIES, partial=True)
    assert symbolic > 0
    with ledger():
        short = box_ranges(g, box, budget_s=first + after + 0.5 * symbolic)
    assert short is not None and short[1] == {}  # no symbolic step (no pool choices), back-substituted
    for name in backed:
        np.testing.assert_array_equal(np.asarray(short[0][name].lo), np.asarray(backed[name].lo))
    with ledger():
        both = box_ranges(g, box, budget_s=first + symbolic + after)
    assert both is not None and both[1]  # symbolic (the max pool's choices), then back-substitution
