"""`stabaudit batch` with --jobs 1 against --jobs 2 (and in-process) on the same batch; prints markdown."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "stabaudit"
SAMPLES = ["mlp.onnx", "mlp.pt", "cnn.onnx", "cnn.pt", "resnet.onnx", "resnet.pt"]


def run(folder: Path, *extra: str) -> tuple[float, int, bytes]:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(EXE), "batch", "batch.yaml", "--no-cache", "-q", "-o", "out.json", *extra],
        cwd=folder, env=env, capture_output=True, check=False,
    )
    wall = time.perf_counter() - start
    return wall, proc.returncode, (folder / "out.json").read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=2, help="copies of each sample model")
    parser.add_argument("--budget", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "models").mkdir()
        for k in range(args.copies):
            for name in SAMPLES:
                stem, suffix = name.split(".")
                shutil.copy(ROOT / "sample_models" / name, folder / "models" / f"{stem}_{k}.{suffix}")
        n = args.copies * len(SAMPLES)
        (folder / "batch.yaml").write_text(
            f"defaults: {{budget: {args.budget}}}\nmodels:\n  - path: 'models/*'\n"
        )
        rows = []
        outputs = []
        for label, extra in (
            ("in-process", ["--executor", "inprocess"]),
            ("--jobs 1", ["--jobs", "1"]),
            ("--jobs 2", ["--jobs", "2"]),
        ):
            wall, code, report = run(folder, *extra)
            outputs.append(report)
            rows.append((label, wall, code))
    base = rows[1][1]
    print(f"{n} models (the six sample models x {args.copies}), `--budget {args.budget:g}`, `--no-cache`, "
          f"{os.cpu_count()} cores.")
    print()
    print("| executor | wall s | exit | speed-up vs --jobs 1 |")
    print("|---|---|---|---|")
    for label, wall, code in rows:
        print(f"| {label} | {wall:.1f} | {code} | {base / wall:.2f}x |")
    print()
    same = all(o == outputs[0] for o in outputs)
    print(f"Batch reports byte-identical across the three runs (SOURCE_DATE_EPOCH set): {'yes' if same else 'NO'}.")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
