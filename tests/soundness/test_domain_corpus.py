"""Soundness over a domain on real networks (../shared/models/external, skipped when absent): for
a linf ball of radius 0.05 around a seeded point (one network of each family), every difference quotient of sampled pairs of the
ball and every Jacobian norm at points of the ball is at most the certified bound over the ball."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.samples import BallDomain

EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "external"
# one network per folder (each folder is one publisher's family): the conv certificates of every
# corpus network take minutes, and the families share their operators
EXTERNAL_MODELS = (
    [sorted(d.glob("*.onnx"))[0] for d in sorted(EXTERNAL.iterdir()) if d.is_dir() and any(d.glob("*.onnx"))]
    if EXTERNAL.is_dir() else []
)
RADIUS = 0.05


@pytest.mark.external
@pytest.mark.corpus
@pytest.mark.parametrize("path", EXTERNAL_MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_bound_over_a_ball_holds_inside_it(path: Path) -> None:
    from stabaudit.analyses.domain_bound import domain_bound, domain_boxes, jacobian_bound
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import RuleContext
    from stabaudit.ir.executor import Executor
    from stabaudit.ir.passes import fold_affine, merge_linear_maps
    from stabaudit.loaders import load_model

    loaded = load_model(path).graph
    graph = merge_linear_maps(fold_affine(loaded))
    op_bounds = {
        n.output: bound_node(n, RuleContext(input_shapes=tuple(graph.shapes[i] for i in n.inputs),
                                            output_shape=graph.shapes[n.output]))
        for n in graph.nodes
    }
    n_in = int(sum(np.prod(s.shape) for s in loaded.inputs))
    x0 = np.random.default_rng(0).normal(size=(1, n_in)) * 0.5
    boxes = domain_boxes(graph, BallDomain(eps=RADIUS), x0)
    # ReLU chains also get the branch and bound over the ball (its upper end joins the minimum),
    # and their LMI certificates start from the global methods' certificate of the loaded chain
    from stabaudit.analyses.feedforward import global_bounds

    certified = [r for r in global_bounds(loaded, budget_s=0.5) if r.certificate is not None and r.upper is not None]
    certificate = min(certified, key=lambda r: r.upper or math.inf).certificate if certified else None
    found = domain_bound(graph, op_bounds, boxes, bb_budget_s=0.2, budget_s=0.5, chain_graph=loaded,
                         certificate=certificate)
    from stabaudit.analyses.domain_chain import domain_chain

    if certificate is not None and domain_chain(loaded) is not None:
        assert any("global certificate" in note for note in found.notes)  # the warm start ran
    upper = found.upper.value
    interval = jacobian_bound(loaded, boxes, budget_s=3.0)  # the tightened ranges and the reference bound too
    if interval is not None:
        upper = min(upper, interval[0])
    assert found.upper.certified
    if not math.isfinite(upper):
        return
    f = Executor(loaded, dtype=torch.float64).flat()
    g = torch.Generator().manual_seed(1)
    c = torch.from_numpy(x0[0])
    xs = c + RADIUS * (2 * torch.rand(48, n_in, generator=g, dtype=torch.float64) - 1)
    ys = (xs + 0.01 * torch.randn(48, n_in, generator=g, dtype=torch.float64)).clamp(c - RADIUS, c + RADIUS)
    with torch.no_grad():
        fx = torch.stack([f(x) for x in xs])
        fy = torch.stack([f(y) for y in ys])
    q = torch.linalg.vector_norm(fy - fx, dim=1) / torch.linalg.vector_norm(ys - xs, dim=1)
    assert float(q.max()) <= upper * (1 + 1e-9), (float(q.max()), upper)
    for x in xs[:4]:
        jac = torch.autograd.functional.jacobian(f, x)
        assert float(torch.linalg.matrix_norm(jac.reshape(-1, n_in), ord=2)) <= upper * (1 + 1e-9)
    if found.lower_point is not None:
        # the region's Jacobian at its point of the ball is the lower end, and at most the upper
        p = torch.tensor(found.lower_point, dtype=torch.float64)
        assert float((p - c).abs().max()) <= RADIUS
        jac = torch.autograd.functional.jacobian(f, p)
        norm = float(torch.linalg.matrix_norm(jac.reshape(-1, n_in), ord=2))
        assert abs(norm - found.lower) <= 1e-7 * norm and found.lower <= upper * (1 + 1e-12)
