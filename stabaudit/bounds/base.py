"""The per-operator bound contract: guarantees, bounds, the rule context and the rule registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from stabaudit.ir.graph import Node
from stabaudit.registry import Registry


class Guarantee(str, Enum):
    """What a number promises (STYLE convention 2)."""

    UPPER = "upper"  # a sound upper bound, float rounding included
    LOWER = "lower"  # a sound lower bound
    ESTIMATE = "estimate"  # neither: a heuristic value


@dataclass(frozen=True, kw_only=True)
class Bound:
    value: float
    guarantee: Guarantee
    method: str

    @property
    def certified(self) -> bool:
        return self.guarantee is not Guarantee.ESTIMATE


class Combine(str, Enum):
    """How a node's Lipschitz constant composes with those of its inputs."""

    CHAIN = "chain"  # unary: L_out = upper * L_in
    SUM = "sum"  # L_out = sum_i gain_i * L_i (triangle inequality: Add, Sub)
    STACK = "stack"  # L_out = sqrt(sum_i (gain_i * L_i)^2) (disjoint coordinates: Concat)


@dataclass(frozen=True, kw_only=True)
class OpBound:
    """Lipschitz constant (L2 -> L2) of one operator at the model's shapes.

    ``upper``: UPPER when sound, else ESTIMATE. ``lower``: LOWER when sound, else ESTIMATE, or None.
    Multi-input operators give ``input_gains`` (one per input) and their ``combine`` rule.
    ``jump``: 0 for a continuous operator. An operator that switches branch as executed (torch's
    thresholded Softplus) is op = s + e with s its smooth part, the map that ``upper`` and
    ``lower`` are about, and ||e(u)||_2 <= jump for every input u (a certified upper bound).
    """

    upper: Bound
    lower: Bound | None = None
    combine: Combine = Combine.CHAIN
    input_gains: tuple[float, ...] = ()
    jump: float = 0.0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BoundSettings:
    seed: int = 0
    power_iterations: int = 50
    device: str = "cpu"
    # upper bounds only, by the cheapest certified method: convolutions skip the circulant
    # certificate (its cheaper bounds instead, numerics._conv_fallback) and the power iteration
    # of their lower bound (None). For consumers that need some sound bound and read no lower one
    # (the float64 error model of the lower-bound searches)
    quick: bool = False


@dataclass(frozen=True, kw_only=True)
class RuleContext:
    """What a rule may know besides its node: the static shapes around it and the settings."""

    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    settings: BoundSettings = field(default_factory=BoundSettings)


@dataclass(frozen=True, kw_only=True, eq=False)
class Interval:
    """A sound enclosure lo <= v <= hi (element-wise, float64, the tensor's full static shape) of
    every value a tensor takes while the model's inputs range over the audit domain."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    def magnitude(self) -> np.ndarray:
        """max(|lo|, |hi|): an upper bound of |v| entry by entry."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))


Rule = Callable[[Node, RuleContext], OpBound]
RULES: Registry = Registry("bound rules")
