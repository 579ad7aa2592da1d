"""Graph rewrites that keep the function: folding per-channel affine maps into the linear op before."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node
from stabaudit.rounding import dot_underflow, frobenius_up, mul_up, product_underflow, up


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


def _fold(linear: Node, affine: Node, scale: np.ndarray | None, shift: np.ndarray | None) -> Node | None:
    """The linear node whose output is ``affine(linear(x))``, computed in float64.

    Each folded weight is one float64 product of stored values, so it carries a relative
    rounding error of at most u = 2^-53 (IEEE 754 round to nearest); entrywise |E| <= u |W'|
    gives ||E||_2 <= u ||W'||_F, far below the margins of the bound rules. Not so for a product
    that falls below 2^-1022 (absolute error up to 2^-1075, possibly all of it: a weight rounded
    to 0): those are bounded in ``error``, as is the linear op's own error, scaled by max |scale|
    (||diag(s) E|| <= max |s| ||E||). A ConvTranspose carries no error: one whose product would
    need one is not folded (None).
    """
    op = linear.op
    assert isinstance(op, O.Linear | O.Conv | O.ConvTranspose)
    w = np.asarray(op.weight, dtype=np.float64)
    bias = None if op.bias is None else np.asarray(op.bias, dtype=np.float64)
    error = 0.0 if isinstance(op, O.ConvTranspose) else op.error
    if scale is not None:
        match op:
            case O.Linear():  # weight [out, in]: scale the rows
                factor = scale[:, None]
            case O.Conv():  # weight [C_out, C_in/groups, k...]
                factor = scale.reshape((-1,) + (1,) * (w.ndim - 1))
            case O.ConvTranspose(groups=groups):
                # weight [C_in, C_out/groups, k...]: input channel i belongs to group
                # i // (C_in/groups), and its column j feeds output channel group*(C_out/groups) + j
                c_in, c_out_g = w.shape[0], w.shape[1]
                group = np.arange(c_in) // (c_in // groups)
                index = group[:, None] * c_out_g + np.arange(c_out_g)[None, :]
                factor = scale[index].reshape(index.shape + (1,) * (w.ndim - 2))
        folded = w * factor
        extra = product_underflow(folded, w, factor)
        if extra and isinstance(op, O.ConvTranspose):
            return None
        if error or extra:
            error = up(mul_up(error, float(np.max(np.abs(scale)))) + extra)
        w = folded
        if bias is not None:
            bias = bias * scale
    if shift is not None:
        bias = shift.copy() if bias is None else bias + shift
    new_op = (
        dataclasses.replace(op, weight=w, bias=bias)
        if isinstance(op, O.ConvTranspose)
        else dataclasses.replace(op, weight=w, bias=bias, error=error)
    )
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


# ---- merging adjacent linear maps ---------------------------------------------------------------------
U = 2.0**-53  # unit roundoff of float64


def _gamma(k: int) -> float:
    """gamma_k = k u / (1 - k u): the relative error bound of a k-term float64 dot product (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.4), widened by 1%."""
    return 1.01 * k * U / (1.0 - k * U)


def _merge_linears(first: O.Linear, second: O.Linear) -> O.Linear:
    """x -> W2 (W1 x + b1) + b2 as one Linear: W = W2 W1 computed in float64. The computed product
    differs from the exact one entrywise by at most gamma_k (|W2| |W1|) (k = the inner dimension),
    so ||A - W||_2 <= ||E||_F <= gamma_k || |W2| |W1| ||_F, plus the two inputs' own errors carried
    through (||W2|| e1 + e2 ||W1|| + e1 e2 bounds the rest, by the triangle inequality)."""
    w1 = np.asarray(first.weight, dtype=np.float64)
    w2 = np.asarray(second.weight, dtype=np.float64)
    w = w2 @ w1
    k = w1.shape[0]
    # relative part (Frobenius norm safe from under/overflow), plus the products that may have
    # fallen below 2^-1022 (absolute errors: 12 layers of 1e-30 weights give a product of 0)
    err = up(_gamma(k) * frobenius_up(np.abs(w2) @ np.abs(w1)) + dot_underflow(w2, w1, w.size, k))
    if first.error or second.error:
        n1, n2 = float(np.linalg.norm(w1, 2)) * (1 + 1e-12), float(np.linalg.norm(w2, 2)) * (1 + 1e-12)
        carried = up(up(mul_up(n2, first.error) + mul_up(first.error, second.error)) + mul_up(second.error, n1))
        err = up(err + carried)
    bias = None
    if first.bias is not None or second.bias is not None:
        b1 = np.zeros(w1.shape[0]) if first.bias is None else np.asarray(first.bias, dtype=np.float64)
        b2 = np.zeros(w2.shape[0]) if second.bias is None else np.asarray(second.bias, dtype=np.float64)
        bias = w2 @ b1 + b2
    return O.Linear(weight=w, bias=bias, error=err)


def _pointwise_or_valid(op: O.Op) -> bool:
    """A convolution without padding, stride, dilation or groups: composing two of them is again
    one such convolution (with the kernels convolved), exactly."""
    return (
        isinstance(op, O.Conv)
        and op.groups == 1
        and all(s == 1 for s in op.strides)
        and all(d == 1 for d in op.dilations)
        and not any(op.pads)
    )


def _merge_convs(first: O.Conv, second: O.Conv) -> O.Conv:
    """conv2(conv1(x)) for valid stride-1 convolutions: with cross-correlation y[n] = sum_q W1[q]
    x[n + q], z[n] = sum_p W2[p] y[n + p] = sum_{p,q} W2[p] W1[q] x[n + p + q], the kernel
    K[r] = sum_{p + q = r} W2[p] W1[q] (channel products). Each entry of K is a sum of at most
    k = C_mid * |p positions| float64 products: |K - fl(K)| <= gamma_k (|W2| * |W1|) entrywise, and
    a convolution's norm is at most the sum over kernel positions r of ||E[:, :, r]||_2 (one shift
    per position, each of norm <= 1), bounded by the Frobenius norms."""
    w1 = np.asarray(first.weight, dtype=np.float64)  # [C_mid, C_in, k1...]
    w2 = np.asarray(second.weight, dtype=np.float64)  # [C_out, C_mid, k2...]
    k1, k2 = w1.shape[2:], w2.shape[2:]
    out_k = tuple(a + b - 1 for a, b in zip(k1, k2, strict=True))
    kernel = np.zeros((w2.shape[0], w1.shape[1], *out_k))
    absk = np.zeros_like(kernel)
    a1, a2 = np.abs(w1), np.abs(w2)
    for p in np.ndindex(*k2):
        window = (slice(None), slice(None), *(slice(pi, pi + ki) for pi, ki in zip(p, k1, strict=True)))
        kernel[window] += np.einsum("om,mi...->oi...", w2[(slice(None), slice(None), *p)], w1)
        absk[window] += np.einsum("om,mi...->oi...", a2[(slice(None), slice(None), *p)], a1)
    terms = w1.shape[0] * int(np.prod(k2))
    flat = absk.reshape(absk.shape[0], absk.shape[1], -1)
    err = _gamma(terms) * float(sum(frobenius_up(flat[:, :, r]) for r in range(flat.shape[2])))
    # products below 2^-1022 (absolute errors), one shift per kernel position as above
    err = up(up(err * (1.0 + 1e-12)) + flat.shape[2] * dot_underflow(w2, w1, flat.shape[0] * flat.shape[1], terms))
    bias = None
    if first.bias is not None or second.bias is not None:
        b1 = np.zeros(w1.shape[0]) if first.bias is None else np.asarray(first.bias, dtype=np.float64)
        b2 = np.zeros(w2.shape[0]) if second.bias is None else np.asarray(second.bias, dtype=np.float64)
        bias = w2.reshape(w2.shape[0], w2.shape[1], -1).sum(axis=2) @ b1 + b2
    nd = len(out_k)
    return O.Conv(
        weight=kernel, bias=bias, strides=(1,) * nd, pads=(0,) * (2 * nd), dilations=(1,) * nd,
        groups=1, error=err,
    )


def _scale_inputs(op: O.Op, scale: np.ndarray, shift: np.ndarray | None) -> list[O.Op] | None:
    """The ops computing ``op(x * scale + shift)`` with the scale folded into the weights:
    [folded] or, for a padded convolution with a shift, [translation by shift/scale, folded]
    (zero padding does not commute with a shift, a translation does not change distances).
    ``scale`` is per input feature (last axis of a Linear, axis 1 of a Conv)."""
    match op:
        case O.Linear(weight=weight, bias=bias):
            w = np.asarray(weight, dtype=np.float64)
            folded = w * scale[None, :]
            b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
            if shift is not None:
                b = b + w @ shift
            # one rounded product per entry: ||A - W'||_2 <= ||E||_F <= u ||W'||_F (plus the
            # products below 2^-1022, off by 2^-1075 at most), and ||E diag(s)|| <= ||E|| max |s|
            err = up(
                up(1.01 * U * frobenius_up(folded) + product_underflow(folded, w, scale[None, :]))
                + mul_up(op.error, float(np.max(np.abs(scale))))
            )
            has_bias = bias is not None or shift is not None
            return [O.Linear(weight=folded, bias=b if has_bias else None, error=err)]
        case O.Conv(weight=weight, bias=bias, groups=groups, pads=pads):
            w = np.asarray(weight, dtype=np.float64)
            c_out, c_in_g = w.shape[0], w.shape[1]
            group = np.arange(c_out) // (c_out // groups)  # the group of each output channel
            cols = group[:, None] * c_in_g + np.arange(c_in_g)[None, :]  # its input channels
            factor = scale[cols].reshape(c_out, c_in_g, *(1,) * (w.ndim - 2))
            folded = w * factor
            err = up(
                up(1.01 * U * frobenius_up(folded) + product_underflow(folded, w, factor))
                + mul_up(op.error, float(np.max(np.abs(scale))))
            )
            ops: list[O.Op] = []
            cb: np.ndarray | None = None if bias is None else np.asarray(bias, dtype=np.float64)
            if shift is not None and np.any(shift):
                if not any(pads):
                    t = shift[cols].reshape(c_out, c_in_g, *(1,) * (w.ndim - 2))
                    extra = (w * t).reshape(c_out, -1).sum(axis=1)
                    cb = extra if cb is None else cb + extra
                elif np.all(scale != 0):
                    bshape = (1, -1) + (1,) * (w.ndim - 2)
                    ops.append(O.Affine(shift=(shift / scale).reshape(bshape)))
                else:
                    return None
            return [*ops, dataclasses.replace(op, weight=folded, bias=cb, error=err)]
    return None


def _input_scale(affine: O.Affine, shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    scale: np.ndarray | None = (
        np.ones(shape[axis]) if affine.scale is None else _per_channel(affine.scale, shape, axis)
    )
    shift = None if affine.shift is None else _per_channel(affine.shift, shape, axis)
    if scale is None or (affine.shift is not None and shift is None):
        return None
    return scale, shift


def merge_linear_maps(graph: Graph) -> Graph:
    """Merge adjacent linear maps with no nonlinearity between them into one node, so that they
    are bounded as one operator (||A B|| instead of ||A|| ||B||):

    - Linear -> Linear (MatMul -> MatMul): one Linear, W2 W1;
    - a per-feature Affine (in-graph Sub/Div normalisation, a folded BatchNorm before the map)
      -> Linear or Conv: the scale folded into the weights' input side, the shift into the bias
      (for a padded convolution the shift stays as a translation in front);
    - Conv -> Conv without padding, stride, dilation or groups (pointwise and valid convolutions):
      one Conv with the convolved kernel;
    - Affine -> Affine (Sub then Div): one Affine; a scalar Affine moves past a Reshape/Transpose.

    Each merge applies when the first value has the second node as its only consumer and is not a
    graph output. A merged node carries ``error``, a bound on the spectral distance between the
    exact composition of the stored weights and its computed weight, which the bound rules add.
    Padded convolution pairs are left as they are: their composition is no single convolution.
    """
    from stabaudit.ir.executor import with_shapes

    known = all(n.output in graph.shapes for n in graph.nodes)
    shapes = dict(graph.shapes if known else with_shapes(graph.validate()).shapes)
    uses = {name: len(users) for name, users in graph.consumers().items()}
    outputs = set(graph.outputs)
    nodes: list[Node | None] = []
    where: dict[str, int] = {}
    changed = False
    for node in graph.nodes:
        i = where.get(node.inputs[0]) if node.inputs else None
        prev = nodes[i] if i is not None else None
        merged: list[Node] | None = None
        if prev is not None and uses.get(prev.output, 0) == 1 and prev.output not in outputs:
            merged = _try_merge(prev, node, shapes)
        if merged is not None and i is not None:
            nodes[i] = None
            for m in merged:
                where[m.output] = len(nodes)
                nodes.append(m)
            changed = True
            continue
        where[node.output] = len(nodes)
        nodes.append(node)
    if not changed:
        return graph
    kept = tuple(n for n in nodes if n is not None)
    return with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=kept).validate())


def _f32(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.isfinite(a)) and np.all(a.astype(np.float32).astype(np.float64) == a))


def _is_scalar_affine(op: O.Affine) -> bool:
    return all(p is None or np.asarray(p).size == 1 for p in (op.scale, op.shift))


def _merge_affines(
    a: O.Affine, b: O.Affine, shapes: Mapping[str, tuple[int, ...]], prev: Node, node: Node
) -> O.Affine | None:
    """(x s1 + t1) s2 + t2 = x (s1 s2) + (t1 s2 + t2), when neither broadcasts to a larger shape
    and the scale product is exact (float32 operands: 24 + 24 significant bits fit in float64),
    so that the merged Affine's bound max |s1 s2| is the exact one. Shifts only translate."""
    if not (tuple(shapes[prev.inputs[0]]) == tuple(shapes[prev.output]) == tuple(shapes[node.output])):
        return None
    s1 = None if a.scale is None else np.asarray(a.scale, dtype=np.float64)
    s2 = None if b.scale is None else np.asarray(b.scale, dtype=np.float64)
    if s1 is not None and s2 is not None and not (_f32(s1) and _f32(s2)):
        return None
    scale = s2 if s1 is None else (s1 if s2 is None else s1 * s2)
    t1 = None if a.shift is None else np.asarray(a.shift, dtype=np.float64)
    t2 = None if b.shift is None else np.asarray(b.shift, dtype=np.float64)
    if t1 is not None and s2 is not None:
        t1 = t1 * s2
    shift = t2 if t1 is None else (t1 if t2 is None else t1 + t2)
    return O.Affine(scale=scale, shift=shift)


