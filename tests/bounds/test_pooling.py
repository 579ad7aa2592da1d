"""Tests of the pooling rules: MaxPool window coverage, AveragePool exact Kronecker norm, global pools."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import Guarantee, RuleContext
from stabaudit.bounds.pooling import avg_pool_matrix_1d, bound_avg_pool, bound_max_pool
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool


def single(op, in_shape):
    node = Node(name="pool", op=op, inputs=("x",), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=in_shape),), outputs=("y",), nodes=(node,)).validate())
    return graph, node, RuleContext(input_shapes=(in_shape,), output_shape=graph.shapes["y"])


def explicit_matrix(graph) -> np.ndarray:
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    base = f(torch.zeros(n, dtype=torch.float64))
    return (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) - base).T.numpy()


def quotients(graph, rng, pairs: int = 256, step: float = 1.0) -> float:
    f = Executor(graph, dtype=torch.float64).flat()
    n = int(np.prod(graph.inputs[0].shape))
    x = torch.from_numpy(rng.standard_normal((pairs, n)))
    y = x + torch.from_numpy(rng.standard_normal((pairs, n)) * step)
    return float(((torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)).max())


MAX_POOLS = [
    # kernel, strides, pads, dilations, ceil_mode, input shape, expected sqrt(coverage)
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, (1, 2, 6, 6), 1.0),
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, (1, 1, 6, 6), 3.0),
    ((3, 3), (2, 2), (1, 0, 1, 0), (1, 1), True, (1, 1, 7, 6), 2.0),
    ((3,), (1,), (0, 0), (2,), False, (1, 1, 10), math.sqrt(3)),
    ((3, 2), (2, 1), (1, 0, 1, 1), (1, 1), False, (1, 1, 5, 4), 2.0),
]


@pytest.mark.parametrize("case", MAX_POOLS)
def test_max_pool_bound_is_the_executors_exact_coverage(case) -> None:
    kernel, strides, pads, dilations, ceil_mode, in_shape, expected = case
    graph, node, ctx = single(MaxPool(kernel=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode), in_shape)
    result = bound_node(node, ctx)
    assert result.lower is not None and result.lower.guarantee is Guarantee.LOWER
    # slow exact reference: x = e_j (zeros elsewhere) puts a 1 in exactly the outputs whose
    # window reads j; the spike construction then attains sqrt(max count)
    f = Executor(graph, dtype=torch.float64).flat()
    n = int(np.prod(in_shape))
    counts = (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) == 1.0).sum(dim=1)
    j = int(counts.argmax())
    assert math.sqrt(int(counts.max())) == pytest.approx(expected)
    x = torch.zeros(n, dtype=torch.float64)
    x[j] = 1.0
    ratio = float((f(1.5 * x) - f(x)).norm() / (0.5 * x).norm())
    assert ratio == pytest.approx(expected, rel=1e-12)
    assert result.lower.value <= ratio * (1 + 1e-15) and ratio <= result.upper.value * (1 + 1e-15)
    assert result.upper.value == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("case", MAX_POOLS[:3])
def test_max_pool_difference_quotients_never_exceed_the_bound(case) -> None:
    kernel, strides, pads, dilations, ceil_mode, in_shape, _ = case
    graph, node, ctx = single(MaxPool(kernel=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode), in_shape)
    bound = bound_node(node, ctx).upper.value
    rng = np.random.default_rng(0)
    assert quotients(graph, rng) <= bound * (1 + 1e-12)
    assert quotients(graph, rng, step=1e-3) <= bound * (1 + 1e-12)


AVG_POOLS = [
    # kernel, strides, pads, ceil_mode, count_include_pad, input shape
    ((2, 2), (2, 2), (0, 0, 0, 0), False, False, (1, 2, 6, 6)),
    ((3, 3), (1, 1), (1, 1, 1, 1), False, False, (1, 1, 5, 6)),
    ((3, 3), (1, 1), (1, 1, 1, 1), False, True, (1, 1, 5, 6)),
    ((3, 2), (2, 2), (1, 0, 0, 1), True, False, (1, 1, 7, 7)),  # asymmetric pads, ceil mode
    ((3, 3), (2, 2), (1, 1, 1, 1), True, True, (1, 1, 6, 6)),  # ceil-mode windows clipped at the border
    ((4,), (3,), (2, 1), False, True, (1, 2, 11)),  # 1-D
    ((2, 2, 2), (1, 2, 2), (0, 1, 0, 1, 0, 1), False, False, (1, 1, 3, 4, 4)),  # 3-D
]


@pytest.mark.parametrize("case", AVG_POOLS)
def test_avg_pool_bound_equals_the_explicit_norm(case) -> None:
    kernel, strides, pads, ceil_mode, cip, in_shape = case
    op = AvgPool(kernel=kernel, strides=strides, pads=pads, dilations=(1,) * len(kernel), ceil_mode=ceil_mode,
                 count_include_pad=cip)
    graph, node, ctx = single(op, in_shape)
    exact = float(np.linalg.svd(explicit_matrix(graph), compute_uv=False)[0])
    result = bound_node(node, ctx)
    assert result.lower is not None and result.upper.method == "kronecker-svd"
    assert result.lower.value <= exact <= result.upper.value
    assert abs(result.upper.value - exact) <= 1e-9 and abs(result.lower.value - exact) <= 1e-9


def test_avg_pool_one_dimensional_matrix_matches_the_executor() -> None:
    op = AvgPool(kernel=(3,), strides=(2,), pads=(1, 2), dilations=(1,), ceil_mode=True, count_include_pad=False)
    graph, _, ctx = single(op, (1, 1, 8))
    mat = avg_pool_matrix_1d(8, ctx.output_shape[2], 3, 2, 1, 2, 1, False)
    np.testing.assert_allclose(mat, explicit_matrix(graph), atol=1e-15)


def test_avg_pool_difference_quotients_never_exceed_the_bound() -> None:
    kernel, strides, pads, ceil_mode, cip, in_shape = AVG_POOLS[3]
    op = AvgPool(kernel=kernel, strides=strides, pads=pads, dilations=(1, 1), ceil_mode=ceil_mode, count_include_pad=cip)
    graph, node, ctx = single(op, in_shape)
    assert quotients(graph, np.random.default_rng(1)) <= bound_node(node, ctx).upper.value


def test_global_pools_match_the_explicit_norm() -> None:
    graph, node, ctx = single(GlobalAvgPool(), (1, 3, 4, 5))
    exact = float(np.linalg.svd(explicit_matrix(graph), compute_uv=False)[0])
    result = bound_node(node, ctx)
    assert exact == pytest.approx(1 / math.sqrt(20), rel=1e-14)
    assert result.lower is not None and result.lower.value <= 1 / math.sqrt(20) <= result.upper.value
    ggraph, gnode, gctx = single(GlobalMaxPool(), (1, 3, 4, 5))
    gresult = bound_node(gnode, gctx)
    assert gresult.upper.value == 1.0 and gresult.lower is not None and gresult.lower.value == 1.0
    assert quotients(ggraph, np.random.default_rng(2)) <= 1.0 + 1e-15
    assert quotients(graph, np.random.default_rng(3)) <= result.upper.value


def test_pool_rules_in_isolation() -> None:
    node = Node(name="p", op=MaxPool(kernel=(2,), strides=(1,), pads=(0, 0), dilations=(1,)), inputs=("a",), output="b")
    r = bound_max_pool(node, RuleContext(input_shapes=((1, 1, 5),), output_shape=(1, 1, 4)))
    assert r.lower is not None and r.lower.value <= math.sqrt(2) <= r.upper.value
    # 1-D average of 2 with stride 2 over 4 entries: rows (1/2, 1/2), norm 1/sqrt(2)
    anode = Node(name="a", op=AvgPool(kernel=(2,), strides=(2,), pads=(0, 0), dilations=(1,)), inputs=("a",), output="b")
    ra = bound_avg_pool(anode, RuleContext(input_shapes=((1, 1, 4),), output_shape=(1, 1, 2)))
    assert ra.lower is not None and ra.lower.value <= 1 / math.sqrt(2) <= ra.upper.value <= (1 + 1e-12) / math.sqrt(2)
