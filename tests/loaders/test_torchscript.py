"""Tests of the TorchScript loader: seeded modules scripted and traced, translated, run, compared."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabaudit.errors import ModelLoadError, ResourceError, UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders import torchscript as ts
from stabaudit.loaders.base import ModelFormat
from stabaudit.loaders.torchscript import load_torchscript

MODES = ("script", "trace")


# ---- modules under test ------------------------------------------------------------------------
def _randomize_bn(module: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return module


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block1 = Block(4)
        self.block2 = Block(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block2(self.block1(self.stem(x)))
        return self.fc(y.mean((2, 3)))


class Act(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) * 3.0)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, -0.5, 0.25) + torch.clamp_min(x, 0.1) - x.clamp(max=0.3)


class CatBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(2, 3, 3, padding=1)
        self.right = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), F.relu(self.right(x)), x], dim=1)


class AdaptivePools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.half_pool = nn.AdaptiveAvgPool2d((2, 3))
        self.max_pool = nn.AdaptiveMaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        parts = [self.global_pool(y).flatten(1), self.half_pool(y).flatten(1), self.max_pool(y).flatten(1)]
        return torch.cat(parts, 1)


class Conv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2)
        self.grouped = nn.Conv1d(4, 4, 3, groups=2, padding="same")
        self.pool = nn.MaxPool1d(2)
        self.avg = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avg(self.pool(F.elu(self.grouped(self.conv(x)))))


class ConvTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.up1d = nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up1d(F.leaky_relu(self.bn(self.up(x)), 0.2))


class Dropouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.5)
        self.alpha = nn.AlphaDropout(0.3)
        self.fc2 = nn.Linear(8, 4)
        self.drop2d = nn.Dropout2d(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.alpha(self.drop(F.relu(self.fc1(x))))
        return self.fc2(y).unsqueeze(-1).unsqueeze(-1) + 0 * self.drop2d(self.fc2(y).view(-1, 4, 1, 1))


class Arithmetic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 7))
        self.bias = nn.Parameter(torch.randn(7))
        self.register_buffer("offset", torch.randn(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)
        z = torch.addmm(self.bias, x, self.weight, beta=0.5, alpha=2.0)
        w = torch.add(y, z, alpha=-0.5) - torch.sub(z, y, alpha=3)
        w = (w / 4.0 - self.offset) * 1.5 + 1.0
        return torch.sigmoid(-(1.0 - w)) / 2


class Structural(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(self.conv(x), [1, 2, 0, 1])
        y = y.permute(0, 2, 3, 1).contiguous().transpose(1, 2)
        y = torch.stack([y, y * 2.0], dim=1)
        y = y.reshape(y.size(0), -1, 4).squeeze(0).unsqueeze(0)
        return F.softmax(y, dim=-1)


class Parts(nn.Module):
    """split by a size and by sizes, chunk (uneven: 7 into 3 parts of 3, 3, 1), unbind; the parts read
    by unpacking and by indexing the list."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # [2, 7]
        a, b = torch.split(h, [3, 4], dim=1)
        parts = torch.split(h, 3, dim=-1)  # 3, 3, 1
        c, d, e = h.chunk(3, dim=1)
        rows = torch.unbind(h, dim=0)
        return torch.cat([a * 2.0, b, parts[2], parts[0], e, d, c, torch.stack([rows[1], rows[0]], dim=0)], dim=1)


class Recurrent(nn.Module):
    """A 2-layer bidirectional batch-first LSTM from a given (buffer) state, a GRU without biases and
    an RNN: every output (y, h_n, c_n) returned."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(8, 3, bias=False)
        self.rnn = nn.RNN(3, 2)
        gen = torch.Generator().manual_seed(4)
        self.register_buffer("h0", torch.randn(4, 2, 4, generator=gen))
        self.register_buffer("c0", torch.randn(4, 2, 4, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        y, (h, c) = self.lstm(x, (self.h0, self.c0))  # [2, 5, 8]
        g, gh = self.gru(y.transpose(0, 1))  # [5, 2, 3]
        r, _ = self.rnn(g)
        return y, h, c, gh, r


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.gelu(self.fc(x))
        return h, self.head(h).detach().to(torch.float32)


class ControlFlow(nn.Module):
    """Shape-dependent branches and a loop: resolved at the static input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(3)])
        self.norm = nn.LayerNorm(6)  # only in a branch never taken at rank 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            x = self.norm(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        for _ in range(x.size(0)):
            x = x * 0.5
        return x


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(self.a(x)) - self.b(y)


