"""ReLU chains over a box: per-unit slope certificates (ECLipsE-Fast, LipSDP-Neuron) on the units the
box leaves unstable, and bisection of the box.

Over a box B of the input, the back-substituted ranges (``analyses.crown``) bound every
pre-activation z_i of a Relu to [l_i, u_i]. On B a unit with u_i <= 0 is 0 and one with l_i >= 0 is
the identity: its slope interval is [0, 0] or [1, 1] instead of [0, 1]. The LipSDP-Neuron sector
constraint (Fazlyab et al., NeurIPS 2019, Theorem 2) is one inequality per neuron,
(dphi_i - a_i dz_i)(b_i dz_i - dphi_i) >= 0 for every pair of points whose z_i lie in [l_i, u_i],
so it holds with each unit's own [a_i, b_i] (``certify.ChainLMI.unit_slopes``): the certificate
bounds ||F(x) - F(y)|| / ||x - y|| for x, y in B. Inactive units are dropped (their rows of W_{k-1}
and columns of W_k: on B they output 0, so F on B is the reduced chain's function up to its
biases), which shrinks the LMI; a layer with no unit left makes F constant on B (bound 0).

Bisection. A box B split into boxes B_1 .. B_m (closed, covering B) has constant max_i K_i when K_i
holds on B_i: the segment from x to y in B meets each B_i in a closed sub-segment, and these cover
it, so ||F(x) - F(y)|| <= sum_j ||F(p_j) - F(p_{j+1})|| <= max_i K_i ||x - y|| along consecutive
points p_j each pair in one piece. The piece with the largest bound is split in two at the middle
of its input entry of largest width times influence (the width times the norm of the first
weight's column it feeds), as long as the counted work allows (``plan.domain_pieces``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.certify import ChainLMI
from stabaudit.analyses.crown import ReluChain, chain_steps, crown_flat
from stabaudit.analyses.feedforward import Chain, ChainCertificate, explain_chain
from stabaudit.ir.graph import Graph
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    from stabaudit.analyses.layerwise import Certificate

METHOD = "per-unit slopes over the domain (back-substituted ranges, ECLipsE-Fast / LipSDP-Neuron)"


@dataclass(frozen=True, kw_only=True)
class DomainChain:
    """A ReLU chain in both forms: the steps (ranges) and the LMI chain (certificates)."""

    steps: ReluChain
    chain: Chain
    influence: np.ndarray  # per flat input entry: how much a unit of its width moves the first layer


@dataclass(frozen=True, kw_only=True)
class PiecesBound:
    """The bound over one box: the largest over its pieces, how many pieces, and how many of the
    units were unstable in the worst piece."""

    value: float
    pieces: int
    unstable: int
    units: int


def domain_chain(graph: Graph) -> DomainChain | None:
    """Both forms of the ReLU chain of ``graph``, or None when it is not one this module handles
    (one row, Relu activations only, each Relu one activation of the LMI chain)."""
    steps = chain_steps(graph)
    if isinstance(steps, str):
        return None
    chain = explain_chain(graph)
    if isinstance(chain, str) or chain.rows != 1:
        return None
    relus = steps.relus
    if len(relus) != len(chain.slopes) or any(s != (0.0, 1.0) for s in chain.slopes):
        return None
    for k, i in enumerate(relus):
        if steps.steps[i].size != chain.weights[k].shape[0]:
            return None
    # the influence of each input entry: its scale before the first Linear times the norm of the column
    n0 = int(np.prod(steps.input_shape))
    pos, scale = np.arange(n0), np.ones(n0)
    influence = np.ones(n0)
    for step in steps.steps:
        if step.kind == "perm":
            assert step.perm is not None
            pos, scale = pos[step.perm], scale[step.perm]
        elif step.kind == "scale":
            assert step.w is not None
            scale = scale * np.abs(step.w)
        elif step.kind == "linear":
            assert step.w is not None
            influence = np.zeros(n0)
            influence[pos] = scale * np.linalg.norm(step.w, axis=0)
            break
    return DomainChain(steps=steps, chain=chain, influence=influence)


def reduced_lmi(chain: Chain | ChainLMI, pre: list[tuple[np.ndarray, np.ndarray]]) -> ChainLMI | None:
    """The chain's LMI data restricted to a box where Relu k's input lies in pre[k]: inactive units
    dropped, active ones with slope [1, 1]; None when a layer has no unit left (F is constant)."""
    ws = list(chain.weights)
    errs = list(chain.errors)
    unit: list[tuple[np.ndarray, np.ndarray]] = []
    for k, (_, hi) in enumerate(pre):
        keep = hi > 0.0
        if not np.any(keep):
            return None
        ws[k] = ws[k][keep, :]
        ws[k + 1] = ws[k + 1][:, keep]
        if errs[k] is not None:
            errs[k] = errs[k][keep, :]  # type: ignore[index]
        if errs[k + 1] is not None:
            errs[k + 1] = errs[k + 1][:, keep]  # type: ignore[index]
        # an active unit keeps [0, 1]: its exact slope [1, 1] is an equality constraint, whose
        # multiplier t >= 0 helps only as t grows without bound (the barrier stalls); [0, 1] holds too
        unit.append((np.zeros(int(np.sum(keep))), np.ones(int(np.sum(keep)))))
    return ChainLMI(weights=tuple(ws), slopes=chain.slopes, errors=tuple(errs), unit_slopes=tuple(unit))


def _verified(scaled: ChainLMI, exponent: int, rho: float, ts: tuple[np.ndarray, ...]) -> float:
    """The bound of a candidate (rho, T) of the scaled chain once ``certify.verify`` proves it (the
    candidate inflated by up to 1 %), else inf."""
    from stabaudit.analyses.certify import verify
    from stabaudit.analyses.feedforward import INFLATIONS
    from stabaudit.analyses.layerwise import bound_value

    for inflate in INFLATIONS:
        lam = 1.0 + inflate
        lrho, lts = rho * lam, tuple(t * lam for t in ts)
        if verify(scaled, lrho, lts) is not None:
            return bound_value(lrho, exponent)
    return math.inf


def _fast(lmi: ChainLMI) -> tuple[ChainLMI, int, Certificate | None, float]:
    """The chain scaled by powers of two (``sdp.pow2_scaled``), its exponent, ECLipsE-Fast's
    certificate and that certificate's verified bound (inf when none verifies)."""
    from stabaudit.analyses.layerwise import eclipse_fast
    from stabaudit.analyses.sdp import pow2_scaled

    scaled, exponent = pow2_scaled(lmi)
    try:
        cert = eclipse_fast(scaled)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        cert = None
    if cert is None:
        return scaled, exponent, None, math.inf
    return scaled, exponent, cert, _verified(scaled, exponent, cert.rho, cert.ts)


