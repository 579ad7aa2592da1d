"""SA302 and the bound over a ball domain of a residual ReLU CNN take the reference-Jacobian
bound (analyses.reference_jacobian) where it is below the interval Jacobian: within twice the
Jacobian norms found in the balls, where the interval Jacobian alone is 50 times above them."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from stabaudit.analyses.local import local_bounds
from stabaudit.analyses.samples import BallDomain
from stabaudit.api import audit
from stabaudit.loaders import load_model
from stabaudit.stages import _local_balls


class _Block(torch.nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.a = torch.nn.Conv2d(ch, ch, 3, padding=1)
        self.b = torch.nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


def _model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), _Block(8), _Block(8), _Block(8),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 10)).double().eval()
    path = tmp_path / "resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.float(), (torch.zeros(1, 3, 10, 10),), str(path), dynamo=False)
    return path


def _jacobian_norms(path: Path, centres: np.ndarray, eps: float) -> float:
    from stabaudit.ir.executor import Executor

    graph = load_model(path).graph
    ex = Executor(graph, dtype=torch.float64)
    rng = np.random.default_rng(1)
    pts = [c + eps * rng.uniform(-1, 1, size=c.shape) for c in centres for _ in range(8)]
    pts += [c + eps * np.sign(rng.normal(size=c.shape)) for c in centres for _ in range(8)]
    jac = torch.func.vmap(torch.func.jacrev(lambda v: ex(v.reshape(1, 3, 10, 10))[0].reshape(-1)))(
        torch.from_numpy(np.stack(pts)))
    return float(torch.linalg.matrix_norm(jac, 2).max())


def test_sa302_and_the_ball_domain_use_the_reference_bound(tmp_path: Path) -> None:
    path = _model(tmp_path)
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 1, 3, 10, 10)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    eps = 0.001
    report = audit(path, inputs=str(tmp_path / "x.npy"), eps=eps, domain=BallDomain(eps=eps), budget=10, method="product", seed=0)
    (sa302,) = [c for c in report.checks if c.id == "SA302"]
    seen = _jacobian_norms(path, x.astype(np.float64).reshape(2, -1), eps)
    graph = load_model(path).graph
    interval = local_bounds(graph, x.astype(np.float64).reshape(2, -1), eps=eps).upper.value
    # measured: 0.325 against Jacobian norms up to 0.210 at points of the balls; the interval
    # Jacobian alone reads 11.3 on the interval ranges
    dom = report.domain_lipschitz
    assert dom is not None and dom.upper is not None
    assert seen <= dom.upper < 2 * seen < 0.1 * interval
    assert "reference Jacobian" in dom.upper_method
    assert sa302.value["upper"] <= dom.upper  # the domain holds the balls: SA302 takes its bound
    # SA302's own analysis, where its part of the budget buys the tightened ranges
    balls = _local_balls(graph, x.astype(np.float64).reshape(2, -1), eps, math.inf, 1 << 25)
    refs = [ref for _, ref in balls]
    assert all(ref is not None and ref < 2 * seen for ref in refs)
    assert max(r for r in refs if r is not None) >= seen