class DeadCode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        discarded = self.norm(self.unused(x))  # noqa: F841
        return self.used(x)


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cumprod(self.fc(torch.cumprod(x, 1)), 1)
        return torch.sign(y) + F.relu(y)


class Normalizations(nn.Module):
    """GroupNorm, InstanceNorm (with and without affine), LayerNorm over two trailing dims and over
    one without affine, and InstanceNorm with tracked statistics (then a per-channel map in eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(2, 4, eps=1e-3)
        self.inn = nn.InstanceNorm2d(4, affine=True)
        self.inn_plain = nn.InstanceNorm2d(4)
        self.tracked = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.ln = nn.LayerNorm([5, 6])
        self.ln_plain = nn.LayerNorm(6, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_plain(self.ln(self.gn(x) + self.inn(x) - self.inn_plain(x))) + self.tracked(x)


class CausalAttention(nn.Module):
    """A GPT-style block: LayerNorm, one Linear to q, k, v, scores q k^T of two variables, a causal
    mask by masked_fill(-inf) from a buffer, softmax, the values' product, a residual projection."""

    def __init__(self, t: int = 6, c: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.heads = heads
        self.register_buffer("bias", torch.tril(torch.ones(t, t)).view(1, 1, t, t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln(x)).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c)
        return x + self.proj(y)


class LibraryAttention(nn.Module):
    """scaled_dot_product_attention, causal with a given scale, and with a boolean padding mask
    that keeps the first 4 of 6 keys."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.register_buffer("keep", torch.arange(6).view(1, 1, 1, 6) < 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).view(1, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)
        return (a + b).transpose(1, 2).reshape(1, 6, 8)


def _randomize_norms(module: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in module.modules():
            if getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (MLP, (3, 12)),
    "cnn": (lambda: _randomize_bn(CNN()), (2, 2, 8, 8)),
    "resnet": (lambda: _randomize_bn(ResNet()), (1, 1, 6, 6)),
    "cat": (CatBranches, (1, 2, 5, 5)),
    "adaptive_pools": (AdaptivePools, (1, 2, 4, 6)),
    "conv1d": (Conv1d, (2, 3, 17)),
    "conv_transpose": (lambda: _randomize_bn(ConvTranspose()), (1, 3, 4, 5)),
    "dropout": (Dropouts, (2, 6)),
    "arithmetic": (Arithmetic, (3, 5)),
    "structural": (Structural, (1, 2, 5, 6)),
    "clamp": (Clamp, (2, 9)),
    "two_outputs": (TwoOutputs, (2, 4)),
    "parts": (Parts, (2, 3)),
    "recurrent": (Recurrent, (2, 5, 3)),
    "control_flow": (ControlFlow, (3, 6)),
    "normalizations": (lambda: _randomize_norms(Normalizations()), (2, 4, 5, 6)),
    "causal_attention": (CausalAttention, (1, 6, 8)),
    "library_attention": (LibraryAttention, (1, 6, 8)),
}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(3, init=0.3),
    "prelu_shared": lambda: nn.PReLU(1, init=0.2),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": lambda: nn.Softplus(beta=2.0),
    # beta x > threshold switches to x: a jump of log1p(exp(-1)) / 2 = 0.157 the executor must take
    "softplus_threshold": lambda: nn.Softplus(beta=2.0, threshold=1.0),
    "elu": lambda: nn.ELU(0.5),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.7),
    "relu6": nn.ReLU6,
    "threshold_continuous": lambda: nn.Threshold(0.3, 0.3),  # max(x, 0.3): no jump
    "softmax": lambda: nn.Softmax(dim=1),
    "log_softmax": lambda: nn.LogSoftmax(dim=1),
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(0.7),
    "celu_1": nn.CELU,
}


# ---- helpers -----------------------------------------------------------------------------------
def _save(module: nn.Module, shape: tuple[int, ...], mode: str, path: Path, *, extra: dict[str, str] | None = None) -> Path:
    module.eval()
    example = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    compiled = torch.jit.script(module) if mode == "script" else torch.jit.trace(module, example)
    torch.jit.save(compiled, str(path), _extra_files=extra or {})
    return path


def _check_equivalent(module: nn.Module, shape: tuple[int, ...], mode: str, tmp_path: Path) -> None:
    path = _save(module, shape, mode, tmp_path / f"model_{mode}.pt")
    loaded = load_torchscript(path, input_shape=shape)
    assert loaded.format is ModelFormat.TORCHSCRIPT
    assert loaded.reference_name == "torchscript"
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = module(x)
        got = Executor(loaded.graph)(x)
    expected_list = list(expected) if isinstance(expected, tuple) else [expected]
    assert len(got) == len(expected_list)
    for g, e in zip(got, expected_list, strict=True):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-5, rtol=0)
    reference = loaded.reference({loaded.graph.input_names[0]: x.numpy()})
    for r, e in zip(reference, expected_list, strict=True):
        np.testing.assert_array_equal(r, e.numpy())
    for node in loaded.graph.nodes:  # every value has a static shape
        assert node.output in loaded.graph.shapes


# ---- equivalence -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_translation_matches_module(case: str, mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    make, shape = CASES[case]
    _check_equivalent(make(), shape, mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_activation(name: str, mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _check_equivalent(Act(ACTIVATIONS[name]()), (2, 3, 4, 4), mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_cnn_graph_structure_and_names(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _randomize_bn(CNN()).eval()
    loaded = load_torchscript(_save(module, (1, 2, 8, 8), mode, tmp_path / "cnn.pt"), input_shape=(1, 2, 8, 8))
    graph = loaded.graph
    assert [n.name for n in graph.nodes][:4] == ["features.0", "features.1", "features.2", "features.3"]
    assert [n.op.type for n in graph.nodes] == [
        O.OpType.CONV, O.OpType.AFFINE, O.OpType.RELU, O.OpType.MAX_POOL,
        O.OpType.CONV, O.OpType.AFFINE, O.OpType.RELU, O.OpType.AVG_POOL,
        O.OpType.RESHAPE, O.OpType.LINEAR,
    ]
    assert graph.nodes[-1].name == "classifier"
    conv = graph.nodes[0].op
    assert isinstance(conv, O.Conv)
    np.testing.assert_array_equal(conv.weight, module.features[0].weight.detach().numpy())
    assert conv.pads == (1, 1, 1, 1) and conv.strides == (1, 1)
    bn = graph.nodes[1].op
    assert isinstance(bn, O.Affine) and bn.scale is not None and bn.scale.shape == (4, 1, 1)
    assert bn.scale.dtype == np.float64
    layer = module.features[1]
    expected_scale = layer.weight.detach().double() / torch.sqrt(layer.running_var.double() + layer.eps)
    np.testing.assert_allclose(bn.scale.reshape(-1), expected_scale.numpy(), rtol=1e-15)
    assert graph.shapes["classifier"] == (1, 3)
    # parameters + float buffers; num_batches_tracked (int64) is not counted
    expected = sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for b in module.buffers() if b.is_floating_point()
    )
    assert loaded.parameters == expected
    assert loaded.source_ops["aten::batch_norm"] == 2
    assert any("batch_norm" in note for note in loaded.notes)


def test_residual_add_is_a_variable_add(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _randomize_bn(ResNet())
    loaded = load_torchscript(_save(module, (1, 1, 6, 6), "script", tmp_path / "r.pt"), input_shape=(1, 1, 6, 6))
    adds = [n for n in loaded.graph.nodes if n.op.type is O.OpType.ADD]
    assert [n.name for n in adds] == ["block1.add", "block2.add"]
    assert all(len(set(n.inputs)) == 2 for n in adds)
    assert loaded.graph.nodes[-2].op.type is O.OpType.RESHAPE  # mean without keepdim
    assert loaded.graph.nodes[-3].op.type is O.OpType.GLOBAL_AVG_POOL


def test_dropout_is_removed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = load_torchscript(_save(Dropouts(), (2, 6), "script", tmp_path / "d.pt"), input_shape=(2, 6))
    assert "dropout removed (eval mode)" in loaded.notes
    assert not any("dropout" in n.source_op for n in loaded.graph.nodes)


def test_input_shape_from_extra_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = json.dumps({"input_shape": [4, 12]})
    path = _save(MLP(), (4, 12), "trace", tmp_path / "m.pt", extra={ts.EXTRA_FILE: meta})
    loaded = load_torchscript(path)
    assert loaded.graph.inputs[0].shape == (4, 12)
    assert loaded.graph.shapes[loaded.graph.outputs[0]] == (4, 5)
    explicit = load_torchscript(path, input_shape=(2, 12))  # the argument wins
    assert explicit.graph.inputs[0].shape == (2, 12)


def test_two_inputs_from_extra_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TwoInputs().eval()
    x, y = torch.randn(2, 3), torch.randn(2, 5)
    path = tmp_path / "two.pt"
    meta = json.dumps({"input_shapes": [[2, 3], [2, 5]]})
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={ts.EXTRA_FILE: meta})
    loaded = load_torchscript(path)
    assert loaded.graph.input_names == ("x", "y")
    with torch.no_grad():
        np.testing.assert_allclose(Executor(loaded.graph)(x, y)[0].numpy(), module(x, y).numpy(), atol=1e-6)
    assert loaded.graph.nodes[-1].op.type is O.OpType.SUB
    with pytest.raises(ModelLoadError, match="2 inputs"):
        load_torchscript(path, input_shape=(2, 3))


def test_frozen_archive(tmp_path: Path) -> None:
    """torch.jit.freeze turns parameters into graph constants (and folds BN into the conv)."""
    torch.manual_seed(0)
    module = _randomize_bn(CNN()).eval()
    path = tmp_path / "frozen.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(module)), str(path))
    loaded = load_torchscript(path, input_shape=(1, 2, 8, 8))
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(Executor(loaded.graph)(x)[0].numpy(), module(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_dead_code_is_not_translated(mode: str, tmp_path: Path) -> None:
    loaded = load_torchscript(_save(DeadCode(), (1, 3), mode, tmp_path / "dead.pt"), input_shape=(1, 3))
    assert [n.name for n in loaded.graph.nodes] == ["used"]


def test_operator_list_covers_brief() -> None:
    listed = set(ts.supported_operators())
    for op in ("aten::linear", "aten::conv2d", "aten::_convolution", "aten::batch_norm", "aten::cat",
               "aten::adaptive_avg_pool2d", "aten::dropout", "aten::softmax", "aten::addmm", "aten::layer_norm",
               "aten::group_norm", "aten::instance_norm", "aten::log_softmax", "aten::selu", "aten::celu",
               "aten::masked_fill", "aten::bmm", "aten::scaled_dot_product_attention"):
        assert op in listed


# ---- errors ------------------------------------------------------------------------------------
def test_missing_input_shape(tmp_path: Path) -> None:
    # a scripted CNN: its first convolution fixes the channels, nothing fixes the spatial size
    path = _save(CNN(), (1, 2, 8, 8), "script", tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="--input-shape 1,2,H,W"):
        load_torchscript(path)


def test_bad_extra_file(tmp_path: Path) -> None:
    path = _save(MLP(), (1, 12), "script", tmp_path / "m.pt", extra={ts.EXTRA_FILE: "{not json"})
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_torchscript(path)
    path = _save(MLP(), (1, 12), "script", tmp_path / "n.pt", extra={ts.EXTRA_FILE: '{"input_shape": [1, -2]}'})
    with pytest.raises(ModelLoadError, match="positive integers"):
        load_torchscript(path)


def test_truncated_archive(tmp_path: Path) -> None:
    path = _save(CNN(), (1, 2, 8, 8), "script", tmp_path / "full.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript archive") as info:
        load_torchscript(cut, input_shape=(1, 2, 8, 8))
    assert "\n" not in str(info.value)


def test_torch_save_pickle_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save(MLP().state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript archive"):
        load_torchscript(path, input_shape=(1, 12))


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"hello, I am not an archive")
    with pytest.raises(ModelLoadError):
        load_torchscript(path, input_shape=(1, 12))
    with pytest.raises(ModelLoadError, match="not found"):
        load_torchscript(tmp_path / "absent.pt", input_shape=(1, 12))


def test_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(MLP(), (1, 12), "script", tmp_path / "m.pt")
    monkeypatch.setattr(ts, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(ResourceError, match="exceeds the limit"):
        load_torchscript(path, input_shape=(1, 12))


@pytest.mark.parametrize("mode", MODES)
def test_unsupported_operators_listed_with_counts(mode: str, tmp_path: Path) -> None:
    path = _save(Unsupported(), (2, 4), mode, tmp_path / "u.pt")
    with pytest.raises(UnsupportedOperatorError) as info:
        load_torchscript(path, input_shape=(2, 4))
    assert info.value.counts == {"aten::cumprod": 2, "aten::sign": 1}
    assert "SA901" in str(info.value)


def test_archive_is_a_zip_of_code_not_pickled_objects(tmp_path: Path) -> None:
    """Sanity: what we load is torch.jit.save's zip (code + constants), read by torch.jit.load."""
    path = _save(MLP(), (1, 12), "script", tmp_path / "m.pt")
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        assert any(name.endswith("constants.pkl") for name in archive.namelist())


@pytest.mark.parametrize(("beta", "threshold"), [(1.0, 20.0), (2.0, 5.0), (0.5, -2.0)])
def test_softplus_keeps_its_threshold(beta: float, threshold: float, tmp_path: Path) -> None:
    path = _save(nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=beta, threshold=threshold)), (2, 3), "script", tmp_path / "s.pt")
    graph = load_torchscript(path, input_shape=(2, 3)).graph
    (sp,) = [n.op for n in graph.nodes if isinstance(n.op, O.Softplus)]
    assert sp.beta == beta and sp.threshold == threshold


