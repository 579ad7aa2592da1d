"""Bound rules of element-wise activations and softmax: certified constants Lip(sigma) = sup |sigma'|.

For an element-wise map the Jacobian is diagonal, so its L2 Lipschitz constant on the flattened
tensor is sup_x |sigma'(x)| (the max of a diagonal; and >= by restricting to one coordinate).
Every upper constant below is the exact supremum rounded UP, and every lower constant the exact
supremum (a Lipschitz constant is a supremum, attained or approached) rounded DOWN; the exact values
are derived in the comments and checked numerically in tests/bounds/test_activations.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.normalization import broadcast_copy_gain
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import (
    Abs,
    Clip,
    Cos,
    Elu,
    Erf,
    Gelu,
    HardSigmoid,
    HardSwish,
    LeakyRelu,
    Mish,
    OpType,
    PRelu,
    Relu,
    Sigmoid,
    Silu,
    Sin,
    Softmax,
    Softplus,
    Tanh,
)

# GELU (exact, erf): d/dx [x Phi(x)] = Phi(x) + x phi(x); its derivative phi(x) (2 - x^2) vanishes at
# x = +-sqrt(2), so the sup is Phi(sqrt 2) + sqrt(2) phi(sqrt 2) = (1 + erf(1)) / 2 + 1 / (e sqrt(pi))
# = 1.12890414518515478634... (the infimum, at -sqrt(2), is -0.1289...). THEORY.md's 1.1289 is this
# value rounded to nearest, which is *below* it; we round up.
GELU_ERF_SUP = 1.1289041451851547863
GELU_ERF_UPPER = 1.128905
GELU_ERF_LOWER = 1.128904
# GELU (tanh approximation) 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the derivative peaks at
# x = 1.41850400879..., value 1.12899306865877176545... (computed to 40 digits with mpmath).
GELU_TANH_SUP = 1.1289930686587717655
GELU_TANH_UPPER = 1.128994
GELU_TANH_LOWER = 1.128993
# SiLU x sigmoid(x): derivative s(x) (1 + x (1 - s(x))) peaks at x = 2.39935728051546766783...,
# value 1.09983932012886691696... (THEORY.md: 1.0998); the infimum is -0.0998... at -2.3994.
SILU_SUP = 1.0998393201288669170
SILU_UPPER = 1.099840
SILU_LOWER = 1.099839
# Mish x tanh(softplus(x)): derivative tanh(sp) + x sech^2(sp) sigmoid(x) (sp = softplus(x)) peaks at
# x = 1.49057117948542845929..., value 1.08849816125172786122...; its infimum is -0.11252612238946255640...
# at x = -2.25637639636079312000... (40 digits with mpmath); f'' vanishes only at those two points.
MISH_SUP = 1.0884981612517278612
MISH_UPPER = 1.088499
MISH_LOWER = 1.088498
MISH_INF = -0.1125261223894625564
MISH_NEG_UPPER = 0.112527  # |MISH_INF| rounded up
# HardSwish x * clip(x/6 + 1/2, 0, 1): derivative (2x + 3)/6 on (-3, 3), 1 above, 0 below:
# sup |.| = 1.5, approached as x -> 3-.
HARD_SWISH_SUP = 1.5
# erf' (x) = 2/sqrt(pi) exp(-x^2) peaks at x = 0: sup = 2/sqrt(pi) = 1.12837916709551257389...
ERF_SUP = 1.1283791670955125739
ERF_UPPER = 1.128380
ERF_LOWER = 1.128379
# Softmax along an axis of length n >= 2: exactly 1/2 (proof in bound_softmax).
SOFTMAX_SUP = 0.5


def _gain(*values: float) -> float:
    """max |value|, or inf when any value is NaN/Inf (max() would silently drop a NaN)."""
    mags = [abs(float(v)) for v in values]
    return max(mags) if all(math.isfinite(m) for m in mags) else math.inf


def _constant(upper: float, lower: float, method: str, ctx: RuleContext) -> OpBound:
    if not math.isfinite(upper):
        return OpBound(
            upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-parameter"),
            notes=("an activation parameter is NaN or Inf",),
        )
    if any(int(np.prod(s)) == 0 for s in ctx.input_shapes):
        upper = lower = 0.0  # an empty tensor: the map has no coordinates
    return OpBound(
        upper=Bound(value=float(upper), guarantee=Guarantee.UPPER, method=method),
        lower=Bound(value=float(lower), guarantee=Guarantee.LOWER, method=method),
    )


@RULES.register(OpType.RELU)
def bound_relu(node: Node, ctx: RuleContext) -> OpBound:
    """ReLU: slopes 0 and 1 (Clarke: [0, 1] at 0); Lip = 1."""
    match node.op:
        case Relu():
            return _constant(1.0, 1.0, "activation-constant", ctx)
    raise TypeError(f"bound_relu got a {type(node.op).__name__}")


@RULES.register(OpType.ABS)
def bound_abs(node: Node, ctx: RuleContext) -> OpBound:
    """|x| entry-wise: ||a| - |b|| <= |a - b| (reverse triangle inequality), so Lip <= 1, with
    equality between any two inputs of the same sign (there |x| is the identity or -identity)."""
    match node.op:
        case Abs():
            return _constant(1.0, 1.0, "activation-constant", ctx)
    raise TypeError(f"bound_abs got a {type(node.op).__name__}")


@RULES.register(OpType.LEAKY_RELU)
def bound_leaky_relu(node: Node, ctx: RuleContext) -> OpBound:
    """LeakyReLU(alpha): slopes 1 and alpha; Lip = max(1, |alpha|)."""
    match node.op:
        case LeakyRelu(alpha=alpha):
            value = _gain(1.0, alpha)
            return _constant(value, value, "activation-constant", ctx)
    raise TypeError(f"bound_leaky_relu got a {type(node.op).__name__}")


@RULES.register(OpType.PRELU)
def bound_prelu(node: Node, ctx: RuleContext) -> OpBound:
    """PReLU: y_j = x_j or slope_j x_j; Lip = max(1, max_j |slope_j|) over the input's shape.

    If the slope broadcasts the output beyond the input (each x_j copied r times, copy c with its
    slope_c, all copies on the same side of 0), ||dy||^2 <= sum_c max(1, slope_c^2) dx_j^2, so the
    upper is the broadcast copy gain of max(1, |slope|); the lower is the larger of the gains of the
    all-positive (slope 1) and all-negative (slope_c) configurations, both attained.
    """
    match node.op:
        case PRelu(slope=slope):
            sl = np.asarray(slope, dtype=np.float64)
        case _:
            raise TypeError(f"bound_prelu got a {type(node.op).__name__}")
    if not np.all(np.isfinite(sl)):
        return OpBound(
            upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-slope"),
            notes=("slope contains NaN or Inf",),
        )
    in_shape = ctx.input_shapes[0]
    up, exact_up = broadcast_copy_gain(np.maximum(1.0, np.abs(sl)), in_shape, ctx.output_shape)
    pos, exact_pos = broadcast_copy_gain(None, in_shape, ctx.output_shape)
    neg, exact_neg = broadcast_copy_gain(sl, in_shape, ctx.output_shape)
    low = max(pos, neg)
    if not (exact_up and exact_pos and exact_neg):  # sums of squares were rounded: widen
        rel = (int(np.prod(ctx.output_shape)) + 4) * float(np.finfo(np.float64).eps)
        up, low = up * (1.0 + rel), low * (1.0 - rel)
    return _constant(up, low, "activation-constant", ctx)


@RULES.register(OpType.SIGMOID)
def bound_sigmoid(node: Node, ctx: RuleContext) -> OpBound:
    """Sigmoid: s' = s (1 - s) <= 1/4, attained at 0."""
    match node.op:
        case Sigmoid():
            return _constant(0.25, 0.25, "activation-constant", ctx)
    raise TypeError(f"bound_sigmoid got a {type(node.op).__name__}")


