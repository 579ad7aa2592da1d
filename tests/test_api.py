"""The Python API: stabaudit.audit and stabaudit.batch stay functions in any order of imports and calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each order runs in a fresh interpreter: the bug this guards against (the submodule that shadows
# the function once imported) depends on what was imported before.
_SCRIPT = """
import sys
import stabaudit
{pre}
model = {model!r}
config = {config!r}
codes = []
for step in {order!r}:
    if step == "audit":
        r = stabaudit.audit(model, budget=0.2, seed=0)
        codes.append(("audit", r.exit_code, r.lipschitz.upper is not None))
    else:
        b = stabaudit.batch(config, executor="inprocess")
        codes.append(("batch", b.exit_code, len(b.models)))
assert callable(stabaudit.audit) and callable(stabaudit.batch), (stabaudit.audit, stabaudit.batch)
print(codes)
"""


def _run(tmp_path: Path, order: list[str], pre: str = "") -> str:
    model = str(REPO / "sample_models" / "mlp.onnx")
    config = tmp_path / "audit.yaml"
    config.write_text(f"defaults: {{budget: 0.2}}\nmodels:\n  - path: {model}\n")
    script = _SCRIPT.format(pre=pre, model=model, config=str(config), order=order)
    env = {**os.environ, "STABAUDIT_NO_CACHE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_audit_then_batch_each_twice(tmp_path):
    out = _run(tmp_path, ["audit", "batch", "audit", "batch"])
    assert out == str([("audit", 0, True), ("batch", 0, 1), ("audit", 0, True), ("batch", 0, 1)])


def test_batch_first_after_importing_every_submodule(tmp_path):
    pre = "import stabaudit.api, stabaudit.batching, stabaudit.cli, stabaudit.engine"
    out = _run(tmp_path, ["batch", "batch", "audit", "audit"], pre=pre)
    assert out == str([("batch", 0, 1), ("batch", 0, 1), ("audit", 0, True), ("audit", 0, True)])