class _Branching(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "threshold":
            return F.threshold(x, 0.5, 2.0)  # x if x > 0.5 else 2.0: a jump of 1.5
        if self.kind == "where":
            return torch.where(x > 0.5, x, torch.zeros_like(x))
        return F.softplus(x, 1.0, float("inf"))


@pytest.mark.parametrize(("kind", "refused"), [
    ("threshold", "aten::threshold (value 2.0 != threshold 0.5: a jump of 1.5 at x = 0.5)"),
    ("where", "aten::gt"),
    ("softplus_inf", "aten::softplus (threshold inf (the executed formula overflows))"),
])
def test_branching_ops_without_a_certified_jump_are_refused(kind: str, refused: str, tmp_path: Path) -> None:
    # no translation can carry their switch (or overflow): the audit refuses them (exit 2, SA901)
    path = _save(_Branching(kind), (2, 3), "script", tmp_path / "b.pt")
    with pytest.raises(UnsupportedOperatorError) as info:
        load_torchscript(path, input_shape=(2, 3))
    assert refused in info.value.counts


# ---- float16 / bfloat16 ------------------------------------------------------------------------
class _HalfCasts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)).to(torch.float32).to(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["trace", "script"])
def test_half_precision_weights_upcast_exactly(tmp_path: Path, dtype: torch.dtype, mode: str) -> None:
    module = _HalfCasts().to(dtype)
    module.eval()
    compiled = torch.jit.script(module) if mode == "script" else torch.jit.trace(module, torch.ones(1, 4, dtype=dtype))
    path = tmp_path / "m.pt"
    torch.jit.save(compiled, str(path))
    lm = load_torchscript(path, input_shape=(1, 4))
    assert lm.precision == str(dtype).removeprefix("torch.")
    linear = next(n.op for n in lm.graph if isinstance(n.op, O.Linear))
    assert linear.weight.dtype == np.float32 and linear.bias is not None
    np.testing.assert_array_equal(linear.weight, module.fc.weight.detach().float().numpy())
    np.testing.assert_array_equal(linear.bias, module.fc.bias.detach().float().numpy())
    assert [n.op.type.value for n in lm.graph] == ["Linear", "Relu"]  # the casts only round
    x = np.full((1, 4), 0.5, np.float32)
    out = lm.reference({lm.graph.input_names[0]: x})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x).to(dtype)).float().numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, want)


