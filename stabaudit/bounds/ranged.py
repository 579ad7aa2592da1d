"""Per-operator Lipschitz bounds over input ranges: ``ranged_bound(node, ctx, inputs, output)``.

A global rule (``RULES``) bounds an operator on its whole input space, which is infinite for the
operators that need a domain (products, quotients, exp, log, ...) and loose for smooth activations
whose slope is small on the values they actually see. Given boxes ``inputs[i]`` (``Interval``,
full static shape) enclosing the node's inputs, the rules here bound

    ||f(x) - f(y)||_2 <= upper * ||x - y||_2                       for all x, y in the input box

(multi-input nodes: ``Combine.SUM`` with ``||f(x) - f(x')|| <= sum_i gain_i ||x_i - x'_i||``).
Every rule rests on the mean value inequality along the segment [x, y], which lies in the box
because a box is convex: ||f(x) - f(y)|| <= sup_{z in box} ||J_f(z)|| ||x - y||, with the Clarke
Jacobian at the kinks of piecewise-smooth maps (f is absolutely continuous along the segment and
its derivative, where it exists, lies in the Clarke hull). ``output`` is accepted for the fixed
signature but not used: it encloses the values the node takes, not f over the whole box (the
segment between two reached inputs may leave the reached set), so the rules bound f's range from
the input box themselves.

Sound rounding: every floating-point result is widened by explicit (1 + k EPS) factors (Higham,
Lemma 3.1 for sums), libm functions (exp, log1p, pow, erfc) by 16 ulps (their errors are below
1 ulp in glibc), the few special functions from scipy by 2048 ulps, plus TINY for the subnormal
range. Infinite (or NaN) ranges give an infinite bound or None, never a wrong finite one.

``ranged_bound`` returns None when the ranges do not improve on the global rule (linear maps,
structural maps, extrema, or a range as wide as the global worst case).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from stabaudit.bounds.activations import (
    ERF_SUP,
    ERF_UPPER,
    GELU_ERF_SUP,
    GELU_ERF_UPPER,
    GELU_TANH_SUP,
    GELU_TANH_UPPER,
    HARD_SWISH_SUP,
    MISH_NEG_UPPER,
    MISH_UPPER,
    SILU_SUP,
    SILU_UPPER,
    softplus_switch_gap,
)
from stabaudit.bounds.base import RULES, Bound, Combine, Guarantee, Interval, OpBound, RuleContext
from stabaudit.bounds.normalization import broadcast_copy_gain
from stabaudit.bounds.numerics import EPS, TINY, periodic_hit, spectral_norm_dense
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Node

PREFIX = "ranged"  # every method string here starts with it
LIBM_ULPS = 16  # widening of exp, log1p, pow, sqrt, tanh chains (glibc: < 1 ulp each)
SPECIAL_ULPS = 2048  # scipy's erfc/ndtr (Cephes: peak relative error 5.7e-14 ~ 257 ulps)

# Critical points of the activations' derivatives, enclosed: f'' vanishes only there, so f' is
# monotone between them and sup |f'| on [lo, hi] is attained at lo, hi or an enclosed critical point.
SQRT2_ENCLOSURE = (1.4142135623730949, 1.4142135623730954)  # GELU (erf): f'' = phi(x) (2 - x^2)
GELU_TANH_CRITICAL = (1.4185040087, 1.4185040088)  # GELU (tanh): argmax of f' (activations.py)
SILU_CRITICAL = (2.3993572805, 2.3993572806)  # SiLU: x tanh(x / 2) = 2
MISH_CRITICAL = (1.4905711794, 1.4905711795)  # Mish: the maximum of f' (activations.py)
MISH_NEG_CRITICAL = (-2.2563763964, -2.2563763963)  # Mish: the minimum of f' (negative)
# f'(x) + f'(-x) = 1 for GELU and SiLU (f(x) - f(-x) = x): the minimum of f' is 1 - its maximum,
# so sup |f'| near the negative critical point is (sup - 1), rounded up here.
GELU_ERF_NEG_UPPER = 0.128905  # GELU_ERF_SUP - 1 = 0.12890414518...
GELU_TANH_NEG_UPPER = 0.128994  # GELU_TANH_SUP - 1 = 0.12899306865...
SILU_NEG_UPPER = 0.099840  # SILU_SUP - 1 = 0.09983932012...
assert GELU_ERF_SUP - 1 < GELU_ERF_NEG_UPPER and GELU_TANH_SUP - 1 < GELU_TANH_NEG_UPPER
assert SILU_SUP - 1 < SILU_NEG_UPPER and ERF_SUP < ERF_UPPER


# ---- small helpers -----------------------------------------------------------------------------
def _up(value: float, ulps: int = 4) -> float:
    """A nonnegative value widened by ``ulps`` relative roundings plus TINY (inf stays inf)."""
    v = float(value)
    if math.isnan(v):
        return math.inf
    return v * (1.0 + ulps * EPS) + TINY if math.isfinite(v) else math.inf


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _sanitized(interval: Interval) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) in float64; a NaN endpoint becomes -inf / +inf (an enclosure of everything)."""
    lo = np.asarray(interval.lo, dtype=np.float64)
    hi = np.asarray(interval.hi, dtype=np.float64)
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _result(value: float, method: str, *, notes: tuple[str, ...] = (), combine: Combine = Combine.CHAIN,
            input_gains: tuple[float, ...] = (), jump: float = 0.0) -> OpBound:
    return OpBound(
        upper=Bound(value=float(value), guarantee=Guarantee.UPPER, method=f"{PREFIX}: {method}"),
        combine=combine,
        input_gains=input_gains,
        jump=jump,
        notes=notes,
    )


