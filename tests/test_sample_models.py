"""The bundled sample models: each ONNX file and its TorchScript twin load into the same IR graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx
from stabaudit.loaders.torchscript import load_torchscript

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = {"mlp": ((1, 64), "x_flat"), "cnn": ((1, 1, 8, 8), "x_image"), "resnet": ((1, 1, 8, 8), "x_image")}
MAX_BYTES = 100 * 1024


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    with np.load(SAMPLES / "digits_samples.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def twins() -> dict[str, tuple[LoadedModel, LoadedModel]]:
    # the TorchScript archives carry their input shape (stabaudit.json); no argument needed
    return {name: (load_onnx(SAMPLES / f"{name}.onnx"), load_torchscript(SAMPLES / f"{name}.pt")) for name in MODELS}


def _parameters(op: O.Op) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(op).items() if isinstance(v, np.ndarray)}


def test_files_are_small() -> None:
    for name in MODELS:
        for suffix in (".onnx", ".pt"):
            size = (SAMPLES / f"{name}{suffix}").stat().st_size
            assert 0 < size < MAX_BYTES, (name, suffix, size)
    assert (SAMPLES / "digits_samples.npz").stat().st_size < MAX_BYTES


def test_samples_file(samples: dict[str, np.ndarray]) -> None:
    assert samples["x_flat"].shape == (16, 64) and samples["x_flat"].dtype == np.float32
    assert samples["x_image"].shape == (16, 1, 8, 8)
    np.testing.assert_array_equal(samples["x_image"].reshape(16, 64), samples["x_flat"])
    assert samples["y"].shape == (16,) and set(samples["y"].tolist()) <= set(range(10))
    assert samples["x_flat"].min() >= 0.0 and samples["x_flat"].max() <= 1.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twins_have_the_same_graph(name: str, twins: dict[str, tuple[LoadedModel, LoadedModel]]) -> None:
    onnx_model, ts_model = twins[name]
    shape, _ = MODELS[name]
    assert onnx_model.graph.inputs[0].shape == ts_model.graph.inputs[0].shape == shape
    assert [n.op.type for n in onnx_model.graph.nodes] == [n.op.type for n in ts_model.graph.nodes]
    assert onnx_model.parameters == ts_model.parameters > 0
    compared = 0
    for a, b in zip(onnx_model.graph.nodes, ts_model.graph.nodes, strict=True):
        pa, pb = _parameters(a.op), _parameters(b.op)
        assert pa.keys() == pb.keys(), (a.name, b.name)
        for key in pa:
            if a.op.type in O.LINEAR_MAPS:  # stored weights: bit-identical
                np.testing.assert_array_equal(np.asarray(pa[key], np.float64), np.asarray(pb[key], np.float64))
                compared += 1
            else:  # folded BatchNorm constants, both computed from the same stored statistics
                np.testing.assert_allclose(pa[key].reshape(-1), pb[key].reshape(-1), rtol=1e-6, atol=1e-7)
        for field in ("strides", "pads", "dilations", "groups", "kernel", "shape", "axis"):
            assert getattr(a.op, field, None) == getattr(b.op, field, None), (a.name, field)
    assert compared >= 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twins_compute_the_same_outputs(
    name: str, twins: dict[str, tuple[LoadedModel, LoadedModel]], samples: dict[str, np.ndarray]
) -> None:
    onnx_model, ts_model = twins[name]
    shape, key = MODELS[name]
    run_onnx, run_ts = Executor(onnx_model.graph), Executor(ts_model.graph)
    for x in samples[key]:
        batch = x.reshape(shape)
        y_onnx = run_onnx(torch.from_numpy(batch))[0].numpy()
        y_ts = run_ts(torch.from_numpy(batch))[0].numpy()
        np.testing.assert_allclose(y_onnx, y_ts, atol=1e-5, rtol=0)
        ref_onnx = onnx_model.reference({onnx_model.graph.input_names[0]: batch})[0]
        ref_ts = ts_model.reference({ts_model.graph.input_names[0]: batch})[0]
        np.testing.assert_allclose(ref_onnx, ref_ts, atol=1e-5, rtol=0)
        np.testing.assert_allclose(y_ts, ref_ts, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_accuracy_on_bundled_samples(name: str, twins: dict[str, tuple[LoadedModel, LoadedModel]], samples: dict[str, np.ndarray]) -> None:
    _, ts_model = twins[name]
    shape, key = MODELS[name]
    run = Executor(ts_model.graph)
    predictions = [int(run(torch.from_numpy(x.reshape(shape)))[0].argmax()) for x in samples[key]]
    correct = int((np.array(predictions) == samples["y"]).sum())
    assert correct >= 14, f"{name}: {correct}/16 correct"
