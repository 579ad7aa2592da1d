"""Scaled dot-product attention as IR nodes: the pieces every fused attention operator shares
(onnxruntime's Attention and MultiHeadAttention in contrib.py, ONNX's own Attention here). Each
becomes the nodes it fuses (Reshape and Transpose into heads, MatMul of queries and keys, a scale,
the masks, a Softmax over the keys, MatMul by the values), so the bounds are those of the unfused
graph; onnxruntime still runs the fused file as the reference."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported


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
    others get weight exactly 0) times ``values`` [B, H, T, d], written as the node's output:
    [B, S, H * d] with the heads merged, or [B, H, S, d] (``merge`` False)."""
    shape = ctx.shape(scores)
    if keep is not None:
        problem = O.softmax_mask_problem(keep, shape, 3)
        if problem is not None:
            raise Unsupported(f"{node.op_type}(a mask with {problem})")
        if keep.all():
            keep = None
    weights = ctx.emit(node, O.Softmax(axis=3, mask=keep), [scores], tag="weights")
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
