"""Feedforward chains: recognise input -> Linear -> activation -> ... -> Linear graphs, and the entry
point of the tight global Lipschitz bounds of such chains (ECLipsE-Fast, ECLipsE, LipSDP-Neuron).

What the chain's constant means. The graph's constant (composition.compose) is the L2 constant of
x -> y with x all graph inputs flattened and y all outputs flattened. A chain graph has one input
and one output; before the first Linear only Reshape/Transpose (a permutation of the entries: an
isometry) and element-wise Affine maps (a translation, and a per-entry scale merged into the first
weight) occur. Every Linear acts on the last axis, so the network maps each "row" (the index over
the leading axes) by the same function f; with R rows ||F(x) - F(x')||^2 = sum_r ||f(x_r) - f(x'_r)||^2
<= L^2 sum_r ||x_r - x'_r||^2 = L^2 ||x - x'||^2 (the rows partition the entries), so a constant L of
f is one of the graph. Reshapes/Transposes after the first Linear must keep the feature axis last
(rows stay intact); the final output reshape is a permutation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.bounds.base import OpBound
from stabaudit.ir import ops as O
from stabaudit.ir.executor import float64_view
from stabaudit.ir.graph import Graph
from stabaudit.rounding import mul_up, up

if TYPE_CHECKING:
    from stabaudit.analyses.certify import ChainLMI

U = 2.0**-53


@dataclass(frozen=True, kw_only=True)
class Chain:
    """W_0 .. W_l ([out, in], float64, as stored up to exact merges), the slope interval
    [alpha_k, beta_k] of each of the l activations between them, and entry-wise bounds of
    |W_exact - W_k| where a merge was rounded (None: exact). ``rows``: how many rows share f."""

    weights: tuple[np.ndarray, ...]
    slopes: tuple[tuple[float, float], ...]
    errors: tuple[np.ndarray | None, ...]
    rows: int
    nodes: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def lmi(self) -> ChainLMI:
        from stabaudit.analyses.certify import ChainLMI

        return ChainLMI(weights=self.weights, slopes=self.slopes, errors=self.errors)


# the slope-relaxation floor's share of the global methods' budget (its starts' counted flops)
FLOOR_SHARE = 0.5


# ---- slope intervals --------------------------------------------------------------------------
def slope_interval(op: O.Op) -> tuple[float, float] | None:
    """[alpha, beta] with alpha <= (phi(u) - phi(v)) / (u - v) <= beta for every u != v, or None
    when ``op`` is not an element-wise slope-restricted map we know. By the mean value theorem
    (phi absolutely continuous) the difference quotients lie within [inf phi', sup phi'].

    The constants of stabaudit.bounds.activations give beta (rounded up); the infimum of the
    derivative of x s(x) with s(-x) = 1 - s(x) (GELU erf and tanh, SiLU) is 1 - sup, because
    d/dx [x s(x)] at -x equals 1 - (its value at x): alpha = 1 - UPPER is below it.
    """
    from stabaudit.bounds import activations as A

    match op:
        case O.Relu():
            return (0.0, 1.0)
        case O.LeakyRelu(alpha=a):
            if not math.isfinite(a):
                return None
            return (min(a, 1.0), max(a, 1.0))
        case O.PRelu(slope=slope):
            sl = np.asarray(slope, dtype=np.float64)
            if sl.size == 0 or not np.all(np.isfinite(sl)):
                return None
            return (min(float(sl.min()), 1.0), max(float(sl.max()), 1.0))
        case O.Sigmoid():
            return (0.0, 0.25)
        case O.Tanh():
            return (0.0, 1.0)
        case O.Erf():
            return (0.0, A.ERF_UPPER)
        case O.Sin() | O.Cos():
            return (-1.0, 1.0)
        case O.Softplus(beta=b):
            return (0.0, 1.0) if b != 0.0 and math.isfinite(b) else None
        case O.Elu(alpha=a):
            # slope 1 for x > 0, a e^x (between 0 and a) for x < 0
            if not math.isfinite(a):
                return None
            return (min(0.0, a), max(1.0, a))
        case O.Gelu(approximate="none"):
            return (1.0 - A.GELU_ERF_UPPER, A.GELU_ERF_UPPER)
        case O.Gelu(approximate="tanh"):
            return (1.0 - A.GELU_TANH_UPPER, A.GELU_TANH_UPPER)
        case O.Silu():
            return (1.0 - A.SILU_UPPER, A.SILU_UPPER)
        case O.Mish():
            return (-A.MISH_NEG_UPPER, A.MISH_UPPER)
        case O.HardSigmoid(alpha=a):
            return (min(0.0, a), max(0.0, a)) if math.isfinite(a) else None
        case O.HardSwish():
            # derivative (2x + 3) / 6 on (-3, 3): in (-1/2, 3/2); 0 and 1 outside
            return (-0.5, A.HARD_SWISH_SUP)
        case O.Clip(min=lo, max=hi):
            if lo is not None and hi is not None and lo >= hi:
                return (0.0, 0.0)
            return (0.0, 1.0)
    return None


# ---- extraction -------------------------------------------------------------------------------
def _f32_exact(a: np.ndarray) -> bool:
    """Every entry is a float32 value: a product of two such is exact in float64 (24 + 24 <= 53
    significant bits, and float32 exponents cannot underflow float64)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.isfinite(a)) and np.all(a.astype(np.float32).astype(np.float64) == a))


