"""How `stabaudit check` scales: ImageNet-size CNNs, a ViT and MLP width and depth series, through the CLI.

Seeded synthetic models, written in plain torch and exported to ONNX (opset 17, the TorchScript
exporter) in a temporary folder:

- ResNet-18 and ResNet-50 at 1x3x224x224, the ImageNet layout (7x7 stride-2 stem, max pool, four
  stages of basic blocks or bottlenecks, stride on the 3x3 conv, 1x1 projection shortcuts, global
  average pool, fc 1000);
- MobileNetV2 at 1x3x224x224 (inverted residuals, depthwise 3x3 convs, ReLU6, width 1.0);
- a ViT-S/16-like model at 1x3x224x224: 16x16 patch embedding conv, class token, position
  embedding, pre-norm blocks (LayerNorm, 6-head attention with Softmax, GELU MLP of ratio 4),
  width 384, with 4 blocks instead of 12; audited with `--domain 0,1`;
- MLPs of `depth` hidden Linear+ReLU layers of `width` units and a final Linear to 10 outputs, the
  input dimension equal to the width (every hidden matrix is width x width): a width series
  (256 ... 4096 at depth 4) and a depth series (2 ... 16 at width 256).

Weights are He-normal (std sqrt(2 / fan_in) before a ReLU, sqrt(1 / fan_in) otherwise); the last
BatchNorm of every residual branch has a scale in [0.2, 0.5] and the residual branches of the ViT
are scaled by 0.5, so that activations stay of order one through the depth. BatchNorms are in
eval mode with seeded running statistics (mean N(0, 0.1^2), variance U(0.5, 1.5)).

Each model is audited as a user runs it, `python -m stabaudit check MODEL --budget B --timeout T
--no-cache --quiet -o report.json`, measuring the child's wall time, CPU time (user + sys of the
child, all its threads) and peak RSS; the exit code, the certified bracket and the report's stage
timings come from the JSON report. Prints a markdown table, then the growth exponent of the time
of each MLP series (least squares of log time against log size).

    python bench/scale.py [--budget 10] [--timeout 600] [--only resnet50,mobilenetv2] [--quick]

Exits 0 when a model times out (its row says so); non-zero only on an error of this script.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 60.0  # past --timeout + this, the child is killed (the CLI stops itself at --timeout)


# --------------------------------------------------------------------------------------------
# seeded initialisation


def _normal(param: torch.Tensor, std: float, gen: torch.Generator) -> None:
    if param.is_meta:  # a shape-only model (counting parameters)
        return
    with torch.no_grad():
        param.copy_(torch.randn(param.shape, generator=gen) * std)


def _uniform(param: torch.Tensor, low: float, high: float, gen: torch.Generator) -> None:
    if param.is_meta:
        return
    with torch.no_grad():
        param.copy_(low + (high - low) * torch.rand(param.shape, generator=gen))


def _fan_in(weight: torch.Tensor) -> int:
    return int(weight[0].numel())


def init_conv(conv: nn.Conv2d, gen: torch.Generator, gain: float = 2.0) -> None:
    """He-normal: std sqrt(gain / fan_in) (gain 2 before a ReLU, 1 before a linear use)."""
    _normal(conv.weight, math.sqrt(gain / _fan_in(conv.weight)), gen)
    if conv.bias is not None:
        _normal(conv.bias, 0.01, gen)


def init_linear(lin: nn.Linear, gen: torch.Generator, gain: float = 2.0) -> None:
    _normal(lin.weight, math.sqrt(gain / lin.in_features), gen)
    if lin.bias is not None:
        _normal(lin.bias, 0.01, gen)


def init_bn(bn: nn.BatchNorm2d, gen: torch.Generator, scale: tuple[float, float] = (0.8, 1.2)) -> None:
    """Non-trivial eval-mode statistics: mean N(0, 0.1^2), variance U(0.5, 1.5), affine scale in
    ``scale``, shift N(0, 0.05^2)."""
    assert bn.running_mean is not None and bn.running_var is not None
    _normal(bn.running_mean, 0.1, gen)
    _uniform(bn.running_var, 0.5, 1.5, gen)
    _uniform(bn.weight, *scale, gen)
    _normal(bn.bias, 0.05, gen)


# --------------------------------------------------------------------------------------------
# ResNet-18 / ResNet-50


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, gen: torch.Generator, *, groups: int = 1,
             last: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
    bn = nn.BatchNorm2d(c_out)
    init_conv(conv, gen)
    init_bn(bn, gen, (0.2, 0.5) if last else (0.8, 1.2))
    return [conv, bn]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, gen: torch.Generator) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.branch = nn.Sequential(*_conv_bn(c_in, width, 3, stride, gen), nn.ReLU(),
                                    *_conv_bn(width, c_out, 3, 1, gen, last=True))
        self.shortcut = (nn.Sequential(*_conv_bn(c_in, c_out, 1, stride, gen, last=True))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, gen: torch.Generator) -> None:
        nn.Module.__init__(self)
        c_out = width * self.expansion
        self.branch = nn.Sequential(*_conv_bn(c_in, width, 1, 1, gen), nn.ReLU(),
                                    *_conv_bn(width, width, 3, stride, gen), nn.ReLU(),
                                    *_conv_bn(width, c_out, 1, 1, gen, last=True))
        self.shortcut = (nn.Sequential(*_conv_bn(c_in, c_out, 1, stride, gen, last=True))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()


RESNET_BLOCKS: dict[int, tuple[type[BasicBlock], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    def __init__(self, depth: int, gen: torch.Generator, *, base: int = 64, classes: int = 1000) -> None:
        super().__init__()
        block, counts = RESNET_BLOCKS[depth]
        self.stem = nn.Sequential(*_conv_bn(3, base, 7, 2, gen), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        c_in = base
        for stage, count in enumerate(counts):
            width = base * 2**stage
            for i in range(count):
                blocks.append(block(c_in, width, 2 if stage > 0 and i == 0 else 1, gen))
                c_in = width * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)
        init_linear(self.fc, gen, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet(depth: int, *, seed: int = 0, base: int = 64, size: int = 224,
           classes: int = 1000) -> tuple[nn.Module, tuple[int, ...]]:
    """ResNet-18 or -50 (``depth``), ImageNet layout; ``base`` and ``size`` shrink it for tests."""
    return ResNet(depth, torch.Generator().manual_seed(seed), base=base, classes=classes).eval(), (1, 3, size, size)


# --------------------------------------------------------------------------------------------
# MobileNetV2


def _divisible(value: float, divisor: int = 8) -> int:
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, gen: torch.Generator) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1, 1, gen), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, gen, groups=hidden), nn.ReLU6(),
                   *_conv_bn(hidden, c_out, 1, 1, gen, last=stride == 1 and c_in == c_out)]
        self.branch = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x) if self.residual else self.branch(x)


# (expansion, channels, repeats, stride) of Sandler et al. (2018), table 2
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, gen: torch.Generator, *, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        c_in = _divisible(32 * width)
        layers: list[nn.Module] = [*_conv_bn(3, c_in, 3, 2, gen), nn.ReLU6()]
        for expand, channels, repeats, stride in MOBILENET_V2:
            c_out = _divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand, gen))
                c_in = c_out
        last = _divisible(1280 * max(1.0, width))
        layers += [*_conv_bn(c_in, last, 1, 1, gen), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, classes)
        init_linear(self.fc, gen, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mobilenetv2(*, seed: int = 0, width: float = 1.0, size: int = 224,
                classes: int = 1000) -> tuple[nn.Module, tuple[int, ...]]:
    return MobileNetV2(torch.Generator().manual_seed(seed), width=width, classes=classes).eval(), (1, 3, size, size)


# --------------------------------------------------------------------------------------------
# ViT-S/16-like


def _layer_norm(dim: int, gen: torch.Generator) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim, eps=1e-6)
    _uniform(norm.weight, 0.8, 1.2, gen)
    _normal(norm.bias, 0.02, gen)
    return norm


class Attention(nn.Module):
    """Multi-head self-attention written out (fixed token count): qkv, softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int, heads: int, tokens: int, gen: torch.Generator) -> None:
        super().__init__()
        self.heads, self.tokens, self.dim = heads, tokens, dim
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        init_linear(self.qkv, gen, gain=1.0)
        init_linear(self.proj, gen, gain=0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).reshape(1, self.tokens, 3, self.heads, self.dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(1, self.tokens, self.dim)
        return self.proj(out)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, gen: torch.Generator, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim, gen)
        self.attn = Attention(dim, heads, tokens, gen)
        self.norm2 = _layer_norm(dim, gen)
        fc1, fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)
        init_linear(fc1, gen)
        init_linear(fc2, gen, gain=0.25)
        self.mlp = nn.Sequential(fc1, nn.GELU(), fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, gen: torch.Generator, *, size: int = 224, patch: int = 16, dim: int = 384,
                 depth: int = 4, heads: int = 6, classes: int = 1000) -> None:
        super().__init__()
        self.dim = dim
        tokens = (size // patch) ** 2 + 1
        self.patch = nn.Conv2d(3, dim, patch, patch)
        init_conv(self.patch, gen, gain=1.0)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        _normal(self.cls, 0.02, gen)
        _normal(self.pos, 0.02, gen)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, tokens, gen) for _ in range(depth)))
        self.norm = _layer_norm(dim, gen)
        self.head = nn.Linear(dim, classes)
        init_linear(self.head, gen, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls, x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(*, seed: int = 0, size: int = 224, patch: int = 16, dim: int = 384, depth: int = 4, heads: int = 6,
        classes: int = 1000) -> tuple[nn.Module, tuple[int, ...]]:
    """ViT-S/16-like (width 384, 6 heads, MLP ratio 4) with ``depth`` blocks (ViT-S has 12)."""
    model = ViT(torch.Generator().manual_seed(seed), size=size, patch=patch, dim=dim, depth=depth, heads=heads,
                classes=classes)
    return model.eval(), (1, 3, size, size)


# --------------------------------------------------------------------------------------------
# MLP


def mlp(width: int, depth: int, *, seed: int = 0, outputs: int = 10) -> tuple[nn.Module, tuple[int, ...]]:
    """``depth`` hidden Linear(width, width) + ReLU layers (input dimension = width), then Linear to
    ``outputs``."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        init_linear(lin, gen)
        layers += [lin, nn.ReLU()]
    head = nn.Linear(width, outputs)
    init_linear(head, gen, gain=1.0)
    return nn.Sequential(*layers, head).eval(), (1, width)


def export(model: nn.Module, shape: Sequence[int], path: Path, *, seed: int = 0) -> None:
    """ONNX (opset 17) through the TorchScript exporter, the weights inside the file."""
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# the cases


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, tuple[int, ...]]]
    args: list[str] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)  # series name -> the size of this case


WIDTHS, DEPTHS = (256, 512, 1024, 2048, 4096), (2, 4, 8, 16)
QUICK_WIDTHS, QUICK_DEPTHS = (64, 128, 256), (2, 4, 8)


def _mlp_cases(widths: Sequence[int], depths: Sequence[int], base_width: int, base_depth: int) -> list[Case]:
    sizes = [(w, base_depth) for w in widths] + [(base_width, d) for d in depths if d != base_depth]
    cases = []
    for w, d in sizes:
        series = {}
        if d == base_depth:
            series[f"MLP width (depth {base_depth})"] = w
        if w == base_width:
            series[f"MLP depth (width {base_width})"] = d
        cases.append(Case(f"mlp_w{w}_d{d}", functools.partial(mlp, w, d), series=series))
    return cases


def cases(quick: bool) -> list[Case]:
    nets = [
        Case("resnet18", lambda: resnet(18)),
        Case("resnet50", lambda: resnet(50)),
        Case("mobilenetv2", lambda: mobilenetv2()),
        Case("vit_s16_4blocks", lambda: vit(), ["--domain", "0,1"]),
    ]
    if quick:
        return _mlp_cases(QUICK_WIDTHS, QUICK_DEPTHS, 64, 4) + nets[:1]
    return nets + _mlp_cases(WIDTHS, DEPTHS, 256, 4)


def _matches(case: Case, wanted: str) -> bool:
    if wanted in ("mlp_width", "mlp_depth"):
        return any(name.lower().startswith(wanted.replace("_", " ")) for name in case.series)
    return case.name == wanted or case.name.startswith(wanted)


def select(all_cases: list[Case], only: str | None) -> list[Case]:
    """``--only``: case names, a prefix of names (``mlp``, ``vit``), or a series (``mlp_width``,
    ``mlp_depth``)."""
    if not only:
        return all_cases
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [c for c in all_cases if any(_matches(c, w) for w in wanted)]
    unknown = [w for w in wanted if not any(_matches(c, w) for c in all_cases)]
    if unknown:
        raise SystemExit(f"--only: no case named {', '.join(unknown)} (cases: {', '.join(c.name for c in all_cases)})")
    return chosen


# --------------------------------------------------------------------------------------------
# measuring


@dataclass
class Row:
    case: Case
    params: int
    code: int
    wall: float
    cpu: float
    rss_mib: float
    report: dict[str, Any] | None
    stderr: str
    killed: bool = False


def run_child(cmd: list[str], limit: float) -> tuple[int, float, float, float, str, bool]:
    """Run ``cmd``; return (exit code, wall s, CPU s of the child (user + sys), peak RSS MiB,
    stderr, whether it was killed past ``limit``)."""
    start = time.perf_counter()
    killed = False
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > limit and not killed:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen from waiting again
        wall = time.perf_counter() - start
        err.seek(0)
        text = err.read().decode(errors="replace")
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text, killed


def measure(case: Case, tmp: Path, budget: float, timeout: float, seed: int, reports: Path | None = None) -> Row:
    model, shape = case.build()
    params = param_count(model)
    path = tmp / f"{case.name}.onnx"
    export(model, shape, path, seed=seed)
    del model
    out = tmp / f"{case.name}.json"
    cmd = [sys.executable, "-m", "stabaudit", "check", str(path), "--budget", f"{budget:g}",
           "--timeout", f"{timeout:g}", "--no-cache", "--quiet", "-o", str(out), *case.args]
    code, wall, cpu, rss, err, killed = run_child(cmd, timeout + GRACE_S)
    report = json.loads(out.read_text()) if out.exists() else None
    if reports is not None and out.exists():
        reports.mkdir(parents=True, exist_ok=True)
        (reports / out.name).write_text(out.read_text())
    path.unlink()
    return Row(case, params, code, wall, cpu, rss, report, err.replace(str(path), path.name), killed)


# --------------------------------------------------------------------------------------------
# the table


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def bracket(row: Row) -> str:
    rep = row.report
    if row.killed:
        return f"killed past --timeout + {GRACE_S:.0f} s"
    text = "-"
    if rep is not None and rep.get("lipschitz"):
        lip = rep["lipschitz"]
        text = f"[{_fmt(lip.get('lower'))}, {_fmt(lip.get('upper'))}]"
        dom = rep.get("domain_lipschitz")
        if dom:
            text += f"; over the domain [{_fmt(dom.get('lower'))}, {_fmt(dom.get('upper'))}]"
    stopped = (rep or {}).get("stopped")
    if stopped:
        why = "timed out" if stopped.get("reason") == "timeout" else "stopped by the memory cap"
        text = f"{why} in {stopped.get('stage')} ({text})"
    elif row.code >= 2:
        reason = (row.stderr.strip().splitlines() or ["?"])[0]
        text = f"error: {reason[:140]}"
    return text.replace("|", "/")


def where(row: Row, top: int = 3) -> str:
    """The ``top`` largest stages of the report's timings, with their share of the audit; the stage
    a timeout stopped counts with the rest of the time (the timeout less the stages that finished)."""
    report = row.report or {}
    timings = dict(report.get("timings") or {})
    total = timings.pop("total", None) or sum(timings.values())
    stopped = report.get("stopped") or {}
    if stopped.get("seconds") and stopped.get("stage"):
        timings[f"{stopped['stage']} (until the timeout)"] = max(stopped["seconds"] - total, 0.0)
        total = max(stopped["seconds"], total)
    largest = sorted(timings.items(), key=lambda kv: -kv[1])[:top]
    if not largest or not total:
        return "-"
    methods = sorted(((m.get("seconds") or 0.0, m.get("method", "?"))
                      for m in (report.get("lipschitz") or {}).get("methods") or []), reverse=True)
    parts = []
    for name, sec in largest:
        text = f"{name} {sec:.3g} s ({100 * sec / total:.0f}%"
        if name == "global_methods":  # the two slowest methods
            text += "".join(f"; {method} {s:.3g} s" for s, method in methods[:2] if s >= 0.05 * total)
            own = sum(s for s, _ in methods)
            if sec - own > 0.2 * sec:  # time the methods' own seconds do not account for
                text += f"; the methods' own seconds add up to {own:.3g} s"
        parts.append(text + ")")
    return ", ".join(parts)


def analysis_seconds(row: Row) -> float | None:
    """Seconds inside the audit past the load stage (imports, parsing, the ONNX -> graph step)."""
    timings = (row.report or {}).get("timings") or {}
    if "total" not in timings:
        return None
    return float(timings["total"]) - float(timings.get("load", 0.0))


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log time against log size."""
    pts = [(math.log(s), math.log(t)) for s, t in points if t > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def planned(row: Row) -> str:
    """The report's planned seconds of counted work (what --budget bought), or '-'."""
    total = ((row.report or {}).get("planned") or {}).get("total")
    return "-" if total is None else f"{total:.3g}"


def table(rows: list[Row]) -> list[str]:
    lines = ["| model | params | exit | bracket [lower, upper] | wall s | CPU s | planned s | peak RSS MiB | where the time went |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.case.name} | {r.params:,} | {r.code} | {bracket(r)} | {r.wall:.1f} | {r.cpu:.1f} "
                     f"| {planned(r)} | {r.rss_mib:.0f} | {where(r)} |")
    return lines


def growth(rows: list[Row]) -> list[str]:
    """Per series: the fitted exponents over the finished audits, the exponent of each step between
    successive sizes (wall time), and for the first audit past the timeout the least exponent of
    its step (its wall time is at least the timeout)."""
    series: dict[str, list[Row]] = {}
    for r in rows:
        for name in r.case.series:
            series.setdefault(name, []).append(r)
    lines = []
    for name, members in series.items():
        members = sorted(members, key=lambda r: r.case.series[name])
        done = [r for r in members if r.code in (0, 1) and r.report is not None]
        sizes = [r.case.series[name] for r in done]
        if len(done) < 2:
            lines.append(f"- {name}: fewer than two finished audits, no exponent.")
            continue
        fits = [("wall", exponent(list(zip(sizes, [r.wall for r in done], strict=True)))),
                ("CPU", exponent(list(zip(sizes, [r.cpu for r in done], strict=True))))]
        inner = [analysis_seconds(r) for r in done]
        if all(s is not None for s in inner):
            fits.append(("audit past load", exponent(list(zip(sizes, [float(s or 0) for s in inner], strict=True)))))
        text = ", ".join(f"{what} time ~ size^{e:.2f}" for what, e in fits if e is not None)
        steps = [f"{a.case.series[name]} -> {b.case.series[name]}: "
                 f"{math.log(b.wall / a.wall) / math.log(b.case.series[name] / a.case.series[name]):.2f}"
                 for a, b in itertools.pairwise(done)]
        line = f"- {name}, sizes {', '.join(map(str, sizes))}: {text}; step exponents (wall) {'; '.join(steps)}"
        left = [r for r in members if r not in done]
        if left:
            first, last = left[0], done[-1]
            line += f". Not finished: {', '.join(r.case.name for r in left)}"
            if first.case.series[name] > last.case.series[name]:
                least = math.log(first.wall / last.wall) / math.log(first.case.series[name] / last.case.series[name])
                line += (f"; the step {last.case.series[name]} -> {first.case.series[name]} has an exponent of "
                         f"at least {least:.2f} (its wall time, at the timeout, is a lower bound)")
        lines.append(line + ".")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=10.0, help="--budget of each audit (default 10)")
    parser.add_argument("--timeout", type=float, default=600.0, help="--timeout of each audit (default 600)")
    parser.add_argument("--only", help="comma-separated case names, prefixes or series (resnet18, resnet50, "
                        "mobilenetv2, vit, mlp, mlp_width, mlp_depth, mlp_w256_d4, ...)")
    parser.add_argument("--quick", action="store_true", help="MLPs of width 64-256 / depth 2-8 and ResNet-18")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input used for the export")
    parser.add_argument("--reports", type=Path, help="keep each model's JSON report in this folder")
    args = parser.parse_args()
    chosen = select(cases(args.quick), args.only)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stabaudit-scale-") as tmp:
        for case in chosen:
            print(f"{case.name} ...", file=sys.stderr, flush=True)
            rows.append(measure(case, Path(tmp), args.budget, args.timeout, args.seed, args.reports))
            print(table(rows[-1:])[-1], file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    print(f"`stabaudit check MODEL --budget {args.budget:g} --timeout {args.timeout:g} --no-cache`; "
          f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; load average "
          f"(1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end.\n")
    print("\n".join(table(rows)))
    fits = growth(rows)
    if fits:
        print("\nGrowth of the time with the size (least squares of log seconds against log width or depth; "
              "the start-up of about 2-5 s, in the wall and CPU times, flattens the small sizes):\n")
        print("\n".join(fits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
