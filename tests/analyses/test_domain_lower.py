"""The audit domain as boxes, and the projected pair ascent's lower bound inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses import domain_lower as DL
from stabaudit.analyses.domain_bound import domain_boxes
from stabaudit.analyses.domain_lower import domain_lower, plan
from stabaudit.analyses.samples import (
    BallDomain,
    MarginDomain,
    NormalDomain,
    UniformDomain,
    Values,
    parse_domain,
)
from stabaudit.errors import UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _relu_net(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(8, 3)), rng.normal(size=(2, 8))
    nodes = (
        Node(name="fc0", op=O.Linear(weight=w1, bias=rng.normal(size=8)), inputs=("x",), output="h"),
        Node(name="relu", op=O.Relu(), inputs=("h",), output="a"),
        Node(name="fc1", op=O.Linear(weight=w2, bias=None), inputs=("a",), output="y"),
    )
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes).validate())


def _linear(seed: int = 1) -> tuple[Graph, np.ndarray]:
    w = np.random.default_rng(seed).normal(size=(4, 5))
    nodes = (Node(name="fc", op=O.Linear(weight=w, bias=np.ones(4)), inputs=("x",), output="y"),)
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 5)),), outputs=("y",), nodes=nodes).validate()), w


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0,1", UniformDomain(low=Values(values=(0.0,)), high=Values(values=(1.0,)))),
        (" -1 , 1 ", UniformDomain(low=Values(values=(-1.0,)), high=Values(values=(1.0,)))),
        ("ball:0.05", BallDomain(eps=0.05)),
        ("margin:0.1", MarginDomain(margin=0.1)),
    ],
)
def test_parse_domain(text: str, expected: object) -> None:
    assert parse_domain(text) == expected


@pytest.mark.parametrize("text", ["", "1", "1,0", "ball:-1", "ball:x", "margin:inf", "nan,1", "0,inf"])
def test_parse_domain_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_domain(text)


def test_boxes_of_each_kind() -> None:
    g = _relu_net()
    box = domain_boxes(g, UniformDomain(low=Values(values=(-1.0, 0.0, 0.5), shape=(3,)),
                                        high=Values(values=(1.0,))), None)
    assert box.kind == "box" and len(box.boxes) == 1
    np.testing.assert_array_equal(box.boxes[0]["x"].lo, [[-1.0, 0.0, 0.5]])
    np.testing.assert_array_equal(box.boxes[0]["x"].hi, [[1.0, 1.0, 1.0]])
    samples = np.array([[[0.0, 1.0, 2.0]], [[1.0, -1.0, 0.5]]])
    balls = domain_boxes(g, BallDomain(eps=0.25), samples)
    assert balls.kind == "ball" and len(balls.boxes) == 2
    lo, hi = balls.boxes[1]["x"].lo, balls.boxes[1]["x"].hi
    # outward: the stored ends enclose x +- eps exactly
    assert np.all(lo <= samples[1] - 0.25) and np.all(hi >= samples[1] + 0.25)
    assert np.all(lo > samples[1] - 0.25 - 1e-12) and np.all(hi < samples[1] + 0.25 + 1e-12)
    # the search boxes lie inside the exact balls (checked in exact rational arithmetic)
    from fractions import Fraction

    for inner, centre in zip(balls.search, samples, strict=True):
        for a, b, c in zip(inner["x"].lo.ravel(), inner["x"].hi.ravel(), centre.ravel(), strict=True):
            assert Fraction(c) - Fraction(0.25) <= Fraction(a) <= Fraction(b) <= Fraction(c) + Fraction(0.25)
    margin = domain_boxes(g, MarginDomain(margin=0.5), samples)
    assert len(margin.boxes) == 1
    assert np.all(margin.boxes[0]["x"].lo <= np.array([[-0.5, -1.5, 0.0]]))
    assert margin.low <= -1.5 and margin.high >= 2.5
    with pytest.raises(UsageError, match="give --inputs"):
        domain_boxes(g, BallDomain(eps=0.1), None)
    with pytest.raises(UsageError, match="unbounded"):
        domain_boxes(g, NormalDomain(mean=Values(values=(0.0,)), std=Values(values=(1.0,))), None)


def test_lower_bound_of_a_linear_map_reaches_its_norm_inside_the_box() -> None:
    g, w = _linear()
    boxes = domain_boxes(g, UniformDomain(low=Values(values=(0.0,)), high=Values(values=(0.5,))), None)
    low = domain_lower(g, boxes, seed=0, budget_s=0.5)
    norm = float(np.linalg.norm(w, 2))
    assert low.value <= norm * (1 + 1e-12)
    assert low.value >= 0.98 * norm  # the ascent finds the top singular direction
    x, y = np.array(low.x), np.array(low.y)
    assert np.all((x >= 0.0) & (x <= 0.5)) and np.all((y >= 0.0) & (y <= 0.5))


def test_lower_bound_is_a_confirmed_quotient_of_a_pair_in_the_domain() -> None:
    g = _relu_net()
    samples = np.array([[[0.3, -0.2, 0.1]]])
    boxes = domain_boxes(g, BallDomain(eps=0.1), samples)
    low = domain_lower(g, boxes, seed=3, budget_s=0.5)
    assert low.value > 0
    x, y = np.array(low.x), np.array(low.y)
    assert np.max(np.abs(x - samples.ravel())) <= 0.1 and np.max(np.abs(y - samples.ravel())) <= 0.1
    f = Executor(g, dtype=torch.float64).flat()
    q = float((f(torch.from_numpy(y)) - f(torch.from_numpy(x))).norm()) / float(np.linalg.norm(y - x))
    assert low.value <= q * (1 + 1e-9)
    # the same seed gives the same number (counted work, no clock)
    assert domain_lower(g, boxes, seed=3, budget_s=0.5).value == low.value


def test_a_budget_below_every_box_smallest_plan_searches_the_first_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    # three balls whose smallest plans cost more than twice the budget: as many as twice the budget
    # buys are searched, here the first (a decision on the sizes and the budget), and the method
    # says how many of them
    from stabaudit.analyses import plan as cost
    from stabaudit.analyses.lower import forward_macs

    g = _relu_net()
    samples = np.array([[[0.3, -0.2, 0.1]], [[-0.4, 0.5, 0.0]], [[0.1, 0.1, -0.3]]])
    boxes = domain_boxes(g, BallDomain(eps=0.1), samples)
    macs = forward_macs(g, dict(g.shapes))
    one = plan(macs, 0.0, 3, 3).box_s
    with cost.ledger() as spent:
        low = domain_lower(g, boxes, seed=3, budget_s=0.6 * one)
    assert "the first 1 of 3 boxes searched" in low.method and low.box == 0
    assert spent[0] == pytest.approx(plan(macs, 0.6 * one, 1, 3).box_s, rel=1e-9)  # one box charged
    # twice the budget does not buy one box: the first is searched when its plan is within the floor
    # (this small network's is), else none is searched, nothing is evaluated or charged
    assert one <= cost.DOMAIN_SEARCH_FLOOR_S
    floor = domain_lower(g, boxes, seed=3, budget_s=0.4 * one)
    assert "the first 1 of 3 boxes searched" in floor.method and floor.value > 0
    monkeypatch.setattr(DL, "DOMAIN_SEARCH_FLOOR_S", 0.9 * one)
    with cost.ledger() as spent:
        none = domain_lower(g, boxes, seed=3, budget_s=0.4 * one)
    assert none.value == 0.0 and spent[0] == 0.0
    assert none.method.startswith(f"not searched: the smallest plan of one box costs {one:.3g} s, above twice the ")
    full = domain_lower(g, boxes, seed=3, budget_s=10.0)
    assert "boxes searched" not in full.method and "3 box(es)" in full.method


def test_plan_is_counted_and_grows_with_the_budget() -> None:
    small, big = plan(1e6, 0.1, 1, 100), plan(1e6, 10.0, 1, 100)
    assert small.points * (1 + small.rounds) < big.points * (1 + big.rounds)
    assert plan(1e6, 1.0, 1, 100) == plan(1e6, 1.0, 1, 100)
    assert plan(1e12, 1.0, 1, 100).points == 2 and plan(1e12, 1.0, 1, 100).rounds == 0  # the smallest plan
    # more boxes share the budget
    assert plan(1e5, 1.0, 10, 5).points < plan(1e5, 1.0, 1, 5).points
    # confirmed pairs: 12 passes each, between 4 and 40
    assert plan(1e6, 10.0, 1, 100).tries == 40 and plan(1e12, 1.0, 1, 100).tries == 4
    # a quarter of the box's work buys them
    assert plan(1e7, 1.0, 1, 100).tries == int(0.25 * 4e9 / (12 * (1e7 + 2e6)))  # 6


def test_the_plan_spends_at_most_its_budget_above_the_smallest_plan() -> None:
    """Its batched calls and confirmations are counted inside the budget (the sample CNN over a box
    at a part of 0.85 s once planned 1.05 s)."""
    for macs, budget, boxes, inputs in [(26250.0, 0.85, 1, 64), (1e6, 10.0, 1, 100), (1e5, 1.0, 10, 5),
                                        (2e5, 0.3, 2, 784)]:
        work = plan(macs, budget, boxes, inputs)
        assert work.points > 2 and 0.5 * budget <= boxes * work.box_s <= budget * (1 + 1e-12)


def test_a_box_whose_error_bound_swamps_the_outputs_is_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error bound that overflows at the box's center and a drawn point: no screening, no pairs,
    and the method says why, where the double-double evaluation is not planned; where it is, the
    box's pairs are confirmed with it; a sane error bound keeps the search."""
    from stabaudit.analyses import lower as L
    from stabaudit.analyses.lower import ForwardErrorModel

    g = _relu_net()
    samples = np.array([[[0.3, -0.2, 0.1]]])
    boxes = domain_boxes(g, BallDomain(eps=0.1), samples)
    assert domain_lower(g, boxes, seed=3, budget_s=0.5).value > 0
    real = ForwardErrorModel.evaluate
    calls = []

    def overflowing(self: ForwardErrorModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
        calls.append(1)
        return real(self, x)[0], float("inf")

    monkeypatch.setattr(ForwardErrorModel, "evaluate", overflowing)
    from stabaudit.analyses import plan as cost

    monkeypatch.setattr(L, "PRECISE_FLOOR_S", 0.0)
    monkeypatch.setattr(L, "PRECISE_SHARE", 0.0)
    with cost.ledger() as spent:
        low = domain_lower(g, boxes, seed=3, budget_s=0.5)
    assert low.value == 0.0 and low.x == () and len(calls) == 1  # an infinite bound at the center decides alone
    assert spent == [0.0]  # a box that is not searched is not charged
    assert "nothing confirmed" in low.method
    assert "rounding-error bound of this network overflows inside the domain" in low.method

    monkeypatch.undo()
    monkeypatch.setattr(ForwardErrorModel, "evaluate", overflowing)
    rescued = domain_lower(g, boxes, seed=3, budget_s=0.5)
    assert rescued.value > 0 and "pairs confirmed in double-double" in rescued.method
    x, y = np.array(rescued.x), np.array(rescued.y)
    assert np.max(np.abs(x - samples.ravel())) <= 0.1 and np.max(np.abs(y - samples.ravel())) <= 0.1
    f = Executor(g, dtype=torch.float64).flat()
    q = float((f(torch.from_numpy(y)) - f(torch.from_numpy(x))).norm()) / float(np.linalg.norm(y - x))
    assert q * (1 - 1e-9) <= rescued.value <= q * (1 + 1e-9)


def test_the_smallest_try_budget_confirms_every_step_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MIN_TRIES pairs per box, the pairs at the best point step by each of 1e-3, 1e-5, 1e-1 and
    1e-7 of the box's width (in that order): a large network whose float64 error bound swamps the
    smallest steps still gets a step that clears it."""
    import stabaudit.analyses.domain_lower as DL
    from stabaudit.analyses import lower

    g = _relu_net()
    samples = np.array([[[0.3, -0.2, 0.1]]])
    boxes = domain_boxes(g, BallDomain(eps=0.1), samples)
    real_plan, real_confirm = DL.plan, lower.confirm_quotient
    monkeypatch.setattr(DL, "plan", lambda *a: DL.Plan(**{**real_plan(*a).__dict__, "tries": DL.MIN_TRIES}))
    steps: list[float] = []

    def recording(model: object, a: torch.Tensor, b: torch.Tensor) -> float:
        steps.append(float((b - a).abs().max()))
        return real_confirm(model, a, b)

    monkeypatch.setattr(lower, "confirm_quotient", recording)
    low = domain_lower(g, boxes, seed=3, budget_s=0.5)
    assert len(steps) == 4 and low.value > 0
    width = 0.2
    ratios = [s / width for s in steps]
    assert [round(float(np.log10(r))) for r in ratios] == [-3, -5, -1, -7]


ACAS = Path(__file__).resolve().parents[3] / "shared" / "models" / "external" / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"


@pytest.mark.skipif(not ACAS.exists(), reason="../shared/models/external is absent")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stalled_starts_begin_again_and_find_the_steep_regions_of_a_real_network(seed: int) -> None:
    """ACAS Xu N(1,1) around a point near its decision boundary (rho = -0.28): the Jacobian norm
    peaks on small activation regions. 50,000 uniform points of the ball reach 157 to 212; a local
    search whose starts stall on a plateau kept 100 to 148 at this budget."""
    from stabaudit.loaders import load_model

    g = with_shapes(load_model(ACAS).graph)
    centre = np.array([-0.27734426308362964, -0.2005733788003488, 0.2364995317549043, 0.21775160925940013,
                       0.19230808918500314]).reshape(1, 1, 1, 1, 5)
    boxes = domain_boxes(g, BallDomain(eps=0.05), centre)
    low = domain_lower(g, boxes, seed=seed, budget_s=0.3)
    assert low.value >= 150.0


def test_a_box_hopeless_in_double_double_too_is_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float64 bound beyond lower.PRECISE_DOUBT: the double-double evaluation at the box's center
    decides first; where its bound swamps the outputs too, the box is not searched, one message
    says both, and the double-double model is not evaluated again."""
    from stabaudit.analyses.lower import ForwardErrorModel
    from stabaudit.analyses.precise import PreciseModel

    g = _relu_net()
    boxes = domain_boxes(g, BallDomain(eps=0.1), np.array([[[0.3, -0.2, 0.1]]]))
    real, real_precise = ForwardErrorModel.evaluate, PreciseModel.evaluate
    precise_calls = []

    def overflowing(self: ForwardErrorModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
        return real(self, x)[0], float("inf")

    def hopeless(self: PreciseModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
        precise_calls.append(1)
        return real_precise(self, x)[0], float("inf")

    monkeypatch.setattr(ForwardErrorModel, "evaluate", overflowing)
    monkeypatch.setattr(PreciseModel, "evaluate", hopeless)
    low = domain_lower(g, boxes, seed=3, budget_s=0.5)
    assert low.value == 0.0 and low.x == () and precise_calls == [1]
    assert ("the float64 rounding-error bound of this network overflows inside the domain; the double-double "
            "error bound of this network overflows inside the domain, so no difference quotient") in low.method
