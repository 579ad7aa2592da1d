"""Certified local Lipschitz bounds over eps-balls (SA302 clarke.local): IBP + interval Clarke Jacobians.

For each sample x0 and the ball B = {x : ||x - x0|| <= eps} (linf, or l2 enclosed in its linf box):
1. interval bound propagation (IBP) encloses every value's range over B, in float64 with outward
   rounding (Higham's bound |fl(W c + b) - (W c + b)| <= gamma_k (|W||c| + |b|), gamma_k = k u/(1-k u)),
   intersected with the mean-value form v(x0) + [Jc +- Jr](x - x0) of step 3 (and, for an l2
   ball, with eps ||w_i||_2 on a linear map that reads the input);
2. each activation unit gets the interval of its slopes over its pre-activation interval [l, u]:
   the hull of sigma' on [l, u] and of the Clarke derivative at any kink inside it (ReLU: [1,1] if
   l > 0, [0,0] if u < 0, else [0,1]); the mean value theorem (smooth) or the secant of a monotone
   piecewise-linear map gives sigma(a) - sigma(b) = s (a - b) with s in that interval for a, b in [l, u];
3. an interval Jacobian (center Jc, radius Jr >= 0) with |G - Jc| <= Jr elementwise for every
   product G = W_L S_{L-1} ... S_1 W_1 of the layers' Jacobians with slopes in those intervals is
   propagated through the graph. Every secant f(x) - f(y) = G (x - y), x, y in B, and every element
   of the Clarke Jacobian at a point of B (a convex hull of limits of such products; the box is
   closed and convex, Clarke's chain rule inclusion) lies in it. Then
   ||G||_2 <= ||Jc||_2 + ||Jr||_2 (triangle inequality) and ||G||_2 <= || |Jc| + Jr ||_2 (for
   |G| <= M elementwise, ||G||_2 <= || |G| ||_2 <= ||M||_2: Perron-Frobenius monotonicity).
4. fallback (always computed, and the only one for large graphs): the global composition with each
   activation's constant replaced by its local max |slope| (an element-wise map whose slopes on the
   reachable range are <= s is s-Lipschitz there).
5. slope vertices (few unstable units only): G is affine in each unit's slope, so ||G||_2 is convex
   along each slope and its sup over the slope box is attained at a vertex; the max over the
   2^k vertices of the interval bound with those slopes fixed is certified and much tighter.
The reported bound is the minimum of the certified candidates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses import patch_jacobian as PJ
from stabaudit.analyses.plan import spend
from stabaudit.bounds.base import Bound, BoundSettings, Guarantee, Interval, OpBound, RuleContext
from stabaudit.bounds.numerics import EPS, TINY, spectral_norm_dense
from stabaudit.errors import UnsupportedOperatorError, UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec

if TYPE_CHECKING:
    import torch

METHOD_INTERVAL = "interval-jacobian"
METHOD_LOCAL_PRODUCT = "local-product"
METHOD_VERTICES = "slope-vertices"
# slope-vertex enumeration: at most this many (vertices x Jacobian entries) per sample
MAX_VERTEX_WORK = 1 << 20
MAX_VERTEX_UNITS = 6
# the interval Jacobian keeps two float64 matrices [value size, input size] per live value
MAX_JACOBIAN_ENTRIES = 1 << 24

_PIECEWISE = (O.Relu, O.LeakyRelu, O.PRelu, O.Clip, O.HardSigmoid)
_SUPPORTED = (
    O.Linear, O.Conv, O.ConvTranspose, O.Affine, O.Add, O.Sub, O.Relu, O.LeakyRelu, O.PRelu,
    O.Sigmoid, O.Tanh, O.Softplus, O.Elu, O.HardSigmoid, O.Clip, O.MaxPool, O.AvgPool,
    O.GlobalAvgPool, O.GlobalMaxPool, O.Reshape, O.Transpose, O.Pad, O.Concat, O.ReduceSum, O.ReduceMean,
    O.Slice, O.Gather, O.Tile, O.Quantize, O.Softmax,
)


class Norm(str, Enum):
    LINF = "linf"
    L2 = "l2"


@dataclass(frozen=True, kw_only=True)
class UnitCounts:
    """Activation units of one layer over the ball: slope fixed at the active / inactive value, or not.

    Smooth activations (sigmoid, tanh, softplus, ELU off its kink) have no kink: every unit whose
    interval holds no kink counts as active.
    """

    layer: str
    op: str
    active: int
    inactive: int
    unstable: int


@dataclass(frozen=True, kw_only=True)
class SampleBound:
    """One sample: ``upper`` bounds ||G||_2 for every Clarke Jacobian element G at every point of the
    ball (so the L2 -> L2 Lipschitz constant of the graph on the ball); ``jac_abs_upper`` (interval
    path only) bounds |G| elementwise, [output size, input size]."""

    index: int
    upper: float
    method: str
    candidates: Mapping[str, float]
    counts: tuple[UnitCounts, ...]
    jac_abs_upper: np.ndarray | None = None
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class LocalResult:
    eps: float
    norm: Norm
    samples: tuple[SampleBound, ...]
    upper: Bound  # max over samples (UPPER)
    method: str
    seconds: float
    notes: tuple[str, ...] = ()


# ---- rounding helpers --------------------------------------------------------------------------
def _rel(k: int) -> float:
    """gamma_{k+4} rounded up: the relative error of a length-k dot product plus a few operations."""
    return 1.01 * (k + 4) * EPS


def _down(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nextafter(t, torch.full_like(t, -math.inf))


def _up_t(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nextafter(t, torch.full_like(t, math.inf))


def _center_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c, r with [lo, hi] inside [c - r, c + r] (r rounded up: nextafter of the larger half-width)."""
    import torch

    c = (lo + hi) / 2
    r = _up_t(torch.maximum(hi - c, c - lo))
    return c, r


# ---- per-node linear maps ----------------------------------------------------------------------
def _single(node: Node, op: O.Op, shapes: Mapping[str, tuple[int, ...]]) -> Callable[..., torch.Tensor]:
    """The node's forward with ``op`` in its place, as f(*inputs) in float64."""
    import torch

    from stabaudit.ir.executor import Executor

    specs = tuple(TensorSpec(name=name, shape=shapes[name]) for name in node.inputs)
    graph = Graph(inputs=specs, outputs=(node.output,), nodes=(dataclasses.replace(node, op=op),))
    ex = Executor(graph, dtype=torch.float64)

    def f(*args: torch.Tensor) -> torch.Tensor:
        return ex(*args)[0]

    return f