@RULES.register(OpType.ERF)
def bound_erf(node: Node, ctx: RuleContext) -> OpBound:
    """Erf: erf' = 2/sqrt(pi) exp(-x^2) <= 2/sqrt(pi), attained at 0 (globally Lipschitz)."""
    match node.op:
        case Erf():
            return _constant(ERF_UPPER, ERF_LOWER, "activation-constant", ctx)
    raise TypeError(f"bound_erf got a {type(node.op).__name__}")


@RULES.register(OpType.COS)
@RULES.register(OpType.SIN)
def bound_sinusoid(node: Node, ctx: RuleContext) -> OpBound:
    """Sin and Cos: |sin'| = |cos| <= 1 and |cos'| = |sin| <= 1, attained at 0 and pi / 2."""
    match node.op:
        case Sin() | Cos():
            return _constant(1.0, 1.0, "activation-constant", ctx)
    raise TypeError(f"bound_sinusoid got a {type(node.op).__name__}")


@RULES.register(OpType.TANH)
def bound_tanh(node: Node, ctx: RuleContext) -> OpBound:
    """Tanh: 1 - tanh^2 <= 1, attained at 0."""
    match node.op:
        case Tanh():
            return _constant(1.0, 1.0, "activation-constant", ctx)
    raise TypeError(f"bound_tanh got a {type(node.op).__name__}")


