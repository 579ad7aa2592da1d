"""Residual channel: certified Lip(f), CFL value and growth of each block x -> S(x) + h*f(x), with Jacobians at samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.composition import _add, _mul, compose
from stabaudit.bounds.base import Guarantee, Interval, OpBound
from stabaudit.errors import UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.patterns import ResidualMatch, Shortcut, find_residual_blocks
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    import torch

DENSE_MAX = 1024  # full Jacobian (jacrev) when both sides of the block have at most this many entries
KRYLOV_STEPS = 40  # power iteration / Lanczos steps for larger blocks
MAX_POINTS = 16  # samples analysed per block (the first ones): jacrev per point and block
_STEPS_T = (1e-3, 1e-5, 1e-7)  # difference-quotient steps, times (||x|| + 1)
# Operators under which a branch is affine: J_f is then the same at every point.
_AFFINE_OPS = O.LINEAR_MAPS | O.STRUCTURAL | {O.OpType.AFFINE, O.OpType.ADD, O.OpType.SUB}


def _down(v: float) -> float:
    return math.nextafter(v, -math.inf) if math.isfinite(v) else v


def _up_nonzero(v: float) -> float:
    """An upper bound of the exact difference whose rounded value is ``v`` (>= 0): with gradual
    underflow x - y rounds to 0 only when x = y, so 0 stays 0; anything else moves one ulp up."""
    return max(v, 0.0) if v <= 0.0 else math.nextafter(v, math.inf)


@dataclass(frozen=True, kw_only=True)
class BlockResult:
    """One block's numbers; see report.model.ResidualBlock for their meaning."""

    match: ResidualMatch
    h: float
    lip_f_upper: float
    lip_f_lower: float | None
    certified: bool
    cfl: float
    growth_upper: float
    growth_lower: float | None
    shortcut_norm: float | None
    mu: float | None
    jacobian_norm: float | None
    h_star: float | None
    notes: tuple[str, ...]
    witness: BranchLower | None = None  # the pair behind lip_f_lower (branch inputs, flat)
    growth_witness: BranchLower | None = None  # the pair behind growth_lower (None: 1 - h Lip f)


@dataclass(frozen=True, kw_only=True)
class ResidualAnalysis:
    blocks: tuple[BlockResult, ...]
    samples: int  # number of sample points analysed per block (0 without samples)


def _subgraph(graph: Graph, x: str, output: str, nodes: tuple[Node, ...]) -> Graph:
    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    return Graph(
        inputs=(TensorSpec(name=x, shape=shapes[x]),), outputs=(output,), nodes=nodes, shapes=shapes
    )


def _block_graph(graph: Graph, m: ResidualMatch) -> Graph:
    """x -> S(x) + branch(x): the branch, the projection and the Add, in topological order."""
    members = {id(n) for n in m.branch} | {id(m.add)}
    if m.projection is not None:
        members.add(id(m.projection))
    nodes = tuple(n for n in graph.nodes if id(n) in members)
    return _subgraph(graph, m.x, m.add.output, nodes)


def analyse_residual(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    samples: np.ndarray | None = None,
    *,
    seed: int = 0,
    whole: Mapping[str, WholeBlock] | None = None,
    lower_budget_s: float = 0.0,
    points_budget_s: float | None = None,
) -> ResidualAnalysis:
    """Every residual block of ``graph`` (which carries its shapes) with its bounds.

    ``op_bounds``: the certified per-node bounds keyed by node output (those the engine gives to
    ``composition.compose``). ``samples``: [N, ...] model inputs (each of the stacked input size);
    the Jacobians are taken at the block input of each (at most MAX_POINTS of them). ``whole``:
    the blocks' whole-block bounds (``block_bounds``) when already computed, else computed here.
    ``lower_budget_s``: the planned work (analyses.plan) of each block's own lower-bound search
    (``branch_lower``: around the branch input at the samples, else over all branch inputs); 0:
    no search, lower bounds only from the samples (or x = 0 for an affine branch).
    ``points_budget_s``: the planned work of each block's Jacobians at the samples
    (analyses.plan.residual_points: fewer points, then fewer Krylov steps, then none); None: every
    point (up to MAX_POINTS) with KRYLOV_STEPS steps.
    """
    matches = find_residual_blocks(graph)
    if not matches:
        return ResidualAnalysis(blocks=(), samples=0)
    points = _block_inputs(graph, matches, samples) if samples is not None else None
    if whole is None:
        whole = block_bounds(graph, op_bounds)
    blocks = tuple(
        _analyse(graph, m, op_bounds, points, seed, whole.get(m.add.output), lower_budget_s, points_budget_s)
        for m in matches
    )
    n = 0 if points is None else len(next(iter(points.values()), []))
    return ResidualAnalysis(blocks=blocks, samples=n)


