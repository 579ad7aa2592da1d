"""Translator of inference-mode BatchNormalization into an Affine node."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, register
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
