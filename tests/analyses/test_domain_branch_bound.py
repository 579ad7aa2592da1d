"""The branch and bound over activation regions inside the domain analysis: where it runs, what
it takes of its budget, and its lower end against the regions a grid meets."""

from __future__ import annotations

import numpy as np

from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.domain_bound import domain_bound, domain_boxes
from stabaudit.analyses.samples import BallDomain
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _chain(act: O.Op) -> Graph:
    rng = np.random.default_rng(5)
    sizes = (2, 8, 8, 2)
    nodes: list[Node] = []
    cur = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w, bias = rng.standard_normal((b, a)), rng.standard_normal(b)
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=bias), inputs=(cur,), output=f"h{i}"))
        cur = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(name=f"act{i}", op=act, inputs=(cur,), output=f"a{i}"))
            cur = f"a{i}"
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=(cur,), nodes=tuple(nodes)))


def test_the_branch_and_bound_takes_its_budget_only_where_it_runs() -> None:
    relu = _chain(O.Relu())
    boxes = domain_boxes(relu, BallDomain(eps=0.2), np.array([[0.3, -0.2], [1.5, 1.0]]))
    found = domain_bound(relu, rule_bounds(relu), boxes, bb_budget_s=1.0)
    assert found.bb_budget_s == 1.0 and found.lower_point is not None
    # its lower end is a region's norm at a point of one of the balls, and at most the upper end
    point = np.array(found.lower_point)
    assert min(float(np.max(np.abs(point - c))) for c in ([0.3, -0.2], [1.5, 1.0])) <= 0.2
    assert 0.0 < found.lower <= found.upper.value
    # not a ReLU chain (tanh): no branch and bound, none of its budget taken
    tanh = _chain(O.Tanh())
    box = domain_boxes(tanh, BallDomain(eps=0.2), np.array([[0.3, -0.2]]))
    other = domain_bound(tanh, rule_bounds(tanh), box, bb_budget_s=1.0)
    assert other.bb_budget_s == 0.0 and other.lower_point is None and other.lower == 0.0
