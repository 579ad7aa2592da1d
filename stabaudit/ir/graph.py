"""The typed graph: values with static shapes, nodes with canonical ops, validation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from stabaudit.errors import ModelLoadError
from stabaudit.ir.ops import Op


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Node:
    """One operator application: ``output = op(*inputs)``; ``name`` is the layer name shown."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    source_op: str = ""  # the operator(s) of the source model it came from, e.g. "Conv+BatchNormalization"

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op.type.value}, {self.inputs} -> {self.output!r})"


@dataclass(frozen=True, kw_only=True, eq=False)
class Graph:
    """A validated DAG in topological order, with the static shape of every value."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", MappingProxyType(dict(self.shapes)))

    def __getstate__(self) -> dict[str, object]:
        """Picklable (a TorchScript graph crosses from its isolated loading process): the
        read-only view of ``shapes`` travels as a dict."""
        return {**self.__dict__, "shapes": dict(self.shapes)}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def producers(self) -> dict[str, Node]:
        return {node.output: node for node in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                users.setdefault(name, []).append(node)
        return users

    def needed_nodes(self) -> list[Node]:
        """The nodes the graph outputs depend on, in topological order."""
        producers = self.producers()
        wanted: set[str] = set()
        stack = list(self.outputs)
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.output in wanted:
                continue
            wanted.add(node.output)
            stack.extend(node.inputs)
        return [node for node in self.nodes if node.output in wanted]

    def parameter_count(self) -> int:
        return sum(node.op.parameter_count() for node in self.nodes)

    def op_counts(self) -> Counter[str]:
        return Counter(node.op.type.value for node in self.nodes)

    def validate(self) -> Graph:
        """Check single assignment, topological order, arity and that every output is defined."""
        defined = set(self.input_names)
        problems: list[str] = []
        for node in self.nodes:
            arity = type(node.op).arity
            if arity >= 0 and len(node.inputs) != arity:
                problems.append(f"node {node.name!r} ({node.op.type.value}) takes {arity} inputs, got {len(node.inputs)}")
            for name in node.inputs:
                if name not in defined:
                    problems.append(f"node {node.name!r} reads {name!r} before it is defined")
            if node.output in defined:
                problems.append(f"value {node.output!r} is assigned twice")
            defined.add(node.output)
        for name in self.outputs:
            if name not in defined:
                problems.append(f"graph output {name!r} is never computed")
        if not self.outputs:
            problems.append("graph has no outputs")
        if problems:
            raise ModelLoadError(problems[0], problems=problems)
        return self
