"""ReLU-type units at the samples: kink shares (SA301) and dead units (SA303) on hand-built nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.activations import activation_units
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.loaders import load_model


def relu_net(path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    """Gemm(x, W, b) -> Relu -> Gemm(identity) on [1, n] (float64-exact small integers)."""
    n_out, n_in = w.shape
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="fc", transB=1),
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "eye"], ["y"], name="head", transB=1),
    ]
    init = {
        "w": w.astype(np.float32),
        "b": b.astype(np.float32),
        "eye": np.eye(n_out, dtype=np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "relu_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(v, k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_unit_exactly_at_its_kink_is_counted(tmp_path):
    # z = W x + b: at x = (1, 2) unit 0 is 1*1 + 1*2 - 3 = 0 exactly (its kink), unit 1 is 5, unit 2 is -4
    w = np.array([[1.0, 1.0], [2.0, 1.0], [-1.0, -1.0]])
    b = np.array([-3.0, 1.0, -1.0])
    graph = load_model(relu_net(tmp_path / "m.onnx", w, b)).graph
    x = np.array([[1.0, 2.0]])
    result = activation_units(graph, x, eps=0.0)
    (layer,) = result.layers
    assert layer.op == "Relu" and layer.units == 3
    assert layer.near_kink == 1 and layer.share == pytest.approx(1 / 3)
    # a second sample away from every kink halves the share; eps = 0.5 reaches no other unit
    two = np.array([[1.0, 2.0], [3.0, 3.0]])  # z = (3, 10, -7)
    assert activation_units(graph, two, eps=0.5).layers[0].near_kink == 1
    assert activation_units(graph, two, eps=0.5).max_share == pytest.approx(1 / 6)
    # eps reaches a unit at distance exactly eps (|z - 0| <= eps)
    assert activation_units(graph, np.array([[3.0, 3.0]]), eps=3.0).layers[0].near_kink == 1


def test_dead_units_are_counted_exactly(tmp_path):
    # unit 0: z = x0 + x1 - 3 (active at (2, 2)); unit 1: z = -x0 - 1 (<= 0 for x0 >= -1: dead);
    # unit 2: z = x1 - 2 (exactly 0 at (1, 2), -1 at (2, 1): never > 0, dead); unit 3: z = x0 (alive)
    w = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = np.array([-3.0, -1.0, -2.0, 0.0])
    graph = load_model(relu_net(tmp_path / "m.onnx", w, b)).graph
    x = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])
    result = activation_units(graph, x, eps=0.01)
    (layer,) = result.layers
    assert layer.dead == 2 and result.dead == 2
    # on the first two samples alone unit 0 is never active either (z = 0 and 0)
    assert activation_units(graph, x[:2], eps=0.01).dead == 3


def test_kinks_of_each_relu_type_and_smooth_layers_are_ignored():
    z = np.array([[-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]])
    nodes = (
        Node(name="clip", op=O.Clip(min=-1.0, max=1.0), inputs=("x",), output="a"),
        Node(name="hsig", op=O.HardSigmoid(alpha=0.5, beta=0.5), inputs=("x",), output="b"),
        Node(name="hswish", op=O.HardSwish(), inputs=("x",), output="c"),
        Node(name="leaky", op=O.LeakyRelu(alpha=0.1), inputs=("x",), output="d"),
        Node(name="tanh", op=O.Tanh(), inputs=("x",), output="e"),
        Node(name="add1", op=O.Add(), inputs=("a", "b"), output="f"),
        Node(name="add2", op=O.Add(), inputs=("c", "d"), output="g"),
        Node(name="add3", op=O.Add(), inputs=("f", "g"), output="h"),
        Node(name="add4", op=O.Add(), inputs=("h", "e"), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 6)),), outputs=("y",), nodes=nodes))
    result = activation_units(graph, z, eps=0.0)
    by = {layer.layer: layer for layer in result.layers}
    assert set(by) == {"clip", "hsig", "hswish", "leaky"}  # tanh is smooth
    assert by["clip"].near_kink == 2  # z = -1 and 1
    assert by["hsig"].near_kink == 2  # 0.5 z + 0.5 in {0, 1}: z = -1 and 1
    assert by["hswish"].near_kink == 2  # z = -3 and 3
    assert by["leaky"].near_kink == 1  # z = 0
    # flat pieces: clip at or beyond +-1 (4 units), hard sigmoid likewise (4), hard swish z <= -3 (1)
    assert (by["clip"].dead, by["hsig"].dead, by["hswish"].dead, by["leaky"].dead) == (4, 4, 1, 0)


def test_no_relu_type_layer_gives_no_layers():
    nodes = (Node(name="t", op=O.Tanh(), inputs=("x",), output="y"),)
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=nodes))
    result = activation_units(graph, np.zeros((3, 2)), eps=0.1)
    assert result.layers == () and result.max_share == 0.0 and result.dead == 0