def _try_merge(prev: Node, node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node] | None:
    """The nodes replacing ``prev -> node``, or None; new intermediate values get their shapes."""
    name = f"{prev.name}+{node.name}"
    source = f"{prev.source_op}+{node.source_op}"

    def make(op: O.Op, output: str, inputs: tuple[str, ...], label: str = name) -> Node:
        return dataclasses.replace(node, name=label, op=op, inputs=inputs, output=output, source_op=source)

    match prev.op, node.op:
        case O.Affine() as a, O.Affine() as b:
            merged_affine = _merge_affines(a, b, shapes, prev, node)
            if merged_affine is not None:
                return [make(merged_affine, node.output, prev.inputs)]
        case O.Affine() as a, (O.Reshape() | O.Transpose()) if _is_scalar_affine(a):
            # an element-wise map by one scalar commutes with moving entries: move it past the
            # reshape, where it can meet the linear map that follows (as 0-d parameters, so that
            # it broadcasts to nothing larger)
            if tuple(shapes[prev.inputs[0]]) != tuple(shapes[prev.output]):
                return None
            moved = f"{prev.output}__moved"
            shapes[moved] = tuple(shapes[node.output])
            scalar = O.Affine(
                scale=None if a.scale is None else np.asarray(a.scale).reshape(()),
                shift=None if a.shift is None else np.asarray(a.shift).reshape(()),
            )
            return [
                dataclasses.replace(node, inputs=prev.inputs, output=moved),
                dataclasses.replace(prev, op=scalar, inputs=(moved,), output=node.output),
            ]
        case O.Linear() as a, O.Linear() as b if a.weight.ndim == 2 and b.weight.ndim == 2:
            if np.all(np.isfinite(a.weight)) and np.all(np.isfinite(b.weight)):
                return [make(_merge_linears(a, b), node.output, prev.inputs)]
        case O.Conv() as a, O.Conv() as b if _pointwise_or_valid(a) and _pointwise_or_valid(b):
            if np.all(np.isfinite(a.weight)) and np.all(np.isfinite(b.weight)):
                return [make(_merge_convs(a, b), node.output, prev.inputs)]
        case O.Affine() as aff, (O.Linear() | O.Conv()) as lin:
            shape = tuple(shapes[prev.output])
            if tuple(shapes[prev.inputs[0]]) != shape or not shape:
                return None  # the Affine broadcasts its input to a larger shape
            axis = len(shape) - 1 if isinstance(lin, O.Linear) else 1
            if isinstance(lin, O.Conv) and len(shape) < 2:
                return None
            found = _input_scale(aff, shape, axis)
            if found is None or not np.all(np.isfinite(np.asarray(lin.weight, dtype=np.float64))):
                return None
            ops = _scale_inputs(lin, *found)
            if ops is None:
                return None
            if len(ops) == 1:
                return [make(ops[0], node.output, prev.inputs)]
            shifted = f"{prev.output}__translated"
            shapes[shifted] = tuple(shapes[prev.output])
            return [
                make(ops[0], shifted, prev.inputs, label=f"{prev.name}/translation"),
                make(ops[1], node.output, (shifted,)),
            ]
    return None


