"""The cost model: --budget as counted work, from the budget and the problem's sizes only."""

from __future__ import annotations

import numpy as np
import pytest

from stabaudit.analyses import plan


def test_newton_steps_follow_the_size_cubed():
    # ACAS Xu N(1,1): dim(P) 305, 300 multipliers; a step is planned at
    # 4e-4 + (305^3 + 301^3) / 8e9 = 7.36 ms, so one budget second buys 135 steps
    assert plan.newton_steps(305, 300, 1.0) == 135
    assert plan.newton_steps(305, 300, 0.5) == 67
    # one step when it costs at most twice the budget (7.36 ms against 4 ms), none beyond
    assert plan.newton_steps(305, 300, 0.004) == 1
    assert plan.newton_steps(305, 300, 0.0036) == 0
    assert plan.newton_steps(10**4, 10**4, 1e-6) == 0
    assert plan.newton_steps(305, 300, 0.0) == 0


def test_branch_and_bound_nodes():
    assert plan.bb_nodes(1.0) == 250
    assert plan.bb_nodes(0.2) == 50
    assert plan.bb_nodes(0.0) == plan.BB_MIN_NODES == 16


def test_lower_units_and_monotone_plans():
    assert plan.lower_units(1.0) == 4e9
    assert plan.lower_units(-1.0) == 0.0
    budgets = [0.0, 0.1, 0.5, 1.0, 2.0, 10.0]
    assert [plan.lower_units(b) for b in budgets] == sorted(plan.lower_units(b) for b in budgets)
    steps = [plan.newton_steps(96, 64, b) for b in budgets]
    assert steps == sorted(steps)


def test_the_plan_reads_no_clock():
    import inspect

    source = inspect.getsource(plan)
    assert "import time" not in source and "perf_counter" not in source and "monotonic" not in source


def test_the_lower_search_shrinks_its_smallest_plan_only_for_large_networks():
    from types import SimpleNamespace
    from typing import Any

    from stabaudit.analyses.lower import _STEPS_H, _shape, _smallest_cost

    def search(fwd: float) -> Any:  # duck-typed _Search; full Jacobians of 10 outputs: 21 passes per point
        return SimpleNamespace(fwd=fwd, jac_passes=21, full=True, sweeps=4, power_iterations=12, steps_h=_STEPS_H,
                               call=plan.LOWER_CALL_MACS)

    # up to ~1e7 multiply-accumulates per forward pass (every network of the corpus) the plan of
    # 32 starts and 30 rounds fits max(2 budget, budget + 20) planned seconds from --budget 1 on
    assert _shape(search(1e7), 32, 30, 1.0) == (32, 30)
    assert _smallest_cost(search(1e7), 32, 30) <= plan.smallest_plan_units(1.0)
    # larger ones: rounds, then starts shrink, in a fixed order, until the plan fits
    assert _shape(search(3e7), 32, 30, 1.0) == (16, 4)
    assert _shape(search(1e8), 32, 30, 1.0) == (4, 4)
    assert _shape(search(1e9), 32, 30, 1.0) == (1, 0)  # the irreducible plan: one point
    assert _shape(search(1e8), 32, 30, 150.0) == (32, 30)  # a larger budget buys it back
    assert plan.smallest_plan_units(1.0) == 21.0 * plan.LOWER_MACS_PER_S
    assert plan.smallest_plan_units(20.0) == 40.0 * plan.LOWER_MACS_PER_S


