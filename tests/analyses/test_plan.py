"""The cost model: --budget as counted work, from the budget and the problem's sizes only."""

from __future__ import annotations

from stabaudit.analyses import plan


def test_newton_steps_follow_the_size_cubed():
    # ACAS Xu N(1,1): dim(P) 305, 300 multipliers; a step is planned at
    # 4e-4 + (305^3 + 301^3) / 8e9 = 7.36 ms, so one budget second buys 135 steps
    assert plan.newton_steps(305, 300, 1.0) == 135
    assert plan.newton_steps(305, 300, 0.5) == 67
    assert plan.newton_steps(10**4, 10**4, 1e-6) == 1  # a positive budget always buys one step
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