def smooth_part(graph: Graph) -> Graph:
    """The graph with every branch-switching operator replaced by its smooth part, shapes and names
    kept: torch's thresholded Softplus -> the smooth log(1 + exp(beta x)) / beta; a quantization
    (rounding to a step) -> its clip (a Clip node per tensor, the Quantize's own smooth mode per
    axis or for the integer); a dynamic quantization's dequantized value -> the identity.

    The bound rules certify the smooth part's Lipschitz constants and return each switch's jump
    (OpBound.jump); the analyses that evaluate the model at points (lower bounds, local bounds)
    run on this graph so that every figure they give is about the function the upper bounds
    certify. The graph is returned as is when it has no branch switch.
    """
    nodes = tuple(_smooth(node, graph) for node in graph.nodes)
    if all(a is b for a, b in zip(nodes, graph.nodes, strict=True)):
        return graph
    return Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=nodes, shapes=graph.shapes)


def _smooth(node: Node, graph: Graph) -> Node:
    match node.op:
        case O.Softplus(threshold=float()):
            return dataclasses.replace(node, op=dataclasses.replace(node.op, threshold=None))
        case O.Quantize(axis=None, integer=False, smooth=False, scale=(s,), zero_point=(z,), qmin=lo, qmax=hi):
            # s (clamp(x / s + z, lo, hi) - z) = clip(x, s (lo - z), s (hi - z)); the ends in float64
            return dataclasses.replace(node, op=O.Clip(min=s * (lo - z), max=s * (hi - z)))
        case O.DynamicQuantize(part=O.QuantPart.DEQUANTIZED, smooth=False) if node.output in graph.shapes:
            # the identity, as the Reshape to its own shape that every analysis knows
            return dataclasses.replace(node, op=O.Reshape(shape=tuple(graph.shapes[node.output])))
        case O.Quantize(smooth=False) | O.DynamicQuantize(part=O.QuantPart.DEQUANTIZED, smooth=False):
            return dataclasses.replace(node, op=dataclasses.replace(node.op, smooth=True))
    return node