def _dist0(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """dist(0, [lo, hi]) entry by entry, exactly (0 when the interval holds 0)."""
    return np.maximum(np.maximum(lo, -hi), 0.0)


def copy_gain(mag: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    """sqrt(max over the entries j of an operand of shape ``in_shape`` of sum_{o fed by j} mag_o^2),
    rounded up: the norm of dy = mag (.) B dx with B the numpy broadcast of ``in_shape`` to
    ``out_shape`` (B^T diag(mag^2) B is diagonal). ``mag`` (>= 0) broadcasts to ``out_shape``;
    a NaN counts as inf."""
    m = np.broadcast_to(np.asarray(mag, dtype=np.float64), tuple(out_shape))
    if m.size == 0 or _size(tuple(in_shape)) == 0:
        return 0.0
    if np.isnan(m).any():
        return math.inf
    gain, exact = broadcast_copy_gain(m, tuple(in_shape), tuple(out_shape))
    if exact or not math.isfinite(gain):
        return float(gain)
    # a sum of r squares and a sqrt: relative error <= (r + 4) EPS (Higham Lemma 3.1)
    r = max(1, _size(tuple(out_shape)) // max(1, _size(tuple(in_shape))))
    return gain * (1.0 + (r + 4) * EPS) + 2.0**-1072


def _global(node: Node, ctx: RuleContext) -> OpBound:
    rule = RULES.get(node.op.type)
    result: OpBound = rule(node, ctx)
    return result


def _if_tighter(node: Node, ctx: RuleContext, bound: OpBound) -> OpBound | None:
    """``bound`` when it improves on the node's global rule (its upper, a gain or its jump), else None."""
    glob = _global(node, ctx)
    if bound.input_gains:
        g_gains = glob.input_gains or (glob.upper.value,) * len(bound.input_gains)
        if any(g < h for g, h in zip(bound.input_gains, g_gains, strict=True)):
            return bound
        return None
    if bound.upper.value < glob.upper.value or bound.jump < glob.jump:
        if bound.upper.value > glob.upper.value:  # only the jump improved: keep the global constant
            return OpBound(upper=glob.upper, jump=bound.jump, notes=bound.notes)
        return bound
    return None


# ---- element-wise maps -------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)): relative error a few ulps (exp < 1 ulp, one add, one divide)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _with_critical(m: np.ndarray, lo: np.ndarray, hi: np.ndarray, enclosure: tuple[float, float],
                   value: float) -> np.ndarray:
    """max(m, value) where [lo, hi] may contain a point of ``enclosure``."""
    a, b = enclosure
    return np.where((lo <= b) & (hi >= a), np.maximum(m, value), m)


def _endpoint_slope(fprime: np.ndarray, terms: np.ndarray, x: np.ndarray, at_minus_inf: float,
                    at_plus_inf: float, rel: np.ndarray) -> np.ndarray:
    """|f'(x)| rounded up: |computed| + rel * (sum of |terms|) + TINY; the limits at +-inf."""
    with np.errstate(invalid="ignore"):
        up = np.abs(fprime) + rel * terms + TINY
    up = np.where(x == -np.inf, at_minus_inf, up)
    up = np.where(x == np.inf, at_plus_inf, up)
    return np.where(np.isnan(up), np.inf, up)


def _gelu_erf_slope(x: np.ndarray) -> np.ndarray:
    """|Phi(x) + x phi(x)|, rounded up. Phi by scipy's ndtr (erfc inside: 2048 ulps), phi by exp;
    exp(-x^2 / 2) inherits x^2 EPS of relative error from the rounding of x^2 / 2."""
    from scipy import special

    with np.errstate(all="ignore"):
        cdf = special.ndtr(x)
        term = x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        term = np.where(np.isfinite(x), term, 0.0)
        rel = (SPECIAL_ULPS + 2.0 * x * x) * EPS
        return _endpoint_slope(cdf + term, np.abs(cdf) + np.abs(term), x, 0.0, 1.0, rel)


_GELU_TANH_C = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715


def _gelu_tanh_slope(x: np.ndarray) -> np.ndarray:
    """|0.5 (1 + tanh u) + 0.5 x sech^2(u) c (1 + 3 a x^2)|, u = c (x + a x^3), rounded up. The
    relative error delta ~ 8 EPS of u moves tanh u and sech^2 u by factors 1 + 2 |u| delta."""
    with np.errstate(all="ignore"):
        u = _GELU_TANH_C * (x + _GELU_TANH_A * x * x * x)
        e = np.exp(-2.0 * np.abs(u))
        sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e))
        t1 = np.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))  # 0.5 (1 + tanh u) = sigmoid(2u)
        t2 = 0.5 * x * sech2 * _GELU_TANH_C * (1.0 + 3.0 * _GELU_TANH_A * x * x)
        t2 = np.where(np.isfinite(x), t2, 0.0)
        rel = (LIBM_ULPS * 4 + 32.0 * np.abs(u)) * EPS
        return _endpoint_slope(t1 + t2, np.abs(t1) + np.abs(t2), x, 0.0, 1.0, rel)


def _silu_slope(x: np.ndarray) -> np.ndarray:
    """|sigmoid(x) + x sigmoid(x) sigmoid(-x)|, rounded up."""
    with np.errstate(all="ignore"):
        s, t = _sigmoid(x), _sigmoid(-x)
        t2 = np.where(np.isfinite(x), x * s * t, 0.0)
        return _endpoint_slope(s + t2, np.abs(s) + np.abs(t2), x, 0.0, 1.0, np.full_like(x, 64 * EPS))


