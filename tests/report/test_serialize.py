"""report_from_dict inverts report_to_dict exactly (JSON level), with the model's types, and names
the key path of malformed data."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from stabaudit.report.model import (
    Equivalence,
    Finding,
    GlobalLipschitz,
    Layer,
    LayerLipschitz,
    MethodBound,
    ModelInfo,
    ProfileStep,
    Report,
    Severity,
    Status,
    ToolInfo,
    Waiver,
    Witness,
)
from stabaudit.report.serialize import report_from_dict, report_to_dict
from tests.report_factory import make_batch_report, make_report

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def json_round_trip(data: dict[str, Any]) -> dict[str, Any]:
    loaded = json.loads(json.dumps(data, allow_nan=False))
    assert isinstance(loaded, dict)
    return loaded


def variant_report() -> Report:
    """make_report() with a waived failure, a jacobian witness and non-finite floats."""
    base = make_report()
    waived = dataclasses.replace(
        base.checks[0],
        waiver=Waiver(check="SA101", reason="known wide model", expires="2030-01-01", model="m*.onnx"),
        value=[1.5, {"nested": [None, True, "x"]}],
        threshold={"max": 1.0},
    )
    return dataclasses.replace(
        base,
        equivalence=dataclasses.replace(base.equivalence, max_abs_diff=math.nan),
        lipschitz=dataclasses.replace(
            base.lipschitz,
            upper=math.inf,
            witness=Witness(x=(0.25, -1.0, 3.0), y=(), quotient=2.75, kind="jacobian"),
        ),
        checks=(waived, *base.checks[1:]),
        notes=("a note",),
        timings={"total": 0.5, "load": 0.125},
    )


def test_round_trip_of_the_factory_report_rebuilds_every_type():
    report = make_report()
    data = json_round_trip(report_to_dict(report))
    back = report_from_dict(data)
    # Every field but the catalogue (not serialized) comes back equal, types included.
    assert back == dataclasses.replace(report, rules=())
    assert report_to_dict(back) == data
    assert isinstance(back.tool, ToolInfo)
    assert isinstance(back.model, ModelInfo) and back.model.input_shape == (1, 4)
    assert isinstance(back.equivalence, Equivalence)
    assert all(isinstance(layer, Layer) and isinstance(layer.lipschitz, LayerLipschitz) for layer in back.layers)
    assert isinstance(back.layers, tuple)
    assert isinstance(back.lipschitz, GlobalLipschitz)
    assert back.lipschitz.witness == Witness(x=(0.0, 1.0), y=(0.5, 1.0), quotient=1.5, kind="pair")
    assert isinstance(back.lipschitz.witness.x, tuple)
    assert back.lipschitz.methods[1] == MethodBound(
        method="lipsdp-neuron", upper=None, certified=False, seconds=0.0,
        notes=("not a feedforward chain: residual Add",),
    )
    assert back.profile == (ProfileStep(layer="fc1", upper=2.5), ProfileStep(layer="conv", upper=3.125))
    first = back.checks[0]
    assert isinstance(first, Finding)
    assert first.status is Status.FAIL and first.severity is Severity.WARNING
    assert first.locations == ("fc1",) and first.waiver is None
    assert first.value == {"lower": 1.5, "upper": 3.125}
    assert back.rules == ()


def test_round_trip_of_a_waived_finding_a_jacobian_witness_and_non_finite_floats():
    report = variant_report()
    data = json_round_trip(report_to_dict(report))
    assert data["equivalence"]["max_abs_diff"] is None and data["lipschitz"]["upper"] is None
    back = report_from_dict(data)
    assert report_to_dict(back) == data
    assert json.dumps(report_to_dict(back), sort_keys=True) == json.dumps(data, sort_keys=True)
    assert back.checks[0].waiver == Waiver(
        check="SA101", reason="known wide model", expires="2030-01-01", model="m*.onnx"
    )
    assert back.checks[1].waiver is None
    assert back.checks[0].value == [1.5, {"nested": [None, True, "x"]}]
    assert back.checks[0].threshold == {"max": 1.0}
    assert back.lipschitz.witness == Witness(x=(0.25, -1.0, 3.0), y=(), quotient=2.75, kind="jacobian")
    assert back.equivalence.max_abs_diff is None  # null floats come back as None
    assert back.lipschitz.upper is None
    assert back.notes == ("a note",)
    assert back.timings == {"total": 0.5, "load": 0.125}


def test_integral_floats_written_as_ints_round_trip_as_json_text():
    data = json_round_trip(report_to_dict(make_report()))
    data["timings"]["total"] = 2  # another JSON writer may spell 2.0 as 2
    data["layers"][0]["seconds"] = 0
    back = report_from_dict(data)
    assert json.dumps(report_to_dict(back), sort_keys=True) == json.dumps(data, sort_keys=True)


def test_round_trip_of_every_report_of_a_batch():
    reports = [m for m in make_batch_report().models if isinstance(m, Report)]
    assert len(reports) == 2
    for report in reports:
        data = json_round_trip(report_to_dict(report))
        back = report_from_dict(data)
        assert back == dataclasses.replace(report, rules=())
        assert report_to_dict(back) == data


@pytest.fixture(scope="module")
def engine_report() -> Report:
    from stabaudit.engine import AuditRequest, audit

    return audit(AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2, budget_s=0.2))


def test_round_trip_of_a_real_engine_report(engine_report: Report):
    data = json_round_trip(report_to_dict(engine_report))
    back = report_from_dict(data)
    assert report_to_dict(back) == data
    assert back == dataclasses.replace(engine_report, rules=())
    assert back.model.sha256 == engine_report.model.sha256 and len(back.model.sha256) == 64
    assert len(back.layers) == len(engine_report.layers) > 0
    assert len(back.checks) == len(engine_report.checks) > 0
    assert all(isinstance(f.status, Status) and isinstance(f.severity, Severity) for f in back.checks)


def _mutate(path: tuple[str | int, ...], value: Any = None, *, delete: bool = False):
    def apply(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return apply


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (_mutate(("lipschitz", "methods", 0, "seconds"), delete=True), "report.lipschitz.methods[0].seconds: missing"),
        (_mutate(("model",), delete=True), "report.model: missing"),
        (_mutate(("model", "parameters"), "123"), "report.model.parameters: expected int, got str"),
        (_mutate(("model", "parameters"), True), "report.model.parameters: expected int, got bool"),
        (_mutate(("model", "input_shape"), "1,4"), "report.model.input_shape: expected a list, got str"),
        (_mutate(("model", "input_shape", 1), 4.0), "report.model.input_shape[1]: expected int, got float"),
        (_mutate(("checks", 1, "status"), "maybe"), "report.checks[1].status: 'maybe' is not one of"),
        (_mutate(("checks", 0, "severity"), None), "report.checks[0].severity: None is not one of"),
        (_mutate(("checks", 0, "severity"), ["error"]), "report.checks[0].severity: ['error'] is not one of"),
        (_mutate(("checks", 0, "waiver"), "yes"), "report.checks[0].waiver: expected an object, got str"),
        (_mutate(("checks", 0, "waiver"), {"check": "SA101"}), "report.checks[0].waiver.reason: missing"),
        (_mutate(("lipschitz", "witness", "x", 0), "0"), "report.lipschitz.witness.x[0]: expected a number, got str"),
        (_mutate(("lipschitz", "upper"), True), "report.lipschitz.upper: expected a number, got bool"),
        (_mutate(("equivalence", "passed"), 1), "report.equivalence.passed: expected bool, got int"),
        (_mutate(("timings", "total"), "fast"), "report.timings.total: expected a number, got str"),
        (_mutate(("layers",), {"fc1": {}}), "report.layers: expected a list, got dict"),
        (_mutate(("layers", 2, "extra"), 1), "report.layers[2]: unknown key(s) extra"),
        (_mutate(("rules",), []), "report: unknown key(s) rules"),
        (_mutate(("tool", "name"), None), "report.tool.name: expected str, got null"),
        (_mutate(("schema_version",), "2"), "report.schema_version: '2' is not supported"),
        (_mutate(("schema_version",), delete=True), "report.schema_version: missing"),
        (_mutate(("schema_version",), 1), "report.schema_version: 1 is not supported"),
    ],
)
def test_malformed_data_raises_value_error_with_the_key_path(mutation, message):
    data = json_round_trip(report_to_dict(make_report()))
    data["checks"][0]["waiver"] = {"check": "SA101", "reason": "r", "expires": "", "model": "*"}
    report_from_dict(copy.deepcopy(data))  # the unmutated data is valid
    mutation(data)
    with pytest.raises(ValueError) as info:
        report_from_dict(data)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("data", [[], "report", None, 3])
def test_a_non_object_is_rejected(data):
    with pytest.raises(ValueError, match=r"^report: expected an object"):
        report_from_dict(data)  # type: ignore[arg-type]


def test_the_additive_term_round_trips_and_is_absent_without_branch_switches():
    from stabaudit.report.model import Additive

    plain = report_to_dict(make_report())
    assert "additive" not in plain["lipschitz"]  # reports without a switch keep their JSON
    assert report_from_dict(json_round_trip(plain)).lipschitz.additive is None
    add = Additive(value=1.5e-8, certified=True, sources=("act", "act_1"), method="branch-switch-jumps")
    report = dataclasses.replace(make_report(), lipschitz=dataclasses.replace(make_report().lipschitz, additive=add))
    data = json_round_trip(report_to_dict(report))
    assert data["lipschitz"]["additive"] == {
        "value": 1.5e-8, "certified": True, "sources": ["act", "act_1"], "method": "branch-switch-jumps"
    }
    back = report_from_dict(data)
    assert back.lipschitz.additive == add and report_to_dict(back) == data
    data["lipschitz"]["additive"]["value"] = None  # an unbounded term is written as null
    assert report_from_dict(data).lipschitz.additive.value is None  # type: ignore[union-attr]