def _improved(scaled: ChainLMI, exponent: int, rho: float, ts: Sequence[np.ndarray], best: float,
              budget_s: float) -> float:
    """``best`` (the verified bound of the start (rho, T)), or less: LipSDP-Neuron from that start
    with the Newton steps ``budget_s`` buys (``plan.newton_steps``), verified by ``_verified``."""
    from stabaudit.analyses.sdp import lipsdp

    if not (budget_s > 0.0 and scaled.slopes and math.isfinite(best)):
        return best
    try:
        rho2, ts2, steps = lipsdp(scaled, rho, list(ts), budget_s=budget_s)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return best
    if steps > 0 and rho2 < rho:
        return min(best, _verified(scaled, exponent, rho2, tuple(ts2)))
    return best


def lmi_bound(lmi: ChainLMI, *, budget_s: float = 0.0) -> tuple[float, str]:
    """The smallest verified bound of the (reduced, per-unit) chain: ECLipsE-Fast, then LipSDP-Neuron
    from it with the Newton steps ``budget_s`` buys (``plan.newton_steps``); (inf, "") when none
    verifies."""
    scaled, exponent, cert, fast = _fast(lmi)
    if cert is None:
        return math.inf, ""
    best = _improved(scaled, exponent, cert.rho, cert.ts, fast, budget_s)
    return best, "LipSDP-Neuron" if best < fast else "ECLipsE-Fast"


def fits(start: ChainCertificate, dc: DomainChain) -> bool:
    """Whether ``start`` certifies ``dc``'s own chain (the same weights, scaled by the same powers
    of two): only then do its multipliers belong to the units the box's ranges describe."""
    from stabaudit.analyses.sdp import pow2_scaled

    if len(start.lmi.weights) != len(dc.chain.weights):
        return False
    scaled, exponent = pow2_scaled(dc.chain.lmi())
    same = exponent == start.exponent and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(scaled.weights, start.lmi.weights, strict=True))
    return same and all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
                        for a, b in zip(scaled.errors, start.lmi.errors, strict=True))


