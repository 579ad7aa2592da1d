"""check's CI options: several outputs, ./stabaudit.yaml, progress on a terminal (the cache: test_cache_command.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.progress import Progress
from stabaudit.report.model import ModelError
from tests.report_factory import make_report

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "sample_models" / "mlp.onnx"
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_several_outputs_in_one_run(tmp_path):
    outs = [tmp_path / n for n in ("r.json", "r.html", "r.sarif", "r.md")]
    argv = ["check", MLP, "--budget", "0.3", "-q"]
    for o in outs:
        argv += ["-o", o]
    result = run(*argv)
    assert result.exit_code == 0, result.stderr
    data = json.loads(outs[0].read_text())
    assert outs[1].read_text().startswith("<!DOCTYPE html>")
    assert json.loads(outs[2].read_text())["version"] == "2.1.0"
    assert f"{data['lipschitz']['upper']:.4g}" in outs[3].read_text()
    assert result.stdout == ""


def test_ambiguous_outputs_are_usage_errors(tmp_path):
    r = run("check", MLP, "-o", tmp_path / "a.json", "-o", tmp_path / "b.unknown")
    assert r.exit_code == 2 and "cannot tell the format" in r.stderr
    r = run("check", MLP, "-o", tmp_path / "a.json", "-o", tmp_path / "a.json")
    assert r.exit_code == 2 and "named twice" in r.stderr
    assert not (tmp_path / "a.json").exists()


def test_stabaudit_yaml_in_the_working_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stabaudit.yaml").write_text("thresholds: {lipschitz: 1e-3}\nbudget: 0.3\n")
    r = run("check", MLP, "--format", "json")
    assert r.exit_code == 1, r.stderr
    sa101 = next(c for c in json.loads(r.stdout)["checks"] if c["id"] == "SA101")
    assert sa101["threshold"] == 1e-3 and sa101["status"] == "fail"
    # --config names another file instead; the command line overrides both
    (tmp_path / "other.yaml").write_text("thresholds: {lipschitz: 1e9}\nbudget: 0.3\n")
    assert run("check", MLP, "--config", "other.yaml").exit_code == 0
    assert run("check", MLP, "--threshold", "lipschitz=1e9").exit_code == 0
    (tmp_path / "stabaudit.yaml").write_text("thresholds: {lipschitz: [1]}\n")
    r = run("check", MLP)
    assert r.exit_code == 2
    error, summary = r.stderr.strip().splitlines()  # the error, then the summary of the refusal
    assert error == "error: stabaudit.yaml:1: thresholds.lipschitz: expected a number"
    assert summary.startswith(f"stabaudit: FAIL (exit code 2) {MLP}: refused (SA900)")


def test_check_applies_the_config_entry_and_waivers_of_its_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(MLP.read_bytes())
    (tmp_path / "stabaudit.yaml").write_text(
        "defaults: {budget: 0.3}\n"
        "models:\n  - path: m.onnx\n    thresholds: {lipschitz: 1e-3}\n"
        "waivers:\n  - {check: SA101, model: 'm.*', reason: accepted for now}\n"
    )
    r = run("check", "m.onnx", "--format", "json")
    assert r.exit_code == 0, r.stderr
    sa101 = next(c for c in json.loads(r.stdout)["checks"] if c["id"] == "SA101")
    assert sa101["status"] == "fail" and sa101["waiver"]["reason"] == "accepted for now"
    table = run("check", "m.onnx").stdout
    assert "waived" in table


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal():
    tty = _Tty()
    with Progress(enabled=True, label="m.onnx", total=2, stream=tty) as p:
        p.phase("loading")
        p.step(1, 2, make_report())
        p.step(2, 2, ModelError(path="x", error="bad"))
    text = tty.getvalue()
    assert "m.onnx: loading" in text and "2/2 models, 0 failed, 1 errors" in text
    assert text.endswith("\r")  # the line is cleared at the end
    pipe = io.StringIO()
    with Progress(enabled=True, label="m", stream=pipe) as p:
        p.phase("loading")
    assert pipe.getvalue() == ""
    quiet = _Tty()
    with Progress(enabled=False, label="m", stream=quiet) as p:
        p.phase("loading")
    assert quiet.getvalue() == ""
