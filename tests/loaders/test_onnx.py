"""Tests of the ONNX loader: every operator against onnxruntime, folding, patterns, errors."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.errors import ModelLoadError, UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel, ModelFormat
from stabaudit.loaders.onnx import load_onnx

F = TensorProto.FLOAT


# ---- building models -----------------------------------------------------------------------------
def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def save(tmp_path: Path, nodes: Sequence[Any], inputs: Mapping[str, Sequence[int | str] | None],
         outputs: Sequence[str] = ("y",), params: Mapping[str, Any] | None = None,
         opset: int = 17, name: str = "model.onnx", elem: int = F) -> Path:
    """Write a model; ``inputs`` maps names to shapes (str dims are symbolic), ``params`` become
    initializers."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(k, elem, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, elem, None) for k in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (params or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return path


def run_both(lm: LoadedModel, seed: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The engine (float64) and onnxruntime on the same seeded float32 inputs."""
    rng = np.random.default_rng(seed)
    xs = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in lm.graph.inputs}
    ex = Executor(lm.graph, dtype=torch.float64)
    ours = ex(*[torch.from_numpy(xs[s.name].astype(np.float64)) for s in lm.graph.inputs])
    return [o.detach().numpy() for o in ours], lm.reference(xs)


def check(path: Path, input_shape: tuple[int, ...] | None = None, tol: float = 1e-5) -> LoadedModel:
    lm = load_onnx(path, input_shape=input_shape)
    ours, ref = run_both(lm)
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == r.shape
        np.testing.assert_allclose(o, r, rtol=tol, atol=tol)
    return lm


def ir_ops(lm: LoadedModel) -> list[str]:
    return [n.op.type.value for n in lm.graph.nodes]


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# ---- operator cases: (id, nodes, inputs, params, opset, expected IR ops) ---------------------------
X4 = {"x": [1, 3, 8, 8]}
W = rand(4, 3, 3, 3, seed=2)
B4 = rand(4, seed=3)
CASES: list[tuple[str, list[Any], dict[str, Any], dict[str, Any], int, list[str]]] = [
    ("gemm_transB", [node("Gemm", ["x", "w", "b"], transB=1)], {"x": [1, 5]},
     {"w": rand(3, 5), "b": rand(3)}, 17, ["Linear"]),
    ("gemm_plain_alpha_beta", [node("Gemm", ["x", "w", "b"], alpha=0.5, beta=2.0)], {"x": [1, 5]},
     {"w": rand(5, 3), "b": rand(1, 3)}, 17, ["Linear"]),
    ("gemm_row_bias", [node("Gemm", ["x", "w", "b"], transB=1)], {"x": [3, 5]},
     {"w": rand(4, 5), "b": rand(3, 1)}, 17, ["Linear", "Affine"]),
    ("gemm_transA", [node("Gemm", ["x", "w"], transA=1)], {"x": [5, 2]}, {"w": rand(5, 3)}, 17,
     ["Transpose", "Linear"]),
    ("matmul", [node("MatMul", ["x", "w"], ["h"]), node("Add", ["h", "b"])], {"x": [1, 2, 6]},
     {"w": rand(6, 4), "b": rand(4)}, 17, ["Linear", "Affine"]),
    ("matmul_vector", [node("MatMul", ["x", "w"])], {"x": [2, 6]}, {"w": rand(6)}, 17, ["Linear", "Reshape"]),
    ("add_sub_var", [node("Add", ["x", "z"], ["h"]), node("Sub", ["h", "x"])], {"x": [2, 3], "z": [1, 3]},
     {}, 17, ["Add", "Sub"]),
    ("const_minus_x", [node("Sub", ["c", "x"])], {"x": [1, 3, 4]}, {"c": rand(3, 1)}, 17, ["Affine"]),
    ("x_minus_const", [node("Sub", ["x", "c"])], {"x": [1, 3, 4]}, {"c": rand(4)}, 17, ["Affine"]),
    ("const_times_x", [node("Mul", ["c", "x"])], {"x": [1, 3, 4]}, {"c": rand(1, 3, 1)}, 17, ["Affine"]),
    ("x_div_const", [node("Div", ["x", "c"])], {"x": [1, 3, 4]}, {"c": np.float32(0.3081)}, 17, ["Affine"]),
    ("const_plus_x", [node("Add", ["c", "x"])], {"x": [1, 3, 4]}, {"c": rand(3, 4)}, 17, ["Affine"]),
    ("neg_sum", [node("Neg", ["x"], ["n"]), node("Sum", ["n", "x", "c"])], {"x": [2, 3]},
     {"c": rand(3)}, 17, ["Affine", "Add", "Affine"]),
    ("conv2d", [node("Conv", ["x", "w", "b"], pads=[1, 0, 2, 1], strides=[2, 1])], X4, {"w": W, "b": B4}, 17,
     ["Conv"]),
    ("conv2d_same_upper", [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])], X4, {"w": W},
     17, ["Conv"]),
    ("conv2d_same_lower", [node("Conv", ["x", "w"], auto_pad="SAME_LOWER", strides=[2, 3])], X4,
     {"w": rand(4, 3, 4, 2)}, 17, ["Conv"]),
    ("conv2d_dilated", [node("Conv", ["x", "w"], pads=[2, 1, 2, 1], dilations=[2, 1])], X4, {"w": W}, 17,
     ["Conv"]),
    ("conv2d_valid_groups", [node("Conv", ["x", "w"], auto_pad="VALID", group=3)], {"x": [1, 3, 7, 7]},
     {"w": rand(6, 1, 3, 3)}, 17, ["Conv"]),
    ("conv1d", [node("Conv", ["x", "w"], pads=[2, 1])], {"x": [1, 2, 9]}, {"w": rand(3, 2, 4)}, 17, ["Conv"]),
    ("conv3d", [node("Conv", ["x", "w", "b"], strides=[1, 2, 2])], {"x": [1, 2, 4, 5, 5]},
     {"w": rand(3, 2, 2, 3, 3), "b": rand(3)}, 17, ["Conv"]),
    ("conv_transpose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 0, 0, 1],
                             output_padding=[1, 1])], {"x": [1, 3, 4, 4]}, {"w": rand(3, 2, 3, 3), "b": rand(2)},
     17, ["ConvTranspose"]),
    ("conv_transpose_output_shape", [node("ConvTranspose", ["x", "w"], strides=[2, 2], output_shape=[8, 9])],
     {"x": [1, 3, 4, 4]}, {"w": rand(3, 2, 3, 3)}, 17, ["ConvTranspose"]),
    ("conv_transpose_output_shape_beyond_full", [node("ConvTranspose", ["x", "w"], strides=[2, 2],
                                                      output_shape=[10, 9])], {"x": [1, 3, 4, 4]},
     {"w": rand(3, 2, 3, 3)}, 17, ["ConvTranspose"]),
    ("conv_transpose_same_upper", [node("ConvTranspose", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER")],
     {"x": [1, 3, 4, 4]}, {"w": rand(3, 2, 3, 3)}, 17, ["ConvTranspose"]),
    ("batchnorm4d", [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)], X4,
     {"g": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.1}, 15, ["Affine"]),
    ("batchnorm2d_opset9", [node("BatchNormalization", ["x", "g", "b", "m", "v"])], {"x": [2, 3]},
     {"g": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.1}, 9, ["Affine"]),
    ("relu", [node("Relu", ["x"])], X4, {}, 17, ["Relu"]),
    ("leaky_relu", [node("LeakyRelu", ["x"], alpha=0.1)], X4, {}, 17, ["LeakyRelu"]),
    ("leaky_relu_default", [node("LeakyRelu", ["x"])], X4, {}, 17, ["LeakyRelu"]),
    ("prelu", [node("PRelu", ["x", "s"])], X4, {"s": rand(3, 1, 1)}, 17, ["PRelu"]),
    ("sigmoid_tanh", [node("Sigmoid", ["x"], ["h"]), node("Tanh", ["h"])], X4, {}, 17, ["Sigmoid", "Tanh"]),
    ("softplus", [node("Softplus", ["x"])], X4, {}, 17, ["Softplus"]),
    ("elu", [node("Elu", ["x"], alpha=0.7)], X4, {}, 17, ["Elu"]),
    ("gelu_op", [node("Gelu", ["x"])], X4, {}, 20, ["Gelu"]),
    ("gelu_tanh_op", [node("Gelu", ["x"], approximate="tanh")], X4, {}, 20, ["Gelu"]),
    ("hard_sigmoid", [node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], X4, {}, 17, ["HardSigmoid"]),
    ("hard_swish", [node("HardSwish", ["x"])], X4, {}, 17, ["HardSwish"]),
    ("clip_attrs_opset6", [node("Clip", ["x"], min=-0.5, max=0.7)], X4, {}, 6, ["Clip"]),
    ("clip_inputs", [node("Clip", ["x", "lo", "hi"])], X4, {"lo": np.float32(-0.2), "hi": np.float32(0.9)}, 13,
     ["Clip"]),
    ("clip_max_only", [node("Clip", ["x", "", "hi"])], X4, {"hi": np.float32(6.0)}, 13, ["Clip"]),
    ("clip_unbounded_is_identity", [node("Relu", ["x"], ["r"]), node("Clip", ["r"])], X4, {}, 13, ["Relu"]),
    ("softmax_13", [node("Softmax", ["x"], axis=1)], {"x": [2, 3, 4]}, {}, 13, ["Softmax"]),
    ("softmax_11_coerced", [node("Softmax", ["x"], axis=1)], {"x": [2, 3, 4]}, {}, 11,
     ["Reshape", "Softmax", "Reshape"]),
    ("softmax_11_default", [node("Softmax", ["x"])], {"x": [2, 5]}, {}, 11, ["Softmax"]),
    ("maxpool", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1)],
     X4, {}, 17, ["MaxPool"]),
    ("maxpool_same_indices_unused", [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 3], strides=[2, 2],
                                          auto_pad="SAME_UPPER")], X4, {}, 12, ["MaxPool"]),
    ("maxpool_dilated", [node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 3], pads=[1, 0, 1, 1])],
     X4, {}, 12, ["MaxPool"]),
    ("avgpool_include_pad", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                  count_include_pad=1)], X4, {}, 17, ["AveragePool"]),
    ("avgpool_exclude_pad_ceil", [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                       pads=[1, 1, 1, 1], ceil_mode=1)], {"x": [1, 2, 7, 7]}, {}, 17,
     ["AveragePool"]),
    ("avgpool_1d_same", [node("AveragePool", ["x"], kernel_shape=[4], auto_pad="SAME_LOWER")], {"x": [1, 2, 9]},
     {}, 17, ["AveragePool"]),
    ("global_pools", [node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["m"]),
                      node("Add", ["a", "m"])], X4, {}, 17, ["GlobalAveragePool", "GlobalMaxPool", "Add"]),
    ("flatten_axis2", [node("Flatten", ["x"], axis=2)], X4, {}, 17, ["Reshape"]),
    ("reshape_zero_minus_one", [node("Reshape", ["x", "s"])], X4, {"s": np.array([0, -1, 4], np.int64)}, 17,
     ["Reshape"]),
    ("squeeze_unsqueeze_11", [node("Unsqueeze", ["x"], ["u"], axes=[0, 3]), node("Squeeze", ["u"], axes=[0])],
     {"x": [1, 3, 4]}, {}, 11, ["Reshape", "Reshape"]),
    ("squeeze_unsqueeze_13", [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u"])], {"x": [2, 3]},
     {"a": np.array([-1], np.int64)}, 13, ["Reshape", "Reshape"]),
    ("transpose", [node("Transpose", ["x"], perm=[0, 2, 3, 1])], X4, {}, 17, ["Transpose"]),
    ("transpose_default", [node("Transpose", ["x"])], {"x": [2, 3, 4]}, {}, 17, ["Transpose"]),
    ("noops", [node("Identity", ["x"], ["a"]), node("Dropout", ["a"], ["b", "mask"], ratio=0.3),
               node("Cast", ["b"], ["c"], to=TensorProto.DOUBLE), node("Cast", ["c"], ["d"], to=F),
               node("Relu", ["d"])], X4, {}, 11, ["Relu"]),
    ("pad_attr_opset2", [node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 3, 0], value=0.5)], X4, {}, 2, ["Pad"]),
    ("pad_inputs", [node("Pad", ["x", "p", "v"])], X4,
     {"p": np.array([0, 1, 1, 0, 0, 0, 2, 2], np.int64), "v": np.float32(-1.0)}, 13, ["Pad"]),
    ("pad_axes_18", [node("Pad", ["x", "p", "", "a"])], X4,
     {"p": np.array([1, 2, 3, 0], np.int64), "a": np.array([2, -1], np.int64)}, 18, ["Pad"]),
    ("concat", [node("Relu", ["x"], ["r"]), node("Concat", ["x", "r"], axis=-1)], X4, {}, 17,
     ["Relu", "Concat"]),
    ("constants_nodes", [node("Constant", [], ["c1"], value_float=2.0),
                         node("Constant", [], ["c2"], value_floats=[1.0, 2.0, 3.0]),
                         node("Constant", [], ["s"], value_ints=[1, -1]),
                         node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, dtype=np.float32))),
                         node("Mul", ["x", "c1"], ["a"]), node("Add", ["a", "c2"], ["b"]),
                         node("Mul", ["b", "k"], ["c"]), node("Reshape", ["c", "s"])],
     {"x": [2, 3]}, {}, 17, ["Affine", "Affine", "Affine", "Reshape"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_operator_matches_onnxruntime(tmp_path: Path, case: tuple[Any, ...]) -> None:
    _, nodes, inputs, params, opset, expected = case
    outputs = ("y",) if nodes[-1].output[0] == "y" else (nodes[-1].output[0],)
    lm = check(save(tmp_path, nodes, inputs, outputs, params, opset=opset))
    assert ir_ops(lm) == expected
    assert lm.format is ModelFormat.ONNX and lm.reference_name == "onnxruntime"


def test_batchnorm_affine_values(tmp_path: Path) -> None:
    g, b, m, v = rand(3, seed=4), rand(3, seed=5), rand(3, seed=6), np.abs(rand(3, seed=7)) + 0.1
    lm = load_onnx(save(tmp_path, [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)], X4,
                        params={"g": g, "b": b, "m": m, "v": v}))
    op = lm.graph.nodes[0].op
    assert isinstance(op, O.Affine) and op.scale is not None and op.shift is not None
    eps = float(np.float32(1e-3))
    scale = g.astype(np.float64) / np.sqrt(v.astype(np.float64) + eps)
    assert op.scale.shape == (3, 1, 1) and op.scale.dtype == np.float64
    np.testing.assert_array_equal(op.scale.reshape(-1), scale)
    np.testing.assert_array_equal(op.shift.reshape(-1), b - m * scale)


def test_gemm_and_matmul_weights_are_out_by_in(tmp_path: Path) -> None:
    w = rand(5, 3)
    lm = load_onnx(save(tmp_path, [node("MatMul", ["x", "w"])], {"x": [1, 5]}, params={"w": w}))
    op = lm.graph.nodes[0].op
    assert isinstance(op, O.Linear) and op.weight.shape == (3, 5)
    np.testing.assert_array_equal(op.weight, w.T)


def test_div_by_constant_is_float64_reciprocal(tmp_path: Path) -> None:
    lm = load_onnx(save(tmp_path, [node("Div", ["x", "c"])], {"x": [1, 2]}, params={"c": np.float32(0.3081)}))
    op = lm.graph.nodes[0].op
    assert isinstance(op, O.Affine) and op.scale is not None
    assert float(op.scale) == 1.0 / float(np.float32(0.3081))


# ---- patterns ----------------------------------------------------------------------------------
def _scalar(name: str, value: float) -> Any:
    return node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype=np.float32)))


GELU_FORMS = {
    # PyTorch: ((x / sqrt2).erf() + 1) * x * 0.5
    "torch": [_scalar("r2", math.sqrt(2)), node("Div", ["x", "r2"], ["u"]), node("Erf", ["u"], ["e"]),
              _scalar("one", 1.0), node("Add", ["e", "one"], ["w"]), node("Mul", ["x", "w"], ["p"]),
              _scalar("half", 0.5), node("Mul", ["p", "half"], ["y"])],
    # x * 0.5 * (1 + erf(x * (1/sqrt2)))
    "half_first": [_scalar("ir2", math.sqrt(0.5)), node("Mul", ["ir2", "x"], ["u"]), node("Erf", ["u"], ["e"]),
                   _scalar("one", 1.0), node("Add", ["one", "e"], ["w"]), _scalar("half", 0.5),
                   node("Mul", ["x", "half"], ["h"]), node("Mul", ["h", "w"], ["y"])],
    # 0.5 * (1 + erf) first, then x; the constants computed in the graph (as in ONNX's Gelu function)
    "computed_constants": [_scalar("two", 2.0), node("Sqrt", ["two"], ["r2"]), node("Div", ["x", "r2"], ["u"]),
                           node("Erf", ["u"], ["e"]), _scalar("one", 1.0), node("Sum", ["one", "e"], ["w"]),
                           _scalar("half", 0.5), node("Mul", ["half", "w"], ["p"]), node("Mul", ["p", "x"], ["y"])],
}


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
def test_gelu_erf_pattern_is_one_gelu(tmp_path: Path, form: str) -> None:
    nodes = [node("Relu", ["in"], ["x"]), *GELU_FORMS[form]]
    lm = check(save(tmp_path, nodes, {"in": [2, 7]}))
    assert ir_ops(lm) == ["Relu", "Gelu"]
    assert "Erf" in lm.graph.nodes[1].source_op
    assert any(note.startswith("fused: Gelu") for note in lm.notes)


GELU_TANH_FORMS = {
    # torch's gelu(approximate="tanh") by the TorchScript-based exporter: x * (x * x), constants first
    "torch": [node("Mul", ["x", "x"], ["sq"]), node("Mul", ["x", "sq"], ["cube"]), _scalar("k", 0.044715),
              node("Mul", ["k", "cube"], ["t"]), node("Add", ["x", "t"], ["s"]), _scalar("c", math.sqrt(2 / math.pi)),
              node("Mul", ["c", "s"], ["u"]), node("Tanh", ["u"], ["h"]), _scalar("one", 1.0),
              node("Add", ["one", "h"], ["w"]), node("Mul", ["x", "w"], ["p"]), _scalar("half", 0.5),
              node("Mul", ["half", "p"], ["y"])],
    # GPT-2's new GELU: 0.5 * x * (1 + tanh(c * (x + 0.044715 * pow(x, 3))))
    "pow_half_first": [_scalar("three", 3.0), node("Pow", ["x", "three"], ["cube"]), _scalar("k", 0.044715),
                       node("Mul", ["cube", "k"], ["t"]), node("Add", ["t", "x"], ["s"]),
                       _scalar("c", math.sqrt(2 / math.pi)), node("Mul", ["s", "c"], ["u"]), node("Tanh", ["u"], ["h"]),
                       _scalar("one", 1.0), node("Add", ["h", "one"], ["w"]), _scalar("half", 0.5),
                       node("Mul", ["half", "x"], ["hx"]), node("Mul", ["hx", "w"], ["y"])],
}


@pytest.mark.parametrize("form", sorted(GELU_TANH_FORMS))
def test_gelu_tanh_pattern_is_one_gelu(tmp_path: Path, form: str) -> None:
    nodes = [node("Relu", ["in"], ["x"]), *GELU_TANH_FORMS[form]]
    lm = check(save(tmp_path, nodes, {"in": [2, 7]}))
    assert ir_ops(lm) == ["Relu", "Gelu"]
    op = lm.graph.nodes[1].op
    assert isinstance(op, O.Gelu) and op.approximate == "tanh"
    assert "Tanh" in lm.graph.nodes[1].source_op


def test_a_tanh_with_other_constants_is_not_a_gelu(tmp_path: Path) -> None:
    forms = [n for n in GELU_TANH_FORMS["torch"]]
    forms[2] = _scalar("k", 0.05)  # not GELU's 0.044715: a product of variables, left as it is
    lm = check(save(tmp_path, [node("Relu", ["in"], ["x"]), *forms], {"in": [2, 7]}))
    assert "Gelu" not in ir_ops(lm) and "Tanh" in ir_ops(lm)


def test_silu_and_hardswish_patterns(tmp_path: Path) -> None:
    nodes = [node("Sigmoid", ["x"], ["s"]), node("Mul", ["s", "x"], ["a"]),
             node("HardSigmoid", ["a"], ["h"], alpha=1 / 6, beta=0.5), node("Mul", ["a", "h"])]
    lm = check(save(tmp_path, nodes, X4))
    assert ir_ops(lm) == ["Silu", "HardSwish"]


def test_erf_outside_the_pattern_loads_as_erf(tmp_path: Path) -> None:
    nodes = [node("Erf", ["x"], ["e"]), node("Add", ["e", "x"])]
    lm = load_onnx(save(tmp_path, nodes, X4))
    assert [n.op.type.value for n in lm.graph.nodes] == ["Erf", "Add"]


def test_pow_exponents(tmp_path: Path) -> None:
    """Pow by 1 is an alias, by 0.5 a Sqrt, by -1 a Reciprocal, by p >= 1 a Pow; others are refused."""
    nodes = [node("Pow", ["x", "one"], ["a"]), node("Pow", ["a", "half"], ["b"]), node("Pow", ["b", "m1"], ["c"]),
             node("Pow", ["c", "three"], ["y"])]
    params = {"one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
              "m1": np.array(-1.0, np.float32), "three": np.array(3.0, np.float32)}
    lm = load_onnx(save(tmp_path, nodes, X4, params=params))
    assert [n.op.type.value for n in lm.graph.nodes] == ["Sqrt", "Reciprocal", "Pow"]
    x = torch.rand(1, 4, 4, 4, dtype=torch.float64) + 0.5
    (got,) = Executor(lm.graph, dtype=torch.float64)(x)
    torch.testing.assert_close(got, (1 / x.sqrt()) ** 3)
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, [node("Pow", ["x", "p"], ["y"])], X4, params={"p": np.array(0.3, np.float32)}))
    assert info.value.counts == {"Pow(exponent 0.3)": 1}


SOFTMAX_FORMS = {
    # jax2tf: x - max(max x, -inf) broadcast back, exp, sum without keepdims, reshaped and broadcast
    "jax": ([node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0), node("Max", ["ninf", "m"], ["mm"]),
             node("Reshape", ["mm", "keep"], ["mr"]), node("Expand", ["mr", "full"], ["mb"]),
             node("Sub", ["x", "mb"], ["d"]), node("Exp", ["d"], ["e"]),
             node("ReduceSum", ["e", "axis1"], ["s"], keepdims=0), node("Reshape", ["s", "keep"], ["sr"]),
             node("Expand", ["sr", "full"], ["sb"]), node("Div", ["e", "sb"])],
            {"ninf": np.array(-np.inf, np.float32), "keep": np.array([2, 1]), "full": np.array([2, 7]),
             "axis1": np.array([1])}),
    # no shift: exp(x) / sum(exp(x)) with keepdims
    "plain": ([node("Exp", ["x"], ["e"]), node("ReduceSum", ["e", "axis1"], ["s"], keepdims=1),
               node("Div", ["e", "s"])], {"axis1": np.array([1])}),
}


@pytest.mark.parametrize("form", sorted(SOFTMAX_FORMS))
def test_decomposed_softmax_is_one_softmax(tmp_path: Path, form: str) -> None:
    """Exp(x - B) / ReduceSum(...) over one axis loads as a Softmax over that axis (exact for any B
    constant along it), equal to onnxruntime; its global bound is then finite."""
    nodes, params = SOFTMAX_FORMS[form]
    lm = check(save(tmp_path, [node("Relu", ["in"], ["x"]), *nodes], {"in": [2, 7]}, params=params))
    assert ir_ops(lm) == ["Relu", "Softmax"]
    assert lm.graph.nodes[1].op.axis in (1, -1)
    assert "Exp" in lm.graph.nodes[1].source_op
    assert any(note.startswith("fused: Softmax") for note in lm.notes)


def test_exp_read_elsewhere_is_not_fused_as_softmax(tmp_path: Path) -> None:
    nodes = [node("Exp", ["x"], ["e"]), node("ReduceSum", ["e", "axis1"], ["s"], keepdims=1),
             node("Div", ["e", "s"], ["q"]), node("Add", ["q", "e"])]
    lm = check(save(tmp_path, nodes, {"x": [2, 7]}, params={"axis1": np.array([1])}))
    assert "Softmax" not in ir_ops(lm)


def test_sigmoid_used_twice_is_not_fused(tmp_path: Path) -> None:
    nodes = [node("Sigmoid", ["x"], ["s"]), node("Mul", ["s", "x"], ["a"]), node("Add", ["a", "s"])]
    lm = load_onnx(save(tmp_path, nodes, X4))
    assert [n.op.type.value for n in lm.graph.nodes] == ["Sigmoid", "Mul", "Add"]


# ---- folding and dynamic shapes ----------------------------------------------------------------------
def test_shape_chain_folds_into_reshape(tmp_path: Path) -> None:
    """PyTorch's x.view(x.size(0), -1) with a dynamic batch dim."""
    nodes = [
        node("Shape", ["x"], ["shape"]), _scalar("zero", 0), node("Cast", ["zero"], ["i0"], to=TensorProto.INT64),
        node("Gather", ["shape", "i0"], ["n"], axis=0), node("Unsqueeze", ["n", "axes"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["target"], axis=0), node("Reshape", ["x", "target"], ["flat"]),
        node("Slice", ["shape", "starts", "ends"], ["hw"]), node("ReduceProd", ["hw"], ["k"], keepdims=0),
        node("ConstantOfShape", ["n1"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        node("Range", ["r0", "r1", "r2"], ["range"]),
        node("Gemm", ["flat", "w", "b"], ["g"], transB=1), node("Mul", ["g", "ones"], ["y"]),
    ]
    params = {"axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
              "starts": np.array([2], np.int64), "ends": np.array([100], np.int64),
              "w": rand(4, 48), "b": rand(4), "r0": np.int64(0), "r1": np.int64(5), "r2": np.int64(2)}
    path = save(tmp_path, nodes, {"x": ["N", 3, 4, 4]}, params=params)
    # the ones of shape [N] broadcast along the last axis of g [N, 4]: the model runs at batch 1
    # (and 4) only, so an unknown batch dim is not audited at 1
    with pytest.raises(ModelLoadError, match="does not translate at batch 2.*--input-shape N,3,4,4"):
        load_onnx(path)
    lm = check(path, input_shape=(1, 3, 4, 4))
    assert ir_ops(lm) == ["Reshape", "Linear", "Affine"]
    assert lm.graph.inputs[0].shape == (1, 3, 4, 4)
    folded = next(n for n in lm.notes if "constant-folded" in n)
    assert "Shape x1" in folded and "Gather x1" in folded and "ReduceProd x1" in folded
    assert any("[N,3,4,4] fixed to [1, 3, 4, 4]" in n for n in lm.notes)


def test_input_shape_fixes_dynamic_dims(tmp_path: Path) -> None:
    path = save(tmp_path, [node("Conv", ["x", "w"])], {"x": ["N", 3, "H", "W"]}, params={"w": W})
    with pytest.raises(ModelLoadError, match="--input-shape"):
        load_onnx(path)
    lm = check(path, input_shape=(1, 3, 10, 12))
    assert lm.graph.shapes[lm.graph.outputs[0]] == (1, 4, 8, 10)


def test_input_shape_rank_and_static_dims_are_checked(tmp_path: Path) -> None:
    path = save(tmp_path, [node("Relu", ["x"])], {"x": ["N", 3, 8, 8]})
    with pytest.raises(ModelLoadError) as info:
        load_onnx(path, input_shape=(1, 2))
    assert str(info.value) == "--input-shape 1,2 has rank 2 but input 'x' has rank 4"
    assert info.value.path == str(path)
    with pytest.raises(ModelLoadError, match="static size 3"):
        load_onnx(path, input_shape=(1, 4, 8, 8))
    assert load_onnx(path, input_shape=(2, 3, 8, 8)).graph.inputs[0].shape == (2, 3, 8, 8)


def test_initializer_listed_as_input_is_not_an_input(tmp_path: Path) -> None:
    nodes = [node("Gemm", ["x", "w", "b"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 3]),
                                           helper.make_tensor_value_info("w", F, [2, 3]),
                                           helper.make_tensor_value_info("b", F, [2])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(rand(2, 3), "w"), numpy_helper.from_array(rand(2), "b")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), path)
    lm = check(path)
    assert lm.graph.input_names == ("x",)
    assert any("lifted from 9 to 11" in n for n in lm.notes)


def test_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    nodes = [node("Add", ["a", "b"], ["s"]), node("Relu", ["s"], ["y"]), node("Identity", ["s"], ["z"])]
    lm = check(save(tmp_path, nodes, {"a": ["B", 3], "b": ["B", 3]}, outputs=("y", "z")))
    assert lm.graph.outputs == ("y", "s")
    assert [s.shape for s in lm.graph.inputs] == [(1, 3), (1, 3)]


def test_metadata_names_parameters_and_source_ops(tmp_path: Path) -> None:
    nodes = [node("Constant", [], ["c"], value=numpy_helper.from_array(rand(4))),
             helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, name=""),
             helper.make_node("Add", ["g", "c"], ["h"], name="bias2"), helper.make_node("Relu", ["h"], ["y"])]
    lm = load_onnx(save(tmp_path, nodes, {"x": [1, 5]}, params={"w": rand(4, 5), "b": rand(4),
                                                                  "s": np.array([1, 4], np.int64)}))
    assert lm.parameters == 20 + 4 + 4  # float initializers and Constant tensors; not the int64 shape
    assert lm.source_ops == {"Add": 1, "Constant": 1, "Gemm": 1, "Relu": 1}
    assert [n.name for n in lm.graph.nodes] == ["Gemm_1", "bias2", "Relu_3"]
    assert [n.source_op for n in lm.graph.nodes] == ["Gemm", "Add", "Relu"]


# ---- errors ------------------------------------------------------------------------------------------
def test_unsupported_operators_are_listed_at_once(tmp_path: Path) -> None:
    nodes = [node("Cosh", ["x"], ["e1"]), node("Cosh", ["e1"], ["e2"]), node("Div", ["c", "x"], ["m"]),
             node("Sinh", ["x"], ["mm"]), node("Cast", ["x"], ["i"], to=TensorProto.INT64),
             node("Pad", ["x", "p"], ["pd"], mode="reflect"), node("Relu", ["e2"], ["r"]),
             node("Sum", ["r", "m", "mm", "pd"], ["y"])]
    path = save(tmp_path, nodes, {"x": [1, 4, 4, 4]}, params={"p": np.array([0, 0, 0, 4, 0, 0, 0, 0], np.int64), "c": np.ones(1, np.float32)})
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(path)
    assert info.value.counts == {"Cosh": 2, "Div(constant / variable)": 1, "Sinh": 1,
                                 "Cast(variable to a non-float type)": 1,
                                 "Pad(mode=reflect with pads 4, 0 for a dim of 4)": 1}
    assert info.value.path == str(path) and "SA901" in str(info.value)


@pytest.mark.parametrize(("nodes", "params", "label"), [
    ([node("MatMul", ["w", "x"])], {"w": rand(3, 1)}, "MatMul(constant x variable)"),
    ([node("Div", ["c", "x"])], {"c": rand(1)}, "Div(constant / variable)"),
    ([node("Add", ["x", "c"])], {"c": rand(3)}, "Add(constant of shape [3] does not broadcast to the input's [1, 4])"),
    ([node("Gather", ["c", "x"])], {"c": rand(5, 4)}, "Gather(variable indices)"),
    ([node("Conv", ["x", "x"])], {}, "Conv(variable weight)"),
    ([node("BatchNormalization", ["x", "c", "c", "c", "c"], training_mode=1)], {"c": rand(1)},
     "BatchNormalization(training mode)"),
    ([node("Dropout", ["x", "r", "t"])], {"r": np.float32(0.5), "t": np.bool_(True)}, "Dropout(training mode)"),
    ([node("Gemm", ["x", "x", "x"], transB=1)], {}, "Gemm(variable C)"),
    ([node("IsNaN", ["x"], ["n"]), node("Cast", ["n"], ["m"], to=1), node("Mul", ["x", "m"])], {},
     "Cast(of a bool condition computed from variables)"),
    ([node("Greater", ["x", "c"], ["g"]), node("Where", ["g", "g", "x"])], {"c": rand(1)},
     "Where(of a bool condition computed from variables)"),
    ([node("Greater", ["x", "c"], ["g"]), node("And", ["g", "g"], ["a"]), node("Where", ["a", "x", "c"])],
     {"c": rand(1)}, "And(of a bool condition computed from variables)"),
])
def test_unsupported_variants(tmp_path: Path, nodes: list[Any], params: dict[str, Any], label: str) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, nodes, {"x": [1, 4]}, params=params))
    assert info.value.counts == {label: 1}


