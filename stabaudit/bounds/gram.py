"""Certified Gram iteration (Delattre et al., ICML 2023) on a batch of complex matrices, in torch.

``gram_max_norm(blocks)`` returns a certified upper bound on max_f ||A_f||_2 over a batch of matrices
A_f (the per-frequency blocks of a circular convolution), float rounding of the iteration included.
The rounding of the *entries* of A_f (the DFT) is the caller's: it passes the matrices it computed,
and adds its own entry-error bound afterwards (Weyl: ||A|| <= ||A^|| + ||A - A^||).

The iteration (one frequency; B = A if A is wide, else A^H, so B is p x q with p <= q):
X_0 = B, X_k = fl(Y_{k-1} Y_{k-1}^H) with Y_{k-1} = 2^(-s_k) X_{k-1}, the power of two 2^(s_k)
chosen so that ||Y_{k-1}||_F is in [1/2, 1) (multiplication by a power of two is exact, barring
underflow: Frobenius rescaling that cannot overflow and costs no rounding).
Bounds, every one valid at every k (so the smallest over k is kept):
- ||M||_2^2 = ||M M^H||_2 for every matrix M (singular values), and
  ||fl(Y Y^H) - Y Y^H||_2 <= ||.||_F <= e_k := 2 (q_k + 2) EPS ||Y||_F^2 (complex dot products of
  length q_k; Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. (3.5) and Sec. 3.6,
  the factor 2 covers the complex multiply-add), hence
  ||X_{k-1}||_2 <= 2^(s_k) sqrt(||X_k||_2 + e_k)                               (Weyl + triangle);
- ||X_t||_2 <= ||X_t||_F (the spectral norm is at most the Frobenius norm), the computed Frobenius
  norm being widened by its own rounding ((size + 4) EPS, a sum of squares and a sqrt).
Unrolled from t down to 0 this gives U_0 >= ||B||_2 = ||A||_2. In exact arithmetic
U_0 = ||(B B^H)^(2^(t-1))||_F^(1/2^t) -> ||A||_2, with U_0 / ||A||_2 <= rank^(1/2^(t+1)).
Each scalar step of the unrolling adds <= 8 EPS of relative rounding, covered by (1 + 8 EPS).

Frequencies whose certified bound falls below the largest *estimated* norm are dropped from later
iterations; their last certified bound still enters the final maximum, so dropping is always sound
(it can only cost tightness if the estimate were wrong). The estimate is ||X c|| / ||c|| for the
largest column c of the last iterate (a Rayleigh-type ratio, exact for a rank-one iterate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

EPS = float(np.finfo(np.float64).eps)
# Absolute slack of every per-step error bound: covers underflow to subnormals (each entry of a
# product whose Frobenius norm is ~1 may lose up to 2**-1074 absolutely).
_TINY_STEP = 1e-300


@dataclass(frozen=True, kw_only=True)
class GramResult:
    """Certified ``upper`` >= max_f ||A_f||_2 of the computed blocks; ``estimate`` (no guarantee) of it.

    ``worst``: the index of the block with the largest estimate; ``left`` / ``right``: unit vectors
    approximating its top left / right singular vectors (for warm-starting a power iteration).
    """

    upper: float
    estimate: float
    steps: int
    worst: int
    left: np.ndarray
    right: np.ndarray


def _fro(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norms of a batch [F, a, b] (complex read as pairs of reals: 2ab squares summed)."""
    import torch

    r = torch.view_as_real(x.resolve_conj()) if x.is_complex() else x
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)


def _colnorm(x: torch.Tensor) -> torch.Tensor:
    """Column norms of a batch [F, a, b] -> [F, b]."""
    import torch

    if not x.is_complex():
        return torch.linalg.vector_norm(x, dim=1)
    return torch.linalg.vector_norm(torch.view_as_real(x.resolve_conj()), dim=(1, 3))


