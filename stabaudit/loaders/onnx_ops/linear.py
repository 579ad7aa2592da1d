"""Translators of Gemm and MatMul with constant weights into Linear nodes, and of Einsum."""

from __future__ import annotations

import numpy as np

from stabaudit.errors import ModelLoadError, ResourceError
from stabaudit.ir import ops as O
from stabaudit.ir.maps import cumulative_sum_weight
from stabaudit.loaders.base import MAX_ELEMENTS
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, register
from stabaudit.rounding import scaled_matrix


@register("Gemm")
def gemm(node: OnnxNode, ctx: Context) -> None:
    """Y = alpha * A' @ B' + beta * C with A' = A or A.T (a Transpose node) and B, C constant.

    The weight is alpha * B' transposed to [out, in]; alpha * b and beta * c are exact in float64
    (the product of two float32 numbers has at most 48 significant bits); for a float64 B the
    product's rounding (underflow included) is bounded in the Linear's ``error``. A bias C whose
    rows are all equal becomes the Linear bias, any other C an Affine shift after it.
    """
    a = node.inputs[0]
    if ctx.const(node.inputs[1]) is None:
        _gemm_of_variables(node, ctx)
        return
    b = ctx.param(node, 1, "B")
    c = ctx.param(node, 2, "C", optional=True)
    assert b is not None
    if len(ctx.shape(a)) != 2 or b.ndim != 2:
        raise Unsupported("Gemm(operands not 2-D)")
    alpha, beta = float(node.attr("alpha")), float(node.attr("beta"))
    weight = b if node.attr("transB") else b.T  # [out, in]
    error = 0.0
    if alpha != 1.0:
        weight, error = scaled_matrix(weight, alpha)
    if node.attr("transA"):
        a = ctx.emit(node, O.Transpose(perm=(1, 0)), [a], tag="transA")
    rows, out = ctx.shape(a)[0], weight.shape[0]
    bias, shift = None, None
    if c is not None:
        if rows * out > MAX_ELEMENTS:  # before C is broadcast to the output's shape
            raise ResourceError(f"Gemm output [{rows}, {out}] is above the limit of {MAX_ELEMENTS} elements")
        c = np.broadcast_to(c.astype(np.float64) * beta if beta != 1.0 else c, (rows, out))
        if (c == c[:1]).all():
            bias = np.ascontiguousarray(c[0])
        else:
            shift = np.ascontiguousarray(c)
    linear = O.Linear(weight=np.ascontiguousarray(weight), bias=bias, error=error)
    w_term = ctx.term(node, 1, "weight (B)", coefficient=alpha, transpose=not node.attr("transB"))
    c_term = ctx.term(node, 2, "bias (C)", coefficient=beta) if c is not None else None
    if shift is None:
        y = ctx.emit(node, linear, [a])
        ctx.bind(y, "weight", [w_term])
        if bias is not None:
            ctx.bind(y, "bias", [c_term])
    else:
        y = ctx.emit(node, linear, [a], tag="linear")
        ctx.bind(y, "weight", [w_term])
        z = ctx.emit(node, O.Affine(shift=shift), [y])
        ctx.bind(z, "shift", [c_term])


