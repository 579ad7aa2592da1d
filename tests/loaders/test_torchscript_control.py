"""Scripted control flow resolved at the static input shape: branches on the rank, loops over
fixed ranges and module lists, lists and dicts of tensors, asserts; data-dependent branches refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabaudit.errors import ModelLoadError, UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.torchscript import load_torchscript


class RankBranch(nn.Module):
    """A 3-d input gets a batch dim; a loop over a fixed range; an assert with a formatted message."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.size(-1) == 6, f"expected width 6, got {x.size(-1)}"
        if x.dim() == 3:
            x = x.unsqueeze(0)
        y = self.conv(x)
        for _ in range(2):
            y = F.relu(y) * 0.5
        return self.fc(y.reshape(y.size(0), -1))


class TensorLists(nn.Module):
    """Tensors appended to a list in a loop over a ModuleList, stacked; a dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x) / math.sqrt(float(x.size(-1) + i))
            outs.append(x)
        named: dict[str, torch.Tensor] = {}
        named["last"] = outs[-1]
        named["first"] = outs[0]
        h = named["last"] - named["first"]
        for _ in range(x.size(1) // 2):  # a trip count from the shape
            h = h + torch.tanh(h)
        return torch.stack(outs, 0).sum(0) + h


class WhileLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i < 3:
            x = self.fc(x)
            i += 1
        return x


@pytest.mark.parametrize(("make", "shape"), [(RankBranch, (3, 6, 6)), (RankBranch, (2, 3, 6, 6)),
                                             (TensorLists, (2, 4)), (WhileLoop, (1, 4))])
def test_scripted_control_flow_matches_module(make: type[nn.Module], shape: tuple[int, ...], tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = make().eval()
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = load_torchscript(path, input_shape=shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = module(x).numpy()
    got = Executor(loaded.graph)(x)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(loaded.reference({loaded.graph.input_names[0]: x.numpy()})[0], want)


def test_loop_unrolls_into_layers(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.jit.save(torch.jit.script(WhileLoop().eval()), str(path))
    assert [n.op.type.value for n in load_torchscript(path, input_shape=(1, 4)).graph.nodes] == ["Linear"] * 3


def test_assert_failing_at_the_shape_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "r.pt"
    torch.jit.save(torch.jit.script(RankBranch().eval()), str(path))
    with pytest.raises(ModelLoadError, match="forward raises at this input shape: AssertionError: expected width 6, got 5"):
        load_torchscript(path, input_shape=(1, 3, 6, 5))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return self.fc(x)
        return -self.fc(x)


def test_branch_on_the_input_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.pt"
    torch.jit.save(torch.jit.script(DataDependent().eval()), str(path))
    with pytest.raises(UnsupportedOperatorError) as info:
        load_torchscript(path, input_shape=(1, 4))
    assert "aten::Bool (depends on the input's values)" in info.value.counts


class Pieces(nn.Module):
    """Shape unpacking, a list comprehension over chunks, an accumulator from zeros_like, isinstance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ys = [self.conv(torch.cat([p, p * 2.0], 1)) for p in x.chunk(2, dim=1)]
        y = F.interpolate(torch.cat(ys, 1), scale_factor=2.0, mode="nearest")
        acc = torch.zeros_like(y)
        for i in range(2):
            acc = acc + y * float(i + 1)
        if isinstance(x, torch.Tensor):
            acc = acc - torch.ones_like(acc) * 0.5
        return acc.view(b, 2, -1).flatten(1)


def test_comprehensions_and_constants_of_the_input_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Pieces().eval()
    path = tmp_path / "p.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = load_torchscript(path, input_shape=(1, 4, 3, 3))
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(Executor(loaded.graph)(x)[0].numpy(), want, rtol=0, atol=1e-5)
    assert loaded.source_ops["aten::zeros_like"] == 1 and loaded.source_ops["aten::ones_like"] == 1
    assert sum(n.op.type.value == "Conv" for n in loaded.graph.nodes) == 2
