"""A posteriori float64 verification of LipSDP-Neuron certificates (rho, T) on the stored weights.

The LMI (Fazlyab et al., NeurIPS 2019, arXiv:1906.04893, Theorem 2, "LipSDP-Neuron") for a chain
x_k = phi_k(W_{k-1} x_{k-1} + b_{k-1}) (k = 1..l), f(x) = W_l x_l + b_l, each phi_k element-wise and
slope-restricted in [alpha_k, beta_k], reads P(rho, T) = -M(rho, T) >= 0 with, block by block
(x_0 .. x_l):

    P_00 = rho I + 2 a_1 b_1 W_0^T T_1 W_0
    P_kk = 2 T_k + 2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k        (0 < k < l)
    P_ll = 2 T_l - W_l^T W_l
    P_{k-1,k} = -(a_k + b_k) W_{k-1}^T T_k

and T_k >= 0 diagonal. Why it is sound: for every neuron (dphi - a du)(b du - dphi) >= 0 (the slope
restriction dphi / du in [a, b]); summed with weights 2 t_i >= 0 and added to ||dy||^2 - rho ||dx||^2
it gives -[dx_0; ..; dx_l]^T P [..] <= 0, so ||dy||^2 <= rho ||dx||^2 whenever P >= 0: sqrt(rho) is
a Lipschitz constant.

Verification (``verify``) proves P >= 0 for the exact real P of the given float64 (rho, T) and the
exact weights (the float64 weights, widened by an optional entry-wise error bound):
1. P is formed in float64 block by block; E, the difference to the exact P, is bounded entry-wise
   (standard model |fl(a op b) - a op b| <= u |a op b|, u = 2^-53, and for a dot product of n terms
   |fl - exact| <= gamma_n sum |terms|, gamma_n = n u / (1 - n u), Higham, Accuracy and Stability,
   Lemma 3.1 / eq. (3.4)); ||E||_2 <= max row sum of |E| (||E||_2 <= sqrt(||E||_1 ||E||_inf), E
   symmetric).
2. A block Cholesky factorisation R of B = fl(P_fl - s I), s = e + c, is attempted. If it runs to
   completion, R^T R = B + dB with |dB| <= gamma_{K+1} |R^T| |R| (Higham Theorem 10.3, any order of
   the inner products; K the largest number of terms in one, here at most n_{k-1} + n_k), so
   B >= -||dB||_2 I >= -gamma_{K+1} ||R||_F^2 I (|| |R|^T |R| ||_2 <= || |R| ||_2^2 <= ||R||_F^2),
   and the diagonal shift itself is rounded: |fl(p - s) - (p - s)| <= u |fl(p - s)| / (1 - u).
3. Hence P_exact = P_fl + E = B + (rounding of the shift) + s I + E >= (s - e - ||dB|| - u' max|b_ii|) I
   >= 0 when c >= gamma_{K+1} ||R||_F^2 + u' max |b_ii|, which is checked after the factorisation.
Every bound computed in floating point here is a sum of non-negative terms; such a sum is at most
(1 + gamma_n) times its float value, covered by the factor ``_SLACK``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

U = 2.0**-53  # unit roundoff of float64 (round to nearest)
_SLACK = 1.01  # covers the rounding of the (non-negative) error bounds themselves: (1 + gamma_n) << 1.01
_TINY = 1e-290  # absolute slack per entry against underflow in products of tiny numbers


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u) (Higham, eq. (3.8))."""
    nu = n * U
    if nu >= 0.5:
        return math.inf
    return nu / (1.0 - nu)


