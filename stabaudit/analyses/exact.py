"""Exact global L2 Lipschitz constant of small ReLU chains by branch and bound over activation
patterns (LipBaB: Bhowmick, D'Souza, Raghavan, ICANN 2021, arXiv:2105.05495).

What is computed. A chain f(x) = W_L s(W_{L-1} ... s(W_0 x + b_0) ... ) + b_L with piecewise-linear
activations (ReLU, LeakyReLU, identity) is linear on each region of its activation pattern; it is
Lipschitz with constant ess sup_x ||J(x)|| (Rademacher + convexity of R^n: the constant of a locally
Lipschitz map on a convex set is the essential supremum of its Jacobian norm), and J is constant on
every region with non-empty interior, J = W_L D_{L-1} W_{L-1} ... D_0 W_0. So the constant is the
maximum over realised full-dimensional regions of ||J_region||_2 (regions of measure zero do not
count). As in feedforward.py, a constant of the per-row map f is the graph's constant, and equal to
it: a pair differing in one row only attains it.

Branch and bound. A node fixes the state (active / inactive) of some units, layer by layer (all of
layer k before any of layer k+1), so every fixed unit's pre-activation is an affine function of x and
the node's region is a polyhedron; an LP (HiGHS) maximises the common distance t of a point to the
fixed units' hyperplanes: t < 0 beyond the solver's tolerance means empty (pruned), t > 0 gives an
interior point. Upper bound of a node: the product with undecided slopes in [a, 1] written as
midpoint + radius, the radius kept entry-wise (interval matrices) or in the spectral norm, with
rounding margins, ||C + E|| <= ||C|| + ||E|| (triangle inequality, ||E||_2 <= ||E||_F), the best of
both; also split at layers (submultiplicativity), by a dynamic programme over split points. Lower
bound: at any point whose pre-activations are verified non-zero in float64 (with an error bound),
the network is differentiable and the region's ||J|| is attained, so a certified lower end of it is
a lower bound of the constant (the point is the witness). When the queue empties every realised
region was either evaluated or pruned by a certified bound, so upper = max over them = lower up to
the rounding margins: the exact constant.

Trust. The upper bound relies on the LP solver only when it prunes a node as empty (t < -1e-7 after
normalising every row: far beyond HiGHS' 1e-7 feasibility tolerance on unit-scale rows); the lower
bound and the witness do not rely on the LP at all. A unit whose pre-activation is identically
constant on the region (an exactly zero row) keeps only its realised state; with a zero constant
both states give the same Jacobian (its row of the pre-activation map is zero). Regions whose LP
slack lies within the tolerance are kept without a point (counted in the notes): they can only
raise the upper end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import time
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses import plan
from stabaudit.bounds.numerics import spectral_norm_dense
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph
from stabaudit.limits import check_deadline
from stabaudit.rounding import ldexp_down, ldexp_up, mul_up

U = 2.0**-53  # unit roundoff of float64
TINY = 1e-290  # absolute slack against underflow
EXACT_RTOL = 1e-9  # upper - lower <= EXACT_RTOL * upper: the value is the exact constant
# the split products of the dynamic programme above this many entries get the Frobenius bound
# instead of an SVD (the full product always gets its SVD)
SPLIT_SVD_ENTRIES = 1 << 14
BOX_DRAWS = 8  # seeded points offered over a box, besides its centre
EMPTY_T = -1e-7  # LP slack below this (unit-norm rows): the region is empty
INTERIOR_T = 1e-9  # LP slack above this: the LP point is taken as interior
# The budget plans work, not time: ``budget_s`` buys ``plan.bb_nodes(budget_s)`` nodes (a node
# costs about 2-4 ms on the reference machine: one LP and one SVD per child, overhead-dominated at
# these sizes), so the result is the same on any machine and under any load. The clock never
# ends the search with a number; --timeout aborts it (limits.check_deadline raises).
NODES_PER_SECOND = plan.BB_NODES_PER_S
MIN_NODES = plan.BB_MIN_NODES


def _gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u) (Higham, eq. (3.8)): |fl(sum of n products) - exact| <= gamma_n sum |products|."""
    return n * U / (1.0 - n * U)


@dataclass(frozen=True, kw_only=True)
class ExactWitness:
    """A point in the interior of the maximising region and its pattern (per hidden layer, 1 active
    / 0 inactive), with the region's Jacobian norm bracket."""

    point: tuple[float, ...]
    pattern: tuple[tuple[int, ...], ...]
    norm_lower: float
    norm_upper: float


