"""Layer-wise LipSDP certificates: ECLipsE-Fast and ECLipsE (Xu & Sivaranjani, NeurIPS 2024).

Both build a feasible point of the LipSDP-Neuron LMI (``certify``) one layer at a time, by the
sequential Schur complement (block LDL^T) recursion of a block tridiagonal matrix: with rho = 1,
P >= 0 holds iff, with S_0 = I and for k = 1..l

    R_{k-1} = S_{k-1} + 2 a_k b_k W_{k-1}^T T_k W_{k-1}    > 0
    S_k     = 2 T_k - (a_k + b_k)^2 T_k W_{k-1} R_{k-1}^{-1} W_{k-1}^T T_k   > 0

and finally c S_l >= W_l^T W_l (the last block scaled by c: the LMI is homogeneous in (rho, T)
except for W_l^T W_l, so P(c, c T) >= 0 iff c S_l - W_l^T W_l >= 0). Then L^2 = c =
lambda_max(W_l S_l^{-1} W_l^T) (Xu & Sivaranjani, arXiv:2404.04375: the sequential decomposition
of the LipSDP-Neuron LMI by Schur complements, in our notation; the recursion is the block LDL^T
factorisation, and a symmetric block tridiagonal matrix with positive definite leading block is
positive semidefinite iff every later Schur complement is). The methods differ in how T_k is chosen:
- ECLipsE-Fast (their closed-form variant): T_k = t_k I with t_k maximising the smallest
  eigenvalue of S_k, 2 t - (a+b)^2 t^2 lambda_max(A), i.e. t_k = 1 / ((a+b)^2 lambda_max(A)),
  A = W_{k-1} S_{k-1}^{-1} W_{k-1}^T.
- ECLipsE (their variant with a small SDP per layer): diagonal T_k maximising c_k subject to S_k >= c_k W_k^T W_k
  (W_k the next weight), an LMI in (T_k, c_k) by a Schur complement; it is the one-hidden-layer
  LipSDP-Neuron of (W_{k-1} S_{k-1}^{-1/2}, W_k), solved here by ``sdp.barrier_solve``.
Each result is a certificate (rho, T) verified by ``certify.verify``; the code is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses.certify import ChainLMI


@dataclass(frozen=True, kw_only=True)
class Certificate:
    """A candidate (rho, T) of the LipSDP-Neuron LMI of ``lmi`` (not yet verified)."""

    rho: float
    ts: tuple[np.ndarray, ...]
    notes: tuple[str, ...] = ()


def _inv_quad(w: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """W S^{-1} W^T for S > 0 (None when S is not positive definite)."""
    import scipy.linalg

    try:
        c = scipy.linalg.cho_factor(s, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    a = w @ scipy.linalg.cho_solve(c, w.T, check_finite=False)
    return (a + a.T) / 2.0


Slope = tuple[np.ndarray, np.ndarray]  # per-unit slope bounds (a_i, b_i) of one activation


def _next_schur(w: np.ndarray, s_prev: np.ndarray, t: np.ndarray, slope: Slope) -> np.ndarray | None:
    """S_k of the module docstring (per-unit slopes: 2 T A B and (A + B) T in place of the scalar
    products), or None when R_{k-1} or S_k is not positive definite."""
    a, b = slope
    ab = a * b
    r = s_prev + 2.0 * (w.T @ ((ab * t)[:, None] * w)) if np.any(ab != 0.0) else s_prev
    q = _inv_quad(w, r)
    if q is None:
        return None
    ct = (a + b) * t
    s = np.diag(2.0 * t) - ct[:, None] * q * ct[None, :]
    s = (s + s.T) / 2.0
    if np.linalg.eigvalsh(s)[0] <= 0.0:
        return None
    return s


def _fast_t(w: np.ndarray, s_prev: np.ndarray, slope: Slope) -> np.ndarray | None:
    a, b = slope
    q = _inv_quad(w, s_prev)
    if q is None:
        return None
    amax = float(np.linalg.eigvalsh(q)[-1])
    ss = float(np.max((a + b) ** 2, initial=0.0))
    t = 1.0 / (ss * amax) if ss > 0.0 and amax > 0.0 else 1.0
    return np.full(w.shape[0], t)


def _finish(lmi: ChainLMI, s_last: np.ndarray, ts: list[np.ndarray], inflate: float) -> Certificate | None:
    """(rho, T) = lam (c, c T) with c = lambda_max(W_l S_l^{-1} W_l^T) and lam = 1 + inflate > 1 so
    that P(lam c, lam c T) = lam P(c, c T) + (lam - 1) diag(0, .., W_l^T W_l) is strictly feasible."""
    q = _inv_quad(lmi.weights[-1], s_last)
    if q is None:
        return None
    c = float(np.linalg.eigvalsh(q)[-1]) if q.size else 0.0
    c = max(c, 1e-300)
    lam = 1.0 + inflate
    return Certificate(rho=lam * c, ts=tuple(lam * c * t for t in ts))


def eclipse_fast(lmi: ChainLMI, *, inflate: float = 1e-9) -> Certificate | None:
    """ECLipsE-Fast: the closed-form scalar multipliers T_k = t_k I."""
    from stabaudit.analyses.sdp import single_blas_thread

    with single_blas_thread():
        return _eclipse_fast(lmi, inflate)


def _eclipse_fast(lmi: ChainLMI, inflate: float) -> Certificate | None:
    s = np.eye(lmi.dims[0])
    ts: list[np.ndarray] = []
    for k in range(len(lmi.slopes)):
        w, slope = lmi.weights[k], lmi.slope_pair(k)
        t = _fast_t(w, s, slope)
        if t is None:
            return None
        nxt = _next_schur(w, s, t, slope)
        if nxt is None:
            return None
        ts.append(t)
        s = nxt
    return _finish(lmi, s, ts, inflate)


def layer_lmi(w: np.ndarray) -> tuple[int, int]:
    """(dimension, multipliers) of ECLipsE's per-layer LMI for the layer W (n_out x n_in): the
    one-hidden-layer LipSDP-Neuron LMI of ``_layer_sdp``, n_in + n_out and n_out."""
    return int(w.shape[1] + w.shape[0]), int(w.shape[0])


def layer_steps(w: np.ndarray, budget_s: float) -> int:
    """The Newton steps ``budget_s`` buys for the layer W's LMI (``plan.newton_steps``)."""
    from stabaudit.analyses import plan

    return plan.newton_steps(*layer_lmi(w), budget_s)


