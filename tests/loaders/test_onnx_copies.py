"""ONNX operators that copy or sum entries of a variable by constant indices: Pad in reflect, edge
and wrap modes, GatherND, GatherElements and CumSum. Each matches onnxruntime, and the certified
bound of the linear map it loads as is its exact norm."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.composition import rule_bounds
from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx

SHAPE = (2, 3, 4, 5)


def save(tmp_path: Path, node: Any, consts: dict[str, np.ndarray], shape: tuple[int, ...] = SHAPE,
         opset: int = 18) -> Path:
    graph = helper.make_graph(
        [node], "copies", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def check(path: Path, shape: tuple[int, ...] = SHAPE) -> LoadedModel:
    """Loaded, and the engine's float64 forward pass equal to onnxruntime's (copies and sums of
    float32 values: within float32 rounding)."""
    lm = load_onnx(path)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    (ours,) = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))
    (ref,) = lm.reference({"x": x})
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)
    return lm


def norm(lm: LoadedModel, shape: tuple[int, ...] = SHAPE) -> float:
    """The product of the certified per-node bounds, and the exact norm of the map (the SVD of
    its matrix, built column by column with the executor) must agree."""
    bound = math.prod(b.upper.value for b in rule_bounds(lm.graph).values() if b.upper is not None)
    n = math.prod(shape)
    run = Executor(lm.graph, dtype=torch.float64)
    columns = [run(torch.eye(n, dtype=torch.float64)[i].reshape(shape))[0].reshape(-1).numpy() for i in range(n)]
    exact = float(np.linalg.norm(np.stack(columns, axis=1), 2))
    assert exact <= bound * (1 + 1e-9)
    assert bound == pytest.approx(exact, rel=1e-6)
    return bound


@pytest.mark.parametrize(("mode", "pads", "expected"), [
    ("reflect", [0, 0, 2, 1, 0, 0, 1, 3], 3.0),  # row 2 of H and column 1 of W: 3 copies each
    ("edge", [0, 0, 2, 0, 0, 0, 0, 3], 2.0 * math.sqrt(3.0)),  # 3 copies of the first row, 4 of the last column
    ("wrap", [0, 0, 1, 2, 0, 0, 1, 1], 2.0),
])
def test_pad_modes_copy_entries(tmp_path: Path, mode: str, pads: list[int], expected: float) -> None:
    """torch's reflection, replication and circular padding as ONNX writes them: each padded entry
    copies one of the input, so the map's norm is sqrt of the largest number of copies."""
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
    lm = check(save(tmp_path, node, {"pads": np.array(pads, np.int64)}))
    assert norm(lm) == pytest.approx(expected, rel=1e-9)


def test_reflect_pad_as_wide_as_the_axis_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    with pytest.raises(UnsupportedOperatorError, match="reflect"):
        load_onnx(save(tmp_path, node, {"pads": np.array([0, 0, 0, 5, 0, 0, 0, 0], np.int64)}))


@pytest.mark.parametrize(("indices", "batch_dims"), [
    (np.array([[[0, 1], [1, 2]], [[1, 0], [-1, -3]]], np.int64), 0),  # data[i, j] slices: [2, 2, 4, 5]
    (np.array([[[1, 2, 3]], [[0, 0, 0]], [[1, 1, -1]]], np.int64)[:2], 1),  # per batch entry: [2, 1]
    (np.array([[0], [1], [1]], np.int64), 0),  # whole batch entries, one repeated
])
def test_gather_nd(tmp_path: Path, indices: np.ndarray, batch_dims: int) -> None:
    node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)
    lm = check(save(tmp_path, node, {"i": indices}))
    norm(lm)


@pytest.mark.parametrize("axis", [0, 2, -1])
def test_gather_elements(tmp_path: Path, axis: int) -> None:
    rng = np.random.default_rng(2)
    shape = list(SHAPE)
    shape[axis] = 3
    indices = rng.integers(-SHAPE[axis], SHAPE[axis], size=shape).astype(np.int64)
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)
    lm = check(save(tmp_path, node, {"i": indices}))
    norm(lm)


@pytest.mark.parametrize(("axis", "attrs"), [(3, {}), (1, {"exclusive": 1}), (-2, {"reverse": 1}),
                                              (0, {"reverse": 1, "exclusive": 1})])
def test_cumsum_is_a_triangular_linear_map(tmp_path: Path, axis: int, attrs: dict[str, int]) -> None:
    """The bound is the norm of the 0/1 triangular matrix (for n = 5 inclusive: 1 / (2 sin(pi / 22)))."""
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)
    lm = check(save(tmp_path, node, {"axis": np.array(axis, np.int64)}))
    bound = norm(lm)
    n = SHAPE[axis]
    if not attrs.get("exclusive"):
        assert bound == pytest.approx(1.0 / (2.0 * math.sin(math.pi / (2 * (2 * n + 1)))), rel=1e-9)