@dataclass(frozen=True, kw_only=True)
class ExactResult:
    """Bracket of the global L2 Lipschitz constant: ``upper`` certified, ``lower`` sound (realised by
    ``witness``); ``exact`` when upper - lower <= 1e-9 * upper, then both are the exact constant."""

    upper: float | None
    lower: float | None
    exact: bool
    nodes_explored: int
    seconds: float
    method: str = "lipbab"
    witness: ExactWitness | None = None
    witness_translated: bool = False  # the witness point is in input coordinates shifted by a dropped translation
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Net:
    """W_0..W_L, b_0..b_L (float64, exact copies of the stored values), and per hidden layer the
    slope on the negative side and on the positive side (equal for an identity layer)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    neg: tuple[float, ...]
    pos: tuple[float, ...]
    norms: tuple[float, ...]  # certified upper bounds of ||W_k||_2
    input_shifted: bool = False  # a translation before the first Linear was dropped
    # the dropped translations (flat, in the input's order), for the constant over a box
    shifts: tuple[np.ndarray, ...] = ()
    # |fl(b_0) - b_0| entry-wise, when a translation was folded into the first bias (over a box)
    bias_error: np.ndarray | None = None
    exponent: int = 0  # the stored network's Jacobians are these weights' times 2^exponent


# ---- extraction -------------------------------------------------------------------------------
def _net(graph: Graph) -> _Net | str:
    """The piecewise-linear chain with its biases, or why exact mode does not apply."""
    from stabaudit.analyses.feedforward import explain_chain

    chain = explain_chain(graph)
    if isinstance(chain, str):
        return f"not a feedforward chain: {chain}"
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    neg: list[float] = []
    pos: list[float] = []
    last = "none"
    shifted = False
    shifts: list[np.ndarray] = []
    in_shape = tuple(graph.shapes.get(graph.inputs[0].name, graph.inputs[0].shape)) if len(graph.inputs) == 1 else ()
    for node in graph.needed_nodes():
        match node.op:
            case O.Reshape() | O.Transpose():
                continue  # validated by explain_chain: a permutation before the first Linear, rows intact after
            case O.Affine(scale=None, shift=shift):
                if not weights:
                    shifted = True  # a translation of the input: the constant does not change
                    if shift is not None:
                        flat = None
                        if in_shape and node.inputs == (graph.inputs[0].name,):
                            with contextlib.suppress(ValueError):
                                flat = np.broadcast_to(np.asarray(shift, dtype=np.float64), in_shape).ravel().copy()
                        # None: a translation this mode cannot place (the constant over a box is refused)
                        shifts.append(flat if flat is not None else np.full(0, np.nan))
                    continue
                sh = np.zeros(biases[-1].shape) if shift is None else np.asarray(shift, dtype=np.float64)
                vec = sh.reshape(-1, sh.shape[-1]) if sh.ndim else sh.reshape(1, 1)
                if not np.all(vec == vec[0:1]) or vec.shape[-1] not in (1, biases[-1].shape[0]) or last != "lin":
                    return f"Affine {node.name!r}: exact mode needs a per-feature shift right after a Linear"
                # the float64 sum of two float32 values is exact unless their exponents differ by
                # more than 29; otherwise the bias moves by half an ulp of float64 (region geometry
                # only: the Jacobians do not depend on biases)
                biases[-1] = biases[-1] + np.broadcast_to(vec[0], biases[-1].shape)
            case O.Linear(error=error) if error > 0.0:
                # the node stands for a map within ``error`` of its computed weight (a rescaled or
                # merged weight): the regions and Jacobians here are those of exact weights
                return f"Linear {node.name!r} carries a rounding error bound ({error:.3g}): exact mode needs exact weights"
            case O.Linear(weight=w, bias=b):
                w64 = np.asarray(w, dtype=np.float64)
                if last == "lin":
                    neg.append(1.0)
                    pos.append(1.0)
                weights.append(w64)
                biases.append(np.zeros(w64.shape[0]) if b is None else np.asarray(b, dtype=np.float64).reshape(-1).copy())
                last = "lin"
            case O.Relu():
                neg.append(0.0)
                pos.append(1.0)
                last = "act"
            case O.LeakyRelu(alpha=a) if math.isfinite(a):
                neg.append(float(a))
                pos.append(1.0)
                last = "act"
            case _:
                return f"{node.op.type.value} {node.name!r}: exact mode handles Linear with ReLU / LeakyReLU / identity only"
    if last == "act":
        n = weights[-1].shape[0]
        weights.append(np.eye(n))
        biases.append(np.zeros(n))
    if not weights or len(weights) != len(neg) + 1:
        return "internal: the chain does not alternate"
    for w, b in zip(weights, biases, strict=True):
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))) or b.shape != (w.shape[0],):
            return "non-finite or mis-shaped weights"
    scaled = _scaled(weights, biases)
    if scaled is None:
        return (
            "the weights' scales span beyond float64's exponent range (rescaling every layer to unit "
            "norm would round a weight or a bias): exact mode not applied"
        )
    weights, biases, exponent = scaled
    norms = tuple(spectral_norm_dense(w)[0] for w in weights)
    return _Net(
        weights=tuple(weights), biases=tuple(biases), neg=tuple(neg), pos=tuple(pos), norms=norms,
        input_shifted=shifted, exponent=exponent, shifts=tuple(shifts),
    )


def _scaled(weights: list[np.ndarray], biases: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], int] | None:
    """W_k / 2^e_k (2^e_k near ||W_k||_2) and b_k / 2^{E_k} (E_k = e_0 + .. + e_k), with E_l, or None
    when one of those divisions is inexact (an entry rounded into the subnormal range or overflowing).

    Every activation here is positively homogeneous (phi(c u) = c phi(u) for c > 0), so the scaled
    network's pre-activations are those of the stored one times 2^-E_k: the same signs, the same
    activation regions (the branch and bound and its LPs see the same geometry), and every region's
    Jacobian is the stored one's times 2^-E_l. Without the scaling, twelve layers of 1e-30 weights
    would underflow every product to 0 (a constant of 0 for a map that is not constant) and every
    constraint row of the deep layers with it."""
    from stabaudit.rounding import norm_exponent

    out_w: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    total = 0
    for w, b in zip(weights, biases, strict=True):
        e = norm_exponent(w)
        total += e
        with np.errstate(over="ignore"):  # an overflow is detected below (inf): no warning
            sw, sb = np.ldexp(w, -e), np.ldexp(b, -total)
            exact = bool(np.all(np.isfinite(sw)) and np.all(np.isfinite(sb)))
            exact = exact and np.array_equal(np.ldexp(sw, e), w) and np.array_equal(np.ldexp(sb, total), b)
        if not exact:
            return None
        out_w.append(sw)
        out_b.append(sb)
    return out_w, out_b, total


# ---- certified interval-matrix products --------------------------------------------------------
def _inflate(r: np.ndarray, ops: int) -> np.ndarray:
    """Cover the rounding of the (non-negative) radius computation itself: (1 + gamma_ops) and TINY."""
    return r * (1.0 + 2.0 * _gamma(ops + 2)) + TINY


@dataclass(frozen=True, kw_only=True)
class _Set:
    """A product with undecided slopes, two enclosures sharing the centre C:
    (1) {C + E1 + E2 : |E1| <= rx entry-wise (rounding), ||E2||_2 <= rho (the undecided slopes)};
    (2) {C + E : |E| <= ry entry-wise} (interval matrix). The true product lies in both."""

    c: np.ndarray
    rx: np.ndarray
    rho: float
    ry: np.ndarray

    def bounds(self) -> tuple[float, float]:
        """(upper, lower) of ||X||_2 over the intersection of both enclosures: ||C|| +- radius
        (triangle inequality, ||E||_2 <= ||E||_F), the better of the two."""
        up, low = spectral_norm_dense(self.c)
        lo = low or 0.0
        rad = min(_frob_up(self.rx) + self.rho, _frob_up(self.ry)) * (1.0 + 4 * U)
        return (up + rad) * (1.0 + 4 * U), max(0.0, (lo - rad) * (1.0 - 4 * U))


    def frobenius(self) -> float:
        """An upper bound of ||X||_2 without an SVD: ||C||_F plus the radius (as ``bounds``)."""
        rad = min(_frob_up(self.rx) + self.rho, _frob_up(self.ry)) * (1.0 + 4 * U)
        return (_frob_up(self.c) + rad) * (1.0 + 4 * U)


def _start(w: np.ndarray) -> _Set:
    z = np.zeros_like(w)
    return _Set(c=w.copy(), rx=z, rho=0.0, ry=z)


def _matmul(w: np.ndarray, w_norm: float, x: _Set) -> _Set:
    """W X (W exact): centre fl(W C), entry-wise radius |W| R + gamma_n |W| |C| (Higham Lemma 3.5
    for the rounding of the product), ||W E2|| <= ||W|| rho (submultiplicativity)."""
    n = w.shape[1]
    aw = np.abs(w)
    rounding = _gamma(n) * (aw @ np.abs(x.c))
    return _Set(
        c=w @ x.c,
        rx=_inflate(aw @ x.rx + rounding, n),
        rho=w_norm * x.rho * (1.0 + 2 * U),
        ry=_inflate(aw @ x.ry + rounding, n),
    )


def _diag(lo: np.ndarray, hi: np.ndarray, x: _Set) -> _Set:
    """diag(d) X with d in [lo, hi] per row: d = m + e, |e| <= h = (hi - lo) / 2. Then
    diag(d) X - diag(m) C = diag(m) E1 + diag(m) E2 + diag(e) X: entry-wise |m| R (plus u |m C|
    for the rounded product), in norm max|m| rho + max(h) (||C_h|| + ||R_h||_F + rho) with C_h,
    R_h the rows where h > 0 (||diag(v)|| = max |v|); for the interval enclosure entry-wise
    |diag(e) (C + E)| <= h (|C| + R)."""
    m = (lo + hi) / 2.0
    h = (hi - lo) / 2.0
    cm = m[:, None] * x.c
    am = np.abs(m)[:, None]
    rho = float(np.max(np.abs(m), initial=0.0)) * x.rho
    hmax = float(np.max(h, initial=0.0))
    if hmax > 0.0:
        rows = h > 0.0
        rho += hmax * (spectral_norm_dense(x.c[rows])[0] + _frob_up(x.rx[rows]) + x.rho)
    return _Set(
        c=cm,
        rx=_inflate(am * x.rx + U * np.abs(cm), 2),
        rho=rho * (1.0 + 4 * U),
        ry=_inflate(am * x.ry + h[:, None] * (np.abs(x.c) + x.ry) + U * np.abs(cm), 4),
    )


def _frob_up(r: np.ndarray) -> float:
    """An upper bound of ||R||_F >= ||R||_2 (sum of N squares: relative error gamma_N, then sqrt)."""
    if r.size == 0:
        return 0.0
    s = float(np.sqrt(np.sum(r * r)))
    return s * (1.0 + 2.0 * _gamma(r.size + 2)) + TINY


def _slopes(net: _Net, states: tuple[np.ndarray, ...], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Slope interval per unit of hidden layer k: state 1 active, -1 inactive, 0 undecided."""
    s = states[k]
    a, p = net.neg[k], net.pos[k]
    lo = np.where(s > 0, p, np.where(s < 0, a, min(a, p))).astype(np.float64)
    hi = np.where(s > 0, p, np.where(s < 0, a, max(a, p))).astype(np.float64)
    return lo, hi


