"""The ONNX loader on ai.onnx.ml linear models (LinearClassifier, LinearRegressor, Normalizer, Scaler,
ZipMap): the engine's forward against onnxruntime, exact bounds for the linear ones, non-real outputs
(class labels, ZipMap's maps) left out with a note, refusals with their reasons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.errors import ModelLoadError, UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.test_onnx import rand, run_both

ML = "ai.onnx.ml"
C, E = 5, 3  # features, classes
W = rand(E, C, seed=11, scale=2.0)
B = rand(E, seed=12)
ZIP_TYPE = helper.make_sequence_type_proto(
    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))


def ml(op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), list(outputs), domain=ML, name=f"{op.lower()}_{outputs[-1]}", **attrs)


def save(tmp_path: Path, nodes: Sequence[Any], outputs: Sequence[Any], *, ml_opset: int = 3,
         features: int = C) -> Path:
    """x [N, features] float; ``outputs`` are names (float tensors) or ValueInfoProtos."""
    graph = helper.make_graph(
        list(nodes), "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [o if not isinstance(o, str) else helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, ml_opset)])
    model.ir_version = 8
    path = tmp_path / "ml.onnx"
    onnx.save(model, path)
    return path


def classifier(post: str = "NONE", weight: np.ndarray = W, bias: np.ndarray = B,
               labels: Sequence[int] = (0, 1, 2), outputs: Sequence[str] = ("label", "y")) -> Any:
    return ml("LinearClassifier", ["x"], outputs, coefficients=weight.reshape(-1).tolist(),
              intercepts=bias.reshape(-1).tolist(), classlabels_ints=list(labels), post_transform=post)


def assert_matches_onnxruntime(path: Path) -> Any:
    lm = load_onnx(path, input_shape=(4, C))
    ours, theirs = run_both(lm)
    paired = dict(zip(lm.reference_outputs, theirs, strict=True)) if lm.output_names else None
    expected = [paired[n] for n in lm.output_names] if paired is not None else theirs
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return lm


def certified_upper(path: Path, input_shape: tuple[int, ...] = (1, C)) -> float:
    from stabaudit.api import audit

    report = audit(path, input_shape=input_shape, method="product", budget=0.05, seed=0)
    assert report.lipschitz.certified
    upper = report.lipschitz.upper
    assert upper is not None
    return float(upper)


def assert_exact(upper: float, truth: float) -> None:
    """The certified bound is sound and equals the exact norm within 1e-6 (relative)."""
    assert truth <= upper <= truth * (1 + 1e-6), (upper, truth)


# ---- forward against onnxruntime ------------------------------------------------------------------------
FORWARD: list[tuple[str, list[Any], list[type[O.Op]]]] = [
    ("classifier_none", [classifier("NONE")], [O.Linear]),
    ("classifier_logistic", [classifier("LOGISTIC")], [O.Linear, O.Sigmoid]),
    ("classifier_softmax", [classifier("SOFTMAX")], [O.Linear, O.Softmax]),
    ("classifier_binary_none", [classifier("NONE", W[:1], B[:1], (3, 7))], [O.Linear]),
    ("classifier_binary_logistic", [classifier("LOGISTIC", W[:1], B[:1], (3, 7))], [O.Linear, O.Sigmoid]),
    ("regressor_none", [ml("LinearRegressor", ["x"], ["y"], coefficients=W.reshape(-1).tolist(),
                           intercepts=B.tolist(), targets=E)], [O.Linear]),
    ("regressor_one_target_no_intercepts", [ml("LinearRegressor", ["x"], ["y"], coefficients=W[0].tolist())],
     [O.Linear]),
    ("regressor_softmax", [ml("LinearRegressor", ["x"], ["y"], coefficients=W.reshape(-1).tolist(),
                              intercepts=B.tolist(), targets=E, post_transform="SOFTMAX")], [O.Linear, O.Softmax]),
    ("regressor_logistic", [ml("LinearRegressor", ["x"], ["y"], coefficients=W.reshape(-1).tolist(),
                               intercepts=B.tolist(), targets=E, post_transform="LOGISTIC")], [O.Linear, O.Sigmoid]),
    ("scaler", [ml("Scaler", ["x"], ["y"], offset=rand(C, seed=13).tolist(), scale=rand(C, seed=14).tolist())],
     [O.Affine]),
    ("scaler_one_value", [ml("Scaler", ["x"], ["y"], offset=[0.5], scale=[-3.0])], [O.Affine]),
    ("normalizer_max", [ml("Normalizer", ["x"], ["y"], norm="MAX")], [O.ReduceMax, O.Div]),
    ("normalizer_l1", [ml("Normalizer", ["x"], ["y"], norm="L1")], [O.ReduceL1, O.Div]),
    ("normalizer_l2", [ml("Normalizer", ["x"], ["y"], norm="L2")], [O.ReduceL2, O.Div]),
]


@pytest.mark.parametrize(("nodes", "ops"), [c[1:] for c in FORWARD], ids=[c[0] for c in FORWARD])
def test_ml_operator_matches_onnxruntime(tmp_path: Path, nodes: list[Any], ops: list[type[O.Op]]) -> None:
    lm = assert_matches_onnxruntime(save(tmp_path, nodes, ["y"]))
    assert [type(n.op) for n in lm.graph.nodes] == ops
    assert lm.parameters == sum(len(a.floats) for n in nodes for a in n.attribute)


def test_binary_classifier_writes_both_columns(tmp_path: Path) -> None:
    """One row of scores s with two labels: onnxruntime's [1 - s, s] (NONE), a Linear by [-w; w]."""
    lm = load_onnx(save(tmp_path, [classifier("NONE", W[:1], B[:1], (3, 7))], ["y"]), input_shape=(2, C))
    (linear,) = [n.op for n in lm.graph.nodes]
    assert isinstance(linear, O.Linear)
    np.testing.assert_array_equal(linear.weight, np.concatenate([-W[:1], W[:1]]))
    np.testing.assert_allclose(linear.bias, [1.0 - float(B[0]), float(B[0])])


