"""SA301 clarke.kinks, SA303 relu.dead and SA401 parameters.sensitivity: statuses and the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stabaudit.analyses.activations import ActivationResult, LayerUnits
from stabaudit.analyses.parameters import LayerSensitivity, ParameterResult
from stabaudit.analyses.samples import SampleEvidence, UniformDomain, values_of
from stabaudit.checks import CheckPolicy, Evidence, run_checks
from stabaudit.engine import AuditRequest, audit
from stabaudit.errors import UsageError
from stabaudit.report.model import (
    Equivalence,
    GlobalLipschitz,
    SampleSource,
    Severity,
    Status,
)
from stabaudit.report.serialize import report_from_dict, report_to_dict


def units(name: str, share: float, dead: int = 0) -> LayerUnits:
    return LayerUnits(layer=name, op="Relu", units=10, near_kink=int(share * 40), share=share, dead=dead)


def sens(name: str, bound: float | None, measured: float) -> LayerSensitivity:
    return LayerSensitivity(layer=name, op="Linear", bound=bound, measured=measured, input_norm=1.0, downstream=1.0, factor=1.0)


def evidence(sampled: SampleEvidence | None) -> Evidence:
    return Evidence(
        layers=(),
        lipschitz=GlobalLipschitz(upper=1.0, lower=0.5, upper_method="product", lower_method="search", certified=True, witness=None),
        product_upper=1.0,
        depth=1,
        nonfinite={},
        equivalence=Equivalence(reference="onnxruntime", max_abs_diff=0.0, tolerance=1e-5, passed=True, samples=4),
        operators=1,
        sampled=sampled,
    )


def findings(sampled: SampleEvidence | None, **policy: object) -> dict[str, object]:
    out = run_checks(evidence(sampled), CheckPolicy(**policy))  # type: ignore[arg-type]
    return {f.id: f for f in out if f.id in ("SA301", "SA303", "SA401")}


def sampled(layers=(), params=()) -> SampleEvidence:
    return SampleEvidence(
        count=4,
        source="file",
        activations=ActivationResult(samples=4, eps=0.01, layers=tuple(layers)),
        parameters=ParameterResult(samples=4, measured_samples=4, layers=tuple(params)),
    )


def test_without_samples_all_three_are_skipped():
    f = findings(None)
    assert {k: v.status for k, v in f.items()} == {k: Status.SKIPPED for k in ("SA301", "SA303", "SA401")}


def test_kinks_pass_and_fail_on_the_measured_share():
    f = findings(sampled([units("a", 0.05), units("b", 0.025)]))["SA301"]
    assert f.status is Status.PASS and f.severity is Severity.INFO  # 0.05 <= 0.05
    assert f.value == {"max_share": 0.05, "eps": 0.01, "samples": 4, "layers": {"a": 0.05, "b": 0.025}}
    f = findings(sampled([units("a", 0.075), units("b", 0.025)]))["SA301"]
    assert f.status is Status.FAIL and f.locations == ("a",)
    f = findings(sampled([units("a", 0.075)]), thresholds={"kinks": 0.1})["SA301"]
    assert f.status is Status.PASS and f.threshold == 0.1 and f.severity is Severity.ERROR
    assert findings(sampled([]))["SA301"].status is Status.SKIPPED  # no ReLU-type layer


def test_dead_units_are_information_by_default():
    f = findings(sampled([units("a", 0.0, dead=3), units("b", 0.0, dead=0)]))["SA303"]
    assert f.status is Status.FAIL and f.severity is Severity.INFO and f.locations == ("a",)
    assert f.value["dead"] == 3 and f.value["layers"]["a"] == {"dead": 3, "units": 10}
    assert findings(sampled([units("a", 0.0)]))["SA303"].status is Status.PASS
    raised = findings(sampled([units("a", 0.0, dead=1)]), severities={"SA303": Severity.WARNING})
    assert raised["SA303"].severity is Severity.WARNING


def test_parameter_sensitivity_statuses():
    params = [sens("fc1", 3.0, 2.0), sens("fc2", 1.5, 1.0)]
    f = findings(sampled(params=params))["SA401"]
    assert f.status is Status.PASS and f.severity is Severity.INFO and f.threshold is None
    assert f.value["layers"] == {"fc1": {"bound": 3.0, "measured": 2.0}, "fc2": {"bound": 1.5, "measured": 1.0}}
    by = {t: findings(sampled(params=params), thresholds={"param_sensitivity": t})["SA401"] for t in (3.0, 2.5, 1.5)}
    assert by[3.0].status is Status.PASS and by[3.0].severity is Severity.ERROR
    assert by[2.5].status is Status.INCONCLUSIVE and by[2.5].locations == ("fc1",)
    assert by[1.5].status is Status.FAIL and by[1.5].locations == ("fc1",)
    none = findings(sampled(params=[sens("fc1", None, 1.0)]), thresholds={"param_sensitivity": 5.0})
    assert none["SA401"].status is Status.INCONCLUSIVE


# ---- through the engine ------------------------------------------------------------------------
def relu_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((6, 2)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
        helper.make_node("Add", ["a", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v, k) for k, v in {"w1": w1, "b1": b1, "w2": w2}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def request(path, **kw) -> AuditRequest:
    return AuditRequest(path=path, method="product", lower_budget_s=0.2, budget_s=0.2, **kw)


def test_engine_draws_from_the_domain_and_reports_the_samples(tmp_path):
    path = relu_model(tmp_path)
    domain = UniformDomain(low=values_of(-1), high=values_of([1, 2, 3]))
    report = audit(request(path, domain=domain, sample_count=12, seed=5))
    info = report.samples
    assert info is not None and info.source is SampleSource.DOMAIN_UNIFORM
    assert (info.count, info.shape, info.seed, info.sha256) == (12, (1, 3), 5, None)
    assert [(p.name, p.values, p.shape) for p in info.domain] == [("low", (-1.0,), ()), ("high", (1.0, 2.0, 3.0), (3,))]
    status = {f.id: f.status for f in report.checks}
    assert status["SA301"] in (Status.PASS, Status.FAIL) and status["SA303"] in (Status.PASS, Status.FAIL)
    assert status["SA302"] is not Status.SKIPPED and status["SA401"] is Status.PASS
    sa401 = next(f for f in report.checks if f.id == "SA401")
    assert all(v["bound"] >= v["measured"] > 0 for v in sa401.value["layers"].values())
    data = report_to_dict(report)
    assert data["samples"]["source"] == "domain-uniform"
    assert report_to_dict(report_from_dict(json.loads(json.dumps(data)))) == data
    # the same seed gives the same samples, hence the same findings
    again = audit(request(path, domain=domain, sample_count=12, seed=5))
    assert [f.value for f in again.checks if f.id in ("SA301", "SA303", "SA401")] == [
        f.value for f in report.checks if f.id in ("SA301", "SA303", "SA401")
    ]


def test_engine_inputs_are_checked_against_the_model_shape(tmp_path):
    path = relu_model(tmp_path)
    report = audit(request(path, inputs=np.zeros((2, 3)), inputs_sha256="ab" * 32))
    assert report.samples is not None and report.samples.source is SampleSource.FILE
    assert report.samples.sha256 == "ab" * 32 and report.samples.shape == (1, 3)
    # all-zero inputs: the pre-activations are the bias b1, so the dead units are those with b1 <= 0
    rng = np.random.default_rng(0)
    rng.standard_normal((3, 6))
    b1 = rng.standard_normal(6).astype(np.float32)
    sa303 = next(f for f in report.checks if f.id == "SA303")
    assert 0 < int((b1 <= 0).sum()) < 6 and sa303.value["dead"] == int((b1 <= 0).sum())
    with pytest.raises(UsageError, match=r"samples of shape \[2, 4\] do not match the model's input shape \[1, 3\]"):
        audit(request(path, inputs=np.zeros((2, 4))))
    without = audit(request(path))
    assert without.samples is None