def _node_bound(net: _Net, states: tuple[np.ndarray, ...]) -> tuple[float, float, list[np.ndarray]]:
    """(certified upper on max ||J|| over the patterns consistent with ``states``, certified lower
    on ||J|| when ``states`` is complete (else 0), the forward centres F_k = W_k D_{k-1} ... W_0).

    Dynamic programme over split points: with S(i, j) = W_j D_{j-1} ... D_i W_i as an interval
    matrix, ||J|| <= ||S(i, L)|| * max|D_{i-1}| * ||W_{i-1} ... W_0|| (submultiplicativity, and
    ||D|| = max |d| for a diagonal D), recursively; S(0, L) alone is the unsplit bound."""
    depth = len(net.neg)
    slopes = [_slopes(net, states, k) for k in range(depth)]
    dmax = [float(max(np.max(np.abs(lo), initial=0.0), np.max(np.abs(hi), initial=0.0))) for lo, hi in slopes]
    best = [math.inf] * (depth + 1)
    forward: list[np.ndarray] = []
    full_low = 0.0
    for i in range(depth + 1):
        x = _start(net.weights[i])
        before = 1.0 if i == 0 else mul_up(best[i - 1], dmax[i - 1])
        for j in range(i, depth + 1):
            if j > i:
                x = _matmul(net.weights[j], net.norms[j], _diag(*slopes[j - 1], x))
            if i == 0:
                forward.append(x.c)
            if j == i and not (i == 0 and j == depth):
                up, low = net.norms[i], 0.0  # W_i alone: its certified norm, computed once
            elif j < depth and x.c.size > SPLIT_SVD_ENTRIES:
                up, low = x.frobenius(), 0.0  # a large split product: the cheap bound (splits only)
            else:
                up, low = x.bounds()
            if i == 0 and j == depth:
                full_low = low
            best[j] = min(best[j], mul_up(up, before))
            if before == 0.0:
                break
    complete = all(bool(np.all((s != 0) | (net.neg[k] == net.pos[k]))) for k, s in enumerate(states))
    return best[depth], (full_low if complete else 0.0), forward


