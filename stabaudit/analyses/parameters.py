"""Parameter sensitivity at the samples (SA401): certified |dF/dW_l| bounds and autograd values.

For a linear or conv layer z_l = W_l x_{l-1} + b_l and the rest of the model G_l (z_l -> F, the
values that do not depend on z_l held fixed), dF/dW_l [D] = J_G(z_l) A_l(D, x_{l-1}) where
A_l(D, x) is the layer's map with weight D. Hence, with ||D||_F the norm on weight perturbations
and L2 on the stacked outputs,
    ||dF/dW_l||  <=  Lip(G_l) * c_l * ||x_{l-1}||_2,
- Lip(G_l) <= S_l, the reverse sweep of the certified per-operator bounds (composition.
  output_sensitivities; prod_{j > l} s_j on a chain: the downstream part of THEORY.md's
  prod_{j != l} s_j, the upstream part being carried by ||x_{l-1}||, which is measured);
- c_l: Linear (over the last axis, rows of X): ||D X^T||_F <= ||D||_2 ||X||_F <= ||D||_F ||X||_F,
  so c = 1. Conv: Cauchy-Schwarz per output entry gives ||A(D, x)||^2 <= ||D||_F^2 sum_p
  ||patch_p||^2, and one input entry lies in at most prod_i ceil(k_i / (s_i / gcd(s_i, d_i)))
  patches (the taps k with k*d_i = e + pad mod s_i form one residue class), so c is the square
  root of that count; ConvTranspose: c = sqrt(prod_i k_i) likewise;
- ||x_{l-1}||_2: the largest float64 norm of the layer's input over the samples, widened by a
  relative 1e-9 for the rounding of the forward pass. The bound is therefore "at the samples":
  it holds at every sample (and for every Clarke element there), not over a whole domain.
The measured value is the exact norm ||d vec(F) / d vec(W_l)||_2 by autograd at each sample
(full Jacobian for at most MAX_EXACT_ROWS outputs, when the budget buys one sample's; else
||J_l^T u|| for one seeded unit u shared by every layer, then power iteration on J_l J_l^T, values
from below), the max over the first
samples: a sound lower value of the sensitivity at the samples. The reverse passes this takes are
planned from the budget (analyses.plan.reverse_passes, plan.measurement_plan): at most MAX_MEASURED_SAMPLES samples, fewer
when the budget does not buy them, then fewer power iterations (none: the shared probe only).
W_l is the layer's effective weight (eval BatchNorm folded), as in the report's layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.activations import forward_values
from stabaudit.analyses.plan import POWER_ITERATIONS
from stabaudit.bounds.base import OpBound
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.ir.graph import Graph, Node
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    import torch

MARGIN = 1e-9  # relative widening of the measured input norms (float64 forward rounding)
MAX_MEASURED_SAMPLES = 16  # autograd runs on the first samples only (the bound uses all)


@dataclass(frozen=True, kw_only=True)
class LayerSensitivity:
    layer: str
    op: str
    bound: float | None  # certified at the samples; None when not finite (an estimated op downstream)
    measured: float  # max over the measured samples of ||dF/dW_l||
    input_norm: float  # max over the samples of ||x_{l-1}||_2 (widened)
    downstream: float  # S_l >= Lip(G_l)
    factor: float  # c_l


@dataclass(frozen=True, kw_only=True)
class ParameterResult:
    samples: int  # samples the bound is taken over
    measured_samples: int  # samples autograd ran on (the first ones)
    layers: tuple[LayerSensitivity, ...]
    # power iterations per layer and sample (None: the full Jacobian; 0: the shared probe only)
    power_iterations: int | None = None


def _up(x: float) -> float:
    return math.nextafter(x, math.inf) if math.isfinite(x) else x


def weight_factor(op: O.Op) -> float:
    """c_l of the module docstring (rounded up)."""
    match op:
        case O.Conv(weight=w, strides=s, dilations=d):
            count = 1
            for i, k in enumerate(w.shape[2:]):
                period = s[i] // math.gcd(s[i], d[i])
                count *= min(int(k), -(-int(k) // period))
            return _up(math.sqrt(count))
        case O.ConvTranspose(weight=w):
            return _up(math.sqrt(int(np.prod(w.shape[2:]))))
    return 1.0


class _WeightLeaves(Executor):
    """The graph's executor with some weight arrays replaced by leaf tensors (for autograd)."""

    def __init__(self, graph: Graph, leaves: Mapping[int, torch.Tensor]):
        import torch

        self._leaves = leaves  # id(array) -> its leaf
        super().__init__(graph, dtype=torch.float64)

    def _param(self, array: np.ndarray) -> torch.Tensor:
        leaf = self._leaves.get(id(array))
        return leaf if leaf is not None else super()._param(array)


