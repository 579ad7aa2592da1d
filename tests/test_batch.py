"""stabaudit batch: config -> jobs -> executors -> batch report; exit codes, waivers, baselines, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.batching import (
    BatchJob,
    DaskExecutor,
    InProcessExecutor,
    ProcessExecutor,
    plan,
    run_batch,
)
from stabaudit.config import load_config
from stabaudit.engine import AuditRequest
from stabaudit.errors import UsageError
from stabaudit.report.model import ModelError, Report
from stabaudit.report.serialize import batch_to_dict

EXE = Path(sys.executable).parent / "stabaudit"
FAST = "budget: 0.2\n"


def mlp(seed: int, scale: float = 1.0) -> onnx.ModelProto:
    """MatMul+Add -> Relu -> MatMul+Add on [1, 4] with seeded weights (what real exports look like)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 6)) * scale).astype(np.float32)
    w2 = (rng.standard_normal((6, 3)) * scale).astype(np.float32)
    b1, b2 = rng.standard_normal(6).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
        helper.make_node("Add", ["a", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["c"], name="fc2"),
        helper.make_node("Add", ["c", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(v, k) for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def models_dir(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for i in range(n):
        onnx.save(mlp(i), d / f"m{i:02d}.onnx")
    return d


def run_cli(*args: object, cwd: Path, epoch: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if epoch:
        env["SOURCE_DATE_EPOCH"] = "1700000000"
    return subprocess.run(
        [str(EXE), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_ten_models_and_a_broken_file_run_to_the_end(tmp_path):
    d = models_dir(tmp_path, 10)
    (d / "m99_broken.onnx").write_bytes(b"\x08\x07not a protobuf at all")
    (tmp_path / "batch.yaml").write_text(
        f"defaults:\n  {FAST}  thresholds: {{lipschitz: 1e6}}\nmodels:\n  - path: 'models/*.onnx'\n"
    )
    r = run_cli("batch", "batch.yaml", "--jobs", "2", "-o", "out.json", "-o", "out.xml", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["exit_code"] == 2 and data["verdict"] == "error"
    assert len(data["models"]) == 11
    broken = data["models"][-1]
    assert broken["path"] == "models/m99_broken.onnx" and broken["exit_code"] == 2
    assert "not an ONNX model" in broken["error"]
    good = data["models"][:10]
    assert [m["model"]["path"] for m in good] == [f"models/m{i:02d}.onnx" for i in range(10)]
    for m in good:
        assert m["verdict"] == "pass" and m["lipschitz"]["certified"]
        assert m["lipschitz"]["lower"] <= m["lipschitz"]["upper"] <= 1e6
    # the JUnit file holds one suite per model, the broken one as an error
    junit = (tmp_path / "out.xml").read_text()
    assert junit.count("<testsuite ") == 11 and "m99_broken.onnx" in junit


def test_jobs_1_and_2_give_byte_identical_reports(tmp_path):
    models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(f"defaults:\n  {FAST}models:\n  - path: 'models/*.onnx'\n")
    a = run_cli("batch", "b.yaml", "--jobs", "1", "-o", "j1.json", cwd=tmp_path)
    b = run_cli("batch", "b.yaml", "--jobs", "2", "-o", "j2.json", cwd=tmp_path)
    c = run_cli("batch", "b.yaml", "--executor", "inprocess", "-o", "j0.json", cwd=tmp_path)
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
    one = (tmp_path / "j1.json").read_bytes()
    assert one == (tmp_path / "j2.json").read_bytes() == (tmp_path / "j0.json").read_bytes()


def test_timeouts_and_gate_failures_per_model(tmp_path):
    models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(
        f"defaults:\n  {FAST}models:\n"
        "  - path: models/m00.onnx\n    thresholds: {lipschitz: 1e-3}\n"
        "  - path: models/m01.onnx\n"
    )
    r = run_cli("batch", "b.yaml", "--executor", "inprocess", "-o", "out.json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr  # a failed gate, nothing that could not run
    data = json.loads((tmp_path / "out.json").read_text())
    assert [m["exit_code"] for m in data["models"]] == [1, 0]
    sa101 = next(c for c in data["models"][0]["checks"] if c["id"] == "SA101")
    assert sa101["status"] == "fail" and sa101["threshold"] == 1e-3


def test_a_model_past_its_timeout_is_an_error_and_the_rest_run(tmp_path, monkeypatch):
    models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(
        "defaults:\n  budget: 30\nmodels:\n"
        "  - path: models/m00.onnx\n    timeout: 0.05\n    method: exact\n"
        "  - path: models/m01.onnx\n    budget: 0.2\n"
    )
    cfg = load_config(tmp_path / "b.yaml")
    monkeypatch.chdir(tmp_path)
    report = run_batch(cfg, ProcessExecutor(jobs=2), plan(cfg))
    first, second = report.models
    # refused before the equivalence check, or the incomplete report of the stages that finished
    if isinstance(first, ModelError):
        assert "timed out" in first.error and first.exit_code == 2
    else:
        assert not first.complete and first.exit_code == 2 and first.stopped.reason == "timeout"
    assert isinstance(second, Report) and second.exit_code == 0
    assert (report.verdict, report.exit_code) == ("error", 2)


def test_waivers_in_a_batch(tmp_path):
    models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(
        f"defaults:\n  {FAST}  thresholds: {{lipschitz: 1e-3}}\nmodels:\n  - path: 'models/*.onnx'\n"
        "waivers:\n"
        "  - {check: SA101, model: 'models/m00.onnx', reason: accepted, expires: 2099-01-01}\n"
        "  - {check: SA101, model: 'models/m01.onnx', reason: old, expires: 2020-01-01}\n"
    )
    r = run_cli("batch", "b.yaml", "--executor", "inprocess", "-o", "out.json", "-o", "out.sarif", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    waived, expired = json.loads((tmp_path / "out.json").read_text())["models"]
    w = next(c for c in waived["checks"] if c["id"] == "SA101")
    assert w["status"] == "fail" and w["waiver"]["reason"] == "accepted"
    assert waived["exit_code"] == 0  # a valid waiver: shown as waived, the gate passes
    e = {c["id"]: c for c in expired["checks"]}
    assert e["SA101"]["waiver"] is None and e["SA002"]["status"] == "fail"
    assert "expired 2020-01-01" in e["SA002"]["message"] and expired["exit_code"] == 1
    sarif = json.loads((tmp_path / "out.sarif").read_text())
    suppressed = [x for x in sarif["runs"][0]["results"] if x.get("suppressions")]
    assert len(suppressed) == 1 and suppressed[0]["suppressions"][0]["justification"] == "accepted"


def test_baseline_of_a_batch_finds_a_scaled_model(tmp_path):
    d = models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(f"defaults:\n  {FAST}models:\n  - path: 'models/*.onnx'\n")
    assert run_cli("batch", "b.yaml", "--executor", "inprocess", "-o", "base.json", cwd=tmp_path).returncode == 0
    onnx.save(mlp(1, scale=1.2), d / "m01.onnx")  # both layers x1.2: the bound grows by 44%
    r = run_cli(
        "batch", "b.yaml", "--executor", "inprocess", "--baseline", "base.json", "-o", "new.json", cwd=tmp_path
    )
    assert r.returncode == 1, r.stderr
    same, scaled = json.loads((tmp_path / "new.json").read_text())["models"]
    assert next(c for c in same["checks"] if c["id"] == "SA001")["status"] == "pass"
    sa001 = next(c for c in scaled["checks"] if c["id"] == "SA001")
    assert sa001["status"] == "fail" and "regression" in sa001["message"]
    assert "+44.0%" in sa001["message"]


def test_output_dir_holds_each_model_and_the_batch(tmp_path):
    models_dir(tmp_path, 2)
    (tmp_path / "b.yaml").write_text(f"defaults:\n  {FAST}models:\n  - path: 'models/*.onnx'\n")
    r = run_cli(
        "batch", "b.yaml", "--executor", "inprocess", "--output-dir", "out", "--format", "json", "-q", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["000-m00.json", "001-m01.json", "batch.json"]
    single = json.loads((tmp_path / "out" / "001-m01.json").read_text())
    assert single["model"]["path"] == "models/m01.onnx"


def test_config_errors_stop_the_batch_before_anything_runs(tmp_path):
    (tmp_path / "b.yaml").write_text("models:\n  - path: models/none.onnx\n")
    r = run_cli("batch", "b.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: b.yaml:2: models[0].path: no such file 'models/none.onnx'"
    (tmp_path / "c.yaml").write_text("defaults:\n  seed: 1\n")
    r = run_cli("batch", "c.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "no models: to audit" in r.stderr
    models_dir(tmp_path, 1)
    (tmp_path / "d.yaml").write_text("models:\n  - path: models/m00.onnx\n    checks: {disable: [SA109]}\n")
    r = run_cli("batch", "d.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: d.yaml: models[0]: checks.disable: unknown check id 'SA109' (did you mean 'SA103'?)"
    )


def test_dask_executor_gives_the_same_report_as_the_local_one(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    models_dir(tmp_path, 3)
    (tmp_path / "b.yaml").write_text(f"defaults:\n  {FAST}models:\n  - path: 'models/*.onnx'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = load_config(tmp_path / "b.yaml")
    local = run_batch(cfg, InProcessExecutor(), plan(cfg))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, protocol="tcp", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        remote = run_batch(cfg, DaskExecutor(scheduler=cluster.scheduler_address), plan(cfg))
    assert batch_to_dict(remote) == batch_to_dict(local)
    assert remote.exit_code == 0 and len(remote.models) == 3


def test_dask_without_a_scheduler_is_a_usage_error(tmp_path):
    models_dir(tmp_path, 1)
    (tmp_path / "b.yaml").write_text("models:\n  - path: models/m00.onnx\n")
    r = run_cli("batch", "b.yaml", "--executor", "dask", cwd=tmp_path)
    assert r.returncode == 2 and "--scheduler" in r.stderr
    job = BatchJob(index=0, request=AuditRequest(path=tmp_path / "models" / "m00.onnx"))
    with pytest.raises(UsageError, match=r"--scheduler tcp://127.0.0.1:9: cannot connect"):
        list(DaskExecutor(scheduler="tcp://127.0.0.1:9", connect_timeout_s=1).run([job]))


def test_inprocess_executor_records_what_stops_a_model(tmp_path):
    d = models_dir(tmp_path, 1)
    jobs = [
        BatchJob(index=0, request=AuditRequest(path=d / "missing.onnx")),
        BatchJob(index=1, request=AuditRequest(path=d / "m00.onnx", budget_s=0.2, lower_budget_s=0.2)),
    ]
    out = dict(InProcessExecutor().run(jobs))
    assert isinstance(out[0], ModelError) and out[0].exit_code == 2
    assert isinstance(out[1], Report)