def test_a_constant_that_enlarges_the_input_copies_it_first(tmp_path: Path) -> None:
    """x [1, 4] * c [2, 3, 1]: the variable is lifted and tiled to [2, 3, 4] (each entry copied 6
    times, norm sqrt(6)), then scaled entry by entry."""
    import torch

    from stabaudit.ir.executor import Executor

    c = rand(2, 3, 1)
    lm = load_onnx(save(tmp_path, [node("Mul", ["x", "c"])], {"x": [1, 4]}, params={"c": c}))
    assert [n.op.type.value for n in lm.graph.nodes] == ["Reshape", "Tile", "Affine"]
    x = np.arange(4.0).reshape(1, 4)
    (y,) = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x))
    np.testing.assert_allclose(y.numpy(), x * c.astype(np.float64), rtol=1e-12)


def test_clip_by_a_computed_floor_is_a_max_of_variables(tmp_path: Path) -> None:
    """The top_db clamp of mel front ends: Clip(x, max(x) - 3) = Max(x, ReduceMax(x) - 3)."""
    import torch

    from stabaudit.ir.executor import Executor

    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0), node("Sub", ["m", "d"], ["floor"]),
             node("Clip", ["x", "floor", "hi"])]
    lm = load_onnx(save(tmp_path, nodes, {"x": [1, 4]}, params={"d": np.float32(3.0), "hi": np.float32(2.5)}))
    assert [n.op.type.value for n in lm.graph.nodes][-2:] == ["Max", "Clip"]
    x = np.array([[-5.0, 0.5, 2.0, 4.0]])
    (y,) = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x))
    np.testing.assert_allclose(y.numpy(), np.minimum(np.maximum(x, x.max() - 3.0), 2.5))
    # an infinite constant bound is no bound (no non-finite parameter reaches SA402)
    lm = load_onnx(save(tmp_path, nodes, {"x": [1, 4]}, params={"d": np.float32(3.0), "hi": np.float32(np.inf)}))
    assert [n.op.type.value for n in lm.graph.nodes][-1] == "Max"