def softplus_switch_gap(beta: float, threshold: float) -> float:
    """An upper bound of sup |e| for torch's softplus as executed, x where beta x > threshold,
    minus the smooth s(x) = log(1 + exp(beta x)) / beta: e(x) = x - s(x) = -log(1 + exp(-beta x))
    / beta there (and 0 elsewhere), whose magnitude decreases in x, so sup |e| = log(1 +
    exp(-threshold)) / beta, the size of the jump at beta x = threshold. Computed as
    (max(-t, 0) + log1p(exp(-|t|))) / beta (no overflow) and widened by 16 ulps: each of the
    four correctly rounded operations (exp, log1p, +, /) errs by at most half an ulp, and libm's
    exp and log1p by at most one ulp more."""
    t = float(threshold)
    value = (max(-t, 0.0) + math.log1p(math.exp(-abs(t)))) / float(beta)
    return value * (1.0 + 16.0 * float(np.finfo(np.float64).eps)) if math.isfinite(value) else math.inf


@RULES.register(OpType.SOFTPLUS)
def bound_softplus(node: Node, ctx: RuleContext) -> OpBound:
    """Softplus log(1 + exp(beta x)) / beta: derivative sigmoid(beta x) in (0, 1) for every beta != 0,
    approaching 1; Lip = 1. With torch's threshold the executed op returns x where beta x >
    threshold: op = s + e with s the smooth softplus and 0 <= -e_j <= gap (softplus_switch_gap)
    per unit, so ||e(u)||_2 <= sqrt(n) gap over the n units: the jump."""
    match node.op:
        case Softplus(threshold=None):
            return _constant(1.0, 1.0, "activation-constant", ctx)
        case Softplus(beta=beta, threshold=float() as threshold):
            bound = _constant(1.0, 1.0, "activation-constant", ctx)
            n = int(np.prod(ctx.input_shapes[0]))
            if n == 0:
                return bound
            # sqrt(n) rounded up (correctly rounded sqrt: one ulp above bounds it), times the gap
            root = math.nextafter(math.sqrt(n), math.inf)
            jump = math.nextafter(root * softplus_switch_gap(beta, threshold), math.inf)
            return dataclasses.replace(bound, jump=jump)
    raise TypeError(f"bound_softplus got a {type(node.op).__name__}")


@RULES.register(OpType.ELU)
def bound_elu(node: Node, ctx: RuleContext) -> OpBound:
    """ELU: slope 1 for x > 0, alpha e^x for x < 0 (|.| < |alpha|, approached at 0-), continuous at 0;
    Lip = max(1, |alpha|)."""
    match node.op:
        case Elu(alpha=alpha):
            value = _gain(1.0, alpha)
            return _constant(value, value, "activation-constant", ctx)
    raise TypeError(f"bound_elu got a {type(node.op).__name__}")


@RULES.register(OpType.GELU)
def bound_gelu(node: Node, ctx: RuleContext) -> OpBound:
    """GELU: sup of the derivative, 1.128904145... (erf) or 1.128993068... (tanh), rounded up/down."""
    match node.op:
        case Gelu(approximate="none"):
            return _constant(GELU_ERF_UPPER, GELU_ERF_LOWER, "activation-constant", ctx)
        case Gelu(approximate="tanh"):
            return _constant(GELU_TANH_UPPER, GELU_TANH_LOWER, "activation-constant", ctx)
        case Gelu(approximate=other):
            raise ValueError(f"unknown GELU approximation {other!r}")
    raise TypeError(f"bound_gelu got a {type(node.op).__name__}")


@RULES.register(OpType.HARD_SIGMOID)
def bound_hard_sigmoid(node: Node, ctx: RuleContext) -> OpBound:
    """HardSigmoid clip(alpha x + beta, 0, 1): slope alpha on the (non-empty when alpha != 0)
    interval where 0 < alpha x + beta < 1, else 0; Lip = |alpha|."""
    match node.op:
        case HardSigmoid(alpha=alpha):
            value = _gain(alpha)
            return _constant(value, value, "activation-constant", ctx)
    raise TypeError(f"bound_hard_sigmoid got a {type(node.op).__name__}")


