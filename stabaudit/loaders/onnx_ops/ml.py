"""Translators of the real-valued maps of ai.onnx.ml and ZipMap, and the passage of their non-real outputs."""

from __future__ import annotations

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    FLOAT_TYPES,
    Context,
    Dropped,
    OnnxNode,
    Unsupported,
    register,
)

ML = "ai.onnx.ml"

# ai.onnx.ml operators that are refused with a reason SA901 shows (not merely unknown)
REFUSED: dict[str, str] = {
    f"{ML}.Binarizer": "a step function: discontinuous at the threshold, no Lipschitz constant",
}

# operators that carry a non-real value (a class label, ZipMap's maps) to their output unchanged
_CARRIERS = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})


def refusal(key: str) -> str:
    """The SA901 label of an operator outside the translators: with the reason when it is refused."""
    why = REFUSED.get(key)
    return f"{key}({why})" if why else key


def carry_dropped(node: OnnxNode, ctx: Context) -> None:
    """A node reading a non-real value (ctx.dropped): Identity, Reshape, Squeeze, Unsqueeze, Flatten and
    a Cast to a non-float type pass it on (an int64 label cast from a string one); any other reader is
    refused, since a real value computed from a label (a Cast to float) jumps where the label changes."""
    read = next(ctx.dropped[name] for name in node.present_inputs if name in ctx.dropped)
    carried = node.domain in ("", "ai.onnx") and (
        node.op_type in _CARRIERS or (node.op_type == "Cast" and int(node.attr("to")) not in FLOAT_TYPES))
    first = node.present_inputs[0]
    rest_constant = all(ctx.is_const(name) for name in node.present_inputs[1:])
    if not carried or first not in ctx.dropped or not rest_constant:
        raise Unsupported(f"{node.key}(of {read.kind})")
    keeps_real = node.op_type == "Identity"  # ZipMap's maps stay its probabilities only through Identity
    for name in node.outputs:
        if name:
            ctx.dropped[name] = Dropped(kind=read.kind, what=read.what, real=read.real if keeps_real else None)


def _floats(node: OnnxNode, key: str, *, required: bool = True) -> np.ndarray | None:
    value = node.attrs.get(key)
    if value is None:
        if required:
            raise ModelLoadError(f"{node.op_type} has no {key!r} attribute")
        return None
    return np.asarray(value, dtype=np.float32).reshape(-1)


def _features(node: OnnxNode, ctx: Context) -> int:
    """The feature count C of a [N, C] input; onnxruntime reads a 1-D input as one row, which the IR
    would give another output shape: refused."""
    shape = ctx.shape(node.inputs[0])
    if len(shape) != 2:
        raise Unsupported(f"{node.key}(input of rank {len(shape)}, not [N, C])")
    return shape[1]


def _weights(node: OnnxNode, ctx: Context, rows: int, intercepts: np.ndarray) -> np.ndarray:
    """The coefficients as the [rows, C] weight, checked against the input's feature count."""
    coefficients = _floats(node, "coefficients")
    assert coefficients is not None
    features = _features(node, ctx)
    if coefficients.size != rows * features or intercepts.size != rows:
        raise ModelLoadError(f"{node.op_type}: {coefficients.size} coefficients and {intercepts.size} intercepts "
                             f"do not make {rows} row(s) of {features} features")
    return coefficients.reshape(rows, features)


def _post_transform(node: OnnxNode, ctx: Context, scores: str, post: str, index: int) -> None:
    """LOGISTIC (a Sigmoid) or SOFTMAX (a Softmax over the scores) after the linear map ``scores``,
    writing the node's output number ``index``."""
    op: O.Op = O.Sigmoid() if post == "LOGISTIC" else O.Softmax(axis=1)
    ctx.emit(node, op, [scores], output_index=index)


def _refuse_post(node: OnnxNode, post: str) -> None:
    if post == "PROBIT":
        raise Unsupported(f"{node.key}(post_transform PROBIT: sqrt(2) erfinv(2 s - 1), defined on (0, 1) only "
                          "with a slope unbounded at its ends)")
    if post == "SOFTMAX_ZERO":
        raise Unsupported(f"{node.key}(post_transform SOFTMAX_ZERO: scores exactly 0 are left out of the "
                          "softmax, a discontinuity)")
    if post not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise ModelLoadError(f"{node.op_type}: unknown post_transform {post!r}")


