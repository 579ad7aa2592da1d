"""Sampled difference quotients: a plain empirical lower estimate used to cross-check bounds."""

from __future__ import annotations

import numpy as np

from stabaudit.ir.graph import Graph

# (scale of the points, scale of the steps): near pairs, far pairs, and pairs far from the origin
DEFAULT_SCALES: tuple[tuple[float, float], ...] = ((1.0, 1e-3), (1.0, 1.0), (3.0, 1e-2))


def sampled_max_quotient(
    graph: Graph,
    *,
    pairs: int = 256,
    seed: int = 0,
    scales: tuple[tuple[float, float], ...] = DEFAULT_SCALES,
) -> float:
    """max ||f(x) - f(y)|| / ||x - y|| over seeded random pairs, f run in float64 on all inputs
    stacked (inf/NaN pairs skipped). Every such quotient is at most the Lipschitz constant, so a
    certified upper bound below it would be unsound: tests and benchmarks use it as a tripwire."""
    import torch

    from stabaudit.ir.executor import Executor

    f = torch.func.vmap(Executor(graph, dtype=torch.float64).flat())
    n = sum(int(np.prod(spec.shape)) for spec in graph.inputs)
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for scale, step in scales:
        x = torch.randn(pairs, n, generator=gen, dtype=torch.float64) * scale
        y = x + torch.randn(pairs, n, generator=gen, dtype=torch.float64) * step
        with torch.no_grad():
            q = (f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1)
        q = q[torch.isfinite(q)]
        if q.numel():
            best = max(best, float(q.max()))
    return best
