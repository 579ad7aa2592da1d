"""Reach: seeded models of the architecture families people ship, exported as torch 2.13 exports them,
audited through the CLI as a user would.

Each family is a small seeded torch module (no downloads): MobileNetV3-style blocks (HardSwish,
squeeze-and-excitation), an EfficientNet-style block (SiLU, SE with sigmoid), a U-Net (ConvTranspose,
bilinear upsampling, Concat), a feature pyramid (nearest upsampling), a ConvNeXt-style block
(depthwise 7x7, LayerNorm over channels, GELU MLP, layer scale), a GRU text classifier, a pre-norm
transformer encoder layer, a GPT-style causal block (masked_fill(-inf), einsum scores), a 1-D audio
net with a log front end, a super-resolution net (PixelShuffle), a TCN (dilated grouped convs, GLU,
SELU/ELU, log-softmax), a GroupNorm/InstanceNorm/Mish block, a classifier with an argmax output,
bicubic upsampling, an encoder block calling scaled_dot_product_attention, a torch.stft mel front
end, a Fourier-feature coordinate MLP (sin, cos), a reflection-padded generator with an uneven
adaptive pool, Swin-style cyclic shifts (roll) with a cumulative sum. Each is exported with the TorchScript-based ONNX exporter (`dynamo=False`,
opset 17), when onnxscript is importable with the default dynamo exporter (opset 18, weights
inline; again at opset 23 for the attention families, where it writes ONNX Attention), and as a TorchScript archive traced under no_grad (`torch.jit.trace`, as deployment scripts
do), then audited with `stabaudit check --budget B` without and with the domain a user would declare
(pixels in [0, 1], audio and features in [-1, 1], embeddings within 0.05 of a sample's).

    python bench/reach.py [--budget 1] [--timeout 300] [--only gpt,unet]

Prints a markdown table for docs/benchmarks.md; exits 0 whatever the audits' exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class _SE(nn.Module):
    def __init__(self, c: int, gate: Callable[[], nn.Module] = nn.Hardsigmoid, r: int = 4) -> None:
        super().__init__()
        self.a, self.b, self.gate = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.b(F.relu(self.a(F.adaptive_avg_pool2d(x, 1)))))


class MobileNetV3Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.block = nn.Sequential(
            nn.Conv2d(16, 72, 1, bias=False), nn.BatchNorm2d(72), nn.Hardswish(),
            nn.Conv2d(72, 72, 5, 1, 2, groups=72, bias=False), nn.BatchNorm2d(72), nn.Hardswish(),
            _SE(72), nn.Conv2d(72, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 64), nn.Hardswish(),
                                  nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.block(h))


class EfficientNetBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.block = nn.Sequential(
            nn.Conv2d(24, 96, 1, bias=False), nn.BatchNorm2d(96), nn.SiLU(),
            nn.Conv2d(96, 96, 3, 1, 1, groups=96, bias=False), nn.BatchNorm2d(96), nn.SiLU(),
            _SE(96, nn.Sigmoid), nn.Conv2d(96, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.fc((h + self.block(h)).mean((2, 3)))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.d = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        y = self.d(torch.cat([a, self.up(self.e2(F.max_pool2d(a, 2)))], 1))
        return torch.sigmoid(y + F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="bilinear"))


class FeaturePyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)
        self.l1, self.l2, self.h = nn.Conv2d(16, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(16, 6, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(self.c1(x), 0.1)
        b = F.leaky_relu(self.c2(a), 0.1)
        return self.h(self.l1(a) + F.interpolate(self.l2(b), scale_factor=2, mode="nearest"))


class ConvNeXtBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 32, 4, 4), nn.Conv2d(32, 32, 7, 1, 3, groups=32)
        self.ln, self.p1, self.p2 = nn.LayerNorm(32), nn.Linear(32, 128), nn.Linear(128, 32)
        self.gamma = nn.Parameter(torch.full((32,), 0.1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.p2(F.gelu(self.p1(self.ln(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
        return self.fc((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


class GRUText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(100, 16), nn.GRU(16, 24, batch_first=True), nn.Linear(24, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(self.emb(ids))
        return self.fc(h[-1])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, activation="gelu",
                                                norm_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(x).mean(1))


class CausalBlock(nn.Module):
    """GPT-style: token and position embeddings, LayerNorm, einsum scores, masked_fill(-inf)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(50, 32), nn.Parameter(torch.randn(1, 10, 32) * 0.02)
        self.ln, self.q, self.k, self.v, self.o = (nn.LayerNorm(32), nn.Linear(32, 32), nn.Linear(32, 32),
                                                   nn.Linear(32, 32), nn.Linear(32, 32))
        self.fc = nn.Linear(32, 2)
        self.register_buffer("causal", torch.tril(torch.ones(10, 10)).view(1, 1, 10, 10))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.tok(ids) + self.pos)
        b, t, c = x.shape

        def heads(m: nn.Module) -> torch.Tensor:
            return m(x).view(b, t, 4, 8).transpose(1, 2)

        att = torch.einsum("bhqd,bhkd->bhqk", heads(self.q), heads(self.k)) / 8 ** 0.5
        att = att.masked_fill(self.causal[:, :, :t, :t] == 0, float("-inf")).softmax(-1)
        y = (att @ heads(self.v)).transpose(1, 2).reshape(b, t, c)
        return self.fc((x + self.o(y))[:, -1])


class AudioNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 8, 9, 4, 4), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 16, 9, 4, 4),
                                 nn.BatchNorm1d(16), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                 nn.Linear(16, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.log(x * x + 1e-3))


class SuperResolution(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.p, self.u = nn.Conv2d(3, 32, 5, 1, 2), nn.PReLU(32), nn.Conv2d(32, 12, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(F.pixel_shuffle(self.u(self.p(self.c(x))), 2), 0, 1)


class TCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 16, 3, dilation=2, padding=4)
        self.c2 = nn.Conv1d(8, 8, 3, dilation=4, padding=8, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.c1(x)[..., :-4], dim=1)
        h = F.selu(self.c2(h)[..., :-8]) + F.elu(h)
        return F.log_softmax(self.fc(h.mean(-1)), -1)


class NormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, 1, 1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, 1, 1), nn.InstanceNorm2d(16, affine=True)
        self.o = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.n1(self.c1(x)))
        return self.o(F.mish(self.n2(self.c2(h)))) + x


class ArgmaxClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(F.adaptive_max_pool2d(F.relu(self.c(x)), 1).flatten(1))
        return logits.softmax(-1), logits.argmax(-1)


class Bicubic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))


class SDPAEncoder(nn.Module):
    """A pre-norm encoder block calling scaled_dot_product_attention, as Hugging Face encoders and
    ViTs do (the dynamo exporter writes ONNX Attention for it from opset 23)."""

    def __init__(self) -> None:
        super().__init__()
        self.n1, self.qkv, self.o = nn.LayerNorm(32), nn.Linear(32, 96), nn.Linear(32, 32)
        self.n2, self.f1, self.f2 = nn.LayerNorm(32), nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p.reshape(b, t, 4, 8).transpose(1, 2) for p in self.qkv(self.n1(x)).chunk(3, -1))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 32))
        return x + self.f2(F.gelu(self.f1(self.n2(x))))


class Spectrogram(nn.Module):
    """An audio front end as torchaudio's MelSpectrogram computes it: torch.stft (reflect-centred,
    Hann window), the power spectrum, a mel filterbank, log, then a small classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(128))
        self.mel = nn.Linear(65, 16, bias=False)
        self.c, self.fc = nn.Conv1d(16, 8, 3), nn.Linear(8, 4)
        with torch.no_grad():
            self.mel.weight.abs_()  # a filterbank's weights are nonnegative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stft(x, n_fft=128, hop_length=32, window=self.window, center=True, pad_mode="reflect",
                       return_complex=True)
        mel = torch.log(self.mel(z.abs().pow(2.0).transpose(1, 2)) + 1e-6).transpose(1, 2)
        return self.fc(F.relu(self.c(mel)).mean(-1))


class FourierFeatures(nn.Module):
    """A coordinate network (NeRF/SIREN style): sin and cos features of a linear map, an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.b, self.f1, self.f2 = nn.Linear(2, 32, bias=False), nn.Linear(64, 64), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 6.0 * self.b(x)
        return self.f2(torch.sin(self.f1(torch.cat([torch.sin(h), torch.cos(h)], -1))))


