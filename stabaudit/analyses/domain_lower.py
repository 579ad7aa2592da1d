"""A sound lower bound of the Lipschitz constant over the audit domain: projected pair ascent.

Over each box B of the domain (``analyses.domain_bound.Boxes``) pairs x, y are kept inside B by
construction (x = lo + (hi - lo) * sigmoid(z)) while Adam ascends log ||f(x) - f(y)|| - log ||x - y||.
The work is counted (starts x steps per box, sized from the budget by the forward cost of the
graph), never timed, so the same model, domain and seed give the same number on every machine.
The best pairs are confirmed in float64 with the forward error model of ``analyses.lower``
(``confirm_quotient``: the quotient minus the certified evaluation error), and a confirmed pair
is kept only when both points are inside B as stored (checked entry by entry on the float64
witness): the witness then proves K_D >= quotient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.domain_bound import Boxes, flat_box
from stabaudit.analyses.plan import DOMAIN_SEARCH_FLOOR_S, SMALLEST_PLAN_FACTOR, call_macs, spend

if TYPE_CHECKING:
    import torch

    from stabaudit.analyses.lower import Evaluation
from stabaudit.bounds.base import OpBound
from stabaudit.ir.graph import Graph
from stabaudit.limits import check_deadline, raise_allocation_failure

MAX_POINTS = 4096
MAX_ROUNDS = 60
LOCAL_STARTS = 8  # points the local search continues from (at most)
PROPOSALS = 8  # perturbations per point and round (at most)
# a start whose step has shrunk below this fraction of the box's width has stalled on a plateau of
# ||J|| (piecewise constant on a piecewise-linear network): it restarts from the next screened point
STALL_RADIUS = 1e-3
START_RADIUS = 0.1
FULL_JACOBIAN_MAX_INPUTS = 64  # beyond, power iteration (4 sweeps) estimates ||J(x)||
MAX_TRIES = 40  # pairs confirmed per box: 4 points x 4 steps x 2 signs, then 8 pairs of drawn points
MIN_TRIES = 4
CONFIRM_PASSES = 12.0  # one confirmed pair: two error-bound evaluations of about 6 passes each


@dataclass(frozen=True, kw_only=True)
class DomainLower:
    value: float  # 0 when nothing was confirmed
    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    box: int = 0  # the box of the domain the witness lies in


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The counted work per box: points screened, then ``rounds`` of the local search from
    ``starts`` points with ``proposals`` perturbations each."""

    points: int
    starts: int
    proposals: int
    rounds: int
    tries: int = MAX_TRIES  # pairs confirmed (each two float64 error-bound evaluations)
    box_s: float = 0.0  # the planned seconds of one box (charged for each box that is searched)


def plan(macs: float, budget_s: float, boxes: int, inputs: int, call: float | None = None) -> Plan:
    """The search's work from the budget by the cost model of ``analyses.plan`` (forward
    multiply-accumulates per budget second, plus a fixed cost per batched call): one Jacobian
    norm costs 2 inputs + 1 passes (forward mode, few inputs) or 17 (four power sweeps of a jvp
    and a vjp); a forward-mode or reverse pass counts as two forward passes (as in
    ``analyses.lower``), and each batched call of a sweep or pass of a confirmation ``call``
    (``plan.call_macs`` of the graph's nodes; default LOWER_CALL_MACS). The pairs
    confirmed per box (``tries``, CONFIRM_PASSES each): as many as a quarter of the box's work
    buys, between MIN_TRIES and MAX_TRIES; of the rest, half screens points, half goes to the
    local search's rounds. Never below two points, no rounds."""
    from stabaudit.analyses.plan import LOWER_CALL_MACS, LOWER_MACS_PER_S, lower_units

    full = inputs <= FULL_JACOBIAN_MAX_INPUTS
    per_sigma = float(2 * inputs + 1 if full else 17)
    call = LOWER_CALL_MACS if call is None else call
    calls = (1.0 if full else 8.0) * call  # the batched calls of one evaluation of Jacobian norms
    macs = max(macs, 1.0)
    units = lower_units(budget_s) / max(boxes, 1)
    try_cost = CONFIRM_PASSES * (macs + call)
    tries = int(min(MAX_TRIES, max(MIN_TRIES, 0.25 * units / try_cost)))
    left = max(units - tries * try_cost, 0.0)
    sigma = per_sigma * macs
    points = int(min(MAX_POINTS, max(2, (left / 2 - calls) / sigma)))
    starts = min(LOCAL_STARTS, points)
    proposals = int(min(PROPOSALS, max(2, points / starts / 8)))
    round_cost = starts * proposals * sigma + calls
    rounds = int(min(MAX_ROUNDS, max(0, (left / 2) / round_cost)))
    box_s = (points * sigma + calls + rounds * round_cost + tries * try_cost) / LOWER_MACS_PER_S
    return Plan(points=points, starts=starts, proposals=proposals, rounds=rounds, tries=tries, box_s=box_s)


