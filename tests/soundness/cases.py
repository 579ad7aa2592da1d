"""The soundness cases: one small seeded model per operator (family), with its float64 reference."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stabaudit.ir.ops import OpType

ONNX, TS = "onnx", "torchscript"


@dataclass(frozen=True, kw_only=True)
class OnnxSpec:
    """A graph written with onnx.helper: ``nodes(params)`` and its float64 torch reference.

    ``params`` are float32 arrays (the stored initializers); the reference reads the same arrays, cast
    exactly to float64.
    """

    nodes: Callable[[dict[str, np.ndarray]], list[Any]]
    params: Callable[[], dict[str, np.ndarray]]
    reference: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    opset: int = 17
    constants: tuple[str, ...] = ()  # params that are not weights (shapes, axes): never scaled


@dataclass(frozen=True, kw_only=True)
class Case:
    """One model: ``module`` (exported to ONNX and TorchScript) or ``onnx`` (ONNX only).

    ``ops``: the IR operators the loaded graph holds (checked against the loader's graph);
    ``onnx_ops`` / ``ts_ops``: source operators the case exercises (checked likewise).
    """

    id: str
    input_shape: tuple[int, ...]
    ops: frozenset[OpType]
    module: Callable[[], nn.Module] | None = None
    onnx: OnnxSpec | None = None
    opset: int = 17
    script: bool = False  # torch.jit.script instead of trace
    residual: bool = False  # the whole model is one residual block x + f(x)
    formats: tuple[str, ...] = (ONNX, TS)
    switch: bool = False  # a data-dependent branch switch: no finite global bound, the report says why
    onnx_ops: frozenset[str] = field(default_factory=frozenset)
    ts_ops: frozenset[str] = field(default_factory=frozenset)


def _seeded(make: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        return make().eval()

    return build


class Selection(nn.Module):
    """Slices, a scalar select, an index_select by a buffer (a repeated index), abs, pixel
    (un)shuffle, repeat and a broadcasting expand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 8)
        self.register_buffer("idx", torch.tensor([4, 0, 4, 2]))
        self.fc2 = nn.Linear(32, 2)
        with torch.no_grad():
            self.fc1.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # [1, 8]
        c = torch.cat([h[:, 1:6:2].abs(), h.index_select(1, self.idx), h[:, 7].unsqueeze(1)], dim=1)  # [1, 8]
        p = torch.nn.functional.pixel_unshuffle(torch.nn.functional.pixel_shuffle(c.reshape(1, 4, 1, 2), 2), 2)
        t = p.repeat(1, 1, 2, 1).reshape(1, 1, 16).expand(1, 2, 16)
        return self.fc2(t.reshape(1, 32))


class Copies(nn.Module):
    """Reflection, replication and circular padding (aten::pad, and the per-mode ops of older
    traces), a roll, a cumulative sum and an adaptive average pooling with uneven windows (5 -> 3:
    overlapping windows of 2 entries)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 10)
        self.fc2 = nn.Linear(63 + 69, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x).reshape(1, 2, 5)  # [1, 2, 5]
        r = torch.nn.functional.pad(h, (2, 1), mode="reflect")  # [1, 2, 8]
        e = torch.nn.functional.pad(r, (1, 0), mode="replicate")  # [1, 2, 9]
        c = torch.nn.functional.pad(e, (0, 2), mode="circular")  # [1, 2, 11]
        s = torch.cumsum(torch.roll(c, shifts=3, dims=2), dim=1)
        g = torch.nn.functional.adaptive_avg_pool2d(h.reshape(1, 1, 2, 5), (2, 3)).reshape(1, 6)
        old = [torch.ops.aten.reflection_pad1d(h, [1, 2]), torch.ops.aten.replication_pad1d(h, [2, 0]),  # [1, 2, 8], [1, 2, 7]
               torch.ops.aten.reflection_pad2d(h[None], [1, 1, 1, 0]), torch.ops.aten.replication_pad2d(h[None], [0, 1, 0, 1])]
        parts = [s.reshape(1, 22), e.reshape(1, 18), r.reshape(1, 16), g, torch.roll(h, 1).reshape(1, 10)[:, :1]]
        return self.fc2(torch.cat(parts + [p.reshape(1, -1) for p in old], 1))


class Sinusoids(nn.Module):
    """Fourier features: sin and cos of a scaled linear map (its entries spread over several
    periods), read by a second linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 6)
        self.fc2 = nn.Linear(12, 2)
        with torch.no_grad():
            self.fc1.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.cat([torch.sin(h), torch.cos(h)], 1))


class Spectrogram(nn.Module):
    """A learned signal's STFT (window of 8 points every 2 samples, reflect-centred): its magnitude,
    real and imaginary parts and view_as_real, read by a linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 16)
        self.register_buffer("window", torch.hann_window(8))
        self.fc2 = nn.Linear(45 * 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stft(self.fc1(x), n_fft=8, hop_length=2, window=self.window, center=True, pad_mode="reflect",
                       return_complex=True)  # [1, 5 bins, 9 frames]
        parts = [z.abs(), z.real, z.imag, torch.view_as_real(z)[..., 1], torch.view_as_real(z)[..., 0]]
        return self.fc2(torch.cat([p.reshape(1, 45) for p in parts], 1))


class Einsums(nn.Module):
    """Attention written with torch.einsum (scores and mixing of two variables, a projection by a
    constant weight), as GPT-style blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.w = nn.Parameter(torch.randn(4, 4) * 0.5)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).reshape(1, 2, 2)
        q = torch.einsum("bsd,de->bse", h, self.w[:2, :2])
        p = torch.softmax(torch.einsum("bqd,bkd->bqk", q, h), -1)
        return self.out(torch.einsum("bqk,bkd->bqd", p, h).reshape(1, 4))


class Fills(nn.Module):
    """Constants of the input's shape (zeros_like, ones_like, full_like, new_zeros, new_ones, new_full)
    added to a linear map: shifts only, the gain is the Linear's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        fills = (torch.zeros_like(y) - 0.5 * torch.ones_like(y) + torch.full_like(y, 0.25) + y.new_zeros(y.shape)
                 + y.new_ones(y.shape) * 0.1 + y.new_full(y.shape, 2.0))
        return y + fills


class Parts(nn.Module):
    """split by sizes and by a size, chunk (uneven), unbind, and their unsafe_ spellings: lists of parts
    read by unpacking and by index."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 7)
        self.fc2 = nn.Linear(41, 2)
        with torch.no_grad():
            self.fc1.weight.mul_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # [1, 7]
        a, b = torch.split(h, [3, 4], dim=1)
        parts = torch.split(h, 3, dim=-1)  # 3, 3, 1
        c, d, e = h.chunk(3, dim=1)
        f, g = torch.unsafe_split(h, 4, dim=1)
        k, m = torch.unsafe_chunk(h, 2, dim=1)
        n, o = torch.unsafe_split_with_sizes(h, [2, 5], dim=1)
        rows = torch.unbind(h.reshape(1, 7, 1), dim=1)
        t = torch.cat([a, b, parts[2], parts[0], e, d, c, g, f, m, k, o, n, rows[6], rows[0]], dim=1)  # [1, 41]
        return self.fc2(t)


class Between(nn.Module):
    """Linear(n, h) -> act -> Linear(h, m): an activation between two linear maps."""

    def __init__(self, act: nn.Module, n: int = 4, h: int = 6, m: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(n, h)
        self.act = act
        self.fc2 = nn.Linear(h, m)
        with torch.no_grad():  # pre-activations of size ~3: every regime of the activation is hit
            self.fc1.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Fn(nn.Module):
    """A module around a function of (self, x) with optional Linear layers before and after."""

    def __init__(self, fn: Callable[..., torch.Tensor], n: int, m: int | None = None, k: int | None = None):
        super().__init__()
        self.fn = fn
        self.pre = nn.Linear(n, n)
        self.post = nn.Linear(m, k) if m is not None and k is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.fn(self, self.pre(x)))


class Residual(nn.Module):
    """x + tanh(W x + b): one residual block (identity shortcut)."""

    def __init__(self, n: int = 5):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)

    @torch.jit.unused
    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class Branches(nn.Module):
    """Two branches combined by ``how`` (sub, cat)."""

    def __init__(self, how: str, n: int = 4, h: int = 3):
        super().__init__()
        self.how = how
        self.a = nn.Linear(n, h)
        self.b = nn.Linear(n, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.a(x)), torch.tanh(self.b(x))
        if self.how == "sub":
            return a - b
        return torch.cat([a, b], dim=1)


class Reductions(nn.Module):
    """Conv, then sums, means, maxima, minima, 2-norms and log-sum-exps over several dims."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(34, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # [1, 3, 4, 5]
        a = h.mean(dim=(1, 3))  # [1, 4]
        b = h.sum(dim=2)  # [1, 3, 5]
        c = torch.amax(h, dim=(2, 3))  # [1, 3]
        d = torch.amin(b, dim=-1, keepdim=True)  # [1, 3, 1]
        e = torch.linalg.vector_norm(h, dim=(2, 3)) + torch.linalg.vector_norm(h, 1, dim=(2, 3))  # [1, 3]
        f = torch.logsumexp(b, dim=2)  # [1, 3]
        g = h.mean(dim=(2, 3))  # [1, 3] (a global pool)
        parts = [a, c, d.flatten(1), e, f, g, b.flatten(1)]
        return self.fc(torch.cat(parts, 1))


class Extrema(nn.Module):
    """Element-wise maxima and minima of variables (broadcast) and constants (ReLU as a max)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(4, 6)
        self.fc3 = nn.Linear(4, 1)
        self.fc4 = nn.Linear(6, 3)
        self.register_buffer("floor", torch.linspace(-1.0, 0.5, 6))
        self.register_buffer("zero", torch.zeros(1))
        with torch.no_grad():
            self.fc1.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.fc1(x), self.fc2(x), self.fc3(x)
        m = torch.maximum(a, c)  # c broadcast over 6 entries
        n = torch.minimum(torch.maximum(b, self.floor), m)
        r = torch.max(n, self.zero)
        return self.fc4(torch.min(r + a, b))


