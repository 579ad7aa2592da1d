"""ONNX If whose condition is a constant of the audit: the branch it takes is inlined.

Exporters write control flow for what a model is configured with rather than what it computes: a
sample-rate switch (``if sr == 16000``), a shape test (``if x.shape[1] == 512``), a flag. Once the
integer inputs are held at values (``--arg NAME=VALUE`` gives them) and shapes are static, such a
condition folds to a constant, and the If is the branch it takes: the branch's nodes are translated
in its place as if they were the graph's, and the If's outputs are the branch's outputs. A
condition computed from the values of the audited inputs is control flow that depends on the
data; it is refused (SA901), as a jump of the function would make any Lipschitz bound false.

Names: a branch reads the values of the graphs around it by name and defines its own; ONNX forbids
a branch to reuse a name of the scopes around it, but two branches of different If nodes may use
the same names. A name the branch defines that the walk already knows is renamed in the branch
(and in the branches nested in it) before its nodes are translated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, wrap_node

SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})


@dataclass(frozen=True)
class Branch:
    """The taken branch of ``node``: its nodes (wrapped, named under the If), its stored tensors,
    and the pairs (If output, branch output) that the outputs bind once the nodes are translated."""

    node: OnnxNode
    taken: bool
    nodes: tuple[OnnxNode, ...]
    initializers: Mapping[str, np.ndarray]
    bindings: tuple[tuple[str, str], ...]


def subgraph_reads(proto: Any) -> set[str]:
    """Every tensor name read inside the subgraphs of the NodeProto ``proto`` (If, Loop and Scan
    read the values around them without listing them as inputs), recursively."""
    import onnx

    names: set[str] = set()
    for attr in proto.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names |= subgraph_reads(inner)
    return names


def _condition(node: OnnxNode, ctx: Context) -> bool:
    name = node.inputs[0] if node.inputs else ""
    value = ctx.const(name)
    if value is None:
        raise Unsupported("If(on a condition computed from the values of the audited inputs)")
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise ModelLoadError(f"If condition {name!r} has {flat.size} elements, expected one")
    return bool(flat[0])


def _renamed(graph: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of the GraphProto ``graph`` with the names in ``mapping`` replaced everywhere in it
    and in the subgraphs nested in it (node inputs and outputs, stored tensors, graph outputs)."""
    import onnx

    out = onnx.GraphProto()
    out.CopyFrom(graph)

    def visit(g: Any) -> None:
        for t in g.initializer:
            t.name = mapping.get(t.name, t.name)
        for o in g.output:
            o.name = mapping.get(o.name, o.name)
        for n in g.node:
            n.input[:] = [mapping.get(i, i) for i in n.input]
            n.output[:] = [mapping.get(o, o) for o in n.output]
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(out)
    return out


def _defined(graph: Any) -> list[str]:
    """The names a branch defines at its own level: its stored tensors and its nodes' outputs."""
    return [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output if o]


def taken_branch(node: OnnxNode, ctx: Context, known: Iterable[str]) -> Branch:
    """The branch that If ``node`` takes, ready to translate in its place; ``known``: the names the
    walk has defined so far (a branch's name among them is renamed). Raises Unsupported when the
    condition is not a constant of the audit."""
    from onnx import numpy_helper

    taken = _condition(node, ctx)
    key = "then_branch" if taken else "else_branch"
    attr = next((a for a in node.proto.attribute if a.name == key), None) if node.proto is not None else None
    if attr is None:
        raise ModelLoadError(f"If node {node.name!r} has no {key}")
    graph = attr.g
    seen = set(known)
    clashes = [name for name in _defined(graph) if name in seen]
    if clashes:
        graph = _renamed(graph, {name: f"{node.name}/{name}" for name in clashes})
    if len(graph.output) != len(node.outputs):
        raise ModelLoadError(f"If node {node.name!r}: its {key} has {len(graph.output)} outputs, the node "
                             f"{len(node.outputs)}")
    nodes = []
    for index, proto in enumerate(graph.node):
        inner = wrap_node(proto, index, node.opset)
        sep = "" if inner.name.startswith("/") else "/"
        nodes.append(replace(inner, name=f"{node.name}{sep}{inner.name}"))
    stored = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    bindings = tuple((out, inner.name) for out, inner in zip(node.outputs, graph.output, strict=True) if out)
    return Branch(node=node, taken=taken, nodes=tuple(nodes), initializers=stored, bindings=bindings)


def _branch_uses(branch: Branch) -> list[str]:
    """The names the branch's nodes and outputs read (for the walk's use counts)."""
    names = [name for n in branch.nodes for name in n.present_inputs]
    names += [name for n in branch.nodes if n.op_type in SUBGRAPH_OPS and n.proto is not None
              for name in subgraph_reads(n.proto)]
    return names + [inner for _, inner in branch.bindings]


def bind_outputs(branch: Branch, ctx: Context, poisoned: set[str]) -> None:
    """The If's outputs are the branch's: the same constant, condition, left-out value or variable."""
    for out, inner in branch.bindings:
        if inner in poisoned:
            poisoned.add(out)
        elif ctx.is_const(inner):
            ctx.constants[out] = ctx.const(inner)  # type: ignore[assignment]
        elif inner in ctx.conditions:
            ctx.conditions[out] = ctx.conditions[inner]
        elif inner in ctx.dropped:
            ctx.dropped[out] = ctx.dropped[inner]
        else:
            ctx.aliases[out] = ctx.var(inner)


def _branch_constants(nodes: Sequence[OnnxNode], read: Any) -> dict[str, np.ndarray]:
    """The values of the branch's Constant nodes (``read``: a Constant node's value), for the
    pattern fusion that runs on the branch before it is translated."""
    out = {}
    for n in nodes:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.outputs:
            try:
                out[n.outputs[0]] = read(n)
            except ModelLoadError:
                continue
    return out


def inline(node: OnnxNode, ctx: Context, known: Iterable[str], read_constant: Any) -> tuple[list[OnnxNode], Branch,
                                                                                         list[str]]:
    """(the nodes to translate in place of If ``node``, the Branch whose outputs bind once they are,
    the labels of the patterns fused among them): the taken branch (``taken_branch``; ``known``: the
    names in use), its patterns fused as the graph's are (its Constant nodes' values read with
    ``read_constant``), its stored tensors made constants of ``ctx`` and its reads counted as
    uses. Raises Unsupported when the condition is not a constant of the audit."""
    from stabaudit.loaders.onnx_ops.patterns import ANCHORS, fuse_patterns

    branch = taken_branch(node, ctx, known)
    inner: list[OnnxNode] = list(branch.nodes)
    labels: list[str] = []
    if any(n.op_type in ANCHORS for n in inner):  # the patterns of the branch (GELU, LayerNorm, ..)
        inner, labels = fuse_patterns(inner, {**ctx.constants, **branch.initializers,
                                              **_branch_constants(inner, read_constant)},
                                      {b for _, b in branch.bindings})
    for name, value in branch.initializers.items():
        ctx.constants[name] = value
        ctx.stored.add(name)
    ctx.uses.update(_branch_uses(branch))  # type: ignore[attr-defined]
    return inner, branch, labels


__all__ = ["SUBGRAPH_OPS", "Branch", "bind_outputs", "inline", "subgraph_reads", "taken_branch"]