@pytest.mark.parametrize("dims", [(2, 4), (3, 2), (3, 0)], ids=["cut_pad", "whole_cut", "whole_none"])
def test_feature_vectorizer_matches_onnxruntime(tmp_path: Path, dims: tuple[int, int]) -> None:
    """Two inputs [N, 3] and [N, 2] side by side, cut or padded with zeros to ``inputdimensions``."""
    graph = helper.make_graph(
        [ml("FeatureVectorizer", ["a", "b"], ["v"], inputdimensions=list(dims)),
         ml("LinearRegressor", ["v"], ["y"], coefficients=rand(sum(dims), seed=41).tolist())], "fv",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fv.onnx")
    lm = load_onnx(tmp_path / "fv.onnx", input_shapes={"a": (4, 3), "b": (4, 2)})
    ours, theirs = run_both(lm)
    assert theirs[1].shape == (4, sum(dims))
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert {type(n.op) for n in lm.graph.nodes} >= {O.Concat, O.Linear}


def test_imputer_of_nan_is_the_identity_on_finite_inputs(tmp_path: Path) -> None:
    """Imputer with NaN as the replaced value: a Where(IsNaN) that the engine runs as the model does
    (NaN entries imputed), of norm 1 on finite inputs: with the outputs (x, w . x), exactly ||[I; w]||,
    sqrt(1 + ||w||^2)."""
    imputed = rand(C, seed=51)
    weight = rand(1, C, seed=52)
    nodes = [ml("Imputer", ["x"], ["i"], imputed_value_floats=imputed.tolist(), replaced_value_float=float("nan")),
             ml("LinearRegressor", ["i"], ["y"], coefficients=weight.reshape(-1).tolist())]
    path = save(tmp_path, nodes, ["i", "y"])
    lm = assert_matches_onnxruntime(path)
    x = rand(2, C, seed=53)
    x[0, 1] = x[1, 4] = np.nan
    import torch

    from stabaudit.ir.executor import Executor

    ours = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))
    theirs = lm.reference({"x": x})
    np.testing.assert_allclose(ours[0].numpy(), theirs[0], rtol=1e-6)
    assert theirs[0][0, 1] == imputed[1] and theirs[0][1, 4] == imputed[4]
    truth = float(np.linalg.norm(np.concatenate([np.eye(C), weight.astype(np.float64)]), 2))
    assert truth == pytest.approx(np.sqrt(1 + np.sum(weight.astype(np.float64) ** 2)), rel=1e-12)
    assert_exact(certified_upper(path), truth)