class Cnn(nn.Module):
    """Conv (stride 2, padding) + BatchNorm (eval) + ReLU + overlapping MaxPool + AvgPool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(3 * 2 * 2, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.2, 3.0)
            self.bn.weight.uniform_(-2, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg(self.pool(torch.relu(self.bn(self.conv(x)))))
        return self.fc(y.flatten(1))


class Seq(nn.Sequential):
    pass


def _bn1d(n: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(n)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.05, 2.0)
        bn.weight.uniform_(-3, 3)
        bn.bias.uniform_(-1, 1)
    return bn


def _prelu(n: int) -> nn.PReLU:
    p = nn.PReLU(n)
    with torch.no_grad():
        p.weight.copy_(torch.linspace(-1.7, 2.3, n))  # slopes above 1 and negative: Lip = 2.3
    return p


def _act(name: str, act: Callable[[], nn.Module], ops: set[OpType], opset: int = 17,
         onnx_ops: frozenset[str] = frozenset(), ts_ops: frozenset[str] = frozenset(), seed: int = 0,
         formats: tuple[str, ...] = (ONNX, TS)) -> Case:
    return Case(
        formats=formats,
        id=f"act_{name}",
        input_shape=(1, 4),
        ops=frozenset({OpType.LINEAR, *ops}),
        module=_seeded(lambda: Between(act()), seed),
        opset=opset,
        onnx_ops=onnx_ops,
        ts_ops=ts_ops,
    )


def _f(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return fn


# ---- TorchScript-only modules (scripted, so that each aten spelling is kept) -------------------------
class TsAlgebra(nn.Module):
    """matmul, mm, addmm, t, numpy_T, permute, view/reshape/unflatten/squeeze/unsqueeze variants, expand,
    stack, concat, rsub, subtract, multiply, divide, true_divide, negative, clamp family, clip, relu6,
    to, type_as, clone, contiguous, detach, dropouts, mean."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 6))
        self.w2 = nn.Parameter(torch.randn(6, 6))
        self.b2 = nn.Parameter(torch.randn(6))
        self.w3 = nn.Parameter(torch.randn(3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.matmul(x, self.w1)  # [2, 6]
        a = torch.addmm(self.b2, a, self.w2) + torch.mm(a, self.w2.t())
        a = a.clone().contiguous()
        b = torch.clamp(a, -1.0, 2.0) + torch.clamp_min(a, 0.5) - torch.clamp_max(a, 0.3)
        b = b + torch.clip(a, -0.2, 0.4) + F.relu6(a)
        c = torch.rsub(b, 1.0)
        c = torch.subtract(torch.multiply(c, 0.5), torch.divide(b, 4.0))
        c = torch.negative(torch.true_divide(c, 2.0)).to(x.dtype).type_as(x)
        c = F.dropout(c, 0.5, False)
        c = F.alpha_dropout(c, 0.5, False)
        d = c.T.t().permute(1, 0).permute(1, 0)  # [2, 6]
        e = torch.stack([d, torch.tanh(d)], dim=1)  # [2, 2, 6]
        e = e.unsqueeze(0).squeeze(0).unflatten(2, (2, 3)).view(2, 12)
        e = e.reshape_as(torch.cat([d, d], dim=1)).view_as(torch.concat([d, d], dim=1))
        e = torch.concatenate([e, d.expand(2, 6), d.expand_as(d)], dim=1)  # [2, 24]
        f = torch.mean(e.reshape(2, 6, 2, 2), dim=[2, 3]) + torch.mean(e.reshape(2, 6, 4), dim=2)
        return torch.matmul(f, self.w3.t())


class TsConv(nn.Module):
    """conv1d/2d/3d, conv_transpose1d/2d/3d, convolution with 'same' padding, constant_pad_nd,
    feature dropouts."""

    def __init__(self) -> None:
        super().__init__()
        self.k1 = nn.Parameter(torch.randn(2, 1, 3))
        self.k2 = nn.Parameter(torch.randn(2, 2, 3, 3) * 0.5)
        self.k3 = nn.Parameter(torch.randn(1, 2, 2, 2, 2) * 0.5)
        self.t1 = nn.Parameter(torch.randn(2, 1, 2))
        self.t2 = nn.Parameter(torch.randn(2, 2, 2, 2))
        self.t3 = nn.Parameter(torch.randn(1, 1, 2, 2, 2))
        self.k4 = nn.Parameter(torch.randn(2, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1, 1, 8]
        a = F.conv1d(x, self.k1, padding=1)  # [1, 2, 8]
        a = F.conv_transpose1d(a, self.t1, stride=2, groups=2)  # [1, 2, 16]
        b = torch.constant_pad_nd(a, [1, 1], 0.5).reshape(1, 2, 6, 3)
        b = F.conv2d(b, self.k2, padding="same")  # [1, 2, 6, 3]
        b = F.dropout2d(b, 0.5, False)
        b = F.feature_alpha_dropout(b, 0.5, False)
        b = F.conv_transpose2d(b, self.t2, stride=2)  # [1, 2, 12, 6]
        c = b.reshape(1, 2, 2, 6, 6)
        c = F.conv3d(c, self.k3, padding=1)  # [1, 1, 3, 7, 7]
        c = F.conv_transpose3d(c, self.t3)  # [1, 1, 4, 8, 8]
        c = torch.convolution(c, self.k4, None, [2, 2, 2], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1)
        return c.reshape(1, -1)


class TsPools(nn.Module):
    """avg_pool1d, adaptive pools in 1-3 dims, max pools with indices, _softmax, _log_softmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1, 2, 2, 2, 4]
        a = F.adaptive_avg_pool3d(x, (1, 2, 2)).reshape(1, 2, 4)
        b = F.adaptive_max_pool3d(x, 1).reshape(1, 2, 1)
        c = F.avg_pool1d(a, 2) + F.adaptive_max_pool1d(a, 2)  # [1, 2, 2]
        d, _ = F.max_pool1d_with_indices(a, 2)  # [1, 2, 2]
        e, _ = F.max_pool2d_with_indices(x.reshape(1, 2, 4, 4), 2, 1)  # [1, 2, 3, 3]
        f, _ = F.max_pool3d_with_indices(x, 2)  # [1, 2, 1, 1, 2]
        g = torch.cat([c, d, e.reshape(1, 2, 9), f.reshape(1, 2, 2), b], dim=2)
        return torch._softmax(g, 2, False) + 0.25 * torch._log_softmax(g, 2, False)


class Recurrent(nn.Module):
    """A recurrent stack over a [batch, seq, features] input: RNN (tanh: globally Lipschitz) or a
    bidirectional LSTM feeding a GRU (gated: products of two variables), then a Linear."""

    def __init__(self, gated: bool, relu: bool = False):
        super().__init__()
        self.gated = gated
        if gated:
            self.lstm = nn.LSTM(2, 3, batch_first=True, bidirectional=True)
            self.gru = nn.GRU(6, 3, batch_first=True)
        elif relu:  # two stacked layers, sequence first
            self.rnn = nn.RNN(2, 4, num_layers=2, nonlinearity="relu")
        else:
            self.rnn = nn.RNN(2, 4, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(3 if gated else (4 if relu else 8), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.fc(self.gru(self.lstm(x)[0])[0])
        return self.fc(self.rnn(x)[0])


# ---- ONNX-only graphs (onnx.helper) ---------------------------------------------------------------
def _rand(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{outputs[0]}", **attrs)


def _t(p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return p[name]


def _onnx_arith() -> OnnxSpec:
    """Sum, Neg, Mul/Div by constants, Identity, Dropout, Cast, CastLike, Constant, Swish."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import TensorProto, numpy_helper

        return [
            _node("MatMul", ["x", "w1"], ["a"]),
            _node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([1.5], p["d"].dtype))),
            _node("Mul", ["a", "c"], ["b"]),
            _node("Div", ["b", "d"], ["e"]),
            _node("Identity", ["e"], ["f"]),
            _node("Dropout", ["f"], ["g"]),
            _node("Cast", ["g"], ["g2"], to=TensorProto.FLOAT),
            _node("CastLike", ["g2", "x"], ["g3"]),
            _node("Swish", ["g3"], ["s"]),
            _node("Neg", ["s"], ["n"]),
            _node("Gemm", ["n", "w2", "b2"], ["h"], transB=1, alpha=0.75, beta=2.0),
            _node("Gemm", ["n", "w3"], ["k"], transA=0, transB=0),
            _node("Sum", ["h", "k", "b3"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(1, 4, 5, scale=2.0), "d": np.array([0.8], np.float32),
                "w2": _rand(2, 3, 5), "b2": _rand(3, 3), "w3": _rand(4, 5, 3), "b3": _rand(5, 3)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        g = x @ p["w1"] * 1.5 / p["d"]
        n = -(g * torch.sigmoid(g))
        return 0.75 * n @ p["w2"].T + 2.0 * p["b2"] + n @ p["w3"] + p["b3"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=24)


def _onnx_shapes() -> OnnxSpec:
    """Squeeze, Unsqueeze, Flatten, Reshape, Transpose, Pad (non-zero value), Concat, Softmax(axis)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Unsqueeze", ["x", "ax0"], ["u"]),  # [1, 1, 2, 3]
            _node("Transpose", ["u"], ["t"], perm=[0, 1, 3, 2]),  # [1, 1, 3, 2]
            _node("Pad", ["t", "pads", "pv"], ["pd"]),  # [1, 1, 4, 4]
            _node("Conv", ["pd", "k"], ["c"], kernel_shape=[2, 2], dilations=[2, 1]),  # [1, 2, 2, 3]
            _node("Squeeze", ["c", "ax0"], ["sq"]),  # [2, 2, 3]
            _node("Softmax", ["sq"], ["sm"], axis=1),
            _node("Reshape", ["sm", "shape"], ["r"]),  # [1, 12]
            _node("Flatten", ["c"], ["fl"], axis=1),  # [1, 12]
            _node("Concat", ["r", "fl"], ["cat"], axis=1),  # [1, 24]
            _node("MatMul", ["cat", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"ax0": np.array([0], np.int64), "pads": np.array([0, 0, 0, 1, 0, 0, 1, 1], np.int64),
                "pv": np.array(0.7, np.float32), "k": _rand(7, 2, 1, 2, 2, scale=2.0),
                "shape": np.array([1, 12], np.int64), "w": _rand(8, 24, 3)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        t = x.unsqueeze(0).permute(0, 1, 3, 2)
        pd = F.pad(t, (1, 1, 0, 1), value=float(np.float32(0.7)))  # the stored float32 value
        c = F.conv2d(pd, p["k"], dilation=(2, 1))
        sm = torch.softmax(c.squeeze(0), dim=1).reshape(1, 12)
        return torch.cat([sm, c.flatten(1)], dim=1) @ p["w"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=17,
                    constants=("ax0", "pads", "pv", "shape"))


def _onnx_acts() -> OnnxSpec:
    """Elu, HardSigmoid(alpha, beta), LeakyRelu, Softplus, Clip (min/max inputs), HardSwish, Gelu,
    Relu, Sigmoid, Tanh, PRelu, each on its own slice of a linear map's output."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["a"]),
            _node("Elu", ["a"], ["e"], alpha=1.7),
            _node("HardSigmoid", ["e"], ["hs"], alpha=0.9, beta=0.3),
            _node("LeakyRelu", ["a"], ["l"], alpha=-1.3),
            _node("Softplus", ["l"], ["sp"]),
            _node("Clip", ["a", "lo", "hi"], ["cl"]),
            _node("HardSwish", ["cl"], ["hw"]),
            _node("Gelu", ["a"], ["ge"], approximate="tanh"),
            _node("Relu", ["ge"], ["re"]),
            _node("Sigmoid", ["a"], ["sg"]),
            _node("Tanh", ["sg"], ["th"]),
            _node("PRelu", ["a", "slope"], ["pr"]),
            _node("Concat", ["hs", "sp", "hw", "re", "th", "pr"], ["cat"], axis=1),
            _node("MatMul", ["cat", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(11, 3, 6, scale=3.0), "lo": np.array(-0.5, np.float32),
                "hi": np.array(2.5, np.float32), "slope": np.linspace(-2.0, 0.5, 6).astype(np.float32),
                "w2": _rand(12, 36, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        a = x @ p["w1"]
        hs = torch.clamp(0.9 * F.elu(a, 1.7) + 0.3, 0.0, 1.0)
        sp = F.softplus(F.leaky_relu(a, -1.3))
        hw = F.hardswish(torch.clamp(a, -0.5, 2.5))
        re = torch.relu(F.gelu(a, approximate="tanh"))
        th = torch.tanh(torch.sigmoid(a))
        pr = torch.where(a >= 0, a, a * p["slope"])
        return torch.cat([hs, sp, hw, re, th, pr], dim=1) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=20, constants=("lo", "hi"))


def _onnx_pools() -> OnnxSpec:
    """MaxPool (ceil mode, dilation, pads), AveragePool (count_include_pad, pads, ceil mode),
    ConvTranspose (pads, output_padding, groups), GlobalAveragePool, GlobalMaxPool, BatchNormalization
    alone (an Affine that does not fold), Sub of two variables, Add of two variables."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"], epsilon=1e-3),
            _node("MaxPool", ["bn"], ["mp"], kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 1],
                  dilations=[1, 2], ceil_mode=1),
            _node("AveragePool", ["bn"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                  count_include_pad=1, ceil_mode=1),
            _node("ConvTranspose", ["ap", "kt", "bt"], ["ct"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], output_padding=[1, 0], group=2),
            _node("GlobalAveragePool", ["ct"], ["ga"]),
            _node("GlobalMaxPool", ["mp"], ["gm"]),
            _node("Sub", ["ga", "gm"], ["s"]),
            _node("Add", ["s", "gm"], ["a"]),
            _node("Flatten", ["a"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(21)
        return {"g": rng.uniform(-3, 3, 2).astype(np.float32), "b": _rand(22, 2),
                "m": _rand(23, 2), "v": rng.uniform(0.1, 2.0, 2).astype(np.float32),
                "kt": _rand(24, 2, 1, 3, 3), "bt": _rand(25, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        bn = F.batch_norm(x, p["m"], p["v"], p["g"], p["b"], False, 0.0, 1e-3)
        mp = F.max_pool2d(F.pad(bn, (0, 1, 1, 1), value=-math.inf), (3, 2), (1, 2), 0, (1, 2),
                          ceil_mode=True)
        # count_include_pad: the divisor counts the window's entries inside the padded input (a
        # ceil-mode window is clipped at the padded border)
        ones = F.pad(torch.ones_like(bn[:1, :1]), (1, 1, 1, 1), value=1.0)
        ap = F.avg_pool2d(F.pad(bn, (1, 1, 1, 1)), 3, 2, 0, ceil_mode=True, divisor_override=1) / \
            F.avg_pool2d(ones, 3, 2, 0, ceil_mode=True, divisor_override=1)
        ct = F.conv_transpose2d(ap, p["kt"], p["bt"], 2, 1, (1, 0), 2)
        ga = ct.mean(dim=(2, 3), keepdim=True)
        gm = mp.amax(dim=(2, 3), keepdim=True)
        return (ga - gm + gm).flatten(1)

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=17)


def _onnx_same_input() -> OnnxSpec:
    """Sum(x, x, x) - x then Concat(h, h): one variable read several times (the true map is 2x)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Sum", ["x", "x", "x"], ["s"]),
            _node("Sub", ["s", "x"], ["d"]),
            _node("MatMul", ["d", "w"], ["h"]),
            _node("Concat", ["h", "h"], ["y"], axis=1),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w": _rand(31, 3, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = (2.0 * x) @ p["w"]
        return torch.cat([h, h], dim=1)

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_broadcast() -> OnnxSpec:
    """Broadcasting: an Add of two variables copies the smaller one, per-row Mul/Add constants, a
    PRelu slope per channel; Concat along the batch axis."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 3]
            _node("MatMul", ["x", "c"], ["m"]),
            _node("Concat", ["m", "x"], ["g"], axis=0),  # [2, 3]
            _node("Mul", ["g", "e"], ["g1"]),  # a per-row scale
            _node("Add", ["g1", "d"], ["g2"]),
            _node("Add", ["h", "g2"], ["a"]),  # h copied to both rows
            _node("Unsqueeze", ["a", "ax"], ["u"]),  # [1, 2, 3]
            _node("PRelu", ["u", "slope"], ["pr"]),  # slope [2, 1]: per channel
            _node("Reshape", ["pr", "shape"], ["r"]),
            _node("MatMul", ["r", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(41, 3, 3), "c": _rand(42, 3, 3, scale=2.0), "e": np.array([[1.5], [-3.0]], np.float32),
                "d": _rand(43, 2, 1),
                "ax": np.array([0], np.int64), "slope": np.array([[-2.5], [0.5]], np.float32),
                "shape": np.array([1, 6], np.int64), "w2": _rand(44, 6, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        a = x @ p["w1"] + (torch.cat([x @ p["c"], x], dim=0) * p["e"] + p["d"])
        u = a.unsqueeze(0)
        pr = torch.where(u >= 0, u, u * p["slope"])
        return pr.reshape(1, 6) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("ax", "shape"))


def _onnx_slice_mul() -> OnnxSpec:
    """Slice (forward, backward and clamped ranges) and a gated product of two variables."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 8]
            _node("Slice", ["h", "s0", "e0", "a0", "st0"], ["a"]),  # h[:, 1:7:2]: [1, 3]
            _node("Slice", ["h", "s1", "e1", "a0", "st1"], ["b"]),  # h[:, 7:-9:-3] (clamped): [1, 3]
            _node("Sigmoid", ["b"], ["g"]),
            _node("Mul", ["a", "g"], ["m"]),
            _node("MatMul", ["m", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(51, 3, 8, scale=2.0), "s0": np.array([1], np.int64), "e0": np.array([7], np.int64),
                "a0": np.array([-1], np.int64), "st0": np.array([2], np.int64),
                "s1": np.array([7], np.int64), "e1": np.array([-9], np.int64), "st1": np.array([-3], np.int64),
                "w2": _rand(52, 3, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        b = h[:, [7, 4, 1]]
        return (h[:, 1:7:2] * torch.sigmoid(b)) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference,
                    constants=("s0", "e0", "a0", "st0", "s1", "e1", "st1"))


class Interpolate(nn.Module):
    """F.interpolate in every mode torch traces to its own operator, on 1-D, 2-D and 3-D axes
    (odd input lengths before nearest-exact: no source coordinate is a rounding tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [1, 2, 3, 4]
        x = F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")  # [1, 2, 6, 8]
        x = F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(7, 9), mode="bicubic", align_corners=True)
        x = F.interpolate(x, size=(4, 5), mode="nearest-exact")
        y = F.interpolate(x.reshape(1, 8, 5), size=7, mode="linear", align_corners=False)
        y = F.interpolate(y, size=10, mode="nearest-exact")  # [1, 8, 10]
        y = F.interpolate(y, size=8, mode="nearest")  # [1, 8, 8]
        z = F.interpolate(y.reshape(1, 1, 2, 4, 8), scale_factor=(1.5, 0.75, 0.625), mode="trilinear",
                          align_corners=False)  # [1, 1, 3, 3, 5]
        z = F.interpolate(z, size=(3, 3, 3), mode="nearest-exact")
        return F.interpolate(z, size=(5, 4, 7), mode="nearest")


def _onnx_resize() -> OnnxSpec:
    """Resize nearest x2 (asymmetric, floor), linear to given sizes (half_pixel), cubic (a = -0.75,
    pytorch_half_pixel) and a 1x1 Conv: the references are repeat_interleave and F.interpolate."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Resize", ["x", "", "s1"], ["r1"], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor"),  # [1, 2, 6, 8]
            _node("Resize", ["r1", "", "", "z2"], ["r2"], mode="linear"),  # [1, 2, 5, 7]
            _node("Resize", ["r2", "", "", "z3"], ["r3"], mode="cubic",
                  coordinate_transformation_mode="pytorch_half_pixel", cubic_coeff_a=-0.75),  # [1, 2, 7, 9]
            _node("Conv", ["r3", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"s1": np.array([1, 1, 2, 2], np.float32), "z2": np.array([1, 2, 5, 7], np.int64),
                "z3": np.array([1, 2, 7, 9], np.int64), "w": _rand(61, 3, 2, 1, 1)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        r1 = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        r2 = F.interpolate(r1, size=(5, 7), mode="bilinear", align_corners=False)
        r3 = F.interpolate(r2, size=(7, 9), mode="bicubic", align_corners=False)
        return F.conv2d(r3, p["w"])

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=19, constants=("s1", "z2", "z3"))


def _onnx_upsample() -> OnnxSpec:
    """Upsample-9 (nearest x(2, 3) and linear), lifted to Resize-11 with its asymmetric coordinates."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Upsample", ["x", "s1"], ["u1"], mode="nearest"),  # [1, 2, 6, 9]
            _node("Upsample", ["u1", "s2"], ["u2"], mode="linear"),  # [1, 2, 12, 9]
            _node("Conv", ["u2", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"s1": np.array([1, 1, 2, 3], np.float32), "s2": np.array([1, 1, 2, 1], np.float32),
                "w": _rand(62, 3, 2, 1, 1)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        u1 = x.repeat_interleave(2, dim=2).repeat_interleave(3, dim=3)
        # asymmetric linear x2: y = 2i copies row i, y = 2i + 1 averages rows i and i + 1 (the last repeats)
        nxt = torch.cat([u1[:, :, 1:], u1[:, :, -1:]], dim=2)
        u2 = torch.stack([u1, (u1 + nxt) / 2], dim=3).reshape(1, 2, 12, 9)
        return F.conv2d(u2, p["w"])

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=9, constants=("s1", "s2"))
def _onnx_attention() -> OnnxSpec:
    """One attention head over 4 tokens: MatMul of two variables (Q K^T, P V), a Gemm of two
    variables (transB, alpha, a constant C)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "wq"], ["q"]),  # [4, 2]
            _node("MatMul", ["x", "wk"], ["k"]),  # [4, 2]
            _node("Gemm", ["q", "k", "c"], ["s"], transB=1, alpha=0.7, beta=0.5),  # q k^T * 0.7 + 0.5 c: [4, 4]
            _node("Softmax", ["s"], ["pr"], axis=-1),
            _node("MatMul", ["x", "wv"], ["v"]),  # [4, 3]
            _node("Unsqueeze", ["pr", "ax0"], ["pr3"]),  # [1, 4, 4]: a batched product
            _node("MatMul", ["pr3", "v"], ["o"]),  # [1, 4, 3]
            _node("MatMul", ["o", "wo"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"wq": _rand(71, 3, 2), "wk": _rand(72, 3, 2), "wv": _rand(73, 3, 3), "wo": _rand(74, 3, 2),
                "c": _rand(75, 4, 4), "ax0": np.array([0], np.int64)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
        s = 0.7 * (q @ k.T) + 0.5 * p["c"]
        return (torch.softmax(s, dim=-1).unsqueeze(0) @ v) @ p["wo"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("ax0",))


def _onnx_layer_norm() -> OnnxSpec:
    """LayerNormalization over the last axis (scale, bias) and over axes 1.. (scale only), with a
    small epsilon so the certified 1/sqrt(eps) constant is tight near constant groups."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [2, 3, 4]
            _node("LayerNormalization", ["h", "g1", "b1"], ["n1"], axis=-1, epsilon=0.01),
            _node("LayerNormalization", ["n1", "g2"], ["n2"], axis=1, epsilon=0.25),
            _node("MatMul", ["n2", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(81, 2, 4), "g1": _rand(82, 4), "b1": _rand(83, 4), "g2": _rand(84, 3, 4),
                "w2": _rand(85, 4, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def ln(v: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
            d = v - v.mean(dim=dims, keepdim=True)
            return d / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + eps)

        n1 = ln(x @ p["w1"], (-1,), float(np.float32(0.01))) * p["g1"] + p["b1"]
        return (ln(n1, (1, 2), 0.25) * p["g2"]) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_transformer_contrib() -> OnnxSpec:
    """onnxruntime's fused transformer operators: SkipLayerNormalization (bias, its sum output read
    by a residual Add), FastGelu with a bias, SimplifiedLayerNormalization and
    SkipSimplifiedLayerNormalization (RMSNorm), QuickGelu, BiasGelu, Gelu, and a decomposed RMSNorm (Pow, ReduceMean,
    Add eps, Sqrt, Reciprocal, Mul, Mul scale) fused by the loader."""
    ms = "com.microsoft"

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import helper

        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 3, 4]
            helper.make_node("SkipLayerNormalization", ["h", "x", "g1", "b1", "c1"], ["n1", "", "", "s1"],
                             name="sln", domain=ms, epsilon=0.05),
            helper.make_node("FastGelu", ["n1", "c2"], ["a1"], name="fastgelu", domain=ms),
            _node("Add", ["a1", "s1"], ["r1"]),
            _node("SimplifiedLayerNormalization", ["r1", "g2"], ["n2"], axis=-1, epsilon=0.05),
            helper.make_node("QuickGelu", ["n2"], ["a2"], name="quickgelu", domain=ms, alpha=1.702),
            helper.make_node("BiasGelu", ["a2", "c3"], ["a3"], name="biasgelu", domain=ms),
            _node("MatMul", ["a3", "w2"], ["h2"]),
            helper.make_node("SkipSimplifiedLayerNormalization", ["h2", "r1", "g3"], ["n3"], name="ssln", domain=ms,
                             epsilon=0.1),
            _node("Pow", ["n3", "two"], ["sq"]),
            _node("ReduceMean", ["sq"], ["ms"], axes=[-1]),
            _node("Add", ["ms", "eps"], ["ve"]),
            _node("Sqrt", ["ve"], ["rt"]),
            _node("Reciprocal", ["rt"], ["inv"]),
            _node("Mul", ["n3", "inv"], ["z"]),
            _node("Mul", ["z", "g4"], ["n4"]),
            helper.make_node("Gelu", ["n4"], ["a4"], name="gelu", domain=ms),
            _node("MatMul", ["a4", "w3"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(101, 4, 4), "g1": _rand(102, 4), "b1": _rand(103, 4), "c1": _rand(104, 4),
                "c2": _rand(105, 4), "g2": _rand(106, 4), "w2": _rand(107, 4, 4), "g3": _rand(108, 4),
                "g4": _rand(109, 4), "w3": _rand(110, 4, 2), "c3": _rand(111, 4), "two": np.array(2.0, np.float32),
                "eps": np.array(0.02, np.float32)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def norm(v: torch.Tensor, eps: float, centered: bool) -> torch.Tensor:
            d = v - v.mean(dim=-1, keepdim=True) if centered else v
            return d / torch.sqrt((d * d).mean(dim=-1, keepdim=True) + float(np.float32(eps)))

        s1 = x @ p["w1"] + x + p["c1"]
        n1 = norm(s1, 0.05, True) * p["g1"] + p["b1"]
        r1 = torch.nn.functional.gelu(n1 + p["c2"], approximate="tanh") + s1
        n2 = norm(r1, 0.05, False) * p["g2"]
        a2 = n2 * torch.sigmoid(float(np.float32(1.702)) * n2)
        a3 = torch.nn.functional.gelu(a2 + p["c3"])
        n3 = norm(a3 @ p["w2"] + r1, 0.1, False) * p["g3"]
        return torch.nn.functional.gelu(norm(n3, 0.02, False) * p["g4"]) @ p["w3"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("two", "eps"))


def _onnx_ort_attention() -> OnnxSpec:
    """onnxruntime's Attention (packed q, k, v weights and bias, a raw key mask adding -10000 to
    the masked scores) and MultiHeadAttention (causal, a bias of q, k and v), two heads each."""
    ms = "com.microsoft"

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import helper

        return [
            helper.make_node("Attention", ["x", "wqkv", "bqkv", "m"], ["a"], name="attn", domain=ms, num_heads=2),
            helper.make_node("MultiHeadAttention", ["a", "x", "a", "b2"], ["o"], name="mha", domain=ms, num_heads=2,
                             unidirectional=1),
            _node("MatMul", ["o", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"wqkv": _rand(131, 4, 12), "bqkv": _rand(132, 12), "b2": _rand(133, 12), "w": _rand(134, 4, 2),
                "m": np.array([[1, 0, 1]], np.int32)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(1, 3, 2, 2).transpose(1, 2)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            s = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(2.0) + shift
            return (torch.softmax(s, -1) @ heads(v)).transpose(1, 2).reshape(1, 3, 4)

        qkv = x @ p["wqkv"] + p["bqkv"]
        key_mask = torch.tensor([0.0, -10000.0, 0.0], dtype=torch.float64)
        a = attend(qkv[..., :4], qkv[..., 4:8], qkv[..., 8:], key_mask)
        causal = torch.triu(torch.full((3, 3), -10000.0, dtype=torch.float64), diagonal=1)
        b = p["b2"]
        return attend(a + b[:4], x + b[4:8], a + b[8:], causal) @ p["w"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_attention_operator() -> OnnxSpec:
    """ONNX Attention (opset 23): 3-D q [1, 3, 4 heads of 1], k and v [1, 3, 2 heads of 1] (each
    key/value head read by two query heads), softcap 2, is_causal and a bool mask whose first
    query reads no key (its output 0)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import helper

        return [
            _node("MatMul", ["x", "wq"], ["q"]), _node("MatMul", ["x", "wk"], ["k"]), _node("MatMul", ["x", "wv"], ["v"]),
            helper.make_node("Attention", ["q", "k", "v", "m"], ["a"], name="attn", q_num_heads=4, kv_num_heads=2,
                             is_causal=1, softcap=2.0),
            _node("MatMul", ["a", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"wq": _rand(141, 4, 4), "wk": _rand(142, 4, 2), "wv": _rand(143, 4, 2), "w": _rand(144, 4, 2),
                "m": np.array([[False, True, True], [True, True, True], [False, True, True]])}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        q = (x @ p["wq"]).reshape(1, 3, 4, 1).transpose(1, 2)
        k = (x @ p["wk"]).reshape(1, 3, 2, 1).transpose(1, 2).repeat_interleave(2, dim=1)
        v = (x @ p["wv"]).reshape(1, 3, 2, 1).transpose(1, 2).repeat_interleave(2, dim=1)
        s = 2.0 * torch.tanh(q @ k.transpose(-1, -2) / 2.0)
        keep = torch.tensor([[False, False, False], [True, True, False], [False, True, True]])
        w = torch.softmax(s.masked_fill(~keep, -math.inf).nan_to_num(nan=0.0), -1) * keep.any(-1, keepdim=True)
        w = torch.where(keep.any(-1, keepdim=True), w, torch.zeros_like(w))
        return (w @ v).transpose(1, 2).reshape(1, 3, 4) @ p["w"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=23)


def _onnx_copies() -> OnnxSpec:
    """Entries copied or summed by constant indices: CumSum (exclusive) along the sequence,
    GatherElements along the features, GatherND of two rows (one of them twice in the end), a
    reflect Pad."""
    cols = np.array([[[3, 0, 0, 1], [2, 2, 1, 0], [0, 3, 3, 3]]], np.int64)

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 3, 4]
            _node("CumSum", ["h", "axis"], ["c"], exclusive=1),
            _node("GatherElements", ["c", "cols"], ["g"], axis=2),
            _node("Add", ["g", "h"], ["s"]),
            _node("GatherND", ["s", "rows"], ["nd"]),  # [2, 4]: rows (0, 2) and (0, 0)
            _node("Pad", ["nd", "pads"], ["pd"], mode="reflect"),  # [2, 7]
            _node("MatMul", ["pd", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(151, 4, 4), "w2": _rand(152, 7, 2), "axis": np.array(1, np.int64), "cols": cols,
                "rows": np.array([[0, 2], [0, 0]], np.int64), "pads": np.array([0, 1, 0, 2], np.int64)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        c = torch.cumsum(h, dim=1) - h
        s = torch.gather(c, 2, torch.from_numpy(cols)) + h
        nd = torch.stack([s[0, 2], s[0, 0]])
        pd = torch.nn.functional.pad(nd[None], (1, 2), mode="reflect")[0]
        return pd @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_spectral() -> OnnxSpec:
    """A learned signal's STFT magnitude (a window of 8 points every 2 samples; ReduceL2 over the
    real and imaginary parts) beside its onesided DFT, read by a MatMul."""
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8)).astype(np.float32)

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 16]
            _node("Reshape", ["h", "signal_shape"], ["sig"]),  # [1, 16, 1]
            _node("STFT", ["sig", "step", "window"], ["st"]),  # [1, 5, 5, 2]
            _node("ReduceL2", ["st", "axes"], ["mag"], keepdims=0),  # [1, 5, 5]
            _node("DFT", ["sig"], ["sp"], axis=1, onesided=1),  # [1, 9, 2]
            _node("Reshape", ["mag", "flat_mag"], ["m"]), _node("Reshape", ["sp", "flat_sp"], ["f"]),
            _node("Concat", ["m", "f"], ["c"], axis=1),  # [1, 43]
            _node("MatMul", ["c", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(161, 4, 16), "w2": _rand(162, 43, 2), "signal_shape": np.array([1, 16, 1], np.int64),
                "step": np.array(2, np.int64), "window": window, "axes": np.array([-1], np.int64),
                "flat_mag": np.array([1, 25], np.int64), "flat_sp": np.array([1, 18], np.int64)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        frames = torch.stack([h[:, 2 * f:2 * f + 8] for f in range(5)], 1) * torch.from_numpy(window.astype(np.float64))
        mag = torch.fft.rfft(frames, dim=-1).abs().reshape(1, 25)
        rf = torch.fft.rfft(h, dim=1)
        sp = torch.stack([rf.real, rf.imag], -1).reshape(1, 18)
        return torch.cat([mag, sp], 1) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=18)


def _onnx_rms_normalization() -> OnnxSpec:
    """ONNX RMSNormalization (opset 23) over the last axis and over axes 1.., eps large enough that
    max|scale| / sqrt(eps) is met near 0."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [2, 3, 4]
            _node("RMSNormalization", ["h", "g1"], ["n1"], axis=-1, epsilon=0.05),
            _node("RMSNormalization", ["n1", "g2"], ["n2"], axis=1, epsilon=0.2),
            _node("MatMul", ["n2", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(121, 4, 4), "g1": _rand(122, 4), "g2": _rand(123, 3, 4), "w2": _rand(124, 4, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def rms(v: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
            return v / torch.sqrt((v * v).mean(dim=dims, keepdim=True) + float(np.float32(eps)))

        n1 = rms(x @ p["w1"], (-1,), 0.05) * p["g1"]
        return (rms(n1, (1, 2), 0.2) * p["g2"]) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=23)


def _onnx_layer_norm_pattern() -> OnnxSpec:
    """The decomposed LayerNorm of opset < 17 exports (ReduceMean, Sub, Pow 2, ReduceMean, Add eps,
    Sqrt, Div, Mul scale, Add bias), fused into one LayerNorm; a second one squares with Mul(d, d)
    and has neither scale nor bias."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 3, 5]
            _node("ReduceMean", ["h"], ["m"], axes=[-1]),
            _node("Sub", ["h", "m"], ["d"]),
            _node("Pow", ["d", "two"], ["p"]),
            _node("ReduceMean", ["p"], ["v"], axes=[-1]),
            _node("Add", ["v", "eps"], ["ve"]),
            _node("Sqrt", ["ve"], ["sd"]),
            _node("Div", ["d", "sd"], ["nn"]),
            _node("Mul", ["nn", "g"], ["ns"]),
            _node("Add", ["ns", "b"], ["n1"]),
            _node("ReduceMean", ["n1"], ["m2"], axes=[1, 2]),
            _node("Sub", ["n1", "m2"], ["d2"]),
            _node("Mul", ["d2", "d2"], ["p2"]),
            _node("ReduceMean", ["p2"], ["v2"], axes=[1, 2]),
            _node("Add", ["eps2", "v2"], ["ve2"]),
            _node("Sqrt", ["ve2"], ["sd2"]),
            _node("Div", ["d2", "sd2"], ["n2"]),
            _node("MatMul", ["n2", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(91, 2, 5), "g": _rand(92, 5), "b": _rand(93, 5), "w2": _rand(94, 5, 2),
                "two": np.array(2.0, np.float32), "eps": np.array(0.01, np.float32),
                "eps2": np.array(0.5, np.float32)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def ln(v: torch.Tensor, dims: tuple[int, ...], eps: torch.Tensor) -> torch.Tensor:
            d = v - v.mean(dim=dims, keepdim=True)
            return d / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + eps)

        n1 = ln(x @ p["w1"], (-1,), p["eps"]) * p["g"] + p["b"]
        return ln(n1, (1, 2), p["eps2"]) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=13,
                    constants=("two", "eps", "eps2"))


def _onnx_erf() -> OnnxSpec:
    """erf alone between two linear maps: globally Lipschitz, a certified finite bound."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [_node("MatMul", ["x", "w1"], ["h"]), _node("Erf", ["h"], ["e"]), _node("MatMul", ["e", "w2"], ["y"])]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(63, 3, 5), "w2": _rand(64, 5, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x @ p["w1"]) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_domain_maps() -> OnnxSpec:
    """Quotients, powers, sqrt, 1/x, exp, log (Lipschitz only on a domain) and erf, on positive
    sigmoid outputs where a map needs them."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 6]
            _node("Sigmoid", ["h"], ["s"]),
            _node("Log", ["s"], ["n1"]),
            _node("Sqrt", ["s"], ["n2"]),
            _node("Reciprocal", ["s"], ["n3"]),
            _node("Div", ["h", "s"], ["n4"]),
            _node("Pow", ["h", "two"], ["n5"]),
            _node("Exp", ["s"], ["n6"]),
            _node("Erf", ["h"], ["n7"]),
            _node("Pow", ["s", "half"], ["n8"]),  # loads as Sqrt
            _node("Pow", ["n7", "one"], ["n9"]),  # the identity: an alias
            _node("Sum", ["n1", "n2", "n3", "n4", "n5", "n6", "n8", "n9"], ["t"]),
            _node("MatMul", ["t", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(61, 3, 6), "w2": _rand(62, 6, 2), "two": np.array(2.0, np.float32),
                "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        s = torch.sigmoid(h)
        t = (torch.log(s) + torch.sqrt(s) + 1 / s + h / s + h**2 + torch.exp(s) + torch.sqrt(s)
             + torch.erf(h))
        return t @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("two", "half", "one"))


def _onnx_sum_square() -> OnnxSpec:
    """ReduceSumSquare: loads and runs; its bound needs a domain."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 6]
            _node("ReduceSumSquare", ["h", "ax"], ["s"]),  # [1, 1]
            _node("Add", ["h", "s"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(61, 3, 6), "ax": np.array([-1], np.int64)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        return h + (h * h).sum(dim=-1, keepdim=True)

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=18, constants=("ax",))


def _onnx_selection() -> OnnxSpec:
    """Split (sizes as an input), Gather (negative, repeated and scalar indices), Abs, Concat with
    constants (class tokens before and between variables), Expand and Tile."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 8]
            _node("Split", ["h", "sp"], ["a", "b"], axis=1),  # [1, 3], [1, 5]
            _node("Gather", ["b", "idx"], ["g"], axis=1),  # b[:, [4, 0, 4, 2]]: [1, 4]
            _node("Gather", ["b", "one"], ["s"], axis=-1),  # b[:, 3]: [1]
            _node("Unsqueeze", ["s", "ax"], ["su"]),  # [1, 1]
            _node("Abs", ["a"], ["ab"]),
            _node("Concat", ["tok", "ab", "tok2", "g", "su"], ["c"], axis=1),  # [1, 11]
            _node("Reshape", ["c", "shape3"], ["c3"]),  # [1, 1, 11]
            _node("Expand", ["c3", "to"], ["e"]),  # [1, 3, 11]
            _node("Tile", ["e", "reps"], ["t"]),  # [1, 3, 22]
            _node("Reshape", ["t", "flat"], ["f"]),  # [1, 66]
            _node("MatMul", ["f", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(61, 3, 8, scale=2.0), "sp": np.array([3, 5], np.int64),
                "idx": np.array([-1, 0, 4, 2], np.int64), "one": np.array(3, np.int64),
                "ax": np.array([1], np.int64), "tok": _rand(62, 1, 2), "tok2": _rand(63, 1, 1),
                "shape3": np.array([1, 1, 11], np.int64), "to": np.array([3, 1], np.int64),
                "reps": np.array([1, 1, 2], np.int64), "flat": np.array([1, 66], np.int64),
                "w2": _rand(64, 66, 2, scale=0.3)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        a, b = h[:, :3], h[:, 3:]
        c = torch.cat([p["tok"], a.abs(), p["tok2"], b[:, [4, 0, 4, 2]], b[:, 3:4]], dim=1)
        t = c.reshape(1, 1, 11).expand(1, 3, 11).repeat(1, 1, 2)
        return t.reshape(1, 66) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=13,
                    constants=("sp", "idx", "one", "ax", "shape3", "to", "reps", "flat"))


def _onnx_where() -> OnnxSpec:
    """Where with conditions fixed on finite inputs: softmax NaNs replaced by 0 (IsNaN), Not(IsInf),
    a constant mask over two variables, one of them broadcast (copies), and a mask from a comparison
    and an And of constants (folded)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 6]
            _node("Reshape", ["h", "shape"], ["h2"]),  # [1, 2, 3]
            _node("Softmax", ["h2"], ["s"], axis=-1),
            _node("IsNaN", ["s"], ["n"]),
            _node("Where", ["n", "zero", "s"], ["s1"]),
            _node("IsInf", ["h2"], ["inf"]),
            _node("Not", ["inf"], ["fin"]),
            _node("Where", ["fin", "h2", "big"], ["h3"]),
            _node("Where", ["mask", "s1", "h3"], ["m"]),
            _node("Slice", ["h3", "start", "end", "axis"], ["col"]),  # [1, 2, 1]
            _node("Greater", ["ta", "tb"], ["gt"]),  # constants: folded
            _node("And", ["gt", "mask"], ["both"]),
            _node("Where", ["both", "m", "col"], ["w"]),  # col copied over 3 columns
            _node("Reshape", ["w", "flat"], ["f"]),
            _node("MatMul", ["f", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(71, 3, 6, scale=2.0), "shape": np.array([1, 2, 3], np.int64),
                "zero": np.array(0.0, np.float32), "big": np.array(1e4, np.float32),
                "mask": np.array([[True, False, True], [False, False, True]]),
                "start": np.array([1], np.int64), "end": np.array([2], np.int64), "axis": np.array([2], np.int64),
                "ta": np.array([[1.0], [0.0]], np.float32), "tb": np.array([0.5], np.float32),
                "flat": np.array([1, 6], np.int64), "w2": _rand(72, 6, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h2 = (x @ p["w1"]).reshape(1, 2, 3)
        s = torch.softmax(h2, dim=-1)
        s1 = torch.where(torch.isnan(s), torch.zeros(()).double(), s)
        h3 = torch.where(~torch.isinf(h2), h2, torch.full((), 1e4).double())
        mask = torch.tensor([[True, False, True], [False, False, True]])
        m = torch.where(mask, s1, h3)
        both = torch.tensor([[True], [False]]) & mask
        w = torch.where(both, m, h3[:, :, 1:2])
        return w.reshape(1, 6) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=13,
                    constants=("shape", "zero", "big", "mask", "start", "end", "axis", "ta", "tb", "flat"))


def _onnx_where_switch() -> OnnxSpec:
    """Where on comparisons of activations (Greater, GreaterOrEqual, Less, LessOrEqual, Equal, Not):
    data-dependent branch switches, which load and run but have no finite bound."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 4]
            _node("MatMul", ["x", "w2"], ["g"]),  # [1, 4]
            _node("Greater", ["h", "zero"], ["c1"]),
            _node("Mul", ["h", "slope"], ["hs"]),
            _node("Where", ["c1", "h", "hs"], ["a"]),  # a leaky ReLU written as a switch
            _node("GreaterOrEqual", ["h", "g"], ["c2"]),
            _node("Where", ["c2", "a", "g"], ["b"]),
            _node("Less", ["one", "b"], ["c3"]),  # 1 < b: b > 1
            _node("Not", ["c3"], ["c4"]),
            _node("Where", ["c4", "b", "one"], ["c"]),  # min(b, 1)
            _node("LessOrEqual", ["c", "g"], ["c5"]),
            _node("Where", ["c5", "c", "zero"], ["d"]),
            _node("Equal", ["d", "zero"], ["c6"]),
            _node("Where", ["c6", "g", "d"], ["e"]),
            _node("MatMul", ["e", "w3"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(73, 3, 4, scale=2.0), "w2": _rand(74, 3, 4), "w3": _rand(75, 4, 2),
                "zero": np.array(0.0, np.float32), "slope": np.array(0.1, np.float32),
                "one": np.array(1.0, np.float32)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h, g = x @ p["w1"], x @ p["w2"]
        zero, one = torch.zeros(()).double(), torch.ones(()).double()
        a = torch.where(h > 0, h, h * p["slope"])
        b = torch.where(a >= g, a, g)
        c = torch.where(~(one < b), b, one)
        d = torch.where(c <= g, c, zero)
        e = torch.where(d == 0, g, d)
        return e @ p["w3"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=13, constants=("zero", "one"))


def _onnx_depth_to_space() -> OnnxSpec:
    """DepthToSpace (DCR and CRD), SpaceToDepth, and Split into num_outputs parts (opset 18)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Mul", ["x", "k"], ["x1"]),
            _node("DepthToSpace", ["x1"], ["d"], blocksize=2),  # [1, 2, 4, 4], DCR
            _node("SpaceToDepth", ["d"], ["s"], blocksize=2),  # [1, 8, 2, 2]
            _node("DepthToSpace", ["s"], ["d2"], blocksize=2, mode="CRD"),  # [1, 2, 4, 4]
            _node("Reshape", ["d2", "flat"], ["f"]),  # [1, 32]
            _node("Split", ["f"], ["p0", "p1", "p2"], axis=1, num_outputs=3),  # 11, 11, 10
            _node("Concat", ["p2", "p0"], ["c"], axis=1),  # [1, 21]
            _node("MatMul", ["c", "w"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"k": _rand(71, 1, 8, 2, 2, scale=2.0), "flat": np.array([1, 32], np.int64),
                "w": _rand(72, 21, 3)}

    def d2s(x: torch.Tensor, crd: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        if crd:
            return x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)
        return x.reshape(n, 2, 2, c // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // 4, 2 * h, 2 * w)

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        d = d2s(x * p["k"], crd=False)
        n, c, h, w = d.shape
        s = d.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        f = d2s(s, crd=True).reshape(1, 32)
        return torch.cat([f[:, 22:], f[:, :11]], dim=1) @ p["w"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=18, constants=("flat",))


# ---- the registry --------------------------------------------------------------------------------
def _fake_quant(x: torch.Tensor, scale: torch.Tensor | float, zero: torch.Tensor | float, lo: int,
                hi: int) -> torch.Tensor:
    """s (clamp(round(x / s) + zp, lo, hi) - zp) in value, with the gradient of its smooth part, the
    clip: the float64 reference whose Jacobians the certified figures (about the smooth part) bound."""
    clip = torch.minimum(torch.maximum(x, scale * (lo - zero)), scale * (hi - zero))
    q = (torch.clamp(torch.round(x / scale) + zero, lo, hi) - zero) * scale
    return clip + (q - clip).detach()


def _dynamic_quant(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then its dequantization, in value (the step in float32, as onnxruntime),
    with the gradient of the identity, its smooth part."""
    x32 = x.detach().float()
    lo, hi = torch.clamp(x32.min(), max=0.0), torch.clamp(x32.max(), min=0.0)
    step = (hi - lo) / 255
    zero = torch.clamp(torch.round(-lo / step), 0, 255)
    q = ((torch.clamp(torch.round(x32 / step) + zero, 0, 255) - zero) * step).double()
    return x + (q - x).detach()


_QW = np.random.default_rng(90)
_QCONV_W = _QW.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
_QCONV_B = _QW.integers(-3000, 3000, 3).astype(np.int32)
_QMM_W = _QW.integers(-128, 128, (12, 4)).astype(np.int8)
_INT_W = _QW.integers(0, 256, (6, 4)).astype(np.uint8)
_INT_CW = _QW.integers(-128, 128, (2, 1, 3)).astype(np.int8)
_DYN_W = _QW.integers(-128, 128, (6, 3)).astype(np.int8)
_QGEMM_W = _QW.integers(-128, 128, (3, 4)).astype(np.int8)
_QGEMM_C = _QW.integers(-500, 500, 3).astype(np.int32)


def _onnx_qlinear() -> OnnxSpec:
    """A statically quantized CNN: QuantizeLinear, QLinearConv (per-channel int8 weights, int32 bias),
    DequantizeLinear, Relu, GlobalAveragePool... as a float tail, QLinearMatMul with int8 activations."""
    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            _node("QLinearConv", ["xq", "xs", "xz", "cw", "cws", "cwz", "cys", "cyz", "cb"], ["cq"], pads=[1, 1, 1, 1],
                  strides=[2, 2]),  # [1, 3, 3, 3]
            _node("DequantizeLinear", ["cq", "cys", "cyz"], ["c"]),
            _node("Relu", ["c"], ["r"]),
            _node("Reshape", ["r", "flat"], ["f"]),  # [1, 27] -> first 12 through Slice
            _node("Slice", ["f", "s0", "e0", "a0"], ["g"]),  # [1, 12]
            _node("QuantizeLinear", ["g", "gs", "gz"], ["gq"]),
            _node("QLinearMatMul", ["gq", "gs", "gz", "mw", "mws", "mwz", "ys", "yz"], ["yq"]),
            _node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8), "cw": _QCONV_W,
                "cws": np.array([0.003, 0.006, 0.002], np.float32), "cwz": np.zeros(3, np.int8),
                "cys": np.array(0.04, np.float32), "cyz": np.array(100, np.uint8), "cb": _QCONV_B,
                "flat": np.array([1, 27], np.int64), "s0": np.array([0], np.int64), "e0": np.array([12], np.int64),
                "a0": np.array([1], np.int64), "gs": np.array(0.03, np.float32), "gz": np.array(-20, np.int8),
                "mw": _QMM_W, "mws": np.array(0.004, np.float32), "mwz": np.array(0, np.int8),
                "ys": np.array(0.05, np.float32), "yz": np.array(3, np.int8)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        xq = _fake_quant(x, p["xs"], 128.0, 0, 255)
        w = torch.from_numpy(_QCONV_W.astype(np.float64)) * p["cws"].reshape(3, 1, 1, 1)
        b = torch.from_numpy(_QCONV_B.astype(np.float64)) * p["xs"] * p["cws"]
        c = _fake_quant(F.conv2d(xq, w, b, stride=2, padding=1), p["cys"], 100.0, 0, 255)
        g = _fake_quant(torch.relu(c).reshape(1, 27)[:, :12], p["gs"], -20.0, -128, 127)
        return _fake_quant(g @ (torch.from_numpy(_QMM_W.astype(np.float64)) * p["mws"]), p["ys"], 3.0, -128, 127)

    return OnnxSpec(nodes=nodes, params=params, reference=reference,
                    constants=("xs", "cws", "cys", "flat", "s0", "e0", "a0", "gs", "mws", "ys"))


def _onnx_integer() -> OnnxSpec:
    """Integer arithmetic on quantized values: MatMulInteger (its int32 result dequantized by a
    DequantizeLinear), ConvInteger (dequantized by Cast and a Mul by the product of the steps)."""
    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            _node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),  # [1, 4] int32
            _node("DequantizeLinear", ["acc", "accs"], ["h"]),
            _node("Tanh", ["h"], ["t"]),
            _node("Reshape", ["t", "shape"], ["t3"]),  # [1, 1, 4]
            _node("QuantizeLinear", ["t3", "ts", "tz"], ["tq"]),
            _node("ConvInteger", ["tq", "cw", "tz"], ["cacc"], pads=[1, 1]),  # [1, 2, 4] int32
            _node("Cast", ["cacc"], ["caccf"], to=1),
            _node("Mul", ["caccf", "cs"], ["y3"]),
            _node("Reshape", ["y3", "out"], ["y"]),  # [1, 8]
        ]

    def params() -> dict[str, np.ndarray]:
        xs, ws, ts, cws = np.float32(0.015), np.float32(0.002), np.float32(1 / 127), np.float32(0.01)
        return {"xs": np.array(xs), "xz": np.array(128, np.uint8), "w": _INT_W, "wz": np.array(120, np.uint8),
                "accs": np.array(np.float32(xs * ws)), "shape": np.array([1, 1, 4], np.int64),
                "ts": np.array(ts), "tz": np.array(0, np.int8), "cw": _INT_CW,
                "cs": np.array(np.float32(ts * cws)), "out": np.array([1, 8], np.int64)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        xq = _fake_quant(x, p["xs"], 128.0, 0, 255) / p["xs"]  # x's integers minus its zero point
        h = (xq @ torch.from_numpy(_INT_W.astype(np.float64) - 120.0)) * p["accs"]
        t = _fake_quant(torch.tanh(h).reshape(1, 1, 4), p["ts"], 0.0, -128, 127) / p["ts"]
        return (F.conv1d(t, torch.from_numpy(_INT_CW.astype(np.float64)), padding=1) * p["cs"]).reshape(1, 8)

    return OnnxSpec(nodes=nodes, params=params, reference=reference,
                    constants=("xs", "accs", "shape", "ts", "cs", "out"))


def _onnx_qgemm() -> OnnxSpec:
    """onnxruntime's QGemm (its static quantization of Gemm, domain com.microsoft): B transposed, per
    output column steps, an int32 bias, a quantized output."""
    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import helper

        return [
            _node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("QGemm", ["xq", "xs", "xz", "w", "ws", "wz", "c", "ys", "yz"], ["yq"], name="qgemm",
                             domain="com.microsoft", transB=1, alpha=1.0),
            _node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8), "w": _QGEMM_W,
                "ws": np.array([0.01, 0.004, 0.02], np.float32), "wz": np.zeros(3, np.int8), "c": _QGEMM_C,
                "ys": np.array(0.1, np.float32), "yz": np.array(120, np.uint8)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        xq = _fake_quant(x, p["xs"], 128.0, 0, 255)
        w = torch.from_numpy(_QGEMM_W.astype(np.float64)) * p["ws"].reshape(3, 1)
        b = torch.from_numpy(_QGEMM_C.astype(np.float64)) * p["xs"] * p["ws"]
        return _fake_quant(xq @ w.T + b, p["ys"], 120.0, 0, 255)

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("xs", "ws", "ys"))


def _onnx_qlinear_ops() -> OnnxSpec:
    """onnxruntime's QOperator format beyond convolutions: QLinearLeakyRelu, QLinearSigmoid, QLinearMul
    (a gate), QLinearAdd (a residual sum, and a broadcast one), QLinearConcat, QLinearAveragePool,
    QLinearGlobalAveragePool and QLinearSoftmax, each quantize(f(dequantize(inputs)))."""
    ms = "com.microsoft"
    steps = {"x": (0.02, 128), "a": (0.0137, 100), "b": (0.004, 0), "c": (0.01, 120), "d": (0.02, 110),
             "e": (0.02, 110), "f": (0.015, 115), "g": (0.01, 118), "h": (0.02, 100), "o": (1 / 256, 0)}

    def q(name: str) -> list[str]:
        return [name + "q", name + "s", name + "z"]

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        from onnx import helper

        def make(op: str, inputs: list[str], out: str, **attrs: Any) -> Any:
            return helper.make_node(op, inputs, [out + "q"], name=f"{op.lower()}_{out}", domain=ms, **attrs)

        return [
            _node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            make("QLinearLeakyRelu", q("x") + ["as", "az"], "a", alpha=0.2),
            make("QLinearSigmoid", q("x") + ["bs", "bz"], "b"),
            make("QLinearMul", q("a") + q("b") + ["cs", "cz"], "c"),
            make("QLinearAdd", q("c") + q("x") + ["ds", "dz"], "d"),
            make("QLinearConcat", ["es", "ez"] + q("d") + q("a"), "e", axis=1),
            make("QLinearAveragePool", q("e") + ["fs", "fz"], "f", kernel_shape=[2, 2], strides=[2, 2]),
            make("QLinearGlobalAveragePool", q("e") + ["gs", "gz"], "g"),
            make("QLinearAdd", q("f") + q("g") + ["hs", "hz"], "h"),
            make("QLinearSoftmax", q("h") + ["os", "oz"], "o", axis=1, opset=13),
            _node("DequantizeLinear", ["oq", "os", "oz"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, (scale, zero) in steps.items():
            out[name + "s"] = np.array(scale, np.float32)
            out[name + "z"] = np.array(zero, np.uint8)
        return out

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        def fq(v: torch.Tensor, name: str) -> torch.Tensor:
            return _fake_quant(v, p[name + "s"], float(steps[name][1]), 0, 255)

        xq = fq(x, "x")
        a = fq(torch.nn.functional.leaky_relu(xq, 0.2), "a")
        c = fq(a * fq(torch.sigmoid(xq), "b"), "c")
        e = fq(torch.cat([fq(c + xq, "d"), a], 1), "e")
        h = fq(fq(torch.nn.functional.avg_pool2d(e, 2), "f") + fq(e.mean(dim=(2, 3), keepdim=True), "g"), "h")
        return fq(torch.softmax(h, 1), "o")

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=tuple(n + "s" for n in steps))


def _onnx_dynamic_quant() -> OnnxSpec:
    """onnxruntime's dynamic quantization of a MatMul: DynamicQuantizeLinear, MatMulInteger by int8
    weights, Cast, Mul by the product of the data's step and the weights' per-column steps, Add."""
    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 6]
            _node("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"]),
            _node("MatMulInteger", ["hq", "w2", "hz", "w2z"], ["acc"]),
            _node("Cast", ["acc"], ["accf"], to=1),
            _node("Mul", ["hs", "w2s"], ["scale"]),
            _node("Mul", ["accf", "scale"], ["m"]),
            _node("Add", ["m", "b"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(91, 5, 6), "w2": _DYN_W, "w2s": np.array([0.01, 0.02, 0.005], np.float32),
                "w2z": np.zeros(3, np.int8), "b": _rand(92, 3)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = _dynamic_quant(x @ p["w1"])
        return h @ (torch.from_numpy(_DYN_W.astype(np.float64)) * p["w2s"]) + p["b"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("w2s",))


def _ml(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, domain="ai.onnx.ml", name=f"{op.lower()}_{outputs[-1]}", **attrs)


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def _onnx_ml_linear() -> OnnxSpec:
    """ai.onnx.ml linear models: Scaler, LinearRegressor (4 targets), LinearClassifier (SOFTMAX), whose
    probabilities also feed a ZipMap that no output reads (the weights are attributes; the initializers
    of the same values are unused)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _ml("Scaler", ["x"], ["s"], offset=_floats(p["off"]), scale=_floats(p["sc"])),
            _ml("LinearRegressor", ["s"], ["r"], coefficients=_floats(p["wr"]), intercepts=_floats(p["br"]), targets=4),
            _ml("LinearClassifier", ["r"], ["label", "y"], coefficients=_floats(p["wc"]), intercepts=_floats(p["bc"]),
                classlabels_ints=[0, 1, 2], post_transform="SOFTMAX"),
            _ml("ZipMap", ["y"], ["maps"], classlabels_int64s=[0, 1, 2]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"off": _rand(71, 3), "sc": _rand(72, 3, scale=2.0), "wr": _rand(73, 4, 3), "br": _rand(74, 4),
                "wc": _rand(75, 3, 4), "bc": _rand(76, 3)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        s = (x - p["off"]) * p["sc"]
        r = s @ p["wr"].T + p["br"]
        return torch.softmax(r @ p["wc"].T + p["bc"], dim=1)

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_ml_normalizer() -> OnnxSpec:
    """ai.onnx.ml Normalizer (L2, L1, and MAX of positive sigmoid outputs) between linear maps: divisions
    by a row's norm, Lipschitz only on a domain."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 4]
            _ml("Normalizer", ["h"], ["a"], norm="L2"),
            _node("Sigmoid", ["h"], ["g"]),
            _ml("Normalizer", ["g"], ["b"], norm="MAX"),
            _ml("Normalizer", ["h"], ["c"], norm="L1"),
            _node("Concat", ["a", "b", "c"], ["cat"], axis=1),
            _ml("LinearRegressor", ["cat"], ["y"], coefficients=_floats(p["w2"]), targets=2),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(77, 3, 4, scale=2.0), "w2": _rand(78, 2, 12)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        g = torch.sigmoid(h)
        a = h / torch.linalg.vector_norm(h, dim=1, keepdim=True)
        b = g / g.amax(dim=1, keepdim=True)
        c = h / h.abs().sum(dim=1, keepdim=True)
        return torch.cat([a, b, c], dim=1) @ p["w2"].T

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


def _onnx_ml_features() -> OnnxSpec:
    """ai.onnx.ml Imputer of NaN (the identity on finite inputs) and FeatureVectorizer (x cut to 2
    features, the imputed h padded to 6) before a LinearRegressor."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "w1"], ["h"]),  # [1, 4]
            _ml("Imputer", ["h"], ["i"], imputed_value_floats=_floats(p["imp"]), replaced_value_float=float("nan")),
            _ml("FeatureVectorizer", ["x", "i"], ["v"], inputdimensions=[2, 6]),
            _ml("LinearRegressor", ["v"], ["y"], coefficients=_floats(p["w2"]), targets=2),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(79, 3, 4), "imp": _rand(80, 4), "w2": _rand(81, 2, 8)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x @ p["w1"]
        v = torch.cat([x[:, :2], h, torch.zeros_like(h[:, :2])], dim=1)
        return v @ p["w2"].T

    return OnnxSpec(nodes=nodes, params=params, reference=reference)


class Norms(nn.Module):
    """GroupNorm, InstanceNorm (affine) and a LayerNorm over the last dim after a conv; small eps so
    that 1/sqrt(eps) is met near constant groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4, eps=0.05)
        self.inn = nn.InstanceNorm2d(4, affine=True, eps=0.1)
        self.ln = nn.LayerNorm(5, eps=0.2)
        self.fc = nn.Linear(100, 3)
        with torch.no_grad():
            for m in (self.gn, self.inn, self.ln):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.inn(self.gn(self.conv(x))))
        return self.fc(h.flatten(1))


class CausalAttention(nn.Module):
    """A GPT-style head over 4 tokens: scores by bmm of two variables, a causal masked_fill(-inf)
    from a buffer (the softmax's mask), softmax, the values' product by matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(3, 6)
        self.out = nn.Linear(2, 2)
        self.register_buffer("causal", torch.tril(torch.ones(4, 4)).view(1, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(2, dim=2)  # [1, 4, 2] each
        att = torch.bmm(q, k.transpose(1, 2)).masked_fill(self.causal == 0, float("-inf"))
        return self.out(torch.softmax(att, dim=-1) @ v)


class SdpaAttention(nn.Module):
    """scaled_dot_product_attention twice: causal, and with a constant additive float mask (-inf
    entries and finite ones), as nn.MultiheadAttention and hand-written attention call it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(3, 12)
        self.out = nn.Linear(8, 2)
        bias = torch.where(torch.rand(4, 4) > 0.3, torch.randn(4, 4) * 0.3, torch.tensor(float("-inf")))
        bias.fill_diagonal_(0.0)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, 4, 3, 2, 2).permute(2, 0, 3, 1, 4)  # [1, 2 heads, 4, 2] each
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.out(torch.cat([a, b], dim=3).transpose(1, 2).reshape(1, 4, 8))


class Gated(nn.Module):
    """A squeeze-and-excitation-style gate x * sigmoid(W x) and a quotient x / (1 + h^2) of two
    variables: products that need a domain."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        g = h * torch.sigmoid(self.gate(h))
        return self.fc2(g / (1.0 + torch.tanh(h) * torch.tanh(h)))


class TsElementwise(nn.Module):
    """exp, log, sqrt, rsqrt, reciprocal, pow, square and erf of a positive activation, and glu."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        p = F.softplus(h) + 0.5
        y = torch.exp(-p) + torch.log(p) + torch.sqrt(p) + torch.rsqrt(p) + torch.reciprocal(p) + p ** 3
        y = y + torch.square(h) + torch.erf(h) + F.glu(torch.cat([h, h], dim=1), dim=1)
        return self.fc2(y)


class RmsNorms(nn.Module):
    """nn.RMSNorm (aten::rms_norm) and the decomposed x * rsqrt(mean(x^2) + eps) * w of T5-style
    code (fused into one RMSNorm), eps large enough that max|w| / sqrt(eps) is met near 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.rms = nn.RMSNorm(5, eps=0.05)
        self.weight = nn.Parameter(torch.rand(5) + 0.5)
        with torch.no_grad():
            self.rms.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.tanh(self.rms(self.fc1(x))))
        h = self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 0.1))
        return self.fc3(h)


class ScoresAndIndices(nn.Module):
    """Scores with their argmax and an argmin beside them, as a classifier's forward returns them: the
    indices are left out of the audit (a TorchScript archive; the ONNX twin is onnx_einsum_group_norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.tanh(self.fc(x))
        return y, y.argmax(-1), x.argmin(1)


class StatsPooling(nn.Module):
    """Statistics pooling of an x-vector speaker network: the mean, the std and the var over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(3, 4, 3), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(torch.cat([h.mean(-1), h.std(-1), h.var(-1, unbiased=False)], 1))


class FusedAttention(nn.Module):
    """nn.MultiheadAttention and nn.TransformerEncoderLayer (post-norm, ReLU) in eval, scripted:
    their fused fast paths (_native_multi_head_attention, _transformer_encoder_layer_fwd)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.mha(x, x, x, need_weights=False)[0])


def _onnx_einsum_group_norm() -> OnnxSpec:
    """Einsum with a constant (a Linear) and a transposing one, GroupNormalization (opset 21, per
    channel), Mish, and an ArgMax and an ArgMin that no output reads (indices are left out of the
    audit)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("Einsum", ["x", "w1"], ["h"], equation="bsd,dc->bcs"),  # [1, 4, 3]
            _node("GroupNormalization", ["h", "g", "b"], ["n0"], num_groups=2, epsilon=0.3),
            _node("Mish", ["n0"], ["n"]),
            _node("Einsum", ["n"], ["t"], equation="bcs->bsc"),  # [1, 3, 4]
            _node("ArgMax", ["t"], ["k"], axis=-1, keepdims=0),
            _node("ArgMin", ["t"], ["k2"], axis=1, keepdims=1),
            _node("MatMul", ["t", "w2"], ["y"]),
        ]

    def params() -> dict[str, np.ndarray]:
        return {"w1": _rand(91, 2, 4), "g": _rand(92, 4), "b": _rand(93, 4), "w2": _rand(94, 4, 2)}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("bsd,dc->bcs", x, p["w1"]).reshape(1, 2, 6)
        d = h - h.mean(dim=2, keepdim=True)
        n = (d / torch.sqrt((d * d).mean(dim=2, keepdim=True) + float(np.float32(0.3)))).reshape(1, 4, 3)
        n = F.mish(n * p["g"].reshape(1, 4, 1) + p["b"].reshape(1, 4, 1))
        return n.transpose(1, 2) @ p["w2"]

    return OnnxSpec(nodes=nodes, params=params, reference=reference, opset=21)


def _onnx_einsum_attention() -> OnnxSpec:
    """Attention written with Einsum of two variables, an additive causal mask of -inf (fused into
    the softmax's mask, its finite part a shift)."""

    def nodes(p: dict[str, np.ndarray]) -> list[Any]:
        return [
            _node("MatMul", ["x", "wq"], ["q"]),  # [1, 4, 2]
            _node("MatMul", ["x", "wk"], ["k"]),
            _node("Einsum", ["q", "k"], ["s"], equation="bqd,bkd->bqk"),
            _node("Add", ["s", "m"], ["sm"]),
            _node("Softmax", ["sm"], ["pr"], axis=-1),
            _node("Einsum", ["pr", "x"], ["y"], equation="bqk,bkd->bqd"),
        ]

    def params() -> dict[str, np.ndarray]:
        mask = np.where(np.tril(np.ones((4, 4), dtype=bool)), _rand(97, 4, 4, scale=0.3), -np.inf).astype(np.float32)
        return {"wq": _rand(95, 3, 2), "wk": _rand(96, 3, 2), "m": mask}

    def reference(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        s = (x @ p["wq"]) @ (x @ p["wk"]).transpose(1, 2) + p["m"]
        return torch.softmax(s, dim=-1) @ x

    return OnnxSpec(nodes=nodes, params=params, reference=reference, constants=("m",))


def _cases() -> list[Case]:
    L = OpType
    cases = [
        Case(id="mlp_relu", input_shape=(1, 4), ops=frozenset({L.LINEAR, L.RELU}),
             module=_seeded(lambda: Seq(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                                        nn.Linear(5, 3)), 1),
             onnx_ops=frozenset({"Gemm", "Relu"}), ts_ops=frozenset({"aten::linear", "aten::relu"})),
        _act("leaky_relu", lambda: nn.LeakyReLU(0.1), {L.LEAKY_RELU}, onnx_ops=frozenset({"LeakyRelu"}),
             ts_ops=frozenset({"aten::leaky_relu"})),
        _act("leaky_relu_steep", lambda: nn.LeakyReLU(2.5), {L.LEAKY_RELU}, formats=(ONNX,)),
        _act("prelu", lambda: _prelu(6), {L.PRELU}, onnx_ops=frozenset({"PRelu"}),
             ts_ops=frozenset({"aten::prelu"})),
        _act("sigmoid", nn.Sigmoid, {L.SIGMOID}, onnx_ops=frozenset({"Sigmoid"}),
             ts_ops=frozenset({"aten::sigmoid"})),
        _act("tanh", nn.Tanh, {L.TANH}, onnx_ops=frozenset({"Tanh"}), ts_ops=frozenset({"aten::tanh"})),
        _act("softplus", lambda: nn.Softplus(beta=2.0), {L.SOFTPLUS}, onnx_ops=frozenset({"Softplus"}),
             ts_ops=frozenset({"aten::softplus"})),
        _act("elu", lambda: nn.ELU(alpha=1.5), {L.ELU}, onnx_ops=frozenset({"Elu"}),
             ts_ops=frozenset({"aten::elu"})),
        _act("gelu", nn.GELU, {L.GELU}, opset=20, onnx_ops=frozenset({"Gelu"}),
             ts_ops=frozenset({"aten::gelu"})),
        _act("gelu_tanh", lambda: nn.GELU(approximate="tanh"), {L.GELU}, opset=20),
        # exported as Erf arithmetic, which the loader fuses
        _act("gelu_erf_pattern", nn.GELU, {L.GELU}, opset=17, formats=(ONNX,)),
        # exported as Tanh arithmetic (x * (x * x), the constants rounded to float32), fused likewise
        _act("gelu_tanh_pattern", lambda: nn.GELU(approximate="tanh"), {L.GELU}, opset=17, formats=(ONNX,)),
        _act("hardsigmoid", nn.Hardsigmoid, {L.HARD_SIGMOID}, onnx_ops=frozenset({"HardSigmoid"}),
             ts_ops=frozenset({"aten::hardsigmoid"})),
        _act("hardswish", nn.Hardswish, {L.HARD_SWISH}, opset=17, onnx_ops=frozenset({"HardSwish"}),
             ts_ops=frozenset({"aten::hardswish"})),
        _act("silu", nn.SiLU, {L.SILU}, ts_ops=frozenset({"aten::silu"})),
        Case(id="threshold", input_shape=(1, 4), formats=(TS,), ops=frozenset({L.LINEAR, L.CLIP}),
             module=_seeded(lambda: Between(nn.Threshold(0.5, 0.5)), 0), ts_ops=frozenset({"aten::threshold"})),
        _act("relu6", nn.ReLU6, {L.CLIP}, onnx_ops=frozenset({"Clip"})),
        _act("hardtanh", lambda: nn.Hardtanh(-0.5, 2.0), {L.CLIP}, ts_ops=frozenset({"aten::hardtanh"})),
        _act("softmax", lambda: nn.Softmax(dim=-1), {L.SOFTMAX}, onnx_ops=frozenset({"Softmax"}),
             ts_ops=frozenset({"aten::softmax"})),
        Case(id="batchnorm_alone", input_shape=(1, 5), ops=frozenset({L.LINEAR, L.AFFINE, L.TANH}),
             module=_seeded(lambda: Seq(nn.Linear(5, 5), nn.Tanh(), _bn1d(5), nn.Linear(5, 2)), 2),
             onnx_ops=frozenset({"BatchNormalization"}), ts_ops=frozenset({"aten::batch_norm"})),
        Case(id="cnn", input_shape=(1, 2, 7, 7),
             ops=frozenset({L.CONV, L.RELU, L.MAX_POOL, L.AVG_POOL, L.RESHAPE, L.LINEAR}),
             module=_seeded(Cnn, 3),
             onnx_ops=frozenset({"Conv", "MaxPool", "AveragePool", "Flatten"}),
             ts_ops=frozenset({"aten::_convolution", "aten::max_pool2d", "aten::avg_pool2d",
                               "aten::flatten"})),
        Case(id="conv1d_groups_dilation", input_shape=(1, 4, 9),
             ops=frozenset({L.CONV, L.ELU, L.GLOBAL_AVG_POOL}),
             module=_seeded(lambda: Seq(nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2), nn.ELU(),
                                        nn.Conv1d(6, 2, 2, stride=3), nn.AdaptiveAvgPool1d(1)), 4),
             ts_ops=frozenset({"aten::adaptive_avg_pool1d"})),
        Case(id="conv3d", input_shape=(1, 1, 2, 3, 3), ops=frozenset({L.CONV, L.MAX_POOL, L.AVG_POOL}),
             module=_seeded(lambda: Seq(nn.Conv3d(1, 2, 2, padding=1), nn.MaxPool3d(2, stride=1),
                                        nn.AvgPool3d(2, stride=1, padding=1, count_include_pad=False)), 5),
             ts_ops=frozenset({"aten::max_pool3d", "aten::avg_pool3d"})),
        Case(id="conv_transpose", input_shape=(1, 2, 3, 3),
             ops=frozenset({L.CONV_TRANSPOSE, L.SIGMOID}),
             module=_seeded(lambda: Seq(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
                                        nn.Sigmoid(), nn.AdaptiveMaxPool2d(1)), 6),
             onnx_ops=frozenset({"ConvTranspose"}),
             ts_ops=frozenset({"aten::adaptive_max_pool2d"})),
        Case(id="conv_transpose1d", input_shape=(1, 2, 5), ops=frozenset({L.CONV_TRANSPOSE, L.MAX_POOL}),
             module=_seeded(lambda: Seq(nn.ConvTranspose1d(2, 2, 4, stride=3, padding=2, dilation=2),
                                        nn.MaxPool1d(3, stride=2, ceil_mode=True)), 7),
             ts_ops=frozenset({"aten::max_pool1d"})),
        Case(id="global_avg", input_shape=(1, 2, 4, 4), ops=frozenset({L.CONV, L.GLOBAL_AVG_POOL, L.RESHAPE}),
             module=_seeded(lambda: Seq(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8),
             onnx_ops=frozenset({"GlobalAveragePool"}), ts_ops=frozenset({"aten::adaptive_avg_pool2d"})),
        Case(id="residual", input_shape=(1, 5), ops=frozenset({L.LINEAR, L.TANH, L.ADD}),
             module=_seeded(Residual, 9), residual=True, onnx_ops=frozenset({"Add"}),
             ts_ops=frozenset({"aten::add"})),
        Case(id="sub_branches", input_shape=(1, 4), ops=frozenset({L.LINEAR, L.RELU, L.TANH, L.SUB}),
             module=_seeded(lambda: Branches("sub"), 10), onnx_ops=frozenset({"Sub"}),
             ts_ops=frozenset({"aten::sub"})),
        Case(id="concat_branches", input_shape=(1, 4), ops=frozenset({L.LINEAR, L.RELU, L.TANH, L.CONCAT}),
             module=_seeded(lambda: Branches("cat"), 11), onnx_ops=frozenset({"Concat"}),
             ts_ops=frozenset({"aten::cat"})),
        Case(id="transpose_pad", input_shape=(1, 2, 3),
             ops=frozenset({L.LINEAR, L.TRANSPOSE, L.PAD, L.RESHAPE, L.SILU}),
             module=_seeded(lambda: Fn(_f(lambda s, x: F.silu(F.pad(x.transpose(1, 2), (1, 2), value=0.5))
                                          .reshape(1, 15)), 3, 15, 2), 12),
             onnx_ops=frozenset({"Transpose", "Pad", "Reshape"}),
             ts_ops=frozenset({"aten::transpose", "aten::pad", "aten::reshape"})),
        Case(id="scale_shift", input_shape=(1, 4), ops=frozenset({L.LINEAR, L.AFFINE, L.TANH}),
             module=_seeded(lambda: Fn(_f(lambda s, x: torch.tanh(-(x * 3.0) / 0.5 + 1.0) * 2.0), 4, 4, 2), 13),
             onnx_ops=frozenset({"Mul", "Div", "Neg"}),
             ts_ops=frozenset({"aten::mul", "aten::div", "aten::neg"})),
        Case(id="ts_algebra", input_shape=(2, 4), formats=(TS,), script=True, module=_seeded(TsAlgebra, 14),
             ops=frozenset({L.LINEAR, L.CLIP, L.AFFINE, L.TRANSPOSE, L.CONCAT, L.RESHAPE, L.ADD, L.SUB, L.TANH}),
             ts_ops=frozenset({"aten::matmul", "aten::mm", "aten::addmm", "aten::t", "aten::numpy_T",
                               "aten::permute", "aten::clamp", "aten::clamp_min", "aten::clamp_max",
                               "aten::relu6", "aten::rsub", "aten::to",
                               "aten::type_as", "aten::clone", "aten::contiguous", "aten::dropout",
                               "aten::alpha_dropout", "aten::stack", "aten::unsqueeze", "aten::squeeze",
                               "aten::unflatten", "aten::view", "aten::reshape_as", "aten::view_as",
                               "aten::expand", "aten::expand_as",
                               "aten::mean"})),
        Case(id="ts_conv", input_shape=(1, 1, 8), formats=(TS,), script=True, module=_seeded(TsConv, 15),
             ops=frozenset({L.CONV, L.CONV_TRANSPOSE, L.RESHAPE}),
             ts_ops=frozenset({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::conv_transpose1d",
                               "aten::conv_transpose2d", "aten::conv_transpose3d", "aten::constant_pad_nd",
                               "aten::convolution",
                               "aten::feature_dropout", "aten::feature_alpha_dropout"})),
        Case(id="ts_pools", input_shape=(1, 2, 2, 2, 4), formats=(TS,), script=True, module=_seeded(TsPools, 16),
             ops=frozenset({L.AVG_POOL, L.MAX_POOL, L.GLOBAL_MAX_POOL, L.SOFTMAX, L.REDUCE_LOG_SUM_EXP}),
             ts_ops=frozenset({"aten::adaptive_avg_pool3d", "aten::adaptive_max_pool3d", "aten::avg_pool1d",
                               "aten::adaptive_max_pool1d", "aten::max_pool1d_with_indices",
                               "aten::max_pool2d_with_indices", "aten::max_pool3d_with_indices",
                               "aten::_softmax", "aten::_log_softmax"})),
        Case(id="onnx_arith", input_shape=(2, 4), formats=(ONNX,), onnx=_onnx_arith(),
             ops=frozenset({L.LINEAR, L.AFFINE, L.SILU, L.ADD}),
             onnx_ops=frozenset({"MatMul", "Constant", "Mul", "Div", "Identity", "Dropout", "Cast",
                                 "CastLike", "Swish", "Neg", "Gemm", "Sum"})),
        Case(id="onnx_same_input", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_same_input(),
             ops=frozenset({L.ADD, L.SUB, L.LINEAR, L.CONCAT}), onnx_ops=frozenset({"Sum", "Sub", "Concat"})),
        Case(id="onnx_broadcast", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_broadcast(),
             ops=frozenset({L.LINEAR, L.AFFINE, L.ADD, L.PRELU, L.RESHAPE, L.CONCAT}),
             onnx_ops=frozenset({"Mul", "Add", "PRelu", "Unsqueeze"})),
        Case(id="onnx_shapes", input_shape=(1, 2, 3), formats=(ONNX,), onnx=_onnx_shapes(),
             ops=frozenset({L.RESHAPE, L.TRANSPOSE, L.PAD, L.CONV, L.SOFTMAX, L.CONCAT, L.LINEAR}),
             onnx_ops=frozenset({"Unsqueeze", "Transpose", "Pad", "Conv", "Squeeze", "Softmax", "Reshape",
                                 "Flatten", "Concat", "MatMul"})),
        Case(id="onnx_acts", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_acts(),
             ops=frozenset({L.LINEAR, L.ELU, L.HARD_SIGMOID, L.LEAKY_RELU, L.SOFTPLUS, L.CLIP, L.HARD_SWISH,
                            L.GELU, L.RELU, L.SIGMOID, L.TANH, L.PRELU, L.CONCAT}),
             onnx_ops=frozenset({"Elu", "HardSigmoid", "LeakyRelu", "Softplus", "Clip", "HardSwish", "Gelu",
                                 "Relu", "Sigmoid", "Tanh", "PRelu"})),
        Case(id="onnx_pools", input_shape=(1, 2, 5, 6), formats=(ONNX,), onnx=_onnx_pools(),
             ops=frozenset({L.AFFINE, L.MAX_POOL, L.AVG_POOL, L.CONV_TRANSPOSE, L.GLOBAL_AVG_POOL,
                            L.GLOBAL_MAX_POOL, L.SUB, L.ADD, L.RESHAPE}),
             onnx_ops=frozenset({"BatchNormalization", "MaxPool", "AveragePool", "ConvTranspose",
                                 "GlobalAveragePool", "GlobalMaxPool", "Sub", "Add", "Flatten"})),
        Case(id="interpolate", input_shape=(1, 2, 3, 4), formats=(TS,), module=_seeded(Interpolate, 63),
             ops=frozenset({L.CONV, L.RESIZE, L.RESHAPE}),
             ts_ops=frozenset({"aten::upsample_nearest1d", "aten::upsample_nearest2d", "aten::upsample_nearest3d",
                               "aten::_upsample_nearest_exact1d", "aten::_upsample_nearest_exact2d",
                               "aten::_upsample_nearest_exact3d", "aten::upsample_linear1d",
                               "aten::upsample_bilinear2d", "aten::upsample_trilinear3d", "aten::upsample_bicubic2d"})),
        Case(id="onnx_resize", input_shape=(1, 2, 3, 4), formats=(ONNX,), onnx=_onnx_resize(),
             ops=frozenset({L.RESIZE, L.CONV}), onnx_ops=frozenset({"Resize", "Conv"})),
        Case(id="onnx_upsample", input_shape=(1, 2, 3, 3), formats=(ONNX,), onnx=_onnx_upsample(),
             ops=frozenset({L.RESIZE, L.CONV}), onnx_ops=frozenset({"Upsample", "Conv"})),
        Case(id="reductions", input_shape=(1, 2, 4, 5),
             ops=frozenset({L.CONV, L.REDUCE_MEAN, L.REDUCE_SUM, L.REDUCE_MAX, L.REDUCE_MIN, L.REDUCE_L2,
                            L.REDUCE_L1, L.REDUCE_LOG_SUM_EXP, L.LINEAR}),
             module=_seeded(Reductions, 11), opset=17,
             onnx_ops=frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1",
                                 "ReduceLogSumExp"}),
             ts_ops=frozenset({"aten::mean", "aten::sum", "aten::amax", "aten::amin", "aten::linalg_vector_norm",
                               "aten::logsumexp"})),
        Case(id="onnx_sum_square", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_sum_square(),
             ops=frozenset({L.LINEAR, L.REDUCE_SUM_SQUARE, L.ADD}), onnx_ops=frozenset({"ReduceSumSquare"})),
        Case(id="extrema", input_shape=(1, 4), ops=frozenset({L.LINEAR, L.MAX, L.MIN}),
             module=_seeded(Extrema, 12), onnx_ops=frozenset({"Max", "Min"}),
             ts_ops=frozenset({"aten::maximum", "aten::minimum", "aten::max", "aten::min"})),
        Case(id="onnx_slice_mul", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_slice_mul(),
             ops=frozenset({L.LINEAR, L.SLICE, L.SIGMOID, L.MUL}), onnx_ops=frozenset({"Slice", "Mul"})),
        # recurrent cells, unrolled over the 3 steps (TorchScript's aten::lstm, aten::gru, aten::rnn_* as ONNX's cells)
        Case(id="rnn_tanh", input_shape=(1, 3, 2), module=_seeded(lambda: Recurrent(False), 61),
             ops=frozenset({L.LINEAR, L.SLICE, L.RESHAPE, L.ADD, L.TANH, L.CONCAT}), onnx_ops=frozenset({"RNN"}),
             ts_ops=frozenset({"aten::rnn_tanh"})),
        Case(id="rnn_relu_stacked", input_shape=(3, 1, 2), formats=(TS,),
             module=_seeded(lambda: Recurrent(False, relu=True), 63),
             ops=frozenset({L.LINEAR, L.SLICE, L.RESHAPE, L.ADD, L.RELU, L.CONCAT}), ts_ops=frozenset({"aten::rnn_relu"})),
        Case(id="lstm_gru", input_shape=(1, 3, 2), module=_seeded(lambda: Recurrent(True), 62),
             ops=frozenset({L.LINEAR, L.SLICE, L.RESHAPE, L.ADD, L.SUB, L.SIGMOID, L.TANH, L.MUL, L.CONCAT}),
             onnx_ops=frozenset({"LSTM", "GRU"}), ts_ops=frozenset({"aten::lstm", "aten::gru"})),
        Case(id="onnx_domain_maps", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_domain_maps(),
             ops=frozenset({L.LINEAR, L.SIGMOID, L.LOG, L.SQRT, L.RECIPROCAL, L.DIV, L.POW, L.EXP, L.ERF}),
             onnx_ops=frozenset({"Log", "Sqrt", "Reciprocal", "Div", "Pow", "Exp", "Erf", "Sum"})),
        Case(id="onnx_attention", input_shape=(4, 3), formats=(ONNX,), onnx=_onnx_attention(),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX}), onnx_ops=frozenset({"MatMul", "Gemm", "Softmax"})),
        _act("mish", nn.Mish, {L.MISH}, formats=(TS,), ts_ops=frozenset({"aten::mish"})),
        _act("mish_pattern", nn.Mish, {L.MISH}, formats=(ONNX,)),  # opset 17: x * Tanh(Softplus(x)), fused
        _act("selu", nn.SELU, {L.ELU, L.AFFINE}, onnx_ops=frozenset({"Selu"}), ts_ops=frozenset({"aten::selu"})),
        _act("celu", lambda: nn.CELU(0.7), {L.ELU, L.AFFINE}, onnx_ops=frozenset({"Celu"}),
             ts_ops=frozenset({"aten::celu"})),
        _act("log_softmax", lambda: nn.LogSoftmax(dim=1), {L.REDUCE_LOG_SUM_EXP, L.SUB},
             onnx_ops=frozenset({"LogSoftmax"}), ts_ops=frozenset({"aten::log_softmax"})),
        Case(id="norms", input_shape=(1, 2, 5, 5), module=_seeded(Norms, 88),
             ops=frozenset({L.CONV, L.LAYER_NORM, L.AFFINE, L.RESHAPE, L.LINEAR}),
             onnx_ops=frozenset({"InstanceNormalization", "LayerNormalization"}),
             ts_ops=frozenset({"aten::group_norm", "aten::instance_norm", "aten::layer_norm"})),
        Case(id="causal_attention", input_shape=(1, 4, 3), module=_seeded(CausalAttention, 89),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX}), onnx_ops=frozenset({"Where", "Softmax"}),
             ts_ops=frozenset({"aten::bmm", "aten::masked_fill", "aten::matmul"})),
        Case(id="sdpa_attention", input_shape=(1, 4, 3), module=_seeded(SdpaAttention, 90),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.TRANSPOSE}),
             ts_ops=frozenset({"aten::scaled_dot_product_attention"})),
        Case(id="gated_products", input_shape=(1, 3), formats=(TS,), module=_seeded(Gated, 92),
             ops=frozenset({L.LINEAR, L.MUL, L.DIV, L.SIGMOID, L.TANH, L.AFFINE}),
             ts_ops=frozenset({"aten::mul", "aten::div"})),
        Case(id="ts_elementwise", input_shape=(1, 3), formats=(TS,), script=True, module=_seeded(TsElementwise, 93),
             ops=frozenset({L.LINEAR, L.EXP, L.LOG, L.SQRT, L.RECIPROCAL, L.POW, L.ERF, L.MUL, L.SIGMOID, L.SLICE}),
             ts_ops=frozenset({"aten::exp", "aten::log", "aten::sqrt", "aten::rsqrt", "aten::reciprocal", "aten::pow",
                               "aten::square", "aten::erf", "aten::glu"})),
        Case(id="stats_pooling", input_shape=(1, 3, 8), formats=(TS,), module=_seeded(StatsPooling, 93),
             ops=frozenset({L.CONV, L.RELU, L.SUB, L.MUL, L.REDUCE_SUM, L.SQRT, L.LINEAR}),
             ts_ops=frozenset({"aten::std", "aten::var"})),
        Case(id="scores_and_indices", input_shape=(2, 6), formats=(TS,), module=_seeded(ScoresAndIndices, 92),
             ops=frozenset({L.LINEAR, L.TANH}), ts_ops=frozenset({"aten::argmax", "aten::argmin"})),
        Case(id="fused_attention", input_shape=(1, 3, 4), formats=(TS,), script=True, module=_seeded(FusedAttention, 91),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.LAYER_NORM, L.RELU, L.ADD}),
             ts_ops=frozenset({"aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd"})),
        Case(id="onnx_einsum_group_norm", input_shape=(1, 3, 2), formats=(ONNX,), onnx=_onnx_einsum_group_norm(),
             ops=frozenset({L.LINEAR, L.LAYER_NORM, L.AFFINE, L.TRANSPOSE, L.MISH}),
             onnx_ops=frozenset({"Einsum", "GroupNormalization", "Mish", "ArgMax", "ArgMin"})),
        Case(id="onnx_einsum_attention", input_shape=(1, 4, 3), formats=(ONNX,), onnx=_onnx_einsum_attention(),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.AFFINE}), onnx_ops=frozenset({"Einsum", "Add", "Softmax"})),
        Case(id="onnx_layer_norm", input_shape=(2, 3, 2), formats=(ONNX,), onnx=_onnx_layer_norm(),
             ops=frozenset({L.LINEAR, L.LAYER_NORM}), onnx_ops=frozenset({"LayerNormalization"})),
        Case(id="onnx_transformer_contrib", input_shape=(1, 3, 4), formats=(ONNX,), onnx=_onnx_transformer_contrib(),
             ops=frozenset({L.LINEAR, L.LAYER_NORM, L.ADD, L.AFFINE, L.GELU, L.SILU}),
             onnx_ops=frozenset({"com.microsoft.SkipLayerNormalization", "com.microsoft.FastGelu",
                                 "SimplifiedLayerNormalization", "com.microsoft.QuickGelu",
                                 "com.microsoft.SkipSimplifiedLayerNormalization", "com.microsoft.BiasGelu",
                                 "com.microsoft.Gelu"})),
        Case(id="onnx_ort_attention", input_shape=(1, 3, 4), formats=(ONNX,), onnx=_onnx_ort_attention(),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.AFFINE, L.TRANSPOSE, L.RESHAPE}),
             onnx_ops=frozenset({"com.microsoft.Attention", "com.microsoft.MultiHeadAttention"})),
        Case(id="onnx_attention_operator", input_shape=(1, 3, 4), formats=(ONNX,), onnx=_onnx_attention_operator(),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.AFFINE, L.TRANSPOSE, L.RESHAPE, L.GATHER, L.TANH}),
             onnx_ops=frozenset({"Attention"})),
        Case(id="onnx_copies", input_shape=(1, 3, 4), formats=(ONNX,), onnx=_onnx_copies(),
             ops=frozenset({L.LINEAR, L.GATHER, L.RESHAPE, L.TRANSPOSE, L.ADD}),
             onnx_ops=frozenset({"CumSum", "GatherElements", "GatherND", "Pad"})),
        Case(id="copies", input_shape=(1, 4), formats=(TS,), module=_seeded(Copies, 97),
             ops=frozenset({L.LINEAR, L.GATHER, L.RESHAPE, L.TRANSPOSE, L.CONCAT, L.SLICE}),
             ts_ops=frozenset({"aten::pad", "aten::roll", "aten::cumsum", "aten::adaptive_avg_pool2d", "aten::reflection_pad1d",
                               "aten::reflection_pad2d", "aten::replication_pad1d", "aten::replication_pad2d"})),
        Case(id="onnx_spectral", input_shape=(1, 4), formats=(ONNX,), onnx=_onnx_spectral(),
             ops=frozenset({L.LINEAR, L.CONV, L.REDUCE_L2, L.RESHAPE, L.TRANSPOSE, L.CONCAT}),
             onnx_ops=frozenset({"STFT", "DFT", "ReduceL2"})),
        Case(id="onnx_rms_normalization", input_shape=(2, 3, 4), formats=(ONNX,), onnx=_onnx_rms_normalization(),
             ops=frozenset({L.LINEAR, L.LAYER_NORM}), onnx_ops=frozenset({"RMSNormalization"})),
        Case(id="rms_norms", input_shape=(1, 3, 4), formats=(TS,), module=_seeded(RmsNorms, 94),
             ops=frozenset({L.LINEAR, L.LAYER_NORM, L.TANH}), ts_ops=frozenset({"aten::rms_norm", "aten::rsqrt"})),
        Case(id="onnx_layer_norm_pattern", input_shape=(1, 3, 2), formats=(ONNX,), onnx=_onnx_layer_norm_pattern(),
             ops=frozenset({L.LINEAR, L.LAYER_NORM})),
        Case(id="onnx_erf", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_erf(),
             ops=frozenset({L.LINEAR, L.ERF}), onnx_ops=frozenset({"Erf"})),
        Case(id="sinusoids", input_shape=(1, 3), module=_seeded(Sinusoids, 98),
             ops=frozenset({L.LINEAR, L.SIN, L.COS, L.CONCAT}), ts_ops=frozenset({"aten::sin", "aten::cos"}),
             onnx_ops=frozenset({"Sin", "Cos"})),
        Case(id="spectrogram", input_shape=(1, 3), formats=(TS,), module=_seeded(Spectrogram, 99),
             ops=frozenset({L.LINEAR, L.CONV, L.REDUCE_L2, L.GATHER, L.RESHAPE, L.TRANSPOSE, L.CONCAT}),
             ts_ops=frozenset({"aten::stft", "aten::abs", "aten::real", "aten::imag", "aten::view_as_real"})),
        Case(id="einsums", input_shape=(1, 3), formats=(TS,), module=_seeded(Einsums, 100),
             ops=frozenset({L.LINEAR, L.MATMUL, L.SOFTMAX, L.RESHAPE, L.TRANSPOSE}), ts_ops=frozenset({"aten::einsum"})),
        Case(id="selection", input_shape=(1, 3), module=_seeded(Selection, 81),
             ops=frozenset({L.LINEAR, L.SLICE, L.GATHER, L.ABS, L.CONCAT, L.RESHAPE, L.TRANSPOSE, L.TILE}),
             ts_ops=frozenset({"aten::slice", "aten::select", "aten::index_select", "aten::abs", "aten::pixel_shuffle",
                               "aten::pixel_unshuffle", "aten::repeat", "aten::expand"})),
        Case(id="fills", input_shape=(1, 3), formats=(TS,), script=True, module=_seeded(Fills, 83),
             ops=frozenset({L.LINEAR, L.AFFINE}),
             ts_ops=frozenset({"aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::new_zeros",
                               "aten::new_ones", "aten::new_full"})),
        Case(id="parts", input_shape=(1, 3), formats=(TS,), module=_seeded(Parts, 82),
             ops=frozenset({L.LINEAR, L.SLICE, L.GATHER, L.CONCAT, L.RESHAPE}),
             ts_ops=frozenset({"aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind",
                               "aten::unsafe_split", "aten::unsafe_chunk", "aten::unsafe_split_with_sizes"})),
        Case(id="onnx_selection", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_selection(),
             ops=frozenset({L.LINEAR, L.SLICE, L.GATHER, L.RESHAPE, L.ABS, L.PAD, L.CONCAT, L.AFFINE, L.TILE}),
             onnx_ops=frozenset({"Split", "Gather", "Abs", "Concat", "Expand", "Tile"})),
        Case(id="onnx_where", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_where(),
             ops=frozenset({L.LINEAR, L.RESHAPE, L.SOFTMAX, L.WHERE, L.SLICE}),
             onnx_ops=frozenset({"Where", "IsNaN", "IsInf", "Not", "Greater", "And"})),
        Case(id="onnx_where_switch", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_where_switch(), switch=True,
             ops=frozenset({L.LINEAR, L.WHERE, L.AFFINE}),
             onnx_ops=frozenset({"Where", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "Not"})),
        Case(id="onnx_depth_to_space", input_shape=(1, 8, 2, 2), formats=(ONNX,), onnx=_onnx_depth_to_space(),
             ops=frozenset({L.AFFINE, L.RESHAPE, L.TRANSPOSE, L.SLICE, L.CONCAT, L.LINEAR}),
             onnx_ops=frozenset({"DepthToSpace", "SpaceToDepth", "Split"})),
        Case(id="onnx_qlinear", input_shape=(1, 2, 5, 5), formats=(ONNX,), onnx=_onnx_qlinear(),
             ops=frozenset({L.QUANTIZE, L.CONV, L.RELU, L.LINEAR}),
             onnx_ops=frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul"})),
        Case(id="onnx_integer", input_shape=(1, 6), formats=(ONNX,), onnx=_onnx_integer(),
             ops=frozenset({L.QUANTIZE, L.LINEAR, L.CONV, L.TANH}),
             onnx_ops=frozenset({"QuantizeLinear", "MatMulInteger", "DequantizeLinear", "ConvInteger"})),
        Case(id="onnx_qlinear_ops", input_shape=(1, 2, 4, 4), formats=(ONNX,), onnx=_onnx_qlinear_ops(),
             ops=frozenset({L.QUANTIZE, L.LEAKY_RELU, L.SIGMOID, L.MUL, L.ADD, L.CONCAT, L.AVG_POOL,
                            L.GLOBAL_AVG_POOL, L.SOFTMAX}),
             onnx_ops=frozenset({"com.microsoft.QLinearLeakyRelu", "com.microsoft.QLinearSigmoid",
                                 "com.microsoft.QLinearMul", "com.microsoft.QLinearAdd", "com.microsoft.QLinearConcat",
                                 "com.microsoft.QLinearAveragePool", "com.microsoft.QLinearGlobalAveragePool",
                                 "com.microsoft.QLinearSoftmax"})),
        Case(id="onnx_qgemm", input_shape=(2, 4), formats=(ONNX,), onnx=_onnx_qgemm(),
             ops=frozenset({L.QUANTIZE, L.LINEAR}), onnx_ops=frozenset({"QuantizeLinear", "com.microsoft.QGemm"})),
        Case(id="onnx_dynamic_quant", input_shape=(1, 5), formats=(ONNX,), onnx=_onnx_dynamic_quant(),
             ops=frozenset({L.LINEAR, L.DYNAMIC_QUANTIZE}),
             onnx_ops=frozenset({"DynamicQuantizeLinear", "MatMulInteger"})),
        Case(id="onnx_ml_linear", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_ml_linear(),
             ops=frozenset({L.AFFINE, L.LINEAR, L.SOFTMAX}),
             onnx_ops=frozenset({"ai.onnx.ml.Scaler", "ai.onnx.ml.LinearRegressor", "ai.onnx.ml.LinearClassifier",
                                 "ai.onnx.ml.ZipMap"})),
        Case(id="onnx_ml_normalizer", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_ml_normalizer(),
             ops=frozenset({L.LINEAR, L.REDUCE_L2, L.REDUCE_MAX, L.REDUCE_L1, L.DIV, L.SIGMOID, L.CONCAT}),
             onnx_ops=frozenset({"ai.onnx.ml.Normalizer", "ai.onnx.ml.LinearRegressor"})),
        Case(id="onnx_ml_features", input_shape=(1, 3), formats=(ONNX,), onnx=_onnx_ml_features(),
             ops=frozenset({L.LINEAR, L.WHERE, L.SLICE, L.PAD, L.CONCAT}),
             onnx_ops=frozenset({"ai.onnx.ml.Imputer", "ai.onnx.ml.FeatureVectorizer", "ai.onnx.ml.LinearRegressor"})),
    ]
    return cases


