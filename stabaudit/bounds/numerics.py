"""Certified spectral norms in float64: dense SVD, convolutions (exact or circulant), power iteration.

Convolutions: the explicit matrix when small, else the circulant embedding certified per frequency
block by Gram matrices and shifted-Cholesky certificates, or by Gram iteration (``bounds.gram``).

Every function here is sound for the *stored* weights, floating-point rounding included: inputs are
converted to float64 (exact for float16/float32 storage) and every floating-point result is widened
by an explicit rounding margin whose inequality is named beside it. Notation: ``EPS`` is the float64
machine epsilon 2**-52 (twice the unit roundoff u = 2**-53); ``gamma_k = k*u / (1 - k*u)`` is the
classical bound on the relative error of a k-term sum (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., Lemma 3.1 and eq. (3.5)); we bound it by ``k*EPS`` whenever k*u < 1/2.

torch is imported lazily inside the functions that use it (circulant bounds, power iteration).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit.bounds.gram import (
    LEVEL_RTOL,
    GramResult,
    HermitianCertificate,
    certify_hermitian_max,
    estimate_count,
    estimate_top,
    gram_cholesky_max_norm,
    gram_max_norm,
    singular_vectors,
)
from stabaudit.limits import thread_map

if TYPE_CHECKING:
    import torch

EPS = float(np.finfo(np.float64).eps)  # 2**-52
# Absolute slack added to every upper bound: relative error bounds fail in the subnormal range,
# where each operation may instead commit an absolute error of at most 2**-1074. A 1e-290 slack
# dominates any plausible accumulation of those and is invisible at every other scale.
TINY = 1e-290

# Backward stability of LAPACK's SVD / Hermitian eigensolvers (bidiagonal or tridiagonal
# reduction by Householder reflections, then QR iteration or divide and conquer): the computed
# singular values of W are the exact singular values of W + E with ||E||_2 <= p(m, n) * EPS * ||W||_2,
# p "a modestly growing function of m and n" (Golub & Van Loan, Matrix Computations, 4th ed.,
# Sec. 8.6.3; LAPACK Users' Guide, Sec. 4.9, whose own error-bound recipe takes p(m, n) = 1).
# We take p(m, n) = SVD_BACKWARD_CONSTANT * max(m, n), far above what LAPACK itself assumes, and
# Weyl's inequality |sigma_i(W + E) - sigma_i(W)| <= ||E||_2 turns it into a relative margin.
SVD_BACKWARD_CONSTANT = 64
# Above this smaller side a dense matrix's norm is certified without an SVD (one Gram step and a
# shifted-Cholesky certificate, within LEVEL_RTOL = 5e-5 of the norm): the SVD of a 4096 x 4096
# matrix takes about 20 s of one core, the Gram product and the Cholesky factor about a quarter.
DENSE_SVD_MAX_SIDE = 512

# Work budget (flops of one Gram step over all frequency blocks) of the circulant bound of one
# convolution before falling back to a cheaper certified bound: 1e12 is ~1 min on two CPU cores
# (a 512 -> 512 3x3 conv at 14x14 is 2.2e11 per step); Gram iteration takes a few such steps, most
# of them on the few frequencies that can still hold the maximum.
CIRCULANT_BUDGET = 1e12
# Relative gap between the certified Gram bound and its estimate at which the iteration stops:
# the circulant norm is then known to within this factor (the estimate is ~its true value).
GRAM_RTOL = 1e-4
# The exact explicit matrix is used for small convolutions: at most this many entries per group
# (16 MiB of float64) and about this much work (Gram matrix + symmetric eigensolver; a
# 2048 x 1024 matrix, ~1e10, takes about half a second on two cores).
DENSE_MAX_ENTRIES = 1 << 21
DENSE_BUDGET = 1.2e10
# Beyond that, up to this many entries (64 MiB) the explicit matrix is bounded by its Gram matrix
# and a shifted-Cholesky certificate ("dense-cholesky": within LEVEL_RTOL of the exact norm, no
# eigensolver), when that work (Gram p^2 q + Cholesky p^3 / 3 flops) fits DENSE_BUDGET too: the
# exact zero-padded operator, where the circulant embeddings are loosest (small inputs).
DENSE_CHOLESKY_MAX_ENTRIES = 1 << 23
# Complex entries held in memory at once by the chunked frequency loop (16 bytes each: 64 MiB).
_CHUNK_ENTRIES = 1 << 22
# Complex entries of the frequency blocks held at once by the Gram path (16 bytes each: 64 MiB;
# with the scaled copy, the Gram matrices and the Cholesky factors about 4x that, as limits.py plans).
_GRAM_CHUNK_ENTRIES = 1 << 22
# The direct Gram path holds every chunk of a group between its estimates and its certificates
# up to this many complex entries (64 MiB); beyond, it forms each chunk a second time instead.
_HOLD_ENTRIES = 1 << 22
# The direct Gram path's products Q_delta go to the kernel threads in this many interleaved runs
# of tasks
_Q_CHUNKS = 8
# ... and its frequency blocks are formed together when there are more than _MANY_BLOCKS of at
# most _SMALL_BLOCK_ENTRIES entries each (one Python step per block costs more than its entries)
_MANY_BLOCKS, _SMALL_BLOCK_ENTRIES = 256, 64
# ... in pieces of at most this many terms (the phase factors' temporaries are some ten times that
# in bytes: about 20 MiB a thread, inside the chunks' memory plan)
_MANY_PIECE_ENTRIES = 1 << 18
# Peak bytes of one convolution bound, as limits.py plans memory: per kernel thread (two) a chunk
# of Gram matrices, its Cholesky factor and a single-precision copy (5 chunks' worth at most; held
# chunks are the chunks themselves, and they hold no more than one chunk's entries); the dense
# paths need less (the explicit matrix, its Gram matrix and the factor).
CONV_PEAK_BYTES = 16 * 5 * _GRAM_CHUNK_ENTRIES


def periodic_hit(lo: np.ndarray, hi: np.ndarray, offset: float, period: float) -> np.ndarray:
    """Whether [lo, hi] may hold a point offset + k period (k an integer), entry by entry; a
    sound over-approximation: ``True`` wherever the float64 test is within 1e-9 of a period of
    deciding otherwise (so a point near an end counts as held), and for non-finite ends."""
    with np.errstate(all="ignore"):
        a = (np.asarray(lo, dtype=np.float64) - offset) / period
        b = (np.asarray(hi, dtype=np.float64) - offset) / period
        slack = 1e-9 * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
        held = np.floor(b + slack) >= np.ceil(a - slack)
    return held | ~np.isfinite(a) | ~np.isfinite(b)


def svd_relative_margin(m: int, n: int) -> float:
    """delta with sigma_true in [sigma_hat * (1 - delta), sigma_hat / (1 - delta)] (Weyl + backward stability)."""
    return SVD_BACKWARD_CONSTANT * max(m, n, 1) * EPS


def _round_up(value: float, ulps: int = 4) -> float:
    """value * (1 + ulps*EPS): covers ``ulps`` further roundings of a product/quotient/sqrt chain."""
    return float(value) * (1.0 + ulps * EPS)


def _round_down(value: float, ulps: int = 4) -> float:
    return float(value) * (1.0 - ulps * EPS)


def sqrt_int_bounds(k: int) -> tuple[float, float]:
    """(upper, lower) on sqrt(k) for an integer k >= 0: exact for perfect squares, else one ulp apart
    around the correctly rounded math.sqrt."""
    root = math.sqrt(k)
    if math.isqrt(k) ** 2 == k:
        return root, root
    return math.nextafter(root, math.inf), math.nextafter(root, 0.0)


# ---- dense matrices ----------------------------------------------------------------------------
def spectral_norm_dense(weight: np.ndarray) -> tuple[float, float | None]:
    """(upper, lower) on the largest singular value of a 2-D matrix, certified in float64.

    upper is sound (UPPER) and lower is sound (LOWER); both are within
    ``svd_relative_margin(m, n)`` (1.4e-14 * max(m, n)) of the float64 SVD value. A matrix with a
    NaN or Inf gives ``(inf, None)``; a zero or empty matrix gives ``(0.0, 0.0)``.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        w = w.reshape(w.shape[0], -1) if w.ndim > 2 else w.reshape(1, -1)
    if w.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(w)):
        return math.inf, None
    if not np.any(w):
        return 0.0, 0.0  # the exact norm of an exactly zero matrix
    m, n = w.shape
    if min(m, n) > DENSE_SVD_MAX_SIDE:
        return _gram_cholesky_dense(w)
    try:
        s = float(np.linalg.svd(w, compute_uv=False)[0])
    except np.linalg.LinAlgError:
        return _frobenius_fallback(w)
    delta = svd_relative_margin(m, n)
    # Weyl: sigma <= s + delta*sigma  =>  sigma <= s / (1 - delta) <= s * (1 + 2*delta) for
    # delta <= 1/2; the remaining float operations are covered by _round_up.
    upper = _round_up(s * (1.0 + 2.0 * delta)) + TINY
    # Weyl: sigma >= s - delta*sigma  =>  sigma >= s / (1 + delta) >= s * (1 - delta).
    lower = max(0.0, _round_down(s * (1.0 - delta)))
    return upper, lower


def dense_norm_method(shape: Sequence[int]) -> str:
    """The name of the certificate ``spectral_norm_dense`` uses for a matrix of this shape."""
    return "gram-cholesky" if len(shape) == 2 and min(shape) > DENSE_SVD_MAX_SIDE else "svd"