def _gemm_of_variables(node: OnnxNode, ctx: Context) -> None:
    """alpha * A' @ B' + beta * C with B variable: Transposes, a MatMul of the two variables, a scale
    alpha and a constant shift beta * C (Affine nodes); a variable C is refused."""
    a, b = node.inputs[0], node.inputs[1]
    if ctx.is_const(a):
        raise Unsupported("Gemm(constant x variable)")
    if len(ctx.shape(a)) != 2 or len(ctx.shape(b)) != 2:
        raise Unsupported("Gemm(operands not 2-D)")
    c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if c_name is not None and not ctx.is_const(c_name):
        raise Unsupported("Gemm(variable C)")
    alpha, beta = float(node.attr("alpha")), float(node.attr("beta"))
    if node.attr("transA"):
        a = ctx.emit(node, O.Transpose(perm=(1, 0)), [a], tag="transA")
    if node.attr("transB"):
        b = ctx.emit(node, O.Transpose(perm=(1, 0)), [b], tag="transB")
    if ctx.shape(a)[1] != ctx.shape(b)[0]:
        raise ModelLoadError(f"Gemm of shapes {list(ctx.shape(a))} and {list(ctx.shape(b))} (after transA/transB)")
    c = ctx.const(c_name)
    last = alpha == 1.0 and c is None
    y = ctx.emit(node, O.MatMul(), [a, b], tag=None if last else "matmul")
    if last:
        return
    out_shape = (ctx.shape(a)[0], ctx.shape(b)[1])
    shift = None
    if c is not None:
        shift = np.ascontiguousarray(np.broadcast_to(np.asarray(c, dtype=np.float64) * beta, out_shape))
    scale = np.array(alpha, dtype=np.float64) if alpha != 1.0 else None
    ctx.emit(node, O.Affine(scale=scale, shift=shift), [y])


@register("MatMul")
def matmul(node: OnnxNode, ctx: Context) -> None:
    """x @ B with a constant 2-D B [in, out] is Linear(weight=B.T); a 1-D b drops the last axis."""
    a, b = node.inputs[0], node.inputs[1]
    if ctx.is_const(a):
        raise Unsupported("MatMul(constant x variable)")
    weight = ctx.const(b)
    if weight is None:
        ctx.emit(node, O.MatMul(), [a, b])  # attention's Q K^T and P V: bounded only over a domain
        return
    if weight.ndim == 2:
        y = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight.T)), [a])
        ctx.bind(y, "weight", [ctx.term(node, 1, "weight (B)", transpose=True)])
    elif weight.ndim == 1:
        y = ctx.emit(node, O.Linear(weight=weight.reshape(1, -1)), [a], tag="linear")
        ctx.bind(y, "weight", [ctx.term(node, 1, "weight (B)")])
        ctx.emit(node, O.Reshape(shape=ctx.shape(y)[:-1]), [y])
    else:
        raise Unsupported("MatMul(batched constant)")


def _einsum_terms(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The letters of each operand and of the output, '...' spelled out with letters that the
    equation does not use (numpy's rules: the implicit output is the ellipsis, then the letters that
    appear once, in alphabetical order)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    parts = lhs.split(",")
    if len(parts) != len(ranks):
        raise Unsupported(f"Einsum('{equation}') names {len(parts)} operands for {len(ranks)} inputs")
    used = set(eq) - set(".,->")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    ellipsis = 0
    for part, rank in zip(parts, ranks, strict=True):
        if "..." in part:
            ellipsis = max(ellipsis, rank - len(part.replace("...", "")))
    fill = "".join(spare[:ellipsis])
    terms = []
    for part, rank in zip(parts, ranks, strict=True):
        if "..." in part:
            n = rank - len(part.replace("...", ""))
            part = part.replace("...", fill[ellipsis - n:])  # right-aligned, as numpy broadcasts
        if len(part) != rank or (part and not part.isalpha()):
            raise Unsupported(f"Einsum('{equation}'): operand subscripts do not match its rank {rank}")
        terms.append(part)
    if arrow:
        out = rhs.replace("...", fill)
    else:
        counts = {c: sum(t.count(c) for t in terms) for c in "".join(terms)}
        out = fill + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in fill))
    if not out.isalpha() and out != "":
        raise Unsupported(f"Einsum('{equation}'): output subscripts")
    return terms, out