def _sigmas(f1, x: torch.Tensor, v: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """||J(x_i)||_2 estimates and top right singular vectors at a batch of points: the full
    Jacobian's SVD for few inputs, else 4 warm-started power sweeps (jvp then vjp)."""
    import torch

    if full:
        jac = torch.func.vmap(torch.func.jacfwd(f1))(x)
        jac = jac.reshape(x.shape[0], -1, x.shape[1])
        jac = torch.where(torch.isfinite(jac), jac, torch.zeros_like(jac))
        _, s, vh = torch.linalg.svd(jac, full_matrices=False)
        return s[:, 0], vh[:, 0, :]

    def sweep(xi: torch.Tensor, vi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        jv = torch.func.jvp(f1, (xi,), (vi,))[1]
        pull = torch.func.vjp(f1, xi)[1]
        w = pull(jv)[0]
        return jv.norm(), w / w.norm().clamp_min(1e-300)

    batched = torch.func.vmap(sweep)
    sig = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(4):
        sig, v = batched(x, v)
    bad = ~torch.isfinite(sig)
    return torch.where(bad, torch.zeros_like(sig), sig), v


def domain_lower(graph: Graph, boxes: Boxes, *, seed: int, budget_s: float,
                 op_bounds: Mapping[str, OpBound] | None = None) -> DomainLower:
    """The largest confirmed difference quotient of a pair inside one box of the domain.

    Per box: seeded points (the center, corners, uniform) screened by their Jacobian norm; a
    (1 + lambda) local search inside the box from the best ones (Jacobians of piecewise-linear
    networks are constant on regions, so it moves by perturbation, not by gradient; a start whose
    step has shrunk to STALL_RADIUS of the box begins again from the next screened point); then pairs
    (x, x + h v) along the top singular vector v at the best points, for a few steps h, kept
    inside the box and confirmed in float64 (the forward error model of ``analyses.lower``).
    When the smallest plan of every box costs more than twice ``budget_s``, only the first boxes
    are searched (as many as twice the budget buys; when not even one, one whose plan costs at most
    ``plan.DOMAIN_SEARCH_FLOOR_S``, else none), and the method says so.
    """
    import torch

    from stabaudit.analyses.lower import (
        ForwardErrorModel,
        confirm_quotient,
        error_sensitivities,
        escalated_plan,
        forward_macs,
        precise_doubtful,
        precise_plan,
        swamped_both,
        unconfirmable_at,
    )
    from stabaudit.ir.executor import Executor, with_shapes

    if not all(node.output in graph.shapes for node in graph.nodes):
        graph = with_shapes(graph)
    shapes = dict(graph.shapes)
    model: Evaluation = ForwardErrorModel(graph, shapes, error_sensitivities(graph, op_bounds or {}))
    # deep piecewise-linear networks: boxes whose float64 bound swamps the outputs are confirmed in
    # double-double (``analyses.precise``) while its planned evaluations last
    precise: Evaluation | None = None
    precise_left, precise_planned = 0, False
    precise_still: str | None = None  # why double-double cannot confirm either (its bound swamps too)
    f1 = Executor(graph, dtype=torch.float64).flat()
    n_in = int(sum(int(np.prod(spec.shape)) for spec in graph.inputs))
    macs = forward_macs(graph, shapes)
    call = call_macs(len(graph.nodes))
    searched = boxes.search
    work = plan(macs, budget_s, len(searched), n_in, call)
    if work.box_s * len(searched) > SMALLEST_PLAN_FACTOR * budget_s:
        # the smallest plan of every box is beyond twice the budget: the first boxes, as many as
        # twice the budget buys, else one whose plan is within DOMAIN_SEARCH_FLOOR_S, else none (a
        # decision on the sizes and the budget, before any evaluation)
        count = min(len(searched), int(SMALLEST_PLAN_FACTOR * budget_s // max(work.box_s, 1e-300)))
        if count == 0 and work.box_s <= DOMAIN_SEARCH_FLOOR_S:
            count = 1
        if count == 0:
            return DomainLower(value=0.0, method=(
                f"not searched: the smallest plan of one box costs {work.box_s:.3g} s, above twice the "
                f"{budget_s:.3g} s of --budget left to the search inside the domain (a larger --budget searches it)"))
        searched = searched[:count]
        work = plan(macs, budget_s, count, n_in, call)
    points, rounds, proposals = work.points, work.rounds, work.proposals
    gen = torch.Generator().manual_seed(int(seed))
    best, best_x, best_y, best_box = 0.0, None, None, 0
    notes: list[str] = []
    for index, box in enumerate(searched):
        check_deadline()
        lo_np, hi_np = flat_box(graph, box)
        if not (np.all(np.isfinite(lo_np)) and np.all(np.isfinite(hi_np))):
            continue
        lo, hi = torch.from_numpy(lo_np), torch.from_numpy(hi_np)
        width = hi - lo
        if not bool((width > 0).any()):
            continue  # a single point: no pair
        n = lo.numel()
        full = n <= FULL_JACOBIAN_MAX_INPUTS
        u = torch.rand(points, n, generator=gen, dtype=torch.float64)
        u[0] = 0.5  # the center
        # corners (from 4 points on): a quarter of the points, but no more than the box has
        corners = min(points // 4, 1 << n) if n < 30 else points // 4
        u[1: corners + 1] = torch.round(u[1: corners + 1])
        x = lo + width * u
        v = torch.randn(points, n, generator=gen, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True)
        hopeless, _, ratio = unconfirmable_at(model, (x[0], x[-1]))
        confirm_with, most = model, work.tries
        if hopeless is not None:
            if not precise_planned and isinstance(model, ForwardErrorModel):
                # planned once, at the first box that needs it (the later boxes share its evaluations)
                precise_planned = True
                precise, precise_left, why_not = precise_plan(graph, shapes, model, macs, budget_s)
                if precise is None:
                    notes.append(why_not)
                else:
                    precise_still = precise_doubtful(precise, ratio, x[0], macs)
                    if precise_still is not None:
                        precise = None
                    else:
                        precise_left = escalated_plan(precise, precise_left, macs)
            if precise is None or precise_left < 2:
                # the error bound swamps the outputs at the center and a drawn point (or at the
                # center alone, beyond lower.DECISIVE_RATIO): no pair of this box is searched (a
                # decision on those evaluations, not on the clock)
                if precise_still is not None:
                    hopeless = swamped_both(hopeless, precise_still)
                notes.append(hopeless.replace("at seeded points", "inside the domain"))
                continue
            confirm_with, most = precise, precise_left // 2
            precise_left -= 2 * most
            notes.append(f"pairs confirmed in {getattr(precise, 'arithmetic', 'double-double')} arithmetic where "
                         "float64's error bound swamps the outputs")
        spend(work.box_s)  # the work of a box that is searched
        try:
            with torch.no_grad():
                sig, v = _sigmas(f1, x, v, full)
        except RuntimeError as exc:  # an operator without a forward derivative in torch
            raise_allocation_failure(exc)
            notes.append("no Jacobian in torch: pairs only")
            sig = torch.zeros(points, dtype=torch.float64)
        order = torch.argsort(sig, descending=True, stable=True)
        top, following = order[: work.starts], work.starts
        px, pv, ps = x[top].clone(), v[top].clone(), sig[top].clone()
        k = px.shape[0]
        radius = torch.full((k,), START_RADIUS, dtype=torch.float64)
        # the best point met (a restart replaces its start's point, not this)
        bx, bv, bs = px.clone(), pv.clone(), ps.clone()
        for _ in range(rounds if bool(ps.max() > 0) else 0):
            check_deadline()
            noise = torch.randn(k, proposals, n, generator=gen, dtype=torch.float64)
            cand = px[:, None, :] + (radius[:, None, None] * width) * noise
            cand = torch.minimum(torch.maximum(cand, lo), hi).reshape(-1, n)
            with torch.no_grad():
                s, w = _sigmas(f1, cand, pv.repeat_interleave(proposals, dim=0), full)
            s, w = s.reshape(k, proposals), w.reshape(k, proposals, n)
            j = s.argmax(dim=1)
            better = s[torch.arange(k), j] > ps
            px[better] = cand.reshape(k, proposals, n)[torch.arange(k), j][better]
            pv[better] = w[torch.arange(k), j][better]
            ps = torch.where(better, s[torch.arange(k), j], ps)
            radius = torch.where(better, radius * 2, radius / 3).clamp(1e-6, 0.5)
            kept = ps > bs
            bx[kept], bv[kept], bs = px[kept], pv[kept], torch.maximum(bs, ps)
            # stalled starts begin again from the next screened points, in their order (counted
            # work: the proposals per round do not change)
            for i in torch.nonzero(radius < STALL_RADIUS).flatten().tolist():
                if following < points:
                    q = order[following]
                    following += 1
                    px[i], pv[i], ps[i] = x[q], v[q], sig[q]
                radius[i] = START_RADIUS
        tries = []
        for i in torch.argsort(bs, descending=True, stable=True)[:4].tolist():
            vi = bv[i] / bv[i].norm().clamp_min(1e-300)
            # every step size in one direction first: a small try budget still tests a step that is large
            # enough to clear the float64 error bound and one that is small enough to stay on one piece
            for sign in (1.0, -1.0):
                for h in (1e-3, 1e-5, 1e-1, 1e-7):
                    tries.append((bx[i], bx[i] + sign * h * float(width.max()) * vi))
        # pairs of random points (models without a torch Jacobian)
        tries += [(x[i], x[(i + 1) % points]) for i in range(min(points, 8))]
        for a, b in tries[: most]:  # the best point's steps first
            a = torch.minimum(torch.maximum(a.clone(), lo), hi)
            b = torch.minimum(torch.maximum(b.clone(), lo), hi)
            if torch.equal(a, b):
                continue
            value = confirm_quotient(confirm_with, a, b)
            if value > best:
                best, best_x, best_y, best_box = value, a, b, index
    method = (f"Jacobian screening and local search inside the domain ({points} points, {rounds} rounds of "
              f"{work.starts}x{proposals} proposals per box, {len(searched)} box(es)), pairs confirmed with the "
              "float64 error bound")
    if len(searched) < len(boxes.search):
        method += (f"; the first {len(searched)} of {len(boxes.search)} boxes searched: the smallest plan of each "
                   f"costs {work.box_s:.3g} s, above twice the {budget_s:.3g} s of --budget left (a larger --budget "
                   "searches them all)")
    if notes:
        method += "; " + "; ".join(sorted(set(notes)))
    if best_x is None or best_y is None:
        return DomainLower(value=0.0, method=method + ": nothing confirmed")
    return DomainLower(value=best, method=method, x=tuple(best_x.tolist()), y=tuple(best_y.tolist()),
                       box=best_box)
