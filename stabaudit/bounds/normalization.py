"""Bound rule of element-wise affine maps (Affine: folded BatchNorm, Mul/Div/Add by constants)."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import EPS
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Affine, LayerNorm, OpType

_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def broadcast_copy_gain(scale: np.ndarray | None, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[float, bool]:
    """(max over input entries j of sqrt(sum over the output copies c of j of scale_c^2), exact?).

    y = x * scale (+ shift) with numpy broadcasting: each input entry x_j lands in r >= 1 output entries (r > 1
    only where the output is larger than the input) with its own factors scale_c, so
    A^T A = diag_j(sum_c scale_c^2) and ||A||_2 = sqrt(max_j sum_c scale_c^2) exactly. Without
    expansion (r = 1) this is max |scale| over the broadcast shape, computed without rounding.
    """
    s = np.ones(()) if scale is None else np.asarray(scale, dtype=np.float64)
    # the output shape decides: a shift may broadcast the result beyond x * scale
    full = np.broadcast_shapes(tuple(in_shape), s.shape, tuple(out_shape))
    if tuple(out_shape) and full != tuple(out_shape):
        raise ValueError(f"Affine output {out_shape} is not the broadcast of input {in_shape} and scale {s.shape}")
    sb = np.broadcast_to(s, full)
    if sb.size == 0:
        return 0.0, True
    if full == tuple(in_shape):
        return float(np.max(np.abs(sb))), True
    # axes along which the input is repeated: sum the squares over its copies
    lead = len(full) - len(in_shape)
    padded_in = (1,) * lead + tuple(in_shape)
    axes = tuple(i for i, (a, b) in enumerate(zip(padded_in, full, strict=True)) if a == 1 and b != 1)
    # divide by 2^e ~ max |scale| first (exact, powers of two), so that the squares neither overflow
    # (|scale| > 1e154) nor underflow (|scale| < 1e-154, which would give a bound of 0); entries
    # that fall into the subnormal range after the division are below 2^-1022 of the largest one,
    # so their squares change the sum (>= 1/4) by less than r * 2^-2040, far inside the (r + 4) EPS
    # margin of the caller
    peak = float(np.max(np.abs(sb)))
    if not np.isfinite(peak) or peak == 0.0:
        return (peak if peak == 0.0 else math.inf), False
    exponent = math.frexp(peak)[1]
    scaled = np.ldexp(sb, -exponent)
    sums = np.sum(scaled * scaled, axis=axes)
    root = float(np.sqrt(np.max(sums)))
    try:
        return math.ldexp(root, exponent), False
    except OverflowError:
        return math.inf, False


@RULES.register(OpType.AFFINE)
def bound_affine(node: Node, ctx: RuleContext) -> OpBound:
    """A diagonal map (the shift is a translation): Lip = max |scale| over the input's shape,
    exact for the stored float64 values (upper = lower; scale None means 1)."""
    match node.op:
        case Affine(scale=scale):
            pass
        case _:
            raise TypeError(f"bound_affine got a {type(node.op).__name__}")
    in_shape = ctx.input_shapes[0]
    if scale is not None and not np.all(np.isfinite(np.asarray(scale, dtype=np.float64))):
        return OpBound(
            upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-scale"),
            notes=("scale contains NaN or Inf",),
        )
    gain, exact = broadcast_copy_gain(scale, in_shape, ctx.output_shape)
    if exact:
        # a maximum of absolute values of float64 numbers is computed without rounding
        upper, lower = gain, gain
    else:
        # a sum of r squares and a sqrt: relative error <= (r + 2) * EPS (Higham Lemma 3.1)
        r = max(1, int(np.prod(ctx.output_shape)) // max(1, int(np.prod(in_shape))))
        upper = gain * (1.0 + (r + 4) * EPS)
        lower = gain * (1.0 - (r + 4) * EPS)
        if gain < _SMALLEST_NORMAL:
            # subnormal results carry an absolute rounding error (<= 1 ulp = 2^-1074 per operation)
            # instead of a relative one: widen by 4 ulps
            upper, lower = upper + 2.0**-1072, max(0.0, lower - 2.0**-1072)
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="exact-diagonal"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="exact-diagonal"),
    )


@RULES.register(OpType.LAYER_NORM)
def bound_layer_norm(node: Node, ctx: RuleContext) -> OpBound:
    """LayerNorm over groups of n entries: Lip = max|scale| / sqrt(eps) (upper), attained at a
    constant group up to the two largest |scale| entries.

    Per group, c = P x with P the centring projection (||P|| = 1), v = ||c||^2 / n, s = sqrt(v + eps)
    and g(x) = c / s. On the subspace P projects to, its Jacobian is (1/s) (I - c c^T / (n s^2)): the
    eigenvalue 1/s on the directions orthogonal to c and (1/s)(1 - v / (v + eps)) = eps / s^3 <= 1/s
    along c, so ||J_g|| <= 1/s <= 1/sqrt(eps), with equality at c = 0 (J_g = P / sqrt(eps)); the
    groups are independent (block-diagonal Jacobian) and the scale is diag(scale) after g (the bias
    a shift): Lip <= max|scale| / sqrt(eps) by the mean value inequality on the convex input space.
    Lower: at c = 0 the direction (e_i - e_j) / sqrt 2 is mapped to a vector of norm
    sqrt((scale_i^2 + scale_j^2) / 2) / sqrt(eps); i, j the two largest |scale| entries of a group
    (n >= 2). A group of one entry maps to bias: Lip = 0.

    RMSNorm (centered=False): g(x) = x / s with s = sqrt(||x||^2 / n + eps), the same Jacobian
    without the projection, (1/s) (I - x x^T / (n s^2)): ||J_g|| <= 1/sqrt(eps), equal to it at x = 0
    where J_g = I / sqrt(eps): Lip = max|scale| / sqrt(eps) exactly (a group of one entry too).
    """
    match node.op:
        case LayerNorm(axis=axis, epsilon=eps, scale=scale, centered=centered):
            pass
        case _:
            raise TypeError(f"bound_layer_norm got a {type(node.op).__name__}")
    shape = ctx.input_shapes[0]
    n = int(np.prod(shape[axis:]))
    if int(np.prod(shape)) == 0 or (n == 1 and centered):
        return OpBound(upper=Bound(value=0.0, guarantee=Guarantee.UPPER, method="layer-norm"),
                       lower=Bound(value=0.0, guarantee=Guarantee.LOWER, method="layer-norm"))
    g = np.ones(shape[axis:]) if scale is None else np.abs(np.broadcast_to(np.asarray(scale, np.float64), shape[axis:]))
    if not (math.isfinite(eps) and eps > 0.0) or not np.all(np.isfinite(g)):
        return OpBound(upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-parameter"),
                       notes=("LayerNorm's epsilon is not positive and finite, or its scale is NaN/Inf",))
    top = np.sort(g.reshape(-1))[-2:]
    root = math.sqrt(eps)  # correctly rounded: within 1 ulp
    upper = float(top[-1]) / root * (1.0 + 4 * EPS)
    if centered:
        lower = math.sqrt((float(top[0]) ** 2 + float(top[1]) ** 2) / 2.0) / root * (1.0 - 8 * EPS)
    else:
        lower = float(top[-1]) / root * (1.0 - 4 * EPS)
    return OpBound(upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="layer-norm"),
                   lower=Bound(value=min(lower, upper), guarantee=Guarantee.LOWER, method="layer-norm"))
