"""The cache never changes a certified figure: forged entries are recomputed, policy is re-applied."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import stabaudit.engine as engine
from stabaudit.cache import MAGIC, AnalysisCache, cache_key, encode_entry
from stabaudit.engine import Analysis, AuditRequest, audit, request_fingerprint
from stabaudit.report.gate import FailOn
from stabaudit.report.model import Severity, Status, Waiver
from stabaudit.report.serialize import report_to_dict

# y = W x with W = diag(3, 2): the exact Lipschitz constant (l2) is sigma_max(W) = 3
W = np.diag([3.0, 2.0]).astype(np.float32)
EXACT = 3.0


def _gemm(path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "diag",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A model, a cache, and a counter of the analyses actually run."""
    model = _gemm(tmp_path / "diag.onnx")
    cache = AnalysisCache(tmp_path / "cache", secret_path=tmp_path / "config" / "cache.key")
    calls: list[AuditRequest] = []
    real = engine.run_stages

    def counted(request, *args, **kwargs):
        calls.append(request)
        return real(request, *args, **kwargs)

    monkeypatch.setattr(engine, "run_stages", counted)
    request = AuditRequest(path=model, method="product", lower_budget_s=0.2)
    return request, cache, calls


def _sa101(report):
    return next(c for c in report.checks if c.id == "SA101")


def _certified_exact(report) -> None:
    # the certified bound is sound (>= 3) and tight up to its rounding margin
    assert report.lipschitz.certified
    assert EXACT <= report.lipschitz.upper <= EXACT * (1 + 1e-6)
    assert report.lipschitz.lower is not None and report.lipschitz.lower <= report.lipschitz.upper


def test_policy_changes_are_served_from_the_cache_without_analysis(setup):
    request, cache, calls = setup
    first = audit(request, cache=cache)
    assert len(calls) == 1
    _certified_exact(first)
    assert _sa101(first).status is Status.FAIL  # K <= 1 by default
    variants = {
        "threshold above": dataclasses.replace(request, thresholds={"lipschitz": 3.5}),
        "threshold below": dataclasses.replace(request, thresholds={"lipschitz": 2.5}),
        "severity": dataclasses.replace(request, severities={"SA101": Severity.ERROR}),
        # SA101 on its default threshold is informational: a warning gates at --fail-on warning
        "fail-on": dataclasses.replace(request, severities={"SA101": Severity.WARNING}, fail_on=FailOn.WARNING),
        "disabled": dataclasses.replace(request, disabled=frozenset({"SA101"})),
        "waiver": dataclasses.replace(request, waivers=(Waiver(check="SA101", reason="known"),)),
        "baseline": dataclasses.replace(request, baseline=report_to_dict(first)),
    }
    reports = {name: audit(r, cache=cache) for name, r in variants.items()}
    assert len(calls) == 1  # not one analysis more
    for report in reports.values():
        assert report.lipschitz == first.lipschitz and report.layers == first.layers
        assert set(report.timings) == {"cache", "checks", "total"} and report.timings["total"] < 1.0
        assert any("read from the cache" in n for n in report.notes)
    assert _sa101(reports["threshold above"]).status is Status.PASS
    assert _sa101(reports["threshold above"]).threshold == 3.5
    assert _sa101(reports["threshold below"]).status is Status.FAIL
    assert (_sa101(reports["severity"]).severity, reports["severity"].exit_code) == (Severity.ERROR, 1)
    assert reports["fail-on"].exit_code == 1 and first.exit_code == 0
    assert _sa101(reports["disabled"]).status is Status.SKIPPED
    assert _sa101(reports["waiver"]).waiver is not None
    # an analysis setting is a miss
    audit(dataclasses.replace(request, seed=1), cache=cache)
    assert len(calls) == 2


def _forgeries(cache: AnalysisCache, key: str) -> dict[str, bytes]:
    genuine = cache.path(key).read_bytes()
    head = len(MAGIC) + 32
    analysis = pickle.loads(genuine[head:])
    assert isinstance(analysis, Analysis)
    lying = dataclasses.replace(
        analysis, lipschitz=dataclasses.replace(analysis.lipschitz, upper=0.5, lower=0.4)
    )
    payload = pickle.dumps(lying, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        # what a writer of a shared cache could plant without the key
        "json": json.dumps({"cache_format": 1, "key": key, "report": {"lipschitz": {"upper": 0.5}}}).encode(),
        "old MAC": genuine[:head] + payload,
        "own key": encode_entry(b"attacker-key-of-32-bytes-long!!!", key, lying),
    }


@pytest.mark.parametrize("forgery", ["json", "old MAC", "own key"])
def test_a_forged_cache_entry_is_recomputed_and_replaced(setup, forgery: str):
    request, cache, calls = setup
    audit(request, cache=cache)
    key = cache_key(engine._sha256(request.path), request_fingerprint(request))
    assert cache.path(key).is_file()
    cache.path(key).write_bytes(_forgeries(cache, key)[forgery])
    report = audit(request, cache=cache)
    assert len(calls) == 2  # recomputed, never trusted
    _certified_exact(report)  # the true bound, not the planted 0.5
    assert _sa101(report).status is Status.FAIL
    assert not any("read from the cache" in n for n in report.notes)
    replaced = cache.get(key)  # and the entry is genuine again
    assert isinstance(replaced, Analysis) and replaced.lipschitz.upper == report.lipschitz.upper