@dataclass(frozen=True, kw_only=True)
class ChainLMI:
    """The data of the LMI for a chain: weights W_0..W_l ([out, in], float64), the slope interval of
    each of the l activations, and optional entry-wise bounds on |W_exact - W| (None: exact)."""

    weights: tuple[np.ndarray, ...]
    slopes: tuple[tuple[float, float], ...]
    errors: tuple[np.ndarray | None, ...] = ()
    # per-unit slope intervals [a_i, b_i] of each activation (a domain's stable units: [0, 0] or
    # [1, 1]); empty: every unit of activation k has ``slopes[k]``. The sector constraint of the
    # LMI is per neuron, so each t_i may take its own (a_i, b_i) (Fazlyab et al., Theorem 2).
    unit_slopes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.slopes) + 1:
            raise ValueError(f"{len(self.weights)} weights need {len(self.weights) - 1} activations, got {len(self.slopes)}")
        for a, b in zip(self.weights[:-1], self.weights[1:], strict=True):
            if b.shape[1] != a.shape[0]:
                raise ValueError(f"weight shapes {a.shape} and {b.shape} do not chain")
        if not self.errors:
            object.__setattr__(self, "errors", (None,) * len(self.weights))
        if self.unit_slopes:
            if len(self.unit_slopes) != len(self.slopes):
                raise ValueError("one pair of per-unit slope vectors per activation")
            for (a, b), w in zip(self.unit_slopes, self.weights[:-1], strict=True):
                if a.shape != (w.shape[0],) or b.shape != (w.shape[0],) or np.any(a > b):
                    raise ValueError("per-unit slopes: vectors of the activation's width with a <= b")

    def slope_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The slope bounds (a, b) of every unit of activation k (0-based) as vectors."""
        if self.unit_slopes:
            return self.unit_slopes[k]
        n = self.weights[k].shape[0]
        a, b = self.slopes[k]
        return np.full(n, float(a)), np.full(n, float(b))

    @property
    def dims(self) -> tuple[int, ...]:
        """n_0 .. n_l: the input width and the width of every activation."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights[:-1])


@dataclass(frozen=True, kw_only=True)
class Verified:
    """A verified certificate: sqrt(rho) is a Lipschitz constant of the chain (rho exact float)."""

    rho: float
    margin: float  # the proven lower bound on lambda_min(P), >= 0
    shift: float  # s used in the Cholesky test