def test_recurrent_variants_outside_the_onnx_cells_are_refused(tmp_path: Path) -> None:
    """proj_size adds a projection ONNX's LSTM does not have; an initial state computed from the
    input is not a constant."""

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, proj_size=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    class StateFromInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gru(x, x[:1].tanh())[0]

    for module, detail in ((Projected(), "proj_size"), (StateFromInput(), "initial hidden state computed from the input")):
        path = _save(module, (4, 1, 3), "trace", tmp_path / "r.pt")
        with pytest.raises(UnsupportedOperatorError) as info:
            load_torchscript(path, input_shape=(4, 1, 3))
        assert any(detail in key for key in info.value.counts), info.value.counts


@pytest.mark.parametrize("mode", MODES)
def test_a_causal_mask_becomes_the_softmax_mask(mode: str, tmp_path: Path) -> None:
    """masked_fill(-inf) before the softmax fuses into a Softmax with the causal mask: no -inf
    constant is left in the graph (SA402 would read it as a non-finite parameter)."""
    torch.manual_seed(0)
    path = _save(CausalAttention(), (1, 6, 8), mode, tmp_path / "attn.pt")
    graph = load_torchscript(path, input_shape=(1, 6, 8)).graph
    soft = [n for n in graph.nodes if isinstance(n.op, O.Softmax)]
    assert len(soft) == 1 and soft[0].op.mask is not None
    np.testing.assert_array_equal(np.asarray(soft[0].op.mask).reshape(6, 6), np.tril(np.ones((6, 6), dtype=bool)))
    assert not any(isinstance(n.op, O.Where) for n in graph.nodes)
    assert sum(isinstance(n.op, O.MatMul) for n in graph.nodes) == 2


