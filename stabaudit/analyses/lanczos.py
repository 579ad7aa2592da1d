"""Extreme eigenvalues of a symmetric operator: dense eigvalsh with an error bound, and Lanczos."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF = 2.0**-53  # float64
MatVec = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Extremes:
    """The smallest and largest eigenvalue of a symmetric operator, each within [x - slack, x + slack]
    when ``two_sided`` (dense), else only the inner side holds (Ritz values):
    lambda_max >= largest - slack and lambda_min <= smallest + slack."""

    smallest: float
    largest: float
    slack: float
    two_sided: bool
    iterations: int
    notes: tuple[str, ...] = ()


def dense_extremes(matrix: np.ndarray) -> Extremes:
    """Extreme eigenvalues of a square float64 matrix (symmetrized) with a two-sided error bound.

    Inequality: S = (M + M^T)/2 and eigvalsh returns the exact eigenvalues of S + E with
    ||E||_2 <= p(n) u ||S||_2 (backward stability of the symmetric eigensolver, Golub and Van Loan,
    Matrix Computations, Thm 8.3.x); by Weyl's inequality |lambda_i computed - lambda_i(S)| <= ||E||_2.
    We take p(n) u ||S||_2 <= 8 n u ||S||_F (||S||_2 <= ||S||_F). The asymmetry ||M - M^T||_F is added
    as well: an exact Hessian is symmetric, so the asymmetry of the computed one measures the
    rounding of the Hessian-vector products that produced it (their rounding is taken to be of that
    size; float64 throughout).
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    sym = (m + m.T) / 2.0
    w = np.linalg.eigvalsh(sym)
    frob = float(np.linalg.norm(sym))
    asym = float(np.linalg.norm(m - m.T))
    slack = 8.0 * n * UNIT_ROUNDOFF * frob + asym
    return Extremes(
        smallest=float(w[0]), largest=float(w[-1]), slack=slack, two_sided=True, iterations=n
    )


def lanczos_extremes(
    matvec: MatVec,
    n: int,
    *,
    iterations: int,
    seed: int,
    tolerance: float = 0.0,
    tick: Callable[[], None] | None = None,
) -> Extremes:
    """Ritz values of the symmetric operator ``matvec`` (size n) after at most k = min(n, iterations)
    Lanczos steps with full reorthogonalization from a seeded random start.

    Soundness (inner bounds): for any vector z, lambda_min <= z^T A z / z^T z <= lambda_max
    (Rayleigh). The Ritz values are the extreme Rayleigh quotients over span(Q): we solve the
    projected problem G y = theta M y with G = Q^T (A Q) (the products A q_j as computed) and
    M = Q^T Q (not assuming Q exactly orthonormal), so theta_max <= lambda_max and
    theta_min >= lambda_min up to the rounding of the dot products in G and M:
    |fl(q^T w) - q^T w| <= n u |q| |w| (gamma_n), hence ||G - fl(G)||_2 <= k n u max_j |A q_j|;
    the slack is twice that. They are inner bounds only: Lanczos never proves that no eigenvalue
    lies beyond its Ritz values, and this holds after any number of steps.

    Early stop (``tolerance`` > 0): after step j the tridiagonal T_j = Q_j^T A Q_j of the
    recurrence gives each Ritz pair (theta, y = Q_j s) its residual |A y - theta y| = beta_j |s_j|
    (Paige; Parlett, The Symmetric Eigenvalue Problem, Sec. 13.2), and some eigenvalue of A lies
    within that residual of theta (Parlett, Thm 4.5.1). The steps stop once the residuals of the
    largest and the smallest Ritz pair are both at most ``tolerance`` times max(|theta_max|,
    |theta_min|): more steps would move those Ritz values by about residual^2 / gap. The stop is a
    function of the computed numbers only (deterministic), and it changes nothing of the bounds'
    meaning: the Ritz values returned are still computed from G and M as above.
    """
    import scipy.linalg

    from stabaudit.analyses.sdp import single_blas_thread

    k = max(1, min(n, iterations))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    basis = np.zeros((k, n))
    images = np.zeros((k, n))
    alphas: list[float] = []
    betas: list[float] = []
    steps = 0
    scale = 0.0
    converged = False
    # one BLAS thread: the vectors are long but the operations are level 1 and 2, which threads
    # only slow down (a busy wait per call on a shared machine), and the bits do not then depend
    # on the machine's thread count
    with single_blas_thread():
        for j in range(k):
            if tick is not None:
                tick()
            basis[j] = q
            w = np.asarray(matvec(q), dtype=np.float64)
            images[j] = w
            steps = j + 1
            scale = max(scale, float(np.sqrt(w @ w)))
            if j + 1 == k:
                break
            # the three-term recurrence, then full reorthogonalization against every basis vector
            # (classical Gram-Schmidt twice: orthogonal to working precision)
            alpha = float(q @ w)
            r = w - q * alpha
            if j > 0:
                r -= basis[j - 1] * float(basis[j - 1] @ w)
            block = basis[: j + 1]
            for _ in range(2):
                r -= (block @ r) @ block
            beta = float(np.sqrt(r @ r))
            if beta <= 1e3 * UNIT_ROUNDOFF * max(scale, 1e-300):
                break  # an invariant subspace: its Ritz values are eigenvalues
            alphas.append(alpha)
            if tolerance > 0.0 and _converged(alphas, betas, beta, tolerance):
                converged = True
                break
            betas.append(beta)
            q = r / beta
        basis, images = basis[:steps], images[:steps]
        g = basis @ images.T
        g = (g + g.T) / 2.0
        gram = basis @ basis.T
        theta = scipy.linalg.eigh(g, gram, eigvals_only=True)
    slack = 2.0 * steps * n * UNIT_ROUNDOFF * scale
    notes: tuple[str, ...] = ()
    if converged:
        notes = (f"Lanczos stopped after {steps} of at most {k} steps: the residuals of the extreme Ritz "
                 f"pairs are below {tolerance:g} of the spectrum's scale",)
    elif steps < k:
        notes = (f"Lanczos found an invariant subspace after {steps} steps",)
    return Extremes(
        smallest=float(theta[0]),
        largest=float(theta[-1]),
        slack=slack,
        two_sided=False,
        iterations=steps,
        notes=notes,
    )


def _converged(alphas: list[float], betas: list[float], beta: float, tolerance: float) -> bool:
    """Whether the extreme Ritz pairs of the tridiagonal (``alphas`` on the diagonal, ``betas``
    beside it) have residuals beta |s_last| <= tolerance * max |theta| (see ``lanczos_extremes``)."""
    t = np.diag(alphas)
    if betas:
        off = np.arange(len(betas))
        t[off, off + 1] = betas
        t[off + 1, off] = betas
    theta, s = np.linalg.eigh(t)
    size = max(abs(float(theta[0])), abs(float(theta[-1])))
    if not size > 0.0:
        return False
    return bool(beta * abs(s[-1, -1]) <= tolerance * size and beta * abs(s[-1, 0]) <= tolerance * size)