def _gram_cholesky_dense(w: np.ndarray) -> tuple[float, float | None]:
    """(upper, lower) on ||W||_2 of a large dense matrix without an SVD: the upper end from one
    Gram step and a shifted-Cholesky certificate (``bounds.gram.gram_cholesky_max_norm``, within
    LEVEL_RTOL of the norm), the lower end ||W v|| / ||v|| at its approximate top right singular
    vector v, with the rounding of fl(W v) taken off: |fl(W v) - W v| <= gamma_(n+2) |W| |v|
    entrywise (Higham eq. (3.5)), so ||W v|| >= ||fl(W v)|| - gamma_(n+2) || |W| |v| ||."""
    import torch

    result, _ = gram_cholesky_max_norm(torch.from_numpy(np.ascontiguousarray(w))[None])
    upper = _round_up(result.upper) + TINY
    v = np.asarray(result.right, dtype=np.float64).reshape(-1)
    m, n = w.shape
    if v.shape[0] != n or not np.all(np.isfinite(v)) or not np.any(v):
        return upper, None
    y = w @ v
    err = (n + 2) * EPS * float(np.linalg.norm(np.abs(w) @ np.abs(v))) * (1.0 + (m + n + 8) * EPS)
    ny = float(np.linalg.norm(y)) * (1.0 - (m + 4) * EPS)
    nv = float(np.linalg.norm(v)) * (1.0 + (n + 4) * EPS)
    lower = max(0.0, _round_down((ny - err) / nv))
    return upper, min(lower, upper)


def _frobenius_fallback(w: np.ndarray) -> tuple[float, float | None]:
    """When the SVD does not converge: ||W||_2 <= ||W||_F and ||W||_2 >= max column norm."""
    m, n = w.shape
    scale = float(np.max(np.abs(w)))
    ws = w / scale  # against overflow of the squares; each quotient adds a relative error <= EPS/2
    frob = float(np.sqrt(np.sum(ws * ws))) * scale
    col = float(np.max(np.sqrt(np.sum(ws * ws, axis=0)))) * scale
    # a sum of k squares has relative error <= gamma_k <= k*EPS (Higham Lemma 3.1); the division
    # by ``scale`` and the products add a few more roundings.
    rel = (m * n + 8) * EPS
    return frob * (1.0 + rel) + TINY, max(0.0, col * (1.0 - rel))


