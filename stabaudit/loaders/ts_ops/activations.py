"""Translators of TorchScript's element-wise activations and softmax."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.ts_ops.base import (
    Complex,
    Context,
    SourceNode,
    Unsupported,
    Var,
    as_float,
    channel_shape,
    const_array,
    is_float_dtype,
    norm_axis,
    translates,
    unary,
)

translates("aten::relu")(unary(O.Relu))
translates("aten::sigmoid")(unary(O.Sigmoid))
translates("aten::tanh")(unary(O.Tanh))


@translates("aten::abs")
def abs_(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """|x| entry by entry; of a complex tensor, the modulus sqrt(re^2 + im^2): ReduceL2 over its
    real and imaginary parts (Lipschitz 1, as a norm)."""
    x = node.arg(0)
    if isinstance(x, Complex):
        return [ctx.emit(O.ReduceL2(axes=(x.rank,), keepdims=False), [Var(id=x.id, shape=(*x.shape, 2))])]
    return unary(O.Abs)(ctx, node)


translates("aten::hardswish")(unary(O.HardSwish))
translates("aten::silu")(unary(O.Silu))
translates("aten::mish")(unary(O.Mish))
# hardsigmoid(x) = relu6(x + 3) / 6 = clamp(x / 6 + 1/2, 0, 1)
translates("aten::hardsigmoid")(unary(lambda: O.HardSigmoid(alpha=1.0 / 6.0, beta=0.5)))
translates("aten::relu6")(unary(lambda: O.Clip(min=0.0, max=6.0)))


@translates("aten::leaky_relu")
def leaky_relu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    alpha = as_float(node.arg("negative_slope", 0.01), what="negative_slope")
    return [ctx.emit(O.LeakyRelu(alpha=alpha), [node.var(0)])]


@translates("aten::prelu")
def prelu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    slope = const_array(node.arg("weight"), what="weight").reshape(-1)
    if slope.size > 1:
        if x.rank < 2 or x.shape[1] != slope.size:
            raise Unsupported(f"{slope.size} slopes for input shape {list(x.shape)}")
        slope = channel_shape(slope, x.rank)
    return [ctx.emit(O.PRelu(slope=slope), [x])]


@translates("aten::softplus")
def softplus(ctx: Context, node: SourceNode) -> Sequence[Any]:
    beta = as_float(node.arg("beta", 1.0), what="beta")
    threshold = as_float(node.arg("threshold", 20.0), what="threshold")
    if not (beta > 0 and math.isfinite(beta)):
        raise Unsupported(f"beta {beta}")
    if not math.isfinite(threshold):
        # never switching, torch's log1p(exp(beta x)) overflows to inf for large inputs
        raise Unsupported(f"threshold {threshold} (the executed formula overflows)")
    # torch returns x itself where beta*x > threshold: a branch switch with a jump, kept in the
    # IR so that the executor runs the same branch and the bound rule states the jump
    return [ctx.emit(O.Softplus(beta=beta, threshold=threshold), [node.var(0)])]


@translates("aten::elu")
def elu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    scale = as_float(node.arg("scale", 1), what="scale")
    input_scale = as_float(node.arg("input_scale", 1), what="input_scale")
    if scale != 1.0 or input_scale != 1.0:
        raise Unsupported("scale or input_scale other than 1")
    alpha = as_float(node.arg("alpha", 1.0), what="alpha")
    return [ctx.emit(O.Elu(alpha=alpha), [node.var(0)])]


@translates("aten::selu")
def selu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """selu(x) = scale Elu_alpha(x) with torch's constants (as ONNX Selu's defaults)."""
    inner = ctx.emit(O.Elu(alpha=1.6732632423543772848170429916717), [node.var(0)])
    return [ctx.emit(O.Affine(scale=np.array(1.0507009873554804934193349852946)), [inner])]


@translates("aten::celu")
def celu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """celu(x, alpha) = alpha Elu_1(x / alpha) (alpha > 0)."""
    alpha = as_float(node.arg("alpha", 1.0), what="alpha")
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise Unsupported(f"alpha {alpha}")
    x = node.var(0)
    if alpha == 1.0:
        return [ctx.emit(O.Elu(alpha=1.0), [x])]
    scaled = ctx.emit(O.Affine(scale=np.array(1.0 / alpha)), [x])
    inner = ctx.emit(O.Elu(alpha=1.0), [scaled])
    return [ctx.emit(O.Affine(scale=np.array(alpha)), [inner])]


@translates("aten::glu")
def glu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """glu(x, dim) = a * sigmoid(b), a and b the two halves of x along dim: two Slices, a Sigmoid
    and a Mul of two variables (a gate: bounded over a domain)."""
    x = node.var(0)
    axis = norm_axis(int(node.arg("dim", -1)), x.rank)
    n = x.shape[axis]
    if n % 2:
        raise Unsupported(f"a dim of odd size {n}")
    halves = []
    for start in (0, n // 2):
        starts, ends = [0] * x.rank, list(x.shape)
        starts[axis], ends[axis] = start, start + n // 2
        halves.append(ctx.emit(O.Slice(starts=tuple(starts), ends=tuple(ends), steps=(1,) * x.rank), [x]))
    return [ctx.emit(O.Mul(), [halves[0], ctx.emit(O.Sigmoid(), [halves[1]])])]


@translates("aten::gelu")
def gelu(ctx: Context, node: SourceNode) -> Sequence[Any]:
    approximate = node.arg("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r}")
    return [ctx.emit(O.Gelu(approximate=approximate), [node.var(0)])]


def _bound(value: Any, what: str) -> float | None:
    return None if value is None else as_float(value, what=what)


@translates("aten::hardtanh")
def hardtanh(ctx: Context, node: SourceNode) -> Sequence[Any]:
    lo = _bound(node.arg("min_val", -1.0), "min_val")
    hi = _bound(node.arg("max_val", 1.0), "max_val")
    return [ctx.emit(O.Clip(min=lo, max=hi), [node.var(0)])]


@translates("aten::threshold")
def threshold(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x where x > threshold, else value: max(x, threshold) when value == threshold (continuous);
    any other value jumps by |value - threshold| at x = threshold, refused (no bound carries it)."""
    t = as_float(node.arg("threshold"), what="threshold")
    v = as_float(node.arg("value"), what="value")
    if v != t or not math.isfinite(t):
        raise Unsupported(f"value {v} != threshold {t}: a jump of {abs(v - t):.3g} at x = {t}")
    return [ctx.emit(O.Clip(min=t), [node.var(0)])]


