"""Tests of stabaudit.analyses.crown: back-substituted ranges of ReLU chains enclose every value the
executor computes, lie inside the interval (IBP) ranges and are tighter than them on deep chains."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stabaudit.analyses.crown import chain_steps, crown_ranges
from stabaudit.analyses.ranges import value_ranges
from stabaudit.bounds.base import Interval
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def relu_chain(seed: int, widths: tuple[int, ...], *, affine: bool = True) -> Graph:
    """input (1, 1, n) -> [Affine] -> Reshape (1, n) -> (Linear + bias -> Relu)* -> Linear."""
    rng = np.random.default_rng(seed)
    n0 = widths[0]
    nodes: list[Node] = []
    cur = "x"
    if affine:
        nodes.append(Node(name="norm", op=O.Affine(scale=rng.uniform(0.5, 2.0, (1, 1, n0)), shift=rng.standard_normal((1, 1, n0))),
                          inputs=(cur,), output="xn"))
        cur = "xn"
    nodes.append(Node(name="flat", op=O.Reshape(shape=(1, n0)), inputs=(cur,), output="f"))
    cur = "f"
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        w = rng.standard_normal((b, a)) / math.sqrt(a)
        nodes.append(Node(name=f"fc{k}", op=O.Linear(weight=w, bias=rng.standard_normal(b) * 0.3), inputs=(cur,), output=f"z{k}"))
        cur = f"z{k}"
        if k < len(widths) - 2:
            nodes.append(Node(name=f"r{k}", op=O.Relu(), inputs=(cur,), output=f"h{k}"))
            cur = f"h{k}"
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 1, n0)),), outputs=(cur,), nodes=tuple(nodes)).validate())


def _values(graph: Graph, points: np.ndarray) -> dict[str, np.ndarray]:
    ex = Executor(graph, dtype=torch.float64)
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for p in points:
            for k, v in ex.run({"x": torch.from_numpy(p)}, keep=True).items():
                out.setdefault(k, []).append(v.numpy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize(("seed", "widths", "radius"), [(0, (3, 8, 8, 8, 2), 0.3), (1, (4, 16, 16, 16, 16, 3), 0.05),
                                                        (2, (2, 6, 6, 1), 2.0), (3, (5, 10, 10, 10, 10, 10, 5), 0.5)])
def test_crown_ranges_enclose_samples_and_lie_inside_ibp(seed: int, widths: tuple[int, ...], radius: float) -> None:
    graph = relu_chain(seed, widths)
    rng = np.random.default_rng(seed + 100)
    x0 = rng.standard_normal((1, 1, widths[0]))
    box = {"x": Interval(lo=x0 - radius, hi=x0 + radius)}
    ibp = value_ranges(graph, box)
    tight = crown_ranges(graph, box, ibp)
    assert tight is not None and set(tight) == set(ibp)
    corners = [np.where(np.array(bits).reshape(x0.shape) > 0, x0 + radius, x0 - radius)
               for bits in itertools.product((0, 1), repeat=widths[0])]
    points = np.concatenate([rng.uniform(x0 - radius, x0 + radius, size=(300, *x0.shape)), np.stack(corners)])
    for name, v in _values(graph, points).items():
        iv = tight[name]
        assert np.all(iv.lo <= v) and np.all(v <= iv.hi), name
        assert np.all(ibp[name].lo <= iv.lo) and np.all(iv.hi <= ibp[name].hi), name
    # the back-substitution must beat the intervals on the output (by 10 % from three hidden layers)
    last = graph.outputs[0]
    factor = 0.9 if len(widths) >= 5 else 0.99
    assert np.sum(tight[last].hi - tight[last].lo) < factor * np.sum(ibp[last].hi - ibp[last].lo)


def test_crown_ranges_of_a_point_box_are_the_value() -> None:
    graph = relu_chain(5, (3, 6, 6, 2))
    x0 = np.random.default_rng(0).standard_normal((1, 1, 3))
    tight = crown_ranges(graph, {"x": Interval(lo=x0, hi=x0)})
    assert tight is not None
    y = _values(graph, x0[None])[graph.outputs[0]][0]
    iv = tight[graph.outputs[0]]
    assert np.all(iv.lo <= y) and np.all(y <= iv.hi)
    assert np.max(iv.hi - iv.lo) < 1e-12 * max(1.0, float(np.max(np.abs(y))))


def test_crown_chain_recognition() -> None:
    graph = relu_chain(6, (3, 4, 2), affine=False)
    assert not isinstance(chain_steps(graph), str)
    # a Sigmoid is not part of a ReLU chain: no back-substituted ranges
    nodes = list(graph.nodes)
    nodes[2] = Node(name="r0", op=O.Sigmoid(), inputs=nodes[2].inputs, output=nodes[2].output)
    other = with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=tuple(nodes)).validate())
    assert isinstance(chain_steps(other), str)
    x0 = np.zeros((1, 1, 3))
    assert crown_ranges(other, {"x": Interval(lo=x0 - 1, hi=x0 + 1)}) is None
