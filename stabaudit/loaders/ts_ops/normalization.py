"""Translator of eval-mode batch normalisation into an exact float64 Affine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    as_float,
    channel_shape,
    const_array,
    translates,
)
from stabaudit.rounding import SMALLEST_NORMAL


@translates("aten::batch_norm")
def batch_norm(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var("input")
    if node.arg("training") is not False:
        raise Unsupported("training mode")
    if node.arg("running_mean") is None or node.arg("running_var") is None:
        raise Unsupported("no running statistics")
    mean = const_array(node.arg("running_mean"), what="running_mean").astype(np.float64)
    var = const_array(node.arg("running_var"), what="running_var").astype(np.float64)
    eps = as_float(node.arg("eps"), what="eps")
    weight_value, bias_value = node.arg("weight"), node.arg("bias")
    weight = np.ones_like(mean) if weight_value is None else const_array(weight_value).astype(np.float64)
    bias = np.zeros_like(mean) if bias_value is None else const_array(bias_value).astype(np.float64)
    # y = (x - mean) / sqrt(var + eps) * w + b = x * scale + shift, evaluated in float64 so the
    # folded constants are the stored statistics' exact map up to one float64 rounding each.
    scale = weight / np.sqrt(var + eps)
    if np.any((np.abs(scale) < SMALLEST_NORMAL) & (weight != 0)):
        # rounded absolutely below 2^-1022 (possibly to 0: the Affine would claim a constant map)
        raise Unsupported("scale weight / sqrt(var + eps) below float64's normal range")
    shift = bias - mean * scale
    ctx.note("eval-mode batch_norm became an Affine (scale, shift computed in float64)")
    return [
        ctx.emit(
            O.Affine(scale=channel_shape(scale, x.rank), shift=channel_shape(shift, x.rank)), [x]
        )
    ]