@dataclass
class _Lin:
    w: np.ndarray
    rounds: int = 0  # inexact multiplications per entry so far
    err: float = 0.0  # ||A - W||_2 <= err for the map A the node stands for (Linear.error), scaled


@dataclass
class _Diag:
    s: np.ndarray
    rounds: int = 0


@dataclass
class _Act:
    slope: tuple[float, float]




def _max_abs(s: np.ndarray) -> float:
    return float(np.max(np.abs(s), initial=0.0))


def _mul_rounds(a: np.ndarray, b: np.ndarray, ra: int, rb: int) -> int:
    return ra + rb + (0 if _f32_exact(a) and _f32_exact(b) and ra == 0 and rb == 0 else 1)


def _walk(graph: Graph) -> tuple[list[_Lin | _Diag | _Act], int, list[str]] | str:
    """The chain's items in order, the row count and the node names, or why it is not a chain."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return "more than one input or output"
    nodes = graph.needed_nodes()
    if not nodes:
        return "no operators"
    current = graph.inputs[0].name
    in_shape = tuple(graph.shapes.get(current, graph.inputs[0].shape))
    size = int(np.prod(in_shape)) if in_shape else 1
    perm: np.ndarray | None = np.arange(size).reshape(in_shape)  # input index of every entry
    scale: np.ndarray | None = np.ones(in_shape)  # per-entry input scale (before the first Linear)
    scale_rounds = 0
    items: list[_Lin | _Diag | _Act] = []
    rows = 1
    names: list[str] = []
    for node in nodes:
        variables = [name for name in node.inputs]
        if variables != [current]:
            return f"node {node.name!r} ({node.op.type.value}) is not on a single path"
        shape_in = tuple(graph.shapes.get(current, ()))
        shape_out = tuple(graph.shapes.get(node.output, ()))
        if not shape_out and not isinstance(node.op, O.Linear):
            return f"no static shape for {node.output!r}"
        names.append(node.name)
        pre = perm is not None
        match node.op:
            case O.Reshape():
                if pre:
                    assert perm is not None and scale is not None
                    if int(np.prod(shape_out)) != perm.size:
                        return f"Reshape {node.name!r} changes the size"
                    perm, scale = perm.reshape(shape_out), scale.reshape(shape_out)
                elif not shape_out or not shape_in or shape_out[-1] != shape_in[-1]:
                    return f"Reshape {node.name!r} moves the feature axis"
            case O.Transpose(perm=axes):
                if pre:
                    assert perm is not None and scale is not None
                    perm, scale = perm.transpose(axes), scale.transpose(axes)
                elif len(axes) and axes[-1] != len(axes) - 1:
                    return f"Transpose {node.name!r} moves the feature axis"
            case O.Affine(scale=sc):
                if shape_out != shape_in:
                    return f"Affine {node.name!r} broadcasts its input"
                if sc is None:
                    pass  # a translation: no difference changes
                elif pre:
                    assert scale is not None
                    s = np.broadcast_to(np.asarray(sc, dtype=np.float64), shape_in)
                    scale_rounds += 0 if (_f32_exact(s) and _f32_exact(scale) and scale_rounds == 0) else 1
                    scale = scale * s
                else:
                    s = np.broadcast_to(np.asarray(sc, dtype=np.float64), shape_in)
                    vec = s.reshape(-1, shape_in[-1]) if shape_in else s.reshape(1, 1)
                    if not np.all(vec == vec[0:1]):
                        return f"Affine {node.name!r} scales rows differently"
                    items.append(_Diag(s=vec[0].copy()))
            case O.Linear(weight=weight, error=node_error):
                w = float64_view(weight)  # the executors' float64 copy, shared
                if w.ndim != 2:
                    return f"Linear {node.name!r} has a weight of rank {w.ndim}"
                if pre:
                    assert perm is not None and scale is not None
                    if not perm.shape or perm.shape[-1] != w.shape[1]:
                        return f"Linear {node.name!r}: input shape {perm.shape} does not end in {w.shape[1]}"
                    per_row = scale.reshape(-1, w.shape[1])
                    if not np.all(per_row == per_row[0:1]):
                        return "the input scale differs between rows"
                    rows = per_row.shape[0]
                    if not np.all(per_row[0] == 1.0):
                        items.append(_Diag(s=per_row[0].copy(), rounds=scale_rounds))
                    perm = scale = None
                items.append(_Lin(w=w, err=float(node_error)))
            case O.Conv() | O.ConvTranspose():
                return f"convolution {node.name!r}: not a dense chain"
            case op if op.type in O.ACTIVATIONS:
                if pre:
                    return f"activation {node.name!r} before the first Linear"
                slope = slope_interval(op)
                if slope is None:
                    return f"{op.type.value} {node.name!r} is not a known slope-restricted element-wise map"
                if shape_out != shape_in:
                    return f"activation {node.name!r} changes the shape"
                items.append(_Act(slope=slope))
            case _:
                return f"{node.op.type.value} {node.name!r} is not part of a dense chain"
        current = node.output
    if current != graph.outputs[0]:
        return "the output is not the end of the chain"
    if perm is not None:
        return "no Linear layer"
    return items, rows, names


def _normalise(items: list[_Lin | _Diag | _Act]) -> tuple[list[_Lin], list[tuple[float, float]]]:
    """Merge diagonal scales into the adjacent Linear (W diag(s) or diag(s) W: one product per
    entry, exact for float32 operands), put the identity (slopes [1, 1]) between two Linears and a
    final identity Linear after a final activation."""
    lins: list[_Lin] = []
    slopes: list[tuple[float, float]] = []
    pending: _Diag | None = None
    last: str = "none"
    for item in items:
        match item:
            case _Diag(s=s, rounds=r):
                if last == "lin" and pending is None:
                    prev = lins[-1]
                    rounds = _mul_rounds(prev.w, s, prev.rounds, r)
                    lins[-1] = _Lin(w=s[:, None] * prev.w, rounds=rounds, err=mul_up(prev.err, _max_abs(s)))
                elif pending is None:
                    pending = _Diag(s=s, rounds=r)
                else:
                    rounds = _mul_rounds(pending.s, s, pending.rounds, r)
                    pending = _Diag(s=pending.s * s, rounds=rounds)
            case _Lin(w=w, err=err):
                if last == "lin":
                    slopes.append((1.0, 1.0))
                if pending is not None:
                    rounds = _mul_rounds(w, pending.s, 0, pending.rounds)
                    lins.append(_Lin(w=w * pending.s[None, :], rounds=rounds, err=mul_up(err, _max_abs(pending.s))))
                    pending = None
                else:
                    lins.append(_Lin(w=w, err=err))
                last = "lin"
            case _Act(slope=slope):
                if pending is not None:  # a scale after an activation with no Linear yet: its own layer
                    lins.append(_Lin(w=np.diag(pending.s), rounds=pending.rounds))
                    slopes.append((1.0, 1.0))
                    pending = None
                slopes.append(slope)
                last = "act"
    if pending is not None:
        if last == "lin":
            slopes.append((1.0, 1.0))
        lins.append(_Lin(w=np.diag(pending.s), rounds=pending.rounds))
        last = "lin"
    if last == "act":
        lins.append(_Lin(w=np.eye(lins[-1].w.shape[0])))
    return lins, slopes


def explain_chain(graph: Graph) -> Chain | str:
    """The chain of ``graph``, or a one-line reason why it is not one."""
    walked = _walk(graph)
    if isinstance(walked, str):
        return walked
    items, rows, names = walked
    lins, slopes = _normalise(items)
    if len(lins) != len(slopes) + 1:
        return "internal: the chain does not alternate"
    weights: list[np.ndarray] = []
    errors: list[np.ndarray | None] = []
    notes: list[str] = []
    for k, lin in enumerate(lins):
        if not np.all(np.isfinite(lin.w)):
            return f"layer {k}: non-finite weights"
        weights.append(lin.w)
        if lin.rounds or lin.err:
            # each rounded product: relative error u (standard model), k of them: gamma_k; the
            # node's own error bound in the spectral norm bounds every entry (|E_ij| <= ||E||_2)
            g = lin.rounds * U / (1.0 - lin.rounds * U)
            errors.append(np.abs(lin.w) * (g * 1.01) + (up(lin.err) if lin.err else 0.0))
            if lin.rounds:
                notes.append(f"layer {k}: scale merged with rounding (bounded entry-wise)")
            if lin.err:
                notes.append(f"layer {k}: the weight's own rounding bound ({lin.err:.3g}) carried entry-wise")
        else:
            errors.append(None)
    for a, b in zip(weights[:-1], weights[1:], strict=True):
        if b.shape[1] != a.shape[0]:
            return f"weights {a.shape} and {b.shape} do not chain"
    return Chain(weights=tuple(weights), slopes=tuple(slopes), errors=tuple(errors), rows=rows, nodes=tuple(names), notes=tuple(notes))


def extract_chain(graph: Graph) -> Chain | None:
    """The feedforward chain of ``graph`` (see the module docstring), or None."""
    result = explain_chain(graph)
    return result if isinstance(result, Chain) else None


# ---- the entry point --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GlobalBoundResult:
    """One method's global L2 Lipschitz bound of the graph (x all inputs -> y all outputs).

    ``upper`` is None when the method does not apply or its certificate failed verification;
    ``certified`` is True only for a bound verified in float64 on the stored weights."""

    method: str
    upper: float | None
    certified: bool
    seconds: float
    notes: tuple[str, ...] = ()
    # the verified certificate behind ``upper`` (None: no certificate, or not a chain method)
    certificate: ChainCertificate | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True, eq=False)
class ChainCertificate:
    """A verified certificate (rho, T) of the LipSDP-Neuron LMI of ``lmi``, the power-of-two
    scaled chain (``sdp.pow2_scaled``): the bound is sqrt(rho) 2^``exponent``. Over a box that
    leaves some units inactive, (rho, T restricted to the other units) satisfies the reduced LMI
    too (``analyses.domain_chain.warm_bound``): the domain's certificates start from it."""

    lmi: ChainLMI
    exponent: int
    rho: float
    ts: tuple[np.ndarray, ...]


