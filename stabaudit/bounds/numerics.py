"""Certified spectral norms in float64: dense SVD, convolutions by circulant embedding, power iteration.

Every function here is sound for the *stored* weights, floating-point rounding included: inputs are
converted to float64 (exact for float16/float32 storage) and every floating-point result is widened
by an explicit rounding margin whose inequality is named beside it. Notation: ``EPS`` is the float64
machine epsilon 2**-52 (twice the unit roundoff u = 2**-53); ``gamma_k = k*u / (1 - k*u)`` is the
classical bound on the relative error of a k-term sum (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., Lemma 3.1 and eq. (3.5)); we bound it by ``k*EPS`` whenever k*u < 1/2.

torch is imported lazily inside the power-iteration functions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

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

# Work budget (roughly flops) of the exact circulant bound of one convolution before falling back
# to a cheaper certified bound; 1.5e11 is ~10-30 s on two CPU cores (a 512 -> 512 3x3 conv at 14x14).
CIRCULANT_BUDGET = 1.5e11
# The exact explicit matrix is used for small convolutions: at most this many entries per group
# (16 MiB of float64) and about this much work (Gram matrix + symmetric eigensolver; a
# 2048 x 1024 matrix, ~1e10, takes about half a second on two cores).
DENSE_MAX_ENTRIES = 1 << 21
DENSE_BUDGET = 1.2e10
# Complex entries held in memory at once by the chunked frequency loop (16 bytes each: 64 MiB).
_CHUNK_ENTRIES = 1 << 22


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
) -> CertifiedNorm:
    """Certified upper bound on ||conv||_2 of a zero-padded, strided, dilated, grouped N-d conv.

    ``weight`` is [C_out, C_in/groups, k...]; ``pads`` = (begin..., end...); ``input_spatial`` the
    spatial input size; ``keep_outputs`` (optional) keeps only the first outputs per axis (the
    operator P A, P a coordinate projection). The operator is the one ``stabaudit.ir.executor``
    runs (cross-correlation; a bias is a translation and changes no Lipschitz constant). The batch
    does not matter: batch copies are a block diagonal of identical blocks.

    Methods, the first that fits its budget:
    "dense-svd": the exact explicit matrix of each group and its certified norm (upper and lower);
    "circulant-embedding": the exact norm of a circular convolution that contains the real one;
    else the smaller of the cheaper "unfolded-coverage" and "tap-sum" bounds (``_conv_fallback``).
    """
    g = _geometry(weight, strides, pads, dilations, groups, input_spatial, keep_outputs)
    w = g.weight
    if not np.all(np.isfinite(w)):
        return CertifiedNorm(upper=math.inf, method="non-finite-weights", notes=("weights contain NaN or Inf",))
    if w.size == 0 or any(o <= 0 for o in g.keep) or any(n <= 0 for n in g.spatial) or not np.any(w):
        return CertifiedNorm(upper=0.0, method="zero-operator", lower=0.0)
    m = w.shape[0] // g.groups
    rows, cols = m * int(np.prod(g.keep)), w.shape[1] * int(np.prod(g.spatial))
    side = min(rows, cols)
    dense_cost = float(g.groups) * (rows * cols * side + 6.0 * side**3)
    if rows * cols <= DENSE_MAX_ENTRIES and dense_cost <= dense_budget:
        pairs = [gram_norm_bounds(_dense_group_matrix(g, j)) for j in range(g.groups)]
        return CertifiedNorm(
            upper=max(u for u, _ in pairs), lower=max(low for _, low in pairs), method="dense-svd"
        )
    periods = tuple(
        _period(n, o, k, s, b, dl)
        for n, o, k, s, b, dl in zip(g.spatial, g.out, g.kernel, g.strides, g.pads_begin, g.dilations, strict=True)
    )
    phases = int(np.prod(g.strides))
    ncols = w.shape[1] * phases
    grid = [p // s for p, s in zip(periods, g.strides, strict=True)]
    freqs = int(np.prod(grid[:-1])) * (grid[-1] // 2 + 1)
    p = min(m, ncols)
    ktaps = int(np.prod(g.kernel))
    # per frequency: the DFT of the taps, the Gram matrix, a Hermitian eigensolver (~6 p^3)
    cost = float(g.groups) * freqs * (4.0 * m * w.shape[1] * ktaps + m * ncols * p + 6.0 * p**3)
    if cost <= budget:
        upper = max(_circulant_group_norm(g, j, periods) for j in range(g.groups))
        return CertifiedNorm(upper=upper, method="circulant-embedding")
    return _conv_fallback(g, note=f"circulant-embedding skipped: ~{cost:.1e} flops over budget {budget:.1e}")


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
def _tap_table(g: _ConvGeometry, periods: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per flattened tap k: its flattened phase r_k, and its circular position tau_k per axis."""
    grid = [p // s for p, s in zip(periods, g.strides, strict=True)]
    taps = np.array(list(np.ndindex(*g.kernel)), dtype=np.int64).reshape(-1, g.ndim)
    offsets = taps * np.array(g.dilations) - np.array(g.pads_begin)  # d*k - p per axis
    s = np.array(g.strides)
    r = np.mod(offsets, s)
    q = (offsets - r) // s
    tau = np.mod(q, np.array(grid))
    phase = np.ravel_multi_index(tuple(r.T), g.strides) if g.ndim else np.zeros(len(taps), dtype=np.int64)
    return np.asarray(phase, dtype=np.int64), tau, grid


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
        fidx = np.unravel_index(flat, half)
        a = np.zeros((m, c, nphase, len(flat)), dtype=np.complex128)
        for r, idx in enumerate(taps_by_phase):
            if len(idx) == 0:
                continue
            # exp(-2 pi i sum_axis f_axis * tau_axis / M_axis), the phase reduced exactly mod M
            e = np.ones((len(idx), len(flat)), dtype=np.complex128)
            for axis, size in enumerate(grid):
                turns = np.mod(np.outer(tau[idx, axis], fidx[axis]), size) / size
                angle = (2.0 * np.pi) * turns
                e = e * (np.cos(angle) - 1j * np.sin(angle))
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
) -> torch.Tensor:
    """The unit vector after ``iterations`` steps of v <- A^T A v / ||A^T A v|| (adjoint by autograd)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(tuple(in_shape), generator=gen, dtype=torch.float64).to(device)
    v = v / v.norm()
    for _ in range(max(0, int(iterations))):
        y, vjp = torch.func.vjp(apply, v)[:2]
        (z,) = vjp(y)
        norm = z.norm()
        if not torch.isfinite(norm) or float(norm) == 0.0:
            break  # A v = 0 (or overflow): keep the last v, the ratio below is still valid
        v = (z / norm).detach()
    return v.detach().cpu()


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
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function x -> conv(x) (or conv_transpose) without bias, as the executor runs it."""
    import torch
    import torch.nn.functional as F

    wt = torch.from_numpy(np.array(weight, dtype=np.float64)).to(device)

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
) -> PowerResult:
    """Power iteration on the true (not circular) conv or conv-transpose at its input shape.

    For ``transpose`` the weight is [C_in, C_out/groups, k...] and ``input_spatial`` is the
    ConvTranspose's input size. The iteration runs on ``device``; the final ratio is re-evaluated
    on the CPU in float64, where the rounding bound of ``_certified_ratio`` holds.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return PowerResult(estimate=math.nan if w.size else 0.0, lower=0.0)
    in_channels = w.shape[0] if transpose else w.shape[1] * groups
    shape = (1, in_channels, *(int(n) for n in input_spatial))
    opad = tuple(output_padding) if output_padding is not None else (0,) * len(strides)

    def make(dev: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return _conv_apply(w, strides, pads, dilations, groups, transpose=transpose, output_padding=opad, device=dev)

    v = power_iteration(make(device), shape, seed=seed, iterations=iterations, device=device)
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
    return _certified_ratio(make("cpu"), v, terms, abs_bound)


def conv_norm_power(
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
) -> float:
    """Power-iteration value ||A v|| / ||v|| (an ESTIMATE of ||A||_2 from below)."""
    return conv_power(
        weight, strides, pads, dilations, groups, input_spatial, seed=seed, iterations=iterations,
        device=device, transpose=transpose, output_padding=output_padding,
    ).estimate
