"""Whole-audit known answers of THEORY.md on networks whose constants are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.engine import AuditRequest, audit


def tanh_net(c: float, depth: int, n: int) -> onnx.ModelProto:
    """x -> tanh(c I x) repeated ``depth`` times: every layer gain is c * Lip(tanh) = c, and at
    x = 0 the Jacobian is c^L I, so K = c^L exactly and Lambda = (1/L) sum log c = log c."""
    nodes, inits, prev = [], [], "x"
    for k in range(depth):
        inits.append(numpy_helper.from_array((c * np.eye(n)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [f"z{k}"], name=f"fc{k}"))
        nodes.append(helper.make_node("Tanh", [f"z{k}"], [f"h{k}"], name=f"tanh{k}"))
        prev = f"h{k}"
    graph = helper.make_graph(
        nodes,
        "tanh_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("c", "depth"), [(1.5, 3), (0.5, 4)])
def test_scaled_identity_tanh_networks(tmp_path, c, depth):
    path = tmp_path / "tanh.onnx"
    onnx.save(tanh_net(c, depth, 4), path)
    report = audit(AuditRequest(path=path, lower_budget_s=1.0, budget_s=1.0))
    k = c**depth
    lip = report.lipschitz
    assert lip.certified and k <= lip.upper <= k * (1 + 1e-9)
    assert lip.lower is not None and 0.99 * k <= lip.lower <= k
    sa103 = next(f for f in report.checks if f.id == "SA103")
    assert sa103.value["upper"] == pytest.approx(math.log(c), rel=1e-9, abs=1e-12)
    assert sa103.value["lower"] == pytest.approx(math.log(c), rel=1e-7)
    # the depth profile: c, c^2, ..., c^L after each linear layer (tanh keeps it)
    linear_steps = [p.upper for p in report.profile if p.layer.startswith("fc")]
    assert linear_steps == pytest.approx([c ** (k + 1) for k in range(depth)], rel=1e-9)
    # expansive (c > 1) fails SA101 and SA103 on proved lower bounds, contractive passes them
    status = {f.id: f.status.value for f in report.checks}
    expected = "fail" if c > 1 else "pass"
    assert status["SA101"] == expected and status["SA103"] == expected
