"""The training channel's speed: stabaudit's Lanczos path against a PyHessian-style power iteration,
and one Hessian-vector product through the engine's executor against torch.autograd; prints markdown.

Seeded models (a tanh MLP of about 20k parameters and a small tanh CNN), cross-entropy over 256
seeded samples, float64, one torch and one BLAS thread (as an audit runs: limits.one_thread).

- power iteration: PyHessian's ``eigenvalues`` (Yao et al., "PyHessian: Neural Networks Through the
  Lens of the Hessian", 2020): v <- Hv / |Hv| with a relative-change stop at 1e-3 and at most 100
  steps, written here with torch.autograd double-backward HVPs on an equivalent torch module;
- stabaudit: ``training_dynamics`` with ``dense_max=0`` (the Lanczos path of every model above
  2000 parameters), whose HVPs run through the engine's executor;
- reference: the top and bottom eigenvalue by ARPACK (scipy eigsh, tol 1e-12) on the module's HVPs.

CPU seconds are the process's (time.process_time) over the call, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stabaudit, not an installed one


@dataclass
class Case:
    name: str
    graph: Any  # stabaudit.ir.graph.Graph
    module: Any  # torch.nn.Module, float64, the same function as the graph
    x: np.ndarray
    y: np.ndarray


def _mlp(seed: int) -> Case:
    import torch

    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    widths = (64, 128, 96, 10)  # 21,674 parameters
    rng = np.random.default_rng(seed)
    nodes: list[Node] = []
    layers: list[torch.nn.Module] = []
    src = "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        w = rng.normal(size=(b, a)) / math.sqrt(a) * 1.5
        bias = rng.normal(size=b) * 0.3
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=bias), inputs=(src,), output=f"h{i}"))
        lin = torch.nn.Linear(a, b, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(bias))
        layers.append(lin)
        src = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(Node(name=f"act{i}", op=O.Tanh(), inputs=(src,), output=f"a{i}"))
            layers.append(torch.nn.Tanh())
            src = f"a{i}"
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, widths[0])),), outputs=(src,),
                              nodes=tuple(nodes)).validate())
    x = rng.normal(size=(256, widths[0]))
    y = rng.integers(0, widths[-1], size=256)
    return Case("MLP 64-128-96-10 (tanh)", graph, torch.nn.Sequential(*layers), x, y)


def _cnn(seed: int) -> Case:
    import torch

    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, 1, 3, 3)) / 3.0
    b1 = rng.normal(size=8) * 0.1
    w2 = rng.normal(size=(16, 8, 3, 3)) / math.sqrt(72)
    b2 = rng.normal(size=16) * 0.1
    w3 = rng.normal(size=(10, 16 * 6 * 6)) / math.sqrt(576)
    b3 = rng.normal(size=10) * 0.1
    nodes = (
        Node(name="conv1", op=O.Conv(weight=w1, bias=b1, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                                     groups=1), inputs=("x",), output="c1"),
        Node(name="act1", op=O.Tanh(), inputs=("c1",), output="a1"),
        Node(name="conv2", op=O.Conv(weight=w2, bias=b2, strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
                                     groups=1), inputs=("a1",), output="c2"),
        Node(name="act2", op=O.Tanh(), inputs=("c2",), output="a2"),
        Node(name="flat", op=O.Reshape(shape=(1, 576)), inputs=("a2",), output="f"),
        Node(name="fc", op=O.Linear(weight=w3, bias=b3), inputs=("f",), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 1, 12, 12)),), outputs=("y",),
                              nodes=nodes).validate())
    c1 = torch.nn.Conv2d(1, 8, 3, padding=1, dtype=torch.float64)
    c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, dtype=torch.float64)
    fc = torch.nn.Linear(576, 10, dtype=torch.float64)
    with torch.no_grad():
        for layer, w, b in ((c1, w1, b1), (c2, w2, b2), (fc, w3, b3)):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    module = torch.nn.Sequential(c1, torch.nn.Tanh(), c2, torch.nn.Tanh(), torch.nn.Flatten(), fc)
    x = rng.normal(size=(256, 1, 12, 12))
    y = rng.integers(0, 10, size=256)
    return Case("CNN 2 conv + fc (tanh), 12x12", graph, module, x, y)


class ModuleHessian:
    """H v of the mean cross-entropy by double backward on the torch module (PyHessian's hvp)."""

    def __init__(self, case: Case):
        import torch
        import torch.nn.functional as F

        self.params = [p for p in case.module.parameters()]
        xt = torch.tensor(case.x, dtype=torch.float64)
        if isinstance(case.module[0], torch.nn.Linear):
            xt = xt.reshape(xt.shape[0], -1)
        loss = F.cross_entropy(case.module(xt), torch.tensor(case.y, dtype=torch.int64))
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.n = sum(p.numel() for p in self.params)
        self.count = 0

    def hvp(self, v: Any) -> Any:  # v: a flat torch tensor
        import torch

        self.count += 1
        parts = []
        start = 0
        for p in self.params:
            parts.append(v[start:start + p.numel()].reshape(p.shape))
            start += p.numel()
        hv = torch.autograd.grad(self.grads, self.params, grad_outputs=parts, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    def matvec(self, v: np.ndarray) -> np.ndarray:
        import torch

        return self.hvp(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))).numpy()