def _region_norm(net: _Net, states: tuple[np.ndarray, ...]) -> tuple[float, float]:
    """(upper, lower) of ||J|| for one complete pattern, J = W_L D_{L-1} ... D_0 W_0 formed from the
    output side (few outputs: cheap), with its rounding bounded entry-wise: each step scales
    columns by the slopes (one rounding, u) and multiplies with inner dimension n (gamma_n, Higham
    Lemma 3.5), so |fl(J) - J| <= (prod_k (1 + u)(1 + gamma_{n_k}) - 1) |W_L| |D| ... |W_0|, whose
    Frobenius norm bounds the spectral norm of the error."""
    depth = len(net.neg)
    c = net.weights[depth].copy()
    a = np.abs(c)
    growth = 0.0
    for k in range(depth - 1, -1, -1):
        s = states[k]
        slope = np.where(s > 0, net.pos[k], net.neg[k]).astype(np.float64)
        w = net.weights[k]
        c = (c * slope[None, :]) @ w
        a = (a * np.abs(slope)[None, :]) @ np.abs(w)
        growth += math.log1p(_gamma(w.shape[0]) + 2 * U)
    rel = math.expm1(growth) * (1.0 + 1e-6) + 4 * U
    err = _frob_up(a) * rel * (1.0 + 4 * U)
    up, low = spectral_norm_dense(c)
    return (up + err) * (1.0 + 4 * U), max(0.0, ((low or 0.0) - err) * (1.0 - 4 * U))