def _layer_sdp(w: np.ndarray, s_prev: np.ndarray, w_next: np.ndarray, slope: Slope, t0: np.ndarray, budget_s: float) -> np.ndarray:
    """max c s.t. S_k(T) >= c W_next^T W_next over diagonal T >= 0, from the feasible scalar t0.

    With S_{k-1} = L L^T the congruence diag(L^{-1}, I) turns the per-layer LMI
    [[R, -(a+b) W^T T], [-(a+b) T W, 2T - c N]] >= 0 into the one-hidden-layer LipSDP-Neuron LMI of
    (W L^{-T}, W_next) with rho = 1, whose optimum is c = 1 / rho* at T = T* / rho* (homogeneity).
    Called only where the budget buys a Newton step of that LMI (``layer_steps``).
    """
    import scipy.linalg

    from stabaudit.analyses.sdp import barrier_solve, chain_problem, planned_newton_steps

    lo = scipy.linalg.cholesky(s_prev, lower=True, check_finite=False)
    w_hat = scipy.linalg.solve_triangular(lo, w.T, lower=True, check_finite=False).T  # W L^{-T}
    sub = ChainLMI(weights=(w_hat, w_next), slopes=((float(np.min(slope[0], initial=0.0)), float(np.max(slope[1], initial=0.0))),),
                   unit_slopes=(slope,))
    pr = chain_problem(sub)
    # a strictly feasible start: the scalar t0 with S_k(t0) > 0 and rho above c(t0)^{-1}
    s1 = _next_schur(w, s_prev, t0, slope)
    if s1 is None:
        return t0
    q = _inv_quad(w_next, s1)
    if q is None:
        return t0
    rho0 = 1.5 * max(float(np.linalg.eigvalsh(q)[-1]), 1e-300)
    steps = planned_newton_steps(pr.size, t0.size, budget_s)
    if steps == 0:
        return t0
    rho, t, _ = barrier_solve(pr, rho0, rho0 * t0, rel_gap=1e-3, max_newton=steps)
    return np.asarray(t / rho)