def test_power_iteration_searches_shed_sweeps_then_steps_when_one_point_does_not_fit():
    import numpy as np

    from stabaudit.analyses.lower import (
        _STEPS_H,
        _STEPS_H_FEW,
        MIN_POWER_ITERATIONS,
        POWER_ITERATIONS,
        POWER_SWEEPS,
        _Search,
        _shape,
        _smallest_cost,
    )
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    w = np.random.default_rng(0).standard_normal((100, 100)).astype(np.float32)
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 100)),), outputs=("y",),
                          nodes=(Node(name="fc", op=O.Linear(weight=w, bias=None), inputs=("x",), output="y"),)))
    small = _Search(g, dict(g.shapes), 0)
    assert not small.full and small.jac_passes == 4 * POWER_ITERATIONS + 1
    assert _shape(small, 32, 30, 1.0) == (32, 30) and small.sweeps == POWER_SWEEPS  # a small net keeps it all
    big = _Search(g, dict(g.shapes), 0)
    big.fwd = 4e8  # a CRNN's forward pass: one point fits with fewer sweeps
    assert _shape(big, 32, 30, 1.0) == (1, 0)
    assert big.sweeps == 2 and big.power_iterations == POWER_ITERATIONS
    assert _smallest_cost(big, 1, 0) <= plan.smallest_plan_units(1.0)
    assert big.jac_passes == 4 * big.power_iterations + 1
    assert big.steps_h == _STEPS_H
    starved = _Search(g, dict(g.shapes), 0)
    starved.fwd = 1e9  # one point fits once two of the four step sizes are dropped
    assert _shape(starved, 32, 30, 1.0) == (1, 0)
    assert starved.sweeps == 0 and starved.steps_h == _STEPS_H_FEW[0] and starved.power_iterations == POWER_ITERATIONS
    assert _smallest_cost(starved, 1, 0) <= plan.smallest_plan_units(1.0)
    huge = _Search(g, dict(g.shapes), 0)
    huge.fwd = 1e12  # nothing fits: the floor of the plan, one step size confirmed
    assert _shape(huge, 32, 30, 1.0) == (1, 0)
    assert (huge.sweeps, huge.power_iterations, huge.steps_h) == (0, MIN_POWER_ITERATIONS, _STEPS_H_FEW[-1])


def test_residual_branch_budget_is_a_share_split_over_the_blocks():
    assert plan.residual_branch_budget(10.0, 0) == 0.0
    assert plan.residual_branch_budget(10.0, 1) == 10.0 * plan.RESIDUAL_SHARE
    assert plan.residual_branch_budget(10.0, 4) == 10.0 * plan.RESIDUAL_SHARE / 4
    assert plan.residual_branch_budget(-1.0, 2) == 0.0


def test_reverse_passes_buy_a_share_of_forward_passes():
    macs = 1e8  # a pass costs 3e8 + 2e6 units
    assert plan.reverse_passes(1.0, macs) == int(4e9 / (3e8 + 2e6))
    assert plan.reverse_passes(0.0, macs) == 1  # one pass whatever the budget
    assert plan.reverse_passes(10.0, macs) == 10 * 13 + 2  # 4e10 / 3.02e8 = 132.45


def test_residual_points_shed_points_then_steps_then_everything():
    macs = 1e6  # a Krylov point at 40 steps on a square block: (240 * 3 + 60) * 1e6 + 2e6 units
    point = (240 * 3 + 60) * macs + 2e6
    budget = 5 * point / 4e9
    assert plan.residual_points(budget, macs, 16, dense_passes=None, square=True, steps=40) == (5, 40)
    assert plan.residual_points(100.0, macs, 16, dense_passes=None, square=True, steps=40) == (16, 40)
    # half a point: one point with fewer steps (the largest k with (6 k * 3 + 60) * 1e6 + 2e6 <= units)
    half = point / 2 / 4e9
    assert plan.residual_points(half, macs, 16, dense_passes=None, square=True, steps=40) == (1, 18)
    assert plan.residual_points(1e-4, macs, 16, dense_passes=None, square=True, steps=40) == (0, 0)
    # full Jacobians: a point costs its dense passes, steps unused
    dense = (10 * 3 + 60) * macs + 2e6
    assert plan.residual_points(3 * dense / 4e9, macs, 16, dense_passes=10, square=True, steps=40) == (3, 40)
    assert plan.residual_points(1.0, macs, 0, dense_passes=None, square=False, steps=40) == (0, 0)


