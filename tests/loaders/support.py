"""Helpers of the loader tests: a one-input ONNX file, a loaded ONNX model against onnxruntime at a
seeded input, the certified bound of a loaded linear map against its exact norm (its matrix built
column by column with the executor), and an audit over a domain of a model without a global
bound."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stabaudit.analyses.composition import rule_bounds
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx


def check_onnx(path: Path, shape: tuple[int, ...], *, tol: float = 1e-5, seed: int = 1) -> LoadedModel:
    """Loaded, and the engine's float64 forward pass within ``tol`` (absolute and relative) of
    onnxruntime's on a standard normal input of ``shape`` (the graph's input "x")."""
    lm = load_onnx(path)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ours = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))
    ref = lm.reference({"x": x})
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(o.detach().numpy(), r, rtol=tol, atol=tol)
    return lm


def bound_and_norm(lm: LoadedModel, shape: tuple[int, ...]) -> tuple[float, float]:
    """(the product of the certified per-node bounds, the exact norm of the graph's map), for a
    graph that is linear in its one input of ``shape``."""
    bound = math.prod(b.upper.value for b in rule_bounds(lm.graph).values() if b.upper is not None)
    n = math.prod(shape)
    run = Executor(lm.graph, dtype=torch.float64)
    columns = [run(torch.eye(n, dtype=torch.float64)[i].reshape(shape))[0].reshape(-1).numpy() for i in range(n)]
    return bound, float(np.linalg.norm(np.stack(columns, axis=1), 2))


def exact_norm(lm: LoadedModel, shape: tuple[int, ...], *, tight: bool = True, rel: float = 1e-6) -> float:
    """The certified bound: at least the map's exact norm, and equal to it (within ``rel``) when
    ``tight``."""
    bound, exact = bound_and_norm(lm, shape)
    assert exact <= bound * (1 + 1e-9)
    if tight:
        assert bound == pytest.approx(exact, rel=rel)
    return bound


def save_onnx(tmp_path: Path, nodes: Sequence[Any], consts: dict[str, np.ndarray], shape: tuple[int, ...], *,
              opset: int = 18, outputs: Sequence[str] = ("y",), ir_version: int = 9,
              domains: Sequence[tuple[str, int]] = ()) -> Path:
    """One float input "x" of ``shape``, ``nodes`` writing ``outputs``, ``consts`` as initializers;
    ``domains``: operator sets beside the default one (e.g. com.microsoft)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        list(nodes), "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def needs_a_domain(path: Path, tmp_path: Path, operator: str) -> dict[str, Any]:
    """The JSON report of ``stabaudit check --domain -1,1`` (exit 0): no global upper bound, the
    notes name ``operator``, and over the box a certified bound at least the lower end."""
    import json

    from typer.testing import CliRunner

    from stabaudit.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(path), "--budget", "0.3", "--domain", "-1,1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["lipschitz"]["upper"] is None
    notes = " ".join(n for m in report["lipschitz"]["methods"] for n in m["notes"])
    assert operator in notes, notes
    domain = report["domain_lipschitz"]
    assert 0.0 < domain["lower"] <= domain["upper"] < math.inf
    return report
