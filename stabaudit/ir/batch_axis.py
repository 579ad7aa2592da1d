"""Proof that a graph with an unknown batch dim treats every sample on its own (no batch mixing)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node

# Operators whose parameter arrays broadcast against the input entry by entry (numpy rules).
_BROADCAST_PARAMS: frozenset[O.OpType] = frozenset({O.OpType.AFFINE, O.OpType.PRELU})
_AXIS_FIELDS = frozenset({"axis", "axes", "dim", "perm"})


def _elementwise(op: O.Op) -> bool:
    """An activation that acts entry by entry: one of ACTIVATIONS without an axis attribute
    (Softmax has one; an activation added later with an axis is refused until it has a rule)."""
    return op.type in O.ACTIVATIONS and not _AXIS_FIELDS & set(vars(op))


@dataclass(frozen=True, kw_only=True)
class BatchMixing:
    """Why the graph is not proved sample-independent: the first node that mixes (or may mix)
    entries of different samples, and how."""

    node: str
    op: str  # the source operator(s) the node came from, else its IR op type
    reason: str

    def describe(self) -> str:
        return f"node {self.node!r} ({self.op}) {self.reason}"


class _Mixes(Exception):
    """Raised by a node rule; carries the reason (the node is added by the caller)."""


def batch_mixing(small: Graph, large: Graph, batch_inputs: Mapping[str, int], size: int) -> BatchMixing | None:
    """None when the graph is proved to compute every sample on its own, else the first culprit.

    ``small`` is the graph translated with the batch dim of each input in ``batch_inputs``
    (input name -> batch axis) set to 1, ``large`` the same source translated with it set to
    ``size`` (> 1). The proof tracks the batch axis of every value: the unique axis whose size
    is 1 in ``small`` and ``size`` in ``large`` while every other axis keeps its size, and checks
    per operator that no entry of the output reads entries of two samples. Then the function at
    batch n is the batch-1 function applied to each sample, f_n(x_1..x_n) = (f(x_1)..f(x_n)), whose
    Jacobian is block diagonal: ||J_n||_2 = max_i ||J(x_i)||_2, so every Lipschitz bound certified
    at batch 1 holds at every n. Operators this pass does not know are refused (when in doubt,
    the bound is not claimed for other batch sizes).
    """
    if size < 2:
        raise ValueError("the probe batch size must be at least 2")
    if len(small.nodes) != len(large.nodes):
        node = small.nodes[0] if small.nodes else None
        return BatchMixing(node=node.name if node else "?", op=_op_label(node) if node else "?",
                           reason="translates to a different graph at another batch size")
    axes: dict[str, int | None] = {spec.name: batch_inputs.get(spec.name) for spec in small.inputs}
    for spec in small.inputs:
        axis = axes[spec.name]
        if axis is not None and (small.shapes[spec.name][axis] != 1 or large.shapes[spec.name][axis] != size):
            raise ValueError(f"input {spec.name!r} does not have batch size 1 / {size} on axis {axis}")
    for a, b in zip(small.nodes, large.nodes, strict=True):
        try:
            if a.op.type is not b.op.type or a.inputs != b.inputs or a.output != b.output:
                raise _Mixes("translates to a different operator at another batch size")
            axes[a.output] = _node_axis(a, b, axes, small.shapes, large.shapes, size)
        except _Mixes as exc:
            return BatchMixing(node=a.name, op=_op_label(a), reason=str(exc))
    return None


def _op_label(node: Node) -> str:
    return node.source_op or node.op.type.value


def _batch_axis(s1: tuple[int, ...], sk: tuple[int, ...], size: int) -> int | None:
    """The axis of size 1 at batch 1 and ``size`` at batch ``size`` (all other axes equal)."""
    if len(s1) != len(sk):
        return None
    changed = [i for i, (p, q) in enumerate(zip(s1, sk, strict=True)) if p != q]
    if len(changed) == 1 and s1[changed[0]] == 1 and sk[changed[0]] == size:
        return changed[0]
    return None


def _same_params(a: O.Op, b: O.Op, batch_position: int | None, out_rank: int) -> None:
    """The two translations carry the same parameters: a parameter that depends on the batch
    size (one folded from the input's shape) makes the function differ between batch sizes.
    An array may differ only by repetition along the batch axis (numpy broadcasting)."""
    for name, x in vars(a).items():
        y = vars(b)[name]
        if isinstance(a, O.Reshape) and name == "shape":
            continue  # checked through the shapes of the values
        if isinstance(a, O.Slice) and name == "ends" and batch_position is not None:
            continue  # the batch axis's end is its size; checked with the other axes in _node_axis
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            if x.shape == y.shape and np.array_equal(x, y, equal_nan=True):
                continue
            if batch_position is not None and x.ndim == y.ndim:
                pos = batch_position - (out_rank - x.ndim)  # numpy aligns trailing axes
                if 0 <= pos < x.ndim and x.shape[pos] == 1 and \
                        y.shape == x.shape[:pos] + (y.shape[pos],) + x.shape[pos + 1:] and \
                        np.array_equal(np.broadcast_to(x, y.shape), y, equal_nan=True):
                    continue
            raise _Mixes(f"has a parameter {name!r} that depends on the batch size")
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) or x != y:
            raise _Mixes(f"has an attribute {name!r} that depends on the batch size")


def _node_axis(a: Node, b: Node, axes: Mapping[str, int | None], shapes1: Mapping[str, tuple[int, ...]],
               shapesk: Mapping[str, tuple[int, ...]], size: int) -> int | None:
    """The batch axis of ``a``'s output (None: the value does not depend on a batched input);
    raises _Mixes when ``a`` is not proved to keep samples apart."""
    in_axes = [axes[name] for name in a.inputs]
    out1, outk = shapes1[a.output], shapesk[a.output]
    if all(axis is None for axis in in_axes):
        _same_params(a.op, b.op, None, len(out1))
        if out1 != outk:
            raise _Mixes("gives a value whose shape depends on the batch size")
        return None
    if any(axis is None for axis in in_axes):
        # y_i = g(x_i, z) with z shared by every sample: dz moves all n outputs, so the Lipschitz
        # constant in (x, z) grows with n (||[I; ...; I]||_2 = sqrt(n))
        raise _Mixes("combines batched values with a value shared by every sample")
    out = _batch_axis(out1, outk, size)
    if out is None:
        raise _Mixes("merges the batch axis with other axes or drops it")
    _same_params(a.op, b.op, out, len(out1))
    first = in_axes[0]
    assert first is not None
    in_rank = len(shapes1[a.inputs[0]])
    op = a.op
    kind = op.type
    if kind in _BROADCAST_PARAMS or _elementwise(op):
        expected = first + len(out1) - in_rank  # a parameter of higher rank adds leading axes
    elif kind in (O.OpType.POW, O.OpType.SQRT, O.OpType.RECIPROCAL, O.OpType.EXP, O.OpType.LOG, O.OpType.ERF,
                  O.OpType.SIN, O.OpType.COS, O.OpType.ABS):
        expected = first  # entry by entry
    elif isinstance(op, O.Quantize):
        if op.axis is not None and op.axis == first:
            raise _Mixes(f"quantizes with one step per index of the batch axis {first}")
        expected = first  # entry by entry, the step constant (per tensor or along another axis)
    elif isinstance(op, O.DynamicQuantize):
        raise _Mixes("quantizes with a step computed from the whole tensor (every sample's range)")
    elif isinstance(op, O.Resize):
        if first in op.axes:
            raise _Mixes(f"resizes the batch axis {first}")
        expected = first
    elif isinstance(op, O.LayerNorm):
        if first >= op.axis % in_rank:
            raise _Mixes(f"normalises over the batch axis {first} (statistics across samples)")
        expected = first
    elif isinstance(op, O.MatMul):
        ranks = [len(shapes1[name]) for name in a.inputs]
        aligned = {axis + len(out1) - r for axis, r in zip(in_axes, ranks, strict=True) if axis is not None}
        if len(aligned) != 1 or any(axis is None or axis >= r - 2 for axis, r in zip(in_axes, ranks, strict=True)):
            raise _Mixes(f"multiplies across the batch axis {first} (a matrix product of samples)")
        expected = aligned.pop()
    elif kind in (O.OpType.ADD, O.OpType.SUB, O.OpType.MUL, O.OpType.DIV, O.OpType.MAX, O.OpType.MIN, O.OpType.WHERE):
        aligned = {axis + len(out1) - len(shapes1[name]) for axis, name in zip(in_axes, a.inputs, strict=True)
                   if axis is not None}
        if len(aligned) != 1:
            raise _Mixes("adds entries of different samples (the batch axes do not line up)")
        expected = aligned.pop()
    elif isinstance(op, O.Softmax):
        if op.axis % in_rank == first:
            raise _Mixes(f"normalises over the batch axis {first} (softmax across samples)")
        if op.mask is not None:
            lead = first - (in_rank - op.mask.ndim)  # the mask's axis that lines up with the batch axis
            if 0 <= lead < op.mask.ndim and op.mask.shape[lead] != 1:
                raise _Mixes(f"masks each index of the batch axis {first} differently")
        expected = first
    elif isinstance(op, O.Linear):
        if first == in_rank - 1:
            raise _Mixes(f"contracts the batch axis {first} (a matrix product across samples)")
        expected = first
    elif isinstance(op, O.Conv | O.ConvTranspose):
        if first != 0:
            raise _Mixes(f"convolves over the batch axis {first} (it is not the leading axis)")
        expected = 0
    elif isinstance(op, O.MaxPool | O.AvgPool | O.GlobalAvgPool | O.GlobalMaxPool):
        if first >= 2:
            raise _Mixes(f"pools over the batch axis {first} (a spatial axis)")
        expected = first
    elif isinstance(op, O.Reduce):
        if first in op.axes:
            raise _Mixes(f"reduces over the batch axis {first}")
        expected = first if op.keepdims else first - sum(1 for axis in op.axes if axis < first)
    elif isinstance(op, O.Transpose):
        expected = op.perm.index(first)
    elif isinstance(op, O.Pad):
        rank = len(op.pads) // 2
        if op.pads[first] or op.pads[rank + first]:
            raise _Mixes(f"pads the batch axis {first}")
        expected = first
    elif isinstance(op, O.Concat):
        if len(set(in_axes)) != 1:
            raise _Mixes("concatenates values whose batch axes differ")
        if op.axis % in_rank == first:
            raise _Mixes(f"concatenates along the batch axis {first}")
        expected = first
    elif isinstance(op, O.Slice):
        other = b.op
        assert isinstance(other, O.Slice)
        full = op.starts[first] == 0 and op.steps[first] == 1 and op.ends[first] == shapes1[a.inputs[0]][first] \
            and other.ends[first] == shapesk[a.inputs[0]][first]
        if not full or any(op.ends[i] != other.ends[i] for i in range(in_rank) if i != first):
            raise _Mixes(f"slices the batch axis {first}")
        expected = first
    elif isinstance(op, O.Gather):
        if op.axis == first:
            raise _Mixes(f"gathers along the batch axis {first}")
        expected = first + np.ndim(op.indices) - 1 if op.axis < first else first
    elif isinstance(op, O.Tile):
        if op.repeats[first] != 1:
            raise _Mixes(f"tiles the batch axis {first}")
        expected = first
    elif isinstance(op, O.Reshape):
        # Row-major order: flat index = (p * n + j) * S + q for sample j, prefix index p < P and
        # suffix index q < S. The reshape keeps each sample's entries together in the same places
        # for every j iff P (the product of the axes before the batch axis) is the same on both sides.
        before_in = math.prod(shapes1[a.inputs[0]][:first])
        before_out = math.prod(out1[:out])
        if before_in != before_out:
            raise _Mixes(f"moves entries across the batch axis (reshape {list(shapes1[a.inputs[0]])} -> {list(out1)} "
                         "at batch 1 interleaves samples)")
        expected = out
    else:
        raise _Mixes(f"is not known to keep samples apart ({kind.value} on the batch axis {first})")
    if expected != out:
        raise _Mixes(f"moves the batch axis from {first} to {out}")
    return out
