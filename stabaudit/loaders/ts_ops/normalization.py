"""Translators of eval-mode batch normalisation (an exact float64 Affine), layer_norm, and
group_norm and instance_norm (a LayerNorm over the dims 2.. and a per-channel Affine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    channel_shape,
    const_array,
    translates,
)
from stabaudit.rounding import SMALLEST_NORMAL


def _running_affine(node: SourceNode, x: Var) -> O.Affine:
    """(x - mean) / sqrt(var + eps) * w + b of the node's running statistics as x * scale + shift,
    per channel, evaluated in float64 so the folded constants are the stored statistics' exact map
    up to one float64 rounding each (weight 1 and bias 0 where absent)."""
    if node.arg("running_mean") is None or node.arg("running_var") is None:
        raise Unsupported("no running statistics")
    mean = const_array(node.arg("running_mean"), what="running_mean").astype(np.float64)
    var = const_array(node.arg("running_var"), what="running_var").astype(np.float64)
    eps = as_float(node.arg("eps"), what="eps")
    weight_value, bias_value = node.arg("weight"), node.arg("bias")
    weight = np.ones_like(mean) if weight_value is None else const_array(weight_value).astype(np.float64)
    bias = np.zeros_like(mean) if bias_value is None else const_array(bias_value).astype(np.float64)
    scale = weight / np.sqrt(var + eps)
    if np.any((np.abs(scale) < SMALLEST_NORMAL) & (weight != 0)):
        # rounded absolutely below 2^-1022 (possibly to 0: the Affine would claim a constant map)
        raise Unsupported("scale weight / sqrt(var + eps) below float64's normal range")
    return O.Affine(scale=channel_shape(scale, x.rank), shift=channel_shape(bias - mean * scale, x.rank))


@translates("aten::batch_norm")
def batch_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var("input")
    if node.arg("training") is not False:
        raise Unsupported("training mode")
    affine = _running_affine(node, x)
    ctx.note("eval-mode batch_norm became an Affine (scale, shift computed in float64)")
    return [ctx.emit(affine, [x])]


def _optional(value: Any, what: str) -> np.ndarray | None:
    return None if value is None else const_array(value, what=what).astype(np.float64)


@translates("aten::layer_norm")
def layer_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """layer_norm over the trailing dims ``normalized_shape``, constant weight and bias."""
    x = node.var("input")
    dims = [int(d) for d in node.arg("normalized_shape")]
    if not dims or tuple(dims) != tuple(x.shape[x.rank - len(dims):]):
        raise Unsupported(f"normalized_shape {dims} is not the input's trailing shape {list(x.shape)}")
    op = O.LayerNorm(axis=x.rank - len(dims), epsilon=as_float(node.arg("eps"), what="eps"),
                     scale=_optional(node.arg("weight"), "weight"), bias=_optional(node.arg("bias"), "bias"))
    return [ctx.emit(op, [x])]


@translates("aten::rms_norm")
def rms_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """rms_norm (nn.RMSNorm) over the trailing dims ``normalized_shape``, constant weight; eps None
    is the input dtype's machine epsilon (torch's default)."""
    x = node.var("input")
    dims = [int(d) for d in node.arg("normalized_shape")]
    if not dims or tuple(dims) != tuple(x.shape[x.rank - len(dims):]):
        raise Unsupported(f"normalized_shape {dims} is not the input's trailing shape {list(x.shape)}")
    eps = node.arg("eps")
    epsilon = float(np.finfo(np.float32).eps) if eps is None else as_float(eps, what="eps")
    op = O.LayerNorm(axis=x.rank - len(dims), epsilon=epsilon, scale=_optional(node.arg("weight"), "weight"),
                     centered=False)
    return [ctx.emit(op, [x])]


def _per_channel(x: Any, weight: np.ndarray | None, bias: np.ndarray | None) -> O.Affine | None:
    """The per-channel Affine of a normalisation's weight and bias (None when both are absent)."""
    if weight is None and bias is None:
        return None
    channels = x.shape[1]
    w = np.ones(channels) if weight is None else weight.reshape(-1)
    b = np.zeros(channels) if bias is None else bias.reshape(-1)
    if w.size != channels or b.size != channels:
        raise Unsupported("weight or bias not one per channel")
    return O.Affine(scale=channel_shape(w, x.rank), shift=channel_shape(b, x.rank))


@translates("aten::group_norm")
def group_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """group_norm: the channels in num_groups groups, each (n, group) normalised over its channels
    and the spatial dims: Reshape to [N, G, rest], LayerNorm over the dims 2.., Reshape back, the
    per-channel Affine of weight and bias."""
    x = node.var("input")
    if x.rank < 2:
        raise Unsupported("an input without channels")
    groups = int(node.arg("num_groups"))
    channels = x.shape[1]
    if groups <= 0 or channels % groups:
        raise Unsupported(f"num_groups={groups} does not divide {channels} channels")
    rest = int(np.prod(x.shape[2:], dtype=np.int64)) * (channels // groups)
    grouped = ctx.emit(O.Reshape(shape=(x.shape[0], groups, rest)), [x])
    normed = ctx.emit(O.LayerNorm(axis=2, epsilon=as_float(node.arg("eps"), what="eps")), [grouped])
    y = ctx.emit(O.Reshape(shape=tuple(x.shape)), [normed])
    affine = _per_channel(x, _optional(node.arg("weight"), "weight"), _optional(node.arg("bias"), "bias"))
    return [y if affine is None else ctx.emit(affine, [y])]


@translates("aten::instance_norm")
def instance_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """instance_norm with the instance's own statistics (use_input_stats, what eval mode does
    without tracked statistics): a LayerNorm over the spatial dims and the per-channel Affine.
    With tracked running statistics it is the batch_norm of those statistics."""
    x = node.var("input")
    if x.rank < 3:
        raise Unsupported("an input without spatial dims")
    if node.arg("use_input_stats") is False:
        return [ctx.emit(_running_affine(node, x), [x])]
    if node.arg("use_input_stats") is not True:
        raise Unsupported("use_input_stats not a constant")
    normed = ctx.emit(O.LayerNorm(axis=2, epsilon=as_float(node.arg("eps"), what="eps")), [x])
    affine = _per_channel(x, _optional(node.arg("weight"), "weight"), _optional(node.arg("bias"), "bias"))
    return [normed if affine is None else ctx.emit(affine, [normed])]