def _block_inputs(
    graph: Graph, matches: tuple[ResidualMatch, ...], samples: np.ndarray
) -> dict[str, list[np.ndarray]]:
    """The value of each block input x at each sample (float64, flat)."""
    import torch

    from stabaudit.ir.executor import Executor

    x = np.asarray(samples, dtype=np.float64)
    sizes = [int(np.prod(s.shape)) for s in graph.inputs]
    if x.ndim < 1 or x.shape[0] == 0 or int(np.prod(x.shape[1:])) != sum(sizes):
        raise UsageError(f"samples of shape {x.shape} do not split into inputs of {sum(sizes)} entries")
    rows = x.reshape(x.shape[0], -1)[:MAX_POINTS]
    ex = Executor(graph, dtype=torch.float64)
    wanted = {m.x for m in matches}
    out: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for row in rows:
        check_deadline()
        parts = np.split(row, np.cumsum(sizes)[:-1])
        inputs = {
            s.name: torch.from_numpy(p.reshape(s.shape).copy())
            for s, p in zip(graph.inputs, parts, strict=True)
        }
        with torch.no_grad():
            env = ex.run(inputs, keep=True)
        for name in wanted:
            out[name].append(env[name].reshape(-1).numpy().astype(np.float64))
    return out


def _analyse(
    graph: Graph,
    m: ResidualMatch,
    op_bounds: Mapping[str, OpBound],
    points: Mapping[str, list[np.ndarray]] | None,
    seed: int,
    whole: WholeBlock | None = None,
    lower_budget_s: float = 0.0,
    points_budget_s: float | None = None,
) -> BlockResult:
    notes: list[str] = []
    g = _subgraph(graph, m.x, m.inner_output, m.inner)
    comp = compose(g, op_bounds)
    lip_g = float(comp.upper.value)
    certified = comp.upper.guarantee is Guarantee.UPPER and math.isfinite(lip_g)
    h = m.h
    if m.scale is not None:
        assert isinstance(m.scale.op, O.Affine) and m.scale.op.scale is not None
        scale = np.asarray(m.scale.op.scale, dtype=np.float64)
        if h == 0.0:
            h = 0.0
            notes.append(f"the branch scale (node {m.scale.name!r}) is 0: the block is its shortcut")
        elif scale.size == 1:
            notes.append(
                f"explicit scale {float(scale.reshape(-1)[0]):.6g} at the end of the branch "
                f"(node {m.scale.name!r}): h = {h:.6g}, f = sign(scale) * the branch without it"
            )
        else:
            notes.append(
                f"vector (layer) scale of {scale.size} entries at the end of the branch "
                f"(node {m.scale.name!r}): h = max|scale| = {h:.6g}, f = (scale/h) * g with g the "
                "branch without the scale; |scale/h| <= 1, so Lip f <= Lip g"
            )
    # Lip(f) <= Lip(g): f = (scale/h) g with |scale/h| <= 1 entrywise (exactly, h is one |scale_i|)
    lip_f = lip_g
    cfl = _mul(h, lip_f)
    shortcut_norm = None
    if m.shortcut is Shortcut.IDENTITY:
        growth = _add(1.0, cfl)  # ||I + h J_f|| <= 1 + h Lip f (triangle inequality)
        if whole is not None and certified and whole.value < growth:
            growth = whole.value
            notes.append(whole.note + f", below 1 + h Lip f = {_add(1.0, cfl):.6g}")
    else:
        assert m.projection is not None
        pb = op_bounds[m.projection.output].upper
        shortcut_norm = float(pb.value)
        certified = certified and pb.guarantee is Guarantee.UPPER and math.isfinite(shortcut_norm)
        growth = _add(shortcut_norm, cfl)  # ||P + h J_f|| <= ||P|| + h Lip f
        notes.append(
            f"projection shortcut (node {m.projection.name!r}): the block is P x + h f(x); THEORY's "
            "CFL and dissipativity conditions are stated for identity shortcuts, so mu and h* are "
            "not applicable; growth uses ||P|| + h Lip f"
        )
    if not certified:
        notes.append("Lip f rests on an estimate somewhere in the branch: not certified")

    affine = all(n.op.type in _AFFINE_OPS for n in m.inner)
    at: list[np.ndarray] = []
    if points is not None:
        at = points[m.x]
    elif affine:
        at = [np.zeros(int(np.prod(graph.shapes[m.x])), dtype=np.float64)]
        notes.append("affine branch: J_f is the same everywhere, taken at x = 0")
    steps = KRYLOV_STEPS
    if at and points_budget_s is not None:
        from stabaudit.analyses import plan
        from stabaudit.analyses.lower import forward_macs

        _, out_n, square, dense = _jacobian_form(graph, m)
        shapes = {k: tuple(v) for k, v in graph.shapes.items()}
        block = _block_graph(graph, m)
        count, steps = plan.residual_points(
            points_budget_s, forward_macs(block, shapes), len(at),
            dense_passes=(out_n if square else 2 * out_n) if dense else None, square=square, steps=KRYLOV_STEPS,
            call=plan.call_macs(len(block.nodes)))
        if count < len(at):
            notes.append(f"Jacobians at {count} of {len(at)} sample point(s): what the budget plans"
                         + ("" if count else " (--budget buys none at this size)"))
        at = at[:count]
    sampled = _at_points(graph, m, op_bounds, at, h, seed, steps) if at else None

    # the best witnessed quotient of the branch h*f: at the samples, then the branch's own search
    found = sampled.witness if sampled is not None else None
    if found is not None:
        found = _with_fold(branch_graph(graph, m), op_bounds, found)
    if lower_budget_s > 0.0 and h > 0.0:
        boxes = activation_boxes(at) if points is not None else None
        searched = branch_lower(graph, m, op_bounds, seed=seed, budget_s=lower_budget_s, boxes=boxes)
        if searched.value > (found.value if found is not None else 0.0):
            found = searched
            notes.append(
                "lower bound of Lip f: " + searched.method
                + (" (pairs inside boxes around the branch input at the samples)" if boxes is not None else "")
            )
    if found is not None and not found.value > 0.0:
        found = None
    lip_f_lower = _down(found.value / h) if found is not None and h > 0.0 else None
    # the block's own witnessed quotient at the samples (less the slack of merged weights)
    block_found = sampled.block_witness if sampled is not None else None
    if block_found is not None:
        block_found = _with_fold(_block_graph(graph, m), op_bounds, block_found)
        if not block_found.value > 0.0:
            block_found = None
    growth_lower = block_found.value if block_found is not None else None
    growth_witness = block_found
    if m.shortcut is Shortcut.IDENTITY:
        # ||x - y + h (f(x) - f(y))|| >= (1 - h Lip f) ||x - y|| (for every pair: no witness needed)
        # and >= (||b(x) - b(y)|| / ||x - y|| - 1) ||x - y|| at the branch's witness pair
        if found is not None:
            via = _down(found.value - 1.0)
            if via > (growth_lower or 0.0):
                growth_lower = via
                growth_witness = BranchLower(value=via, x=found.x, y=found.y,
                                             method="the branch's witness pair, reverse triangle inequality")
        if certified and _down(1.0 - cfl) > (growth_lower or 0.0):
            growth_lower, growth_witness = _down(1.0 - cfl), None
    if sampled is not None and sampled.notes:
        notes.extend(sampled.notes)
    identity = m.shortcut is Shortcut.IDENTITY
    return BlockResult(
        match=m,
        h=h,
        lip_f_upper=lip_f,
        lip_f_lower=lip_f_lower,
        certified=certified,
        cfl=cfl,
        growth_upper=growth,
        growth_lower=growth_lower,
        shortcut_norm=shortcut_norm,
        mu=sampled.mu if sampled is not None and identity else None,
        jacobian_norm=sampled.jacobian_norm if sampled is not None else None,
        h_star=sampled.h_star if sampled is not None and identity else None,
        notes=tuple(notes),
        witness=found if lip_f_lower is not None else None,
        growth_witness=growth_witness if growth_lower is not None else None,
    )