def test_imputer_of_a_finite_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, [ml("Imputer", ["x"], ["y"], imputed_value_floats=[1.0])], ["y"]))
    assert info.value.counts == {f"{ML}.Imputer(replaced_value_float 0: a jump at that value; NaN only)": 1}


# ---- exact bounds for the linear maps ---------------------------------------------------------------------
def test_classifier_bound_is_the_spectral_norm(tmp_path: Path) -> None:
    truth = float(np.linalg.norm(W.astype(np.float64), 2))
    assert_exact(certified_upper(save(tmp_path, [classifier("NONE")], ["y"])), truth)


def test_binary_classifier_bound_is_the_spectral_norm(tmp_path: Path) -> None:
    truth = float(np.linalg.norm(np.concatenate([-W[:1], W[:1]]).astype(np.float64), 2))
    assert truth == pytest.approx(np.sqrt(2) * np.linalg.norm(W[0].astype(np.float64)), rel=1e-12)
    assert_exact(certified_upper(save(tmp_path, [classifier("NONE", W[:1], B[:1], (0, 1))], ["y"])), truth)


def test_regressor_bound_is_the_spectral_norm(tmp_path: Path) -> None:
    weight = rand(4, C, seed=21, scale=0.3)
    nodes = [ml("LinearRegressor", ["x"], ["y"], coefficients=weight.reshape(-1).tolist(),
                intercepts=rand(4, seed=22).tolist(), targets=4)]
    truth = float(np.linalg.norm(weight.astype(np.float64), 2))
    assert_exact(certified_upper(save(tmp_path, nodes, ["y"])), truth)


def test_scaler_then_classifier_bound_is_the_product_norm(tmp_path: Path) -> None:
    """Scaler (diag(scale)) then a LinearClassifier: one linear map W diag(scale), exact."""
    scale = rand(C, seed=31)
    nodes = [ml("Scaler", ["x"], ["s"], offset=rand(C, seed=32).tolist(), scale=scale.tolist()),
             ml("LinearClassifier", ["s"], ["label", "y"], coefficients=W.reshape(-1).tolist(), intercepts=B.tolist(),
                classlabels_strings=["a", "b", "c"])]
    path = save(tmp_path, nodes, ["y"])
    assert_matches_onnxruntime(path)
    truth = float(np.linalg.norm(W.astype(np.float64) * scale.astype(np.float64), 2))
    assert_exact(certified_upper(path), truth)


def test_scaler_bound_is_the_largest_scale(tmp_path: Path) -> None:
    scale = np.array([0.5, -2.5, 1.0, 0.25, 2.0], np.float32)
    path = save(tmp_path, [ml("Scaler", ["x"], ["y"], offset=[1.0] * C, scale=scale.tolist())], ["y"])
    assert_exact(certified_upper(path), 2.5)


def test_normalizer_needs_a_domain(tmp_path: Path) -> None:
    from stabaudit.api import audit

    path = save(tmp_path, [ml("Normalizer", ["x"], ["y"], norm="L2")], ["y"])
    report = audit(path, input_shape=(1, C), method="product", budget=0.05, seed=0)
    assert report.lipschitz.upper is None
    assert "bounded domain" in repr(report.lipschitz.methods)


