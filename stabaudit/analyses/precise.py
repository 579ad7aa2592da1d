"""The exact outputs of piecewise-linear networks to about 100 bits, with a certified error bound.

Why. A lower bound of the Lipschitz constant is a difference quotient ||f(y) - f(x)|| / ||y - x||
of the exact function of the stored weights; the float64 evaluation is within a certified error
bound of it (``lower.ForwardErrorModel``), and a quotient counts only when the computed difference
exceeds the two points' bounds. In deep networks (a ResNet-18 at 224x224) that bound, which
follows |W| through every layer, reaches many times the output itself: no quotient can be
confirmed in float64. This module evaluates the same graph with values carried as unevaluated sums
h + l of two float64 tensors (double-double, about 106 bits) and a componentwise bound E of the
distance to the exact value, so that the error bound shrinks by some 2^-50 and quotients confirm.

How a linear map is applied (error-free transformation by splitting; Ozaki, Ogita, Oishi and Rump,
"Error-free transformations of matrix multiplication by using fast routines of matrix
multiplication and its applications", Numer. Algorithms 59, 2012). A node y = A(W, x) + b whose
output entries are sums of K products w x (Linear, Conv, ConvTranspose; Affine with K = 1; means
and sums with the coefficient 1/n or 1) splits W and x into slices W = W_1 + .. + W_P + W_r and
x = x_1 + .. + x_Q + x_r. Slice p of a tensor t is extracted with sigma = 2^k as
q = fl(fl(sigma + t) - sigma) (Rump, Ogita and Oishi, "Accurate floating-point summation part I",
SIAM J. Sci. Comput. 31, 2008, ExtractVector): with max |t| <= 2^e and k = e + 54 - beta, q is
exact, a multiple of 2^(k-53) with fewer than 2^beta units, and |t - q| <= 2^(k-53) (t - q is exact
too). Choosing 2 beta + ceil(log2 K) <= 53, every product of slices w_p x_q is a multiple of
2^(k_p + k_q - 106) with fewer than 2^(2 beta) units, and every sum of K of them, in any order, has
fewer than 2^53 units: the float64 kernel A(W_p, x_q) is exact, however it orders its sums, as long
as it computes sums of products (no transform-based convolution; torch's float64 CPU kernels are
im2col and dot products). The exact terms are added by TwoSum (Knuth), which keeps the sum
s and its rounding errors exactly; the errors are summed in float64, each addition within u of
its result. What the slices leave out is bounded by |A|(|W|, |x_r|) + |A|(|W_r| + D, |h| + |l|)
(D: a bound of the coefficient's own representation error, for 1/n), computed in float64 with
the relative margin (1 + 2 gamma_(K+2)) of a sum of nonnegative terms (Higham, Accuracy and
Stability, Lemma 3.1). The error in from the input, |A(W, e)| <= |A|(|W|, E), is propagated alike.

Average pooling is such a map too: window sums of the zero-padded input (K the window size) times
1/count, the executor's count per window, held as hi + lo with its exact remainder.
The other operators: sums and differences of two values by TwoSum (exact) plus the float64 sum of
the low parts (within 2u of it); Max and Min of values and a constant as b + max(a - b, 0);
products of two values by TwoProduct (Dekker's, with Veltkamp's splitting: exact without overflow
or underflow) of the high parts plus the float64 sum of the cross terms, within 6u of their
magnitudes; HardSwish as 0, x or x (x + 3) / 6 by the side of -3 and 3 that h + l lies on (the sum,
the product and the multiplication by 1/6 held as hi + lo with its exact remainder, all as above;
an entry within a few ulps of -3 or 3 adds what the other branch would differ by), with the bound
(3/2) E of its Lipschitz constant; HardSigmoid as the affine map then the clip;
Relu, Clip, LeakyRelu, PRelu by the sign of h + l (exact: h is
the rounded value of h + l after each TwoSum, so |l| <= u |h|): a unit whose value is at distance
more than E from the kink keeps its exact branch, one within E takes the branch of h + l with the
bound max(1, |slope|) E (the operator is Lipschitz with that constant); max pooling as the
lexicographic maximum of (h, l) over each window (exact on normalised pairs) with the window's
largest E; entries moved (reshape, transpose, slice, gather, tile, concat, constant pad, nearest
resizing) move h, l and E alike. Any other operator is evaluated in float64 on fl(h + l) with the
float64 error rules of ``lower.ForwardErrorModel`` when one is given (from there on the bound is
float64's, which costs little near the outputs: a softmax or sigmoid head); without one the graph
is not supported (``PreciseModel.why`` says which operator).
"""

