"""onnxruntime's fused transformer operators (com.microsoft), ONNX RMSNormalization and the
decomposed RMSNorm of exporters: each loads onto the IR ops it fuses, matches onnxruntime on the
fused file, and gets a global bound where the unfused graph has one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.composition import rule_bounds
from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.support import check_onnx, needs_a_domain, save_onnx

MS = "com.microsoft"
H = 8
RNG = np.random.default_rng(0)
GAMMA = (RNG.uniform(0.5, 1.5, H) * RNG.choice([-1.0, 1.0], H)).astype(np.float32)
BETA = RNG.normal(size=H).astype(np.float32)
BIAS = RNG.normal(size=H).astype(np.float32)
PARAMS = {"g": GAMMA, "b": BETA, "bias": BIAS, "two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32),
          "one": np.array(1.0, np.float32), "w": (RNG.normal(size=(H, H)) / 3).astype(np.float32),
          "row": RNG.uniform(0.5, 1.5, (3, 1)).astype(np.float32)}


def save(tmp_path: Path, nodes: Sequence[Any], outputs: Sequence[str] = ("y",), opset: int = 17) -> Path:
    used = {i for n in nodes for i in n.input}
    return save_onnx(tmp_path, nodes, {k: v for k, v in PARAMS.items() if k in used}, (2, 3, H), opset=opset,
                     outputs=outputs, ir_version=10, domains=[(MS, 1)])


def check(path: Path, tol: float = 2e-5) -> LoadedModel:
    return check_onnx(path, (2, 3, H), tol=tol)


def ops(lm: LoadedModel) -> list[str]:
    return [type(n.op).__name__ for n in lm.graph.nodes]


def norms(lm: LoadedModel) -> list[O.LayerNorm]:
    return [n.op for n in lm.graph.nodes if isinstance(n.op, O.LayerNorm)]


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), domain: str = "", **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), list(outputs), domain=domain, **attrs)


def upper(lm: LoadedModel) -> float:
    """The product of the per-node certified upper bounds (the loaded graph's global rule)."""
    per = rule_bounds(lm.graph)
    return math.prod(b.upper.value for b in per.values() if b.upper is not None)


@pytest.mark.parametrize(("nodes", "expected"), [
    ([node("Gelu", ["x"], domain=MS)], ["Gelu"]),
    ([node("FastGelu", ["x", "bias"], domain=MS)], ["Affine", "Gelu"]),
    ([node("FastGelu", ["x"], domain=MS)], ["Gelu"]),
    ([node("BiasGelu", ["x", "bias"], domain=MS)], ["Affine", "Gelu"]),
    ([node("QuickGelu", ["x"], domain=MS, alpha=1.702)], ["Affine", "Silu", "Affine"]),
    ([node("QuickGelu", ["x"], domain=MS, alpha=1.0)], ["Silu"]),
])
def test_fused_activations(tmp_path: Path, nodes: list[Any], expected: list[str]) -> None:
    lm = check(save(tmp_path, nodes))
    assert ops(lm) == expected
    gelu = [n.op for n in lm.graph.nodes if isinstance(n.op, O.Gelu)]
    if gelu:
        assert gelu[0].approximate == ("tanh" if nodes[0].op_type == "FastGelu" else "none")


def test_quick_gelu_bound_is_its_slope_maximum(tmp_path: Path) -> None:
    """QuickGelu(1.702) = SiLU(1.702 x) / 1.702: its constant is SiLU's, 1.0998 (the maximum of
    sigma(t) + t sigma'(t)), not 1.702 times it."""
    lm = check(save(tmp_path, [node("QuickGelu", ["x"], domain=MS, alpha=1.702)]))
    assert 1.0998 <= upper(lm) <= 1.0999


@pytest.mark.parametrize("sum_used", [False, True])
def test_skip_layer_normalization(tmp_path: Path, sum_used: bool) -> None:
    """LayerNorm(x + skip + bias) * gamma + beta; output 3 (the sum) read by the next block."""
    nodes = [node("Relu", ["x"], ["r"]),
             node("SkipLayerNormalization", ["x", "r", "g", "b", "bias"], ["n", "", "", "s" if sum_used else ""],
                  domain=MS, epsilon=1e-5)]
    nodes.append(node("Add", ["n", "s"]) if sum_used else node("Identity", ["n"]))
    lm = check(save(tmp_path, nodes))
    (norm,) = norms(lm)
    assert norm.centered and norm.epsilon == pytest.approx(1e-5) and norm.bias is not None
    assert ops(lm)[:3] == ["Relu", "Add", "Affine"]


def test_skip_simplified_and_simplified_layer_normalization(tmp_path: Path) -> None:
    """RMSNorm both ways: SimplifiedLayerNormalization (default domain, as onnxruntime registers
    it) and SkipSimplifiedLayerNormalization with its sum read; the global bound is
    max|gamma| / sqrt(eps) per norm (the product here)."""
    nodes = [node("SimplifiedLayerNormalization", ["x", "g"], ["n1"], axis=-1, epsilon=1e-4),
             node("SkipSimplifiedLayerNormalization", ["n1", "x", "g", "bias"], ["n2", "", "", "s"], domain=MS,
                  epsilon=1e-4),
             node("Add", ["n2", "s"])]
    lm = check(save(tmp_path, nodes))
    first, second = norms(lm)
    assert not first.centered and not second.centered
    assert first.bias is None and second.bias is None
    rule = rule_bounds(lm.graph)
    gain = float(np.max(np.abs(GAMMA.astype(np.float64)))) / math.sqrt(float(np.float32(1e-4)))
    values = [rule[n.output].upper.value for n in lm.graph.nodes if isinstance(n.op, O.LayerNorm)]
    assert values == pytest.approx([gain, gain], rel=1e-12)


def test_onnx_rms_normalization(tmp_path: Path) -> None:
    lm = check(save(tmp_path, [node("RMSNormalization", ["x", "g"], axis=-1, epsilon=1e-6)], opset=23))
    (norm,) = norms(lm)
    assert not norm.centered and norm.axis == 2 and norm.epsilon == pytest.approx(1e-6)


@pytest.mark.parametrize("form", ["reciprocal", "div", "one_over", "mul_square"])
def test_decomposed_rms_norm_is_fused(tmp_path: Path, form: str) -> None:
    """x / sqrt(mean(x^2) + eps) * g as exporters write it becomes one RMSNorm, which has a global
    bound (the unfused Sqrt and quotient have none)."""
    square = node("Mul", ["h", "h"], ["sq"]) if form == "mul_square" else node("Pow", ["h", "two"], ["sq"])
    nodes = [node("MatMul", ["x", "w"], ["h"]), square, node("ReduceMean", ["sq"], ["m"], axes=[-1], keepdims=1),
             node("Add", ["m", "eps"], ["v"]), node("Sqrt", ["v"], ["r"])]
    if form == "div":
        nodes.append(node("Div", ["h", "r"], ["z"]))
    else:
        nodes.append(node("Reciprocal", ["r"], ["i"]) if form != "one_over" else node("Div", ["one", "r"], ["i"]))
        nodes.append(node("Mul", ["h", "i"], ["z"]))
    nodes.append(node("Mul", ["g", "z"]))
    lm = check(save(tmp_path, nodes))
    assert ops(lm) == ["Linear", "LayerNorm"]
    (norm,) = norms(lm)
    assert not norm.centered and norm.scale is not None and norm.epsilon == pytest.approx(1e-6)
    assert math.isfinite(upper(lm))


def test_rms_pattern_leaves_a_scale_that_varies_along_other_axes(tmp_path: Path) -> None:
    """A constant of shape [3, 1] multiplies along the sequence axis, not the normalised one: it
    stays an Affine after the fused RMSNorm."""
    nodes = [node("Pow", ["x", "two"], ["sq"]), node("ReduceMean", ["sq"], ["m"], axes=[-1], keepdims=1),
             node("Add", ["m", "eps"], ["v"]), node("Sqrt", ["v"], ["r"]), node("Div", ["x", "r"], ["z"]),
             node("Mul", ["z", "row"])]
    lm = check(save(tmp_path, nodes))
    assert ops(lm) == ["LayerNorm", "Affine"]
    assert norms(lm)[0].scale is None


def test_skip_layer_norm_with_a_variable_gamma_is_refused(tmp_path: Path) -> None:
    nodes = [node("SkipLayerNormalization", ["x", "x", "x"], ["y"], domain=MS)]
    with pytest.raises(UnsupportedOperatorError, match="SkipLayerNormalization"):
        load_onnx(save(tmp_path, nodes))



# ---- attention -------------------------------------------------------------------------------------
QKV = (RNG.normal(size=(H, 3 * H)) / 3).astype(np.float32)
QKV_BIAS = RNG.normal(size=3 * H).astype(np.float32)
MASKS = {"lengths": np.array([3, 2], np.int32), "raw": np.array([[1, 1, 0], [1, 0, 1]], np.int32),
         "raw3": np.array([[[1, 0, 0], [1, 1, 0], [1, 1, 1]]] * 2, np.int32)}


def save_with(tmp_path: Path, nodes: Sequence[Any], extra: dict[str, np.ndarray]) -> Path:
    PARAMS.update(extra)
    try:
        return save(tmp_path, nodes)
    finally:
        for key in extra:
            PARAMS.pop(key)


@pytest.mark.parametrize(("mask", "attrs"), [
    (None, {}), ("lengths", {}), ("raw", {}), ("raw3", {}), (None, {"unidirectional": 1}),
    ("raw", {"scale": 0.3, "mask_filter_value": -1000.0}),
])
def test_attention(tmp_path: Path, mask: str | None, attrs: dict[str, Any]) -> None:
    """onnxruntime's fused self-attention: three Linear maps, two products and a Softmax over the
    keys with the masks as onnxruntime adds them (mask_filter_value on masked scores)."""
    inputs = ["x", "qkv", "qkv_bias"] + (["m"] if mask else [])
    extra = {"qkv": QKV, "qkv_bias": QKV_BIAS} | ({"m": MASKS[mask]} if mask else {})
    lm = check(save_with(tmp_path, [node("Attention", inputs, domain=MS, num_heads=2, **attrs)], extra))
    names = ops(lm)
    assert names[:3] == ["Linear"] * 3 and names.count("MatMul") == 2 and "Softmax" in names
    shift = [n.op.shift for n in lm.graph.nodes if isinstance(n.op, O.Affine) and n.op.shift is not None]
    fill = attrs.get("mask_filter_value", -10000.0)
    assert (len(shift) == 1) == (mask is not None or "unidirectional" in attrs)
    if shift:
        assert set(np.unique(shift[0])) <= {0.0, fill, 2 * fill}


def test_attention_has_a_certified_bound_over_a_domain_only(tmp_path: Path) -> None:
    """q k^T is a product of two variables: no global constant, and the notes name the operator;
    over a domain, a certified bound at least the lower end."""
    path = save_with(tmp_path, [node("Attention", ["x", "qkv", "qkv_bias", "m"], domain=MS, num_heads=2)],
                     {"qkv": QKV, "qkv_bias": QKV_BIAS, "m": MASKS["raw"]})
    needs_a_domain(path, tmp_path, "MatMul")


@pytest.mark.parametrize("attrs", [{}, {"unidirectional": 1}])
def test_multi_head_attention(tmp_path: Path, attrs: dict[str, Any]) -> None:
    nodes = [node("Relu", ["x"], ["k"]), node("Tanh", ["x"], ["v"]),
             node("MultiHeadAttention", ["x", "k", "v", "qkv_bias", "m"], domain=MS, num_heads=2, **attrs)]
    lm = check(save_with(tmp_path, nodes, {"qkv_bias": QKV_BIAS, "m": MASKS["raw"]}))
    assert ops(lm).count("MatMul") == 2


@pytest.mark.parametrize(("nodes", "match"), [
    ([node("Attention", ["x", "qkv", "", "", "past"], ["y", "present"], domain=MS, num_heads=2)], "past"),
    ([node("Relu", ["x"], ["m"]), node("Attention", ["x", "qkv", "", "m"], domain=MS, num_heads=2)], "mask"),
    ([node("Attention", ["x", "qkv"], domain=MS, num_heads=3)], "num_heads"),
])
def test_attention_refusals(tmp_path: Path, nodes: list[Any], match: str) -> None:
    """A key/value cache, a mask computed from the float input, and heads that do not divide the
    width are refused by name."""
    path = save_with(tmp_path, nodes, {"qkv": QKV, "past": np.zeros((2, 2, 2, 0, 4), np.float32)})
    with pytest.raises(UnsupportedOperatorError, match=match):
        load_onnx(path)


# ---- EmbedLayerNormalization -------------------------------------------------------------------------
def _embedded(tmp_path: Path, *, segments: bool, mask: bool, epsilon: float = 1e-12, opset: int = 17) -> Path:
    """EmbedLayerNormalization (int32 ids, optional segment ids and mask) read by an Attention
    through its mask_index, as onnxruntime's optimizer writes a BERT encoder's first block."""
    rng = np.random.default_rng(3)
    tables = {"word": rng.normal(size=(20, H)), "pos": rng.normal(size=(16, H)), "seg": rng.normal(size=(2, H)),
              "g": GAMMA, "b": BETA, "qkv": QKV, "qkv_bias": QKV_BIAS}
    ins = ["ids", "segs" if segments else "", "word", "pos", "seg" if segments else "", "g", "b", "mask" if mask else ""]
    nodes = [helper.make_node("EmbedLayerNormalization", ins, ["e", "mi", "esum"], domain=MS, epsilon=epsilon,
                              name="embed"),
             helper.make_node("Attention", ["e", "qkv", "qkv_bias", "mi"], ["a"], domain=MS, num_heads=2),
             helper.make_node("Add", ["a", "esum"], ["y"])]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", "seq"])
            for n in ("ids", "segs", "mask") if n in ins]
    graph = helper.make_graph(nodes, "embed", ints, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in tables.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    model.ir_version = 10 if opset >= 13 else 7
    path = tmp_path / "embed.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(("segments", "mask", "opset"), [(True, True, 17), (False, False, 17), (True, False, 17),
                                                         (True, True, 12), (False, False, 12)])
