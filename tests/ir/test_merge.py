"""merge_linear_maps: adjacent linear maps bounded as one operator, exactly and soundly."""

from __future__ import annotations

import numpy as np
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import BoundSettings, RuleContext
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.ir.graph import Node
from stabaudit.ir.passes import merge_linear_maps
from tests.ir.test_passes import _assert_same, _graph


def explicit(graph, shape) -> np.ndarray:
    """The matrix of a linear graph (biases removed by differencing at 0), column by column."""
    ex = Executor(graph, dtype=torch.float64)
    n = int(np.prod(shape))
    zero = ex(torch.zeros(shape, dtype=torch.float64))[0].reshape(-1)
    cols = [
        (ex(torch.eye(n, dtype=torch.float64)[j].reshape(shape))[0].reshape(-1) - zero).numpy()
        for j in range(n)
    ]
    return np.stack(cols, axis=1)


def bound(graph, node: Node):
    ctx = RuleContext(
        input_shapes=tuple(graph.shapes[i] for i in node.inputs),
        output_shape=graph.shapes[node.output],
        settings=BoundSettings(seed=0, power_iterations=50, device="cpu"),
    )
    return bound_node(node, ctx)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_matmul_then_matmul_is_one_exact_operator():
    w1, w2 = rand(8, 5, seed=1), rand(3, 8, seed=2)
    g = _graph((1, 5), [
        Node(name="fc1", op=O.Linear(weight=w1, bias=rand(8, seed=3)), inputs=("x",), output="h"),
        Node(name="fc2", op=O.Linear(weight=w2, bias=rand(3, seed=4)), inputs=("h",), output="y"),
    ])
    m = merge_linear_maps(g)
    assert [n.name for n in m.nodes] == ["fc1+fc2"]
    _assert_same(g, m, (1, 5))
    exact = np.linalg.norm(w2.astype(np.float64) @ w1.astype(np.float64), 2)
    b = bound(m, m.nodes[0])
    assert exact <= b.upper.value <= exact * (1 + 1e-12)
    assert b.lower is not None and b.lower.value <= exact
    product = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
    assert b.upper.value < 0.9 * product  # strictly better than the product of norms


def test_normalisation_before_a_linear_folds_into_its_input_side():
    w = rand(4, 6, seed=5)
    std = np.array([0.2, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=np.float32)
    mean = rand(6, seed=6)
    g = _graph((1, 6), [
        Node(name="norm", op=O.Affine(scale=1 / std, shift=-mean / std), inputs=("x",), output="n"),
        Node(name="fc", op=O.Linear(weight=w), inputs=("n",), output="y"),
    ])
    m = merge_linear_maps(g)
    assert [n.name for n in m.nodes] == ["norm+fc"]
    _assert_same(g, m, (1, 6))
    exact = np.linalg.norm(explicit(g, (1, 6)), 2)
    up = bound(m, m.nodes[0]).upper.value
    assert exact <= up <= exact * (1 + 1e-12)
    assert up < np.max(1 / std) * np.linalg.norm(w, 2)


def test_channel_normalisation_before_a_padded_conv_keeps_a_translation():
    w = rand(4, 3, 3, 3, seed=7)
    std = np.array([0.25, 0.5, 2.0], dtype=np.float32).reshape(1, 3, 1, 1)
    mean = np.array([0.4, 0.5, 0.6], dtype=np.float32).reshape(1, 3, 1, 1)
    conv = O.Conv(weight=w, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    g = _graph((1, 3, 5, 5), [
        Node(name="norm", op=O.Affine(scale=1 / std, shift=-mean / std), inputs=("x",), output="n"),
        Node(name="conv", op=conv, inputs=("n",), output="y"),
    ])
    m = merge_linear_maps(g)
    assert [n.name for n in m.nodes] == ["norm/translation", "norm+conv"]
    assert m.nodes[0].op.scale is None  # a pure translation: not a layer, Lipschitz 1
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 5))
    a = Executor(g, dtype=torch.float64)(torch.from_numpy(x))[0].numpy()
    b = Executor(m, dtype=torch.float64)(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)
    exact = np.linalg.norm(explicit(g, (1, 3, 5, 5)), 2)
    ob = bound(m, m.nodes[1])
    assert exact <= ob.upper.value <= exact * (1 + 1e-6)


