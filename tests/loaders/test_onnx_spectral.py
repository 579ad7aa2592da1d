"""ONNX STFT and DFT: linear maps of the signal (the DFT's cosines and sines, the window folded
in) that match onnxruntime, and whose certified bound is the map's exact norm."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import helper

from stabaudit.analyses.composition import rule_bounds
from stabaudit.errors import ModelLoadError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.support import check_onnx, exact_norm, save_onnx

HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(16) / 16)).astype(np.float32)


def save(tmp_path: Path, nodes: list[Any], consts: dict[str, np.ndarray], shape: tuple[int, ...], opset: int = 17) -> Path:
    return save_onnx(tmp_path, nodes, consts, shape, opset=opset)


def check(path: Path, shape: tuple[int, ...]) -> LoadedModel:
    return check_onnx(path, shape, tol=1e-5)


@pytest.mark.parametrize(("window", "onesided", "parts"), [(True, 1, 1), (False, 1, 1), (True, 0, 2)])
def test_stft(tmp_path: Path, window: bool, onesided: int, parts: int) -> None:
    """A Hann window of 16 points every 4 samples of a 64-sample signal (real, or complex)."""
    shape = (2, 64, parts)
    inputs = ["x", "step", "w" if window else "", "" if window else "len"]
    consts = {"step": np.array(4, np.int64), "w": HANN, "len": np.array(16, np.int64)}
    path = save(tmp_path, [helper.make_node("STFT", inputs, ["y"], onesided=onesided)], consts, shape)
    lm = check(path, shape)
    assert lm.graph.shapes[lm.graph.outputs[0]] == (2, 13, 9 if onesided else 16, 2)
    exact_norm(lm, shape, rel=1e-5)


def test_stft_magnitude_as_torch_exports_it(tmp_path: Path) -> None:
    """torch.stft(..., return_complex=True).abs() exports as STFT and ReduceL2 over the parts: the
    magnitude's bound is the STFT's (ReduceL2 has Lipschitz 1), here sqrt(16 * max overlap of
    w^2) for the Hann window at a quarter hop, within the certified norm."""
    shape = (1, 64, 1)
    nodes = [helper.make_node("STFT", ["x", "step", "w"], ["s"]),
             helper.make_node("ReduceL2", ["s", "axes"], ["y"], keepdims=0)]
    consts = {"step": np.array(4, np.int64), "w": HANN, "axes": np.array([-1], np.int64)}
    lm = check(save(tmp_path, nodes, consts, shape, opset=18), shape)
    bound = math.prod(b.upper.value for b in rule_bounds(lm.graph).values() if b.upper is not None)
    x = torch.randn(shape, dtype=torch.float64)
    spectrum = torch.stft(x[..., 0], n_fft=16, hop_length=4, window=torch.from_numpy(HANN.astype(np.float64)),
                          center=False, return_complex=True).abs().transpose(1, 2)
    (ours,) = Executor(lm.graph, dtype=torch.float64)(x)
    np.testing.assert_allclose(ours.numpy(), spectrum.numpy(), rtol=1e-9, atol=1e-9)
    assert float(spectrum.norm()) <= bound * float(x.norm())


@pytest.mark.parametrize(("axis", "attrs", "parts", "length"), [
    (1, {}, 2, None), (2, {"onesided": 1}, 1, None), (1, {"inverse": 1}, 2, 12), (1, {"inverse": 1, "onesided": 1}, 2, None),
])
def test_dft(tmp_path: Path, axis: int, attrs: dict[str, int], parts: int, length: int | None) -> None:
    shape = (2, 8, 5, parts)
    inputs = ["x", "len" if length else ""]
    consts = {"len": np.array(length or 0, np.int64)}
    lm = check(save(tmp_path, [helper.make_node("DFT", inputs, ["y"], axis=axis, **attrs)], consts, shape), shape)
    exact_norm(lm, shape, rel=1e-5)


def test_dft_over_the_parts_axis_is_an_error(tmp_path: Path) -> None:
    shape = (2, 8, 2)
    path = save(tmp_path, [helper.make_node("DFT", ["x"], ["y"], axis=2)], {}, shape)
    with pytest.raises(ModelLoadError, match="last axis"):
        load_onnx(path)