def test_ceil_mode_window_starting_in_the_padding_is_refused(tmp_path: Path) -> None:
    """onnxruntime drops such a window; a pool over the explicitly padded input would keep it."""
    pool = node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, [pool], {"x": [1, 1, 4, 4]}))
    assert info.value.counts == {"AveragePool(ceil_mode window starting in the padding)": 1}


def test_a_constant_output_leaves_the_audited_graph(tmp_path: Path) -> None:
    """y = float(Shape(x)) does not depend on x's values (Lipschitz 0): the graph computes r only,
    named; a model whose every output is constant is refused."""
    from stabaudit.analyses.equivalence import check_equivalence

    nodes = [node("Shape", ["x"], ["s"]), node("Cast", ["s"], ["y"], to=TensorProto.FLOAT), node("Relu", ["x"], ["r"])]
    lm = load_onnx(save(tmp_path, nodes, X4, outputs=("y", "r")))
    assert lm.graph.outputs == ("r",) and lm.output_names == ("r",) and lm.reference_outputs == ("y", "r")
    assert any("graph output(s) 'y' are constant (they do not depend" in n for n in lm.notes)
    assert check_equivalence(lm, seed=0).passed
    with pytest.raises(ModelLoadError, match="'y' is a constant"):
        load_onnx(save(tmp_path, [node("Shape", ["x"], ["y"])], X4, outputs=("y",), name="only.onnx"))


