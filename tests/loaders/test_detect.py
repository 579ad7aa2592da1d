"""Tests of format detection from file content and of load_model's dispatch."""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from stabaudit.errors import ModelLoadError
from stabaudit.loaders import load_model
from stabaudit.loaders.base import ModelFormat
from stabaudit.loaders.detect import detect_format


def _onnx_file(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return path


def test_onnx_is_detected_whatever_the_suffix(tmp_path: Path) -> None:
    assert detect_format(_onnx_file(tmp_path / "model.pt")) is ModelFormat.ONNX
    lm = load_model(tmp_path / "model.pt")
    assert lm.format is ModelFormat.ONNX and lm.graph.input_names == ("x",)


def test_torchscript_archives_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"  # the suffix lies; the content decides
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    assert detect_format(path) is ModelFormat.TORCHSCRIPT
    assert detect_format(_zip(tmp_path / "a.zip", ["m/code/__torch__.py", "m/data.pkl"])) is ModelFormat.TORCHSCRIPT
    assert detect_format(_zip(tmp_path / "b.zip", ["m/constants.pkl"])) is ModelFormat.TORCHSCRIPT


def test_load_model_dispatches_torchscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object, object, object]] = []
    fake = types.ModuleType("stabaudit.loaders.ts_child")  # the isolated load (loaders.ts_child)
    fake.load_isolated = (  # type: ignore[attr-defined]
        lambda path, *, input_shape=None, trust_code=False, seed=0, jobs=None, cuda=False, arguments=None:
        calls.append((path, input_shape, trust_code, seed))
    )
    monkeypatch.setitem(__import__("sys").modules, "stabaudit.loaders.ts_child", fake)
    path = _zip(tmp_path / "m.pt", ["m/code/__torch__.py", "m/constants.pkl"])
    load_model(path, input_shape=(1, 3))
    load_model(path, input_shape=(1, 3), trust_torchscript=True, seed=5)
    assert calls == [(path, (1, 3), False, 0), (path, (1, 3), True, 5)]


@pytest.mark.parametrize("protocol_zip", [True, False])
def test_torch_save_pickles_are_refused(tmp_path: Path, protocol_zip: bool) -> None:
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path, _use_new_zipfile_serialization=protocol_zip)
    with pytest.raises(ModelLoadError, match="not a TorchScript archive: export with torch.jit") as info:
        load_model(path)
    assert info.value.path == str(path)
    assert "torch.jit.save(torch.jit.script(model.eval()), 'model.pt')" in str(info.value)
    assert "model.load_state_dict" in str(info.value) and "\n" not in str(info.value)


def test_plain_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(ModelLoadError, match="pickle"):
        detect_format(path)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


UNUSABLE = {
    "missing": (lambda d: d / "absent.onnx", "no such file"),
    "directory": (lambda d: d, "directory"),
    "empty": (lambda d: _write(d / "empty.onnx", b""), "empty file"),
    "other_zip": (lambda d: _zip(d / "other.zip", ["readme.txt"]), "neither a TorchScript archive nor an ONNX model"),
    "damaged_zip": (lambda d: _write(d / "bad.zip", b"PK\x03\x04garbage"), "damaged zip"),
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_unusable_files(tmp_path: Path, kind: str) -> None:
    make, message = UNUSABLE[kind]
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(path)
    assert info.value.path == str(path)


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match="not an ONNX model or TorchScript archive"):
        load_model(path)
