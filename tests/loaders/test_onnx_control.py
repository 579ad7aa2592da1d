"""ONNX If on a condition that is a constant of the audit (a held input's value given by --arg, a
shape): the taken branch is inlined and runs as onnxruntime runs the model; a condition on the
audited values is refused; --arg gives integer and bool inputs their values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.errors import ModelLoadError, UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.loaders import load_model
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.test_onnx import rand

F = TensorProto.FLOAT


def _graph(name: str, nodes: list[Any], outputs: list[str], params: dict[str, np.ndarray] | None = None) -> Any:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, F, None) for o in outputs],
                             [numpy_helper.from_array(v, k) for k, v in (params or {}).items()])


def _save(tmp_path: Path, nodes: list[Any], inputs: dict[str, tuple[int, list[int]]], outputs: list[str],
          params: dict[str, np.ndarray] | None = None) -> Path:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in (params or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


W1, W2 = rand(6, 4, seed=1), rand(3, 4, seed=2)


def _rate_switch(tmp_path: Path) -> Path:
    """y = relu(x W1^T) at sr == 16000, else (x W2^T) * 2; both branches read x and the outer h."""
    then = _graph("then", [helper.make_node("MatMul", ["h", "w1t"], ["t"]), helper.make_node("Relu", ["t"], ["out"])],
                  ["out"], {"w1t": W1.T.copy()})
    other = _graph("else", [helper.make_node("MatMul", ["h", "w2t"], ["t"]),
                            helper.make_node("Mul", ["t", "two"], ["out2"])], ["out2"],
                   {"w2t": W2.T.copy(), "two": np.float32(2.0)})
    nodes = [helper.make_node("Tanh", ["x"], ["h"]), helper.make_node("Equal", ["sr", "rate"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return _save(tmp_path, nodes, {"x": (F, [1, 4]), "sr": (TensorProto.INT64, [])}, ["y"],
                 {"rate": np.int64(16000)})


def _agree(path: Path, lm: Any, feeds: dict[str, np.ndarray]) -> None:
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    xs = [feeds[s.name] for s in lm.graph.inputs]
    got = Executor(lm.graph, dtype=torch.float64)(*(torch.from_numpy(x.astype(np.float64)) for x in xs))
    got = got if isinstance(got, (list, tuple)) else [got]
    for ours, ref in zip(got, want, strict=True):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rate", "width"), [("16000", 6), ("8000", 3), (16000, 6)])
def test_the_branch_a_given_input_selects_is_inlined(tmp_path: Path, rate: Any, width: int) -> None:
    path = _rate_switch(tmp_path)
    lm = load_model(path, arguments={"sr": rate})
    assert [s.name for s in lm.graph.inputs] == ["x"]
    assert lm.graph.shapes[lm.graph.outputs[0]] == (1, width)
    x = rand(1, 4, seed=5)
    _agree(path, lm, {"x": x, "sr": np.asarray(int(rate), np.int64)})
    taken = "then" if width == 6 else "else"
    assert any(f"1 If node(s) whose condition is a constant of the audit inlined ({taken} branch x1)" in n
               for n in lm.notes), lm.notes
    assert any(f"input 'sr' [] held at {rate} (given by --arg)" in n for n in lm.notes), lm.notes


def test_without_a_value_the_seeded_one_selects_and_the_note_says_so(tmp_path: Path) -> None:
    lm = load_onnx(_rate_switch(tmp_path))
    assert lm.graph.shapes[lm.graph.outputs[0]] == (1, 3)  # sr held at 0: the else branch
    assert any("input 'sr' [] held at zeros" in n for n in lm.notes)


def test_a_condition_on_the_audited_values_is_refused(tmp_path: Path) -> None:
    then = _graph("then", [helper.make_node("Relu", ["x"], ["a"])], ["a"])
    other = _graph("else", [helper.make_node("Neg", ["x"], ["b"])], ["b"])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["y"], ["z"])]
    path = _save(tmp_path, nodes, {"x": (F, [1, 4])}, ["z"], {"zero": np.float32(0.0)})
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(path)
    assert info.value.counts == {"If(on a condition computed from the values of the audited inputs)": 1}


def test_nested_branches_with_clashing_names_and_a_value_read_only_inside(tmp_path: Path) -> None:
    """Two Ifs whose branches define the same names (t, out), one with an If nested in its branch;
    the LSTM's last state is read only inside a branch (it must still be computed)."""
    inner_then = _graph("it", [helper.make_node("Mul", ["yh", "k"], ["u"]), helper.make_node("Relu", ["u"], ["v"])],
                        ["v"], {"k": np.float32(3.0)})
    inner_else = _graph("ie", [helper.make_node("Neg", ["yh"], ["v"])], ["v"])
    outer_then = _graph("ot", [helper.make_node("Not", ["c"], ["nc"]),
                               helper.make_node("If", ["nc"], ["t"], then_branch=inner_then, else_branch=inner_else),
                               helper.make_node("Tanh", ["t"], ["out"])], ["out"])
    outer_else = _graph("oe", [helper.make_node("Sigmoid", ["yh"], ["out"])], ["out"])
    second_then = _graph("st", [helper.make_node("Add", ["x2", "x2"], ["t"]), helper.make_node("Abs", ["t"], ["out"])],
                         ["out"])
    second_else = _graph("se", [helper.make_node("Identity", ["x2"], ["out"])], ["out"])
    g = 4
    nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["", "yh"], hidden_size=3),
             helper.make_node("Equal", ["mode", "one"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=outer_else),
             helper.make_node("Reshape", ["x", "flat"], ["x2"]),
             helper.make_node("If", ["c"], ["y2"], then_branch=second_then, else_branch=second_else)]
    params = {"w": rand(1, g * 3, 2, seed=3), "r": rand(1, g * 3, 3, seed=4), "one": np.int64(1),
              "flat": np.array([1, -1], np.int64)}
    path = _save(tmp_path, nodes, {"x": (F, [5, 1, 2]), "mode": (TensorProto.INT64, [])}, ["y", "y2"], params)
    for mode in (1, 0):
        lm = load_model(path, arguments={"mode": str(mode)})
        _agree(path, lm, {"x": rand(5, 1, 2, seed=6), "mode": np.asarray(mode, np.int64)})
    assert any("3 If node(s)" in n and "else branch x1" in n and "then branch x2" in n
               for n in load_model(path, arguments={"mode": "1"}).notes)


