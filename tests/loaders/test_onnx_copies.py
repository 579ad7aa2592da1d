"""ONNX operators that copy or sum entries of a variable by constant indices: Pad in reflect, edge
and wrap modes, GatherND, GatherElements and CumSum. Each matches onnxruntime, and the certified
bound of the linear map it loads as is its exact norm."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.support import check_onnx, exact_norm, save_onnx

SHAPE = (2, 3, 4, 5)


def save(tmp_path: Path, node: Any, consts: dict[str, np.ndarray], shape: tuple[int, ...] = SHAPE,
         opset: int = 18) -> Path:
    return save_onnx(tmp_path, [node], consts, shape, opset=opset)


def check(path: Path, shape: tuple[int, ...] = SHAPE) -> LoadedModel:
    """Copies and sums of float32 values: within float32 rounding of onnxruntime."""
    return check_onnx(path, shape, tol=1e-6)


def norm(lm: LoadedModel, shape: tuple[int, ...] = SHAPE) -> float:
    return exact_norm(lm, shape)


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
