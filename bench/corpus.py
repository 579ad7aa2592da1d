"""The real-network corpus: every ONNX network under ../shared/models/external, audited in-process.

Prints a markdown table (load, equivalence, bracket, sampled soundness) for docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"


def corpus_rows(budget: float = 2.0) -> list[str]:
    from stabaudit.analyses.sampling import sampled_max_quotient
    from stabaudit.engine import AuditRequest, audit
    from stabaudit.errors import StabauditError
    from stabaudit.loaders import load_model

    rows = [
        "| network | params | equiv. max diff | lower | sampled max quotient | upper (certified) | "
        "upper/lower | sound | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for path in sorted(EXTERNAL.rglob("*.onnx")):
        name = str(path.relative_to(EXTERNAL))
        start = time.perf_counter()
        try:
            report = audit(AuditRequest(path=path, lower_budget_s=budget, budget_s=budget))
        except StabauditError as exc:
            rows.append(f"| {name} | - | - | - | - | - | - | error: {exc} | - |")
            continue
        seconds = time.perf_counter() - start
        q = sampled_max_quotient(load_model(path).graph)
        lo, up = report.lipschitz.lower, report.lipschitz.upper
        sound = lo is not None and up is not None and lo <= up and q <= up
        rows.append(
            f"| {name} | {report.model.parameters} | {report.equivalence.max_abs_diff:.2g} | {lo:.4g} | "
            f"{q:.4g} | {up:.4g} | {up / lo:.3g} | {'yes' if sound else 'NO'} | {seconds:.1f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    print("\n".join(corpus_rows()))