# ---- points -----------------------------------------------------------------------------------
def _pattern_at(net: _Net, x: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """The activation pattern at x when every unit's pre-activation is verified non-zero in float64
    (|fl(z) - z| <= gamma_{n+1} (|W| |h| + |b|) + |W| e_h, Higham Lemma 3.5), else None. Units of an
    identity layer get state 1 and are not checked."""
    h = np.asarray(x, dtype=np.float64)
    e = np.zeros_like(h)
    states: list[np.ndarray] = []
    for k in range(len(net.neg)):
        w, b = net.weights[k], net.biases[k]
        z = w @ h + b
        aw = np.abs(w)
        ez = _inflate(_gamma(w.shape[1] + 1) * (aw @ np.abs(h) + np.abs(b)) + aw @ e, w.shape[1])
        if k == 0 and net.bias_error is not None:
            ez = _inflate(ez + net.bias_error, 2)  # a folded translation: b_0 itself is within this
        a, p = net.neg[k], net.pos[k]
        if a != p and not np.all(np.abs(z) > ez):
            return None
        s = np.where(z > 0, 1, -1).astype(np.int8) if a != p else np.ones(z.shape, dtype=np.int8)
        states.append(s)
        slope = np.where(s > 0, p, a)
        h = slope * z
        e = _inflate(np.abs(slope) * ez + U * np.abs(h), 2)
    return tuple(states)


def _constraints(net: _Net, states: tuple[np.ndarray, ...], layer: int,
                 implied: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (a, c, s) of the fixed units of layers <= ``layer`` (all earlier layers complete):
    pre-activation a x + c, required sign s. ``implied``: per layer, the units whose state the
    box already decides (no row: the box constraint holds them)."""
    rows_a: list[np.ndarray] = []
    rows_c: list[np.ndarray] = []
    rows_s: list[np.ndarray] = []
    amat, cvec = net.weights[0], net.biases[0]
    for k in range(layer + 1):
        s = states[k]
        mask = s != 0
        if implied is not None:
            mask = mask & ~implied[k]
        if net.neg[k] != net.pos[k] and np.any(mask):
            rows_a.append(amat[mask])
            rows_c.append(cvec[mask])
            rows_s.append(s[mask].astype(np.float64))
        if k == layer:
            break
        slope = np.where(s > 0, net.pos[k], np.where(s < 0, net.neg[k], net.pos[k]))
        amat = net.weights[k + 1] @ (slope[:, None] * amat)
        cvec = net.weights[k + 1] @ (slope * cvec) + net.biases[k + 1]
    n = net.weights[0].shape[1]
    if not rows_a:
        return np.zeros((0, n)), np.zeros(0), np.zeros(0)
    return np.vstack(rows_a), np.concatenate(rows_c), np.concatenate(rows_s)


def _lp(a: np.ndarray, c: np.ndarray, s: np.ndarray,
        box: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, np.ndarray | None]:
    """max t s.t. s_i (a_i x + c_i) >= t ||a_i||, -1 <= t <= 1, x free (or in ``box``): (t*, x*)
    or (-inf, None)."""
    from scipy.optimize import linprog

    n = a.shape[1]
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0.0
    if np.any(zero & (s * c < 0)):
        return -math.inf, None  # a constant pre-activation of the wrong sign
    keep = ~zero
    a, c, s, norms = a[keep] / norms[keep, None], c[keep] / norms[keep], s[keep], norms[keep]
    if a.shape[0] == 0:
        return 1.0, (np.zeros(n) if box is None else (box[0] + box[1]) / 2.0)
    # Solve at unit scale. With y = x / lam (lam > 0), s_i (a_i x + c_i) > 0 iff s_i (a_i y + c_i / lam)
    # > 0: the region is non-empty iff the one with constants c / lam is, and a slack t > 0 of y is a
    # slack lam * t >= t of x = lam y. Unscaled, biases that dominate small weights (c / ||a|| ~ 1e30
    # for weights ~ 1e-30, a ratio the per-layer rescaling keeps) are beyond HiGHS' infinity (1e20)
    # and beyond EMPTY_T's unit-scale premise: realised regions were pruned as empty.
    lam = max(1.0, float(np.max(np.abs(c))))
    if box is not None:
        lam = max(lam, float(np.max(np.abs(box[0]))), float(np.max(np.abs(box[1]))))
    if not math.isfinite(lam):
        return 0.0, None  # undecidable here: kept without a point, never pruned
    c = c / lam
    # -s (a y) + t <= s c
    a_ub = np.hstack([-s[:, None] * a, np.ones((a.shape[0], 1))])
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    # the box scaled (y = x / lam), its ends rounded outward: only emptiness relies on them
    x_bounds = ([(None, None)] * n if box is None else
                list(zip(np.nextafter(box[0] / lam, -np.inf).tolist(), np.nextafter(box[1] / lam, np.inf).tolist(), strict=True)))
    res = linprog(cost, A_ub=a_ub, b_ub=s * c, bounds=x_bounds + [(-1.0, 1.0)], method="highs")
    if res.status == 2:  # proved infeasible
        return -math.inf, None
    if res.status != 0 or res.x is None:
        return 0.0, None  # no answer (iteration limit, numerical trouble): not proved empty, kept
    x = lam * np.asarray(res.x[:n], dtype=np.float64)
    if box is not None:
        x = np.clip(x, box[0], box[1])  # the solver's point moved onto the box (its tolerance)
    return float(res.x[-1]), x


def _cheap_point(
    a: np.ndarray, c: np.ndarray, s: np.ndarray, start: np.ndarray | None, row_a: np.ndarray, row_c: float, sign: int,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray | None:
    """An interior point found without an LP: the parent's point moved across the new hyperplane
    by a few step lengths, accepted when every row holds with normalised slack > INTERIOR_T (and
    the point lies in ``box``)."""
    if start is None:
        return None
    norms = np.linalg.norm(a, axis=1)
    keep = norms > 0.0
    a, c, s, norms = a[keep], c[keep], s[keep], norms[keep]
    nn = float(row_a @ row_a)
    z = float(row_a @ start + row_c)
    scale = 1.0 + float(np.max(np.abs(start)))
    for step in (1e-6, 1e-4, 1e-2, 1e-1, 1.0):
        x = start + ((sign * step * scale * math.sqrt(nn)) - z) / nn * row_a
        if box is not None and not (np.all(box[0] <= x) and np.all(x <= box[1])):
            continue
        if np.all(s * (a @ x + c) > INTERIOR_T * norms * scale):
            return x
    return None


# ---- branch and bound -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Node:
    states: tuple[np.ndarray, ...]
    upper: float
    point: np.ndarray | None  # an interior point of the node's region (None: not known)
    forward: tuple[np.ndarray, ...]  # centres of the pre-activation operators F_k


def _folded(net: _Net) -> _Net | str:
    """The net with its input translation (if any) folded into the first bias: b_0 + W_0 s,
    computed in float64 with its error bound kept (``bias_error``: the activation regions are
    those of the exact fold up to that error; ``_pattern_at`` verifies signs beyond it, and the
    LP's emptiness margin EMPTY_T is far above it, checked here), or why not."""
    if not net.shifts:
        return net
    if len(net.shifts) != 1 or net.shifts[0].size != net.weights[0].shape[1] or not np.all(np.isfinite(net.shifts[0])):
        return "over a box, exact mode needs at most one translation of the input, read before the first Linear"
    w, b, t = net.weights[0], net.biases[0], net.shifts[0]
    folded = w @ t + b
    err = _inflate(_gamma(w.shape[1] + 1) * (np.abs(w) @ np.abs(t) + np.abs(b)), w.shape[1])
    norms = np.linalg.norm(w, axis=1)
    scale = np.maximum(norms, 1e-300) * max(1.0, float(np.max(np.abs(folded)) / max(float(np.max(norms)), 1e-300)))
    if not (np.all(np.isfinite(folded)) and float(np.max(err / scale)) < 1e-3 * -EMPTY_T):
        return "over a box, the folded input translation is not accurate enough for exact mode"
    return dataclasses.replace(net, biases=(folded, *net.biases[1:]), bias_error=err, input_shifted=False, shifts=())


def _box_states(graph: Graph, net: _Net, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...] | str:
    """Per hidden layer, the state the box decides for each unit (1 active, -1 inactive, 0 not
    decided; identity layers all 1) from the back-substituted ranges of its pre-activation
    (``analyses.crown``: enclosures of the stored weights' exact run over the box), or why not."""
    from stabaudit.analyses.crown import chain_steps, crown_flat, pre_activations

    chain = chain_steps(graph)
    if isinstance(chain, str):
        return f"over a box, exact mode needs a ReLU chain: {chain}"
    for step in chain.steps:
        if step.kind == "linear":
            break
        if step.kind == "scale" and step.w is not None and np.all(step.w == 1.0):
            continue  # a translation: folded into the first bias (``_folded``)
        if step.kind != "perm" or step.perm is None or not np.array_equal(step.perm, np.arange(step.size)):
            return "over a box, exact mode needs the first Linear to read the input's entries in order"
    lo, hi = crown_flat(chain, box[0], box[1])
    pre = iter(pre_activations(chain, lo, hi))
    states: list[np.ndarray] = []
    for k, w in enumerate(net.weights[:-1]):
        if net.neg[k] == net.pos[k]:
            states.append(np.ones(w.shape[0], dtype=np.int8))
            continue
        found = next(pre, None)
        if found is None or found[0].shape != (w.shape[0],):
            return "internal: the ranges do not match the chain's layers"
        z_lo, z_hi = found
        states.append(np.where(z_lo >= 0, 1, np.where(z_hi <= 0, -1, 0)).astype(np.int8))
    return tuple(states)


def exact_lipschitz(graph: Graph, *, budget_s: float, seed: int = 0,
                    box: tuple[np.ndarray, np.ndarray] | None = None,
                    inner: tuple[np.ndarray, np.ndarray] | None = None,
                    nodes: int | None = None) -> ExactResult:
    """The exact global L2 Lipschitz constant of a small ReLU / LeakyReLU chain (see the module
    docstring), or the best certified bracket when ``budget_s`` runs out (``exact`` False).
    Deterministic for a given seed: the search order does not depend on time, and the budget is a
    node count (``plan.bb_nodes``); the clock only aborts (--timeout).

    ``box`` (the flat input's ends): the constant over that box instead (ReLU chains only). The
    units whose pre-activation keeps one sign over the box (back-substituted ranges) start fixed,
    without LP rows (the box holds them); the LPs keep their points in the box, so a region is
    pruned when it does not meet the box. On the convex box the constant is the essential supremum
    of ||J|| there, the maximum over the regions that meet the box in a set with interior.
    ``inner``: a box inside the domain (inside ``box``): the lower bound's points are moved into it
    before their pattern is verified, so the witness lies in the domain. ``nodes``: the planned
    node count (default ``plan.bb_nodes(budget_s)``)."""
    start = time.perf_counter()
    max_nodes = plan.bb_nodes(budget_s) if nodes is None else max(1, int(nodes))
    if nodes is None:
        plan.spend(max_nodes / plan.BB_NODES_PER_S)
    net = _net(graph)
    if isinstance(net, str):
        return ExactResult(upper=None, lower=None, exact=False, nodes_explored=0, seconds=time.perf_counter() - start, notes=(net,))
    depth = len(net.neg)
    widths = [w.shape[0] for w in net.weights[:-1]]
    branchable = [net.neg[k] != net.pos[k] for k in range(depth)]
    rng = np.random.default_rng(seed)
    n_in = net.weights[0].shape[1]
    decided: tuple[np.ndarray, ...] | None = None
    implied: tuple[np.ndarray, ...] | None = None
    if box is not None:
        box = (np.asarray(box[0], dtype=np.float64).ravel(), np.asarray(box[1], dtype=np.float64).ravel())
        folded = _folded(net)
        found = (folded if isinstance(folded, str) else _box_states(graph, folded, box)) if box[0].size == n_in \
            else "the box does not match the input"
        if isinstance(found, str):
            return ExactResult(upper=None, lower=None, exact=False, nodes_explored=0,
                               seconds=time.perf_counter() - start, notes=(found,))
        assert not isinstance(folded, str)
        net, decided = folded, found
        implied = tuple((s != 0) & b for s, b in zip(decided, branchable, strict=True))

    if inner is not None:
        inner = (np.asarray(inner[0], dtype=np.float64).ravel(), np.asarray(inner[1], dtype=np.float64).ravel())
    # a region's ||J|| bounds the constant over the box from below only where the box has interior
    # around the region's points (pairs then move in every direction): no lower bound otherwise
    flat_box = box is not None and not bool(np.all((inner or box)[1] > (inner or box)[0]))

    def draw() -> np.ndarray:
        if box is None:
            return np.asarray(rng.standard_normal(n_in), dtype=np.float64)
        return np.asarray(rng.uniform(box[0], box[1]), dtype=np.float64)

    best_low = 0.0
    witness: ExactWitness | None = None

    def offer(x: np.ndarray) -> None:
        nonlocal best_low, witness
        if inner is not None:
            x = np.clip(x, inner[0], inner[1])  # a point of the domain (the region is open around it)
        pattern = _pattern_at(net, x)
        if pattern is None:
            return
        up, low = _region_norm(net, pattern)
        if low > best_low:
            best_low = low
            witness = ExactWitness(
                point=tuple(float(v) for v in x),
                pattern=tuple(tuple(int(v > 0) for v in s) for s in pattern),
                norm_lower=low,
                norm_upper=up,
            )

    # seeded points (cheap: one pattern and one product from the output side each); over a box,
    # its centre too and more of them (the steep regions of a small box are small)
    if box is not None:
        offer((box[0] + box[1]) / 2.0)
    for _ in range(8 if box is None else BOX_DRAWS):
        offer(draw())

    def first_open(states: tuple[np.ndarray, ...]) -> int | None:
        for k in range(depth):
            if branchable[k] and np.any(states[k] == 0):
                return k
        return None

    def make(states: tuple[np.ndarray, ...], point: np.ndarray | None) -> _Node:
        up, _, forward = _node_bound(net, states)
        return _Node(states=states, upper=up, point=point, forward=tuple(forward))

    if decided is None:
        root_states = tuple(np.where(np.full(w, b), 0, 1).astype(np.int8) for w, b in zip(widths, branchable, strict=True))
        root = make(root_states, draw())
    else:
        root = make(decided, None)  # the centre need not be interior to every fixed unit's side
    heap: list[tuple[float, int, _Node]] = [(-root.upper, 0, root)]
    counter = 1
    closed = 0.0  # max certified upper of every closed node (leaf or pruned)
    explored = 0
    ambiguous = 0
    stopped = False
    while heap:
        if explored >= max_nodes:
            stopped = True
            break
        check_deadline()  # aborts on --timeout (raises); never ends the search with a number
        _, _, node = heapq.heappop(heap)
        if node.upper <= best_low:
            closed = max(closed, node.upper)
            continue
        explored += 1
        layer = first_open(node.states)
        if layer is None:  # a complete pattern: its certified upper closes it
            closed = max(closed, node.upper)
            continue
        # the constraints of the region so far, and the pre-activations of the layer being split
        a_fix, c_fix, s_fix = _constraints(net, node.states, layer, implied)
        probe = tuple(np.where(s == 0, 1, s).astype(np.int8) if k == layer else s for k, s in enumerate(node.states))
        a_all, c_all, _ = _constraints(net, probe, layer)
        pre_a = a_all[a_all.shape[0] - widths[layer] :]
        pre_c = c_all[c_all.shape[0] - widths[layer] :]
        # branch on the undecided unit with the widest effect: ||column of the forward map||
        # times how close its hyperplane passes to the known interior point
        open_units = np.flatnonzero(node.states[layer] == 0)
        effect = np.linalg.norm(node.forward[layer][open_units], axis=1)
        if node.point is not None:
            dist = np.abs(pre_a[open_units] @ node.point + pre_c[open_units]) / np.maximum(np.linalg.norm(pre_a[open_units], axis=1), 1e-300)
            effect = effect / (1.0 + dist)
        unit = int(open_units[int(np.argmax(effect))])
        row_a, row_c = pre_a[unit], pre_c[unit]
        for sign in (1, -1):
            st = list(node.states)
            st[layer] = st[layer].copy()
            st[layer][unit] = sign
            child_states = tuple(st)
            point: np.ndarray | None = None
            norm_a = float(np.linalg.norm(row_a))
            if norm_a == 0.0:
                if sign * row_c < 0 or (row_c == 0 and sign < 0):
                    continue  # constant pre-activation: only one state is realised (or both agree)
                point = node.point
            elif node.point is not None and sign * (row_a @ node.point + row_c) / norm_a > INTERIOR_T:
                point = node.point  # the parent's interior point lies strictly on this side
            else:
                a_c = np.vstack([a_fix, row_a[None, :]])
                c_c = np.concatenate([c_fix, [row_c]])
                s_c = np.concatenate([s_fix, [float(sign)]])
                x = _cheap_point(a_c, c_c, s_c, node.point, row_a, row_c, sign, box)
                if x is None:
                    t, x = _lp(a_c, c_c, s_c, box)
                    if t < EMPTY_T:
                        continue  # empty region (the only pruning that relies on the LP solver)
                    if x is None or t <= INTERIOR_T:
                        ambiguous += 1
                        x = None
                if x is not None:
                    point = x
                    offer(x)
            child = make(child_states, point)
            if child.upper <= best_low:
                closed = max(closed, child.upper)
                continue
            heapq.heappush(heap, (-child.upper, counter, child))
            counter += 1
    open_max = max((-item[0] for item in heap), default=0.0)
    upper = max(closed, open_max, witness.norm_upper if witness is not None else 0.0)
    if flat_box:
        witness = None
    lower = best_low if witness is not None else None
    # back to the stored network (``_scaled``): its Jacobians are these times 2^exponent, rounded
    # outward (a positive upper end never becomes 0; beyond float64 it is inf)
    upper = ldexp_up(upper, net.exponent)
    lower = None if lower is None else ldexp_down(lower, net.exponent)
    if witness is not None and net.exponent:
        witness = dataclasses.replace(
            witness,
            norm_lower=ldexp_down(witness.norm_lower, net.exponent),
            norm_upper=ldexp_up(witness.norm_upper, net.exponent),
        )
    exact = (not stopped) and lower is not None and math.isfinite(upper) and upper - lower <= EXACT_RTOL * upper
    if not heap and not stopped and lower is None:
        exact = upper == 0.0
        lower = 0.0 if exact else None
    notes: list[str] = [f"{explored} nodes, {sum(w for w, b in zip(widths, branchable, strict=True) if b)} branchable units"]
    if stopped:
        notes.append(f"budget of {budget_s:g} s ({max_nodes} nodes) exhausted with {len(heap)} open nodes: a certified bracket, not the exact value")
    if net.input_shifted:
        notes.append("an input translation precedes the first Linear: the witness point is in translated coordinates")
    if ambiguous:
        notes.append(
            f"{ambiguous} regions of near-zero width (LP slack within solver tolerance, or no LP answer) kept without a point"
        )
    if math.isinf(upper):
        notes.append("the bound overflows float64 (above 1.8e308): no finite certified bound")
    elif net.exponent and (upper < 2.0**-1022 or (lower is not None and 0.0 < lower < 2.0**-1022)):
        notes.append("the constant lies below float64's normal range: the bracket is rounded outward there")
    return ExactResult(
        upper=upper,
        lower=lower,
        exact=exact,
        nodes_explored=explored,
        seconds=time.perf_counter() - start,
        witness=witness,
        witness_translated=net.input_shifted,
        notes=tuple(notes),
    )