def eclipse(lmi: ChainLMI, *, budget_s: float, inflate: float = 1e-9) -> Certificate | None:
    """ECLipsE: diagonal T_k from a small SDP per layer, each with the Newton steps that an equal
    share of ``budget_s`` buys (``plan.newton_steps``; the scalar ECLipsE-Fast multipliers without
    a budget, or where they serve the layer better)."""
    from stabaudit.analyses.sdp import single_blas_thread

    with single_blas_thread():
        return _eclipse(lmi, budget_s, inflate)


def _eclipse(lmi: ChainLMI, budget_s: float, inflate: float) -> Certificate | None:
    from stabaudit.analyses import plan

    s = np.eye(lmi.dims[0])
    ts: list[np.ndarray] = []
    notes: list[str] = []
    depth = len(lmi.slopes)
    for k in range(depth):
        w, slope = lmi.weights[k], lmi.slope_pair(k)
        t0 = _fast_t(w, s, slope)
        if t0 is None:
            return None
        t = t0
        # an equal share of the budget per layer, as planned Newton steps (deterministic)
        if budget_s > 0.0 and layer_steps(w, budget_s / depth) == 0:
            cost = plan.newton_step_s(*layer_lmi(w))
            notes.append(f"layer {k + 1}: one Newton step of its LMI is planned at {cost:.3g} s, above twice its "
                         f"share of the budget ({budget_s / depth:.3g} s): closed-form multiplier")
        elif budget_s > 0.0:
            try:
                t = _layer_sdp(w, s, lmi.weights[k + 1], slope, t0, budget_s / depth)
            except (np.linalg.LinAlgError, ValueError):
                t = t0
        else:
            notes.append(f"layer {k + 1}: no budget, closed-form multiplier")
        nxt = _next_schur(w, s, t, slope) if np.all(t > 0.0) else None
        fallback = _next_schur(w, s, t0, slope)
        # keep the SDP's multipliers only when they serve the per-layer objective (the smallest
        # lambda_max(W_k S_k^{-1} W_k^T)) better than the closed form: an SDP stopped early by the
        # budget may not
        if nxt is None or (fallback is not None and _greedy(lmi.weights[k + 1], fallback) < _greedy(lmi.weights[k + 1], nxt)):
            t, nxt = t0, fallback
            if nxt is None:
                return None
        ts.append(t)
        s = nxt
    cert = _finish(lmi, s, ts, inflate)
    if cert is None:
        return None
    fast = _eclipse_fast(lmi, inflate)
    if fast is not None and fast.rho < cert.rho:
        return Certificate(rho=fast.rho, ts=fast.ts, notes=tuple(notes) + ("the ECLipsE-Fast multipliers were better",))
    return Certificate(rho=cert.rho, ts=cert.ts, notes=tuple(notes))


def _greedy(w_next: np.ndarray, s: np.ndarray) -> float:
    """lambda_max(W_next S^{-1} W_next^T): ECLipsE's per-layer objective 1 / c_k (smaller is better)."""
    q = _inv_quad(w_next, s)
    return math.inf if q is None or not q.size else float(np.linalg.eigvalsh(q)[-1])


def bound_value(rho: float, exponent: int) -> float:
    """An upper bound of sqrt(rho) * 2^exponent (``sdp.pow2_scaled``'s exponent): the root rounded
    up, then the power of two applied with outward rounding (inf above float64's range, at least
    2^-1074 below it: a positive bound never becomes 0)."""
    from stabaudit.analyses.certify import certified_sqrt
    from stabaudit.rounding import ldexp_up

    return ldexp_up(certified_sqrt(rho), exponent) if math.isfinite(rho) else math.inf