def test_sample_count_is_a_share_with_a_floor():
    assert plan.sample_count(10.0, 1e6, 64) == 64
    assert plan.sample_count(1.0, 1e8, 64) == int(plan.SAMPLE_SHARE * 4e9 // (1e8 + 2e6))  # 19
    assert plan.sample_count(1.0, 1e10, 64) == plan.MIN_SAMPLES
    assert plan.sample_count(1.0, 1e10, 2) == 2


def test_shares_of_the_budget_keep_their_smallest_plan_near_the_share():
    """The main search may go SMALLEST_PLAN_SLACK_S beyond a small budget; a share of it (the
    residual branches' searches, slack 0) at most SMALLEST_PLAN_FACTOR times the share."""
    assert plan.smallest_plan_units(0.1) == (0.1 + plan.SMALLEST_PLAN_SLACK_S) * plan.LOWER_MACS_PER_S
    assert plan.smallest_plan_units(0.1, 0.0) == plan.SMALLEST_PLAN_FACTOR * 0.1 * plan.LOWER_MACS_PER_S
    assert plan.smallest_plan_units(100.0, 0.0) == plan.smallest_plan_units(100.0)


def test_the_slope_relaxation_floor_multiplies_from_the_narrow_end_and_plans_its_starts():
    """The product W_l D_l ... W_0 is the same from either end; wide chains get fewer starts."""
    import numpy as np

    from stabaudit.analyses.certify import ChainLMI
    from stabaudit.analyses.floor import FLOOR_FLOPS, _product, _sweep_flops, slope_relaxation_floor

    rng = np.random.default_rng(0)
    ws = (rng.standard_normal((6, 9)), rng.standard_normal((6, 6)), rng.standard_normal((2, 6)))
    ds = [rng.random(6), rng.random(6)]
    expected = ws[2] @ np.diag(ds[1]) @ ws[1] @ np.diag(ds[0]) @ ws[0]
    np.testing.assert_allclose(_product(ws, ds), expected, rtol=1e-12, atol=1e-12)
    assert _sweep_flops(ws) == 2.0 * ((54 + 36 + 12) * 2 + 3 * (54 + 36 + 12))
    small = slope_relaxation_floor(ChainLMI(weights=ws, slopes=((0.0, 1.0),) * 2), starts=24)
    assert small.starts == 24
    n = 1024
    big = tuple([np.eye(n)] * 3 + [np.ones((1, n))])
    assert int(FLOOR_FLOPS // (60 * _sweep_flops(big))) < 24


def test_the_ledger_counts_the_planned_seconds_of_committed_work() -> None:
    plan.spend(5.0)  # outside a ledger: not counted anywhere, no error
    with plan.ledger() as spent:
        plan.spend(0.25)
        plan.spend(float("nan"))  # never counted
        plan.spend(-1.0)
        assert plan.sample_count(1.0, 1e6, 1000) == int(plan.SAMPLE_SHARE * plan.LOWER_MACS_PER_S // (1e6 + plan.LOWER_CALL_MACS))
        with plan.ledger() as inner:
            steps = plan.newton_steps(100, 10, 0.5)
        assert steps > 0 and inner == [0.0]  # newton_steps plans; its callers spend (sdp)
    expected = 0.25 + plan.sample_count(1.0, 1e6, 1000) * (1e6 + plan.LOWER_CALL_MACS) / plan.LOWER_MACS_PER_S
    assert spent[0] == pytest.approx(expected, rel=1e-12)


def test_the_box_branch_and_bound_plan() -> None:
    # mnist-net 256x2 (784 inputs, widths 256, 256, 10): a node at 2 ms + 3 * 784 * (256 * 256 +
    # 256 * 10) / 4e9 = 42.0 ms, a box's smallest plan (4 + 3 nodes) 0.294 s
    widths, n = (256, 256, 10), 784
    cost = plan.BB_NODE_BASE_S + 3.0 * n * (256 * 256 + 256 * 10) / plan.BB_FLOPS_PER_S
    with plan.ledger() as spent:
        assert plan.bb_box_plan(5.0, widths, n, 10) == (10, int(5.0 / 10 / cost) - 3)
    assert spent[0] == pytest.approx(10 * int(5.0 / 10 / cost) * cost, rel=1e-12)
    assert plan.bb_box_plan(0.5, widths, n, 10) == (1, int(0.5 / cost) - 3)  # the first box only
    assert plan.bb_box_plan(0.15, widths, n, 10) == (1, 4)  # within twice the budget: one box
    assert plan.bb_box_plan(0.1, widths, n, 10) == (0, 0)  # beyond: none
    assert plan.bb_box_plan(0.0, widths, n, 10) == (0, 0)


def test_allot_gives_the_weights_part_of_what_remains():
    assert plan.allot(10.0, 0.7, 1.0) == pytest.approx(7.0)
    assert plan.allot(10.0, 0.3, 0.3) == 10.0  # the last stage takes what remains
    assert plan.allot(-2.0, 0.3, 0.6) == 0.0  # an earlier stage overspent: nothing remains
    assert plan.allot(10.0, 0.0, 1.0) == 0.0 and plan.allot(10.0, 0.5, 0.0) == 0.0


def test_a_share_whose_one_point_does_not_fit_is_not_searched() -> None:
    """A share of the budget (a residual branch's search) that does not buy even one
    point: no search, nothing charged, and the method says what one point would cost; a larger
    share searches. The global search (slack above 0) keeps its smallest plan."""
    from pathlib import Path

    from stabaudit.analyses.lower import lower_bound
    from stabaudit.loaders.onnx import load_onnx

    graph = load_onnx(str(Path(__file__).resolve().parents[2] / "sample_models" / "cnn.onnx")).graph
    with plan.ledger() as spent:
        starved = lower_bound(graph, seed=0, budget_s=1e-6, smallest_slack_s=0.0, share=True)
    assert starved.value == 0.0 and starved.witness is None and spent == [0.0]
    assert starved.method.startswith("not searched: one point of this search is planned at")
    with plan.ledger() as spent:
        found = lower_bound(graph, seed=0, budget_s=0.2, smallest_slack_s=0.0, share=True)
    assert found.value > 0.0 and spent[0] > 0.0
    # the global search keeps its smallest plan, with or without slack
    assert lower_bound(graph, seed=0, budget_s=1e-6, smallest_slack_s=0.0).value > 0.0


def test_large_convolutions_count_at_their_measured_rate() -> None:
    from stabaudit.analyses.lower import forward_macs
    from stabaudit.ir import ops as O
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    def conv_graph(channels: int, size: int) -> Graph:
        w = np.zeros((channels, channels, 3, 3))
        node = Node(name="c", op=O.Conv(weight=w, bias=None, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)),
                    inputs=("x",), output="y")
        return Graph(inputs=(TensorSpec(name="x", shape=(1, channels, size, size)),), outputs=("y",), nodes=(node,))

    small, large = conv_graph(8, 16), conv_graph(64, 56)
    small_macs = 8 * 16 * 16 * 8 * 9
    large_macs = 64 * 56 * 56 * 64 * 9
    assert large_macs >= plan.LARGE_OP_MACS > small_macs
    # each adds CONV_POSITION_MACS per output position (all its output channels together)
    shapes = {"x": (1, 8, 16, 16), "y": (1, 8, 16, 16)}
    assert forward_macs(small, shapes) == small_macs + 8 * 16 * 16 + 16 * 16 * plan.CONV_POSITION_MACS
    shapes = {"x": (1, 64, 56, 56), "y": (1, 64, 56, 56)}
    assert forward_macs(large, shapes) == large_macs / plan.LARGE_OP_SPEEDUP + 64 * 56 * 56 + 56 * 56 * plan.CONV_POSITION_MACS
    # a convolution of few channels costs mostly its positions (measured: 0.13 to 0.44 GMAC/s)
    narrow = conv_graph(2, 16)
    shapes = {"x": (1, 2, 16, 16), "y": (1, 2, 16, 16)}
    assert forward_macs(narrow, shapes) >= 4 * (2 * 16 * 16 * 2 * 9)
    # a Linear over 197 tokens counts like a large convolution; a matrix-vector product (one row,
    # memory-bound) at the counted rate, however large
    w = np.zeros((1536, 384))
    tokens = Graph(inputs=(TensorSpec(name="x", shape=(1, 197, 384)),), outputs=("y",),
                   nodes=(Node(name="l", op=O.Linear(weight=w, bias=None), inputs=("x",), output="y"),))
    macs = 197 * 1536 * 384
    assert macs >= plan.LARGE_OP_MACS
    assert forward_macs(tokens, {"x": (1, 197, 384), "y": (1, 197, 1536)}) == macs / plan.LARGE_OP_SPEEDUP + 197 * 1536
    w = np.zeros((8192, 4096))
    vector = Graph(inputs=(TensorSpec(name="x", shape=(1, 4096)),), outputs=("y",),
                   nodes=(Node(name="l", op=O.Linear(weight=w, bias=None), inputs=("x",), output="y"),))
    assert forward_macs(vector, {"x": (1, 4096), "y": (1, 8192)}) == 8192 * 4096 + 8192


def test_the_per_layer_bounds_are_planned_from_the_shapes():
    import numpy as np

    from stabaudit.bounds.conv import WARM_ITERATIONS
    from stabaudit.bounds.numerics import conv_certificate_cost
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    rng = np.random.default_rng(0)
    conv = O.Conv(weight=rng.standard_normal((64, 64, 3, 3)).astype(np.float32), strides=(1, 1), pads=(1, 1, 1, 1),
                  dilations=(1, 1))
    lin = O.Linear(weight=rng.standard_normal((10, 64 * 32 * 32)).astype(np.float32), bias=None)
    g = with_shapes(Graph(
        inputs=(TensorSpec(name="x", shape=(1, 64, 32, 32)),), outputs=("y",),
        nodes=(Node(name="c", op=conv, inputs=("x",), output="h"),
               Node(name="f", op=O.Reshape(shape=(1, 65536)), inputs=("h",), output="z"),
               Node(name="l", op=lin, inputs=("z",), output="y"))))
    method, flops = conv_certificate_cost((64, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (32, 32))
    assert method == "circulant"
    macs = 64 * 32 * 32 * 64 * 9
    expected = (flops / plan.CORE_CIRCULANT_FLOPS_PER_S + 2 * WARM_ITERATIONS * macs / plan.CORE_POWER_MACS_PER_S
                + plan.CORE_GROUP_S + 10 * 65536 * 10 / plan.CORE_DENSE_FLOPS_PER_S)
    assert plan.layer_bounds_s(g) == pytest.approx(expected, rel=1e-12)
    assert plan.equivalence_s(1e9) == plan.EQUIVALENCE_PASSES * 1e9 / plan.LOWER_MACS_PER_S
    # a transposed convolution (a decoder's upsampling): certified as the adjoint convolution over
    # its output's grid, its power iteration through the input's entries
    up = O.ConvTranspose(weight=rng.standard_normal((64, 32, 4, 4)).astype(np.float32), strides=(2, 2),
                         pads=(1, 1, 1, 1), dilations=(1, 1), output_padding=(0, 0))
    gt = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 64, 32, 32)),), outputs=("u",),
                           nodes=(Node(name="t", op=up, inputs=("x",), output="u"),)))
    assert gt.shapes["u"] == (1, 32, 64, 64)
    method, flops = conv_certificate_cost((64, 32, 4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1, (64, 64))
    macs = 64 * 32 * 32 * 32 * 16
    expected = flops / plan.CORE_CIRCULANT_FLOPS_PER_S + 2 * WARM_ITERATIONS * macs / plan.CORE_POWER_MACS_PER_S
    assert method == "circulant" and plan.layer_bounds_s(gt) == pytest.approx(expected + plan.CORE_GROUP_S, rel=1e-12)


def test_a_share_that_buys_no_point_builds_no_jacobian(monkeypatch):
    import numpy as np

    from stabaudit.analyses import lower
    from stabaudit.ir import ops as O
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    def refuse(self):  # the batched Jacobian machinery (and its probe) must not be built
        raise AssertionError("built")

    monkeypatch.setattr(lower._Search, "_make_pairs", refuse)
    monkeypatch.setattr(lower.ForwardErrorModel, "evaluate", refuse)
    w = np.random.default_rng(0).standard_normal((100, 100)).astype(np.float32)
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, 100)),), outputs=("y",),
              nodes=(Node(name="fc", op=O.Linear(weight=w, bias=None), inputs=("x",), output="y"),))
    monkeypatch.setattr(lower, "forward_macs", lambda graph, shapes: 1e13)
    found = lower.lower_bound(g, seed=0, budget_s=0.01, smallest_slack_s=0.0, share=True)
    assert found.value == 0.0 and found.evaluations == 0 and "not searched" in found.method