def test_patterns_inside_a_branch_are_fused(tmp_path: Path) -> None:
    """The exact GELU written out (x * 0.5 * (1 + erf(x / sqrt 2))) inside the taken branch: fused into
    Gelu, as at the graph's own level."""
    then = _graph("then", [helper.make_node("Div", ["x", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                           helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
                           helper.make_node("Mul", ["m", "half"], ["out"])], ["out"],
                  {"s2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)})
    other = _graph("else", [helper.make_node("Relu", ["x"], ["out2"])], ["out2"])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)]
    path = _save(tmp_path, nodes, {"x": (F, [1, 4]), "flag": (TensorProto.BOOL, [])}, ["y"])
    lm = load_model(path, arguments={"flag": "true"})
    assert [n.op.type.value for n in lm.graph.nodes] == ["Gelu"]
    assert any("fused inside If branches: Gelu" in n for n in lm.notes), lm.notes
    _agree(path, lm, {"x": rand(1, 4, seed=2), "flag": np.asarray(True)})


@pytest.mark.parametrize(("arguments", "message"), [
    ({"rate": "16000"}, "--arg rate: not an input; --arg gives the values of the model's integer and bool inputs: 'sr'"),
    ({"x": "1"}, "--arg x: a floating-point input (--perturb NAME holds the others)"),
    ({"sr": "fast"}, "--arg sr: 'fast' is not a number"),
    ({"sr": "1.5"}, "--arg sr: '1.5' is not an integer"),
    ({"sr": "1,2"}, "--arg sr: 2 value(s) do not fit the input's shape []"),
    ({"sr": "1e30"}, "--arg sr: '1e30' is outside the range of int64"),
])
def test_bad_values_are_clear_errors(tmp_path: Path, arguments: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(_rate_switch(tmp_path), arguments=arguments)
    assert message in str(info.value)
