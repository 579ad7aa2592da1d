"""Trajectories: SA601 (supremum) and SA602 (growth exponent) over checkpoints, the command and the config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from stabaudit.batching import InProcessExecutor
from stabaudit.checks import CHECKS, CheckPolicy, rule_catalogue
from stabaudit.checks.trajectory import (
    NEEDS_TRAJECTORY,
    TrajectoryEvidence,
    channel_summaries,
    fit_growth,
    run_trajectory_checks,
)
from stabaudit.cli import app
from stabaudit.config import Settings, load_config
from stabaudit.engine import AuditRequest, audit
from stabaudit.errors import ConfigError, UsageError
from stabaudit.renderers import TRAJECTORY_RENDERERS, OutputFormat
from stabaudit.report.gate import FailOn
from stabaudit.report.model import Finding, Severity, Status, TrajectoryChannel, TrajectoryReport
from stabaudit.report.serialize import trajectory_from_dict, trajectory_to_dict
from stabaudit.trajectory import (
    Checkpoint,
    checkpoints_from_config,
    parse_steps,
    plan_trajectory,
    run_trajectory,
    trajectory_outcome,
)

C = 1.3  # the per-step weight growth of the geometric trajectory
LAYERS = 2  # linear layers of the MLP: K_t = C^(LAYERS t) K_0 exactly
# the product of certified spectral norms is exactly homogeneous in positive weight scaling;
# the search-based methods stop on a time budget and would blur the exponent
FAST = Settings(budget=0.2, method="product")
runner = CliRunner()


def w0(seed: int = 0, gain: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, 6))
    w2 = rng.standard_normal((6, 3))
    if gain is not None:  # each layer's spectral norm set to ``gain``
        w1 *= gain / np.linalg.norm(w1, 2)
        w2 *= gain / np.linalg.norm(w2, 2)
    return w1, w2


def mlp(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul on [1, 4], no biases: positively homogeneous, f(c x) = c f(x)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def checkpoints(tmp_path: Path, c: float, n: int = 4, gain: float | None = None) -> list[Path]:
    """W_t = c^t W_0 for t = 0..n-1, each as run/ckpt-<t>.onnx."""
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    w1, w2 = w0(gain=gain)
    paths = []
    for t in range(n):
        p = d / f"ckpt-{t}.onnx"
        onnx.save(mlp(w1 * c**t, w2 * c**t), p)
        paths.append(p)
    return paths


def run(paths: list[Path], settings: Settings = FAST, cache: Path | None = None) -> TrajectoryReport:
    ckpts = [Checkpoint(path=p, step=t) for t, p in enumerate(paths)]
    jobs = plan_trajectory(ckpts, settings, cache_dir=cache)
    return run_trajectory(ckpts, InProcessExecutor(), jobs)


def finding(report: TrajectoryReport, check_id: str) -> Finding:
    return next(f for f in report.checks if f.id == check_id)


def cli(*args: object, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    return runner.invoke(app, ["trajectory", *map(str, args)])


@pytest.fixture(scope="module")
def geometric(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryReport:
    """4 checkpoints of W_t = 1.3^t W_0, step = t."""
    return run(checkpoints(tmp_path_factory.mktemp("geometric"), C))


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryReport:
    """4 checkpoints with the same weights (each layer's gain 0.7); one audit, three cache hits."""
    d = tmp_path_factory.mktemp("flat")
    return run(checkpoints(d, 1.0, gain=0.7), cache=d / "cache")


# ---- the must-show cases ------------------------------------------------------------------------------
def test_geometric_growth_fails_sa602_with_the_known_exponent(geometric):
    sa602 = finding(geometric, "SA602")
    expected = LAYERS * math.log(C)  # K_t = C^(L t) K_0, step = t
    assert sa602.status is Status.FAIL
    assert abs(sa602.value["upper"] - expected) <= 1e-6
    assert abs(geometric.growth_upper.slope - expected) <= 1e-6
    assert geometric.growth_upper.residual < 1e-6  # exactly geometric
    assert geometric.growth_lower.slope > 0  # the sound lower bounds grow too: that is what fails
    assert sa602.value["lower"] == geometric.growth_lower.slope
    uppers = [next(b for b in p.channels if b.channel is TrajectoryChannel.LIPSCHITZ).upper for p in geometric.points]
    for t, k in enumerate(uppers):
        assert k == pytest.approx(uppers[0] * C ** (LAYERS * t), rel=1e-6)
    # SA601 is reported with SA602: the supremum is the last checkpoint's bound, and the first
    # bound is already above K_max = 1 (the seeded W_0 has K_lower > 1)
    sa601 = finding(geometric, "SA601")
    assert sa601.value["lipschitz"]["sup_upper"] == uppers[-1]
    assert sa601.status is Status.FAIL
    # informational by default: no threshold was set, so no level of --fail-on gates on them
    assert (geometric.verdict, geometric.exit_code) == ("pass", 0)
    assert {f.id: f.severity for f in geometric.checks} == {"SA601": Severity.INFO, "SA602": Severity.INFO}
    assert trajectory_outcome(geometric.points, geometric.checks, FailOn.WARNING) == ("pass", 0)
    # setting the exponent's own threshold makes SA602 (only) an error, and it fails the gate
    tev = TrajectoryEvidence(points=geometric.points)
    own = run_trajectory_checks(tev, CheckPolicy(thresholds={"growth_exponent": 0.0}))
    assert {f.id: f.severity for f in own} == {"SA601": Severity.INFO, "SA602": Severity.ERROR}
    assert trajectory_outcome(geometric.points, own, FailOn.ERROR) == ("fail", 1)


def test_sa601_gates_only_on_the_channels_whose_threshold_was_set(geometric):
    tev = TrajectoryEvidence(points=geometric.points)
    summaries = {s.channel: s for s in channel_summaries(geometric.points)}
    assert summaries[TrajectoryChannel.LIPSCHITZ].status is Status.FAIL  # K_lower > 1 already at t=0
    # defaults: informational, every channel judged
    (default,) = [f for f in run_trajectory_checks(tev, CheckPolicy()) if f.id == "SA601"]
    assert default.severity is Severity.INFO and default.status is Status.FAIL
    assert "informational" not in default.message
    # one channel's threshold set: SA601 is an error judged on that channel alone, the others aside
    (own,) = [
        f for f in run_trajectory_checks(tev, CheckPolicy(thresholds={"layer_lipschitz": 1.0}))
        if f.id == "SA601"
    ]
    assert own.severity is Severity.ERROR
    assert own.status is summaries[TrajectoryChannel.LAYER].status
    assert "informational (threshold not set): lipschitz fail" in own.message


def test_weights_that_stay_put_pass_with_exponent_zero(flat):
    sa601, sa602 = finding(flat, "SA601"), finding(flat, "SA602")
    assert sa602.status is Status.PASS
    assert abs(sa602.value["upper"]) <= 1e-9
    assert abs(flat.growth_upper.slope) <= 1e-9
    # every channel certified within its limit at every checkpoint: K <= 0.49, s_l <= 0.7, Lambda < 0
    assert sa601.status is Status.PASS
    statuses = {c.channel: c.status for c in flat.channels}
    assert statuses[TrajectoryChannel.LIPSCHITZ] is Status.PASS
    assert statuses[TrajectoryChannel.LAYER] is Status.PASS
    assert statuses[TrajectoryChannel.EXPONENT] is Status.PASS
    assert flat.channels[0].sup_upper == pytest.approx(0.49, rel=1e-5)
    assert (flat.verdict, flat.exit_code) == ("pass", 0)


def test_fewer_than_three_checkpoints_leave_the_exponent_inconclusive(geometric):
    policy = CheckPolicy()
    two = run_trajectory_checks(TrajectoryEvidence(points=geometric.points[:2]), policy)
    sa602 = next(f for f in two if f.id == "SA602")
    assert sa602.status is Status.INCONCLUSIVE
    assert "needs at least 3" in sa602.message
    assert next(f for f in two if f.id == "SA601").status is Status.FAIL  # reported beside it


def test_disabled_and_severities_apply_to_the_trajectory_checks(geometric):
    policy = CheckPolicy(severities={"SA602": Severity.ERROR}, disabled=frozenset({"SA601"}))
    found = {f.id: f for f in run_trajectory_checks(TrajectoryEvidence(points=geometric.points), policy)}
    assert found["SA601"].status is Status.SKIPPED
    assert (found["SA602"].status, found["SA602"].severity) == (Status.FAIL, Severity.ERROR)


def test_steps_threshold_and_every_checkpoint_listed(tmp_path, monkeypatch):
    paths = checkpoints(tmp_path, C, n=3)
    out_json, out_txt, out_md = tmp_path / "t.json", tmp_path / "t.txt", tmp_path / "t.md"
    result = cli(
        *paths, "--steps", "0,100,200", "--budget", "0.2", "--threshold", "growth_exponent=0.001",
        "-o", out_json, "-o", out_txt, "-o", out_md, "--config", write_config(tmp_path, "method: product\n"),
        cwd=tmp_path, monkeypatch=monkeypatch,
    )
    assert result.exit_code == 1, result.output
    data = json.loads(out_json.read_text())
    assert [p["step"] for p in data["points"]] == [0, 100, 200]
    assert [p["path"] for p in data["points"]] == [f"run/ckpt-{t}.onnx" for t in range(3)]
    # per step unit: 2 log(1.3) per 100 steps
    assert abs(data["growth_upper"]["slope"] - LAYERS * math.log(C) / 100) <= 1e-8
    sa602 = next(c for c in data["checks"] if c["id"] == "SA602")
    assert (sa602["status"], sa602["severity"], sa602["threshold"]) == ("fail", "error", 0.001)
    assert [c["id"] for c in data["checks"]] == ["SA601", "SA602"]
    assert data["verdict"] == "fail" and data["exit_code"] == 1
    rows = [line.split() for line in out_txt.read_text().splitlines() if "run/ckpt-" in line]
    assert [(r[0], r[1]) for r in rows] == [("0", "run/ckpt-0.onnx"), ("100", "run/ckpt-1.onnx"), ("200", "run/ckpt-2.onnx")]
    assert "trajectory verdict: FAIL" in out_txt.read_text()
    md = out_md.read_text()
    assert all(f"`run/ckpt-{t}.onnx`" in md for t in range(3))
    # the JSON round-trips to the same report
    assert trajectory_to_dict(trajectory_from_dict(data)) == data


def write_config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ("0,100,200", "3 step(s) for 4 checkpoint(s)"),
        ("0,100,100,200", "strictly increasing"),
        ("0,200,100,300", "strictly increasing"),
        ("0,a,2,3", "comma-separated integers"),
    ],
)
def test_bad_steps_are_usage_errors(tmp_path, monkeypatch, steps, words):
    paths = checkpoints(tmp_path, C)
    result = cli(*paths, "--steps", steps, cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    assert words in result.output
    with pytest.raises(UsageError, match="--steps"):
        parse_steps(steps, 4)


def test_formats_without_a_trajectory_renderer_and_no_checkpoints_are_usage_errors(tmp_path, monkeypatch):
    paths = checkpoints(tmp_path, C, n=1)
    result = cli(*paths, "-f", "html", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    assert "format html is not available for trajectories" in result.output
    result = cli(cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    assert "no checkpoints" in result.output
    result = cli(paths[0], paths[0], cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    assert "named twice" in result.output
    assert {OutputFormat.JSON, OutputFormat.TABLE, OutputFormat.MD} <= set(TRAJECTORY_RENDERERS)


def test_a_checkpoint_that_cannot_be_audited_is_exit_2(tmp_path, monkeypatch):
    paths = checkpoints(tmp_path, 1.0, n=2, gain=0.7)
    paths[1].write_bytes(b"not a model")
    cfg = write_config(tmp_path, "method: product\nbudget: 0.2\ntrajectory:\n  - path: run/ckpt-*.onnx\n")
    result = cli("--config", cfg, "-f", "json", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [p["verdict"] for p in data["points"]] == ["pass", "error"]
    assert data["points"][1]["error"] and data["points"][1]["channels"] == []
    assert (data["verdict"], data["exit_code"]) == ("error", 2)
    sa601 = next(c for c in data["checks"] if c["id"] == "SA601")
    assert sa601["status"] == "inconclusive"  # the supremum misses a checkpoint
    assert "1 checkpoint(s) could not be audited" in sa601["message"]


# ---- the checks in single audits and the catalogue -----------------------------------------------------
def test_single_model_audit_skips_the_trajectory_checks(tmp_path):
    path = checkpoints(tmp_path, 1.0, n=1)[0]
    report = audit(AuditRequest(path=path, method="product", budget_s=0.2, lower_budget_s=0.2))
    found = {f.id: f for f in report.checks}
    for check_id in ("SA601", "SA602"):
        assert found[check_id].status is Status.SKIPPED
        assert found[check_id].message == NEEDS_TRAJECTORY
    assert {"SA601", "SA602"} <= {r.id for r in rule_catalogue()}
    assert CHECKS.get("SA602").threshold_key == "growth_exponent"


def test_explain_prints_the_trajectory_checks():
    for check_id, words in (("SA601", "sup_t"), ("SA602", "least-squares slope")):
        result = runner.invoke(app, ["explain", check_id])
        assert result.exit_code == 0
        assert words in result.output


def test_fit_growth_matches_a_dense_least_squares_reference():
    steps = [0, 3, 7, 20, 21]
    values = [1.0, 2.5, 1.7, 9.0, 8.0]
    slope, intercept = np.polyfit(steps, np.log(values), 1)
    fit = fit_growth(steps, values)
    assert fit.slope == pytest.approx(slope, rel=1e-12)
    assert fit.intercept == pytest.approx(intercept, rel=1e-12)
    residual = np.sqrt(np.mean((np.log(values) - (intercept + slope * np.array(steps))) ** 2))
    assert fit.residual == pytest.approx(residual, rel=1e-10)
    assert fit_growth(steps, [1.0, 2.0, None, 3.0, 4.0]).slope is None
    assert fit_growth(steps, [1.0, 2.0, 0.0, 3.0, 4.0]).slope is None


# ---- the config's trajectory: list ----------------------------------------------------------------------
def test_config_glob_without_steps_is_sorted_with_index_steps(tmp_path):
    checkpoints(tmp_path, C)
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("budget: 0.2\ntrajectory:\n  - path: run/ckpt-*.onnx\n")
    found = checkpoints_from_config(load_config(cfg))
    assert [c.path.name for c in found] == [f"ckpt-{t}.onnx" for t in range(4)]
    assert [c.step for c in found] == [0, 1, 2, 3]


def test_config_with_steps_keeps_the_written_order(tmp_path):
    checkpoints(tmp_path, C)
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        "trajectory:\n  - {path: run/ckpt-0.onnx, step: 0}\n  - {path: run/ckpt-2.onnx, step: 50}\n"
        "  - {path: run/ckpt-3.onnx, step: 70}\n"
    )
    found = checkpoints_from_config(load_config(cfg))
    assert [(c.path.name, c.step) for c in found] == [("ckpt-0.onnx", 0), ("ckpt-2.onnx", 50), ("ckpt-3.onnx", 70)]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("  - {path: run/ckpt-*.onnx, step: 0}\n", "takes no step"),
        ("  - {path: run/ckpt-0.onnx, step: 5}\n  - {path: run/ckpt-1.onnx, step: 5}\n", "strictly increasing"),
        ("  - {path: run/ckpt-0.onnx, step: 0}\n  - {path: run/ckpt-1.onnx}\n", "for every checkpoint or for none"),
        ("  - {path: run/ckpt-0.onnx, step: -1}\n", "integer >= 0"),
        ("  - {path: run/ckpt-0.onnx, stp: 1}\n", "did you mean 'step'"),
    ],
)
def test_config_trajectory_errors_name_the_key(tmp_path, body, words):
    checkpoints(tmp_path, C)
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("trajectory:\n" + body)
    with pytest.raises(ConfigError, match="trajectory") as info:
        load_config(cfg)
    assert words in str(info.value)


def test_config_trajectory_missing_file_is_a_config_error(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("trajectory:\n  - path: run/nothing.onnx\n")
    with pytest.raises(ConfigError, match=r"audit.yaml:2: trajectory\[0\].path: no such file"):
        checkpoints_from_config(load_config(cfg))
