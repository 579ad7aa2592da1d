"""Tests of stabaudit.analyses.domain_chain (per-unit slope certificates of ReLU chains over a box, and
bisection) and of the per-unit slopes of certify / layerwise / sdp they rest on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stabaudit.analyses import domain_chain as DC
from stabaudit.analyses.certify import ChainLMI, verify
from stabaudit.analyses.layerwise import eclipse_fast
from tests.analyses.test_crown import relu_chain


def _jacobians_on_grid(graph_weights: list[np.ndarray], biases: list[np.ndarray], pre: tuple[np.ndarray, np.ndarray],
                       lo: np.ndarray, hi: np.ndarray, n: int) -> float:
    """max ||W_l D_{l-1} .. D_1 W_0 diag(pre)||_2 over the activation patterns met on an n x n grid of
    the 2-D box (the exact local constant on the box is at least this: each pattern met is the
    Jacobian on an open region inside the box, or on its boundary as a limit)."""
    scale, shift = pre
    best = 0.0
    seen: set[bytes] = set()
    for a in np.linspace(lo[0], hi[0], n):
        for b in np.linspace(lo[1], hi[1], n):
            h = np.array([a, b]) * scale + shift
            masks = []
            for w, bias in zip(graph_weights[:-1], biases[:-1], strict=True):
                z = w @ h + bias
                masks.append(z > 0)
                h = np.maximum(z, 0.0)
            key = np.concatenate(masks).tobytes()
            if key in seen:
                continue
            seen.add(key)
            j = graph_weights[0] * scale[None, :]
            for w, m in zip(graph_weights[1:], masks, strict=True):
                j = w @ (m[:, None] * j)
            best = max(best, float(np.linalg.norm(j, 2)))
    return best


def _parts(seed: int, widths: tuple[int, ...]) -> tuple[object, list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    graph = relu_chain(seed, widths)
    ws = [np.asarray(n.op.weight) for n in graph.nodes if hasattr(n.op, "weight")]  # type: ignore[attr-defined]
    bs = [np.asarray(n.op.bias) for n in graph.nodes if hasattr(n.op, "weight")]  # type: ignore[attr-defined]
    norm = graph.nodes[0].op
    return graph, ws, bs, (np.asarray(norm.scale).ravel(), np.asarray(norm.shift).ravel())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("seed", "radius"), [(0, 0.02), (1, 0.1), (2, 0.4), (3, 1.0)])
def test_per_unit_bound_upper_bounds_the_patterns_in_the_box(seed: int, radius: float) -> None:
    graph, ws, bs, pre = _parts(seed, (2, 6, 6, 6, 2))
    dc = DC.domain_chain(graph)  # type: ignore[arg-type]
    assert dc is not None
    x0 = np.random.default_rng(seed).standard_normal(2)
    lo, hi = x0 - radius, x0 + radius
    exact = _jacobians_on_grid(ws, bs, pre, lo, hi, 81)
    value, unstable, units = DC.piece_bound(dc, lo, hi, budget_s=1.0)
    assert units == 18
    assert value >= exact * (1 - 1e-12)
    # the vertex bound (every pattern of the unstable units) and the interval Jacobian: both above
    # the patterns met, the vertices never above the interval product (it holds every vertex)
    from stabaudit.analyses.crown import crown_flat

    r_lo, r_hi = crown_flat(dc.steps, lo, hi)
    pre_act = [(r_lo[i], r_hi[i]) for i in dc.steps.relus]
    vertices = DC.vertex_bound(dc.chain, pre_act, 1 << 18)
    interval = DC.interval_bound(dc.chain, pre_act)
    assert vertices is not None and exact * (1 - 1e-12) <= vertices <= interval * (1 + 1e-12)
    if unstable == 0:
        assert vertices <= exact * (1 + 1e-9)  # one pattern: the exact norm
    glob = DC.lmi_bound(dc.chain.lmi(), budget_s=1.0)[0]
    assert value <= glob * (1 + 1e-9)  # a box never loses against the whole space
    if unstable == 0:
        # every unit stable: F is affine on the box; the active units keep the relaxation [0, 1]
        # (docs/domain.md), so the bound stays within a factor of its Jacobian's norm
        assert value <= exact * 1.5


def test_bisection_tightens_and_stays_sound() -> None:
    graph, ws, bs, pre = _parts(4, (2, 8, 8, 2))
    dc = DC.domain_chain(graph)  # type: ignore[arg-type]
    assert dc is not None
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    exact = _jacobians_on_grid(ws, bs, pre, lo, hi, 161)
    one = DC.bound_over_box(dc, lo, hi, pieces=1, budget_s=0.2)
    many = DC.bound_over_box(dc, lo, hi, pieces=40, budget_s=0.2)
    assert one.pieces == 1 and many.pieces > 10
    assert many.value >= exact * (1 - 1e-12)
    assert many.value < one.value
    # with the vertex bound on the pieces: still above every pattern met, and no worse
    vert = DC.bound_over_box(dc, lo, hi, pieces=40, max_patterns=1 << 12)
    assert exact * (1 - 1e-12) <= vert.value <= many.value * (1 + 1e-12)


def test_unit_slopes_equal_to_the_layer_slopes_change_nothing() -> None:
    rng = np.random.default_rng(7)
    ws = (rng.standard_normal((6, 3)), rng.standard_normal((5, 6)), rng.standard_normal((2, 5)))
    lmi = ChainLMI(weights=ws, slopes=((0.0, 1.0), (0.1, 1.0)))
    same = dataclasses.replace(lmi, unit_slopes=((np.zeros(6), np.ones(6)), (np.full(5, 0.1), np.ones(5))))
    a, b = eclipse_fast(lmi), eclipse_fast(same)
    assert a is not None and b is not None and a.rho == b.rho
    assert verify(lmi, a.rho * 1.001, a.ts) is not None and verify(same, a.rho * 1.001, a.ts) is not None
    # a unit whose true slope lies outside its stated interval is caught: the identity chain
    # x -> x through one unit has constant 1, and slopes [0, 0.5] must not certify below it
    one = ChainLMI(weights=(np.ones((1, 1)), np.ones((1, 1))), slopes=((0.0, 1.0),), unit_slopes=((np.zeros(1), np.full(1, 0.5)),))
    cert = eclipse_fast(one)
    assert cert is not None and math.sqrt(cert.rho) < 0.51  # the LMI believes the stated slopes
    with pytest.raises(ValueError):
        ChainLMI(weights=ws, slopes=((0.0, 1.0), (0.0, 1.0)), unit_slopes=((np.ones(6), np.zeros(6)), (np.zeros(5), np.ones(5))))


def test_inactive_layer_gives_zero() -> None:
    graph, *_ = _parts(5, (2, 4, 2))
    dc = DC.domain_chain(graph)  # type: ignore[arg-type]
    assert dc is not None
    w = dc.chain.weights
    lmi = DC.reduced_lmi(dc.chain, [(np.full(w[0].shape[0], -2.0), np.full(w[0].shape[0], -1.0))])
    assert lmi is None
    lmi = DC.reduced_lmi(dc.chain, [(np.array([-1.0, 0.5, -3.0, 1.0]), np.array([1.0, 2.0, -1.0, 2.0]))])
    assert lmi is not None and lmi.weights[0].shape == (3, 2) and lmi.weights[1].shape == (2, 3)


def _global_certificate(graph):  # type: ignore[no-untyped-def]
    from stabaudit.analyses.feedforward import global_bounds

    results = [r for r in global_bounds(graph, budget_s=1.0) if r.certificate is not None and r.upper is not None]
    best = min(results, key=lambda r: r.upper)  # type: ignore[arg-type, return-value]
    assert best.certificate is not None and best.upper is not None
    return best.certificate, best.upper


@pytest.mark.parametrize(("seed", "radius"), [(0, 0.05), (3, 0.3), (6, 1.5)])
def test_the_global_certificate_restricted_to_a_box_is_a_sound_start(seed: int, radius: float) -> None:
    from stabaudit.analyses.crown import crown_flat

    graph, ws, bs, pre = _parts(seed, (2, 6, 6, 6, 2))
    dc = DC.domain_chain(graph)  # type: ignore[arg-type]
    assert dc is not None
    cert, glob = _global_certificate(graph)
    assert DC.fits(cert, dc)
    x0 = np.random.default_rng(seed).standard_normal(2)
    lo, hi = x0 - radius, x0 + radius
    r_lo, r_hi = crown_flat(dc.steps, lo, hi)
    ranges = [(r_lo[i], r_hi[i]) for i in dc.steps.relus]
    exact = _jacobians_on_grid(ws, bs, pre, lo, hi, 81)
    start = DC.warm_bound(dc, cert, ranges)
    improved = DC.warm_bound(dc, cert, ranges, budget_s=1.0)
    # never above the global certificate (its restriction is feasible), never below the patterns met
    assert exact * (1 - 1e-12) <= improved <= start * (1 + 1e-12) <= glob * (1 + 1e-6)


def test_a_certificate_of_another_chain_does_not_fit() -> None:
    graph, *_ = _parts(1, (2, 6, 6, 2))
    other, *_ = _parts(2, (2, 6, 6, 2))
    dc = DC.domain_chain(graph)  # type: ignore[arg-type]
    assert dc is not None
    assert DC.fits(_global_certificate(graph)[0], dc)
    assert not DC.fits(_global_certificate(other)[0], dc)


def test_the_boxes_take_the_certificate_worst_first_and_stop_when_the_maximum_is_proved() -> None:
    from stabaudit.analyses.domain_bound import domain_bound, domain_boxes
    from stabaudit.analyses.samples import BallDomain
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import RuleContext

    graph, ws, bs, pre = _parts(8, (2, 8, 8, 8, 2))
    cert, glob = _global_certificate(graph)
    op_bounds = {n.output: bound_node(n, RuleContext(input_shapes=tuple(graph.shapes[i] for i in n.inputs),
                                                     output_shape=graph.shapes[n.output])) for n in graph.nodes}
    centres = np.random.default_rng(8).standard_normal((6, 1, 1, 2))
    boxes = domain_boxes(graph, BallDomain(eps=0.05), centres)
    plain = domain_bound(graph, op_bounds, boxes, budget_s=0.5)
    warm = domain_bound(graph, op_bounds, boxes, budget_s=0.5, certificate=cert)
    worst = max(_jacobians_on_grid(ws, bs, pre, c.ravel() - 0.05, c.ravel() + 0.05, 41) for c in centres)
    assert warm.upper.certified
    assert worst * (1 - 1e-12) <= warm.upper.value <= glob * (1 + 1e-6)
    note = next(n for n in warm.notes if "global certificate" in n)
    done = int(note.split(" on ")[1].split(" of ")[0])
    assert 1 <= done < 6  # small balls: the worst box's certificate proves the maximum early
    assert plain.upper.value >= worst * (1 - 1e-12)
