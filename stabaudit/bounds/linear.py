"""Bound rules of dense layers (Linear) and of Resize: exact spectral norms by a float64 SVD."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import dense_norm_method, spectral_norm_dense, sqrt_int_bounds
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Linear, OpType, Resize
from stabaudit.ir.resize import axis_matrix

# Entries at or below this magnitude lose bits when scaled down by a power of two (subnormal range).
_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def scaled_spectral_norm(weight: np.ndarray) -> tuple[float, float | None]:
    """``spectral_norm_dense`` of W / 2^e with 2^e ~ max|W|, scaled back: ||c W|| = c ||W|| (c > 0).

    The scaled matrix has entries in [-1, 1], so neither the SVD nor the absolute slack of the
    dense bound (numerics.TINY, meant for subnormal rounding) depends on the weights' magnitude:
    1e30 weights give no overflow, 1e-300 weights a bound within the relative SVD margin instead
    of the absolute 1e-290. Multiplying by a power of two is exact in binary floating point
    except where a result leaves the normal range: an entry of W / 2^e that falls into the
    subnormal range is rounded (absolute error <= 2^-1075 each, so ||E||_2 <= ||E||_F <=
    sqrt(mn) 2^-1075, widened here to mn * 2^-1074; Weyl's inequality moves every singular
    value by at most ||E||_2), and scaling the bounds back may overflow (to inf: still an
    upper bound, and the lower bound is then capped at the largest float) or underflow (the
    lower bound is then rounded down, the upper bound up).
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return spectral_norm_dense(w)
    peak = float(np.max(np.abs(w)))
    if peak == 0.0:
        return spectral_norm_dense(w)
    exponent = math.frexp(peak)[1]  # peak = f * 2^exponent with f in [0.5, 1)
    scaled = np.ldexp(w, -exponent)
    upper_s, lower_s = spectral_norm_dense(scaled)
    # scaling back up is exact (no overflow: |scaled| <= 1), so equality means nothing was rounded
    if not np.array_equal(np.ldexp(scaled, exponent), w):
        slack = w.size * 2.0**-1074  # subnormal rounding of the scaled entries (Weyl)
        upper_s = upper_s + slack if upper_s + slack > upper_s else math.nextafter(upper_s, math.inf)
        lower_s = None if lower_s is None else max(0.0, lower_s - slack)
    try:
        upper = math.ldexp(upper_s, exponent)
    except OverflowError:
        upper = math.inf
    if upper < _SMALLEST_NORMAL:  # the product left the normal range: it was rounded
        upper = math.nextafter(upper, math.inf)
    if lower_s is None:
        return upper, None
    try:
        lower = math.ldexp(lower_s, exponent)
    except OverflowError:
        lower = float(np.finfo(np.float64).max)
    if lower < _SMALLEST_NORMAL:
        lower = max(0.0, math.nextafter(lower, 0.0))
    return upper, lower


@RULES.register(OpType.LINEAR)
def bound_linear(node: Node, ctx: RuleContext) -> OpBound:
    """y = x W^T + b over the last axis: on the flattened tensor the map is I (x) W (one copy of W
    per leading index), whose norm is ||W||_2 (the norm of a Kronecker product with I); the bias is
    a translation and changes no difference."""
    match node.op:
        case Linear(weight=weight, error=error):
            w = np.asarray(weight)
        case _:
            raise TypeError(f"bound_linear got a {type(node.op).__name__}")
    if w.ndim != 2:
        raise ValueError(f"Linear weight must be 2-D [out, in], got shape {w.shape}")
    if ctx.input_shapes and ctx.input_shapes[0] and ctx.input_shapes[0][-1] != w.shape[1]:
        raise ValueError(f"input shape {ctx.input_shapes[0]} does not end in the weight's {w.shape[1]} inputs")
    upper, lower = scaled_spectral_norm(w)
    if lower is None:
        return OpBound(
            upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="non-finite-weights"),
            notes=("weights contain NaN or Inf",),
        )
    method = dense_norm_method(w.shape)
    if error > 0.0:  # a merged map: Weyl, | ||A|| - ||W|| | <= ||A - W|| <= error
        upper, lower = math.nextafter(upper + error, math.inf), max(0.0, lower - error)
        method = f"{method} of the merged maps"
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method=method),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method=method),
    )


def resize_axis_norm(matrix: np.ndarray) -> tuple[float, float]:
    """(upper, lower) on ||A||_2 of one axis of a Resize. A 0/1 matrix with at most one 1 per row
    (nearest) has columns of disjoint supports, so A^T A = diag(column counts) and ||A||_2 =
    sqrt(max column count), exactly; any other matrix by the certified SVD."""
    a = np.asarray(matrix, dtype=np.float64)
    if np.all((a == 0.0) | (a == 1.0)) and np.all(a.sum(axis=1) <= 1.0):
        return sqrt_int_bounds(int(a.sum(axis=0).max(initial=0.0)))
    upper, lower = scaled_spectral_norm(a)
    return upper, (0.0 if lower is None else lower)


@RULES.register(OpType.RESIZE)
def bound_resize(node: Node, ctx: RuleContext) -> OpBound:
    """Resize is the Kronecker product of one matrix A_k per resized axis and identities on the
    others (ir.resize), plus a constant on extrapolated positions; the singular values of a
    Kronecker product are the products of the factors' singular values, so Lip = prod_k ||A_k||_2
    exactly. Each factor is certified (resize_axis_norm) and each product rounded outward."""
    match node.op:
        case Resize() as op:
            pass
        case _:
            raise TypeError(f"bound_resize got a {type(node.op).__name__}")
    if ctx.input_shapes and ctx.input_shapes[0]:
        shape = ctx.input_shapes[0]
        if tuple(shape[a] for a in op.axes) != op.in_sizes:
            raise ValueError(f"input shape {shape} does not have the Resize's lengths {op.in_sizes} on axes {op.axes}")
    upper, lower = 1.0, 1.0
    for k in range(len(op.axes)):
        u, lo = resize_axis_norm(axis_matrix(op, k)[0])
        upper, lower = math.nextafter(upper * u, math.inf), math.nextafter(lower * lo, 0.0)
    method = "exact (per-axis norms)"
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method=method),
        lower=Bound(value=max(lower, 0.0), guarantee=Guarantee.LOWER, method=method),
    )
