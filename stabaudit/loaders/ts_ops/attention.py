"""Translators of TorchScript's attention: scaled_dot_product_attention, and the fused fast paths of
nn.MultiheadAttention and nn.TransformerEncoderLayer (_native_multi_head_attention,
_transformer_encoder_layer_fwd), each written as the IR's products, masked softmax, linear maps and
LayerNorms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    Opaque,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    const_array,
    translates,
)


def _attend(ctx: Context, q: Var, k: Var, v: Var, scale: float, mask: np.ndarray | None,
            shift: np.ndarray | None = None) -> Var:
    """softmax(q k^T * scale + shift, masked) v over the last two dims (the keys' axis -2 of k)."""
    perm = (*range(k.rank - 2), k.rank - 1, k.rank - 2)
    scores = ctx.emit(O.MatMul(), [q, ctx.emit(O.Transpose(perm=perm), [k])])
    scores = ctx.emit(O.Affine(scale=np.array(scale)), [scores])
    if shift is not None and np.any(shift != 0.0):
        scores = ctx.emit(O.Affine(shift=shift), [scores])
    if mask is not None:
        problem = O.softmax_mask_problem(mask, tuple(scores.shape), -1)
        if problem is not None:
            raise Unsupported(problem)
        if mask.all():
            mask = None
    weights = ctx.emit(O.Softmax(axis=-1, mask=mask), [scores])
    return ctx.emit(O.MatMul(), [weights, v])


@translates("aten::scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """softmax(q k^T * scale + mask) v in eval (dropout_p 0): the MatMul of q and k transposed, a
    scalar Affine (scale, by default 1 / sqrt(d)), the Softmax over the keys with the causal mask
    (is_causal: key j <= query i) or a constant attn_mask as its mask (boolean: True takes part;
    float: its finite part a shift, its -inf entries the mask), and the MatMul with v."""
    import torch

    q, k, v = node.var(0), node.var(1), node.var(2)
    if min(q.rank, k.rank, v.rank) < 2:
        raise Unsupported("query, key or value of rank below 2")
    if as_float(node.arg("dropout_p", 0.0), what="dropout_p") != 0.0:
        raise Unsupported("dropout_p other than 0 (training)")
    if node.arg("enable_gqa", False) not in (False, None):
        raise Unsupported("enable_gqa (grouped-query attention)")
    scale_arg = node.arg("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale_arg is None else as_float(scale_arg, what="scale")
    mask: np.ndarray | None = None
    shift: np.ndarray | None = None
    if node.arg("is_causal", False) is True:
        mask = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
    given = node.arg("attn_mask")
    if given is not None:
        if isinstance(given, Var):
            raise Unsupported("an attn_mask computed from the input")
        boolean = isinstance(given, torch.Tensor) and given.dtype == torch.bool
        arr = const_array(given, what="attn_mask")
        if boolean or arr.dtype == np.bool_:  # True: the key takes part
            keep = np.asarray(arr).astype(bool)
        else:
            arr = arr.astype(np.float64)
            if np.any(np.isnan(arr) | (arr == np.inf)):
                raise Unsupported("an attn_mask with NaN or +inf entries")
            keep = arr > -np.inf
            shift = np.where(keep, arr, 0.0)
        mask = keep if mask is None else mask & keep
    return [_attend(ctx, q, k, v, scale, mask, shift)]


def _heads(ctx: Context, x: Var, heads: int) -> Var:
    """[B, L, E] -> [B, H, L, E / H]."""
    b, length, e = x.shape
    split = ctx.emit(O.Reshape(shape=(b, length, heads, e // heads)), [x])
    return ctx.emit(O.Transpose(perm=(0, 2, 1, 3)), [split])


def _native_mha(ctx: Context, query: Var, key: Var, value: Var, heads: int, w_qkv: np.ndarray, b_qkv: np.ndarray,
                w_out: np.ndarray, b_out: np.ndarray, keep: np.ndarray | None) -> Var:
    """nn.MultiheadAttention's fast path on batch-first [B, L, E] inputs: the in-projection's three
    row blocks of qkv_weight (and qkv_bias) on query, key and value, heads of E / H, softmax(q k^T /
    sqrt(E / H)) v (masked), heads merged, the out-projection."""
    if query.rank != 3 or key.rank != 3 or value.rank != 3:
        raise Unsupported("inputs that are not batch-first [batch, length, embedding]")
    e = query.shape[-1]
    if e % heads or w_qkv.shape != (3 * e, e) or b_qkv.size != 3 * e:
        raise Unsupported(f"in-projection of shape {list(w_qkv.shape)} for embedding {e} and {heads} heads")
    b = b_qkv.reshape(-1)
    proj = [ctx.emit(O.Linear(weight=np.ascontiguousarray(w_qkv[i * e:(i + 1) * e]), bias=b[i * e:(i + 1) * e].copy()), [x])
            for i, x in enumerate((query, key, value))]
    q, k, v = (_heads(ctx, p, heads) for p in proj)
    ctx_heads = _attend(ctx, q, k, v, 1.0 / math.sqrt(e // heads), keep)
    merged = ctx.emit(O.Reshape(shape=tuple(query.shape)), [ctx.emit(O.Transpose(perm=(0, 2, 1, 3)), [ctx_heads])])
    return ctx.emit(O.Linear(weight=w_out, bias=b_out.reshape(-1)), [merged])


def _native_mask(node: SourceNode, query: Var, key: Var) -> np.ndarray | None:
    """The kept keys of the fast paths' mask (True there means masked out): none, a constant
    [L, S] attention mask (mask_type 0) or a [B, S] key padding mask (mask_type 1)."""
    mask = node.arg("mask")
    if mask is None:
        return None
    if isinstance(mask, Var):
        raise Unsupported("a mask computed from the input")
    dropped = const_array(mask, what="mask").astype(bool)
    mask_type = node.arg("mask_type")
    if mask_type == 1 and dropped.shape == (query.shape[0], key.shape[1]):
        return ~dropped.reshape(query.shape[0], 1, 1, key.shape[1])
    if mask_type in (0, None) and dropped.shape == (query.shape[1], key.shape[1]):
        return ~dropped
    raise Unsupported(f"a mask of shape {list(dropped.shape)} and mask_type {mask_type}")


@translates("aten::_native_multi_head_attention")
def native_multi_head_attention(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """nn.MultiheadAttention's fused fast path (eval, batch first): see ``_native_mha``; the
    attention weights (second output) only where unused."""
    query, key, value = node.var(0), node.var(1), node.var(2)
    heads = int(node.arg("num_head"))
    out = _native_mha(ctx, query, key, value, heads, const_array(node.arg("qkv_weight"), what="qkv_weight"),
                      const_array(node.arg("qkv_bias"), what="qkv_bias"),
                      const_array(node.arg("proj_weight"), what="proj_weight"),
                      const_array(node.arg("proj_bias"), what="proj_bias"), _native_mask(node, query, key))
    return [out, Opaque(kind=node.kind, detail="its attention weights are used")]


@translates("aten::_transformer_encoder_layer_fwd")
def transformer_encoder_layer(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """nn.TransformerEncoderLayer's fused fast path (eval): with norm_first x + MHA(LN1(x)), then
    + FFN(LN2(.)); else LN1(x + MHA(x)), then LN2(. + FFN(.)); FFN = W2 act(W1 . + b1) + b2 with
    act GELU (use_gelu) or ReLU; LayerNorms over the embedding with weight and bias."""
    src = node.var(0)
    heads = int(node.arg("num_heads"))
    eps = as_float(node.arg("eps"), what="eps")
    arr = {name: const_array(node.arg(name), what=name) for name in (
        "qkv_weight", "qkv_bias", "proj_weight", "proj_bias", "norm_weight_1", "norm_bias_1", "norm_weight_2",
        "norm_bias_2", "ffn_weight_1", "ffn_bias_1", "ffn_weight_2", "ffn_bias_2")}
    axis = src.rank - 1

    def norm(x: Var, i: int) -> Var:
        return ctx.emit(O.LayerNorm(axis=axis, epsilon=eps, scale=arr[f"norm_weight_{i}"], bias=arr[f"norm_bias_{i}"]), [x])

    def attention(x: Var) -> Var:
        return _native_mha(ctx, x, x, x, heads, arr["qkv_weight"], arr["qkv_bias"], arr["proj_weight"],
                           arr["proj_bias"], _native_mask(node, x, x))

    def ffn(x: Var) -> Var:
        h = ctx.emit(O.Linear(weight=arr["ffn_weight_1"], bias=arr["ffn_bias_1"]), [x])
        h = ctx.emit(O.Gelu(approximate="none") if node.arg("use_gelu") else O.Relu(), [h])
        return ctx.emit(O.Linear(weight=arr["ffn_weight_2"], bias=arr["ffn_bias_2"]), [h])

    if node.arg("norm_first"):
        x = ctx.emit(O.Add(), [src, attention(norm(src, 1))])
        return [ctx.emit(O.Add(), [x, ffn(norm(x, 2))])]
    x = norm(ctx.emit(O.Add(), [src, attention(src)]), 1)
    return [norm(ctx.emit(O.Add(), [x, ffn(x)]), 2)]
