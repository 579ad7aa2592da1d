"""Translators of onnxruntime's fused transformer operators (domain com.microsoft), as its
transformer optimizer and quantizer write them into exported text and vision encoders: Gelu,
FastGelu, BiasGelu, QuickGelu, SkipLayerNormalization, SimplifiedLayerNormalization and
SkipSimplifiedLayerNormalization (RMSNorm). Each becomes the IR nodes it fuses, so the bounds are
those of the unfused graph; onnxruntime still runs the fused file as the reference."""

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
