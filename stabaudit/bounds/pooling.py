"""Bound rules of pooling: max pooling by window coverage, average pooling by its exact norm."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import EPS, coverage_1d, spectral_norm_dense, sqrt_int_bounds
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool, OpType


def _spatial(ctx: RuleContext, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape_in, shape_out = ctx.input_shapes[0], ctx.output_shape
    if len(shape_in) != ndim + 2 or len(shape_out) != ndim + 2:
        raise ValueError(f"pooling shapes {shape_in} -> {shape_out} do not have {ndim} spatial dims")
    return tuple(shape_in[2:]), tuple(shape_out[2:])


def _bounds(upper: float, lower: float, method: str, notes: tuple[str, ...] = ()) -> OpBound:
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method=method),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method=method),
        notes=notes,
    )


@RULES.register(OpType.MAX_POOL)
def bound_max_pool(node: Node, ctx: RuleContext) -> OpBound:
    """Lip = sqrt(c), c = the most windows that read one input element (exact).

    Upper: |max_W a - max_W b| <= max_{j in W} |a_j - b_j| <= ||(a - b)_W||_2 for every window W
    (padding is -inf and never wins), so ||y(a) - y(b)||^2 <= sum_W ||(a - b)_W||^2
    = sum_j cov(j) (a_j - b_j)^2 <= c ||a - b||^2. Per axis the windows are products of 1-D windows,
    so cov(j) is a product over axes and c the product of the per-axis maxima (1 without overlap).
    Lower: a = e_j, b = (1 + h) e_j at an element j read by c windows: j is the max of each of them,
    and exactly those c outputs move by h, so ||y(a) - y(b)|| = sqrt(c) ||a - b||.
    """
    match node.op:
        case MaxPool(kernel=kernel, strides=strides, pads=pads, dilations=dilations):
            pass
        case _:
            raise TypeError(f"bound_max_pool got a {type(node.op).__name__}")
    d = len(kernel)
    spatial_in, spatial_out = _spatial(ctx, d)
    if int(np.prod(ctx.input_shapes[0])) == 0 or int(np.prod(ctx.output_shape)) == 0:
        return _bounds(0.0, 0.0, "window-coverage")
    cov = 1
    for i in range(d):
        cov *= coverage_1d(spatial_in[i], spatial_out[i], kernel[i], strides[i], pads[i], dilations[i])
    upper, lower = sqrt_int_bounds(cov)
    return _bounds(upper, lower, "window-coverage")


def avg_pool_matrix_1d(
    n: int, out: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, count_include_pad: bool
) -> np.ndarray:
    """The [out, n] matrix of 1-D average pooling as the executor computes it.

    Output t averages the taps j = stride*t + dilation*k - pad_begin (k < kernel) that fall in
    [0, n); the divisor counts the taps inside [-pad_begin, n + pad_end) (count_include_pad) or
    inside [0, n) (otherwise); ceil-mode windows are clipped at the padded border. A window with
    divisor 0 (only padding, excluded) is a zero row (the executor would output NaN there).
    """
    mat = np.zeros((out, n), dtype=np.float64)
    lo, hi = (-pad_begin, n + pad_end) if count_include_pad else (0, n)
    for t in range(out):
        taps = [stride * t + dilation * k - pad_begin for k in range(kernel)]
        count = sum(1 for j in taps if lo <= j < hi)
        for j in taps:
            if 0 <= j < n and count:
                mat[t, j] += 1.0 / count
    return mat


@RULES.register(OpType.AVG_POOL)
def bound_avg_pool(node: Node, ctx: RuleContext) -> OpBound:
    """The exact operator norm: a product of 1-D norms.

    The window of an N-d output is a product of 1-D windows and its divisor (padded-box count or
    valid-element count) a product of 1-D counts, so the operator on one channel is the Kronecker
    product P_0 (x) ... (x) P_{N-1} of the 1-D pooling matrices, and ||A (x) B||_2 = ||A||_2 ||B||_2
    (singular values of a Kronecker product are the products of singular values); batch and
    channels add an identity factor. Rounding: the stored 1/count entries have relative error
    <= EPS/2 and P >= 0, so ||P - P^|| <= EPS/2 || |P| || = EPS/2 ||P||; the SVD margins of
    ``spectral_norm_dense`` cover the rest.
    """
    match node.op:
        case AvgPool(kernel=kernel, strides=strides, pads=pads, dilations=dilations, count_include_pad=cip):
            pass
        case _:
            raise TypeError(f"bound_avg_pool got a {type(node.op).__name__}")
    d = len(kernel)
    spatial_in, spatial_out = _spatial(ctx, d)
    if int(np.prod(ctx.input_shapes[0])) == 0 or int(np.prod(ctx.output_shape)) == 0:
        return _bounds(0.0, 0.0, "kronecker-svd")
    upper, lower = 1.0, 1.0
    notes: tuple[str, ...] = ()
    for i in range(d):
        mat = avg_pool_matrix_1d(
            spatial_in[i], spatial_out[i], kernel[i], strides[i], pads[i], pads[i + d], dilations[i], cip
        )
        if not np.all(mat.any(axis=1)):
            notes = ("a window holds only padding (the executor divides 0 by 0 there)",)
        up, low = spectral_norm_dense(mat)
        upper *= up * (1.0 + EPS)
        lower *= (low or 0.0) * (1.0 - EPS)
    # d further products, each rounded by at most EPS/2
    return _bounds(upper * (1.0 + (d + 2) * EPS), lower * (1.0 - (d + 2) * EPS), "kronecker-svd", notes)


@RULES.register(OpType.GLOBAL_AVG_POOL)
def bound_global_avg_pool(node: Node, ctx: RuleContext) -> OpBound:
    """The mean of S = prod(spatial) entries per channel: a row of S entries 1/S, norm 1/sqrt(S)."""
    match node.op:
        case GlobalAvgPool():
            pass
        case _:
            raise TypeError(f"bound_global_avg_pool got a {type(node.op).__name__}")
    size = int(np.prod(ctx.input_shapes[0][2:]))
    if size == 0 or int(np.prod(ctx.input_shapes[0])) == 0:
        return _bounds(0.0, 0.0, "exact")
    value = 1.0 / math.sqrt(size)  # a sqrt and a division, each correctly rounded
    return _bounds(value * (1.0 + 2 * EPS), value * (1.0 - 2 * EPS), "exact")


@RULES.register(OpType.GLOBAL_MAX_POOL)
def bound_global_max_pool(node: Node, ctx: RuleContext) -> OpBound:
    """One window per channel, every element in exactly one window: Lip = 1 (see MaxPool)."""
    match node.op:
        case GlobalMaxPool():
            pass
        case _:
            raise TypeError(f"bound_global_max_pool got a {type(node.op).__name__}")
    if int(np.prod(ctx.input_shapes[0])) == 0:
        return _bounds(0.0, 0.0, "window-coverage")
    return _bounds(1.0, 1.0, "window-coverage")
