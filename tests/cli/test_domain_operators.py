"""Models with operators that are Lipschitz only on a bounded domain: the audit completes (exit 0),
the global upper bound is none and names the operators, the lower bound is certified with a witness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from stabaudit.cli import app


def _gated(path: Path) -> Path:
    """y = (x * sigmoid(x W)) W2: a product of two variables (not x * sigmoid(x): no SiLU fusion),
    a log of a positive value, an erf and a LayerNorm (certified without a domain)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Sigmoid", ["h"], ["g"], name="gate"),
        helper.make_node("Mul", ["x", "g"], ["m"], name="gated"),
        helper.make_node("Log", ["g"], ["lg"], name="logg"),
        helper.make_node("Erf", ["m"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "lg"], ["s"], name="sum"),
        helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["ln"], name="norm", epsilon=1e-3),
        helper.make_node("MatMul", ["ln", "w2"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "w2"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "gamma"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_domain_operators_complete_with_a_certified_lower_bound(tmp_path: Path) -> None:
    model = _gated(tmp_path / "gated.onnx")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(model), "--budget", "0.5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "(no upper bound)" in result.output  # the summary line does not call a missing bound an estimate
    report = json.loads(out.read_text())
    lip = report["lipschitz"]
    assert lip["upper"] is None
    assert lip["lower"] is not None and lip["lower"] > 0.0 and lip["witness"] is not None
    notes = " ".join(n for m in lip["methods"] for n in m["notes"])
    assert "2 operators need a bounded input domain" in notes, notes
    assert "Mul 'gated'" in notes and "Log 'logg'" in notes and "'erf'" not in notes
    layers = {layer["name"]: layer["lipschitz"]["method"] for layer in report["layers"]}
    assert layers["gated"] == layers["logg"] == "needs-domain"
    assert layers["erf"] == "activation-constant" and layers["norm"] == "layer-norm"


def test_ops_marks_the_operators_that_need_a_domain() -> None:
    result = CliRunner().invoke(app, ["ops"])
    assert result.exit_code == 0
    assert "Mul*" in result.stdout and "Log*" in result.stdout and "Erf*" not in result.stdout
    assert "needs a bounded input domain" in result.stdout


def test_operators_that_need_a_domain_are_grouped_by_kind_in_the_notes(tmp_path: Path) -> None:
    """Five gated products in a chain: one group 'Mul x5 (why): three names and 2 more', not five notes."""
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for i in range(5):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"proj{i}"),
                  helper.make_node("Sigmoid", [f"h{i}"], [f"g{i}"], name=f"gate{i}"),
                  helper.make_node("Mul", [prev, f"g{i}"], [f"m{i}"], name=f"gated{i}")]
        prev = f"m{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "chain.onnx"))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(tmp_path / "chain.onnx"), "--budget", "0.2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    notes = [n for m in json.loads(out.read_text())["lipschitz"]["methods"] for n in m["notes"]
             if n.startswith("no finite global bound")]
    assert len(notes) == 1, notes
    assert "5 operators need a bounded input domain" in notes[0]
    assert "Mul x5 (" in notes[0] and "'gated0', 'gated1', 'gated2' and 2 more" in notes[0], notes[0]
    assert "'gated3'" not in notes[0]