def _linear_parts(node: Node, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(lin, absmap): the bias-free linear part of an affine node and the same map with |weights|."""
    op = node.op
    lin_op: O.Op
    abs_op: O.Op
    match op:
        case O.Linear(weight=w) | O.Conv(weight=w) | O.ConvTranspose(weight=w):
            lin_op = dataclasses.replace(op, bias=None)  # type: ignore[type-var]
            abs_op = dataclasses.replace(op, weight=np.abs(np.asarray(w, dtype=np.float64)), bias=None)  # type: ignore[type-var]
        case O.Affine(scale=sc):
            lin_op = dataclasses.replace(op, shift=None)
            abs_op = dataclasses.replace(
                op, scale=None if sc is None else np.abs(np.asarray(sc, dtype=np.float64)), shift=None
            )
        case O.Pad():
            lin_op = abs_op = dataclasses.replace(op, value=0.0)
        case _:  # pools and sums/means (nonnegative weights) and structural maps (0/1 weights: Slice, Gather, Tile)
            lin_op = abs_op = op
    return _single(node, lin_op, shapes), _single(node, abs_op, shapes)


# ---- slope intervals ---------------------------------------------------------------------------
def _kinked(lo: torch.Tensor, hi: torch.Tensor, k: float,
            s_below: torch.Tensor | float, s_above: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slopes of a map with slope s_below left of the kink k and s_above right of it.

    Returns (slope_lo, slope_hi, stable_above, stable_below); strict inequalities, so a unit at
    its kink is unstable with the Clarke hull [min, max] of the two slopes.
    """
    import torch

    below = torch.as_tensor(s_below, dtype=torch.float64).expand_as(lo)
    above = torch.as_tensor(s_above, dtype=torch.float64).expand_as(lo)
    act = lo > k
    ina = hi < k
    s_lo = torch.where(act, above, torch.where(ina, below, torch.minimum(below, above)))
    s_hi = torch.where(act, above, torch.where(ina, below, torch.maximum(below, above)))
    return s_lo, s_hi, act, ina


def _smooth_margin(s_lo: torch.Tensor, s_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen slopes computed by libm-grade kernels (a few ulps) by 16 ulps relative + TINY."""
    return s_lo - 16 * EPS * s_lo.abs() - TINY, s_hi + 16 * EPS * s_hi.abs() + TINY


def _slopes(op: O.Op, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """(slope_lo, slope_hi, active, inactive, unstable) of an element-wise activation on [lo, hi]."""
    import torch

    n = lo.numel()

    def counts(act: torch.Tensor, ina: torch.Tensor) -> tuple[int, int, int]:
        a, i = int(act.sum()), int(ina.sum())
        return a, i, n - a - i

    match op:
        case O.Relu():
            s_lo, s_hi, act, ina = _kinked(lo, hi, 0.0, 0.0, 1.0)
            return s_lo, s_hi, *counts(act, ina)
        case O.LeakyRelu(alpha=alpha):
            s_lo, s_hi, act, ina = _kinked(lo, hi, 0.0, float(alpha), 1.0)
            return s_lo, s_hi, *counts(act, ina)
        case O.PRelu(slope=slope):
            sl = torch.from_numpy(np.array(slope, dtype=np.float64))
            s_lo, s_hi, act, ina = _kinked(lo, hi, 0.0, torch.broadcast_to(sl, lo.shape), 1.0)
            return s_lo, s_hi, *counts(act, ina)
        case O.Clip(min=cmin, max=cmax):
            a = lo > (cmin if cmin is not None else -math.inf)
            a &= hi < (cmax if cmax is not None else math.inf)
            i = torch.zeros_like(a)
            if cmin is not None:
                i |= hi < cmin
            if cmax is not None:
                i |= lo > cmax
            one, zero = torch.ones_like(lo), torch.zeros_like(lo)
            s_lo = torch.where(a, one, zero)
            s_hi = torch.where(i, zero, one)
            return s_lo, s_hi, *counts(a, i)
        case O.Quantize(smooth=True, qmin=qmin, qmax=qmax, integer=integer) as q:
            # a quantization's smooth part: the clip to [s (qmin - zp), s (qmax - zp)] (then / s + zp
            # for the integers): slope 1 (1 / s) strictly inside, 0 strictly outside, the hull at the ends
            q_steps, q_zeros, q_shape = q.steps(lo.dim())
            st = torch.tensor(q_steps, dtype=torch.float64).reshape(q_shape)
            zt = torch.tensor(q_zeros, dtype=torch.float64).reshape(q_shape)
            q_lo, q_hi = st * (qmin - zt), st * (qmax - zt)
            inside = (lo > q_lo) & (hi < q_hi)
            outside = (hi < q_lo) | (lo > q_hi)
            q_slope = torch.broadcast_to(_up_t(1.0 / st) if integer else torch.ones_like(st), lo.shape)
            q_none = torch.zeros_like(lo)
            return (torch.where(inside, q_slope, q_none), torch.where(outside, q_none, q_slope),
                    *counts(inside, outside))
        case O.HardSigmoid(alpha=alpha, beta=beta):
            # z = alpha x + beta; slope alpha where 0 < z < 1, 0 outside; breakpoints at z = 0, 1
            z1, z2 = lo * alpha + beta, hi * alpha + beta
            zl, zh = torch.minimum(z1, z2), torch.maximum(z1, z2)
            # rounding of z: 4 ulps relative + TINY, enough for one product and one sum
            zl, zh = zl - 4 * EPS * zl.abs() - TINY, zh + 4 * EPS * zh.abs() + TINY
            a = (zl > 0) & (zh < 1)
            i = (zh < 0) | (zl > 1)
            al = torch.full_like(lo, float(alpha))
            zero = torch.zeros_like(lo)
            s_lo = torch.where(a, al, torch.where(i, zero, torch.minimum(al, zero)))
            s_hi = torch.where(a, al, torch.where(i, zero, torch.maximum(al, zero)))
            return s_lo, s_hi, *counts(a, i)
        case O.Sigmoid() | O.Tanh():
            # sigma' is even-unimodal (increasing on x < 0, decreasing on x > 0), peak at 0:
            # min at an endpoint, max at the endpoint nearer 0 or the peak when 0 is in [lo, hi]
            if isinstance(op, O.Sigmoid):
                def d(x: torch.Tensor) -> torch.Tensor:
                    s = torch.sigmoid(x)
                    return s * (1 - s)
                peak = 0.25
            else:
                def d(x: torch.Tensor) -> torch.Tensor:
                    return 1 - torch.tanh(x) ** 2
                peak = 1.0
            dl, dh = d(lo), d(hi)
            s_lo = torch.minimum(dl, dh)
            s_hi = torch.where((lo <= 0) & (hi >= 0), torch.full_like(lo, peak), torch.maximum(dl, dh))
            s_lo, s_hi = _smooth_margin(s_lo, s_hi)
            s_lo = s_lo.clamp(min=0.0)
            s_hi = s_hi.clamp(max=peak)  # the exact peak bounds every value
            return s_lo, s_hi, n, 0, 0
        case O.Softplus(beta=beta):
            # derivative sigmoid(beta x): monotone in x (increasing for beta > 0)
            d1, d2 = torch.sigmoid(lo * beta), torch.sigmoid(hi * beta)
            s_lo, s_hi = _smooth_margin(torch.minimum(d1, d2), torch.maximum(d1, d2))
            return s_lo.clamp(min=0.0), s_hi.clamp(max=1.0), n, 0, 0
        case O.Elu(alpha=alpha) if alpha >= 0:
            # derivative 1 for x > 0, alpha e^x (increasing, <= alpha) for x < 0; Clarke hull at 0
            a_elu = float(alpha)
            el, eh = a_elu * torch.exp(torch.clamp(lo, max=0.0)), a_elu * torch.exp(torch.clamp(hi, max=0.0))
            el, eh = _smooth_margin(el, eh)
            act, ina = lo > 0, hi < 0
            one = torch.ones_like(lo)
            s_lo = torch.where(act, one, torch.where(ina, el, torch.minimum(el, one)))
            s_hi = torch.where(act, one, torch.where(ina, eh, torch.maximum(torch.full_like(lo, a_elu), one)))
            return s_lo.clamp(min=0.0), s_hi, *counts(act, ina)
    raise UnsupportedOperatorError({op.type.value: 1})


def _activation_range(op: O.Op, fwd: Callable[..., torch.Tensor], lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation's range on [lo, hi]: hull of f(lo), f(hi) and f(kink) when the kink is inside
    (every supported map is monotone on each side of its only kink); outward by 16 ulps + TINY."""
    import torch

    a, b = fwd(lo), fwd(hi)
    out_lo, out_hi = torch.minimum(a, b), torch.maximum(a, b)
    if isinstance(op, (O.LeakyRelu, O.PRelu)):
        inside = (lo < 0) & (hi > 0)  # f(0) = 0
        out_lo = torch.where(inside, torch.minimum(out_lo, torch.zeros_like(lo)), out_lo)
        out_hi = torch.where(inside, torch.maximum(out_hi, torch.zeros_like(lo)), out_hi)
    if isinstance(op, (O.Relu, O.LeakyRelu, O.PRelu, O.Clip)):
        return _down(out_lo), _up_t(out_hi)  # exact maps up to one product
    if isinstance(op, O.Softplus):
        # torch returns x itself where beta x > 20: the exact value is larger by
        # log1p(exp(-beta x)) / beta <= exp(-20) / beta < 2.1e-9 / beta (log1p(t) <= t)
        out_hi = out_hi + 2.1e-9 / op.beta
    return out_lo - 16 * EPS * out_lo.abs() - TINY, out_hi + 16 * EPS * out_hi.abs() + TINY


# ---- max pooling: Clarke derivative of max -----------------------------------------------------
def _max_patches(op: O.Op, t: torch.Tensor, out_shape: tuple[int, ...], fill: float) -> torch.Tensor:
    """Windows of a [B, C, *spatial] tensor as [B, C, K, *out_spatial]; padding filled with ``fill``."""
    import torch.nn.functional as F

    from stabaudit.ir.executor import _torch_pads

    b, c = t.shape[0], t.shape[1]
    if isinstance(op, O.GlobalMaxPool):
        return t.reshape(b, c, -1, *([1] * (t.dim() - 2)))
    assert isinstance(op, O.MaxPool)
    if len(op.kernel) != 2:
        raise UnsupportedOperatorError({f"MaxPool{len(op.kernel)}d (local bounds)": 1})
    pads = list(op.pads)
    pads[2] += op.strides[0]  # room for ceil_mode windows; extra windows are cut below
    pads[3] += op.strides[1]
    xp = F.pad(t, _torch_pads(tuple(pads)), value=fill)
    cols = F.unfold(xp, op.kernel, dilation=op.dilations, stride=op.strides)
    k = op.kernel[0] * op.kernel[1]
    oh = (xp.shape[2] - op.dilations[0] * (op.kernel[0] - 1) - 1) // op.strides[0] + 1
    ow = (xp.shape[3] - op.dilations[1] * (op.kernel[1] - 1) - 1) // op.strides[1] + 1
    patches = cols.reshape(b, c, k, oh, ow)
    return patches[..., : out_shape[-2], : out_shape[-1]]


def _max_candidates(op: O.Op, lo: torch.Tensor, hi: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """The entries of each window that can be its max over the box: those whose upper end reaches
    the window's largest lower end ([B, C, K, *out], K in unfold order)."""
    pl = _max_patches(op, lo, out_shape, -math.inf)
    pu = _max_patches(op, hi, out_shape, -math.inf)
    return pu >= pl.amax(dim=2, keepdim=True)


def _max_jacobian(op: O.Op, lo: torch.Tensor, hi: torch.Tensor, jc: torch.Tensor, jr: torch.Tensor,
                  out_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval Jacobian of a max over windows: every Clarke element's row is a convex combination
    of the rows of the candidates (entries whose upper end reaches the window's largest lower end),
    so it lies in [min over candidates of (Jc - Jr), max of (Jc + Jr)] (hull of a box family)."""
    import torch

    n_in = jc.shape[0]
    cand = _max_candidates(op, lo, hi, out_shape)
    shp = jc.shape[1:]
    jc2 = jc.reshape(n_in * shp[0], *shp[1:])
    jr2 = jr.reshape(n_in * shp[0], *shp[1:])
    lo_p = _max_patches(op, _down(jc2 - jr2), out_shape, 0.0)
    hi_p = _max_patches(op, _up_t(jc2 + jr2), out_shape, 0.0)
    lo_p = lo_p.reshape(n_in, shp[0], *lo_p.shape[1:])
    hi_p = hi_p.reshape(n_in, shp[0], *hi_p.shape[1:])
    inf = torch.tensor(math.inf, dtype=torch.float64)
    g_lo = torch.where(cand, lo_p, inf).amin(dim=3)
    g_hi = torch.where(cand, hi_p, -inf).amax(dim=3)
    c, r = _center_radius(g_lo, g_hi)
    return c.reshape(n_in, *out_shape), r.reshape(n_in, *out_shape)


# ---- local product fallback -------------------------------------------------------------------
def _folded_linear(graph: Graph, shapes: Mapping[str, tuple[int, ...]],
                   slopes: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   act_bounds: dict[str, OpBound]) -> dict[str, OpBound]:
    """Local bounds of dense Linear nodes with the neighbouring activations' slopes folded in.

    Rows: when the Linear's only consumer is an element-wise activation with |slope_i| <= s_i on the
    ball, S W = D diag(s) W with ||D||_2 <= 1, so ||S W||_2 <= ||diag(s) W||_2 and the activation's
    own constant becomes 1 (it is counted here; ``act_bounds`` is updated in place).
    Columns: input units whose slope interval is [0, 0] are constant on the ball, so the columns of
    W that read them never move the output and are dropped (dead units removed).
    The matrix A = fl(diag(s) W) differs from the exact one by |E| <= EPS |A| (one rounded product
    per entry), so ||exact||_2 <= ||A||_2 + EPS ||A||_F (||E||_2 <= ||E||_F).
    """
    consumers = graph.consumers()
    out: dict[str, OpBound] = {}
    for node in graph.nodes:
        if not isinstance(node.op, O.Linear) or len(shapes[node.output]) == 0:
            continue
        w = np.asarray(node.op.weight, dtype=np.float64)
        n_out, n_in = w.shape
        if int(np.prod(shapes[node.output])) != n_out:
            continue  # batched or multi-row inputs: the rule's global bound stays
        a = w
        src = node.inputs[0]
        if src in slopes and slopes[src][0].numel() == n_in:
            s_lo, s_hi = slopes[src]
            live = ((s_lo != 0) | (s_hi != 0)).reshape(-1).numpy()
            a = a[:, live]
        users = consumers.get(node.output, [])
        folded = len(users) == 1 and users[0].output in slopes and node.output not in graph.outputs
        if folded:
            s_lo, s_hi = slopes[users[0].output]
            s = torch_max_abs(s_lo, s_hi)
            if s.size != n_out:
                folded = False
            else:
                a = a * s[:, None]
        up, _ = spectral_norm_dense(a)
        frob = float(np.sqrt(np.sum(a * a))) * (1 + a.size * EPS) + TINY
        value = math.nextafter(up + EPS * frob * (1 + 4 * EPS), math.inf)
        out[node.output] = OpBound(upper=Bound(value=value, guarantee=Guarantee.UPPER, method="local-folded"))
        if folded:
            act_bounds[users[0].output] = OpBound(upper=Bound(value=1.0, guarantee=Guarantee.UPPER, method="folded"))
    return out


def torch_max_abs(s_lo: torch.Tensor, s_hi: torch.Tensor) -> np.ndarray:
    """max(|s_lo|, |s_hi|) per unit, flattened, as float64 numpy."""
    import torch

    return torch.maximum(s_lo.abs(), s_hi.abs()).reshape(-1).numpy()


def _l2_row_norms(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Upper bounds of ||w_i||_2 per output entry of the linear maps reading a graph input directly
    (single-input graphs): sqrt of the map with squared weights applied to ones, rounded up."""
    import torch

    if len(graph.inputs) != 1:
        return {}
    out: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        op = node.op
        if node.inputs != (graph.inputs[0].name,) or not isinstance(op, (O.Linear, O.Conv, O.ConvTranspose)):
            continue
        sq = dataclasses.replace(op, weight=np.square(np.asarray(op.weight, dtype=np.float64)), bias=None)  # type: ignore[type-var]
        k = int(np.prod(shapes[node.inputs[0]]))
        ones = torch.ones(shapes[node.inputs[0]], dtype=torch.float64)
        with torch.no_grad():
            rows = _single(node, sq, shapes)(ones)
        # each square rounded (1 ulp), each sum gamma_k: (1 + rel) covers both; sqrt one more ulp
        out[node.output] = _up_t(torch.sqrt(rows * (1 + 2 * _rel(k)) + TINY))
    return out


# ---- the analysis ------------------------------------------------------------------------------
def _shapes(graph: Graph) -> Mapping[str, tuple[int, ...]]:
    if all(node.output in graph.shapes for node in graph.nodes):
        return graph.shapes
    from stabaudit.ir.executor import with_shapes

    return with_shapes(graph).shapes


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedOperatorError naming every operator (with its count) that the local bounds
    have no rule for; a cheap test on the node types, so callers can learn it before they prepare
    anything for ``local_bounds``."""
    bad: dict[str, int] = {}
    for node in graph.nodes:
        op = node.op
        if not isinstance(op, _SUPPORTED) or (isinstance(op, O.Elu) and op.alpha < 0) or (
            isinstance(op, O.Softplus) and not op.beta > 0
        ) or (isinstance(op, O.Quantize) and not (op.smooth and all(v > 0 for v in op.scale))):
            bad[op.type.value] = bad.get(op.type.value, 0) + 1
    if bad:
        raise UnsupportedOperatorError(bad)


def _static_bounds_of(node: Node, shapes: Mapping[str, tuple[int, ...]]) -> OpBound:
    """The global bound (bounds.RULES) of one node."""
    from stabaudit.bounds import bound_node

    ctx = RuleContext(
        input_shapes=tuple(shapes[name] for name in node.inputs),
        output_shape=shapes[node.output],
        settings=BoundSettings(),
    )
    return bound_node(node, ctx)


def jacobian_form(graph: Graph, shapes: Mapping[str, tuple[int, ...]], max_dense: int = MAX_JACOBIAN_ENTRIES,
                  max_patch: int = PJ.MAX_PATCH_ENTRIES) -> str | None:
    """How the interval Jacobian fits: "dense" (every value's [n_in, *shape] within ``max_dense``
    entries), "patches" (too large for that: one image-like input carries it on receptive fields,
    each patch tensor within ``max_patch``), or None (neither: no interval Jacobian)."""
    n_in = sum(int(np.prod(spec.shape)) for spec in graph.inputs)
    if n_in * max((int(np.prod(shapes[n.output])) for n in graph.nodes), default=1) <= max_dense:
        return "dense"
    return "patches" if PJ.reaches_outputs(graph, shapes, max_dense, max_patch) else None


def dense_cost(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """The counted seconds of one dense interval Jacobian (one ball): every node carries its centre
    and radius for each of the n_in input entries, so a convolution or dense layer costs
    2 n_in (its multiply-accumulates), a dense layer's at ``plan.LARGE_OP_SPEEDUP`` times the rate
    where n_in rows make it a large matrix product (``plan.LARGE_OP_MACS``), and every other node
    4 n_in per output entry, at ``plan.JACOBIAN_OPS_PER_S`` (measured clock over count on the
    2-core machine: 0.99 on a CIFAR ResNet-2B, 0.65 on ResNet-4B, 0.43 on the OVAL21 base CNN,
    1.35 on its deep CNN, 0.2 on a 256x6 MLP)."""
    from stabaudit.analyses.plan import JACOBIAN_OPS_PER_S, LARGE_OP_MACS, LARGE_OP_SPEEDUP

    n_in = sum(int(np.prod(spec.shape)) for spec in graph.inputs)
    ops = 0.0
    for node in graph.nodes:
        out = float(np.prod(shapes[node.output]))
        op = node.op
        if isinstance(op, (O.Conv, O.Linear)):
            macs = n_in * out * float(np.prod(np.asarray(op.weight).shape[1:]))
            if isinstance(op, O.Linear) and macs >= LARGE_OP_MACS:
                macs /= LARGE_OP_SPEEDUP
            ops += 2.0 * macs
        else:
            ops += 4.0 * n_in * out
    return ops / JACOBIAN_OPS_PER_S


def jacobian_cost(graph: Graph, shapes: Mapping[str, tuple[int, ...]], max_dense: int = MAX_JACOBIAN_ENTRIES,
                  max_patch: int = PJ.MAX_PATCH_ENTRIES) -> float:
    """The counted seconds of one interval Jacobian (one ball) in the form ``jacobian_form``
    chooses: ``dense_cost``, ``patch_jacobian.patch_cost``, or 0 where none fits (it is not run)."""
    form = jacobian_form(graph, shapes, max_dense, max_patch)
    if form == "dense":
        return dense_cost(graph, shapes)
    if form == "patches":
        return PJ.patch_cost(graph, dict(shapes), max_dense, max_patch)
    return 0.0


def local_bounds(graph: Graph, samples: np.ndarray, *, eps: float, norm: str = "linf",
                 max_jacobian_entries: int = MAX_JACOBIAN_ENTRIES,
                 op_bounds: Mapping[str, OpBound] | None = None,
                 max_vertex_work: int = MAX_VERTEX_WORK,
                 known: Sequence[Mapping[str, Interval] | None] | None = None,
                 max_patch_entries: int = PJ.MAX_PATCH_ENTRIES) -> LocalResult:
    """Certified local Lipschitz bounds (L2 -> L2) of ``graph`` over the ``norm``-ball of radius
    ``eps`` around each sample (``samples``: [N, ...] with prod(...) = the stacked input size).

    ``op_bounds``: the global per-operator bounds already computed (keyed by node output, as for
    ``compose``; some nodes may be missing); the non-activation ones are reused by the
    local-product fallback, the missing ones computed. ``known``: per
    sample, enclosures of values over its linf box (x0 -/+ eps rounded outward) to intersect in.
    Where the dense interval Jacobian would pass ``max_jacobian_entries``, a graph with one input
    gets it on receptive fields (``analyses.patch_jacobian``), each patch tensor at most
    ``max_patch_entries`` (``patch_entries`` plans it from a memory budget).
    """

    from stabaudit.analyses.composition import compose

    start = time.perf_counter()
    try:
        norm_e = Norm(norm)
    except ValueError as exc:
        raise UsageError(f"norm must be one of {[n.value for n in Norm]}, got {norm!r}") from exc
    if not (math.isfinite(eps) and eps >= 0):
        raise UsageError(f"eps must be finite and >= 0, got {eps}")
    check_supported(graph)
    shapes = _shapes(graph)
    sizes = [int(np.prod(s.shape)) for s in graph.inputs]
    n_in = sum(sizes)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 0 or x.size % max(n_in, 1) or x.size == 0:
        raise UsageError(f"samples of shape {x.shape} do not split into inputs of {n_in} entries")
    x = x.reshape(-1, n_in)
    if not np.all(np.isfinite(x)):
        raise UsageError("samples contain NaN or Inf")
    # the global bounds given are reused; only the missing ones are computed (a conv certificate
    # of a 224x224 network costs about a second)
    given = op_bounds or {}
    static = {n.output: given[n.output] if n.output in given else _static_bounds_of(n, shapes)
              for n in graph.nodes if n.op.type not in O.ACTIVATIONS}
    form = jacobian_form(graph, shapes, max_jacobian_entries, max_patch_entries)
    structured = form == "patches"
    use_jac = form is not None
    fwd: dict[str, Callable[..., torch.Tensor]] = {}
    parts: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {}
    for node in graph.nodes:
        fwd[node.output] = _single(node, node.op, shapes)
        if isinstance(node.op, (O.Linear, O.Conv, O.ConvTranspose, O.Affine, O.AvgPool, O.GlobalAvgPool,
                                O.Reshape, O.Transpose, O.Pad, O.Concat, O.ReduceSum, O.ReduceMean, O.Slice, O.Gather,
                                O.Tile)):
            parts[node.output] = _linear_parts(node, shapes)
    l2_rows = _l2_row_norms(graph, shapes) if norm_e is Norm.L2 else {}
    results: list[SampleBound] = []
    # the ball's linf box; an l2 ball of radius eps lies in it, so both are enclosed soundly
    radius = float(np.nextafter(eps, math.inf)) if eps > 0 else 0.0
    planned = dense_cost(graph, shapes) if use_jac and not structured else 0.0  # patches count as they run
    for index, x0 in enumerate(x):
        t0 = time.perf_counter()
        spend(planned)
        results.append(_one_sample(graph, shapes, fwd, parts, static, x0, sizes, radius, use_jac, index, compose, l2_rows,
                                   norm_e is Norm.L2, max_vertex_work, known[index] if known is not None else None,
                                   structured=structured, max_dense=max_jacobian_entries,
                                   max_patch=max_patch_entries))
        results[-1] = dataclasses.replace(results[-1], seconds=time.perf_counter() - t0)
    top = max(r.upper for r in results)
    methods = sorted({r.method for r in results})
    return LocalResult(
        eps=float(eps),
        norm=norm_e,
        samples=tuple(results),
        upper=Bound(value=top, guarantee=Guarantee.UPPER, method="+".join(methods)),
        method="+".join(methods),
        seconds=time.perf_counter() - start,
        notes=_jacobian_notes(results, structured, max_jacobian_entries),
    )


class _JacStore:
    """The interval Jacobians of the values so far: dense ([n_in, *shape] center and radius) or, in
    receptive-field mode, structured (``analyses.patch_jacobian``), converted to dense on demand
    when that fits (``max_dense`` entries); a value without either has none (given up)."""

    def __init__(self, graph: Graph, shapes: Mapping[str, tuple[int, ...]], n_in: int, max_dense: int) -> None:
        self.shapes, self.n_in, self.max_dense = shapes, n_in, max_dense
        self.jc: dict[str, torch.Tensor] = {}
        self.jr: dict[str, torch.Tensor] = {}
        self.st: dict[str, PJ.Structured] = {}
        self.outputs = set(graph.outputs)
        self.uses: dict[str, int] = {}
        for node in graph.nodes:
            for name in node.inputs:
                self.uses[name] = self.uses.get(name, 0) + 1

    def has(self, name: str) -> bool:
        return name in self.jc or name in self.st

    def dense(self, name: str) -> bool:
        """Make ``name``'s Jacobian dense; False where it has none or it would not fit."""
        if name in self.jc:
            return True
        if name not in self.st or self.n_in * int(np.prod(self.shapes[name])) > self.max_dense:
            return False
        self.jc[name], self.jr[name] = PJ.to_dense(self.st.pop(name), self.n_in, self.shapes[name])
        return True

    def all_dense(self, names: Sequence[str], out: str) -> bool:
        """Make the inputs dense, where they and the output ``out`` fit in dense form."""
        if self.n_in * int(np.prod(self.shapes[out])) > self.max_dense:
            return False
        return all([self.dense(name) for name in names])

    def release(self, node: Node) -> None:
        """Forget the inputs' Jacobians once their last reader is done (structured mode: memory)."""
        for name in node.inputs:
            self.uses[name] -= 1
            if self.uses[name] == 0 and name not in self.outputs and name in self.st:
                del self.st[name]

    def rows(self, name: str, l2: bool) -> torch.Tensor | None:
        """Per unit, the l1 (l2) norm of its row of |Jc| + Jr, rounded up; None without one."""
        import torch

        if name in self.st:
            return PJ.rows(self.st[name], l2)
        if name not in self.jc:
            return None
        m = (self.jc[name].abs() + self.jr[name]).reshape(self.n_in, -1)
        k_mv = self.n_in + 4
        if l2:
            return torch.sqrt((m * m).sum(dim=0) * (1 + 2 * _rel(k_mv)) + TINY)
        return m.sum(dim=0) * (1 + _rel(k_mv))


def _structured_linear(node: Node, op: O.Op, j: PJ.Structured, lin: Callable[..., torch.Tensor],
                       shapes: Mapping[str, tuple[int, ...]], rel: float, max_patch: int) -> PJ.Structured | None:
    """A linear node on a structured Jacobian, where a rule applies (None: use the dense form)."""
    import torch

    out_shape, in_shape = shapes[node.output], shapes[node.inputs[0]]
    if isinstance(op, O.Conv):
        p = PJ.to_patches(j)
        return PJ.conv(p, op, out_shape, rel, max_patch) if p is not None else None
    if isinstance(op, O.Affine) and tuple(out_shape) == tuple(in_shape):
        s = lin(torch.ones(in_shape, dtype=torch.float64))  # x * scale: the scale, exactly
        return PJ.scale(j, s, torch.zeros_like(s))
    if isinstance(op, (O.Transpose, O.Reshape)) and isinstance(j, PJ.Diag):
        return PJ.permute(j, lin)
    return None


def softmax_jacobian_enclosure(axis: int, p_lo: torch.Tensor, p_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, radius) [M, K, K] of the Jacobians diag(p) - p p^T of a softmax over ``axis`` whose
    outputs lie in [p_lo, p_hi], one K x K block per row of the axis (rows: outputs); see
    ``_softmax_jacobian``."""
    import torch

    pl, ph = p_lo.movedim(axis, -1), p_hi.movedim(axis, -1)
    k = int(pl.shape[-1])
    pl, ph = pl.reshape(-1, k), ph.reshape(-1, k)
    f_lo = torch.minimum(pl - pl * pl, ph - ph * ph)
    f_hi = torch.where((pl <= 0.5) & (ph >= 0.5), torch.full_like(pl, 0.25), torch.maximum(pl - pl * pl, ph - ph * ph))
    s_lo = -(ph[:, :, None] * ph[:, None, :])
    s_hi = -(pl[:, :, None] * pl[:, None, :])
    eye = torch.eye(k, dtype=torch.bool)
    s_lo = torch.where(eye, torch.diag_embed(f_lo), s_lo)
    s_hi = torch.where(eye, torch.diag_embed(f_hi), s_hi)
    s_lo, s_hi = s_lo - 4 * EPS * s_lo.abs() - TINY, s_hi + 4 * EPS * s_hi.abs() + TINY
    return _center_radius(s_lo, s_hi)


def _softmax_jacobian(axis: int, p_lo: torch.Tensor, p_hi: torch.Tensor, jc: torch.Tensor,
                      jr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval Jacobian through a softmax with outputs in [p_lo, p_hi]: its Jacobian is
    S = diag(p) - p p^T, S_ii = p_i - p_i^2 (concave: extremes at the ends, 1/4 at p_i = 1/2) and
    S_ij = -p_i p_j in [-hi_i hi_j, -lo_i lo_j]; every secant matrix of the softmax is an average of
    such S (convex), so it lies in [Sc - Sr, Sc + Sr]. Then S J - Sc Jc = Sc E + D Jc + D E with
    |D| <= Sr, |E| <= Jr, and the computed Sc Jc is within gamma_K |Sc||Jc| (K: the axis length)."""
    import torch

    sc, sr = softmax_jacobian_enclosure(axis, p_lo, p_hi)  # [M, K, K], rows: outputs
    k = int(sc.shape[-1])
    n_in = jc.shape[0]
    moved = jc.movedim(axis + 1, -1)
    shape = moved.shape
    c3, r3 = moved.reshape(n_in, -1, k), jr.movedim(axis + 1, -1).reshape(n_in, -1, k)
    rel = _rel(k)
    new_c = torch.einsum("nmj,mij->nmi", c3, sc)
    new_r = (torch.einsum("nmj,mij->nmi", r3 + rel * c3.abs(), sc.abs())
             + torch.einsum("nmj,mij->nmi", c3.abs() + r3, sr)) * (1 + 2 * rel) + TINY
    return new_c.reshape(shape).movedim(-1, axis + 1), new_r.reshape(shape).movedim(-1, axis + 1)


def _jacobian_notes(results: Sequence[SampleBound], structured: bool, max_dense: int) -> tuple[str, ...]:
    """The interval Jacobian's form, or why there was none."""
    if any(METHOD_INTERVAL in r.candidates for r in results):
        return ("interval Jacobian on receptive fields (patches)",) if structured else ()
    return (f"interval Jacobian skipped: above {max_dense} entries, on receptive fields too",)


def _propagate(graph: Graph, shapes: Mapping[str, tuple[int, ...]], fwd: Mapping[str, Callable[..., torch.Tensor]],
               parts: Mapping[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]],
               x0: np.ndarray, sizes: list[int], radius: float, use_jac: bool,
               l2_rows: Mapping[str, torch.Tensor],
               point: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None, l2: bool,
               ranges: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
               vertex: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
               known: Mapping[str, Interval] | None = None, structured: bool = False,
               max_dense: int = MAX_JACOBIAN_ENTRIES, max_patch: int = PJ.MAX_PATCH_ENTRIES) -> _Envs:
    """IBP (and the interval Jacobian when ``use_jac``) over the box x0 +- radius.

    With ``point`` (enclosures of every value at x0) each range is intersected with its mean-value
    form: v(x) - v(x0) = G (x - x0) with G in [Jc - Jr, Jc + Jr] (the secant enclosure), so
    |v_i(x) - v_i(x0)| <= sum_j (|Jc| + Jr)_ij |x_j - x0_j| <= radius * row sum (linf; Hoelder), or
    <= radius * ||row||_2 (l2; Cauchy-Schwarz).
    With ``ranges`` (the enclosures of an earlier run) those replace the computed ones, and with
    ``vertex`` (activation output -> (mask, slope)) the masked units' slopes are fixed at ``slope``.
    ``known``: enclosures of values over the same box from elsewhere (``analyses.crown``), each
    intersected into its computed range (an intersection of enclosures is one).
    ``structured`` (one input): the Jacobians start in the receptive-field form of
    ``analyses.patch_jacobian`` and become dense only where a rule needs it and ``max_dense``
    allows (each patch tensor at most ``max_patch`` entries); the graph outputs are made dense at
    the end where they fit.
    """
    import torch

    n_in = int(sum(sizes))
    lo_env: dict[str, torch.Tensor] = {}
    hi_env: dict[str, torch.Tensor] = {}
    js = _JacStore(graph, shapes, n_in, max_dense)
    jc_env, jr_env = js.jc, js.jr
    centers: dict[str, torch.Tensor] = {}
    offset = 0
    # the input's Jacobian (the identity), only when the interval Jacobian runs: n_in^2 entries
    eye = torch.eye(n_in, dtype=torch.float64) if use_jac and not structured else None
    for spec, size in zip(graph.inputs, sizes, strict=True):
        c = torch.from_numpy(x0[offset: offset + size].copy()).reshape(spec.shape)
        # x0 -/+ radius rounded outward
        lo_env[spec.name], hi_env[spec.name] = _down(c - radius), _up_t(c + radius)
        centers[spec.name] = c
        if use_jac and structured:
            js.st[spec.name] = PJ.identity(tuple(spec.shape))
        elif use_jac:
            assert eye is not None
            jc_env[spec.name] = eye[:, offset: offset + size].reshape(n_in, *spec.shape).clone()
            jr_env[spec.name] = torch.zeros(n_in, *spec.shape, dtype=torch.float64)
        offset += size
    counts: list[UnitCounts] = []
    act_bounds: dict[str, OpBound] = {}
    slope_env: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for node in graph.nodes:
            op, out = node.op, node.output
            los = [lo_env[name] for name in node.inputs]
            his = [hi_env[name] for name in node.inputs]
            k = sum(int(t.numel()) for t in los)
            rel = _rel(k)
            jac = use_jac and all(js.has(name) for name in node.inputs)
            if out in parts:
                lin, absmap = parts[out]
                if ranges is None:
                    cr = [_center_radius(a, b) for a, b in zip(los, his, strict=True)]
                    yc = fwd[out](*[c for c, _ in cr])
                    bias = fwd[out](*[torch.zeros_like(c) for c, _ in cr]).abs()
                    # |fl(W c + b) - (W c + b)| <= gamma (|W||c| + |b|) (Higham 3.5); |W(x - c)| <= |W| r
                    yr = absmap(*[r + rel * c.abs() for c, r in cr]) * (1 + 2 * rel) + rel * bias + TINY
                    if out in l2_rows:
                        # l2 ball: sup_{||d||_2 <= eps} |w_i . d| = eps ||w_i||_2 (Cauchy-Schwarz, attained)
                        # around c: the ball around x0 lies in the ball of radius eps + ||c - x0||_2
                        # around c (triangle inequality); the computed distance is rounded up by gamma_n
                        (c_in, _), x_in = cr[0], centers[node.inputs[0]]
                        dist = float(torch.linalg.vector_norm(c_in - x_in)) * (1 + _rel(c_in.numel())) + TINY
                        r_ball = (radius + dist) * (1 + 4 * EPS)
                        r_l2 = absmap(*[rel * c.abs() for c, _ in cr]) * (1 + 2 * rel) + rel * bias + TINY
                        r_l2 = r_l2 + l2_rows[out] * r_ball * (1 + 4 * EPS)
                        yr = torch.minimum(yr, r_l2)
                    lo_env[out], hi_env[out] = _down(yc - yr), _up_t(yc + yr)
                if jac:
                    src = node.inputs[0]
                    found = (_structured_linear(node, op, js.st[src], lin, shapes, rel, max_patch)
                             if len(node.inputs) == 1 and src in js.st else None)
                    if found is not None:
                        js.st[out] = found
                    elif js.all_dense(node.inputs, out):
                        jcs = [jc_env[name] for name in node.inputs]
                        jrs = [jr_env[name] for name in node.inputs]
                        jc_env[out], jr_env[out] = _jac_linear(op, lin, absmap, jcs, jrs, rel)
            elif isinstance(op, (O.Add, O.Sub)):
                sign = 1.0 if isinstance(op, O.Add) else -1.0
                # exact sums of the enclosures, rounded outward (broadcasting as numpy)
                if isinstance(op, O.Add):
                    lo_env[out], hi_env[out] = _down(los[0] + los[1]), _up_t(his[0] + his[1])
                else:
                    lo_env[out], hi_env[out] = _down(los[0] - his[1]), _up_t(his[0] - los[1])
                if jac:
                    a, b = node.inputs
                    pa, pb = PJ.to_patches(js.st.get(a)), PJ.to_patches(js.st.get(b))
                    summed = PJ.add(pa, pb, sign) if pa is not None and pb is not None else None
                    if summed is not None:
                        js.st[out] = summed
                    elif js.all_dense(node.inputs, out):
                        jc = jc_env[a] + sign * jc_env[b]
                        jc_env[out] = jc
                        jr_env[out] = _up_t(jr_env[a] + jr_env[b] + 2 * EPS * jc.abs())
            elif isinstance(op, (O.MaxPool, O.GlobalMaxPool)):
                lo_env[out], hi_env[out] = fwd[out](los[0]), fwd[out](his[0])  # monotone, exact
                if jac:
                    src = node.inputs[0]
                    p = PJ.to_patches(js.st.get(src))
                    pooled = (PJ.max_pool(p, op, _max_candidates(op, los[0], his[0], shapes[out]), shapes[out], max_patch)
                              if isinstance(op, O.MaxPool) and p is not None else None)
                    if pooled is not None:
                        js.st[out] = pooled
                    elif js.dense(src):
                        jc_env[out], jr_env[out] = _max_jacobian(
                            op, los[0], his[0], jc_env[src], jr_env[src], shapes[out]
                        )
            elif isinstance(op, O.Softmax):
                from stabaudit.analyses.ranges import softmax_range  # ranges imports this module

                axis = op.axis % len(shapes[out])
                # a mask's dropped entries have p = 0: J = diag(p) - p p^T is 0 on their rows and columns
                lo_env[out], hi_env[out] = softmax_range(axis, los[0], his[0], op.mask)
                act_bounds[out] = _static_bounds_of(node, shapes)
                if jac and js.dense(node.inputs[0]):
                    jc_env[out], jr_env[out] = _softmax_jacobian(
                        axis, lo_env[out], hi_env[out], jc_env[node.inputs[0]], jr_env[node.inputs[0]]
                    )
            else:  # element-wise activation
                lo_env[out], hi_env[out] = _activation_range(op, fwd[out], los[0], his[0])
                s_lo, s_hi, n_act, n_ina, n_uns = _slopes(op, los[0], his[0])
                if vertex is not None and out in vertex:
                    mask, value = vertex[out]
                    s_lo, s_hi = torch.where(mask, value, s_lo), torch.where(mask, value, s_hi)
                counts.append(UnitCounts(layer=node.name, op=op.type.value, active=n_act, inactive=n_ina, unstable=n_uns))
                slope_env[out] = (s_lo, s_hi)
                gain = float(torch.maximum(s_lo.abs(), s_hi.abs()).max()) if s_lo.numel() else 0.0
                act_bounds[out] = OpBound(upper=Bound(value=gain, guarantee=Guarantee.UPPER, method="local-slope"))
                if jac:
                    m, r = _center_radius(s_lo, s_hi)
                    src = node.inputs[0]
                    if src in js.st:
                        js.st[out] = PJ.scale(js.st[src], m, r)
                    else:
                        jc_env[out], jr_env[out] = PJ.scaled(jc_env[src], jr_env[src], m, r)
            if structured:
                js.release(node)
            if ranges is not None:
                lo_env[out], hi_env[out] = ranges[0][out], ranges[1][out]
            elif point is not None and js.has(out):
                row = js.rows(out, l2)
                assert row is not None
                rad = _up_t(row * (radius * (1 + 4 * EPS))).reshape(lo_env[out].shape)
                p_lo, p_hi = point[out]
                lo_env[out] = torch.maximum(lo_env[out], _down(p_lo - rad))
                hi_env[out] = torch.minimum(hi_env[out], _up_t(p_hi + rad))
            if ranges is None and known is not None and out in known:
                k_lo = torch.from_numpy(np.asarray(known[out].lo, dtype=np.float64)).reshape(lo_env[out].shape)
                k_hi = torch.from_numpy(np.asarray(known[out].hi, dtype=np.float64)).reshape(hi_env[out].shape)
                lo_env[out] = torch.maximum(lo_env[out], k_lo)
                hi_env[out] = torch.minimum(hi_env[out], k_hi)
        if structured:
            for name in graph.outputs:
                js.dense(name)
    return _Envs(lo=lo_env, hi=hi_env, jc=jc_env, jr=jr_env, counts=counts, act_bounds=act_bounds, slopes=slope_env)


def _jac_linear(op: O.Op, lin: Callable[..., torch.Tensor], absmap: Callable[..., torch.Tensor],
                jcs: list[torch.Tensor], jrs: list[torch.Tensor], rel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval Jacobian through a linear node: Jc' = W Jc, Jr' = |W| (Jr + rel |Jc|) (1 + 2 rel)
    (|fl(W Jc) - W Jc| <= gamma_k |W||Jc|, Higham 3.5; |W E| <= |W| Jr for |E| <= Jr)."""
    from torch.func import vmap

    # Linear acts on the last axis and Affine broadcasts from the right: both take the column
    # axis as one more leading axis; the others are mapped over it
    direct = isinstance(op, (O.Linear, O.Affine))
    f, g = (lin, absmap) if direct else (vmap(lin), vmap(absmap))
    jc = f(*jcs)
    jr = g(*[r + rel * c.abs() for c, r in zip(jcs, jrs, strict=True)]) * (1 + 2 * rel) + TINY
    return jc, jr


@dataclass(kw_only=True)
class _Envs:
    lo: dict[str, torch.Tensor]
    hi: dict[str, torch.Tensor]
    jc: dict[str, torch.Tensor]
    jr: dict[str, torch.Tensor]
    counts: list[UnitCounts]
    act_bounds: dict[str, OpBound]
    slopes: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _norm_bound(jc_env: Mapping[str, torch.Tensor], jr_env: Mapping[str, torch.Tensor], outputs: tuple[str, ...],
                n_in: int) -> tuple[float, float, np.ndarray]:
    """(||Jc||_2 + ||Jr||_2, || |Jc| + Jr ||_2, |Jc| + Jr) of the stacked outputs, rounded up."""
    import torch

    jc_mat = torch.cat([jc_env[name].reshape(n_in, -1) for name in outputs], dim=1).T.numpy()
    jr_mat = torch.cat([jr_env[name].reshape(n_in, -1) for name in outputs], dim=1).T.numpy()
    jac_abs = (np.abs(jc_mat) + jr_mat) * (1 + 2 * EPS)  # rounded up: one sum, one product
    a_up, _ = spectral_norm_dense(jc_mat)
    b_up, _ = spectral_norm_dense(jr_mat)
    m_up, _ = spectral_norm_dense(jac_abs)
    return math.nextafter(a_up + b_up, math.inf), m_up, jac_abs


def _vertex_bound(graph: Graph, shapes: Mapping[str, tuple[int, ...]], fwd: Mapping[str, Callable[..., torch.Tensor]],
                  parts: Mapping[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]],
                  x0: np.ndarray, sizes: list[int], radius: float, e: _Envs, max_work: int) -> float | None:
    """max over the vertices of the unstable units' slope box of the interval-Jacobian bound.

    G is affine in each unit's slope s_j (the others fixed), so ||G||_2 is convex along each
    coordinate, and its sup over the box of slopes is attained at a vertex (induction over the
    coordinates); the remaining freedom (max-pool selections) stays enclosed in each vertex run.
    None when there is nothing to enumerate or too many vertices.
    """
    import torch

    units: list[tuple[str, torch.Tensor]] = []
    total = 0
    for name, (s_lo, s_hi) in e.slopes.items():
        wide = s_lo != s_hi
        total += int(wide.sum())
        units.append((name, wide))
    n_in = int(sum(sizes))
    entries = sum(int(t.numel()) for t in e.jc.values())
    if total == 0 or total > MAX_VERTEX_UNITS or (2 ** total) * max(entries, 1) > max_work:
        return None
    flat: list[tuple[str, int]] = [
        (name, int(i)) for name, wide in units for i in torch.nonzero(wide.reshape(-1)).reshape(-1)
    ]
    best = 0.0
    for bits in range(2 ** total):
        vertex: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, wide in units:
            s_lo, s_hi = e.slopes[name]
            vertex[name] = (wide, s_lo.clone(memory_format=torch.contiguous_format))
        for j, (name, i) in enumerate(flat):
            if bits >> j & 1:
                vertex[name][1].view(-1)[i] = e.slopes[name][1].reshape(-1)[i]
        v = _propagate(graph, shapes, fwd, parts, x0, sizes, radius, True, {}, None, False,
                       ranges=(e.lo, e.hi), vertex=vertex)
        a, b, _ = _norm_bound(v.jc, v.jr, graph.outputs, n_in)
        best = max(best, min(a, b))
    return best


def _one_sample(graph: Graph, shapes: Mapping[str, tuple[int, ...]], fwd: Mapping[str, Callable[..., torch.Tensor]],
                parts: Mapping[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]],
                static: Mapping[str, OpBound], x0: np.ndarray, sizes: list[int], radius: float,
                use_jac: bool, index: int, compose: Callable[..., object],
                l2_rows: Mapping[str, torch.Tensor], l2: bool, max_vertex_work: int,
                known: Mapping[str, Interval] | None = None, *, structured: bool = False,
                max_dense: int = MAX_JACOBIAN_ENTRIES, max_patch: int = PJ.MAX_PATCH_ENTRIES) -> SampleBound:
    import torch

    n_in = int(sum(sizes))
    point = None
    if use_jac and radius > 0:
        # certified enclosures of every value AT x0 (IBP of the point), for the mean-value form
        p = _propagate(graph, shapes, fwd, parts, x0, sizes, 0.0, False, {}, None, False)
        point = {name: (p.lo[name], p.hi[name]) for name in p.lo}
    e = _propagate(graph, shapes, fwd, parts, x0, sizes, radius, use_jac, l2_rows, point, l2, known=known,
                   structured=structured, max_dense=max_dense, max_patch=max_patch)
    jc_env, jr_env, counts, act_bounds, slope_env = e.jc, e.jr, e.counts, e.act_bounds, e.slopes
    with torch.no_grad():
        candidates: dict[str, float] = {}
        if use_jac and not structured:
            vertices = _vertex_bound(graph, shapes, fwd, parts, x0, sizes, radius, e, max_vertex_work)
            if vertices is not None:
                candidates[METHOD_VERTICES] = vertices
        # the folded Linear bounds replace their activations' constants by 1 (in act_bounds): both
        # must be read after the fold, or a slope < 1 would be counted twice
        folded = _folded_linear(graph, shapes, slope_env, act_bounds)
        comp = compose(graph, {**static, **act_bounds, **folded})
        candidates[METHOD_LOCAL_PRODUCT] = float(comp.upper.value)  # type: ignore[attr-defined]
        jac_abs: np.ndarray | None = None
        if use_jac and all(name in jc_env for name in graph.outputs):
            a_up, m_up, jac_abs = _norm_bound(jc_env, jr_env, graph.outputs, n_in)
            candidates[METHOD_INTERVAL] = a_up
            candidates[METHOD_INTERVAL + "-abs"] = m_up
    candidates = {name: (math.inf if math.isnan(v) else v) for name, v in candidates.items()}
    method = min(candidates, key=lambda name: candidates[name])
    value = candidates[method]
    return SampleBound(
        index=index,
        upper=value,
        method=METHOD_INTERVAL if method.startswith(METHOD_INTERVAL) else method,
        candidates=candidates,
        counts=tuple(counts),
        jac_abs_upper=jac_abs,
    )


__all__ = ["LocalResult", "Norm", "SampleBound", "UnitCounts", "local_bounds"]
