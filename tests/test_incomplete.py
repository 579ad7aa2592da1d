"""An audit stopped by its timeout or the memory budget: the report of the stages that finished,
marked incomplete, its checks without evidence inconclusive, exit code 2, never cached."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

import stabaudit.stages as stages
from stabaudit.batching import BatchJob, InProcessExecutor, run_job
from stabaudit.cache import AnalysisCache
from stabaudit.engine import AuditRequest, audit
from stabaudit.errors import ResourceError
from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.report.model import Report, Status, batch_outcome
from stabaudit.report.serialize import report_from_dict
from stabaudit.stages import STAGES, AnalysisState

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MLP = SAMPLES / "mlp.onnx"


def _replace_stage(monkeypatch: pytest.MonkeyPatch, name: str, fn) -> None:
    fn.__name__ = name  # the stage keeps its name (Stage.name is its function's)
    monkeypatch.setattr(stages, "STAGES", tuple(
        dataclasses.replace(s, run=fn) if s.name == name else s for s in stages.STAGES))


def _sleeps(request: AuditRequest, ev: AnalysisState) -> None:
    time.sleep(60.0)


def _request(**kw) -> AuditRequest:
    return AuditRequest(path=MLP, method="product", lower_budget_s=0.2, **kw)


@pytest.fixture(scope="module")
def complete() -> Report:
    return audit(_request())


def test_a_timeout_in_the_lower_search_reports_the_layers_and_the_product(monkeypatch, tmp_path, complete):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    _replace_stage(monkeypatch, "lower_bound_search", _sleeps)
    cache = AnalysisCache(tmp_path / "cache")
    start = time.monotonic()
    report = audit(_request(timeout_s=4.0), cache=cache)
    assert time.monotonic() - start < 30.0  # the sleeping stage was stopped, not waited for
    assert not report.complete and report.exit_code == 2 and report.verdict == "fail"
    stopped = report.stopped
    assert stopped is not None and (stopped.reason, stopped.stage, stopped.seconds) == ("timeout", "lower_bound_search", 4.0)
    assert stopped.message == "timed out after 4 s (--timeout)"
    assert "layer_bounds" in stopped.completed and "lower_bound_search" not in stopped.completed
    # the per-layer bounds and the product, as the complete audit certifies them
    def bounds(r: Report) -> list[tuple[str, object]]:
        return [(layer.name, layer.lipschitz) for layer in r.layers]

    assert bounds(report) == bounds(complete) and len(report.layers) == 5
    assert report.profile == complete.profile
    product = complete.lipschitz.methods[0]
    assert [(m.method, m.upper, m.certified) for m in report.lipschitz.methods] == [
        (product.method, product.upper, product.certified)]
    assert report.lipschitz.upper == product.upper
    assert report.lipschitz.certified and report.lipschitz.upper is not None
    # no number of the stopped stage: no lower bound, no witness
    assert report.lipschitz.lower is None and report.lipschitz.witness is None
    assert complete.lipschitz.lower is not None
    status = {f.id: f.status for f in report.checks}
    assert status["SA101"] is Status.INCONCLUSIVE and status["SA001"] is Status.INCONCLUSIVE
    assert status["SA102"] == {f.id: f.status for f in complete.checks}["SA102"]  # its evidence is there
    assert status["SA902"] is Status.PASS and status["SA901"] is Status.PASS
    assert all(f.status is not Status.PASS for f in report.checks if f.id in ("SA101", "SA001"))
    data = json.loads(RENDERERS.get(OutputFormat.JSON)(report))
    assert data["complete"] is False and data["exit_code"] == 2
    assert data["stopped"] == {"reason": "timeout", "stage": "lower_bound_search", "message": stopped.message,
                               "seconds": 4.0, "completed": list(stopped.completed)}
    assert report_from_dict(data) == dataclasses.replace(report, rules=())
    assert "complete" not in json.loads(RENDERERS.get(OutputFormat.JSON)(complete))  # as before
    # never cached: the next run computes it
    assert cache.entries() == []


def test_every_renderer_says_the_report_is_incomplete(monkeypatch):
    _replace_stage(monkeypatch, "global_methods", lambda request, ev: _sleeps(request, ev))
    report = audit(AuditRequest(path=MLP, lower_budget_s=0.2, timeout_s=4.0))
    assert report.stopped is not None and report.stopped.stage == "global_methods"
    for fmt in (OutputFormat.TABLE, OutputFormat.MD, OutputFormat.HTML, OutputFormat.GITHUB):
        assert "INCOMPLETE" in RENDERERS.get(fmt)(report), fmt
    sarif = json.loads(RENDERERS.get(OutputFormat.SARIF)(report))
    run = sarif["runs"][0]
    assert run["invocations"][0]["executionSuccessful"] is False and run["properties"]["complete"] is False
    junit = RENDERERS.get(OutputFormat.JUNIT)(report)
    assert 'errors="1"' in junit and "INCOMPLETE" in junit


def test_a_stage_stopped_half_way_leaves_nothing_behind(monkeypatch):
    def half(request: AuditRequest, ev: AnalysisState) -> None:
        ev.layers = ["half-written"]  # type: ignore[list-item]
        ev.timings["half"] = 1.0
        time.sleep(60.0)

    _replace_stage(monkeypatch, "layer_bounds", half)
    report = audit(_request(timeout_s=4.0))
    assert report.stopped is not None and report.stopped.stage == "layer_bounds"
    assert report.layers == () and report.profile == () and "half" not in report.timings
    assert report.lipschitz.upper is None and not report.lipschitz.certified and report.lipschitz.methods == ()
    assert report.equivalence.passed  # the stages before it are there
    for f in report.checks:
        if f.id in ("SA101", "SA102", "SA103", "SA001"):
            assert f.status is Status.INCONCLUSIVE, f


def test_a_failed_allocation_stops_the_audit_with_the_memory_reason(monkeypatch):
    def hungry(request: AuditRequest, ev: AnalysisState) -> None:
        raise MemoryError("Unable to allocate 8.00 TiB")

    _replace_stage(monkeypatch, "residual", hungry)
    report = audit(_request())
    assert report.stopped is not None and (report.stopped.reason, report.stopped.stage) == ("memory", "residual")
    assert report.stopped.seconds is None and report.exit_code == 2
    status = {f.id: f.status for f in report.checks}
    assert status["SA201"] is Status.INCONCLUSIVE and status["SA202"] is Status.INCONCLUSIVE
    assert report.lipschitz.upper is not None and report.lipschitz.lower is None  # lower search never ran


def test_a_stage_planning_more_than_remains_is_not_started(monkeypatch):
    started: list[str] = []
    original = next(s.run for s in STAGES if s.name == "load")

    def load(request: AuditRequest, ev: AnalysisState) -> None:
        original(request, ev)
        ev.memory_plan = {**ev.memory_plan, "lower_bound_search": 2**50}

    def search(request: AuditRequest, ev: AnalysisState) -> None:
        started.append("search")

    _replace_stage(monkeypatch, "load", load)
    _replace_stage(monkeypatch, "lower_bound_search", search)
    report = audit(_request(max_memory=64 * 2**30))
    assert started == [] and report.stopped is not None
    assert (report.stopped.reason, report.stopped.stage) == ("memory", "lower_bound_search")
    assert "lower_bound_search stage plans ~1024 TiB" in report.stopped.message
    assert "(--max-memory)" in report.stopped.message


def test_a_stop_before_the_equivalence_check_is_a_refusal_that_says_where(monkeypatch):
    _replace_stage(monkeypatch, "equivalence", _sleeps)
    with pytest.raises(ResourceError, match="timed out after 3 s") as info:
        audit(_request(timeout_s=3.0))
    assert info.value.stopped is not None and info.value.stopped.stage == "equivalence"


def test_an_enclosing_deadline_is_not_this_audits_timeout(monkeypatch):
    from stabaudit.limits import AuditTimeoutError, run_with_timeout

    _replace_stage(monkeypatch, "lower_bound_search", _sleeps)
    with pytest.raises(AuditTimeoutError):
        run_with_timeout(lambda: audit(_request()), 4.0)


def test_a_batch_entry_that_stopped_is_an_error(monkeypatch):
    _replace_stage(monkeypatch, "lower_bound_search", _sleeps)
    [(_, outcome)] = list(InProcessExecutor().run([BatchJob(index=0, request=_request(timeout_s=4.0))]))
    assert isinstance(outcome, Report) and not outcome.complete and outcome.layers
    assert batch_outcome((outcome,)) == ("error", 2)
    assert run_job is not None


def test_every_check_names_the_stages_it_reads():
    from stabaudit.checks import CHECKS

    names = {s.name for s in STAGES}
    assert set(stages.CHECK_STAGES) == set(CHECKS)
    for wanted in stages.CHECK_STAGES.values():
        assert set(wanted) <= names


def test_the_command_line_writes_the_incomplete_report_and_says_why(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from stabaudit.cli import app
    from tests.sarif_schema import validate_sarif

    _replace_stage(monkeypatch, "lower_bound_search", _sleeps)
    out, sarif = tmp_path / "r.json", tmp_path / "r.sarif"
    result = CliRunner().invoke(app, ["check", str(MLP), "--method", "product", "--timeout", "4", "--no-cache",
                                      "-o", str(out), "-o", str(sarif)])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == f"error: {MLP}: timed out after 4 s (--timeout)"
    assert lines[-1].startswith(f"stabaudit: FAIL (exit code 2) {MLP}: INCOMPLETE, stopped by the timeout in the "
                                "lower_bound_search stage; Lipschitz [-, ")
    assert "(certified upper)" in lines[-1]
    data = json.loads(out.read_text())
    assert data["complete"] is False and len(data["layers"]) == 5 and data["lipschitz"]["lower"] is None
    validate_sarif(json.loads(sarif.read_text()))


def test_a_trajectory_checkpoint_that_stopped_is_an_error_point(monkeypatch):
    from stabaudit.report.gate import FailOn
    from stabaudit.trajectory import Checkpoint, trajectory_outcome, trajectory_point

    _replace_stage(monkeypatch, "lower_bound_search", _sleeps)
    report = audit(_request(timeout_s=4.0))
    point = trajectory_point(Checkpoint(step=3, path=MLP), report, {})
    assert (point.verdict, point.exit_code, point.channels) == ("error", 2, ())
    assert point.error == "incomplete: timed out after 4 s (--timeout)"
    assert trajectory_outcome([point], [], FailOn.ERROR) == ("error", 2)
