"""Translators of element-wise activations, Clip and Softmax."""

from __future__ import annotations

import math

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

_PLAIN: dict[str, type[O.Op]] = {
    "Relu": O.Relu,
    "Sigmoid": O.Sigmoid,
    "Tanh": O.Tanh,
    "Softplus": O.Softplus,
    "Mish": O.Mish,
    "Abs": O.Abs,
}


@register(*_PLAIN)
def plain(node: OnnxNode, ctx: Context) -> None:
    ctx.emit(node, _PLAIN[node.op_type](), [node.inputs[0]])


@register("HardSwish")
def hard_swish(node: OnnxNode, ctx: Context) -> None:
    """HardSwish; a fused Clip form (onnx_ops.patterns) may carry ``_scale``, the exact factor its
    constant leaves: a scalar Affine after it."""
    scale = float(node.attrs.get("_scale", 1.0))
    if scale == 1.0:
        ctx.emit(node, O.HardSwish(), [node.inputs[0]])
        return
    inner = ctx.emit(node, O.HardSwish(), [node.inputs[0]], tag="hardswish")
    ctx.emit(node, O.Affine(scale=np.array(scale)), [inner])


@register("LeakyRelu")
def leaky_relu(node: OnnxNode, ctx: Context) -> None:
    ctx.emit(node, O.LeakyRelu(alpha=float(node.attr("alpha"))), [node.inputs[0]])


@register("Elu")
def elu(node: OnnxNode, ctx: Context) -> None:
    ctx.emit(node, O.Elu(alpha=float(node.attr("alpha"))), [node.inputs[0]])


@register("Selu")
def selu(node: OnnxNode, ctx: Context) -> None:
    """Selu(alpha, gamma) = gamma x for x > 0, gamma alpha (e^x - 1) otherwise = gamma Elu_alpha(x):
    an Elu and a scalar Affine (Lipschitz gamma max(1, alpha), 1.7581 with the defaults)."""
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    inner = ctx.emit(node, O.Elu(alpha=alpha), [node.inputs[0]], tag="elu")
    ctx.emit(node, O.Affine(scale=np.array(gamma)), [inner])


@register("Celu")
def celu(node: OnnxNode, ctx: Context) -> None:
    """Celu(alpha) = max(0, x) + min(0, alpha (e^(x / alpha) - 1)) = alpha Elu_1(x / alpha): x / alpha,
    an Elu of alpha 1, times alpha (each step exact in real arithmetic; alpha > 0)."""
    alpha = float(node.attr("alpha", 1.0))
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise Unsupported(f"Celu(alpha={alpha}): alpha must be positive")
    x = node.inputs[0]
    if alpha != 1.0:
        x = ctx.emit(node, O.Affine(scale=np.array(1.0 / alpha)), [x], tag="in")
    if alpha == 1.0:
        ctx.emit(node, O.Elu(alpha=1.0), [x])
        return
    inner = ctx.emit(node, O.Elu(alpha=1.0), [x], tag="elu")
    ctx.emit(node, O.Affine(scale=np.array(alpha)), [inner])


@register("HardSigmoid")
def hard_sigmoid(node: OnnxNode, ctx: Context) -> None:
    op = O.HardSigmoid(alpha=float(node.attr("alpha")), beta=float(node.attr("beta")))
    ctx.emit(node, op, [node.inputs[0]])


@register("Gelu")
def gelu(node: OnnxNode, ctx: Context) -> None:
    approximate = node.attr("approximate") or "none"
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"Gelu(approximate={approximate})")
    ctx.emit(node, O.Gelu(approximate=approximate), [node.inputs[0]])


@register("Swish")
def swish(node: OnnxNode, ctx: Context) -> None:
    """Swish(alpha) = x * sigmoid(alpha * x); alpha = 1 is SiLU (also the fused x*Sigmoid(x))."""
    if float(node.attr("alpha", 1.0)) != 1.0:
        raise Unsupported("Swish(alpha != 1)")
    ctx.emit(node, O.Silu(), [node.inputs[0]])


@register("PRelu")
def prelu(node: OnnxNode, ctx: Context) -> None:
    slope = ctx.param(node, 1, "slope")
    assert slope is not None
    if not fits(slope, ctx.shape(node.inputs[0])):
        raise Unsupported("PRelu(slope does not broadcast to the input)")
    y = ctx.emit(node, O.PRelu(slope=slope), [node.inputs[0]])
    ctx.bind(y, "slope", [ctx.term(node, 1, "slope")])


