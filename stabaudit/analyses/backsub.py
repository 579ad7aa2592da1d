"""Value ranges of convolutional graphs by back-substitution (CROWN / DeepPoly) on batches of rows.

``analyses.crown`` back-substitutes linear bounds through ReLU chains whose steps are explicit
matrices. A convolutional network's maps are too large for that (a 3x3 convolution of a 46x46x32
map is a 67,712-column matrix), so here a batch of bound rows is carried back through the graph
by each linear map's transpose (the vector-Jacobian product of its bias-free part: a transposed
convolution), through every piecewise-linear activation by its linear relaxation and through max
pools by DeepPoly's rule (Zhang et al., NeurIPS 2018; Singh et al., POPL 2019). The graph may
branch and join (residual Adds): rows reaching a value from several readers are summed before
the value's own node is crossed (reverse topological order).

For a target value z and rows L (one per unit, and its negation for the upper end), the bound
L z >= const + L_0 x is carried back to the input x, where its minimum over the box
[c0 - r0, c0 + r0] is L_0 c0 - |L_0| r0 + const. What is enclosed is the executor's run (float64)
and the exact one, as in ``analyses.crown``; the margins, with rel = gamma_{k+4} of the node's
input size and m_v the largest |v| on the value's current range:

- linear y = W v + beta (Conv, Linear, Affine): L y >= fl(L W) v + fl(L beta) - <|L|, X>,
  X = 2 rel |W| m_v + 2 rel |beta| (the rounding of the computed transpose product, of the
  executor's y and of L beta; Higham 3.5). Transpose and Reshape move rows exactly.
- Relu, LeakyRelu, PRelu with slope a <= 1 below 0 (convex), on the input's range [l, u]: a row
  entry lam >= 0 takes the lower line alpha z (alpha = 1 when u >= -l, else a: CROWN's adaptive
  choice; exact), lam < 0 the chord s z + t, t rounded up so that the line is above f at both
  ends (then on [l, u], f being convex); a > 1 (concave) the other way round. A stable unit is
  its slope. The new row fl(lam alpha) costs EPS <|new row|, m_z> and the executor's product
  a z 2 EPS <|lam|, max |f|>.
- MaxPool: lam >= 0 takes the candidate with the largest lower end (the max is at least it);
  lam < 0 the same candidate where its lower end is at or above every other upper end (the max
  is it), else the constant upper end of the window, max_j u_j. Exact.
- Add: both inputs take the rows; the executor's sum costs 2 EPS <|L|, m_y>. Rows summed where a
  value has several readers cost EPS <|sum|, m_v>.

The constants are summed with a relative margin of the sum of their magnitudes; results are moved
one ulp outward and intersected with the given ranges. Only the units that those ranges leave
across their kink (and the small values read by operators without a rule, such as a Softmax's
logits) are bounded, in batches of rows whose coefficient tensors fit ``max_entries``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.local import (
    _center_radius,
    _down,
    _linear_parts,
    _rel,
    _shapes,
    _single,
    _up_t,
)
from stabaudit.analyses.plan import REVERSE_MACS_PER_S, REVERSE_NODE_S, spend
from stabaudit.analyses.symbolic import Choice, chord, plain_choice
from stabaudit.bounds.base import Interval
from stabaudit.bounds.numerics import EPS, TINY
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    import torch

# rows x (largest value on the path) entries carried at once
MAX_ROW_ENTRIES = 1 << 24
# values read by operators without a rule (or graph outputs) are bounded when this small
MAX_BOUNDARY_UNITS = 4096
KINKS = (O.Relu, O.LeakyRelu, O.PRelu)
LINEAR = (O.Conv, O.Linear, O.Affine)
MOVES = (O.Transpose, O.Reshape)


@dataclass
class _Ctx:
    shapes: Mapping[str, tuple[int, ...]]
    lo: dict[str, torch.Tensor]
    hi: dict[str, torch.Tensor]
    producer: dict[str, int]  # value -> index of its node in ``nodes``
    nodes: list[Node]
    input: str
    c0: torch.Tensor
    r0: torch.Tensor
    vjps: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    betas: dict[str, torch.Tensor]
    absmaps: dict[str, Callable[..., torch.Tensor]]
    macs: dict[str, float]
    pools: Mapping[str, Choice]


def supported(graph: Graph) -> set[str]:
    """The values the rules reach from the graph's one input."""
    reach = {graph.inputs[0].name}
    for node in graph.nodes:
        op = node.op
        ok = isinstance(op, (*LINEAR, *KINKS, *MOVES, O.MaxPool)) and len(node.inputs) == 1
        ok = ok or (isinstance(op, O.Add) and len(node.inputs) == 2)
        if isinstance(op, O.MaxPool) and len(op.kernel) != 2:
            ok = False
        if ok and all(name in reach for name in node.inputs):
            reach.add(node.output)
    return reach


