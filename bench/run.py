"""Benchmarks of `stabaudit check`: wall time, peak memory, bracket; writes docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
EXE = Path(sys.executable).parent / "stabaudit"

SAMPLES = ["mlp.onnx", "mlp.pt", "cnn.onnx", "cnn.pt", "resnet.onnx", "resnet.pt"]
RESNETS = [
    "cifar10_resnet/resnet_2b.onnx",
    "cifar10_resnet/resnet_4b.onnx",
    "sri_resnet_a/resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx",
]


def measure(args: list[str]) -> tuple[int, float, float, str]:
    """Run a command; return (exit code, wall seconds, peak RSS in MiB of that child, stdout)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode()
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, text


def sub_bench(script: str, *extra: str) -> str:
    """The markdown printed by another benchmark script of this folder."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / script), *extra],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return f"({script} failed: {proc.stderr.strip().splitlines()[-1:]})"
    return proc.stdout.strip()


def _kept_sections(output: Path, lines: list[str]) -> list[str]:
    """The sections of the existing file that this script does not write (measured by their own
    scripts: bench/wild.py, bench/domain.py, with hand-written analysis), kept verbatim in order."""
    if not output.exists():
        return []
    written = {line for line in lines if line.startswith("## ")}
    kept: list[str] = []
    keep = False
    for line in output.read_text().splitlines():
        if line.startswith("## "):
            keep = line not in written
        if keep:
            kept.append(line)
    return kept


def startup(repeats: int) -> tuple[float, bool]:
    best = min(measure([str(EXE), "--help"])[1] for _ in range(repeats))
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, stabaudit.cli as c; sys.argv=['stabaudit','--help'];\n"
         "try:\n c.main()\nexcept SystemExit:\n pass\nprint('torch' in sys.modules, file=sys.stderr)"],
        capture_output=True, text=True, check=False,
    )
    return best, probe.stderr.strip().endswith("False")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-corpus", action="store_true", help="skip the real-network corpus table")
    parser.add_argument("--skip-methods", action="store_true", help="skip the global-method and conv tables")
    parser.add_argument("--skip-scale", action="store_true", help="skip the scale table (bench/scale.py, the longest)")
    args = parser.parse_args()

    rows = []
    models = [ROOT / "sample_models" / name for name in SAMPLES]
    models += [EXTERNAL / name for name in RESNETS if (EXTERNAL / name).exists()]
    for model in models:
        code, wall, rss, text = measure([str(EXE), "check", str(model), "--format", "json", "--no-cache"])
        data = json.loads(text) if code in (0, 1) else {}
        lip, phases = data.get("lipschitz", {}), data.get("timings", {})
        name = model.relative_to(ROOT) if model.is_relative_to(ROOT) else Path("corpus") / model.relative_to(EXTERNAL)
        rows.append((str(name), code, wall, rss, lip.get("lower"), lip.get("upper"), phases))
        print(rows[-1], flush=True)
    help_s, torch_free = startup(args.repeats)

    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `make bench` (bench/run.py). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only.",
        "",
        "## `stabaudit check MODEL --format json`: wall time, peak memory, certified bracket",
        "",
        "Phases (seconds inside the process, from the report's `timings`): load (imports of torch,",
        "onnx and onnxruntime included), equivalence, per-layer bounds, lower-bound search.",
        "",
        "| model | exit | wall s | peak RSS MiB | load | equiv. | layers | lower search "
        "| lower | upper (certified) | upper/lower |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for name, code, wall, rss, lo, up, ph in rows:
        ratio = f"{up / lo:.3g}" if lo and up else "-"
        lines.append(
            f"| {name} | {code} | {wall:.2f} | {rss:.0f} | {fmt(ph.get('load'))} | {fmt(ph.get('equivalence'))} "
            f"| {fmt(ph.get('layer_bounds'))} | {fmt(ph.get('lower_bound'))} | {fmt(lo)} | {fmt(up)} | {ratio} |"
        )
    lines += [
        "",
        "The certified upper bound is the tightest certified method of `--method auto`: the",
        "composition of per-layer bounds (product along chains, sums at residual adds), and for",
        "feedforward chains ECLipsE and LipSDP-Neuron; the lower bound is the largest difference",
        "quotient the seeded search confirmed in float64. Both are sound; their ratio bounds how",
        "far the upper bound can be from the true constant.",
        "",
        "## Start-up",
        "",
        f"`stabaudit --help`: {help_s * 1000:.0f} ms (best of {args.repeats}); "
        f"torch imported: {'no' if torch_free else 'YES (regression)'}.",
        "",
    ]
    if not args.skip_methods:
        lines += [
            "## Global methods on feedforward networks (`python bench/bench_global.py`)",
            "",
            "model x method -> certified upper bound, sound lower bound (the search), upper/lower, seconds.",
            "",
            sub_bench("bench_global.py"),
            "",
            "## Convolution bounds on a CIFAR ResNet-18 (`python bench/bench_conv.py --threads 1`)",
            "",
            "Seeded kaiming-normal weights at 32x32 input; every conv's certified upper bound and",
            "certified power-iteration lower bound, against a plain 50-step power iteration (float32",
            "steps, as the lower bounds take them). The certificates run on two kernel threads",
            "(`STABAUDIT_THREADS`), and the run on one gives the same bits.",
            "",
            sub_bench("bench_conv.py", "--threads", "1"),
            "",
            "## The training channel: Lanczos against power iteration, HVPs against torch.autograd "
            "(`python bench/bench_training.py`)",
            "",
            "stabaudit's Lanczos path (both extremes of the loss Hessian) against a PyHessian-style power",
            "iteration (lambda_max alone, relative change below 1e-3) on torch.autograd HVPs of an",
            "equivalent torch module; one HVP through the engine's executor and through a TorchScript",
            "module against torch.autograd on the module. Errors relative to ARPACK (tol 1e-12).",
            "",
            sub_bench("bench_training.py"),
            "",
        ]
    lines += [
        "## Batches: `--jobs 2` against `--jobs 1` (`python bench/bench_batch.py`)",
        "",
        "Each audit computes on one thread (the report must not depend on --jobs; the convolution",
        "certificates alone use kernel threads, with the same bits on one); worker processes",
        "run audits side by side, the in-process",
        "executor has no start-up cost but no isolation from a crash.",
        "",
        sub_bench("bench_batch.py"),
        "",
    ]
    if not args.skip_scale:
        lines += [
            "## Scale (`python bench/scale.py`)",
            "",
            "How an audit's cost grows with the model: seeded synthetic networks in plain torch,",
            "exported to ONNX and audited through the CLI as a user runs it (`stabaudit check MODEL",
            "--budget 10 --timeout 600 --no-cache`): ResNet-18, ResNet-50 and MobileNetV2 at 1x3x224x224",
            "in the ImageNet layout (BatchNorm in eval mode with seeded running statistics), a",
            "ViT-S/16-like model with 4 blocks instead of 12 (over the domain `--domain 0,1`, as attention",
            "has no global constant), and MLPs of width 256 to 4096 at depth 4 and of depth 2 to 16 at",
            "width 256 (input dimension = width, 10 outputs). Per model: wall time, CPU time of the",
            "audit process (user + sys, all its threads), its peak RSS, the exit code and bracket of",
            "the JSON report, and the three largest stages of its `timings` (for `global_methods`, the",
            "slowest method). Below the table, the growth exponent of the time along each MLP series",
            "(least squares of log seconds against log width or depth). A model past `--timeout` is a",
            "row that says in which stage it stopped.",
            "",
            sub_bench("scale.py"),
            "",
        ]
    if EXTERNAL.is_dir() and not args.skip_corpus:
        from corpus import corpus_rows

        lines += [
            "## The real-network corpus (corpus/: the external networks, read in place)",
            "",
            "Every network audited in-process (`--budget 2`): equivalence with onnxruntime, the certified",
            "bracket, and the largest difference quotient over 768 random pairs, which must stay below",
            "the certified upper bound. Regenerate alone with `python bench/corpus.py`.",
            "",
            *corpus_rows(),
            "",
        ]
    lines += _kept_sections(args.output, lines)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
