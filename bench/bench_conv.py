"""Benchmark of the certified conv bounds on the 20 convolutions of a seeded CIFAR ResNet-18 (markdown table)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass

import numpy as np

from stabaudit.bounds.conv import WARM_ITERATIONS
from stabaudit.bounds.numerics import conv_norm_certified, conv_power
from stabaudit.limits import THREADS_ENV, kernel_threads


@dataclass(frozen=True, kw_only=True)
class ConvLayer:
    name: str
    c_in: int
    c_out: int
    size: int  # input height = width
    stride: int
    kernel: int


def resnet18_convs() -> list[ConvLayer]:
    """The standard CIFAR ResNet-18 (32x32 input): 3x3 stem to 64, four stages of two BasicBlocks
    (64/128/256/512 channels, stride 2 at the first block of stages 2-4), 1x1 projection shortcuts."""
    layers = [ConvLayer(name="stem", c_in=3, c_out=64, size=32, stride=1, kernel=3)]
    c_in, size = 64, 32
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            out_size = size // stride
            prefix = f"layer{stage}.{block}"
            layers.append(ConvLayer(name=f"{prefix}.conv1", c_in=c_in, c_out=width, size=size, stride=stride, kernel=3))
            layers.append(ConvLayer(name=f"{prefix}.conv2", c_in=width, c_out=width, size=out_size, stride=1, kernel=3))
            if stride != 1 or c_in != width:
                layers.append(ConvLayer(name=f"{prefix}.shortcut", c_in=c_in, c_out=width, size=size, stride=stride, kernel=1))
            c_in, size = width, out_size
    return layers


def kaiming_weight(layer: ConvLayer, rng: np.random.Generator) -> np.ndarray:
    """He-normal init (torch.nn.init.kaiming_normal_, fan_in, ReLU gain): std = sqrt(2 / fan_in)."""
    fan_in = layer.c_in * layer.kernel * layer.kernel
    return rng.standard_normal((layer.c_out, layer.c_in, layer.kernel, layer.kernel)) * math.sqrt(2.0 / fan_in)


def conv_args(layer: ConvLayer) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int], int, tuple[int, int]]:
    pad = layer.kernel // 2
    return (layer.stride, layer.stride), (pad, pad, pad, pad), (1, 1), 1, (layer.size, layer.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the 50-step power iteration")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    layers = resnet18_convs()
    weights = [kaiming_weight(layer, rng) for layer in layers]
    params = sum(w.size for w in weights)
    # warm-up on a small conv: torch's lazy imports and first-call set-up are not bounding work
    small = ConvLayer(name="warm-up", c_in=4, c_out=4, size=8, stride=1, kernel=3)
    w_small = kaiming_weight(small, np.random.default_rng(1))
    warm = conv_norm_certified(w_small, *conv_args(small), dense_budget=0.0, device=args.device)
    conv_power(w_small, *conv_args(small), iterations=2, device=args.device, start=warm.start_in)
    print(f"CIFAR ResNet-18 convolutions: {len(layers)} layers, {params:,} conv parameters, seed {args.seed}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, kernel threads {kernel_threads()} "
          f"(${THREADS_ENV}), {platform.machine()}\n")
    print("| layer | C_in -> C_out | input | k / s | method | upper | lower (power) | upper / lower | upper s | lower s | upper cpu s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    total_up = total_low = cpu_up = 0.0
    worst_ratio = 1.0
    uppers: list[float] = []
    for layer, w in zip(layers, weights, strict=True):
        strides, pads, dil, groups, spatial = conv_args(layer)
        t0, c0 = time.perf_counter(), time.process_time()
        cert = conv_norm_certified(w, strides, pads, dil, groups, spatial, device=args.device)
        t1, c1 = time.perf_counter(), time.process_time()
        cpu_up += c1 - c0
        uppers.append(cert.upper)
        iters = 50 if cert.start_in is None else WARM_ITERATIONS
        low = cert.lower if cert.lower is not None else conv_power(
            w, strides, pads, dil, groups, spatial, iterations=iters, device=args.device, start=cert.start_in
        ).lower
        t2 = time.perf_counter()
        total_up += t1 - t0
        total_low += t2 - t1
        ratio = cert.upper / low if low > 0 else math.inf
        worst_ratio = max(worst_ratio, ratio)
        print(f"| {layer.name} | {layer.c_in} -> {layer.c_out} | {layer.size}x{layer.size} | {layer.kernel} / {layer.stride} "
              f"| {cert.method} | {cert.upper:.6g} | {low:.6g} | {ratio:.4f} | {t1 - t0:.2f} | {t2 - t1:.2f} | {c1 - c0:.2f} |")
    print(f"\n**ResNet-18 total**: certified upper bounds {total_up:.2f} s, warm-started power lower bounds "
          f"({WARM_ITERATIONS} steps) {total_low:.2f} s, together {total_up + total_low:.2f} s; "
          f"worst upper / lower {worst_ratio:.4f}; CPU time of the upper bounds {cpu_up:.2f} s (all threads: "
          f"on a shared machine, CPU time / threads is the wall time it would take uncontended)")
    threads = kernel_threads()
    if threads > 1:  # the same certificates on one kernel thread: identical bounds, the time it takes
        saved = os.environ.get(THREADS_ENV)
        os.environ[THREADS_ENV] = "1"
        t0 = time.perf_counter()
        same = all(
            conv_norm_certified(w, *conv_args(layer), device=args.device).upper == up
            for layer, w, up in zip(layers, weights, uppers, strict=True)
        )
        print(f"\n**One kernel thread**: certified upper bounds {time.perf_counter() - t0:.2f} s; "
              f"bounds bit-identical to the {threads}-thread run: {'yes' if same else 'NO'}")
        if saved is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = saved
    if not args.skip_baseline:
        t0, c0 = time.perf_counter(), time.process_time()
        for layer, w in zip(layers, weights, strict=True):
            strides, pads, dil, groups, spatial = conv_args(layer)
            conv_power(w, strides, pads, dil, groups, spatial, iterations=50, device=args.device, seed=args.seed)
        print(f"\n**Baseline**: 50-step power iteration (cold start, lower estimates only) over the same convs: "
              f"{time.perf_counter() - t0:.2f} s (CPU {time.process_time() - c0:.2f} s)")


if __name__ == "__main__":
    main()