def _spectral(rows: list[np.ndarray]) -> float:
    """||J||_2 of the matrix with these rows: sqrt(lambda_max(J J^T)) (a small Gram matrix); 0 when
    an entry is not finite (autograd's NaN where the map is not differentiable, e.g. a norm at 0):
    that sample measures nothing."""
    jac = np.stack(rows)
    if not np.isfinite(jac).all():
        return 0.0
    return float(math.sqrt(max(float(np.linalg.eigvalsh(jac @ jac.T)[-1]), 0.0)))


def _power_norm(y: torch.Tensor, w: torch.Tensor, seed: int, iterations: int = POWER_ITERATIONS) -> float:
    """||d y / d w||_2 from below: power iteration on J J^T, each iterate ||J^T u|| with |u| = 1
    (J v by the double-backward trick: J^T u is linear in u, its gradient in u against v is J v)."""
    import torch

    m = int(y.numel())
    probe = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    (jt_probe,) = torch.autograd.grad(y, w, grad_outputs=probe, create_graph=True)
    u = torch.from_numpy(np.random.default_rng(seed).standard_normal(m))
    best = 0.0
    for _ in range(iterations):
        u = u / torch.linalg.vector_norm(u)
        (g,) = torch.autograd.grad(y, w, grad_outputs=u, retain_graph=True)
        best = max(best, float(torch.linalg.vector_norm(g)))
        (u,) = torch.autograd.grad(jt_probe, probe, grad_outputs=g, retain_graph=True)
        if not torch.any(u != 0):
            break
    return best


def _measured(
    graph: Graph, layers: list[Node], samples: np.ndarray, seed: int, iterations: int | None
) -> dict[str, float]:
    """max over the samples of ||d vec(F) / d vec(W_l)||_2 for every layer, by autograd (from
    below: ``iterations`` power iterations after a shared probe, or the full Jacobian if None)."""
    import torch

    leaves: dict[int, torch.Tensor] = {}
    leaf_of: dict[str, torch.Tensor] = {}
    replaced: dict[str, O.Op] = {}
    for node in layers:
        assert isinstance(node.op, O.Linear | O.Conv | O.ConvTranspose)
        # a private copy of each weight: its leaf replaces that array only, even for tied weights
        op = dataclasses.replace(node.op, weight=np.array(node.op.weight, dtype=np.float64))
        leaf_of[node.name] = leaves[id(op.weight)] = torch.tensor(op.weight, requires_grad=True)
        replaced[node.name] = op
    nodes = tuple(dataclasses.replace(n, op=replaced[n.name]) if n.name in replaced else n for n in graph.nodes)
    ex = _WeightLeaves(dataclasses.replace(graph, nodes=nodes), leaves)
    sizes = [int(np.prod(spec.shape)) for spec in graph.inputs]
    best = {node.name: 0.0 for node in layers}
    for row in np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1):
        check_deadline()
        parts = np.split(row, np.cumsum(sizes)[:-1])
        outs = ex(*(torch.from_numpy(np.ascontiguousarray(p).reshape(spec.shape))
                    for spec, p in zip(graph.inputs, parts, strict=True)))
        y = torch.cat([o.reshape(-1) for o in outs])
        if iterations is None:
            # one backward per output gives that row of every layer's Jacobian at once
            rows: dict[str, list[np.ndarray]] = {node.name: [] for node in layers}
            for k in range(int(y.numel())):
                grads = torch.autograd.grad(
                    y[k], [leaf_of[n.name] for n in layers], retain_graph=True, allow_unused=True
                )
                for node, g in zip(layers, grads, strict=True):
                    size = leaf_of[node.name].numel()
                    rows[node.name].append(np.zeros(size) if g is None else g.detach().reshape(-1).numpy())
            for node in layers:
                best[node.name] = max(best[node.name], _spectral(rows[node.name]))
        else:
            # one reverse pass with a seeded unit u: ||J_l^T u|| <= ||J_l|| for every layer at once
            u = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal(int(y.numel())))
            u = u / torch.linalg.vector_norm(u)
            grads = torch.autograd.grad(
                y, [leaf_of[n.name] for n in layers], grad_outputs=u, retain_graph=True, allow_unused=True
            )
            for node, g in zip(layers, grads, strict=True):
                if g is not None:
                    best[node.name] = max(best[node.name], float(torch.linalg.vector_norm(g)))
            if iterations:
                for node in layers:
                    check_deadline()
                    norm = _power_norm(y, leaf_of[node.name], seed, iterations)
                    best[node.name] = max(best[node.name], norm)
    return best


