"""Tests of the Affine rule: exact diagonal gain, broadcasting, soundness, isolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import Guarantee, RuleContext
from stabaudit.bounds.normalization import bound_affine
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import Affine


def single(op, in_shape):
    node = Node(name="bn", op=op, inputs=("x",), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=in_shape),), outputs=("y",), nodes=(node,)).validate())
    return graph, node, RuleContext(input_shapes=(in_shape,), output_shape=graph.shapes["y"])


def explicit_matrix(graph) -> np.ndarray:
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    base = f(torch.zeros(n, dtype=torch.float64))
    return (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) - base).T.numpy()


CASES = [
    # scale shape, input shape
    ((1, 4, 1, 1), (1, 4, 3, 3)),  # folded BatchNorm
    ((5,), (1, 2, 5)),  # last-axis scale
    ((), (1, 7)),  # scalar
    ((2, 3, 1), (1, 3, 4)),  # scale larger than the input: the output repeats x twice
]


@pytest.mark.parametrize(("scale_shape", "in_shape"), CASES)
def test_affine_equals_the_explicit_operator_norm(scale_shape, in_shape) -> None:
    rng = np.random.default_rng(len(in_shape))
    scale = rng.standard_normal(scale_shape)
    graph, node, ctx = single(Affine(scale=scale, shift=rng.standard_normal(scale_shape)), in_shape)
    exact = float(np.linalg.svd(explicit_matrix(graph), compute_uv=False)[0])
    result = bound_node(node, ctx)
    assert result.lower is not None and result.lower.guarantee is Guarantee.LOWER
    assert result.lower.value <= exact * (1 + 1e-15) and exact <= result.upper.value * (1 + 1e-15)
    assert result.upper.value == pytest.approx(exact, rel=1e-12)
    if graph.shapes["y"] == in_shape:
        assert result.upper.value == result.lower.value == float(np.max(np.abs(scale)))


def test_affine_difference_quotients_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(4)
    graph, node, ctx = single(Affine(scale=rng.standard_normal((1, 3, 1, 1)), shift=np.ones((1, 3, 1, 1))), (1, 3, 4, 4))
    bound = bound_node(node, ctx).upper.value
    f = Executor(graph, dtype=torch.float64).flat()
    x = torch.from_numpy(rng.standard_normal((128, 48)))
    y = x + torch.from_numpy(rng.standard_normal((128, 48)))
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(q.max()) <= bound * (1 + 1e-12)
    # a perturbation on the channel with the largest |scale| attains it
    assert float(q.max()) >= 0.3 * bound


def test_affine_rule_in_isolation() -> None:
    node = Node(name="n", op=Affine(scale=np.array([0.5, -3.0]), shift=None), inputs=("a",), output="b")
    result = bound_affine(node, RuleContext(input_shapes=((1, 2),), output_shape=(1, 2)))
    assert result.upper.value == 3.0 and result.lower is not None and result.lower.value == 3.0
    shift_only = Node(name="n", op=Affine(scale=None, shift=np.ones(2)), inputs=("a",), output="b")
    assert bound_affine(shift_only, RuleContext(input_shapes=((1, 2),), output_shape=(1, 2))).upper.value == 1.0
    nan = Node(name="n", op=Affine(scale=np.array([np.nan, 1.0])), inputs=("a",), output="b")
    bad = bound_affine(nan, RuleContext(input_shapes=((1, 2),), output_shape=(1, 2)))
    assert bad.upper.value == math.inf and bad.lower is None


@pytest.mark.parametrize("n", [1, 5])
def test_rms_norm_constant_is_attained_at_zero(n: int) -> None:
    """RMSNorm (LayerNorm centered=False): Lip = max|scale| / sqrt(eps), the Jacobian at 0 being
    diag(scale) / sqrt(eps); a group of one entry is not constant (x / sqrt(x^2 + eps))."""
    from stabaudit.ir.ops import LayerNorm

    rng = np.random.default_rng(4)
    scale = rng.uniform(-2.0, 2.0, n)
    eps = 1e-4
    op = LayerNorm(axis=1, epsilon=eps, scale=scale, centered=False)
    graph, node, ctx = single(op, (3, n))
    bound = bound_node(node, ctx)
    exact = float(np.max(np.abs(scale))) / math.sqrt(eps)
    assert bound.lower.guarantee is Guarantee.LOWER
    assert exact * (1 - 1e-14) <= bound.upper.value <= exact * (1 + 1e-14)
    assert exact * (1 - 1e-14) <= bound.lower.value <= exact
    ex = Executor(graph, dtype=torch.float64)
    for k in range(20):
        x = torch.from_numpy(rng.normal(size=(3, n)) * 10.0 ** (k % 4 - 3))
        jac = torch.autograd.functional.jacobian(lambda t: ex(t)[0], x).reshape(3 * n, 3 * n)
        assert float(torch.linalg.matrix_norm(jac, 2)) <= bound.upper.value
    jac0 = torch.autograd.functional.jacobian(lambda t: ex(t)[0], torch.zeros(3, n, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(jac0.reshape(3 * n, 3 * n), 2)) == pytest.approx(exact, rel=1e-12)