@register(f"{ML}.LinearClassifier")
def linear_classifier(node: OnnxNode, ctx: Context) -> None:
    """Scores Z = post(X W^T + b), W the coefficients [E, C], b the intercepts [E]: a Linear, then a
    Sigmoid (LOGISTIC) or Softmax (SOFTMAX) over the E scores. One row of scores with two class
    labels is the binary case, where onnxruntime writes two columns: [1 - s, s] for NONE (a Linear
    by [-w; w] with bias [1 - b, b]) and [1 - sigmoid(s), sigmoid(s)] = sigmoid([-s, s]) for LOGISTIC.
    The label output Y (an argmax of the scores, piecewise constant) is not real-valued: dropped."""
    post = str(node.attrs.get("post_transform", "NONE"))
    _refuse_post(node, post)
    intercepts = _floats(node, "intercepts", required=False)
    if intercepts is None:
        raise Unsupported(f"{node.key}(without intercepts)")
    labels = node.attrs.get("classlabels_ints") or node.attrs.get("classlabels_strings") or []
    rows = intercepts.size
    weight = _weights(node, ctx, rows, intercepts)
    bias: np.ndarray = intercepts
    if rows == 1:
        if len(labels) != 2:
            raise Unsupported(f"{node.key}(one row of scores and {len(labels)} class labels)")
        if post == "SOFTMAX":
            raise Unsupported(f"{node.key}(one row of scores with post_transform SOFTMAX)")
        weight = np.concatenate([-weight, weight])
        b = np.float64(intercepts[0])
        bias = np.array([1.0 - b, b]) if post == "NONE" else np.array([-b, b])
    if node.outputs and node.outputs[0]:
        ctx.dropped[node.outputs[0]] = Dropped(
            kind="a class label", what=f"the class label of {node.op_type} {node.name!r}, an argmax of the scores: "
                                       "piecewise constant")
    if len(node.outputs) < 2 or not node.outputs[1]:
        return
    last = post == "NONE"
    scores = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight), bias=bias),
                      [node.inputs[0]], tag=None if last else "linear", output_index=1)
    if not last:
        _post_transform(node, ctx, scores, post, 1)


@register(f"{ML}.LinearRegressor")
def linear_regressor(node: OnnxNode, ctx: Context) -> None:
    """Y = post(X W^T + b), W the coefficients [targets, C], b the intercepts (0 when absent): a Linear,
    then a Sigmoid (LOGISTIC) or Softmax (SOFTMAX) over the targets (with more than one target:
    onnxruntime applies no LOGISTIC or SOFTMAX to a single one, refused as ambiguous)."""
    post = str(node.attrs.get("post_transform", "NONE"))
    _refuse_post(node, post)
    targets = int(node.attrs.get("targets", 1))
    if targets < 1:
        raise ModelLoadError(f"{node.op_type}: targets {targets} is below 1")
    intercepts = _floats(node, "intercepts", required=False)
    intercepts = np.zeros(targets, dtype=np.float32) if intercepts is None else intercepts
    weight = _weights(node, ctx, targets, intercepts)
    if targets == 1 and post != "NONE":
        raise Unsupported(f"{node.key}(one target with post_transform {post})")
    last = post == "NONE"
    scores = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight), bias=intercepts), [node.inputs[0]],
                      tag=None if last else "linear")
    if not last:
        _post_transform(node, ctx, scores, post, 0)


_NORMS: dict[str, type[O.Reduce]] = {"MAX": O.ReduceMax, "L1": O.ReduceL1, "L2": O.ReduceL2}


@register(f"{ML}.Normalizer")
def normalizer(node: OnnxNode, ctx: Context) -> None:
    """Each row divided by its norm: x / max(x) (MAX, the signed maximum, as onnxruntime computes it),
    x / sum|x| (L1), x / ||x||_2 (L2): a reduction over the last axis and a Div of two variables,
    Lipschitz only on a domain that keeps the norm away from 0 (needs a domain). onnxruntime copies a
    row whose norm is 0; the IR divides by it (the map is discontinuous there anyway)."""
    norm = str(node.attrs.get("norm", "MAX"))
    if norm not in _NORMS:
        raise ModelLoadError(f"Normalizer: unknown norm {norm!r}")
    rank = len(ctx.shape(node.inputs[0]))
    if rank not in (1, 2):
        raise Unsupported(f"{node.key}(input of rank {rank})")
    reduced = ctx.emit(node, _NORMS[norm](axes=(rank - 1,), keepdims=True), [node.inputs[0]], tag="norm")
    ctx.emit(node, O.Div(), [node.inputs[0], reduced])


