"""Lower bounds of deep networks: the float64 error bound against the double-double and the
four-limb ones, and the lower end `stabaudit check` certifies with them.

For each model: at one seeded input (normal, seed 0) the certified L2 error bound of the float64
evaluation (``lower.ForwardErrorModel``, with the certified sensitivities) and of the double-double
evaluation (``analyses.precise``), each over the output's norm, and the seconds of one double-double
evaluation (the second one: the first builds its kernels); then `stabaudit check MODEL --budget B`
through the CLI, its lower end and CPU seconds. The seeded ResNets and MobileNetV2 are those of
bench/scale.py; the packaged malviz ResNet-18 is read from ../shared/models/wild/fetch.sh's folder.

    python bench/precise.py [--budget 10] [names]

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WILD = Path(os.environ.get("STABAUDIT_WILD_DIR", Path.home() / ".cache" / "stabaudit-wild"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _models(tmp: Path) -> list[tuple[str, Path]]:
    import scale

    out = [("malviz ResNet-18 (packaged)", WILD / "malviz_resnet18.onnx")]
    for name, build in (("seeded ResNet-18", lambda: scale.resnet(18)), ("seeded ResNet-50", lambda: scale.resnet(50)),
                        ("seeded MobileNetV2", scale.mobilenetv2)):
        path = tmp / (name.split()[-1] + ".onnx")
        model, shape = build()
        scale.export(model, shape, path)
        out.append((name, path))
    return out


def _bounds(path: Path) -> tuple[float, float, float, float, float]:
    """(float64 bound / ||f||, double-double bound / ||f||, seconds of one double-double evaluation,
    the same two with four limbs)."""
    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.analyses.lower import ForwardErrorModel, error_sensitivities
    from stabaudit.analyses.precise import PreciseModel
    from stabaudit.ir.executor import with_shapes
    from stabaudit.loaders import load_model

    graph = with_shapes(load_model(path).graph)
    shapes = dict(graph.shapes)
    model = ForwardErrorModel(graph, shapes, error_sensitivities(graph, rule_bounds(graph)))
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, e64 = model.evaluate(x)
    size = float(np.linalg.norm(y))
    out = [e64 / size]
    for limbs in (2, 4):
        precise = PreciseModel(graph, shapes, fallback=model, limbs=limbs)
        precise._evaluate(x)  # the first builds its kernels
        start = time.process_time()
        _, bound = precise._evaluate(x)
        out += [bound / size, time.process_time() - start]
    return out[0], out[1], out[2], out[3], out[4]


def _audit(path: Path, budget: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "stabaudit", "check", str(path), "--budget", str(budget), "--no-cache",
                        "--quiet", "-o", str(out)], check=False, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if not out.exists():
            return "no report", cpu
        lip = json.loads(out.read_text())["lipschitz"]
    low = lip.get("lower")
    return ("none" if low is None else f"{low:.4g}") + f", {lip['upper']:.4g}", cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"| model | float64 bound / output | double-double bound / output | one evaluation s | "
          f"four limbs: bound / output | one evaluation s | `--budget {args.budget:g}`: [lower, upper] | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _models(Path(tmp)):
            if args.names and not any(n.lower() in name.lower() for n in args.names):
                continue
            if not path.exists():
                print(f"| {name} | absent | | | | | | |")
                continue
            r64, rdd, secs, r4, secs4 = _bounds(path)
            bracket, cpu = _audit(path, args.budget)
            print(f"| {name} | {r64:.3g} | {rdd:.3g} | {secs:.2f} | {r4:.3g} | {secs4:.2f} | [{bracket}] | {cpu:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