def _mish_slope(x: np.ndarray) -> np.ndarray:
    """|tanh(sp) + x sech^2(sp) sigmoid(x)|, sp = softplus(x) = log1p(exp(x)) (x itself above 30,
    where log1p(exp(x)) - x < 1e-13), rounded up: each factor within a few ulps (LIBM_ULPS), the
    products and the sum rounded, so 64 ulps of the sum of the terms' magnitudes."""
    with np.errstate(all="ignore"):
        sp = np.where(x > 30.0, x, np.log1p(np.exp(np.minimum(x, 30.0))))
        t = np.tanh(sp)
        sech2 = 1.0 / np.cosh(sp) ** 2  # not 1 - t^2: no cancellation where t is near 1
        t2 = np.where(np.isfinite(x), x * sech2 * _sigmoid(x), 0.0)
        return _endpoint_slope(t + t2, np.abs(t) + np.abs(t2), x, 0.0, 1.0, np.full_like(x, 64 * EPS))


def _smooth_activation_slope(slope: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray,
                             crit: tuple[float, float], peak: float, neg_peak: float, cap: float) -> np.ndarray:
    m = np.maximum(slope(lo), slope(hi))
    m = _with_critical(m, lo, hi, crit, peak)
    m = _with_critical(m, lo, hi, (-crit[1], -crit[0]), neg_peak)
    return np.minimum(m, cap)


