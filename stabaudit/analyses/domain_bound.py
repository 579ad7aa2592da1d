"""Lipschitz bounds over the audit domain: boxes from the domain, value ranges, local rules, composition.

The audit domain D (``--domain``, config ``domain:``) is a box, the samples' box widened by a
margin, or the union of linf balls around the samples. Each is given as boxes (one, or one per
ball; the bound over a union is the largest bound over its parts). Over each box B:
1. ``analyses.ranges.value_ranges`` encloses every tensor's values while the input ranges over B
   (interval arithmetic, rounded outward);
2. every node whose rule on those ranges (``bounds.ranged.ranged_bound``) is tighter than its
   global rule gets that bound: an operator whose slopes (or, for products, whose operands) are
   bounded on the enclosure of its inputs is Lipschitz there with the stated constant, and every
   point of B maps into those enclosures;
3. the per-node bounds are composed over the graph as the global ones are
   (``analyses.composition.compose``): the composition only uses that each node maps its inputs'
   ranges with the stated constant, so its result bounds ||F(x) - F(y)|| / ||x - y|| for x, y in B.
The domain bound is the smaller of that and the global bound (valid everywhere, so on D too).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit.analyses.plan import remaining, spend, spent
from stabaudit.analyses.samples import (
    BallDomain,
    Domain,
    MarginDomain,
    NormalDomain,
    UniformDomain,
    broadcast,
)
from stabaudit.bounds.base import Bound, Combine, Guarantee, Interval, OpBound, RuleContext
from stabaudit.errors import UsageError
from stabaudit.ir.graph import Graph
from stabaudit.limits import check_deadline

if TYPE_CHECKING:
    from stabaudit.analyses.feedforward import ChainCertificate

METHOD = "domain-composition"
BB_METHOD = "branch and bound over activation regions (LipBaB over the box)"
METHOD_REFERENCE = "reference Jacobian with perturbations on the units that may change state"
# symbolic intervals on receptive fields: planned at this many interval Jacobians on receptive
# fields (analyses.patch_jacobian.patch_cost; the clock over that count on the 2-core machine, a
# second run in the process: 0.39 on a CIFAR ResNet-2B, 0.48 on MTCNN O-Net, 0.68 on the OVAL21
# deep CNN, 0.96 on ResNet-4B; planned over taken from 0.68 to 1.65)
SYMBOLIC_PER_PATCH = 0.65
# balls of a ball domain bounded one by one; beyond, one box that holds them all (their hull)
MAX_BALLS = 64


@dataclass(frozen=True, kw_only=True)
class Boxes:
    """The audit domain as boxes (one Interval per graph input each); their union contains D."""

    kind: str  # box | ball | margin
    description: str
    boxes: tuple[Mapping[str, Interval], ...]
    radius: float | None = None
    notes: tuple[str, ...] = ()
    # boxes inside D (ends rounded inward), where the lower bound's witness pairs are searched: a
    # pair in one of them is a pair of D in exact arithmetic; empty: ``boxes`` themselves are in D
    inner: tuple[Mapping[str, Interval], ...] = ()

    @property
    def search(self) -> tuple[Mapping[str, Interval], ...]:
        """The boxes where a witness pair may be sought (each inside D)."""
        return self.inner or self.boxes

    @property
    def low(self) -> float:
        return float(min(float(np.min(b.lo)) for box in self.boxes for b in box.values()))

    @property
    def high(self) -> float:
        return float(max(float(np.max(b.hi)) for box in self.boxes for b in box.values()))


@dataclass(frozen=True, kw_only=True)
class DomainResult:
    """The certified bound over the domain (max over its boxes) and each node's local bound."""

    boxes: Boxes
    upper: Bound
    product: float  # the composed per-node gains over the domain (SA103's product), max over boxes
    node_uppers: Mapping[str, float]  # node name -> its largest local bound over the boxes (finite only)
    resolved: tuple[str, ...]  # nodes with no global bound that the ranges bound
    unresolved: tuple[str, ...]  # nodes the ranges still leave unbounded
    seconds: float
    notes: tuple[str, ...] = ()
    # per box, the value ranges and per-node bounds of the values ``domain_bound`` was asked to
    # keep (the residual blocks' inputs and branches: analyses.residual.domain_blocks)
    kept: tuple[tuple[Mapping[str, Interval], Mapping[str, OpBound]], ...] = ()
    # a ReLU chain's branch and bound over the boxes (``analyses.exact``): the largest certified
    # ||J|| of an activation region met inside the domain (a sound lower bound over D), its point
    lower: float = 0.0
    lower_point: tuple[float, ...] | None = None
    lower_method: str = ""
    bb_budget_s: float = 0.0  # the part of ``bb_budget_s`` the branch and bound took (0: it did not run)


