"""Containment: what a model file may make the loaders read, one test per rule, each refusal
through the CLI as exit 2 with one `error:` line naming the rule."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import stabaudit.loaders.torchscript as ts_loader
from tests.fuzz import ts_seeds
from tests.fuzz.harness import check_cli

F = TensorProto.FLOAT
WEIGHT = np.eye(2, dtype=np.float32)


def external_model(folder: Path, location: str, **entries: str) -> Path:
    """A Gemm model in ``folder`` whose weight is external data at ``location`` (written as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(WEIGHT, "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [1, 2])],
                              [helper.make_tensor_value_info("y", F, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def refused(path: Path, *fragments: str) -> str:
    code, err = check_cli(path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    model = external_model(tmp_path / "m", "w.bin")
    (tmp_path / "m" / "w.bin").write_bytes(WEIGHT.tobytes())
    code, err = check_cli(model)
    assert code in (0, 1), err


def test_parent_directory_location(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(WEIGHT.tobytes())
    refused(external_model(tmp_path / "m", "../secret.bin"), "resolves outside the model's directory")


def test_parent_directory_inside_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(WEIGHT.tobytes())
    (tmp_path / "m" / "sub").mkdir(parents=True)
    refused(external_model(tmp_path / "m", "sub/../../secret.bin"), "resolves outside the model's directory")


def test_absolute_location(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHT.tobytes())
    refused(external_model(tmp_path / "m", str(secret)), "is an absolute path")


def test_windows_drive_location(tmp_path: Path) -> None:
    refused(external_model(tmp_path / "m", "C:\\secret.bin"), "is an absolute path")


def test_symlink_to_a_file_outside(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHT.tobytes())
    model = external_model(tmp_path / "m", "w.bin")
    os.symlink(secret, tmp_path / "m" / "w.bin")
    refused(model, "resolves outside the model's directory")


def test_symlinked_directory_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(WEIGHT.tobytes())
    model = external_model(tmp_path / "m", "data/w.bin")
    os.symlink(outside, tmp_path / "m" / "data", target_is_directory=True)
    refused(model, "resolves outside the model's directory")


def test_location_is_the_model_file_itself(tmp_path: Path) -> None:
    refused(external_model(tmp_path / "m", "model.onnx"), "is the model file itself")


def test_location_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "m" / "data").mkdir(parents=True)
    refused(external_model(tmp_path / "m", "data"), "is not a regular file")


def test_location_is_the_folder_itself(tmp_path: Path) -> None:
    refused(external_model(tmp_path / "m", "."), "is not a regular file")


def test_missing_location(tmp_path: Path) -> None:
    refused(external_model(tmp_path / "m", "nothing.bin"), "is missing")


@pytest.mark.parametrize(("entries", "fragment"), [
    ({"offset": "64"}, "beyond the end of the file"),
    ({"length": "17"}, "beyond the end of the file"),
    ({"offset": "8", "length": "16"}, "beyond the end of the file"),
    ({"length": str(2**40)}, "beyond the end of the file"),
    ({"offset": "-8"}, "is not a non-negative integer"),
])
def test_offset_and_length_beyond_the_file(tmp_path: Path, entries: dict[str, str], fragment: str) -> None:
    model = external_model(tmp_path / "m", "w.bin", **entries)
    (tmp_path / "m" / "w.bin").write_bytes(WEIGHT.tobytes())  # 16 bytes
    refused(model, fragment)


# ---- TorchScript archives ----------------------------------------------------------------------
@pytest.fixture
def no_jit_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if torch.jit.load is reached: the guards must refuse before it."""
    import torch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.jit.load was called on an archive the guards should refuse")

    monkeypatch.setattr(torch.jit, "load", forbidden)


def test_archive_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_jit_load: None) -> None:
    monkeypatch.setattr(ts_loader, "MAX_ARCHIVE_BYTES", 1000)
    path = tmp_path / "model.pt"
    path.write_bytes((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    refused(path, "exceeds the limit of 1000 bytes")


def test_zip_bomb_declared_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_jit_load: None) -> None:
    monkeypatch.setattr(ts_loader, "MAX_UNCOMPRESSED_BYTES", 10_000)
    path = tmp_path / "model.pt"
    path.write_bytes((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    refused(path, "zip bomb guard", "declare", "above the limit of 10000 bytes")


def test_zip_bomb_compression_ratio(tmp_path: Path, no_jit_load: None) -> None:
    items = ts_seeds.entries((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    items.append(("archive/data/99", bytes(8 * 1024**2)))  # 8 MiB of zeros deflate to ~8 KiB
    path = tmp_path / "model.pt"
    path.write_bytes(ts_seeds.pack(items, compression=zipfile.ZIP_DEFLATED))
    refused(path, "zip bomb guard", "'archive/data/99'", "ratio above")


def test_too_many_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_jit_load: None) -> None:
    monkeypatch.setattr(ts_loader, "MAX_ENTRIES", 5)
    path = tmp_path / "model.pt"
    path.write_bytes((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    refused(path, "zip bomb guard", "entries")


def test_unmodified_sample_archive_passes_the_guards(tmp_path: Path) -> None:
    ts_loader._check_archive(ts_seeds.SAMPLES / "resnet.pt", "resnet.pt")


def test_onnx_model_file_is_not_modified(tmp_path: Path) -> None:
    """Loading reads external data into memory only: the model and its data file are unchanged."""
    model = external_model(tmp_path / "m", "w.bin")
    (tmp_path / "m" / "w.bin").write_bytes(WEIGHT.tobytes())
    before = (model.read_bytes(), (tmp_path / "m" / "w.bin").read_bytes())
    check_cli(model)
    assert (model.read_bytes(), (tmp_path / "m" / "w.bin").read_bytes()) == before
    assert onnx.load_model(str(model), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
