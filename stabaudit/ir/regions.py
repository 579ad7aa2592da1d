"""Pattern matcher of linear regions: the maximal subgraphs that are affine in one value, fan-out and re-joining included."""

from __future__ import annotations

from dataclasses import dataclass

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node

# Operators whose output is an affine function of their (variable) inputs: a region is built of
# these only. Biases, shifts and pad values are translations; the rest is linear.
AFFINE_IN_INPUTS: frozenset[O.OpType] = frozenset(
    {
        O.OpType.LINEAR, O.OpType.CONV, O.OpType.CONV_TRANSPOSE, O.OpType.AFFINE,
        O.OpType.ADD, O.OpType.SUB, O.OpType.RESHAPE, O.OpType.TRANSPOSE, O.OpType.PAD,
        O.OpType.CONCAT, O.OpType.AVG_POOL, O.OpType.GLOBAL_AVG_POOL, O.OpType.REDUCE_SUM,
        O.OpType.REDUCE_MEAN, O.OpType.SLICE, O.OpType.GATHER, O.OpType.TILE,
    }
)


# Of those, the selections: their regions may grow too large to form, where the regions on
# either side of them would not be (``find_linear_regions``' ``selections``)
SELECTIONS: frozenset[O.OpType] = frozenset({O.OpType.SLICE, O.OpType.GATHER, O.OpType.TILE, O.OpType.WHERE})


def affine_in_inputs(op: O.Op, *, selections: bool = True) -> bool:
    """Whether the op's output is an affine function of its variable inputs: the types of
    AFFINE_IN_INPUTS, and a Where whose condition is a constant mask (each entry is one branch's
    entry, or a constant: a selection plus a translation); without ``selections``, none of
    SELECTIONS."""
    if not selections and op.type in SELECTIONS:
        return False
    return op.type in AFFINE_IN_INPUTS or (isinstance(op, O.Where) and not op.test)


@dataclass(frozen=True, kw_only=True, eq=False)
class LinearRegion:
    """``output`` = an affine function of the single value ``x``, computed by ``nodes`` (every node
    between them, in topological order; each reads only ``x`` or values of the region).

    ``output`` is maximal: it is a graph output, or a node outside the region reads it."""

    x: str
    output: str
    nodes: tuple[Node, ...]

    @property
    def scaling_nodes(self) -> int:
        """How many nodes may change distances (all but reshapes, transposes, pads, concats)."""
        return sum(1 for n in self.nodes if n.op.type not in O.STRUCTURAL)


def find_linear_regions(graph: Graph, *, min_scaling: int = 2, selections: bool = True) -> tuple[LinearRegion, ...]:
    """The maximal single-input linear regions of the nodes the outputs depend on, in topological
    order of their outputs, with at least ``min_scaling`` nodes that may change distances (below
    two, composing the per-node bounds is already as tight as bounding the region as a whole);
    without ``selections``, Slice, Gather, Tile and Where end a region as non-affine nodes do.

    Every value gets a root: a graph input or the output of a non-affine node is its own root; the
    output of an affine node whose inputs share one root has that root, and one whose inputs have
    several roots (x + relu(x)) starts a new root. A value whose root is another value is then an
    affine function of that root alone, through the affine nodes between them.
    """
    needed = graph.needed_nodes()
    root: dict[str, str] = {name: name for name in graph.input_names}
    for node in needed:
        roots = {root.get(name, name) for name in node.inputs}
        if affine_in_inputs(node.op, selections=selections) and len(roots) == 1:
            root[node.output] = roots.pop()
        else:
            root[node.output] = node.output
    readers: dict[str, list[Node]] = {}
    for node in needed:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    outputs = set(graph.outputs)
    producers = {node.output: node for node in needed}
    order = {id(node): i for i, node in enumerate(needed)}
    regions: list[LinearRegion] = []
    for node in needed:
        v, x = node.output, root[node.output]
        if x == v:
            continue
        inside = [r for r in readers.get(v, []) if root[r.output] == x]
        if v not in outputs and len(inside) == len(readers.get(v, [])):
            continue  # every reader continues the region: not maximal
        members: dict[int, Node] = {}
        stack = [v]
        while stack:
            value = stack.pop()
            if value == x:
                continue
            producer = producers[value]
            if id(producer) not in members:
                members[id(producer)] = producer
                stack.extend(producer.inputs)
        region = LinearRegion(
            x=x, output=v, nodes=tuple(sorted(members.values(), key=lambda n: order[id(n)]))
        )
        if region.scaling_nodes >= min_scaling:
            regions.append(region)
    return tuple(regions)