def parameter_sensitivity(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    samples: np.ndarray,
    *,
    seed: int = 0,
    max_measured: int = MAX_MEASURED_SAMPLES,
    budget_s: float = 10.0,
) -> ParameterResult:
    """SA401's per-layer certified bound (at the samples) and autograd value, for every linear
    and conv layer of ``graph`` (with shapes; ``op_bounds`` keyed by node output, as for compose);
    the autograd measurement planned with ``budget_s`` (analyses.plan.PARAMETER_SHARE of it)."""
    from stabaudit.analyses import plan
    from stabaudit.analyses.composition import output_sensitivities
    from stabaudit.analyses.lower import forward_macs

    layers = [node for node in graph.nodes if node.op.type in O.LINEAR_MAPS]
    norms = {node.name: 0.0 for node in layers}
    n = 0
    if layers:
        for env in forward_values(graph, samples):
            n += 1
            for node in layers:
                x = env[node.inputs[0]].reshape(-1).numpy()
                norms[node.name] = max(norms[node.name], float(np.linalg.norm(x)))
    sens = output_sensitivities(graph, op_bounds)
    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    outputs = sum(int(np.prod(shapes[name])) for name in graph.outputs)
    macs = forward_macs(graph, shapes)
    call = plan.call_macs(len(graph.nodes))
    passes = plan.reverse_passes(plan.PARAMETER_SHARE * budget_s, macs, call)
    count, iterations = plan.measurement_plan(passes, outputs, len(layers), min(max_measured, len(samples)))
    # charged for what the plan runs (its smallest plan, one sample's shared probe, may exceed the share)
    run = max(passes, plan.measurement_passes(count, iterations, outputs, len(layers)))
    plan.spend(run * (plan.PASS_FORWARDS * max(macs, 1.0) + call) / plan.LOWER_MACS_PER_S)
    head = np.asarray(samples)[:count]
    measured = _measured(graph, layers, head, seed, iterations) if layers else {}
    out = []
    for node in layers:
        input_norm = _up(norms[node.name] * (1.0 + MARGIN))
        downstream = float(sens.get(node.output, 0.0))
        factor = weight_factor(node.op)
        # products rounded upward: an upper bound of the exact product (IEEE 754 round to nearest)
        bound = _up(_up(downstream * factor) * input_norm) if downstream > 0 else 0.0
        out.append(
            LayerSensitivity(
                layer=node.name,
                op=node.op.type.value,
                bound=bound if math.isfinite(bound) else None,
                measured=measured[node.name],
                input_norm=input_norm,
                downstream=downstream,
                factor=factor,
            )
        )
    return ParameterResult(samples=n, measured_samples=int(head.shape[0]) if layers else 0, layers=tuple(out),
                           power_iterations=iterations if layers else None)
