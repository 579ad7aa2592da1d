"""Translators of onnxruntime's fused transformer operators (domain com.microsoft), as its
transformer optimizer writes them into exported text and vision encoders: Gelu, FastGelu,
BiasGelu, QuickGelu, SkipLayerNormalization, SimplifiedLayerNormalization and
SkipSimplifiedLayerNormalization (RMSNorm), Attention and MultiHeadAttention. Each becomes the IR
nodes it fuses, so the bounds are those of the unfused graph; onnxruntime still runs the fused
file as the reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.attention import mix, row_shift, split_heads
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    fits,
    normalize_axis,
    register,
)

_MS = "com.microsoft."


def _plus_bias(node: OnnxNode, ctx: Context, var: str, index: int, tag: str) -> str:
    """``var`` + the constant bias input ``index`` (along the last axis), or ``var`` without one."""
    bias = ctx.param(node, index, "bias", optional=True)
    if bias is None:
        return var
    if not fits(bias, ctx.shape(var)):
        raise Unsupported(f"{node.op_type}(bias does not broadcast to the input)")
    return ctx.emit(node, O.Affine(shift=np.asarray(bias, dtype=np.float64)), [var], tag=tag)


@register(_MS + "Gelu", _MS + "FastGelu", _MS + "BiasGelu")
def gelu(node: OnnxNode, ctx: Context) -> None:
    """Gelu (erf form), BiasGelu (erf form of x + bias) and FastGelu (tanh form of x + bias; its
    bias optional)."""
    x = _plus_bias(node, ctx, node.inputs[0], 1, "bias")
    approximate = "tanh" if node.op_type == "FastGelu" else "none"
    ctx.emit(node, O.Gelu(approximate=approximate), [x])


@register(_MS + "QuickGelu")
def quick_gelu(node: OnnxNode, ctx: Context) -> None:
    """QuickGelu(alpha) = x sigmoid(alpha x) = SiLU(alpha x) / alpha (CLIP's activation; alpha 1.702
    by default): two scalings about a SiLU, each exact in real arithmetic."""
    alpha = float(node.attr("alpha", 1.702))
    if not (np.isfinite(alpha) and alpha > 0.0):
        raise Unsupported(f"QuickGelu(alpha={alpha}): alpha must be positive")
    x = node.inputs[0]
    if alpha == 1.0:
        ctx.emit(node, O.Silu(), [x])
        return
    scaled = ctx.emit(node, O.Affine(scale=np.array(alpha)), [x], tag="in")
    inner = ctx.emit(node, O.Silu(), [scaled], tag="silu")
    ctx.emit(node, O.Affine(scale=np.array(1.0 / alpha)), [inner])


def _skip_sum(node: OnnxNode, ctx: Context, bias_index: int) -> str:
    """input + skip (+ bias): the residual sum, written to output 3 when the graph reads it."""
    total = ctx.emit(node, O.Add(), [node.inputs[0], node.inputs[1]], tag="skip")
    bias = ctx.param(node, bias_index, "bias", optional=True)
    if bias is not None:
        if not fits(bias, ctx.shape(total)):
            raise Unsupported(f"{node.op_type}(bias does not broadcast to the input)")
        total = ctx.emit(node, O.Affine(shift=np.asarray(bias, dtype=np.float64)), [total], tag="bias")
    if len(node.outputs) > 3 and ctx.is_used(node.outputs[3]):
        ctx.alias(node, total, removed=False, output_index=3)
    return total


def _norm(node: OnnxNode, ctx: Context, x: str, *, centered: bool, scale_index: int, bias_index: int | None) -> None:
    """The LayerNorm (centered) or RMSNorm over the last axis (or ``axis``) of ``x``."""
    for index in (1, 2):  # Mean and InvStdDev (or InvStdVar) are training outputs
        if len(node.outputs) > index and ctx.is_used(node.outputs[index]):
            raise Unsupported(f"{node.op_type}(mean or inverse deviation used)")
    shape = ctx.shape(x)
    axis = normalize_axis(int(node.attr("axis", -1)), len(shape))
    scale = ctx.param(node, scale_index, "gamma")
    bias = ctx.param(node, bias_index, "beta", optional=True) if bias_index is not None else None
    for value in (scale, bias):
        if value is not None and not fits(value, shape[axis:]):
            raise Unsupported(f"{node.op_type}(scale or bias beyond the normalised axes)")
    eps = float(node.attr("epsilon", 1e-12 if node.op_type.startswith("Skip") else 1e-5))
    ctx.emit(node, O.LayerNorm(axis=axis, epsilon=eps, scale=scale, bias=bias, centered=centered), [x])


@register(_MS + "SkipLayerNormalization")
def skip_layer_normalization(node: OnnxNode, ctx: Context) -> None:
    """SkipLayerNormalization(input, skip, gamma, beta?, bias?) = LayerNorm(input + skip + bias)
    * gamma + beta over the hidden axis; output 3 is the sum itself."""
    _norm(node, ctx, _skip_sum(node, ctx, 4), centered=True, scale_index=2, bias_index=3)


@register(_MS + "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_normalization(node: OnnxNode, ctx: Context) -> None:
    """SkipSimplifiedLayerNormalization(input, skip, gamma, bias?) = RMSNorm(input + skip + bias)
    * gamma; output 3 is the sum."""
    _norm(node, ctx, _skip_sum(node, ctx, 3), centered=False, scale_index=2, bias_index=None)


@register("SimplifiedLayerNormalization")  # onnxruntime registers it in the default domain
def simplified_layer_normalization(node: OnnxNode, ctx: Context) -> None:
    """SimplifiedLayerNormalization(X, scale) = X / sqrt(mean(X^2) + epsilon) * scale over the
    axes axis.. (RMSNorm, as T5 and LLaMA-style encoders use it)."""
    _norm(node, ctx, node.inputs[0], centered=False, scale_index=1, bias_index=None)


# ---- attention -----------------------------------------------------------------------------------
def _key_mask(node: OnnxNode, ctx: Context, index: int, batch: int, queries: int, keys: int) -> np.ndarray | None:
    """Which keys each query may read, [B, 1, S, T] (True: read), from a constant mask input: key
    lengths [B] (right padding), a raw 0/1 mask [B, T] or [B, S, T]; None without one."""
    name = node.input(index)
    if name is None:
        return None
    value = ctx.const(name)
    if value is None:
        raise Unsupported(f"{node.op_type}(a mask computed from the model's float inputs)")
    value = np.asarray(value)
    if value.shape == (batch,):
        keep = np.arange(keys)[None, :] < value.reshape(batch, 1)
        return np.broadcast_to(keep[:, None, None, :], (batch, 1, queries, keys))
    if value.shape == (batch, keys):
        return np.broadcast_to((value != 0)[:, None, None, :], (batch, 1, queries, keys))
    if value.shape == (batch, queries, keys):
        return (value != 0)[:, None, :, :]
    raise Unsupported(f"{node.op_type}(a mask of shape {list(value.shape)})")


def _attend(node: OnnxNode, ctx: Context, q: str, k: str, v: str, heads: int, *, causal: bool,
            keep: np.ndarray | None, bias_index: int | None) -> None:
    """softmax(scale q k^T + mask + attention_bias) v per head, written as the node's output
    [B, S, heads * d_v]. Masked entries get ``mask_filter_value`` (-10000 by default) added to
    their scores, as onnxruntime computes them (a causal mask adds it again): a constant shift, so
    the map is the one the file computes, masks included."""
    batch, queries, width = ctx.shape(q)
    keys = ctx.shape(k)[1]
    scale = float(node.attr("scale", 0.0)) or 1.0 / np.sqrt(width // heads)
    qh, kh, vh = split_heads(node, ctx, q, heads, "q"), split_heads(node, ctx, k, heads, "k", keys=True), split_heads(node, ctx, v, heads, "v")
    scores = ctx.emit(node, O.MatMul(), [qh, kh], tag="scores")
    scores = ctx.emit(node, O.Affine(scale=np.array(scale, dtype=np.float64)), [scores], tag="scaled")
    fill = float(node.attr("mask_filter_value", -10000.0))
    shift = np.zeros((batch, 1, queries, keys))
    if keep is not None:
        shift = np.where(keep, 0.0, fill)
    if causal:
        shift = shift + np.where(np.arange(keys)[None, :] > np.arange(queries)[:, None], fill, 0.0)
    shift = row_shift(shift)
    if np.any(shift != 0.0):
        if not np.all(np.isfinite(shift)):
            raise Unsupported(f"{node.op_type}(mask_filter_value={fill})")
        scores = ctx.emit(node, O.Affine(shift=shift), [scores], tag="masked")
    name = node.input(bias_index) if bias_index is not None else None
    if name is not None:
        bias = ctx.const(name)
        if bias is None:
            scores = ctx.emit(node, O.Add(), [scores, name], tag="biased")
        elif not fits(bias, ctx.shape(scores)):
            raise Unsupported(f"{node.op_type}(attention_bias of shape {list(np.shape(bias))})")
        else:
            scores = ctx.emit(node, O.Affine(shift=np.asarray(bias, dtype=np.float64)), [scores], tag="biased")
    mix(node, ctx, scores, vh)


def _no_cache(node: OnnxNode, ctx: Context, past: Sequence[int], present: Sequence[int]) -> None:
    """Refuse a key/value cache: past inputs given or present outputs read (decoding, not a map)."""
    if any(node.input(i) is not None for i in past):
        raise Unsupported(f"{node.op_type}(past key and value: a decoding cache)")
    if any(len(node.outputs) > i and ctx.is_used(node.outputs[i]) for i in present):
        raise Unsupported(f"{node.op_type}(present key and value read)")


@register(_MS + "Attention")
def attention(node: OnnxNode, ctx: Context) -> None:
    """onnxruntime's Attention (its fusion of BERT-style self-attention): q, k and v are three
    Linear maps of the input (columns of the packed weights, qkv_hidden_sizes or thirds, and of the
    bias), then multi-head scaled dot-product attention with the constant mask_index (key lengths,
    a raw [B, T] or [B, S, T] mask), the causal mask when unidirectional, and a constant or
    variable attention_bias."""
    _no_cache(node, ctx, (4, 6), (1,))
    if int(node.attr("do_rotary", 0)):
        raise Unsupported("Attention(do_rotary)")
    x = node.inputs[0]
    if len(ctx.shape(x)) != 3:
        raise Unsupported("Attention(input not [batch, sequence, hidden])")
    weights = np.asarray(ctx.param(node, 1, "weights"), dtype=np.float64)
    bias = ctx.param(node, 2, "bias", optional=True)
    sizes = [int(s) for s in (node.attr("qkv_hidden_sizes", None) or [])] or [weights.shape[1] // 3] * 3
    if weights.ndim != 2 or len(sizes) != 3 or sum(sizes) != weights.shape[1] or weights.shape[0] != ctx.shape(x)[2]:
        raise Unsupported(f"Attention(weights of shape {list(weights.shape)} for qkv sizes {sizes})")
    heads = int(node.attr("num_heads"))
    edges = np.cumsum([0, *sizes])
    qkv = []
    for part, (start, end) in zip("qkv", zip(edges[:-1], edges[1:], strict=True), strict=True):
        b = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)[start:end]
        qkv.append(ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weights[:, start:end].T), bias=b), [x], tag=part))
    batch, queries, _ = ctx.shape(x)
    keep = _key_mask(node, ctx, 3, batch, queries, queries)
    _attend(node, ctx, qkv[0], qkv[1], qkv[2], heads, causal=bool(int(node.attr("unidirectional", 0))), keep=keep, bias_index=5)


@register(_MS + "MultiHeadAttention")
def multi_head_attention(node: OnnxNode, ctx: Context) -> None:
    """onnxruntime's MultiHeadAttention with separate query, key and value [B, S, hidden] (projected
    already), an optional constant bias of q, k and v (concatenated), a constant key_padding_mask
    ([B] lengths or [B, T] 0/1), an attention_bias, and unidirectional (causal) masking."""
    _no_cache(node, ctx, (6, 7), (1, 2))
    q, k, v = node.input(0), node.input(1), node.input(2)
    if q is None or k is None or v is None or any(len(ctx.shape(t)) != 3 for t in (q, k, v)):
        raise Unsupported("MultiHeadAttention(packed or pre-split query, key and value)")
    bias = ctx.param(node, 3, "bias", optional=True)
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
        widths = [ctx.shape(t)[2] for t in (q, k, v)]
        if bias.size != sum(widths):
            raise Unsupported(f"MultiHeadAttention(bias of {bias.size} entries)")
        edges = np.cumsum([0, *widths])
        q, k, v = (ctx.emit(node, O.Affine(shift=bias[a:b]), [t], tag=f"{tag}_bias")
                   for t, tag, a, b in zip((q, k, v), "qkv", edges[:-1], edges[1:], strict=True))
    batch, queries, _ = ctx.shape(q)
    keep = _key_mask(node, ctx, 4, batch, queries, ctx.shape(k)[1])
    _attend(node, ctx, q, k, v, int(node.attr("num_heads")), causal=bool(int(node.attr("unidirectional", 0))),
            keep=keep, bias_index=5)


# ---- EmbedLayerNormalization: expanded in the model itself ----------------------------------------
def expand_embed_layer_norm(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` with each com.microsoft EmbedLayerNormalization written as the standard
    operators it fuses, and how many there were (0: ``model`` itself).

    EmbedLayerNormalization(input_ids, segment_ids?, word, position, segment?, gamma, beta, mask?,
    position_ids?) is LayerNorm(word[input_ids] + position[position_ids or 0..S-1] +
    segment[segment_ids]) * gamma + beta over the hidden axis; output 1 (mask_index) counts the
    entries equal to 1 in each row of mask (0 without one), output 2 is the sum. The expansion is
    done on the model so that the word-embedding rows are a tensor of the graph: the audit starts
    there (as for an unfused export), and onnxruntime can read it. The loader checks the expanded
    model against the original on onnxruntime before trusting it."""
    import onnx
    from onnx import TensorProto, helper

    fused = [n for n in model.graph.node if n.op_type == "EmbedLayerNormalization" and n.domain == "com.microsoft"]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not fused or opset < 11:
        return model, 0
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes: list[Any] = []
    for node in copy.graph.node:
        if not (node.op_type == "EmbedLayerNormalization" and node.domain == "com.microsoft"):
            nodes.append(node)
            continue
        ins = list(node.input) + [""] * (9 - len(node.input))
        outs = list(node.output) + [""] * (3 - len(node.output))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        base = node.name or outs[0]

        def name(tag: str, base: str = base) -> str:
            return f"{base}/{tag}"

        ids, segment_ids, word, position, segment, gamma, beta, mask, position_ids = ins[:9]
        nodes.append(helper.make_node("Gather", [word, ids], [name("word_embedding")], name=name("word")))
        if not position_ids:
            nodes += [helper.make_node("Shape", [ids], [name("ids_shape")], name=name("shape")),
                      helper.make_node("Gather", [name("ids_shape"), name("one")], [name("length")], name=name("length"),
                                       axis=0),
                      helper.make_node("Range", [name("zero"), name("length"), name("one")], [name("positions")],
                                       name=name("range"))]
            copy.graph.initializer.extend([helper.make_tensor(name("zero"), TensorProto.INT64, [], [0]),
                                           helper.make_tensor(name("one"), TensorProto.INT64, [], [1])])
            position_ids = name("positions")
        nodes.append(helper.make_node("Gather", [position, position_ids], [name("position_embedding")],
                                      name=name("position")))
        total = name("sum_wp")
        nodes.append(helper.make_node("Add", [name("word_embedding"), name("position_embedding")], [total],
                                      name=name("add_position")))
        if segment_ids and segment:
            nodes += [helper.make_node("Gather", [segment, segment_ids], [name("segment_embedding")], name=name("segment")),
                      helper.make_node("Add", [total, name("segment_embedding")], [outs[2] or name("sum")],
                                       name=name("add_segment"))]
            total = outs[2] or name("sum")
        elif outs[2]:
            nodes.append(helper.make_node("Identity", [total], [outs[2]], name=name("sum")))
        norm = [total, gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node("LayerNormalization", norm, [outs[0]], name=name("norm"), axis=-1,
                                      epsilon=float(attrs.get("epsilon", 1e-12))))
        if outs[1]:
            if mask:
                axes = [name("axes")] if opset >= 13 else []
                if axes:
                    copy.graph.initializer.append(helper.make_tensor(name("axes"), TensorProto.INT64, [1], [1]))
                copy.graph.initializer.append(helper.make_tensor(name("ones"), TensorProto.INT32, [], [1]))
                nodes += [helper.make_node("Equal", [mask, name("ones")], [name("kept")], name=name("kept")),
                          helper.make_node("Cast", [name("kept")], [name("kept_int")], name=name("count"),
                                           to=TensorProto.INT32),
                          helper.make_node("ReduceSum", [name("kept_int"), *axes], [outs[1]], name=name("mask_index"),
                                           keepdims=0)]
                if not axes:
                    nodes[-1].attribute.append(helper.make_attribute("axes", [1]))
            else:
                nodes += [helper.make_node("Shape", [ids], [name("mask_shape")], name=name("mask_shape"), start=0, end=1)
                          if opset >= 15 else
                          helper.make_node("Slice", [name("ids_shape_m"), name("s0"), name("s1")], [name("mask_shape")],
                                           name=name("mask_shape")),
                          helper.make_node("ConstantOfShape", [name("mask_shape")], [outs[1]], name=name("mask_index"),
                                           value=helper.make_tensor("value", TensorProto.INT32, [1], [0]))]
                if opset < 15:
                    nodes.insert(len(nodes) - 2, helper.make_node("Shape", [ids], [name("ids_shape_m")],
                                                                  name=name("shape_m")))
                    copy.graph.initializer.extend([helper.make_tensor(name("s0"), TensorProto.INT64, [1], [0]),
                                                   helper.make_tensor(name("s1"), TensorProto.INT64, [1], [1])])
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy, len(fused)
