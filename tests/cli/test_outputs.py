"""Always an artefact and always a line: outputs on exit 0/1/2, `-o -`, closed pipes, umask,
symlinks, output paths checked before the audit, the summary line, batch errors on stderr."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stabaudit.cli import app, write_atomic
from tests.sarif_schema import validate_sarif

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_sarif_of_the_sample_cnn_lists_only_what_is_not_a_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the repository root, as in CI; the model named by its absolute path
    json_out, sarif_out, every = tmp_path / "r.json", tmp_path / "r.sarif", tmp_path / "all.sarif"
    args = ["check", SAMPLES / "cnn.onnx", "--budget", "0.3", "--cache-dir", tmp_path / "cache"]
    result = run(*args, "-o", json_out, "-o", sarif_out)
    assert result.exit_code == 0, result.stderr
    report = json.loads(json_out.read_text())
    open_findings = [c["id"] for c in report["checks"] if c["status"] not in ("pass", "skipped")]
    doc = json.loads(sarif_out.read_text())
    run_ = doc["runs"][0]
    assert [r["ruleId"] for r in run_["results"]] == open_findings
    assert 0 < len(open_findings) < len(report["checks"])
    for r in run_["results"]:
        loc = r["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc["uri"] == "sample_models/cnn.onnx" and loc["uriBaseId"] == "%SRCROOT%"
        assert len(r["partialFingerprints"]["stabaudit/v1"]) == 32
        assert r["level"] == "note"  # SA101-SA103 on default thresholds: informational
    assert run_["automationDetails"]["id"] == "stabaudit/sample_models/cnn.onnx/"
    assert "file:" not in sarif_out.read_text() and str(ROOT) not in sarif_out.read_text()
    # --sarif-all: every check, passes and skips included (served from the cache: same audit)
    assert run(*args, "--sarif-all", "-o", every).exit_code == 0
    assert len(json.loads(every.read_text())["runs"][0]["results"]) == len(report["checks"])
    validate_sarif(doc)


def test_summary_line_ends_stderr_unless_quiet(tmp_path):
    out = tmp_path / "r.json"
    loud = run("check", SAMPLES / "mlp.onnx", "--budget", "0.2", "-o", out)
    assert loud.exit_code == 0, loud.stderr
    last = loud.stderr.strip().splitlines()[-1]
    report = json.loads(out.read_text())
    lip = report["lipschitz"]
    assert last.startswith(f"stabaudit: PASS (exit code 0) {SAMPLES / 'mlp.onnx'}: Lipschitz [")
    assert f"[{lip['lower']:.4g}, {lip['upper']:.4g}]" in last and "failing: none" in last
    assert last.endswith(f"; wrote {out}")
    quiet = run("check", SAMPLES / "mlp.onnx", "--budget", "0.2", "-o", out, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_missing_output_directory_is_exit_2_before_the_audit(tmp_path, monkeypatch):
    import stabaudit.api

    def no_audit(*args, **kwargs):
        raise AssertionError("the audit ran although its output cannot be written")

    monkeypatch.setattr(stabaudit.api, "audit_with", no_audit)
    target = tmp_path / "missing" / "r.json"
    result = run("check", SAMPLES / "mlp.onnx", "-o", tmp_path / "ok.json", "-o", target)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --output {target}: no such directory {tmp_path / 'missing'}"
    assert not (tmp_path / "ok.json").exists()
    assert run("check", SAMPLES / "mlp.onnx", "-o", tmp_path).exit_code == 2  # a directory


def test_dash_is_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("check", SAMPLES / "mlp.onnx", "--budget", "0.2", "-f", "json", "-o", "-", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["format"] == "onnx"
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_a_closed_pipe_ends_quietly_with_the_audit_exit_code(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "STABAUDIT_NO_CACHE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "stabaudit", "check", str(SAMPLES / "mlp.onnx"), "--budget", "0.2",
           "--threshold", "lipschitz=1e-3", "-o", "-", "-o", str(out), "-f", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1  # the gate's answer (the threshold fails SA101), not 3
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert err.strip().splitlines()[-1].startswith("stabaudit: FAIL (exit code 1)")
    assert json.loads(out.read_text())["exit_code"] == 1  # the file is still written


def test_files_honour_the_umask_and_write_through_symlinks(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "r.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640
    real = tmp_path / "reports" / "latest.json"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["latest.json"]  # no temporary left


def test_a_refused_model_writes_every_format(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    outs = [tmp_path / f"r.{ext}" for ext in ("json", "sarif", "xml", "md", "html", "txt")]
    args: list[object] = ["check", bad]
    for out in outs:
        args += ["-o", out]
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}: ") and len(lines) == 2
    assert lines[1] == f"stabaudit: FAIL (exit code 2) {bad}: refused (SA900), no bound computed; wrote " + ", ".join(
        str(o) for o in outs
    )
    data = json.loads(outs[0].read_text())
    assert data["exit_code"] == 2 and data["model"]["sha256"] != ""  # the file exists: its hash
    sarif = json.loads(outs[1].read_text())["runs"][0]
    assert [r["ruleId"] for r in sarif["results"]] == ["SA900"] and sarif["results"][0]["level"] == "error"
    assert 'failures="1"' in outs[2].read_text()
    assert "The audit was refused (exit code 2)" in outs[3].read_text()


def _batch(tmp_path: Path) -> Path:
    broken = tmp_path / "models" / "broken.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00\x01 garbage")
    cfg = tmp_path / "b.yaml"
    cfg.write_text(
        f"defaults: {{budget: 0.2}}\nmodels:\n  - path: {SAMPLES / 'mlp.onnx'}\n  - path: models/broken.onnx\n"
    )
    return cfg


@pytest.mark.parametrize("quiet", [False, True])
def test_batch_with_a_broken_model_writes_its_files_and_says_so(tmp_path, monkeypatch, quiet):
    monkeypatch.chdir(tmp_path)
    cfg = _batch(tmp_path)
    result = run("batch", cfg, "--executor", "inprocess", "-o", "r.json", "-o", "r.sarif", *(["-q"] if quiet else []))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: models/broken.onnx: ")
    if quiet:
        assert len(lines) == 1
    else:
        assert lines[-1].startswith("stabaudit batch: ERROR (exit code 2) b.yaml: 2 models, 0 failed, 1 not audited")
        assert lines[-1].endswith("; not audited: models/broken.onnx; wrote r.json, r.sarif")
    models = json.loads((tmp_path / "r.json").read_text())["models"]
    assert [m.get("error") is not None for m in models] == [False, True]
    notes = json.loads((tmp_path / "r.sarif").read_text())["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in notes] == ["models/broken.onnx"]


def test_summary_line_states_the_additive_term_of_branch_switches():
    from dataclasses import replace

    from stabaudit.cli import summary_line
    from stabaudit.report.model import Additive
    from tests.report_factory import make_report

    report = make_report()
    plain = summary_line(report, [])
    assert "additive" not in plain
    lip = replace(report.lipschitz, additive=Additive(value=7.14e-9, certified=True, sources=("sp",),
                                                      method="branch-switch-jumps"))
    line = summary_line(replace(report, lipschitz=lip), [])
    assert "] + additive 7.14e-09 (" in line
