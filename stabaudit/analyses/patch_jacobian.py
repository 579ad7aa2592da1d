"""Interval Jacobians of convolutional networks on their receptive fields (patches).

The interval Jacobian of ``analyses.local`` keeps, for every value v, two dense matrices
[input size, value size]: for a 48x48x3 image and a 32x46x46 feature map that is 470 million
entries, so large-input CNNs went without it. A unit of a convolutional feature map depends only
on the input pixels of its receptive field, a P x P window that moves by the network's cumulative
stride S, so the same enclosure fits in [C, H, W, C_in, P, P] (the form of Boopathy et al.,
CNN-Cert, AAAI 2019, and of auto_LiRPA's patches mode, here carried forward from the input):

    J[c, h, w, ci, p, q] = d v[c, h, w] / d u[ci, h S + p + O, w S + q + O]

with u the value read by the first convolution and O its offset (minus the padding seen so far).
Entries at coordinates outside u are zero by construction. Two more forms:
- ``Diag``: a value that is an element-wise function of the graph's input and permutations of it
  (the input itself, a per-channel normalisation, an NHWC -> NCHW Transpose): v[e] depends on
  input column colmap[e] only, with derivative in [d_c - d_r, d_c + d_r].
- ``Patches``: the form above, with ``colmap`` [C_in, H_in, W_in] naming the graph-input column of
  each coordinate of u.

The rules are those of the dense interval Jacobian, applied to the same numbers (so the same
rounding argument holds entry by entry): a convolution is a sum over its C_in/groups x K_h x K_w
taps, each tap a matrix product with the window shifted by the tap's offset times S
(|fl(W Jc) - W Jc| <= gamma_k |W||Jc|, Higham 3.5, whatever the order of the sum); a max pool is
the hull over each window's candidates of the shifted windows (zero where a candidate does not
reach); element-wise maps scale rows. What the rules do not cover is converted to the dense form
(``to_dense``) when that fits, and given up otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stabaudit.analyses.plan import JACOBIAN_OPS_PER_S, spend
from stabaudit.bounds.numerics import EPS, TINY
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph

if TYPE_CHECKING:
    import torch

# largest patch tensor kept (entries; two float64 tensors of this size per live value)
MAX_PATCH_ENTRIES = 1 << 25
# bytes per entry of the largest patch tensor at a rule's peak: the centre and radius out, the
# padded input, the radius source and a tap's product (about 8 float64 tensors of that size)
PEAK_BYTES_PER_ENTRY = 64


def patch_entries(memory_left: int) -> int:
    """The largest patch tensor a memory budget with ``memory_left`` bytes free affords."""
    return max(0, min(MAX_PATCH_ENTRIES, memory_left // PEAK_BYTES_PER_ENTRY))


def _up(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nextafter(t, torch.full_like(t, float("inf")))


def _down(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nextafter(t, torch.full_like(t, -float("inf")))


@dataclass(frozen=True, eq=False)
class Diag:
    """v[e] = g_e(x[colmap[e]]) with g_e' in [c - r, c + r]; c, r, colmap of the value's shape."""

    c: torch.Tensor
    r: torch.Tensor
    colmap: torch.Tensor  # int64, the value's shape

    @property
    def entries(self) -> int:
        return int(self.c.numel())


@dataclass(frozen=True, eq=False)
class Patches:
    """J[c, h, w, ci, p, q] (see the module); ``colmap`` [C_in, H_in, W_in] gives the graph-input
    column of each coordinate of u."""

    c: torch.Tensor
    r: torch.Tensor
    stride: tuple[int, int]
    offset: tuple[int, int]
    colmap: torch.Tensor

    @property
    def entries(self) -> int:
        return int(self.c.numel())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.c.shape[4]), int(self.c.shape[5])


Structured = Diag | Patches


def identity(shape: tuple[int, ...]) -> Diag:
    """The graph input's own Jacobian (one input)."""
    import torch

    n = 1
    for d in shape:
        n *= int(d)
    return Diag(c=torch.ones(shape, dtype=torch.float64), r=torch.zeros(shape, dtype=torch.float64),
                colmap=torch.arange(n, dtype=torch.int64).reshape(shape))


