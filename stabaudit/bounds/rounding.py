"""Directed rounding of float64 results that stays sound through underflow and overflow."""

from __future__ import annotations

import math
import sys

import numpy as np

SMALLEST_NORMAL = sys.float_info.min  # 2^-1022: below it results carry an absolute rounding error
LARGEST = sys.float_info.max


def up(value: float) -> float:
    """An upper bound of the exact result whose correctly rounded value is ``value``.

    IEEE 754 round to nearest gives |fl(r) - r| <= ulp(fl(r)) / 2 for +, -, *, / and sqrt, in the
    subnormal range too (ulp = 2^-1074 there), so nextafter(fl(r), +inf) >= r. A result that
    underflowed to 0 becomes 2^-1074 (the exact result may be positive); inf and NaN stay.
    """
    if math.isnan(value) or math.isinf(value):
        return value
    return math.nextafter(value, math.inf)


def down(value: float) -> float:
    """A lower bound of the exact result whose correctly rounded value is ``value`` (see ``up``)."""
    if math.isnan(value) or math.isinf(value):
        return value
    return math.nextafter(value, -math.inf)


def mul_up(a: float, b: float) -> float:
    """An upper bound of a * b for a, b >= 0: 0 only when a factor is exactly 0 (then the product
    is exactly 0, also for 0 * inf: a map with constant 0 is constant, whatever follows)."""
    if a == 0.0 or b == 0.0:
        return 0.0
    return up(a * b)


def ldexp_up(value: float, exponent: int) -> float:
    """An upper bound of value * 2^exponent for value >= 0.

    The product by a power of two is exact in binary floating point unless the result leaves the
    normal range: above it the result is inf (an upper bound still), below it the result is
    rounded to the subnormal grid or to 0 (absolute error <= 2^-1075), so it moves up one ulp.
    A positive value never gives 0: the smallest result is 2^-1074.
    """
    if value == 0.0 or math.isnan(value) or math.isinf(value):
        return value
    try:
        result = math.ldexp(value, exponent)
    except OverflowError:
        return math.inf
    return math.nextafter(result, math.inf) if result < SMALLEST_NORMAL else result


def ldexp_down(value: float, exponent: int) -> float:
    """A lower bound of value * 2^exponent for value >= 0 (0 when it underflows; the largest
    float when it overflows: the exact product is above every float)."""
    if value == 0.0 or math.isnan(value) or math.isinf(value):
        return value
    try:
        result = math.ldexp(value, exponent)
    except OverflowError:
        return LARGEST
    return max(0.0, math.nextafter(result, 0.0)) if result < SMALLEST_NORMAL else result


def norm_exponent(w: np.ndarray) -> int:
    """e with 2^e near ||W||_2 (0 for a zero, empty or non-finite W): a choice of scale only. The
    SVD runs on W / 2^p with 2^p ~ max |W_ij| (entries in [-1, 1]: nothing under- or overflows)."""
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return 0
    peak = float(np.max(np.abs(w)))
    if peak == 0.0:
        return 0
    p = math.frexp(peak)[1]
    norm = float(np.linalg.norm(np.ldexp(w, -p).reshape(w.shape[0], -1), 2))
    return p + round(math.log2(norm)) if norm > 0.0 and math.isfinite(norm) else p
