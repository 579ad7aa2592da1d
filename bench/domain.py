"""Bounds over an input domain: tightness (upper / lower over D) and reach, through the CLI.

Each case runs `stabaudit check MODEL --domain ...` as a user would and reads `domain_lipschitz`
from the JSON report beside the global `lipschitz`. Sample points are seeded (numpy PCG64, seed 0)
and written to a temporary .npy. Models that are absent (../shared/models/external, the packaged
real models of ../shared/models/wild/fetch.sh) are listed as such.

    python bench/domain.py [--budget 2] [--timeout 300] [case names]

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cli_check import check

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
WILD = Path(os.environ.get("STABAUDIT_WILD_DIR", Path.home() / ".cache" / "stabaudit-wild"))
# the normalised ACAS Xu input box (rho, theta, psi, v_own, v_int), Katz et al., Reluplex (CAV'17)
ACAS_LOW = [-0.328422877, -0.5, -0.5, -0.5, -0.5]
ACAS_HIGH = [0.679857769, 0.5, 0.5, 0.5, 0.5]


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    args: list[str] = field(default_factory=list)
    # seeded points around which balls are drawn: (count, shape, low, high), or None
    points: tuple[int, tuple[int, ...], float, float] | None = None
    config: str | None = None  # a YAML config (the per-entry ACAS Xu box)
    sparse: bool = False  # points: ink strokes (15% of the entries at high, the rest at low)


def cases() -> list[Case]:
    acas = EXTERNAL / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
    acas_box = (
        "domain:\n"
        f"  low: [[[[{', '.join(map(str, ACAS_LOW))}]]]]\n"
        f"  high: [[[[{', '.join(map(str, ACAS_HIGH))}]]]]\n"
    )
    return [
        Case("acasxu N(1,1), normalised input box", acas, config=acas_box),
        Case("acasxu N(1,1), 10 linf balls r=0.05", acas, ["--domain", "ball:0.05"], points=(10, (1, 1, 1, 5), -0.3, 0.5)),
        Case("mnist-net 256x2, 10 linf balls r=0.02 (sparse digit-like images)",
             EXTERNAL / "mnistfc" / "mnist-net_256x2.onnx", ["--domain", "ball:0.02"],
             points=(10, (1, 784, 1), 0.0, 1.0), sparse=True),
        Case("MTCNN O-Net, 4 linf balls r=1/255", WILD / "mtcnn_onet.onnx",
             ["--domain", f"ball:{1 / 255}"], points=(4, (1, 48, 48, 3), -1.0, 1.0)),
        Case("CIFAR ResNet-2B, 2 linf balls r=2/255", EXTERNAL / "cifar10_resnet" / "resnet_2b.onnx",
             ["--domain", f"ball:{2 / 255}"], points=(2, (1, 3, 32, 32), 0.0, 1.0)),
        Case("CIFAR ResNet-4B, 2 linf balls r=2/255", EXTERNAL / "cifar10_resnet" / "resnet_4b.onnx",
             ["--domain", f"ball:{2 / 255}"], points=(2, (1, 3, 32, 32), 0.0, 1.0)),
        Case("OVAL21 cifar_base_kw, 2 linf balls r=2/255", EXTERNAL / "oval21" / "cifar_base_kw.onnx",
             ["--domain", f"ball:{2 / 255}"], points=(2, (1, 3, 32, 32), 0.0, 1.0)),
        Case("OVAL21 cifar_deep_kw, 2 linf balls r=2/255", EXTERNAL / "oval21" / "cifar_deep_kw.onnx",
             ["--domain", f"ball:{2 / 255}"], points=(2, (1, 3, 32, 32), 0.0, 1.0)),
        Case("occular OriNet, 2 linf balls r=1/255", WILD / "occular_orinet_fp32.onnx",
             ["--domain", f"ball:{1 / 255}"], points=(2, (1, 3, 320, 320), 0.0, 1.0)),
        Case("oww_melspectrogram, audio in [-1, 1]", WILD / "oww_melspectrogram.onnx",
             ["--domain", "-1,1", "--input-shape", "1,16000"]),
        Case("oww_hey_mycroft (LSTM), features in [-10, 10]", WILD / "oww_hey_mycroft.onnx", ["--domain", "-10,10"]),
        # one seeded image as the sample (a box domain alone draws 64 samples for SA301-SA401)
        Case("imgfocus ViT-S, pixels in [0, 1]", WILD / "imgfocus_vit_s.onnx", ["--domain", "0,1"],
             points=(1, (1, 3, 224, 224), 0.0, 1.0)),
        Case("MiniLM int8, embeddings +-0.05", WILD / "minilm_l6_int8.onnx",
             ["--domain", "margin:0.05", "--input-shape", "input_ids=1,16"]),
    ]


def fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def run(case: Case, budget: float, timeout: float) -> str:
    if not case.model.exists():
        return f"| {case.name} | absent | | | | |"
    def prepare(tmp: Path) -> list[str]:
        """The seeded points (--inputs) and the config the case names, written into the run's folder."""
        extra: list[str] = []
        if case.points is not None:
            count, shape, low, high = case.points
            rng = np.random.default_rng(0)
            x = rng.uniform(low, high, size=(count, *shape))
            if case.sparse:
                x = np.where(rng.random((count, *shape)) < 0.15, high, low)
            np.save(tmp / "x.npy", x)
            extra += ["--inputs", str(tmp / "x.npy")]
        if case.config is not None:
            (tmp / "c.yaml").write_text(case.config)
            extra += ["--config", str(tmp / "c.yaml")]
        return extra

    report, proc, seconds = check(case.model, case.args, budget, timeout, prepare)
    if report is None or proc.returncode >= 2:
        reason = (proc.stderr.strip().splitlines() or ["?"])[0].replace("|", "/")[:140]
        return f"| {case.name} | exit {proc.returncode}: {reason} | | | | {seconds:.0f} |"
    glob = report["lipschitz"]
    dom = report.get("domain_lipschitz") or {}
    lo, up = dom.get("lower"), dom.get("upper")
    ratio = f"{up / lo:.3g}" if up is not None and lo else "-"
    return (f"| {case.name} | [{fmt(glob.get('lower'))}, {fmt(glob.get('upper'))}] | [{fmt(lo)}, {fmt(up)}] | "
            f"{ratio} | {dom.get('upper_method', '-')[:60]} | {seconds:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("names", nargs="*", help="substrings of case names (default: all)")
    args = ap.parse_args()
    print("| case | global [lower, upper] | over the domain [lower, upper] | upper/lower | upper method | s |")
    print("|---|---|---|---|---|---|")
    for case in cases():
        if args.names and not any(n.lower() in case.name.lower() for n in args.names):
            continue
        print(run(case, args.budget, args.timeout), flush=True)


if __name__ == "__main__":
    main()