def to_patches(d: Structured | None) -> Patches | None:
    """A [1, C, H, W] Diag as patches of size 1 (u: the value itself); patches as they are; None
    for None or a Diag of another shape."""
    import torch

    if d is None or isinstance(d, Patches):
        return d
    if d.c.dim() != 4 or d.c.shape[0] != 1:
        return None

    def embed(t: torch.Tensor) -> torch.Tensor:
        # [1, C, H, W] -> [C, H, W, C, 1, 1] with t on the channel diagonal
        return torch.diag_embed(t[0].permute(1, 2, 0)).permute(2, 0, 1, 3)[..., None, None].contiguous()

    return Patches(c=embed(d.c), r=embed(d.r), stride=(1, 1), offset=(0, 0), colmap=d.colmap[0])


def rows(j: Structured, l2: bool) -> torch.Tensor:
    """Per unit (flattened in the value's order): the l1 (or l2) norm of its row of |Jc| + Jr,
    rounded up (a sum of k nonnegative terms: relative gamma_k)."""
    import torch

    if isinstance(j, Diag):
        return ((j.c.abs() + j.r) * (1 + 2 * EPS)).reshape(-1)  # one entry per row
    m = (j.c.abs() + j.r).reshape(j.c.shape[0] * j.c.shape[1] * j.c.shape[2], -1)
    k = m.shape[1] + 8
    rel = 1.01 * (k + 4) * EPS
    if l2:
        return torch.sqrt((m * m).sum(dim=1) * (1 + 2 * rel) + TINY) * (1 + 2 * EPS)
    return m.sum(dim=1) * (1 + rel)


def columns(j: Patches) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, valid), each [H, W, C_in, Ph, Pw]: the graph-input column of every patch coordinate,
    idx[h, w, ci, p, q] = colmap[ci, h S + p + O, w S + q + O], and whether that coordinate lies
    inside u (idx is 0 where it does not)."""
    import torch

    _, h, w, c_in, ph, pw = (int(s) for s in j.c.shape)
    _, h_in, w_in = (int(s) for s in j.colmap.shape)
    hin = torch.arange(h)[:, None] * j.stride[0] + torch.arange(ph)[None, :] + j.offset[0]  # [H, Ph]
    win = torch.arange(w)[:, None] * j.stride[1] + torch.arange(pw)[None, :] + j.offset[1]  # [W, Pw]
    vh, vw = (hin >= 0) & (hin < h_in), (win >= 0) & (win < w_in)
    hc, wc = hin.clamp(0, h_in - 1), win.clamp(0, w_in - 1)
    idx = j.colmap[torch.arange(c_in)[None, None, :, None, None], hc[:, None, None, :, None], wc[None, :, None, None, :]]
    valid = (vh[:, None, None, :, None] & vw[None, :, None, None, :]).expand(h, w, c_in, ph, pw)
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def to_dense(j: Structured, n_in: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense (Jc, Jr), [n_in, *shape], of a structured Jacobian (coordinates outside u dropped:
    their entries are zero)."""
    import torch

    if isinstance(j, Diag):
        e = j.c.numel()
        out_c = torch.zeros(e, n_in, dtype=torch.float64)
        out_r = torch.zeros(e, n_in, dtype=torch.float64)
        idx = torch.arange(e)
        out_c[idx, j.colmap.reshape(-1)] = j.c.reshape(-1)
        out_r[idx, j.colmap.reshape(-1)] = j.r.reshape(-1)
        return out_c.T.reshape(n_in, *shape).contiguous(), out_r.T.reshape(n_in, *shape).contiguous()
    c_out, h, w, c_in, ph, pw = (int(s) for s in j.c.shape)
    idx, valid = columns(j)
    idx = idx.reshape(1, h * w, -1).expand(c_out, -1, -1)
    outs = []
    for t in (j.c, j.r):
        vals = torch.where(valid.reshape(1, h, w, c_in, ph, pw), t, torch.zeros_like(t)).reshape(c_out, h * w, -1)
        dense = torch.zeros(c_out, h * w, n_in, dtype=torch.float64)
        dense.scatter_add_(2, idx, vals)
        outs.append(dense.reshape(c_out * h * w, n_in).T.reshape(n_in, *shape).contiguous())
    return outs[0], outs[1]