from __future__ import annotations

import dataclasses
import itertools
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
SLICES = 4  # slices of a value (Q) and at most as many of a coefficient (P)
# slices whose unit would fall below 2^MIN_UNIT_EXPONENT stay in the remainder (their products
# could underflow)
MIN_UNIT_EXPONENT = -480
# evaluations of this model per float64 forward pass of the graph, for the cost model: the P x Q
# slice products of the linear nodes, two magnitude passes and the TwoSum additions (measured on
# one core, with the sensitivities: the malviz ResNet-18 at 224x224 1.79 s for a float64 pass
# planned at 0.118 s, a seeded ResNet-50 4.67 s for 0.265 s, the captcha CRNN 1.10 s for 0.070 s)
PASSES = 16.0

_MOVES = (O.Reshape, O.Transpose, O.Slice, O.Gather, O.Tile, O.Concat)


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
    """An enclosure of an exact tensor v: |v - (h + l)| <= e entry-wise."""

    h: torch.Tensor
    l: torch.Tensor  # noqa: E741
    e: torch.Tensor
    # the node's own part of e: |node(h_in + l_in) - (h + l)| for its inputs' enclosures taken as
    # exact (None: 0), for the telescoped bound
    own: torch.Tensor | None = None


@dataclass(frozen=True)
class _Sliced:
    """A coefficient hi (+ lo) as slices: hi + lo = sum(slices) + the remainder, |remainder| <= left;
    magnitude >= |hi| + |lo| (both rounded up)."""

    hi: np.ndarray
    lo: np.ndarray | None
    slices: tuple[torch.Tensor, ...]
    left: torch.Tensor
    magnitude: torch.Tensor  # |hi| + |lo|
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


