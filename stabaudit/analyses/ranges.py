"""Value ranges: a sound enclosure of every tensor of a graph while its inputs range over a box.

For inputs x in the box B = [lo, hi] (one Interval per graph input), ``value_ranges`` returns, for
every value v of the graph (inputs and node outputs), float64 arrays lo_v, hi_v with

    lo_v <= v(x) <= hi_v  entry by entry, for every x in B,

where v(x) is the value the executor (ir.executor.Executor, dtype float64) computes: float rounding
included. The enclosures are built node by node in topological order; each rule below maps
enclosures of the node's computed inputs to one of its computed output (induction over the graph).
docs/domain.md states every rule; in short:

- correctly rounded operations (IEEE +, -, *, /, sqrt; max, min, copies) are monotone in each
  argument: fl(a) <= fl(b) for a <= b. A map monotone in each input, computed by such operations,
  is enclosed exactly by its computed values at the corners (Add, Sub, Mul and Div by the four
  products/quotients, Relu, Clip, Max/Min, the max-pools and max/min reductions, Affine, the
  selections Reshape, Transpose, Slice, Gather, Tile, Concat, Pad by applying them to lo and hi);
- linear maps y = W x + b (Linear, Conv, ConvTranspose, AvgPool, GlobalAvgPool, ReduceSum,
  ReduceMean, Resize) in center/radius form: x = c + d with |d| <= r, y in W c + b +- |W| r, and
  |fl(W x + b) - (W x + b)| <= gamma_k (|W||x| + |b|) (Higham 3.5) for the executor, the same for
  the computed W c + b: the radius adds 2 gamma_k (|W| |c| + |b|) (``local._rel``), |W| r computed
  with |W| (so a cubic Resize's negative weights widen the radius, never shrink it);
- smooth element-wise maps evaluated by libm-grade kernels (a few ulps): the exact map is monotone
  on the interval, or on each side of a known turning point (kinks at 0; the minimum of SiLU, GELU,
  HardSwish, Mish), so its range is the hull of its values at the endpoints and at that point, widened
  by 16 ulps of the value (``local._smooth_margin``), 4 ulps of |x| where the kernel cancels
  (GELU, HardSwish, HardSigmoid) and TINY for underflow;
- Softmax, LayerNorm, MatMul of two variables and the nonlinear reductions have their own rules
  (``softmax_range``, ``_layer_norm``, ``_matmul``, ``_reduce``), each stating its inequality.

Unbounded values. An enclosure that would not be finite (a divisor interval holding 0, Sqrt or Log
of an interval reaching below 0, an overflow) is reported as (-inf, inf): the executor may compute
an infinity or a NaN there, and no finite interval is claimed. Internally such entries are NaN,
which every later rule propagates (any entry computed from them is unbounded too); at the end they
become (-inf, inf). An operator without a rule, or whose rule fails, gives (-inf, inf) for its
whole output and is named in ``RangeResult.notes``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.local import _center_radius, _down, _rel, _shapes, _up_t
from stabaudit.bounds.base import Interval
from stabaudit.bounds.numerics import EPS, TINY
from stabaudit.errors import UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.limits import raise_allocation_failure

if TYPE_CHECKING:
    import torch

    Fn = Callable[..., torch.Tensor]

# 4 * 2^-1074: a bound of the absolute error of one rounded exp/product that underflows
_UNDER = 2.0e-323
# turning points (argmin) and minimum values of the non-monotone activations, from 40-digit
# arithmetic; the map decreases left of the point and increases right of it
_SILU_MIN = (-1.2784645427610738, -0.27846454276107380)
_MISH_MIN = (-1.1924312145154952, -0.30884341301725040663)
_GELU_MIN = (-0.75179152469356446, -0.16997120747990366)
_GELU_TANH_MIN = (-0.75246142207101626, -0.17004075057125405)
_HARDSWISH_MIN = (-1.5, -0.375)
# slack on those minima: covers the 17-digit rounding of the constants and the kernels' few ulps
_MIN_SLACK = 1e-14
# half-width of the band around a turning point inside which its minimum is used
_TURN_BAND = 1e-9
# MatMul: the entry-wise interval product is formed when it has at most this many terms
MAX_MATMUL_TERMS = 1 << 22


@dataclass(frozen=True, kw_only=True)
class RangeResult:
    """``ranges``: the enclosure of every value (graph inputs and node outputs). ``notes``: one line
    per node whose output has unbounded entries that do not come from an unbounded input (the
    origin of each (-inf, inf)), and per operator without a rule."""

    ranges: Mapping[str, Interval]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0


# ---- helpers -----------------------------------------------------------------------------------
def _forward(node: Node, op: O.Op, shapes: Mapping[str, tuple[int, ...]], device: str) -> Fn:
    """The node's executor kernel with ``op`` in its place, as f(*inputs) in float64 on ``device``."""
    import torch

    from stabaudit.ir.executor import Executor

    specs = tuple(TensorSpec(name=name, shape=shapes[name]) for name in node.inputs)
    graph = Graph(inputs=specs, outputs=(node.output,), nodes=(dataclasses.replace(node, op=op),))
    ex = Executor(graph, dtype=torch.float64, device=device)

    def f(*args: torch.Tensor) -> torch.Tensor:
        return ex(*args)[0]

    return f


def _const(a: np.ndarray, device: str) -> torch.Tensor:
    """A parameter array as a float64 tensor (a writable copy) on ``device``."""
    import torch

    return torch.from_numpy(np.array(a, dtype=np.float64)).to(device)


