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
import textwrap
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
    # the local hook of the example config runs the same command on the same files
    (repo_entry,) = yaml.safe_load((ROOT / "examples" / "pre-commit-config.yaml").read_text())["repos"]
    (local,) = repo_entry["hooks"]
    assert repo_entry["repo"] == "local" and local["language"] == "system"
    for key in ("id", "entry", "files", "pass_filenames"):
        assert local[key] == hook[key], key
    # docs/ci.md shows that config as written
    docs = (ROOT / "docs" / "ci.md").read_text()
    section = docs[docs.index("## pre-commit") :]
    block = re.search(r"\n((?:    .*\n)+)", section)
    assert block and yaml.safe_load(textwrap.dedent(block.group(1))) == {"repos": [repo_entry]}
    files = re.compile(hook["files"])
    assert files.search("models/net.onnx") and files.search("ckpt/a.pt")
    assert files.search("stabaudit.yaml") and not files.search("README.md")
    # model files only: not TypeScript, nor a config of the same name elsewhere
    for other in ("src/app.ts", "a.pth", "net.onnx.txt", "sub/stabaudit.yaml", "x.ptx"):
        assert not files.search(other), other
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
    assert len(list((repo / ".cache").rglob("*.entry"))) == 2


def run_step(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A workflow `run:` step as GitHub runs it (bash -e), with this environment's stabaudit."""
    env = dict(os.environ, STABAUDIT_CACHE_DIR=str(cwd / ".cache"))
    env["PATH"] = f"{EXE.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("STABAUDIT_NO_CACHE", None)
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_github_workflow_audit_steps_run(tmp_path):
    workflow = yaml.safe_load((ROOT / "examples" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["audit"]["steps"]
    versions = {s["uses"].split("@")[0]: s["uses"].split("@")[1] for s in steps if "uses" in s}
    assert versions == {
        "actions/checkout": "v4", "actions/setup-python": "v5", "actions/cache": "v4",
        "github/codeql-action/upload-sarif": "v3", "actions/upload-artifact": "v4",
    }
    install = next(s["run"] for s in steps if s.get("name", "").startswith("Install"))
    # torch from the CPU index first; stabaudit's torch>=2.2 keeps it
    assert install.index("--index-url https://download.pytorch.org/whl/cpu") < install.index('"$STABAUDIT"')
    audit = next(s["run"] for s in steps if "stabaudit batch" in s.get("run", ""))
    first_run = next(s["run"] for s in steps if "create the baseline" in s.get("name", ""))
    sarif_step = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    assert sarif_step["with"]["category"] == "stabaudit"
    repo = registry(tmp_path)
    # the first run has no baseline: it audits without one and its report becomes the baseline
    first = run_step(audit, repo)
    assert first.returncode == 0, first.stderr
    created = run_step(first_run, repo)
    assert created.returncode == 0, created.stderr
    assert "::notice file=stabaudit-baseline.json::" in created.stdout
    baseline = json.loads((repo / "stabaudit-baseline.json").read_text())
    assert baseline == json.loads((repo / "stabaudit-report.json").read_text())
    # the next run compares against it (the step that creates it now leaves it alone)
    result = run_step(audit, repo)
    assert result.returncode == 0, result.stderr
    again = run_step(first_run, repo)
    assert again.returncode == 0 and again.stdout == ""
    assert json.loads((repo / "stabaudit-baseline.json").read_text()) == baseline
    sarif = json.loads((repo / sarif_step["with"]["sarif_file"]).read_text())
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    report = json.loads((repo / "stabaudit-report.json").read_text())
    assert [m["model"]["path"] for m in report["models"]] == ["models/mlp.onnx", "models/mlp.pt"]
    for m in report["models"]:
        sa001 = next(c for c in m["checks"] if c["id"] == "SA001")
        assert sa001["status"] == "pass"  # compared with the baseline: no regression
    for m in baseline["models"]:
        sa001 = next(c for c in m["checks"] if c["id"] == "SA001")
        assert sa001["status"] == "skipped"  # the first run had nothing to compare with
    assert (repo / "stabaudit-report.html").read_text().startswith("<!DOCTYPE html>")
    uploaded = steps[-1]["with"]["path"].split()
    assert all((repo / name).is_file() for name in uploaded)