def _pow2_exponent(values: np.ndarray) -> np.ndarray:
    """s with values * 2**-s in [1/2, 1) (0 for zeros): frexp's exponent."""
    return np.frexp(values)[1].astype(np.int64)


def gram_max_norm(
    blocks: torch.Tensor,
    *,
    max_steps: int = 14,
    rtol: float = 2e-6,
) -> GramResult:
    """Certified upper bound on max_f ||blocks[f]||_2 by batched Gram iteration (see module docstring).

    ``blocks`` is [F, m, n], float64 or complex128, on any torch device; it must be finite and
    should be rescaled by the caller so that its entries are O(1) (no overflow of squares).
    Iterates until the certified bound is within ``rtol`` of the estimate, or ``max_steps``.
    """
    import torch

    nfreq, m, n = blocks.shape
    wide = m <= n
    x = blocks if wide else blocks.mH  # p x q, p <= q: B B^H is the smaller Gram matrix
    p, q = int(x.shape[1]), int(x.shape[2])
    active = np.arange(nfreq)
    best = np.full(nfreq, math.inf)  # smallest certified bound seen per frequency
    est = np.zeros(nfreq)  # latest estimate per frequency (no guarantee)
    hist_s: list[np.ndarray] = []  # per step, per frequency: the exponent s_k
    hist_e: list[np.ndarray] = []  # per step, per frequency: e_k
    steps = 0
    inner = q
    top_vec: torch.Tensor | None = None
    top_freq = 0
    while True:
        fro = _fro(x).cpu().numpy().astype(np.float64)
        size = int(x.shape[1]) * int(x.shape[2])
        if steps > 0:
            # certified bound from the current iterate: ||X_k||_2 <= ||X_k||_F, unrolled to k = 0
            upper = fro * (1.0 + (2 * size + 4) * EPS)
            # estimate: ||X c|| / ||c||, c the largest column of X_k (Hermitian PSD iterate)
            colnorm = _colnorm(x)  # [A, p]
            jmax = torch.argmax(colnorm, dim=1)
            cols = torch.gather(x, 2, jmax.view(-1, 1, 1).expand(-1, x.shape[1], 1))  # [A, p, 1]
            xc = torch.linalg.vector_norm(x @ cols, dim=(1, 2))
            cn = torch.linalg.vector_norm(cols, dim=(1, 2))
            ratio = torch.where(cn > 0, xc / torch.where(cn > 0, cn, torch.ones_like(cn)), torch.zeros_like(cn))
            estimate = ratio.cpu().numpy().astype(np.float64)
            for k in range(steps - 1, -1, -1):  # active sets only shrink: full-length history
                s_k, e_k = hist_s[k][active], hist_e[k][active]
                upper = np.ldexp(np.sqrt(upper + e_k), s_k) * (1.0 + 8 * EPS)
                estimate = np.ldexp(np.sqrt(estimate), s_k)
            best[active] = np.minimum(best[active], upper)
            est[active] = estimate
            lead = float(np.max(est))
            if int(active[int(np.argmax(estimate))]) == int(np.argmax(est)):
                top_freq, top_vec = int(np.argmax(est)), cols[int(np.argmax(estimate)), :, 0]
            if float(np.max(best[active])) <= lead * (1.0 + rtol) or steps >= max_steps:
                break
            keep = best[active] >= lead * (1.0 - 1e-12)  # the others cannot hold the maximum
            if not np.all(keep):
                kidx = torch.from_numpy(np.flatnonzero(keep)).to(x.device)
                x = x.index_select(0, kidx)
                fro = fro[keep]
                active = active[keep]
        s = _pow2_exponent(fro)
        scale = torch.from_numpy(np.ldexp(1.0, -s)).to(device=x.device, dtype=torch.float64)
        y = x * scale.view(-1, 1, 1).to(x.dtype)
        fro_y = np.ldexp(fro, -s) * (1.0 + (2 * size + 4) * EPS)  # bound on ||Y||_F (computed norm + rounding)
        e = 2.0 * (inner + 2) * EPS * fro_y * fro_y * (1.0 + 4 * EPS) + _TINY_STEP
        x = y @ y.mH
        full_s, full_e = np.zeros(nfreq, dtype=np.int64), np.zeros(nfreq)
        full_s[active], full_e[active] = s, e
        hist_s.append(full_s)
        hist_e.append(full_e)
        steps += 1
        inner = p
    worst = top_freq if top_vec is not None else int(np.argmax(est))
    left, right = singular_vectors(blocks[worst], top_vec, wide)
    return GramResult(upper=float(np.max(best)), estimate=float(np.max(est)), steps=steps, worst=worst,
                      left=left, right=right)


