"""LipSDP-Neuron (Fazlyab et al., NeurIPS 2019) solved by our own structured barrier method.

The problem: minimise rho over rho and diagonal T_k >= 0 subject to P(rho, T) >= 0, the block
tridiagonal LMI of ``certify`` (its docstring states the LMI and why it bounds the Lipschitz
constant). It is a small SDP with one low-rank constraint matrix per neuron: t_i enters P as U_i
C_i U_i^T with U_i = [e_i, w_i] (e_i the neuron's coordinate in block k, w_i the row i of W_{k-1}
placed in block k-1) and C_i = [[2, -(a+b)], [-(a+b), 2ab]]. We minimise the self-concordant
barrier tau * rho - log det P - sum log t_i by damped Newton steps and raise tau (the primal
barrier method, Boyd & Vandenberghe, Convex Optimization, section 11.3): every iterate is strictly
feasible, so the method can stop after any step (it runs the Newton steps that ``budget_s`` buys,
``plan.newton_steps``) with a valid certificate, and at the central point for tau the gap to the
optimum is at most nu / tau, nu = dim P + #t (ibid., eq. (11.12)). The chain structure is used
three times: the gradient and Hessian come from G = U^T P^{-1} U formed block by block with the
weights (never a dense U), the first block is reduced to the row space of W_0 (x_0 = V a + x_perp,
||x_0||^2 = ||a||^2 + ||x_perp||^2, and x_perp meets only rho I: an exact change of coordinates),
and feasibility along the line search is a Cholesky factorisation (on the block tridiagonal P: the
Schur complement recursion, no fill-in outside the band). Every certificate is verified a
posteriori in float64 on the stored weights (``certify.verify``), so the solver's accuracy never
matters for soundness.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses import plan
from stabaudit.analyses.certify import ChainLMI
from stabaudit.limits import check_deadline
from stabaudit.rounding import norm_exponent


@dataclass(frozen=True, kw_only=True)
class _Group:
    """The multipliers of one activation layer: t enters P through e (block ``e_at``) and the rows
    of ``w`` placed at rows [w_lo, w_hi) of P."""

    e_at: int
    w_lo: int
    w: np.ndarray
    s: np.ndarray  # a + b per unit
    p: np.ndarray  # 2 a b per unit


@dataclass(frozen=True, kw_only=True)
class _Problem:
    """P(z0, t) = F0 + z0 A0 + sum_i t_i U_i C_i U_i^T; minimise obj * z0."""

    size: int
    f0: np.ndarray  # dense constant part
    a0_lo: int
    a0: np.ndarray  # the dense block of A0 at rows/cols [a0_lo, a0_lo + len)
    groups: tuple[_Group, ...]
    obj: float = 1.0


def _assemble(pr: _Problem, z0: float, t: np.ndarray) -> np.ndarray:
    p = pr.f0.copy()
    n0 = pr.a0.shape[0]
    p[pr.a0_lo : pr.a0_lo + n0, pr.a0_lo : pr.a0_lo + n0] += z0 * pr.a0
    at = 0
    for g in pr.groups:
        n, nw = g.w.shape
        tg = t[at : at + n]
        at += n
        e = slice(g.e_at, g.e_at + n)
        wl = slice(g.w_lo, g.w_lo + nw)
        p[e, e] += np.diag(2.0 * tg)
        if np.any(g.p != 0.0):
            p[wl, wl] += g.w.T @ ((g.p * tg)[:, None] * g.w)
        o = -(g.w.T * (g.s * tg)[None, :])
        p[wl, e] += o
        p[e, wl] += o.T
    return p


def _chol(p: np.ndarray) -> np.ndarray | None:
    import scipy.linalg

    try:
        return scipy.linalg.cholesky(p, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None


def _derivatives(pr: _Problem, r: np.ndarray, t: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of f = tau obj z0 - log det P - sum log t (z = (z0, t)), given
    the Cholesky factor R of P. d/dt_i (-log det P) = -tr(P^{-1} A_i), d2 = tr(P^{-1} A_i P^{-1} A_j)."""
    import scipy.linalg

    n = pr.size
    # P^{-1} from the factor (LAPACK potri: about half the flops of solving against I)
    upper, info = scipy.linalg.lapack.dpotri(r, lower=0)
    if info != 0:
        upper = scipy.linalg.cho_solve((r, False), np.eye(n), check_finite=False)
    pinv = np.triu(upper)
    pinv = pinv + np.triu(pinv, 1).T
    e_idx = np.concatenate([np.arange(g.e_at, g.e_at + g.w.shape[0]) for g in pr.groups])
    m = e_idx.size
    ye = pinv[:, e_idx]  # P^{-1} e_i
    yw = np.empty((n, m))
    at = 0
    for g in pr.groups:
        k, nw = g.w.shape
        yw[:, at : at + k] = pinv[:, g.w_lo : g.w_lo + nw] @ g.w.T  # P^{-1} w_i
        at += k

    def wrows(y: np.ndarray) -> np.ndarray:
        out = np.empty((m, y.shape[1]))
        at = 0
        for g in pr.groups:
            k, nw = g.w.shape
            out[at : at + k] = g.w @ y[g.w_lo : g.w_lo + nw]
            at += k
        return out

    gee = ye[e_idx]
    gwe = wrows(ye)
    gww = wrows(yw)
    blocks = {("e", "e"): gee, ("w", "e"): gwe, ("e", "w"): gwe.T, ("w", "w"): gww}
    s = np.concatenate([g.s for g in pr.groups])
    pp = np.concatenate([g.p for g in pr.groups])
    c = {("e", "e"): np.full(m, 2.0), ("e", "w"): -s, ("w", "e"): -s, ("w", "w"): pp}
    keys = ("e", "w")
    # tr(P^{-1} A_i) = sum_ab C_i[a, b] G_{b a}[i, i]
    grad_t = np.zeros(m)
    for a in keys:
        for b in keys:
            grad_t += c[a, b] * np.diag(blocks[b, a])
    # H_ij = sum_{abcd} C_i[a,b] C_j[c,d] G_bc[i,j] G_ad[i,j]
    hess_t = np.zeros((m, m))
    for a in keys:
        for b in keys:
            if not np.any(c[a, b]):
                continue
            for cc in keys:
                for d in keys:
                    if not np.any(c[cc, d]):
                        continue
                    hess_t += (c[a, b][:, None] * c[cc, d][None, :]) * blocks[b, cc] * blocks[a, d]
    # the dense variable z0: tr(P^{-1} A0), tr(P^{-1} A0 P^{-1} A0), tr(P^{-1} A0 P^{-1} A_i)
    lo, hi = pr.a0_lo, pr.a0_lo + pr.a0.shape[0]
    pa = pinv[:, lo:hi] @ pr.a0  # P^{-1} A0 restricted to the columns it touches
    g0 = float(np.trace(pa[lo:hi]))
    h00 = float(np.sum((pa[lo:hi]) * (pa[lo:hi]).T))
    # (U^T P^{-1} A0 P^{-1} U)_ii = v_a^T A0 v_b with v = (P^{-1} U)[lo:hi]
    va = {"e": ye[lo:hi], "w": yw[lo:hi]}
    a0v = {key: pr.a0 @ v for key, v in va.items()}
    h0t = np.zeros(m)
    for a in keys:
        for b in keys:
            h0t += c[a, b] * np.sum(va[b] * a0v[a], axis=0)
    grad = np.concatenate([[tau * pr.obj - g0], -grad_t - 1.0 / t])
    hess = np.empty((m + 1, m + 1))
    hess[0, 0] = h00
    hess[0, 1:] = h0t
    hess[1:, 0] = h0t
    hess[1:, 1:] = hess_t + np.diag(1.0 / t**2)
    return grad, hess


