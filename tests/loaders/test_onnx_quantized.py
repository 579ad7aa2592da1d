"""Quantized ONNX operators: ONNX's backend node cases whose first input is an integer tensor (fed
through a QuantizeLinear by step 1 of float values, the engine's domain), and seeded models against
onnxruntime, the equality checked up to one quantization step per quantization on the path."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders.onnx import load_onnx

# case -> how it loads: None (it loads and matches the stored outputs) or the refusal's label
INTEGER_CASES: dict[str, str | None] = {
    "test_dequantizelinear": None,
    "test_dequantizelinear_axis": None,
    "test_dequantizelinear_uint16": None,
    "test_dequantizelinear_int16": None,
    "test_dequantizelinear_blocked": "DequantizeLinear(blocked quantization)",
    "test_convinteger_without_padding": None,
    "test_convinteger_with_padding": None,
    "test_matmulinteger": None,
    "test_qlinearconv": None,
    "test_qlinearmatmul_2D_uint8_float32": None,
    "test_qlinearmatmul_3D_uint8_float32": "QLinearMatMul(b not 2-D)",
    "test_qlinearmatmul_2D_int8_float32": None,
    "test_qlinearmatmul_3D_int8_float32": "QLinearMatMul(b not 2-D)",
    "test_qlinearmatmul_2D_uint8_float16": None,
    "test_qlinearmatmul_3D_uint8_float16": "QLinearMatMul(b not 2-D)",
    "test_qlinearmatmul_2D_int8_float16": None,
    "test_qlinearmatmul_3D_int8_float16": "QLinearMatMul(b not 2-D)",
}


@functools.cache
def _backend_cases() -> dict[str, Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases() if c.name in INTEGER_CASES}


def _through_quantize(model: Any, inputs: list[np.ndarray]) -> Any:
    """The model with its first (integer) input computed by QuantizeLinear(x, 1, 0 of its type) from a
    float input x, and every other input an initializer holding the case's values."""
    graph = model.graph
    first = graph.input[0]
    elem = first.type.tensor_type.elem_type
    zero = np.zeros((), dtype=helper.tensor_dtype_to_np_dtype(elem))
    nodes = [helper.make_node("QuantizeLinear", ["x_real", "q_one", "q_zero"], [first.name])] + list(graph.node)
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "q_one"), numpy_helper.from_array(zero, "q_zero")]
    inits += [numpy_helper.from_array(np.asarray(v), vi.name) for vi, v in zip(graph.input[1:], inputs[1:], strict=True)]
    real = helper.make_tensor_value_info("x_real", TensorProto.FLOAT, list(inputs[0].shape))
    new = helper.make_graph(nodes, "q", [real], list(graph.output), inits + list(graph.initializer))
    opset = max(model.opset_import[0].version, 13)
    out = helper.make_model(new, opset_imports=[helper.make_opsetid("", opset)])
    out.ir_version = model.ir_version
    return out