@dataclass(frozen=True, kw_only=True)
class _Sampled:
    mu: float | None
    jacobian_norm: float | None
    h_star: float | None
    lip_f_lower: float | None
    block_lower: float | None
    notes: tuple[str, ...]
    witness: BranchLower | None = None
    block_witness: BranchLower | None = None  # the pair behind block_lower (block inputs)


def _flat(graph: Graph) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    from stabaudit.ir.executor import Executor

    return Executor(graph, dtype=torch.float64).flat()


def _jacobian_form(graph: Graph, m: ResidualMatch) -> tuple[int, int, bool, bool]:
    """(block input entries n, branch output entries, square: an identity shortcut with the same
    size (mu and h* apply), dense: full Jacobians by jacrev (both sides at most DENSE_MAX))."""
    n = int(np.prod(graph.shapes[m.x]))
    out_n = int(np.prod(graph.shapes[m.branch_output]))
    return n, out_n, m.shortcut is Shortcut.IDENTITY and out_n == n, max(n, out_n) <= DENSE_MAX


def _at_points(
    graph: Graph,
    m: ResidualMatch,
    op_bounds: Mapping[str, OpBound],
    points: list[np.ndarray],
    h: float,
    seed: int,
    steps: int = KRYLOV_STEPS,
) -> _Sampled:
    """J_f at each point: mu = lambda_max((J_f + J_f^T)/2), ||J_f||_2, h* = 2|mu| / ||J_f||^2, and
    sound lower bounds of Lip f and of the block's Lipschitz constant from confirmed difference
    quotients along the top right singular vectors (analyses.lower's float64 error bound)."""
    import torch

    from stabaudit.analyses.lower import ForwardErrorModel, confirm_quotient, error_sensitivities

    branch = _subgraph(graph, m.x, m.branch_output, m.branch)
    block = _block_graph(graph, m)
    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    fb, fB = _flat(branch), _flat(block)
    model_b = ForwardErrorModel(branch, shapes, error_sensitivities(branch, op_bounds))
    model_B = ForwardErrorModel(block, shapes, error_sensitivities(block, op_bounds))
    n, out_n, square, dense = _jacobian_form(graph, m)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    # the branch is h*f: divide its Jacobian by h (h = 0: f is the branch itself)
    div = h if h > 0.0 else 1.0
    mus: list[float] = []
    norms: list[float] = []
    stars: list[float | None] = []
    best_q, best_block = 0.0, 0.0
    best_pair: tuple[np.ndarray, np.ndarray] | None = None
    block_pair: tuple[np.ndarray, np.ndarray] | None = None
    for p in points:
        check_deadline()
        x0 = torch.from_numpy(p.copy())
        if dense:
            Jb = torch.func.jacrev(fb)(x0).detach().numpy().reshape(out_n, n)
            J = Jb / div
            sigma, v = _top_singular(J, rng)
            mu = _top_eigenvalue((J + J.T) / 2.0, rng) if square else None
            if square:
                JB = Jb + np.eye(n)  # d(x + branch(x))/dx
            else:
                JB = torch.func.jacrev(fB)(x0).detach().numpy()
                JB = JB.reshape(JB.shape[0], n)
            vB = _top_singular(JB, rng)[1]
        else:
            sigma, vt_ = _power(fb, x0, gen, steps)
            sigma, v = sigma / div, vt_
            mu = _lanczos_mu(fb, x0, gen, steps) / div if square else None
            vB = _power(fB, x0, gen, steps)[1]
        norms.append(sigma)
        if mu is not None:
            mus.append(mu)
            stars.append(2.0 * abs(mu) / (sigma * sigma) if mu < 0.0 and sigma > 0.0 else None)
        scale = float(np.linalg.norm(p)) + 1.0
        for t in _STEPS_T:
            for direction, model, which in ((v, model_b, "f"), (vB, model_B, "block")):
                d = torch.from_numpy(np.asarray(direction, dtype=np.float64) * (t * scale))
                q = confirm_quotient(model, x0, x0 + d)
                if which == "f":
                    if q > best_q:
                        best_q, best_pair = q, (x0.numpy().copy(), (x0 + d).numpy().copy())
                else:
                    if q > best_block:
                        best_block, block_pair = q, (x0.numpy().copy(), (x0 + d).numpy().copy())
    lip_f_lower = _down(best_q / h) if best_q > 0.0 and h > 0.0 else None
    mu_max = max(mus) if mus else None
    h_star = None
    if mus and all(s is not None for s in stars):
        h_star = min(s for s in stars if s is not None)
    notes = [
        ("mu, ||J_f|| and h*" if square else "||J_f||")
        + f" at {len(points)} point(s): "
        + ("full Jacobian (jacrev)" if dense else f"{steps} power/Lanczos steps (lower estimates)")
        + "; at a ReLU kink autograd picks one element of the Clarke Jacobian"
    ]
    if best_q > 0.0 or best_block > 0.0:
        notes.append(
            "lower bounds: confirmed difference quotients (float64 error bound) on the graph with "
            "BatchNorm folded (folded weights carry a relative rounding of 2^-53)"
        )
    return _Sampled(
        mu=mu_max,
        jacobian_norm=max(norms) if norms else None,
        h_star=h_star,
        lip_f_lower=lip_f_lower,
        block_lower=best_block if best_block > 0.0 else None,
        notes=tuple(notes),
        witness=(
            BranchLower(value=best_q, x=tuple(best_pair[0].tolist()), y=tuple(best_pair[1].tolist()),
                        method="difference quotient along the top singular vector of J_f at a sample")
            if best_pair is not None and lip_f_lower is not None
            else None
        ),
        block_witness=(
            BranchLower(value=best_block, x=tuple(block_pair[0].tolist()), y=tuple(block_pair[1].tolist()),
                        method="difference quotient of the block along its top singular vector at a sample")
            if block_pair is not None and best_block > 0.0
            else None
        ),
    )