def test_pointwise_then_valid_conv_is_one_conv():
    w1 = rand(5, 3, 1, 1, seed=8)
    w2 = rand(2, 5, 3, 3, seed=9)
    c1 = O.Conv(weight=w1, bias=rand(5, seed=10), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    c2 = O.Conv(weight=w2, bias=rand(2, seed=11), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    g = _graph((1, 3, 6, 6), [
        Node(name="c1", op=c1, inputs=("x",), output="h"),
        Node(name="c2", op=c2, inputs=("h",), output="y"),
    ])
    m = merge_linear_maps(g)
    assert [n.name for n in m.nodes] == ["c1+c2"]
    assert m.nodes[0].op.weight.shape == (2, 3, 3, 3)
    _assert_same(g, m, (1, 3, 6, 6))
    exact = np.linalg.norm(explicit(g, (1, 3, 6, 6)), 2)
    ob = bound(m, m.nodes[0])
    assert exact <= ob.upper.value <= exact * (1 + 1e-9)
    assert ob.lower is not None and ob.lower.value <= exact


def test_two_valid_3x3_convs_compose_to_a_5x5():
    w1, w2 = rand(4, 2, 3, 3, seed=12), rand(3, 4, 3, 3, seed=13)
    c = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    g = _graph((1, 2, 9, 9), [
        Node(name="a", op=O.Conv(weight=w1, **c), inputs=("x",), output="h"),
        Node(name="b", op=O.Conv(weight=w2, **c), inputs=("h",), output="y"),
    ])
    m = merge_linear_maps(g)
    assert m.nodes[0].op.weight.shape == (3, 2, 5, 5)
    _assert_same(g, m, (1, 2, 9, 9))


def test_what_is_not_merged():
    w = rand(4, 4, seed=14)
    lin = O.Linear(weight=w)
    relu_between = _graph((1, 4), [
        Node(name="a", op=lin, inputs=("x",), output="h"),
        Node(name="r", op=O.Relu(), inputs=("h",), output="r"),
        Node(name="b", op=lin, inputs=("r",), output="y"),
    ])
    assert merge_linear_maps(relu_between) is relu_between
    used_twice = _graph((1, 4), [
        Node(name="a", op=lin, inputs=("x",), output="h"),
        Node(name="b", op=lin, inputs=("h",), output="y"),
        Node(name="s", op=O.Add(), inputs=("h", "y"), output="z"),
    ])
    assert merge_linear_maps(used_twice) is used_twice
    padded = O.Conv(weight=rand(2, 2, 3, 3, seed=15), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    convs = _graph((1, 2, 5, 5), [
        Node(name="a", op=padded, inputs=("x",), output="h"),
        Node(name="b", op=padded, inputs=("h",), output="y"),
    ])
    assert merge_linear_maps(convs) is convs  # zero padding between: no single convolution


def test_merged_error_is_added_to_the_bound():
    w1, w2 = rand(6, 6, seed=16), rand(6, 6, seed=17)
    g = _graph((1, 6), [
        Node(name="a", op=O.Linear(weight=w1), inputs=("x",), output="h"),
        Node(name="b", op=O.Linear(weight=w2), inputs=("h",), output="y"),
    ])
    m = merge_linear_maps(g)
    op = m.nodes[0].op
    assert 0 < op.error < 1e-12 * np.linalg.norm(op.weight, 2) * 100
    plain = bound(_graph((1, 6), [Node(name="c", op=O.Linear(weight=op.weight), inputs=("x",), output="y")]),
                  Node(name="c", op=O.Linear(weight=op.weight), inputs=("x",), output="y"))
    assert bound(m, m.nodes[0]).upper.value >= plain.upper.value + op.error
