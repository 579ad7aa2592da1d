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
    tick: Callable[[], None] | None = None,
) -> Extremes:
    """Ritz values of the symmetric operator ``matvec`` (size n) after k = min(n, iterations) Lanczos
    steps with full reorthogonalization from a seeded random start.

    Soundness (inner bounds): for any vector z, lambda_min <= z^T A z / z^T z <= lambda_max
    (Rayleigh). The Ritz values are the extreme Rayleigh quotients over span(Q): we solve the
    projected problem G y = theta M y with G = Q^T (A Q) (the products A q_j as computed) and
    M = Q^T Q (not assuming Q exactly orthonormal), so theta_max <= lambda_max and
    theta_min >= lambda_min up to the rounding of the dot products in G and M:
    |fl(q^T w) - q^T w| <= n u |q| |w| (gamma_n), hence ||G - fl(G)||_2 <= k n u max_j |A q_j|;
    the slack is twice that. They are inner bounds only: Lanczos never proves that no eigenvalue
    lies beyond its Ritz values.
    """
    k = max(1, min(n, iterations))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    basis = np.zeros((k, n))
    images = np.zeros((k, n))
    steps = 0
    scale = 0.0
    for j in range(k):
        if tick is not None:
            tick()
        basis[j] = q
        w = np.asarray(matvec(q), dtype=np.float64)
        images[j] = w
        steps = j + 1
        scale = max(scale, float(np.linalg.norm(w)))
        if j + 1 == k:
            break
        # the three-term recurrence, then full reorthogonalization against every basis vector
        # (classical Gram-Schmidt twice: orthogonal to working precision)
        r = w - basis[j] * float(basis[j] @ w)
        if j > 0:
            r -= basis[j - 1] * float(basis[j - 1] @ w)
        for _ in range(2):
            r -= basis[: j + 1].T @ (basis[: j + 1] @ r)
        beta = float(np.linalg.norm(r))
        if beta <= 1e3 * UNIT_ROUNDOFF * max(scale, 1e-300):
            break  # an invariant subspace: its Ritz values are eigenvalues
        q = r / beta
    basis, images = basis[:steps], images[:steps]
    g = basis @ images.T
    g = (g + g.T) / 2.0
    gram = basis @ basis.T
    import scipy.linalg

    theta = scipy.linalg.eigh(g, gram, eigvals_only=True)
    slack = 2.0 * steps * n * UNIT_ROUNDOFF * scale
    notes: tuple[str, ...] = ()
    if steps < k:
        notes = (f"Lanczos found an invariant subspace after {steps} steps",)
    return Extremes(
        smallest=float(theta[0]),
        largest=float(theta[-1]),
        slack=slack,
        two_sided=False,
        iterations=steps,
        notes=notes,
    )
