"""Translators of inference-mode BatchNormalization (an Affine node), LayerNormalization,
RMSNormalization (a LayerNorm without centring), and InstanceNormalization and
GroupNormalization (a LayerNorm over the axes 2.. and an Affine)."""

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
    axis = _normalised_axis(node, shape)
    scale = ctx.param(node, 1, "scale", optional="_axes" in node.attrs)
    bias = ctx.param(node, 2, "bias", optional=True)
    for value in (scale, bias):
        if value is not None and not fits(value, shape[axis:]):
            raise Unsupported("LayerNormalization(scale or bias beyond the normalised axes)")
    op = O.LayerNorm(axis=axis, epsilon=float(node.attr("epsilon", 1e-5)), scale=scale, bias=bias)
    ctx.emit(node, op, [node.inputs[0]])


def _normalised_axis(node: OnnxNode, shape: tuple[int, ...]) -> int:
    """The first normalised axis: the attribute, or for a fused decomposed pattern the first of its
    ReduceMean axes, which must be the trailing ones."""
    if "_axes" not in node.attrs:
        return normalize_axis(int(node.attr("axis", -1)), len(shape))
    axes = sorted(normalize_axis(int(a), len(shape)) for a in node.attrs["_axes"])
    if axes != list(range(axes[0], len(shape))):
        raise Unsupported(f"{node.op_type} pattern over axes that are not the trailing ones")
    return axes[0]


@register("InstanceNormalization")
def instance_normalization(node: OnnxNode, ctx: Context) -> None:
    """y = scale_c (x - mean) / sqrt(var + eps) + B_c with the statistics of each (n, c) over the
    spatial axes: a LayerNorm over the axes 2.. (no scale or bias: each group is one instance and
    channel) and a per-channel Affine (scale and B along axis 1)."""
    shape = ctx.shape(node.inputs[0])
    if len(shape) < 3:
        raise Unsupported("InstanceNormalization of an input without spatial axes")
    scale = ctx.param(node, 1, "scale")
    bias = ctx.param(node, 2, "B")
    assert scale is not None and bias is not None
    channels = shape[1]
    if np.size(scale) != channels or np.size(bias) != channels:
        raise Unsupported("InstanceNormalization(scale or B not one per channel)")
    normed = ctx.emit(node, O.LayerNorm(axis=2, epsilon=float(node.attr("epsilon", 1e-5))), [node.inputs[0]], tag="norm")
    channel_shape = (-1,) + (1,) * (len(shape) - 2)
    ctx.emit(node, O.Affine(scale=np.asarray(scale, dtype=np.float64).reshape(channel_shape),
                            shift=np.asarray(bias, dtype=np.float64).reshape(channel_shape)), [normed])


@register("GroupNormalization")
def group_normalization(node: OnnxNode, ctx: Context) -> None:
    """GroupNormalization (opsets 18 and 21): the C channels in num_groups groups, the statistics of
    each (n, group) over its channels and the spatial axes: a Reshape to [N, G, rest], a LayerNorm
    over the axes 2.., a Reshape back and a per-channel Affine. Opset 21's scale and bias are per
    channel; opset 18's per group (each repeated over its group's channels)."""
    shape = ctx.shape(node.inputs[0])
    if len(shape) < 2:
        raise Unsupported("GroupNormalization of an input without channels")
    groups = int(node.attr("num_groups"))
    channels = shape[1]
    if groups <= 0 or channels % groups:
        raise Unsupported(f"GroupNormalization(num_groups={groups} does not divide {channels} channels)")
    if int(node.attr("stash_type", 1)) != 1:
        raise Unsupported("GroupNormalization(stash_type other than float32)")
    scale = np.asarray(ctx.param(node, 1, "scale"), dtype=np.float64).reshape(-1)
    bias = np.asarray(ctx.param(node, 2, "bias"), dtype=np.float64).reshape(-1)
    if scale.size == groups and bias.size == groups and groups != channels:  # opset 18: per group
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    if scale.size != channels or bias.size != channels:
        raise Unsupported("GroupNormalization(scale or bias neither per channel nor per group)")
    rest = int(np.prod(shape[2:], dtype=np.int64)) * (channels // groups)
    grouped = ctx.emit(node, O.Reshape(shape=(shape[0], groups, rest)), [node.inputs[0]], tag="groups")
    normed = ctx.emit(node, O.LayerNorm(axis=2, epsilon=float(node.attr("epsilon", 1e-5))), [grouped], tag="norm")
    back = ctx.emit(node, O.Reshape(shape=tuple(shape)), [normed], tag="ungroup")
    channel_shape = (-1,) + (1,) * (len(shape) - 2)
    ctx.emit(node, O.Affine(scale=scale.reshape(channel_shape), shift=bias.reshape(channel_shape)), [back])


@register("RMSNormalization")
def rms_normalization(node: OnnxNode, ctx: Context) -> None:
    """RMSNormalization (opset 23): y = x / sqrt(mean(x^2) + epsilon) * scale, the mean over the
    axes axis..rank-1: a LayerNorm without centring (O.LayerNorm(centered=False))."""
    shape = ctx.shape(node.inputs[0])
    axis = _normalised_axis(node, shape)
    if int(node.attr("stash_type", 1)) != 1:
        raise Unsupported("RMSNormalization(stash_type other than float32)")
    scale = ctx.param(node, 1, "scale", optional="_axes" in node.attrs)
    if scale is not None and not fits(scale, shape[axis:]):
        raise Unsupported("RMSNormalization(scale beyond the normalised axes)")
    op = O.LayerNorm(axis=axis, epsilon=float(node.attr("epsilon", 1e-5)), scale=scale, centered=False)
    ctx.emit(node, op, [node.inputs[0]])
