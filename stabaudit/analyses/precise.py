"""The exact outputs of a network to 100 bits and more, with a certified error bound.

Why. A lower bound of the Lipschitz constant is a difference quotient ||f(y) - f(x)|| / ||y - x||
of the exact function of the stored weights; the float64 evaluation is within a certified error
bound of it (``lower.ForwardErrorModel``), and a quotient counts only when the computed difference
exceeds the two points' bounds. In deep networks (a ResNet-18 at 224x224, a MobileNetV3 of 30
layers) that bound, which follows |W| through every layer, reaches many times the output itself:
no quotient can be confirmed in float64. This module evaluates the same graph with each value
carried as an unevaluated sum of K float64 tensors (K limbs: double-double for K = 2, about 106
bits; K = 4 about 210 bits) and a componentwise bound E of the distance to the exact value, so that
the error bound shrinks by some 2^-50 per limb beyond the first and quotients confirm. The model
starts with two limbs and takes four from then on when an evaluation's bound is still above
ESCALATE times its outputs (its |W| growth is that large; ``PreciseModel.limbs``).

Sums of limbs (``_distill``): the terms of an exact sum (limbs, TwoSum and TwoProduct results)
are passed twice through VecSum (Ogita, Rump and Oishi, "Accurate sum and dot product", SIAM J.
Sci. Comput. 26, 2005: a cascade of TwoSum that keeps the sum exactly, its first term the
float64 sum and the others the errors); the first term is a limb and the others are distilled
again, until K - 1 limbs are taken; the last limb is the float64 sum of what is left, whose error
(gamma_(n-1) times the sum of its magnitudes, Higham, Accuracy and Stability, 4.2) joins the
node's own error. Every value is exactly the sum of its limbs up to that bound.

How a linear map is applied (error-free transformation by splitting; Ozaki, Ogita, Oishi and Rump,
"Error-free transformations of matrix multiplication by using fast routines of matrix
multiplication and its applications", Numer. Algorithms 59, 2012). A node y = A(W, x) + b whose
output entries are sums of K products w x (Linear, Conv, ConvTranspose; Affine with K = 1; means
and sums with the coefficient 1/n or 1) splits W and x into slices W = W_1 + .. + W_P + W_r and
x = x_1 + .. + x_Q + x_r (Q grows with the limbs). Slice p of a tensor t is extracted with sigma = 2^k as
q = fl(fl(sigma + t) - sigma) (Rump, Ogita and Oishi, "Accurate floating-point summation part I",
SIAM J. Sci. Comput. 31, 2008, ExtractVector): with max |t| <= 2^e and k = e + 54 - beta, q is
exact, a multiple of 2^(k-53) with fewer than 2^beta units, and |t - q| <= 2^(k-53) (t - q is exact
too). Choosing 2 beta + ceil(log2 K) <= 53, every product of slices w_p x_q is a multiple of
2^(k_p + k_q - 106) with fewer than 2^(2 beta) units, and every sum of K of them, in any order, has
fewer than 2^53 units: the float64 kernel A(W_p, x_q) is exact, however it orders its sums, as long
as it computes sums of products (no transform-based convolution; torch's float64 CPU kernels are
im2col and dot products). The exact terms are added into K limbs by a cascade of TwoSum (Knuth),
exact; what falls off the last limb is bounded by its magnitude. What the slices leave out is
bounded by |A|(|W|, |x_r|) + |A|(|W_r| + D, |x|) (D: a bound of the coefficient's own
representation error, for 1/n), computed in float64 with the relative margin (1 + 2 gamma_(K+2))
of a sum of nonnegative terms (Higham, Lemma 3.1). The error in from the input, |A(W, e)| <=
|A|(|W|, E), is propagated alike.

Average pooling is such a map too: window sums of the zero-padded input (K the window size) times
1/count, the executor's count per window, held in limbs with its exact remainder.
The other operators: sums and differences of two values as the distilled limbs of both (exact up
to the last limb's rounding); products of two values by TwoProduct (Dekker's, with Veltkamp's
splitting: exact without overflow or underflow) of every pair of limbs whose orders sum below K,
the others bounded by their magnitudes; HardSwish as 0, x or x (x + 3) / 6 by the side of -3 and 3
that the value lies on (the sum, the product and the multiplication by 1/6 in limbs, 1/6 with its
exact remainder), with the bound (3/2) E of its Lipschitz constant; HardSigmoid as the affine map
then the clip; Max and Min of values and a constant as b + max(a - b, 0); Relu, Clip, LeakyRelu,
PRelu by the side of the kink that the value's limbs sum to: the difference to the kink is
distilled and summed in float64 within r (gamma_(K+1) of its magnitudes plus what the distilling
dropped); a unit further than E + r from the kink keeps its exact branch, one within takes the
branch of the computed sum, with the bound max(1, |slope|) E and, where the side may be misread
(within r of the kink), the other branch's distance 2 r added; max pooling as that maximum taken
pairwise over each window, with the window's largest E (max is 1-Lipschitz in the largest
entry); entries moved (reshape, transpose, slice, gather, tile, concat, constant pad, nearest
resizing) move the limbs and E alike. Any other operator is evaluated in float64 on the rounded
sum of the limbs with the float64 error rules of ``lower.ForwardErrorModel`` when one is given
(from there on the bound is float64's, which costs little near the outputs: a softmax or sigmoid
head); without one the graph is not supported (``PreciseModel.why`` says which operator).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.errors import StabauditError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node
from stabaudit.limits import check_deadline, raise_allocation_failure

if TYPE_CHECKING:
    import torch

    from stabaudit.analyses.lower import ForwardErrorModel

U = 2.0**-53  # unit roundoff of float64
TINY = 1e-290  # absolute slack against underflow
SLICES = 4  # slices of a value (Q) and at most as many of a coefficient (P), with two limbs
# slices whose unit would fall below 2^MIN_UNIT_EXPONENT stay in the remainder (their products
# could underflow)
MIN_UNIT_EXPONENT = -480
# evaluations of this model per float64 forward pass of the graph, for the cost model: the P x Q
# slice products of the linear nodes, two magnitude passes and the TwoSum additions (measured on
# one core, with the sensitivities: the malviz ResNet-18 at 224x224 1.79 s for a float64 pass
# planned at 0.118 s, a seeded ResNet-50 4.67 s for 0.265 s, the captcha CRNN 1.10 s for 0.070 s)
PASSES = 16.0
# the same with four limbs (the ResNet-18 above: 4.55 s)
PASSES_4 = 40.0
# multiply-accumulates of the cost model per output entry of the operators evaluated in limbs
# entry by entry, with two and with four limbs (measured on one core: a CRNN with 1.39 million
# entries of Sigmoid, Tanh and SiLU, 3.8 s and 36 s beyond its linear maps; a MobileNetV3-style
# classifier with 2.5 million HardSwish entries, 1.1 s and 4.4 s; with two limbs in Dekker's
# product and the double-double sum, 400,000 entries of Sigmoid or SiLU take 3.3e3 to 3.7e3 units
# an entry, 9.5e3 before)
ENTRY_MACS = {
    "logistic": {2: 5.0e3, 4: 1.0e5},
    "product": {2: 1.8e3, 4: 7.0e3},
}
# ... and per node, whatever its size: a node evaluated in limbs runs dozens of small tensor
# operations (the exponential's Horner steps and squarings, each a product in limbs), so a graph of
# many small nodes costs far more than its entries (measured on one core over chains of 20 dense
# layers of 256 and activations: a Sigmoid or Tanh node 2.8 to 4.5 ms with two limbs and 37 ms
# with four, a product 0.1 and 1.3 ms, any other node 0.4 and 1.2 ms; an unrolled GRU of 877
# nodes, 145 of them Sigmoid or Tanh: 0.65 s an evaluation with two limbs, 6.2 s with four)
NODE_MACS: dict[str | None, dict[int, float]] = {
    "logistic": {2: 1.8e7, 4: 1.6e8},
    "product": {2: 2.0e6, 4: 8.0e6},
    None: {2: 1.6e6, 4: 4.8e6},
}
LIMBS = (2, 4)  # the limbs of the first evaluations, and of those after an escalation
# an evaluation whose bound is above ESCALATE times its outputs' norm is done again with the
# most limbs (and so are the later ones): double-double's bound on a packaged ResNet-18 at 224x224,
# 1.7e-8 of its outputs, confirms its quotients; a seeded ResNet-50's 1.3e-3 rarely does
ESCALATE = 1e-6

_MOVES = (O.Reshape, O.Transpose, O.Slice, O.Gather, O.Tile, O.Concat)


def evaluation_macs(graph: Graph, shapes: dict[str, tuple[int, ...]], macs: float, limbs: int) -> float:
    """The cost model's multiply-accumulates of one evaluation with ``limbs`` limbs of a graph whose
    float64 forward pass counts ``macs``: PASSES (PASSES_4) passes, ENTRY_MACS per output entry of
    the operators evaluated entry by entry (Sigmoid, Tanh, SiLU; HardSwish, HardSigmoid, products),
    and NODE_MACS per node."""
    passes = PASSES if limbs <= 2 else PASSES_4
    width = 2 if limbs <= 2 else 4
    entries = 0.0
    for node in graph.nodes:
        kind = ("logistic" if isinstance(node.op, O.Sigmoid | O.Tanh | O.Silu)
                else "product" if isinstance(node.op, O.HardSwish | O.HardSigmoid | O.Mul) else None)
        if kind is not None:
            entries += ENTRY_MACS[kind][width] * float(math.prod(shapes[node.output]))
        entries += NODE_MACS[kind][width]
    return passes * macs + entries


def slices_for(limbs: int, beta: int) -> int:
    """Slices of a value for ``limbs`` limbs at ``beta`` bits a slice: SLICES for two, and enough
    for 53 bits a limb beyond."""
    return SLICES if limbs <= 2 else max(SLICES, math.ceil((53 * limbs + 8) / beta))


def _gamma(k: int) -> float:
    """A bound above gamma_k = k u / (1 - k u), with room for its own rounding."""
    return 1.01 * (k + 2) * U


def _beta(k: int) -> int:
    """Bits per slice for sums of ``k`` products: 2 beta + ceil(log2 k) <= 53."""
    return max(3, (53 - math.ceil(math.log2(max(k, 1)))) // 2)


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s = fl(a + b) and e with a + b = s + e exactly (Knuth's TwoSum; no overflow assumed)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


_SPLITTER = 134217729.0  # 2^27 + 1: Veltkamp's splitting of a float64 into two 26-bit halves


def two_prod(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p = fl(a b) and e with a b = p + e exactly (Dekker's TwoProduct with Veltkamp's splitting;
    exact when neither the splitting overflows, |a|, |b| < 2^995, nor a partial product
    underflows, which the callers' absolute slack TINY covers)."""
    p = a * b
    ca, cb = _SPLITTER * a, _SPLITTER * b
    ah = ca - (ca - a)
    bh = cb - (cb - b)
    al, bl = a - ah, b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _up(t: torch.Tensor, k: int) -> torch.Tensor:
    """A float64 result of sums of k nonnegative terms, moved above the exact sum."""
    return t * (1.0 + 2.0 * _gamma(k + 2)) + TINY