def power_iteration(h: ModuleHessian, *, max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> tuple[float, int]:
    """PyHessian's top eigenvalue: normalised power iteration, stopping when the Rayleigh quotient
    changes by less than ``tol`` relative to the previous one."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(h.n, dtype=torch.float64, generator=gen)
    v = v / v.norm()
    eig: float | None = None
    for _ in range(max_iter):
        hv = h.hvp(v)
        new = float(hv @ v)
        v = hv / hv.norm()
        if eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            eig = new
            break
        eig = new
    assert eig is not None
    return eig, h.count


def reference(h: ModuleHessian) -> tuple[float, float]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    op = LinearOperator((h.n, h.n), matvec=h.matvec, dtype=np.float64)
    v0 = np.random.default_rng(7).standard_normal(h.n)
    top = eigsh(op, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)
    low = eigsh(op, k=1, which="SA", tol=1e-12, v0=v0, return_eigenvectors=False)
    return float(top[0]), float(low[0])


def cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The best CPU seconds of ``repeats`` calls of ``fn``, and its last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        c0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c0)
    return best, out


def bench_case(case: Case, repeats: int, seed: int) -> list[str]:
    import copy

    import torch

    from stabaudit.analyses.training import (
        Loss,
        TrainingSpec,
        _float64_module,
        _Hessian,
        training_dynamics,
        training_parameters,
    )
    from stabaudit.loaders.torchscript import _module_parameters as _ts_parameters

    spec = TrainingSpec(learning_rate=0.1, x=case.x, y=case.y, loss=Loss.CROSS_ENTROPY)
    ref = ModuleHessian(case)
    top_ref, low_ref = reference(ref)
    training_dynamics(case.graph, spec, seed=seed, dense_max=0)  # warm-up: imports, first calls

    t_power, (eig_power, hvps_power) = cpu(lambda: power_iteration(ModuleHessian(case), seed=seed), repeats)
    t_tight, (eig_tight, hvps_tight) = cpu(
        lambda: power_iteration(ModuleHessian(case), seed=seed, tol=1e-9, max_iter=1000), repeats
    )
    t_lanczos, result = cpu(lambda: training_dynamics(case.graph, spec, seed=seed, dense_max=0), repeats)
    assert result.lambda_max is not None and result.lambda_min is not None

    # one HVP: the engine's executor (the Hessian the training check builds) against the module,
    # interleaved blocks of calls (a shared machine's load falls on both alike), best block each
    params = training_parameters(case.graph, None, None, "cpu")
    engine = _Hessian(case.graph, case.x, case.y, Loss.CROSS_ENTROPY, "cpu", params)
    v = np.random.default_rng(seed).standard_normal(engine.n)
    calls = 10
    t_engine = t_module = math.inf
    for _ in range(3 * repeats):
        t, hv_engine = cpu(lambda: [engine.matvec(v) for _ in range(calls)][-1], 1)
        t_engine = min(t_engine, t / calls)
        t, hv_module = cpu(lambda: [ref.matvec(v) for _ in range(calls)][-1], 1)
        t_module = min(t_module, t / calls)
    hvp_diff = float(np.max(np.abs(hv_engine - hv_module)) / max(np.max(np.abs(hv_module)), 1e-300))

    # ... and through the module as a TorchScript load gives it (the isolated loading process runs
    # the same code: training._module_parameters), against the same torch.autograd HVP
    scripted = torch.jit.script(copy.deepcopy(case.module).float())
    mp = _ts_parameters(scripted)
    with _float64_module(mp):
        ts = _Hessian(case.graph, case.x, case.y, Loss.CROSS_ENTROPY, "cpu",
                      training_parameters(case.graph, mp, None, "cpu"))
        ts.matvec(v)
        t_ts = t_module2 = math.inf
        for _ in range(3 * repeats):
            t, hv_ts = cpu(lambda: [ts.matvec(v) for _ in range(calls)][-1], 1)
            t_ts = min(t_ts, t / calls)
            t, _ = cpu(lambda: [ref.matvec(v) for _ in range(calls)][-1], 1)
            t_module2 = min(t_module2, t / calls)
    ts_diff = float(np.max(np.abs(hv_ts - hv_module)) / max(np.max(np.abs(hv_module)), 1e-300))

    def err(e: float, r: float) -> str:
        return f"{abs(e - r) / abs(r):.1e}"

    return [
        f"| {case.name} | {engine.n:,} | power iteration (PyHessian: tol 1e-3, at most 100 steps) | {hvps_power} "
        f"| {t_power:.3f} | {eig_power:.8g} | {err(eig_power, top_ref)} | - |",
        f"| | | power iteration, tol 1e-9 (at most 1000 steps) | {hvps_tight} | {t_tight:.3f} | {eig_tight:.8g} "
        f"| {err(eig_tight, top_ref)} | - |",
        f"| | | stabaudit Lanczos (`training_dynamics`, both extremes) | {result.iterations} | {t_lanczos:.3f} "
        f"| {result.lambda_max.estimate:.8g} | {err(result.lambda_max.estimate, top_ref)} "
        f"| {result.lambda_min.estimate:.6g} ({err(result.lambda_min.estimate, low_ref)}) |",
        f"| | | **Lanczos / power iteration (tol 1e-3)** | | **{t_lanczos / t_power:.2f}x** | | | |",
        f"| | | one HVP: engine executor / torch.autograd on the module (ms) | 1 "
        f"| {1e3 * t_engine:.2f} / {1e3 * t_module:.2f} = **{t_engine / t_module:.2f}x** "
        f"| max rel. diff {hvp_diff:.1e} | | |",
        f"| | | one HVP: TorchScript module (`torch.jit.script`, float32 weights as stored) / torch.autograd on the module (ms) | 1 "
        f"| {1e3 * t_ts:.2f} / {1e3 * t_module2:.2f} = **{t_ts / t_module2:.2f}x** "
        f"| max rel. diff {ts_diff:.1e} | | |",
        f"| | | reference (ARPACK eigsh, tol 1e-12) | | | {top_ref:.8g} | | {low_ref:.6g} |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("mlp", "cnn"), default=None)
    parser.add_argument("--all-threads", action="store_true",
                        help="the library's default threads instead of one (as a direct API call runs)")
    args = parser.parse_args()
    import contextlib

    import torch

    from stabaudit.limits import one_thread

    cases = [c for c in (("mlp", _mlp), ("cnn", _cnn)) if args.only in (None, c[0])]
    with contextlib.nullcontext() if args.all_threads else one_thread():
        threads = torch.get_num_threads()
        rows = []
        for _, make in cases:
            rows += bench_case(make(args.seed), args.repeats, args.seed)
    how = f"default threads (torch {threads})" if args.all_threads else "one torch and one BLAS thread"
    print(f"Seeded models, cross-entropy over 256 seeded samples, float64, seed {args.seed}, {how}, "
          f"torch {torch.__version__}, {platform.machine()}; CPU seconds of the process, best of {args.repeats}.\n")
    print("| model | parameters | method | HVPs | CPU s | lambda_max | rel. error | lambda_min (rel. error) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
