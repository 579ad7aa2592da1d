"""The cache key's view of a request: every field that can change the analysis, and no policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from stabaudit.engine import _NOT_IN_KEY, POLICY_FIELDS, AuditRequest, request_fingerprint
from stabaudit.report.gate import FailOn
from stabaudit.report.model import Severity, Waiver


def test_every_request_field_is_in_the_key_but_the_documented_few():
    fp = request_fingerprint(AuditRequest(path=Path("m.onnx")))
    fields = {f.name for f in dataclasses.fields(AuditRequest)}
    assert set(fp) - {"reproducible"} == fields - set(_NOT_IN_KEY) - set(POLICY_FIELDS)
    assert set(_NOT_IN_KEY) == {"path", "max_memory", "timeout_s"}
    assert set(POLICY_FIELDS) == {"thresholds", "severities", "fail_on", "baseline", "disabled", "waivers"}
    assert set(POLICY_FIELDS) <= fields


def test_analysis_settings_change_the_key():
    base = AuditRequest(path=Path("m.onnx"))
    fp = request_fingerprint(base)
    x = np.zeros((2, 3))
    changed = [
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, inputs=x),
        dataclasses.replace(base, budget_s=3.0),
        dataclasses.replace(base, method="product"),
        dataclasses.replace(base, eps=0.02),
        dataclasses.replace(base, input_shape=(1, 3)),
        dataclasses.replace(base, trust_torchscript=True),
        dataclasses.replace(base, arguments={"sr": 8000}),
    ]
    keys = [request_fingerprint(r) for r in changed]
    assert all(k != fp for k in keys)
    y = x.copy()
    y[0, 0] = 1e-300
    assert request_fingerprint(dataclasses.replace(base, inputs=y)) != keys[1]


def test_policy_and_limits_do_not_change_the_key():
    base = AuditRequest(path=Path("m.onnx"))
    fp = request_fingerprint(base)
    same = [
        dataclasses.replace(base, thresholds={"lipschitz": 2.0}),
        dataclasses.replace(base, severities={"SA101": Severity.WARNING}),
        dataclasses.replace(base, fail_on=FailOn.WARNING),
        dataclasses.replace(base, baseline={"schema_version": "1"}),
        dataclasses.replace(base, disabled=frozenset({"SA101"})),
        dataclasses.replace(base, waivers=(Waiver(check="SA101", reason="r"),)),
        dataclasses.replace(base, timeout_s=5.0, max_memory=1, path=Path("other.onnx")),
    ]
    assert all(request_fingerprint(r) == fp for r in same)