def singular_vectors(a: torch.Tensor, top: torch.Tensor | None, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unit (left, right) vectors of ``a`` from ``top``, an approximate top eigenvector of B B^H."""
    import torch

    m, n = int(a.shape[0]), int(a.shape[1])
    if top is None or not bool(torch.any(top != 0)):
        top = torch.ones(m if wide else n, dtype=a.dtype, device=a.device)
    top = top / torch.linalg.vector_norm(top)
    if wide:  # top lives in the output space (B = A)
        left, right = top, a.mH @ top
    else:  # B = A^H: top lives in the input space
        left, right = a @ top, top
    nl, nr = torch.linalg.vector_norm(left), torch.linalg.vector_norm(right)
    left = left / nl if float(nl) > 0 else left
    right = right / nr if float(nr) > 0 else right
    return left.cpu().numpy(), right.cpu().numpy()


# ---- one Gram step + a shifted-Cholesky certificate ----------------------------------------------
# Cheaper than iterating to convergence (each Gram step costs a batched p x p x q product): form
# the first Gram iterate H = Y Y^H once (Y = 2^-s B, as above, error e_1), estimate lambda_max(H)
# per frequency by power iteration (no guarantee needed), and certify a candidate mu with a
# Cholesky factorization of M = mu I - H (1/6 of a Gram step):
# - the lower triangle of the computed H^ defines a Hermitian H_L with ||H_L - Y Y^H||_2 <= e_1 (the
#   entrywise rounding bound of each entry is the same as for H^, see the module docstring);
# - M^ = fl(mu I - H_L) differs from mu I - H_L by a diagonal D, |D_ii| <= EPS (mu + |h_ii|)
#   (one rounded subtraction per diagonal entry; the off-diagonal negation is exact);
# - if the floating-point Cholesky of M^ runs to completion, then R^H R = M^ + dM with
#   |dM| <= g |R^H| |R| and ||r_j||^2 <= m_jj / (1 - g), g = gamma_{p+1} (Demmel 1989; Higham,
#   ASNA, Thm 10.5 and (10.8); the same bound holds for blocked LAPACK variants, which compute the
#   same inner products in another order). We take g = 4 (p + 3) EPS (8 times gamma_{p+1}: room for
#   complex arithmetic, Higham Lemma 3.5). Then ||dM||_2 <= ||dM||_F <= g / (1 - g) trace(M^);
# - R^H R is positive semidefinite, so mu I - H_L + D + dM >= 0, i.e.
#   lambda_max(Y Y^H) <= mu + ||D|| + ||dM|| + e_1                        (Weyl)
#   and ||B||_2 = 2^s sqrt(lambda_max(Y Y^H)).
# The level mu: an estimate of each lambda_max(H_f) (``estimate_top``; no guarantee needed); one
# factorization of every frequency at the largest estimate, raised by LEVEL_RTOL, certifies all
# that lie below it (the maximum is all that matters). A failure certifies nothing and only says
# the estimate was low: those few frequencies get their eigenvalues computed (single-precision
# eigvalsh, still an estimate) and a new level, raised by the factors of _RETRY_SHIFTS in turn;
# frequencies that still fail go to the plain Gram iteration, which is certified by construction.
LEVEL_RTOL = 5e-5
_RETRY_SHIFTS = (2e-5, 5e-4, 1e-2, 0.125)
# Lanczos steps by side: enough that the largest estimate over the frequencies is within ~1e-5 of
# the true maximum on dense random-like Gram matrices (the hardest case: clustered top eigenvalues)
_LANCZOS_STEPS = ((320, 16), (1 << 62, 24))
# ... and at least side / 32 steps, up to 96: on large sides a factorization costs ~side / 3
# matrix-vector products, and a failed level costs another one
_LANCZOS_PER_SIDE, _LANCZOS_MAX = 32, 96
# Gram matrices from this side up are formed from their lower block triangle (``lower_gram``)
_SPLIT_GRAM_SIDE = 1024
# up to this side the estimates come from eigvalsh outright (cheaper than the iteration's overhead)
_EIGVALSH_SIDE = 160
# with a gauge, the estimates cover this fraction of the frequencies (the largest gauges), at least
# _ESTIMATE_MIN of them: the level they set certifies the rest at one factorization each
_ESTIMATE_FRACTION, _ESTIMATE_MIN = 1.0 / 8.0, 8


def estimate_count(nfreq: int) -> int:
    """How many of ``nfreq`` matrices ``estimate_top`` estimates when given a gauge."""
    return min(nfreq, max(_ESTIMATE_MIN, math.ceil(nfreq * _ESTIMATE_FRACTION)))


def lower_gram(y: torch.Tensor) -> torch.Tensor:
    """Y Y^H [F, p, p] from the products of its lower block triangle only, the upper one mirrored:
    five eighths of the full product's work. Four row panels; panel i is Y_i Y_{:e_i}^H (e_i its
    last row), so its cost grows with i, and the pairs (0, 3) and (1, 2) run on the two kernel
    threads with equal work (a fixed cut: the same bits whichever thread runs a panel). Each entry
    is one inner product of two rows of Y, as in the full product, so the rounding bound of every
    entry is unchanged. The blocks above the diagonal blocks are the mirrors of those below, bit
    for bit; the certificate reads the lower triangle, the estimates the whole matrix."""
    import torch

    from stabaudit.limits import thread_map

    nfreq, p = int(y.shape[0]), int(y.shape[1])
    cuts = [round(p * k / 4) for k in range(5)]
    h = torch.empty((nfreq, p, p), dtype=y.dtype, device=y.device)

    def panels(which: tuple[int, ...]) -> None:
        for i in which:
            lo, hi = cuts[i], cuts[i + 1]
            h[:, lo:hi, :hi] = y[:, lo:hi] @ y[:, :hi].mH

    thread_map(panels, [(0, 3), (1, 2)])
    for i in range(1, 4):
        lo, hi = cuts[i], cuts[i + 1]
        h[:, :lo, lo:hi] = h[:, lo:hi, :lo].mH
    return h


def gram_cholesky_max_norm(blocks: torch.Tensor) -> tuple[GramResult, int]:
    """Certified upper bound on max_f ||blocks[f]||_2: one Gram step, then a shifted-Cholesky
    certificate per frequency (see the comment above). Returns the result and the number of
    frequencies that needed the plain Gram iteration."""
    import torch

    nfreq, m, n = blocks.shape
    wide = m <= n
    x = blocks if wide else blocks.mH
    p, q = int(x.shape[1]), int(x.shape[2])
    fro = _fro(x).cpu().numpy().astype(np.float64)
    s = _pow2_exponent(fro)
    scale = torch.from_numpy(np.ldexp(1.0, -s)).to(device=x.device, dtype=torch.float64)
    y = x * scale.view(-1, 1, 1).to(x.dtype)
    fro_y = np.ldexp(fro, -s) * (1.0 + (2 * p * q + 4) * EPS)
    e1 = 2.0 * (q + 2) * EPS * fro_y * fro_y * (1.0 + 4 * EPS) + _TINY_STEP
    h = lower_gram(y) if p >= _SPLIT_GRAM_SIDE else y @ y.mH  # [F, p, p]
    cert = certify_hermitian_max(h, e1, 2 * s)
    upper = math.sqrt(cert.bound) * (1.0 + 4 * EPS)
    if cert.pending.size:  # tighter than their Frobenius bound: Gram iteration on those blocks
        done = np.setdiff1d(np.arange(nfreq), cert.pending)
        res = gram_max_norm(blocks.index_select(0, torch.from_numpy(cert.pending).to(blocks.device)))
        upper = max(res.upper, math.sqrt(float(np.max(cert.bounds[done]))) * (1.0 + 4 * EPS) if done.size else 0.0)
    left, right = singular_vectors(blocks[cert.worst], cert.vector, wide)
    result = GramResult(upper=upper, estimate=math.sqrt(cert.lead), steps=1, worst=cert.worst, left=left, right=right)
    return result, int(cert.pending.size)


@dataclass(frozen=True, kw_only=True)
class HermitianCertificate:
    """``bound`` >= max_f lambda_max(H_f) (certified; frequencies in ``pending`` failed every Cholesky
    certificate and hold only their Frobenius bound), ``lead`` the estimate of the maximum, ``worst``
    its index and ``vector`` its approximate top eigenvector."""

    bound: float
    bounds: np.ndarray  # per frequency
    lead: float
    worst: int
    vector: torch.Tensor
    pending: np.ndarray


def _lanczos_top(h: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates (no guarantee) of lambda_max(h_f) and unit top eigenvectors, batched Lanczos.

    Starts from each matrix's largest column; ``steps`` matrix-vector products per frequency, fully
    re-orthogonalized against the (small) basis; the Ritz pair of the largest Ritz value (a
    Rayleigh quotient: never above lambda_max in exact arithmetic). A breakdown (an invariant
    subspace found) leaves zero vectors, whose entries of the projected matrix are zero: the Ritz
    values stay those of the subspace found.
    """
    import torch

    nfreq, p = int(h.shape[0]), int(h.shape[1])
    k = max(1, min(steps, p))
    colnorm = _colnorm(h)
    jmax = torch.argmax(colnorm, dim=1)
    q = torch.gather(h, 2, jmax.view(-1, 1, 1).expand(-1, p, 1))
    nq = torch.linalg.vector_norm(q, dim=(1, 2), keepdim=True)
    q = torch.where(nq > 0, q / torch.where(nq > 0, nq, torch.ones_like(nq)), torch.ones_like(q) / math.sqrt(p))
    rows = torch.zeros((nfreq, k, p), dtype=h.dtype, device=h.device)  # the basis, one row per vector
    proj = torch.zeros((nfreq, k, k), dtype=h.dtype, device=h.device)  # Q^H H Q, built column by column
    for j in range(k):
        rows[:, j, :] = q[:, :, 0]
        w = h @ q
        qs = rows[:, : j + 1, :]
        coef = qs.conj() @ w  # [F, j + 1, 1]
        proj[:, : j + 1, j : j + 1] = coef
        if j + 1 == k:
            break
        w = w - qs.transpose(1, 2) @ coef
        w = w - qs.transpose(1, 2) @ (qs.conj() @ w)  # twice is enough (Kahan / Parlett)
        b = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
        good = b > 1e-150
        q = torch.where(good, w / torch.where(good, b, torch.ones_like(b)), torch.zeros_like(w))
    t = proj.triu()
    t = t + t.triu(1).mH  # Hermitian from its upper triangle (the computed columns)
    vals, vecs = torch.linalg.eigh(t)
    vec = (rows.transpose(1, 2) @ vecs[:, :, -1:])[:, :, 0]
    return vals[:, -1], vec


