"""stabaudit: certified stability audits of trained neural networks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Same model, options and seed: the same report, in any process (CLI, Python API, batch workers).
# Without conditional numerical reproducibility, MKL (torch's BLAS and LAPACK) may pick a different
# kernel path from one call to the next (by the alignment of the data) and flip the last bits of a
# sum, which the seeded searches then amplify. Set before torch loads MKL; a value set by the user
# wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# onnxruntime's telemetry (1DS on Linux too) opens a store under ~/.cache/Microsoft/DeveloperTools/
# .onnxruntime when onnxruntime is imported and records what the process runs. Audited models stay
# private: off for every session stabaudit opens, set before anything imports onnxruntime (the
# loader also turns its events off, for a process that imported onnxruntime before stabaudit).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

if TYPE_CHECKING:
    from stabaudit.report.model import BatchReport, Report


def audit(path: Any, **options: Any) -> Report:
    """Audit one model; see stabaudit.api.audit (imported lazily: torch loads only when used)."""
    from stabaudit.api import audit as _audit

    return _audit(path, **options)


def batch(config: Any, **options: Any) -> BatchReport:
    """Audit every model of a batch config; see stabaudit.api.batch."""
    from stabaudit.api import batch as _batch

    return _batch(config, **options)


__all__ = ["__version__", "audit", "batch"]
