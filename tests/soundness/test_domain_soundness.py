"""Soundness over a domain: for every soundness case (one per operator family), every difference
quotient of pairs inside the box, and every float64 Jacobian norm at points of the box (random and
found by gradient ascent), is at most the report's certified bound over the domain; its witness
pair lies in the box and recomputes."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.samples import UniformDomain, Values
from tests.soundness import harness as H
from tests.soundness.cases import CASES, Case

# one format per case (ONNX first): the domain path is the same for both loaders
PAIRS = [pytest.param(c, c.formats[0], id=f"{c.id}-{c.formats[0]}") for c in CASES]
LOW, HIGH = -0.7, 1.3  # off-center, so that stable and unstable units both occur


def _box_points(n: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(count, n, generator=g, dtype=torch.float64)
    u[: count // 4] = torch.round(u[: count // 4])  # corners
    return LOW + (HIGH - LOW) * u


def _ascent(f, x0: torch.Tensor, steps: int = 25) -> list[torch.Tensor]:
    """Points of the box reached by ascending ||J(x) v|| (v the top right singular vector)."""
    out = []
    for start in x0:
        z = torch.logit(((start - LOW) / (HIGH - LOW)).clamp(1e-6, 1 - 1e-6)).clone().requires_grad_(True)
        v = torch.randn_like(start)
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(steps):
            x = LOW + (HIGH - LOW) * torch.sigmoid(z)
            _, jv = torch.func.jvp(f, (x,), (v / v.norm(),))
            loss = -jv.norm()
            if not torch.isfinite(loss):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # one power step on v at the current point
                _, vjp = torch.func.vjp(f, x.detach())
                v = vjp(jv.detach())[0]
                if not torch.isfinite(v).all() or v.norm() == 0:
                    break
        out.append((LOW + (HIGH - LOW) * torch.sigmoid(z)).detach())
    return out


@pytest.mark.parametrize(("case", "fmt"), PAIRS)
def test_the_domain_bound_holds_inside_the_box(case: Case, fmt: str, tmp_path: Path) -> None:
    built = H.build(case, fmt, tmp_path)
    box = UniformDomain(low=Values(values=(LOW,)), high=Values(values=(HIGH,)))
    report = H.audit(built, domain=box)
    dom = report.domain_lipschitz
    assert dom is not None and dom.domain.kind == "box"
    # never looser than the global bound, and finite wherever the global one is
    if report.lipschitz.certified and report.lipschitz.upper is not None:
        assert dom.certified and dom.upper is not None and dom.upper <= report.lipschitz.upper
    if not dom.certified or dom.upper is None:
        return
    # a model that jumps (quantization): every figure is about its smooth part (the additive term
    # covers the jumps, tests/soundness/test_quantized.py)
    f = H.smooth_flat(built) if report.lipschitz.additive is not None else built.flat()
    n = int(np.prod(built.input_shape))
    xs = _box_points(n, 48, seed=1)
    ys = xs + (torch.rand(xs.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5) * 0.2
    ys = ys.clamp(LOW, HIGH)
    with torch.no_grad():
        fx = torch.stack([f(x) for x in xs])
        fy = torch.stack([f(y) for y in ys])
    q = torch.linalg.vector_norm(fy - fx, dim=1) / torch.linalg.vector_norm(ys - xs, dim=1).clamp_min(1e-300)
    q = q[torch.isfinite(q)]
    slack = 1 + built.rel
    assert float(q.max()) <= dom.upper * slack, (float(q.max()), dom.upper)
    try:
        climbed = _ascent(f, xs[:4])
    except RuntimeError:  # an operator without a second derivative in torch (hardsigmoid)
        climbed = []
    points = list(xs[:12]) + climbed
    norms = [v for v in H.jacobian_norms(f, points) if math.isfinite(v)]
    assert max(norms, default=0.0) <= dom.upper * slack, (max(norms), dom.upper)
    if dom.lower is not None and dom.witness is not None and dom.witness.kind == "jacobian":
        # a point of D where the network is affine nearby (a region of the branch and bound):
        # the Jacobian's norm there is the lower end
        wx = torch.tensor(dom.witness.x, dtype=torch.float64)
        assert bool(((wx >= LOW) & (wx <= HIGH)).all())
        (at,) = H.jacobian_norms(f, [wx])
        assert dom.lower <= at * (slack + 1e-9) and at <= dom.upper * slack
    elif dom.lower is not None:
        assert dom.witness is not None
        wx = torch.tensor(dom.witness.x, dtype=torch.float64)
        wy = torch.tensor(dom.witness.y, dtype=torch.float64)
        assert bool(((wx >= LOW) & (wx <= HIGH) & (wy >= LOW) & (wy <= HIGH)).all())
        with torch.no_grad():
            quotient = float((f(wy) - f(wx)).norm() / (wy - wx).norm())
        assert dom.lower <= quotient * (slack + 1e-9) and dom.lower <= dom.upper * slack


class _SqueezeExcite(torch.nn.Module):
    """A MobileNetV3-style block: conv, HardSwish, squeeze-and-excitation gate (x * hsigmoid(g(x))),
    projection; seeded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8).eval()
        self.act = torch.nn.Hardswish()
        self.squeeze = torch.nn.AdaptiveAvgPool2d(1)
        self.reduce = torch.nn.Conv2d(8, 4, 1)
        self.expand = torch.nn.Conv2d(4, 8, 1)
        self.project = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.conv(x)))
        gate = torch.nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(self.squeeze(h)))))
        return self.project(h * gate)


def test_a_squeeze_excitation_block_gets_a_certified_bound_over_its_domain(tmp_path: Path) -> None:
    """No global bound (the gate multiplies two activations); over pixels in [0, 1] a certified
    one, above every sampled quotient and Jacobian norm inside the box."""
    from stabaudit.api import audit

    module = _SqueezeExcite().eval()
    path = tmp_path / "se.onnx"
    x = torch.rand(1, 3, 8, 8)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17)
    box = UniformDomain(low=Values(values=(0.0,)), high=Values(values=(1.0,)))
    report = audit(path, method="product", budget=0.2, seed=0, domain=box)
    assert report.lipschitz.upper is None  # Mul of two activations: no global constant
    dom = report.domain_lipschitz
    assert dom is not None and dom.certified and dom.upper is not None and math.isfinite(dom.upper)
    assert any("bounded on the domain's ranges" in note for note in dom.notes)
    ref = module.double()
    f = lambda v: ref(v.reshape(1, 3, 8, 8)).reshape(-1)  # noqa: E731
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(64, 192, generator=g, dtype=torch.float64)
    ys = (xs + 0.05 * torch.randn(64, 192, generator=g, dtype=torch.float64)).clamp(0, 1)
    with torch.no_grad():
        q = max(float((f(b) - f(a)).norm() / (b - a).norm()) for a, b in zip(xs, ys, strict=True))
    norms = H.jacobian_norms(f, list(xs[:8]))
    assert max(q, *norms) <= dom.upper * (1 + 1e-6)
    assert dom.lower is not None and 0 < dom.lower <= dom.upper