def warm_bound(dc: DomainChain, start: ChainCertificate, pre: list[tuple[np.ndarray, np.ndarray]], *,
               budget_s: float = 0.0) -> float:
    """The per-unit LMI bound over a box, from the better of two verified starts: the whole
    chain's certificate ``start`` restricted to the box, and the reduced chain's own ECLipsE-Fast
    certificate; LipSDP-Neuron then takes the Newton steps ``budget_s`` buys from it.

    Why the restriction is a start. On the box, an inactive unit i has phi_i = 0. The whole
    chain's quadratic form M(rho, T) is negative semidefinite on every vector; on the vectors with
    phi_i = 0 for the inactive units, unit i's sector term t_i (phi_i - a z_i)(b z_i - phi_i)
    vanishes (a = 0) and so does column i of the next weight: what remains is the reduced chain's
    form (``reduced_lmi``) at (rho, T restricted to the other units). A restriction of a negative
    semidefinite form is one, so (rho, T restricted) is feasible for the reduced LMI, with the
    whole chain's bound: a box never reads above the global certificate. ECLipsE-Fast on the
    reduced chain is the better start where the box leaves few units unstable (it knows them;
    the global multipliers do not). Every value returned is proved by ``_verified`` in float64."""
    reduced = reduced_lmi(start.lmi, pre)
    own = reduced_lmi(dc.chain, pre)
    if reduced is None or own is None:
        return 0.0  # a layer with no unit left: F is constant on the box
    ts = [np.asarray(t)[hi > 0.0] for t, (_, hi) in zip(start.ts, pre, strict=True)]
    restricted = _verified(reduced, start.exponent, start.rho, tuple(ts))
    scaled, exponent, cert, fast = _fast(own)  # ECLipsE-Fast on the reduced chain
    if cert is not None and fast <= restricted:
        return _improved(scaled, exponent, cert.rho, cert.ts, fast, budget_s)
    return _improved(reduced, start.exponent, start.rho, ts, restricted, budget_s)


def vertex_bound(chain: Chain, pre: list[tuple[np.ndarray, np.ndarray]], max_patterns: int) -> float | None:
    """max over the 2^k patterns of the k unstable units (inactive ones 0, active ones 1) of a
    certified ||W_l D_{l-1} .. D_1 W_0||_2; None when k is too large for ``max_patterns`` (or the
    products would not fit), or a weight carries a rounding bound.

    Why it bounds the box: the Clarke Jacobian of F at any point of the box lies in the convex hull
    of the products with D_i diagonal in its units' slope intervals (chain rule inclusion), the
    product is affine in each diagonal entry, so its norm (convex) is largest at a vertex: 0 or 1
    for each unstable unit (Jacobian sets as in ``analyses.local``'s vertex bound).

    Rounding: each pattern's product is computed from the input side, L matrix products of inner
    dimension at most n; |fl(J) - J| <= ((1 + gamma_n)^L - 1) |W_l| .. |W_0| entry-wise (Higham,
    Accuracy and Stability, 3.5; |D| <= 1), the nonnegative product computed in float is below the
    exact one by at most the factor (1 + gamma_n)^L, so ||J||_2 <= ||fl(J)||_2 + ||E||_F with E that
    bound; ||fl(J)||_2 from the float64 SVD widened as ``numerics.spectral_norm_dense`` widens it."""
    from stabaudit.bounds.numerics import svd_relative_margin

    ws = list(chain.weights)
    errs = [np.zeros_like(w) if e is None else np.asarray(e, dtype=np.float64) for w, e in zip(ws, chain.errors, strict=True)]
    masks: list[np.ndarray] = []
    active: list[np.ndarray] = []
    for k, (lo, hi) in enumerate(pre):
        keep = hi > 0.0
        if not np.any(keep):
            return 0.0
        ws[k], errs[k] = ws[k][keep, :], errs[k][keep, :]
        ws[k + 1], errs[k + 1] = ws[k + 1][:, keep], errs[k + 1][:, keep]
        active.append(lo[keep] >= 0.0)
        masks.append(~active[-1])
    k_total = int(sum(int(m.sum()) for m in masks))
    patterns = 1 << k_total
    n0 = ws[0].shape[1]
    width = max(w.shape[0] for w in ws)
    if patterns > max_patterns or patterns * width * n0 > 20_000_000:
        return None
    bits = ((np.arange(patterns)[:, None] >> np.arange(k_total)[None, :]) & 1).astype(np.float64)
    m = np.broadcast_to(ws[0], (patterns, *ws[0].shape))
    at = 0
    for k in range(len(pre)):
        d = np.broadcast_to(active[k].astype(np.float64), (patterns, active[k].size)).copy()
        idx = np.flatnonzero(masks[k])
        d[:, idx] = bits[:, at: at + idx.size]
        at += idx.size
        m = np.einsum("ij,pjk->pik", ws[k + 1], d[:, :, None] * m)
    s = np.linalg.svd(m, compute_uv=False)[:, 0]
    delta = svd_relative_margin(m.shape[1], m.shape[2])
    top = float(np.max(s)) * (1.0 + 2.0 * delta) * (1.0 + 8 * 2.0**-53)
    n = max(max(w.shape) for w in ws)
    g = 1.01 * (n + 2) * 2.0**-53
    layers = len(ws) - 1
    grow = (1.0 + g) ** layers
    absprod = np.abs(ws[0])
    wider = np.abs(ws[0]) + errs[0]
    for w, e in zip(ws[1:], errs[1:], strict=True):
        absprod = np.abs(w) @ absprod
        wider = (np.abs(w) + e) @ wider
    # |J_exact - fl(J)| <= (P(|W| + E) - P(|W|)) + ((1 + g)^L - 1) P(|W|), P the products of the
    # nonnegative matrices (the weights' own error bounds E: entry-wise |W_exact - W| <= E);
    # computed P's are within the factor grow of the exact ones
    bound = np.maximum(grow * wider - absprod / grow, 0.0) + absprod * grow * (grow - 1.0)
    err = float(np.sqrt(np.sum(bound**2))) * 1.01
    return float(np.nextafter(top + err + 1e-290, np.inf))


