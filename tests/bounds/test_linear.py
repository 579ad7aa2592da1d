"""Tests of the Linear rule: exact SVD norm, soundness of difference quotients, isolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import BoundSettings, Guarantee, RuleContext
from stabaudit.bounds.linear import bound_linear
from stabaudit.errors import InternalError
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import Linear


def single(op, *in_shapes):
    names = tuple(f"x{i}" for i in range(len(in_shapes)))
    node = Node(name="layer", op=op, inputs=names, output="y")
    specs = tuple(TensorSpec(name=n, shape=tuple(s)) for n, s in zip(names, in_shapes, strict=True))
    graph = with_shapes(Graph(inputs=specs, outputs=("y",), nodes=(node,)).validate())
    ctx = RuleContext(input_shapes=tuple(tuple(s) for s in in_shapes), output_shape=graph.shapes["y"], settings=BoundSettings())
    return graph, node, ctx


def explicit_matrix(graph) -> np.ndarray:
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    base = f(torch.zeros(n, dtype=torch.float64))
    return (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) - base).T.numpy()


@pytest.mark.parametrize(("shape", "in_shape"), [((7, 5), (1, 5)), ((3, 12), (1, 4, 12)), ((20, 20), (2, 20))])
def test_linear_matches_the_explicit_operator_norm(shape, in_shape) -> None:
    rng = np.random.default_rng(shape[0])
    op = Linear(weight=rng.standard_normal(shape).astype(np.float32), bias=rng.standard_normal(shape[0]))
    graph, node, ctx = single(op, in_shape)
    ref = float(np.linalg.svd(explicit_matrix(graph), compute_uv=False)[0])  # I (x) W: same norm
    numpy_ref = float(np.linalg.svd(np.asarray(op.weight, dtype=np.float64), compute_uv=False)[0])
    result = bound_node(node, ctx)
    assert result.upper.guarantee is Guarantee.UPPER and result.upper.method == "svd"
    assert result.lower is not None and result.lower.guarantee is Guarantee.LOWER
    assert result.lower.value <= numpy_ref <= result.upper.value
    assert result.upper.value <= numpy_ref * (1 + 1e-6)
    assert math.isclose(ref, numpy_ref, rel_tol=1e-12)
    assert result.seconds >= 0.0


def test_linear_difference_quotients_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(2)
    u, _, vt = np.linalg.svd(rng.standard_normal((6, 6)))
    w = u @ np.diag([3.0, 2.9, 1.0, 0.5, 0.1, 0.0]) @ vt  # nearly degenerate top pair
    graph, node, ctx = single(Linear(weight=w), (1, 6))
    bound = bound_node(node, ctx).upper.value
    f = Executor(graph, dtype=torch.float64).flat()
    x = torch.from_numpy(rng.standard_normal((256, 6)))
    y = x + torch.from_numpy(rng.standard_normal((256, 6)))
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(q.max()) <= bound
    assert float(q.max()) >= 0.5 * bound  # random directions find a good share of it
    # the top right singular vector attains it
    v = torch.from_numpy(vt[0])
    assert float((f(v) - f(0 * v)).norm()) == pytest.approx(3.0, rel=1e-12)


def test_linear_rule_in_isolation() -> None:
    node = Node(name="fc", op=Linear(weight=np.diag([2.0, -5.0, 1.0])), inputs=("a",), output="b")
    ctx = RuleContext(input_shapes=((1, 3),), output_shape=(1, 3))
    result = bound_linear(node, ctx)
    assert result.lower is not None
    assert result.lower.value <= 5.0 <= result.upper.value <= 5.0 * (1 + 1e-12)
    w = np.ones((2, 3))
    w[0, 0] = np.nan
    bad = bound_linear(Node(name="fc", op=Linear(weight=w), inputs=("a",), output="b"), ctx)
    assert bad.upper.value == math.inf and bad.lower is None and bad.notes


def test_linear_shape_mismatch_names_the_node() -> None:
    node = Node(name="fc7", op=Linear(weight=np.ones((2, 3))), inputs=("a",), output="b")
    with pytest.raises(InternalError, match="fc7.*Linear"):
        bound_node(node, RuleContext(input_shapes=((1, 4),), output_shape=(1, 2)))


def test_a_large_linear_layer_names_its_certificate() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((600, 530)) * 0.1
    _, node, ctx = single(Linear(weight=w, bias=None), (1, 530))
    result = bound_node(node, ctx)
    exact = float(np.linalg.norm(w, 2))
    assert result.upper.method == "gram-cholesky" and result.lower is not None
    assert result.lower.value <= exact <= result.upper.value <= exact * (1 + 1e-4)
