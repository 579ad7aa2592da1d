"""Local Lipschitz bounds around a reference Jacobian: exact matrices, perturbations on the units
that may change state.

Over a small box most units of a network keep their state, but an interval Jacobian
(``analyses.local``) still carries every entry as an interval and widens it by |W| at each layer:
on a 48x48 CNN over a 1/255 ball its bound is 10^4 times the Jacobian it encloses, even where only
a few percent of the units can change state. Here the Jacobian is split into an exact part and a
perturbation that lives on those units only.

Every nonlinear node n has a local Jacobian D_n(x) in {D0_n + E : ||E||_2 <= e_n, E zero outside
the rows O_n and columns I_n}: an element-wise activation with slopes in [s_lo, s_hi] on its
input's range takes D0 = the midpoint and e = the largest half-width, on the units whose slope can
vary; a max pool takes the selection of one candidate per window (``analyses.symbolic``'s choice:
exact where the window's gap is 0), and E's rows are e_k - e_chosen on the other windows
(||E||_2 <= sqrt(||E||_1 ||E||_inf) = sqrt(2 c), c the most such windows an entry is a candidate
of); a Softmax takes the centre of its Jacobian's interval enclosure (``analyses.local``) and e the
largest Frobenius norm of a row's radius block. The reference network, each D_n replaced by D0_n,
is linear. The Jacobian J(x) of the graph is multilinear in the D_n (a sum over paths, each
through a node at most once), so switching the nodes from reference to actual one at a time, from
the last (Taylor-free telescoping):

    J(x) - J0 = sum_n P_n(x) (D_n(x) - D0_n) S0_n,

where S0_n is the reference Jacobian from the graph's input to node n's input and P_n(x) the
actual Jacobian from node n's output to the graph's outputs. The same identity on the subgraph
after n bounds P_n(x) on the columns O_n:

    p_n = ||P0_n[:, O_n]|| + sum_{m after n} p_m e_m ||S0_{m<-n}[I_m, O_n]||  >=  sup ||P_n(x)[:, O_n]||,

and then sup_x ||J(x)||_2 <= ||J0||_2 + sum_n p_n e_n ||S0_n[I_n, :]||_2 over the box: a bound of
the local Lipschitz constant (l2 -> l2) for every x where the graph is differentiable, hence over
the convex box. It is exact when no unit can change state (every e_n = 0).

The matrices are computed in float64 by reverse-mode products through the reference network (one
row per output entry, one per unit of each I_n). Each computed entry is within
gamma = 1.01 sum_nodes (rel_node + 2 EPS) of the abs-product of the matrices on its paths
(Higham 3.5, a first-order sum over the nodes; rel_node = gamma of the node's dot length), whose
norm is at most the composed bound NB of the nodes' || |A| ||_2 <= sqrt(||A||_1 ||A||_inf) (a sum
over an Add's branches); so every norm above is the certified norm of the computed matrix
(``bounds.numerics.spectral_norm_dense``; stacked row blocks: sqrt of the sum of their squares;
the cross terms: the smaller of the Frobenius norm and sqrt(||.||_1 ||.||_inf)) plus gamma NB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.local import (
    _center_radius,
    _linear_parts,
    _rel,
    _shapes,
    _single,
    _slopes,
    softmax_jacobian_enclosure,
)
from stabaudit.analyses.plan import REVERSE_MACS_PER_S, spend
from stabaudit.analyses.symbolic import Choice, plain_choice
from stabaudit.bounds.base import Interval
from stabaudit.bounds.numerics import EPS, TINY, spectral_norm_dense
from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    import torch

# the largest output (rows of J0) and total of perturbed units (rows of the S0_n) taken
MAX_OUTPUTS = 4096
MAX_ROWS = 60000
# rows of S0_n carried back at once; row blocks of its norm
ROW_BATCH = 512
NORM_BLOCK = 2048
LINEAR = (O.Conv, O.Linear, O.Affine)
MOVES = (O.Transpose, O.Reshape)


@dataclass(frozen=True, kw_only=True)
class ReferenceResult:
    upper: float
    reference: float  # ||J0||_2 (certified upper)
    perturbed: int  # units whose local Jacobian may vary (sum of |I_n|)
    nodes: int  # nonlinear nodes with a perturbation


@dataclass(eq=False)
class _Nonlinear:
    node: Node
    kind: str  # "diag", "pool" or "softmax"
    apply: Callable[[torch.Tensor], torch.Tensor]  # the reference map D0
    e: float
    rows_in: torch.Tensor  # I_n: flat indices into the node's input
    cols_out: torch.Tensor  # O_n: flat indices into the node's output
    alpha: float  # || |D0| ||_2 bound
    rel: float


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def _abs_norm(node: Node) -> tuple[float, float]:
    """(bound on || |A| ||_2, rel) of a linear node's bias-free map A."""
    op = node.op
    if isinstance(op, O.Conv):
        w = np.abs(np.asarray(op.weight, dtype=np.float64))
        rows = float(w.reshape(w.shape[0], -1).sum(axis=1).max())  # one output entry: its filter
        g = op.groups
        per_group = w.reshape(g, w.shape[0] // g, w.shape[1], -1)
        cols = float(per_group.sum(axis=(1, 3)).max())  # one input entry: each tap at most once
        return _up(math.sqrt(rows * cols) * (1 + 8 * EPS)), _rel(int(np.prod(w.shape[1:])))
    if isinstance(op, O.Linear):
        w = np.abs(np.asarray(op.weight, dtype=np.float64))
        return _up(math.sqrt(float(w.sum(axis=1).max()) * float(w.sum(axis=0).max())) * (1 + 8 * EPS)), _rel(w.shape[1])
    if isinstance(op, O.Affine):
        s = 1.0 if op.scale is None else float(np.max(np.abs(op.scale)))
        return s, _rel(1)
    return 1.0, 0.0  # moves, Add (handled by the sum over branches)


def _nonlinear(node: Node, shapes: Mapping[str, tuple[int, ...]], ranges: Mapping[str, Interval],
               pools: Mapping[str, Choice]) -> _Nonlinear:
    import torch

    op = node.op
    src, out = node.inputs[0], node.output

    def rng(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        iv = ranges[name]
        return (torch.from_numpy(np.asarray(iv.lo, dtype=np.float64).reshape(shapes[name]).copy()),
                torch.from_numpy(np.asarray(iv.hi, dtype=np.float64).reshape(shapes[name]).copy()))

    if isinstance(op, O.MaxPool):
        lo, hi = rng(src)
        from stabaudit.analyses.local import _max_patches

        choice = pools.get(out) or plain_choice(op, lo, hi, shapes[out])
        index = choice.index.reshape(-1)
        undecided = choice.gap.reshape(-1) > 0
        flat = torch.arange(lo.numel(), dtype=torch.float64).reshape(lo.shape)
        cand = _max_patches(op, flat, shapes[out], -1.0)[0].long()  # [C, K, H', W']
        k = cand.shape[1]
        cand = cand.permute(0, 2, 3, 1).reshape(-1, k)[undecided]
        cand = cand[cand >= 0]
        counts = torch.bincount(cand, minlength=lo.numel()) if cand.numel() else torch.zeros(1, dtype=torch.long)
        c = int(counts.max()) if cand.numel() else 0
        chosen = torch.bincount(index, minlength=lo.numel())
        out_shape = shapes[out]

        def pool(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(-1)[index].reshape(out_shape)

        return _Nonlinear(node=node, kind="pool", apply=pool, e=_up(math.sqrt(2.0 * c)),
                          rows_in=torch.unique(cand), cols_out=undecided.nonzero().reshape(-1),
                          alpha=_up(math.sqrt(float(chosen.max()))), rel=_rel(int(chosen.max())))
    if isinstance(op, O.Softmax):
        if op.mask is not None:
            raise UnsupportedOperatorError({"Softmax with a mask (reference Jacobian)": 1})
        p_lo, p_hi = rng(out)
        p_lo, p_hi = p_lo.clamp(min=0.0), p_hi.clamp(max=1.0)
        axis = op.axis % len(shapes[out])
        sc, sr = softmax_jacobian_enclosure(axis, p_lo, p_hi)
        kk = int(sc.shape[-1])
        e = float(torch.sqrt((sr * sr).sum(dim=(1, 2))).max()) if sr.numel() else 0.0
        moved_shape = tuple(p_lo.movedim(axis, -1).shape)

        def soft(z: torch.Tensor) -> torch.Tensor:
            zm = z.movedim(axis, -1).reshape(-1, kk)
            return torch.einsum("mij,mj->mi", sc, zm).reshape(moved_shape).movedim(-1, axis)

        a = sc.abs()
        alpha = float(torch.sqrt(a.sum(dim=1).amax() * a.sum(dim=2).amax())) if a.numel() else 0.0
        n = int(np.prod(shapes[out]))
        everything = torch.arange(n)
        return _Nonlinear(node=node, kind="softmax", apply=soft, e=_up(e * (1 + 8 * EPS) + TINY),
                          rows_in=everything, cols_out=everything, alpha=_up(alpha * (1 + 8 * EPS)), rel=_rel(kk))
    lo, hi = rng(src)
    s_lo, s_hi, *_ = _slopes(op, lo, hi)
    d0, half = _center_radius(s_lo, s_hi)
    moving = s_hi > s_lo  # elsewhere the slope is d0 = s_lo = s_hi exactly
    varying = moving.reshape(-1).nonzero().reshape(-1)
    e = float(half[moving].max()) if varying.numel() else 0.0

    def diag(z: torch.Tensor) -> torch.Tensor:
        return d0 * z

    return _Nonlinear(node=node, kind="diag", apply=diag, e=e, rows_in=varying, cols_out=varying,
                      alpha=float(d0.abs().max()) if d0.numel() else 0.0, rel=_rel(1))


def _norm(m: torch.Tensor) -> float:
    """Certified upper bound on ||m||_2 of a computed matrix (row blocks stacked)."""
    if m.numel() == 0:
        return 0.0
    if m.shape[0] <= NORM_BLOCK or m.shape[1] <= NORM_BLOCK:
        return spectral_norm_dense(m.numpy())[0]
    total = 0.0
    for begin in range(0, m.shape[0], NORM_BLOCK):
        u = spectral_norm_dense(m[begin: begin + NORM_BLOCK].numpy())[0]
        total += u * u * (1 + 4 * EPS)
    return _up(math.sqrt(total) * (1 + 4 * EPS))


class _Cross:
    """||S0_{m<-n}[I_m, O_n]||_2 from row batches: min(Frobenius, sqrt(||.||_1 ||.||_inf)), rounded up."""

    def __init__(self, cols: int):
        import torch

        self.sq = 0.0
        self.col = torch.zeros(cols, dtype=torch.float64)
        self.row = 0.0

    def add(self, block: torch.Tensor) -> None:
        if block.numel() == 0:
            return
        a = block.abs()
        self.sq += float((a * a).sum())
        self.col += a.sum(dim=0)
        self.row = max(self.row, float(a.sum(dim=1).max()))

    def bound(self, k: int) -> float:
        grow = 1 + _rel(k)
        fro = math.sqrt(self.sq * grow) * (1 + 4 * EPS)
        col = float(self.col.max()) if self.col.numel() else 0.0
        mixed = math.sqrt(col * self.row * grow * grow) * (1 + 4 * EPS)
        return _up(min(fro, mixed))


def reference_bound(graph: Graph, ranges: Mapping[str, Interval], pools: Mapping[str, Choice] | None = None,
                    *, budget_s: float = math.inf, max_rows: int = MAX_ROWS) -> ReferenceResult | None:
    """The bound of the module over the box that ``ranges`` enclose (every value's range over it),
    with the max pools' choices ``pools`` where given (``analyses.symbolic``); None where the graph
    has an operator without a rule here, several inputs, too many outputs or perturbed units, or
    where its reverse-mode products (one pass a row: the outputs and every perturbed unit) are
    planned above ``budget_s``."""
    import torch

    if len(graph.inputs) != 1:
        return None
    shapes = _shapes(graph)
    spec = graph.inputs[0]
    n_out = sum(int(np.prod(shapes[o])) for o in graph.outputs)
    if n_out > MAX_OUTPUTS or any(name not in ranges for name in shapes):
        return None
    nonlinear: dict[str, _Nonlinear] = {}
    maps: dict[str, Callable[..., torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    gamma = 0.0
    macs = 0.0
    try:
        for node in graph.nodes:
            op = node.op
            if isinstance(op, LINEAR) and len(node.inputs) == 1:
                maps[node.output] = _linear_parts(node, shapes)[0]
                alphas[node.output], rel = _abs_norm(node)
                per = int(np.prod(np.asarray(op.weight).shape[1:])) if isinstance(op, (O.Conv, O.Linear)) else 1
                macs += float(np.prod(shapes[node.output])) * per
            elif isinstance(op, MOVES):
                maps[node.output] = _single(node, op, shapes)
                alphas[node.output], rel = 1.0, 0.0
            elif isinstance(op, (O.Add, O.Sub)) and len(node.inputs) == 2:
                if shapes[node.inputs[0]] != shapes[node.inputs[1]]:
                    return None
                alphas[node.output], rel = 1.0, 0.0
            elif isinstance(op, (O.MaxPool, O.Softmax)) or op.type in O.ACTIVATIONS:
                if len(node.inputs) != 1 or (isinstance(op, O.MaxPool) and len(op.kernel) != 2):
                    return None
                nl = _nonlinear(node, shapes, ranges, pools or {})
                nonlinear[node.output] = nl
                alphas[node.output], rel = nl.alpha, nl.rel
            else:
                return None
            gamma += rel + 2 * EPS
    except UnsupportedOperatorError:
        return None
    gamma = _up(1.01 * gamma)
    active = [nl for nl in nonlinear.values() if nl.e > 0 and nl.rows_in.numel() and nl.cols_out.numel()]
    rows_total = sum(int(nl.rows_in.numel()) for nl in active)
    if rows_total > max_rows or (n_out + rows_total) * macs / REVERSE_MACS_PER_S > budget_s:
        return None
    order = {node.output: i for i, node in enumerate(graph.nodes)}

    def nb_from(start: str) -> dict[str, float]:
        """Composed || |A| || bounds from ``start`` to every value after it."""
        nb = {start: 1.0}
        for node in graph.nodes[order.get(start, -1) + 1:]:
            got = [nb[name] for name in node.inputs if name in nb]
            if got:
                nb[node.output] = _up(alphas[node.output] * sum(got) * (1 + 4 * EPS))
        return nb

    # the reference network (linear), every value kept for reverse-mode products
    x = torch.zeros(spec.shape, dtype=torch.float64, requires_grad=True)
    env: dict[str, torch.Tensor] = {spec.name: x}
    for node in graph.nodes:
        args = [env[name] for name in node.inputs]
        if node.output in nonlinear:
            env[node.output] = nonlinear[node.output].apply(args[0])
        elif isinstance(node.op, O.Add):
            env[node.output] = args[0] + args[1]
        elif isinstance(node.op, O.Sub):
            env[node.output] = args[0] - args[1]
        else:
            env[node.output] = maps[node.output](*args)
    outs = torch.cat([env[o].reshape(-1) for o in graph.outputs])
    ys = [env[nl.node.output] for nl in active]

    def back(target: torch.Tensor, rows: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Reverse-mode products of ``rows`` (one-hot batches over ``target``) to the input and to
        the outputs of the first ``upto`` active nodes (zeros where a path is missing)."""
        wanted = [x, *ys[:upto]]
        spend(rows.shape[0] * macs / REVERSE_MACS_PER_S)
        got = torch.autograd.grad(target, wanted, rows, retain_graph=True, allow_unused=True, is_grads_batched=True)
        return [g if g is not None else torch.zeros(rows.shape[0], *w.shape, dtype=torch.float64)
                for g, w in zip(got, wanted, strict=True)]

    n_o = outs.numel()
    grads = back(outs, torch.eye(n_o, dtype=torch.float64), len(active))
    nb_x = nb_from(spec.name)
    out_nb = math.sqrt(sum(nb_x.get(o, 0.0) ** 2 for o in graph.outputs))
    j0 = _up(_norm(grads[0].reshape(n_o, -1)) + gamma * out_nb)
    a_n: list[float] = []
    nbs = [nb_from(nl.node.output) for nl in active]
    for i, nl in enumerate(active):
        p = grads[1 + i].reshape(n_o, -1)[:, nl.cols_out]
        o_nb = math.sqrt(sum(nbs[i].get(o, 0.0) ** 2 for o in graph.outputs))
        a_n.append(_up(_norm(p) + gamma * o_nb))
    del grads
    s_n: list[float] = []
    cross: dict[tuple[int, int], float] = {}
    for m, nl in enumerate(active):
        check_deadline()
        src = nl.node.inputs[0]
        z = env[src]
        size = z.numel()
        blocks: list[torch.Tensor] = []
        block_norms: list[float] = []
        accs = [_Cross(int(active[n].cols_out.numel())) for n in range(m)]
        for begin in range(0, int(nl.rows_in.numel()), ROW_BATCH):
            part = nl.rows_in[begin: begin + ROW_BATCH]
            k = int(part.numel())
            rows = torch.zeros(k, size, dtype=torch.float64)
            rows[torch.arange(k), part] = 1.0
            got = back(z, rows.reshape(k, *z.shape), m)
            blocks.append(got[0].reshape(k, -1))
            if sum(b.shape[0] for b in blocks) >= NORM_BLOCK:
                block_norms.append(_norm(torch.cat(blocks)))
                blocks = []
            for n in range(m):
                accs[n].add(got[1 + n].reshape(k, -1)[:, active[n].cols_out])
        if blocks:
            block_norms.append(_norm(torch.cat(blocks)))
        stacked = math.sqrt(sum(u * u for u in block_norms) * (1 + 8 * EPS)) if len(block_norms) > 1 else block_norms[0]
        s_n.append(_up(stacked + gamma * nb_x.get(src, 0.0)))
        for n in range(m):
            size_n = int(np.prod(shapes[active[n].node.output]))
            cross[(m, n)] = _up(accs[n].bound(size_n) + gamma * nbs[n].get(src, 0.0))
    # p_n from the last node back, then the sum
    p_n = [0.0] * len(active)
    for n in range(len(active) - 1, -1, -1):
        total = a_n[n]
        for m in range(n + 1, len(active)):
            total += p_n[m] * active[m].e * cross[(m, n)] * (1 + 4 * EPS)
        p_n[n] = _up(total * (1 + 4 * EPS))
    upper = j0
    for n, nl in enumerate(active):
        upper += p_n[n] * nl.e * s_n[n] * (1 + 4 * EPS)
    upper = _up(upper * (1 + 4 * EPS) + TINY)
    return ReferenceResult(upper=upper, reference=j0, perturbed=rows_total, nodes=len(active))


__all__ = ["MAX_OUTPUTS", "MAX_ROWS", "ReferenceResult", "reference_bound"]