def test_embed_layer_normalization_starts_at_the_word_embeddings(tmp_path: Path, segments: bool, mask: bool,
                                                                opset: int) -> None:
    """The fused embedding is written out in the model (Gather, Add, LayerNormalization, the mask
    count; opsets before 13 and 15 write the reduction axes and the batch size otherwise), checked
    against the file on onnxruntime; the audit starts at the word-embedding rows
    and matches onnxruntime there (SA902), with the Attention's key lengths from the held mask."""
    shapes = {name: (1, 6) for name, used in (("ids", True), ("segs", segments), ("mask", mask)) if used}
    lm = load_onnx(_embedded(tmp_path, segments=segments, mask=mask, opset=opset), input_shapes=shapes)
    assert [s.name for s in lm.graph.inputs][0] == "embed/word_embedding"
    assert any("EmbedLayerNormalization x1 written as" in note for note in lm.notes)
    (norm,) = [n.op for n in lm.graph.nodes if isinstance(n.op, O.LayerNorm)]
    assert norm.epsilon == pytest.approx(1e-12) and norm.centered
    assert lm.reference_at is not None
    feeds, ref = lm.reference_at(np.random.default_rng(0))
    ours = Executor(lm.graph, dtype=torch.float64)(*[torch.from_numpy(feeds[s.name].astype(np.float64))
                                                      for s in lm.graph.inputs])
    # without a mask, mask_index is 0 and onnxruntime adds -10000 to every score, which float32
    # holds to about 1e-3 (the engine drops a shift that is constant along a row: exact)
    tol = 2e-5 if mask else 2e-3
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(o.detach().numpy(), r, rtol=tol, atol=tol)


def test_an_expansion_that_differs_from_the_kernel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The expanded model is checked against the file: an expansion computing another map (here a
    wrong epsilon) stops the load with a one-line error."""
    from stabaudit.errors import ModelLoadError
    from stabaudit.loaders.onnx_ops import contrib

    real = contrib.expand_embed_layer_norm

    def wrong(model: Any) -> tuple[Any, int]:
        copy, count = real(model)
        for n in copy.graph.node:
            if n.op_type == "LayerNormalization":
                for a in n.attribute:
                    if a.name == "epsilon":
                        a.f = 10.0
        return copy, count

    monkeypatch.setattr(contrib, "expand_embed_layer_norm", wrong)
    with pytest.raises(ModelLoadError, match="does not match onnxruntime"):
        load_onnx(_embedded(tmp_path, segments=True, mask=True), input_shapes={n: (1, 6) for n in ("ids", "segs", "mask")})
