"""The analysis pipeline (stabaudit.stages): the stage list, its observer lines and timing keys,
and a new stage as one more entry of STAGES."""

from __future__ import annotations

from pathlib import Path

import stabaudit.stages as stages
from stabaudit.engine import AuditRequest, audit
from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.stages import STAGES, AnalysisState, Stage

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_stage_order():
    assert [s.name for s in STAGES] == [
        "check_device",
        "load",
        "equivalence",
        "layer_bounds",
        "jumps",
        "global_bound",
        "global_methods",
        "samples",
        "sample_evidence",
        "local_bounds",
        "training",
        "residual",
        "lower_bound_search",
        "global_lipschitz",
        "domain_bounds",
    ]
    timed = [s.timing for s in STAGES if s.timing is not None]
    assert len(set(timed)) == len(timed) and "total" not in timed


def test_observer_lines_and_timings_follow_the_stages_that_ran(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    lines: list[str] = []
    report = audit(
        AuditRequest(path=SAMPLES / "mlp.onnx", method="product", lower_budget_s=0.2),
        observer=lines.append,
    )
    assert lines == [
        "loading",
        "equivalence",
        "per-layer bounds",
        "global bound",
        "residual blocks",
        "lower bound search",
    ]
    assert list(report.timings) == [
        "load", "equivalence", "layer_bounds", "composition", "residual", "lower_bound", "total",
        "checks",
    ]


def test_a_new_stage_is_one_entry(monkeypatch):
    """A stage inserted after the per-layer bounds sees their evidence and not the later stages',
    says its line and is timed under its key; the report is otherwise the same, byte for byte."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    request = AuditRequest(path=SAMPLES / "mlp.onnx", method="product", lower_budget_s=0.2)
    plain = RENDERERS.get(OutputFormat.JSON)(audit(request))

    seen: list[tuple[int, bool]] = []

    def ranges(request: AuditRequest, ev: AnalysisState) -> None:
        seen.append((len(ev.op_bounds), hasattr(ev, "comp")))

    at = next(i for i, s in enumerate(STAGES) if s.name == "layer_bounds") + 1
    extra = Stage(ranges, "ranges", "ranges", when=lambda request, ev: True)
    monkeypatch.setattr(stages, "STAGES", (*STAGES[:at], extra, *STAGES[at:]))
    lines: list[str] = []
    assert RENDERERS.get(OutputFormat.JSON)(audit(request, observer=lines.append)) == plain
    assert lines.index("ranges") == lines.index("per-layer bounds") + 1
    assert len(seen) == 1 and seen[0][0] > 0 and not seen[0][1]

    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    keys = list(audit(request).timings)
    assert keys.index("ranges") == keys.index("layer_bounds") + 1