# ---- convolution geometry ----------------------------------------------------------------------
def conv_output_size(n: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """floor((n + pads - dilation*(kernel-1) - 1) / stride) + 1, the zero-padded conv output size."""
    return (n + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def coverage_1d(n: int, out: int, kernel: int, stride: int, pad_begin: int, dilation: int) -> int:
    """Max over input positions j in [0, n) of #{(t, k): stride*t + dilation*k - pad_begin == j}.

    t ranges over the ``out`` output positions, k over the ``kernel`` taps: the number of windows
    (with multiplicity) that read one input element.
    """
    if n <= 0 or out <= 0 or kernel <= 0:
        return 0
    counts = np.zeros(n, dtype=np.int64)
    t = np.arange(out)
    for k in range(kernel):
        j = stride * t + dilation * k - pad_begin
        j = j[(j >= 0) & (j < n)]
        np.add.at(counts, j, 1)
    return int(counts.max())


@dataclass(frozen=True, kw_only=True)
class CertifiedNorm:
    """A certified upper bound on an operator norm and the method that produced it."""

    upper: float
    method: str
    lower: float | None = None  # a sound lower bound when the method yields one (dense-svd)
    notes: tuple[str, ...] = ()
    # circulant methods: approximate top right / left singular vectors of the real operator
    # ([C_in, *input spatial] and [C_out, *kept outputs]), for warm-starting a power iteration
    start_in: np.ndarray | None = field(default=None, compare=False, repr=False)
    start_out: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class _ConvGeometry:
    weight: np.ndarray  # float64 [C_out, C_in/groups, k...]
    strides: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int
    spatial: tuple[int, ...]
    out: tuple[int, ...]
    keep: tuple[int, ...]  # output positions kept per axis (<= out): the operator is P_keep A

    @property
    def ndim(self) -> int:
        return len(self.strides)

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.weight.shape[2:])


def _geometry(
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    input_spatial: Sequence[int],
    keep_outputs: Sequence[int] | None = None,
) -> _ConvGeometry:
    d = len(strides)
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != d + 2 or len(pads) != 2 * d or len(dilations) != d or len(input_spatial) != d:
        raise ValueError(
            f"inconsistent convolution: weight {w.shape}, strides {tuple(strides)}, pads {tuple(pads)}, "
            f"dilations {tuple(dilations)}, input spatial {tuple(input_spatial)}"
        )
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{w.shape[0]} output channels are not divisible into {groups} groups")
    if any(s < 1 for s in strides) or any(x < 1 for x in dilations):
        raise ValueError(f"strides {tuple(strides)} and dilations {tuple(dilations)} must be >= 1")
    pb, pe = tuple(int(p) for p in pads[:d]), tuple(int(p) for p in pads[d:])
    out = tuple(
        conv_output_size(int(n), int(k), int(s), b, e, int(dl))
        for n, k, s, b, e, dl in zip(input_spatial, w.shape[2:], strides, pb, pe, dilations, strict=True)
    )
    keep = out if keep_outputs is None else tuple(min(o, int(k)) for o, k in zip(out, keep_outputs, strict=True))
    return _ConvGeometry(
        weight=w, strides=tuple(int(s) for s in strides), pads_begin=pb, pads_end=pe,
        dilations=tuple(int(x) for x in dilations), groups=int(groups),
        spatial=tuple(int(n) for n in input_spatial), out=out, keep=keep,
    )


def _period(n: int, out: int, kernel: int, stride: int, pad_begin: int, dilation: int) -> int:
    """Smallest N, a multiple of ``stride``, for which the circular conv of period N contains the real one.

    Valid outputs t in [0, out) read indices j = stride*t + dilation*k - pad_begin in [lo, hi],
    lo = -pad_begin, hi = stride*(out-1) + dilation*(kernel-1) - pad_begin. Every j outside [0, n)
    reads zero in the real operator, and reads x_circ[j mod N] in the circular one, which is zero
    (the embedding pads with zeros on [n, N)) provided j mod N lands in [n, N):
    negative j >= lo need N + lo >= n, large j <= hi need hi < N. And out <= M = N / stride output
    positions must exist. All indices then stay within one period, so no tap wraps twice.
    """
    lo = -pad_begin
    hi = stride * (out - 1) + dilation * (kernel - 1) - pad_begin
    need = max(n, n - lo if lo < 0 else n, hi + 1, stride * out)
    return -(-need // stride) * stride


# ---- convolutions: certified upper bounds ------------------------------------------------------
def conv_norm_certified(
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    input_spatial: Sequence[int],
    *,
    keep_outputs: Sequence[int] | None = None,
    budget: float = CIRCULANT_BUDGET,
    dense_budget: float = DENSE_BUDGET,
    device: str = "cpu",
    gram_rtol: float = GRAM_RTOL,
    certificate: str = "cholesky",
) -> CertifiedNorm:
    """Certified upper bound on ||conv||_2 of a zero-padded, strided, dilated, grouped N-d conv.

    ``weight`` is [C_out, C_in/groups, k...]; ``pads`` = (begin..., end...); ``input_spatial`` the
    spatial input size; ``keep_outputs`` (optional) keeps only the first outputs per axis (the
    operator P A, P a coordinate projection). The operator is the one ``stabaudit.ir.executor``
    runs (cross-correlation; a bias is a translation and changes no Lipschitz constant). The batch
    does not matter: batch copies are a block diagonal of identical blocks.

    The weights are first rescaled by a power of two (exact: ||c A|| = c ||A||), so that neither
    1e30 nor 1e-30 weights overflow or underflow any square; the bound is scaled back at the end
    (inf with a note if that overflows float64).

    Methods, the first that fits its budget:
    "dense-svd": the exact explicit matrix of each group and its certified norm (upper and lower);
    "circulant-cholesky" / "circulant-gram": the norm of a circular convolution that contains the
    real one (exact for the circular operator, an upper bound for the zero-padded one: within O(k/n)
    of it), bounded per frequency block (``stabaudit.bounds.gram``, torch on ``device``) either by
    one Gram step and a shifted-Cholesky certificate (``certificate="cholesky"``, the default: the
    fastest) or by Gram iteration to convergence (``certificate="gram"``, Delattre et al. 2023);
    else the smaller of the cheaper "unfolded-coverage" and "tap-sum" bounds (``_conv_fallback``).
    The circulant method also returns approximate top singular vectors of the real operator's
    input and output spaces (``start_in`` / ``start_out``) to warm-start a power iteration.
    """
    w0 = np.asarray(weight, dtype=np.float64)
    if not np.all(np.isfinite(w0)):
        _geometry(w0 if w0.size else np.zeros_like(w0), strides, pads, dilations, groups, input_spatial, keep_outputs)
        return CertifiedNorm(upper=math.inf, method="non-finite-weights", notes=("weights contain NaN or Inf",))
    peak = float(np.max(np.abs(w0))) if w0.size else 0.0
    exponent = int(np.frexp(peak)[1]) if peak > 0 else 0
    # ldexp by a power of two is exact unless a result underflows to a subnormal: then each entry
    # moves by <= 2**-1075, an operator perturbation far below the TINY slack of every bound.
    g = _geometry(np.ldexp(w0, -exponent), strides, pads, dilations, groups, input_spatial, keep_outputs)
    if certificate not in ("cholesky", "gram"):
        raise ValueError(f"unknown certificate {certificate!r}: 'cholesky' or 'gram'")
    result = _conv_norm_scaled(
        g, budget=budget, dense_budget=dense_budget, device=device, gram_rtol=gram_rtol, certificate=certificate
    )
    if exponent == 0:
        return result
    return _unscale(result, exponent)


def _unscale(result: CertifiedNorm, exponent: int) -> CertifiedNorm:
    """Multiply a bound of the rescaled operator by 2**exponent (exact, or inf / float max on overflow)."""
    try:
        upper = math.ldexp(result.upper, exponent) if math.isfinite(result.upper) else result.upper
        if 0.0 < upper < sys.float_info.min:  # a subnormal result was rounded to nearest: one ulp up
            upper = math.nextafter(upper, math.inf)
        notes = result.notes
    except OverflowError:
        upper = math.inf
        notes = (*result.notes, f"the bound {result.upper!r} * 2**{exponent} overflows float64")
    lower = result.lower
    if lower is not None:
        # TINY: the underflow of the rescaling (see conv_norm_certified) may lower the norm by that much
        lower = max(0.0, lower - TINY)
        try:
            lower = math.ldexp(lower, exponent)
            if lower < sys.float_info.min:  # subnormal: rounded to nearest, one ulp down
                lower = max(0.0, math.nextafter(lower, 0.0))
        except OverflowError:
            lower = sys.float_info.max  # the true norm exceeds every float: the largest is a sound lower bound
    return dataclasses.replace(result, upper=upper, lower=lower, notes=notes)


def _conv_method(
    g: _ConvGeometry, *, budget: float = CIRCULANT_BUDGET, dense_budget: float = DENSE_BUDGET,
    certificate: str = "cholesky",
) -> tuple[str, float]:
    """(the method ``conv_norm_certified`` takes for this geometry, its counted flops): the first
    that fits its budget (see there). The counts depend on the shapes only: they choose the method
    and they are the cost model of the certified per-layer bounds (``conv_certificate_cost``)."""
    w = g.weight
    m = w.shape[0] // g.groups
    rows, cols = m * int(np.prod(g.keep)), w.shape[1] * int(np.prod(g.spatial))
    side = min(rows, cols)
    dense_cost = float(g.groups) * (rows * cols * side + 6.0 * side**3)
    if rows * cols <= DENSE_MAX_ENTRIES and dense_cost <= dense_budget:
        return "dense-svd", dense_cost
    cholesky_cost = float(g.groups) * (side * side * max(rows, cols) + side**3 / 3.0)
    if rows * cols <= DENSE_CHOLESKY_MAX_ENTRIES and cholesky_cost <= dense_budget and certificate == "cholesky":
        return "dense-cholesky", cholesky_cost
    plan = _circulant_plan(g, _periods(g))
    # one Gram step over all frequencies (complex: 8 real flops per multiply-add) and the DFT
    cost = float(g.groups) * plan.nfreq * (8.0 * plan.p_side**2 * plan.q_side + 8.0 * m * g.weight.shape[1] * plan.ktaps)
    if cost > budget:
        return "fallback", cost
    return "circulant", cost


def conv_certificate_cost(
    weight_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
    groups: int, input_spatial: Sequence[int],
) -> tuple[str, float]:
    """(method, flops) of ``conv_norm_certified``'s upper bound for a weight of this shape (the
    values do not matter): ``_conv_method`` on the geometry."""
    g = _geometry(np.zeros(tuple(int(k) for k in weight_shape)), strides, pads, dilations, groups, input_spatial)
    if any(o <= 0 for o in g.keep) or any(n <= 0 for n in g.spatial) or g.weight.size == 0:
        return "zero-operator", 0.0
    return _conv_method(g)


def _conv_norm_scaled(
    g: _ConvGeometry, *, budget: float, dense_budget: float, device: str, gram_rtol: float, certificate: str
) -> CertifiedNorm:
    """``conv_norm_certified`` for finite weights already rescaled to max |w| in [1/2, 1)."""
    w = g.weight
    if w.size == 0 or any(o <= 0 for o in g.keep) or any(n <= 0 for n in g.spatial) or not np.any(w):
        return CertifiedNorm(upper=0.0, method="zero-operator", lower=0.0)
    method, cost = _conv_method(g, budget=budget, dense_budget=dense_budget, certificate=certificate)
    if method == "dense-svd":
        pairs = [gram_norm_bounds(_dense_group_matrix(g, j)) for j in range(g.groups)]
        return CertifiedNorm(
            upper=max(u for u, _ in pairs), lower=max(low for _, low in pairs), method="dense-svd"
        )
    if method == "dense-cholesky":
        return _dense_cholesky(g, device=device)
    if method == "fallback":
        return _conv_fallback(g, note=f"circulant bound skipped: ~{cost:.1e} flops over budget {budget:.1e}")
    periods = _periods(g)
    plan = _circulant_plan(g, periods)
    direct = _circulant_direct(g, plan, device=device) if certificate == "cholesky" else None
    notes: tuple[str, ...] = ()
    if direct is None:
        upper, res = _circulant_gram(g, plan, device=device, rtol=gram_rtol, certificate=certificate)
        fgrid, method = _freq_grid(plan, (0,) * g.ndim), "circulant-cholesky" if certificate == "cholesky" else "circulant-gram"
    else:
        upper, res, fgrid, skewed = direct
        method = "skew-circulant-cholesky" if skewed == g.groups else "circulant-cholesky"
        if 0 < skewed < g.groups:
            notes = (f"skew-circulant embedding on {skewed} of {g.groups} groups",)
        elif skewed and not all(fgrid.twist):
            notes = (f"skew-circulant along spatial axes {[a for a, t in enumerate(fgrid.twist) if t]} only",)
    group, freq = divmod(res.worst, fgrid.nfreq)
    start_in, start_out = _start_vectors(g, plan, group, dataclasses.replace(res, worst=freq), fgrid)
    return CertifiedNorm(upper=upper, method=method, notes=notes, start_in=start_in, start_out=start_out)


def _periods(g: _ConvGeometry) -> tuple[int, ...]:
    return tuple(
        _period(n, o, k, s, b, dl)
        for n, o, k, s, b, dl in zip(g.spatial, g.out, g.kernel, g.strides, g.pads_begin, g.dilations, strict=True)
    )


def _dense_group_matrix(g: _ConvGeometry, group: int) -> np.ndarray:
    """The explicit [m * prod(keep), c * prod(n)] matrix of one group of P_keep A, built exactly.

    Output position t and tap k read input position s*t + d*k - p_begin; for a fixed t distinct taps
    read distinct positions, so every matrix entry is one stored weight (no sums, no rounding).
    """
    m = g.weight.shape[0] // g.groups
    c = g.weight.shape[1]
    wj = g.weight[group * m : (group + 1) * m].reshape(m, c, -1)
    nkeep, nin = int(np.prod(g.keep)), int(np.prod(g.spatial))
    mat = np.zeros((m, nkeep, c, nin), dtype=np.float64)
    outs = np.indices(g.keep).reshape(g.ndim, -1)  # [ndim, T]
    strides = np.array(g.strides)[:, None]
    size = np.array(g.spatial)[:, None]
    for kidx, k in enumerate(np.ndindex(*g.kernel)):
        offset = (np.array(k) * np.array(g.dilations) - np.array(g.pads_begin))[:, None]
        pos = strides * outs + offset
        valid = np.all((pos >= 0) & (pos < size), axis=0)
        t_idx = np.flatnonzero(valid)
        if t_idx.size == 0:
            continue
        j_idx = np.ravel_multi_index(tuple(pos[:, valid]), g.spatial)
        mat[:, t_idx, :, j_idx] = wj[:, :, kidx]  # advanced indices first: [P, m, c]
    return mat.reshape(m * nkeep, c * nin)


def _dense_cholesky(g: _ConvGeometry, *, device: str) -> CertifiedNorm:
    """Certified ||P_keep A|| from each group's explicit matrix (``_dense_group_matrix``, exact
    entries): ``gram_cholesky_max_norm`` (one Gram step and a shifted-Cholesky certificate, its
    rounding included); the top singular vectors of the worst group start the power iteration.
    The groups go in batches of at most DENSE_CHOLESKY_MAX_ENTRIES entries (a depthwise conv's
    hundreds of small groups in a few batched calls); each block keeps its own certificate."""
    import torch

    m, c = g.weight.shape[0] // g.groups, g.weight.shape[1]
    best: tuple[float, int, GramResult] | None = None
    upper = 0.0
    size = m * int(np.prod(g.keep)) * c * int(np.prod(g.spatial))
    batch = max(1, DENSE_CHOLESKY_MAX_ENTRIES // max(size, 1))
    for first in range(0, g.groups, batch):
        mats = np.stack([_dense_group_matrix(g, j) for j in range(first, min(first + batch, g.groups))])
        res, _ = gram_cholesky_max_norm(torch.from_numpy(mats).to(device))
        upper = max(upper, res.upper)
        if best is None or res.estimate > best[0]:
            best = (res.estimate, first + res.worst, res)
    assert best is not None
    _, group, res = best
    start_in = np.zeros((g.weight.shape[1] * g.groups, *g.spatial))
    start_in[group * c : (group + 1) * c] = np.real(res.right).reshape(c, *g.spatial)
    start_out = np.zeros((g.weight.shape[0], *g.keep))
    start_out[group * m : (group + 1) * m] = np.real(res.left).reshape(m, *g.keep)
    return CertifiedNorm(upper=_round_up(upper, 4) + TINY, method="dense-cholesky", start_in=start_in, start_out=start_out)


def gram_norm_bounds(a: np.ndarray) -> tuple[float, float]:
    """(upper, lower) on ||a||_2 of a real matrix through the Gram matrix of its smaller side.

    The computed G^ = G + E with |E| <= gamma_q |a|^T |a| (real dot products of length q, the long
    side; Higham eq. (3.5)), so ||E||_2 <= ||E||_F <= q*EPS ||a||_F^2 =: err. eigvalsh is backward
    stable (delta = svd_relative_margin(p, p)), and ||G^|| <= sigma^2 + err, so by Weyl
    |lam^ - sigma^2| <= delta sigma^2 + (1 + delta) err, i.e.
    lam^ (1 - delta) - 1.01 err <= sigma^2 <= (lam^ + 1.01 err)(1 + 2 delta)   (delta <= 1/100).
    """
    if a.size == 0 or not np.any(a):
        return 0.0, 0.0
    rows, cols = a.shape
    p, q = min(rows, cols), max(rows, cols)
    gram = a.T @ a if cols <= rows else a @ a.T
    lam = float(np.linalg.eigvalsh(gram)[-1])
    frob2 = float(np.sum(a * a)) * (1.0 + (a.size + 2) * EPS)
    err = 1.01 * (q + 2) * EPS * frob2
    delta = svd_relative_margin(p, p)
    upper = math.sqrt((lam + err) * (1.0 + 2.0 * delta))
    lower = math.sqrt(max(0.0, lam * (1.0 - delta) - err))
    return _round_up(upper) + TINY, _round_down(lower)


def conv_norm_upper(
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    input_spatial: Sequence[int],
) -> float:
    """The certified upper bound of ``conv_norm_certified`` as a float."""
    return conv_norm_certified(weight, strides, pads, dilations, groups, input_spatial).upper


# Derivation of the circulant-embedding bound (one spatial dim shown; N-d is the same per axis and
# the DFT becomes an N-d DFT). Notation: n input length, s stride, d dilation, p = pad_begin,
# K taps, out output length; y[o, t] = sum_{c,k} w[o, c, k] * x[c, s*t + d*k - p] (zero outside).
#
# 1. Embedding. Let N = s*M be the period chosen by ``_period``. E: R^{C x n} -> R^{C x N} pads x
#    with zeros (an isometry, ||E|| = 1); C_circ is the circular cross-correlation
#    y~[o, t] = sum_{c,k} w[o,c,k] * x~[c, (s*t + d*k - p) mod N], t in Z_M; P keeps t in [0, out)
#    (a coordinate projection, ||P|| <= 1). By the choice of N (see ``_period``) conv = P C_circ E,
#    hence ||conv|| <= ||P|| ||C_circ|| ||E|| <= ||C_circ||    (submultiplicativity).
# 2. Polyphase. Split x~ into s phases x_r[u] = x~[s*u + r], r in [0, s), u in Z_M, and write each
#    tap's offset d*k - p = s*q_k + r_k with r_k in [0, s). Then (s*t + d*k - p) mod N
#    = s*((t + q_k) mod M) + r_k, so y~[o, t] = sum_r sum_c sum_tau g_r[o, c, tau] x_r[c, t + tau]
#    with g_r[o, c, tau] = sum_{k: r_k = r, q_k = tau (mod M)} w[o, c, k]: a C_out x (C x s)
#    block of circular cross-correlations on Z_M, an orthogonal re-indexing of the input.
# 3. Diagonalisation. The unitary DFT F_M on Z_M turns circular cross-correlation with kernel g into
#    multiplication by conj(G[f]), G[f] = sum_tau g[tau] exp(-2 pi i f tau / M). Conjugating by the
#    unitary (F_M on every channel and phase) gives a block diagonal of the matrices
#    A_f = [conj(G_r[:, :, f])]_r (C_out x (C x s)), f in Z_M, hence ||C_circ|| = max_f ||A_f||_2
#    (the norm of a block diagonal is the max of its blocks; conj changes no singular value).
#    Weights are real, so A_{-f} = conj(A_f): frequencies with last index <= M_last / 2 suffice.
#    Groups: the conv is block diagonal over groups; its norm is the max over groups.
# 4. Rounding. A_f is evaluated directly from the K taps (a [C_out*C, K] x [K, F] product; the
#    kernel has only K nonzero taps, which keeps this cheap and lets us chunk over frequencies):
#    each computed unimodular factor exp(-2 pi i phi) has phase (f*tau mod M) reduced exactly in
#    integers, so its angle has absolute error <= 13u and cos/sin add <= 4 ulps: modulus error
#    <= 16*EPS per axis, <= 32*ndim*EPS for the product over ndim axes. The real dot products add
#    <= gamma_K * sum_k |w_k| (Higham eq. (3.5)). Hence the computed entries satisfy
#    |A^_f - A_f| <= e_coef * S elementwise with S[o, c, r] = sum_{k in phase r} |w[o,c,k]| and
#    e_coef = 2*(32*ndim + K + 2)*EPS (real and imaginary parts together), and
#    ||A_f - A^_f||_2 <= ||A_f - A^_f||_F <= e_coef * ||S||_F =: e_dft   (||.||_2 <= ||.||_F).
#    ||A^_f||_2^2 = lambda_max(A^ A^H) is read from the Gram matrix H = A^ A^H (of the smaller side p):
#    the computed H^ = H + E_H with |E_H| <= 2*(q+2)*EPS |A^||A^|^H (complex dot products of length q,
#    Higham Sec. 3.6), so ||E_H||_2 <= 2*(q+2)*EPS ||A^||_F^2; eigvalsh is backward stable with
#    delta = svd_relative_margin(p, p) (Weyl; see gram_norm_bounds). Altogether, with
#    err_f = 2 (q+2) EPS ||A^_f||_F^2 (1 + (p q + 2) EPS),
#    ||A_f|| <= sqrt((lam^_f + (1 + delta) err_f)(1 + 2 delta)) + e_dft.
# 5. Skew-circulant embedding. Step 1 holds as well for the skew-periodic extension
#    x~[c, j + N] = -x~[c, j] (the wrapped reads land on [n, N), zeros, whatever their sign), and
#    steps 2-3 carry over with u in Z_M skew-periodic: the unitary twisted DFT (diag(exp(i pi u / M))
#    then F_M) diagonalises it, at the frequencies omega = (2 pi f + pi) / M with the unwrapped
#    offsets q_k in the phase factors (exp(-i omega q_k); ``_phase_factors``). So ||conv|| is also
#    bounded by the max over that shifted grid, per axis; the grid is closed under negation, so
#    half of it suffices as well. Where the symbol peaks on the circulant grid (omega = 0 for a
#    smooth kernel) the skew grid misses the peak by pi / M: for a symmetric tridiagonal Toeplitz
#    factor (a [1 2 1]-type kernel, stride 1) its maximum is the exact zero-padded norm (the sine
#    transform diagonalises both). ``_direct_group`` takes the smaller of the two maxima.
def _tap_table(g: _ConvGeometry, periods: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per flattened tap k: its flattened phase r_k, and its circular position tau_k per axis
    (``_tap_offsets`` gives the unwrapped positions q_k, tau_k = q_k mod M)."""
    grid = [p // s for p, s in zip(periods, g.strides, strict=True)]
    taps = np.array(list(np.ndindex(*g.kernel)), dtype=np.int64).reshape(-1, g.ndim)
    offsets = taps * np.array(g.dilations) - np.array(g.pads_begin)  # d*k - p per axis
    s = np.array(g.strides)
    r = np.mod(offsets, s)
    q = (offsets - r) // s
    tau = np.mod(q, np.array(grid))
    phase = np.ravel_multi_index(tuple(r.T), g.strides) if g.ndim else np.zeros(len(taps), dtype=np.int64)
    return np.asarray(phase, dtype=np.int64), tau, grid


def _tap_offsets(g: _ConvGeometry) -> np.ndarray:
    """[K, ndim] unwrapped polyphase position q_k = floor((d k - p_begin) / s) of each tap."""
    taps = np.array(list(np.ndindex(*g.kernel)), dtype=np.int64).reshape(-1, g.ndim)
    offsets = taps * np.array(g.dilations) - np.array(g.pads_begin)
    return np.floor_divide(offsets, np.array(g.strides))


@dataclass(frozen=True, kw_only=True)
class _FreqGrid:
    """The frequencies of one (twisted) circulant embedding: omega_axis = (2 pi f + pi t_axis) / M_axis,
    t_axis = 0 (circulant) or 1 (skew-circulant, x[j + M] = -x[j]); every f on the leading axes and
    one of each pair omega, -omega on the last (A(-omega) = conj A(omega) for real weights; both
    grids are closed under negation)."""

    twist: tuple[int, ...]
    half: tuple[int, ...]

    @property
    def nfreq(self) -> int:
        return int(np.prod(self.half))

    def index(self) -> np.ndarray:
        """[F, ndim] integer f of each frequency, in the order of the batches."""
        return np.array(np.unravel_index(np.arange(self.nfreq), self.half)).T.reshape(self.nfreq, len(self.half))


def _freq_grid(plan: _CirculantPlan, twist: tuple[int, ...]) -> _FreqGrid:
    if not any(twist) and plan.nfreq == 1:  # every tap at position 0: one frequency (plan)
        return _FreqGrid(twist=twist, half=plan.half)
    half = list(plan.grid)
    half[-1] = plan.grid[-1] // 2 + 1 if twist[-1] == 0 else (plan.grid[-1] + 1) // 2
    return _FreqGrid(twist=twist, half=tuple(half))


def _phase_factors(grid: Sequence[int], twist: Sequence[int], fidx: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """exp(-i omega_f . delta) [F, D] for integer offsets delta [D, ndim]: the angle
    (2 pi f + pi t) delta / M = 2 pi ((2 f + t) delta mod 2M) / 2M, reduced exactly in integers."""
    coef = np.ones((len(fidx), len(delta)), dtype=np.complex128)
    for axis, size in enumerate(grid):
        turns = np.mod(np.outer(2 * fidx[:, axis] + twist[axis], delta[:, axis]), 2 * size) / (2 * size)
        angle = (2.0 * np.pi) * turns
        coef = coef * (np.cos(angle) - 1j * np.sin(angle))
    return coef


@dataclass(frozen=True, kw_only=True)
class _CirculantPlan:
    """Frequency grid and polyphase tap table of one convolution's circulant embedding."""

    periods: tuple[int, ...]
    grid: tuple[int, ...]  # M = N / s per axis
    half: tuple[int, ...]  # frequencies computed: all on leading axes, 0..M/2 on the last (A_{-f} = conj A_f)
    phase: np.ndarray  # [K] flattened phase r_k of each tap
    tau: np.ndarray  # [K, ndim] circular position of each tap
    offsets: np.ndarray  # [K, ndim] its unwrapped position (tau = offsets mod grid)
    used: tuple[int, ...]  # phases that hold at least one tap (the others give zero columns)
    ktaps: int
    p_side: int
    q_side: int

    @property
    def nfreq(self) -> int:
        return int(np.prod(self.half))


def _circulant_plan(g: _ConvGeometry, periods: Sequence[int]) -> _CirculantPlan:
    phase, tau, grid = _tap_table(g, periods)
    used = tuple(int(r) for r in np.unique(phase))
    half = list(grid)
    half[-1] = grid[-1] // 2 + 1
    if not np.any(tau):
        # every tap at circular position 0: A_f = A_0 for every f, one frequency suffices
        half = [1] * len(grid)
    m, ncols = g.weight.shape[0] // g.groups, g.weight.shape[1] * len(used)
    return _CirculantPlan(
        periods=tuple(periods), grid=tuple(grid), half=tuple(half), phase=phase, tau=tau, offsets=_tap_offsets(g), used=used,
        ktaps=int(phase.size), p_side=min(m, ncols), q_side=max(m, ncols),
    )


@functools.lru_cache(maxsize=64)
def _twiddles(tau_key: bytes, ktaps: int, grid: tuple[int, ...], half: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(cos, -sin) of 2 pi sum_axis (f_axis tau_k,axis mod M_axis) / M_axis, [K, F]: the DFT factors.

    Cached: every layer of one shape (kernel, stride, padding, input size) shares them.
    """
    tau = np.frombuffer(tau_key, dtype=np.int64).reshape(ktaps, len(grid))
    fidx = _FreqGrid(twist=(0,) * len(grid), half=half).index()
    e = _phase_factors(grid, (0,) * len(grid), fidx, tau).T  # reduced exactly in integers
    return np.ascontiguousarray(e.real), np.ascontiguousarray(e.imag)


def _circulant_gram(
    g: _ConvGeometry, plan: _CirculantPlan, *, device: str, rtol: float, certificate: str
) -> tuple[float, GramResult]:
    """Certified upper bound on ||C_circ|| = max over groups and frequencies of ||A_f||.

    Steps 1-4 of the derivation above; the blocks of every group and frequency form one batch
    (block index = group * nfreq + f), computed in float64 (torch, on ``device``) with the entry
    error e_dft of step 4 (the largest over groups), and bounded by ``gram_cholesky_max_norm`` or
    ``gram_max_norm`` (their own rounding included), so
    ||A_f|| <= ||A^_f|| + ||A_f - A^_f||_2 <= U + e_dft   (Weyl / triangle inequality).
    """
    import torch

    m = g.weight.shape[0] // g.groups
    c = g.weight.shape[1]
    w = g.weight.reshape(g.groups, m, c, -1)  # [G, m, c, K]
    ktaps = w.shape[3]
    nused = len(plan.used)
    # entrywise bound S[j, o, c, r] of the DFT rounding (step 4), per group
    absw = np.abs(w)
    s_abs = np.stack([absw[..., plan.phase == r].sum(axis=3) for r in plan.used], axis=3)
    e_coef = 2.0 * (32 * g.ndim + ktaps + 2) * EPS
    e_dft = _round_up(e_coef * float(np.sqrt(np.max(np.sum(s_abs * s_abs, axis=(1, 2, 3))))) * (1.0 + (s_abs[0].size + 2) * EPS))

    cos, sin = _twiddles(plan.tau.astype(np.int64).tobytes(), ktaps, plan.grid, plan.half)
    nfreq = plan.nfreq
    total = g.groups * nfreq
    chunk = max(1, _GRAM_CHUNK_ENTRIES // max(m * c * nused, 1))
    wt = torch.from_numpy(np.ascontiguousarray(w.reshape(g.groups * m * c, ktaps))).to(device)
    er_all = torch.from_numpy(cos).to(device)
    ei_all = torch.from_numpy(sin).to(device)
    taps = [torch.from_numpy(np.flatnonzero(plan.phase == r)).to(device) for r in plan.used]
    # A_f entries per used phase: real dot products of <= K terms (the rounding of step 4)
    best: GramResult | None = None
    upper = 0.0
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        ids = np.arange(start, stop)
        groups_in = np.unique(ids // nfreq)
        parts = []
        for j in groups_in:
            fsel = ids[ids // nfreq == j] % nfreq
            f0, f1 = int(fsel[0]), int(fsel[-1]) + 1
            wj = wt[int(j) * m * c : (int(j) + 1) * m * c]
            blk = torch.empty((f1 - f0, m, c, nused), dtype=torch.complex128, device=device)
            for i, idx in enumerate(taps):
                wr = wj.index_select(1, idx)
                re = wr @ er_all[:, f0:f1].index_select(0, idx)
                im = wr @ ei_all[:, f0:f1].index_select(0, idx)
                blk[:, :, :, i] = torch.complex(re, im).T.reshape(f1 - f0, m, c)
            parts.append(blk.reshape(f1 - f0, m, c * nused))
        flat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        res = gram_cholesky_max_norm(flat)[0] if certificate == "cholesky" else gram_max_norm(flat, rtol=rtol)
        upper = max(upper, res.upper)
        if best is None or res.estimate > best.estimate:
            best = dataclasses.replace(res, worst=res.worst + start)
    assert best is not None
    return _round_up(upper + e_dft, 8) + TINY, best


# The Cholesky certificate reads only the Gram matrices H_f = A_f A_f^H (or A_f^H A_f), and these
# are cheaper to form from the taps than from the blocks (stride-2 layers most of all: only taps of
# one phase pair up). With omega_k(f) = exp(-2 pi i f.tau_k / M) (step 3: A_f = [conj G_r(f)]_r,
# G_r(f) = sum_{k in phase r} W_k omega_k(f), W_k = w[:, :, k] real):
#   A_f A_f^H = sum_r sum_{k, k' in r} exp(-2 pi i f.(tau_k' - tau_k) / M) W_k W_k'^T          (m x m)
#   (A_f^H A_f)[(c, r), (c', r')] = sum_{k in r, k' in r'} exp(-2 pi i f.(tau_k - tau_k') / M) (W_k^T W_k')[c, c']
# Grouping the pairs by their difference delta (unwrapped: the same sums serve the twisted grids
# below) gives real matrices Q_delta (one GEMM each)
# and H_f = sum_delta c_delta(f) Q_delta (one real GEMM over all frequencies). Rounding, entrywise
# (Higham eq. (3.5)): Q^_delta has error <= gamma_L sum_pairs |W_k||W_k'|^T (L the GEMM's inner
# length), c^_delta(f) has modulus error <= 32 ndim EPS (step 4), the D-term combination adds
# <= 2 (D + 2) EPS sum_delta |c^||Q^|; with S = sum_pairs ||W_k||_F ||W_k'||_F (>= the Frobenius
# norm of sum_pairs |W_k||W_k'|^T, Cauchy-Schwarz) the computed H^_f satisfies
#   ||H^_f - H_f||_2 <= ||.||_F <= e_H := (2 (L + 2) + 32 ndim + 2 (D + 4)) EPS S (1 + 1e-10),
# and certify_hermitian_max turns it into lambda_max(H_f) <= bound. No e_dft: the weights enter
# exactly, and ||A_f||_2 = sqrt(lambda_max(H_f)).
def _direct_gram_layout(g: _ConvGeometry, plan: _CirculantPlan) -> tuple[bool, dict[tuple[int, int], dict[tuple[int, ...], list[tuple[int, int]]]]]:
    """(output side?, {(block i, block j): {delta: [(k, k'), ...]}}) for the Gram matrices H_f."""
    m, c, nused = g.weight.shape[0] // g.groups, g.weight.shape[1], len(plan.used)
    out_side = m <= c * nused
    taps = [np.flatnonzero(plan.phase == r) for r in plan.used]
    layout: dict[tuple[int, int], dict[tuple[int, ...], list[tuple[int, int]]]] = {}
    for i, ti in enumerate(taps):
        for j, tj in enumerate(taps):
            if out_side and i != j:
                continue  # A A^H pairs taps of one phase only
            block = layout.setdefault((0, 0) if out_side else (i, j), {})
            for k in ti:
                for k2 in tj:
                    diff = plan.offsets[k2] - plan.offsets[k] if out_side else plan.offsets[k] - plan.offsets[k2]
                    block.setdefault(tuple(int(x) for x in diff), []).append((int(k), int(k2)))
    return out_side, layout


def _circulant_direct(
    g: _ConvGeometry, plan: _CirculantPlan, *, device: str
) -> tuple[float, GramResult, _FreqGrid, int] | None:
    """Certified ||C|| from the Gram matrices formed from the taps (comment above), C a circulant or
    skew-circulant embedding chosen per group; None when some frequency fails every Cholesky
    certificate (the caller then takes the block path). Also the grid of the worst group and the
    number of groups bounded on the skew-circulant grid.

    Groups in turn (``_direct_group``); each certifies at no lower level than the groups before it
    reached (a lower one buys no tightness), a fixed order, so the result never depends on threads.
    """
    out_side, layout = _direct_gram_layout(g, plan)
    best_bound, best_lead = 0.0, -1.0
    best: tuple[int, int, torch.Tensor | None, _FreqGrid] = (0, 0, None, _freq_grid(plan, (0,) * g.ndim))
    skewed = 0
    for group in range(g.groups):
        found = _direct_group(g, plan, layout, out_side, group, floor=best_bound, device=device)
        if found is None:
            return None
        bound, lead, freq, vector, fgrid = found
        skewed += int(any(fgrid.twist))
        best_bound = max(best_bound, bound)
        if lead > best_lead:
            best_lead, best = lead, (group, freq, vector, fgrid)
    group, freq, top, fgrid = best
    a = _frequency_block(g, plan, group, freq, fgrid, device=device)
    left, right = singular_vectors(a, top, out_side)
    res = GramResult(upper=math.sqrt(best_bound), estimate=math.sqrt(max(best_lead, 0.0)), steps=1,
                     worst=group * fgrid.nfreq + freq, left=left, right=right)
    return _round_up(math.sqrt(best_bound), 4) + TINY, res, fgrid, skewed


_Layout = dict[tuple[int, int], dict[tuple[int, ...], list[tuple[int, int]]]]
# The skew-circulant grid is tried on the axes with at most this many frequencies: there the
# grids are coarse and where the symbol peaks (a smooth kernel: at omega = 0) the shifted grid can
# miss the peak by a wide margin; on fine grids both maxima are within ~(pi / M)^2 of each other.
# Of the 2^d - 1 twisted grids (skew on some of the coarse axes), the one with the lowest gauge.
SKEW_MAX_GRID = 17
# ... when the peak of trace(H_f) over its grid is lower by _SKEW_PROMISE (a cheap gauge, from the
# traces of the Q_delta), and it is taken when its estimated maximum is lower by _SKEW_GAIN
_SKEW_PROMISE = 0.02
_SKEW_GAIN = 1e-3


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    """One group on one frequency grid: its chunks (start, H_f scaled or None, exponents), the
    eigenvalue estimates per chunk, and the largest estimate (true units)."""

    grid: _FreqGrid
    chunk: int  # frequencies per chunk
    chunks: list[tuple[int, Any, np.ndarray]]
    estimates: list[tuple[np.ndarray, torch.Tensor]]
    lead: float


def _lead(chunks: list[tuple[int, Any, np.ndarray]], estimates: list[tuple[np.ndarray, torch.Tensor]]) -> float:
    """The largest estimate over the chunks, in true units (2^s times the scaled estimate)."""
    return max(float(np.max(np.ldexp(np.maximum(e[0], 0.0), c[2]))) for c, e in zip(chunks, estimates, strict=True))


def _small_grams(wk: torch.Tensor, work: list[list[tuple[int, int]]], out_side: bool) -> list[torch.Tensor]:
    """``_direct_group``'s Q = sum over (k, k2) of W_k W_k2^T (out_side) or W_k^T W_k2, for many
    small blocks at once: the products of a run of pairs (at most _MANY_PIECE_ENTRIES gathered entries)
    as one batched product, summed per task by index_add. Each entry is the same sum of len(pairs)
    times (c or m) products as the GEMMs give, in another order (the same rounding bound)."""
    import torch

    counts = torch.tensor([len(pairs) for pairs in work], dtype=torch.int64)
    flat = torch.tensor([pair for pairs in work for pair in pairs], dtype=torch.int64, device=wk.device).reshape(-1, 2)
    task = torch.repeat_interleave(torch.arange(len(work), device=wk.device), counts.to(wk.device))
    a = wk if out_side else wk.transpose(1, 2)  # [K, bs, inner]
    bs, inner = int(a.shape[1]), int(a.shape[2])
    out = torch.zeros((len(work), bs, bs), dtype=wk.dtype, device=wk.device)
    step = max(1, _MANY_PIECE_ENTRIES // max(bs * inner, 1))
    for p0 in range(0, int(flat.shape[0]), step):
        k1, k2 = flat[p0: p0 + step, 0], flat[p0: p0 + step, 1]
        out.index_add_(0, task[p0: p0 + step], torch.bmm(a[k1], a[k2].transpose(1, 2)))
    return list(out.unbind(0))


def _direct_group(
    g: _ConvGeometry, plan: _CirculantPlan, layout: _Layout, out_side: bool, group: int, *, floor: float, device: str
) -> tuple[float, float, int, torch.Tensor, _FreqGrid] | None:
    """(certified bound on max_f lambda_max(H_f), the largest estimate, its frequency, vector and
    grid) of one group, or None when a frequency fails every certificate.

    The distinct Q_delta are GEMMs spread over ``thread_map``; they serve every grid. The
    frequencies are cut into chunks (at least two when there are two frequencies: work for two
    threads; the cut depends on the layer only). First every chunk's H_f and eigenvalue estimates
    (on the circulant grid, and on the skew-circulant one where ``SKEW_MAX_GRID`` allows and the
    traces promise a lower maximum), then every chunk of the
    grid with the lower maximum certified at one level, the largest estimate over its chunks (and
    ``floor``): a chunk's result does not depend on which thread ran it or on what ran beside it.
    """
    import torch

    m, c, nused = g.weight.shape[0] // g.groups, g.weight.shape[1], len(plan.used)
    side = m if out_side else c * nused
    bs = m if out_side else c  # size of one block of H
    ndim = g.ndim

    wg = g.weight[group * m : (group + 1) * m].reshape(m, c, -1)
    wk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(wg, 2, 0))).to(device)  # [K, m, c]
    norms = [float(torch.linalg.vector_norm(x)) * (1.0 + (m * c + 4) * EPS) for x in wk]
    s_total = 0.0
    inner = 0
    dmax = 0
    # the distinct Q_delta: the reversed pairs of (j, i, -delta) give the transpose (half the GEMMs)
    tasks: dict[tuple[int, int, tuple[int, ...]], list[tuple[int, int]]] = {}
    mirrors: dict[tuple[int, int, tuple[int, ...]], tuple[int, int, tuple[int, ...]]] = {}
    for (i, j), deltas in layout.items():
        for delta_key, pairs in deltas.items():
            mirror = (j, i, tuple(-x for x in delta_key))
            if mirror in tasks:
                mirrors[(i, j, delta_key)] = mirror
            else:
                tasks[(i, j, delta_key)] = pairs
            inner = max(inner, len(pairs) * (c if out_side else m))
            s_total += sum(norms[k] * norms[k2] for k, k2 in pairs)
        dmax = max(dmax, len(deltas))

    def gram_q(pairs: list[tuple[int, int]]) -> torch.Tensor:
        # sum of GEMMs accumulated in place: one sum of len(pairs) * (c or m) products per entry,
        # the rounding of a GEMM of that inner length
        q = torch.zeros((bs, bs), dtype=torch.float64, device=device)
        for k, k2 in pairs:
            q.addmm_(wk[k], wk[k2].T) if out_side else q.addmm_(wk[k].T, wk[k2])
        return q

    # many tiny products (a strided layer with a long kernel: an STFT front end, stride 160 over
    # 512 taps, has 69,200 of one entry each) as batched products; the others in _Q_CHUNKS runs
    # (task i in run i mod _Q_CHUNKS: a fixed cut), one hand-off to the threads per run
    work = list(tasks.values())
    if len(work) > _MANY_BLOCKS and bs * bs <= _SMALL_BLOCK_ENTRIES:
        by_task = _small_grams(wk, work, out_side)
    else:
        runs = [work[i::_Q_CHUNKS] for i in range(min(_Q_CHUNKS, len(work)))]
        results = thread_map(lambda run: [gram_q(pairs) for pairs in run], runs)
        by_task = [results[i % len(runs)][i // len(runs)] for i in range(len(work))]
    done = dict(zip(tasks, by_task, strict=True))
    blocks: list[tuple[tuple[int, int], np.ndarray, torch.Tensor]] = []
    for (i, j), deltas in layout.items():
        qs = [done[(i, j, key)] if (i, j, key) in done else done[mirrors[(i, j, key)]].T for key in deltas]
        delta = np.array(list(deltas.keys()), dtype=np.int64).reshape(-1, ndim)
        blocks.append(((i, j), delta, torch.stack(qs).reshape(len(qs), -1)))
    del done
    e_h = (2.0 * (inner + 2) + 32.0 * ndim + 2.0 * (dmax + 4)) * EPS * s_total * (1.0 + 1e-10) + 1e-300
    # many small blocks (a strided layer with a long kernel: an STFT front end of stride 160 over
    # 512 taps has 25,600 blocks of one entry): their phase sums formed together, each entry still
    # one sum of its block's dmax-or-fewer terms (in another order: the same bound)
    many: tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor] | None = None
    if not out_side and len(blocks) > _MANY_BLOCKS and bs * bs <= _SMALL_BLOCK_ENTRIES:
        counts = np.array([len(delta) for _, delta, _ in blocks], dtype=np.int64)
        many = (torch.tensor([i for (i, _), _, _ in blocks], device=device),
                torch.tensor([j for (_, j), _, _ in blocks], device=device),
                np.concatenate([[0], np.cumsum(counts)]),
                np.concatenate([delta for _, delta, _ in blocks]),
                torch.cat([q for _, _, q in blocks]).to(torch.complex128),
                torch.repeat_interleave(torch.arange(len(blocks), device=device), torch.from_numpy(counts).to(device)))

    def form_many(fgrid: _FreqGrid, fr: np.ndarray, hv: torch.Tensor) -> None:
        """``form``'s blocks when they are many and small: the phase factors of a run of blocks at
        once (at most _MANY_PIECE_ENTRIES terms), summed per block by one index_add."""
        assert many is not None
        rows, cols, ends, deltas, q_all, seg = many
        nblocks = int(rows.shape[0])
        sums = torch.zeros((len(fr), nblocks, bs * bs), dtype=torch.complex128, device=device)
        most = max(1, _MANY_PIECE_ENTRIES // max(len(fr) * bs * bs, 1))
        b0 = 0
        while b0 < nblocks:
            b1 = max(b0 + 1, int(np.searchsorted(ends, ends[b0] + most, side="right")) - 1)
            b1 = min(b1, nblocks)
            d0, d1 = int(ends[b0]), int(ends[b1])
            coef = torch.from_numpy(_phase_factors(plan.grid, fgrid.twist, fr, deltas[d0:d1])).to(device)
            sums.index_add_(1, seg[d0:d1], coef[:, :, None] * q_all[d0:d1][None])
            b0 = b1
        hv.permute(0, 2, 4, 1, 3)[:, rows, cols] = sums.reshape(len(fr), nblocks, bs, bs)

    def form(fgrid: _FreqGrid, start: int, chunk: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The chunk's H_f scaled by powers of two, their exponents and their Frobenius norms."""
        fr = fgrid.index()[start : start + chunk]  # [Fc, ndim]
        h = torch.zeros(0 if out_side else (len(fr), side, side), dtype=torch.complex128, device=device)
        hv = h if out_side else h.view(len(fr), c, nused, c, nused)
        if many is not None:
            form_many(fgrid, fr, hv)
        else:
            for (i, j), delta, q in blocks:
                coef = _phase_factors(plan.grid, fgrid.twist, fr, delta)  # c_delta(f) = exp(-i omega_f . delta)
                parts = torch.from_numpy(np.concatenate([coef.real, coef.imag])).to(device) @ q  # [2 Fc, bs^2]
                blk = torch.complex(parts[: len(fr)], parts[len(fr) :]).reshape(len(fr), bs, bs)
                if out_side:  # one block: H_f itself
                    h = blk
                else:
                    hv[:, :, i, :, j] = blk
        fro = torch.linalg.vector_norm(torch.view_as_real(h).reshape(h.shape[0], -1), dim=1).cpu().numpy()
        s = np.frexp(fro.astype(np.float64))[1].astype(np.int64)
        scale = torch.from_numpy(np.ldexp(1.0, -s)).to(device=device, dtype=torch.float64)
        h.mul_(scale.view(-1, 1, 1).to(h.dtype))  # exact: powers of two
        return h, s, fro

    def prepare(fgrid: _FreqGrid) -> _Prepared:
        nfreq = fgrid.nfreq
        chunk = max(1, min(_GRAM_CHUNK_ENTRIES // max(side * side, 1), -(-nfreq // 2)))
        hold = nfreq * side * side <= _HOLD_ENTRIES  # else the chunks are formed again for the certificates

        def one(start: int) -> tuple[tuple[int, Any, np.ndarray], tuple[np.ndarray, torch.Tensor]]:
            h, s, fro = form(fgrid, start, chunk)
            # estimates of the largest H_f only, this chunk's share of the grid's count: the level
            # they set certifies the others
            share = math.ceil(estimate_count(nfreq) * int(h.shape[0]) / nfreq)
            return (start, h if hold else None, s), estimate_top(h, gauge=fro, count=share)

        pieces = thread_map(one, list(range(0, nfreq, chunk)))
        chunks, estimates = [p for p, _ in pieces], [e for _, e in pieces]
        return _Prepared(grid=fgrid, chunk=chunk, chunks=chunks, estimates=estimates, lead=_lead(chunks, estimates))

    def held_or_formed(prep: _Prepared, k: int) -> torch.Tensor:
        start, held, _ = prep.chunks[k]
        return held if held is not None else form(prep.grid, start, prep.chunk)[0]

    def peak_trace(fgrid: _FreqGrid) -> float:
        """max_f trace(H_f) on a grid: a cheap gauge of where the symbol peaks (its trace is the
        sum of the eigenvalues; for a separable kernel it is proportional to lambda_max)."""
        total = np.zeros(fgrid.nfreq)
        for (i, j), delta, q in blocks:
            if i == j:
                traces = q.view(len(delta), bs, bs).diagonal(dim1=1, dim2=2).sum(dim=1).cpu().numpy()
                total += (_phase_factors(plan.grid, fgrid.twist, fgrid.index(), delta) @ traces).real
        return float(np.max(total))

    circulant = _freq_grid(plan, (0,) * ndim)
    chosen = prepare(circulant)
    # the twisted grids: skew on any non-empty set of the coarse axes (the others circulant)
    coarse = [axis for axis in range(ndim) if plan.grid[axis] <= SKEW_MAX_GRID]
    twists = [t for t in itertools.product((0, 1), repeat=ndim) if any(t) and all(t[a] == 0 or a in coarse for a in range(ndim))]
    if twists and plan.nfreq > 1:
        gauge = {t: peak_trace(_freq_grid(plan, t)) for t in twists}
        best = min(twists, key=lambda t: gauge[t])  # the first of equals: a fixed order
        if gauge[best] < peak_trace(circulant) * (1.0 - _SKEW_PROMISE):
            skew = prepare(_freq_grid(plan, best))
            if skew.lead < chosen.lead * (1.0 - _SKEW_GAIN):
                chosen = skew
            del skew
    level = max(floor, chosen.lead * (1.0 + LEVEL_RTOL))

    def certify(k: int) -> HermitianCertificate:
        _, _, s = chosen.chunks[k]
        h = held_or_formed(chosen, k)
        return certify_hermitian_max(h, np.ldexp(e_h, -s) * (1.0 + EPS), s, level=level, estimate=chosen.estimates[k])

    certs = thread_map(certify, list(range(len(chosen.chunks))))
    if any(cert.pending.size for cert in certs):
        return None
    top = max(range(len(certs)), key=lambda k: certs[k].lead)
    return (max(cert.bound for cert in certs), certs[top].lead, chosen.chunks[top][0] + certs[top].worst,
            certs[top].vector, chosen.grid)


def _frequency_block(
    g: _ConvGeometry, plan: _CirculantPlan, group: int, freq: int, fgrid: _FreqGrid, *, device: str
) -> torch.Tensor:
    """The block A_f of one group at one frequency of ``fgrid`` (steps 2-3), [m, c * len(used)], complex128."""
    import torch

    m, c = g.weight.shape[0] // g.groups, g.weight.shape[1]
    w = g.weight[group * m : (group + 1) * m].reshape(m, c, -1)
    f = fgrid.index()[freq : freq + 1]
    cols = []
    for r in plan.used:
        sel = plan.phase == r
        e = _phase_factors(plan.grid, fgrid.twist, f, plan.offsets[sel])[0]  # exp(-i omega . q_k)
        wr = np.ascontiguousarray(w[:, :, sel])  # real: two real matrix-vector products, no complex copy
        cols.append(wr @ e.real + 1j * (wr @ e.imag))
    return torch.from_numpy(np.stack(cols, axis=2).reshape(m, -1)).to(device)


def _start_vectors(
    g: _ConvGeometry, plan: _CirculantPlan, group: int, res: GramResult, fgrid: _FreqGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Real input / output vectors of the real operator from the worst block's singular vectors.

    A circular input x_r[c, u] = a[c, r] exp(i omega.u) (phase r, polyphase position u; omega =
    (2 pi f + pi t) / M on the grid ``fgrid``) gives the output exp(i omega.t) A_f a (step 3): the top
    right singular vector a of A_f, read at the real input positions j = s*u + r, is a good start
    for the power iteration of the real (zero-padded) operator; likewise the left one at the kept
    output positions t.
    """
    m = g.weight.shape[0] // g.groups
    c = g.weight.shape[1]
    f = np.array(np.unravel_index(res.worst, fgrid.half), dtype=np.float64) + 0.5 * np.array(fgrid.twist)  # [ndim]
    grid = np.array(plan.grid, dtype=np.float64)
    a = res.right.reshape(c, len(plan.used))
    pos = np.indices(g.spatial).reshape(g.ndim, -1)  # [ndim, P]
    strides = np.array(g.strides)[:, None]
    u, r = pos // strides, pos % strides
    rflat = np.ravel_multi_index(tuple(r), g.strides) if g.ndim else np.zeros(pos.shape[1], dtype=np.int64)
    col = np.full(rflat.shape, -1)
    for i, ph in enumerate(plan.used):
        col[rflat == ph] = i
    wave = np.exp(2j * np.pi * np.sum(f[:, None] * u / grid[:, None], axis=0))  # [P]
    vals = np.where(col >= 0, a[:, np.maximum(col, 0)] * wave, 0.0).real  # [c, P]
    x = np.zeros((g.weight.shape[1] * g.groups, int(np.prod(g.spatial))))
    x[group * c : (group + 1) * c] = vals
    tpos = np.indices(g.keep).reshape(g.ndim, -1)
    twave = np.exp(2j * np.pi * np.sum(f[:, None] * tpos / grid[:, None], axis=0))
    y = np.zeros((g.weight.shape[0], int(np.prod(g.keep))))
    y[group * m : (group + 1) * m] = (res.left[:, None] * twave[None, :]).real
    return x.reshape(-1, *g.spatial), y.reshape(-1, *g.keep)


def _circulant_group_norm(g: _ConvGeometry, group: int, periods: Sequence[int]) -> float:
    """Certified upper bound on ||C_circ|| restricted to one group (steps 1-4 above)."""
    m = g.weight.shape[0] // g.groups
    c = g.weight.shape[1]
    w = g.weight[group * m : (group + 1) * m].reshape(m, c, -1)  # [m, c, K]
    ktaps = w.shape[2]
    phase, tau, grid = _tap_table(g, periods)
    nphase = int(np.prod(g.strides))
    ncols = c * nphase
    # entrywise bound S[o, c, r] of the DFT rounding (step 4)
    absw = np.abs(w)
    s_abs = np.zeros((m, c, nphase))
    for r in range(nphase):
        s_abs[:, :, r] = absw[:, :, phase == r].sum(axis=2)
    e_coef = 2.0 * (32 * g.ndim + ktaps + 2) * EPS
    e_dft = _round_up(e_coef * float(np.sqrt(np.sum(s_abs * s_abs))) * (1.0 + (s_abs.size + 2) * EPS))

    # frequencies: all indices on the leading axes, 0..M/2 on the last one (A_{-f} = conj(A_f))
    half = list(grid)
    half[-1] = grid[-1] // 2 + 1
    total = int(np.prod(half))
    per_freq = m * ncols
    chunk = max(1, _CHUNK_ENTRIES // max(per_freq, 1))
    p_side = min(m, ncols)
    q_len = max(m, ncols)
    delta = svd_relative_margin(p_side, p_side)
    taps_by_phase = [np.flatnonzero(phase == r) for r in range(nphase)]
    w_by_phase = [w[:, :, idx].reshape(m * c, len(idx)) for idx in taps_by_phase]
    best = 0.0
    for start in range(0, total, chunk):
        flat = np.arange(start, min(total, start + chunk))
        fidx = np.array(np.unravel_index(flat, half)).T.reshape(len(flat), len(half))
        a = np.zeros((m, c, nphase, len(flat)), dtype=np.complex128)
        for r, idx in enumerate(taps_by_phase):
            if len(idx) == 0:
                continue
            # exp(-2 pi i sum_axis f_axis * tau_axis / M_axis), the phase reduced exactly mod M
            e = _phase_factors(grid, (0,) * len(grid), fidx, tau[idx]).T
            re = w_by_phase[r] @ e.real
            im = w_by_phase[r] @ e.imag
            a[:, :, r, :] = (re + 1j * im).reshape(m, c, len(flat))
        mats = np.moveaxis(a.reshape(m, ncols, len(flat)), 2, 0)  # [F, m, ncols]
        frob2 = np.sum(mats.real**2 + mats.imag**2, axis=(1, 2))
        if p_side == 1:
            lam = frob2  # rank one: ||A||_2^2 = ||A||_F^2 (the Gram matrix is 1 x 1)
        elif m <= ncols:
            lam = np.linalg.eigvalsh(mats @ np.conj(np.swapaxes(mats, 1, 2)))[:, -1]
        else:
            lam = np.linalg.eigvalsh(np.conj(np.swapaxes(mats, 1, 2)) @ mats)[:, -1]
        lam = np.maximum(lam, 0.0)
        gram_err = 2.0 * (q_len + 2) * EPS * frob2 * (1.0 + (per_freq + 2) * EPS)
        bound2 = (lam + (1.0 + delta) * gram_err) * (1.0 + 2.0 * delta)
        best = max(best, float(np.max(bound2)))
    return _round_up(math.sqrt(best) + e_dft, 8) + TINY


def _conv_fallback(g: _ConvGeometry, *, note: str) -> CertifiedNorm:
    """Cheaper certified bounds, per group, the smaller one wins:

    - "unfolded-coverage": y[:, t] = W_mat @ patch_t with W_mat = [C_out, C_in*K] and patch_t the
      stacked inputs read by output t (zero where padded), so ||y||^2 <= ||W_mat||^2 sum_t
      ||patch_t||^2 = ||W_mat||^2 sum_j cov(j) ||x_j||^2 <= cov_max ||W_mat||^2 ||x||^2, where
      cov(j) counts the (output, tap) pairs that read input position j (a product over axes);
    - "tap-sum": conv = sum_k W_k S_k with S_k a strided shift-and-crop (a partial coordinate
      selection, ||S_k|| <= 1), so ||conv|| <= sum_k ||W_k||_2 (triangle inequality).
    """
    m = g.weight.shape[0] // g.groups
    cov = 1
    for n, o, k, s, b, dl in zip(g.spatial, g.out, g.kernel, g.strides, g.pads_begin, g.dilations, strict=True):
        cov *= coverage_1d(n, o, k, s, b, dl)
    unfolded = 0.0
    tapsum = 0.0
    for j in range(g.groups):
        wj = g.weight[j * m : (j + 1) * m].reshape(m, g.weight.shape[1], -1)
        u_mat, _ = spectral_norm_dense(wj.reshape(m, -1))
        unfolded = max(unfolded, _round_up(math.sqrt(cov) * u_mat))
        total = 0.0
        for k in range(wj.shape[2]):
            total += spectral_norm_dense(wj[:, :, k])[0]
        tapsum = max(tapsum, _round_up(total, wj.shape[2] + 4))
    if unfolded <= tapsum:
        return CertifiedNorm(upper=unfolded, method="unfolded-coverage", notes=(note,))
    return CertifiedNorm(upper=tapsum, method="tap-sum", notes=(note,))


# ---- power iteration (lower bounds) ------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PowerResult:
    """Power iteration on A^T A: ``estimate`` = ||A v|| / ||v|| as computed (an ESTIMATE), and
    ``lower`` the same ratio with its float rounding removed (a sound lower bound of ||A||_2)."""

    estimate: float
    lower: float


def power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor],
    in_shape: Sequence[int],
    *,
    seed: int,
    iterations: int,
    device: str = "cpu",
    start: np.ndarray | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The unit vector (float64) after ``iterations`` steps of v <- A^T A v / ||A^T A v|| (adjoint by
    autograd), iterated in ``dtype`` (float64 by default; ``apply`` must accept it).

    ``start`` (optional, of ``in_shape``): the initial vector instead of a seeded random one.
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    if start is not None and np.all(np.isfinite(start)) and np.any(start):
        v = torch.from_numpy(np.array(start, dtype=np.float64).reshape(tuple(in_shape))).to(device=device, dtype=dtype)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        v = torch.randn(tuple(in_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    v = v / v.norm()
    for _ in range(max(0, int(iterations))):
        x = v.detach().requires_grad_(True)
        with torch.enable_grad():
            y = apply(x)
            (z,) = torch.autograd.grad(y, x, grad_outputs=y.detach())  # A^T A v
        norm = z.norm()
        if not torch.isfinite(norm) or float(norm) == 0.0:
            break  # A v = 0 (or overflow): keep the last v, the ratio below is still valid
        v = (z / norm).detach()
    return v.detach().cpu().to(torch.float64)


def _certified_ratio(apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, terms: int, abs_bound: float) -> PowerResult:
    """||A v|| / ||v|| as computed, and a sound lower bound of it for the exact A.

    The computed y^ = A v + e with |e| <= gamma_L |A| |v| elementwise (each output a sum of at most
    L = ``terms`` products, Higham eq. (3.5); the torch CPU float64 convolution is im2col + GEMM),
    so ||e|| <= gamma_L || |A| ||_2 ||v|| <= gamma_L * abs_bound * ||v||, with
    abs_bound >= sqrt(||A||_1 ||A||_inf) >= || |A| ||_2 (Hoelder/Schur test). Then
    ||A v|| >= ||y^|| - ||e|| (triangle inequality) and ||A|| >= ||A v|| / ||v||.
    """
    import torch

    with torch.no_grad():
        y = apply(v)
    nv = float(v.norm())
    ny = float(y.norm())
    if not (math.isfinite(nv) and math.isfinite(ny)) or nv == 0.0:
        return PowerResult(estimate=math.nan, lower=0.0)
    estimate = ny / nv
    rel_v = (v.numel() + 4) * EPS  # a norm of n entries: a sum of n squares, then a sqrt
    rel_y = (y.numel() + 4) * EPS
    gamma = (terms + 2) * EPS
    lower = (ny * (1.0 - rel_y) - gamma * abs_bound * nv * (1.0 + rel_v)) / (nv * (1.0 + rel_v))
    return PowerResult(estimate=estimate, lower=max(0.0, _round_down(lower)))


def _conv_apply(
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    *,
    transpose: bool,
    output_padding: Sequence[int],
    device: str,
    dtype: torch.dtype | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function x -> conv(x) (or conv_transpose) without bias, as the executor runs it
    (in ``dtype``, float64 by default)."""
    import torch
    import torch.nn.functional as F

    wt = torch.from_numpy(np.array(weight, dtype=np.float64)).to(device=device, dtype=dtype or torch.float64)

    d = len(strides)
    s, dl, p = tuple(strides), tuple(dilations), tuple(pads)
    if not transpose:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
        tp: list[int] = []
        for axis in reversed(range(d)):
            tp += [p[axis], p[axis + d]]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return conv(F.pad(x, tp) if any(tp) else x, wt, None, s, 0, dl, groups)

        return forward
    convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]
    op = tuple(output_padding)

    def forward_t(x: torch.Tensor) -> torch.Tensor:
        y = convt(x, wt, None, s, 0, op, groups, dl)
        index: list[slice] = [slice(None), slice(None)]
        for i in range(d):
            index.append(slice(p[i], y.shape[2 + i] - p[i + d]))
        return y[tuple(index)]

    return forward_t


def conv_power(
    weight: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    input_spatial: Sequence[int],
    *,
    seed: int = 0,
    iterations: int = 50,
    device: str = "cpu",
    transpose: bool = False,
    output_padding: Sequence[int] | None = None,
    start: np.ndarray | None = None,
) -> PowerResult:
    """Power iteration on the true (not circular) conv or conv-transpose at its input shape.

    For ``transpose`` the weight is [C_in, C_out/groups, k...] and ``input_spatial`` is the
    ConvTranspose's input size. ``start``: an initial vector [C_in, *input_spatial] (e.g. the
    ``start_in`` of ``conv_norm_certified``), else a seeded random one. The iteration runs on ``device``; the final ratio is re-evaluated
    on the CPU in float64, where the rounding bound of ``_certified_ratio`` holds.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return PowerResult(estimate=math.nan if w.size else 0.0, lower=0.0)
    in_channels = w.shape[0] if transpose else w.shape[1] * groups
    shape = (1, in_channels, *(int(n) for n in input_spatial))
    opad = tuple(output_padding) if output_padding is not None else (0,) * len(strides)

    # The iteration only has to find a good vector, so it runs in float32 (several times faster
    # convolutions), on weights rescaled by a power of two (no float32 overflow; the direction of
    # A^T A v does not change); the ratio that becomes the bound is evaluated in float64 below.
    import torch

    peak = float(np.max(np.abs(w)))
    w32 = np.ldexp(w, -int(np.frexp(peak)[1])) if peak > 0 else w
    fast = _conv_apply(
        w32, strides, pads, dilations, groups, transpose=transpose, output_padding=opad, device=device, dtype=torch.float32
    )
    v = power_iteration(fast, shape, seed=seed, iterations=iterations, device=device, start=start, dtype=torch.float32)
    exact = _conv_apply(w, strides, pads, dilations, groups, transpose=transpose, output_padding=opad, device="cpu")
    # |A| bounds (Hoelder / Schur test, || |A| ||_2 <= sqrt(||A||_1 ||A||_inf)): every weight
    # entry meets each input element at most once and each output element at most once, so a
    # row or column sum of |A| is at most the matching sum of |w| within one group: the sums over
    # w's axis 0 within a group (a conv's input channel / a conv-transpose's output channel) and
    # the sums over w's axes 1, 2... (a conv's output channel / a conv-transpose's input channel).
    flat = np.abs(w).reshape(w.shape[0], w.shape[1], -1)
    rows = w.shape[0] // groups
    per_axis0 = max(float(flat[j * rows : (j + 1) * rows].sum(axis=(0, 2)).max()) for j in range(groups))
    per_axis1 = float(flat.sum(axis=(1, 2)).max())
    abs_bound = _round_up(math.sqrt(per_axis0 * per_axis1) * (1.0 + (w.size + 4) * EPS))
    terms = int(w[0].size) if not transpose else int(w.shape[0] // groups * int(np.prod(w.shape[2:])))
    return _certified_ratio(exact, v, terms, abs_bound)

