"""The parameters training updates, named as the source model names them, and how the IR's arrays derive from them."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class Origin(str, Enum):
    """Where a parameter comes from, as the report names it."""

    MODULE = "module parameter"  # a TorchScript module's own nn.Parameter
    INITIALIZER = "initializer"  # an ONNX graph initializer or Constant node
    FOLDED = "folded constant"  # an ONNX constant computed at load time from other constants


@dataclass(frozen=True, kw_only=True)
class SourceParameter:
    """One parameter array of the source model.

    ``role`` says how the model uses it ("Conv 'conv1' weight"); ``default`` whether training is
    assumed to update it when the user lists no parameters (weights and biases of parameterised
    operators: yes; scalar constants, normalisation constants of Sub/Div: no).
    """

    name: str
    shape: tuple[int, ...]
    origin: Origin
    role: str = ""
    default: bool = True


@dataclass(frozen=True, kw_only=True, eq=False)
class Term:
    """``coefficient * P`` with P a source parameter (transposed first when ``transpose``)."""

    parameter: str
    coefficient: np.ndarray | float = 1.0
    transpose: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class Binding:
    """The IR array ``field`` of node ``node`` = the sum of ``terms``, reshaped (or,
    for a single-element sum, broadcast) to the array's shape. Every binding is linear in the
    source parameters, so the Hessian over them is exact through the executor."""

    node: str
    field: str
    terms: tuple[Term, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class GraphParameters:
    """A graph file's parameters (ONNX): differentiated through the engine's executor, with the
    bound IR arrays rebuilt from them."""

    parameters: tuple[SourceParameter, ...]
    values: Mapping[str, np.ndarray]
    bindings: tuple[Binding, ...]
    notes: tuple[str, ...] = ()
    source: str = "ONNX initializers"


@dataclass(frozen=True, kw_only=True, eq=False)
class ModuleParameters:
    """A module's own parameters (TorchScript): differentiated through the module as executed, so
    BatchNorm's gamma and beta are parameters and nothing is folded; buffers and constants are not."""

    module: Any  # torch.jit.ScriptModule; None outside the isolated process that loaded it (loaders.ts_child)
    parameters: tuple[SourceParameter, ...]
    notes: tuple[str, ...] = ()
    source: str = "TorchScript module parameters"


Parameterisation = GraphParameters | ModuleParameters


def select(parameters: Sequence[SourceParameter], patterns: Sequence[str] | None) -> tuple[SourceParameter, ...]:
    """The parameters training updates: those matching any glob of ``patterns`` (fnmatch on the
    name), else the defaults."""
    if patterns is None:
        return tuple(p for p in parameters if p.default)
    return tuple(p for p in parameters if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))


def unmatched(parameters: Sequence[SourceParameter], patterns: Sequence[str]) -> list[str]:
    """The globs of ``patterns`` that match no parameter (a typo the user should hear about)."""
    return [pat for pat in patterns if not any(fnmatch.fnmatchcase(p.name, pat) for p in parameters)]


@dataclass
class BindingRecorder:
    """Collects source parameters and bindings while a loader translates a graph."""

    parameters: dict[str, SourceParameter] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)

    def parameter(self, name: str, value: np.ndarray, origin: Origin, role: str, default: bool) -> None:
        """Register ``name``; a parameter read by several operators is a default if any reader makes it one."""
        known = self.parameters.get(name)
        if known is not None:
            if default and not known.default:
                self.parameters[name] = SourceParameter(
                    name=name, shape=known.shape, origin=known.origin, role=role, default=True)
            return
        self.parameters[name] = SourceParameter(
            name=name, shape=tuple(int(d) for d in value.shape), origin=origin, role=role, default=default)
        self.values[name] = value

    def bind(self, node: str, field_name: str, terms: Sequence[Term]) -> None:
        self.bindings.append(Binding(node=node, field=field_name, terms=tuple(terms)))

    def finish(self, nodes: set[str], notes: Sequence[str] = ()) -> GraphParameters:
        """The recorded parameterisation restricted to the IR nodes that were kept."""
        bindings = tuple(b for b in self.bindings if b.node in nodes)
        used = {t.parameter for b in bindings for t in b.terms}
        params = tuple(p for name, p in self.parameters.items() if name in used)
        return GraphParameters(
            parameters=params,
            values={p.name: self.values[p.name] for p in params},
            bindings=bindings,
            notes=tuple(notes),
        )