def branch_switches(graph: Graph) -> list[Node]:
    """The nodes whose operator, as executed, switches branch with a jump (see smooth_part)."""
    return [n for n in graph.nodes if _smooth(n, graph) is not n]


def fuse_masked_softmax(graph: Graph) -> Graph:
    """A Where with a constant condition, a constant -inf branch and a variable one, read only by a
    Softmax (an attention mask's masked_fill(-inf)), and that Softmax become one Softmax with a mask
    on the variable (``ops.Softmax.mask``: the entries the -inf takes are dropped). Exact: e^-inf is
    0. Applied only where every row of the softmax keeps an entry (else its outputs are NaN and the
    nodes stay, for the checks to report the -inf)."""
    from stabaudit.ir.executor import with_shapes

    known = all(n.output in graph.shapes for n in graph.nodes)
    shapes = graph.shapes if known else with_shapes(graph.validate()).shapes
    consumers = graph.consumers()
    producer = {n.output: n for n in graph.nodes}
    outputs = set(graph.outputs)
    replaced: dict[str, Node] = {}  # softmax output -> the fused node
    dropped: set[str] = set()  # outputs of the Where nodes fused away
    for node in graph.nodes:
        op = node.op
        if not isinstance(op, O.Softmax) or op.mask is not None:
            continue
        where = producer.get(node.inputs[0])
        if where is None or not isinstance(where.op, O.Where) or where.output in outputs:
            continue
        if len(consumers.get(where.output, [])) != 1:
            continue
        w = where.op
        cond = w.fixed_condition()
        if w.test or cond is None or len(where.inputs) != 1:
            continue
        minus_inf = [v is not None and np.size(v) > 0 and bool(np.all(np.asarray(v) == -np.inf))
                     for v in (w.when_true, w.when_false)]
        if minus_inf == [True, False] and w.when_false is None:
            kept = ~np.asarray(cond, dtype=bool)
        elif minus_inf == [False, True] and w.when_true is None:
            kept = np.asarray(cond, dtype=bool)
        else:
            continue
        if O.softmax_mask_problem(kept, shapes[node.inputs[0]], op.axis) is not None:
            continue
        replaced[node.output] = dataclasses.replace(
            node, op=O.Softmax(axis=op.axis, mask=None if kept.all() else kept), inputs=where.inputs,
            source_op=f"{where.source_op or 'Where'}+{node.source_op or 'Softmax'}")
        dropped.add(where.output)
    if not replaced:
        return graph
    nodes = tuple(replaced.get(n.output, n) for n in graph.nodes if n.output not in dropped)
    return with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=nodes).validate())