# ---- a lower bound of the branch's own Lipschitz constant: a search on the branch alone --------------
ACTIVATION_RADIUS = 0.25  # linf radius of the boxes around the activations, times (rms(x) + 1)
# the global search on a branch alone (analyses.lower): fewer starts and rounds than the model's own
BRANCH_STARTS = 8
BRANCH_ROUNDS = 10
DOMAIN_SEARCH_BOXES = 4  # over a domain of many boxes, the branch is searched in this many (largest bounds)


@dataclass(frozen=True, kw_only=True)
class BranchLower:
    """A sound lower bound of the branch's Lipschitz constant (the branch is h*f, so this is
    h * a lower bound of Lip f): ||b(y) - b(x)|| / ||y - x|| >= value for the witness pair (x, y)
    of branch inputs (flat), confirmed in float64; value 0: nothing confirmed."""

    value: float
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    method: str = ""


def branch_graph(graph: Graph, m: ResidualMatch) -> Graph:
    """The branch x -> h*f(x) alone (the scale included), with the graph's shapes."""
    return _subgraph(graph, m.x, m.branch_output, m.branch)


def _fold_slack(branch: Graph, op_bounds: Mapping[str, OpBound], x: np.ndarray, y: np.ndarray) -> float:
    """An upper bound of ||b_A(x) - b_W(x)|| + ||b_A(y) - b_W(y)||, b_W the branch with the weights
    as the folded graph stores them and b_A the maps they stand for (a node with ``error`` e:
    ||A - W||_2 <= e, a BatchNorm folded into its linear map or two merged linear maps); 0 when
    no node of the branch carries an error.

    Telescoping over those nodes (replace W by A one node at a time): each replacement moves
    the output by at most S_v * e_v * ||u_v||, S_v the certified sensitivity of the output to
    the node's output (composition.output_sensitivities) and u_v the node's input. ||u_v|| is
    taken as twice its computed float64 norm: it covers the float64 error of the computed value
    and the second-order terms of the earlier replacements (each a relative 2^-53-sized term)."""
    import torch

    from stabaudit.analyses.lower import error_sensitivities
    from stabaudit.ir.executor import Executor

    errors = [(n, float(getattr(n.op, "error", 0.0))) for n in branch.nodes]
    errors = [(n, e) for n, e in errors if e > 0.0]
    if not errors:
        return 0.0
    sens = error_sensitivities(branch, op_bounds) or {}
    ex = Executor(branch, dtype=torch.float64)
    (spec,) = branch.inputs
    total = 0.0
    for point in (x, y):
        with torch.no_grad():
            env = ex.run({spec.name: torch.from_numpy(np.asarray(point, dtype=np.float64).reshape(spec.shape).copy())},
                         keep=True)
        for node, e in errors:
            u = float(np.linalg.norm(env[node.inputs[0]].numpy().astype(np.float64)))
            s_v = sens.get(node.output, math.inf)
            total = _add(total, _mul(_mul(s_v, e), _mul(2.0, u)))
    return total