def _single(h: torch.Tensor) -> torch.Tensor:
    """A single-precision copy (complex64 or float32), for estimates only."""
    import torch

    return h.to(torch.complex64 if h.is_complex() else torch.float32)


def estimate_top(h: torch.Tensor, gauge: np.ndarray | None = None, count: int | None = None,
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """(lambda_max estimates [F], unit top eigenvector estimates [F, p] or zeros); no guarantee attached.

    Small sides: eigvalsh outright, in single precision (twice as fast; an estimate only needs ~1e-6
    relative accuracy, float32's rounding is ~1e-7 of ||h||); larger sides: Lanczos.

    ``gauge`` [F] (a cheap size of each matrix, its Frobenius norm in true units): only the matrices
    of the largest gauges are estimated, ``count`` of them (default ``estimate_count(F)``; a chunk
    of a larger batch passes its share of the batch's count), the others get 0 and a zero vector.
    The estimates only set the level that ``certify_hermitian_max`` tries first: a frequency above
    it fails its factorization and is estimated there, so the bound is the same maximum; only the
    work moves (on wide convolutions most frequencies lie far below the peak).
    """
    import torch

    nfreq, p = int(h.shape[0]), int(h.shape[1])
    count = min(nfreq, max(1, estimate_count(nfreq) if count is None else count))
    if gauge is not None and count < nfreq:
        # the largest gauges, ties by index (a fixed choice: the estimates never depend on threads)
        pick = np.sort(np.argsort(-np.asarray(gauge, dtype=np.float64), kind="stable")[:count])
        sub_lam, sub_vec = estimate_top(h.index_select(0, torch.from_numpy(pick).to(h.device)))
        full = np.zeros(nfreq)
        full[pick] = sub_lam
        vectors = torch.zeros((nfreq, p), dtype=h.dtype, device=h.device)
        vectors[torch.from_numpy(pick).to(h.device)] = sub_vec.to(h.dtype)
        return full, vectors
    if p <= _EIGVALSH_SIDE:
        vals = torch.linalg.eigvalsh(_single(h))[:, -1]
        return vals.cpu().numpy().astype(np.float64), torch.zeros((int(h.shape[0]), p), dtype=h.dtype, device=h.device)
    steps = max(next(k for side, k in _LANCZOS_STEPS if p <= side), min(_LANCZOS_MAX, p // _LANCZOS_PER_SIDE))
    # double precision: faster matrix-vector products in torch on small batched sides; from
    # _SPLIT_GRAM_SIDE up the products read the matrix from memory, and a single-precision copy
    # halves that (the estimates stay within ~1e-7 of the top eigenvalue, far inside LEVEL_RTOL)
    lam, vec = _lanczos_top(_single(h) if p >= _SPLIT_GRAM_SIDE else h, steps)
    return lam.cpu().numpy().astype(np.float64), vec.to(h.dtype)


def certify_hermitian_max(
    h: torch.Tensor,
    err: np.ndarray,
    exp2: np.ndarray,
    *,
    level: float = 0.0,
    estimate: tuple[np.ndarray, torch.Tensor] | None = None,
) -> HermitianCertificate:
    """Certified bound on max_f lambda_max(H_f) by shifted Cholesky factorizations (comment above).

    ``h`` [F, p, p]: computed Hermitian matrices (only their lower triangles are read; consumed:
    negated in place), scaled so that ||h_f||_F <= ~1; ``err`` [F]: bounds on
    ||h_f - H_f / 2^exp2_f||_2 (the true matrices, in the same scaled units); H_f = 2^exp2_f *
    (scaled true matrix). ``level``: the common level to try (true units), when the caller knows a
    larger maximum than these matrices' own (other chunks of frequencies: certifying below it buys
    no tightness); ``estimate``: ``estimate_top(h)`` when the caller has it. Frequencies whose
    factorization fails at every level are returned in ``pending`` (bounded by their Frobenius
    norm only).
    """
    import torch

    nfreq, p = int(h.shape[0]), int(h.shape[1])
    lam, vectors = estimate_top(h) if estimate is None else estimate
    lam_true = np.ldexp(np.maximum(lam, 0.0), exp2)
    lead = float(np.max(lam_true))
    worst = first_worst = int(np.argmax(lam_true))
    s = exp2

    # certified bounds on lambda_max(H_f), to start with lambda_max <= ||H||_F <= ||h||_F + err
    # (Weyl; the computed Frobenius norm widened by its rounding): loose, replaced where a
    # Cholesky certificate succeeds
    fro_h = _fro(h).cpu().numpy().astype(np.float64)
    bound2 = np.ldexp((fro_h * (1.0 + (2 * p * p + 4) * EPS) + err) * (1.0 + 4 * EPS), s)
    diag = torch.diagonal(h, dim1=1, dim2=2).real.cpu().numpy().astype(np.float64)
    g = 4.0 * (p + 3) * EPS

    neg = h.neg_()  # -H, in place (the caller's h is consumed)
    neg_diag = neg.diagonal(dim1=1, dim2=2).clone()

    def certify(freqs: np.ndarray, level: np.ndarray | float) -> np.ndarray:
        """Try lambda_max(H_f) <= ~level_f for each f in freqs; record the bounds; return successes."""
        mu = np.ldexp(np.broadcast_to(np.asarray(level, dtype=np.float64), freqs.shape), -s[freqs])  # scaled units
        if freqs.size == 0 or not np.all(np.isfinite(mu)):
            return np.zeros(freqs.size, dtype=bool)
        shift = torch.from_numpy(mu).to(device=h.device).view(-1, 1)
        if freqs.size == nfreq:  # in place: mu I + (-H), then the diagonal restored (no copy of H)
            neg.diagonal(dim1=1, dim2=2).add_(shift)
            _, info = torch.linalg.cholesky_ex(neg, check_errors=False)
            neg.diagonal(dim1=1, dim2=2).copy_(neg_diag)
        else:
            mat = neg.index_select(0, torch.from_numpy(freqs).to(h.device))
            mat.diagonal(dim1=1, dim2=2).add_(shift)  # mu I - H
            _, info = torch.linalg.cholesky_ex(mat, check_errors=False)
        ok = (info == 0).cpu().numpy()
        if np.any(ok):
            f = freqs[ok]
            d_norm = EPS * (mu[ok] + np.abs(diag[f]).max(axis=1))
            trace = np.sum(mu[ok][:, None] - diag[f], axis=1) + p * d_norm  # trace(M^), rounded up
            dm = g / (1.0 - g) * np.maximum(trace, 0.0) * (1.0 + (p + 4) * EPS)
            lam_bound = np.ldexp((mu[ok] + d_norm + dm + err[f]) * (1.0 + 8 * EPS), s[f])
            bound2[f] = np.minimum(bound2[f], lam_bound)
        return ok

    # one factorization per frequency at the common level; the few that fail get eigvalsh estimates
    level = max(lead * (1.0 + LEVEL_RTOL), level)
    pending = np.arange(nfreq)
    pending = pending[~certify(pending, level)]
    if pending.size:
        sub = neg.index_select(0, torch.from_numpy(pending).to(h.device))  # -H: its lowest eigenvalue
        exact = -torch.linalg.eigvalsh(_single(sub))[:, 0]
        lam_pending = np.ldexp(np.maximum(exact.cpu().numpy().astype(np.float64), 0.0), s[pending])
        if float(np.max(lam_pending)) > lead:
            lead = float(np.max(lam_pending))
            worst = int(pending[int(np.argmax(lam_pending))])
        for shift in _RETRY_SHIFTS:
            if pending.size == 0:
                break
            levels = np.maximum(lam_pending, level) * (1.0 + shift)  # a failed level is never tried again
            ok = certify(pending, levels)
            pending, lam_pending = pending[~ok], lam_pending[~ok]
    vector = vectors[worst]
    if worst != first_worst or not bool(torch.any(vector != 0)):  # no estimate of it: the lowest of -H
        vector = torch.linalg.eigh(neg[worst])[1][:, 0]
    return HermitianCertificate(
        bound=float(np.max(bound2)), bounds=bound2, lead=lead, worst=worst, vector=vector, pending=pending,
    )
