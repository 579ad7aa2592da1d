"""Real models as packages ship them (fetched by ../shared/models/wild/fetch.sh into
$STABAUDIT_WILD_DIR or ~/.cache/stabaudit-wild): each audited through the CLI as a user would.

Prints a markdown table for docs/benchmarks.md: model, source operators, exit code, the bracket
(or the refusal), what the global bound is over, and wall seconds. Models that are absent are
listed as such.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from cli_check import check

WILD = Path(os.environ.get("STABAUDIT_WILD_DIR", Path.home() / ".cache" / "stabaudit-wild"))

# the shapes a user gives for the dims the file leaves dynamic (beyond the batch dim)
SHAPES: dict[str, list[str]] = {
    "arabic_romanizer_encoder.onnx": ["--input-shape", "src=1,12"],
    "minilm_l6_int8.onnx": ["--input-shape", "input_ids=1,16"],
    "mtcnn_pnet.onnx": ["--input-shape", "1,12,12,3"],
    "nudenet_320n.onnx": ["--input-shape", "1,3,320,320"],
    "oww_melspectrogram.onnx": ["--input-shape", "1,16000"],
}

# the domain a user declares for the models whose operators need one (products of activations,
# Log, Pow, attention, recurrent gates): pixels and audio in their range, embeddings +- 0.05
DOMAINS: dict[str, list[str]] = {
    "arabic_romanizer_encoder.onnx": ["--domain", "margin:0.05"],
    "captcha_crnn.onnx": ["--domain", "0,1"],
    "imgfocus_vit_s.onnx": ["--domain", "0,1"],
    "magika_standard_v3_3.onnx": ["--domain", "margin:0.05"],
    "minilm_l6_int8.onnx": ["--domain", "margin:0.05"],
    "nudenet_320n.onnx": ["--domain", "0,1"],
    "oww_hey_mycroft.onnx": ["--domain", "-10,10"],
    "oww_melspectrogram.onnx": ["--domain", "-1,1"],
}


def source_ops(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = Counter(n.op_type for n in model.graph.node if n.op_type not in ("Constant",))
    return ", ".join(sorted(counts))


def row(path: Path, budget: float, timeout: float) -> str:
    name = path.name
    report, proc, seconds = check(path, [*SHAPES.get(name, []), *DOMAINS.get(name, [])], budget, timeout)
    bracket = "-"
    if report is not None and report.get("lipschitz"):
        lip = report["lipschitz"]
        lo, up = lip.get("lower"), lip.get("upper")
        fmt = lambda v: "none" if v is None else f"{v:.4g}"  # noqa: E731
        bracket = f"[{fmt(lo)}, {fmt(up)}]"
        dom = report.get("domain_lipschitz")
        if dom:
            where = (dom.get("domain") or {}).get("description", "the domain")
            bracket += f"; over {where}: [{fmt(dom.get('lower'))}, {fmt(dom.get('upper'))}]"
    if proc.returncode >= 2:
        reason = (proc.stderr.strip().splitlines() or ["?"])[0].replace("|", "/")
        reason = reason.replace(str(path), name)
        incomplete = report is not None and report.get("complete") is False
        bracket = f"{bracket} (incomplete: {reason[:120]})" if incomplete else reason[:160]
    return f"| {name} | {source_ops(path)} | {proc.returncode} | {bracket} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("models", nargs="*", help="file names under the folder (default: all)")
    args = parser.parse_args()
    rows = ["| model | source operators | exit | bracket [lower, upper] or reason | seconds |",
            "|---|---|---:|---|---:|"]
    models = sorted(WILD.glob("*.onnx")) if WILD.is_dir() else []
    if args.models:
        models = [m for m in models if m.name in args.models]
    if not models:
        print(f"no models under {WILD}: run ../shared/models/wild/fetch.sh first", file=sys.stderr)
    for path in models:
        rows.append(row(path, args.budget, args.timeout))
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
