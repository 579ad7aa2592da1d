"""Scaled dot-product attention as IR nodes: the pieces every fused attention operator shares
(onnxruntime's Attention and MultiHeadAttention in contrib.py, ONNX's own Attention here). Each
becomes the nodes it fuses (Reshape and Transpose into heads, MatMul of queries and keys, a scale,
the masks, a Softmax over the keys, MatMul by the values), so the bounds are those of the unfused
graph; onnxruntime still runs the fused file as the reference."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, fits, register


def split_heads(node: OnnxNode, ctx: Context, x: str, heads: int, tag: str, *, keys: bool = False,
                attribute: str = "num_heads") -> str:
    """[B, S, heads * d] -> [B, heads, S, d] (or [B, heads, d, S] for keys, ready for q k^T);
    ``attribute`` names where ``heads`` came from in a refusal."""
    b, s, width = ctx.shape(x)
    if heads <= 0 or width % heads:
        raise Unsupported(f"{node.op_type}(hidden size {width} not a multiple of {attribute}={heads})")
    split = ctx.emit(node, O.Reshape(shape=(b, s, heads, width // heads)), [x], tag=f"{tag}_heads")
    return ctx.emit(node, O.Transpose(perm=(0, 2, 3, 1) if keys else (0, 2, 1, 3)), [split], tag=f"{tag}_t")


def mix(node: OnnxNode, ctx: Context, scores: str, values: str, *, keep: np.ndarray | None = None,
        merge: bool = True) -> None:
    """softmax(scores) over the keys (the last axis; ``keep``: which keys each query reads, the
    others get weight exactly 0; a query that reads none gets weights 0, so its output is 0, as
    ONNX's Attention defines it) times ``values`` [B, H, T, d], written as the node's output:
    [B, S, H * d] with the heads merged, or [B, H, S, d] (``merge`` False)."""
    shape = ctx.shape(scores)
    empty = None
    if keep is not None:
        keep = np.broadcast_to(keep, np.broadcast_shapes(keep.shape, (1,) * len(shape)))
        rows = np.asarray(keep.any(axis=-1, keepdims=True))
        if not rows.all():  # a query that reads no key outputs 0: its row of weights is zeroed
            empty, keep = rows, keep | ~rows
        problem = O.softmax_mask_problem(np.ascontiguousarray(keep), shape, 3)
        if problem is not None:
            raise Unsupported(f"{node.op_type}(a mask with {problem})")
        keep = None if keep.all() else np.ascontiguousarray(keep)
    weights = ctx.emit(node, O.Softmax(axis=3, mask=keep), [scores], tag="weights")
    if empty is not None:  # keep fits the scores (checked above), so does its any() over the keys
        weights = ctx.emit(node, O.Affine(scale=np.asarray(empty, dtype=np.float64)), [weights], tag="empty_rows")
    if not merge:
        ctx.emit(node, O.MatMul(), [weights, values])
        return
    mixed = ctx.emit(node, O.MatMul(), [weights, values], tag="mixed")
    batch, heads, queries, width = ctx.shape(mixed)
    merged = ctx.emit(node, O.Transpose(perm=(0, 2, 1, 3)), [mixed], tag="merged")
    ctx.emit(node, O.Reshape(shape=(batch, queries, heads * width)), [merged])


def row_shift(shift: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """A constant added to the scores, less its maximum over the keys each query reads: a shift
    constant along a row leaves that row's softmax unchanged (exactly), so only the differences
    stay (a row whose keys all carry a large negative fill is not moved for nothing)."""
    if keep is not None:
        keep = np.broadcast_to(keep, np.broadcast_shapes(keep.shape, shift.shape))
        shift = np.where(keep, np.broadcast_to(shift, keep.shape), 0.0)
        top = np.max(np.where(keep, shift, -np.inf), axis=-1, keepdims=True)
        return np.where(keep, shift - np.where(np.isfinite(top), top, 0.0), 0.0)
    return shift - shift.max(axis=-1, keepdims=True)


# ---- ONNX Attention (opset 23) ------------------------------------------------------------------------
def _constant_mask(node: OnnxNode, ctx: Context, keys: int) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """attn_mask as (keep, shift, variable): a constant bool mask (True: read) or float mask (added;
    -inf drops the key) padded to ``keys`` on the right as the operator pads it (False, -inf); a
    float mask computed from the inputs is returned by name, to be added as it is."""
    name = node.input(3)
    if name is None:
        return None, None, None
    value = ctx.const(name)
    if value is None:
        if not ctx.is_var(name):
            raise Unsupported("Attention(attn_mask computed from the model's integer or bool inputs)")
        return None, None, name
    value = np.asarray(value)
    if value.ndim < 1 or value.shape[-1] > keys:
        raise Unsupported(f"Attention(attn_mask of shape {list(value.shape)} for {keys} keys)")
    pad = [(0, 0)] * (value.ndim - 1) + [(0, keys - value.shape[-1])]
    if value.dtype == np.bool_:
        return np.pad(value, pad, constant_values=False), None, None
    value = np.pad(value.astype(np.float64), pad, constant_values=-np.inf)
    if np.any(np.isnan(value) | np.isposinf(value)):
        raise Unsupported("Attention(attn_mask holding NaN or +inf)")
    keep = ~np.isneginf(value)
    return keep, np.where(keep, value, 0.0), None


def _allowed(node: OnnxNode, queries: int, keys: int, offset: np.ndarray | None) -> np.ndarray | None:
    """The causal mask (query i reads keys j <= i + offset) and the sliding window
    (i + offset - left <= j <= i + offset + right, a side of -1 unbounded), as the operator builds
    them without a cache: offset 0 (top-left aligned), or nonpad_kv_seqlen - S per batch entry
    (bottom-right aligned to each entry's keys), then [B, 1, S, T]; None when neither is set."""
    i = np.arange(queries)[:, None]
    j = np.arange(keys)[None, :]
    if offset is not None:
        i = i[None, None] + np.asarray(offset).reshape(-1, 1, 1, 1)
    allowed = np.ones(np.broadcast_shapes(i.shape, j.shape), dtype=bool)
    if int(node.attr("is_causal", 0)):
        allowed &= j <= i
    left, right = int(node.attr("left_window_size", -1)), int(node.attr("right_window_size", -1))
    if left >= 0:
        allowed &= i - j <= left
    if right >= 0:
        allowed &= j - i <= right
    return None if allowed.all() else allowed


@register("Attention")
def onnx_attention(node: OnnxNode, ctx: Context) -> None:
    """ONNX Attention (opset 23 on; torch's exporter writes it for scaled_dot_product_attention):
    softmax(softcap(scale q k^T) + mask) v per head, q [B, Hq, S, d] and k, v [B, Hkv, T, d] (or
    [B, S, heads * d] with q_num_heads and kv_num_heads), each key/value head read by Hq / Hkv query
    heads (grouped-query attention: a Gather of the heads), scale 1/sqrt(d) by default, softcap
    c tanh(x / c) when c > 0, a constant bool or float attn_mask (float: added; -inf, and the
    padding of a short mask, drop the key), is_causal, the sliding window and constant
    nonpad_kv_seqlen. A key/value cache (past inputs) and the qk_matmul_output output are refused;
    present_key and present_value (without a cache: k and v by heads) are the values they copy."""
    if node.input(4) is not None or node.input(5) is not None:
        raise Unsupported("Attention(past_key and past_value: a decoding cache)")
    if len(node.outputs) > 3 and ctx.is_used(node.outputs[3]):
        raise Unsupported("Attention(qk_matmul_output read)")
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    if not all(ctx.is_var(t) for t in (q, k, v)):
        raise Unsupported("Attention(a constant query, key or value)")
    ranks = {len(ctx.shape(t)) for t in (q, k, v)}
    if ranks == {3}:
        hq, hkv = node.attr("q_num_heads", None), node.attr("kv_num_heads", None)
        if not hq or not hkv:
            raise Unsupported("Attention(3-D inputs without q_num_heads and kv_num_heads)")
        q = split_heads(node, ctx, q, int(hq), "q", attribute="q_num_heads")
        k = split_heads(node, ctx, k, int(hkv), "k", attribute="kv_num_heads")
        v = split_heads(node, ctx, v, int(hkv), "v", attribute="kv_num_heads")
    elif ranks != {4}:
        raise Unsupported(f"Attention(inputs of ranks {sorted(ranks)})")
    for index, value in ((1, k), (2, v)):
        if len(node.outputs) > index and ctx.is_used(node.outputs[index]):
            ctx.alias(node, value, removed=False, output_index=index)
    batch, heads, queries, width = ctx.shape(q)
    kv_heads, keys = ctx.shape(k)[1], ctx.shape(k)[2]
    if ctx.shape(v)[1] != kv_heads or heads % kv_heads:
        raise Unsupported(f"Attention({heads} query heads for {kv_heads} key and {ctx.shape(v)[1]} value heads)")
    if heads != kv_heads:
        shared = np.repeat(np.arange(kv_heads), heads // kv_heads)
        k = ctx.emit(node, O.Gather(axis=1, indices=shared), [k], tag="k_groups")
        v = ctx.emit(node, O.Gather(axis=1, indices=shared), [v], tag="v_groups")
    kt = ctx.emit(node, O.Transpose(perm=(0, 1, 3, 2)), [k], tag="k_keys")
    scores = ctx.emit(node, O.MatMul(), [q, kt], tag="scores")
    scale = node.attr("scale", None)
    scale = 1.0 / np.sqrt(width) if scale is None else float(scale)
    scores = ctx.emit(node, O.Affine(scale=np.array(scale, dtype=np.float64)), [scores], tag="scaled")
    cap = float(node.attr("softcap", 0.0))
    if cap > 0.0:
        inner = ctx.emit(node, O.Affine(scale=np.array(1.0 / cap)), [scores], tag="softcap_in")
        inner = ctx.emit(node, O.Tanh(), [inner], tag="softcap_tanh")
        scores = ctx.emit(node, O.Affine(scale=np.array(cap)), [inner], tag="softcap")
    shape = ctx.shape(scores)
    keep, shift, variable = _constant_mask(node, ctx, keys)
    lengths, offset = node.input(6), None
    if lengths is not None:
        found = ctx.const(lengths)
        if found is None:
            raise Unsupported("Attention(nonpad_kv_seqlen computed from the model's inputs)")
        counts = np.asarray(found).reshape(-1)
        offset = counts - queries
        padding = (np.arange(keys)[None, :] < counts.reshape(-1, 1)).reshape(-1, 1, 1, keys)
        keep = padding if keep is None else keep & padding
    allowed = _allowed(node, queries, keys, offset)
    if allowed is not None:
        keep = allowed if keep is None else keep & allowed
    for array in (keep, shift):  # before the shift is formed from both
        if array is not None and not fits(array, shape):
            raise Unsupported(f"Attention(attn_mask of shape {list(array.shape)} for scores {list(shape)})")
    if shift is not None:
        shift = row_shift(shift, keep)
        if np.any(shift != 0.0):
            scores = ctx.emit(node, O.Affine(shift=shift), [scores], tag="masked")
    if variable is not None:
        rank, given = len(ctx.shape(variable)), ctx.shape(variable)[-1]
        if given < keys:  # a short mask reads -inf (no key) beyond its end: 0 there, and those keys dropped
            pads = [0] * (2 * rank)
            pads[2 * rank - 1] = keys - given
            variable = ctx.emit(node, O.Pad(pads=tuple(pads)), [variable], tag="mask_padded")
            beyond = np.arange(keys) < given
            keep = beyond if keep is None else keep & beyond
        if not fits(np.zeros(ctx.shape(variable), dtype=bool), shape):
            raise Unsupported(f"Attention(a computed attn_mask of shape {list(ctx.shape(variable))} for scores {list(shape)})")
        scores = ctx.emit(node, O.Add(), [scores, variable], tag="masked")
    mix(node, ctx, scores, v, keep=keep, merge=len(ctx.shape(node.inputs[0])) == 3)