def _bound(value: object) -> float | None:
    """A Clip bound; +-float32 max (the old attribute defaults) and infinities mean unbounded."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise Unsupported("Clip(non-scalar bound)")
    v = float(array.reshape(-1)[0])
    return None if abs(v) >= float(np.finfo(np.float32).max) else v


@register("Clip")
def clip(node: OnnxNode, ctx: Context) -> None:
    if node.opset < 11:  # bounds were attributes before opset 11
        lo, hi = node.attr("min"), node.attr("max")
    elif ctx.is_var(node.input(1)) or ctx.is_var(node.input(2)):
        _clip_by_variables(node, ctx)
        return
    else:
        lo, hi = ctx.param(node, 1, "min", optional=True), ctx.param(node, 2, "max", optional=True)
    lo, hi = _bound(lo), _bound(hi)
    if lo is None and hi is None:  # no bounds: the identity
        ctx.alias(node, node.inputs[0])
    else:
        ctx.emit(node, O.Clip(min=lo, max=hi), [node.inputs[0]])


def _clip_by_variables(node: OnnxNode, ctx: Context) -> None:
    """Clip whose min or max is computed (a dynamic floor such as max(x) - top_db): min(max(x, lo),
    hi) as elementwise Max and Min of variables; a constant bound stays a Clip bound (an infinite
    one is no bound)."""
    lo_name, hi_name = node.input(1), node.input(2)
    lo = None if lo_name is None or ctx.is_var(lo_name) else _bound(ctx.const(lo_name))
    hi = None if hi_name is None or ctx.is_var(hi_name) else _bound(ctx.const(hi_name))
    steps: list[tuple[O.Op, list[str]]] = []
    if lo_name is not None and ctx.is_var(lo_name):
        steps.append((O.Max(), [lo_name]))
    if hi_name is not None and ctx.is_var(hi_name):
        steps.append((O.Min(), [hi_name]))
    if lo is not None or hi is not None:
        steps.append((O.Clip(min=lo, max=hi), []))
    value = node.inputs[0]
    for i, (op, others) in enumerate(steps):
        last = i == len(steps) - 1
        value = ctx.emit(node, op, [value, *others], tag=None if last else f"{op.type.value.lower()}{i}")


@register("LogSoftmax")
def log_softmax(node: OnnxNode, ctx: Context) -> None:
    """LogSoftmax over one axis = x - log-sum-exp(x) over that axis (how it is computed, too): a
    ReduceLogSumExp that keeps the axis and a broadcast Sub. Before opset 13, over the input coerced
    to 2-D at ``axis`` (as Softmax)."""
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    axis = normalize_axis(int(node.attr("axis", -1 if node.opset >= 13 else 1)), rank)
    x = node.inputs[0]
    if node.opset < 13 and axis != rank - 1:
        flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        x = ctx.emit(node, O.Reshape(shape=flat), [x], tag="coerce")
        lse = ctx.emit(node, O.ReduceLogSumExp(axes=(1,), keepdims=True), [x], tag="lse")
        diff = ctx.emit(node, O.Sub(), [x, lse], tag="sub")
        ctx.emit(node, O.Reshape(shape=shape), [diff])
        return
    lse = ctx.emit(node, O.ReduceLogSumExp(axes=(axis,), keepdims=True), [x], tag="lse")
    ctx.emit(node, O.Sub(), [x, lse])


def _masked_softmax(node: OnnxNode, ctx: Context, shape: tuple[int, ...], axis: int) -> None:
    """The fused attention mask (``patterns._match_masked_softmax``): the finite part of an added
    mask as an Affine shift, then a Softmax with the mask."""
    mask = np.asarray(node.attrs["_mask"], dtype=bool)
    shift = node.attrs.get("_shift")
    if node.opset < 13 and axis != len(shape) - 1:
        raise Unsupported("Softmax with an attention mask over an axis other than the last (opset < 13)")
    problem = O.softmax_mask_problem(mask, shape, axis)
    if problem is not None:
        raise Unsupported(f"Softmax with {problem}")
    if shift is not None and not fits(np.asarray(shift), shape):
        raise Unsupported("Softmax with an attention shift that broadcasts the input to a larger shape")
    x = node.inputs[0]
    if shift is not None:
        x = ctx.emit(node, O.Affine(shift=np.asarray(shift, dtype=np.float64)), [x], tag="mask_shift")
    ctx.emit(node, O.Softmax(axis=axis, mask=None if mask.all() else mask), [x])


@register("Softmax")
def softmax(node: OnnxNode, ctx: Context) -> None:
    """Softmax over one axis; before opset 13 over the input coerced to 2-D at ``axis``.

    The coerced form is translated exactly: Reshape to [prod(dims < axis), prod(dims >= axis)],
    Softmax over the last axis, Reshape back.
    """
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    axis = normalize_axis(int(node.attr("axis")), rank)
    if "_mask" in node.attrs:
        _masked_softmax(node, ctx, shape, axis)
        return
    if node.opset >= 13 or axis == rank - 1:
        ctx.emit(node, O.Softmax(axis=axis), [node.inputs[0]])
        return
    flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
    coerced = ctx.emit(node, O.Reshape(shape=flat), [node.inputs[0]], tag="coerce")
    soft = ctx.emit(node, O.Softmax(axis=1), [coerced], tag="softmax")
    ctx.emit(node, O.Reshape(shape=shape), [soft])