def _mag(ctx: _Ctx, name: str) -> torch.Tensor:
    return ctx.lo[name].abs().maximum(ctx.hi[name].abs())


def _vjp(node: Node, shapes: Mapping[str, tuple[int, ...]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rows [k, *out shape] -> rows [k, *in shape] through the bias-free linear part (exact for moves)."""
    import torch
    from torch.func import vjp, vmap

    op = node.op
    in_shape = tuple(shapes[node.inputs[0]])
    if isinstance(op, O.Linear) and int(np.prod(in_shape[:-1])) == 1:
        w = torch.from_numpy(np.array(op.weight, dtype=np.float64))
        return lambda rows: (rows.reshape(rows.shape[0], -1) @ w).reshape(rows.shape[0], *in_shape)
    lin = _linear_parts(node, shapes)[0] if isinstance(op, LINEAR) else _single(node, op, shapes)
    fn = vjp(lin, torch.zeros(in_shape, dtype=torch.float64))[1]
    batched = vmap(lambda r: fn(r)[0])
    return lambda rows: batched(rows)


def _lines(op: O.Op, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(alpha_l, t_l, alpha_u, t_u, fmag): alpha_l z + t_l <= f(z) <= alpha_u z + t_u on [lo, hi]."""
    import torch

    c = chord(op, lo, hi)
    a, f_lo, f_hi, s = c.a, c.f_lo, c.f_hi, c.s
    above, below = lo >= 0, hi <= 0
    margin = c.m_lo + c.m_hi + TINY
    t_top = _up_t(torch.maximum(c.e_lo, c.e_hi) + margin)  # chord above f at both ends
    t_bot = _down(torch.minimum(c.e_lo, c.e_hi) - margin)  # chord below f at both ends
    alpha = torch.where(hi >= -lo, torch.ones_like(lo), a)
    convex = a <= 1
    zero = torch.zeros_like(lo)
    al = torch.where(convex, alpha, s)
    tl = torch.where(convex, zero, t_bot)
    au = torch.where(convex, s, alpha)
    tu = torch.where(convex, t_top, zero)
    slope = torch.where(above, torch.ones_like(lo), a)
    stable = above | below
    al, au = torch.where(stable, slope, al), torch.where(stable, slope, au)
    tl, tu = torch.where(stable, zero, tl), torch.where(stable, zero, tu)
    return al, tl, au, tu, f_lo.abs().maximum(f_hi.abs())


def _increasing(op: O.Op) -> bool:
    """The activation is nondecreasing (slope below 0 at least 0): computed values keep their order."""
    if isinstance(op, O.PRelu):
        return bool(np.all(np.asarray(op.slope) >= 0))
    return not isinstance(op, O.LeakyRelu) or op.alpha >= 0


def _pool_choice(op: O.MaxPool, ctx: _Ctx, src: str, out: str) -> Choice:
    """The choice given for the pool (``analyses.symbolic``), else the one of the ranges alone."""
    if out in ctx.pools:
        return ctx.pools[out]
    return plain_choice(op, ctx.lo[src], ctx.hi[src], ctx.shapes[out])


class _Sum:
    """A sum of float terms with a bound on its rounding: value - rel * magnitude is below the exact sum."""

    def __init__(self, k: int):
        import torch

        self.value = torch.zeros(k, dtype=torch.float64)
        self.mag = torch.zeros(k, dtype=torch.float64)
        self.terms = 0

    def add(self, t: torch.Tensor) -> None:
        self.value = self.value + t
        self.mag = self.mag + t.abs()
        self.terms += 1

    def lower(self) -> torch.Tensor:
        return _down(self.value - _up_t(self.mag * _rel(self.terms + 1)))


def _dot(rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (rows.reshape(rows.shape[0], -1) * t.reshape(1, -1)).sum(dim=1)


def _dot_up(rows_abs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """<|L|, t> for t >= 0, rounded up."""
    n = int(t.numel())
    return _up_t(_dot(rows_abs, t) * (1 + _rel(n)) + TINY)


def _back(ctx: _Ctx, target: str, rows: torch.Tensor) -> torch.Tensor:
    """Lower bounds of rows . target over the box (rows [k, *target shape])."""
    import torch

    k = rows.shape[0]
    const = _Sum(k)
    lam: dict[str, torch.Tensor] = {target: rows}
    start = ctx.producer.get(target)
    order = range(start, -1, -1) if start is not None else range(-1, -1, -1)
    for index in order:
        node = ctx.nodes[index]
        if node.output not in lam:
            continue
        check_deadline()
        L = lam.pop(node.output)
        op = node.op
        out = node.output
        flows: list[tuple[str, torch.Tensor]] = []
        if isinstance(op, LINEAR):
            src = node.inputs[0]
            spend(k * ctx.macs[out] / REVERSE_MACS_PER_S)
            beta = ctx.betas[out]
            rel = _rel(int(ctx.lo[src].numel()))
            x_err = 2 * rel * (ctx.absmaps[out](_mag(ctx, src)) + beta.abs())
            const.add(_dot(L, beta))
            const.add(-_dot_up(L.abs(), _up_t(x_err * (1 + 2 * rel) + TINY)))
            flows.append((src, ctx.vjps[out](L)))
        elif isinstance(op, MOVES):
            flows.append((node.inputs[0], ctx.vjps[out](L)))
        elif isinstance(op, KINKS):
            src = node.inputs[0]
            al, tl, au, tu, fmag = _lines(op, ctx.lo[src], ctx.hi[src])
            pos = L >= 0
            new = torch.where(pos, L * al, L * au)
            const.add(_dot(torch.where(pos, L, torch.zeros_like(L)), tl))
            const.add(_dot(torch.where(pos, torch.zeros_like(L), L), tu))
            const.add(-_dot_up(new.abs(), EPS * _mag(ctx, src)))
            const.add(-_dot_up(L.abs(), 2 * EPS * fmag))
            flows.append((src, new))
        elif isinstance(op, O.MaxPool):
            src = node.inputs[0]
            choice = _pool_choice(op, ctx, src, out)
            # the max is in [z_i, z_i + gap]: lam >= 0 takes z_i, lam < 0 takes z_i + gap
            const.add(_dot(torch.where(L >= 0, torch.zeros_like(L), L), choice.gap))
            back = torch.zeros(k, int(ctx.lo[src].numel()), dtype=torch.float64)
            back.scatter_add_(1, choice.index.reshape(1, -1).expand(k, -1), L.reshape(k, -1))
            flows.append((src, back.reshape(k, *ctx.shapes[src])))
        elif isinstance(op, O.Add):
            const.add(-_dot_up(L.abs(), 2 * EPS * _mag(ctx, out)))
            flows += [(node.inputs[0], L), (node.inputs[1], L)]
        else:  # pragma: no cover - supported() keeps other operators out
            raise AssertionError(op.type)
        for name, t in flows:
            t = t.reshape(k, *ctx.shapes[name])
            if name in lam:
                s = lam[name] + t
                const.add(-_dot_up(s.abs(), EPS * _mag(ctx, name)))
                lam[name] = s
            else:
                lam[name] = t
    L0 = lam.pop(ctx.input, None)
    if L0 is None:
        return const.lower()
    n = int(ctx.c0.numel())
    la = L0.abs()
    const.add(_dot(L0, ctx.c0))
    const.add(-_dot_up(la, ctx.r0))
    const.add(-_dot_up(la, _rel(n) * (ctx.c0.abs() + ctx.r0)))
    return const.lower()


def _tighten(ctx: _Ctx, name: str, units: torch.Tensor, max_entries: int) -> None:
    """Back-substituted lower and upper ends of the ``units`` (flat indices) of ``name``, in batches."""
    import torch

    shape = tuple(ctx.shapes[name])
    n = int(np.prod(shape))
    start = ctx.producer[name]
    widest = max(int(np.prod(ctx.shapes[v])) for node in ctx.nodes[: start + 1] for v in (node.output, *node.inputs))
    batch = max(1, max_entries // (2 * max(widest, 1)))
    lo, hi = ctx.lo[name].reshape(-1).clone(), ctx.hi[name].reshape(-1).clone()
    for begin in range(0, int(units.numel()), batch):
        part = units[begin: begin + batch]
        k = int(part.numel())
        rows = torch.zeros(2 * k, n, dtype=torch.float64)
        rows[torch.arange(k), part] = 1.0
        rows[torch.arange(k, 2 * k), part] = -1.0
        found = _back(ctx, name, rows.reshape(2 * k, *shape))
        lo[part] = torch.maximum(lo[part], found[:k])
        hi[part] = torch.minimum(hi[part], -found[k:])
    ctx.lo[name], ctx.hi[name] = lo.reshape(shape), hi.reshape(shape)


def _targets(ctx: _Ctx, graph: Graph, reach: set[str], readers: Mapping[str, list[Node]]) -> list[tuple[str, int]]:
    """(value, units to bound) in graph order: the kinks' inputs (their units across the kink on
    the given ranges) and the small values read beyond the rules."""
    found = []
    for node in ctx.nodes:
        out = node.output
        if isinstance(node.op, KINKS) and node.inputs[0] != ctx.input:
            src = node.inputs[0]
            found.append((src, int(((ctx.lo[src] < 0) & (ctx.hi[src] > 0)).sum())))
        elif ((any(r.output not in reach for r in readers.get(out, [])) or out in graph.outputs)
              and int(np.prod(ctx.shapes[out])) <= MAX_BOUNDARY_UNITS and out != ctx.input
              and not isinstance(node.op, (*KINKS, O.MaxPool))):
            found.append((out, int(np.prod(ctx.shapes[out]))))
    return found


def _planned(ctx: _Ctx, graph: Graph, reach: set[str], readers: Mapping[str, list[Node]], transposes: int) -> float:
    """The counted seconds of the back-substitutions: two rows a unit, each through the linear
    nodes before its value, and the ``transposes`` built once (0 when there is nothing to bound)."""
    total = 0.0
    for name, units in _targets(ctx, graph, reach, readers):
        before = sum(ctx.macs.get(n.output, 0.0) for n in ctx.nodes[: ctx.producer[name] + 1])
        total += 2.0 * units * before / REVERSE_MACS_PER_S
    return total + REVERSE_NODE_S * transposes if total > 0 else 0.0


def _context(graph: Graph, box: Mapping[str, Interval], ranges: Mapping[str, Interval],
             pools: Mapping[str, Choice] | None) -> tuple[_Ctx, set[str], dict[str, list[Node]], int] | None:
    """(the back-substitution's context, the reached values, each value's readers, the linear
    nodes and moves whose transposes are built), or None for a graph with several inputs, an
    infinite box or range, or a reached value without a range."""
    import torch

    if len(graph.inputs) != 1:
        return None
    spec = graph.inputs[0]
    reach = supported(graph)
    if spec.name not in box or any(name not in ranges for name in reach):
        return None
    lo0 = torch.from_numpy(np.asarray(box[spec.name].lo, dtype=np.float64).reshape(spec.shape).copy())
    hi0 = torch.from_numpy(np.asarray(box[spec.name].hi, dtype=np.float64).reshape(spec.shape).copy())
    if not (torch.isfinite(lo0).all() and torch.isfinite(hi0).all()):
        return None
    shapes = _shapes(graph)
    c0, r0 = _center_radius(lo0, hi0)
    nodes = [n for n in graph.nodes if n.output in reach]
    ctx = _Ctx(shapes=shapes, lo={}, hi={}, producer={n.output: i for i, n in enumerate(nodes)}, nodes=nodes,
               input=spec.name, c0=c0, r0=r0, vjps={}, betas={}, absmaps={}, macs={}, pools=pools or {})
    for name in reach:
        iv = ranges[name]
        ctx.lo[name] = torch.from_numpy(np.asarray(iv.lo, dtype=np.float64).reshape(shapes[name]).copy())
        ctx.hi[name] = torch.from_numpy(np.asarray(iv.hi, dtype=np.float64).reshape(shapes[name]).copy())
        if not (torch.isfinite(ctx.lo[name]).all() and torch.isfinite(ctx.hi[name]).all()):
            return None
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    for node in nodes:
        if isinstance(node.op, LINEAR):
            per_out = 1  # an Affine: one product per entry
            if isinstance(node.op, (O.Conv, O.Linear)):
                per_out = int(np.prod(np.asarray(node.op.weight).shape[1:]))
            ctx.macs[node.output] = float(np.prod(shapes[node.output])) * per_out
    transposes = sum(isinstance(node.op, (*LINEAR, *MOVES)) for node in nodes)
    return ctx, reach, readers, transposes


def backsub_cost(graph: Graph, box: Mapping[str, Interval], ranges: Mapping[str, Interval],
                 pools: Mapping[str, Choice] | None = None) -> float | None:
    """The counted seconds ``backsub_ranges`` plans on these ranges (it bounds the units they leave
    across their kinks), or None where it does not apply."""
    found = _context(graph, box, ranges, pools)
    if found is None:
        return None
    ctx, reach, readers, transposes = found
    return _planned(ctx, graph, reach, readers, transposes)


def backsub_ranges(graph: Graph, box: Mapping[str, Interval], ranges: Mapping[str, Interval], *,
                   pools: Mapping[str, Choice] | None = None, budget_s: float = math.inf,
                   max_entries: int = MAX_ROW_ENTRIES) -> dict[str, Interval] | None:
    """Tighter ranges, by back-substitution, of the inputs of the activations and max pools the
    rules reach (and of the small values read beyond them), within ``ranges`` (enclosures of every
    reached value over ``box``, e.g. ``analyses.ranges``); the other reached values keep their
    given ranges, activations' and pools' outputs are recomputed from the tightened inputs. None
    for a graph with several inputs, an infinite box, none of those values, or a planned cost
    (``backsub_cost``) above ``budget_s``."""
    import torch

    found = _context(graph, box, ranges, pools)
    if found is None:
        return None
    ctx, reach, readers, transposes = found
    spec = graph.inputs[0]
    shapes = ctx.shapes
    nodes = ctx.nodes
    if _planned(ctx, graph, reach, readers, transposes) > budget_s:
        return None
    spend(REVERSE_NODE_S * transposes)
    for node in nodes:
        out = node.output
        if isinstance(node.op, (*LINEAR, *MOVES)):
            ctx.vjps[out] = _vjp(node, shapes)
        if isinstance(node.op, LINEAR):
            lin, absmap = _linear_parts(node, shapes)
            zero = torch.zeros(shapes[node.inputs[0]], dtype=torch.float64)
            ctx.betas[out] = _single(node, node.op, shapes)(zero) - lin(zero)
            ctx.absmaps[out] = absmap
    boundary = {name for name, _ in _targets(ctx, graph, reach, readers)
                if not any(isinstance(n.op, KINKS) and n.inputs[0] == name for n in nodes)}
    tightened = False
    with torch.no_grad():
        for node in nodes:
            op = node.op
            out = node.output
            if isinstance(op, (*KINKS, O.MaxPool)):
                src = node.inputs[0]
                if isinstance(op, KINKS) and src != spec.name:
                    units = ((ctx.lo[src] < 0) & (ctx.hi[src] > 0)).reshape(-1).nonzero().reshape(-1)
                    if units.numel():
                        _tighten(ctx, src, units, max_entries)
                        tightened = True
                if isinstance(op, O.MaxPool) or _increasing(op):  # the ends map to the ends
                    f = _single(node, op, shapes)
                    lo_o, hi_o = f(ctx.lo[src]), f(ctx.hi[src])
                    ctx.lo[out], ctx.hi[out] = torch.maximum(ctx.lo[out], lo_o), torch.minimum(ctx.hi[out], hi_o)
            elif out in boundary:
                _tighten(ctx, out, torch.arange(int(np.prod(shapes[out]))), max_entries)
                tightened = True
    if not tightened:
        return None
    return {name: Interval(lo=ctx.lo[name].numpy().copy(), hi=ctx.hi[name].numpy().copy()) for name in reach}


__all__ = ["MAX_BOUNDARY_UNITS", "MAX_ROW_ENTRIES", "backsub_cost", "backsub_ranges", "supported"]