# ---- outputs that are not real-valued tensors -------------------------------------------------------------
def sklearn_like(tmp_path: Path, post: str = "SOFTMAX") -> Path:
    """As sklearn-onnx exports a LogisticRegression: the label (int64) through a Cast, the probabilities
    through ZipMap into a sequence of maps."""
    nodes = [classifier(post, outputs=("label", "probability_tensor")),
             helper.make_node("Cast", ["label"], ["output_label"], to=TensorProto.INT64, name="cast_label"),
             ml("ZipMap", ["probability_tensor"], ["output_probability"], classlabels_int64s=[0, 1, 2])]
    outputs = [helper.make_tensor_value_info("output_label", TensorProto.INT64, ["N"]),
               helper.make_value_info("output_probability", ZIP_TYPE)]
    return save(tmp_path, nodes, outputs, ml_opset=1)


def test_zipmap_probabilities_stand_for_its_maps(tmp_path: Path) -> None:
    lm = load_onnx(sklearn_like(tmp_path), input_shape=(3, C))
    assert lm.output_names == ("probability_tensor",)
    assert lm.reference_outputs == ("output_label", "output_probability", "probability_tensor")
    note = next(n for n in lm.notes if "not real-valued tensors" in n)
    assert "'output_label'" in note and "'output_probability'" in note and "'probability_tensor'" in note
    ours, theirs = run_both(lm)
    label, maps, probabilities = theirs
    np.testing.assert_allclose(ours[0], probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[0], [[m[k] for k in (0, 1, 2)] for m in maps], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))


def test_cli_audits_a_classifier_with_zipmap(tmp_path: Path) -> None:
    path = sklearn_like(tmp_path)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(path), "--budget", "0.5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["equivalence"]["passed"] is True
    assert any("'output_label'" in n and "not real-valued tensors" in n for n in report["notes"]), report["notes"]
    assert any("'output_label', 'output_probability' not compared" in n for n in report["notes"]), report["notes"]
    assert report["lipschitz"]["upper"] is not None and report["lipschitz"]["certified"]
    assert report["model"]["parameters"] == W.size + B.size


def test_probabilities_already_an_output_are_not_added(tmp_path: Path) -> None:
    nodes = [classifier("LOGISTIC", outputs=("label", "y")),
             ml("ZipMap", ["y"], ["maps"], classlabels_int64s=[0, 1, 2])]
    lm = load_onnx(save(tmp_path, nodes, ["y", helper.make_value_info("maps", ZIP_TYPE)]))
    assert lm.output_names == ("y",) and lm.reference_outputs == ("y", "maps")


def test_label_only_has_nothing_to_audit(tmp_path: Path) -> None:
    nodes = [classifier("NONE", outputs=("label", "scores"))]
    path = save(tmp_path, nodes, [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])])
    with pytest.raises(ModelLoadError, match="no graph output is a real-valued tensor"):
        load_onnx(path)


def test_a_real_value_computed_from_a_label_is_refused(tmp_path: Path) -> None:
    nodes = [classifier("NONE"), helper.make_node("Cast", ["label"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["f", "y"], ["z"])]
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, nodes, ["z"]))
    assert info.value.counts == {"Cast(of a class label)": 1}


# ---- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("post", "why"), [("PROBIT", "post_transform PROBIT"),
                                           ("SOFTMAX_ZERO", "post_transform SOFTMAX_ZERO")])
def test_post_transforms_without_a_lipschitz_map_are_refused(tmp_path: Path, post: str, why: str) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, [classifier(post)], ["y"]))
    (label,) = info.value.counts
    assert label.startswith(f"{ML}.LinearClassifier({why}")


def test_binarizer_is_refused_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save(tmp_path, [ml("Binarizer", ["x"], ["y"], threshold=0.5)], ["y"]))
    assert info.value.counts == {f"{ML}.Binarizer(a step function: discontinuous at the threshold, no Lipschitz "
                                 "constant)": 1}