def _single_readers(graph: Graph) -> tuple[Mapping[str, tuple[int, ...]], dict[str, Node], Callable[[str], Node | None]]:
    """What the pattern fusions read: the shapes of ``graph``'s values, their producers, and
    ``sole(name)``, the one node that reads the value (once, or twice as Mul(x, x) does) when no
    other node does and it is not a graph output, else None."""
    from stabaudit.ir.executor import with_shapes

    known = all(n.output in graph.shapes for n in graph.nodes)
    shapes = graph.shapes if known else with_shapes(graph.validate()).shapes
    consumers = graph.consumers()
    outputs = set(graph.outputs)

    def sole(name: str) -> Node | None:
        users = {id(n): n for n in consumers.get(name, [])}
        return next(iter(users.values())) if len(users) == 1 and name not in outputs else None

    return shapes, {n.output: n for n in graph.nodes}, sole


def fuse_rms_norm(graph: Graph) -> Graph:
    """x / sqrt(mean(x^2) + eps) [* scale] over trailing axes, as traced modules compute RMSNorm
    (x.pow(2).mean(-1, keepdim=True), + eps, rsqrt, times x, times the weight), becomes one
    LayerNorm(centered=False): the same map, with the rules of a normalisation (a global constant
    max|scale| / sqrt(eps)) instead of a quotient that has none. The square is Pow(2) or Mul(x, x);
    the reciprocal root Sqrt then Reciprocal, then Mul with x (or Sqrt then Div of x by it); eps a
    positive scalar shift; the scale an optional constant Affine without shift. Every intermediate
    value must be read only by the next step."""
    from stabaudit.ir.executor import with_shapes

    shapes, producer, sole = _single_readers(graph)
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()
    for mean in graph.nodes:
        if isinstance(mean.op, O.ReduceMean) and mean.op.keepdims and mean.op.axes:
            first = mean.op.axes[0]
        elif isinstance(mean.op, O.GlobalAvgPool):  # a mean over the dims 2.. (as a trace of mean(-1) on rank 3)
            first = 2
        else:
            continue
        square = producer.get(mean.inputs[0])
        if square is None or sole(square.output) is not mean:
            continue
        squares = (isinstance(square.op, O.Pow) and square.op.exponent == 2.0
                   or isinstance(square.op, O.Mul) and square.inputs[0] == square.inputs[1])
        if not squares:
            continue
        x = square.inputs[0]
        rank = len(shapes[x])
        if isinstance(mean.op, O.ReduceMean) and list(mean.op.axes) != list(range(first, rank)) or first >= rank:
            continue
        add = sole(mean.output)
        if add is None or not isinstance(add.op, O.Affine) or add.op.scale is not None or add.op.shift is None \
                or np.size(add.op.shift) != 1 or not float(np.asarray(add.op.shift).reshape(-1)[0]) > 0.0:
            continue
        root = sole(add.output)
        if root is None or not isinstance(root.op, O.Sqrt):
            continue
        chain = [square, mean, add, root]
        step = sole(root.output)
        if step is not None and isinstance(step.op, O.Div) and step.inputs == (x, root.output):
            chain.append(step)
        elif step is not None and isinstance(step.op, O.Reciprocal):
            mul = sole(step.output)
            if mul is None or not isinstance(mul.op, O.Mul) or sorted(mul.inputs) != sorted((x, step.output)):
                continue
            chain += [step, mul]
        else:
            continue
        scale = None
        after = sole(chain[-1].output)
        if after is not None and isinstance(after.op, O.Affine) and after.op.shift is None and after.op.scale is not None:
            s = np.asarray(after.op.scale)
            trailing = shapes[x][first:]
            if s.ndim <= len(trailing) and all(a in (1, b) for a, b in zip(s.shape[::-1], trailing[::-1], strict=False)):
                scale = s
                chain.append(after)
        last = chain[-1]
        eps = float(np.asarray(add.op.shift).reshape(-1)[0])
        replaced[last.output] = Node(name=last.name, op=O.LayerNorm(axis=first, epsilon=eps, scale=scale,
                                                                    centered=False),
                                     inputs=(x,), output=last.output,
                                     source_op="+".join(n.source_op or type(n.op).__name__ for n in chain))
        dropped.update(n.output for n in chain[:-1])
    if not replaced:
        return graph
    nodes = tuple(replaced.get(n.output, n) for n in graph.nodes if n.output not in dropped)
    return with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=nodes).validate())


