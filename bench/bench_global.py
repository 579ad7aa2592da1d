"""Benchmark of the tight global bounds of feedforward chains: a markdown table model x method ->
certified upper, lower bound, upper / lower and seconds (the lead adds it to docs/benchmarks.md).

    .venv/bin/python bench/bench_global.py [--budget 20] [--lower-budget 10] [MODEL ...]

Models are read in place under ../shared/models/external (never copied).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
MODELS = [
    "acasxu/ACASXU_run2a_1_1_batch_2000.onnx",
    "acasxu/ACASXU_run2a_1_9_batch_2000.onnx",
    "acasxu/ACASXU_run2a_2_1_batch_2000.onnx",
    "acasxu/ACASXU_run2a_3_3_batch_2000.onnx",
    "acasxu/ACASXU_run2a_5_9_batch_2000.onnx",
    "mnistfc/mnist-net_256x2.onnx",
    "mnistfc/mnist-net_256x4.onnx",
    "mnistfc/mnist-net_256x6.onnx",
]
BUDGETS = {"acasxu": 20.0, "mnistfc": 60.0}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def main() -> None:
    from stabaudit.analyses.composition import compose, rule_bounds
    from stabaudit.analyses.feedforward import explain_chain, global_bounds
    from stabaudit.analyses.floor import slope_relaxation_floor
    from stabaudit.analyses.lower import lower_bound
    from stabaudit.ir.passes import fold_affine
    from stabaudit.loaders import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--budget", type=float, default=None, help="seconds per model (default: 20 ACAS Xu, 60 MNIST)")
    parser.add_argument("--lower-budget", type=float, default=10.0)
    args = parser.parse_args()

    print(f"Machine: {platform.machine()}, {platform.system()}; one BLAS thread; budgets per model: "
          f"{args.budget if args.budget else 'ACAS Xu 20 s, MNIST 60 s'}.\n")
    print("| model | method | upper | lower | upper/lower | seconds |")
    floors = []
    print("|---|---|---:|---:|---:|---:|")
    for rel in args.models:
        path = EXTERNAL / rel
        if not path.is_file():
            print(f"| {rel} | (absent) | - | - | - | - |")
            continue
        loaded = load_model(path)
        lower = lower_bound(loaded.graph, seed=0, budget_s=args.lower_budget).value
        graph = fold_affine(loaded.graph)
        start = time.perf_counter()
        op_bounds = rule_bounds(graph)
        product = float(compose(graph, op_bounds).upper.value)
        t_product = time.perf_counter() - start
        budget = args.budget if args.budget else BUDGETS.get(rel.split("/")[0], 20.0)
        rows: list[tuple[str, float | None, float]] = [("product", product, t_product)]
        for r in global_bounds(graph, op_bounds=op_bounds, budget_s=budget):
            rows.append((r.method, r.upper, r.seconds))
        name = Path(rel).stem
        for method, upper, seconds in rows:
            ratio = None if upper is None or lower <= 0.0 else upper / lower
            print(f"| {name} | {method} | {_fmt(upper)} | {_fmt(lower)} | {_fmt(ratio)} | {seconds:.2f} |", flush=True)
        chain = explain_chain(graph)
        if not isinstance(chain, str):
            best = min((u for _, u, _ in rows if u is not None), default=None)
            floors.append((name, product, best, slope_relaxation_floor(chain)))
    if floors:
        print("\n**Slope-relaxation floor** (`stabaudit.analyses.floor`): a certified value F below which no method that "
              "sees each activation only through its slope interval (the product, ECLipsE, LipSDP-Neuron, any SDP over "
              "per-neuron slope constraints) can certify, because some activation pattern, reached by an input or not, "
              "has a Jacobian of norm F. Between F and the network's sound lower bound lies what only the realizability "
              "of patterns can decide.\n")
        print("| model | product | best certified | floor F | product / best | product / F (the best ratio any slope relaxation can reach) | floor s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, product, best, fl in floors:
            ratio = "-" if best is None else f"{product / best:.2f}x"
            print(f"| {name} | {product:.4g} | {_fmt(best)} | {fl.value:.4g} | {ratio} | {product / fl.value:.2f}x | {fl.seconds:.1f} |")


if __name__ == "__main__":
    main()