CASES: list[Case] = _cases()
CASE_BY_ID: dict[str, Case] = {c.id: c for c in CASES}


# ---- ONNX attribute variants: single operators with the attributes a loader must resolve -------------
@dataclass(frozen=True, kw_only=True)
class Variant:
    """One ONNX node ``x -> y`` (plus initializers) with unusual attributes; its reference is the
    engine's own float64 executor, checked against onnxruntime first (so the translation is right)."""

    id: str
    node: Callable[[], Any]
    input_shape: tuple[int, ...]
    params: Callable[[], dict[str, np.ndarray]] = dict


def _variants() -> list[Variant]:
    def n(op: str, inputs: list[str], **attrs: Any) -> Callable[[], Any]:
        return lambda: _node(op, inputs, ["y"], **attrs)

    return [
        Variant(id="conv_same_upper", node=n("Conv", ["x", "k"], auto_pad="SAME_UPPER", strides=[2, 2],
                                             kernel_shape=[4, 3]),
                input_shape=(1, 2, 7, 6), params=lambda: {"k": _rand(51, 3, 2, 4, 3)}),
        Variant(id="conv_asymmetric_pads_groups", node=n("Conv", ["x", "k"], pads=[0, 2, 3, 1], group=2),
                input_shape=(1, 4, 5, 5), params=lambda: {"k": _rand(52, 4, 2, 3, 3)}),
        Variant(id="conv_transpose_output_shape", node=n("ConvTranspose", ["x", "k"], strides=[3, 2],
                                                         output_shape=[10, 9], group=2, dilations=[2, 1]),
                input_shape=(1, 4, 3, 4), params=lambda: {"k": _rand(53, 4, 1, 3, 3)}),
        Variant(id="conv_transpose_same_upper", node=n("ConvTranspose", ["x", "k"], strides=[2, 2],
                                                       auto_pad="SAME_UPPER"),
                input_shape=(1, 2, 3, 3), params=lambda: {"k": _rand(54, 2, 3, 3, 3)}),
        Variant(id="maxpool_same_upper", node=n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                                auto_pad="SAME_UPPER"), input_shape=(1, 1, 6, 5)),
        Variant(id="maxpool_dilated_ceil", node=n("MaxPool", ["x"], kernel_shape=[2, 3], strides=[3, 1],
                                                  dilations=[2, 2], ceil_mode=1, pads=[1, 1, 0, 2]),
                input_shape=(1, 1, 7, 6)),
        Variant(id="avgpool_exclude_pad_ceil", node=n("AveragePool", ["x"], kernel_shape=[3, 2], strides=[2, 2],
                                                      ceil_mode=1, pads=[1, 0, 1, 1], count_include_pad=0),
                input_shape=(1, 1, 6, 5)),
        Variant(id="avgpool_same_lower", node=n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                                auto_pad="SAME_LOWER"), input_shape=(1, 1, 6, 5)),
        Variant(id="matmul_rank3", node=n("MatMul", ["x", "w"]), input_shape=(2, 3, 4),
                params=lambda: {"w": _rand(55, 4, 5)}),
        Variant(id="softmax_axis0", node=n("Softmax", ["x"], axis=0), input_shape=(3, 2)),
        Variant(id="hardsigmoid_negative_alpha", node=n("HardSigmoid", ["x"], alpha=-2.5, beta=0.1),
                input_shape=(1, 5)),
        Variant(id="elu_negative_alpha", node=n("Elu", ["x"], alpha=-2.0), input_shape=(1, 5)),
        Variant(id="leaky_relu_negative_alpha", node=n("LeakyRelu", ["x"], alpha=-3.0), input_shape=(1, 5)),
        Variant(id="batchnorm_tiny_variance", node=n("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-5),
                input_shape=(2, 3, 2),
                params=lambda: {"g": _rand(56, 3, scale=5.0), "b": _rand(57, 3), "m": _rand(58, 3),
                                "v": np.abs(_rand(59, 3)) * 1e-6}),
        Variant(id="global_avg_pool_1d", node=n("GlobalAveragePool", ["x"]), input_shape=(1, 2, 7)),
        Variant(id="global_max_pool_3d", node=n("GlobalMaxPool", ["x"]), input_shape=(1, 2, 2, 2, 3)),
    ]


VARIANTS: list[Variant] = _variants()
