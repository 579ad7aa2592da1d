"""The CI integration files (docs/ci.md): the pre-commit hook and the GitHub Actions workflow run
here as far as they can without GitHub: their stabaudit commands, on a copy of the sample models."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "stabaudit"
SAMPLES = ROOT / "sample_models"


def registry(tmp_path: Path) -> Path:
    """A model repository laid out as the examples expect: models/ and stabaudit.yaml."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("mlp.onnx", "mlp.pt"):
        shutil.copy(SAMPLES / name, models / name)
    shutil.copy(ROOT / "examples" / "stabaudit.yaml", tmp_path / "stabaudit.yaml")
    return tmp_path


def execute(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "stabaudit"
    env = dict(os.environ, STABAUDIT_CACHE_DIR=str(cwd / ".cache"))
    env.pop("STABAUDIT_NO_CACHE", None)  # the examples rely on the cache being on
    return subprocess.run(
        [str(EXE), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_pre_commit_hook_definition_runs(tmp_path):
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert {"id", "name", "entry", "language"} <= set(hook) and hook["language"] == "python"
    files = re.compile(hook["files"])
    assert files.search("models/net.onnx") and files.search("ckpt/a.pt")
    assert files.search("stabaudit.yaml") and not files.search("README.md")
    assert hook["pass_filenames"] is False
    repo = registry(tmp_path)
    first = execute(hook["entry"], repo)
    assert first.returncode == 0, first.stderr
    assert "models/mlp.onnx" in first.stdout and "pass" in first.stdout
    # a second commit with nothing changed answers from the cache: the same table but for the
    # batch's own timestamp
    again = execute(hook["entry"], repo)
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    assert again.returncode == 0 and stamp.sub("", again.stdout) == stamp.sub("", first.stdout)
    assert len(list((repo / ".cache").rglob("*.json"))) == 2


def test_github_workflow_audit_step_runs(tmp_path):
    workflow = yaml.safe_load((ROOT / "examples" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["audit"]["steps"]
    audit = next(s["run"] for s in steps if "stabaudit batch" in s.get("run", ""))
    sarif_step = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    repo = registry(tmp_path)
    # the baseline the workflow compares against is a previous batch report, committed on main
    base = execute("stabaudit batch stabaudit.yaml -q -o stabaudit-baseline.json", repo)
    assert base.returncode == 0, base.stderr
    result = execute(audit, repo)
    assert result.returncode == 0, result.stderr
    sarif = json.loads((repo / sarif_step["with"]["sarif_file"]).read_text())
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    report = json.loads((repo / "stabaudit-report.json").read_text())
    assert [m["model"]["path"] for m in report["models"]] == ["models/mlp.onnx", "models/mlp.pt"]
    for m in report["models"]:
        sa001 = next(c for c in m["checks"] if c["id"] == "SA001")
        assert sa001["status"] == "pass"  # compared with the baseline: no regression
    assert (repo / "stabaudit-report.html").read_text().startswith("<!DOCTYPE html>")
    uploaded = steps[-1]["with"]["path"].split()
    assert all((repo / name).is_file() for name in uploaded)