@pytest.mark.parametrize("name", sorted(INTEGER_CASES))
def test_integer_backend_case(tmp_path: Path, name: str) -> None:
    case = _backend_cases()[name]
    inputs, outputs = ([np.asarray(v) for v in s] for s in case.data_sets[0])
    path = tmp_path / "model.onnx"
    onnx.save(_through_quantize(case.model, inputs), path)
    refusal = INTEGER_CASES[name]
    if refusal is not None:
        with pytest.raises(UnsupportedOperatorError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            load_onnx(path)
        return
    loaded = load_onnx(path)
    got = Executor(loaded.graph, dtype=torch.float64)(torch.from_numpy(inputs[0].astype(np.float64)))
    assert len(got) == len(outputs)
    for g, want in zip(got, outputs, strict=True):
        # integer outputs: equal, or one step off where the reference rounds a float16 tie differently
        step = 1.0 if want.dtype.kind in "iu" else 0.0
        diff = np.abs(g.numpy() - want.astype(np.float64))
        tol = step if "float16" in name else 1e-9 + 1e-6 * np.abs(want.astype(np.float64))
        assert g.shape == want.shape and np.all(diff <= tol), (g.numpy(), want)


# ---- seeded models against onnxruntime ------------------------------------------------------------------
U8, I8, I32 = np.uint8, np.int8, np.int32


def _save(tmp_path: Path, nodes: list[Any], shape: list[int], params: dict[str, np.ndarray], opset: int = 17) -> Path:
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def _n(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{outputs[0]}", **attrs)


def _against_onnxruntime(path: Path, shape: tuple[int, ...], *, scale: float = 1.0, samples: int = 8,
                         step: float = 0.0) -> tuple[Any, float]:
    """Load, run the engine in float32 (the runtime's arithmetic) and onnxruntime on seeded inputs;
    the largest difference, which must be within ``step`` (0: equal up to float rounding)."""
    loaded = load_onnx(path)
    ex = Executor(loaded.graph, dtype=torch.float32)
    rng = np.random.default_rng(3)
    worst = size = 0.0
    for _ in range(samples):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        (got,) = ex(torch.from_numpy(x))
        (want,) = loaded.reference({"x": x})
        worst = max(worst, float(np.abs(got.numpy() - want).max()))
        size = max(size, float(np.abs(want).max()))
    assert worst <= step + 1e-6 * (1 + size), worst  # float32 rounding relative to the outputs' size
    return loaded, worst


def _ops(loaded: Any) -> list[str]:
    return [n.op.type.value for n in loaded.graph.nodes]


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_quantize_dequantize_is_one_fake_quantization(tmp_path: Path, opset: int) -> None:
    nodes = [_n("QuantizeLinear", ["x", "s", "z"], ["q"]), _n("DequantizeLinear", ["q", "s", "z"], ["y"])]
    path = _save(tmp_path, nodes, [2, 5], {"s": np.float32(0.07), "z": np.uint8(131)}, opset=opset)
    loaded, worst = _against_onnxruntime(path, (2, 5), scale=6.0)  # saturates beyond [-9.17, 8.68]
    assert _ops(loaded) == ["Quantize"] and worst == 0.0
    op = loaded.graph.nodes[0].op
    assert isinstance(op, O.Quantize) and not op.integer and op.scale == (float(np.float32(0.07)),)
    assert (op.zero_point, op.qmin, op.qmax, op.axis) == ((131.0,), 0, 255, None)


def test_without_zero_point_is_uint8_at_zero(tmp_path: Path) -> None:
    nodes = [_n("QuantizeLinear", ["x", "s"], ["q"]), _n("DequantizeLinear", ["q", "s"], ["y"])]
    path = _save(tmp_path, nodes, [3, 4], {"s": np.float32(0.02)})
    loaded, worst = _against_onnxruntime(path, (3, 4))  # the negative half saturates to 0
    op = loaded.graph.nodes[0].op
    assert worst == 0.0 and (op.qmin, op.qmax, op.zero_point) == (0, 255, (0.0,))


def test_per_axis_quantization_and_int8(tmp_path: Path) -> None:
    scale = np.array([0.05, 0.2, 0.01], np.float32)
    zero = np.array([-3, 0, 7], I8)
    nodes = [_n("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1), _n("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    path = _save(tmp_path, nodes, [1, 3, 2, 2], {"s": scale, "z": zero}, opset=13)
    loaded, worst = _against_onnxruntime(path, (1, 3, 2, 2), scale=3.0)
    assert _ops(loaded) == ["Quantize"] and worst == 0.0
    assert loaded.graph.nodes[0].op.axis == 1 and (loaded.graph.nodes[0].op.qmin, loaded.graph.nodes[0].op.qmax) == (-128, 127)


def test_integer_output_of_quantize_linear(tmp_path: Path) -> None:
    nodes = [_n("QuantizeLinear", ["x", "s", "z"], ["q"]), _n("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    path = _save(tmp_path, nodes, [4, 4], {"s": np.float32(0.1), "z": np.int8(-5)})
    loaded, worst = _against_onnxruntime(path, (4, 4), scale=10.0)
    assert worst == 0.0 and loaded.graph.nodes[-1].op.integer


def _dynamic(params_only: bool = False) -> tuple[list[Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    params = {
        "w1": rng.standard_normal((4, 6)).astype(np.float32),
        "w2": rng.integers(-128, 128, (6, 3)).astype(I8),
        "w2s": np.array([0.011, 0.02, 0.005], np.float32),
        "w2z": np.zeros(3, I8),
        "b": rng.standard_normal(3).astype(np.float32),
    }
    nodes = [
        _n("MatMul", ["x", "w1"], ["h"]),
        _n("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"]),
        _n("MatMulInteger", ["hq", "w2", "hz", "w2z"], ["acc"]),
        _n("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        _n("Mul", ["hs", "w2s"], ["scale"]),
        _n("Mul", ["accf", "scale"], ["m"]),
        _n("Add", ["m", "b"], ["y"]),
    ]
    return nodes, params


def test_dynamic_quantization_pattern_is_a_quantize_of_the_data_step(tmp_path: Path) -> None:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul by (step x weight scale): the data's step
    cancels, the float map is Linear(dequantized weight) of the dequantized input."""
    nodes, params = _dynamic()
    path = _save(tmp_path, nodes, [2, 4], params)
    loaded, _ = _against_onnxruntime(path, (2, 4), scale=2.0)
    assert _ops(loaded) == ["Linear", "DynamicQuantize", "Linear", "Affine", "Affine"]
    assert loaded.graph.nodes[1].op.part is O.QuantPart.DEQUANTIZED


def test_dynamic_quantization_outside_the_pattern_still_runs(tmp_path: Path) -> None:
    """The integer product read directly (no Mul by the step): x_dequantized @ W / step, exact."""
    nodes, params = _dynamic()
    nodes = nodes[:4] + [_n("Add", ["accf", "b"], ["y"])]
    path = _save(tmp_path, nodes, [2, 4], params)
    loaded, _ = _against_onnxruntime(path, (2, 4), scale=2.0)
    assert "Div" in _ops(loaded) and "DynamicQuantize" in _ops(loaded)


def test_qlinear_conv_with_per_channel_weights_and_bias(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    params = {
        "xs": np.float32(0.03), "xz": np.uint8(120),
        "w": rng.integers(-128, 128, (3, 2, 3, 3)).astype(I8), "ws": np.array([0.004, 0.01, 0.002], np.float32),
        "wz": np.zeros(3, I8), "ys": np.float32(0.05), "yz": np.uint8(128),
        "bias": rng.integers(-2000, 2000, 3).astype(I32),
    }
    nodes = [
        _n("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        _n("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "bias"], ["yq"], pads=[1, 1, 1, 1]),
        _n("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    path = _save(tmp_path, nodes, [1, 2, 5, 5], params)
    # onnxruntime requantizes with the float multiplier xs ws / ys: a tie may round the other way
    loaded, worst = _against_onnxruntime(path, (1, 2, 5, 5), step=0.05)
    assert _ops(loaded) == ["Quantize", "Conv", "Quantize"]


# ---- onnxruntime's own quantization of a float model: dynamic, static QOperator, static QDQ --------------
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 6 * 6, 32)
        self.fc2 = torch.nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


# format -> the IR the quantized model loads as
QUANTIZED_IR = {
    # the data's step cancels in every DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast -> Mul
    "dynamic": {"DynamicQuantize": 3, "Conv": 1, "Linear": 2, "Relu": 2, "Affine": 6, "Reshape": 1},
    # QLinearConv, com.microsoft.QGemm (the Relus are in the quantizations' clips; the Flatten of the
    # conv's integers moves its dequantized value, which QGemm reads)
    "qoperator": {"Quantize": 4, "Conv": 1, "Linear": 2, "Reshape": 1},
    # every Q/DQ pair one Quantize, the weights' DequantizeLinear folded
    "qdq": {"Quantize": 5, "Conv": 1, "Linear": 2, "Reshape": 1},
}


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ort") / "float.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Net().eval(), (torch.randn(1, 3, 6, 6),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize("fmt", sorted(QUANTIZED_IR))
def test_onnxruntime_quantized_models_load_exactly(float_model: Path, fmt: str) -> None:
    from collections import Counter

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from stabaudit.analyses.equivalence import check_equivalence

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    path = float_model.parent / f"{fmt}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "dynamic":
            quantize_dynamic(str(float_model), str(path), weight_type=QuantType.QInt8)
        else:
            quantize_static(str(float_model), str(path), Reader(), per_channel=True,
                            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ)
    loaded = load_onnx(path)
    assert dict(Counter(_ops(loaded))) == QUANTIZED_IR[fmt]
    eq = check_equivalence(loaded, seed=0)
    assert eq.passed and eq.max_abs_diff <= 1e-6 and any("quantization" in n for n in eq.notes)


class _Blocks(torch.nn.Module):
    """A residual block, a squeeze-and-excitation gate, leaky ReLU, two poolings concatenated and a
    softmax: what quantize_static(QOperator) writes as com.microsoft QLinearAdd, QLinearMul,
    QLinearSigmoid, QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat
    and QLinearSoftmax."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c1, self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.se = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.c2(torch.relu(self.c1(h))))
        h = h * torch.sigmoid(self.se(torch.nn.functional.adaptive_avg_pool2d(h, 1)))
        h = torch.nn.functional.leaky_relu(h, 0.1)
        pooled = torch.cat([torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1),
                            torch.nn.functional.avg_pool2d(h, 4).flatten(1)], 1)
        return torch.softmax(self.fc(pooled), -1)


def test_qoperator_blocks_load_and_match_onnxruntime(tmp_path: Path) -> None:
    """A QOperator-format CNN with residual sums, a gate, poolings, a concat and a softmax loads (every
    com.microsoft QLinear operator as quantize(f(dequantize))) and matches onnxruntime within its
    quantization steps; over a domain its bound is certified."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from stabaudit.analyses.equivalence import check_equivalence

    torch.manual_seed(0)
    float_path, path = tmp_path / "float.onnx", tmp_path / "qop.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Blocks().eval(), (torch.rand(1, 3, 8, 8),), str(float_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.random((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QOperator)
    written = {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"}
    assert {"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
            "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax"} <= written
    loaded = load_onnx(path)
    eq = check_equivalence(loaded, seed=0)
    assert eq.passed, eq


def test_qlinear_channels_last_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("QLinearGlobalAveragePool", ["q", "s", "z", "s", "z"], ["p"], domain="com.microsoft",
                              channels_last=1),
             helper.make_node("DequantizeLinear", ["p", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(128, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOperatorError, match="channels_last"):
        load_onnx(tmp_path / "m.onnx")
