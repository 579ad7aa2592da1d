"""ONNX Resize and Upsample across opsets: the loaded graph against onnxruntime, and the refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.onnx import load_onnx

SHAPE = [1, 2, 5, 7]


def _save(tmp_path: Path, op: str, opset: int, attrs: dict[str, Any], inits: dict[str, np.ndarray],
          names: list[str], shape: list[int] = SHAPE) -> Path:
    node = helper.make_node(op, ["x", *names], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _f32(*v: float) -> np.ndarray:
    return np.array(v, np.float32)


CASES = [
    # Upsample and Resize-10 (lifted to Resize-11 at load): asymmetric, floor up and ceil down
    *[("Resize", 10, {"mode": m}, {"s": _f32(*s)}, ["s"]) for m in ("nearest", "linear")
      for s in ((1, 1, 2, 3), (1, 1, 0.5, 0.6), (1, 1, 1.7, 0.4), (1, 1, 3, 2.5))],
    *[("Upsample", 9, {"mode": m}, {"s": _f32(1, 1, 2, 2.5)}, ["s"]) for m in ("nearest", "linear")],
    *[("Upsample", 7, {"mode": m, "scales": [1.0, 1.0, 3.0, 2.0]}, {}, []) for m in ("nearest", "linear")],
    # Resize-11 and later with scales that give whole lengths and no rounding ties
    *[("Resize", opset, {"mode": m, "coordinate_transformation_mode": c}, {"roi": _f32(), "s": _f32(1, 1, 1.6, 3)},
       ["roi", "s"]) for opset in (11, 13, 18, 19) for m in ("nearest", "linear", "cubic")
      for c in ("half_pixel", "pytorch_half_pixel", "asymmetric")],
    ("Resize", 13, {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, {"roi": _f32(), "s": _f32(),
     "z": np.array([1, 2, 9, 4], np.int64)}, ["roi", "s", "z"]),
    ("Resize", 13, {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
     {"roi": _f32(), "s": _f32(), "z": np.array([1, 2, 3, 13], np.int64)}, ["roi", "s", "z"]),
    ("Resize", 18, {"mode": "linear", "axes": [3, 2], "keep_aspect_ratio_policy": "not_larger"},
     {"roi": _f32(), "s": _f32(), "z": np.array([11, 9], np.int64)}, ["roi", "s", "z"]),
    ("Resize", 13, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                    "extrapolation_value": 3.0},
     {"roi": _f32(0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3), "s": _f32(), "z": np.array([1, 2, 4, 6], np.int64)},
     ["roi", "s", "z"]),
]


@pytest.mark.parametrize(("op", "opset", "attrs", "inits", "names"), CASES,
                         ids=[f"{c[0]}{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_resize_matches_onnxruntime(tmp_path: Path, op: str, opset: int, attrs: dict[str, Any],
                                    inits: dict[str, np.ndarray], names: list[str]) -> None:
    import onnxruntime as ort

    path = _save(tmp_path, op, opset, attrs, inits, names)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    loaded = load_onnx(path)
    assert [n.op.type.value for n in loaded.graph.nodes] == ["Resize"]
    got = Executor(loaded.graph, dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))[0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("attrs", "inits", "names", "label"), [
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, {"roi": _f32(), "s": _f32(1, 1, 0.5, 1)},
     ["roi", "s"], "Resize(align_corners with a scale that gives no whole output length)"),
    ({"mode": "nearest"}, {"roi": _f32(), "s": _f32(1, 1, 1, 1.3)}, ["roi", "s"],
     "Resize(output length differs between float32 and float64)"),
    ({"mode": "nearest"}, {"roi": _f32(), "s": _f32(1, 1, 1, 1.0)}, ["roi", "s"], None),
    ({"mode": "nearest", "coordinate_transformation_mode": "bogus"}, {"roi": _f32(), "s": _f32(1, 1, 2, 2)},
     ["roi", "s"], "Resize(coordinate_transformation_mode=bogus)"),
])
def test_resize_refusals(tmp_path: Path, attrs: dict[str, Any], inits: dict[str, np.ndarray], names: list[str],
                         label: str | None) -> None:
    path = _save(tmp_path, "Resize", 13, attrs, inits, names, shape=[1, 2, 5, 10])
    if label is None:  # the identity: every axis is left as it is
        loaded = load_onnx(path)
        assert [n.op.axes for n in loaded.graph.nodes] == [()]
        return
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(path)
    assert info.value.counts == {label: 1}