def _margin(lo: torch.Tensor, hi: torch.Tensor, x_mag: torch.Tensor | None = None, ulps: float = 16.0,
            x_ulps: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] widened by ``ulps`` ulps of each end (EPS = 2^-52 per ulp, relative), ``x_ulps`` ulps
    of |x| (``x_mag`` = max |x| over the input interval) and TINY (underflow): the error of a
    libm-grade kernel at either end and of the executor's value inside, together."""
    wl = ulps * EPS * lo.abs() + TINY
    wh = ulps * EPS * hi.abs() + TINY
    if x_mag is not None:
        wl = wl + x_ulps * EPS * x_mag
        wh = wh + x_ulps * EPS * x_mag
    return _down(lo - wl), _up_t(hi + wh)


def _hull(*ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise min and max of several tensors (NaN propagates)."""
    import torch

    lo, hi = ts[0], ts[0]
    for t in ts[1:]:
        lo, hi = torch.minimum(lo, t), torch.maximum(hi, t)
    return lo, hi


def _nan_where(mask: torch.Tensor, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """NaN (unbounded) where ``mask`` holds, broadcast."""
    import torch

    nan = torch.tensor(math.nan, dtype=torch.float64, device=ts[0].device)
    return tuple(torch.where(mask, nan, t) for t in ts)


def _unknown(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Entries whose enclosure is unbounded (NaN) on either side."""
    return lo.isnan() | hi.isnan()


def _linear_range(f: Fn, absf: Fn, los: Sequence[torch.Tensor], his: Sequence[torch.Tensor],
                  rel: float, bias: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Enclosure of fl(W x + b) for x in [lo, hi]: f = the map (with b), absf = |W| (no b).

    x = c + d, |d| <= r: W x + b in W c + b +- |W| r. The executor's value is within
    gamma (|W| |x| + |b|) <= gamma (|W| (|c| + r) + |b|) of W x + b and the computed center within
    gamma (|W| |c| + |b|) of W c + b; rel >= 2 gamma covers both, (1 + 2 rel) the rounding of the
    computed |W| (.) (a sum of nonnegative terms, computed at least (1 - gamma) of its value).
    ``bias``: |b| (broadcastable), or None to compute it as |f(0)|.
    """
    import torch

    cr = [_center_radius(a, b) for a, b in zip(los, his, strict=True)]
    yc = f(*[c for c, _ in cr])
    if bias is None:
        bias = f(*[torch.zeros_like(c) for c, _ in cr]).abs()
    yr = absf(*[r + rel * c.abs() for c, r in cr]) * (1 + 2 * rel) + rel * bias + TINY
    return _down(yc - yr), _up_t(yc + yr)


def _linear_maps(node: Node, shapes: Mapping[str, tuple[int, ...]],
                 device: str) -> tuple[Fn, Fn, float, torch.Tensor | float | None] | None:
    """(f, |W| map, rel, |b|) of a linear node (|b| None: computed as |f(0)|); None for the other
    operators."""
    import torch

    op = node.op
    k = sum(int(np.prod(shapes[name])) for name in node.inputs)
    match op:
        case O.Linear(weight=w, bias=b) | O.Conv(weight=w, bias=b) | O.ConvTranspose(weight=w, bias=b):
            abs_op = dataclasses.replace(op, weight=np.abs(np.asarray(w, dtype=np.float64)), bias=None)  # type: ignore[type-var]
            bias: torch.Tensor | float = 0.0
            if b is not None:
                bias = _const(np.abs(np.asarray(b, dtype=np.float64)), device)
                if not isinstance(op, O.Linear):  # per channel, axis 1
                    bias = bias.reshape(-1, *([1] * (len(shapes[node.output]) - 2)))
            return _forward(node, op, shapes, device), _forward(node, abs_op, shapes, device), _rel(k), bias
        case O.AvgPool() | O.GlobalAvgPool() | O.ReduceSum() | O.ReduceMean():
            f = _forward(node, op, shapes, device)  # nonnegative weights, no constant term
            return f, f, _rel(k), 0.0
        case O.Resize():
            from stabaudit.ir.resize import axis_matrix

            mats = []
            for i, axis in enumerate(op.axes):
                m, _ = axis_matrix(op, i)
                mats.append((axis, _const(np.abs(np.asarray(m, dtype=np.float64)), device)))

            def absf(x: torch.Tensor) -> torch.Tensor:
                for axis, m in mats:
                    x = torch.movedim(torch.tensordot(m, x, dims=([1], [axis])), 0, axis)
                return x

            # one product per resized axis: the errors compound, (1 + g)^T - 1 <= T g (1 + T g);
            # the extrapolation value of tf_crop_and_resize is the constant term |f(0)|
            return _forward(node, op, shapes, device), absf, _rel(k) * (len(op.axes) + 1), None
    return None


def _mig_mag(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of |x| over [lo, hi] (exact: max, min and negation are exact)."""
    import torch

    mig = torch.clamp(torch.maximum(lo, -hi), min=0.0)
    mag = torch.maximum(lo.abs(), hi.abs())
    return mig, mag


def _reduce_dims(op: O.Reduce, t: torch.Tensor) -> tuple[int, ...]:
    return tuple(a % t.dim() for a in op.axes) if t.dim() else ()


# ---- element-wise rules ------------------------------------------------------------------------
def _kinked(f: Fn, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A map monotone on each side of 0 with f(0) = 0: hull of f(lo), f(hi) and 0 when inside."""
    import torch

    a, b = f(lo), f(hi)
    out_lo, out_hi = _hull(a, b)
    inside = (lo < 0) & (hi > 0)
    zero = torch.zeros_like(out_lo)
    out_lo = torch.where(inside, torch.minimum(out_lo, zero), out_lo)
    out_hi = torch.where(inside, torch.maximum(out_hi, zero), out_hi)
    return out_lo, out_hi


def _turning(f: Fn, lo: torch.Tensor, hi: torch.Tensor, turn: tuple[float, float],
             x_ulps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A map decreasing left of turn[0] and increasing right of it, minimum turn[1]: the range on
    [lo, hi] is the hull of f(lo), f(hi), and the minimum where the interval reaches the point."""
    import torch

    x0, m = turn
    a, b = f(lo), f(hi)
    out_lo, out_hi = _hull(a, b)
    out_lo, out_hi = _margin(out_lo, out_hi, _mig_mag(lo, hi)[1], x_ulps=x_ulps)
    reach = (lo <= x0 + _TURN_BAND) & (hi >= x0 - _TURN_BAND)
    out_lo = torch.where(reach, torch.minimum(out_lo, torch.full_like(out_lo, m - _MIN_SLACK)), out_lo)
    return out_lo, out_hi


def _periodic(op: O.Op, f: Fn, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos: monotone between their turning points (sin: its maxima at pi / 2 + 2 k pi, its
    minima at -pi / 2 + 2 k pi; cos: 2 k pi and pi + 2 k pi), so the range over [lo, hi] is the
    hull of the end values (a few ulps, and 64 u |x| for the argument reduction, wider) and of
    1 or -1 where the interval may hold a maximum or a minimum (``periodic_hit``, which errs on
    holding it)."""
    import torch

    from stabaudit.bounds.numerics import periodic_hit

    out_lo, out_hi = _hull(f(lo), f(hi))
    mag = _mig_mag(lo, hi)[1]
    w = 16 * EPS * (out_lo.abs().maximum(out_hi.abs())) + 64 * EPS * mag + 4 * EPS
    peak = math.pi / 2 if isinstance(op, O.Sin) else 0.0
    a, b = lo.cpu().numpy(), hi.cpu().numpy()
    top = torch.from_numpy(periodic_hit(a, b, peak, 2 * math.pi)).to(lo.device)
    bottom = torch.from_numpy(periodic_hit(a, b, peak - math.pi, 2 * math.pi)).to(lo.device)
    out_hi = torch.where(top, torch.ones_like(out_hi), (out_hi + w).clamp(max=1.0))
    out_lo = torch.where(bottom, -torch.ones_like(out_lo), (out_lo - w).clamp(min=-1.0))
    return out_lo, out_hi


def _elementwise(op: O.Op, f: Fn, lo: torch.Tensor, hi: torch.Tensor,
                 notes: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The range of the computed element-wise map ``f`` on [lo, hi]; None when ``op`` is not one."""
    import torch

    mag = _mig_mag(lo, hi)[1]
    match op:
        case O.Relu() | O.Clip():  # exact maps (max/min with constants): monotone, exact
            return f(lo), f(hi)
        case O.Abs():
            return _mig_mag(lo, hi)
        case O.DynamicQuantize(part=part, smooth=identity):
            return _dynamic_quantize_range(part, identity, lo, hi)
        case O.Quantize(scale=scale) if all(v > 0 for v in scale):
            # round, clamp, division and product by a step s > 0 are monotone, in float as in reals:
            # the computed map is non-decreasing, its values at the ends enclose all (the clip too)
            return f(lo), f(hi)
        case O.LeakyRelu() | O.PRelu():  # one product on each side of 0 (monotone rounding)
            out_lo, out_hi = _kinked(f, lo, hi)
            return _down(out_lo), _up_t(out_hi)
        case O.Elu():  # alpha expm1(x) left of 0 (monotone for either sign of alpha), x right of it
            return _margin(*_kinked(f, lo, hi))
        case O.Sigmoid():
            out_lo, out_hi = _margin(f(lo), f(hi))
            return out_lo.clamp(min=0.0), out_hi.clamp(max=1.0)
        case O.Tanh() | O.Erf():
            out_lo, out_hi = _margin(f(lo), f(hi))
            return out_lo.clamp(min=-1.0), out_hi.clamp(max=1.0)
        case O.Sin() | O.Cos():
            return _periodic(op, f, lo, hi)
        case O.Exp():
            out_lo, out_hi = _margin(f(lo), f(hi))
            return out_lo.clamp(min=0.0), out_hi
        case O.Softplus(beta=beta, threshold=threshold):
            if not beta > 0:
                return None
            # smooth part s(x) = log(1 + exp(beta x)) / beta (increasing); torch's threshold
            # returns x where beta x > threshold, below s(x) by log1p(exp(-beta x)) / beta
            # < log1p(exp(-threshold)) / beta
            def smooth(t: torch.Tensor) -> torch.Tensor:
                return torch.logaddexp(t * beta, torch.zeros_like(t)) / beta

            out_lo, out_hi = _margin(smooth(lo), smooth(hi))
            if threshold is not None:
                jump = math.log1p(math.exp(-threshold)) / beta if threshold > -700 else math.inf
                jump = jump * (1 + 8 * EPS) + TINY
                out_lo = torch.where(hi * beta > threshold, _down(out_lo - jump), out_lo)
            return out_lo, out_hi
        case O.HardSigmoid(alpha=alpha, beta=beta):
            # clamp(alpha x + beta, 0, 1): monotone; two roundings or one FMA, 4 ulps of the terms
            out_lo, out_hi = _hull(f(lo), f(hi))
            w = 4 * EPS * (abs(alpha) * mag + abs(beta)) + TINY
            return (out_lo - w).clamp(min=0.0), (out_hi + w).clamp(max=1.0)
        case O.Silu():
            return _turning(f, lo, hi, _SILU_MIN, 4.0)
        case O.Mish():  # x tanh(softplus(x)): three library functions and a product, 16 ulps of |x|
            return _turning(f, lo, hi, _MISH_MIN, 16.0)
        case O.Gelu(approximate=approx):
            return _turning(f, lo, hi, _GELU_TANH_MIN if approx == "tanh" else _GELU_MIN, 4.0)
        case O.HardSwish():
            return _turning(f, lo, hi, _HARDSWISH_MIN, 4.0)
        case O.Sqrt():  # correctly rounded, increasing on [0, inf); NaN below 0
            bad = lo < 0
            if bool(bad.any()):
                notes.append(f"{int(bad.sum())} entries may be negative (NaN)")
            return _nan_where(bad, f(lo), f(hi))  # type: ignore[return-value]
        case O.Log():
            bad = lo <= 0
            if bool(bad.any()):
                notes.append(f"{int(bad.sum())} entries may be <= 0 (-inf or NaN)")
            return _nan_where(bad, *_margin(f(lo), f(hi)))  # type: ignore[return-value]
        case O.Reciprocal():  # correctly rounded, decreasing on each side of 0
            bad = (lo <= 0) & (hi >= 0)
            if bool(bad.any()):
                notes.append(f"{int(bad.sum())} entries may be 0 (infinite)")
            return _nan_where(bad, f(hi), f(lo))  # type: ignore[return-value]
        case O.Pow(exponent=e):
            return _pow(float(e), f, lo, hi, notes)
    return None


def _dynamic_quantize_range(part: O.QuantPart, smooth: bool, lo: torch.Tensor,
                            hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DynamicQuantizeLinear over [lo, hi]: its step is at most s = (max(0, max hi) - min(0, min lo)) / 255
    (the whole tensor's range), the dequantized value within dynamic_step_error(s) of x (docs/operators.md),
    the integers and zero point in [0, 255]."""
    import torch

    from stabaudit.bounds.quantization import dynamic_step_error

    if smooth and part is O.QuantPart.DEQUANTIZED:
        return lo, hi
    span = float(torch.clamp(hi.max(), min=0.0) - torch.clamp(lo.min(), max=0.0))
    step = dynamic_step_error(span) * 2  # an upper bound of the step itself (rounding included)
    match part:
        case O.QuantPart.DEQUANTIZED:
            w = dynamic_step_error(span)
            return _down(lo - w), _up_t(hi + w)
        case O.QuantPart.SCALE:
            return torch.zeros(()), torch.full((), step, dtype=torch.float64)
    return torch.zeros(()), torch.full((), 255.0, dtype=torch.float64)


def _pow(e: float, f: Fn, lo: torch.Tensor, hi: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """x ** e. e = 0: 1. Integer e > 0: monotone on each side of 0 with 0 ** e = 0. Integer e < 0:
    monotone on each side of 0, infinite at 0. Other e: NaN below 0, monotone on [0, inf) (0 ** e
    infinite for e < 0). pow is libm-grade (integer powers by repeated products: log2 |e| + 1
    roundings more), widened by (16 + 4 log2(|e| + 1)) ulps."""
    import torch

    if e == 0:
        return torch.ones_like(lo), torch.ones_like(hi)
    ulps = 16.0 + 4.0 * math.log2(abs(e) + 1.0)
    if e.is_integer():
        if e > 0:
            return _margin(*_kinked(f, lo, hi), ulps=ulps)
        bad = (lo <= 0) & (hi >= 0)
        reason = "may be 0 (infinite)"
    else:
        bad = lo < 0
        reason = "may be negative (NaN)"
    if bool(bad.any()):
        notes.append(f"{int(bad.sum())} entries {reason}")
    out = _margin(*_hull(f(lo), f(hi)), ulps=ulps)
    return _nan_where(bad, *out)  # type: ignore[return-value]


# ---- two-variable products ---------------------------------------------------------------------
def _mul_div(op: O.Op, los: list[torch.Tensor], his: list[torch.Tensor],
             notes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """x * y, x / y: the exact product (quotient, divisor of one sign) over a box is attained at a
    corner, and the correctly rounded result is monotone in the exact one: the computed corners
    enclose every computed value. A divisor interval holding 0: unbounded."""
    (a, b), (c, d) = (los[0], his[0]), (los[1], his[1])
    if isinstance(op, O.Mul):
        return _hull(a * c, a * d, b * c, b * d)
    out = _hull(a / c, a / d, b / c, b / d)
    bad = ((c <= 0) & (d >= 0)).expand_as(out[0])
    if bool(bad.any()):
        notes.append(f"{int(bad.sum())} entries divide by an interval holding 0")
    return _nan_where(bad, *out)  # type: ignore[return-value]


def _matmul(los: list[torch.Tensor], his: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A B over A in [Ac +- Ar], B in [Bc +- Br] (Rump's midpoint-radius product):
    A B - Ac Bc = Ac dB + dA Bc + dA dB, so |A B - Ac Bc| <= P = |Ac| Br + Ar (|Bc| + Br); the
    executor's rounding is <= gamma_k |A| |B| <= gamma_k Q, Q = (|Ac| + Ar)(|Bc| + Br), and the
    computed Ac Bc is within gamma_k |Ac| |Bc| <= gamma_k Q: radius (P + rel Q), rel >= 2 gamma_k,
    each computed (nonnegative) product widened by (1 + 2 rel).
    Midpoint-radius overestimates by up to 1.5x; where the [..., n, k, m] products fit in
    MAX_MATMUL_TERMS entries, the result is intersected with the sum over k of the exact ranges of
    the products a_ik b_kj (their four corners, correctly rounded: monotone), whose computed sum is
    within gamma_k sum_k |corner| <= gamma_k Q of the exact one."""
    import torch

    ca, ra = _center_radius(los[0], his[0])
    cb, rb = _center_radius(los[1], his[1])
    k = int(los[0].shape[-1])
    rel = _rel(k)
    yc = torch.matmul(ca, cb)
    p = torch.matmul(ca.abs(), rb) + torch.matmul(ra, cb.abs() + rb)
    q = torch.matmul(ca.abs() + ra, cb.abs() + rb)
    yr = (p + rel * q) * (1 + 2 * rel) * (1 + 4 * EPS) + TINY
    out_lo, out_hi = _down(yc - yr), _up_t(yc + yr)
    if los[0].dim() >= 2 and los[1].dim() >= 2 and yc.numel() * k <= MAX_MATMUL_TERMS:
        a_lo, a_hi = los[0].unsqueeze(-1), his[0].unsqueeze(-1)  # [..., n, k, 1]
        b_lo, b_hi = los[1].unsqueeze(-3), his[1].unsqueeze(-3)  # [..., 1, k, m]
        t_lo, t_hi = _hull(a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi)
        err = rel * q * (1 + 2 * rel) * (1 + 4 * EPS) + TINY
        out_lo = torch.maximum(out_lo, _down(t_lo.sum(dim=-2) - err))
        out_hi = torch.minimum(out_hi, _up_t(t_hi.sum(dim=-2) + err))
    return out_lo, out_hi


# ---- Softmax -----------------------------------------------------------------------------------
def _excluded_sum(e: torch.Tensor) -> torch.Tensor:
    """sum_{j != i} e_j along the last axis, as a prefix plus a suffix sum (no cancellation)."""
    import torch

    zero = torch.zeros_like(e[..., :1])
    prefix = torch.cat([zero, torch.cumsum(e, dim=-1)[..., :-1]], dim=-1)
    suffix = torch.cat([torch.flip(torch.cumsum(torch.flip(e, [-1]), dim=-1), [-1])[..., 1:], zero], dim=-1)
    return prefix + suffix


def masked_rows(lo: torch.Tensor, hi: torch.Tensor, mask: np.ndarray | None, axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lo, hi) with the entries a softmax mask drops set to a finite value 2000 below their row's
    least lower end (their exponential underflows to exactly 0 after the shift by the row's
    maximum, as e^-inf is 0), and the dropped entries as a bool tensor (None without a mask)."""
    import torch

    if mask is None:
        return lo, hi, None
    dropped = torch.from_numpy(~np.broadcast_to(np.asarray(mask, dtype=bool), tuple(lo.shape))).to(lo.device)
    floor = torch.where(dropped, torch.full_like(lo, math.inf), lo).amin(dim=axis, keepdim=True) - 2000.0
    low = torch.where(dropped, floor.expand_as(lo), lo)
    return low, torch.where(dropped, floor.expand_as(hi), hi), dropped


def softmax_range(axis: int, lo: torch.Tensor, hi: torch.Tensor, mask: np.ndarray | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """y_i = e^{x_i} / sum_j e^{x_j} increases in x_i and decreases in every other x_j, so over
    the box e^{lo_i} / (e^{lo_i} + sum_{j!=i} e^{hi_j}) <= y_i <= e^{hi_i} / (e^{hi_i} + sum_{j!=i} e^{lo_j}).

    Computed after subtracting M = max_j hi_j (all exponents <= 0). Rounding: exp(fl(t)) is within
    (|t| + 1) u relative of e^t for a normal result (|t| <= D = max hi - min lo), or 2^-1074 absolute
    when it underflows; the sums of n positive terms add gamma_n. So each computed exponential and
    sum is within rho / 2 relative plus n 2^-1072 absolute, rho = 1.01 (min(D, 746) + n + 16) EPS,
    and the bounds move by the monotone ratio a / (a + b) from such enclosures. The executor's
    value (exp(x - max) over the sum) has the same error (the sum >= 1): a further factor (1 +- rho)
    and TINY. Clamped to [0, 1], where every computed value lies.

    ``mask`` (``Softmax.mask``): the dropped entries are exactly 0; the kept ones are bounded as
    above with the dropped entries' terms at most the underflow margin (``masked_rows``), which
    only widens the enclosure."""
    import torch

    lo, hi, dropped = masked_rows(lo, hi, mask, axis)
    if dropped is not None:
        low, high = softmax_range(axis, lo, hi)
        zero = torch.zeros_like(low)
        return torch.where(dropped, zero, low), torch.where(dropped, zero, high)
    n = lo.shape[axis]
    if n == 1:
        bad = _unknown(lo, hi)
        return _nan_where(bad, torch.ones_like(lo), torch.ones_like(hi))  # type: ignore[return-value]
    tl, th = lo.movedim(axis, -1), hi.movedim(axis, -1)
    big = th.amax(dim=-1, keepdim=True)
    spread = torch.clamp(big - tl.amin(dim=-1, keepdim=True), max=746.0)
    rho = 1.01 * (spread + n + 16) * EPS
    e_lo, e_hi = torch.exp(tl - big), torch.exp(th - big)
    s_lo, s_hi = _excluded_sum(e_lo), _excluded_sum(e_hi)
    under = n * _UNDER
    a = torch.clamp(e_lo * (1 - rho) - _UNDER, min=0.0)
    lower = a / (a + s_hi * (1 + rho) + under)
    b = e_hi * (1 + rho) + _UNDER
    upper = b / (b + torch.clamp(s_lo * (1 - rho) - under, min=0.0))
    lower = torch.clamp(lower * (1 - rho) - TINY, min=0.0)
    upper = torch.clamp(upper * (1 + rho) + TINY, max=1.0)
    return lower.movedim(-1, axis), upper.movedim(-1, axis)


# ---- LayerNorm ---------------------------------------------------------------------------------
def _mean_range(lo: torch.Tensor, hi: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Enclosure of the mean over ``dims`` (keepdim), exact or as torch computes it."""

    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=dims, keepdim=True)

    n = int(np.prod([lo.shape[d] for d in dims]))
    return _linear_range(mean, mean, [lo], [hi], _rel(n))


def _square_mean_range(dlo: torch.Tensor, dhi: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of mean(d^2) over ``dims`` for d in [dlo, dhi], exact or as torch computes
    fl(mean(fl(d * d))): d_i^2 lies between mig_i^2 and mag_i^2 (the least and largest |d_i|), and
    each computed mean of squares is within gamma_{n+1} relative plus n 2^-1074 (underflow) of the
    exact one; rel >= 2 gamma covers ours and the executor's."""
    import torch

    n = int(np.prod([dlo.shape[d] for d in dims]))
    rel = _rel(n)
    mig, mag = _mig_mag(dlo, dhi)
    low = (mig * mig).mean(dim=dims, keepdim=True)
    high = (mag * mag).mean(dim=dims, keepdim=True)
    low = torch.clamp(_down(low * (1 - 2 * rel) - n * _UNDER), min=0.0)
    high = _up_t(high * (1 + 2 * rel) + n * _UNDER)
    return low, high


def variance_lower(lo: np.ndarray, hi: np.ndarray, axes: Sequence[int], *, centered: bool = True) -> np.ndarray:
    """A sound lower bound of min over the box [lo, hi] of the (biased) variance over ``axes``
    (kept as size 1), float rounding included; with centered=False, of the mean of squares
    (RMSNorm's statistic: the same with the mean taken as 0).

    For x in the box, x_i - mean(x) lies in [lo_i - mean_hi, hi_i - mean_lo] (mean_lo, mean_hi an
    enclosure of the mean), so (x_i - mean(x))^2 >= dist_i^2 with dist_i the distance of that
    interval to 0, and var(x) = mean_i (x_i - mean(x))^2 >= mean_i dist_i^2: the bound, computed
    with every rounding directed down. Positive only where every x's entries spread apart."""
    import torch

    tl = torch.from_numpy(np.array(lo, dtype=np.float64))
    th = torch.from_numpy(np.array(hi, dtype=np.float64))
    dims = tuple(sorted(a % tl.dim() for a in axes)) if tl.dim() else ()
    if not dims:
        return np.zeros_like(np.asarray(lo, dtype=np.float64))
    with torch.no_grad():
        if centered:
            m_lo, m_hi = _mean_range(tl, th, dims)
            low, _ = _square_mean_range(_down(tl - m_hi), _up_t(th - m_lo), dims)
        else:
            low, _ = _square_mean_range(tl, th, dims)
    out = low.numpy()
    return np.where(np.isnan(out), 0.0, out)


def _layer_norm(op: O.LayerNorm, device: str, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = d / sqrt(var + eps) * scale + bias, d = x - mean(x), var = mean(d^2), as the executor
    computes it: d~ = fl(x - m~) with m~ the computed mean, var~ = fl(mean(fl(d~^2))),
    s~ = fl(sqrt(fl(var~ + eps))), z~ = fl(d~ / s~).

    m~ lies in the mean's enclosure [m_lo, m_hi] (_mean_range), so d~_i in
    [fl(lo_i - m_hi), fl(hi_i - m_lo)] (monotone rounding); var~ in [v_lo, v_hi]
    (_square_mean_range of those d-intervals); s~ in [s_lo, s_hi] = the computed square roots of
    v_lo + eps and v_hi + eps (monotone). z~ = fl(d~ / s~) is increasing in d~ and, for d~ of one
    sign, monotone in s~: z~_i >= d_lo / s_lo (d_lo < 0) or d_lo / s_hi (d_lo >= 0), symmetric above.
    Besides, |d~_i| <= sqrt(n mean(d~^2)), so |z~_i| <= sqrt(n) (1 + rel) once eps > 1e-300 covers
    the underflow of the squares (sqrt(n - 1) holds for exact deviations, which sum to 0; computed
    ones need not). The scale and bias apply as Affine (monotone, exact). eps = 0 with a variance
    that may vanish: 0 / 0 possible, unbounded. RMSNorm (centered=False) takes no mean: d~ = x
    exactly, and |x_i| <= sqrt(n mean(x^2)) bounds z~ the same way."""
    import torch

    dims = tuple(range(op.axis, lo.dim()))
    n = int(np.prod([lo.shape[d] for d in dims]))
    if op.centered:
        m_lo, m_hi = _mean_range(lo, hi, dims)
        bad = m_lo.isnan() | m_hi.isnan()
        dlo, dhi = lo - m_hi, hi - m_lo
    else:
        bad = (lo.isnan() | hi.isnan()).amax(dim=dims, keepdim=True)
        dlo, dhi = lo, hi
    v_lo, v_hi = _square_mean_range(dlo, dhi, dims)
    eps = float(op.epsilon)
    s_lo, s_hi = torch.sqrt(v_lo + eps), torch.sqrt(v_hi + eps)
    z_lo = torch.where(dlo < 0, dlo / s_lo, dlo / s_hi)
    z_hi = torch.where(dhi > 0, dhi / s_lo, dhi / s_hi)
    if eps > 1e-300:
        cap = math.nextafter(math.sqrt(n) * (1 + 2 * _rel(n)), math.inf)
        z_lo = torch.where(z_lo.isnan(), -cap, torch.clamp(z_lo, min=-cap))
        z_hi = torch.where(z_hi.isnan(), cap, torch.clamp(z_hi, max=cap))
    y_lo, y_hi = z_lo, z_hi
    if op.scale is not None:
        sc = _const(op.scale, device)
        y_lo, y_hi = _hull(y_lo * sc, y_hi * sc)
    if op.bias is not None:
        b = _const(op.bias, device)
        y_lo, y_hi = y_lo + b, y_hi + b
    return _nan_where(bad, y_lo, y_hi)  # type: ignore[return-value]


# ---- reductions --------------------------------------------------------------------------------
def _reduce(op: O.Reduce, f: Fn, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """ReduceMax/Min: monotone, exact. ReduceL1, ReduceSumSquare, ReduceL2: increasing in each |x_j|,
    so between the reductions of the least and the largest |x_j| (mig, mag), widened by rel >= 2
    gamma_{n+1} (ours and the executor's rounding, relative, of a sum of nonnegative terms; the
    square root halves it), and by n 2^-1072 absolute (squares that underflow; its square root for
    ReduceL2). ReduceLogSumExp: increasing in each x_j; computed as
    m + log(sum exp(x - m)), within (min(D, 746) + n + 8) u + u |value| absolute of the exact value
    (the sum >= 1, as for Softmax), doubled for ours and the executor's."""
    import torch

    dims = _reduce_dims(op, lo)
    keep = op.keepdims
    if not dims:  # each entry its own group: the executor's identity, |x| or x * x
        if isinstance(op, O.ReduceL2 | O.ReduceL1):
            return _mig_mag(lo, hi)
        if isinstance(op, O.ReduceSumSquare):
            mig, mag = _mig_mag(lo, hi)
            return _down(mig * mig), _up_t(mag * mag)
        return lo, hi
    n = int(np.prod([lo.shape[d] for d in dims]))
    rel = _rel(n + 1)
    match op:
        case O.ReduceMax() | O.ReduceMin():
            return f(lo), f(hi)
        case O.ReduceL1() | O.ReduceL2() | O.ReduceSumSquare():
            mig, mag = _mig_mag(lo, hi)
            a, b = f(mig), f(mag)
            # underflowing squares: n 2^-1074 absolute in the sum, its square root after ReduceL2
            under = n * _UNDER if not isinstance(op, O.ReduceL2) else 2 * math.sqrt(n * _UNDER)
            return (torch.clamp(_down(a * (1 - 2 * rel) - under - TINY), min=0.0),
                    _up_t(b * (1 + 2 * rel) + under + TINY))
        case O.ReduceLogSumExp():
            spread = torch.clamp(hi.amax(dim=dims, keepdim=keep) - lo.amin(dim=dims, keepdim=keep), max=746.0)
            a, b = f(lo), f(hi)
            w = 2.02 * (spread + n + 16) * EPS
            return _down(a - w - 2 * EPS * a.abs() - TINY), _up_t(b + w + 2 * EPS * b.abs() + TINY)
    return None


# ---- the analysis ------------------------------------------------------------------------------
_STRUCTURAL = (O.Reshape, O.Transpose, O.Slice, O.Gather, O.Tile, O.Concat, O.Pad, O.Max, O.Min,
               O.MaxPool, O.GlobalMaxPool)


def _where(node: Node, op: O.Where, shapes: Mapping[str, tuple[int, ...]], device: str,
           los: list[torch.Tensor], his: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A condition fixed on finite inputs (a mask; IsNaN/IsInf of a finite enclosure): the selection,
    monotone in each branch, applied to the ends. Otherwise (a switch, or a tested enclosure that
    may hold NaN or Inf) each entry is a value of one branch or the other: the hull of both."""
    import torch

    k = op.tested
    tested_finite = all(bool(torch.isfinite(t).all()) for t in (*los[:k], *his[:k]))
    if op.fixed_condition() is not None and tested_finite:
        f = _forward(node, op, shapes, device)
        return f(*los), f(*his)
    branches = dataclasses.replace(node, inputs=node.inputs[k:])
    plain = dataclasses.replace(op, test="", other=None, negate=False)
    f_true = _forward(branches, dataclasses.replace(plain, mask=np.array(True)), shapes, device)
    f_false = _forward(branches, dataclasses.replace(plain, mask=np.array(False)), shapes, device)
    lo = torch.minimum(f_true(*los[k:]), f_false(*los[k:]))
    hi = torch.maximum(f_true(*his[k:]), f_false(*his[k:]))
    return lo, hi


def _node_range(node: Node, shapes: Mapping[str, tuple[int, ...]], device: str,
                los: list[torch.Tensor], his: list[torch.Tensor],
                notes: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The enclosure of one node's computed output from those of its inputs; None: no rule."""
    op = node.op
    if isinstance(op, _STRUCTURAL):
        # copies, embeddings with a constant, max/min (with a constant): monotone in every input,
        # computed exactly, so the map applied to lo and to hi encloses every computed value
        f = _forward(node, op, shapes, device)
        return f(*los), f(*his)
    if isinstance(op, O.Add):
        return los[0] + los[1], his[0] + his[1]  # correctly rounded: monotone
    if isinstance(op, O.Sub):
        return los[0] - his[1], his[0] - los[1]
    if isinstance(op, O.Affine):
        # x * scale + shift: one rounded product (monotone in x, increasing or decreasing with the
        # sign of the scale) and one rounded sum (monotone): the ends' values enclose all

        y_lo, y_hi = los[0], his[0]
        if op.scale is not None:
            sc = _const(op.scale, device)
            y_lo, y_hi = _hull(y_lo * sc, y_hi * sc)
        if op.shift is not None:
            sh = _const(op.shift, device)
            y_lo, y_hi = y_lo + sh, y_hi + sh
        return y_lo, y_hi
    if isinstance(op, O.Mul) and len(node.inputs) == 2 and node.inputs[0] == node.inputs[1]:
        # x * x (a square, as exporters write variances): fl(x * x) is monotone in |x|, so the
        # square of the end nearest 0 (0 when the interval holds it) and of the farthest enclose it
        a, b = los[0], his[0]
        near = (a.clamp(min=0.0) - b.clamp(max=0.0)).abs()  # a > 0: a; b < 0: -b; else 0
        far = a.abs().maximum(b.abs())
        return near * near, far * far
    if isinstance(op, O.Mul | O.Div):
        return _mul_div(op, los, his, notes)
    if isinstance(op, O.MatMul):
        return _matmul(los, his)
    if isinstance(op, O.Softmax):
        return softmax_range(op.axis, los[0], his[0], op.mask)
    if isinstance(op, O.LayerNorm):
        return _layer_norm(op, device, los[0], his[0])
    if isinstance(op, O.Where):
        return _where(node, op, shapes, device, los, his)
    lin = _linear_maps(node, shapes, device)
    if lin is not None:
        f, absf, rel, bias = lin
        return _linear_range(f, absf, los, his, rel, bias)
    f = _forward(node, op, shapes, device)
    if isinstance(op, O.Reduce):
        return _reduce(op, f, los[0], his[0])
    out = _elementwise(op, f, los[0], his[0], notes)
    if out is None:
        return None
    # an unbounded input entry (maybe NaN) gives an unbounded output entry, whatever the rule did
    return _nan_where(_unknown(los[0], his[0]), *out)  # type: ignore[return-value]


def range_analysis(graph: Graph, box: Mapping[str, Interval], *, device: str = "cpu") -> RangeResult:
    """Enclosures of every value of ``graph`` while each input ``name`` ranges over ``box[name]``
    (module docstring); the notes name where unbounded entries arise and the operators without a
    rule. Never raises for an operator: an uncovered one is unbounded and noted."""
    import contextlib

    import torch

    start = time.perf_counter()
    shapes = _shapes(graph)
    lo_env: dict[str, torch.Tensor] = {}
    hi_env: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for spec in graph.inputs:
        if spec.name not in box:
            raise UsageError(f"no interval for the input {spec.name!r}")
        iv = box[spec.name]
        lo = np.asarray(iv.lo, dtype=np.float64)
        hi = np.asarray(iv.hi, dtype=np.float64)
        shape = tuple(shapes.get(spec.name, spec.shape))
        if lo.shape != shape or hi.shape != shape:
            raise UsageError(f"the interval of {spec.name!r} has shape {lo.shape}/{hi.shape}, the input {shape}")
        if np.any(lo > hi):
            raise UsageError(f"the interval of {spec.name!r} has lo > hi")
        t_lo = torch.from_numpy(lo.copy()).to(device)
        t_hi = torch.from_numpy(hi.copy()).to(device)
        bad = ~(torch.isfinite(t_lo) & torch.isfinite(t_hi))
        lo_env[spec.name], hi_env[spec.name] = _nan_where(bad, t_lo, t_hi)
    # cuDNN may pick FFT or Winograd convolutions, whose error is not Higham's gamma_k bound
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.startswith("cuda") else contextlib.nullcontext()
    with torch.no_grad(), no_cudnn:
        for node in graph.nodes:
            los = [lo_env[name] for name in node.inputs]
            his = [hi_env[name] for name in node.inputs]
            node_notes: list[str] = []
            shape = tuple(shapes[node.output])
            try:
                out = _node_range(node, shapes, device, los, his, node_notes)
                if out is not None:
                    out = (out[0].to(torch.float64).expand(shape).contiguous(),
                           out[1].to(torch.float64).expand(shape).contiguous())
            except Exception as exc:  # a rule that fails leaves the value unbounded, never a crash
                raise_allocation_failure(exc)
                out = None
                node_notes.append(f"no enclosure ({type(exc).__name__}: {exc})")
            label = f"node {node.name!r} ({node.op.type.value})"
            no_rule = out is None
            if out is None:
                if not node_notes:
                    node_notes.append("no range rule for this operator")
                nan = torch.full(shape, math.nan, dtype=torch.float64, device=device)
                out = (nan, nan)
            o_lo, o_hi = out
            bad = ~(torch.isfinite(o_lo) & torch.isfinite(o_hi))
            o_lo, o_hi = _nan_where(bad, o_lo, o_hi)
            lo_env[node.output], hi_env[node.output] = o_lo, o_hi
            inherited = any(bool(_unknown(a, b).any()) for a, b in zip(los, his, strict=True))
            if bool(bad.any()) and not inherited:
                node_notes.append(f"{int(bad.sum())} of {bad.numel()} entries unbounded")
            if node_notes and (not inherited or no_rule):
                notes.append(f"{label}: " + "; ".join(node_notes))
    ranges: dict[str, Interval] = {}
    for name in lo_env:
        lo = lo_env[name].cpu().numpy()
        hi = hi_env[name].cpu().numpy()
        unknown = np.isnan(lo) | np.isnan(hi)
        ranges[name] = Interval(lo=np.where(unknown, -np.inf, lo), hi=np.where(unknown, np.inf, hi))
    return RangeResult(ranges=ranges, notes=tuple(notes), seconds=time.perf_counter() - start)


def value_ranges(graph: Graph, box: Mapping[str, Interval], *, device: str = "cpu") -> dict[str, Interval]:
    """Sound interval bounds of every value of ``graph`` (inputs and node outputs) as the float64
    executor computes it, for every input in ``box`` (one Interval per graph input); entries that
    may be infinite or NaN are (-inf, inf). See ``range_analysis`` for the notes."""
    return dict(range_analysis(graph, box, device=device).ranges)


__all__ = ["RangeResult", "range_analysis", "value_ranges", "variance_lower"]