def test_a_call_costs_its_nodes():
    # every batched call runs each node of the graph: NODE_CALL_MACS a node, LOWER_CALL_MACS at least
    assert plan.call_macs(0) == plan.call_macs(16) == plan.LOWER_CALL_MACS == 2e6
    assert plan.call_macs(877) == 877 * 1.2e5
    call = plan.call_macs(877)  # an unrolled GRU: 1.05e8 units a call, 26 ms
    assert plan.reverse_passes(1.0, 1e6, call) == int(4e9 / (3e6 + call))  # 36 where its MACs alone buy 800
    assert plan.sample_count(1.0, 1e6, 64, call) == int(plan.SAMPLE_SHARE * 4e9 // (1e6 + call))  # 3
    point = (240 * 3 + 60) * 1e6 + call
    assert plan.residual_points(5 * point / 4e9, 1e6, 16, dense_passes=None, square=True, steps=40,
                                call=call) == (5, 40)


def test_the_search_plans_its_calls_by_the_graph_size():
    # the lower search's calls cost what the graph's nodes cost: a long chain of small nodes buys
    # fewer screened points than a short one with the same multiply-accumulates
    from stabaudit.analyses.lower import _plan, _Search, _smallest_cost
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    def chain(depth: int) -> Graph:
        w = np.random.default_rng(depth).standard_normal((4, 4))
        nodes, src = [], "x"
        for k in range(depth):
            nodes += [Node(name=f"l{k}", op=O.Linear(weight=w), inputs=(src,), output=f"h{k}"),
                      Node(name=f"r{k}", op=O.Relu(), inputs=(f"h{k}",), output=f"a{k}")]
            src = f"a{k}"
        return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 4)),), outputs=(src,), nodes=tuple(nodes)))

    short, long = chain(2), chain(60)  # 4 and 120 nodes
    a, b = _Search(short, dict(short.shapes), 0), _Search(long, dict(long.shapes), 0)
    assert a.call == plan.call_macs(len(short.nodes)) and b.call == plan.call_macs(len(long.nodes)) > a.call
    b.fwd = a.fwd  # the same forward work: only the calls differ
    assert _smallest_cost(b, 8, 4) - _smallest_cost(a, 8, 4) == pytest.approx(
        (1 + 4 + 1) * (b.call - a.call))  # the screening, 4 rounds and one Jacobian round: a call each
    assert _plan(b, 8, 4, 0.05)[3] < _plan(a, 8, 4, 0.05)[3]  # fewer proposals a round