def _value(pr: _Problem, z0: float, t: np.ndarray, tau: float) -> float | None:
    if np.any(t <= 0.0):
        return None
    r = _chol(_assemble(pr, z0, t))
    if r is None:
        return None
    return tau * pr.obj * z0 - 2.0 * float(np.sum(np.log(np.diag(r)))) - float(np.sum(np.log(t)))


def _newton_direction(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """-H^{-1} g with a Jacobi scaling (the multipliers of different layers differ by orders of
    magnitude) and a tiny ridge when the scaled Hessian is numerically singular."""
    import scipy.linalg

    d = np.sqrt(np.maximum(np.diag(hess), 1e-300))
    hs = hess / d[:, None] / d[None, :]
    gs = grad / d
    for ridge in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            c = scipy.linalg.cho_factor(hs + ridge * np.eye(hs.shape[0]), check_finite=False)
        except np.linalg.LinAlgError:
            continue
        return np.asarray(-scipy.linalg.cho_solve(c, gs, check_finite=False) / d)
    return np.asarray(-gs / d)


def planned_newton_steps(size: int, t_size: int, budget_s: float) -> int:
    """The Newton steps ``budget_s`` buys for an LMI of dimension ``size`` with ``t_size``
    multipliers (``plan.newton_steps``: counted work, never time, so that the result does not
    depend on the machine or its load). The ledger is charged by ``barrier_solve`` for the steps
    it takes (a solve that converges early leaves the rest of the plan unspent)."""
    return plan.newton_steps(size, t_size, budget_s)


def barrier_solve(pr: _Problem, z0: float, t: np.ndarray, *, max_newton: int, rel_gap: float = 2e-3, mu: float = 6.0, center_tol: float = 1e-5, gap0: float = 1.0) -> tuple[float, np.ndarray, int]:
    """Minimise obj * z0 from the strictly feasible (z0, t); returns the last strictly feasible
    iterate and the number of Newton steps. Stops after ``max_newton`` steps (the plan) or when
    nu / tau <= rel_gap |z0|; never by the clock (``check_deadline`` only aborts, on --timeout).

    Multipliers may grow without bound (a layer of zero weights decouples its neighbours), so the
    derivatives may overflow: a non-finite Newton decrement ends the centring, a non-finite trial
    point fails its Cholesky test, and every result is verified afterwards; numpy's warnings about
    it are silenced here."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z, t_out, steps = _barrier_solve(pr, z0, t, rel_gap, max_newton, mu, center_tol, gap0)
    # the steps taken (a count, not the clock), at least the factorisations of one
    plan.spend(max(steps, 1) * plan.newton_step_s(pr.size, t.size))
    return z, t_out, steps


def _barrier_solve(pr: _Problem, z0: float, t: np.ndarray, rel_gap: float, max_newton: int, mu: float, center_tol: float, gap0: float) -> tuple[float, np.ndarray, int]:
    nu = pr.size + t.size
    scale = max(abs(z0), 1e-300)
    tau = nu / (gap0 * scale)
    steps = 0
    # centring steps per tau: up to 60, fewer when the plan is short (a plan of 68 steps spent on
    # one centring would end where it started; a few steps per tau still follow the central path)
    inner = min(60, max(8, max_newton // 4))
    while steps < max_newton:
        # centre for this tau
        for _ in range(inner):
            if steps >= max_newton:
                break
            check_deadline()  # aborts on --timeout (raises); never ends the solve with a number
            r = _chol(_assemble(pr, z0, t))
            if r is None:  # cannot happen for accepted iterates; stay safe
                return z0, t, steps
            grad, hess = _derivatives(pr, r, t, tau)
            steps += 1
            dz = _newton_direction(hess, grad)
            dec = float(-grad @ dz)
            if not math.isfinite(dec) or dec < 1e-8:
                break
            f0 = tau * pr.obj * z0 - 2.0 * float(np.sum(np.log(np.diag(r)))) - float(np.sum(np.log(t)))
            step = 1.0 / (1.0 + math.sqrt(max(dec, 0.0))) if dec > 0.25 else 1.0
            accepted = False
            for _ in range(40):
                nz, nt = z0 + step * dz[0], t + step * dz[1:]
                fv = _value(pr, nz, nt, tau)
                if fv is not None and fv <= f0 - 0.25 * step * dec:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                break
            z0, t = nz, nt
            if dec < center_tol:
                break
        if nu / tau <= rel_gap * max(abs(z0), 1e-300):
            break
        tau *= mu
    return z0, t, steps


_BLAS_LOCK = threading.RLock()


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """A context keeping BLAS on one thread: the matrices here are small, threads only cost
    (badly so on a shared machine), and the summation order, hence every iterate, then does not
    depend on the machine's thread count. Some BLAS builds keep the limit per thread, others per
    process: concurrent audits in threads (a threaded Dask worker) take turns here, so that one's
    restoring the limit never changes another's. threadpoolctl is optional."""
    import scipy.linalg  # noqa: F401  (load the BLAS before limiting it)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with _BLAS_LOCK, threadpool_limits(1):
        yield


# ---- LipSDP-Neuron on a chain -----------------------------------------------------------------
def pow2_scaled(lmi: ChainLMI) -> tuple[ChainLMI, int]:
    """W_k / 2^e_k with 2^e_k near ||W_k||_2, and the exponent E = sum e_k. A certificate
    (rho~, T~) of the scaled chain gives one of the original chain, (rho~ prod s_k^2,
    T_k = d_k^2 T~_k) with s_k = 2^e_k, d_l = s_l and d_{k-1} = s_{k-1} d_k: the original P is
    D P~ D with D = blkdiag(d_k I), a congruence (block by block: the diagonal blocks scale by
    d_k^2, the off-diagonal ones by d_{k-1} d_k, for any slopes a, b). So sqrt(rho~) 2^E bounds
    the original constant (``layerwise.bound_value`` rounds it outward: 2^E itself may lie far
    outside float64's range, e.g. 2^-1200 for twelve layers of 1e-30 weights).

    Dividing by 2^e_k is exact in binary floating point, except for an entry that falls into the
    subnormal range (e_k > 0, entries below 2^-1022 of the largest): it is rounded, by at most
    2^-1075, so such an entry's error bound grows by 2^-1074 (rounded error bounds likewise), and
    ``certify.verify`` proves the LMI for every weight within those bounds."""
    ws: list[np.ndarray] = []
    errs: list[np.ndarray | None] = []
    total = 0
    tiny = 2.0**-1074
    for w, err in zip(lmi.weights, lmi.errors, strict=True):
        e = norm_exponent(w)
        sw = np.ldexp(w, -e)
        serr = None if err is None else np.ldexp(err, -e)
        if e > 0:
            lost = np.ldexp(sw, e) != w
            if err is not None:
                assert serr is not None
                lost = lost | (np.ldexp(serr, e) != err)
            if np.any(lost):
                serr = (np.zeros_like(sw) if serr is None else serr) + np.where(lost, tiny, 0.0)
        ws.append(sw)
        errs.append(serr)
        total += e
    return ChainLMI(weights=tuple(ws), slopes=lmi.slopes, errors=tuple(errs), unit_slopes=lmi.unit_slopes), total


def _reduce_input(w0: np.ndarray) -> np.ndarray:
    """W_0 V (n_1 x r) with V the right singular vectors of the non-zero singular values: the
    LMI in the coordinates x_0 = V a + x_perp (an orthogonal change of variables) splits off
    the block rho I of x_perp, which holds for every rho > 0."""
    if w0.shape[1] <= w0.shape[0]:
        return w0
    u, sv, _ = np.linalg.svd(w0, full_matrices=False)
    keep = sv > sv[0] * 1e-13 if sv.size else sv > 0
    return u[:, keep] * sv[keep][None, :]


def chain_problem(lmi: ChainLMI, *, reduce: bool = True) -> _Problem:
    ws = list(lmi.weights)
    if reduce:
        ws[0] = _reduce_input(ws[0])
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    offs = np.concatenate([[0], np.cumsum(dims)]).astype(int)
    size = int(offs[-1])
    f0 = np.zeros((size, size))
    depth = len(lmi.slopes)
    wl = ws[-1]
    f0[offs[depth] :, offs[depth] :] = -(wl.T @ wl)
    groups = []
    for k in range(1, depth + 1):
        a, b = lmi.slope_pair(k - 1)
        groups.append(_Group(e_at=int(offs[k]), w_lo=int(offs[k - 1]), w=ws[k - 1], s=a + b, p=2.0 * a * b))
    return _Problem(size=size, f0=f0, a0_lo=0, a0=np.eye(dims[0]), groups=tuple(groups), obj=1.0)


def lmi_size(lmi: ChainLMI) -> int:
    """dim(P) of the chain's LipSDP-Neuron LMI (``chain_problem``), at most: the input (reduced to
    the rank of W_0, at most min(n_0, n_1)) and every hidden layer; without forming it."""
    ws = lmi.weights
    return int(min(ws[0].shape[1], ws[0].shape[0]) + sum(w.shape[0] for w in ws[:-1]))


def lipsdp(lmi: ChainLMI, rho: float, ts: Sequence[np.ndarray], *, budget_s: float) -> tuple[float, list[np.ndarray], int]:
    """Improve the feasible (rho, T) of the LipSDP-Neuron LMI; returns (rho, T, Newton steps).

    The barrier method needs a strictly feasible start: (lam rho, lam T) with lam > 1 is one when
    P(rho, T) >= 0 (P(lam rho, lam T) = lam P(rho, T) + (lam - 1) P_0 with P_0 = P(rho, T) without
    its -W_l^T W_l block, positive definite along the Schur recursion). Small problems run the
    path from a gap of rho (lam = 1.5) to convergence; for large ones (a Newton step costs about
    dim(P)^3 + #t^3 flops), whose budget allows few steps, the path starts close to the given point
    (lam = 1.05, initial gap rho / 20) so that every step improves on it. Both choices depend on
    the sizes only (deterministic).
    """
    t = np.concatenate(list(ts)) if ts else np.zeros(0)
    if plan.newton_steps(lmi_size(lmi), t.size, budget_s) == 0:
        # not one step fits (at the largest size the reduction can leave): the start as it is,
        # the problem never built
        return rho, [np.asarray(x).copy() for x in ts], 0
    pr = chain_problem(lmi)
    steps_plan = planned_newton_steps(pr.size, t.size, budget_s)
    small = float(pr.size) ** 3 + float(t.size + 1) ** 3 <= 3e8
    lam, gap0 = (1.5, 1.0) if small else (1.05, 0.05)
    steps = 0
    with single_blas_thread():
        for factor in (lam, 4.0, 16.0):
            if steps_plan == 0:
                break
            z, tt, steps = barrier_solve(pr, rho * factor, t * factor, gap0=gap0, max_newton=steps_plan)
            if steps > 0:
                rho, t = z, tt
                break
    out: list[np.ndarray] = []
    at = 0
    for n in lmi.dims[1:]:
        out.append(t[at : at + n].copy())
        at += n
    return rho, out, steps