METHODS: Mapping[str, tuple[str, ...]] = {
    "layerwise": ("eclipse-fast", "eclipse"),
    "sdp": ("lipsdp-neuron",),
    "eclipse-fast": ("eclipse-fast",),
    "eclipse": ("eclipse",),
    "lipsdp-neuron": ("lipsdp-neuron",),
}
INFLATIONS = (1e-9, 1e-6, 1e-4, 1e-2)


def _expand(methods: Sequence[str]) -> list[str]:
    out: list[str] = []
    for m in methods:
        if m not in METHODS:
            from stabaudit.errors import UsageError

            raise UsageError(f"unknown global bound method {m!r}; known: {', '.join(sorted(METHODS))}")
        out.extend(x for x in METHODS[m] if x not in out)
    return out


def global_bounds(
    graph: Graph,
    *,
    op_bounds: Mapping[str, OpBound] | None = None,
    budget_s: float = 20.0,
    methods: Sequence[str] = ("layerwise", "sdp"),
) -> list[GlobalBoundResult]:
    """Certified global bounds of a feedforward chain, one result per method tried, in order.

    ``op_bounds`` (per-operator bounds keyed by node output) only serves the comparison with the
    product in the notes. The SDP starts from the best verified layer-wise certificate. Each
    method gets a fixed share of ``budget_s`` and plans Newton steps from it (sdp.planned_newton_steps),
    so the result is the same on any machine; it stops earlier at its duality-gap target.
    """
    from stabaudit.analyses import plan
    from stabaudit.analyses.certify import verify
    from stabaudit.analyses.layerwise import (
        Certificate,
        bound_value,
        eclipse,
        eclipse_fast,
        layer_steps,
    )
    from stabaudit.analyses.plan import newton_step_s
    from stabaudit.analyses.sdp import lipsdp, lmi_size, pow2_scaled, single_blas_thread

    wanted = _expand(methods)
    chain = explain_chain(graph)
    if isinstance(chain, str):
        return [GlobalBoundResult(method=m, upper=None, certified=False, seconds=0.0, notes=(f"not a feedforward chain: {chain}",)) for m in wanted]
    lmi = chain.lmi()

    @functools.cache
    def scaled_chain() -> tuple[ChainLMI, int]:
        """The power-of-two scaled chain and its exponent (``sdp.pow2_scaled``), computed once, when a
        method runs: its norm estimates take seconds at width 4096, for nothing when none runs."""
        return pow2_scaled(lmi)
    product = None
    if op_bounds is not None:
        from stabaudit.analyses.composition import compose

        try:
            product = float(compose(graph, op_bounds).upper.value)
        except Exception:  # noqa: BLE001 - a comparison only
            product = None

    def certify(cert: Certificate | None) -> tuple[float | None, Certificate | None, list[str]]:
        if cert is None:
            return None, None, ["no feasible certificate (a Schur complement is not positive definite)"]
        if id(cert) in known:
            return known[id(cert)][0], known[id(cert)][1], []  # verified already (an earlier method's)
        for inflate in INFLATIONS:
            lam = 1.0 + inflate
            rho, ts = cert.rho * lam, tuple(t * lam for t in cert.ts)
            plan.spend(check_s)
            scaled, exponent = scaled_chain()
            if verify(scaled, rho, ts) is not None:
                notes = [] if inflate == INFLATIONS[0] else [f"verified after inflating the certificate by {inflate:g}"]
                return bound_value(rho, exponent), Certificate(rho=rho, ts=ts), notes
        return None, None, ["float64 verification failed: no certified bound from this method"]

    # the closed form (and the per-layer Schur complements of ECLipsE) and each float64
    # verification are planned work too: at width 4096 the closed form alone takes minutes
    shapes = [tuple(int(d) for d in w.shape) for w in lmi.weights]
    fast_s, check_s = plan.closed_form_s(shapes), plan.verify_s(shapes)
    closed: list[Certificate | None] = []  # ECLipsE-Fast's certificate, once computed

    def unaffordable(left: float) -> str | None:
        """Why a closed form (ECLipsE-Fast's, or ECLipsE's per-layer Schur complements) is not run
        with ``left`` of the budget: it and one verification cost more than twice that (None: it fits)."""
        if fast_s + check_s <= 2.0 * left:
            return None
        return (f"not run: ECLipsE-Fast's closed form and its float64 verification are planned at "
                f"{fast_s + check_s:.3g} s, above twice the budget left to the global methods "
                f"({left:.3g} s) (a larger --budget runs it)")

    def closed_form() -> Certificate | None:
        """ECLipsE-Fast's certificate, computed (and charged) once."""
        if not closed:
            plan.spend(fast_s)
            closed.append(eclipse_fast(scaled_chain()[0]))
        return closed[0]

    results: list[GlobalBoundResult] = []
    known: dict[int, tuple[float, Certificate]] = {}  # id of a certificate -> (bound, verified one)
    fast: Certificate | None = None  # ECLipsE-Fast's verified certificate, once it ran
    best: Certificate | None = None
    best_upper = math.inf
    # shares of the budget in planned work (each method plans from its share and the planned
    # seconds the methods before it took, never from the time they took, so that the result does
    # not depend on the machine's speed or load): eclipse gets a quarter when lipsdp-neuron
    # follows, lipsdp-neuron what remains (what eclipse left unspent included)
    start = plan.spent()
    with single_blas_thread():
        for i, method in enumerate(wanted):
            t0 = time.perf_counter()
            left = plan.remaining(budget_s, since=start)
            notes: list[str] = list(chain.notes)
            cert: Certificate | None
            try:
                match method:
                    case "eclipse-fast":
                        if not closed and (why := unaffordable(left)):
                            results.append(_not_run(method, [*notes, why], t0))
                            continue
                        cert = closed_form()
                    case "eclipse":
                        share = left * (0.25 if "lipsdp-neuron" in wanted[i:] else 1.0)
                        per_layer = max(share, 0.0) / max(len(lmi.slopes), 1)  # as ``eclipse`` shares it
                        if fast is not None and not any(layer_steps(w, per_layer) for w in lmi.weights[:-1]):
                            # no layer's SDP buys a step: ECLipsE is ECLipsE-Fast, computed already
                            cert = fast
                            notes.append("no layer's LMI step fits its share of the budget: ECLipsE-Fast's certificate")
                        elif why := unaffordable(left):
                            results.append(_not_run(method, [*notes, why], t0))
                            continue
                        else:
                            plan.spend(fast_s)  # the layers' Schur complements; their Newton steps count themselves
                            cert = eclipse(scaled_chain()[0], budget_s=max(share, 0.0))
                    case _:
                        if best is None and not closed and (why := unaffordable(left)):
                            results.append(_not_run(method, [*notes, why], t0))
                            continue
                        base = best if best is not None else closed_form()
                        cert = None
                        if base is not None and not lmi.slopes:
                            cert = base  # one Linear: rho = ||W||^2 is already optimal
                        elif base is not None:
                            rho, ts, steps = lipsdp(scaled_chain()[0], base.rho, list(base.ts), budget_s=max(left, 0.0))
                            if steps == 0:
                                size, t_size = lmi_size(scaled_chain()[0]), sum(int(t.size) for t in base.ts)
                                cost = newton_step_s(size, t_size)
                                notes.append(
                                    f"not run: one Newton step of its LMI (dim {size}) is planned at {cost:.3g} s, above "
                                    f"twice the budget left to it ({max(left, 0.0):.3g} s); the start is reported "
                                    "(a larger --budget runs it)")
                                cert = base
                            elif rho >= base.rho:
                                notes.append(f"{steps} Newton steps")
                                cert = base
                                notes.append("the solver did not improve on its start within the budget: the start is reported")
                            else:
                                notes.append(f"{steps} Newton steps")
                                cert = Certificate(rho=rho, ts=tuple(ts))
            except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
                cert = None
                notes.append(f"solver error: {exc}")
            upper, verified, more = certify(cert)
            notes.extend(more)
            if upper is not None and verified is not None:
                known[id(verified)] = (upper, verified)
                if method == "eclipse-fast":
                    fast = verified
            if upper is not None and math.isinf(upper):
                # a verified certificate whose value 2^E sqrt(rho) exceeds float64: no finite bound
                upper, verified = None, None
                notes.append("the certified bound overflows float64 (above 1.8e308): no finite certified bound")
            if cert is not None:
                notes.extend(cert.notes)
            if upper is not None and verified is not None and upper < best_upper:
                best, best_upper = verified, upper
            if upper is not None and product is not None and upper > product:
                notes.append(f"above the product of layer norms ({product:.6g})")
            results.append(
                GlobalBoundResult(
                    method=method,
                    upper=upper,
                    certified=upper is not None,
                    seconds=time.perf_counter() - t0,
                    notes=tuple(notes),
                    certificate=(ChainCertificate(lmi=scaled_chain()[0], exponent=scaled_chain()[1],
                                                  rho=verified.rho, ts=verified.ts)
                                 if upper is not None and verified is not None else None),
                )
            )
        if "lipsdp-neuron" in wanted and chain.slopes and math.isfinite(best_upper):
            # what the methods left of the budget (the floor plans its starts from it, one at least)
            results = _with_floor(results, chain, *scaled_chain(), best_upper, plan.remaining(budget_s, since=start))
    return results


