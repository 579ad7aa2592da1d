"""Einsum lowered onto IR ops, for both loaders (ONNX Einsum, TorchScript aten::einsum): one or
two operands without repeated letters in an operand (no diagonals) become Transpose, ReduceSum,
Reshape and a MatMul of the variables, or a Linear when the second operand is a constant without
batch letters (a letter of both operands and the output).

The letters fall in classes: batch (both operands and the output), contracted (both operands
only), free (one operand and the output) and summed (one operand only, summed first). Each
operand is transposed to [batch, free, contracted] (the second to [batch, contracted, free]),
flattened to 3-D, multiplied, and the product is reshaped to [batch, free1, free2] and transposed
to the output's order: the same sums of products, in another order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np

from stabaudit.ir import ops as O

H = TypeVar("H")


class EinsumUnsupported(Exception):
    """An einsum outside the lowering (each loader reports it as its own refusal)."""


class Builder(Protocol, Generic[H]):
    """What the lowering needs of a loader: emit an IR op (``tag`` None: the einsum's own output)
    and read a value's static shape."""

    def emit(self, op: O.Op, inputs: Sequence[H], tag: str | None) -> H: ...

    def shape(self, value: H) -> tuple[int, ...]: ...


def einsum_terms(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """The letters of each operand and of the output, '...' spelled out with letters that the
    equation does not use (numpy's rules: the implicit output is the ellipsis, then the letters that
    appear once, in alphabetical order)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    parts = lhs.split(",")
    if len(parts) != len(ranks):
        raise EinsumUnsupported(f"'{equation}' names {len(parts)} operands for {len(ranks)} inputs")
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
            raise EinsumUnsupported(f"'{equation}': operand subscripts do not match its rank {rank}")
        terms.append(part)
    if arrow:
        out = rhs.replace("...", fill)
    else:
        counts = {c: sum(t.count(c) for t in terms) for c in "".join(terms)}
        out = fill + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in fill))
    if not out.isalpha() and out != "":
        raise EinsumUnsupported(f"'{equation}': output subscripts")
    return terms, out


class _Lowering(Generic[H]):
    def __init__(self, b: Builder[H]) -> None:
        self.b = b

    def sum_out(self, value: H, term: str, others: list[str], tag: str) -> tuple[H, str]:
        """The operand with its letters found nowhere else summed out (ReduceSum), and its remaining letters."""
        axes = tuple(i for i, c in enumerate(term) if not any(c in o for o in others))
        if not axes:
            return value, term
        summed = self.b.emit(O.ReduceSum(axes=axes, keepdims=False), [value], f"{tag}_sum")
        return summed, "".join(c for i, c in enumerate(term) if i not in axes)

    def transpose(self, value: H, term: str, order: list[str], tag: str) -> H:
        perm = tuple(term.index(c) for c in order)
        if perm == tuple(range(len(term))):
            return value
        return self.b.emit(O.Transpose(perm=perm), [value], tag)

    def reshape(self, value: H, shape: tuple[int, ...], tag: str) -> H:
        if tuple(self.b.shape(value)) == tuple(shape):
            return value
        return self.b.emit(O.Reshape(shape=tuple(int(d) for d in shape)), [value], tag)

    def out(self, value: H, term: str, out: str) -> H:
        """The result [term] summed over the letters the output drops and transposed to ``out``;
        the last op emitted is the einsum's output (none when the value is already in order)."""
        drop = tuple(i for i, c in enumerate(term) if c not in out)
        kept = "".join(c for c in term if c in out)
        perm = tuple(kept.index(c) for c in out)
        identity = perm == tuple(range(len(kept)))
        if drop:
            value = self.b.emit(O.ReduceSum(axes=drop, keepdims=False), [value], None if identity else "out_sum")
        if identity:
            return value
        return self.b.emit(O.Transpose(perm=perm), [value], None)


def lower_einsum(b: Builder[H], equation: str, operands: Sequence[H | None], constants: Sequence[np.ndarray | None],
                 shapes: Sequence[tuple[int, ...]]) -> H:
    """The einsum of ``operands`` (a value, or None where ``constants`` holds the operand) as IR
    ops emitted through ``b``; returns the value holding the result (an operand itself when the
    einsum is the identity)."""
    terms, out = einsum_terms(equation, [len(s) for s in shapes])
    if len(terms) > 2:
        raise EinsumUnsupported("of more than two operands")
    if any(len(set(t)) != len(t) for t in terms) or len(set(out)) != len(out):
        raise EinsumUnsupported("with a repeated letter in one operand (a diagonal)")
    if any(c not in "".join(terms) for c in out):
        raise EinsumUnsupported("with an output letter no operand has")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for c, d in zip(term, shape, strict=True):
            if sizes.setdefault(c, d) != d:
                raise EinsumUnsupported(f"with letter {c!r} of sizes {sizes[c]} and {d} (broadcast)")
    values, consts = list(operands), list(constants)
    if len(terms) == 2 and values[0] is None and values[1] is not None:
        terms, values, consts = terms[::-1], values[::-1], consts[::-1]  # the variable first
    first = values[0]
    if first is None:
        raise EinsumUnsupported("of constants only")
    low = _Lowering(b)
    value, term = low.sum_out(first, terms[0], [*terms[1:], out], "a")
    if len(terms) == 1:
        return low.out(value, term, out)
    other = terms[1]
    batch = [c for c in term if c in other and c in out]
    contract = [c for c in term if c in other and c not in out]
    free_a = [c for c in term if c not in other]
    const_b, second = consts[1], values[1]
    if second is None:
        assert const_b is not None
        free_b = [c for c in other if c not in term and c in out]
        keep = [other.index(c) for c in other if c in term or c in out]
        summed = tuple(i for i in range(len(other)) if i not in keep)
        b_arr = np.asarray(const_b, dtype=np.float64)
        b_arr = b_arr.sum(axis=summed) if summed else b_arr
        other = "".join(other[i] for i in keep)
        if batch:
            raise EinsumUnsupported("of a variable and a constant with batch letters (a batched constant)")
        a_t = low.transpose(value, term, free_a + contract, "a_order")
        fa = int(np.prod([sizes[c] for c in free_a], dtype=np.int64))
        k = int(np.prod([sizes[c] for c in contract], dtype=np.int64))
        fb = int(np.prod([sizes[c] for c in free_b], dtype=np.int64))
        flat = low.reshape(a_t, (fa, k), "a_flat")
        w = np.transpose(b_arr, [other.index(c) for c in contract + free_b]).reshape(k, fb)
        prod = b.emit(O.Linear(weight=np.ascontiguousarray(w.T)), [flat], "linear")
        res_term = "".join(free_a + free_b)
        return low.out(low.reshape(prod, tuple(sizes[c] for c in res_term), "product"), res_term, out)
    value_b, other = low.sum_out(second, other, [term, out], "b")
    free_b = [c for c in other if c not in term]
    a_t = low.transpose(value, term, batch + free_a + contract, "a_order")
    b_t = low.transpose(value_b, other, batch + contract + free_b, "b_order")
    nb, fa, k, fb = (int(np.prod([sizes[c] for c in group], dtype=np.int64)) for group in (batch, free_a, contract, free_b))
    a3 = low.reshape(a_t, (nb, fa, k), "a_flat")
    b3 = low.reshape(b_t, (nb, k, fb), "b_flat")
    prod = b.emit(O.MatMul(), [a3, b3], "matmul")
    res_term = "".join(batch + free_a + free_b)
    return low.out(low.reshape(prod, tuple(sizes[c] for c in res_term), "product"), res_term, out)
