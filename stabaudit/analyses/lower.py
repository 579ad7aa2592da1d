"""Sound lower bounds of the global L2 Lipschitz constant: seeded search, confirmed difference quotients.

Any pair of inputs x != y gives Lip(f) >= ||f(y) - f(x)|| / ||y - x||, so the largest quotient
that survives an explicit float64 rounding analysis is a sound lower bound (Guarantee.LOWER),
with the pair as its witness. The search only proposes candidates; soundness rests entirely
on ``confirm_quotient``:

1. Points with a large Jacobian norm: a screened pool of seeded normal samples at scales
   1, 3 and 10 (times ``domain_scale``); at each point the top singular pair (sigma, v) of the
   Jacobian J(x) (when min(n, m) <= 64 the full Jacobian by jacrev/jacfwd and the top
   eigenvector of its smaller Gram matrix, else warm-started power iteration with jvp/vjp).
   sigma = ||J(x) v|| is the local Lipschitz constant at x: an estimate, never reported as a bound.
2. Ascent from the best points, for ``steps`` rounds:
   - pair ascent: Adam on log ||f(x + d) - f(x)|| - log ||d|| over (x, d). The quotient of a
     pair averages J along the segment, so its gradient is informative even for
     piecewise-linear (ReLU) networks, whose ||J|| is piecewise constant; Jacobians along the
     path feed the candidates;
   - local search on sigma (a (1 + lambda) evolution strategy with adaptive radius), whose first
     proposal follows the gradient of ||J(x) v|| when the network is smooth.
3. Confirmation: for the best 8 distinct points, y = x +- h v with h in {1e-2, ..., 1e-8} times
   (||x|| + domain_scale), and the best pairs of the pair ascent, evaluated in float64 with a
   componentwise forward error bound (``ForwardErrorModel``); the reported value is the largest
   confirmed quotient, its witness the pair actually evaluated. A relative margin such as
   q (1 - 1e-9) would not be sound: for small ||y - x|| the rounding error of f_hat(y) - f_hat(x)
   is absolute (it scales with the magnitudes inside the network, not with ||y - x||).

The work of every phase is planned from a static cost model of the graph (multiply-accumulates
per evaluation, ``plan.lower_units``), never from measured times, so a seed gives the same result
on any machine and under any load; the clock only aborts the search (--timeout raises).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stabaudit.analyses import plan
from stabaudit.bounds.base import Guarantee, OpBound
from stabaudit.errors import InternalError, StabauditError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import float64_copy
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.limits import check_deadline, raise_allocation_failure

if TYPE_CHECKING:
    import torch

    from stabaudit.analyses.precise import PreciseModel

U = 2.0**-53  # unit roundoff of float64 (round to nearest)
_TINY = 1e-290  # absolute floor for results that may underflow (smallest normal is 2.2e-308)
_FULL_JACOBIAN_MAX = 64  # full Jacobian + SVD when min(n, m) <= this, else power iteration
_SCALES = (1.0, 3.0, 10.0)
_STEPS_H: tuple[float, ...] = (1e-2, 1e-4, 1e-6, 1e-8)
# the step sizes a starved plan keeps (``_shape``): the middle ones, then the one that most often
# clears the float64 error bound while staying on one linear piece
_STEPS_H_FEW: tuple[tuple[float, ...], ...] = ((1e-4, 1e-6), (1e-4,))

# Operators under which f is piecewise linear: the gradient of ||J(x) v|| is zero almost everywhere.
_PIECEWISE_LINEAR: frozenset[O.OpType] = frozenset(
    {
        O.OpType.LINEAR,
        O.OpType.CONV,
        O.OpType.CONV_TRANSPOSE,
        O.OpType.AFFINE,
        O.OpType.ADD,
        O.OpType.SUB,
        O.OpType.RELU,
        O.OpType.LEAKY_RELU,
        O.OpType.PRELU,
        O.OpType.CLIP,
        O.OpType.HARD_SIGMOID,
        O.OpType.MAX_POOL,
        O.OpType.AVG_POOL,
        O.OpType.GLOBAL_AVG_POOL,
        O.OpType.GLOBAL_MAX_POOL,
        O.OpType.RESHAPE,
        O.OpType.TRANSPOSE,
        O.OpType.PAD,
        O.OpType.CONCAT,
        O.OpType.REDUCE_SUM,
        O.OpType.REDUCE_MEAN,
        O.OpType.REDUCE_MAX,
        O.OpType.REDUCE_MIN,
        O.OpType.REDUCE_L1,
        O.OpType.MAX,
        O.OpType.MIN,
        O.OpType.SLICE,
        O.OpType.GATHER,
        O.OpType.TILE,
        O.OpType.ABS,
        O.OpType.QUANTIZE,  # its smooth part, the clip, is what the search evaluates
        O.OpType.WHERE,
    }
)


@dataclass(frozen=True, kw_only=True)
class Witness:
    """The evaluated pair: ||f(y) - f(x)|| / ||y - x|| >= quotient (rounding accounted for)."""

    x: list[float]
    y: list[float]
    quotient: float


@dataclass(frozen=True, kw_only=True)
class LowerResult:
    """A sound lower bound of the global L2 Lipschitz constant (0 when nothing was confirmed).

    ``estimate`` is the largest local Jacobian norm seen during the search (an ESTIMATE of a
    lower bound, not confirmed); ``evaluations`` counts the points at which f or its Jacobian
    was evaluated.
    """

    value: float
    method: str
    witness: Witness | None
    seconds: float
    evaluations: int
    estimate: float = 0.0
    guarantee: Guarantee = Guarantee.LOWER


# ---- rounding-aware arithmetic ------------------------------------------------------------------
def _up(v: float) -> float:
    """nextafter(fl(r), +inf) >= r for a correctly rounded result fl(r) (IEEE 754, round to nearest)."""
    return math.nextafter(v, math.inf) if math.isfinite(v) else v


def _down(v: float) -> float:
    """nextafter(fl(r), -inf) <= r for a correctly rounded result fl(r)."""
    return math.nextafter(v, -math.inf) if math.isfinite(v) else v


def _norm(a: np.ndarray) -> float:
    """||a||_2 as sqrt(fsum(a_i^2)): each square and the root are correctly rounded and fsum is
    exactly rounded, so the result is within a relative 2u (+ u per square) of the exact norm,
    except for squares that underflow (at most 1e-300 each, handled by the callers)."""
    flat = np.asarray(a, dtype=np.float64).reshape(-1)
    with np.errstate(over="ignore", under="ignore"):  # an overflowed square gives inf: callers refuse it
        squares = flat * flat
    return math.sqrt(math.fsum(squares.tolist()))


def _norm_up(a: np.ndarray) -> float:
    """An upper bound of ||a||_2 for error tensors, fast: the BLAS sum of squares s_hat of n terms
    (any order, FMA included) is within gamma_n s of the exact s (Higham, Thm 3.4 for a dot
    product of nonnegative terms), so s <= s_hat / (1 - gamma_n); squares that underflow lose at
    most 2^-1074 each (sqrt(n) 1e-154 on the root, added); the root is rounded up twice. Falls back
    to ``_norm`` when gamma_n exceeds 1e-7 (n above 9e8)."""
    flat = np.asarray(a, dtype=np.float64).reshape(-1)
    n = flat.size
    if n == 0:
        return 0.0
    gam = _gamma(n)
    if not gam <= 1e-7:
        return _up(_norm(flat) * (1.0 + 4 * U))
    with np.errstate(over="ignore", under="ignore"):
        s_hat = float(np.dot(flat, flat))
    if not math.isfinite(s_hat):
        return math.inf
    return _up(_up(math.sqrt(_up(s_hat / (1.0 - gam))) * (1.0 + 2 * U)) + math.sqrt(n) * 1e-154)


def _mul_up(a: float, b: float) -> float:
    """An upper bound of a * b for a, b >= 0 (0 when either is 0, so 0 * inf = 0)."""
    if a == 0.0 or b == 0.0:
        return 0.0
    return _up(a * b)


def _gamma(k: int) -> float:
    """gamma_k = k u / (1 - k u): |fl(sum of k products) - exact| <= gamma_k sum |products|
    for any summation order, FMA included (Higham, Accuracy and Stability, Thm 3.4/3.5)."""
    ku = k * U
    return ku / (1.0 - ku) if ku < 0.5 else math.inf


# ---- float64 forward error bound ------------------------------------------------------------------
class Evaluation(Protocol):
    """An evaluation of the graph with a certified error bound: ``evaluate(x)`` gives the outputs
    (flat float64) and an upper bound of their L2 distance to the exact outputs (inf: none)."""

    def evaluate(self, x: torch.Tensor) -> tuple[np.ndarray, float]: ...


class ForwardErrorModel:
    """Componentwise bound |f_hat(x) - f(x)| of the float64 evaluation of the graph.

    Propagated node by node (e = bound on |computed - exact| of a value, x_hat the computed
    input, y_hat the computed output); the inequalities used:
    - linear maps y = W x + b: |y_hat - y| <= |W| e + gamma_{K+2} (|W| |x_hat| + |b|) with K the
      number of products per output (dot-product error bound, any summation order);
    - an elementwise map with |sigma(a) - sigma(b)| <= c |a - b| (c = sup |sigma'|):
      e_out = c e_in + r, where r bounds the rounding of the evaluation itself: 0 for exact
      operations (ReLU, clip, max), a few u for products, and 64 u (|x| + |y| + 1) for library
      transcendental functions (an assumption: float64 exp/tanh/erf are accurate to far fewer
      than 64 ulp, SLEEF and glibc document <= 1-4 ulp);
    - max pooling: |max a - max b| <= max |a - b|; average pooling and moves of entries
      (reshape, transpose, pad, concat) are applied to e themselves;
    - softmax: ||J||_{inf->inf} = max_i 2 s_i (1 - s_i) <= 1/2, so e_out <= max(e_in) / 2 + r;
    - ReLU (and clip): a unit with x_hat + e <= 0 is off for the exact input too, so its error
      is 0; without this the |W| products make the bound grow geometrically with depth.
    Norms of error tensors are multiplied by (1 + 1e-6) to cover the rounding of this
    computation itself (a relative k u per step, k << 1e6 / depth).

    With ``sensitivities`` (S_v from ``composition.output_sensitivities``: the certified
    Lipschitz constant of the outputs w.r.t. value v, the values not downstream of v fixed) a
    second bound is the telescoping sum over the nodes in topological order
    ||f_hat(x) - f(x)|| <= sum_v S_v ||r_v||, with r_v the node's own rounding on its computed
    inputs (switch the nodes from exact to computed one at a time; each switch moves the
    output by at most S_v ||r_v||). The smaller of the two bounds is used.
    """

    def __init__(
        self,
        graph: Graph,
        shapes: dict[str, tuple[int, ...]],
        sensitivities: Mapping[str, float] | None = None,
    ):
        import torch

        from stabaudit.ir.executor import Executor

        self.graph = graph
        self.executor = Executor(graph, dtype=torch.float64)
        self.sensitivities = dict(sensitivities or {})
        # rules that give the propagated error and the node's own rounding in one call (sharing
        # their costly part), by node output; the others are called twice for the two
        self._both: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self._rules: list[tuple[Node, Callable[..., torch.Tensor]]] = []
        for node in graph.nodes:
            self._rules.append((node, self._rule(node, shapes)))

    @staticmethod
    def _single(
        node: Node, op: O.Op, shapes: Sequence[tuple[int, ...]],
        parameters: Mapping[tuple[str, str], torch.Tensor] | None = None,
    ) -> Callable[..., torch.Tensor]:
        """The executor's kernel of ``op`` as a function of tensors (one-node graph); ``parameters``:
        tensors in place of the op's arrays, by (node name, field)."""
        import torch

        from stabaudit.ir.executor import Executor

        names = tuple(f"in{i}" for i in range(len(shapes)))
        g = Graph(
            inputs=tuple(
                TensorSpec(name=n, shape=tuple(s)) for n, s in zip(names, shapes, strict=True)
            ),
            outputs=("out",),
            nodes=(Node(name=node.name, op=op, inputs=names, output="out"),),
        )
        ex = Executor(g, dtype=torch.float64, parameters=parameters)
        return lambda *args: ex(*args)[0]

    def _rule(self, node: Node, shapes: dict[str, tuple[int, ...]]) -> Callable[..., torch.Tensor]:
        import torch

        op = node.op
        in_shapes = [shapes[name] for name in node.inputs]

        def smooth(c: float, absolute: float = 1.0) -> Callable[..., torch.Tensor]:
            def rule(
                xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
            ) -> torch.Tensor:
                return c * es[0] + 64 * U * (xs[0].abs() + y.abs() + absolute)

            return rule

        def bell(half: bool) -> Callable[..., torch.Tensor]:
            # tanh' = sech^2 and sigmoid'(t) = sech^2(t / 2) / 4 decrease in |t|: on the segment
            # between the computed input x_hat and the exact one (|x - x_hat| <= e) the slope is at
            # most that at m = max(|x_hat| - e, 0). sech^2 = 1 / cosh^2 is computed with a relative
            # error of a few u (cosh overflowing to inf gives 0, below the true 1e-300-size slope,
            # hence the absolute floor) and widened by 1e-12 relative; never above the global slope.
            top = 0.25 if half else 1.0

            def rule(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
                x, e = xs[0], es[0]
                m = torch.clamp(x.abs() - e, min=0.0)
                c = torch.cosh(m / 2.0 if half else m)
                slope = torch.clamp(top / (c * c) * (1.0 + 1e-12) + _TINY, max=top)
                slope = torch.where(torch.isfinite(e), slope, top)
                return slope * e + 64 * U * (x.abs() + y.abs() + 1.0)

            return rule

        match op:
            case O.Linear() | O.Conv() | O.ConvTranspose():
                w = op.weight
                # |W| as the kernel's weight: one new tensor (a numpy |W| handed to the kernel
                # would be copied again by the executor)
                magnitude = torch.from_numpy(float64_copy(w)).abs()
                absop = self._single(node, dataclasses.replace(op, bias=None), in_shapes,
                                     parameters={(node.name, "weight"): magnitude})
                match op:
                    case O.Linear():
                        k = w.shape[1]
                    case O.Conv():
                        k = int(np.prod(w.shape[1:]))  # C_in / groups * kernel size
                    case O.ConvTranspose(groups=g):
                        k = (w.shape[0] // g) * int(np.prod(w.shape[2:]))
                gam = _gamma(k + 2)
                rank = len(shapes[node.output])
                b = None
                if op.bias is not None:
                    bias = torch.from_numpy(np.abs(np.asarray(op.bias, dtype=np.float64)))
                    b = (
                        bias
                        if isinstance(op, O.Linear)
                        else bias.reshape((-1,) + (1,) * (rank - 2))
                    )

                def linear(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    return linear_both(xs, es, y, False)[0]

                def linear_both(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor, own: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
                    # the node's own rounding (exact inputs) is gam * mag: |W| 0 = 0 exactly, so
                    # it is the same tensor the rule with zero input errors gives, without the
                    # two passes of |W| that rule would take again
                    mag = absop(xs[0].abs())
                    if b is not None:
                        mag = mag + b
                    local = gam * mag
                    err = absop(es[0]) + local if bool(torch.any(es[0] != 0.0)) else local
                    return err, (local if own else None)

                self._both[node.output] = linear_both
                return linear
            case O.Affine(scale=sc, shift=sh):
                s = (
                    torch.as_tensor(np.abs(np.asarray(sc, dtype=np.float64)))
                    if sc is not None
                    else None
                )
                h = (
                    torch.as_tensor(np.abs(np.asarray(sh, dtype=np.float64)))
                    if sh is not None
                    else None
                )

                def affine(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    # fl(fl(x s) + h): error <= u |x s| + u |x s + h| (1 + u) <= 4u (|x||s| + |h|)
                    mag = xs[0].abs() * s if s is not None else xs[0].abs()
                    e = es[0] * s if s is not None else es[0]
                    if h is not None:
                        mag = mag + h
                    return (e + 4 * U * mag).expand(y.shape)

                return affine
            case O.Add() | O.Sub():
                return lambda xs, es, y: (es[0] + es[1] + 2 * U * y.abs()).expand(y.shape)
            case O.Relu():
                # a unit with x_hat + e <= 0 is off for the exact input too: both outputs are 0
                return lambda xs, es, y: torch.where(xs[0] + es[0] <= 0.0, 0.0, es[0])
            case O.Clip(min=lo, max=hi):
                # both below min or both above max: both outputs equal the bound exactly
                lo_ = -math.inf if lo is None else lo
                hi_ = math.inf if hi is None else hi

                def clip(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    x, e = xs[0], es[0]
                    saturated = (x + e <= lo_) | (x - e >= hi_)
                    return torch.where(saturated, 0.0, e)

                return clip
            case O.Quantize(smooth=True, qmin=qmin, qmax=qmax, integer=integer) as q:
                # the clip to [s (qmin - zp), s (qmax - zp)] (its ends rounded once in float64, off by
                # <= u |end|): 1-Lipschitz, exact where both sides saturate; the integers' / s + zp
                # divide the error by s and round twice
                steps, zeros, qshape = q.steps(len(in_shapes[0]))
                st = torch.tensor(steps, dtype=torch.float64).reshape(qshape)
                zt = torch.tensor(zeros, dtype=torch.float64).reshape(qshape)
                q_lo, q_hi = st * (qmin - zt), st * (qmax - zt)
                ends = torch.maximum(q_lo.abs(), q_hi.abs()) * U

                def quantize_clip(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    x, e = xs[0], es[0]
                    saturated = (x + e <= q_lo) | (x - e >= q_hi)
                    err = torch.where(saturated, ends, e + ends)
                    if integer:
                        return err / st + 4 * U * y.abs() + _TINY
                    return (err + _TINY).expand(y.shape)

                return quantize_clip
            case O.LeakyRelu(alpha=alpha):
                c = max(1.0, abs(alpha))
                return lambda xs, es, y: (
                    torch.where(xs[0] - es[0] >= 0.0, es[0], c * es[0]) + 2 * U * y.abs()
                )
            case O.PRelu(slope=slope):
                c = float(np.max(np.abs(np.asarray(slope, dtype=np.float64)), initial=1.0))
                return lambda xs, es, y: c * es[0] + 2 * U * y.abs()
            case O.Sigmoid():
                return bell(half=True)
            case O.Tanh():
                return bell(half=False)
            case O.Softplus():
                return smooth(1.0)
            case O.Elu(alpha=alpha):
                return smooth(max(1.0, abs(alpha)), max(1.0, abs(alpha)))
            case O.Gelu():
                return smooth(1.13)
            case O.Silu():
                return smooth(1.1)
            case O.Mish():
                return smooth(1.09)
            case O.HardSwish():
                return lambda xs, es, y: 1.5 * es[0] + 16 * U * (xs[0].abs() + y.abs() + 3.0)
            case O.HardSigmoid(alpha=alpha, beta=beta):
                return lambda xs, es, y: (
                    abs(alpha) * es[0] + 4 * U * (abs(alpha) * xs[0].abs() + abs(beta))
                )
            case O.Softmax(axis=axis, mask=mask) if mask is not None:
                # the dropped entries are exactly 0 in both (the exact input there is -inf whatever
                # the error of z); the kept ones are a softmax of the kept entries: the rule below
                # over them (their errors, their spread, their count)
                kept = torch.from_numpy(np.broadcast_to(np.asarray(mask, dtype=bool), tuple(in_shapes[0])).copy())
                size = int(kept.sum(dim=axis).max())

                def masked_softmax(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    spread = 0.5 * es[0].masked_fill(~kept, 0.0).amax(dim=axis, keepdim=True)
                    z = xs[0]
                    width = (z.masked_fill(~kept, -math.inf).amax(dim=axis, keepdim=True)
                             - z.masked_fill(~kept, math.inf).amin(dim=axis, keepdim=True))
                    rel = (size + 2) * U + 2 * (64 * U + 2 * U * width)
                    return torch.where(kept, spread + rel * y.abs() + _TINY, 0.0)

                return masked_softmax
            case O.Softmax(axis=axis):
                size = in_shapes[0][axis]

                def softmax(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    # s_i = exp(z_i - M) / S: the rounded argument z_i - M perturbs exp by a
                    # relative u |z_i - M| <= u (max z - min z), exp itself by 64 u; the sum S
                    # adds (size + 1) u and the division u; both exps (s_i's and S's) count
                    spread = 0.5 * es[0].amax(dim=axis, keepdim=True)
                    z = xs[0]
                    width = z.amax(dim=axis, keepdim=True) - z.amin(dim=axis, keepdim=True)
                    rel = (size + 2) * U + 2 * (64 * U + 2 * U * width)
                    return (spread + rel * y.abs() + _TINY).expand(y.shape)

                return softmax
            case O.MaxPool() | O.GlobalMaxPool():
                same = self._single(node, op, in_shapes)
                return lambda xs, es, y: same(es[0])
            case O.AvgPool(kernel=kernel):
                same = self._single(node, op, in_shapes)
                c = 2 * (int(np.prod(kernel)) + 2) * U
                return lambda xs, es, y: same(es[0]) + c * same(xs[0].abs())
            case O.GlobalAvgPool():
                count = int(np.prod(in_shapes[0][2:]))
                c = 2 * (count + 2) * U
                dims = tuple(range(2, len(in_shapes[0])))
                return lambda xs, es, y: (
                    es[0].mean(dim=dims, keepdim=True)
                    + c * xs[0].abs().mean(dim=dims, keepdim=True)
                )
            case O.ReduceSum() | O.ReduceMean():
                # |fl(sum) - sum| <= gamma_{n-1} sum |x| (any order); the mean's division one u more:
                # the same reduction of e plus 2 (n + 2) u times the reduction of |x|
                same = self._single(node, op, in_shapes)
                c = 2 * (math.prod(in_shapes[0][a] for a in op.axes) + 2) * U
                return lambda xs, es, y: same(es[0]) + c * same(xs[0].abs())
            case O.ReduceL1() | O.ReduceSumSquare() | O.ReduceL2() | O.ReduceLogSumExp():
                return self._reduction_rule(node, op, in_shapes)
            case O.ReduceMax() | O.ReduceMin():
                # |max a - max b| <= max |a - b| per group, and max is exact
                as_max = self._single(node, O.ReduceMax(axes=op.axes, keepdims=op.keepdims), in_shapes)
                return lambda xs, es, y: as_max(es[0])
            case O.Max() | O.Min():
                # |max(a) - max(b)| <= max_i |a_i - b_i| entry by entry; max is exact, and so is the
                # constant (the exact model holds the same number)

                def extremum(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    out = torch.zeros_like(y)
                    for e in es:
                        out = torch.maximum(out, e)
                    return out

                return extremum
            case O.Pad():
                zero_pad = self._single(node, dataclasses.replace(op, value=0.0), in_shapes)
                return lambda xs, es, y: zero_pad(es[0])
            case O.Resize():
                return self._resize_rule(node, op, in_shapes)
            case O.Reshape() | O.Transpose() | O.Concat() | O.Slice() | O.Gather() | O.Tile():
                # exact data movement: each output entry is one input entry, its error moves with it
                same = self._single(node, op, in_shapes)
                return lambda xs, es, y: same(*es)
            case O.Abs():
                # exact in floating point, and ||a| - |b|| <= |a - b|
                return lambda xs, es, y: es[0]
            case O.Where() if not op.switch:
                # a selection, exact: each output entry is an entry of a branch (a constant branch has
                # no error), chosen by the computed condition, which is the exact one while the tested
                # values are finite with finite errors (else the error is unbounded: inf)
                zero = np.zeros(())
                select = self._single(node, dataclasses.replace(
                    op, when_true=None if op.when_true is None else zero,
                    when_false=None if op.when_false is None else zero), in_shapes)
                k = op.tested

                def where(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
                    if any(not bool(torch.isfinite(t).all()) for t in (*xs[:k], *es[:k])):
                        return torch.full_like(y, math.inf)
                    moved = select(*xs[:k], *es[k:]).abs()
                    return moved.expand(y.shape)

                return where
            case O.Erf():
                return smooth(1.1284)
            case O.Sin() | O.Cos():  # |sin'|, |cos'| <= 1; libm within an ulp, 64 u |x| for the reduction
                return smooth(1.0)
            case O.Mul():
                # x y - x_hat y_hat = x_hat dy + y_hat dx + dx dy; the product rounds by u |y_hat|
                return lambda xs, es, y: (
                    xs[0].abs() * es[1] + xs[1].abs() * es[0] + es[0] * es[1] + 2 * U * y.abs()
                ).expand(y.shape)
            case O.LayerNorm(axis=axis, epsilon=eps, scale=sc, centered=centered):
                dims = tuple(range(axis, len(in_shapes[0])))
                n = int(np.prod(in_shapes[0][axis:]))
                scale_abs = np.ones(1) if sc is None else np.abs(np.asarray(sc, dtype=np.float64))
                gmax = float(scale_abs.max(initial=0.0))
                gam_t = torch.as_tensor(scale_abs)
                lip = gmax / math.sqrt(eps) * 1.01 if eps > 0 else math.inf
                root = math.sqrt(eps) if eps > 0 else 0.0

                def layer_norm(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    # per group with A = max|x^|: mean off by <= g_{n+1} A, d = x - m by
                    # dd <= (n + 4) u A; var (mean of d^2) by dv <= g_{n+2} D^2 + dd (2D + dd), so the
                    # exact variance of x^ is >= v_lo = max(v - dv, 0) and s = sqrt(var + eps) >=
                    # s_lo = sqrt(v_lo + eps) >= sqrt(eps).
                    # Input errors: ||J(z)|| <= max|scale| / sqrt(var(z) + eps) (bound_layer_norm), and
                    # std(z) = ||P z|| / sqrt(n) moves by at most ||z - x^|| / sqrt(n) (P the centering,
                    # a projection), so on the segment from x^ to the exact x (||x - x^|| <= E per group)
                    # var(z) >= (sqrt(v_lo) - E / sqrt(n))_+^2: ||dy_group|| <= max|scale| E /
                    # sqrt(that + eps) (mean value inequality), never above Lip E.
                    # Own rounding: s by ds <= (dv + u (v + eps)) / s_lo + u s; and
                    # |d/s - d^/s^| <= dd / s_lo + |d^| ds / (s_lo s^), plus 3 u |d^/s^|
                    # (division, scale) per entry and 2 u |y^| (bias); all times 1.01
                    if not root > 0.0:
                        return torch.full_like(y, math.inf)
                    x = xs[0]
                    size = es[0].pow(2).sum(dim=dims, keepdim=True).sqrt()
                    a = x.abs().amax(dim=dims, keepdim=True)
                    g = (n + 4) * U
                    dd = g * a * 2.0
                    d = x - x.mean(dim=dims, keepdim=True) if centered else x  # RMSNorm: d = x, exact
                    big_d = d.abs().amax(dim=dims, keepdim=True)
                    v = (d * d).mean(dim=dims, keepdim=True)
                    dv = g * big_d * big_d + dd * (2 * big_d + dd)
                    v_lo = torch.clamp(v - dv, min=0.0) * (1 - 1e-12)
                    s_lo = torch.clamp(torch.sqrt(v_lo + eps) * (1 - 1e-12), min=root)
                    std_lo = torch.clamp(torch.sqrt(v_lo) * (1 - 1e-12) - size / math.sqrt(n) * (1 + 1e-12), min=0.0)
                    gain = torch.clamp(gmax / torch.sqrt(std_lo * std_lo + eps) * 1.01, max=lip)
                    prop = gain * size
                    s_hat = torch.sqrt(v + eps)
                    ds = (dv + U * (v + eps)) / s_lo + U * s_hat
                    own = gam_t * (dd / s_lo + big_d * ds / (s_lo * s_hat) + 3 * U * d.abs() / s_hat)
                    return (prop + 1.01 * own + 2 * U * y.abs() + _TINY).expand(y.shape)

                return layer_norm
            case O.MatMul():
                inner = in_shapes[0][-1]
                gamma = (inner + 2) * U / (1 - (inner + 2) * U)

                def matmul(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    # AB - A^B^ = A^ dB + dA B^ + dA dB; the products' rounding gamma_{K+2} |A^| |B^|
                    a, b = xs[0].abs(), xs[1].abs()
                    return (torch.matmul(a, es[1]) + torch.matmul(es[0], b) + torch.matmul(es[0], es[1])
                            + gamma * torch.matmul(a, b) + _TINY)

                return matmul
            case O.Div() | O.Reciprocal():

                def quotient(
                    xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
                ) -> torch.Tensor:
                    # x/d - x_hat/d_hat = (dx d_hat - x_hat dd) / (d d_hat), |d| >= |d_hat| - e_d > 0
                    num, e_num = (xs[0], es[0]) if len(xs) == 2 else (torch.ones_like(xs[0]), torch.zeros_like(xs[0]))
                    d, e_d = xs[-1], es[-1]
                    gap = d.abs() - e_d
                    bound = (e_num * d.abs() + num.abs() * e_d) / (gap * d.abs()) + 2 * U * y.abs()
                    return torch.where(gap > 0, bound, math.inf).expand(y.shape)

                return quotient
            case O.Exp():
                # exp(x_hat + t) - exp(x_hat) = exp(x_hat) (e^t - 1), exp(x_hat) <= |y_hat| (1 + 64 u)
                return lambda xs, es, y: (
                    y.abs() * (1 + 128 * U) * torch.expm1(es[0]) + 64 * U * y.abs() + _TINY
                )
            case O.Log():

                def log(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
                    # |log x - log x_hat| <= |x - x_hat| / min(x, x_hat), min >= x_hat - e > 0
                    low = xs[0] - es[0]
                    bound = es[0] / low + 64 * U * y.abs() + _TINY
                    return torch.where(low > 0, bound, math.inf)

                return log
            case O.Sqrt():

                def sqrt(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
                    # |sqrt a - sqrt b| = |a - b| / (sqrt a + sqrt b) <= sqrt |a - b| (a, b >= 0)
                    x, e = xs[0], es[0]
                    low = torch.clamp(x - e, min=0.0)
                    near = torch.where(x > 0, e / (low.sqrt() + x.clamp(min=0.0).sqrt()), math.inf)
                    return torch.minimum(near, e.sqrt()) + 2 * U * y.abs() + _TINY

                return sqrt
            case O.Pow(exponent=p):

                def power(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
                    # mean value theorem: |x^p - x_hat^p| <= p max(|x|, |x_hat|)^(p-1) |x - x_hat|, p >= 1
                    x, e = xs[0], es[0]
                    bound = abs(p) * (x.abs() + e) ** (p - 1) * e + 64 * U * y.abs() + _TINY
                    if p < 1:
                        return torch.full_like(y, math.inf)
                    if float(p).is_integer():
                        return bound
                    return torch.where(x - e >= 0, bound, math.inf)

                return power

        def unknown(
            xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor
        ) -> torch.Tensor:
            return torch.full_like(y, math.inf)

        return unknown

    def _resize_rule(self, node: Node, op: O.Resize, in_shapes: list[tuple[int, ...]]) -> Callable[..., torch.Tensor]:
        """Resize: one matrix product per resized axis (``ir.executor``), y_t = M_t y_{t-1} + F_t (F_t
        the extrapolation values of tf_crop_and_resize, else 0). With d_t the error of y_t,
        d_t = M_t d_{t-1} + r_t, |r_t| <= gamma_n |M_t| |y_hat_{t-1}| + 2 u |y_hat_t| (the product,
        the addition of F_t and F_t's own rounding; n the longest resized axis), so over the T
        axes |d_T| <= A |e| + T (gamma_{n+2} + 2u) (1 + gamma_{n+2})^T (A |x_hat| + |f(0)|), A the
        product of the |M_t| (computed by the same products on |x_hat|, its rounding absorbed by
        the factor T + 1 and 1.01). |f(0)| is the propagated |F| (0 unless tf_crop_and_resize)."""
        import torch

        from stabaudit.ir.resize import axis_matrix

        mats = []
        crop = False
        for i, axis in enumerate(op.axes):
            m, outside = axis_matrix(op, i)
            crop = crop or outside is not None
            mats.append((axis, torch.from_numpy(np.abs(np.asarray(m, dtype=np.float64)))))

        def absf(t: torch.Tensor) -> torch.Tensor:
            for axis, m in mats:
                t = torch.movedim(torch.tensordot(m, t, dims=([1], [axis])), 0, axis)
            return t

        same = self._single(node, op, in_shapes)
        steps = len(op.axes)
        n = max((int(k) for k in op.in_sizes), default=1)
        c = (steps + 1) * (_gamma(n + 2) + 2 * U) * 1.01
        fill: list[torch.Tensor] = []  # |f(0)|, computed on first use (tf_crop_and_resize only)

        def resize(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
            mag = absf(xs[0].abs())
            if crop:
                if not fill:
                    fill.append(same(torch.zeros_like(xs[0])).abs())
                mag = mag + fill[0]
            return absf(es[0]) + c * mag + _TINY

        return resize

    def _reduction_rule(self, node: Node, op: O.Reduce, in_shapes: list[tuple[int, ...]]) -> Callable[..., torch.Tensor]:
        """The error rules of the nonlinear sum reductions, per group of n entries (e the input
        error, x_hat the computed input, y_hat the computed output):

        - ReduceL1, sum |x|: ||x| - |x_hat|| <= e, so sum e, plus gamma_n sum |x_hat| <= 2 gamma_{n+2} |y_hat|;
        - ReduceSumSquare: |x^2 - x_hat^2| <= 2 |x_hat| e + e^2, summed, plus 2 gamma_{n+2} |y_hat|;
        - ReduceL2: | ||x|| - ||x_hat|| | <= ||e|| (the triangle inequality), plus the norm's own
          relative rounding (the sum of squares gamma_n, the square root u): 2 gamma_{n+4} |y_hat|;
        - ReduceLogSumExp (computed as m + log sum exp(x - m), m the group's maximum): 1-Lipschitz in
          the max norm, so max e; own rounding: exp(x - m) within rho = 64u + 1.01 u w (w the
          group's max - min: the rounded argument), the sum within gamma_n + rho relatively, the
          log then off by 1.01 (gamma_n + rho) + 65 u log(n + 1), the final sum by u |y_hat|.
        The reductions of e and of |x_hat| e are computed sums of nonnegative terms, as the other
        rules' (their rounding is absorbed by ``_size``'s margin)."""
        import torch

        n = math.prod(in_shapes[0][a] for a in op.axes) if op.axes else 1
        dims = tuple(op.axes)
        keep = op.keepdims
        c = 2 * _gamma(n + 4)

        def total(t: torch.Tensor) -> torch.Tensor:
            return t.sum(dim=dims, keepdim=keep) if dims else t

        match op:
            case O.ReduceL1():
                return lambda xs, es, y: total(es[0]) + c * y.abs() + _TINY
            case O.ReduceSumSquare():
                return lambda xs, es, y: total(2.0 * xs[0].abs() * es[0] + es[0] * es[0]) + c * y.abs() + _TINY
            case O.ReduceL2():
                return lambda xs, es, y: (
                    (torch.linalg.vector_norm(es[0], 2, dim=dims, keepdim=keep) if dims else es[0])
                    * (1 + c) + c * y.abs() + _TINY
                )

        def log_sum_exp(xs: list[torch.Tensor], es: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
            x, e = xs[0], es[0]
            if not dims:
                return e + 2 * U * y.abs() + _TINY
            width = x.amax(dim=dims, keepdim=keep) - x.amin(dim=dims, keepdim=keep)
            rho = 64 * U + 1.01 * U * width
            own = 1.01 * (_gamma(n + 2) + rho) + 65 * U * math.log(n + 1) + 2 * U * y.abs()
            return e.amax(dim=dims, keepdim=keep) + own + _TINY

        return log_sum_exp

    def rule(self, node: Node) -> Callable[..., torch.Tensor]:
        """The error rule of ``node`` (by its output): rule(xs, es, y) bounds |y - f(x)| entry-wise
        for computed inputs xs within es of the exact ones and y the kernel's output on xs."""
        return next(r for n, r in self._rules if n.output == node.output)

    def evaluate(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        """f_hat(x) (flat, float64) and an upper bound of ||f_hat(x) - f(x)||_2 (inf if unknown)."""
        import torch

        specs = self.graph.inputs
        sizes = [int(np.prod(s.shape)) for s in specs]
        parts = torch.split(x, sizes)
        inputs = {s.name: p.reshape(s.shape) for p, s in zip(parts, specs, strict=True)}
        telescoped = 0.0 if self.sensitivities else math.inf
        with torch.no_grad():
            env = self.executor.run(inputs, keep=True)
            err: dict[str, torch.Tensor] = {name: torch.zeros_like(t) for name, t in inputs.items()}
            for node, rule in self._rules:
                xs = [env[name] for name in node.inputs]
                es = [err[name] for name in node.inputs]
                out = env[node.output]
                own = math.isfinite(telescoped)
                both = self._both.get(node.output)
                if both is not None:
                    err[node.output], local = both(xs, es, out, own)
                else:
                    err[node.output] = rule(xs, es, out)
                    # the node's own rounding: the rule with exact inputs
                    local = rule(xs, [torch.zeros_like(t) for t in xs], out) if own else None
                if local is not None:
                    telescoped = _up(
                        telescoped
                        + _mul_up(self.sensitivities.get(node.output, 0.0), self._size(local))
                    )
            y = torch.cat([env[name].reshape(-1) for name in self.graph.outputs])
            e = torch.cat([err[name].reshape(-1) for name in self.graph.outputs])
        y_np = y.numpy().astype(np.float64)
        if not np.all(np.isfinite(y_np)):
            return y_np, math.inf
        propagated = self._size(e)
        return y_np, min(propagated, telescoped)

    @staticmethod
    def _size(e: torch.Tensor) -> float:
        """An upper bound of ||e||_2 for a float64 error tensor (inf if any entry is not finite)."""
        a = e.detach().numpy().astype(np.float64)
        if not np.all(np.isfinite(a)):
            return math.inf
        return _up(_norm_up(a) * (1.0 + 1e-6) + _TINY * a.size)


def confirm_quotient(model: Evaluation, x: torch.Tensor, y: torch.Tensor,
                     at_x: tuple[np.ndarray, float] | None = None) -> float:
    """A sound lower bound of ||f(y) - f(x)|| / ||y - x|| (0 when nothing can be certified).

    ||f(y) - f(x)|| >= ||f_hat(y) - f_hat(x)|| - E(x) - E(y) (triangle inequality, E the forward
    error bounds of ``ForwardErrorModel``). The float64 difference of two outputs carries a relative
    error u per entry and ``_norm`` at most 3u, so the computed norm times (1 - 16u) is below
    the exact one; the computed ||y - x|| times (1 + 16u) plus 1e-300 per entry (underflowed
    squares) is above the exact one. Every following operation is rounded outward.
    """
    fy, ey = model.evaluate(y)
    fx, ex = model.evaluate(x) if at_x is None else at_x  # at_x: model.evaluate(x) computed before
    if not (math.isfinite(ey) and math.isfinite(ex)):
        return 0.0
    num_hat = _norm(fy - fx)
    if not math.isfinite(num_hat):
        return 0.0
    num = _down(_down(_down(num_hat * (1.0 - 16 * U)) - ex) - ey)
    xd = x.numpy().astype(np.float64)
    yd = y.numpy().astype(np.float64)
    den = _up(_up(_norm(yd - xd) * (1.0 + 16 * U)) + 1e-300 * xd.size)
    if num <= 0.0 or not math.isfinite(den) or den <= 0.0:
        return 0.0
    return max(0.0, _down(num / den))


# ---- the search ---------------------------------------------------------------------------------
def forward_macs(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> float:
    """Multiply-accumulates of one forward pass (plus one per value element): the cost model. A
    large convolution or matrix product over several rows (``plan.LARGE_OP_MACS``) counts its MACs
    divided by ``plan.LARGE_OP_SPEEDUP`` (it runs that much faster per MAC than the rate the model
    counts); a convolution adds ``plan.CONV_POSITION_MACS`` per output position (few channels run
    far slower per MAC)."""

    def large(macs: float) -> float:
        return macs / plan.LARGE_OP_SPEEDUP if macs >= plan.LARGE_OP_MACS else macs

    total = 0.0
    for node in graph.nodes:
        out = float(np.prod(shapes[node.output]))
        match node.op:
            case O.Linear(weight=w):
                rows = out / max(int(w.shape[0]), 1)
                total += large(out * w.shape[1]) if rows > 1 else out * w.shape[1]
            case O.Conv(weight=w):
                positions = out / max(int(w.shape[0]), 1)
                total += large(out * float(np.prod(w.shape[1:]))) + positions * plan.CONV_POSITION_MACS
            case O.ConvTranspose(weight=w, groups=g):
                total += (large(float(np.prod(shapes[node.inputs[0]])) * float(np.prod(w.shape[1:])))
                          + out / max(int(w.shape[1]) * g, 1) * plan.CONV_POSITION_MACS)
        total += out
    return max(total, 1.0)


class _Search:
    """The batched function, its Jacobian pairs and the bookkeeping of one search."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], seed: int):
        import torch

        from stabaudit.ir.executor import Executor

        self.f = Executor(graph, dtype=torch.float64).flat()
        self.n = sum(int(np.prod(s.shape)) for s in graph.inputs)
        self.m = sum(int(np.prod(shapes[name])) for name in graph.outputs)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.evaluations = 0
        self.smooth = any(node.op.type not in _PIECEWISE_LINEAR for node in graph.nodes)
        k = min(self.n, self.m)
        self.full = k <= _FULL_JACOBIAN_MAX
        self.power_iterations = POWER_ITERATIONS
        self.sweeps = POWER_SWEEPS  # warm-started sweeps at the best points before confirmation
        self.steps_h: tuple[float, ...] = _STEPS_H  # the step sizes of the pairs confirmed at each chosen point
        self.fwd = forward_macs(graph, shapes)
        self.call = plan.call_macs(len(graph.nodes))  # the fixed cost of a batched call
        values = sum(float(np.prod(s)) for s in shapes.values())
        # keep one batched call's memory modest: the per-point work tensors times the batch
        per_point = values * 8.0 * (k + 2 if self.full else 4)
        self.chunk = int(max(1, min(4096, 256e6 // max(per_point, 1.0))))
        # the batched forms are built (and probed) on first use: a search that is not run, as a
        # residual branch's share that buys no point, pays nothing for them
        self._batched: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._pairs_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def jac_passes(self) -> int:
        """The cost of one Jacobian pair, in forward passes: k products (+ the primal), or 2 per
        power iteration; a backward or forward-mode pass counts as 2 forward passes."""
        k = min(self.n, self.m)
        return (2 * k + 1) if self.full else (4 * self.power_iterations + 1)

    def normal(self, *shape: int) -> torch.Tensor:
        import torch

        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    @property
    def batched_f(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """f on a batch of points [B, n] (vmap, or a loop where an op has no batching rule)."""
        if self._batched is None:
            self._batched = self._batched_f()
        return self._batched

    def _pairs_call(self, X: torch.Tensor, V0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_make_pairs``' implementations tried in order on the first call's points (the vmapped
        one, unless an operator lacks a batching rule); the first that runs answers every call."""
        if self._pairs_fn is not None:
            return self._pairs_fn(X, V0)
        for impl in self._make_pairs():
            try:
                out = impl(X, V0)
            except StabauditError:  # a timeout or resource limit: never a fallback
                raise
            except Exception as exc:  # fall back to the next (slower) implementation
                raise_allocation_failure(exc)
                continue
            self._pairs_fn = impl
            return out
        raise InternalError("lower bound: torch.func cannot differentiate this graph")

    def _batched_f(self) -> Callable[[torch.Tensor], torch.Tensor]:
        import torch

        f = self.f
        vf = torch.func.vmap(f)
        try:
            vf(torch.zeros(2, self.n, dtype=torch.float64))
            return vf
        except StabauditError:  # a timeout or resource limit: never a fallback
            raise
        except Exception as exc:  # some op without a batching rule: loop instead
            raise_allocation_failure(exc)
            return lambda xs: torch.stack([f(x) for x in xs])

    def _make_pairs(
        self,
    ) -> list[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """(X, V0) -> (sigma [B], v [B, n]): top singular value and right vector of J at each x;
        the implementations in the order they are tried (batched first)."""
        import torch
        from torch.func import jacfwd, jacrev, jvp, vjp, vmap

        f = self.f
        if self.full:
            jac = jacrev(f) if self.m <= self.n else jacfwd(f)

            def full_one(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # top eigenvector of the smaller Gram matrix (much faster than an SVD of J);
                # sigma = ||J v|| recomputed from the unit vector v. A Jacobian that overflowed
                # (inf/NaN entries) only proposes candidates: zero them so that eigh cannot fail;
                # every reported value is confirmed by confirm_quotient, which rejects non-finite outputs
                J = torch.nan_to_num(J, nan=0.0, posinf=0.0, neginf=0.0)
                # the Gram matrix squares the entries: from J / max|J_ij| (the same singular
                # vectors), so that entries above 1e154 cannot overflow it to inf (eigh fails on inf)
                # and subnormal ones do not vanish
                peak = J.abs().amax(dim=(1, 2), keepdim=True)
                Js = J / torch.where(peak > 0, peak, torch.ones_like(peak))
                if J.shape[1] <= J.shape[2]:
                    _, vecs = torch.linalg.eigh(Js @ Js.transpose(1, 2))
                    v = (Js.transpose(1, 2) @ vecs[:, :, -1:])[:, :, 0]
                else:
                    _, vecs = torch.linalg.eigh(Js.transpose(1, 2) @ Js)
                    v = vecs[:, :, -1]
                v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
                return (J @ v[:, :, None])[:, :, 0].norm(dim=1), v

            def full_vmapped(
                X: torch.Tensor, V0: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                return full_one(vmap(jac)(X))

            def full_loop(X: torch.Tensor, V0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return full_one(torch.stack([jac(x) for x in X]))

            candidates: list[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = [
                full_vmapped, full_loop]
        else:
            def step(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                jv = jvp(f, (x,), (v,))[1]
                pull = vjp(f, x)[1]
                (w,) = pull(jv)
                return jv.norm(), w

            def power(
                X: torch.Tensor, V0: torch.Tensor, stepper: Any
            ) -> tuple[torch.Tensor, torch.Tensor]:
                v = V0 / V0.norm(dim=1, keepdim=True).clamp_min(1e-300)
                sigma = torch.zeros(X.shape[0], dtype=X.dtype)
                for _ in range(self.power_iterations):
                    sigma, w = stepper(X, v)
                    v = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
                sigma, _ = stepper(X, v)  # ||J v|| of the final (unit) v
                return sigma, v

            def power_vmapped(
                X: torch.Tensor, V0: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                return power(X, V0, vmap(step))

            def power_loop(X: torch.Tensor, V0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                def stepper(
                    Xs: torch.Tensor, Vs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
                    out = [step(x, v) for x, v in zip(Xs, Vs, strict=True)]
                    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

                return power(X, V0, stepper)

            candidates = [power_vmapped, power_loop]
        return candidates

    def pairs(
        self, X: torch.Tensor, V0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if V0 is None:
            V0 = self.normal(*X.shape)
        sig: list[torch.Tensor] = []
        vec: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(0, X.shape[0], self.chunk):
                s, v = self._pairs_call(X[i : i + self.chunk], V0[i : i + self.chunk])
                sig.append(s)
                vec.append(v)
        self.evaluations += X.shape[0]
        sigma = torch.cat(sig)
        return torch.nan_to_num(sigma, nan=0.0, posinf=0.0), torch.cat(vec)

    def jv_gradient(self, X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """grad_x ||J(x) v|| (v fixed): the ascent direction of the local constant (smooth nets)."""
        import torch
        from torch.func import grad, jvp, vmap

        f = self.f

        def objective(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            jv = jvp(f, (x,), (v,))[1]
            return jv.norm()

        try:
            g = vmap(grad(objective))(X, V)
        except StabauditError:  # a timeout or resource limit: never a fallback
            raise
        except Exception as exc:  # no batching or forward-mode rule for some op: stop proposing it
            raise_allocation_failure(exc)
            self.smooth = False
            return torch.zeros_like(X)
        self.evaluations += X.shape[0]
        return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


_CONFIRM_PASSES = 4.0  # one float64 evaluation with its forward error bound, in forward passes
POWER_ITERATIONS = 12  # power-iteration steps per Jacobian pair (large networks: down to 3)
MIN_POWER_ITERATIONS = 3
POWER_SWEEPS = 4  # warm-started power-iteration sweeps at the best points before confirmation


def _smallest_cost(search: _Search, starts: int, rounds: int) -> float:
    """Multiply-accumulates of the smallest plan with ``starts`` starts and ``rounds`` rounds:
    ``starts`` screened points, one Adam step per round, one Jacobian round of the pair ascent, no
    proposals, then the confirmation (power sweeps and the difference quotients)."""
    jac_point = search.fwd * search.jac_passes
    call = search.call
    screen = starts * jac_point + call
    ascent = rounds * (starts * 6.0 * search.fwd + call)
    if rounds:
        ascent += 2.0 * starts * jac_point + call
    sweeps = 0.0 if search.full else search.sweeps * min(starts, 8) * jac_point
    # evaluations: each chosen point once and its 2 len(steps_h) partners, the pair ascent's pairs
    evaluations = (1 + 2 * len(search.steps_h)) * min(starts, 8) + (2 * min(starts, 4) if rounds else 0)
    return screen + ascent + sweeps + evaluations * _CONFIRM_PASSES * search.fwd


def _shape(search: _Search, starts: int, steps: int, budget_s: float,
           slack_s: float = plan.SMALLEST_PLAN_SLACK_S) -> tuple[int, int]:
    """(starts, rounds): the requested ones, reduced until the smallest plan fits
    ``plan.smallest_plan_units`` (large networks only). Rounds halve down to 4, then starts down to
    4, then rounds down to 1, starts down to 1, and the ascent is dropped; then fewer power sweeps,
    fewer step sizes confirmed (``_STEPS_H_FEW``), fewer power iterations per pair. The order depends
    on the sizes only (deterministic)."""
    units = plan.smallest_plan_units(budget_s, slack_s)
    while _smallest_cost(search, starts, steps) > units:
        if steps > 4:
            steps = max(4, steps // 2)
        elif starts > 4:
            starts = max(4, starts // 2)
        elif steps > 1:
            steps //= 2
        elif starts > 1:
            starts //= 2
        elif steps > 0:
            steps = 0
        elif search.sweeps > 0:  # power iteration only: fewer sweeps, then fewer steps per pair
            search.sweeps -= 1
        elif len(search.steps_h) > len(_STEPS_H_FEW[-1]):
            search.steps_h = next(h for h in _STEPS_H_FEW if len(h) < len(search.steps_h))
        elif search.power_iterations > MIN_POWER_ITERATIONS:
            search.power_iterations = max(MIN_POWER_ITERATIONS, search.power_iterations // 2)
        else:
            break
    return starts, steps


def _plan(search: _Search, starts: int, steps: int, budget_s: float) -> tuple[int, int, int, int]:
    """(pool size, Adam steps per round, rounds between Jacobians of the pair ascent, proposals
    per start and round of the local search), from the static cost model only (deterministic).

    Shares of the budget's work: screening 25%, pair ascent 20%, Jacobians along the pairs 15%,
    local search 15%; the rest is left for confirmation and the cost model's error.
    """
    units = plan.lower_units(budget_s)
    jac_point = search.fwd * search.jac_passes
    call = search.call
    rounds = max(steps, 1)
    pool = int(0.25 * units / (jac_point + call / 256.0))
    pool = max(starts, min(pool, 1024 * starts))
    # an Adam step: forward and backward at 2 points per start (about 6 forward passes)
    adam = int(0.20 * units / (rounds * (starts * 6.0 * search.fwd + call)))
    jac_every = 1
    while (
        jac_every < rounds
        and (rounds / jac_every) * (2.0 * starts * jac_point + call) > 0.15 * units
    ):
        jac_every *= 2
    proposals = int(0.15 * units / (rounds * (starts * jac_point + call)))
    # memory: at most 2^25 float64 (256 MiB) of candidate points at once
    pool = max(starts, min(pool, 2**25 // search.n))
    proposals = min(proposals, 2**25 // (starts * search.n))
    return pool, max(1, min(adam, 8)), jac_every, max(0, min(proposals, 128))


@dataclass
class _Population:
    """The best point of each start: P [k, n], its top right singular vector PV and sigma PS."""

    P: torch.Tensor
    PV: torch.Tensor
    PS: torch.Tensor

    def offer(
        self, points: torch.Tensor, vectors: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """Replace the starts whose offered point (one per start) is better; returns the mask."""
        better = sigma > self.PS
        self.P[better] = points[better]
        self.PV[better] = vectors[better]
        self.PS[better] = sigma[better]
        return better


def _screen(
    search: _Search, pool: int, starts: int, domain_scale: float
) -> tuple[_Population, int]:
    """Seeded normal samples (2/3 at ``domain_scale``, 1/6 at 3x and 10x); the best ``starts``."""
    import torch

    weights = (4, 1, 1)
    counts = [pool * w // sum(weights) for w in weights]
    counts[0] += pool - sum(counts)
    scale_col = torch.cat(
        [
            torch.full((c, 1), s * domain_scale, dtype=torch.float64)
            for c, s in zip(counts, _SCALES, strict=True)
        ]
    )
    X = search.normal(pool, search.n) * scale_col
    chunk = max(starts, search.chunk)
    sig_parts, v_parts = [], []
    for i in range(0, pool, chunk):
        check_deadline()
        s, v = search.pairs(X[i : i + chunk])
        sig_parts.append(s)
        v_parts.append(v)
    sigma, V = torch.cat(sig_parts), torch.cat(v_parts)
    order = torch.argsort(sigma, descending=True, stable=True)[:starts]
    return _Population(P=X[order].clone(), PV=V[order].clone(), PS=sigma[order].clone()), X.shape[0]


class _PairAscent:
    """Adam on log ||f(x + d) - f(x)|| - log ||d|| over (x, d), in coordinates scaled per start."""

    def __init__(self, search: _Search, pop: _Population, scale: torch.Tensor, domain_scale: float):
        import torch

        self.search = search
        self.c = scale[:, None]
        self.origin = pop.P.clone()
        k = pop.P.shape[0]
        d0 = pop.PV * (0.05 * (pop.P.norm(dim=1, keepdim=True) + domain_scale))
        self.z = torch.zeros_like(pop.P).requires_grad_(True)
        self.w = (d0 / self.c).clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.z, self.w], lr=0.01)
        self.best_q = torch.zeros(k, dtype=torch.float64)
        self.best_x = pop.P.clone()
        self.best_y = pop.P.clone()

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.origin + self.c * self.z, self.c * self.w

    def step(self) -> None:
        import torch

        self.opt.zero_grad()
        x, d = self.points()
        q = (self.search.batched_f(x + d) - self.search.batched_f(x)).norm(dim=1) / d.norm(
            dim=1
        ).clamp_min(1e-300)
        self.search.evaluations += 2 * x.shape[0]
        with torch.no_grad():
            better = q > self.best_q
            self.best_q = torch.where(better, q.detach(), self.best_q)
            self.best_x[better] = x.detach()[better]
            self.best_y[better] = (x + d).detach()[better]
        (-torch.log(q.clamp_min(1e-300))).sum().backward()
        self.opt.step()

    def jacobians(self, pop: _Population) -> None:
        """Offer the better end of each pair to the population."""
        import torch

        with torch.no_grad():
            x, d = self.points()
            k = x.shape[0]
            pts = torch.cat([x, x + d])
            s, v = self.search.pairs(pts, torch.cat([pop.PV, pop.PV]))
            which = torch.stack([s[:k], s[k:]]).argmax(dim=0)
            idx = which * k + torch.arange(k)
            pop.offer(pts[idx], v[idx], s[idx])


def _local_search(
    search: _Search,
    pop: _Population,
    radius: torch.Tensor,
    scale: torch.Tensor,
    proposals: int,
    select: bool,
) -> torch.Tensor:
    """One round of a (1 + lambda) evolution strategy on sigma per start; returns the new radii.

    The radius doubles on success and shrinks by 3 on failure (restarting at 0.1 below 1e-7).
    On smooth networks the first proposal follows grad ||J(x) v||. With ``select``, the worse
    half of the starts restarts from copies of the better half.
    """
    import torch

    k, n = pop.P.shape
    noise = search.normal(k, proposals, n)
    if search.smooth:
        g = search.jv_gradient(pop.P, pop.PV)
        noise[:, 0, :] = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300) * math.sqrt(n)
    cand = pop.P[:, None, :] + (radius * scale)[:, None, None] * noise
    s, v = search.pairs(
        cand.reshape(-1, n), pop.PV.repeat_interleave(proposals, dim=0)
    )  # warm start
    best = s.reshape(k, proposals).argmax(dim=1)
    flat = torch.arange(k) * proposals + best
    better = pop.offer(cand.reshape(-1, n)[flat], v[flat], s[flat])
    radius = torch.where(better, radius * 2.0, radius / 3.0).clamp(max=1.0)
    radius = torch.where(radius < 1e-7, torch.full_like(radius, 0.1), radius)
    if select and k >= 4:
        rank = torch.argsort(pop.PS, descending=True, stable=True)
        half = k // 2
        top, bottom = rank[:half], rank[k - half :]
        pop.P[bottom], pop.PV[bottom], pop.PS[bottom] = pop.P[top], pop.PV[top], pop.PS[top]
        radius[bottom] = 0.1
    return radius


POWER_RTOL = 1e-3  # a last sweep that still raises sigma by more than this is "not converged"


def _refine_best(search: _Search, pop: _Population, notes: list[str] | None = None) -> None:
    """More warm-started power sweeps at the best points (power iteration converges from below).

    The power iteration runs a fixed number of sweeps (never until convergence); when its last
    sweep still moved sigma by more than POWER_RTOL, ``notes`` says so (the pairs are then only
    less tight: soundness rests on ``confirm_quotient``).
    """
    import torch

    k = pop.P.shape[0]
    if search.full or not k:
        return
    top = torch.argsort(pop.PS, descending=True, stable=True)[: min(k, 8)]
    change = 0.0
    for _ in range(search.sweeps):
        check_deadline()
        s, v = search.pairs(pop.P[top], pop.PV[top])
        old = pop.PS[top]
        better = s > old
        rel = (s - old).abs() / old.abs().clamp_min(1e-300)
        change = float(rel.max()) if rel.numel() else 0.0
        pop.PS[top[better]], pop.PV[top[better]] = s[better], v[better]
    if notes is not None and change > POWER_RTOL:
        notes.append(
            f"power iteration not converged at the best points after {search.sweeps} extra sweeps "
            f"(last relative change {change:.1e} > {POWER_RTOL:g})"
        )


def _confirmation_pairs(
    search: _Search,
    pop: _Population,
    pairs: _PairAscent,
    domain_scale: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs to confirm: x +- h v at the best distinct points, then the best pairs of the pair ascent."""
    import torch

    k = pop.P.shape[0]
    tries: list[tuple[torch.Tensor, torch.Tensor]] = []
    chosen: list[torch.Tensor] = []
    for i in torch.argsort(pop.PS, descending=True, stable=True).tolist():
        x = pop.P[i]
        if len(chosen) >= 8:
            break
        if any(torch.equal(x, c) for c in chosen):
            continue  # copies made by selection
        chosen.append(x)
        v = pop.PV[i] / pop.PV[i].norm().clamp_min(1e-300)
        base = float(x.norm()) + domain_scale
        for h in search.steps_h:
            for sign in (1.0, -1.0):
                tries.append((x, x + (sign * h * base) * v))
    for i in torch.argsort(pairs.best_q, descending=True, stable=True)[: min(k, 4)].tolist():
        if float(pairs.best_q[i]) > 0.0:
            tries.append((pairs.best_x[i], pairs.best_y[i]))
    return tries


def _confirm_precise(model: Evaluation, pop: _Population, pairs: _PairAscent, domain_scale: float,
                     evaluations: int) -> tuple[float, Witness | None, int, str | None]:
    """(the best confirmed quotient, its witness, the evaluations made, why it stopped early or None)
    with at most ``evaluations`` evaluations of the double-double ``model``: the best distinct points x, each with
    y = x + h (||x|| + domain_scale) v along its top singular vector, alternating with the pair
    ascent's best pairs. h is chosen once E(x) is known: PRECISE_MARGIN times the two points'
    error bounds over the local constant sigma, at least PRECISE_STEP (within one linear piece of
    most ReLU networks) and at most PRECISE_MAX_STEP. When the first point's bound is above
    UNCONFIRMABLE_RATIO (||f|| + 1) (``_swamped``, as for float64), it stops there."""
    import torch

    points: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for i in torch.argsort(pop.PS, descending=True, stable=True).tolist():
        x = pop.P[i]
        if not any(torch.equal(x, p[0]) for p in points):
            points.append((x, pop.PV[i] / pop.PV[i].norm().clamp_min(1e-300), float(pop.PS[i])))
    ascent = [(pairs.best_x[i], pairs.best_y[i])
              for i in torch.argsort(pairs.best_q, descending=True, stable=True).tolist()
              if float(pairs.best_q[i]) > 0.0]
    best, witness, used = 0.0, None, 0
    for k in range(max(len(points), len(ascent))):
        for item in (points[k:k + 1] + ascent[k:k + 1]):  # type: ignore[operator]
            if used + 2 > evaluations:
                return best, witness, used, None
            check_deadline()
            if len(item) == 3:
                x, v, sigma = item
                x = x.detach().clone()
                at_x = model.evaluate(x)
                ratio = _swamped(*at_x) if used == 0 else None
                if ratio is not None:
                    return 0.0, None, 1, _swamped_why(ratio, f"{getattr(model, 'arithmetic', 'double-double')} error bound") + _NO_QUOTIENT
                base = float(x.norm()) + domain_scale
                want = 2.0 * PRECISE_MARGIN * at_x[1] / max(sigma * base, 1e-300)
                h = min(max(want, PRECISE_STEP), PRECISE_MAX_STEP)
                y = x + (h * base) * v
                q = confirm_quotient(model, x, y.detach().clone(), at_x=at_x)
            else:
                x, y = (t.detach().clone() for t in item)
                q = confirm_quotient(model, x, y)
            used += 2
            if q > best:
                best, witness = q, Witness(x=x.tolist(), y=y.tolist(), quotient=q)
    return best, witness, used, None


def _fresh_pairs(search: _Search, domain_scale: float, count: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """x and x +- h v at ``count`` seeded normal points of the domain scale, v the top right
    singular vector of the Jacobian at x (the search's own estimate)."""
    with_jac = search.normal(count, search.n) * domain_scale
    _, vectors = search.pairs(with_jac)
    tries: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, v in zip(with_jac, vectors, strict=True):
        v = v / v.norm().clamp_min(1e-300)
        base = float(x.norm()) + domain_scale
        for h in _STEPS_H:
            tries.append((x, x + (h * base) * v))
    return tries


def error_sensitivities(
    graph: Graph, op_bounds: Mapping[str, OpBound] | None
) -> dict[str, float] | None:
    """S_v for the telescoped error bound, or None without operator bounds."""
    if op_bounds is None:
        return None
    from stabaudit.analyses.composition import output_sensitivities, rule_bounds

    bounds = dict(op_bounds)
    missing = [node for node in graph.nodes if node.output not in bounds]
    if missing:
        try:
            computed = rule_bounds(graph, only=frozenset(node.output for node in missing))
        except StabauditError:  # a timeout or resource limit: never a fallback
            raise
        except Exception as exc:  # no rule or a failing one: those nodes keep S_v = inf (bound unused)
            raise_allocation_failure(exc)
            computed = {}
        bounds.update(computed)
    return output_sensitivities(graph, bounds)


def _nonfinite_parameters(graph: Graph) -> int:
    """The number of NaN/Inf entries in the graph's parameter arrays."""
    count = 0
    for node in graph.nodes:
        for value in vars(node.op).values():
            if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
                count += int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    return count


# deep networks confirmed in double-double (``analyses.precise``): the share of the search's units
# its evaluations take, and the step of its pairs relative to ||x|| + the domain scale
PRECISE_SHARE = 0.5
PRECISE_STEP = 1e-4
PRECISE_MAX_STEP = 0.1
PRECISE_MARGIN = 20.0  # the output difference aimed at, in error bounds of the two points
PRECISE_LEAST = 2  # the evaluations of the smallest double-double plan: one pair
# the smallest double-double plan runs when it is planned at most at this many seconds, whatever the
# budget: the certified lower end of a deep network is worth a few seconds of any --budget
PRECISE_FLOOR_S = 4.0
UNCONFIRMABLE_RATIO = 10.0  # forward error bound over output norm beyond which no quotient is sought
# ... and beyond which one point decides (the next seeded point is not evaluated: each costs a
# float64 pass with its error bounds, 1.5 s on a ResNet-50 at 224x224)
DECISIVE_RATIO = 1e3 * UNCONFIRMABLE_RATIO
# float64 error bound over output norm beyond which the double-double evaluation is tried at the
# seeded point before the search runs: measured, double-double's bound is 1e10 to 1e13 times
# smaller (a ResNet-18 at 224x224 1e10, a ResNet-50 4e10, a MobileNetV2 1e13, whose bound stays
# 13 times its output), less where operators without an exact kernel run in float64 within it
PRECISE_DOUBT = 1e9


def _seeded_points(graph: Graph, seed: int, domain_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 and x0 / 10 (standard normal times the domain scale, from their own generator): where
    ``unconfirmable_at`` decides whether the search runs.

    A quotient is confirmed only when ||f_hat(y) - f_hat(x)|| exceeds E(x) + E(y), the float64
    error bounds of ``ForwardErrorModel``. When at both points every output is finite and E is
    infinite (the bound overflows through the layers) or above UNCONFIRMABLE_RATIO (||f_hat|| + 1),
    the search could only produce pairs that fail that test: it is not run (a decision on the sizes
    and seed only).
    Where the first point's E is infinite or above DECISIVE_RATIO (||f_hat|| + 1), it decides alone.
    """
    import torch

    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
    x0 = torch.randn(n, generator=gen, dtype=torch.float64) * domain_scale
    return x0, x0 / 10.0


def precise_doubtful(precise: PreciseModel, ratio: float, x: torch.Tensor, macs: float) -> str | None:
    """Where the float64 bound is infinite or above PRECISE_DOUBT times the outputs (``ratio``), the
    double-double evaluation at ``x`` (one evaluation of a network of ``macs`` multiply-adds,
    charged here): why it cannot confirm a quotient either (its own bound swamps the outputs
    there), or None (worth searching with)."""
    from stabaudit.analyses.precise import LIMBS, evaluation_macs

    if ratio <= PRECISE_DOUBT:
        return None
    plan.spend(evaluation_macs(precise.graph, precise.shapes, macs, LIMBS[0]) / plan.LOWER_MACS_PER_S)
    still, _, _ = unconfirmable_at(precise, (x,), "multi-limb error bound")
    if precise.limbs > LIMBS[0]:  # two limbs were not enough: the evaluation was made again with four
        plan.spend(evaluation_macs(precise.graph, precise.shapes, macs, precise.limbs) / plan.LOWER_MACS_PER_S)
    if still is None:
        return None
    # named by the arithmetic the model ended in (four limbs where two were not enough)
    still = still.replace("multi-limb", precise.arithmetic, 1)
    if precise.most_limbs < LIMBS[-1]:
        four_s = PRECISE_LEAST * evaluation_macs(precise.graph, precise.shapes, macs, LIMBS[-1]) / plan.LOWER_MACS_PER_S
        still = (still.removesuffix(_NO_QUOTIENT) + f"; the four-limb evaluation (about 212 bits) is planned at "
                 f"{four_s:.3g} s, beyond this search's share of --budget (a larger --budget may confirm it)"
                 + _NO_QUOTIENT)
    return still


def escalated_plan(precise: PreciseModel, count: int, macs: float) -> int:
    """The evaluations that ``count`` planned two-limb evaluations (charged by ``precise_plan``) buy
    once the model takes four limbs (``precise.PreciseModel.evaluate``): as many as the same work
    buys, at least PRECISE_LEAST (the difference charged here)."""
    from stabaudit.analyses.precise import LIMBS, evaluation_macs

    if precise.limbs == LIMBS[0]:
        return count
    two = evaluation_macs(precise.graph, precise.shapes, macs, LIMBS[0])
    four = evaluation_macs(precise.graph, precise.shapes, macs, precise.limbs)
    fewer = max(PRECISE_LEAST, int(count * two / four))
    extra = fewer * four - count * two
    if extra > 0:
        plan.spend(extra / plan.LOWER_MACS_PER_S)
    return fewer


def precise_plan(graph: Graph, shapes: dict[str, tuple[int, ...]], fallback: ForwardErrorModel, macs: float,
                 budget_s: float, share: bool = False) -> tuple[PreciseModel | None, int, str]:
    """(the double-double model, the evaluations of it that ``budget_s`` plans (charged here), why
    there is none) for a search whose float64 bound swamps the outputs: PRECISE_SHARE of the units,
    at least PRECISE_LEAST when they are planned within PRECISE_FLOOR_S (not for a search that is
    a ``share`` of another's budget); none when they are not planned, or when the model's memory
    (``precise.memory_estimate``) is above what the memory budget leaves."""
    from stabaudit.analyses.precise import LIMBS, PreciseModel, evaluation_macs, memory_estimate
    from stabaudit.limits import active_memory_budget, format_size, remaining_memory

    cost = evaluation_macs(graph, shapes, macs, LIMBS[0])
    count = int(PRECISE_SHARE * plan.lower_units(budget_s) / cost)
    if count < PRECISE_LEAST and not share:
        count = PRECISE_LEAST if PRECISE_LEAST * cost <= PRECISE_FLOOR_S * plan.LOWER_MACS_PER_S else 0
    if count < PRECISE_LEAST:
        return None, 0, (f"the double-double evaluation that confirms deep networks is planned at "
                         f"{PRECISE_LEAST * cost / plan.LOWER_MACS_PER_S:.3g} s, beyond this search's share of "
                         f"--budget ({budget_s:.3g} s; a larger --budget confirms it)")
    needed, left = memory_estimate(graph, shapes), remaining_memory(active_memory_budget())
    if needed > left:
        return None, 0, (f"the double-double evaluation that confirms deep networks needs about "
                         f"{format_size(needed)}, above the {format_size(max(left, 0))} the memory budget "
                         "leaves (--max-memory)")
    plan.spend(count * cost / plan.LOWER_MACS_PER_S)
    # four limbs only where their smallest plan fits what two limbs could have had (the share, or
    # PRECISE_FLOOR_S for a search of its own)
    four = evaluation_macs(graph, shapes, macs, LIMBS[-1])
    room = max(PRECISE_SHARE * plan.lower_units(budget_s),
               0.0 if share else PRECISE_FLOOR_S * plan.LOWER_MACS_PER_S)
    most = LIMBS[-1] if PRECISE_LEAST * four <= room else LIMBS[0]
    # the nodes without an exact kernel run in float64 with ``fallback``'s rules and sensitivities
    return PreciseModel(graph, shapes, fallback=fallback, most_limbs=most), count, ""


# the end of every such message: what an error bound that swamps the outputs means
_NO_QUOTIENT = (", so no difference quotient can be confirmed (a sound lower bound needs the output difference "
                "to exceed the error bounds of both points)")


def swamped_both(hopeless: str, still: str) -> str:
    """One message from ``unconfirmable_at``'s in float64 (``hopeless``) and in double-double (``still``)."""
    return f"{hopeless.removesuffix(_NO_QUOTIENT)}; {still}"


def _swamped(y: np.ndarray, e: float) -> float | None:
    """e / (||y|| + 1) when every output is finite and E is infinite or above UNCONFIRMABLE_RATIO
    (||y|| + 1); None otherwise (quotients near this point may be confirmed, or the values have a
    pole or an overflow there and the search may find better points)."""
    if not np.all(np.isfinite(y)):
        return None
    with np.errstate(over="ignore"):  # outputs near the float64 range: an infinite size keeps the search
        size = float(np.linalg.norm(y)) + 1.0
    if math.isfinite(e) and e <= UNCONFIRMABLE_RATIO * size:
        return None
    return e / size


def _swamped_why(ratio: float, bound: str = "float64 rounding-error bound") -> str:
    """What ``_swamped``'s ratio says, up to ``_NO_QUOTIENT``."""
    what = "overflows" if not math.isfinite(ratio) else f"is {ratio:.3g} times the output's norm"
    return f"the {bound} of this network {what} at seeded points"


def unconfirmable_at(model: Evaluation, points: Sequence[torch.Tensor],
                     bound: str = "float64 rounding-error bound") -> tuple[str | None, int, float]:
    """(why no difference quotient can be confirmed near these points (flat float64 inputs), or
    None: the test of ``_seeded_points`` (every output finite, every error bound infinite or above
    UNCONFIRMABLE_RATIO (||f_hat|| + 1)) at the given points; how many of them were evaluated; the
    smallest error bound over ||f_hat|| + 1 among them (0 when the test failed))."""
    ratios: list[float] = []
    for x in points:
        ratio = _swamped(*model.evaluate(x))
        if ratio is None:
            return None, len(ratios) + 1, 0.0
        ratios.append(ratio)
        if not ratio <= DECISIVE_RATIO:
            break  # far beyond the threshold (or infinite): the other points are not evaluated
    return _swamped_why(min(ratios), bound) + _NO_QUOTIENT, len(ratios), min(ratios)


def lower_bound(
    graph: Graph,
    *,
    seed: int,
    starts: int = 32,
    steps: int = 30,
    budget_s: float = 10.0,
    domain_scale: float = 1.0,
    op_bounds: Mapping[str, OpBound] | None = None,
    smallest_slack_s: float = plan.SMALLEST_PLAN_SLACK_S,
    share: bool = False,
) -> LowerResult:
    """The largest sound lower bound of the global L2 Lipschitz constant that the search confirms.

    x is the concatenation of all flattened graph inputs and f(x) that of all outputs (as in
    ``Executor.flat``). Run it on the graph as loaded: folding affine maps (ir.passes) rounds
    the folded weights, and the bound is about the stored ones. Deterministic for a seed: ``budget_s``
    sizes the work by the cost model (``_plan``), never by the clock.

    ``op_bounds`` (keyed by node output, e.g. those given to ``composition.compose``) tighten the
    float64 error bound of deep networks (see ``ForwardErrorModel``); bounds missing for nodes of this
    graph are computed with the registered rules. ``smallest_slack_s``: how far beyond the budget
    the smallest plan may go (``plan.smallest_plan_units``; 0 for searches that are a share of
    another, such as the residual branches'). ``share``: the search is a share of another's budget
    (a residual branch's) and is not run when even its one-point plan exceeds what it may take.
    """
    import torch

    from stabaudit.ir.executor import with_shapes

    start_time = time.perf_counter()
    if not all(node.output in graph.shapes for node in graph.nodes):
        graph = with_shapes(graph)
    shapes = dict(graph.shapes)
    nonfinite = _nonfinite_parameters(graph)
    if nonfinite:
        # NaN/Inf parameters: f is NaN/Inf somewhere or everywhere and no quotient can be
        # confirmed; 0 is the trivial sound lower bound (check SA402 reports the parameters)
        return LowerResult(
            value=0.0,
            method=f"not searched: {nonfinite} NaN/Inf parameter value(s) (see SA402)",
            witness=None,
            seconds=time.perf_counter() - start_time,
            evaluations=0,
        )
    # The work plan is sized for budget_s by a static cost model (``plan``), never by the clock:
    # a slow or busy machine takes longer for the same result. The clock only aborts (--timeout).
    search = _Search(graph, shapes, seed)
    asked = max(1, int(starts)), max(0, int(steps))
    starts, steps = _shape(search, *asked, budget_s, smallest_slack_s)
    least, allowed = _smallest_cost(search, starts, steps), plan.smallest_plan_units(budget_s, smallest_slack_s)
    if share and least > allowed:
        # a share of a budget (a residual branch's search) that does not buy even one point: decided
        # on the sizes alone, before any evaluation
        return LowerResult(
            value=0.0,
            method=(f"not searched: one point of this search is planned at {least / plan.LOWER_MACS_PER_S:.3g} s, "
                    f"above twice its share of the budget ({budget_s:.3g} s; a larger --budget searches it)"),
            witness=None, seconds=time.perf_counter() - start_time, evaluations=0,
        )
    model: Evaluation = ForwardErrorModel(graph, shapes, error_sensitivities(graph, op_bounds))
    seeded = _seeded_points(graph, seed, domain_scale)
    hopeless, checked, ratio = unconfirmable_at(model, seeded)
    # the test's float64 evaluations are work of this search (charged whatever they decide)
    plan.spend(checked * _CONFIRM_PASSES * search.fwd / plan.LOWER_MACS_PER_S)
    precise_evaluations = 0
    precise: PreciseModel | None = None
    if hopeless is not None:
        # deep networks: the double-double evaluation's error bound is some 2^-50 of float64's (and
        # four limbs' some 2^-100 of that, taken where two are not enough);
        # the search runs and its best pairs are confirmed with it, as many as its share buys (at
        # least PRECISE_LEAST when they are planned within PRECISE_FLOOR_S), memory permitting
        assert isinstance(model, ForwardErrorModel)
        precise, precise_evaluations, why_not = precise_plan(graph, shapes, model, search.fwd, budget_s, share)
        if precise is None:
            why = f"{hopeless}; {why_not}"
            return LowerResult(value=0.0, method=f"not searched: {why}", witness=None,
                               seconds=time.perf_counter() - start_time, evaluations=checked)
        still = precise_doubtful(precise, ratio, seeded[0], search.fwd)
        if still is not None:  # swamped in double-double too: the search could confirm nothing
            return LowerResult(value=0.0, method=f"not searched: {swamped_both(hopeless, still)}", witness=None,
                               seconds=time.perf_counter() - start_time, evaluations=checked + 1)
        precise_evaluations = escalated_plan(precise, precise_evaluations, search.fwd)
        model = precise
    pool, adam_steps, jac_every, proposals = _plan(search, starts, steps, budget_s)
    # the plan fills the budget's units, and at least the smallest plan
    plan.spend(max(plan.lower_units(budget_s), least) / plan.LOWER_MACS_PER_S)
    notes: list[str] = []
    if (starts, steps) != asked:
        notes.append(
            f"reduced plan: the budget of {budget_s:g} s does not buy the smallest plan of {asked[0]} "
            f"starts and {asked[1]} rounds for this network's size"
        )
    if pool <= starts and proposals == 0:
        notes.append(f"minimal search plan: the budget of {budget_s:g} s is below the cost model's smallest plan")

    # 1. screening
    pop, screened = _screen(search, pool, starts, domain_scale)
    k = pop.P.shape[0]

    # 2. ascent: pair ascent and local search, side by side
    scale = pop.P.pow(2).mean(dim=1).sqrt() + domain_scale  # per-coordinate scale of each start
    pairs = _PairAscent(search, pop, scale, domain_scale)
    radius = torch.full((k,), 0.1, dtype=torch.float64)
    rounds = 0
    for rnd in range(steps):
        check_deadline()
        for _ in range(adam_steps):
            pairs.step()
        if (rnd + 1) % jac_every == 0 or rnd == steps - 1:
            pairs.jacobians(pop)
        if proposals > 0:
            radius = _local_search(search, pop, radius, scale, proposals, select=(rnd + 1) % 5 == 0)
        rounds = rnd + 1

    # 3. confirmation
    _refine_best(search, pop, notes)
    estimate = float(pop.PS.max()) if k else 0.0
    best_value, witness = 0.0, None
    tries: list[tuple[torch.Tensor, torch.Tensor]] = []
    if precise_evaluations:
        best_value, witness, used, stopped = _confirm_precise(model, pop, pairs, domain_scale, precise_evaluations)
        search.evaluations += used
        if stopped is not None:
            notes.append(f"not confirmed: {stopped}")
    else:
        tries = _confirmation_pairs(search, pop, pairs, domain_scale)
    at: dict[int, tuple[torch.Tensor, tuple[np.ndarray, float]]] = {}  # f_hat and E at each x, once
    for x, y in tries:
        check_deadline()
        if torch.equal(x, y):
            continue
        if id(x) not in at:
            at[id(x)] = (x, model.evaluate(x.detach().clone()))
            search.evaluations += 1
        q = confirm_quotient(model, x.detach().clone(), y.detach().clone(), at_x=at[id(x)][1])
        search.evaluations += 1
        x, y = x.detach().clone(), y.detach().clone()
        if q > best_value:
            best_value = q
            witness = Witness(x=x.tolist(), y=y.tolist(), quotient=q)
    if best_value == 0.0 and not precise_evaluations:
        # No pair confirmed: the ascent may have run into regions where no finite float64 error
        # bound exists (1/x, log, exp near their poles: a model that is Lipschitz only on a
        # domain). Pairs along the top singular vectors at fresh points of the domain scale.
        fresh = _fresh_pairs(search, domain_scale, count=min(16, starts))
        for x, y in fresh:
            check_deadline()
            q = confirm_quotient(model, x, y)
            search.evaluations += 2
            if q > best_value:
                best_value = q
                witness = Witness(x=x.tolist(), y=y.tolist(), quotient=q)
        if best_value > 0.0:
            notes.append("confirmed at fresh points of the domain scale (no finite error bound at the "
                         "ascent's points)")

    jac = (
        "full jacobian"
        if search.full
        else f"power iteration ({search.power_iterations} steps, warm started)"
    )
    method = (
        f"multi-start jacobian ascent + difference quotient ({k} starts from {screened} screened, "
        f"{rounds} rounds of {adam_steps} pair steps and {proposals} proposals, {jac}, "
        + (f"{precise.arithmetic if precise is not None else 'double-double'} evaluation of up to "
           f"{precise_evaluations} points with its error bound; "
           f"{hopeless.removesuffix(_NO_QUOTIENT)})"
           if precise_evaluations and hopeless else "float64 error bound)")
    )
    if notes:
        method += "; " + "; ".join(notes)
    return LowerResult(
        value=best_value,
        method=method,
        witness=witness,
        seconds=time.perf_counter() - start_time,
        evaluations=search.evaluations,
        estimate=max(estimate, best_value),
    )