@register(f"{ML}.Scaler")
def scaler(node: OnnxNode, ctx: Context) -> None:
    """Y = (X - offset) * scale per feature (one value, or one per feature of the last axis): an Affine
    with scale ``scale`` and shift -offset * scale (exact in float64: a product of two float32 numbers)."""
    scale = _floats(node, "scale", required=False)
    offset = _floats(node, "offset", required=False)
    features = ctx.shape(node.inputs[0])[-1] if ctx.shape(node.inputs[0]) else 1
    scale = np.ones(1, np.float32) if scale is None else scale
    offset = np.zeros(1, np.float32) if offset is None else offset
    for what, value in (("scale", scale), ("offset", offset)):
        if value.size not in (1, features):
            raise ModelLoadError(f"Scaler: {value.size} {what} values for {features} features")
    shift = -offset.astype(np.float64) * scale.astype(np.float64)
    ctx.emit(node, O.Affine(scale=scale.astype(np.float64), shift=shift), [node.inputs[0]])


@register(f"{ML}.FeatureVectorizer")
def feature_vectorizer(node: OnnxNode, ctx: Context) -> None:
    """The inputs [N, C_i] side by side, input i cut to its first ``inputdimensions[i]`` features or
    padded with zeros to that many (as onnxruntime does): Slices, Pads and a Concat, each a 0/1 map of
    norm 1 (or 0 for nothing kept)."""
    dims = [int(d) for d in node.attrs.get("inputdimensions", [])]
    names = node.present_inputs
    if len(dims) != len(names):
        raise ModelLoadError(f"FeatureVectorizer: {len(dims)} inputdimensions for {len(names)} inputs")
    parts: list[str] = []
    for i, (name, dim) in enumerate(zip(names, dims, strict=True)):
        if not ctx.is_var(name):
            raise Unsupported(f"{node.key}(of a constant)")
        shape = ctx.shape(name)
        if len(shape) != 2 or dim < 0:
            raise Unsupported(f"{node.key}(input of shape {list(shape)}, not [N, C])")
        part = ctx.var(name)
        if shape[1] > dim:
            part = ctx.emit(node, O.Slice(starts=(0, 0), ends=(shape[0], dim), steps=(1, 1)), [part], tag=f"cut{i}")
        elif shape[1] < dim:
            part = ctx.emit(node, O.Pad(pads=(0, 0, 0, dim - shape[1])), [part], tag=f"pad{i}")
        parts.append(part)
    if len(parts) == 1 and parts[0] == ctx.var(names[0]):
        ctx.alias(node, names[0])
    else:
        ctx.emit(node, O.Concat(axis=1), parts)


@register(f"{ML}.Imputer")
def imputer(node: OnnxNode, ctx: Context) -> None:
    """Entries equal to ``replaced_value_float`` replaced by the imputed value of their feature. With NaN
    as the replaced value it is Where(IsNaN(x), imputed, x), the identity on finite inputs (ops.Where);
    a finite replaced value (the default 0) makes a jump there: refused."""
    replaced = float(node.attrs.get("replaced_value_float", 0.0))
    if not np.isnan(replaced):
        raise Unsupported(f"{node.key}(replaced_value_float {replaced:g}: a jump at that value; NaN only)")
    imputed = _floats(node, "imputed_value_floats", required=False)
    if imputed is None:
        raise Unsupported(f"{node.key}(without imputed_value_floats)")
    shape = ctx.shape(node.inputs[0])
    if not shape or imputed.size not in (1, shape[-1]):
        raise ModelLoadError(f"Imputer: {imputed.size} imputed values for input shape {list(shape)}")
    ctx.emit(node, O.Where(test="isnan", when_true=imputed), [node.inputs[0], node.inputs[0]])


@register(f"{ML}.ZipMap")
def zip_map(node: OnnxNode, ctx: Context) -> None:
    """ZipMap packs the probabilities [N, E] into a sequence of maps {class label: probability}: no
    real-valued tensor, so its output is dropped and the probabilities it reads stand for it (the
    audit covers them; the equivalence check reads them from the reference as an extra output)."""
    source = node.inputs[0]
    if not ctx.is_var(source):
        raise Unsupported(f"{node.key}(of a constant)")
    ctx.dropped[node.outputs[0]] = Dropped(kind="ZipMap's maps", what=f"the sequence of maps of ZipMap {node.name!r}",
                                           real=source)


__all__ = ["REFUSED", "carry_dropped", "refusal"]
