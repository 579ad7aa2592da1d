"""torch.stft in a traced TorchScript module: the transform loads as a strided Conv of the window
times the DFT's cosines and sines, its complex output is read only by abs, view_as_real, real and
imag, and the result matches the module with the linear part's exact norm as its bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.torchscript import load_torchscript
from tests.loaders.support import exact_norm

SHAPE = (2, 96)


class Apply(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], window: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.register_buffer("window", window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.window)


def load(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tmp_path: Path,
         window: torch.Tensor | None = None) -> LoadedModel:
    module = Apply(fn, torch.hann_window(16) if window is None else window).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(SHAPE)), str(path))
    loaded = load_torchscript(path, input_shape=SHAPE)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    (got,) = Executor(loaded.graph)(x)
    np.testing.assert_allclose(got.numpy(), module(x).numpy(), atol=1e-5, rtol=1e-5)
    return loaded


@pytest.mark.parametrize("options", [
    {"center": False},
    {"center": True, "pad_mode": "reflect"},
    {"center": False, "normalized": True, "onesided": False},
    {"center": False, "win_length": 10},
])
def test_stft_parts_are_its_linear_map(options: dict[str, object], tmp_path: Path) -> None:
    """view_as_real of torch.stft (n_fft 16, hop 4): the bound is the map's exact norm; center
    padding in reflect mode is its own aten::pad (a Gather), whose bound multiplies the STFT's."""
    win = torch.hann_window(options.get("win_length", 16))  # type: ignore[arg-type]

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(torch.stft(x, n_fft=16, hop_length=4, window=w, return_complex=True,
                                             **options))  # type: ignore[arg-type]

    exact_norm(load(fn, tmp_path, win), SHAPE, tight=not options["center"], rel=1e-5)


def test_magnitude_real_and_imaginary_parts(tmp_path: Path) -> None:
    """abs is the modulus (ReduceL2 over the parts); real and imag select one part each."""
    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = torch.stft(x, n_fft=16, hop_length=8, window=w, center=False, return_complex=True)
        return torch.cat([z.abs(), z.real, z.imag], 1)

    lm = load(fn, tmp_path)
    names = [type(n.op).__name__ for n in lm.graph.nodes]
    assert names.count("ReduceL2") == 1 and names.count("Gather") == 2 and names.count("Conv") == 1


@pytest.mark.parametrize(("fn", "match"), [
    (lambda x, w: (torch.stft(x, 16, 4, window=w, center=False, return_complex=True) * 2).abs(), "complex input"),
    (lambda x, w: torch.stft(x, 16, 4, window=w, center=False, return_complex=True), "complex output"),
])
def test_other_uses_of_a_complex_value_are_refused(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                                   match: str, tmp_path: Path) -> None:
    module = Apply(fn, torch.hann_window(16)).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(SHAPE)), str(path))
    with pytest.raises(UnsupportedOperatorError, match=match):
        load_torchscript(path, input_shape=SHAPE)