def _not_run(method: str, notes: list[str], t0: float) -> GlobalBoundResult:
    """A method the budget does not buy: no bound, its notes say why."""
    return GlobalBoundResult(method=method, upper=None, certified=False, seconds=time.perf_counter() - t0,
                             notes=tuple(notes))


def _with_floor(
    results: list[GlobalBoundResult], chain: Chain, scaled: ChainLMI, exponent: int, best_upper: float,
    budget_s: float,
) -> list[GlobalBoundResult]:
    """The tightest result, with a note on the slope-relaxation floor (``analyses.floor``): the
    value below which no method of this kind (slope intervals per activation) can certify.

    The floor is searched on the power-of-two scaled weights (``sdp.pow2_scaled``: entries near
    unit scale, so no product under- or overflows) and scaled back by 2^E rounded down: the floor
    is positively homogeneous in each W_k. A scaled weight that was rounded (its error bound is
    set) gives no floor. Its starts take FLOOR_SHARE of the methods' budget in counted flops (at
    most ``floor.FLOOR_FLOPS``, at least one start)."""
    from stabaudit.analyses.floor import FLOOR_FLOPS_PER_S, slope_relaxation_floor
    from stabaudit.rounding import ldexp_down

    if any(err is not None for err, orig in zip(scaled.errors, chain.errors, strict=True) if orig is None):
        return results
    floor = slope_relaxation_floor(dataclasses.replace(chain, weights=scaled.weights),
                                   flops=FLOOR_SHARE * max(budget_s, 0.0) * FLOOR_FLOPS_PER_S)
    value = ldexp_down(floor.value, exponent)
    if value <= 0.0:
        return results
    k = min((i for i, r in enumerate(results) if r.upper is not None), key=lambda i: results[i].upper or math.inf)
    note = (
        f"slope-relaxation floor {value:.6g} (certified): an activation pattern, "
        f"reached by an input or not, has a Jacobian of that norm, so no bound from per-activation slope "
        f"intervals can be lower; this one is {best_upper / value - 1.0:.1%} above it"
    )
    return [dataclasses.replace(r, notes=(*r.notes, note)) if i == k else r for i, r in enumerate(results)]