def _accumulate(terms: Iterable[torch.Tensor], extra: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, l, bound) with |sum(terms) + extra - (h + l)| <= bound: TwoSum of the exact terms (taken
    one at a time, so that they need not all be held), their errors summed in float64 (each
    addition within u of its result), then one TwoSum to normalise; broadcast to a common shape."""
    import torch

    it = iter(terms)
    s = next(it)
    if extra is not None:
        s = s.expand(torch.broadcast_shapes(s.shape, extra.shape))
    s = s.clone()
    c = torch.zeros_like(s)
    mag = torch.zeros_like(s)
    count = 1
    for t in itertools.chain(it, [] if extra is None else [extra]):
        s, err = two_sum(s, t)
        c = c + err
        mag = mag + c.abs()
        count += 1
    h, l = two_sum(s, c)  # noqa: E741
    return h, l, _up(mag * U, count)


class PreciseModel:
    """``evaluate(x)``: the graph's outputs at x and an upper bound of their distance (L2) to the
    exact outputs of the stored weights, as ``lower.ForwardErrorModel.evaluate`` gives them."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], fallback: ForwardErrorModel | None = None):
        self.graph = graph
        self.shapes = shapes
        self.why: str | None = None
        self.failure: str | None = None  # why the last evaluation failed (its bound was inf)
        self._sliced: dict[tuple[tuple[int, ...], bytes, bytes | None, int], list[_Sliced]] = {}
        # S_v of ``fallback`` (``lower.error_sensitivities``): with them, a second bound sum_v S_v
        # ||own_v|| (as ``lower.ForwardErrorModel`` telescopes its own)
        self.sensitivities = dict(fallback.sensitivities) if fallback is not None else {}
        # nodes evaluated in float64 with ``fallback``'s error rules (no exact evaluation here)
        self.in_float64: list[str] = []
        self._steps: list[tuple[Node, Callable[[list[Value]], Value]]] = []
        for node in graph.nodes:
            try:
                step = self._step(node)
            except StabauditError:
                raise
            except Exception as exc:  # noqa: BLE001  (a node this module cannot build runs in float64)
                raise_allocation_failure(exc)
                step = f"{node.name}: {type(exc).__name__}: {exc}"
            if isinstance(step, str) and fallback is not None:
                step = self._float64(node, fallback)
                self.in_float64.append(node.name)
            if isinstance(step, str):
                self.why = step
                self._steps = []
                return
            self._steps.append((node, step))

    @property
    def supported(self) -> bool:
        return self.why is None

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

    def _linear(self, coeff_hi: np.ndarray, coeff_lo: np.ndarray | None, rest: float,
                apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], k: int,
                bias: torch.Tensor | None, extra: torch.Tensor | None = None) -> _Linear:
        """The linear map's slices; ``rest`` (a number) or ``extra`` (a tensor like the coefficient)
        bounds |W_exact - (hi + lo)| entry-wise."""
        import torch

        beta = _beta(k)
        hi_a = np.ascontiguousarray(coeff_hi, dtype=np.float64)
        lo_a = None if coeff_lo is None else np.ascontiguousarray(coeff_lo, dtype=np.float64)
        # one weight read by many nodes (the steps of an unrolled recurrence) is sliced once: found
        # by its shape and a few of its entries, and confirmed equal entry by entry
        stride = max(1, hi_a.size // 64)
        key = (hi_a.shape, hi_a.ravel()[::stride].tobytes(), None if lo_a is None else lo_a.ravel()[::stride].tobytes(), beta)
        found = next((c for c in self._sliced.get(key, []) if np.array_equal(c.hi, hi_a) and (
            (lo_a is None and c.lo is None) or (lo_a is not None and c.lo is not None and np.array_equal(c.lo, lo_a)))),
            None)
        if found is None:
            parts = [torch.from_numpy(hi_a.copy())] + ([] if lo_a is None else [torch.from_numpy(lo_a.copy())])
            slices, left = extract(parts, beta, SLICES)
            # zeros as views of one number (no memory): the remainder of a float32 weight usually is
            zero = torch.zeros((), dtype=torch.float64).expand(parts[0].shape)
            found = _Sliced(hi=hi_a, lo=lo_a, slices=tuple(slices),
                            left=sum((r.abs() for r in left), zero) * (1.0 + 4 * U) if any(
                                bool((r != 0).any()) for r in left) else zero,
                            magnitude=sum((p.abs() for p in parts[1:]), parts[0].abs()) * (1.0 + 4 * U),
                            zero=zero)
            self._sliced.setdefault(key, []).append(found)
        remainder, magnitude = found.left, found.magnitude
        if rest != 0.0 or extra is not None:
            # |W_exact| <= |hi| + |lo| + D entry-wise (D: the coefficient's representation error)
            d = (rest if extra is None else extra + rest) * (1.0 + 4 * U)
            remainder, magnitude = (remainder + d) * (1.0 + 2 * U), (magnitude + d) * (1.0 + 2 * U)
        return _Linear(apply=apply, slices=found.slices, magnitude=magnitude, rest=remainder, k=k, bias=bias,
                       zero=found.zero, rest_nonzero=remainder is not found.zero)

    def _step(self, node: Node) -> Callable[[list[Value]], Value] | str:
        import torch

        op = node.op
        out_shape = tuple(self.shapes[node.output])
        rank = len(out_shape)
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
                return self._linear_step(self._linear(w, None, 0.0, apply, k, bias))
            case O.Affine(scale=sc, shift=sh):
                one = np.ones(()) if sc is None else np.asarray(sc, dtype=np.float64)
                shift = None if sh is None else torch.from_numpy(np.asarray(sh, dtype=np.float64).copy())
                return self._linear_step(self._linear(one, None, 0.0, lambda c, x: x * c, 1, shift))
            case O.GlobalAvgPool() | O.ReduceMean() | O.ReduceSum():
                shape = tuple(self.shapes[node.inputs[0]])
                axes = tuple(range(2, len(shape))) if isinstance(op, O.GlobalAvgPool) else op.axes
                keep = True if isinstance(op, O.GlobalAvgPool) else op.keepdims
                n = int(np.prod([shape[a] for a in axes])) if axes else 1
                if isinstance(op, O.ReduceSum):
                    hi, lo, rest = np.ones(()), None, 0.0
                else:
                    exact = Fraction(1, n)
                    h = float(exact)
                    lo_f = float(exact - Fraction(h))
                    hi, lo = np.asarray(h), np.asarray(lo_f)
                    rest = float(abs(exact - Fraction(h) - Fraction(lo_f))) * (1.0 + 4 * U) + TINY

                def total(c: torch.Tensor, x: torch.Tensor, axes: tuple[int, ...] = axes, keep: bool = keep) -> torch.Tensor:
                    s = x.sum(dim=axes, keepdim=keep) if axes else x
                    return s * c

                return self._linear_step(self._linear(hi, lo, rest, total, max(n, 1), None))
            case O.AvgPool():
                return self._avg_pool(op)
            case O.Add() | O.Sub():
                sign = 1.0 if isinstance(op, O.Add) else -1.0
                def add(xs: list[Value], sign: float = sign) -> Value:
                    return _add(xs[0], xs[1], sign)

                return add
            case O.Max() | O.Min():
                top = isinstance(op, O.Max)
                const = None if op.constant is None else torch.from_numpy(np.asarray(op.constant, dtype=np.float64).copy())

                def extremum(xs: list[Value], top: bool = top, const: torch.Tensor | None = const) -> Value:
                    # the inputs' own errors are their nodes'; this node's are those of its steps
                    vals = [Value(h=v.h, l=v.l, e=v.e) for v in xs]
                    vals = vals if top else [_neg(v) for v in vals]
                    if const is not None:
                        c = const if top else -const
                        vals.append(Value(h=c, l=torch.zeros_like(c), e=torch.zeros_like(c)))
                    out, own = vals[0], None
                    for v in vals[1:]:
                        out = _max2(out, v)
                        assert out.own is not None
                        own = out.own if own is None else (own + out.own) * (1 + 2 * U)
                    out = Value(h=out.h, l=out.l, e=out.e, own=own)
                    return out if top else _neg(out)

                return extremum
            case O.Relu():
                return lambda xs: _kink(xs[0], 0.0)
            case O.LeakyRelu(alpha=alpha):
                return self._leaky(np.asarray(alpha, dtype=np.float64))
            case O.PRelu(slope=slope):
                return self._leaky(np.asarray(slope, dtype=np.float64))
            case O.Clip(min=lo_c, max=hi_c):
                def clip(xs: list[Value], lo_c: float | None = lo_c, hi_c: float | None = hi_c) -> Value:
                    return _clip(xs[0], lo_c, hi_c)

                return clip
            case O.Mul():
                return lambda xs: _mul(xs[0], xs[1])
            case O.HardSwish():
                return self._hard_swish()
            case O.HardSigmoid(alpha=alpha, beta=beta):
                scaled = self._linear_step(self._linear(np.asarray(alpha, dtype=np.float64), None, 0.0,
                                                        lambda c, x: x * c, 1,
                                                        torch.tensor(float(beta), dtype=torch.float64)))

                def hard_sigmoid(xs: list[Value], scaled: Callable[[list[Value]], Value] = scaled) -> Value:
                    z = scaled(xs)
                    y = _clip(z, 0.0, 1.0)
                    assert y.own is not None
                    own = y.own if z.own is None else (y.own + z.own) * (1 + 2 * U)  # clip is 1-Lipschitz
                    return Value(h=y.h, l=y.l, e=y.e, own=own)

                return hard_sigmoid
            case O.MaxPool() | O.GlobalMaxPool():
                return self._max_pool(node)
            case O.Pad():
                kern = self._kernel(node, dataclasses.replace(op, value=0.0))
                kval = self._kernel(node, op)

                def pad(xs: list[Value], kern: Callable[..., torch.Tensor] = kern,
                        kval: Callable[..., torch.Tensor] = kval) -> Value:
                    v = xs[0]
                    return Value(h=kval(v.h), l=kern(v.l), e=kern(v.e))

                return pad
            case _ if isinstance(op, _MOVES) or (
                    isinstance(op, O.Resize) and op.mode == "nearest" and op.coordinate_mode != "tf_crop_and_resize"):
                # (nearest resizing copies entries: its matrices hold one 1 per row)
                kern = self._kernel(node, op)

                def move(xs: list[Value], kern: Callable[..., torch.Tensor] = kern) -> Value:
                    return Value(h=kern(*[v.h for v in xs]), l=kern(*[v.l for v in xs]), e=kern(*[v.e for v in xs]))

                return move
        return f"{node.name}: {op.type.value} is not evaluated exactly"

    def _float64(self, node: Node, fallback: ForwardErrorModel) -> Callable[[list[Value]], Value]:
        """The node in float64 on the rounded inputs fl(h + l), whose distance to the exact ones is
        at most e + u |fl(h + l)|, with ``fallback``'s rule for the node (``lower.ForwardErrorModel``:
        the computed output's distance to the exact one, given the inputs' distances)."""
        import torch

        kern = self._kernel(node, node.op)
        rule = fallback.rule(node)

        def step(xs: list[Value]) -> Value:
            rounded = [v.h + v.l for v in xs]
            errs = [(v.e + U * r.abs()) * (1 + 4 * U) + TINY for v, r in zip(xs, rounded, strict=True)]
            y = kern(*rounded)
            own = None
            if self.sensitivities:  # the inputs' rounding to float64 is this node's too
                own = _fit(rule(rounded, [U * r.abs() * (1 + 4 * U) + TINY for r in rounded], y), y)
            return Value(h=y, l=torch.zeros_like(y), e=_fit(rule(rounded, errs, y), y), own=own)

        return step

    def _linear_step(self, lin: _Linear) -> Callable[[list[Value]], Value]:
        import torch

        def step(xs: list[Value]) -> Value:
            v = xs[0]
            beta = _beta(lin.k)
            xq, xr = extract([v.h, v.l], beta, SLICES)
            # the slice products one at a time (a zero of the output's shape when there is none:
            # a zero coefficient or a zero input), the bias last
            terms: Iterable[torch.Tensor] = (
                (lin.apply(w, x) for w in lin.slices for x in xq) if lin.slices and xq else [lin.apply(lin.zero, v.h)])
            h, l, acc = _accumulate(terms, lin.bias)  # noqa: E741
            left = sum((r.abs() for r in xr), torch.zeros_like(v.h))
            # A(W, x) = sum A(W_p, x_q) + A(W, x_r) + A(W_r, x - x_r), |x - x_r| <= |h| + |l| + |x_r|
            rest = lin.apply(lin.rest, v.h.abs() + v.l.abs() + left) if lin.rest_nonzero else 0.0
            e = _up(lin.apply(lin.magnitude, v.e + left) + rest, lin.k) + acc
            own = _up(lin.apply(lin.magnitude, left) + rest, lin.k) + acc if self.sensitivities else None
            return Value(h=h, l=l, e=_fit(e, h), own=None if own is None else _fit(own, h))

        return step

    def _hard_swish(self) -> Callable[[list[Value]], Value]:
        """HardSwish(x) = 0 (x <= -3), x (x >= 3), x (x + 3) / 6 between, each branch taken by the side
        of -3 and 3 that h + l lies on and evaluated there in double-double (the middle: TwoSum,
        TwoProduct, 1/6 as hi + lo with its exact remainder); the inputs' distance E to the exact
        values moves the output by at most (3/2) E, its Lipschitz constant. Where h + l is within a
        few ulps of -3 or 3 the side may be misread: the two branches meet there and are each
        (3/2)-Lipschitz, so they differ by at most 3 |h + l -+ 3|, added to the own error."""
        import torch

        exact = Fraction(1, 6)
        hi = float(exact)
        lo = float(exact - Fraction(hi))
        rest = float(abs(exact - Fraction(hi) - Fraction(lo))) * (1.0 + 4 * U) + TINY
        sixth = self._linear_step(self._linear(np.asarray(hi), np.asarray(lo), rest, lambda c, x: x * c, 1, None))

        def side(v: Value, c: float) -> torch.Tensor:
            """Where h + l > c (up to the entries ``near`` takes care of)."""
            d_h, d_l = two_sum(v.h, torch.full_like(v.h, -c))
            return two_sum(d_h, d_l + v.l)[0] > 0.0

        def hard_swish(xs: list[Value]) -> Value:
            v = xs[0]
            zero = torch.zeros_like(v.h)
            x0 = Value(h=v.h, l=v.l, e=zero)  # the enclosure's centre, as exact: the own error alone
            t = _add(x0, Value(h=torch.full_like(v.h, 3.0), l=zero, e=zero))
            mid = sixth([_mul(t, x0)])
            above, below = side(v, 3.0), ~side(v, -3.0)
            h = torch.where(above, v.h, torch.where(below, zero, mid.h))
            l = torch.where(above, v.l, torch.where(below, zero, mid.l))  # noqa: E741
            own = torch.where(above | below, zero, mid.e)
            for c in (3.0, -3.0):
                gap = (v.h - c).abs() + v.l.abs()
                near = gap <= 16 * U * (v.h.abs() + 3.0) + TINY
                own = own + torch.where(near, 3.0 * gap * (1 + 4 * U) + TINY, zero)
            own = own * (1 + 4 * U)
            return Value(h=h, l=l, e=(1.5 * v.e + own) * (1 + 4 * U), own=own)

        return hard_swish

    def _leaky(self, slope: np.ndarray) -> Callable[[list[Value]], Value]:
        import torch

        scale = self._linear(slope, None, 0.0, lambda c, x: x * c, 1, None)
        scaled = self._linear_step(scale)
        top = float(max(1.0, float(np.max(np.abs(slope))) if slope.size else 1.0))

        def leaky(xs: list[Value]) -> Value:
            v = xs[0]
            low = scaled([v])
            pos = v.h > 0.0
            sure = _sure(v, 0.0)
            h = torch.where(pos, v.h, low.h)
            l = torch.where(pos, v.l, low.l)  # noqa: E741
            e = torch.where(sure, torch.where(pos, v.e, low.e), (v.e * top + low.e) * (1 + 2 * U))
            own = None if low.own is None else torch.where(pos, torch.zeros_like(low.own), low.own)
            return Value(h=h, l=l, e=e, own=own)

        return leaky

    def _avg_pool(self, op: O.AvgPool) -> Callable[[list[Value]], Value] | str:
        """Average pooling as the executor defines it, (window sum of the zero-padded input) times
        1/count, count the window sum of the padding mask (exact small integers): a linear map
        with K = the window size and the coefficient 1/count held as hi + lo (+ its exact
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
                hi, lo, rest = np.zeros_like(c), np.zeros_like(c), np.zeros_like(c)
                for value in np.unique(c):
                    exact = Fraction(1, int(value))
                    h = float(exact)
                    lo_v = float(exact - Fraction(h))
                    sel = c == value
                    hi[sel], lo[sel] = h, lo_v
                    rest[sel] = float(abs(exact - Fraction(h) - Fraction(lo_v))) * (1.0 + 4 * U) + TINY
                k = int(np.prod(op.kernel))
                state[spatial] = self._linear(hi, lo, 0.0, lambda cf, x: window_sum(x) * cf, k, None,
                                              extra=torch.from_numpy(rest))
            return state[spatial]

        def avg(xs: list[Value]) -> Value:
            return self._linear_step(linear_for(tuple(xs[0].h.shape)))(xs)

        return avg

    def _max_pool(self, node: Node) -> Callable[[list[Value]], Value] | str:
        import torch

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
        # padding (and ceil mode's extra end) never wins: -inf for h, anything for l and e
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
            wh = windows(v.h, -math.inf)
            top = wh.amax(dim=-1)
            ties = wh == top.unsqueeze(-1)
            low = torch.where(ties, windows(v.l, 0.0), torch.tensor(-math.inf, dtype=v.l.dtype)).amax(dim=-1)
            e = windows(v.e, 0.0).amax(dim=-1)
            if tuple(top.shape) != out_shape:
                raise ValueError("max pool windows do not match the output shape")
            return Value(h=top, l=low, e=e)

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
            env[s.name] = Value(h=t, l=torch.zeros_like(t), e=torch.zeros_like(t))
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
        """The outputs (flat, float64: h + l rounded) at the flat input x and an upper bound of the
        L2 distance to the exact outputs (inf when not supported or not finite)."""
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
        h = torch.cat([v.h.reshape(-1) for v in outs])
        l = torch.cat([v.l.reshape(-1) for v in outs])  # noqa: E741
        e = torch.cat([v.e.reshape(-1) for v in outs])
        y = (h + l).numpy().astype(np.float64)
        # rounding h + l to one float64 moves each entry by at most u |y|
        bound = e.numpy() + U * np.abs(y) * (1 + 4 * U)
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(bound))):
            return y, math.inf
        size = _size(torch.from_numpy(bound)) * (1 + 1e-9)
        # the telescoped bound (module docstring of ``lower``: switching the nodes from exact to
        # computed one at a time), plus the final rounding to float64
        rounding = _size(torch.from_numpy(U * np.abs(y))) * (1 + 1e-9)
        return y, min(size, (self.telescoped + rounding) * (1 + 4 * U))


def memory_estimate(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes a model of ``graph`` holds beyond the graph itself, for the memory plan: each weight's
    slices, magnitude and remainder (about seven float64 copies; measured on ResNet-50 at 224x224,
    1.55 GB against 1.58 GB estimated) and the working set of the largest node (about 24 float64
    tensors of its output: h, l, e and own of its inputs and output, the input's slices and
    remainders, the running sums)."""
    weights = 0
    for node in graph.nodes:
        w = getattr(node.op, "weight", None)
        if isinstance(w, np.ndarray):
            weights += int(w.size)
    largest = max((math.prod(shapes[n.output]) for n in graph.nodes), default=0)
    return 8 * (7 * weights + 24 * largest)


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


def _add(a: Value, b: Value, sign: float = 1.0) -> Value:
    """a + sign b: TwoSum of the high parts (exact), the low parts and its error summed in float64
    (two roundings, each within u of its result), one TwoSum to normalise (broadcasting)."""
    s, err = two_sum(a.h, sign * b.h)
    low = (a.l + sign * b.l) + err
    h, l = two_sum(s, low)  # noqa: E741
    rounding = 2 * U * (a.l.abs() + b.l.abs() + err.abs()) * (1 + 4 * U) + TINY
    return Value(h=h, l=l, e=(a.e + b.e + rounding) * (1 + 2 * U), own=rounding)


def _mul(a: Value, b: Value) -> Value:
    """a b (broadcasting): TwoProduct of the high parts (exact) plus the cross terms h_a l_b + l_a h_b +
    l_a l_b summed with its error term in float64 (each product within u, the three additions
    within gamma_3 of the magnitudes: 6u in all), one TwoSum to normalise. The inputs' distances
    move the product by at most |a| E_b + |b| E_a + E_a E_b."""
    p, pe = two_prod(a.h, b.h)
    t1, t2, t3 = a.h * b.l, a.l * b.h, a.l * b.l
    h, l = two_sum(p, ((pe + t1) + t2) + t3)  # noqa: E741
    own = 6 * U * (pe.abs() + t1.abs() + t2.abs() + t3.abs()) * (1 + 4 * U) + TINY
    size_a, size_b = a.h.abs() + a.l.abs(), b.h.abs() + b.l.abs()
    e = (size_a * b.e + size_b * a.e + a.e * b.e + own) * (1 + 8 * U)
    return Value(h=h, l=l, e=e, own=own)


def _clip(v: Value, lo_c: float | None, hi_c: float | None) -> Value:
    """min(max(v, lo), hi) by the kinks' sides (``_kink``); 1-Lipschitz, so the own errors add."""
    import torch

    own = torch.zeros_like(v.h)
    if lo_c is not None:
        v = _kink(v, float(lo_c))
        own = own + v.own if v.own is not None else own
    if hi_c is not None:  # min(v, c) = -max(-v, -c)
        v = _neg(_kink(_neg(v), -float(hi_c)))
        own = own + v.own if v.own is not None else own
    return Value(h=v.h, l=v.l, e=v.e, own=own * (1 + 2 * U))


def _max2(a: Value, b: Value) -> Value:
    """max(a, b) = b + max(a - b, 0); each step 1-Lipschitz, so the own errors add."""
    d = _add(a, b, -1.0)
    r = _kink(d, 0.0)
    out = _add(b, r)
    assert d.own is not None and r.own is not None and out.own is not None
    return Value(h=out.h, l=out.l, e=out.e, own=(d.own + r.own + out.own) * (1 + 4 * U))


def _neg(v: Value) -> Value:
    return Value(h=-v.h, l=-v.l, e=v.e, own=v.own)


def _sure(v: Value, c: float) -> torch.Tensor:
    """Where h + l stands further than e from c (its side of c is that of the exact value); the
    comparison widened by the rounding of h - c and the size of l."""
    return (v.h - c).abs() * (1 - 4 * U) > v.e * (1 + 4 * U) + 2 * U * (v.h.abs() + abs(c)) + TINY


def _kink(v: Value, c: float) -> Value:
    """max(v, c) entry-wise: c + max(v - c, 0), the side of c from h + l (exact: after a TwoSum,
    h + l - c has the sign of fl(h - c) unless |h - c| is within the ulps this comparison allows,
    which leaves the unit among the unsure ones)."""
    import torch

    diff_h, diff_l = two_sum(v.h, torch.full_like(v.h, -c))
    low = diff_l + v.l
    above = two_sum(diff_h, low)[0] > 0.0
    sure_above = above & _sure(v, c)
    sure_below = (~above) & _sure(v, c)
    cc = torch.full_like(v.h, c)
    h = torch.where(above, v.h, cc)
    l = torch.where(above, v.l, torch.zeros_like(v.l))  # noqa: E741
    # an unsure unit: max(v, c) is within e of max(h + l, c), which this representation holds
    # exactly up to the rounding of d (the side taken)
    slack = 4 * U * (v.h.abs() + abs(c) + v.l.abs()) + TINY
    e = torch.where(sure_above, v.e, torch.where(sure_below, torch.zeros_like(v.e), (v.e + slack) * (1 + 2 * U)))
    own = torch.where(sure_above | sure_below, torch.zeros_like(slack), slack)
    return Value(h=h, l=l, e=e, own=own)


__all__ = ["PASSES", "PreciseModel", "Value", "extract", "memory_estimate", "two_prod", "two_sum"]