class ReflectPadCNN(nn.Module):
    """A style-transfer / CycleGAN-style generator's padding: reflection and replication pads
    before unpadded convolutions, instance norms, and an uneven adaptive average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.p1, self.c1 = nn.ReflectionPad2d(3), nn.Conv2d(3, 8, 7)
        self.n1 = nn.InstanceNorm2d(8, affine=True)
        self.p2, self.c2 = nn.ReplicationPad2d(1), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 9, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.c1(self.p1(x))))
        h = F.relu(self.c2(self.p2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 3).flatten(1))


class ShiftedWindows(nn.Module):
    """Swin's cyclic shift: torch.roll of the feature map, a windowed mixing, the roll undone, a
    cumulative sum over the sequence (relative position features)."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.mix, self.fc = nn.Conv2d(3, 8, 2, 2), nn.Conv2d(8, 8, 4, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.roll(self.c(x), shifts=(-2, -2), dims=(2, 3))
        h = F.gelu(F.interpolate(self.mix(h), scale_factor=4.0, mode="nearest")) + h
        h = torch.roll(h, shifts=(2, 2), dims=(2, 3)).flatten(2).transpose(1, 2)  # [1, 64, 8]
        return self.fc(torch.cumsum(h, 1)[:, -1] / 64.0)


# name: (module, input (a shape, or ("ids", vocabulary, length)), the domain a user would declare)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...] | tuple[str, int, int], list[str]]] = {
    "mobilenetv3_block": (MobileNetV3Block, (1, 3, 64, 64), ["--domain", "0,1"]),
    "efficientnet_block": (EfficientNetBlock, (1, 3, 64, 64), ["--domain", "0,1"]),
    "unet": (UNet, (1, 1, 32, 32), ["--domain", "0,1"]),
    "feature_pyramid": (FeaturePyramid, (1, 3, 64, 64), ["--domain", "0,1"]),
    "convnext_block": (ConvNeXtBlock, (1, 3, 64, 64), ["--domain", "0,1"]),
    "gru_text": (GRUText, ("ids", 100, 12), ["--domain", "margin:0.05"]),
    "transformer_encoder": (Encoder, (1, 8, 32), ["--domain", "-1,1"]),
    "gpt_causal_block": (CausalBlock, ("ids", 50, 10), ["--domain", "margin:0.05"]),
    "audio_log_cnn": (AudioNet, (1, 1, 4000), ["--domain", "-1,1"]),
    "super_resolution": (SuperResolution, (1, 3, 24, 24), ["--domain", "0,1"]),
    "tcn_glu": (TCN, (1, 4, 40), ["--domain", "-1,1"]),
    "groupnorm_mish": (NormBlock, (1, 3, 32, 32), ["--domain", "0,1"]),
    "argmax_classifier": (ArgmaxClassifier, (1, 3, 32, 32), []),
    "bicubic_upsampling": (Bicubic, (1, 3, 16, 16), ["--domain", "0,1"]),
    "sdpa_encoder": (SDPAEncoder, (1, 8, 32), ["--domain", "-1,1"]),
    "spectrogram": (Spectrogram, (1, 2048), ["--domain", "-1,1"]),
    "fourier_features": (FourierFeatures, (1, 2), ["--domain", "0,1"]),
    "reflect_pad_cnn": (ReflectPadCNN, (1, 3, 32, 32), ["--domain", "0,1"]),
    "shifted_windows": (ShiftedWindows, (1, 3, 32, 32), ["--domain", "0,1"]),
}
# families whose current export differs at the newest opset: the dynamo exporter runs again at 23
LATEST_OPSET = frozenset({"sdpa_encoder", "transformer_encoder"})