def _with_fold(branch: Graph, op_bounds: Mapping[str, OpBound], found: BranchLower) -> BranchLower:
    """``found`` with the folded weights' slack taken off its quotient (0 when nothing is left):
    ||b_A(y) - b_A(x)|| >= ||b_W(y) - b_W(x)|| - slack (triangle inequality)."""
    if found.value <= 0.0:
        return found
    x, y = np.asarray(found.x, dtype=np.float64), np.asarray(found.y, dtype=np.float64)
    slack = _fold_slack(branch, op_bounds, x, y)
    if slack == 0.0:
        return found
    den = _down(float(np.linalg.norm(y - x)) * (1.0 - 16 * 2.0**-53))
    value = _down(found.value - math.nextafter(slack / den, math.inf)) if den > 0.0 else 0.0
    if not value > 0.0:
        return BranchLower(value=0.0, method=found.method + "; the folded weights' slack exceeds the quotient")
    return BranchLower(value=value, x=found.x, y=found.y,
                       method=found.method + "; less the slack of the folded weights")


def branch_lower(
    graph: Graph,
    m: ResidualMatch,
    op_bounds: Mapping[str, OpBound],
    *,
    seed: int,
    budget_s: float,
    boxes: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> BranchLower:
    """A witnessed lower bound of Lip(h*f), the branch's Lipschitz constant: a difference-quotient
    search on the branch alone, its work counted from ``budget_s`` (analyses.plan), pairs confirmed
    in float64 (analyses.lower.confirm_quotient) with the folded weights' slack taken off.

    ``boxes``: flat (lo, hi) boxes of branch inputs where the pairs must lie (the branch input's
    value ranges over the audit domain, or boxes around its activations at the sample inputs);
    the search is then analyses.domain_lower's, inside them. None: the global search of
    analyses.lower (seeded normal points at scales 1, 3, 10, then ascent) over all branch inputs.
    """
    from stabaudit.analyses.domain_bound import Boxes
    from stabaudit.analyses.domain_lower import domain_lower
    from stabaudit.analyses.lower import lower_bound

    branch = branch_graph(graph, m)
    if boxes is None:
        low = lower_bound(branch, seed=seed, budget_s=budget_s, op_bounds=op_bounds, starts=BRANCH_STARTS,
                          steps=BRANCH_ROUNDS, smallest_slack_s=0.0, share=True)
        if low.witness is None or not low.value > 0.0:
            return BranchLower(value=0.0, method=low.method)
        found = BranchLower(value=low.value, x=tuple(low.witness.x), y=tuple(low.witness.y),
                            method="the branch alone: " + low.method)
    else:
        (spec,) = branch.inputs
        shaped = tuple(
            {spec.name: Interval(lo=lo.reshape(spec.shape).copy(), hi=hi.reshape(spec.shape).copy())}
            for lo, hi in boxes
        )
        low_d = domain_lower(branch, Boxes(kind="box", description="branch input boxes", boxes=shaped),
                             seed=seed, budget_s=budget_s, op_bounds=op_bounds)
        if not low_d.value > 0.0:
            return BranchLower(value=0.0, method=low_d.method)
        found = BranchLower(value=low_d.value, x=low_d.x, y=low_d.y, method="the branch alone: " + low_d.method)
    return _with_fold(branch, op_bounds, found)


def activation_boxes(points: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where the branch's input lives on the samples: the box that holds x_i +- r_i on every
    entry for every sample's branch input x_i, r_i = ACTIVATION_RADIUS * (rms(x_i) + 1). One box:
    the search's work per box is planned separately (each box costs its rounds of calls)."""
    lo = hi = None
    for p in points:
        r = ACTIVATION_RADIUS * (float(np.sqrt(np.mean(p * p))) + 1.0)
        lo = p - r if lo is None else np.minimum(lo, p - r)
        hi = p + r if hi is None else np.maximum(hi, p + r)
    return [] if lo is None or hi is None else [(lo, hi)]


_DENSE_EIG_MAX = 64  # below this size a full decomposition is cheaper than ARPACK


def _top_singular(J: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """||J||_2 and a top right singular vector (ARPACK with a seeded start: deterministic)."""
    if min(J.shape) <= _DENSE_EIG_MAX:
        _, s, vt = np.linalg.svd(J, full_matrices=False)
        return float(s[0]), vt[0]
    from scipy.sparse.linalg import svds

    v0 = rng.standard_normal(min(J.shape))
    u, s, vt = svds(J, k=1, v0=v0, tol=1e-13, random_state=0)
    return float(s[0]), vt[0]


def _top_eigenvalue(S: np.ndarray, rng: np.random.Generator) -> float:
    """lambda_max of a symmetric matrix (ARPACK Lanczos with a seeded start)."""
    if S.shape[0] <= _DENSE_EIG_MAX:
        return float(np.linalg.eigvalsh(S)[-1])
    from scipy.sparse.linalg import eigsh

    v0 = rng.standard_normal(S.shape[0])
    return float(eigsh(S, k=1, which="LA", v0=v0, tol=1e-13)[0][0])


def _power(
    f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, gen: torch.Generator,
    steps: int = KRYLOV_STEPS,
) -> tuple[float, np.ndarray]:
    """||J(x0)||_2 from below and its right singular vector: power iteration on J^T J (jvp/vjp)."""
    import torch

    pull = torch.func.vjp(f, x0)[1]
    v = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(steps):
        check_deadline()
        u = torch.func.jvp(f, (x0,), (v,))[1]
        sigma = float(u.norm())
        w = pull(u)[0]
        nw = float(w.norm())
        if nw == 0.0:
            break
        v = w / nw
    u = torch.func.jvp(f, (x0,), (v,))[1]
    return max(sigma, float(u.norm())), v.detach().numpy()


def _lanczos_mu(
    f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, gen: torch.Generator,
    steps: int = KRYLOV_STEPS,
) -> float:
    """lambda_max((J + J^T)/2) at x0 by Lanczos with full reorthogonalisation (a Ritz value:
    from below)."""
    import torch

    pull = torch.func.vjp(f, x0)[1]

    def sym(v: torch.Tensor) -> torch.Tensor:
        return (torch.func.jvp(f, (x0,), (v,))[1] + pull(v)[0]) / 2.0

    q = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, x0.numel())):
        check_deadline()
        w = sym(basis[-1])
        alphas.append(float(w @ basis[-1]))
        for b in basis:  # full reorthogonalisation: keeps the Ritz values honest
            w = w - (w @ b) * b
        beta = float(w.norm())
        if beta < 1e-12:
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    return float(np.linalg.eigvalsh(T)[-1])


# ---- a residual block bounded as a whole ---------------------------------------------------------------
WHOLE_BLOCK_MAX = 2048  # input entries up to which the block's explicit matrices are formed (dense SVD)
U = 2.0**-53


def _matrix(graph: Graph, node: Node, x: str) -> np.ndarray:
    """The explicit matrix of one linear node at its input shape, bias removed: columns are the
    images of the basis vectors. A one-hot input makes every output entry a single stored weight
    times 1.0 plus exact zeros, so the float64 matrix is exact."""
    import dataclasses

    import torch

    from stabaudit.ir.executor import Executor

    assert isinstance(node.op, O.Linear | O.Conv)
    op: O.Op = dataclasses.replace(node.op, bias=None)
    sub = _subgraph(graph, x, node.output, (dataclasses.replace(node, op=op),))
    f = Executor(sub, dtype=torch.float64).flat()
    n = int(np.prod(graph.shapes[x]))
    with torch.no_grad():
        cols = torch.func.vmap(f)(torch.eye(n, dtype=torch.float64))
    return np.asarray(cols.numpy().T, dtype=np.float64)


def whole_block_bound(
    graph: Graph, m: ResidualMatch, op_bounds: Mapping[str, OpBound]
) -> tuple[float, str] | None:
    """A certified bound on the Lipschitz constant of an identity block x + s W2 sigma(W1 x) as a
    whole (one activation, slopes in [a, b], s a scalar scale or 1), or None where it does not apply.

    Every Clarke Jacobian of the block is I + s W2 D W1 with D diagonal, D_ii in [a, b]. Writing
    D = c I + E with c = fl((a + b)/2) and |E_ii| <= r = max(b - c, c - a) rounded up (triangle inequality):
    ||I + s W2 D W1|| <= ||I + s c W2 W1|| + |s| r ||W2|| ||W1||. The first norm is that of an
    explicit matrix (exact matrices of W1, W2; the product's rounding bounded entrywise by
    gamma_{k+3} (I + |s c| |W2| |W1|) and added in Frobenius norm, itself at most
    sqrt(n) + |s c| ||W2||_F ||W1||_F); ||W1||, ||W2|| are the nodes' certified bounds. A node that
    stands for a map A with ||A - W|| <= e (a merge or fold, ``error``) adds
    |s c| (e2 ||A1|| + (||A2|| + e2) e1). Never worse than 1 + |s| b ||W2|| ||W1|| when a >= 0 (and
    usually much better: the identity and the branch partly cancel, and ||W2 W1|| <= ||W2|| ||W1||).
    """
    from stabaudit.analyses.feedforward import slope_interval

    if m.shortcut is not Shortcut.IDENTITY or len(m.inner) != 3:
        return None
    lin1, act, lin2 = m.inner
    if not (isinstance(lin1.op, O.Linear | O.Conv) and isinstance(lin2.op, O.Linear | O.Conv)):
        return None
    slope = slope_interval(act.op)
    if slope is None or lin1.inputs[0] != m.x or act.inputs[0] != lin1.output or lin2.inputs[0] != act.output:
        return None
    s = 1.0
    if m.scale is not None:
        assert isinstance(m.scale.op, O.Affine) and m.scale.op.scale is not None
        scale = np.asarray(m.scale.op.scale, dtype=np.float64)
        if scale.size != 1:
            return None
        s = float(scale.reshape(-1)[0])
    n = int(np.prod(graph.shapes[m.x]))
    if n > WHOLE_BLOCK_MAX or graph.shapes[lin2.output] != graph.shapes[m.x]:
        return None
    u1, u2 = op_bounds[lin1.output].upper, op_bounds[lin2.output].upper
    if u1.guarantee is not Guarantee.UPPER or u2.guarantee is not Guarantee.UPPER:
        return None
    m1, m2 = _matrix(graph, lin1, m.x), _matrix(graph, lin2, act.output)
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        return None
    a, b = slope
    # the centre c is whatever (a + b) / 2 rounds to; the radius must reach both ends from it:
    # r >= max(b - c, c - a), each difference rounded up (a float difference is 0 only when exact)
    c = (a + b) / 2.0
    r = max(_up_nonzero(b - c), _up_nonzero(c - a))
    mat = np.eye(n) + (s * c) * (m2 @ m1)
    # roundings per entry: the dot product of m1.shape[0] terms, fl(s c), its product, the sum with I
    k = m1.shape[0] + 3
    gamma = 1.01 * k * U / (1.0 - k * U)
    # ||I + |s c| |W2| |W1|||_F <= sqrt(n) + |s c| ||W2||_F ||W1||_F (no second product needed)
    fro = math.sqrt(n) + abs(s * c) * float(np.linalg.norm(m2)) * float(np.linalg.norm(m1))
    err = gamma * fro * (1.0 + 1e-6)
    mid = _norm_upper(mat)
    radius = _mul(_mul(_mul(abs(s), r), float(u2.value)), float(u1.value))
    value = _add(_add(mid, err), radius)
    e1, e2 = float(lin1.op.error), float(lin2.op.error)
    if e1 or e2:
        # the nodes stand for A_i with ||A_i - W_i|| <= e_i (merged or folded maps) and
        # ||A_i|| <= u_i: ||A2 A1 - W2 W1|| <= e2 u1 + (u2 + e2) e1 (triangle inequality)
        moved = _add(_mul(e2, float(u1.value)), _mul(_add(float(u2.value), e2), e1))
        value = _add(value, _mul(_mul(abs(s), abs(c)), moved))
    if not math.isfinite(value):
        return None
    note = (
        f"bounded as a whole: ||I + s c W2 W1|| + |s| r ||W2|| ||W1|| = {value:.6g} over every Clarke "
        f"Jacobian (slopes [{a:g}, {b:g}])"
    )
    return value, note


# from this size up the explicit matrix's norm is certified by a Gram matrix and a shifted-Cholesky
# certificate (within 5e-5; several times faster than the SVD on large blocks)
_CHOLESKY_FROM = 512


def _norm_upper(mat: np.ndarray) -> float:
    """A certified upper bound on ||mat||_2: the SVD with its rounding margin on small matrices,
    bounds.gram's Gram-and-Cholesky certificate on large ones."""
    from stabaudit.bounds.numerics import spectral_norm_dense

    if min(mat.shape) < _CHOLESKY_FROM:
        return spectral_norm_dense(mat)[0]
    import torch

    from stabaudit.bounds.gram import gram_cholesky_max_norm

    return gram_cholesky_max_norm(torch.from_numpy(np.ascontiguousarray(mat))[None])[0].upper


@dataclass(frozen=True, kw_only=True)
class WholeBlock:
    """A residual block's certified whole-block bound: ``value`` bounds the Lipschitz constant of
    x -> block(x) with x the value ``x``; ``note`` says how."""

    x: str
    value: float
    note: str


def block_bounds(graph: Graph, op_bounds: Mapping[str, OpBound]) -> dict[str, WholeBlock]:
    """Add output -> the block's whole-block bound, for the blocks where it applies (computed once
    per audit: the composition and the residual channel both use it)."""
    out: dict[str, WholeBlock] = {}
    for m in find_residual_blocks(graph):
        check_deadline()
        found = whole_block_bound(graph, m, op_bounds)
        if found is not None:
            out[m.add.output] = WholeBlock(x=m.x, value=found[0], note=found[1])
    return out


# ---- the blocks over the audit domain ----------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DomainBlock:
    """One block over the audit domain D; see report.model.ResidualDomain for the meaning."""

    lip_f_upper: float
    certified: bool
    cfl: float
    growth_upper: float
    lip_f_lower: float | None
    growth_lower: float | None
    witness: BranchLower | None
    notes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class GlobalBlock:
    """The block's global numbers that bound it on D too (a global bound holds on every domain)."""

    lip_f_upper: float | None
    growth_upper: float | None
    certified: bool


def domain_blocks(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    per_box: Sequence[tuple[Mapping[str, Interval], Mapping[str, OpBound]]],
    *,
    seed: int,
    lower_budget_s: float = 0.0,
    global_blocks: Mapping[str, GlobalBlock] | None = None,
) -> dict[str, DomainBlock]:
    """Every residual block of ``graph`` over the audit domain, by Add name.

    ``per_box``: for each box B of the domain, the value ranges over B (at least those of the
    blocks' inputs) and the per-node bounds on those ranges (domain_bound.bound_over_box's).
    Upper: the branch's per-node bounds on the ranges composed over the branch (as
    ``analyse_residual`` composes the global ones): for x, y in R_B, the box of the block input's
    ranges over B, ||f(x) - f(y)|| <= Lip_B f ||x - y||, since each node maps the ranges of its
    inputs with its stated constant and every point of R_B maps into those ranges. Lip_D f is the
    largest over the boxes (the constant on R, their union), and never above the global bound.
    Growth: 1 + h Lip_D f (||P|| + h Lip_D f for a projection), never above the global growth.
    Lower: ``branch_lower`` inside the boxes R_B (pairs of R), with ``lower_budget_s`` per block;
    the block's lower bounds by the reverse triangle inequality as in ``_analyse``.
    """
    out: dict[str, DomainBlock] = {}
    for m in find_residual_blocks(graph):
        check_deadline()
        g = _subgraph(graph, m.x, m.inner_output, m.inner)
        lip_f, certified = 0.0, True
        boxes: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        wide = False
        for index, (ranges, local) in enumerate(per_box):
            comp = compose(g, local)
            value = float(comp.upper.value)
            certified = certified and comp.upper.guarantee is Guarantee.UPPER and math.isfinite(value)
            lip_f = max(lip_f, value) if math.isfinite(value) else math.inf
            r = ranges[m.x]
            lo, hi = np.asarray(r.lo, dtype=np.float64).ravel(), np.asarray(r.hi, dtype=np.float64).ravel()
            if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
                boxes.append((value, index, lo, hi))
                wide = wide or bool(np.any(hi > lo))
        # the search runs in the boxes whose upper bound is largest (where a violation can be)
        boxes.sort(key=lambda b: (-b[0] if math.isfinite(b[0]) else -math.inf, b[1]))
        search = [(lo, hi) for _, _, lo, hi in boxes[:DOMAIN_SEARCH_BOXES]]
        notes: list[str] = []
        known = global_blocks.get(m.name) if global_blocks is not None else None
        if (known is not None and known.certified and known.lip_f_upper is not None
                and (not certified or known.lip_f_upper < lip_f)):
            lip_f, certified = known.lip_f_upper, True
            notes.append("over the domain: the global bound of Lip f is the tighter one")
        h = m.h
        cfl = _mul(h, lip_f)
        if m.shortcut is Shortcut.IDENTITY:
            growth = _add(1.0, cfl)  # ||I + h J_f|| <= 1 + h Lip f on R
        else:
            assert m.projection is not None
            pb = op_bounds[m.projection.output].upper
            certified = certified and pb.guarantee is Guarantee.UPPER
            growth = _add(float(pb.value), cfl)  # ||P + h J_f|| <= ||P|| + h Lip f on R
        if known is not None and known.certified and known.growth_upper is not None and known.growth_upper < growth:
            growth = known.growth_upper
        found: BranchLower | None = None
        if lower_budget_s > 0.0 and h > 0.0 and search and wide:
            found = branch_lower(graph, m, op_bounds, seed=seed, budget_s=lower_budget_s, boxes=search)
            if found.value > 0.0:
                notes.append("lower bound of Lip f over the domain: " + found.method
                             + " (pairs inside the box of the block input's value ranges over the domain)")
            else:
                found = None
        lip_f_lower = _down(found.value / h) if found is not None else None
        growth_lower: float | None = None
        if m.shortcut is Shortcut.IDENTITY and wide:
            # on R: ||x - y + h (f(x) - f(y))|| >= (1 - h Lip f) ||x - y|| and >= (h q - 1) ||x - y||
            # for the witness pair (reverse triangle inequality)
            candidates = [0.0]
            if certified:
                candidates.append(_down(1.0 - cfl))
            if found is not None:
                candidates.append(_down(found.value - 1.0))
            growth_lower = max(candidates) if max(candidates) > 0.0 else None
        out[m.name] = DomainBlock(
            lip_f_upper=lip_f, certified=certified and math.isfinite(lip_f), cfl=cfl, growth_upper=growth,
            lip_f_lower=lip_f_lower, growth_lower=growth_lower, witness=found, notes=tuple(notes),
        )
    return out