def test_integer_input_without_a_real_start_is_an_error(tmp_path: Path) -> None:
    path = save(tmp_path, [node("Relu", ["x"])], {"x": [1, 3]}, elem=TensorProto.INT64)
    with pytest.raises(ModelLoadError, match="held at values.*--from TENSOR"):
        load_onnx(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not an ONNX model"),
    (b"hello world, this is text", "not an ONNX model"),
])
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_onnx(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    good = save(tmp_path, [node("Gemm", ["x", "w"])], {"x": [1, 64]}, params={"w": rand(64, 64)})
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_onnx(cut)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="directory"):
        load_onnx(tmp_path)


# ---- external data -------------------------------------------------------------------------------
def _external_model(directory: Path, location: str) -> Path:
    """A Gemm model whose weight lives in external data at ``location`` (written as given)."""
    w = rand(8, 16, seed=9)
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([node("Gemm", ["x", "w"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", F, [1, 16])],
                              [helper.make_tensor_value_info("y", F, None)], [tensor])
    path = directory / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _write_weights(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rand(8, 16, seed=9).tobytes())


def test_external_data_inside_the_directory_loads(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    _write_weights(model_dir / "data" / "w.bin")
    lm = check(_external_model(model_dir, "data/w.bin"))
    op = lm.graph.nodes[0].op
    assert isinstance(op, O.Linear)
    np.testing.assert_array_equal(op.weight, rand(8, 16, seed=9))
    assert any("external data" in n for n in lm.notes)


def test_external_data_escaping_the_directory_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    _write_weights(tmp_path / "w.bin")
    with pytest.raises(ModelLoadError, match="outside the model's directory"):
        load_onnx(_external_model(model_dir, "../w.bin"))
    with pytest.raises(ModelLoadError, match="absolute path"):
        load_onnx(_external_model(model_dir, str(tmp_path / "w.bin")))
    os.symlink(tmp_path / "w.bin", model_dir / "link.bin")
    with pytest.raises(ModelLoadError, match="outside the model's directory"):
        load_onnx(_external_model(model_dir, "link.bin"))
    with pytest.raises(ModelLoadError, match="missing"):
        load_onnx(_external_model(model_dir, "nothing.bin"))


# ---- the real networks ----------------------------------------------------------------------------
def _external_names() -> list[str]:
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "external"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.onnx")) if root.is_dir() else []


@pytest.mark.external
def test_external_collection_is_complete(external_dir: Path) -> None:
    assert len(list(external_dir.glob("*/*.onnx"))) == 29


@pytest.mark.external
@pytest.mark.parametrize("name", _external_names())
def test_external_network_matches_onnxruntime(external_dir: Path, name: str) -> None:
    lm = load_onnx(external_dir / name)
    ours, ref = run_both(lm)
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == r.shape
        assert np.abs(o - r).max() <= 1e-4 * max(float(np.abs(r).max()), 1.0)


# ---- float16 / bfloat16 ------------------------------------------------------------------------
def test_float16_weights_are_upcast_exactly_and_the_precision_is_known(tmp_path: Path) -> None:
    w = rand(4, 3, seed=4).astype(np.float16)
    path = save(tmp_path, [node("MatMul", ["x", "w"])], {"x": [1, 4]}, params={"w": w}, elem=TensorProto.FLOAT16)
    lm = load_onnx(path)
    assert lm.precision == "float16"
    (linear,) = [n.op for n in lm.graph]
    assert isinstance(linear, O.Linear) and linear.weight.dtype == np.float32
    np.testing.assert_array_equal(linear.weight, w.T.astype(np.float32))  # every float16 is a float32
    out = lm.reference({"x": np.ones((1, 4), np.float32)})[0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (np.ones((1, 4), np.float16) @ w).astype(np.float32))


def test_precision_is_the_least_precise_float_type(tmp_path: Path) -> None:
    plain = save(tmp_path, [node("Relu", ["x"])], {"x": [1, 4]}, name="plain.onnx")
    assert load_onnx(plain).precision == "float32"
    nodes = [node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), node("Cast", ["h"], ["y"], to=F)]
    cast = save(tmp_path, nodes, {"x": [1, 4]}, name="cast.onnx")
    assert load_onnx(cast).precision == "float16"  # onnxruntime rounds to float16 in the middle


def test_bfloat16_models_are_refused_by_the_reference_in_one_line(tmp_path: Path) -> None:
    """onnxruntime's CPU provider lacks most bfloat16 kernels, and its Python API passes no
    bfloat16 arrays even where the kernels exist (Cast): both end in a ModelLoadError (exit 2)."""
    relu = save(tmp_path, [node("Relu", ["x"])], {"x": [1, 4]}, elem=TensorProto.BFLOAT16, name="relu.onnx")
    lm = load_onnx(relu)
    assert lm.precision == "bfloat16"
    with pytest.raises(ModelLoadError, match="no bfloat16 kernel for this operator"):
        lm.reference({"x": np.ones((1, 4), np.float32)})
    nodes = [node("Cast", ["x"], ["h"], to=F), node("Relu", ["h"], ["r"]),
             node("Cast", ["r"], ["y"], to=TensorProto.BFLOAT16)]
    cast = save(tmp_path, nodes, {"x": [1, 4]}, elem=TensorProto.BFLOAT16, name="cast.onnx")
    with pytest.raises(ModelLoadError, match="input 'x' is bfloat16, which onnxruntime's Python API cannot pass"):
        load_onnx(cast).reference({"x": np.ones((1, 4), np.float32)})


def test_external_data_location_with_a_nul_byte_is_refused(tmp_path: Path) -> None:
    """A NUL reaches the file system as ValueError ("embedded null byte"): refused first, exit 2."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    _write_weights(model_dir / "w.bin")
    for location in ("w.bin\x00.txt", "w\n.bin"):
        with pytest.raises(ModelLoadError, match="control character") as info:
            load_onnx(_external_model(model_dir, location))
        assert info.value.exit_code == 2 and repr(location) in str(info.value)


# ---- onnxruntime telemetry ----------------------------------------------------------------------
def _files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_no_onnxruntime_telemetry_store_after_a_check(tmp_path: Path) -> None:
    """onnxruntime (1DS telemetry, Linux included) writes deviceid and onnxruntime.db under
    $HOME/.cache/Microsoft/DeveloperTools/.onnxruntime when imported, unless ORT_DISABLE_TELEMETRY
    is set: stabaudit sets it. A fresh HOME, the user's own setting removed."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ORT_DISABLE_TELEMETRY"))}
    bare, audited = tmp_path / "bare", tmp_path / "audited"
    bare.mkdir()
    audited.mkdir()
    # the store is real: onnxruntime imported on its own writes it
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env={**env, "HOME": str(bare)}, check=True,
                   timeout=120)
    store = [f for f in _files(bare) if ".onnxruntime" in f]
    proc = subprocess.run(
        [sys.executable, "-m", "stabaudit", "check", str(root / "sample_models" / "cnn.onnx"), "-q", "--no-cache",
         "--budget", "0.3", "--format", "json"],
        env={**env, "HOME": str(audited)}, capture_output=True, text=True, timeout=300, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["equivalence"]["reference"] == "onnxruntime"  # a session ran
    assert _files(audited) == []  # no telemetry store, nothing else either
    # onnxruntime 1.32 on Linux writes it; a build without telemetry writes nothing, and then the
    # empty HOME above is the whole claim
    assert not store or any(f.endswith("onnxruntime.db") for f in store), store


def test_where_loads_as_a_selection_a_nan_test_or_a_switch(tmp_path: Path) -> None:
    """A constant mask (from a comparison of constants, folded) and IsNaN / Not(IsInf) of a variable
    are fixed selections; a comparison of variables is a switch; each matches onnxruntime."""
    nodes = [node("Softmax", ["x"], ["s"], axis=-1), node("IsNaN", ["s"], ["n"]), node("Where", ["n", "z", "s"], ["a"]),
             node("Less", ["lo", "hi"], ["mask"]), node("Where", ["mask", "a", "x"], ["b"]),
             node("IsInf", ["b"], ["i"], detect_negative=0), node("Not", ["i"], ["f"]),
             node("Where", ["f", "b", "z"], ["c"]), node("Greater", ["z", "c"], ["g"]),
             node("Where", ["g", "x", "c"])]
    params = {"z": np.float32(0.0), "lo": np.array([0.0, 2.0, 0.0, 2.0], np.float32), "hi": np.float32(1.0)}
    lm = check(save(tmp_path, nodes, {"x": [2, 4]}, params=params))
    wheres = [n.op for n in lm.graph.nodes if isinstance(n.op, O.Where)]
    assert [(w.test, w.negate, w.switch) for w in wheres] == [
        ("isnan", False, False), ("", False, False), ("isposinf", True, False), ("less", False, True)]
    assert wheres[1].mask is not None and wheres[1].mask.tolist() == [True, False, True, False]
    assert wheres[3].other is not None and float(wheres[3].other) == 0.0  # 0 > c read as c < 0
    assert lm.source_ops["Less"] == 1 and "Less x1" in " ".join(lm.notes)  # folded on constants


# ---- Einsum -------------------------------------------------------------------------------------
EINSUMS = [
    # equation, variable shapes, constant shapes (after the variables in the equation's order: the
    # flag says whether the constant comes first)
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)], [], False),  # attention scores, two variables
    ("bhqk,bhkd->bqhd", [(1, 2, 3, 5), (1, 2, 5, 4)], [], False),  # attention output, transposed
    ("...ij,...jk", [(2, 3, 4), (2, 4, 5)], [], False),  # ellipsis, implicit output
    ("i,j->ij", [(3,), (4,)], [], False),  # outer product
    ("bij,bjk->b", [(2, 3, 4), (2, 4, 5)], [], False),  # summed after the product
    ("bsd,dh->bsh", [(1, 6, 8)], [(8, 5)], False),  # a projection: Linear
    ("bsd,hdk->bshk", [(1, 6, 8)], [(3, 8, 2)], False),  # per-head projection: Linear
    ("dh,bsd->bhs", [(1, 6, 8)], [(8, 5)], True),  # the constant first
    ("bsd,dhz->bsh", [(1, 6, 8)], [(8, 5, 3)], False),  # a letter only the constant has: summed
    ("bsdz->bzs", [(1, 6, 8, 3)], [], False),  # one operand: a sum and a transpose
]