def _seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = make().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():  # eval statistics that are not the identity
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return module


def export(name: str, directory: Path, exporter: str) -> Path | str:
    """The family exported by ``exporter`` (onnx-torchscript, onnx-dynamo: ONNX; jit-trace: a
    TorchScript archive traced under no_grad, as a deployment script does), or why it could not be."""
    make, spec, _ = FAMILIES[name]
    module = _seeded(make)
    x = torch.randint(0, int(spec[1]), (1, int(spec[2]))) if spec[0] == "ids" else torch.rand(spec)  # type: ignore[arg-type]
    path = directory / f"{name}_{exporter}.{'pt' if exporter == 'jit-trace' else 'onnx'}"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        try:
            if exporter.startswith("onnx-dynamo"):
                opset = 23 if exporter == "onnx-dynamo-23" else 18
                torch.onnx.export(module, (x,), str(path), dynamo=True, external_data=False, opset_version=opset)
            elif exporter == "onnx-torchscript":
                torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17)
            else:
                with torch.no_grad():
                    torch.jit.trace(module, x, check_trace=False).save(str(path))
        except Exception as exc:  # the exporter's own failure: reported in the table
            return f"export failed: {type(exc).__name__}"
    return path


def audit(path: Path, args: list[str], budget: float, timeout: float) -> tuple[int, float, dict | None, str]:
    out = path.with_suffix(f".{len(args)}.json")
    trust = ["--trust-torchscript"] if path.suffix == ".pt" else []  # archives this script wrote itself
    cmd = [sys.executable, "-m", "stabaudit", "check", str(path), "--budget", str(budget), "--timeout", str(timeout),
           "--no-cache", "--quiet", "-o", str(out), *trust, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - start
    report = json.loads(out.read_text()) if out.exists() else None
    return proc.returncode, wall, report, (proc.stderr.strip().splitlines() or [""])[-1]


def fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def row(name: str, exporter: str, path: Path | str, budget: float, timeout: float) -> str:
    if isinstance(path, str):
        return f"| {name} | {exporter} | {path} | | | |"
    domain = FAMILIES[name][2]
    code, wall, report, err = audit(path, [], budget, timeout)
    if report is None:
        return f"| {name} | {exporter} | {code}: {err[:120]} | | | {wall:.1f} |"
    lip = report["lipschitz"]
    glob = f"[{fmt(lip.get('lower'))}, {fmt(lip.get('upper'))}]"
    over = ""
    if domain:
        code_d, wall_d, rep_d, err_d = audit(path, domain, budget, timeout)
        wall += wall_d
        if rep_d is None:
            over = f"{code_d}: {err_d[:120]}"
        else:
            d = rep_d.get("domain_lipschitz") or {}
            over = f"{' '.join(domain[1:])}: [{fmt(d.get('lower'))}, {fmt(d.get('upper'))}] (exit {code_d})"
    return f"| {name} | {exporter} | {code} | {glob} | {over} | {wall:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", default=None, help="comma-separated family names")
    args = parser.parse_args()
    names = [n for n in FAMILIES if args.only is None or n in args.only.split(",")]
    exporters = ["onnx-torchscript", "jit-trace"]
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency, not stabaudit's)

        exporters.insert(1, "onnx-dynamo")
    except ImportError:
        pass
    print(f"`python bench/reach.py --budget {args.budget:g}`; torch {torch.__version__}"
          + ("" if "onnx-dynamo" in exporters else "; the dynamo exporter skipped (onnxscript is not installed)"))
    print()
    print("| family | exporter | exit | global [lower, upper] | over the domain | s |")
    print("|---|---|---:|---|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            latest = ["onnx-dynamo-23"] if "onnx-dynamo" in exporters and name in LATEST_OPSET else []
            for exporter in exporters + latest:
                path = export(name, Path(tmp), exporter)
                print(row(name, exporter, path, args.budget, args.timeout), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
