"""Integer and bool inputs held at values: the audit starts where the input becomes real (an
embedding Gather, a Cast to float) or at a tensor named by --from; --input-shape NAME=dims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.errors import ModelLoadError
from stabaudit.loaders.onnx import load_onnx

runner = CliRunner()
RNG = np.random.default_rng(1)


def _save(path: Path, nodes: list, inputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _array(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def embedding_model(path: Path, seq: str | int = "seq") -> Path:
    """ids (int64) -> Gather of a [50, 8] table, times the bool mask (Cast, Unsqueeze) -> MLP."""
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axes"], ["mu"]),
        helper.make_node("Mul", ["e", "mu"], ["em"]),
        helper.make_node("MatMul", ["em", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq]),
              helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", seq])]
    inits = [_array("emb", (50, 8)), _array("W", (8, 4)), _array("b", (4,)),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    return _save(path, nodes, inputs, inits)


def from_model(path: Path) -> Path:
    """x -> MatMul -> Sin (the part to cut) -> MatMul -> Tanh."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Sin", ["h"], ["s"]),
             helper.make_node("MatMul", ["s", "W2"], ["z"]), helper.make_node("Tanh", ["z"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])]
    return _save(path, nodes, inputs, [_array("W1", (6, 5)), _array("W2", (5, 3))])


def test_embedding_start_and_held_values(tmp_path: Path) -> None:
    loaded = load_onnx(embedding_model(tmp_path / "m.onnx"), input_shapes={"ids": (1, 5)})
    assert [(s.name, s.shape) for s in loaded.graph.inputs] == [("e", (1, 5, 8))]
    assert "embedding lookup" in loaded.start["e"] and "'emb'" in loaded.start["e"]
    assert "[0, 50)" in loaded.held["ids"] and "true" in loaded.held["mask"]
    assert any("fixed to [1, 5] by the dims another input's --input-shape gives" in n for n in loaded.notes)
    assert loaded.reference_at is not None
    feeds, outputs = loaded.reference_at(np.random.default_rng(0))
    assert set(feeds) == {"e"} and feeds["e"].shape == (1, 5, 8) and outputs[0].shape == (1, 5, 4)


def test_embedding_batch_dim_is_proved(tmp_path: Path) -> None:
    loaded = load_onnx(embedding_model(tmp_path / "m.onnx", seq=5))
    assert loaded.graph.inputs[0].shape == (1, 5, 8)
    assert any("no operator mixes samples" in n for n in loaded.notes)


def test_unknown_sequence_dim_names_the_input(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="--input-shape ids="):
        load_onnx(embedding_model(tmp_path / "m.onnx"))


def test_input_shape_of_an_unknown_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'nope'.*inputs: 'ids', 'mask'"):
        load_onnx(embedding_model(tmp_path / "m.onnx"), input_shapes={"nope": (1, 5)})


def test_from_cuts_upstream(tmp_path: Path) -> None:
    loaded = load_onnx(from_model(tmp_path / "m.onnx"), start="s")
    assert [(s.name, s.shape) for s in loaded.graph.inputs] == [("s", (1, 5))]
    assert "--from" in loaded.start["s"] and "standard-normal" in loaded.held["x"]
    assert not any(n.op.type.value == "Sin" for n in loaded.graph.nodes if hasattr(n.op.type, "value"))


@pytest.mark.parametrize(("start", "message"), [("nope", "no node of the model computes"),
                                                ("y", "is a graph output")])