@translates("aten::clamp", "aten::clip")
def clamp(ctx: Context, node: SourceNode) -> Sequence[Any]:
    lo, hi = _bound(node.arg(1), "min"), _bound(node.arg(2), "max")
    if lo is None and hi is None:
        raise Unsupported("neither min nor max")
    return [ctx.emit(O.Clip(min=lo, max=hi), [node.var(0)])]


@translates("aten::clamp_min")
def clamp_min(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [ctx.emit(O.Clip(min=as_float(node.arg(1), what="min")), [node.var(0)])]


@translates("aten::clamp_max")
def clamp_max(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [ctx.emit(O.Clip(max=as_float(node.arg(1), what="max")), [node.var(0)])]


@translates("aten::log_softmax", "aten::_log_softmax")
def log_softmax(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """log_softmax over dim = x - logsumexp(x, dim, keepdim): a ReduceLogSumExp and a broadcast Sub."""
    x = node.var(0)
    if node.kind == "aten::log_softmax" and not is_float_dtype(node.arg("dtype")):
        raise Unsupported(f"dtype {node.arg('dtype')}")
    axis = norm_axis(int(node.arg("dim")), x.rank)
    lse = ctx.emit(O.ReduceLogSumExp(axes=(axis,), keepdims=True), [x])
    return [ctx.emit(O.Sub(), [x, lse])]


@translates("aten::softmax", "aten::_softmax")
def softmax(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    if node.kind == "aten::softmax" and not is_float_dtype(node.arg("dtype")):
        raise Unsupported(f"dtype {node.arg('dtype')}")
    return [ctx.emit(O.Softmax(axis=norm_axis(int(node.arg("dim")), x.rank)), [x])]