def gather_slices(graph: Graph) -> Graph:
    """A Concat whose inputs are all Slices of one value along the Concat's axis (each keeping the
    other axes whole) becomes one Gather of that value by the concatenated indices: torch.roll and
    chunk-and-reorder as exporters write them (Slice, Slice, Concat). The values are the same
    copies; the bound is Gather's exact sqrt(largest number of copies) (1 for a roll) instead of
    the Concat's sum over its parts. A Slice read by nothing else is dropped."""
    from stabaudit.ir.executor import with_shapes

    known = all(n.output in graph.shapes for n in graph.nodes)
    shapes = dict(graph.shapes if known else with_shapes(graph.validate()).shapes)
    producer = {n.output: n for n in graph.nodes}
    users = graph.consumers()
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()
    for node in graph.nodes:
        if not isinstance(node.op, O.Concat) or len(node.inputs) < 2:
            continue
        parts = [producer.get(name) for name in node.inputs]
        if any(p is None or not isinstance(p.op, O.Slice) for p in parts):
            continue
        sources = {p.inputs[0] for p in parts if p is not None}
        if len(sources) != 1:
            continue
        (source,) = sources
        shape = shapes[source]
        axis = node.op.axis % len(shape)
        indices: list[int] = []
        for part in parts:
            assert part is not None and isinstance(part.op, O.Slice)
            op = part.op
            others_whole = all(
                (op.starts[a], op.ends[a], op.steps[a]) == (0, shape[a], 1) for a in range(len(shape)) if a != axis)
            if not others_whole:
                break
            indices.extend(range(op.starts[axis], op.ends[axis], op.steps[axis]))
        else:
            replaced[node.output] = Node(name=node.name, op=O.Gather(axis=axis, indices=np.asarray(indices, np.int64)),
                                         inputs=(source,), output=node.output, source_op=node.source_op)
            dropped.update(p.output for p in parts if p is not None and p.output not in graph.outputs
                           and all(u is node for u in users[p.output]))  # read by this Concat only
    if not replaced:
        return graph
    nodes = tuple(replaced.get(n.output, n) for n in graph.nodes if n.output not in dropped)
    return with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=nodes).validate())