def test_from_refusals(tmp_path: Path, start: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_onnx(from_model(tmp_path / "m.onnx"), start=start)


def _check(argv: list[str], out: Path) -> dict:
    result = runner.invoke(app, ["check", *argv, "--budget", "1", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_cli_embedding_audit_end_to_end(tmp_path: Path) -> None:
    report = _check([str(embedding_model(tmp_path / "m.onnx")), "--input-shape", "ids=1,5"], tmp_path / "r.json")
    assert report["equivalence"]["passed"]
    assert list(report["model"]["start"]) == ["e"] and set(report["model"]["held"]) == {"ids", "mask"}
    assert report["model"]["input_shape"] == [1, 5, 8]
    assert any("the audit starts from tensor 'e'" in n for n in report["notes"])


def test_cli_from_audit_end_to_end(tmp_path: Path) -> None:
    report = _check([str(from_model(tmp_path / "m.onnx")), "--from", "s"], tmp_path / "r.json")
    assert report["equivalence"]["passed"] and list(report["model"]["start"]) == ["s"]


def test_config_from_and_named_input_shape(tmp_path: Path) -> None:
    from_model(tmp_path / "f.onnx")
    embedding_model(tmp_path / "e.onnx")
    config = tmp_path / "stabaudit.yaml"
    config.write_text("models:\n  - path: f.onnx\n    from: s\n  - path: e.onnx\n    input_shape: {ids: [1, 5]}\n")
    report = _check([str(tmp_path / "f.onnx"), "--config", str(config)], tmp_path / "f.json")
    assert list(report["model"]["start"]) == ["s"]
    report = _check([str(tmp_path / "e.onnx"), "--config", str(config)], tmp_path / "e.json")
    assert list(report["model"]["start"]) == ["e"]


def test_integer_input_without_a_start_exits_2(tmp_path: Path) -> None:
    nodes = [helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.INT32),
             helper.make_node("Add", ["x", "c"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
              helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
    path = _save(tmp_path / "m.onnx", nodes, inputs, [_array("c", (1, 3))])
    loaded = load_onnx(path)  # an integer input that nothing real depends on is held and folds away
    assert [s.name for s in loaded.graph.inputs] == ["x"] and loaded.held == {"n": "zeros"}
    assert loaded.reference({"x": np.zeros((1, 3), np.float32)})[0].shape == (1, 3)
    relu = [helper.make_node("Relu", ["n"], ["y"])]
    path = _save(tmp_path / "i.onnx", relu, [helper.make_tensor_value_info("n", TensorProto.INT64, [1, 3])], [])
    result = runner.invoke(app, ["check", str(path), "--budget", "1", "-o", str(tmp_path / "r.json"), "--quiet"])
    assert result.exit_code == 2 and "--from" in result.output


def test_one_hot_cast_is_the_start(tmp_path: Path) -> None:
    """int32 bytes -> Unsqueeze -> Equal(arange) -> Cast to float (a one-hot) -> MatMul -> Relu."""
    nodes = [helper.make_node("Unsqueeze", ["bytes", "axes"], ["u"]),
             helper.make_node("Equal", ["u", "classes"], ["eq"]),
             helper.make_node("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["onehot", "W"], ["h"]),
             helper.make_node("Relu", ["h"], ["y"])]
    inputs = [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", 6])]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.arange(4, dtype=np.int32), "classes"), _array("W", (4, 3))]
    path = _save(tmp_path / "m.onnx", nodes, inputs, inits)
    loaded = load_onnx(path)
    assert [(s.name, s.shape) for s in loaded.graph.inputs] == [("onehot", (1, 6, 4))]
    assert "Cast" in loaded.start["onehot"] and loaded.held == {"bytes": "zeros"}
    report = _check([str(path)], tmp_path / "r.json")
    assert report["equivalence"]["passed"] and list(report["model"]["start"]) == ["onehot"]


def two_input_model(path: Path) -> Path:
    """tanh(x W + z): x [2, 4] and z [2, 3] are both real inputs."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "z"], ["a"]),
             helper.make_node("Tanh", ["a"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 3])]
    return _save(path, nodes, inputs, [_array("W", (4, 3))])


def test_several_inputs_are_perturbed_jointly_or_only_those_named(tmp_path: Path) -> None:
    path = two_input_model(tmp_path / "m.onnx")
    shapes = ["--input-shape", "x=2,4", "--input-shape", "z=2,3"]
    both = _check([str(path), *shapes], tmp_path / "both.json")
    only = _check([str(path), *shapes, "--perturb", "x"], tmp_path / "only.json")
    assert "held" not in both["model"] and only["model"]["held"] == {"z": "seeded standard-normal values (not in --perturb)"}
    assert only["equivalence"]["passed"] and both["equivalence"]["passed"]
    assert only["lipschitz"]["upper"] < both["lipschitz"]["upper"]  # z's own gain 1 is no longer added
    with pytest.raises(ModelLoadError, match="--perturb names 'w'"):
        load_onnx(path, input_shapes={"x": (2, 4), "z": (2, 3)}, perturb=["w"])
    config = tmp_path / "stabaudit.yaml"
    config.write_text("input_shape: {x: [2, 4], z: [2, 3]}\nperturb: [x]\n")
    assert _check([str(path), "--config", str(config)], tmp_path / "c.json")["model"]["held"] == only["model"]["held"]


def test_an_output_constant_once_inputs_are_held_drops_out(tmp_path: Path) -> None:
    """Outputs (mask_out, y): mask_out is Not(mask), a constant of the audit; it leaves the audited
    graph, y is compared with onnxruntime by name (positionally it would meet mask_out)."""
    from stabaudit.analyses.equivalence import check_equivalence

    nodes = [helper.make_node("Not", ["mask"], ["mask_out"]),
             helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5]),
              helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 5])]
    outputs = [helper.make_tensor_value_info("mask_out", TensorProto.BOOL, None),
               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [_array("emb", (50, 8)), _array("W", (8, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    loaded = load_onnx(tmp_path / "m.onnx")
    assert loaded.graph.outputs == ("y",) and loaded.output_names == ("y",)
    assert loaded.reference_outputs == ("mask_out", "y")
    assert any("'mask_out' are constant once the input(s) 'ids', 'mask' are held" in n for n in loaded.notes)
    result = check_equivalence(loaded, seed=0)
    assert result.passed and result.max_abs_diff < 1e-5
    assert any("'mask_out' not compared" in n for n in result.notes)


def test_every_output_constant_is_still_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Not", ["mask"], ["y"])]
    inputs = [helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 5])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.BOOL, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="graph output 'y' is a constant once"):
        load_onnx(tmp_path / "m.onnx")


def test_cli_and_config_to_end_the_audit_before_post_processing(tmp_path: Path) -> None:
    from tests.loaders.test_onnx import _detector

    path = _detector(tmp_path)
    report = _check([str(path), "--to", "boxes,scores"], tmp_path / "r.json")
    assert report["model"]["end"] == ["boxes", "scores"] and report["equivalence"]["passed"]
    assert report["lipschitz"]["upper"] is not None and report["lipschitz"]["lower"] is not None
    config = tmp_path / "stabaudit.yaml"
    config.write_text("models:\n  - path: det.onnx\n    to: [scores]\n")
    report = _check([str(path), "--config", str(config)], tmp_path / "c.json")
    assert report["model"]["end"] == ["scores"]
    bare = runner.invoke(app, ["check", str(path), "--budget", "1", "-o", str(tmp_path / "b.json"), "--quiet"])
    assert bare.exit_code == 2 and "NonMaxSuppression" in bare.output
    empty = runner.invoke(app, ["check", str(path), "--to", " , ", "-o", str(tmp_path / "e.json"), "--quiet"])
    assert empty.exit_code == 2 and "--to" in empty.output and not (tmp_path / "e.json").exists()
