"""The TorchScript loader on reductions and element-wise extrema, traced and scripted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from stabaudit.ir import ops as O
from stabaudit.loaders.torchscript import load_torchscript
from tests.loaders.test_torchscript import _check_equivalent, _save

MODES = ("trace", "script")


class Reduce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cap", torch.linspace(-0.5, 0.5, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.sum(dim=[1, 3], keepdim=True).flatten(1)  # [2, 4]
        b = x.mean(dim=-1).flatten(1)  # [2, 12]
        c = x.max(dim=2)[0].flatten(1)  # [2, 15]
        d = x.min(dim=1, keepdim=True)[0].flatten(1)  # [2, 20]
        e = torch.linalg.vector_norm(x, 2, dim=[2]).flatten(1)
        f = torch.logsumexp(x, dim=[1, 2])  # [2, 5]
        g = torch.maximum(a, x.amin(dim=[1, 3]))
        h = torch.min(b, self.cap)
        return torch.cat([a, b, c, d, e, f, g, h], 1)


@pytest.mark.parametrize("mode", MODES)
def test_reductions_match_the_module(mode: str, tmp_path: Path) -> None:
    _check_equivalent(Reduce(), (2, 3, 4, 5), mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_a_mean_over_spatial_axes_stays_a_global_pool(mode: str, tmp_path: Path) -> None:
    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=[2, 3]) + x.mean(dim=[1, 2, 3]).unsqueeze(1)

    path = _save(Mean(), (1, 3, 4, 5), mode, tmp_path / "m.pt")
    ops = [type(n.op) for n in load_torchscript(path, input_shape=(1, 3, 4, 5)).graph.nodes]
    assert O.GlobalAvgPool in ops and O.ReduceMean in ops
