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


NORM_EXPONENT_SVD_MAX = 512  # above this smaller side, a power iteration estimates the norm


def norm_exponent(w: np.ndarray) -> int:
    """e with 2^e near ||W||_2 (0 for a zero, empty or non-finite W): a choice of scale only, so any
    estimate of the norm serves. On W / 2^p with 2^p ~ max |W_ij| (entries in [-1, 1]: nothing
    under- or overflows): the SVD up to NORM_EXPONENT_SVD_MAX on the smaller side, above it 30
    steps of a power iteration on W^T W from a fixed start (an SVD of a 4096 x 4096 matrix takes
    about a minute, the power iteration a second; deterministic either way)."""
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return 0
    peak = float(np.max(np.abs(w)))
    if peak == 0.0:
        return 0
    p = math.frexp(peak)[1]
    a = np.ldexp(w, -p).reshape(w.shape[0], -1)
    if min(a.shape) <= NORM_EXPONENT_SVD_MAX:
        norm = float(np.linalg.norm(a, 2))
    else:
        v = np.random.default_rng(0).standard_normal(a.shape[1])
        norm = 0.0
        for _ in range(30):
            v = a.T @ (a @ v)
            size = float(np.linalg.norm(v))
            if not (size > 0.0 and math.isfinite(size)):
                break
            v /= size
            norm = math.sqrt(size)
    return p + round(math.log2(norm)) if norm > 0.0 and math.isfinite(norm) else p


SUBNORMAL_ULP = 2.0**-1074  # the spacing of floats below 2^-1022: an underflowing product is off by at most half of it
U = 2.0**-53  # unit roundoff of float64 (round to nearest)


def frobenius_up(a: np.ndarray) -> float:
    """An upper bound of ||A||_F at any scale (inf for non-finite entries).

    The entries are divided by 2^p ~ max |a_ij| first (exact, except for entries that fall into the
    subnormal range: each is then below 2^-1022, so its square, lost or not, adds at most 2^-2044 to
    a sum of at least 1/4); the sum of n squares and the root carry relative errors gamma_{n+2}
    (Higham, Lemma 3.1), and the lost squares at most sqrt(n) 2^-1022 after the root (sqrt(x + d)
    <= sqrt(x) + sqrt(d)); the result is scaled back with outward rounding."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return 0.0
    peak = float(np.max(np.abs(a)))
    if not math.isfinite(peak):
        return math.inf
    if peak == 0.0:
        return 0.0
    p = math.frexp(peak)[1]
    s = np.ldexp(a, -p)
    n = a.size
    root = math.sqrt(float(np.sum(s * s)))
    bound = up(root * (1.0 + 2.0 * (n + 4) * U) + n * SMALLEST_NORMAL)
    return ldexp_up(bound, p)


def product_underflow(result: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """A bound of ||E||_F for the rounding of result = fl(a * b) (entry-wise, broadcast) that the
    relative model |fl(x y) - x y| <= u |x y| misses: a product of non-zero numbers that falls
    below 2^-1022 is off by at most 2^-1075 instead (IEEE 754 gradual underflow), so
    ||E||_F <= sqrt(k) 2^-1075 <= k 2^-1074 for the k such entries; 0 when there is none."""
    with np.errstate(invalid="ignore"):
        nonzero = (np.asarray(a) != 0) & (np.asarray(b) != 0)
        count = int(np.count_nonzero((np.abs(np.asarray(result)) < SMALLEST_NORMAL) & nonzero))
    return 0.0 if count == 0 else up(count * SUBNORMAL_ULP)


def dot_underflow(a: np.ndarray, b: np.ndarray, entries: int, terms: int) -> float:
    """As ``product_underflow`` for ``entries`` sums of ``terms`` products a_ik b_kj each (sums of
    underflowed products are exact): 0 when no product of non-zero entries can fall below 2^-1022
    (the smallest non-zero |a| times the smallest non-zero |b|, halved for its own rounding, is
    above it), else entries * terms * 2^-1074 (>= sqrt(entries) * terms * 2^-1075)."""
    aa, bb = np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64))
    if not (np.any(aa) and np.any(bb)):
        return 0.0
    smallest = float(np.min(aa[aa > 0])) * float(np.min(bb[bb > 0]))
    if smallest * 0.5 >= SMALLEST_NORMAL:
        return 0.0
    return up(float(entries) * float(terms) * SUBNORMAL_ULP)


def _float32_valued(a: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.isfinite(a)) and np.all(a.astype(np.float32).astype(np.float64) == a))


def scaled_matrix(weight: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """alpha * W in float64, and a bound on ||fl(alpha W) - alpha W||_2 (a Linear's ``error``).

    0 when both are float32 values: the product of two has at most 48 significant bits and cannot
    leave float64's normal range. Otherwise each entry is rounded once, relative error <= u
    (||E||_2 <= ||E||_F <= u ||fl(alpha W)||_F, widened by 1% for the result's own rounding), or
    absolutely by <= 2^-1075 where it falls below 2^-1022 (``product_underflow``)."""
    w = np.asarray(weight, dtype=np.float64)
    a = np.float64(alpha)
    result = w * a
    if _float32_valued(w) and _float32_valued(np.asarray(a)):
        return result, 0.0
    return result, up(1.01 * U * frobenius_up(result) + product_underflow(result, w, np.asarray(a)))
