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

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses.domain_bound import Boxes
from stabaudit.bounds.base import Interval, OpBound
from stabaudit.ir.graph import Graph
from stabaudit.limits import check_deadline

# forward passes (of the whole graph, one example) the search may spend per second of budget on a
# graph of 1e6 multiply-accumulates; scaled inversely with the graph's cost
PASSES_PER_SECOND_AT_1M = 4000.0
MIN_STARTS, MAX_STARTS = 4, 32
MIN_STEPS, MAX_STEPS = 10, 150
CONFIRM_PER_BOX = 8


@dataclass(frozen=True, kw_only=True)
class DomainLower:
    value: float  # 0 when nothing was confirmed
    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    box: int = 0  # the box of the domain the witness lies in


def plan(macs: float, budget_s: float, boxes: int) -> tuple[int, int]:
    """(starts, steps) per box: 4 passes per pair step (two forwards, two backwards)."""
    passes = PASSES_PER_SECOND_AT_1M * budget_s * 1e6 / max(macs, 1.0) / max(boxes, 1)
    pair_steps = max(passes / 4.0, 1.0)
    starts = int(min(MAX_STARTS, max(MIN_STARTS, math.sqrt(pair_steps) / 4)))
    steps = int(min(MAX_STEPS, max(MIN_STEPS, pair_steps / starts)))
    return starts, steps


def _flat(graph: Graph, box: Mapping[str, Interval]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.concatenate([np.asarray(box[s.name].lo, dtype=np.float64).ravel() for s in graph.inputs])
    hi = np.concatenate([np.asarray(box[s.name].hi, dtype=np.float64).ravel() for s in graph.inputs])
    return lo, hi


def domain_lower(graph: Graph, boxes: Boxes, *, seed: int, budget_s: float,
                 op_bounds: Mapping[str, OpBound] | None = None) -> DomainLower:
    """The largest confirmed difference quotient of a pair inside one box of the domain."""
    import torch

    from stabaudit.analyses.lower import (
        ForwardErrorModel,
        _macs,
        confirm_quotient,
        error_sensitivities,
    )
    from stabaudit.ir.executor import Executor, with_shapes

    if not all(node.output in graph.shapes for node in graph.nodes):
        graph = with_shapes(graph)
    shapes = dict(graph.shapes)
    model = ForwardErrorModel(graph, shapes, error_sensitivities(graph, op_bounds or {}))
    f1 = Executor(graph, dtype=torch.float64).flat()
    f = torch.func.vmap(f1)
    starts, steps = plan(_macs(graph, shapes), budget_s, len(boxes.boxes))
    gen = torch.Generator().manual_seed(int(seed))
    best, best_x, best_y, best_box = 0.0, None, None, 0
    for index, box in enumerate(boxes.boxes):
        check_deadline()
        lo_np, hi_np = _flat(graph, box)
        if not (np.all(np.isfinite(lo_np)) and np.all(np.isfinite(hi_np))):
            continue
        lo, hi = torch.from_numpy(lo_np), torch.from_numpy(hi_np)
        width = hi - lo
        if not bool((width > 0).any()):
            continue  # a single point: no pair
        n = lo.numel()
        zx = (torch.randn(starts, n, generator=gen, dtype=torch.float64)).requires_grad_(True)
        zy = (zx.detach() + 0.1 * torch.randn(starts, n, generator=gen, dtype=torch.float64)).requires_grad_(True)
        opt = torch.optim.Adam([zx, zy], lr=0.05)
        keep_q = torch.zeros(starts, dtype=torch.float64)
        keep_x = torch.zeros(starts, n, dtype=torch.float64)
        keep_y = torch.zeros(starts, n, dtype=torch.float64)
        for _ in range(steps):
            check_deadline()
            opt.zero_grad()
            x = lo + width * torch.sigmoid(zx)
            y = lo + width * torch.sigmoid(zy)
            num = (f(y) - f(x)).reshape(starts, -1).norm(dim=1)
            den = (y - x).norm(dim=1).clamp_min(1e-300)
            q = num / den
            with torch.no_grad():
                ok = torch.isfinite(q) & (q > keep_q)
                keep_q = torch.where(ok, q.detach(), keep_q)
                keep_x[ok], keep_y[ok] = x.detach()[ok], y.detach()[ok]
            loss = -torch.log(torch.where(torch.isfinite(q), q, torch.zeros_like(q)).clamp_min(1e-300)).sum()
            loss.backward()
            opt.step()
        for i in torch.argsort(keep_q, descending=True, stable=True)[:CONFIRM_PER_BOX].tolist():
            x, y = keep_x[i].clone(), keep_y[i].clone()
            # inside the stored box, entry by entry (the sigmoid map may round onto an end only)
            x, y = torch.minimum(torch.maximum(x, lo), hi), torch.minimum(torch.maximum(y, lo), hi)
            if torch.equal(x, y):
                continue
            value = confirm_quotient(model, x, y)
            if value > best:
                best, best_x, best_y, best_box = value, x, y, index
    method = (f"projected pair ascent in the domain ({starts} starts x {steps} steps per box, "
              f"{len(boxes.boxes)} box(es), float64 error bound)")
    if best_x is None or best_y is None:
        return DomainLower(value=0.0, method=method + ": nothing confirmed")
    return DomainLower(value=best, method=method, x=tuple(best_x.tolist()), y=tuple(best_y.tolist()),
                       box=best_box)