@pytest.mark.parametrize("norm_first", [True, False])
def test_the_fused_attention_fast_paths_match_the_module(norm_first: bool, tmp_path: Path) -> None:
    """Scripted in eval, nn.MultiheadAttention and nn.TransformerEncoderLayer run their fused fast
    paths: they load as products, a softmax, linear maps and LayerNorms that match the module."""

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first,
                                                    activation="gelu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.mha(x, x, x, need_weights=False)[0])

    torch.manual_seed(3)
    module = Stack().eval()
    path = _save(module, (1, 5, 8), "script", tmp_path / "stack.pt")
    loaded = load_torchscript(path, input_shape=(1, 5, 8))
    sources = {n.source_op for n in loaded.graph.nodes}
    assert {"aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd"} <= sources
    x = torch.randn((1, 5, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = module.double()(x.double())
        got = Executor(loaded.graph, dtype=torch.float64)(x.double())[0]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


class _T5Norm(nn.Module):
    """RMSNorm as T5 and LLaMA-style code writes it: x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))


class _RmsBlock(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(6, 6), norm, nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.fc(x))))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["nn", "nn_default_eps", "t5"])
def test_rms_norm_loads_as_one_uncentred_layer_norm(kind: str, mode: str, tmp_path: Path) -> None:
    """nn.RMSNorm (aten::rms_norm, eps given or torch's default, the dtype's epsilon) and the
    decomposed form (pow, mean, add, rsqrt, mul: fused by ir.passes.fuse_rms_norm) both load as one
    LayerNorm(centered=False), match the module, and get the global constant max|w| / sqrt(eps)."""
    torch.manual_seed(0)
    if kind == "t5":
        norm: nn.Module = _T5Norm(6)
    else:
        norm = nn.RMSNorm(6, eps=1e-6 if kind == "nn" else None)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
    module = _RmsBlock(norm)
    _check_equivalent(module, (2, 4, 6), mode, tmp_path)
    loaded = load_torchscript(tmp_path / f"model_{mode}.pt", input_shape=(2, 4, 6))
    assert [type(n.op).__name__ for n in loaded.graph.nodes] == ["Linear", "LayerNorm", "Relu", "Linear"]
    op = loaded.graph.nodes[1].op
    eps = 1e-6 if kind != "nn_default_eps" else float(torch.finfo(torch.float32).eps)
    assert not op.centered and op.epsilon == pytest.approx(eps) and op.scale is not None
    np.testing.assert_allclose(op.scale.reshape(-1), norm.weight.detach().numpy())


class _TextEncoder(nn.Module):
    """Token ids (and an optional 0/1 attention mask) -> embeddings + positions -> a transformer
    layer -> a masked mean -> a classifier: a text model as torch.jit.trace records it."""

    def __init__(self, masked: bool = False):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.pos = nn.Parameter(torch.randn(6, 8) * 0.1)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.out = nn.Linear(8, 3)
        self.masked = masked

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.layer(self.emb(ids) + self.pos)
        if attention_mask is not None:
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.out((h * w).sum(1) / w.sum(1))
        return self.out(h.mean(1))


@pytest.mark.parametrize("masked", [False, True])
def test_traced_token_ids_are_held_and_the_audit_starts_at_the_embedding(masked: bool, tmp_path: Path) -> None:
    """Integer inputs of a traced archive (their dtype from the recorded example) are held: ids at
    seeded values in [0, rows) of the table they index, a mask at ones; the aten::embedding of the
    ids is the start tensor, and the engine from its values matches the module on the held ids, in
    this process and through the isolated loader."""
    from stabaudit.analyses.equivalence import check_equivalence
    from stabaudit.loaders import load_model

    torch.manual_seed(0)
    module = _TextEncoder(masked).eval()
    ids = torch.randint(0, 30, (1, 6))
    example = (ids, torch.ones(1, 6, dtype=torch.int64)) if masked else (ids,)
    with torch.no_grad():
        torch.jit.trace(module, example).save(str(tmp_path / "text.pt"))
    for loaded in (load_torchscript(tmp_path / "text.pt"), load_model(tmp_path / "text.pt")):
        assert [s.name for s in loaded.graph.inputs] == list(loaded.start)
        (start,) = loaded.start
        assert loaded.graph.shapes[start] == (1, 6, 8)
        assert "seeded ids in [0, 30)" in loaded.held["ids"] and "'emb.weight'" in loaded.held["ids"]
        if masked:
            assert loaded.held["attention_mask"] == "all ones (a mask)"
        assert loaded.reference_at is not None
        feeds, _ = loaded.reference_at(np.random.default_rng(0))
        rows = module.emb.weight.detach().numpy()
        assert any(np.array_equal(feeds[start][0, i], rows[k]) for i in range(6) for k in range(30))
        result = check_equivalence(loaded, seed=0)
        assert result.passed and result.max_abs_diff < 1e-5, result


def test_held_ids_that_reach_no_embedding_are_refused_by_name(tmp_path: Path) -> None:
    """An integer input whose only use is a float cast (no table to start from): a one-line refusal
    that names the held input."""

    class Counts(nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids.to(torch.float32) * 2.0

    with torch.no_grad():
        torch.jit.trace(Counts(), (torch.randint(0, 5, (1, 4)),)).save(str(tmp_path / "counts.pt"))
    with pytest.raises(ModelLoadError, match="integer input.*'ids'.*no embedding"):
        load_torchscript(tmp_path / "counts.pt")


class _Einsums(nn.Module):
    """torch.einsum of two variables (attention's scores and mixing), of a variable and a
    constant weight, a transpose and a sum over a letter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("bsd,de->bse", x, self.w)  # [1, 3, 6]
        p = torch.softmax(torch.einsum("bqd,bkd->bqk", h, h), -1)
        y = torch.einsum("bqk,bkd->bqd", p, h)
        return torch.einsum("bsd->bds", y) + torch.einsum("bsd->bd", h)[:, :, None]


@pytest.mark.parametrize("mode", MODES)
def test_einsum_lowers_as_onnx_einsum(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _check_equivalent(_Einsums(), (1, 3, 4), mode, tmp_path)
    loaded = load_torchscript(_save(_Einsums(), (1, 3, 4), mode, tmp_path / "e.pt"), input_shape=(1, 3, 4))
    names = [type(n.op).__name__ for n in loaded.graph.nodes]
    assert names.count("MatMul") == 2 and names.count("Linear") == 1 and "ReduceSum" in names
