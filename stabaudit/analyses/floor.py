"""The slope-relaxation floor of a feedforward chain: a certified value below which no bound that
sees each activation only through its slope interval can go.

The layer product, ECLipsE and LipSDP-Neuron, and any method built from per-neuron slope
constraints alpha_k <= (phi(u) - phi(v)) / (u - v) <= beta_k, certify an upper bound on

    sup { ||W_l D_l ... D_1 W_0||_2 : D_k diagonal, entries in [alpha_k, beta_k] }

whether or not some input realizes the pattern D (the Jacobian of the network only takes the
patterns its inputs reach). The norm is convex in each D_k, so that supremum is attained at a
vertex, entries alpha_k or beta_k, and every vertex found is a floor F of all those methods: none
can certify less than F. When F is far above the network's sound lower bound, what separates the
two is the realizability of the patterns, which no slope-relaxation method sees.

The search is a coordinate ascent (deterministic, seeded): with (u, v) the top singular pair of
the current product, u^T (W_l D_l ... W_0) v is linear in each D_k, so each entry goes to beta_k
where its coefficient is positive and to alpha_k elsewhere; sweeps repeat until no entry changes,
from several starting vertices. The floor reported is a certified lower bound on the norm of the
best product found, its float64 rounding included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses import plan
from stabaudit.analyses.feedforward import Chain

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, kw_only=True)
class FloorResult:
    """``value``: certified lower bound on ||W_l D_l ... W_0|| for the vertex ``patterns`` (each D_k
    as its diagonal); ``estimate``: that norm as computed; ``starts`` searched; ``seconds``."""

    value: float
    estimate: float
    patterns: tuple[np.ndarray, ...]
    starts: int
    seconds: float


def _product(weights: tuple[np.ndarray, ...], diags: list[np.ndarray]) -> np.ndarray:
    """W_l D_l ... W_0, multiplied from the narrower end (output side for wide hidden layers and
    few outputs: L n_out n^2 instead of L n^2 n_in flops)."""
    n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
    if n_out < n_in:
        m = weights[-1]
        for d, w in zip(reversed(diags), reversed(weights[:-1]), strict=True):
            m = (m * d[None, :]) @ w
        return m
    m = weights[0]
    for d, w in zip(diags, weights[1:], strict=True):
        m = w @ (d[:, None] * m)
    return m


FLOOR_FLOPS = 2e10  # the search's planned work (counted flops): fewer starts for wide chains
FLOOR_FLOPS_PER_S = 4e9  # their planned seconds (the report's planned work): 2e10 flops took 5 s


def _sweep_flops(weights: tuple[np.ndarray, ...]) -> float:
    """Flops of one sweep: the product (from the narrower end) and the per-layer vectors."""
    n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
    edge = min(n_in, n_out)
    product = sum(float(w.shape[0]) * float(w.shape[1]) for w in weights) * edge
    vectors = len(weights) * sum(float(w.shape[0]) * float(w.shape[1]) for w in weights)
    return 2.0 * (product + vectors)


def _certified_norm_lower(weights: tuple[np.ndarray, ...], diags: list[np.ndarray], v: np.ndarray) -> float:
    """A sound lower bound on ||M||_2 >= ||M v|| / ||v|| for the exact M = W_l D_l ... W_0.

    y = W_l D_l ... W_0 v is applied factor by factor in float64; each matrix-vector product of
    inner length n has entrywise error <= gamma_n |W| |y| (Higham eq. (3.5)), the diagonal scalings
    one rounding each, so |y^ - y| <= ((1 + g)^(2 l + 1) - 1) |W_l| |D_l| ... |W_0| |v| with g the
    largest gamma; its norm bounds ||y^ - y|| (triangle inequality: ||M v|| >= ||y^|| - ||e||).
    """
    y = v.astype(np.float64)
    absy = np.abs(y)
    inner = 0
    for k, w in enumerate(weights):
        if k > 0:
            y = diags[k - 1] * y
            absy = np.abs(diags[k - 1]) * absy
        y = w @ y
        absy = np.abs(w) @ absy
        inner = max(inner, w.shape[1])
    g = (inner + 2) * EPS
    steps = 2 * len(weights) + 1
    grow = math.expm1(steps * math.log1p(g)) * (1.0 + 1e-6)
    err = grow * float(np.linalg.norm(absy)) * (1.0 + (absy.size + 4) * EPS)
    ny = float(np.linalg.norm(y)) * (1.0 - (y.size + 4) * EPS)
    nv = float(np.linalg.norm(v)) * (1.0 + (v.size + 4) * EPS)
    if nv == 0.0:
        return 0.0
    return max(0.0, (ny - err) / nv * (1.0 - 4 * EPS))


def slope_relaxation_floor(chain: Chain, *, seed: int = 0, starts: int = 24, sweeps: int = 60,
                           flops: float = FLOOR_FLOPS) -> FloorResult:
    """The floor F of every slope-relaxation bound of ``chain`` (module docstring), certified;
    ``flops``: the counted work of the starts' sweeps (at most FLOOR_FLOPS, at least one start)."""
    begin = time.perf_counter()
    weights = tuple(np.asarray(w, dtype=np.float64) for w in chain.weights)
    # counted work: at most FLOOR_FLOPS for every start's sweeps (at least one start)
    starts = max(1, min(starts, int(min(flops, FLOOR_FLOPS) // (sweeps * _sweep_flops(weights)))))
    plan.spend(starts * sweeps * _sweep_flops(weights) / FLOOR_FLOPS_PER_S)
    slopes = chain.slopes
    layers = len(slopes)
    rng = np.random.default_rng(seed)
    best_value, best_est = 0.0, 0.0
    best_diags: list[np.ndarray] = [np.full(w.shape[0], hi) for w, (_, hi) in zip(weights[:-1], slopes, strict=True)]
    for start in range(starts):
        if start == 0:  # every entry at its upper slope (for ReLU: every unit active)
            diags = [np.full(w.shape[0], hi) for w, (_, hi) in zip(weights[:-1], slopes, strict=True)]
        else:
            diags = [np.where(rng.random(w.shape[0]) < 0.5, lo, hi) for w, (lo, hi) in zip(weights[:-1], slopes, strict=True)]
        for _ in range(sweeps):
            m = _product(weights, diags)
            u_mat, _, vt = np.linalg.svd(m, full_matrices=False)
            u, v = u_mat[:, 0], vt[0]
            changed = False
            for k in range(layers):
                right = weights[0] @ v  # the direction at layer k's pre-activations
                for j in range(k):
                    right = weights[j + 1] @ (diags[j] * right)
                left = u
                for j in range(layers - 1, k, -1):
                    left = (weights[j + 1].T @ left) * diags[j]
                left = weights[k + 1].T @ left
                lo, hi = slopes[k]
                new = np.where(left * right > 0.0, hi, lo)
                if not np.array_equal(new, diags[k]):
                    diags[k], changed = new, True
            if not changed:
                break
        m = _product(weights, diags)
        _, s, vt = np.linalg.svd(m, full_matrices=False)
        if s.size and s[0] > best_est:
            best_est = float(s[0])
            best_value = _certified_norm_lower(weights, diags, vt[0])
            best_diags = [d.copy() for d in diags]
    return FloorResult(
        value=best_value, estimate=best_est, patterns=tuple(best_diags), starts=starts,
        seconds=time.perf_counter() - begin,
    )
