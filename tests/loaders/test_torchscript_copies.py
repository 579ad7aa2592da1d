"""TorchScript's padding modes, roll, cumsum and adaptive average pooling with uneven windows:
each loads as copies or a linear map along one axis, matches the module, and its certified bound
is the map's exact norm."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.torchscript import load_torchscript
from tests.loaders.support import exact_norm

SHAPE = (1, 2, 5, 6)


class Apply(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def load(fn: Callable[[torch.Tensor], torch.Tensor], tmp_path: Path, shape: tuple[int, ...] = SHAPE) -> LoadedModel:
    """Traced, loaded, and the engine's forward pass equal to the module's."""
    module = Apply(fn).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(shape)), str(path))
    loaded = load_torchscript(path, input_shape=shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    (got,) = Executor(loaded.graph)(x)
    np.testing.assert_allclose(got.numpy(), fn(x).numpy(), atol=1e-6, rtol=0)
    return loaded


@pytest.mark.parametrize(("fn", "expected"), [
    (lambda x: F.pad(x, (2, 1, 1, 0), mode="reflect"), 2.0),  # W: entries 1 and 4 twice; H: entry 1 twice
    (lambda x: F.pad(x, (0, 3, 2, 0), mode="replicate"), 2.0 * math.sqrt(3.0)),  # 4 copies of the last column, 3 of the first row
    (lambda x: F.pad(x, (1, 1, 0, 2), mode="circular"), 2.0),
    (lambda x: torch.roll(x, shifts=(2, -1), dims=(2, 3)), 1.0),
    (lambda x: torch.roll(x, 4), 1.0),
])
def test_copies(fn: Callable[[torch.Tensor], torch.Tensor], expected: float, tmp_path: Path) -> None:
    assert exact_norm(load(fn, tmp_path), SHAPE) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dim", [1, 2, -1])
def test_cumsum(dim: int, tmp_path: Path) -> None:
    """The bound is the norm of the n x n lower-triangular matrix of ones, 1 / (2 sin(pi / (4n + 2)))."""
    n = SHAPE[dim]
    bound = exact_norm(load(lambda x: torch.cumsum(x, dim=dim), tmp_path), SHAPE)
    assert bound == pytest.approx(1.0 / (2.0 * math.sin(math.pi / (4 * n + 2))), rel=1e-9)


@pytest.mark.parametrize("size", [(3, 4), (2, 6), (4, 5)])
def test_adaptive_average_pooling_with_uneven_windows(size: tuple[int, int], tmp_path: Path) -> None:
    """5 x 6 to sizes that do not divide it: one averaging matrix per axis (overlapping windows)."""
    exact_norm(load(lambda x: F.adaptive_avg_pool2d(x, size), tmp_path), SHAPE)
