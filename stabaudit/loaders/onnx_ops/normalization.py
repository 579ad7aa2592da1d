"""Translators of inference-mode BatchNormalization (an Affine node) and LayerNormalization."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    fits,
    normalize_axis,
    register,
)
from stabaudit.rounding import SMALLEST_NORMAL


@register("BatchNormalization")
def batch_normalization(node: OnnxNode, ctx: Context) -> None:
    """y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift, along axis 1.

    scale = gamma / sqrt(var + eps) and shift = beta - mean * scale are computed in float64
    from the stored float32 statistics (eps as stored: a float32 attribute).
    """
    if node.attr("training_mode", 0) or any(ctx.is_used(name) for name in node.outputs[1:]):
        raise Unsupported("BatchNormalization(training mode)")
    if not node.attr("spatial", 1):
        raise Unsupported("BatchNormalization(spatial=0)")
    gamma, beta, mean, var = (
        np.asarray(ctx.param(node, i, what), dtype=np.float64)
        for i, what in enumerate(("scale", "bias", "mean", "variance"), start=1)
    )
    eps = float(node.attr("epsilon"))
    scale = gamma / np.sqrt(var + eps)
    if np.any((np.abs(scale) < SMALLEST_NORMAL) & (gamma != 0)):
        # below 2^-1022 the quotient is rounded absolutely (to 0, for a float64 model with gamma
        # 1e-300 and var 1e100): the Affine would claim a constant map
        raise Unsupported("BatchNormalization(scale gamma / sqrt(var + eps) below float64's normal range)")
    shift = beta - mean * scale
    rank = len(ctx.shape(node.inputs[0]))
    channel_shape = (-1,) + (1,) * max(rank - 2, 0)
    y = ctx.emit(node, O.Affine(scale=scale.reshape(channel_shape), shift=shift.reshape(channel_shape)), [node.inputs[0]])
    # training updates gamma and beta (the statistics are buffers): scale = r * gamma and
    # shift = beta - (mean * r) * gamma with r = 1 / sqrt(var + eps), both linear in (gamma, beta)
    r = 1.0 / np.sqrt(var + eps)
    ctx.bind(y, "scale", [ctx.term(node, 1, "scale (gamma)", coefficient=r)])
    ctx.bind(y, "shift", [ctx.term(node, 2, "bias (beta)"), ctx.term(node, 1, "scale (gamma)", coefficient=-mean * r)])


@register("LayerNormalization")
def layer_normalization(node: OnnxNode, ctx: Context) -> None:
    """ONNX LayerNormalization (opset 17): statistics over the axes axis..rank-1, constant Scale and
    optional B; the Mean and InvStdDev outputs must be unused."""
    if any(ctx.is_used(name) for name in node.outputs[1:]):
        raise Unsupported("LayerNormalization(Mean or InvStdDev used)")
    shape = ctx.shape(node.inputs[0])
    axis = normalize_axis(int(node.attr("axis", -1)), len(shape))
    if "_axes" in node.attrs:  # the fused decomposed pattern: its ReduceMean axes must be trailing
        axes = sorted(normalize_axis(int(a), len(shape)) for a in node.attrs["_axes"])
        if axes != list(range(axes[0], len(shape))):
            raise Unsupported("LayerNorm pattern over axes that are not the trailing ones")
        axis = axes[0]
    scale = ctx.param(node, 1, "scale", optional="_axes" in node.attrs)
    bias = ctx.param(node, 2, "bias", optional=True)
    for value in (scale, bias):
        if value is not None and not fits(value, shape[axis:]):
            raise Unsupported("LayerNormalization(scale or bias beyond the normalised axes)")
    op = O.LayerNorm(axis=axis, epsilon=float(node.attr("epsilon", 1e-5)), scale=scale, bias=bias)
    ctx.emit(node, op, [node.inputs[0]])
