"""ReLU-type units at the samples: shares near a kink (SA301 clarke.kinks), dead units (SA303)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node

if TYPE_CHECKING:
    import torch

# The piecewise-linear (ReLU-type) activations and where their kinks are (in the pre-activation):
# Relu, LeakyRelu and PRelu at 0; Clip (HardTanh, ReLU6) at its min and max; HardSigmoid where
# alpha*z + beta is 0 or 1; HardSwish at -3 and 3. Smooth activations have no kink; max pooling
# ties and Abs are out of scope.
KINKED: tuple[type[O.Op], ...] = (O.Relu, O.LeakyRelu, O.PRelu, O.Clip, O.HardSigmoid, O.HardSwish)


@dataclass(frozen=True, kw_only=True)
class LayerUnits:
    """One ReLU-type layer over the samples. A unit is one entry of the layer's pre-activation
    tensor for one input (a conv layer has channels x positions units)."""

    layer: str
    op: str
    units: int
    near_kink: int  # (sample, unit) pairs with |z - kink| <= eps
    share: float  # near_kink / (samples * units)
    dead: int  # units with zero slope at every sample (ReLU: z <= 0 at every sample)


@dataclass(frozen=True, kw_only=True)
class ActivationResult:
    samples: int
    eps: float
    layers: tuple[LayerUnits, ...]

    @property
    def max_share(self) -> float:
        return max((layer.share for layer in self.layers), default=0.0)

    @property
    def dead(self) -> int:
        return sum(layer.dead for layer in self.layers)


def forward_values(graph: Graph, samples: np.ndarray) -> Iterator[dict[str, torch.Tensor]]:
    """Every value of the graph for each sample ([N, ...], each sample the inputs' entries in
    order), evaluated in float64 one sample at a time (batch axis 1, as the model declares)."""
    import torch

    from stabaudit.ir.executor import Executor
    from stabaudit.limits import check_deadline

    ex = Executor(graph, dtype=torch.float64)
    sizes = [int(np.prod(spec.shape)) for spec in graph.inputs]
    flat = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
    with torch.no_grad():
        for row in flat:
            check_deadline()
            parts = np.split(row, np.cumsum(sizes)[:-1])
            inputs = {
                spec.name: torch.from_numpy(np.ascontiguousarray(part).reshape(spec.shape))
                for spec, part in zip(graph.inputs, parts, strict=True)
            }
            yield ex.run(inputs, keep=True)


def _kinks(op: O.Op) -> list[float]:
    match op:
        case O.Relu():
            return [0.0]
        case O.LeakyRelu(alpha=alpha):
            return [] if alpha == 1.0 else [0.0]
        case O.PRelu():
            return [0.0]  # units whose slope is 1 are masked out in _near
        case O.Clip(min=lo, max=hi):
            return [k for k in (lo, hi) if k is not None]
        case O.HardSigmoid(alpha=alpha, beta=beta):
            return [] if alpha == 0 else [-beta / alpha, (1.0 - beta) / alpha]
        case O.HardSwish():
            return [-3.0, 3.0]
    return []


def _near(op: O.Op, z: np.ndarray, eps: float) -> np.ndarray:
    """Units of one sample within eps of a kink (a unit exactly at its kink is counted)."""
    near = np.zeros(z.shape, dtype=bool)
    for k in _kinks(op):
        near |= np.abs(z - k) <= eps
    if isinstance(op, O.PRelu):
        near &= np.broadcast_to(np.asarray(op.slope, dtype=np.float64), z.shape) != 1.0
    return near


def _flat(op: O.Op, z: np.ndarray) -> np.ndarray:
    """Units of one sample on a zero-slope piece (for ReLU: z <= 0; PyTorch's slope at 0 is 0)."""
    match op:
        case O.Relu():
            return z <= 0
        case O.LeakyRelu(alpha=alpha):
            return (z <= 0) & (alpha == 0.0)
        case O.PRelu(slope=slope):
            return (z <= 0) & (np.broadcast_to(np.asarray(slope, dtype=np.float64), z.shape) == 0.0)
        case O.Clip(min=lo, max=hi):
            below = z <= lo if lo is not None else np.zeros(z.shape, dtype=bool)
            above = z >= hi if hi is not None else np.zeros(z.shape, dtype=bool)
            return below | above
        case O.HardSigmoid(alpha=alpha, beta=beta):
            t = alpha * z + beta
            return (t <= 0) | (t >= 1)
        case O.HardSwish():
            return z <= -3.0
    return np.zeros(z.shape, dtype=bool)


def kinked_nodes(graph: Graph) -> list[Node]:
    return [node for node in graph.nodes if isinstance(node.op, KINKED)]


def activation_units(graph: Graph, samples: np.ndarray, *, eps: float) -> ActivationResult:
    """Per ReLU-type layer: how many (sample, unit) pairs lie within ``eps`` of a kink and how many
    units are flat (zero slope) at every sample. Exact for these samples up to the float64
    forward pass (no bound is involved: it is a measurement)."""
    nodes = kinked_nodes(graph)
    near = {node.name: 0 for node in nodes}
    alive: dict[str, np.ndarray] = {}
    n = 0
    if nodes:
        for env in forward_values(graph, samples):
            n += 1
            for node in nodes:
                z = env[node.inputs[0]].numpy()
                near[node.name] += int(_near(node.op, z, eps).sum())
                live = ~_flat(node.op, z)
                alive[node.name] = live if node.name not in alive else alive[node.name] | live
    layers = []
    for node in nodes:
        units = int(alive[node.name].size) if node.name in alive else 0
        pairs = n * units
        layers.append(
            LayerUnits(
                layer=node.name,
                op=node.op.type.value,
                units=units,
                near_kink=near[node.name],
                share=near[node.name] / pairs if pairs else 0.0,
                dead=int((~alive[node.name]).sum()) if node.name in alive else 0,
            )
        )
    return ActivationResult(samples=n, eps=float(eps), layers=tuple(layers))