def interval_bound(chain: Chain, pre: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """A certified bound of sup ||J|| over the Jacobians W_l D_{l-1} .. D_1 W_0 with each unit's
    slope in its interval ([0, 0], [1, 1] or [0, 1]): midpoint-radius products from the input side,
    J in [Mc - Mr, Mc + Mr], ||J||_2 <= ||Mc||_2 + ||Mr||_F.

    With D = Dc + dD, |dD| <= Dr: D M - Dc Mc = Dc (M - Mc) + dD M, so |D M - Dc Mc| <= |Dc| Mr +
    Dr (|Mc| + Mr); W (Dc Mc) is computed with error <= gamma_n |W| |Dc Mc| (Higham 3.5), added to
    the radius; Dc in {0, 1/2, 1} multiplies exactly; the radii (sums of nonnegative terms) are
    rounded up by a factor (1 + 2 gamma_n)."""
    from stabaudit.bounds.numerics import svd_relative_margin

    ws = chain.weights
    errs = chain.errors
    mc = np.array(ws[0], dtype=np.float64)
    # a weight's own error bound E (|W_exact - W| <= E entry-wise) joins the radius
    mr = np.zeros_like(mc) if errs[0] is None else np.asarray(errs[0], dtype=np.float64).copy()
    for k, (lo, hi) in enumerate(pre):
        dc = np.where(hi <= 0.0, 0.0, np.where(lo >= 0.0, 1.0, 0.5))
        dr = np.where((lo < 0.0) & (hi > 0.0), 0.5, 0.0)
        nc = dc[:, None] * mc
        nr = dc[:, None] * mr + dr[:, None] * (np.abs(mc) + mr)
        w = ws[k + 1]
        g = 1.01 * (w.shape[1] + 4) * 2.0**-53
        aw = np.abs(w)
        mc = w @ nc
        mr = (aw @ nr + g * (aw @ np.abs(nc))) * (1.0 + 2.0 * g) + 1e-290
        e = errs[k + 1]
        if e is not None:  # (W + dW) N - W Nc = W (N - Nc) + dW N, |dW N| <= E (|Nc| + Nr)
            mr = (mr + np.asarray(e) @ (np.abs(nc) + nr)) * (1.0 + 2.0 * g)
    if not (np.all(np.isfinite(mc)) and np.all(np.isfinite(mr))):
        return math.inf
    top = float(np.linalg.svd(mc, compute_uv=False)[0]) if mc.size else 0.0
    top *= (1.0 + 2.0 * svd_relative_margin(*mc.shape)) * (1.0 + 8 * 2.0**-53)
    rad = math.sqrt(float(np.sum(mr * mr)) * (1.0 + (mr.size + 4) * 2.0**-52)) * (1.0 + 4 * 2.0**-52)
    return float(np.nextafter(top + rad + 1e-290, np.inf))


def piece_bound(dc: DomainChain, lo0: np.ndarray, hi0: np.ndarray, budget_s: float = 0.0,
                max_patterns: int = 0, lmi: bool = True) -> tuple[float, int, int]:
    """(the certified bound over the box [lo0, hi0] (flat), its unstable units, all units):
    ``ranges_bound`` on the box's back-substituted ranges."""
    return ranges_bound(dc, box_ranges(dc, lo0, hi0), budget_s, max_patterns, lmi)


def ranges_bound(dc: DomainChain, pre: list[tuple[np.ndarray, np.ndarray]] | None, budget_s: float = 0.0,
                 max_patterns: int = 0, lmi: bool = True) -> tuple[float, int, int]:
    """(the certified bound over a box whose Relu inputs lie in ``pre`` (``box_ranges``; None: not
    finite, the bound is inf), its unstable units, all units): the vertex bound when its patterns
    fit ``max_patterns``, else the smaller of the interval Jacobian bound and (``lmi``) the
    per-unit LMI certificate."""
    if pre is None:
        units = sum(dc.steps.steps[i].size for i in dc.steps.relus)
        return math.inf, units, units
    units = sum(p[0].size for p in pre)
    unstable = sum(int(np.sum((a < 0.0) & (b > 0.0))) for a, b in pre)
    if max_patterns > 0:
        found = vertex_bound(dc.chain, pre, max_patterns)
        if found is not None:
            return found, unstable, units
    best = interval_bound(dc.chain, pre)
    if lmi:
        reduced = reduced_lmi(dc.chain, pre)
        if reduced is None:
            return 0.0, unstable, units
        best = min(best, lmi_bound(reduced, budget_s=budget_s)[0])
    return best, unstable, units


def box_ranges(dc: DomainChain, lo0: np.ndarray, hi0: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The back-substituted ranges of every Relu's input over the box [lo0, hi0] (flat), or None
    when one is not finite."""
    lo, hi = crown_flat(dc.steps, lo0, hi0)
    pre = [(lo[i], hi[i]) for i in dc.steps.relus]
    if not all(np.all(np.isfinite(a)) and np.all(np.isfinite(b)) for a, b in pre):
        return None
    return pre


def piece_cost(dc: DomainChain) -> float:
    """The planned flops of one piece: the back-substitution (rows x width x remaining depth per
    layer) and the layer-wise certificate (a few width^3 factorisations per layer)."""
    widths = [s.size for s in dc.steps.steps if s.kind == "linear"]
    n0 = int(np.prod(dc.steps.input_shape))
    dims = [n0, *widths]
    back = sum(2.0 * dims[k + 1] * sum(dims[j] * dims[j + 1] for j in range(k + 1)) for k in range(len(widths)))
    lmi = sum(6.0 * float(d) ** 3 for d in dims)
    return back + lmi


def bound_over_box(dc: DomainChain, lo0: np.ndarray, hi0: np.ndarray, *, pieces: int, budget_s: float = 0.0,
                   max_patterns: int = 0) -> PiecesBound:
    """The largest certified bound over the pieces of [lo0, hi0] after at most ``pieces`` pieces
    are bounded (module docstring; each with LipSDP-Neuron steps planned from ``budget_s``); one
    piece when ``pieces`` <= 2."""
    check_deadline()
    # when the box is split, its pieces take the cheap bounds (vertices, interval Jacobian) and
    # only an unsplit box pays for the LMI certificate
    use_lmi = pieces <= 2
    value, unstable, units = piece_bound(dc, lo0, hi0, budget_s, max_patterns, use_lmi)
    heap: list[tuple[float, int, np.ndarray, np.ndarray, int]] = [(-value, 0, lo0, hi0, unstable)]
    done, serial = 1, 1
    while done + 2 <= pieces and heap and math.isfinite(-heap[0][0]) and -heap[0][0] > 0.0:
        check_deadline()
        neg, _, lo, hi, _ = heap[0]
        width = (hi - lo) * dc.influence
        d = int(np.argmax(width))
        if not width[d] > 0.0:
            break
        mid = lo[d] / 2 + hi[d] / 2
        if not lo[d] < mid < hi[d]:
            break
        heapq.heappop(heap)
        left_hi, right_lo = hi.copy(), lo.copy()
        left_hi[d], right_lo[d] = mid, mid
        for a, b in ((lo, left_hi), (right_lo, hi)):
            v, u, _ = piece_bound(dc, a, b, budget_s, max_patterns, use_lmi)
            heapq.heappush(heap, (-v, serial, a, b, u))
            serial += 1
            done += 1
    worst = heap[0]
    return PiecesBound(value=-worst[0], pieces=len(heap), unstable=worst[4], units=units)


__all__ = ["METHOD", "DomainChain", "PiecesBound", "bound_over_box", "box_ranges", "domain_chain", "fits", "piece_bound",
           "piece_cost", "ranges_bound", "reduced_lmi", "warm_bound"]
