"""The cache key's view of a request: every field that can change a report is in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from stabaudit.engine import _NOT_IN_KEY, AuditRequest, request_fingerprint
from stabaudit.report.model import Waiver


def test_every_request_field_is_in_the_key_but_the_documented_few():
    fp = request_fingerprint(AuditRequest(path=Path("m.onnx")), "2026-01-01")
    fields = {f.name for f in dataclasses.fields(AuditRequest)}
    assert set(fp) - {"today", "reproducible"} == fields - set(_NOT_IN_KEY)
    assert set(_NOT_IN_KEY) == {"path", "max_memory", "timeout_s"}


def test_values_change_the_key():
    base = AuditRequest(path=Path("m.onnx"))
    fp = request_fingerprint(base, "2026-01-01")
    x = np.zeros((2, 3))
    changed = [
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, thresholds={"lipschitz": 2.0}),
        dataclasses.replace(base, inputs=x),
        dataclasses.replace(base, disabled=frozenset({"SA101"})),
        dataclasses.replace(base, waivers=(Waiver(check="SA101", reason="r"),)),
    ]
    keys = [request_fingerprint(r, "2026-01-01") for r in changed]
    assert all(k != fp for k in keys)
    y = x.copy()
    y[0, 0] = 1e-300
    assert request_fingerprint(dataclasses.replace(base, inputs=y), "d") != keys[2]
    # the date matters only with waivers; the memory budget and timeout never
    assert request_fingerprint(base, "2030-01-01") == fp
    assert request_fingerprint(changed[4], "2030-01-01") != keys[4]
    assert request_fingerprint(dataclasses.replace(base, timeout_s=5.0, max_memory=1), "x") == fp
