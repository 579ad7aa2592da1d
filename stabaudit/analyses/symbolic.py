"""Value ranges of convolutional networks by symbolic intervals on receptive fields.

Interval arithmetic (``analyses.ranges``) forgets that the entries of a value come from the same
input: through four convolutions a 1/255 box around an image widens by |W| at each layer, and
nearly every unit of the last layers straddles its kink. Here every value v keeps its dependence
on the input's offset d = x - x0 from the box's centre x0:

    v(x) in A_c d + b  +-  (A_r |d| + h)        entry by entry, for every x = x0 + d in the box,

with coefficient rows A_c, A_r >= 0 on the unit's receptive field (the ``Diag`` and ``Patches``
forms of ``analyses.patch_jacobian``, or dense [units, inputs] after a Flatten) and constants b,
h >= 0 of the value's shape. Its range over the box |d| <= r0 is

    b -+ (h + (|A_c| + A_r) r0),

rounded outward. This is the symbolic-interval domain of ReluVal / Neurify (Wang et al., USENIX
Security 2018; NeurIPS 2018) and of DeepZ with one error term per unit folded into h (Singh et
al., NeurIPS 2018). The rules, each mapping an enclosure of the executor's computed input to one
of its computed output (float64; u = EPS / 2):

- linear y = W v + beta (Conv, Linear): A_c' = fl(W A_c), A_r' = |W| (A_r + rel |A_c|)(1 + 2 rel)
  (|fl(W A_c) - W A_c| <= gamma_k |W||A_c|, Higham 3.5, and |E d| <= |E| |d|); b' = fl(W b + beta),
  h' = |W| h + rel (|W| (|b| + m) + 2 |beta|), rounded up, m the largest |v| over the box: the
  computed b' is within gamma_k (|W||b| + |beta|) of W b + beta, and the executor's y within
  gamma_k (|W||v| + |beta|) of the exact W v + beta. An Affine x * s + t is the same with one term.
- piecewise-linear activations f with a kink at 0 (Relu, LeakyRelu, PRelu, slope a below 0), on
  the input's range [L, U]: f(z) - s z lies between min and max of {0, f(L) - s L, f(U) - s U}
  for any s (f - s z is linear on each side of 0), so f(z) in s z + kappa +- w. A stable unit takes
  its slope (w = 0); an unstable one the chord's slope s = (f(U) - f(L)) / (U - L), which makes
  the band's width the smallest (the DeepZ choice). Then A_c' = fl(s A_c), A_r' = |s| A_r +
  2 EPS |s A_c|, b' = fl(s b + kappa), h' = |s| h + w + 2 EPS (|s b| + |kappa| + max |f|), the last
  term for the rounding of a z and of the constants.
- MaxPool: a window whose candidate k has a lower end at or above every other candidate's upper
  end is that candidate, exactly; otherwise its max lies in [z_k, z_k + g] for the candidate k with
  the largest lower end, g = max_j U_j - L_k >= 0: the candidate's rows, b + g / 2, h + g / 2.
- Add of two values: the sum of the rows and constants (h + 2 EPS |b'| for the rounding of b' and
  the executor's sum). Transpose and Reshape move entries (exact).

A value whose operator has no rule, or whose rows would pass the memory plan, is left to the
interval ranges, and so is every value after it. Each range is intersected with the given
enclosures (an intersection of enclosures is one), and the relaxations use the intersection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses import patch_jacobian as PJ
from stabaudit.analyses.local import (
    _center_radius,
    _down,
    _linear_parts,
    _rel,
    _shapes,
    _single,
    _up_t,
)
from stabaudit.analyses.plan import JACOBIAN_OPS_PER_S, spend
from stabaudit.bounds.base import Interval
from stabaudit.bounds.numerics import EPS, TINY
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    import torch

# largest dense row block kept: [units, inputs] entries per tensor
MAX_DENSE_ENTRIES = 1 << 24


@dataclass(frozen=True, eq=False)
class Dense:
    """Rows [units, inputs] of a value (units in the value's flattened order)."""

    c: torch.Tensor
    r: torch.Tensor

    @property
    def entries(self) -> int:
        return int(self.c.numel())


Rows = PJ.Diag | PJ.Patches | Dense


@dataclass(frozen=True, eq=False)
class Sym:
    """v in rows . d + b +- (|rows| |d| + h), b and h of the value's shape."""

    rows: Rows
    b: torch.Tensor
    h: torch.Tensor


@dataclass(frozen=True, eq=False)
class Choice:
    """A max pool's output is in [z_i, z_i + gap] for the input entry i = ``index`` (flat), entry by
    entry of the output (gap 0: the window's max is that candidate over the whole box)."""

    index: torch.Tensor
    gap: torch.Tensor


def plain_choice(op: O.MaxPool, lo: torch.Tensor, hi: torch.Tensor, out_shape: tuple[int, ...]) -> Choice:
    """A max pool's choice from its input's ranges alone: the candidate with the largest lower end,
    gap max_j u_j - l_k (0 where l_k is at or above every other u_j)."""
    import torch

    from stabaudit.analyses.local import _max_patches

    pl = _max_patches(op, lo, out_shape, -float("inf"))
    pu = _max_patches(op, hi, out_shape, -float("inf"))
    index = torch.arange(lo.numel(), dtype=torch.float64).reshape(lo.shape)
    pi = _max_patches(op, index, out_shape, -1.0)
    best = pl.argmax(dim=2, keepdim=True)
    l_best = pl.gather(2, best)[:, :, 0]
    others = pu.scatter(2, best, -float("inf")).amax(dim=2)
    gap = torch.where(l_best >= others, torch.zeros_like(l_best), _up_t(pu.amax(dim=2) - l_best))
    return Choice(index=pi.gather(2, best)[:, :, 0].long(), gap=gap)


@dataclass(frozen=True)
class SymbolicResult:
    ranges: dict[str, Interval]
    pools: dict[str, Choice]  # by the max pool's output


def _dense(rows: Rows, n_in: int, shape: tuple[int, ...], max_dense: int) -> Dense | None:
    if isinstance(rows, Dense):
        return rows
    n = int(np.prod(shape))
    if n * n_in > max_dense:
        return None
    c, r = PJ.to_dense(rows, n_in, shape)
    return Dense(c=c.reshape(n_in, n).T.contiguous(), r=r.reshape(n_in, n).T.contiguous())


def _spread(rows: Rows, r0: torch.Tensor) -> torch.Tensor:
    """(|A_c| + A_r) r0 per unit (the value's shape for Diag/Patches, flat for Dense), rounded up."""
    import torch

    if isinstance(rows, Dense):
        s = (rows.c.abs() + rows.r) @ r0
        k = rows.c.shape[1]
    elif isinstance(rows, PJ.Diag):
        return _up_t((rows.c.abs() + rows.r) * r0[rows.colmap] * (1 + 2 * EPS))
    else:
        c_in, ph, pw = (int(s) for s in rows.c.shape[3:])
        idx, valid = PJ.columns(rows)
        rp = torch.where(valid, r0[idx], torch.zeros(1, dtype=torch.float64))  # [H, W, C_in, Ph, Pw]
        s = torch.einsum("chwipq,hwipq->chw", rows.c.abs() + rows.r, rp)[None]
        k = c_in * ph * pw
    return _up_t(s * (1 + _rel(k)))


def concretize(sym: Sym, r0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The enclosure [lo, hi] of the value over the box |d| <= r0 (r0: flat, per input entry)."""
    spread = _spread(sym.rows, r0).reshape(sym.b.shape)
    width = _up_t((sym.h + spread) * (1 + 2 * EPS))
    return _down(sym.b - width), _up_t(sym.b + width)


def _scale_rows(rows: Rows, m: torch.Tensor) -> Rows:
    """Rows times an exact per-unit factor m (the value's shape): the product's rounding in A_r."""
    import torch

    if isinstance(rows, Dense):
        c, r = PJ.scaled(rows.c, rows.r, m.reshape(-1, 1), torch.zeros(m.numel(), 1, dtype=torch.float64))
        return Dense(c=c, r=r)
    return PJ.scale(rows, m, torch.zeros_like(m))


def _mag(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return lo.abs().maximum(hi.abs())


def _linear(node: Node, sym: Sym, lo: torch.Tensor, hi: torch.Tensor, shapes: Mapping[str, tuple[int, ...]],
            n_in: int, max_patch: int, max_dense: int) -> Sym | None:
    import torch

    op = node.op
    lin, absmap = _linear_parts(node, shapes)
    beta = _single(node, op, shapes)(torch.zeros_like(sym.b)) if not isinstance(op, O.Affine) else None
    rel = _rel(int(sym.b.numel()))
    rows: Rows | None
    if isinstance(op, O.Conv):
        p = PJ.to_patches(sym.rows) if not isinstance(sym.rows, Dense) else None
        rows = PJ.conv(p, op, shapes[node.output], rel, max_patch) if p is not None else None
    elif isinstance(op, O.Affine):
        if tuple(shapes[node.output]) != tuple(shapes[node.inputs[0]]):
            return None
        scale = lin(torch.ones_like(sym.b))  # x * scale: the scale, exactly
        rows = _scale_rows(sym.rows, scale)
    else:  # Linear
        shape = shapes[node.inputs[0]]
        if int(np.prod(shape[:-1])) != 1:
            return None
        d = _dense(sym.rows, n_in, shape, max_dense)
        if d is None or int(np.prod(shapes[node.output])) * n_in > max_dense:
            return None
        assert isinstance(op, O.Linear)
        w = torch.from_numpy(np.array(op.weight, dtype=np.float64))
        c = w @ d.c
        r = (w.abs() @ (d.r + rel * d.c.abs())) * (1 + 2 * rel) + TINY
        spend(2.0 * c.numel() * w.shape[1] / JACOBIAN_OPS_PER_S)
        rows = Dense(c=c, r=r)
    if rows is None:
        return None
    if isinstance(op, O.Affine):
        s = scale
        t = _single(node, op, shapes)(torch.zeros_like(sym.b))
        b = sym.b * s + t
        err = 2 * EPS * ((s * sym.b).abs() + t.abs() + (s * _mag(lo, hi)).abs() + t.abs())
        h = _up_t((s.abs() * sym.h + err) * (1 + 4 * EPS) + TINY)
        return Sym(rows=rows, b=b, h=h)
    assert beta is not None
    b = lin(sym.b) + beta
    err = rel * (absmap(sym.b.abs() + _mag(lo, hi)) + 2 * beta.abs())
    h = _up_t((absmap(sym.h) + err) * (1 + 2 * rel) + TINY)
    return Sym(rows=rows, b=b, h=h)


def _below_slope(op: O.Op, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    if isinstance(op, O.PRelu):
        a = np.broadcast_to(np.asarray(op.slope, dtype=np.float64), shape)
        return torch.from_numpy(np.array(a, dtype=np.float64))
    alpha = float(op.alpha) if isinstance(op, O.LeakyRelu) else 0.0
    return torch.full(shape, alpha, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class Chord:
    """A piecewise-linear activation on [lo, hi]: its slope ``a`` below 0, f at the ends, the
    chord's slope ``s``, and f(end) - s end at both ends with a bound on the rounding of each
    (``m_lo``, ``m_hi``: each a difference of two rounded products)."""

    a: torch.Tensor
    f_lo: torch.Tensor
    f_hi: torch.Tensor
    s: torch.Tensor
    e_lo: torch.Tensor
    e_hi: torch.Tensor
    m_lo: torch.Tensor
    m_hi: torch.Tensor


def chord(op: O.Op, lo: torch.Tensor, hi: torch.Tensor) -> Chord:
    """The chord of Relu, LeakyRelu or PRelu over [lo, hi] (slope 0 where lo = hi)."""
    import torch

    a = _below_slope(op, tuple(lo.shape))
    f_lo = torch.where(lo >= 0, lo, a * lo)
    f_hi = torch.where(hi >= 0, hi, a * hi)
    s = (f_hi - f_lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return Chord(a=a, f_lo=f_lo, f_hi=f_hi, s=s, e_lo=f_lo - s * lo, e_hi=f_hi - s * hi,
                 m_lo=4 * EPS * ((a * lo).abs() + (s * lo).abs()), m_hi=4 * EPS * ((a * hi).abs() + (s * hi).abs()))


def _kink(op: O.Op, sym: Sym, lo: torch.Tensor, hi: torch.Tensor) -> Sym | None:
    """f(z) in s z + kappa +- w on [lo, hi] (see the module)."""
    import torch

    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return None
    c = chord(op, lo, hi)
    a, f_lo, f_hi = c.a, c.f_lo, c.f_hi
    above, below = lo >= 0, hi <= 0
    s = torch.where(above, torch.ones_like(lo), torch.where(below, a, c.s))
    # on the unstable units (the others have a band of width 0 below) s is the chord's
    m_lo, m_hi = c.m_lo + TINY, c.m_hi + TINY
    zero = torch.zeros_like(lo)
    g_lo = torch.minimum(zero, torch.minimum(c.e_lo - m_lo, c.e_hi - m_hi))
    g_hi = torch.maximum(zero, torch.maximum(c.e_lo + m_lo, c.e_hi + m_hi))
    stable = above | below
    g_lo, g_hi = torch.where(stable, zero, g_lo), torch.where(stable, zero, g_hi)
    kappa, w = _center_radius(g_lo, g_hi)
    rows = _scale_rows(sym.rows, s)
    b = s * sym.b + kappa
    err = 2 * EPS * ((s * sym.b).abs() + kappa.abs() + f_lo.abs().maximum(f_hi.abs()))
    h = _up_t((s.abs() * sym.h + w + err) * (1 + 4 * EPS) + TINY)
    return Sym(rows=rows, b=b, h=h)


def _max_pool(op: O.MaxPool, sym: Sym, lo: torch.Tensor, hi: torch.Tensor, out_shape: tuple[int, ...],
              r0: torch.Tensor, max_patch: int) -> tuple[Sym, Choice] | None:
    """The rule of the module, with g from the candidates' differences: (the output, g)."""
    import torch

    from stabaudit.analyses.local import _max_patches

    if len(op.kernel) != 2 or len(out_shape) != 4 or out_shape[0] != 1:
        return None
    j = PJ.to_patches(sym.rows) if not isinstance(sym.rows, Dense) else None
    if j is None:
        return None
    pl = _max_patches(op, lo, out_shape, -float("inf"))[0]  # [C, K, H', W']
    pu = _max_patches(op, hi, out_shape, -float("inf"))[0]
    pb = _max_patches(op, sym.b, out_shape, 0.0)[0]
    ph_ = _max_patches(op, sym.h, out_shape, 0.0)[0]
    best = pl.argmax(dim=1, keepdim=True)  # [C, 1, H', W']
    l_best = pl.gather(1, best)
    top = pu.amax(dim=1, keepdim=True)
    kh_n, kw_n = op.kernel
    c, hh, ww = (int(s) for s in j.c.shape[:3])
    pads = (*op.pads[:2], 0, 0)
    win = PJ._window(j, (kh_n, kw_n), op.strides, op.dilations, pads, out_shape, c, max_patch)
    if win is None:
        return None
    (sh, sw), (dh, dw), (top_p, left), (ho, wo), (p_h, p_w), (s_h, s_w), (nph, npw), (need_h, need_w) = win
    rest = j.c.shape[3:]
    padded = []
    for t in (j.c, j.r):
        full = torch.zeros(c, need_h, need_w, *rest, dtype=torch.float64)
        full[:, top_p: top_p + hh, left: left + ww] = t
        padded.append(full)
    stride, offset = (s_h * sh, s_w * sw), (j.offset[0] - top_p * s_h, j.offset[1] - left * s_w)

    def embedded(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate k's rows in the output's window (zero outside its own)."""
        kh, kw = divmod(k, kw_n)
        oh, ow = kh * dh * s_h, kw * dw * s_w
        outs = []
        for full in padded:
            sl = full[:, kh * dh: kh * dh + sh * (ho - 1) + 1: sh, kw * dw: kw * dw + sw * (wo - 1) + 1: sw]
            out = torch.zeros(c, ho, wo, int(rest[0]), nph, npw, dtype=torch.float64)
            out[..., oh: oh + p_h, ow: ow + p_w] = sl
            outs.append(out)
        return outs[0], outs[1]

    kk = kh_n * kw_n
    sel_c = torch.zeros(c, ho, wo, int(rest[0]), nph, npw, dtype=torch.float64)
    sel_r = torch.zeros_like(sel_c)
    for k in range(kk):
        mask = (best[:, 0] == k)[..., None, None, None]
        e_c, e_r = embedded(k)
        sel_c = torch.where(mask, e_c, sel_c)
        sel_r = torch.where(mask, e_r, sel_r)
    b_best, h_best = pb.gather(1, best)[:, 0], ph_.gather(1, best)[:, 0]
    # g: the largest upper end of z_k - z_best over the box, from the rows of the difference (the
    # candidates' common dependence on the input cancels); the plain U_k - L_best where smaller
    g = torch.zeros(c, ho, wo, dtype=torch.float64)
    for k in range(kk):
        e_c, e_r = embedded(k)
        d_c = e_c - sel_c
        d_r = _up_t(e_r + sel_r + 2 * EPS * d_c.abs())
        d = PJ.Patches(c=d_c, r=d_r, stride=stride, offset=offset, colmap=j.colmap)
        d_b = pb[:, k] - b_best
        d_h = ph_[:, k] + h_best + 2 * EPS * d_b.abs()
        spread = _spread(d, r0)[0]
        up = _up_t(d_b + _up_t((d_h + spread) * (1 + 2 * EPS)))
        plain = _up_t(pu[:, k] - l_best[:, 0])
        up = torch.minimum(up, plain)
        real = torch.isfinite(pu[:, k]) & (best[:, 0] != k)
        g = torch.where(real, torch.maximum(g, up), g)
    g = torch.minimum(g.clamp(min=0.0), _up_t(top - l_best)[:, 0])
    spend(8.0 * sel_c.numel() * kk / JACOBIAN_OPS_PER_S)
    index = torch.arange(lo.numel(), dtype=torch.float64).reshape(lo.shape)
    chosen = _max_patches(op, index, out_shape, -1.0)[0].gather(1, best)[:, 0].long()
    b = b_best + g / 2
    h = _up_t((h_best + g / 2 + 2 * EPS * b.abs()) * (1 + 2 * EPS))
    rows = PJ.Patches(c=sel_c, r=sel_r, stride=stride, offset=offset, colmap=j.colmap)
    return Sym(rows=rows, b=b[None], h=h[None]), Choice(index=chosen[None], gap=g[None])


def _add(a: Sym, b: Sym, n_in: int, shape: tuple[int, ...], max_dense: int) -> Sym | None:
    if a.b.shape != b.b.shape:
        return None
    rows: Rows | None = None
    pa = PJ.to_patches(a.rows) if not isinstance(a.rows, Dense) else None
    pb = PJ.to_patches(b.rows) if not isinstance(b.rows, Dense) else None
    if pa is not None and pb is not None:
        rows = PJ.add(pa, pb, 1.0)
    if rows is None:
        da, db = _dense(a.rows, n_in, shape, max_dense), _dense(b.rows, n_in, shape, max_dense)
        if da is None or db is None:
            return None
        c = da.c + db.c
        rows = Dense(c=c, r=_up_t(da.r + db.r + 2 * EPS * c.abs()))
    total = a.b + b.b
    h = _up_t((a.h + b.h + 4 * EPS * (a.b.abs() + b.b.abs())) * (1 + 2 * EPS) + TINY)
    return Sym(rows=rows, b=total, h=h)


def _move(node: Node, sym: Sym, shapes: Mapping[str, tuple[int, ...]], n_in: int, max_dense: int) -> Sym | None:
    """Transpose / Reshape: entries move with their rows."""
    import torch

    f = _single(node, node.op, shapes)
    if isinstance(sym.rows, PJ.Diag):
        return Sym(rows=PJ.permute(sym.rows, f), b=f(sym.b), h=f(sym.h))
    in_shape = shapes[node.inputs[0]]
    d = _dense(sym.rows, n_in, in_shape, max_dense)
    if d is None:
        return None
    order = f(torch.arange(int(np.prod(in_shape)), dtype=torch.float64).reshape(in_shape)).reshape(-1).long()
    return Sym(rows=Dense(c=d.c[order], r=d.r[order]), b=f(sym.b), h=f(sym.h))


def symbolic_ranges(graph: Graph, box: Mapping[str, Interval], ranges: Mapping[str, Interval] | None = None, *,
                    max_patch_entries: int = PJ.MAX_PATCH_ENTRIES,
                    max_dense_entries: int = MAX_DENSE_ENTRIES) -> SymbolicResult | None:
    """The ranges of the values the rules reach from the graph's one input over ``box``,
    intersected with ``ranges`` where given, and each max pool's choice; None for a graph with
    several inputs or an infinite box, or where no node is reached."""
    import torch

    if len(graph.inputs) != 1:
        return None
    spec = graph.inputs[0]
    iv = box.get(spec.name)
    if iv is None:
        return None
    lo0 = torch.from_numpy(np.asarray(iv.lo, dtype=np.float64).reshape(spec.shape).copy())
    hi0 = torch.from_numpy(np.asarray(iv.hi, dtype=np.float64).reshape(spec.shape).copy())
    if not (torch.isfinite(lo0).all() and torch.isfinite(hi0).all()):
        return None
    shapes = _shapes(graph)
    x0, r0 = _center_radius(lo0, hi0)
    n_in = int(x0.numel())
    r0_flat = r0.reshape(-1)
    env: dict[str, Sym] = {spec.name: Sym(rows=PJ.identity(tuple(spec.shape)), b=x0, h=torch.zeros_like(x0))}
    bounds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {spec.name: (lo0, hi0)}

    def given(name: str, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ranges is None or name not in ranges:
            return lo, hi
        g_lo = torch.from_numpy(np.array(ranges[name].lo, dtype=np.float64)).reshape(lo.shape)
        g_hi = torch.from_numpy(np.array(ranges[name].hi, dtype=np.float64)).reshape(hi.shape)
        return torch.maximum(lo, g_lo), torch.minimum(hi, g_hi)

    reached = False
    pools: dict[str, Choice] = {}
    for node in graph.nodes:
        if not all(name in env for name in node.inputs):
            continue
        check_deadline()
        op = node.op
        src = node.inputs[0]
        lo, hi = bounds[src]
        out: Sym | None = None
        with torch.no_grad():
            if isinstance(op, (O.Conv, O.Linear, O.Affine)) and len(node.inputs) == 1:
                out = _linear(node, env[src], lo, hi, shapes, n_in, max_patch_entries, max_dense_entries)
            elif isinstance(op, (O.Relu, O.LeakyRelu, O.PRelu)):
                out = _kink(op, env[src], lo, hi)
            elif isinstance(op, O.MaxPool):
                pooled = _max_pool(op, env[src], lo, hi, shapes[node.output], r0_flat, max_patch_entries)
                if pooled is not None:
                    out, pools[node.output] = pooled
            elif isinstance(op, O.Add) and len(node.inputs) == 2:
                out = _add(env[node.inputs[0]], env[node.inputs[1]], n_in, shapes[node.output], max_dense_entries)
            elif isinstance(op, (O.Transpose, O.Reshape)):
                out = _move(node, env[src], shapes, n_in, max_dense_entries)
            if out is None:
                continue
            env[node.output] = out
            reached = True
            bounds[node.output] = given(node.output, *concretize(out, r0_flat))
    if not reached:
        return None
    found = {name: Interval(lo=lo.numpy().copy(), hi=hi.numpy().copy()) for name, (lo, hi) in bounds.items()}
    return SymbolicResult(ranges=found, pools=pools)


__all__ = ["MAX_DENSE_ENTRIES", "Choice", "Chord", "chord", "plain_choice", "SymbolicResult", "Sym", "concretize", "symbolic_ranges"]