def test_tree_ensemble_is_listed_by_sa901(tmp_path: Path) -> None:
    """An unsupported ai.onnx.ml model (a tree ensemble before ZipMap): exit 2, SA901 names it alone."""
    tree = ml("TreeEnsembleClassifier", ["x"], ["label", "probability_tensor"], classlabels_int64s=[0, 1],
              class_ids=[0, 1], class_nodeids=[1, 2], class_treeids=[0, 0], class_weights=[1.0, 1.0],
              nodes_falsenodeids=[2, 0, 0], nodes_featureids=[0, 0, 0], nodes_hitrates=[1.0, 1.0, 1.0],
              nodes_missing_value_tracks_true=[0, 0, 0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
              nodes_nodeids=[0, 1, 2], nodes_treeids=[0, 0, 0], nodes_truenodeids=[1, 0, 0],
              nodes_values=[0.0, 0.0, 0.0], post_transform="NONE")
    nodes = [tree, ml("ZipMap", ["probability_tensor"], ["output_probability"], classlabels_int64s=[0, 1])]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
               helper.make_value_info("output_probability", ZIP_TYPE)]
    path = save(tmp_path, nodes, outputs, ml_opset=1)
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(path)
    assert info.value.counts == {f"{ML}.TreeEnsembleClassifier": 1}
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert "SA901" in result.output and f"{ML}.TreeEnsembleClassifier (x1)" in result.output


def test_ops_lists_the_ml_operators() -> None:
    result = CliRunner().invoke(app, ["ops"])
    assert result.exit_code == 0
    for op in ("LinearClassifier", "LinearRegressor", "Scaler", "ZipMap", "FeatureVectorizer", "Imputer"):
        assert f"{ML}.{op}," in result.stdout or f"{ML}.{op}\n" in result.stdout
    assert f"{ML}.Normalizer*" in result.stdout and f"{ML}.Binarizer" not in result.stdout


def test_docs_name_every_ml_operator() -> None:
    """docs/operators.md names each ai.onnx.ml operator that loads or is refused with a reason."""
    from stabaudit.loaders import supported_operators
    from stabaudit.loaders.onnx_ops.ml import REFUSED

    text = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()
    named = {op for op in supported_operators()["onnx"] if op.startswith(f"{ML}.")} | set(REFUSED)
    assert len(named) == 8
    assert [op for op in sorted(named) if f"**{op}**" not in text] == []


def test_double_input_runs_at_float32_precision(tmp_path: Path) -> None:
    """onnxruntime computes the ai.onnx.ml models in float32 whatever the input type: SA902's tolerance
    is float32's, and the equivalence check passes on a float64 input."""
    from stabaudit.analyses.equivalence import check_equivalence

    graph = helper.make_graph(
        [classifier("LOGISTIC")], "ml", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "double.onnx")
    lm = load_onnx(tmp_path / "double.onnx")
    assert lm.precision == "float32"
    result = check_equivalence(lm, seed=0)
    assert result.passed, result


@pytest.mark.parametrize(("nodes", "message"), [
    ([classifier("NONE", W[:, :4])], "12 coefficients and 3 intercepts do not make 3 row"),
    ([classifier("SIGMOID")], "unknown post_transform 'SIGMOID'"),
    ([ml("Normalizer", ["x"], ["y"], norm="L3")], "unknown norm 'L3'"),
    ([ml("Scaler", ["x"], ["y"], scale=[1.0, 2.0])], "2 scale values for 5 features"),
], ids=["coefficients", "post_transform", "norm", "scale"])
def test_malformed_ml_nodes_are_load_errors(tmp_path: Path, nodes: list[Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as info:
        load_onnx(save(tmp_path, nodes, ["y"]))
    assert not isinstance(info.value, UnsupportedOperatorError)