@register("Einsum")
def einsum(node: OnnxNode, ctx: Context) -> None:
    """Einsum of one or two operands without repeated letters in an operand (no diagonals): lowered
    onto Transpose, ReduceSum, Reshape and a MatMul of the variables, or a Linear when the second
    operand is a constant without batch letters (a letter of both operands and the output).

    The letters fall in classes: batch (both operands and the output), contracted (both operands
    only), free (one operand and the output) and summed (one operand only, summed first). Each
    operand is transposed to [batch, free, contracted] (the second to [batch, contracted, free]),
    flattened to 3-D, multiplied, and the product is reshaped to [batch, free1, free2] and
    transposed to the output's order: the same sums of products, in another order."""
    shapes = [ctx.shape(name) if (held := ctx.const(name)) is None else tuple(np.shape(held)) for name in node.inputs]
    terms, out = _einsum_terms(str(node.attr("equation")), [len(s) for s in shapes])
    if len(terms) > 2:
        raise Unsupported("Einsum of more than two operands")
    if any(len(set(t)) != len(t) for t in terms) or len(set(out)) != len(out):
        raise Unsupported("Einsum with a repeated letter in one operand (a diagonal)")
    if any(c not in "".join(terms) for c in out):
        raise Unsupported("Einsum with an output letter no operand has")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for c, d in zip(term, shape, strict=True):
            if sizes.setdefault(c, d) != d:
                raise Unsupported(f"Einsum with letter {c!r} of sizes {sizes[c]} and {d} (broadcast)")
    names = list(node.inputs)
    if len(terms) == 2 and ctx.is_const(names[0]) and not ctx.is_const(names[1]):
        terms, names, shapes = terms[::-1], names[::-1], shapes[::-1]  # the variable first
    if ctx.is_const(names[0]):
        raise Unsupported("Einsum of constants only")
    # letters of one operand that are neither in the other nor in the output: summed first
    value, term = _einsum_sum(node, ctx, names[0], terms[0], [*terms[1:], out], "a")
    if len(terms) == 1:
        _einsum_out(node, ctx, value, term, out, {c: sizes[c] for c in term})
        return
    other = terms[1]
    batch = [c for c in term if c in other and c in out]
    contract = [c for c in term if c in other and c not in out]
    free_a = [c for c in term if c not in other]
    const_b = ctx.const(names[1])
    if const_b is not None:
        free_b = [c for c in other if c not in term and c in out]
        keep = [other.index(c) for c in other if c in term or c in out]
        summed = tuple(i for i in range(len(other)) if i not in keep)
        b_arr = np.asarray(const_b, dtype=np.float64).sum(axis=summed) if summed else np.asarray(const_b, dtype=np.float64)
        other = "".join(other[i] for i in keep)
        if batch:
            raise Unsupported("Einsum of a variable and a constant with batch letters (a batched constant)")
        a_t = _einsum_transpose(node, ctx, value, term, free_a + contract, "a_order")
        fa = int(np.prod([sizes[c] for c in free_a], dtype=np.int64))
        k = int(np.prod([sizes[c] for c in contract], dtype=np.int64))
        fb = int(np.prod([sizes[c] for c in free_b], dtype=np.int64))
        flat = _einsum_reshape(node, ctx, a_t, (fa, k), "a_flat")
        w = np.transpose(b_arr, [other.index(c) for c in contract + free_b]).reshape(k, fb)
        prod = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(w.T)), [flat], tag="linear")
        res_term = "".join(free_a + free_b)
        res = _einsum_reshape(node, ctx, prod, tuple(sizes[c] for c in res_term), "product")
        _einsum_out(node, ctx, res, res_term, out, sizes)
        return
    value_b, other = _einsum_sum(node, ctx, names[1], other, [term, out], "b")
    free_b = [c for c in other if c not in term]
    a_t = _einsum_transpose(node, ctx, value, term, batch + free_a + contract, "a_order")
    b_t = _einsum_transpose(node, ctx, value_b, other, batch + contract + free_b, "b_order")
    nb, fa, k, fb = (int(np.prod([sizes[c] for c in group], dtype=np.int64)) for group in (batch, free_a, contract, free_b))
    a3 = _einsum_reshape(node, ctx, a_t, (nb, fa, k), "a_flat")
    b3 = _einsum_reshape(node, ctx, b_t, (nb, k, fb), "b_flat")
    prod = ctx.emit(node, O.MatMul(), [a3, b3], tag="matmul")
    res_term = "".join(batch + free_a + free_b)
    res = _einsum_reshape(node, ctx, prod, tuple(sizes[c] for c in res_term), "product")
    _einsum_out(node, ctx, res, res_term, out, sizes)


