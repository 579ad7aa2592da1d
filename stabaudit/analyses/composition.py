"""Composition of per-operator bounds into a global Lipschitz bound and its depth profile."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from stabaudit.bounds.base import (
    Bound,
    BoundSettings,
    Combine,
    Guarantee,
    Interval,
    OpBound,
    RuleContext,
)
from stabaudit.errors import InternalError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node

METHOD = "product"
_INF = math.inf


def _up(value: float) -> float:
    """The next float64 above a rounded result: an upper bound of the exact result.

    IEEE 754 round to nearest gives |fl(a op b) - (a op b)| <= ulp/2 for +, *, / and sqrt
    (all correctly rounded), so nextafter(fl(a op b), +inf) >= a op b for every finite result.
    """
    if math.isnan(value) or math.isinf(value):
        return value
    return math.nextafter(value, _INF)


def _mul(a: float, b: float) -> float:
    """Upper bound of a*b for a, b >= 0, with 0 * inf = 0.

    0 * inf = 0 is sound here: a map with Lipschitz constant 0 is constant, so its output does
    not move whatever its input does (||g(u) - g(u')|| <= 0 * ||u - u'||).
    """
    if a == 0.0 or b == 0.0:
        return 0.0
    return _up(a * b)


def _add(a: float, b: float) -> float:
    return _up(a + b)


_SMALLEST_NORMAL = 2.2250738585072014e-308  # below it products and powers of two are rounded


def _root_sum_squares(values: list[float]) -> float:
    """Upper bound of sqrt(sum v_i^2), each partial result rounded up; one value is returned as is.

    The values are first divided by 2^e ~ max v_i (exact in binary floating point, except for a
    quotient in the subnormal range, which is then rounded up), so the squares neither overflow
    (v > 1e154 would give inf) nor underflow (v < 1e-154 would lose the value to the rounding
    floor); the root is multiplied back by 2^e (overflow gives inf, an upper bound still).
    """
    if len(values) == 1:
        return values[0]
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return _INF
    peak = max(values, default=0.0)
    if peak <= 0.0:
        return 0.0
    exponent = math.frexp(peak)[1]
    total = 0.0
    for v in values:
        scaled = math.ldexp(v, -exponent)
        if 0.0 < scaled < _SMALLEST_NORMAL or (scaled == 0.0 and v > 0.0):
            scaled = math.nextafter(scaled, _INF)  # rounded in the subnormal range: round up
        total = _add(total, _mul(scaled, scaled))
    root = _up(math.sqrt(total))
    try:
        result = math.ldexp(root, exponent)
    except OverflowError:
        return _INF
    return math.nextafter(result, _INF) if result < _SMALLEST_NORMAL else result


@dataclass(frozen=True, kw_only=True)
class Composition:
    """The composed bound.

    ``upper``: L with ||f(x) - f(x')|| <= L ||x - x'|| for x the stacked graph inputs and f the
    stacked graph outputs (UPPER when every bound used is UPPER, else ESTIMATE).
    ``per_value``: that L for every value the outputs depend on (graph inputs have 1).
    ``estimated``: the values whose L rests on an estimate somewhere upstream.
    ``profile``: (node name, L of its output) for every node on the path, in topological order:
    the depth profile l -> prod_{j<=l} s_j generalised to DAGs.
    """

    upper: Bound
    per_value: Mapping[str, float]
    profile: tuple[tuple[str, float], ...]
    estimated: frozenset[str] = frozenset()
    method: str = METHOD
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())




def _checked_upper(node: Node, bound: OpBound) -> tuple[float, bool]:
    """The operator's upper value and whether it is only an estimate (NaN -> inf, estimate)."""
    value = float(bound.upper.value)
    estimate = bound.upper.guarantee is not Guarantee.UPPER
    if math.isnan(value):
        return _INF, True
    if value < 0.0:
        raise InternalError(
            f"node {node.name!r} ({node.op.type.value}): negative Lipschitz bound {value}"
        )
    return value, estimate


def compose(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    block_bounds: Mapping[str, tuple[str, float]] | None = None,
    region_bounds: Mapping[str, tuple[str, float]] | None = None,
) -> Composition:
    """Compose ``op_bounds`` (keyed by node output) along the graph.

    Per node, with L_i the constants of its inputs (each graph input has L = 1, a projection of
    the stacked input):
    - CHAIN: L = upper * L_in (Lip(g o h) <= Lip(g) Lip(h));
    - SUM: L = sum_i gain_i L_i (triangle inequality);
    - STACK: L = sqrt(sum_i (gain_i L_i)^2) (the parts occupy disjoint coordinates, so squared
      norms add).
    The graph outputs are stacked: L = sqrt(sum_o L_o^2). Every product, sum and root is rounded
    upward (see ``_up``), so the float64 result bounds the exact real composition.
    ``block_bounds`` (value -> (block input x, certified B)) bounds a residual block as a whole:
    L(value) = min(its composed L, B * L(x)) (Lip(g o h) <= Lip(g) Lip(h) with g the block).
    ``region_bounds`` (value -> (region input x, certified B)) does the same for linear regions
    bounded as a whole (``analyses.linear_regions``).
    """
    start = time.perf_counter()
    per_value: dict[str, float] = {name: 1.0 for name in graph.input_names}
    estimated: set[str] = set()
    profile: list[tuple[str, float]] = []
    needed = graph.needed_nodes()
    missing = [node.name for node in needed if node.output not in op_bounds]
    if missing:
        raise InternalError(f"composition: no operator bound for node(s) {', '.join(missing)}")
    for node in needed:
        bound = op_bounds[node.output]
        # for SUM/STACK the gains carry the value; ``upper`` still contributes its guarantee
        upper, estimate = _checked_upper(node, bound)
        inputs = [per_value[name] for name in node.inputs]
        estimate = estimate or any(name in estimated for name in node.inputs)
        match bound.combine:
            case Combine.CHAIN:
                # several inputs: ``upper`` is then the constant w.r.t. the stacked inputs, whose
                # own constant is at most sqrt(sum_i L_i^2) (squared norms of stacked parts add)
                value = _mul(upper, _root_sum_squares(inputs) if inputs else 0.0)
            case Combine.SUM | Combine.STACK:
                gains = bound.input_gains or (1.0,) * len(inputs)
                if len(gains) != len(inputs):
                    raise InternalError(
                        f"node {node.name!r} ({node.op.type.value}): {len(gains)} input gains for {len(inputs)} inputs"
                    )
                terms: list[float] = []
                for gain, lip in zip(gains, inputs, strict=True):
                    g = float(gain)
                    if math.isnan(g):
                        g, estimate = _INF, True
                    terms.append(_mul(abs(g), lip))
                if bound.combine is Combine.SUM:
                    value = 0.0
                    for t in terms:
                        value = _add(value, t)
                else:
                    value = _root_sum_squares(terms)
        for wholes in (block_bounds, region_bounds):
            if wholes and node.output in wholes:
                x, whole = wholes[node.output]
                if x in per_value and x not in estimated:
                    value = min(value, _mul(whole, per_value[x]))
        per_value[node.output] = value
        if estimate:
            estimated.add(node.output)
        profile.append((node.name, value))
    outputs = [per_value[name] for name in graph.outputs]
    total = _root_sum_squares(outputs)
    notes = _notes(needed, op_bounds, per_value, total)
    estimate = any(name in estimated for name in graph.outputs)
    upper_bound = Bound(
        value=total,
        guarantee=Guarantee.ESTIMATE if estimate else Guarantee.UPPER,
        method=METHOD,
    )
    return Composition(
        upper=upper_bound,
        per_value=MappingProxyType(per_value),
        profile=tuple(profile),
        estimated=frozenset(estimated),
        seconds=time.perf_counter() - start,
        notes=notes,
    )


_NAMES_SHOWN = 3  # node names listed per group of operators that need a domain


def _notes(
    needed: list[Node], op_bounds: Mapping[str, OpBound], per_value: Mapping[str, float], total: float
) -> tuple[str, ...]:
    """Why the composed bound is infinite, when it is: the operators without a finite bound (NaN
    or Inf weights, their rule's own notes), or a float64 overflow of finite factors."""
    if math.isfinite(total):
        return ()
    from stabaudit.bounds.domain import NEEDS_DOMAIN

    notes: list[str] = []
    domain: dict[tuple[str, str], list[str]] = {}  # (operator, why) -> node names, in graph order
    for node in needed:
        bound = op_bounds[node.output]
        values = [float(bound.upper.value), *(float(g) for g in bound.input_gains)]
        if any(not math.isfinite(v) for v in values):
            why = "; ".join(bound.notes) if bound.notes else f"method {bound.upper.method}"
            if bound.upper.method == NEEDS_DOMAIN:
                domain.setdefault((node.op.type.value, why), []).append(repr(node.name))
            else:
                notes.append(f"node {node.name!r} ({node.op.type.value}) has no finite Lipschitz bound ({why})")
    if domain:
        total_nodes = sum(len(names) for names in domain.values())
        count = f"{total_nodes} operator{'s' if total_nodes != 1 else ''} need{'' if total_nodes != 1 else 's'}"
        groups = []
        for (op, why), names in domain.items():
            if len(names) == 1:
                groups.append(f"{op} {names[0]} ({why})")
            else:
                shown = ", ".join(names[:_NAMES_SHOWN])
                more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
                groups.append(f"{op} x{len(names)} ({why}): {shown}{more}")
        notes.insert(0, f"no finite global bound: {count} a bounded input domain (--domain gives a bound "
                        "over one): " + "; ".join(groups))
    if not notes:
        notes.append(
            "the composed Lipschitz bound overflows float64 (above 1.8e308): reported as unbounded "
            "(no finite certified upper bound)"
        )
    return tuple(notes)


def rule_bounds(
    graph: Graph, settings: BoundSettings | None = None, *, only: frozenset[str] | None = None
) -> dict[str, OpBound]:
    """The registered rule's OpBound of every node the outputs depend on, keyed by node output
    (only the nodes whose outputs are in ``only``, when given).

    The graph must carry its shapes (``ir.executor.with_shapes``).
    """
    from stabaudit.bounds import bound_node

    settings = settings if settings is not None else BoundSettings()
    result: dict[str, OpBound] = {}
    for node in graph.needed_nodes():
        if only is not None and node.output not in only:
            continue
        ctx = RuleContext(
            input_shapes=tuple(tuple(graph.shapes[name]) for name in node.inputs),
            output_shape=tuple(graph.shapes[node.output]),
            settings=settings,
        )
        result[node.output] = bound_node(node, ctx)
    return result


def output_sensitivities(graph: Graph, op_bounds: Mapping[str, OpBound]) -> dict[str, float]:
    """For every value v: S_v with ||f(.., v + d, ..) - f(.., v, ..)|| <= S_v ||d||, where the
    values that do not depend on v are held fixed and f is the stacked graph outputs.

    A reverse sweep: S_v = [v is an output] + sum over the uses of v of gain * S_use, where the
    gain is ``upper`` for CHAIN and |gain_i| for SUM/STACK (triangle inequality over the uses
    and over stacked outputs). A value whose downstream path holds an ESTIMATE (or a missing
    bound) gets inf: the result is only ever used as a sound bound. Products and sums are
    rounded upward.
    """
    sens: dict[str, float] = {}
    for name in graph.outputs:
        sens[name] = _add(sens.get(name, 0.0), 1.0)
    for node in reversed(graph.needed_nodes()):
        downstream = sens.get(node.output, 0.0)
        bound = op_bounds.get(node.output)
        if downstream == 0.0:
            continue
        if bound is None or bound.upper.guarantee is not Guarantee.UPPER:
            gains = [_INF] * len(node.inputs)
        elif bound.combine is Combine.CHAIN:
            upper = float(bound.upper.value)
            gains = [_INF if math.isnan(upper) or upper < 0.0 else upper] * len(node.inputs)
        else:
            raw = bound.input_gains or (1.0,) * len(node.inputs)
            if len(raw) != len(node.inputs):
                gains = [_INF] * len(node.inputs)
            else:
                gains = [_INF if math.isnan(float(g)) else abs(float(g)) for g in raw]
        for name, gain in zip(node.inputs, gains, strict=True):
            sens[name] = _add(sens.get(name, 0.0), _mul(gain, downstream))
    return sens


ADDITIVE_METHOD = "branch-switch-jumps"


@dataclass(frozen=True, kw_only=True)
class AdditiveTerm:
    """What the branch switches of the executed model add to every Lipschitz figure.

    ``value``: delta with ||F(x) - F(y)|| <= K ||x - y|| + delta for F the model as executed and
    K any bound of the Lipschitz constant of its smooth part (every jumping operator replaced by
    its smooth part, ir.passes.smooth_part); 0 when no operator jumps. ``certified``: delta is a
    sound upper bound (no estimate downstream of a jump). ``sources``: the names of the jumping
    nodes with a nonzero contribution, in topological order.
    """

    value: float
    certified: bool
    sources: tuple[str, ...] = ()
    method: str = ADDITIVE_METHOD


def additive_term(graph: Graph, op_bounds: Mapping[str, OpBound]) -> AdditiveTerm:
    """The additive term delta of the executed model over its smooth part.

    Write F = F_s + r. Switching the jumping nodes k = 1..m (topological order) one at a time
    from their smooth part s_k to the executed op s_k + e_k changes the output by at most
    S_k ||e_k(u_k)|| <= S_k J_k (J_k = OpBound.jump; S_k the output sensitivity of the node's
    value, output_sensitivities, over a downstream where every later jumping node is still its
    smooth part, which the rule bounds certify); by the triangle inequality over the m switches,
    ||r(x)|| <= R = sum_k S_k J_k for every x. Then ||F(x) - F(y)|| <= ||F_s(x) - F_s(y)|| +
    ||r(x)|| + ||r(y)|| <= K ||x - y|| + 2 R: delta = 2 R, rounded up. The factor 2 keeps delta
    valid whichever certified method gives K (r(x) and r(y) need not point the same way).
    """
    jumping = [n for n in graph.needed_nodes() if n.output in op_bounds and op_bounds[n.output].jump > 0.0]
    if not jumping:
        return AdditiveTerm(value=0.0, certified=True)
    sens = output_sensitivities(graph, op_bounds)
    total = 0.0
    sources: list[str] = []
    for node in jumping:
        jump = float(op_bounds[node.output].jump)
        s = sens.get(node.output, 0.0)
        if math.isnan(jump) or math.isnan(s):
            jump, s = _INF, _INF
        part = _mul(s, jump)
        if part > 0.0:
            sources.append(node.name)
            total = _add(total, part)
    value = _mul(2.0, total)
    return AdditiveTerm(value=value, certified=math.isfinite(value), sources=tuple(sources))


def domain_additive_term(executed: Graph, op_bounds: Mapping[str, OpBound],
                         boxes: Sequence[Mapping[str, Interval]]) -> AdditiveTerm:
    """The additive term over a domain (the union of ``boxes``): additive_term with the jump of every
    dynamic quantization bounded on its input's range over each box instead of the whole space, the
    largest over the boxes.

    A dynamic quantization of n entries whose values lie in [lo, hi] (value_ranges of the executed
    graph, which encloses every value the model computes while its inputs stay in the box) has its
    step s <= (max(0, max hi) - min(0, min lo)) / 255 and moves no entry by more than s / 2
    (docs/operators.md; bounds.quantization.dynamic_step_error adds the float rounding): its jump
    is sqrt(n) dynamic_step_error(span). The sensitivities stay the global ones (sound everywhere).
    """
    import dataclasses

    from stabaudit.analyses.ranges import value_ranges
    from stabaudit.bounds.quantization import dynamic_step_error

    dynamic = [n for n in executed.nodes
               if isinstance(n.op, O.DynamicQuantize) and n.op.part is O.QuantPart.DEQUANTIZED
               and not n.op.smooth and n.output in op_bounds]
    if not dynamic:
        return additive_term(executed, op_bounds)
    worst: AdditiveTerm | None = None
    for box in boxes:
        ranges = value_ranges(executed, box)
        local = dict(op_bounds)
        for node in dynamic:
            r = ranges[node.inputs[0]]
            span = max(0.0, float(np.max(r.hi))) - min(0.0, float(np.min(r.lo)))
            jump = _up(math.sqrt(r.lo.size) * dynamic_step_error(span)) if math.isfinite(span) else _INF
            local[node.output] = dataclasses.replace(op_bounds[node.output], jump=jump)
        term = additive_term(executed, local)
        if worst is None or not term.value <= worst.value:
            worst = term
    assert worst is not None
    return worst