def extract(parts: Sequence[torch.Tensor], beta: int, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Slices q_1 .. q_n (n <= count) and remainders of the exact sum of ``parts``: sum(parts) =
    q_1 + .. + q_n + sum(remainders) exactly, each q a multiple of its unit 2^(k-53) with fewer
    than 2^beta units (module docstring)."""
    import torch

    rest = [p.clone() for p in parts]
    slices: list[torch.Tensor] = []
    for _ in range(count):
        top = sum(float(r.abs().max()) if r.numel() else 0.0 for r in rest)
        if top == 0.0 or not math.isfinite(top):
            break
        e = math.frexp(top)[1]  # top < 2^e
        k = e + 54 - beta
        if k - 53 < MIN_UNIT_EXPONENT:
            break
        sigma = math.ldexp(1.0, k)
        q = torch.zeros_like(rest[0])
        for i, r in enumerate(rest):
            qi = (sigma + r) - sigma
            rest[i] = r - qi
            q = q + qi  # multiples of one unit, fewer than 2^53 of them: exact
        slices.append(q)
    return slices, rest


@dataclass
class Value:
    """An enclosure of an exact tensor v: |v - sum(parts)| <= e entry-wise (the parts are the
    limbs, largest first, at most the model's number of limbs)."""

    parts: list[torch.Tensor]
    e: torch.Tensor
    # the node's own part of e: |node(inputs' sums) - sum(parts)| for its inputs' enclosures taken
    # as exact (None: 0), for the telescoped bound
    own: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        """The float64 sum of the limbs, smallest first."""
        return self.rounded()[0]

    def rounded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the float64 sum of the limbs, smallest first; a bound of its distance to their exact
        sum): each addition is within u of its result, so u times the sum of the partial results'
        magnitudes (rounded up)."""
        import torch

        out = self.parts[-1]
        err = torch.zeros_like(out)
        for p in reversed(self.parts[:-1]):
            out = out + p
            err = err + out.abs()
        return out, err * (U * (1 + 4 * len(self.parts) * U))

    def magnitude(self) -> torch.Tensor:
        """sum |parts|, rounded up."""
        out = self.parts[0].abs()
        for p in self.parts[1:]:
            out = out + p.abs()
        return out * (1 + (len(self.parts) + 2) * U)

    def exactly(self) -> Value:
        """The same limbs with no distance to an exact value: what a node's own error is measured on."""
        import torch

        return Value(parts=self.parts, e=torch.zeros_like(self.e))


def _constant(like: torch.Tensor, c: float) -> Value:
    import torch

    return Value(parts=[torch.full_like(like, c)], e=torch.zeros_like(like))


def _where(mask: torch.Tensor, a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Limb by limb where(mask, a, b), the shorter list padded with zeros."""
    import torch

    n = max(len(a), len(b))
    zero = torch.zeros_like(a[0] if a else b[0])
    return [torch.where(mask, a[i] if i < len(a) else zero, b[i] if i < len(b) else zero) for i in range(n)]


def _vec_sum(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """One VecSum pass: the same exact sum, the first term the float64 sum (bottom up), the others
    the TwoSum errors."""
    out = list(parts)
    s = out[-1]
    for i in range(len(out) - 2, -1, -1):
        s, out[i + 1] = two_sum(out[i], s)
    out[0] = s
    return out


def _distill(parts: Sequence[torch.Tensor], limbs: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """At most ``limbs`` limbs whose sum is that of ``parts`` up to the returned bound (None: exact):
    two VecSum passes give a limb and the rest, distilled again, until the last limb, the float64
    sum of what is left (within gamma_(n-1) of its magnitudes)."""
    import torch

    rest = list(torch.broadcast_tensors(*parts)) if len(parts) > 1 else list(parts)
    out: list[torch.Tensor] = []
    while len(out) < limbs - 1 and len(rest) > 1:
        rest = _vec_sum(_vec_sum(rest))
        out.append(rest[0])
        rest = rest[1:]
    if len(rest) == 1:
        return out + rest, None
    total, size = rest[-1], rest[-1].abs()
    for r in reversed(rest[:-1]):
        total = total + r
        size = size + r.abs()
    return out + [total], size * _gamma(len(rest)) + TINY


def _accumulate(terms: Iterable[torch.Tensor], limbs: int, extra: torch.Tensor | None = None,
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(limbs, bound) with |sum(terms) + extra - sum(limbs)| <= bound: each term added into the
    limbs by a cascade of TwoSum (exact), what falls off the last limb summed in magnitude, then
    distilled; broadcast to a common shape."""
    import torch

    parts: list[torch.Tensor] = []
    dropped: torch.Tensor | None = None
    count = 0
    for t in ([*terms, extra] if extra is not None else terms):
        count += 1
        if not parts:
            parts = [t.clone()]
            continue
        carry = t
        for i in range(len(parts)):
            parts[i], carry = two_sum(parts[i], carry)
        if len(parts) < limbs:
            parts.append(carry)
        else:
            dropped = carry.abs() if dropped is None else dropped + carry.abs()
    out, left = _distill(parts, limbs)
    bound = torch.zeros_like(out[0]) + TINY
    if dropped is not None:
        bound = bound + _up(dropped, count)
    if left is not None:
        bound = bound + left
    return out, bound * (1 + 2 * U)


@dataclass(frozen=True)
class _Sliced:
    """A coefficient (a sum of limbs) as slices: sum(limbs) = sum(slices) + the remainder,
    |remainder| <= left; magnitude >= sum |limbs| (rounded up)."""

    limbs: tuple[np.ndarray, ...]
    slices: tuple[torch.Tensor, ...]
    left: torch.Tensor
    magnitude: torch.Tensor  # sum |limbs|
    zero: torch.Tensor


@dataclass(frozen=True)
class _Linear:
    """y = A(W, x) + bias: ``apply(c, x)`` is A with coefficient c (bilinear, sums of k products)."""

    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    slices: tuple[torch.Tensor, ...]
    magnitude: torch.Tensor  # |W|
    rest: torch.Tensor  # |W_r| + D: what the slices leave of the exact coefficient
    k: int
    bias: torch.Tensor | None
    zero: torch.Tensor  # a zero coefficient (kept: kernels are cached by the coefficient's identity)
    rest_nonzero: bool = True  # False: the slices hold the exact coefficient (rest is 0)


def _fraction_limbs(exact: Fraction, limbs: int) -> tuple[list[float], float]:
    """The limbs of a rational number (each the float64 nearest to what the previous ones leave)
    and a bound of what they leave."""
    out, left = [], exact
    for _ in range(limbs):
        f = float(left)
        out.append(f)
        left = left - Fraction(f)
        if left == 0:
            break
    return out, float(abs(left)) * (1.0 + 4 * U) + (TINY if left != 0 else 0.0)


class PreciseModel:
    """``evaluate(x)``: the graph's outputs at x and an upper bound of their distance (L2) to the
    exact outputs of the stored weights, as ``lower.ForwardErrorModel.evaluate`` gives them.
    ``limbs``: the limbs of each value now (LIMBS[0], then LIMBS[-1] after an escalation)."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], fallback: ForwardErrorModel | None = None,
                 limbs: int = LIMBS[0], most_limbs: int = LIMBS[-1]):
        self.graph = graph
        self.most_limbs = most_limbs  # the limbs an escalation may take (the plan's choice)
        self.shapes = shapes
        self.fallback = fallback
        self.why: str | None = None
        self.failure: str | None = None  # why the last evaluation failed (its bound was inf)
        self._sliced: dict[tuple[tuple[int, ...], bytes, int, int], list[_Sliced]] = {}
        # S_v of ``fallback`` (``lower.error_sensitivities``): with them, a second bound sum_v S_v
        # ||own_v|| (as ``lower.ForwardErrorModel`` telescopes its own)
        self.sensitivities = dict(fallback.sensitivities) if fallback is not None else {}
        self.telescoped = math.inf
        self._build(limbs)

    def _build(self, limbs: int) -> None:
        self.limbs = limbs
        self._sliced.clear()
        self.why = None
        # nodes evaluated in float64 with ``fallback``'s error rules (no exact evaluation here)
        self.in_float64: list[str] = []
        self._steps: list[tuple[Node, Callable[[list[Value]], Value]]] = []
        for node in self.graph.nodes:
            try:
                step = self._step(node)
            except StabauditError:
                raise
            except Exception as exc:  # noqa: BLE001  (a node this module cannot build runs in float64)
                raise_allocation_failure(exc)
                step = f"{node.name}: {type(exc).__name__}: {exc}"
            if isinstance(step, str) and self.fallback is not None:
                step = self._float64(node, self.fallback)
                self.in_float64.append(node.name)
            if isinstance(step, str):
                self.why = step
                self._steps = []
                return
            self._steps.append((node, step))

    @property
    def supported(self) -> bool:
        return self.why is None

    @property
    def arithmetic(self) -> str:
        """The arithmetic it evaluates in now, as the report names it."""
        return "double-double" if self.limbs == 2 else f"{self.limbs}-limb (about {53 * self.limbs} bits)"

    # ---- building ---------------------------------------------------------------------------------
    def _kernel(self, node: Node, op: O.Op, weight: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
        """The executor's float64 kernel of ``op`` (``ir.executor``'s, as its Executor runs it);
        ``weight``: this tensor as the op's weight (no conversion, no copy)."""
        import torch

        from stabaudit.ir.executor import _kernel, float64_copy

        def param(array: np.ndarray) -> torch.Tensor:
            if weight is not None and array is getattr(op, "weight", None):
                return weight
            return torch.from_numpy(float64_copy(array))  # as the float64 Executor converts them

        kern = _kernel(op, param)
        return lambda *args: kern(list(args))

    def _linear(self, coeff: Sequence[np.ndarray], rest: float,
                apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], k: int,
                bias: torch.Tensor | None, extra: torch.Tensor | None = None) -> _Linear:
        """The linear map of the coefficient sum(coeff) (its limbs) as slices; ``rest`` (a number)
        or ``extra`` (a tensor like the coefficient) bounds |W_exact - sum(coeff)| entry-wise."""
        import torch

        beta = _beta(k)
        count = slices_for(self.limbs, beta)
        arrays = [np.ascontiguousarray(c, dtype=np.float64) for c in coeff]
        # one weight read by many nodes (the steps of an unrolled recurrence) is sliced once: found
        # by its shape and a few of its entries, and confirmed equal entry by entry
        stride = max(1, arrays[0].size // 64)
        key = (arrays[0].shape, b"".join(a.ravel()[::stride].tobytes() for a in arrays), beta, len(arrays))
        found = next((c for c in self._sliced.get(key, [])
                      if len(c.limbs) == len(arrays) and all(np.array_equal(p, q) for p, q in zip(c.limbs, arrays,
                                                                                                   strict=True))), None)
        if found is None:
            parts = [torch.from_numpy(a.copy()) for a in arrays]
            slices, left = extract(parts, beta, count)
            # zeros as views of one number (no memory): the remainder of a float32 weight usually is
            zero = torch.zeros((), dtype=torch.float64).expand(parts[0].shape)
            found = _Sliced(limbs=tuple(arrays), slices=tuple(slices),
                            left=sum((r.abs() for r in left), zero) * (1.0 + 4 * U) if any(
                                bool((r != 0).any()) for r in left) else zero,
                            magnitude=sum((p.abs() for p in parts[1:]), parts[0].abs()) * (1.0 + 4 * U),
                            zero=zero)
            self._sliced.setdefault(key, []).append(found)
        remainder, magnitude = found.left, found.magnitude
        if rest != 0.0 or extra is not None:
            # |W_exact| <= sum |limbs| + D entry-wise (D: the coefficient's representation error)
            d = (rest if extra is None else extra + rest) * (1.0 + 4 * U)
            remainder, magnitude = (remainder + d) * (1.0 + 2 * U), (magnitude + d) * (1.0 + 2 * U)
        return _Linear(apply=apply, slices=found.slices, magnitude=magnitude, rest=remainder, k=k, bias=bias,
                       zero=found.zero, rest_nonzero=remainder is not found.zero)

    def _scalar(self, exact: Fraction) -> tuple[list[np.ndarray], float]:
        values, rest = _fraction_limbs(exact, self.limbs)
        return [np.asarray(v) for v in values], rest

    def _step(self, node: Node) -> Callable[[list[Value]], Value] | str:
        import torch

        op = node.op
        out_shape = tuple(self.shapes[node.output])
        rank = len(out_shape)
        limbs = self.limbs
        match op:
            case O.Linear() | O.Conv() | O.ConvTranspose():
                if getattr(op, "error", 0.0) != 0.0:
                    return f"{node.name}: a merged linear map (its stored weight is not the operator)"
                w = np.asarray(op.weight, dtype=np.float64)
                match op:
                    case O.Linear():
                        k = w.shape[1]
                    case O.Conv():
                        k = int(np.prod(w.shape[1:]))
                    case O.ConvTranspose(groups=g):
                        k = (w.shape[0] // g) * int(np.prod(w.shape[2:]))
                bare = dataclasses.replace(op, bias=None)
                cache: dict[int, Callable[..., torch.Tensor]] = {}

                def apply(c: torch.Tensor, x: torch.Tensor, bare: O.Linear | O.Conv | O.ConvTranspose = bare,
                          cache: dict[int, Callable[..., torch.Tensor]] = cache) -> torch.Tensor:
                    key = id(c)  # the coefficients are the model's own tensors: their ids are stable
                    if key not in cache:
                        cache[key] = self._kernel(node, dataclasses.replace(bare, weight=c.numpy()), weight=c)
                    return cache[key](x)

                bias = None
                if op.bias is not None:
                    b = torch.from_numpy(np.asarray(op.bias, dtype=np.float64).copy())
                    bias = b if isinstance(op, O.Linear) else b.reshape((-1,) + (1,) * (rank - 2))
                return self._linear_step(self._linear([w], 0.0, apply, k, bias))
            case O.Affine(scale=sc, shift=sh):
                one = np.ones(()) if sc is None else np.asarray(sc, dtype=np.float64)
                shift = None if sh is None else torch.from_numpy(np.asarray(sh, dtype=np.float64).copy())
                return self._linear_step(self._linear([one], 0.0, lambda c, x: x * c, 1, shift))
            case O.GlobalAvgPool() | O.ReduceMean() | O.ReduceSum():
                shape = tuple(self.shapes[node.inputs[0]])
                axes = tuple(range(2, len(shape))) if isinstance(op, O.GlobalAvgPool) else op.axes
                keep = True if isinstance(op, O.GlobalAvgPool) else op.keepdims
                n = int(np.prod([shape[a] for a in axes])) if axes else 1
                if isinstance(op, O.ReduceSum):
                    coeff, rest = [np.ones(())], 0.0
                else:
                    coeff, rest = self._scalar(Fraction(1, n))

                def total(c: torch.Tensor, x: torch.Tensor, axes: tuple[int, ...] = axes, keep: bool = keep) -> torch.Tensor:
                    s = x.sum(dim=axes, keepdim=keep) if axes else x
                    return s * c

                return self._linear_step(self._linear(coeff, rest, total, max(n, 1), None))
            case O.AvgPool():
                return self._avg_pool(op)
            case O.Add() | O.Sub():
                sign = 1.0 if isinstance(op, O.Add) else -1.0

                def add(xs: list[Value], sign: float = sign) -> Value:
                    return _add(xs[0], xs[1], limbs, sign)

                return add
            case O.Max() | O.Min():
                top = isinstance(op, O.Max)
                const = None if op.constant is None else torch.from_numpy(np.asarray(op.constant, dtype=np.float64).copy())

                def extremum(xs: list[Value], top: bool = top, const: torch.Tensor | None = const) -> Value:
                    vals = [Value(parts=v.parts, e=v.e) for v in xs]
                    vals = vals if top else [_neg(v) for v in vals]
                    if const is not None:
                        c = const if top else -const
                        vals.append(Value(parts=[c], e=torch.zeros_like(c)))
                    out = _max_of(vals, limbs)
                    return out if top else _neg(out)

                return extremum
            case O.Relu():
                return lambda xs: _kink(xs[0], 0.0, limbs)
            case O.LeakyRelu(alpha=alpha):
                return self._leaky(np.asarray(alpha, dtype=np.float64))
            case O.PRelu(slope=slope):
                return self._leaky(np.asarray(slope, dtype=np.float64))
            case O.Clip(min=lo_c, max=hi_c):
                def clip(xs: list[Value], lo_c: float | None = lo_c, hi_c: float | None = hi_c) -> Value:
                    return _clip(xs[0], lo_c, hi_c, limbs)

                return clip
            case O.Mul():
                return lambda xs: _mul(xs[0], xs[1], limbs)
            case O.HardSwish():
                return self._hard_swish()
            case O.Sigmoid() | O.Tanh() | O.Silu():
                return self._logistic(op)
            case O.HardSigmoid(alpha=alpha, beta=beta):
                scaled = self._linear_step(self._linear([np.asarray(alpha, dtype=np.float64)], 0.0,
                                                        lambda c, x: x * c, 1,
                                                        torch.tensor(float(beta), dtype=torch.float64)))

                def hard_sigmoid(xs: list[Value], scaled: Callable[[list[Value]], Value] = scaled) -> Value:
                    z = scaled(xs)
                    y = _clip(z, 0.0, 1.0, limbs)
                    assert y.own is not None
                    own = y.own if z.own is None else (y.own + z.own) * (1 + 2 * U)  # clip is 1-Lipschitz
                    return Value(parts=y.parts, e=y.e, own=own)

                return hard_sigmoid
            case O.MaxPool() | O.GlobalMaxPool():
                return self._max_pool(node)
            case O.Pad():
                kern = self._kernel(node, dataclasses.replace(op, value=0.0))
                kval = self._kernel(node, op)

                def pad(xs: list[Value], kern: Callable[..., torch.Tensor] = kern,
                        kval: Callable[..., torch.Tensor] = kval) -> Value:
                    v = xs[0]
                    return Value(parts=[kval(v.parts[0])] + [kern(p) for p in v.parts[1:]], e=kern(v.e))

                return pad
            case _ if isinstance(op, _MOVES) or (
                    isinstance(op, O.Resize) and op.mode == "nearest" and op.coordinate_mode != "tf_crop_and_resize"):
                # (nearest resizing copies entries: its matrices hold one 1 per row)
                kern = self._kernel(node, op)

                def move(xs: list[Value], kern: Callable[..., torch.Tensor] = kern) -> Value:
                    n = max(len(v.parts) for v in xs)
                    parts = [kern(*[v.parts[i] if i < len(v.parts) else torch.zeros_like(v.parts[0]) for v in xs])
                             for i in range(n)]
                    return Value(parts=parts, e=kern(*[v.e for v in xs]))

                return move
        return f"{node.name}: {op.type.value} is not evaluated exactly"

    def _float64(self, node: Node, fallback: ForwardErrorModel) -> Callable[[list[Value]], Value]:
        """The node in float64 on the rounded inputs fl(sum of limbs), whose distance to the exact
        ones is at most e plus the rounding of that sum (``Value.rounded``), with ``fallback``'s rule
        for the node
        (``lower.ForwardErrorModel``: the computed output's distance to the exact one, given the
        inputs' distances)."""

        kern = self._kernel(node, node.op)
        rule = fallback.rule(node)

        def step(xs: list[Value]) -> Value:
            pairs = [v.rounded() for v in xs]
            rounded = [t for t, _ in pairs]
            rnd = [r + TINY for _, r in pairs]
            errs = [(v.e + r) * (1 + 4 * U) + TINY for v, r in zip(xs, rnd, strict=True)]
            y = kern(*rounded)
            own = None
            if self.sensitivities:  # the inputs' rounding to float64 is this node's too
                own = _fit(rule(rounded, rnd, y), y)
            return Value(parts=[y], e=_fit(rule(rounded, errs, y), y), own=own)

        return step

    def _linear_step(self, lin: _Linear) -> Callable[[list[Value]], Value]:
        import torch

        limbs = self.limbs

        def step(xs: list[Value]) -> Value:
            v = xs[0]
            beta = _beta(lin.k)
            xq, xr = extract(v.parts, beta, slices_for(limbs, beta))
            # the slice products one at a time (a zero of the output's shape when there is none:
            # a zero coefficient or a zero input), the bias last
            terms: Iterable[torch.Tensor] = (
                (lin.apply(w, x) for w in lin.slices for x in xq) if lin.slices and xq
                else [lin.apply(lin.zero, v.parts[0])])
            parts, acc = _accumulate(terms, limbs, lin.bias)
            left = sum((r.abs() for r in xr), torch.zeros_like(v.parts[0]))
            # A(W, x) = sum A(W_p, x_q) + A(W, x_r) + A(W_r, x - x_r), |x - x_r| <= sum |limbs| + |x_r|
            rest = lin.apply(lin.rest, v.magnitude() + left) if lin.rest_nonzero else 0.0
            e = _up(lin.apply(lin.magnitude, v.e + left) + rest, lin.k) + acc
            own = _up(lin.apply(lin.magnitude, left) + rest, lin.k) + acc if self.sensitivities else None
            return Value(parts=parts, e=_fit(e, parts[0]), own=None if own is None else _fit(own, parts[0]))

        return step

    def _hard_swish(self) -> Callable[[list[Value]], Value]:
        """HardSwish(x) = 0 (x <= -3), x (x >= 3), x (x + 3) / 6 between, each branch taken by the side
        of -3 and 3 that the value lies on and evaluated there in limbs (the middle: a sum, a
        product, 1/6 in limbs with its exact remainder); the inputs' distance E to the exact values
        moves the output by at most (3/2) E, its Lipschitz constant. Where the value is within r of
        -3 or 3 (``_side``) the side may be misread: the two branches meet there and are each
        (3/2)-Lipschitz, so they differ by at most 3 (2 r), added to the own error."""
        import torch

        limbs = self.limbs
        coeff, rest = self._scalar(Fraction(1, 6))
        sixth = self._linear_step(self._linear(coeff, rest, lambda c, x: x * c, 1, None))

        def hard_swish(xs: list[Value]) -> Value:
            v = xs[0]
            zero = torch.zeros_like(v.parts[0])
            x0 = v.exactly()  # the enclosure's centre, as exact: the own error alone
            mid = sixth([_mul(_add(x0, _constant(zero, 3.0), limbs), x0, limbs)])
            above, _, near_hi = _side(v, 3.0, limbs)
            over, _, near_lo = _side(v, -3.0, limbs)
            below = ~over
            parts = _where(above, v.parts, _where(below, [zero], mid.parts))
            own = torch.where(above | below, zero, mid.e)
            own = (own + 3.0 * (near_hi + near_lo)) * (1 + 4 * U)
            return Value(parts=parts, e=(1.5 * v.e + own) * (1 + 4 * U), own=own)

        return hard_swish

    def _logistic(self, op: O.Op) -> Callable[[list[Value]], Value]:
        """Sigmoid, Tanh = 2 sigmoid(2x) - 1 and SiLU = x sigmoid(x), in limbs (``_sigmoid``) at the
        enclosure's centre; the inputs' distance E moves the output by at most L E, L the
        operator's Lipschitz constant (1/4, 1, 1.1 > 1.0998)."""
        limbs = self.limbs
        lip = 0.25 if isinstance(op, O.Sigmoid) else 1.0 if isinstance(op, O.Tanh) else 1.1

        def logistic(xs: list[Value]) -> Value:
            v = xs[0]
            x0 = v.exactly()
            if isinstance(op, O.Tanh):
                half = _sigmoid(Value(parts=[2.0 * p for p in x0.parts], e=x0.e), limbs)
                out = _add(Value(parts=[2.0 * p for p in half.parts], e=2.0 * half.e), _constant(x0.parts[0], -1.0),
                           limbs)
            else:
                out = _sigmoid(x0, limbs)
                if isinstance(op, O.Silu):
                    out = _mul(x0, out, limbs)
            own = out.e * (1 + 4 * U)
            return Value(parts=out.parts, e=(lip * v.e + own) * (1 + 4 * U), own=own)

        return logistic

    def _leaky(self, slope: np.ndarray) -> Callable[[list[Value]], Value]:
        import torch

        limbs = self.limbs
        scaled = self._linear_step(self._linear([slope], 0.0, lambda c, x: x * c, 1, None))
        top = float(max(1.0, float(np.max(np.abs(slope))) if slope.size else 1.0))

        def leaky(xs: list[Value]) -> Value:
            v = xs[0]
            low = scaled([v])
            pos, sure, near = _side(v, 0.0, limbs)
            parts = _where(pos, v.parts, low.parts)
            # misread sides (within r of 0): the branches meet at 0, each top-Lipschitz
            slack = (1.0 + top) * near
            e = torch.where(sure, torch.where(pos, v.e, low.e), (v.e * top + low.e + slack) * (1 + 2 * U))
            own = torch.where(pos, torch.zeros_like(v.e), low.own if low.own is not None else torch.zeros_like(v.e))
            return Value(parts=parts, e=e, own=(own + slack) * (1 + 2 * U))

        return leaky

    def _avg_pool(self, op: O.AvgPool) -> Callable[[list[Value]], Value] | str:
        """Average pooling as the executor defines it, (window sum of the zero-padded input) times
        1/count, count the window sum of the padding mask (exact small integers): a linear map
        with K = the window size and the coefficient 1/count held in limbs (+ its exact
        remainder, from rational arithmetic per distinct count)."""
        import torch
        import torch.nn.functional as F

        from stabaudit.ir.executor import _torch_pads

        n = len(op.kernel)
        if any(d != 1 for d in op.dilations) or n > 3:
            return f"{op.type.value}: a dilated pool is not evaluated exactly"
        pads = _torch_pads(op.pads)

        def window_sum(x: torch.Tensor) -> torch.Tensor:
            return _pool_sum(F.pad(x, pads) if any(pads) else x, op, n)

        state: dict[tuple[int, ...], _Linear] = {}

        def linear_for(shape: tuple[int, ...]) -> _Linear:
            spatial = shape[-n:]
            if spatial not in state:
                ones = torch.ones((1, 1, *spatial), dtype=torch.float64)
                mask = F.pad(ones, pads, value=1.0 if op.count_include_pad else 0.0) if any(pads) else ones
                counts = _pool_sum(mask, op, n)
                c = counts.numpy()
                coeff = [np.zeros_like(c) for _ in range(self.limbs)]
                rest = np.zeros_like(c)
                for value in np.unique(c):
                    parts, left = _fraction_limbs(Fraction(1, int(value)), self.limbs)
                    sel = c == value
                    for i, p in enumerate(parts):
                        coeff[i][sel] = p
                    rest[sel] = left + TINY
                k = int(np.prod(op.kernel))
                state[spatial] = self._linear(coeff, 0.0, lambda cf, x: window_sum(x) * cf, k, None,
                                              extra=torch.from_numpy(rest))
            return state[spatial]

        def avg(xs: list[Value]) -> Value:
            return self._linear_step(linear_for(tuple(xs[0].parts[0].shape)))(xs)

        return avg

    def _max_pool(self, node: Node) -> Callable[[list[Value]], Value] | str:
        import torch

        limbs = self.limbs
        op = node.op
        in_shape = tuple(self.shapes[node.inputs[0]])
        out_shape = tuple(self.shapes[node.output])
        spatial = len(in_shape) - 2
        if isinstance(op, O.GlobalMaxPool):
            kernel, strides, pads, dil = in_shape[2:], (1,) * spatial, (0,) * (2 * spatial), (1,) * spatial
        else:
            assert isinstance(op, O.MaxPool)
            kernel, strides, pads, dil = op.kernel, op.strides, op.pads, op.dilations
        if any(d != 1 for d in dil):
            return f"{node.name}: a dilated max pool is not evaluated exactly"
        # padding (and ceil mode's extra end) never wins: it repeats an entry of its window
        ends = []
        for i in range(spatial):
            need = (out_shape[2 + i] - 1) * strides[i] + kernel[i]
            ends.append(max(need - in_shape[2 + i] - pads[i], pads[spatial + i]))
        flat_pad: list[int] = []
        for i in reversed(range(spatial)):
            flat_pad += [pads[i], ends[i]]

        def windows(t: torch.Tensor, fill: float) -> torch.Tensor:
            t = torch.nn.functional.pad(t, flat_pad, value=fill)
            for i in range(spatial):
                t = t.unfold(2 + i, kernel[i], strides[i])
            t = t[tuple([slice(None), slice(None)] + [slice(0, out_shape[2 + i]) for i in range(spatial)])]
            return t.reshape(*t.shape[: 2 + spatial], -1)

        def pool(xs: list[Value]) -> Value:
            v = xs[0]
            # a padded entry takes the limbs of the window's first entry that is not padding (the
            # maximum is that of the entries that are)
            valid = windows(torch.ones_like(v.parts[0]), 0.0) > 0.0
            first = valid.to(torch.int8).argmax(dim=-1, keepdim=True)
            wins = []
            for p in v.parts:
                w = windows(p, 0.0)
                wins.append(torch.where(valid, w, w.gather(-1, first)))
            e = windows(v.e, 0.0).amax(dim=-1)
            if tuple(e.shape) != out_shape:
                raise ValueError("max pool windows do not match the output shape")
            zero = torch.zeros_like(e)
            entries = [Value(parts=[w[..., j] for w in wins], e=zero) for j in range(wins[0].shape[-1])]
            out = _max_of(entries, limbs)
            # max is 1-Lipschitz in the largest entry: the window's largest distance, plus the own
            assert out.own is not None
            return Value(parts=out.parts, e=(e + out.own) * (1 + 2 * U), own=out.own)

        return pool

    # ---- evaluation -------------------------------------------------------------------------------
    def run(self, x: torch.Tensor) -> list[Value]:
        """The enclosures of the graph's outputs at the flat input x (a supported graph)."""
        import torch

        if not self.supported:
            raise ValueError(f"not evaluated exactly: {self.why}")
        specs = self.graph.inputs
        sizes = [int(np.prod(s.shape)) for s in specs]
        parts = torch.split(x.detach().to(torch.float64), sizes)
        env: dict[str, Value] = {}
        for p, s in zip(parts, specs, strict=True):
            t = p.reshape(s.shape).clone()
            env[s.name] = Value(parts=[t], e=torch.zeros_like(t))
        self.telescoped = 0.0 if self.sensitivities else math.inf
        # each value is dropped after its last reader (the outputs are kept)
        last = {name: i for i, (node, _) in enumerate(self._steps) for name in node.inputs}
        keep = set(self.graph.outputs)
        with torch.no_grad():
            for i, (node, step) in enumerate(self._steps):
                check_deadline()  # --timeout aborts between nodes
                out = step([env[name] for name in node.inputs])
                for name in set(node.inputs):
                    if last[name] == i and name not in keep:
                        del env[name]
                env[node.output] = out
                if out.own is not None and math.isfinite(self.telescoped):
                    size = _size(out.own)
                    if size > 0.0:
                        self.telescoped = _mul_up(self.sensitivities.get(node.output, math.inf), size, self.telescoped)
        return [env[name] for name in self.graph.outputs]

    def evaluate(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        """The outputs (flat, float64: the limbs' sum rounded) at the flat input x and an upper bound
        of the L2 distance to the exact outputs (inf when not supported or not finite). A bound
        above ESCALATE times the outputs' norm with fewer than the most limbs (``most_limbs``: what
        the plan allows): the model takes the most limbs from now on and evaluates again."""
        y, bound = self._evaluate(x)
        if (self.supported and self.limbs < min(LIMBS[-1], self.most_limbs) and np.all(np.isfinite(y))
                and not bound <= ESCALATE * float(np.linalg.norm(y))):
            self._build(LIMBS[-1])
            y, bound = self._evaluate(x)
        return y, bound

    def _evaluate(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        import torch

        n = sum(int(np.prod(self.shapes[o])) for o in self.graph.outputs)
        if not self.supported:
            return np.full(n, np.nan), math.inf
        try:
            outs = self.run(x)
        except StabauditError:  # a timeout or resource limit: never a fallback
            raise
        except Exception as exc:  # noqa: BLE001  (an evaluation that fails bounds nothing: inf)
            raise_allocation_failure(exc)
            self.failure = f"{type(exc).__name__}: {exc}"
            return np.full(n, np.nan), math.inf
        pairs = [v.rounded() for v in outs]
        total = torch.cat([t.reshape(-1) for t, _ in pairs])
        mag = torch.cat([r.reshape(-1) for _, r in pairs])
        e = torch.cat([v.e.reshape(-1) for v in outs])
        y = total.numpy().astype(np.float64)
        # the float64 sum of the limbs (``Value.rounded``)
        bound = e.numpy() + mag.numpy() * (1 + 4 * U)
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(bound))):
            return y, math.inf
        size = _size(torch.from_numpy(bound)) * (1 + 1e-9)
        # the telescoped bound (module docstring of ``lower``: switching the nodes from exact to
        # computed one at a time), plus the final rounding to float64
        rounding = _size(mag) * (1 + 1e-9)
        return y, min(size, (self.telescoped + rounding) * (1 + 4 * U))


def memory_estimate(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes a model of ``graph`` holds beyond the graph itself, for the memory plan: each weight's
    slices, magnitude and remainder (about seven float64 copies; measured on ResNet-50 at 224x224,
    1.55 GB against 1.58 GB estimated) and the working set of the largest node (about 24 float64
    tensors of its output with two limbs: the limbs, e and own of its inputs and output, the
    input's slices and remainders, the running sums; counted as 64 for four limbs and for the
    temporaries of an exponential in limbs)."""
    weights = 0
    for node in graph.nodes:
        w = getattr(node.op, "weight", None)
        if isinstance(w, np.ndarray):
            weights += int(w.size)
    largest = max((math.prod(shapes[n.output]) for n in graph.nodes), default=0)
    return 8 * (7 * weights + 64 * largest)


def _fit(e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A bound tensor in the shape of ``like``: broadcast, or its largest entry everywhere when the
    shapes do not match entry for entry (a rule that broadcasts differently)."""
    import torch

    if e.shape == like.shape:
        return e
    try:
        shape = torch.broadcast_shapes(e.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape is not None and math.prod(shape) == like.numel():
        return e.expand(shape).reshape(like.shape)
    return e.max().expand(like.shape)


def _norm_up(a: np.ndarray) -> float:
    """An upper bound of ||a||_2 (inf when an entry is not finite; squares that overflow or
    underflow accounted for, as ``lower`` bounds its error tensors)."""
    from stabaudit.analyses.lower import _norm_up as norm_up

    if not np.all(np.isfinite(a)):
        return math.inf
    return norm_up(a)


def _size(t: torch.Tensor) -> float:
    """An upper bound of the L2 norm of a float64 tensor (inf when not finite), in torch (numpy's
    BLAS threads are not torch's): the computed sum of squares s_hat of n terms is within gamma_n
    of the exact one (Higham, Thm 3.4, nonnegative terms, any order), squares that underflow lose
    at most 2^-1074 each (sqrt(n) 1e-154 on the root), the root rounded up; beyond n = 9e8 terms
    ``lower``'s norm."""
    import torch

    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return 0.0
    if not bool(torch.isfinite(flat).all()):
        return math.inf
    gam = _gamma(n)
    if not gam <= 1e-7:
        return _norm_up(flat.numpy())
    s_hat = float(torch.dot(flat, flat))
    if not math.isfinite(s_hat):
        return math.inf
    root = math.sqrt(s_hat / (1.0 - gam) * (1 + 4 * U)) * (1 + 4 * U)
    return math.nextafter(root + math.sqrt(n) * 1e-154, math.inf)


def _mul_up(s: float, size: float, total: float) -> float:
    """total + s * size, rounded up (inf stays inf)."""
    if not (math.isfinite(s) and math.isfinite(size)):
        return math.inf
    return (total + s * size * (1 + 4 * U)) * (1 + 4 * U) + TINY


def _pool_sum(mask: torch.Tensor, op: O.AvgPool, n: int) -> torch.Tensor:
    """The window sums of an already padded tensor (of the mask: the executor's divisor; of a
    slice: exact)."""
    import torch.nn.functional as F

    if n == 1:  # avg_pool1d has no divisor_override: one more axis of size 1
        return F.avg_pool2d(mask.unsqueeze(-2), (1, op.kernel[0]), (1, op.strides[0]), 0, op.ceil_mode, True,
                            1).squeeze(-2)
    pool = F.avg_pool2d if n == 2 else F.avg_pool3d
    return pool(mask, op.kernel, op.strides, 0, op.ceil_mode, True, 1)  # type: ignore[call-arg,no-any-return]


def _pair(v: Value) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(high, low) limbs of a value of at most two (None for a missing low limb), or None."""
    if len(v.parts) > 2:
        return None
    return v.parts[0], v.parts[1] if len(v.parts) == 2 else None


def _add2(a: Value, b: Value, sign: float) -> Value | None:
    """a + sign b in two limbs (double-double addition; None where an input has more limbs):
    s + e1 = a_hi + sign b_hi exactly (TwoSum), t = fl(a_lo + sign b_lo), t2 = fl(t + e1), and
    hi + lo = s + t2 exactly (TwoSum); a missing low limb is 0 and its sum is not formed. Each
    rounding is within u |x| <= 1.01 u |fl(x)| (|x| <= |fl(x)| / (1 - u)), plus an absolute
    2^-1075 below the normal range (TINY)."""
    import torch

    pa, pb = _pair(a), _pair(b)
    if pa is None or pb is None:
        return None
    a_hi, a_lo = pa
    b_hi, b_lo = pb
    if sign != 1.0:
        b_hi, b_lo = -b_hi, None if b_lo is None else -b_lo
    hi, e1 = two_sum(a_hi, b_hi)
    size = torch.zeros_like(e1)
    lows = [x for x in (a_lo, b_lo) if x is not None]
    if lows:
        t = lows[0] if len(lows) == 1 else lows[0] + lows[1]
        if len(lows) == 2:
            size = size + t.abs()  # the rounding of a_lo + b_lo
        e1 = t + e1
    t2 = e1
    hi, lo = two_sum(hi, t2)
    size = size + t2.abs()
    own = torch.broadcast_to((size * (1.01 * U) + 2 * TINY) * (1 + 4 * U), hi.shape)
    return Value(parts=[hi, lo], e=(a.e + b.e + own) * (1 + 2 * U), own=own)


def _mul2(a: Value, b: Value) -> Value | None:
    """a b in two limbs (Dekker's double-double product; None where an input has more limbs):
    p + pe = a_hi b_hi exactly (TwoProduct), c1 = fl(a_hi b_lo), c2 = fl(a_lo b_hi), t = fl(c1 + c2)
    within gamma_2 (|a_hi b_lo| + |a_lo b_hi|) of a_hi b_lo + a_lo b_hi (a dot product of two terms,
    |a_hi b_lo| <= |c1| / (1 - u); one term: within 1.01 u |c|), s = fl(pe + t) within 1.01 u |s|,
    hi + lo = p + s exactly (TwoSum), and a_lo b_lo left out (at most |fl(a_lo b_lo)| / (1 - u));
    a missing low limb is 0 and its products are not formed. TINY per product for what an
    underflow may lose. The inputs' distances move the product as in ``_mul``."""
    import torch

    pa, pb = _pair(a), _pair(b)
    if pa is None or pb is None:
        return None
    a_hi, a_lo = pa
    b_hi, b_lo = pb
    p, pe = two_prod(a_hi, b_hi)
    cross = [c for c in (None if b_lo is None else a_hi * b_lo, None if a_lo is None else a_lo * b_hi) if c is not None]
    own = torch.zeros_like(p)
    if cross:
        t = cross[0] if len(cross) == 1 else cross[0] + cross[1]
        grow = _gamma(2) * (1 + 2 * U) if len(cross) == 2 else 1.01 * U
        own = own + sum((c.abs() for c in cross[1:]), cross[0].abs()) * grow
        pe = pe + t
        own = own + pe.abs() * (1.01 * U)
    if a_lo is not None and b_lo is not None:
        own = own + (a_lo * b_lo).abs() * (1 + 2 * U)
    hi, lo = two_sum(p, pe)
    own = (own + 6 * TINY) * (1 + 4 * U)
    e = (a.magnitude() * b.e + b.magnitude() * a.e + a.e * b.e + own) * (1 + 8 * U)
    return Value(parts=[hi, lo], e=e, own=own)


def _add(a: Value, b: Value, limbs: int, sign: float = 1.0) -> Value:
    """a + sign b: the limbs of both distilled (exact up to the last limb's rounding, the own error);
    with two limbs, the double-double addition (``_add2``)."""
    import torch

    if limbs == 2 and (sign == 1.0 or sign == -1.0):
        fast = _add2(a, b, sign)
        if fast is not None:
            return fast
    parts, left = _distill([*a.parts, *(sign * p for p in b.parts)], limbs)
    own = torch.zeros_like(parts[0]) + TINY if left is None else left
    return Value(parts=parts, e=(a.e + b.e + own) * (1 + 2 * U), own=own)


def _mul(a: Value, b: Value, limbs: int) -> Value:
    """a b (broadcasting): TwoProduct of every pair of limbs whose orders sum below ``limbs`` - 1
    (exact), the pairs of order ``limbs`` - 1 as float64 products (each within 1.01 u of its
    magnitude: the order of the last limb's own rounding), the other pairs bounded by their
    magnitudes, all distilled. The inputs' distances move the product by at most
    |a| E_b + |b| E_a + E_a E_b. With two limbs, Dekker's product (``_mul2``)."""
    import torch

    if limbs == 2:
        fast = _mul2(a, b)
        if fast is not None:
            return fast

    parts: list[torch.Tensor] = []
    tail: torch.Tensor | None = None
    rounded: torch.Tensor | None = None  # the products of the last order, rounded once each
    for i, p in enumerate(a.parts):
        for j, q in enumerate(b.parts):
            if i + j < limbs - 1 or (i + j == limbs - 1 and limbs <= 2):
                parts += list(two_prod(p, q))
            elif i + j == limbs - 1:
                # of the order of the last limb: fl(p q) within u |p q| <= 1.01 u |fl(p q)|
                pq = p * q
                parts.append(pq)
                rounded = pq.abs() if rounded is None else rounded + pq.abs()
            else:
                t = (p * q).abs()
                tail = t if tail is None else tail + t
    out, left = _distill(parts, limbs)
    # TINY per product: what an underflowing TwoProduct may lose
    own = torch.zeros_like(out[0]) + TINY * (len(parts) + 1)
    if left is not None:
        own = own + left
    if rounded is not None:
        own = own + rounded * (1.01 * U * (1 + (len(a.parts) * len(b.parts) + 2) * U))
    if tail is not None:
        own = own + tail * (1 + (len(a.parts) * len(b.parts) + 2) * U)
    own = own * (1 + 4 * U)
    e = (a.magnitude() * b.e + b.magnitude() * a.e + a.e * b.e + own) * (1 + 8 * U)
    return Value(parts=out, e=e, own=own)


def _scaled(v: Value, power: torch.Tensor) -> Value:
    """v times 2^power entry-wise: exact on the limbs unless they leave the normal range, which
    TINY per limb covers (the scaled e rounded up alike)."""
    import torch

    return Value(parts=[torch.ldexp(p, power) for p in v.parts],
                 e=torch.ldexp(v.e, power) * (1 + 2 * U) + TINY * (len(v.parts) + 1), own=v.own)


_FACTORIALS = [Fraction(1, math.factorial(j)) for j in range(24)]
# exp(t) is computed for t <= this: e^600 < 3.8e260, so its squares stay finite and TwoProduct's
# splitting (a factor 2^27 + 1) does not overflow
EXP_LIMIT = 600.0
REDUCED = 2.0**-12  # |t| / 2^m at most this before the Taylor series


def _exp(t: Value, limbs: int) -> Value:
    """exp(t) for an exact t = sum(t.parts) <= EXP_LIMIT (t.e = 0), in limbs, with e its certified
    distance to exp(t): s = t / 2^m (exact; m per entry) with |s| <= REDUCED, its Taylor polynomial
    of degree N by Horner in limbs (the remainder |s|^(N+1) / (N+1)! e^|s| added to e), then m
    squarings (``_mul`` carries the error: each squaring doubles the relative one)."""
    import torch

    # m per entry: an entry far smaller than the tensor's largest is not squared as often (each
    # squaring doubles the relative error)
    size_t = t.magnitude()
    m = torch.clamp(torch.ceil(torch.log2(torch.clamp(size_t, min=REDUCED) / REDUCED)), min=0).to(torch.int32)
    most = int(m.max()) if m.numel() else 0
    s = _scaled(t, -m) if most else t
    degree = 9 if limbs <= 2 else 16
    like = t.parts[0]

    def const(c: Fraction) -> Value:
        vals, rest = _fraction_limbs(c, limbs)
        return Value(parts=[torch.full_like(like, v) for v in vals], e=torch.full_like(like, rest))

    p = const(_FACTORIALS[degree])
    for j in range(degree - 1, -1, -1):
        p = _add(_mul(p, s, limbs), const(_FACTORIALS[j]), limbs)
    size = s.magnitude() + s.e
    rem = size ** (degree + 1) * (float(_FACTORIALS[degree + 1]) * (1 + 8 * U)) * 1.001  # e^|s| <= 1.001
    p = Value(parts=p.parts, e=(p.e + rem) * (1 + 2 * U) + TINY)
    for i in range(most):
        square = _mul(p, p, limbs)
        now = m > i
        p = Value(parts=_where(now, square.parts, p.parts), e=torch.where(now, square.e, p.e))
    return p


def _sigmoid(x: Value, limbs: int) -> Value:
    """1 / (1 + exp(-x)) for an exact x (x.e = 0), in limbs, with e its certified distance to the
    exact value: d = 1 + exp(-x) (``_exp``), y its reciprocal by Newton's iteration in limbs from the
    float64 one, and the a posteriori bound |1/d - y| = |1 - d y| / d <= (|rho| + e_rho) / d_low
    (rho = 1 - d y in limbs with its own error e_rho, d_low >= 1 - 1e-9 a lower bound of d), plus
    |1/d_exact - 1/d| <= e_d / d_low^2. Where -x >
    EXP_LIMIT, the output is 0 within e^-600 < 3e-261."""
    import torch

    zero = torch.zeros_like(x.parts[0])
    t = _neg(x)
    far = t.total() > EXP_LIMIT
    t = Value(parts=_where(far, [zero], t.parts), e=zero)
    d = _add(_exp(t, limbs), _constant(zero, 1.0), limbs)
    exact_d = d.exactly()
    y = Value(parts=[1.0 / d.total()], e=zero)
    for _ in range(1 if limbs <= 2 else 2):
        rho = _add(_constant(zero, 1.0), _mul(exact_d, y, limbs), limbs, -1.0)
        y = _add(y, _mul(y, rho.exactly(), limbs), limbs)
        y = y.exactly()
    rho = _add(_constant(zero, 1.0), _mul(exact_d, y, limbs), limbs, -1.0)
    # a lower bound of both the limbs' sum D and the exact d: D's float64 sum less its rounding and
    # e_d, and at least 1 - 1e-9 (d = 1 + exp >= 1; the limbs sum to it up to their rounding)
    total, rounding = d.rounded()
    low = torch.clamp((total - rounding - d.e) * (1 - 4 * U), min=1.0 - 1e-9)
    # |1/d_exact - y| <= |1 - D y| / D + |d_exact - D| / (d_exact D)
    bound = ((rho.magnitude() + rho.e) / low + d.e / low / low) * (1 + 8 * U) + TINY
    parts = _where(far, [zero], y.parts)
    return Value(parts=parts, e=torch.where(far, torch.full_like(zero, 3e-261), bound))


def _neg(v: Value) -> Value:
    return Value(parts=[-p for p in v.parts], e=v.e, own=v.own)


def _side(v: Value, c: float, limbs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(where the limbs' sum is above c, where the exact value is on that same side for sure, the
    distance 2 r by which a misread side may be off): the difference to c is distilled and summed
    in float64 within r (gamma of its magnitudes plus what the distilling dropped); the side can be
    misread only where |sum - c| <= r, and is sure where it exceeds e + r."""
    import torch

    parts, left = _distill([*v.parts, torch.full_like(v.parts[0], -c)] if c != 0.0 else v.parts, limbs)
    d = Value(parts=parts, e=v.e)
    approx = d.total()
    r = d.magnitude() * _gamma(len(parts) + 1) + TINY
    if left is not None:
        r = r + left
    r = r * (1 + 4 * U)
    above = approx > 0.0
    sure = approx.abs() * (1 - 4 * U) > v.e * (1 + 4 * U) + r
    near = torch.where(approx.abs() <= r, 2.0 * r, torch.zeros_like(r))
    return above, sure, near


def _kink(v: Value, c: float, limbs: int) -> Value:
    """max(v, c) entry-wise by the side of c (``_side``): above it the limbs as they are, below it c;
    1-Lipschitz, and a misread side is off by at most the distance to c."""
    import torch

    above, sure, near = _side(v, c, limbs)
    parts = _where(above, v.parts, [torch.full_like(v.parts[0], c)])
    zero = torch.zeros_like(v.e)
    e = torch.where(sure, torch.where(above, v.e, zero), (v.e + near) * (1 + 2 * U))
    return Value(parts=parts, e=e, own=near)


def _clip(v: Value, lo_c: float | None, hi_c: float | None, limbs: int) -> Value:
    """min(max(v, lo), hi) by the kinks' sides (``_kink``); 1-Lipschitz, so the own errors add."""
    import torch

    own = torch.zeros_like(v.e)
    if lo_c is not None:
        v = _kink(v, float(lo_c), limbs)
        own = own + v.own if v.own is not None else own
    if hi_c is not None:  # min(v, c) = -max(-v, -c)
        v = _neg(_kink(_neg(v), -float(hi_c), limbs))
        own = own + v.own if v.own is not None else own
    return Value(parts=v.parts, e=v.e, own=own * (1 + 2 * U))


def _max2(a: Value, b: Value, limbs: int) -> Value:
    """max(a, b) = b + max(a - b, 0); each step 1-Lipschitz, so the own errors add."""
    d = _add(a, b, limbs, -1.0)
    r = _kink(d, 0.0, limbs)
    out = _add(b, r, limbs)
    assert d.own is not None and r.own is not None and out.own is not None
    return Value(parts=out.parts, e=out.e, own=(d.own + r.own + out.own) * (1 + 4 * U))


def _max_of(values: Sequence[Value], limbs: int) -> Value:
    """The entry-wise maximum of ``values``, pairwise (``_max2``): within the largest of their
    distances (max is 1-Lipschitz in the largest entry) plus the steps' own errors."""
    import torch

    out = values[0]
    own: torch.Tensor | None = None
    for v in values[1:]:
        out = _max2(Value(parts=out.parts, e=torch.zeros_like(out.e)), Value(parts=v.parts, e=torch.zeros_like(v.e)),
                    limbs)
        assert out.own is not None
        own = out.own if own is None else (own + out.own) * (1 + 2 * U)
    if own is None:
        own = torch.zeros_like(values[0].e)
    largest = values[0].e
    for v in values[1:]:
        largest = torch.maximum(largest, v.e)
    return Value(parts=out.parts, e=(largest + own) * (1 + 2 * U), own=own)


__all__ = ["ENTRY_MACS", "LIMBS", "PASSES", "PASSES_4", "PreciseModel", "evaluation_macs", "Value", "extract", "memory_estimate", "two_prod", "two_sum"]