def _blocks(lmi: ChainLMI, rho: float, ts: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """P_fl's diagonal and off-diagonal blocks and entry-wise bounds of their errors."""
    ws = lmi.weights
    errs = lmi.errors
    depth = len(ts)
    diag: list[np.ndarray] = []
    diag_err: list[np.ndarray] = []
    for k in range(depth + 1):
        n = lmi.dims[k]
        d = np.zeros((n, n))
        e = np.zeros((n, n))
        if k == 0:
            d += rho * np.eye(n)  # exact
        else:
            d += np.diag(2.0 * ts[k - 1])  # exact (times 2)
        if k < depth:
            a, b = lmi.slope_pair(k)
            w, dw = ws[k], errs[k]
            p = 2.0 * a * b  # two roundings at most: relative gamma_2
            if np.any(p != 0.0):
                q = p * ts[k]  # one more rounding
                quad = w.T @ (q[:, None] * w)  # q w: one rounding, then a dot product of n terms
                d += quad  # one more rounding of the sum
                aq = np.abs(q)
                bound = gamma(ws[k].shape[0] + 6) * (np.abs(w).T @ (aq[:, None] * np.abs(w))) + gamma(1) * np.abs(d)
                if dw is not None:
                    # |(W + D)^T Q (W + D) - W^T Q W| <= 2 |D|^T |Q| |W| + |D|^T |Q| |D|, times (1 + gamma_2) for q
                    bound += (1.0 + gamma(3)) * (dw.T @ (aq[:, None] * (2.0 * np.abs(w) + dw)))
                e += bound
        else:
            w, dw = ws[depth], errs[depth]
            gram = w.T @ w
            d -= gram
            bound = gamma(w.shape[0] + 2) * (np.abs(w).T @ np.abs(w)) + gamma(1) * np.abs(d)
            if dw is not None:
                bound += dw.T @ (2.0 * np.abs(w) + dw)
            e += bound
        diag.append(d)
        diag_err.append(e + _TINY)
    off: list[np.ndarray] = []
    off_err: list[np.ndarray] = []
    for k in range(1, depth + 1):
        a, b = lmi.slope_pair(k - 1)
        w, dw = ws[k - 1], errs[k - 1]
        st = (a + b) * ts[k - 1]  # two roundings: relative gamma_2
        o = -(w.T * st[None, :])  # a third: relative gamma_3
        e = gamma(3) * np.abs(o) + _TINY
        if dw is not None:
            e = e + (1.0 + gamma(2)) * dw.T * np.abs(st)[None, :]
        off.append(o)
        off_err.append(e)
    return diag, diag_err, off, off_err


def _error_norm(diag_err: list[np.ndarray], off_err: list[np.ndarray]) -> float:
    """An upper bound of ||E||_2 by the largest row sum of |E| (E symmetric: ||E||_2 <= ||E||_inf)."""
    worst = 0.0
    for k, e in enumerate(diag_err):
        rows = e.sum(axis=1)
        if k > 0:
            rows = rows + off_err[k - 1].sum(axis=0)
        if k < len(off_err):
            rows = rows + off_err[k].sum(axis=1)
        worst = max(worst, float(rows.max()) if rows.size else 0.0)
    return worst * _SLACK


def _block_cholesky(diag: list[np.ndarray], off: list[np.ndarray], shift: float) -> tuple[float, float, int] | None:
    """Block Cholesky of fl(P - shift I) (block tridiagonal); None when a pivot is not positive.

    Returns (||R||_F^2, max |b_ii|, K) for the test of the module docstring.
    """
    import scipy.linalg

    frob = 0.0
    maxdiag = 0.0
    k_terms = 1
    prev_r: np.ndarray | None = None
    for k, d in enumerate(diag):
        b = d - shift * np.eye(d.shape[0])
        maxdiag = max(maxdiag, float(np.abs(np.diag(b)).max()) if b.size else 0.0)
        s = b
        terms = d.shape[0]
        if k > 0:
            assert prev_r is not None
            # L = R_{k-1}^{-T} P_{k-1,k}: triangular solve (a substitution per entry)
            lk = scipy.linalg.solve_triangular(prev_r, off[k - 1], trans="T", lower=False, check_finite=False)
            frob += float(np.sum(lk * lk))
            s = b - lk.T @ lk
            terms += diag[k - 1].shape[0]
        k_terms = max(k_terms, terms)
        if not np.all(np.isfinite(s)):
            return None
        try:
            r = scipy.linalg.cholesky(s, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(r)) or np.any(np.diag(r) <= 0.0):
            return None
        frob += float(np.sum(r * r))
        prev_r = r
    return frob * _SLACK, maxdiag, k_terms


def _balance(diag: list[np.ndarray], diag_err: list[np.ndarray], off: list[np.ndarray], off_err: list[np.ndarray]) -> None:
    """Replace P by D P D, D = blkdiag(2^{e_k} I) with 2^{2 e_k} near 1 / max diag of block k.

    D P D >= 0 iff P >= 0 (a congruence), and multiplying by powers of two is exact in float64
    (barring under/overflow, excluded by the finiteness checks and the tiny absolute slack), so
    the error bounds scale exactly too. It balances blocks of very different magnitudes (the
    multipliers near the input are orders of magnitude below those near the output), which the
    norm-wise Cholesky test below would otherwise see as near-singular.
    """
    exps = []
    for d in diag:
        top = float(np.abs(np.diag(d)).max()) if d.size else 0.0
        exps.append(0 if top <= 0.0 or not math.isfinite(top) else -int(round(math.log2(top) / 2.0)))
    for k, e in enumerate(exps):
        diag[k] = np.ldexp(diag[k], 2 * e)
        diag_err[k] = np.ldexp(diag_err[k], 2 * e)
    for k in range(len(off)):
        off[k] = np.ldexp(off[k], exps[k] + exps[k + 1])
        off_err[k] = np.ldexp(off_err[k], exps[k] + exps[k + 1])


def verify(lmi: ChainLMI, rho: float, ts: Sequence[np.ndarray]) -> Verified | None:
    """Prove P(rho, T) >= 0 for the exact weights, or return None (see the module docstring)."""
    if not (math.isfinite(rho) and rho > 0.0) or len(ts) != len(lmi.slopes):
        return None
    for t, n in zip(ts, lmi.dims[1:], strict=True):
        if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(t < 0.0):
            return None
    diag, diag_err, off, off_err = _blocks(lmi, rho, ts)
    _balance(diag, diag_err, off, off_err)
    if not all(np.all(np.isfinite(d)) for d in diag) or not all(np.all(np.isfinite(o)) for o in off):
        return None
    e = _error_norm(diag_err, off_err)
    if not math.isfinite(e):
        return None
    scale = max(float(np.abs(np.diag(d)).max()) for d in diag if d.size)
    c = gamma(2 * max(lmi.dims) + 2) * scale * sum(lmi.dims) * 4.0
    for _ in range(3):
        shift = e + c
        result = _block_cholesky(diag, off, shift)
        if result is None:
            return None
        frob, maxdiag, k_terms = result
        need = gamma(k_terms + 1) * frob + 2.0 * U * maxdiag
        need *= _SLACK
        if c >= need:
            return Verified(rho=float(rho), margin=c - need, shift=shift)
        c = 2.0 * need
    return None


def certified_sqrt(value: float) -> float:
    """An upper bound of sqrt(value): sqrt is correctly rounded, so the next float up bounds it."""
    return math.nextafter(math.sqrt(value), math.inf)
