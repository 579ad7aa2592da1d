"""Tests of the structural rules: isometries, padding, broadcast sums and concatenation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import Combine, RuleContext
from stabaudit.bounds.structural import bound_add, bound_concat, bound_pad, bound_sub
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import Add, Concat, Pad, Reshape, Sub, Transpose


def single(op, *in_shapes):
    names = tuple(f"x{i}" for i in range(len(in_shapes)))
    node = Node(name="s", op=op, inputs=names, output="y")
    specs = tuple(TensorSpec(name=n, shape=tuple(s)) for n, s in zip(names, in_shapes, strict=True))
    graph = with_shapes(Graph(inputs=specs, outputs=("y",), nodes=(node,)).validate())
    return graph, node, RuleContext(input_shapes=tuple(tuple(s) for s in in_shapes), output_shape=graph.shapes["y"])


def explicit_matrix(graph) -> np.ndarray:
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    base = f(torch.zeros(n, dtype=torch.float64))
    return (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) - base).T.numpy()


def norm2(mat: np.ndarray) -> float:
    return float(np.linalg.svd(mat, compute_uv=False)[0])


@pytest.mark.parametrize(
    ("op", "shapes"),
    [
        (Reshape(shape=(1, 12)), [(1, 3, 4)]),
        (Transpose(perm=(0, 2, 1)), [(1, 3, 4)]),
        (Pad(pads=(0, 1, 2, 0, 0, 1), value=3.0), [(1, 2, 3)]),
        (Pad(pads=(0, 0, -1, 0, 1, 0)), [(1, 2, 3)]),  # a negative pad crops
        (Concat(axis=1), [(1, 2, 3), (1, 1, 3)]),
        (Add(), [(1, 2, 3), (1, 2, 3)]),
        (Add(), [(1, 2, 3), (1, 1, 3)]),  # second input broadcast twice
        (Sub(), [(1, 2, 3), (3,)]),  # second input broadcast twice (rank broadcast)
        (Add(), [(1, 1, 1), (1, 4, 2)]),  # first input broadcast 8 times
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, list) else str(v),
)
def test_structural_bound_equals_the_explicit_joint_norm(op, shapes) -> None:
    graph, node, ctx = single(op, *shapes)
    exact = norm2(explicit_matrix(graph))  # the map of the joint (concatenated) input
    result = bound_node(node, ctx)
    assert result.lower is not None
    assert result.lower.value <= exact * (1 + 1e-15) and exact <= result.upper.value * (1 + 1e-15)
    assert result.upper.value == pytest.approx(exact, rel=1e-15)


def test_add_gains_are_the_sqrt_of_the_broadcast_repetitions() -> None:
    graph, node, ctx = single(Add(), (1, 1, 1), (1, 4, 2))
    result = bound_node(node, ctx)
    assert result.combine is Combine.SUM
    assert result.input_gains[1] == 1.0
    assert math.sqrt(8) <= result.input_gains[0] <= math.sqrt(8) * (1 + 1e-15)  # rounded up
    # each input alone: ||B_i d|| / ||d|| = gain_i exactly
    mat = explicit_matrix(graph)
    assert norm2(mat[:, :1]) == pytest.approx(math.sqrt(8)) and norm2(mat[:, 1:]) == pytest.approx(1.0)
    # soundness of the SUM combination: ||dy|| <= sum_i gain_i ||dx_i||
    rng = np.random.default_rng(0)
    f = Executor(graph, dtype=torch.float64)
    for _ in range(50):
        a, b = torch.from_numpy(rng.standard_normal((1, 1, 1))), torch.from_numpy(rng.standard_normal((1, 4, 2)))
        da, db = torch.from_numpy(rng.standard_normal((1, 1, 1))), torch.from_numpy(rng.standard_normal((1, 4, 2)))
        dy = f(a + da, b + db)[0] - f(a, b)[0]
        assert float(dy.norm()) <= result.input_gains[0] * float(da.norm()) + result.input_gains[1] * float(db.norm()) + 1e-12


def test_concat_stacks_with_unit_gains() -> None:
    _, node, ctx = single(Concat(axis=2), (1, 2, 3), (1, 2, 1), (1, 2, 2))
    result = bound_node(node, ctx)
    assert result.combine is Combine.STACK and result.input_gains == (1.0, 1.0, 1.0)
    assert result.upper.value == 1.0


def test_structural_difference_quotients_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(1)
    for op, shapes in [(Sub(), [(1, 2, 3), (1, 1, 3)]), (Pad(pads=(1, 0, 0, 2)), [(2, 3)])]:
        graph, node, ctx = single(op, *shapes)
        bound = bound_node(node, ctx).upper.value
        f = Executor(graph, dtype=torch.float64).flat()
        n = sum(int(np.prod(s)) for s in shapes)
        x = torch.from_numpy(rng.standard_normal((128, n)))
        y = x + torch.from_numpy(rng.standard_normal((128, n)))
        q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
        assert float(q.max()) <= bound * (1 + 1e-12)


def test_structural_rules_in_isolation() -> None:
    add = bound_add(Node(name="r", op=Add(), inputs=("a", "b"), output="c"),
                    RuleContext(input_shapes=((1, 4), (1, 4)), output_shape=(1, 4)))
    assert add.input_gains == (1.0, 1.0) and add.upper.value == pytest.approx(math.sqrt(2))
    sub = bound_sub(Node(name="r", op=Sub(), inputs=("a", "b"), output="c"),
                    RuleContext(input_shapes=((1, 4), (1, 1)), output_shape=(1, 4)))
    assert sub.input_gains == (1.0, 2.0) and sub.upper.value == pytest.approx(math.sqrt(5))
    pad = bound_pad(Node(name="p", op=Pad(pads=(0, 0, 0, 0)), inputs=("a",), output="b"),
                    RuleContext(input_shapes=((1, 4),), output_shape=(1, 4)))
    assert pad.upper.value == 1.0
    crop_all = bound_pad(Node(name="p", op=Pad(pads=(0, -4, 0, 0)), inputs=("a",), output="b"),
                         RuleContext(input_shapes=((1, 4),), output_shape=(1, 0)))
    assert crop_all.upper.value == 0.0
    cat = bound_concat(Node(name="c", op=Concat(axis=1), inputs=("a", "b"), output="c"),
                       RuleContext(input_shapes=((1, 2), (1, 3)), output_shape=(1, 5)))
    assert cat.input_gains == (1.0, 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        bound_add(Node(name="r", op=Add(), inputs=("a", "b"), output="c"),
                  RuleContext(input_shapes=((1, 3), (1, 4)), output_shape=(1, 4)))
