"""The TorchScript loader on reductions and element-wise extrema, traced and scripted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
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


class Classifier(nn.Module):
    """Scores and their argmax, as a deployment script returns them."""

    def __init__(self, use_index: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.use_index = use_index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.fc(x).softmax(-1)
        index = probs.argmax(-1)
        if self.use_index:  # the top score read by its index: a value computed from the label
            return probs, probs.gather(1, index.unsqueeze(1))
        return probs, index


@pytest.mark.parametrize("mode", MODES)
def test_an_argmax_output_is_left_out_and_the_scores_audited(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Classifier().eval()
    path = _save(module, (2, 6), mode, tmp_path / "c.pt")
    loaded = load_torchscript(path, input_shape=(2, 6))
    assert len(loaded.graph.outputs) == 1
    assert any("forward output(s) 1 are class indices" in note for note in loaded.notes)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs, _ = module(x)
        (got,) = Executor(loaded.graph)(x)
    np.testing.assert_allclose(got.numpy(), probs.numpy(), atol=1e-6, rtol=0)
    (reference,) = loaded.reference({loaded.graph.input_names[0]: x.numpy()})  # the scores only
    np.testing.assert_array_equal(reference, probs.numpy())


@pytest.mark.parametrize("mode", MODES)
def test_a_value_read_by_the_argmax_index_is_refused(mode: str, tmp_path: Path) -> None:
    path = _save(Classifier(use_index=True), (2, 6), mode, tmp_path / "c.pt")
    with pytest.raises(UnsupportedOperatorError) as info:
        load_torchscript(path, input_shape=(2, 6))
    assert any("argmax" in key for key in info.value.counts)


def test_a_forward_of_only_an_argmax_is_refused(tmp_path: Path) -> None:
    class Only(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.argmax(-1)

    path = _save(Only(), (2, 6), "trace", tmp_path / "o.pt")
    with pytest.raises(UnsupportedOperatorError) as info:
        load_torchscript(path, input_shape=(2, 6))
    assert any("argmax" in key for key in info.value.counts)


class Statistics(nn.Module):
    """Statistics pooling (x-vector speaker embeddings) and the other overloads of std and var."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.std(-1)  # [2, 3, 4], unbiased
        b = x.var(dim=[1, 2], unbiased=False, keepdim=True).flatten(1)  # [2, 5]
        c = torch.var(x, dim=1, correction=0).flatten(1)  # [2, 20]
        d = torch.std(x).reshape(1, 1).expand(2, 1)  # every entry
        return torch.cat([a.flatten(1), b, c, d], 1)


@pytest.mark.parametrize("mode", MODES)
def test_std_and_var_match_the_module(mode: str, tmp_path: Path) -> None:
    _check_equivalent(Statistics(), (2, 3, 4, 5), mode, tmp_path)