def _value4(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[0] == 1


Pair = tuple[int, int]


def _window(j: Patches, kernel: Pair, strides: tuple[int, ...], dilations: tuple[int, ...], pads: tuple[int, ...],
            out_shape: tuple[int, ...], channels: int, max_entries: int) -> tuple[Pair, ...] | None:
    """The geometry of a 2-D window op (conv, pooling) applied to patches: strides, dilations, the
    near pads, the output's size, the patches' size and stride now and after the op, and the
    padded input's size; None when the grown patches of ``channels`` outputs exceed ``max_entries``."""
    kh_n, kw_n = kernel
    sh, sw = (int(v) for v in strides)
    dh, dw = (int(v) for v in dilations)
    top, left, bottom, right = (int(v) for v in pads)
    h, wd = (int(v) for v in j.c.shape[1:3])
    ho, wo = int(out_shape[2]), int(out_shape[3])
    ph, pw = j.size
    s_h, s_w = j.stride
    nph, npw = ph + (kh_n - 1) * dh * s_h, pw + (kw_n - 1) * dw * s_w
    if channels * ho * wo * int(j.c.shape[3]) * nph * npw > max_entries:
        return None
    need_h = max(top + h + bottom, (kh_n - 1) * dh + sh * (ho - 1) + 1)
    need_w = max(left + wd + right, (kw_n - 1) * dw + sw * (wo - 1) + 1)
    return (sh, sw), (dh, dw), (top, left), (ho, wo), (ph, pw), (s_h, s_w), (nph, npw), (need_h, need_w)


def conv(j: Patches, op: O.Conv, out_shape: tuple[int, ...], rel: float,
         max_entries: int = MAX_PATCH_ENTRIES) -> Patches | None:
    """Jc' = W * Jc, Jr' = |W| * (Jr + rel |Jc|) (1 + 2 rel) + TINY, tap by tap (see the module)."""
    import numpy as np
    import torch

    if len(op.strides) != 2 or not _value4(out_shape):
        return None
    w = torch.from_numpy(np.array(op.weight, dtype=np.float64))
    c_out, c_g, kh_n, kw_n = (int(s) for s in w.shape)
    c_in_v, h, wd = (int(s) for s in j.c.shape[:3])
    g = op.groups
    if c_g * g != c_in_v:
        return None
    win = _window(j, (kh_n, kw_n), op.strides, op.dilations, op.pads, out_shape, c_out, max_entries)
    if win is None:
        return None
    (sh, sw), (dh, dw), (top, left), (ho, wo), (ph, pw), (s_h, s_w), (nph, npw), (need_h, need_w) = win
    rest = j.c.shape[3:]
    src_r = j.r + rel * j.c.abs()
    outs = []
    for t, wt in ((j.c, w), (src_r, w.abs())):
        padded = torch.zeros(c_in_v, need_h, need_w, *rest, dtype=torch.float64)
        padded[:, top: top + h, left: left + wd] = t
        out = torch.zeros(c_out, ho, wo, int(rest[0]), nph, npw, dtype=torch.float64)
        for kh in range(kh_n):
            for kw in range(kw_n):
                sl = padded[:, kh * dh: kh * dh + sh * (ho - 1) + 1: sh, kw * dw: kw * dw + sw * (wo - 1) + 1: sw]
                taps = wt[:, :, kh, kw].reshape(g, c_out // g, c_g)
                part = torch.matmul(taps, sl.reshape(g, c_g, -1)).reshape(c_out, ho, wo, *rest)
                oh, ow = kh * dh * s_h, kw * dw * s_w
                out[..., oh: oh + ph, ow: ow + pw] += part
        outs.append(out)
    jr = outs[1] * (1 + 2 * rel) + TINY
    spend(2.0 * outs[0].numel() * c_g * kh_n * kw_n / JACOBIAN_OPS_PER_S)  # the centre and the radius
    return Patches(c=outs[0], r=jr, stride=(s_h * sh, s_w * sw), offset=(j.offset[0] - top * s_h, j.offset[1] - left * s_w),
                   colmap=j.colmap)


def max_pool(j: Patches, op: O.MaxPool, cand: torch.Tensor, out_shape: tuple[int, ...],
             max_entries: int = MAX_PATCH_ENTRIES) -> Patches | None:
    """The hull over each window's candidates (``cand`` [1, C, K, H', W'], K in unfold order) of
    their rows, shifted into the output's window: every Clarke row of the max is a convex
    combination of the candidates' rows (see ``analyses.local._max_jacobian``)."""
    import torch

    if len(op.kernel) != 2 or not _value4(out_shape):
        return None
    kh_n, kw_n = op.kernel
    c, h, wd = (int(s) for s in j.c.shape[:3])
    pads = (*op.pads[:2], 0, 0)  # the far pads of a pooling window never win its max
    win = _window(j, (kh_n, kw_n), op.strides, op.dilations, pads, out_shape, c, max_entries)
    if win is None:
        return None
    (sh, sw), (dh, dw), (top, left), (ho, wo), (ph, pw), (s_h, s_w), (nph, npw), (need_h, need_w) = win
    rest = j.c.shape[3:]
    ends = []
    for t in (_down(j.c - j.r), _up(j.c + j.r)):
        padded = torch.zeros(c, need_h, need_w, *rest, dtype=torch.float64)
        padded[:, top: top + h, left: left + wd] = t
        ends.append(padded)
    inf = float("inf")
    g_lo = torch.full((c, ho, wo, int(rest[0]), nph, npw), inf, dtype=torch.float64)
    g_hi = torch.full_like(g_lo, -inf)
    k = 0
    for kh in range(kh_n):
        for kw in range(kw_n):
            mask = cand[0, :, k, :ho, :wo][..., None, None, None]
            oh, ow = kh * dh * s_h, kw * dw * s_w
            for src, dst, pick in ((ends[0], g_lo, torch.minimum), (ends[1], g_hi, torch.maximum)):
                sl = src[:, kh * dh: kh * dh + sh * (ho - 1) + 1: sh, kw * dw: kw * dw + sw * (wo - 1) + 1: sw]
                emb = torch.zeros(c, ho, wo, *rest[:1], nph, npw, dtype=torch.float64)
                emb[..., oh: oh + ph, ow: ow + pw] = sl
                dst.copy_(torch.where(mask, pick(dst, emb), dst))
            k += 1
    spend(8.0 * g_lo.numel() * kh_n * kw_n / JACOBIAN_OPS_PER_S)  # embed, compare, select: both ends
    mid = (g_lo + g_hi) / 2
    rad = _up(torch.maximum(g_hi - mid, mid - g_lo))
    return Patches(c=mid, r=rad, stride=(s_h * sh, s_w * sw), offset=(j.offset[0] - top * s_h, j.offset[1] - left * s_w),
                   colmap=j.colmap)


def scaled(c: torch.Tensor, r: torch.Tensor, m: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobian rows (centre ``c``, radius ``r``) scaled by an interval [m - d, m + d] that
    broadcasts against them: (m + e)(Jc + E) - m Jc = m E + e Jc + e E with |e| <= d, |E| <= r,
    and the product m Jc rounded (2 EPS |m Jc|)."""
    new_c = m * c
    return new_c, (m.abs() * r + d * (c.abs() + r) + 2 * EPS * new_c.abs()) * (1 + 4 * EPS) + TINY


def scale(j: Structured, m: torch.Tensor, r: torch.Tensor) -> Structured:
    """Rows scaled by an interval [m - r, m + r] per unit (of the value's shape): an element-wise
    map's slopes (``r`` > 0) or an exact scale (``r`` = 0: the rounding of the product is in the
    2 EPS term of ``scaled``)."""
    if isinstance(j, Diag):
        new_c, new_r = scaled(j.c, j.r, m, r)
        return Diag(c=new_c, r=new_r, colmap=j.colmap)
    unit = (*j.c.shape[:3], 1, 1, 1)  # per output unit, over its patch
    new_c, new_r = scaled(j.c, j.r, m.reshape(unit), r.reshape(unit))
    return Patches(c=new_c, r=new_r, stride=j.stride, offset=j.offset, colmap=j.colmap)


def permute(j: Diag, f: object) -> Diag:
    """A structural map (Transpose, Reshape) applied to a Diag: ``f`` maps a tensor of the input's
    shape to the output's; entries move with their columns, exactly."""
    return Diag(c=f(j.c), r=f(j.r), colmap=f(j.colmap))  # type: ignore[operator]


def add(a: Patches, b: Patches, sign: float) -> Patches | None:
    """a + sign b on a common window (same stride and u; None otherwise)."""
    import torch

    if a.stride != b.stride or a.c.shape[:4] != b.c.shape[:4] or not torch.equal(a.colmap, b.colmap):
        return None
    lo = (min(a.offset[0], b.offset[0]), min(a.offset[1], b.offset[1]))
    hi = (max(a.offset[0] + a.size[0], b.offset[0] + b.size[0]), max(a.offset[1] + a.size[1], b.offset[1] + b.size[1]))
    shape = (*a.c.shape[:4], hi[0] - lo[0], hi[1] - lo[1])

    def embed(j: Patches, t: torch.Tensor) -> torch.Tensor:
        if j.offset == lo and j.size == shape[4:]:
            return t
        out = torch.zeros(shape, dtype=torch.float64)
        oh, ow = j.offset[0] - lo[0], j.offset[1] - lo[1]
        out[..., oh: oh + j.size[0], ow: ow + j.size[1]] = t
        return out

    jc = embed(a, a.c) + sign * embed(b, b.c)
    jr = _up(embed(a, a.r) + embed(b, b.r) + 2 * EPS * jc.abs())
    return Patches(c=jc, r=jr, stride=a.stride, offset=lo, colmap=a.colmap)


def _grown(size: tuple[int, int], stride: tuple[int, int], kernel: tuple[int, ...], dil: tuple[int, ...]) -> tuple[int, int]:
    return size[0] + (kernel[0] - 1) * dil[0] * stride[0], size[1] + (kernel[1] - 1) * dil[1] * stride[1]


def reaches_outputs(graph: Graph, shapes: Mapping[str, tuple[int, ...]], max_dense: int, max_patch: int) -> bool:
    """Whether the interval Jacobian in structured form reaches every output of ``graph`` (one input)
    in dense form within the caps: the rules of ``analyses.local._propagate`` walked on shapes
    alone (patch sizes, strides), before any tensor is built."""
    return _walk(graph, shapes, max_dense, max_patch)[0]


def patch_cost(graph: Graph, shapes: Mapping[str, tuple[int, ...]], max_dense: int, max_patch: int, *,
               partial: bool = False) -> float:
    """The counted seconds of one interval Jacobian on receptive fields (one ball): what the
    convolutions and max pools in patch form charge as they run (``conv``, ``max_pool``), from the
    shapes alone; 0 where it does not reach the outputs (it is not run), unless ``partial`` (the
    work on the nodes it does reach: symbolic ranges go as far as they can). Lets a stage decide,
    before any tensor is built, whether its budget buys it."""
    reaches, cost = _walk(graph, shapes, max_dense, max_patch)
    return cost if reaches or partial else 0.0


def _walk(graph: Graph, shapes: Mapping[str, tuple[int, ...]], max_dense: int, max_patch: int) -> tuple[bool, float]:
    """(``reaches_outputs``, ``patch_cost``)."""
    if len(graph.inputs) != 1:
        return False, 0.0
    cost = 0.0
    n_in = math.prod(int(d) for d in graph.inputs[0].shape)

    def count(shape: tuple[int, ...]) -> int:
        return math.prod(int(d) for d in shape)

    def dense_ok(name: str) -> bool:
        return n_in * count(shapes[name]) <= max_dense

    # value -> "diag", "dense" or (patch size, stride, c_in)
    kind: dict[str, object] = {graph.inputs[0].name: "diag"}

    def as_patch(name: str) -> tuple[tuple[int, int], tuple[int, int], int] | None:
        k = kind.get(name)
        if k == "diag":
            shape = shapes[name]
            return ((1, 1), (1, 1), int(shape[1])) if len(shape) == 4 and shape[0] == 1 else None
        return k if isinstance(k, tuple) else None  # type: ignore[return-value]

    for node in graph.nodes:
        op, out = node.op, node.output
        if not all(name in kind for name in node.inputs):
            continue
        found: object = None
        src = node.inputs[0]
        shape = shapes[out]
        if isinstance(op, (O.Conv, O.MaxPool)) and len(shape) == 4 and shape[0] == 1:
            p = as_patch(src)
            if p is not None and len(op.strides) == 2:
                kernel = tuple(op.weight.shape[2:]) if isinstance(op, O.Conv) else op.kernel
                size = _grown(p[0], p[1], kernel, op.dilations)
                c_out = int(shape[1])
                entries = c_out * int(shape[2]) * int(shape[3]) * p[2] * size[0] * size[1]
                if entries <= max_patch:
                    found = (size, (p[1][0] * op.strides[0], p[1][1] * op.strides[1]), p[2])
                    taps = math.prod(int(k) for k in kernel)
                    # as charged: centre and radius through c_in/groups taps each; the pool's 8 passes
                    cost += (2.0 * entries * int(op.weight.shape[1]) * taps if isinstance(op, O.Conv)
                             else 8.0 * entries * taps) / JACOBIAN_OPS_PER_S
        elif (op.type in O.ACTIVATIONS and not isinstance(op, O.Softmax)) or (
                isinstance(op, O.Affine) and tuple(shapes[src]) == tuple(shape)):
            found = kind[src] if kind[src] != "dense" else None
        elif isinstance(op, (O.Transpose, O.Reshape)) and kind[src] == "diag":
            found = "diag"
        elif isinstance(op, (O.Add, O.Sub)):
            a, b = (as_patch(name) for name in node.inputs)
            if a is not None and b is not None and a[1] == b[1] and a[2] == b[2]:
                found = (max(a[0][0], b[0][0]) * 2, max(a[0][1], b[0][1]) * 2), a[1], a[2]  # a common window
                size = found[0]  # type: ignore[index]
                if count(shape[1:]) * a[2] * size[0] * size[1] > max_patch:
                    found = None
        if found is None and all(dense_ok(name) for name in node.inputs) and dense_ok(out):
            found = "dense"
        if found is not None:
            kind[out] = found
    return all(name in kind and (kind[name] == "dense" or dense_ok(name)) for name in graph.outputs), cost


__all__ = ["MAX_PATCH_ENTRIES", "PEAK_BYTES_PER_ENTRY", "Diag", "Patches", "add", "columns", "conv", "identity", "max_pool", "patch_cost",
           "permute", "rows", "scale", "scaled", "patch_entries", "reaches_outputs", "to_dense", "to_patches"]