def _einsum_sum(node: OnnxNode, ctx: Context, value: str, term: str, others: list[str], tag: str) -> tuple[str, str]:
    """The operand with its letters found nowhere else summed out (ReduceSum), and its remaining letters."""
    axes = tuple(i for i, c in enumerate(term) if not any(c in o for o in others))
    if not axes:
        return value, term
    summed = ctx.emit(node, O.ReduceSum(axes=axes, keepdims=False), [value], tag=f"{tag}_sum")
    return summed, "".join(c for i, c in enumerate(term) if i not in axes)


def _einsum_transpose(node: OnnxNode, ctx: Context, value: str, term: str, order: list[str], tag: str) -> str:
    perm = tuple(term.index(c) for c in order)
    if perm == tuple(range(len(term))):
        return value
    return ctx.emit(node, O.Transpose(perm=perm), [value], tag=tag)


def _einsum_reshape(node: OnnxNode, ctx: Context, value: str, shape: tuple[int, ...], tag: str) -> str:
    if tuple(ctx.shape(value)) == tuple(shape):
        return value
    return ctx.emit(node, O.Reshape(shape=tuple(int(d) for d in shape)), [value], tag=tag)


def _einsum_out(node: OnnxNode, ctx: Context, value: str, term: str, out: str, sizes: dict[str, int]) -> None:
    """The result [term] summed over the letters the output drops, transposed to ``out`` and
    written as the node's output."""
    drop = tuple(i for i, c in enumerate(term) if c not in out)
    if drop:
        value = ctx.emit(node, O.ReduceSum(axes=drop, keepdims=False), [value], tag="out_sum")
        term = "".join(c for c in term if c in out)
    perm = tuple(term.index(c) for c in out)
    if perm == tuple(range(len(term))):
        # the last value of the translation is the output (or, for an identity, the input itself)
        ctx.alias(node, value, removed=value == node.inputs[0])
        return
    ctx.emit(node, O.Transpose(perm=perm), [value])


@register("CumSum")
def cumsum(node: OnnxNode, ctx: Context) -> None:
    """CumSum of a variable along a constant axis: y_i = the sum of x_j over j <= i (j < i when
    ``exclusive``; j >= i or j > i when ``reverse``), a Linear over that axis with a 0/1 triangular
    weight (moved last by a Transpose and back when it is not the last axis)."""
    x = node.inputs[0]
    shape = ctx.shape(x)
    axis_value = ctx.param(node, 1, "axis")
    assert axis_value is not None
    rank = len(shape)
    if not rank:
        raise Unsupported("CumSum(a scalar)")
    axis = int(np.asarray(axis_value).reshape(-1)[0])
    if not -rank <= axis < rank:
        raise ModelLoadError(f"CumSum axis {axis} out of range for rank {rank}")
    axis %= rank
    weight = cumulative_sum_weight(shape[axis], exclusive=bool(int(node.attr("exclusive", 0))),
                                   reverse=bool(int(node.attr("reverse", 0))))
    if axis == rank - 1:
        ctx.emit(node, O.Linear(weight=weight), [x])
        return
    perm = tuple(a for a in range(rank) if a != axis) + (axis,)
    moved = ctx.emit(node, O.Transpose(perm=perm), [x], tag="last")
    summed = ctx.emit(node, O.Linear(weight=weight), [moved], tag="sums")
    ctx.emit(node, O.Transpose(perm=tuple(int(p) for p in np.argsort(perm))), [summed])