def activation_slopes(op: O.Op, lo: np.ndarray, hi: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """An upper bound s_o of sup |f'| over [lo_o, hi_o] (Clarke hull at kinks) for each output entry
    of an element-wise activation (input range broadcast to ``out_shape``), or None (op unknown)."""
    lo = np.broadcast_to(lo, out_shape)
    hi = np.broadcast_to(hi, out_shape)
    one = np.ones(out_shape)
    with np.errstate(all="ignore"):
        match op:
            case O.Relu():
                m = np.where(hi > 0, 1.0, 0.0) * one
            case O.LeakyRelu(alpha=alpha):
                m = np.maximum(np.where(hi > 0, 1.0, 0.0), np.where(lo < 0, abs(float(alpha)), 0.0)) * one
            case O.PRelu(slope=slope):
                sl = np.abs(np.broadcast_to(np.asarray(slope, dtype=np.float64), out_shape))
                if not np.all(np.isfinite(sl)):
                    return None
                m = np.maximum(np.where(hi > 0, 1.0, 0.0), np.where(lo < 0, sl, 0.0))
            case O.Elu(alpha=alpha):
                # alpha e^x on x < 0: |.| increasing in x, at most |alpha|
                neg = abs(float(alpha)) * np.minimum(1.0, np.exp(np.minimum(hi, 0.0)) * (1 + LIBM_ULPS * EPS))
                m = np.maximum(np.where(hi > 0, 1.0, 0.0), np.where(lo < 0, neg, 0.0))
            case O.Sigmoid():
                # s' = e^-d / (1 + e^-d)^2 is even and decreasing in |x|: its max at d = dist(0, I)
                e = np.exp(-_dist0(lo, hi))
                m = np.minimum(0.25, e / ((1.0 + e) * (1.0 + e)) * (1 + LIBM_ULPS * EPS) + TINY)
            case O.Tanh():
                # 1 - tanh^2 = sech^2 = 4 e^{-2d} / (1 + e^{-2d})^2, even, decreasing in |x|
                e = np.exp(-2.0 * _dist0(lo, hi))
                m = np.minimum(1.0, 4.0 * e / ((1.0 + e) * (1.0 + e)) * (1 + LIBM_ULPS * EPS) + TINY)
            case O.Sin() | O.Cos():
                # |sin'| = |cos| is 1 at k pi and monotone between the points k pi / 2; |cos'| = |sin|
                # is 1 at pi / 2 + k pi: 1 where the interval may hold such a point, else the larger
                # end value (libm-grade, a few ulps)
                slope_lo, slope_hi = (np.cos(lo), np.cos(hi)) if isinstance(op, O.Sin) else (np.sin(lo), np.sin(hi))
                ends = np.maximum(np.abs(slope_lo), np.abs(slope_hi)) * (1 + LIBM_ULPS * EPS) + 4 * EPS
                peak = periodic_hit(lo, hi, 0.0 if isinstance(op, O.Sin) else math.pi / 2, math.pi)
                m = np.where(peak, 1.0, np.minimum(ends, 1.0))
            case O.Erf():
                # erf' = 2/sqrt(pi) exp(-x^2), even, decreasing in |x|; d^2 rounded down
                d = _dist0(lo, hi)
                sq = d * d * (1.0 - 4 * EPS)
                m = np.minimum(ERF_UPPER, ERF_SUP * np.exp(-sq) * (1 + LIBM_ULPS * EPS) + TINY)
            case O.Softplus(beta=beta):
                # smooth part: slope sigmoid(beta x), monotone in x: sup at the end maximising beta x
                z = np.maximum(float(beta) * lo, float(beta) * hi)
                z = z + np.abs(z) * 2 * EPS + TINY
                m = np.minimum(1.0, _sigmoid(z) * (1 + LIBM_ULPS * EPS) + TINY)
            case O.Gelu(approximate="none"):
                m = _smooth_activation_slope(_gelu_erf_slope, lo, hi, SQRT2_ENCLOSURE, GELU_ERF_UPPER,
                                             GELU_ERF_NEG_UPPER, GELU_ERF_UPPER)
            case O.Gelu(approximate="tanh"):
                m = _smooth_activation_slope(_gelu_tanh_slope, lo, hi, GELU_TANH_CRITICAL, GELU_TANH_UPPER,
                                             GELU_TANH_NEG_UPPER, GELU_TANH_UPPER)
            case O.Silu():
                m = _smooth_activation_slope(_silu_slope, lo, hi, SILU_CRITICAL, SILU_UPPER,
                                             SILU_NEG_UPPER, SILU_UPPER)
            case O.Mish():
                # f' decreases to its minimum at -2.2564, increases to its maximum at 1.4906, then
                # decreases to 1: sup |f'| on [lo, hi] at lo, hi or an enclosed critical point
                m = np.maximum(_mish_slope(lo), _mish_slope(hi))
                m = _with_critical(m, lo, hi, MISH_CRITICAL, MISH_UPPER)
                m = np.minimum(_with_critical(m, lo, hi, MISH_NEG_CRITICAL, MISH_NEG_UPPER), MISH_UPPER)
            case O.HardSigmoid(alpha=alpha, beta=beta):
                # slope alpha where 0 < z < 1 (z = alpha x + beta), else 0; z widened by 4 ulps
                z1, z2 = lo * alpha + beta, hi * alpha + beta
                zl, zh = np.minimum(z1, z2), np.maximum(z1, z2)
                zl, zh = zl - 4 * EPS * np.abs(zl) - TINY, zh + 4 * EPS * np.abs(zh) + TINY
                m = np.where((zl < 1) & (zh > 0), abs(float(alpha)), 0.0) * one
            case O.HardSwish():
                # slope 0 below -3, (2x + 3) / 6 on (-3, 3) (|.| max at an end), 1 above 3
                a, b = np.clip(lo, -3.0, 3.0), np.clip(hi, -3.0, 3.0)
                mid = np.maximum(np.abs(2 * a + 3), np.abs(2 * b + 3)) / 6 * (1 + 4 * EPS)
                m = np.maximum(np.where((lo < 3) & (hi > -3), mid, 0.0), np.where(hi > 3, 1.0, 0.0))
                m = np.minimum(m, HARD_SWISH_SUP)
            case O.Clip(min=cmin, max=cmax):
                low = -math.inf if cmin is None else float(cmin)
                high = math.inf if cmax is None else float(cmax)
                m = np.where((lo < high) & (hi > low) & (low < high), 1.0, 0.0) * one
            case O.Abs():
                m = one.copy()
            case _:
                return None
    m = np.where(np.isnan(m), np.inf, m)
    # an entry whose range is one point is constant: it contributes nothing
    return np.where((lo == hi) & np.isfinite(lo), 0.0, m)


def _activation(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    op = node.op
    out_shape = tuple(ctx.output_shape)
    m = activation_slopes(op, lo, hi, out_shape)
    if m is None:
        return None
    gain = copy_gain(m, tuple(ctx.input_shapes[0]), out_shape)
    jump = 0.0
    if isinstance(op, O.Softplus) and op.threshold is not None:
        # the executed op switches to x where beta x > threshold: only entries that can get there
        # (beta x widened by 2^-20 relatively: the kernel may form it in float32)
        with np.errstate(invalid="ignore"):
            z = np.maximum(op.beta * lo, op.beta * hi)
            z = z + np.abs(z) * 2.0**-20 + TINY
        k = int(np.count_nonzero(~(z <= op.threshold)))
        if k:
            root = math.nextafter(math.sqrt(k), math.inf)
            jump = math.nextafter(root * softplus_switch_gap(op.beta, op.threshold), math.inf)
    return _if_tighter(node, ctx, _result(gain, "slope-on-range", jump=jump,
                                          notes=("sup |f'| over the input range",)))


# ---- element-wise maps that need a domain ------------------------------------------------------
def _exact_exponent(p: float) -> float | None:
    """p - 1 when it is computed exactly, else None."""
    e = p - 1.0
    return e if Fraction(e) == Fraction(p) - 1 else None


def domain_slopes(op: O.Op, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """An upper bound of sup |f'| over [lo_j, hi_j] per entry for exp, log, sqrt, 1/x, x^p, or None."""
    inf = np.inf
    with np.errstate(all="ignore"):
        match op:
            case O.Exp():
                m = np.exp(hi) * (1 + LIBM_ULPS * EPS) + TINY  # exp' = exp, increasing
            case O.Log():
                m = np.where(lo > 0, 1.0 / lo * (1 + 2 * EPS), inf)  # 1/x, decreasing on x > 0
            case O.Sqrt():
                m = np.where(lo > 0, 0.5 / np.sqrt(lo) * (1 + 4 * EPS), inf)  # 1/(2 sqrt x), decreasing
            case O.Reciprocal():
                d = _dist0(lo, hi)
                m = np.where(d > 0, 1.0 / (d * d) * (1 + 4 * EPS), inf)  # 1/x^2, max nearest 0
            case O.Pow(exponent=p):
                p = float(p)
                if not math.isfinite(p):
                    return None
                if p == 0.0:
                    return np.zeros(lo.shape)  # torch.pow(x, 0) = 1 everywhere
                e = _exact_exponent(p)
                if e is None:
                    return np.full(lo.shape, inf)
                if p == round(p):
                    # |p| |x|^(p-1): increasing in |x| for p > 1, decreasing for p < 1
                    base = np.maximum(np.abs(lo), np.abs(hi)) if e > 0 else _dist0(lo, hi)
                    m = abs(p) * np.power(base, e) * (1 + LIBM_ULPS * EPS) + TINY
                    if e < 0:
                        m = np.where(base > 0, m, inf)
                else:
                    # x^p of a negative x is NaN: the range must lie in x >= 0 (x > 0 when p < 1)
                    base = hi if e > 0 else lo
                    m = abs(p) * np.power(base, e) * (1 + LIBM_ULPS * EPS) + TINY
                    m = np.where((lo >= 0) if e > 0 else (lo > 0), m, inf)
            case _:
                return None
    return np.where(np.isnan(m), inf, m)


def _domain_map(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    m = domain_slopes(node.op, lo, hi)
    if m is None:
        return None
    gain = float(np.max(m)) if m.size else 0.0
    return _if_tighter(node, ctx, _result(gain, "slope-on-range", notes=("sup |f'| over the input range",)))


# ---- products and quotients of two variables ---------------------------------------------------
def _pair(g1: float, g2: float, method: str, note: str) -> OpBound:
    """Combine.SUM with gains (g1, g2); upper = sqrt(g1^2 + g2^2), the constant of the joint input
    (Cauchy-Schwarz on g1 ||dx|| + g2 ||dy||), rounded up."""
    joint = _up(math.hypot(g1, g2)) if math.isfinite(g1) and math.isfinite(g2) else math.inf
    return _result(joint, method, combine=Combine.SUM, input_gains=(g1, g2), notes=(note,))


def _mul(node: Node, ctx: RuleContext, ranges: list[tuple[np.ndarray, np.ndarray]]) -> OpBound | None:
    """x * y: xy - x'y' = y (x - x') + x' (y - y'), so with B_x the broadcast of x to the output,
    ||y (.) B_x dx||^2 = sum_j dx_j^2 sum_{o fed by j} y_o^2 <= max_j sum_o |y|max_o^2 ||dx||^2."""
    (xl, xh), (yl, yh) = ranges
    out = tuple(ctx.output_shape)
    xmag, ymag = np.maximum(np.abs(xl), np.abs(xh)), np.maximum(np.abs(yl), np.abs(yh))
    gx = copy_gain(ymag, tuple(ctx.input_shapes[0]), out)
    gy = copy_gain(xmag, tuple(ctx.input_shapes[1]), out)
    return _if_tighter(node, ctx, _pair(gx, gy, "product", "gains: the other operand's magnitude "
                                        "over each entry's broadcast copies"))


def _div(node: Node, ctx: RuleContext, ranges: list[tuple[np.ndarray, np.ndarray]]) -> OpBound | None:
    """x / y: x/y - x'/y' = (x - x') / y - x' (y - y') / (y y'), |y y'| >= d^2 with d the distance
    of y's interval to 0 (infinite gains when it holds 0)."""
    (xl, xh), (yl, yh) = ranges
    out = tuple(ctx.output_shape)
    xmag = np.broadcast_to(np.maximum(np.abs(xl), np.abs(xh)), out)
    d = np.broadcast_to(_dist0(yl, yh), out)
    with np.errstate(all="ignore"):
        inv = np.where(d > 0, 1.0 / d * (1 + 2 * EPS), np.inf)
        quot = np.where(d > 0, xmag / (d * d) * (1 + 4 * EPS) + TINY, np.inf)
    quot = np.where(np.isnan(quot), np.inf, quot)
    gx = copy_gain(inv, tuple(ctx.input_shapes[0]), out)
    gy = copy_gain(quot, tuple(ctx.input_shapes[1]), out)
    return _if_tighter(node, ctx, _pair(gx, gy, "quotient", "gains: 1 / min |y| and max |x| / y^2 "
                                        "over each entry's broadcast copies"))


def nonneg_spectral_upper(mag: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Certified upper bounds of ||M_b||_2 for a batch [..., p, q] of nonnegative matrices.

    Collatz-Wielandt: for the nonnegative G = M^T M and any positive v, ||M||_2^2 = rho(G) <=
    max_i (G v)_i / v_i; v from ``iterations`` power steps (the Perron vector in the limit), floored
    at 2^-60 to stay positive. Each matrix is scaled by a power of two (exact) to entries < 1; the
    two products of nonnegative terms err by at most gamma_q and gamma_p relatively (Higham Lemma
    3.1, any summation order) plus (p + q)^2 2^-1074 absolutely (subnormals); the bound is also
    capped by the Frobenius norm (rounded up alike).
    """
    m = np.asarray(mag, dtype=np.float64)
    batch, (p, q) = m.shape[:-2], m.shape[-2:]
    if m.size == 0:
        return np.zeros(batch)
    if q > p:
        m, p, q = np.swapaxes(m, -1, -2), q, p
    flat = m.reshape(-1, p, q)
    peak = flat.max(axis=(1, 2))
    result = np.full(flat.shape[0], np.inf)
    result[peak == 0] = 0.0
    ok = np.isfinite(peak) & (peak > 0)
    if np.any(ok):
        exps = np.frexp(peak[ok])[1]
        ms = np.ldexp(flat[ok], -exps[:, None, None])
        mt = np.swapaxes(ms, 1, 2)
        v = np.ones((ms.shape[0], q, 1))
        with np.errstate(all="ignore"):
            for _ in range(iterations):
                w = mt @ (ms @ v)
                top = w.max(axis=1, keepdims=True)
                v = np.where(top > 0, w / np.where(top > 0, top, 1.0), v)
            v = np.maximum(v, 2.0**-60)
            w = mt @ (ms @ v)
            slack = float(p + q) ** 2 * 2.0**-1074 * 2.0**60
            lam = ((w / v).max(axis=(1, 2)) + slack) * (1 + 1.01 * (p + q + 8) * EPS)
            sigma = np.sqrt(lam) * (1 + 2 * EPS)
            frob = np.sqrt(np.sum(ms * ms, axis=(1, 2))) * (1 + (p * q + 4) * EPS) + 2.0**-1000
            result[ok] = np.ldexp(np.minimum(sigma, frob), exps) * (1 + 2 * EPS) + TINY
    return result.reshape(batch)


# work (flops, sum over the batch of p q min(p, q)) up to which box_spectral_upper also tries the
# centre + radius bound with an SVD of each centre matrix (~1 s on two cores)
CENTER_SVD_BUDGET = 2e9


def box_spectral_upper(lo: np.ndarray, hi: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Certified upper bounds of sup { ||M||_2 : lo_b <= M <= hi_b } per batch entry b of [..., p, q].

    The smaller of two bounds: ||M||_2 <= || |M| ||_2 <= ||mag||_2 with mag = max(|lo|, |hi|)
    (Perron-Frobenius: the spectral norm is monotone on nonnegative matrices); and, with C a float
    centre and R >= |M - C| entry-wise (rounded up), ||M||_2 <= ||C||_2 + ||R||_2 (triangle
    inequality, then Perron-Frobenius on R): much tighter for a narrow box around a matrix of mixed
    signs. ||C||_2 is a certified SVD bound (numerics.spectral_norm_dense), tried while the batch's
    SVD work stays within CENTER_SVD_BUDGET.
    """
    mag = np.maximum(np.abs(lo), np.abs(hi))
    best = nonneg_spectral_upper(mag, iterations)
    batch, (p, q) = lo.shape[:-2], lo.shape[-2:]
    count = _size(tuple(batch))
    if count * p * q * min(p, q) > CENTER_SVD_BUDGET or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return best
    with np.errstate(over="ignore"):
        centre = 0.5 * lo + 0.5 * hi
        radius = np.nextafter(np.maximum(hi - centre, centre - lo), np.inf)
    if not np.all(np.isfinite(centre)) or not np.all(np.isfinite(radius)):
        return best
    radius_norm = nonneg_spectral_upper(radius, iterations).reshape(-1)
    flat = centre.reshape(-1, p, q)
    out = best.reshape(-1).copy()
    for k in range(flat.shape[0]):
        c_norm = spectral_norm_dense(flat[k])[0]
        out[k] = min(out[k], _up(c_norm + float(radius_norm[k]), 2))
    return out.reshape(batch)


def _matmul(node: Node, ctx: RuleContext, ranges: list[tuple[np.ndarray, np.ndarray]]) -> OpBound | None:
    """A @ B (numpy matmul): dC_b = dA_a B_b + A'_a dB_b per output batch entry b (a, beta the
    operands' batch entries feeding it); ||dA B||_F <= ||B||_2 ||dA||_F with ||B||_2 <= the box
    bound of B's matrix (box_spectral_upper). Summing squares over the output batch: gain_A^2 =
    max_a sum_{b fed by a} sup ||B_beta(b)||_2^2, and B alike."""
    (al, ah), (bl, bh) = ranges
    if al.ndim == 0 or bl.ndim == 0:
        return None
    if al.ndim == 1:
        al, ah = al[None, :], ah[None, :]
    if bl.ndim == 1:
        bl, bh = bl[:, None], bh[:, None]
    batch_a, batch_b = al.shape[:-2], bl.shape[:-2]
    batch_out = np.broadcast_shapes(batch_a, batch_b)
    iterations = max(ctx.settings.power_iterations, 20)
    na = box_spectral_upper(al, ah, iterations)
    nb = box_spectral_upper(bl, bh, iterations)
    ga = copy_gain(np.broadcast_to(nb, batch_out), batch_a, batch_out)
    gb = copy_gain(np.broadcast_to(na, batch_out), batch_b, batch_out)
    return _if_tighter(node, ctx, _pair(ga, gb, "matmul", "gains: certified spectral norms of the "
                                        "other operand over its box"))


# ---- softmax, log-sum-exp, sums of squares, layer norm -----------------------------------------
def _rows(lo: np.ndarray, hi: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The groups along ``axes`` as rows: arrays [groups, n]."""
    nd = lo.ndim
    axes = tuple(a % nd for a in axes)
    rest = tuple(a for a in range(nd) if a not in axes)
    n = int(np.prod([lo.shape[a] for a in axes])) if axes else 1
    perm = rest + axes
    return (np.transpose(lo, perm).reshape(-1, n), np.transpose(hi, perm).reshape(-1, n))


def softmax_upper(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Upper bounds of s_i = softmax(x)_i over the box, rows [groups, n] -> [groups, n]:
    s_i = 1 / (1 + sum_{j != i} exp(x_j - x_i)) <= 1 / (1 + exp(-(hi_i - M)) sum_{j != i} exp(lo_j - M))
    with M the row's max hi; sum_{j != i} >= (sum_j)_down - (term_i)_up (rounded outward)."""
    n = lo.shape[-1]
    out = np.ones(lo.shape)
    big = np.max(hi, axis=-1, keepdims=True)
    ok = np.all(np.isfinite(hi), axis=-1, keepdims=True) & np.all(lo < np.inf, axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        diff = lo - big
        lo_terms = np.exp(np.nextafter(diff, -np.inf)) * (1 - LIBM_ULPS * EPS)
        hi_terms = np.exp(np.nextafter(diff, np.inf)) * (1 + LIBM_ULPS * EPS) + TINY
        total = np.sum(lo_terms, axis=-1, keepdims=True) * (1 - (n + 4) * EPS)
        others = np.maximum(total - hi_terms, 0.0) * (1 - 2 * EPS)
        shift = np.exp(-np.nextafter(hi - big, np.inf)) * (1 - LIBM_ULPS * EPS)  # hi - big <= 0
        s = 1.0 / (1.0 + others * shift * (1 - 2 * EPS)) * (1 + 4 * EPS)
    s = np.where(np.isnan(s), 1.0, np.minimum(s, 1.0))
    return np.where(ok, s, out)


def _softmax(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    """J = diag(s) - s s^T, v^T J v = Var_s(v) <= sum_i s_i v_i^2 <= max_i s_i: Lip <= max s_i. With
    a mask, J has zero rows and columns at the dropped entries (their s_i is 0): the maximum over
    the kept entries, the dropped ones set 2000 below their row's least lower end (their terms
    underflow to 0, as e^-inf is 0)."""
    match node.op:
        case O.Softmax(axis=axis, mask=mask):
            pass
        case _:
            return None
    rl, rh = _rows(lo, hi, (axis,))
    if rl.shape[-1] < 2 or rl.size == 0:
        return None
    if mask is None:
        value = float(np.max(softmax_upper(rl, rh)))
    else:
        kept = _rows(*(np.broadcast_to(np.asarray(mask, dtype=bool), lo.shape),) * 2, (axis,))[0]
        with np.errstate(invalid="ignore"):
            floor = np.min(np.where(kept, rl, np.inf), axis=-1, keepdims=True) - 2000.0
        s = softmax_upper(np.where(kept, rl, floor), np.where(kept, rh, floor))
        value = float(np.max(np.where(kept, s, 0.0)))
    return _if_tighter(node, ctx, _result(value, "softmax", notes=("max softmax entry over the range",)))


def _log_sum_exp(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    """The gradient of log-sum-exp is the group's softmax s: ||s||_2^2 <= max_i s_i (sum s_i = 1)
    and <= sum_i (s_i)_up^2; Lip = max over groups of ||s||_2 (disjoint groups)."""
    match node.op:
        case O.ReduceLogSumExp(axes=axes) if axes:
            pass
        case _:
            return None
    rl, rh = _rows(lo, hi, axes)
    if rl.shape[-1] < 2 or rl.size == 0:
        return None
    n = rl.shape[-1]
    s = softmax_upper(rl, rh)
    sq = np.minimum(np.max(s, axis=-1), np.sum(s * s, axis=-1) * (1 + (n + 4) * EPS) + TINY)
    value = _up(math.sqrt(float(np.max(sq))), 2)
    return _if_tighter(node, ctx, _result(value, "log-sum-exp", notes=("softmax norm over the range",)))


def _sum_square(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    """sum_G a^2 - sum_G b^2 = <a - b, a + b> <= ||a_G - b_G|| 2 ||mag_G||: Lip <= 2 max_G ||mag_G||."""
    match node.op:
        case O.ReduceSumSquare(axes=axes):
            pass
        case _:
            return None
    rl, rh = _rows(lo, hi, axes)
    if rl.size == 0:
        return None
    n = rl.shape[-1]
    mag = np.maximum(np.abs(rl), np.abs(rh))
    with np.errstate(over="ignore"):
        sums = np.sum(mag * mag, axis=-1)
    value = 2.0 * _up(math.sqrt(_up(float(np.max(sums)), n + 4)), 2)
    return _if_tighter(node, ctx, _result(value, "sum-of-squares", notes=("2 max group norm over the range",)))


def square_mean_lower(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A sound lower bound of min over the box of mean(x^2) along the last axis (RMSNorm's
    statistic): the mean of the squared distances of [lo_i, hi_i] to 0, rounded down (n + 2
    roundings of relative size u each; a NaN range gives 0)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    n = lo.shape[-1]
    if n == 0:
        return np.zeros(lo.shape[:-1])
    mig = np.maximum(np.maximum(lo, -hi), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.mean(mig * mig, axis=-1) * (1 - (n + 4) * EPS) - n * 2.0**-1074  # and underflow
    return np.where(np.isnan(out), 0.0, np.maximum(out, 0.0))


def variance_lower(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A sound lower bound of min over the box of the biased variance along the last axis.

    min_{x in box} (1/n) sum_i (x_i - mean x)^2 = min_m phi(m) / n with phi(m) = sum_i dist(m,
    [lo_i, hi_i])^2 (the mean minimises sum (x_i - m)^2 over m; swap the two minima). phi is convex,
    phi' is continuous, nondecreasing, and its slope is >= 2 wherever phi' != 0 (some term is then
    active), so the minimiser m* lies within |phi'(c)| / 2 of any c, and convexity gives
    min phi >= phi(c) + phi'(c) (m* - c) >= phi(c) - phi'(c)^2 / 2 for every c. c is found by a
    safeguarded Newton iteration on phi' (bracket [min_i hi_i, max_i lo_i]; a group with min hi >=
    max lo holds a constant vector: variance 0); phi(c) is rounded down and |phi'(c)| up, so the
    result is a lower bound whatever c is.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    lead, n = lo.shape[:-1], lo.shape[-1]
    L, H = lo.reshape(-1, n), hi.reshape(-1, n)
    out = np.zeros(L.shape[0])
    if n == 0 or L.shape[0] == 0:
        return out.reshape(lead)
    a0, b0 = H.min(axis=1), L.max(axis=1)
    act = (a0 < b0) & np.isfinite(a0) & np.isfinite(b0) & ~np.isnan(L).any(1) & ~np.isnan(H).any(1)
    if not np.any(act):
        return out.reshape(lead)
    L, H, a, b = L[act], H[act], a0[act], b0[act]

    def half_slope(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(phi'(m) / 2, the sum of its terms' magnitudes)."""
        right = np.sum(np.maximum(m[:, None] - H, 0.0), 1)
        left = np.sum(np.maximum(L - m[:, None], 0.0), 1)
        return right - left, right + left

    def piece_minimiser(m: np.ndarray) -> np.ndarray:
        """The minimiser of the quadratic that phi is on m's piece (a Newton step on phi')."""
        above, below = m[:, None] > H, m[:, None] < L
        count = above.sum(1) + below.sum(1)
        return (np.sum(np.where(above, H, 0.0), 1) + np.sum(np.where(below, L, 0.0), 1)) / np.maximum(count, 1)

    with np.errstate(all="ignore"):
        # safeguarded Newton: the piece's minimiser when it falls inside the bracket, else the
        # midpoint; a point where phi' vanishes up to rounding closes the bracket
        for _ in range(200):
            mid = 0.5 * a + 0.5 * b
            live = (mid > a) & (mid < b)
            if not np.any(live):
                break
            cand = piece_minimiser(mid)
            cand = np.where((cand > a) & (cand < b), cand, mid)
            g, size = half_slope(cand)
            root = np.abs(g) <= 4 * (n + 4) * EPS * size
            a = np.where(live & (root | (g < 0)), cand, a)
            b = np.where(live & (root | (g > 0)), cand, b)
        c0 = 0.5 * a + 0.5 * b
        c1 = piece_minimiser(c0)
        best = np.zeros(L.shape[0])
        for c in (c0, c1):
            right, left = np.maximum(c[:, None] - H, 0.0), np.maximum(L - c[:, None], 0.0)
            dist = np.maximum(right, left)
            # each difference and square errs by <= EPS/2 relatively, the sum by gamma_n
            phi = np.sum(dist * dist, 1) * (1 - (n + 8) * EPS) - n * 2.0**-1074
            s1, s2 = np.sum(right, 1), np.sum(left, 1)
            slope = np.abs(s1 - s2) * (1 + 2 * EPS) + (n + 4) * EPS * (s1 + s2) + 2.0**-1000
            low = phi - 2.0 * slope * slope * (1 + 4 * EPS)
            low = np.where(np.isfinite(low), low, 0.0)
            best = np.maximum(best, low)
        out[act] = np.maximum(best / n * (1 - 2 * EPS), 0.0)
    return out.reshape(lead)


def _layer_norm(node: Node, ctx: RuleContext, lo: np.ndarray, hi: np.ndarray) -> OpBound | None:
    """Per group ||J|| <= max|scale| / sqrt(v + eps) (bounds/normalization.py) with v >= the
    group's variance_lower over the box (RMSNorm: its mean of squares): Lip <= max|scale| / sqrt(min_groups v_low + eps)."""
    match node.op:
        case O.LayerNorm(axis=axis, epsilon=eps, scale=scale, centered=centered):
            pass
        case _:
            return None
    shape = tuple(ctx.input_shapes[0])
    n = _size(shape[axis:])
    if n < (2 if centered else 1) or _size(shape) == 0 or not (math.isfinite(eps) and eps > 0):
        return None
    g = 1.0 if scale is None else float(np.max(np.abs(np.asarray(scale, dtype=np.float64)), initial=0.0))
    if not math.isfinite(g):
        return None
    if centered:
        v = float(np.min(variance_lower(lo.reshape(-1, n), hi.reshape(-1, n))))
    else:
        v = float(np.min(square_mean_lower(lo.reshape(-1, n), hi.reshape(-1, n))))
    if v <= 0.0:
        return None
    # (v + eps) rounded down, its sqrt down, the quotient and product up: 8 roundings
    value = g / math.sqrt(v + eps) * (1 + 8 * EPS) + TINY
    return _if_tighter(node, ctx, _result(value, "layer-norm-variance",
                                          notes=(f"variance >= {v:.3g} over the range",)))


# ---- the entry point ---------------------------------------------------------------------------
_DOMAIN_MAPS = (O.Exp, O.Log, O.Sqrt, O.Reciprocal, O.Pow)


def ranged_bound(node: Node, ctx: RuleContext, inputs: tuple[Interval, ...], output: Interval) -> OpBound | None:
    """A certified Lipschitz bound (L2 -> L2) of ``node`` over the input boxes ``inputs``, or None
    when the ranges do not improve on the node's global rule (see the module docstring)."""
    del output  # encloses reached values only, not f over the box (module docstring)
    if len(inputs) != len(ctx.input_shapes):
        raise ValueError(f"{len(inputs)} ranges for {len(ctx.input_shapes)} inputs")
    if _size(tuple(ctx.output_shape)) == 0 or any(_size(tuple(s)) == 0 for s in ctx.input_shapes):
        return None
    ranges = []
    for interval, shape in zip(inputs, ctx.input_shapes, strict=True):
        lo, hi = _sanitized(interval)
        if lo.shape != tuple(shape) or hi.shape != tuple(shape):
            raise ValueError(f"range of shape {lo.shape} for an input of shape {tuple(shape)}")
        ranges.append((lo, hi))
    op = node.op
    if isinstance(op, O.Mul) and len(ranges) == 2:
        return _mul(node, ctx, ranges)
    if isinstance(op, O.Div) and len(ranges) == 2:
        return _div(node, ctx, ranges)
    if isinstance(op, O.MatMul) and len(ranges) == 2:
        return _matmul(node, ctx, ranges)
    if len(ranges) != 1:
        return None
    lo, hi = ranges[0]
    if op.type in O.ACTIVATIONS and not isinstance(op, O.Softmax):
        return _activation(node, ctx, lo, hi)
    if isinstance(op, _DOMAIN_MAPS):
        return _domain_map(node, ctx, lo, hi)
    if isinstance(op, O.Softmax):
        return _softmax(node, ctx, lo, hi)
    if isinstance(op, O.LayerNorm):
        return _layer_norm(node, ctx, lo, hi)
    if isinstance(op, O.ReduceLogSumExp):
        return _log_sum_exp(node, ctx, lo, hi)
    if isinstance(op, O.ReduceSumSquare):
        return _sum_square(node, ctx, lo, hi)
    return None


__all__ = [
    "activation_slopes",
    "box_spectral_upper",
    "copy_gain",
    "domain_slopes",
    "nonneg_spectral_upper",
    "ranged_bound",
    "softmax_upper",
    "square_mean_lower",
    "variance_lower",
]