def _square_of(node: Node | None) -> str | None:
    """x when ``node`` is x ** 2 (Pow 2 or Mul(x, x)), else None."""
    if node is None:
        return None
    if isinstance(node.op, O.Pow) and node.op.exponent == 2.0 or isinstance(node.op, O.Mul) and node.inputs[0] == node.inputs[1]:
        return node.inputs[0]
    return None


def _stacked_slices(terms: list[str], producer: Mapping[str, Node], shapes: Mapping[str, tuple[int, ...]],
                    sole: Callable[[str], Node | None], readers: Mapping[str, Node]) -> tuple[str, O.Slice, int] | None:
    """(X, the Slice of X that the terms tile, the axis) when every term is a unit-step Slice of one
    value X, read only by its square, the same on every axis but one, where they are chunks of one
    length that tile a range: sqrt(sum_j x_j^2) is then ReduceL2 over that axis of X's range,
    reshaped to (terms, length)."""
    slices = [producer.get(t) for t in terms]
    if not all(s is not None and isinstance(s.op, O.Slice) and sole(s.output) is readers[t]
               for s, t in zip(slices, terms, strict=True)):
        return None
    ops = [s.op for s in slices if s is not None and isinstance(s.op, O.Slice)]
    source = {s.inputs[0] for s in slices if s is not None}
    if len(source) != 1 or any(any(step != 1 for step in op.steps) for op in ops):
        return None
    x = source.pop()
    differ = [a for a in range(len(ops[0].starts)) if len({(op.starts[a], op.ends[a]) for op in ops}) > 1]
    if len(differ) != 1:
        return None
    axis = differ[0]
    chunks = sorted((op.starts[axis], op.ends[axis]) for op in ops)
    length = chunks[0][1] - chunks[0][0]
    if length <= 0 or any(b - a != length or a != chunks[0][0] + j * length for j, (a, b) in enumerate(chunks)):
        return None
    starts, ends = list(ops[0].starts), list(ops[0].ends)
    starts[axis], ends[axis] = chunks[0][0], chunks[-1][1]
    if not all(0 <= s <= e <= d for s, e, d in zip(starts, ends, shapes[x], strict=True)):
        return None
    return x, O.Slice(starts=tuple(starts), ends=tuple(ends), steps=tuple(1 for _ in starts)), axis