def _down(a: np.ndarray) -> np.ndarray:
    return np.nextafter(a, -np.inf)


def _up(a: np.ndarray) -> np.ndarray:
    return np.nextafter(a, np.inf)


def _split(graph: Graph, flat: np.ndarray) -> dict[str, np.ndarray]:
    """One sample (flat, the inputs' entries concatenated) as arrays by graph input."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in graph.inputs:
        size = int(np.prod(spec.shape))
        out[spec.name] = flat[offset: offset + size].reshape(spec.shape)
        offset += size
    return out


def flat_box(graph: Graph, box: Mapping[str, Interval]) -> tuple[np.ndarray, np.ndarray]:
    """The box's ends flat (the inputs' entries concatenated, as in ``Executor.flat``): the inverse
    of ``_split``."""
    lo = np.concatenate([np.asarray(box[s.name].lo, dtype=np.float64).ravel() for s in graph.inputs])
    hi = np.concatenate([np.asarray(box[s.name].hi, dtype=np.float64).ravel() for s in graph.inputs])
    return lo, hi


def domain_boxes(graph: Graph, domain: Domain, samples: np.ndarray | None) -> Boxes:
    """The domain as boxes over the graph's inputs; UsageError when it cannot be (an unbounded
    domain, a ball or margin domain without samples)."""
    match domain:
        case NormalDomain():
            raise UsageError("domain: a normal domain {mean, std} is unbounded, so no bound over it exists; "
                             "give a box (--domain LOW,HIGH or domain: {low, high})")
        case UniformDomain(low=low, high=high):
            box = {
                spec.name: Interval(lo=broadcast("low", low, tuple(spec.shape)).copy(),
                                    hi=broadcast("high", high, tuple(spec.shape)).copy())
                for spec in graph.inputs
            }
            if len(set(low.values)) == 1 and len(set(high.values)) == 1:
                description = f"the box [{low.values[0]:g}, {high.values[0]:g}] on every entry"
            else:
                description = (f"the box low <= x <= high given per channel or entry (from {min(low.values):g} "
                               f"to {max(high.values):g})")
            return Boxes(kind="box", description=description, boxes=(box,))
        case BallDomain(eps=eps) | MarginDomain(margin=eps):
            if samples is None:
                raise UsageError("domain: a ball or margin domain is built around the sample inputs: give "
                                 "--inputs (or a box domain LOW,HIGH)")
            flat = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
            def around(low: np.ndarray, high: np.ndarray) -> tuple[dict[str, Interval], dict[str, Interval]]:
                """The box [low - eps, high + eps] rounded outward (it holds the exact box) and
                rounded inward (the exact box holds it: fl(a - eps) is within half an ulp of
                a - eps, so its next float up is >= a - eps)."""
                out_lo, out_hi = _split(graph, _down(low - eps)), _split(graph, _up(high + eps))
                in_lo = _split(graph, np.minimum(_up(low - eps), low))
                in_hi = _split(graph, np.maximum(_down(high + eps), high))
                return ({k: Interval(lo=out_lo[k], hi=out_hi[k]) for k in out_lo},
                        {k: Interval(lo=in_lo[k], hi=in_hi[k]) for k in in_lo})

            balls = [around(row, row) for row in flat[:MAX_BALLS]]
            if isinstance(domain, MarginDomain):
                outer, inner = around(flat.min(axis=0), flat.max(axis=0))
                return Boxes(kind="margin", radius=eps, boxes=(outer,), inner=(inner,),
                             description=f"the box of the {flat.shape[0]} sample(s) widened by {eps:g}")
            description = f"linf balls of radius {eps:g} around {flat.shape[0]} samples"
            if flat.shape[0] > MAX_BALLS:
                outer, _ = around(flat.min(axis=0), flat.max(axis=0))
                return Boxes(kind="ball", radius=eps, boxes=(outer,), inner=tuple(b for _, b in balls),
                             description=description,
                             notes=(f"{flat.shape[0]} balls (more than {MAX_BALLS}): bounded over the box that "
                                    f"holds them all; the lower bound searched in the first {MAX_BALLS}",))
            return Boxes(kind="ball", radius=eps, boxes=tuple(b for b, _ in balls),
                         inner=tuple(b for _, b in balls), description=description)
    raise TypeError(f"domain_boxes got a {type(domain).__name__}")


def _better(global_bound: OpBound, local: OpBound | None) -> OpBound:
    """The tighter of two sound bounds of one node (both hold on the box)."""
    if local is None:
        return global_bound
    if global_bound.combine is not local.combine or (
        local.combine is not Combine.CHAIN and len(local.input_gains) != len(global_bound.input_gains)
    ):
        return local if not math.isfinite(_size(global_bound)) else global_bound
    if local.combine is Combine.CHAIN:
        return local if local.upper.value < global_bound.upper.value else global_bound
    gains = tuple(min(a, b) for a, b in zip(global_bound.input_gains, local.input_gains, strict=True))
    upper = local.upper if local.upper.value <= global_bound.upper.value else global_bound.upper
    return dataclasses.replace(local, input_gains=gains, upper=upper)


def _size(ob: OpBound) -> float:
    if ob.combine is Combine.CHAIN:
        return ob.upper.value
    return max(ob.input_gains, default=ob.upper.value)


def bound_over_box(graph: Graph, op_bounds: Mapping[str, OpBound], box: Mapping[str, Interval],
                   regions: Mapping[str, tuple[str, float]] | None = None,
                   ranges_out: dict[str, Interval] | None = None,
                   ) -> tuple[float, bool, float, dict[str, OpBound]]:
    """(the composed bound over ``box``, certified, the composed layer gains (no linear regions:
    the depth profile's figure), the per-node bounds used); ``ranges_out`` receives the value
    ranges over the box. Always computed (the domain's certified bound), and counted as one
    interval pass (``interval_pass_cost``: a ViT-S over pixels in [0, 1], 4.6 s counted, 3.9 s
    taken with its per-operator rules)."""
    from stabaudit.analyses.composition import compose
    from stabaudit.analyses.crown import crown_ranges
    from stabaudit.analyses.ranges import value_ranges
    from stabaudit.bounds.ranged import ranged_bound

    spend(interval_pass_cost(graph))
    ranges = value_ranges(graph, box)
    tight = crown_ranges(graph, box, ranges)  # a ReLU chain: back-substituted, inside the intervals
    if tight is not None:
        ranges = {**ranges, **tight}
    if ranges_out is not None:
        ranges_out.update(ranges)
    local: dict[str, OpBound] = {}
    for node in graph.nodes:
        check_deadline()
        ctx = RuleContext(
            input_shapes=tuple(graph.shapes[name] for name in node.inputs),
            output_shape=graph.shapes[node.output],
        )
        found = ranged_bound(node, ctx, tuple(ranges[name] for name in node.inputs), ranges[node.output])
        local[node.output] = _better(op_bounds[node.output], found)
    layered = compose(graph, local)
    comp = compose(graph, local, None, regions) if regions else layered
    return comp.upper.value, comp.upper.certified and layered.upper.certified, layered.upper.value, local


def domain_bound(graph: Graph, op_bounds: Mapping[str, OpBound], boxes: Boxes, *,
                 global_upper: float | None = None,
                 regions: Mapping[str, tuple[str, float]] | None = None,
                 keep: frozenset[str] = frozenset(), budget_s: float = 0.0,
                 bb_budget_s: float = 0.0, chain_graph: Graph | None = None,
                 certificate: ChainCertificate | None = None) -> DomainResult:
    """The certified Lipschitz bound of ``graph`` over the union of ``boxes`` (see the module);
    ``keep``: value names whose ranges and (node outputs) per-node bounds over each box are kept. A
    ReLU chain also gets the per-unit slope certificates of ``analyses.domain_chain`` on each box
    (``budget_s`` shared equally between the boxes), the smaller of the two per box, and with
    ``bb_budget_s`` > 0 the branch and bound over activation regions of ``analyses.exact`` on each
    box: its certified upper end joins the minimum, and the largest region norm it meets inside
    the domain is a lower bound over D (where exact mode does not apply or the budget buys no
    box, it does not run and takes none of ``bb_budget_s``).

    ``chain_graph`` (default ``graph``): the graph whose ReLU chain ``certificate`` certifies (the
    graph as loaded, which the global methods read). ``certificate``: the global methods' verified
    certificate of that chain; when it is that chain's, the slope certificates read that chain and
    the boxes take the LMI certificate from it (``domain_chain.warm_bound``) instead of bisection,
    the worst box first, each with what ``budget_s`` has left, until the next box's bound is no
    longer above the largest of those done (it cannot lower the maximum)."""
    from stabaudit.analyses import domain_chain as DC
    from stabaudit.analyses.plan import DOMAIN_MAX_PATTERNS, domain_pieces, spent
    from stabaudit.bounds.domain import NEEDS_DOMAIN

    dc = DC.domain_chain(graph)
    warm: ChainCertificate | None = None
    if certificate is not None:
        # the certificate's chain: the graph as loaded, where it fits (else the folded graph as before)
        theirs = DC.domain_chain(graph if chain_graph is None else chain_graph)
        if theirs is not None and DC.fits(certificate, theirs):
            dc, warm = theirs, certificate
            graph_of_chain = graph if chain_graph is None else chain_graph
    if warm is None:
        graph_of_chain = graph
    pres: list[list[tuple[np.ndarray, np.ndarray]] | None] = []
    values: list[float] = []
    oks: list[bool] = []
    units_of: list[tuple[int, int]] = []
    bb = _box_search(graph, boxes, bb_budget_s) if dc is not None and bb_budget_s > 0 else None
    chain_used = bb_used = False
    chain_notes: list[str] = []

    start = time.perf_counter()
    product = 0.0
    node_uppers: dict[str, float] = {}
    by_output = {node.output: node for node in graph.nodes}
    needing = {node.name for node in graph.nodes if op_bounds[node.output].upper.method == NEEDS_DOMAIN}
    still: set[str] = set()
    kept: list[tuple[Mapping[str, Interval], Mapping[str, OpBound]]] = []
    for index, box in enumerate(boxes.boxes):
        ranges: dict[str, Interval] = {}
        value, ok, layered, local = bound_over_box(graph, op_bounds, box, regions, ranges if keep else None)
        if keep:
            kept.append(({k: v for k, v in ranges.items() if k in keep},
                         {k: v for k, v in local.items() if k in keep}))
        pre = None
        counts = (0, 0)
        if dc is not None:
            lo, hi = flat_box(graph_of_chain, box)
            if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
                if warm is not None:
                    # the cheap bounds now (vertices, interval Jacobian); the LMI below, worst box first
                    pre = DC.box_ranges(dc, lo, hi)
                    cheap, unstable, units = DC.ranges_bound(dc, pre, 0.0, DOMAIN_MAX_PATTERNS, lmi=False)
                    counts = (unstable, units)
                    if cheap < value or not ok:
                        value, ok, chain_used = cheap, True, True
                else:
                    pieces, each = domain_pieces(budget_s / len(boxes.boxes), lo.size)
                    found = DC.bound_over_box(dc, lo, hi, pieces=pieces, budget_s=each, max_patterns=DOMAIN_MAX_PATTERNS)
                    if found.value < value or not ok:
                        value, ok, chain_used = found.value, True, True
                        chain_notes.append(f"{found.pieces} piece(s), {found.unstable} of {found.units} units unstable in the worst")
        if bb is not None:
            upper_bb = bb.uppers[index]
            if upper_bb is not None and (upper_bb < value or not ok):
                value, ok, bb_used = upper_bb, True, True
        pres.append(pre)
        values.append(value)
        oks.append(ok)
        units_of.append(counts)
        product = max(product, layered)
        for out, ob in local.items():
            name = by_output[out].name
            size = _size(ob)
            if not math.isfinite(size):
                still.add(name)
            if ob is not op_bounds[out] and ob.combine is Combine.CHAIN and math.isfinite(size):
                node_uppers[name] = max(node_uppers.get(name, 0.0), size)
    if warm is not None and dc is not None:
        # the LMI certificates from the global one, the worst box first, while a box can still lower
        # the maximum; each may take what the earlier ones left of ``budget_s`` (a solve stops at
        # its duality-gap target and is charged for the steps it took)
        left, done, floor = max(float(budget_s), 0.0), 0, 0.0
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        for i in order:
            found_pre = pres[i]
            if values[i] <= floor:
                break  # this box and the rest are below a bound already proved: the maximum stays
            if found_pre is None:
                floor = max(floor, values[i])
                continue
            check_deadline()
            before = spent()
            value = DC.warm_bound(dc, warm, found_pre, budget_s=left)
            left = max(left - (spent() - before), 0.0)
            done += 1
            if value < values[i] or not oks[i]:
                values[i], oks[i], chain_used = value, True, True
            floor = max(floor, values[i])
        worst_box = max(range(len(values)), key=lambda i: (values[i], -i)) if values else 0
        unstable, units = units_of[worst_box] if units_of else (0, 0)
        chain_notes.append(f"LipSDP-Neuron from the better of the global certificate and ECLipsE-Fast on {done} of "
                           f"{len(values)} box(es), the worst first; {unstable} of {units} units unstable in the worst")
    worst = max(values, default=0.0)
    certified = all(oks)
    for name in still:
        node_uppers.pop(name, None)
    method = METHOD if not chain_used else f"min of {METHOD} and {DC.METHOD}"
    if bb_used:
        method = f"{method} and {BB_METHOD}" if chain_used else f"min of {METHOD} and {BB_METHOD}"
    if global_upper is not None and global_upper < worst:
        worst, method = global_upper, "global bound (tighter than the domain composition)"
    return DomainResult(
        boxes=boxes,
        upper=Bound(value=worst, guarantee=Guarantee.UPPER if certified else Guarantee.ESTIMATE, method=method),
        product=product,
        node_uppers=node_uppers,
        resolved=tuple(sorted(needing - still)),
        unresolved=tuple(sorted(needing & still)),
        seconds=time.perf_counter() - start,
        notes=boxes.notes + ((f"per-unit slopes over the domain: {chain_notes[-1]}",) if chain_notes else ()),
        kept=tuple(kept),
        lower=bb.lower if bb is not None else 0.0,
        lower_point=bb.point if bb is not None else None,
        lower_method=f"{BB_METHOD}: the Jacobian of an activation region inside the domain" if bb is not None else "",
        bb_budget_s=bb_budget_s if bb is not None else 0.0,
    )


@dataclass(frozen=True, kw_only=True)
class _BoxSearch:
    uppers: tuple[float | None, ...]  # per box, the certified upper end (None: not applied)
    lower: float
    point: tuple[float, ...] | None


def _box_search(graph: Graph, boxes: Boxes, budget_s: float) -> _BoxSearch | None:
    """The branch and bound of ``analyses.exact`` over the first boxes, their number and nodes
    planned from ``budget_s`` (``plan.bb_box_plan``); the witness points are moved into the box's inner
    (inside D) version. None where exact mode does not apply to the graph."""
    from stabaudit.analyses import exact
    from stabaudit.analyses.plan import bb_box_plan

    net = exact._net(graph)
    if isinstance(net, str):
        return None
    widths = [int(w.shape[1]) for w in net.weights] + [int(net.weights[-1].shape[0])]
    n_in = widths[0]
    run, nodes = bb_box_plan(budget_s, widths[1:], n_in, len(boxes.boxes))
    if run == 0:
        return None
    uppers: list[float | None] = []
    lower, point = 0.0, None
    inner = boxes.inner or boxes.boxes
    for index, (box, small) in enumerate(zip(boxes.boxes, inner, strict=True)):
        if index >= run:  # the budget's boxes are the first ones
            uppers.append(None)
            continue
        check_deadline()
        ends = flat_box(graph, box)
        if not (np.all(np.isfinite(ends[0])) and np.all(np.isfinite(ends[1]))) or ends[0].size != n_in:
            return None
        found = exact.exact_lipschitz(graph, budget_s=0.0, box=ends, inner=flat_box(graph, small), nodes=nodes)
        if found.upper is None and found.lower is None and found.nodes_explored == 0:
            return None  # refused (not a plain ReLU chain over a box)
        uppers.append(found.upper if found.upper is not None and math.isfinite(found.upper) else None)
        if found.lower is not None and found.witness is not None and found.lower > lower:
            lower, point = found.lower, found.witness.point
    return _BoxSearch(uppers=tuple(uppers), lower=lower, point=point)


def interval_pass_cost(graph: Graph) -> float:
    """The counted seconds of one interval-range pass (``analyses.ranges``): the centre and the
    radius through every convolution and dense layer (``plan.REVERSE_MACS_PER_S``)."""
    from stabaudit.analyses.plan import REVERSE_MACS_PER_S
    from stabaudit.ir import ops as O

    macs = 0.0
    for node in graph.nodes:
        if isinstance(node.op, (O.Conv, O.Linear)):
            macs += float(np.prod(graph.shapes[node.output])) * float(np.prod(np.asarray(node.op.weight).shape[1:]))
    return 2.0 * macs / REVERSE_MACS_PER_S


def box_ranges(graph: Graph, box: Mapping[str, Interval], *, budget_s: float = math.inf,
               max_patch_entries: int | None = None) -> tuple[dict[str, Interval], dict[str, Any]] | None:
    """(enclosures of every value over ``box``, max pools' choices): the interval ranges
    (``analyses.ranges``), tightened by back-substitution on a ReLU chain (``analyses.crown``,
    where its counted work fits ``budget_s``), else by symbolic intervals on receptive fields
    (``analyses.symbolic``) and then back-substitution on the graph (``analyses.backsub``), each
    where its planned cost fits what is left of ``budget_s``. None where the interval pass itself
    (``interval_pass_cost``) does not fit: a large network whose tightened ranges the budget could
    not buy anyway."""
    from stabaudit.analyses.backsub import backsub_cost, backsub_ranges
    from stabaudit.analyses.crown import crown_cost, crown_ranges
    from stabaudit.analyses.local import MAX_JACOBIAN_ENTRIES
    from stabaudit.analyses.patch_jacobian import MAX_PATCH_ENTRIES, patch_cost
    from stabaudit.analyses.ranges import value_ranges
    from stabaudit.analyses.symbolic import symbolic_ranges

    start = spent()
    first = interval_pass_cost(graph)
    if first > budget_s:
        return None
    spend(first)
    ranges = value_ranges(graph, box)
    chain = crown_cost(graph)
    if chain is not None:  # a ReLU chain: its back-substitution, where the budget buys it
        if chain > remaining(budget_s, since=start):
            return ranges, {}
        spend(chain)
        tight = crown_ranges(graph, box, ranges)
        return ({**ranges, **tight} if tight is not None else ranges), {}
    patches = MAX_PATCH_ENTRIES if max_patch_entries is None else max_patch_entries
    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    pools: dict[str, Any] = {}
    # symbolic intervals (SYMBOLIC_PER_PATCH receptive-field Jacobians), only where the budget buys
    # the back-substitution after them too: it is planned here on the interval ranges, which leave
    # more units across their kinks than the symbolic ones will (back-substitution from the interval
    # ranges is the better buy where both do not fit)
    planned = SYMBOLIC_PER_PATCH * patch_cost(graph, shapes, MAX_JACOBIAN_ENTRIES, patches, partial=True)
    after = backsub_cost(graph, box, ranges) if patches > 0 else None
    if patches > 0 and planned + (after or 0.0) <= remaining(budget_s, since=start):
        found = symbolic_ranges(graph, box, ranges, max_patch_entries=patches)
        if found is not None:
            ranges = {**ranges, **found.ranges}
            pools = dict(found.pools)
    check_deadline()
    backed = backsub_ranges(graph, box, ranges, pools=pools, budget_s=remaining(budget_s, since=start))
    if backed is not None:
        ranges = {**ranges, **backed}
    return ranges, pools


@dataclass(frozen=True, kw_only=True)
class BallReference:
    """One box of the domain as the local Jacobian bounds see it: the linf ball around its centre
    that holds it, the ranges over that ball (``box_ranges``; None where not even the interval
    pass was bought), the max pools' choices, and the reference-Jacobian bound on those ranges
    (None where it does not apply or was not bought)."""

    centre: np.ndarray
    radius: float
    ranges: dict[str, Interval] | None
    pools: dict[str, Any]
    reference: float | None


def enclosing_balls(graph: Graph, boxes: Boxes) -> list[tuple[np.ndarray, float]] | None:
    """(flat centre, radius) of the linf ball around each box's centre that holds it (the radius
    rounded up), or None where a box is not finite."""
    found = []
    for box in boxes.boxes:
        lo, hi = flat_box(graph, box)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return None
        c = (lo + hi) / 2
        found.append((c, float(np.nextafter(np.max(np.maximum(hi - c, c - lo)), np.inf))))
    return found


def ball_references(graph: Graph, balls: Sequence[tuple[np.ndarray, float]], *,
                    max_patch_entries: int | None = None, budget_s: float = math.inf) -> list[BallReference]:
    """Per linf ball (flat centre, radius), in order, within what ``budget_s`` has left when its
    turn comes: the ranges over the ball (``box_ranges``) and the bound around a reference Jacobian
    on them (``analyses.reference_jacobian``, where its planned cost fits what is left). First come:
    the plans are upper estimates (a back-substitution bounds fewer units than it plans), so what
    one ball leaves buys the next (on the OVAL21 base CNN's two SA302 balls, equal parts bought the
    reference bound on neither: 11.3 instead of 1.18)."""
    from stabaudit.analyses.patch_jacobian import MAX_PATCH_ENTRIES
    from stabaudit.analyses.reference_jacobian import reference_bound

    patches = MAX_PATCH_ENTRIES if max_patch_entries is None else max_patch_entries
    start = spent()
    found: list[BallReference] = []
    for c, r in balls:
        check_deadline()
        ball = _split(graph, np.nextafter(c - r, -np.inf)), _split(graph, np.nextafter(c + r, np.inf))
        tightened = box_ranges(graph, {k: Interval(lo=ball[0][k], hi=ball[1][k]) for k in ball[0]},
                               budget_s=remaining(budget_s, since=start), max_patch_entries=patches)
        known, pools = tightened if tightened is not None else (None, {})
        ref = None if known is None else reference_bound(graph, known, pools,
                                                         budget_s=remaining(budget_s, since=start))
        found.append(BallReference(centre=c, radius=r, ranges=known, pools=pools,
                                   reference=ref.upper if ref is not None and math.isfinite(ref.upper) else None))
    return found


def jacobian_bound(graph: Graph, boxes: Boxes, *, max_patch_entries: int | None = None,
                   op_bounds: Callable[[], Mapping[str, OpBound]] | None = None,
                   budget_s: float = math.inf, interval: bool = True,
                   references: Sequence[BallReference] | None = None) -> tuple[float, str] | None:
    """The local Jacobian bounds over each box, enclosed in the linf ball around its center: the
    bound around a reference Jacobian (``references``, default ``ball_references`` over the
    ``enclosing_balls`` within ``budget_s``) and, with ``interval``, the interval Clarke Jacobian (``analyses.local``, densely
    or on receptive fields of up to ``max_patch_entries`` entries; its work is counted as it runs)
    on the same ranges, the smaller of the two per box; the largest over the boxes, with its
    methods. None where neither applies to every box. ``op_bounds``: gives global per-operator
    bounds of ``graph``'s nodes already computed (any subset), reused by ``local_bounds``; called
    once, and only after the operators and sizes are known to fit (a graph refused costs no bound)."""
    from stabaudit.analyses.local import (
        MAX_JACOBIAN_ENTRIES,
        METHOD_INTERVAL,
        check_supported,
        jacobian_form,
        local_bounds,
    )
    from stabaudit.analyses.patch_jacobian import MAX_PATCH_ENTRIES
    from stabaudit.errors import UnsupportedOperatorError

    patches = MAX_PATCH_ENTRIES if max_patch_entries is None else max_patch_entries
    if references is None:
        balls = enclosing_balls(graph, boxes)
        if balls is None:
            return None
        references = ball_references(graph, balls, max_patch_entries=patches, budget_s=budget_s)
    if interval:
        try:
            check_supported(graph)
        except UnsupportedOperatorError:
            interval = False
    if interval and jacobian_form(graph, graph.shapes, max_patch=patches) is None:
        interval = False  # the interval Jacobian would not fit
    given = None if op_bounds is None or not interval else op_bounds()
    worst, methods = 0.0, set()
    for ref in references:
        check_deadline()
        found: list[tuple[float, str]] = []
        if ref.reference is not None:
            found.append((ref.reference, METHOD_REFERENCE))
        if interval:
            try:
                local = local_bounds(graph, ref.centre[None, :], eps=ref.radius, norm="linf", known=[ref.ranges],
                                     max_jacobian_entries=MAX_JACOBIAN_ENTRIES, max_patch_entries=patches,
                                     op_bounds=given)
            except UnsupportedOperatorError:
                local = None
            if local is not None and local.upper.certified and METHOD_INTERVAL in local.samples[0].candidates:
                found.append((local.upper.value, local.method))
        if not found:
            return None  # neither bound applies to this box: the composition stands
        value, method = min(found)
        worst = max(worst, value)
        methods.add(method)
    return worst, "+".join(sorted(methods))