@pytest.mark.parametrize("equation,var_shapes,const_shapes,const_first", EINSUMS, ids=[e[0] for e in EINSUMS])
def test_einsum_matches_numpy_and_onnxruntime(equation: str, var_shapes: list[tuple[int, ...]],
                                              const_shapes: list[tuple[int, ...]], const_first: bool,
                                              tmp_path: Path) -> None:
    names = [f"x{i}" for i in range(len(var_shapes))]
    consts = {f"w{i}": rand(*s, seed=10 + i) for i, s in enumerate(const_shapes)}
    operands = [*consts, *names] if const_first else [*names, *consts]
    path = save(tmp_path, [helper.make_node("Einsum", operands, ["y"], equation=equation)],
                dict(zip(names, var_shapes, strict=True)), params=consts, opset=12)
    lm = load_onnx(path)
    assert not any(isinstance(n.op, O.MatMul) for n in lm.graph.nodes) or not consts  # constants: Linear
    xs = [rand(*s, seed=i + 1) for i, s in enumerate(var_shapes)]
    feeds = dict(zip(names, xs, strict=True))
    got = Executor(lm.graph, dtype=torch.float64)(*[torch.from_numpy(x.astype(np.float64)) for x in xs])[0].numpy()
    arrays = {**{k: v.astype(np.float64) for k, v in consts.items()}, **{k: v.astype(np.float64) for k, v in feeds.items()}}
    expected = np.einsum(equation, *[arrays[k] for k in operands])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lm.reference(feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_einsum_with_a_diagonal_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Einsum", ["x"], ["y"], equation="bii->bi")], {"x": (2, 3, 3)}, opset=12)
    with pytest.raises(UnsupportedOperatorError, match="a diagonal"):
        load_onnx(path)


# ---- attention masks of -inf before a Softmax ------------------------------------------------------
CAUSAL = np.tril(np.ones((4, 4), dtype=bool))


@pytest.mark.parametrize("form", ["where_x_first", "where_inf_first", "add"])
def test_an_attention_mask_of_minus_inf_fuses_into_the_softmax(form: str, tmp_path: Path) -> None:
    """masked_fill(-inf) (exported as Where) and an additive mask with -inf entries before a
    Softmax load as one Softmax with a mask (the additive mask's finite part as a shift): the same
    outputs as onnxruntime, exactly 0 where masked, and the softmax's bound 1/2 (a -inf constant
    no longer reaches any rule)."""
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import RuleContext

    minus_inf = np.array(-np.inf, dtype=np.float32)
    if form == "where_x_first":
        nodes = [helper.make_node("Where", ["c", "x", "m"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)]
        params: dict[str, Any] = {"c": CAUSAL, "m": minus_inf}
    elif form == "where_inf_first":
        nodes = [helper.make_node("Where", ["c", "m", "x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)]
        params = {"c": ~CAUSAL, "m": minus_inf}
    else:
        bias = np.where(CAUSAL, rand(4, 4, seed=3, scale=0.5), -np.inf).astype(np.float32)
        nodes = [helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)]
        params = {"b": bias}
    lm = check(save(tmp_path, nodes, {"x": (1, 2, 4, 4)}, params=params))
    softmaxes = [n for n in lm.graph.nodes if isinstance(n.op, O.Softmax)]
    assert len(softmaxes) == 1 and softmaxes[0].op.mask is not None
    assert not any(isinstance(n.op, O.Where) for n in lm.graph.nodes)
    assert [type(n.op) for n in lm.graph.nodes] == ([O.Affine, O.Softmax] if form == "add" else [O.Softmax])
    ours, _ = run_both(lm)
    assert (ours[0][..., ~CAUSAL] == 0).all()
    node = softmaxes[0]
    ob = bound_node(node, RuleContext(input_shapes=(lm.graph.shapes[node.inputs[0]],), output_shape=lm.graph.shapes[node.output]))
    assert ob.upper.value == 0.5


def test_a_mask_that_drops_a_whole_row_is_refused(tmp_path: Path) -> None:
    cond = CAUSAL.copy()
    cond[2] = False  # row 2 keeps nothing: its softmax is NaN
    nodes = [helper.make_node("Where", ["c", "x", "m"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)]
    path = save(tmp_path, nodes, {"x": (1, 4, 4)}, params={"c": cond, "m": np.array(-np.inf, dtype=np.float32)})
    with pytest.raises(UnsupportedOperatorError, match="drops every entry of a row"):
        load_onnx(path)


def test_an_argmax_output_is_left_out_of_the_audit(tmp_path: Path) -> None:
    """A classifier exported with its probabilities and their ArgMax: the index output (piecewise
    constant) is left out of the audited graph and of the equivalence check, with a note; a real
    value computed from the index is refused."""
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
             helper.make_node("ArgMax", ["p"], ["k"], axis=-1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "cls", [helper.make_tensor_value_info("x", F, (1, 5))],
        [helper.make_tensor_value_info("p", F, None), helper.make_tensor_value_info("k", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cls.onnx")
    lm = load_onnx(tmp_path / "cls.onnx")
    assert lm.graph.outputs == ("p",)
    ours, ref = run_both(lm)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6, atol=1e-7)
    assert any("the index of ArgMax" in note and "left out of the audited graph" in note for note in lm.notes)
    nodes.append(helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "cls", [helper.make_tensor_value_info("x", F, (1, 5))],
        [helper.make_tensor_value_info("p", F, None), helper.make_tensor_value_info("kf", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cast.onnx")
    with pytest.raises(UnsupportedOperatorError, match="Cast"):
        load_onnx(tmp_path / "cast.onnx")


# ---- --to: the audit ends at named tensors -----------------------------------------------------------
def _detector(tmp_path: Path) -> Path:
    """A conv head giving boxes and scores, then a detector's post-processing (TopK on the scores,
    NonMaxSuppression on the boxes) as the graph outputs."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["feat"], pads=[1, 1, 1, 1]),  # [1, 6, 4, 4]
        helper.make_node("Relu", ["feat"], ["act"]),
        helper.make_node("Reshape", ["act", "shape"], ["flat"]),  # [1, 6, 16]
        helper.make_node("Transpose", ["flat"], ["rows"], perm=[0, 2, 1]),  # [1, 16, 6]
        helper.make_node("Split", ["rows", "split"], ["boxes", "logits"], axis=2),  # [1, 16, 4], [1, 16, 2]
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Transpose", ["scores"], ["by_class"], perm=[0, 2, 1]),  # [1, 2, 16]
        helper.make_node("NonMaxSuppression", ["boxes", "by_class", "max_out", "iou", "thr"], ["kept"]),
        helper.make_node("ReduceMax", ["scores"], ["best"], axes=[2], keepdims=0),
        helper.make_node("TopK", ["best", "k"], ["top", "top_index"], axis=1),
    ]
    params = {"w": rand(6, 3, 3, 3, seed=2, scale=0.3), "b": rand(6, seed=3), "shape": np.array([1, 6, 16], np.int64),
              "split": np.array([4, 2], np.int64), "max_out": np.array([5], np.int64), "iou": np.array([0.5], np.float32),
              "thr": np.array([0.1], np.float32), "k": np.array([3], np.int64)}
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", F, (1, 3, 4, 4))],
        [helper.make_tensor_value_info("kept", TensorProto.INT64, None), helper.make_tensor_value_info("top", F, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    return path


def test_to_ends_the_audit_before_a_detectors_post_processing(tmp_path: Path) -> None:
    path = _detector(tmp_path)
    with pytest.raises(UnsupportedOperatorError, match="NonMaxSuppression"):
        load_onnx(path)
    lm = load_onnx(path, end=("boxes", "scores"))
    assert lm.graph.outputs == ("boxes", "scores")
    assert not {"NonMaxSuppression", "TopK", "ReduceMax"} & set(lm.source_ops)
    assert any("ends at tensor(s) 'boxes', 'scores' (--to): 4 node(s) after them cut" in n and "NonMaxSuppression x1" in n
               for n in lm.notes), lm.notes
    ours, ref = run_both(lm)  # onnxruntime runs the cut model: its outputs are the named tensors
    assert len(ours) == len(ref) == 2
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "message"), [("nothing", "no node of the model computes"), ("x", "it is a graph input"),
                                               ("w", "is a weight")])
def test_to_names_a_computed_tensor(name: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_onnx(_detector(tmp_path), end=(name,))


def _hard_swish_clip(form: str, opset: int) -> tuple[list[Any], dict[str, Any]]:
    """x * Clip(x + 3, 0, 6) and a division by 6 in the ways exporters write it."""
    params: dict[str, Any] = {"three": np.array(3.0, np.float32), "zero": np.array(0.0, np.float32),
                              "six": np.array(6.0, np.float32), "sixth": np.array(1 / 6, np.float32)}
    clip = (node("Clip", ["t"], ["c"], min=0.0, max=6.0) if opset < 11 else node("Clip", ["t", "zero", "six"], ["c"]))
    head = [node("Relu", ["in"], ["x"]), node("Add", ["x", "three"], ["t"]), clip]
    tails = {
        "div_after": [node("Mul", ["x", "c"], ["m"]), node("Div", ["m", "six"])],  # paddle2onnx
        "mul_after": [node("Mul", ["c", "x"], ["m"]), node("Mul", ["m", "sixth"])],
        "div_gate": [node("Div", ["c", "six"], ["g"]), node("Mul", ["x", "g"])],
        "mul_gate": [node("Mul", ["sixth", "c"], ["g"]), node("Mul", ["g", "x"])],
        "no_division": [node("Mul", ["x", "c"])],
    }
    return head + tails[form], params


@pytest.mark.parametrize("opset", [10, 17])
@pytest.mark.parametrize(("form", "scale"), [("div_after", None), ("mul_after", 6 * float(np.float32(1 / 6))),
                                             ("div_gate", None), ("mul_gate", 6 * float(np.float32(1 / 6))),
                                             ("no_division", 6.0)])
def test_hardswish_written_with_a_clip_is_one_hardswish(tmp_path: Path, form: str, scale: float | None,
                                                        opset: int) -> None:
    """The stored map exactly: HardSwish, times the factor the constant leaves (6 c for a Mul by
    the float32 c near 1/6, 6 without a division)."""
    nodes, params = _hard_swish_clip(form, opset)
    lm = check(save(tmp_path, nodes, {"in": [2, 7]}, params=params, opset=opset))
    assert ir_ops(lm) == ["Relu", "HardSwish"] + (["Affine"] if scale is not None else [])
    if scale is not None:
        assert float(lm.graph.nodes[2].op.scale) == scale
    assert "Clip" in lm.graph.nodes[1].source_op


def test_a_clip_with_other_bounds_is_not_a_hardswish(tmp_path: Path) -> None:
    nodes, params = _hard_swish_clip("div_after", 17)
    params["six"] = np.array(5.0, np.float32)  # Clip(x + 3, 0, 5): a product of variables, left as it is
    lm = check(save(tmp_path, nodes, {"in": [2, 7]}, params=params))
    assert "HardSwish" not in ir_ops(lm) and "Mul" in ir_ops(lm)