@RULES.register(OpType.HARD_SWISH)
def bound_hard_swish(node: Node, ctx: RuleContext) -> OpBound:
    """HardSwish: derivative (2x + 3)/6 on (-3, 3), so sup = 1.5 (approached at 3-)."""
    match node.op:
        case HardSwish():
            return _constant(HARD_SWISH_SUP, HARD_SWISH_SUP, "activation-constant", ctx)
    raise TypeError(f"bound_hard_swish got a {type(node.op).__name__}")


@RULES.register(OpType.MISH)
def bound_mish(node: Node, ctx: RuleContext) -> OpBound:
    """Mish: sup |f'| = 1.0884981..., the maximum of f' (its infimum is -0.1125...), rounded up/down."""
    match node.op:
        case Mish():
            return _constant(MISH_UPPER, MISH_LOWER, "activation-constant", ctx)
    raise TypeError(f"bound_mish got a {type(node.op).__name__}")


@RULES.register(OpType.SILU)
def bound_silu(node: Node, ctx: RuleContext) -> OpBound:
    """SiLU: sup of s(x) (1 + x (1 - s(x))) = 1.0998393..., rounded up/down."""
    match node.op:
        case Silu():
            return _constant(SILU_UPPER, SILU_LOWER, "activation-constant", ctx)
    raise TypeError(f"bound_silu got a {type(node.op).__name__}")


@RULES.register(OpType.CLIP)
def bound_clip(node: Node, ctx: RuleContext) -> OpBound:
    """Clip (ReLU6, HardTanh): slope 1 between the bounds, 0 outside: Lip = 1; a constant map
    (Lip 0) when min >= max (torch.clamp then returns max everywhere)."""
    match node.op:
        case Clip(min=lo, max=hi):
            if lo is not None and hi is not None and lo >= hi:
                return _constant(0.0, 0.0, "activation-constant", ctx)
            return _constant(1.0, 1.0, "activation-constant", ctx)
    raise TypeError(f"bound_clip got a {type(node.op).__name__}")


@RULES.register(OpType.SOFTMAX)
def bound_softmax(node: Node, ctx: RuleContext) -> OpBound:
    """Softmax along an axis of length n: Lip = 1/2 for n >= 2, 0 for n = 1.

    Proof of the upper bound. The Jacobian of one slice is J = diag(p) - p p^T (symmetric), and for a
    unit vector v, v^T J v = sum_i p_i v_i^2 - (sum_i p_i v_i)^2 = Var_p(v) >= 0: J is PSD and
    ||J||_2 = max_v Var_p(v). Popoviciu's inequality gives Var_p(v) <= (max v - min v)^2 / 4, and
    (a - b)^2 <= 2 (a^2 + b^2) <= 2 ||v||^2 = 2 for two distinct coordinates a, b of v (if max and min
    are one coordinate, v is constant and Var = 0): ||J||_2 <= 1/2 everywhere. The mean value
    inequality along the segment then gives ||S(x) - S(y)|| <= 1/2 ||x - y||; slices along the axis
    are independent, so the whole map's Jacobian is block diagonal with the same bound.
    Lower bound: at x = (0, 0, -L, ..., -L), v = (1, -1, 0, ...)/sqrt(2) gives v^T J v = p_1 =
    1 / (2 + (n - 2) e^{-L}) -> 1/2, so sup ||J|| = 1/2 and Lip = 1/2 exactly. THEORY.md's simpler
    constant 1 is also sound; this one is tighter and proved (and checked in the tests).

    A mask (``Softmax.mask``) fixes the entries it drops at 0 and leaves the softmax of the kept
    entries of each row: the same bound with n the most entries a row keeps.
    """
    match node.op:
        case Softmax(axis=axis, mask=mask):
            pass
        case _:
            raise TypeError(f"bound_softmax got a {type(node.op).__name__}")
    shape = ctx.input_shapes[0]
    if not shape:
        raise ValueError("Softmax of a scalar")
    n = shape[axis] if mask is None else int(np.broadcast_to(np.asarray(mask, dtype=bool), shape).sum(axis=axis).max())
    value = SOFTMAX_SUP if n >= 2 else 0.0
    return _constant(value, value, "softmax-variance-bound", ctx)
