"""Peak resident memory of `stabaudit check` with and without --max-memory on a seeded conv net that
needs about 2 GB (markdown table): the cap holds, or the audit stops with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def conv_net(path: Path, *, size: int = 224, channels: int = 32, depth: int = 4, seed: int = 0) -> Path:
    """A seeded ONNX conv net: `depth` 3x3 convolutions (3 -> channels -> ... channels, padding 1,
    ReLU after each) at size x size, global average pooling and a 10-way Gemm. At 224 x 224 with
    32 channels its activations hold 1.6 M floats each: the lower bound search and the float64
    copies of the analyses need about 2 GB."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev, c_in = "x", 3
    for i in range(depth):
        w = (rng.standard_normal((channels, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, c_in = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["p"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flat"))
    fc = (rng.standard_normal((10, channels)) / np.sqrt(channels)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes.append(helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def peak_rss(args: list[str], timeout: float) -> tuple[int, float, float, dict[str, object]]:
    """(exit code, peak RSS in bytes of the child, seconds, the JSON report or {}) of one
    `python -m stabaudit check ...` run in a fresh process (its own peak: RUSAGE_CHILDREN of a
    wrapper that runs only it)."""
    out = Path(tempfile.mkdtemp()) / "r.json"
    wrapper = (
        "import resource, subprocess, sys; "
        "rc = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "stabaudit", "check", *args, "-o", str(out), "-q"],
        capture_output=True, text=True, timeout=timeout, env=os.environ | {"STABAUDIT_NO_CACHE": "1"},
    )
    seconds = time.perf_counter() - start
    peak = int(proc.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, peak, seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--caps", default="none,1G,1.5G", help="comma-separated --max-memory values (none: no cap)")
    parser.add_argument("--timeout", type=float, default=600.0)
    opts = parser.parse_args()
    model = conv_net(Path(tempfile.mkdtemp()) / "convnet.onnx", size=opts.size, channels=opts.channels)
    base = [str(model), "--budget", "1", "--no-cache"]
    print(f"model: seeded conv net, 4 x Conv3x3 {opts.channels} channels at {opts.size}x{opts.size}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("| --max-memory | exit code | peak RSS | seconds | complete | stopped in |")
    print("|---|---|---|---|---|---|")
    for cap in opts.caps.split(","):
        extra = [] if cap == "none" else ["--max-memory", cap]
        code, peak, seconds, report = peak_rss(base + extra, opts.timeout)
        stopped = report.get("stopped") or {}
        assert isinstance(stopped, dict)
        print(f"| {cap} | {code} | {peak / 2**30:.2f} GiB | {seconds:.1f} | {report.get('complete', True)} "
              f"| {stopped.get('stage', '-')} |")


if __name__ == "__main__":
    main()