def fuse_root_of_squares(graph: Graph) -> Graph:
    """sqrt of a sum of squares becomes one ReduceL2, whose global constant is 1 (a norm of each
    group), where the square root alone has none (its slope is unbounded at 0): the magnitude of an
    STFT written out (sqrt(re^2 + im^2), re and im slices of one convolution, as audio front ends
    export it), a norm written out (sqrt(sum(x^2, axes)), sqrt(ReduceSumSquare(x))).

    - Sqrt(x_1^2 + .. + x_k^2) of k values of one shape (a tree of Adds, k >= 2): when the x_j are
      unit-step Slices of one value X that tile a range of one axis in chunks of one length n, it is
      ReduceL2 over that axis of X's range reshaped to (k, n) (the same pairs of entries; the
      reshape and the slice are exact selections); otherwise each x_j gets a trailing axis of one,
      they are concatenated along it, and ReduceL2 reduces it.
    - Sqrt(ReduceSum(x^2)) and Sqrt(ReduceSumSquare(x)): ReduceL2 with the same axes and keepdims.
    The map is the same in exact arithmetic: no constant is rounded. A mean under the root
    (sqrt(mean(x^2)), a standard deviation) or an eps added before it is left as it is: the scale
    1/sqrt(n) or the entry sqrt(eps) would be rounded. Every intermediate value must be read only
    by the next step."""
    from stabaudit.ir.executor import with_shapes

    shapes, producer, sole = _single_readers(graph)
    replaced: dict[str, list[Node]] = {}
    dropped: set[str] = set()
    for root in graph.nodes:
        if not isinstance(root.op, O.Sqrt):
            continue
        inner = producer.get(root.inputs[0])
        if inner is None or sole(inner.output) is not root or inner.output in dropped:
            continue
        chain: list[Node] = [inner]
        name = root.output
        if isinstance(inner.op, O.ReduceSumSquare | O.ReduceSum):
            x = inner.inputs[0]
            if isinstance(inner.op, O.ReduceSum):
                square = producer.get(x)
                x = _square_of(square) or ""
                if not x or square is None or sole(square.output) is not inner:
                    continue
                chain.append(square)
            new = [Node(name=root.name, op=O.ReduceL2(axes=inner.op.axes, keepdims=inner.op.keepdims), inputs=(x,),
                        output=name, source_op="+".join(n.source_op or type(n.op).__name__ for n in [*chain[::-1], root]))]
        elif isinstance(inner.op, O.Add):
            terms: list[str] = []
            readers: dict[str, Node] = {}
            todo, ok = [inner], True
            while todo and ok:
                add = todo.pop()
                for part in add.inputs:
                    node = producer.get(part)
                    if node is None or sole(part) is not add or add.inputs[0] == add.inputs[1]:
                        ok = False
                    elif isinstance(node.op, O.Add):
                        chain.append(node)
                        todo.append(node)
                    elif (term := _square_of(node)) is not None:
                        chain.append(node)
                        terms.append(term)
                        readers[term] = node
                    else:
                        ok = False
            shape = shapes[root.output]
            if not ok or len(terms) < 2 or len(set(terms)) != len(terms) or any(shapes[t] != shape for t in terms):
                continue
            source = " + ".join(n.source_op or type(n.op).__name__ for n in chain[::-1])
            stacked = _stacked_slices(terms, producer, shapes, sole, readers)
            if stacked is not None:
                x, cut, axis = stacked
                k, n = len(terms), shape[axis]
                whole = cut.starts == tuple(0 for _ in cut.starts) and cut.ends == shapes[x]
                new = [] if whole else [Node(name=f"{root.name}/range", op=cut, inputs=(x,), output=f"{name}/range")]
                grouped = (*shape[:axis], k, n, *shape[axis + 1:])
                new.append(Node(name=f"{root.name}/pairs", op=O.Reshape(shape=grouped),
                                inputs=(new[-1].output if new else x,), output=f"{name}/pairs"))
                new.append(Node(name=root.name, op=O.ReduceL2(axes=(axis,), keepdims=False), inputs=(new[-1].output,),
                                output=name, source_op=f"Slice + {source} + Sqrt"))
                chain += [producer[t] for t in terms]
            else:
                parts = [Node(name=f"{root.name}/part{j}", op=O.Reshape(shape=(*shape, 1)), inputs=(t,),
                              output=f"{name}/part{j}") for j, t in enumerate(terms)]
                stack = Node(name=f"{root.name}/stack", op=O.Concat(axis=len(shape)),
                             inputs=tuple(p.output for p in parts), output=f"{name}/stack")
                new = [*parts, stack, Node(name=root.name, op=O.ReduceL2(axes=(len(shape),), keepdims=False),
                                           inputs=(stack.output,), output=name, source_op=f"{source} + Sqrt")]
        else:
            continue
        replaced[name] = new
        dropped.update(n.output for n in chain)
    if not replaced:
        return graph
    nodes = tuple(m for n in graph.nodes if n.output not in dropped for m in replaced.get(n.output, [n]))
    return with_shapes(Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=nodes).validate())
