"""Pattern matchers over the IR: residual blocks x -> S(x) + h*f(x) with S the identity or a linear map."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node


class Shortcut(str, Enum):
    IDENTITY = "identity"  # x + h*f(x)
    PROJECTION = "projection"  # P x + h*f(x), P a Linear/Conv/ConvTranspose (BN folded or not)


@dataclass(frozen=True, kw_only=True, eq=False)
class ResidualMatch:
    """One residual block: ``add`` computes S(x) + branch(x) and ``branch`` = h*f.

    ``branch`` holds every node between ``x`` and ``branch_output`` in topological order, the
    scale node included; ``scale`` is the explicit scale at the end of the branch (an Affine with
    a scale and no shift), ``h`` = max |scale| (1 without one). ``projection`` is the linear node
    of a projection shortcut.
    """

    add: Node
    x: str
    shortcut: Shortcut
    branch: tuple[Node, ...]
    branch_output: str
    projection: Node | None = None
    scale: Node | None = None
    h: float = 1.0

    @property
    def name(self) -> str:
        return self.add.name

    @property
    def inner(self) -> tuple[Node, ...]:
        """The branch without its explicit scale: the nodes of g with branch = scale * g."""
        return tuple(n for n in self.branch if n is not self.scale)

    @property
    def inner_output(self) -> str:
        return self.scale.inputs[0] if self.scale is not None else self.branch_output


def _ancestors(value: str, producers: dict[str, Node]) -> set[str]:
    """Every value ``value`` depends on, itself included."""
    seen: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        node = producers.get(v)
        if node is not None:
            stack.extend(node.inputs)
    return seen


def _branch(graph: Graph, x: str, out: str, producers: dict[str, Node]) -> tuple[Node, ...] | None:
    """The nodes on the paths from ``x`` to ``out``, if they form a function of ``x`` alone.

    None when ``out`` does not depend on ``x``, or some node on the way also reads a value that
    does not depend on ``x`` (then the branch is no function f(x) and the Add no residual block
    of ``x``).
    """
    above = _ancestors(out, producers)
    if x not in above or x == out:
        return None
    depends = {x}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.output in above and any(name in depends for name in node.inputs):
            depends.add(node.output)
            nodes.append(node)
    for node in nodes:
        if any(name not in depends for name in node.inputs):
            return None
    return tuple(nodes)


def _scale(
    branch: tuple[Node, ...], out: str, shapes: dict[str, tuple[int, ...]]
) -> tuple[Node | None, float]:
    """The explicit scale at the end of the branch and h = max |scale|, or (None, 1.0).

    A scale is an Affine without shift that produces the branch output, keeps the shape of its
    input, has finite values and follows at least one other branch node (a branch that is only
    a multiplication, x + a*x, has f(x) = a*x and h = 1).
    """
    last = branch[-1]
    op = last.op
    if len(branch) < 2 or last.output != out or not isinstance(op, O.Affine):
        return None, 1.0
    if op.scale is None or op.shift is not None:
        return None, 1.0
    if shapes and tuple(shapes.get(last.inputs[0], ())) != tuple(shapes.get(out, ())):
        return None, 1.0  # the scale broadcasts to a larger shape: not a diagonal map
    scale = np.asarray(op.scale, dtype=np.float64)
    if scale.size == 0 or not np.all(np.isfinite(scale)):
        return None, 1.0
    return last, float(np.max(np.abs(scale)))


def find_residual_blocks(graph: Graph) -> tuple[ResidualMatch, ...]:
    """Every Add that is a residual block, in topological order.

    An Add(a, b) is a block when one input is x and the other depends on x through a branch that
    is a function of x alone (identity shortcut), or when one input is the output of a single
    linear map P (Linear, Conv, ConvTranspose; a folded BatchNorm is part of it) of x and the
    other a branch of x (projection shortcut). The identity reading wins when both apply.
    """
    producers = graph.producers()
    shapes = dict(graph.shapes)
    found: list[ResidualMatch] = []
    for node in graph.nodes:
        if not isinstance(node.op, O.Add) or node.inputs[0] == node.inputs[1]:
            continue
        match = _identity(graph, node, producers, shapes) or _projection(
            graph, node, producers, shapes
        )
        if match is not None:
            found.append(match)
    return tuple(found)


def _identity(
    graph: Graph, add: Node, producers: dict[str, Node], shapes: dict[str, tuple[int, ...]]
) -> ResidualMatch | None:
    for i in (0, 1):
        x, out = add.inputs[i], add.inputs[1 - i]
        branch = _branch(graph, x, out, producers)
        if branch is None:
            continue
        if shapes and tuple(shapes.get(x, ())) != tuple(shapes.get(add.output, ())):
            continue  # x is broadcast by the Add: x + f(x) is not a map of x's space to itself
        scale, h = _scale(branch, out, shapes)
        return ResidualMatch(
            add=add, x=x, shortcut=Shortcut.IDENTITY, branch=branch, branch_output=out,
            scale=scale, h=h,
        )
    return None


def _projection(
    graph: Graph, add: Node, producers: dict[str, Node], shapes: dict[str, tuple[int, ...]]
) -> ResidualMatch | None:
    for i in (0, 1):
        p = producers.get(add.inputs[i])
        if p is None or p.op.type not in O.LINEAR_MAPS or len(p.inputs) != 1:
            continue
        x, out = p.inputs[0], add.inputs[1 - i]
        branch = _branch(graph, x, out, producers)
        if branch is None or any(n is p for n in branch):
            continue
        scale, h = _scale(branch, out, shapes)
        return ResidualMatch(
            add=add, x=x, shortcut=Shortcut.PROJECTION, branch=branch, branch_output=out,
            projection=p, scale=scale, h=h,
        )
    return None
