"""One `stabaudit check` through the CLI for the benchmark scripts: the report as JSON, the
process (exit code, stderr) and its wall seconds, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def check(model: Path, args: Sequence[str], budget: float, timeout: float,
          prepare: Callable[[Path], list[str]] | None = None,
          ) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess[str], float]:
    """(the JSON report or None, the process, wall seconds) of `stabaudit check MODEL --budget B
    --timeout T --no-cache --quiet` with ``args``; ``prepare(tmp)`` writes files into the run's
    temporary folder and returns the options that name them."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        extra = [*args, *(prepare(Path(tmp)) if prepare is not None else [])]
        cmd = [sys.executable, "-m", "stabaudit", "check", str(model), "--budget", str(budget),
               "--timeout", str(timeout), "--no-cache", "--quiet", "-o", str(out), *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        report = json.loads(out.read_text()) if out.exists() else None
    return report, proc, seconds
