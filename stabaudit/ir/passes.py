"""Graph rewrites that keep the function: folding per-channel affine maps into the linear op before."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node


def _channel_axis(op: O.Op, rank: int) -> int:
    """The output channel axis: the last axis of a Linear, axis 1 of a (transposed) convolution."""
    return rank - 1 if isinstance(op, O.Linear) else 1


def _per_channel(param: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``param`` as a float64 vector over the channels of ``shape`` if it broadcasts along ``axis`` only.

    Returns None when ``param`` would vary along another axis, would change the shape of the
    result by broadcasting, or holds non-finite values (those stay visible on their own node).
    """
    channels = shape[axis]
    p = np.asarray(param, dtype=np.float64)
    if p.ndim > len(shape) or not np.all(np.isfinite(p)):
        return None
    offset = len(shape) - p.ndim  # numpy broadcasting aligns trailing axes
    for j, size in enumerate(p.shape):
        if size == 1:
            continue
        if offset + j != axis or size != channels:
            return None
    return np.broadcast_to(p.reshape(-1) if p.size > 1 else p.reshape(1), (channels,)).copy()


def _fold(linear: Node, affine: Node, scale: np.ndarray | None, shift: np.ndarray | None) -> Node:
    """The linear node whose output is ``affine(linear(x))``, computed in float64.

    Each folded weight is one float64 product of stored values, so it carries a relative
    rounding error of at most u = 2^-53 (IEEE 754 round to nearest); entrywise |E| <= u |W'|
    gives ||E||_2 <= u ||W'||_F, far below the margins of the bound rules.
    """
    op = linear.op
    assert isinstance(op, O.Linear | O.Conv | O.ConvTranspose)
    w = np.asarray(op.weight, dtype=np.float64)
    bias = None if op.bias is None else np.asarray(op.bias, dtype=np.float64)
    if scale is not None:
        match op:
            case O.Linear():  # weight [out, in]: scale the rows
                w = w * scale[:, None]
            case O.Conv():  # weight [C_out, C_in/groups, k...]
                w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            case O.ConvTranspose(groups=groups):
                # weight [C_in, C_out/groups, k...]: input channel i belongs to group
                # i // (C_in/groups), and its column j feeds output channel group*(C_out/groups) + j
                c_in, c_out_g = w.shape[0], w.shape[1]
                group = np.arange(c_in) // (c_in // groups)
                index = group[:, None] * c_out_g + np.arange(c_out_g)[None, :]
                w = w * scale[index].reshape(index.shape + (1,) * (w.ndim - 2))
        if bias is not None:
            bias = bias * scale
    if shift is not None:
        bias = shift.copy() if bias is None else bias + shift
    new_op = dataclasses.replace(op, weight=w, bias=bias)
    parts = [n.source_op or n.op.type.value for n in (linear, affine)]
    return Node(
        name=f"{linear.name}+{affine.name}",
        op=new_op,
        inputs=linear.inputs,
        output=affine.output,
        source_op="+".join(parts),
    )


def fold_affine(graph: Graph) -> Graph:
    """Merge every per-channel Affine into the Linear/Conv/ConvTranspose that alone feeds it.

    The rewrite applies when the linear op's output has that Affine as its only consumer and is
    not a graph output, and the Affine's scale and shift broadcast along the output channel axis
    only (axis 1 for convolutions, the last axis for Linear; scalars too). Chains of such
    Affines fold one after another. Everything else is kept as it is. The result is validated
    and carries the shapes of every value.
    """
    from stabaudit.ir.executor import with_shapes

    known = all(n.output in graph.shapes for n in graph.nodes)
    shapes = graph.shapes if known else with_shapes(graph.validate()).shapes
    uses = {name: len(users) for name, users in graph.consumers().items()}
    outputs = set(graph.outputs)
    nodes: list[Node | None] = []
    where: dict[str, int] = {}  # value -> index of its producer in ``nodes``
    for node in graph.nodes:
        producer_index = where.get(node.inputs[0]) if isinstance(node.op, O.Affine) else None
        if producer_index is not None:
            producer = nodes[producer_index]
            assert producer is not None
            folded = _try_fold(producer, node, shapes, uses, outputs)
            if folded is not None:
                nodes[producer_index] = None
                where[folded.output] = len(nodes)
                nodes.append(folded)
                continue
        where[node.output] = len(nodes)
        nodes.append(node)
    kept = tuple(n for n in nodes if n is not None)
    result = Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=kept)
    return with_shapes(result.validate())


def _try_fold(
    producer: Node,
    affine: Node,
    shapes: Mapping[str, tuple[int, ...]],
    uses: dict[str, int],
    outputs: set[str],
) -> Node | None:
    op = affine.op
    assert isinstance(op, O.Affine)
    if not isinstance(producer.op, O.Linear | O.Conv | O.ConvTranspose):
        return None
    value = producer.output
    if uses.get(value, 0) != 1 or value in outputs:
        return None
    shape = tuple(shapes[value])
    if tuple(shapes[affine.output]) != shape:
        return None  # the Affine broadcasts to a larger shape
    axis = _channel_axis(producer.op, len(shape))
    scale = _per_channel(op.scale, shape, axis) if op.scale is not None else None
    shift = _per_channel(op.shift, shape, axis) if op.shift is not None else None
    if (op.scale is not None and scale is None) or (op.shift is not None and shift is None):
        return None
    if not np.all(np.isfinite(np.asarray(producer.op.weight, dtype=np.float64))):
        return None
    return _fold(producer, affine, scale, shift)
