"""Same model, options and seed: byte-identical JSON, in one process and across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stabaudit.engine import AuditRequest, audit
from stabaudit.renderers import RENDERERS, OutputFormat

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
EXE = Path(sys.executable).parent / "stabaudit"


def test_same_process_reports_are_identical(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    request = AuditRequest(path=SAMPLES / "cnn.onnx", seed=3, lower_budget_s=0.5, budget_s=0.5)
    a = RENDERERS.get(OutputFormat.JSON)(audit(request))
    b = RENDERERS.get(OutputFormat.JSON)(audit(request))
    assert a == b
    assert '"created": "2023-11-14T22:13:20Z"' in a
    assert '"timings": {}' in a


def test_without_source_date_epoch_timings_are_reported(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    report = audit(AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2, budget_s=0.2))
    assert report.timings["total"] > 0 and report.created.endswith("Z")


def test_seed_changes_the_search_but_not_the_certified_bounds(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    a = audit(AuditRequest(path=SAMPLES / "mlp.onnx", seed=0, lower_budget_s=0.3, budget_s=5.0))
    b = audit(AuditRequest(path=SAMPLES / "mlp.onnx", seed=1, lower_budget_s=0.3, budget_s=5.0))
    assert a.lipschitz.upper == b.lipschitz.upper
    assert a.lipschitz.witness != b.lipschitz.witness


def test_across_processes_byte_identical(tmp_path):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    outputs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        proc = subprocess.run(
            [
                str(EXE),
                "check",
                str(SAMPLES / "resnet.pt"),
                "--budget",
                "0.3",
                "--seed",
                "7",
                "-o",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_bytes())
    if outputs[0] != outputs[1]:  # name what differs: the search's plan, notes and result
        import json

        a, b = (json.loads(o) for o in outputs)
        pick = ("lower", "lower_method")
        diag = [({k: r["lipschitz"].get(k) for k in pick}, r["notes"]) for r in (a, b)]
        pytest.fail(f"reports differ across processes: {diag}")


def test_bad_source_date_epoch_is_a_usage_error(monkeypatch):
    from stabaudit.errors import UsageError

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        audit(AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2, budget_s=0.2))


# ---- the clock never changes a number: --budget plans counted work (analyses.plan) ----------------
class _StarvedClock:
    """A clock that advances 1000 s at every reading: a machine so loaded that any time limit of a
    search or solver would cut it at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1000.0
        return self.now


def test_a_starved_clock_changes_no_number(monkeypatch):
    import time

    from stabaudit.analyses.exact import exact_lipschitz
    from stabaudit.analyses.feedforward import global_bounds
    from stabaudit.analyses.lower import lower_bound
    from stabaudit.limits import one_thread
    from stabaudit.loaders.onnx import load_onnx

    graph = load_onnx(SAMPLES / "mlp.onnx").graph

    def run() -> tuple:
        with one_thread():  # as in an audit (engine.audit)
            low = lower_bound(graph, seed=3, budget_s=0.3)
            methods = global_bounds(graph, budget_s=0.5, methods=("layerwise", "sdp"))
            exact = exact_lipschitz(graph, budget_s=0.1, seed=3)
        return (
            (low.value, low.method, low.witness, low.evaluations, low.estimate),
            [(r.method, r.upper, r.notes) for r in methods],
            (exact.upper, exact.lower, exact.nodes_explored, exact.notes),
        )

    normal = run()
    assert any("Newton steps" in " ".join(r[2]) for r in normal[1])  # the solvers did run
    clock = _StarvedClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(time, "monotonic", clock)
    starved = run()
    assert clock.now > 0.0  # the clock was read (for the reported seconds) ...
    assert starved == normal  # ... and changed no number, plan or note


def test_the_budget_is_in_the_cache_key():
    from stabaudit.engine import request_fingerprint

    base = AuditRequest(path=SAMPLES / "mlp.onnx")
    keys = {
        repr(sorted(request_fingerprint(r).items()))
        for r in (base, AuditRequest(path=base.path, budget_s=2.0), AuditRequest(path=base.path, lower_budget_s=2.0))
    }
    assert len(keys) == 3


# ---- the CLI under SIGSTOP/SIGCONT: byte-identical JSON --------------------------------------------
def _start(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    # `python -m stabaudit` from the repository root: this checkout's package, in its own session
    # so that the whole process group (batch workers included) can be stopped
    env = dict(os.environ, SOURCE_DATE_EPOCH="0", STABAUDIT_NO_CACHE="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "stabaudit", *args, "--seed", "5", "--format", "json", "-o", str(out), "-q"]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _same_json_when_starved(args: list[str], tmp_path: Path, stopped_s: float = 0.5, running_s: float = 0.5) -> bytes:
    """Run the audit twice side by side, the second stopped ``stopped_s`` every ``running_s``;
    assert the same exit code and byte-identical JSON; return it."""
    import signal
    import threading

    outs = [tmp_path / "normal.json", tmp_path / "starved.json"]
    normal, starved = _start(args, outs[0]), _start(args, outs[1])
    done = threading.Event()
    cycles = [0]

    def starve() -> None:
        while not done.wait(running_s):
            _signal(starved, signal.SIGSTOP)
            cycles[0] += 1
            done.wait(stopped_s)
            _signal(starved, signal.SIGCONT)

    thread = threading.Thread(target=starve, daemon=True)
    thread.start()
    try:
        errors = [p.communicate(timeout=240)[1].decode(errors="replace") for p in (normal, starved)]
    finally:
        done.set()
        thread.join()
        for p in (normal, starved):
            _signal(p, signal.SIGCONT)
            if p.poll() is None:
                _signal(p, signal.SIGKILL)
    codes = [normal.returncode, starved.returncode]
    assert codes[0] in (0, 1) and codes[0] == codes[1], errors
    assert cycles[0] >= 2  # the starved run was stopped several times
    a, b = (o.read_bytes() for o in outs)
    if a != b:
        import json

        reports = [json.loads(x) for x in (a, b)]
        diag = [[m.get("lipschitz") for m in r.get("models", [r])] for r in reports]
        pytest.fail(f"the starved run's report differs: {diag}")
    return a


def test_sample_cnn_is_byte_identical_when_starved(tmp_path):
    out = _same_json_when_starved(["check", str(SAMPLES / "cnn.onnx"), "--budget", "1"], tmp_path)
    assert b'"lower_method": "multi-start jacobian ascent' in out


def test_lipsdp_is_byte_identical_when_starved(tmp_path):
    # ACAS Xu N(1,1) when the external networks are present (the network whose LipSDP bound once
    # moved between runs under load), else the sample MLP: both are ReLU chains for LipSDP
    acas = ROOT / ".." / "shared" / "models" / "external" / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
    model = acas if acas.is_file() else SAMPLES / "mlp.onnx"
    out = _same_json_when_starved(["check", str(model), "--method", "sdp", "--budget", "1"], tmp_path)
    assert b"Newton steps" in out


def test_batch_with_two_jobs_is_byte_identical_when_starved(tmp_path):
    config = tmp_path / "batch.yaml"
    config.write_text(f"models:\n  - path: {SAMPLES / 'mlp.onnx'}\n  - path: {SAMPLES / 'cnn.onnx'}\n")
    args = ["batch", str(config), "--jobs", "2", "--budget", "0.3", "--method", "product"]
    out = _same_json_when_starved(args, tmp_path)
    import json

    assert [m["lipschitz"]["lower"] > 0.0 for m in json.loads(out)["models"]] == [True, True]
