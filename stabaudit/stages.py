"""The analysis pipeline: the named stages that ``engine.run_stages`` runs in order (``STAGES``).

Each stage is a function ``(request, evidence) -> None``: it reads the request and the fields of
the ``AnalysisState`` written by the stages before it, and writes its own fields. ``Stage`` adds
the observer's line as it starts, the key of its seconds in the analysis' timings, and whether it
runs (``when``). engine.audit runs the list (run_stages), then turns the final state into the cached
``Analysis``. A new stage is a function here calling its analysis module, the fields it writes on
AnalysisState, and one line in STAGES.

    stage               observer line / timing key             writes
    check_device        -                                      nothing: refuses --device cuda without CUDA
    load                loading / load                         loaded, graph (the report's layers:
                                                               affine maps folded, linear maps merged)
    equivalence         equivalence / equivalence              eq; SA902 (a failed check) stops the audit
    layer_bounds        per-layer bounds / layer_bounds        op_bounds, layers (graph)
    jumps               -                                      jumps (the additive term of branch
                                                               switches); graph, loaded -> smooth parts
    global_bound        global bound / composition             whole, layered, comp, methods (the product)
    global_methods      global methods / global_methods        methods += layerwise, sdp, ..., exact;
                        (unless --method product)              exact
    samples             -                                      samples, sample_info (the inputs, or
                                                               draws from the domain, or None)
    sample_evidence     activations and parameter              sampled (SA301, SA303, SA401)
                        sensitivity at the samples / samples
                        (with samples)
    local_bounds        local bounds / local_bounds            local (SA302)
                        (with samples)
    training            training dynamics / training           training (SA501-SA503)
                        (with a training spec)
    residual            residual blocks / residual             residual (SA201, SA202)
    lower_bound_search  lower bound search / lower_bound       low
    global_lipschitz    -                                      lipschitz: the best certified upper
                                                               bound, the lower bound and its witness
    domain_bounds       bounds over the domain / domain        domain_lipschitz, domain_product; layers'
                        (with a bounded --domain)              domain_upper (graph, op_bounds, regions,
                                                               lipschitz, samples); residual blocks'
                                                               domain figures; local.domain_upper
    domain_witness      -                                      lipschitz: the lower bound raised to the
                        (with a bounded --domain)              domain's where that is larger

The data-dependent channels (sample_evidence .. residual, THEORY.md) read ``samples``, never
request.inputs. The stages on the graph as loaded (global methods, local bounds, training, the lower
bound) are about the stored weights; those on ``graph`` about the report's layers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit.errors import EquivalenceError, InternalError, StabauditError, UsageError
from stabaudit.ir.graph import Graph, Node
from stabaudit.report.model import (
    Additive,
    GlobalLipschitz,
    Layer,
    LayerLipschitz,
    MethodBound,
    Witness,
)

if TYPE_CHECKING:
    from stabaudit.analyses.composition import AdditiveTerm, Composition
    from stabaudit.analyses.domain_bound import Boxes
    from stabaudit.analyses.equivalence import EquivalenceResult
    from stabaudit.analyses.exact import ExactResult
    from stabaudit.analyses.feedforward import ChainCertificate
    from stabaudit.analyses.linear_regions import RegionBound
    from stabaudit.analyses.lower import LowerResult
    from stabaudit.analyses.residual import WholeBlock
    from stabaudit.analyses.samples import SampleEvidence
    from stabaudit.analyses.training import TrainingResult, TrainingSpec
    from stabaudit.bounds.base import Interval, OpBound
    from stabaudit.checks.base import LocalEvidence
    from stabaudit.checks.residual import ResidualEvidence
    from stabaudit.engine import AuditRequest
    from stabaudit.ir.parameters import Parameterisation
    from stabaudit.loaders import LoadedModel
    from stabaudit.report.model import SampleInfo, TrainingReport


class AnalysisState:
    """The evidence so far. Each field is written by one stage (the module docstring's table) and
    read by the later ones; until its stage ran it is unset (AttributeError), except the fields of
    the stages that may not run, which are None until then."""

    # the run (engine.run_stages)
    memory_budget: int  # bytes
    reproducible: bool  # SOURCE_DATE_EPOCH is set: seconds are reported as 0
    timings: dict[str, float]  # seconds per stage, by timing key
    planned: dict[str, float]  # planned seconds of counted work per stage (analyses.plan.ledger)
    # the planned seconds of --budget allotted to the running stage (engine.run_stages, one split
    # of the budget over the stages: analyses.plan.STAGE_WEIGHTS), and those left beyond it
    budget_s: float = 0.0
    budget_rest_s: float = 0.0
    # load (jumps: their smooth parts)
    loaded: LoadedModel  # the model as loaded
    graph: Graph  # the report's layers: affine maps folded, adjacent linear maps merged
    # equivalence
    eq: EquivalenceResult
    # layer_bounds
    op_bounds: dict[str, OpBound]  # node output -> its certified per-operator bound
    layers: list[Layer]
    # jumps
    jumps: AdditiveTerm
    # global_bound
    whole: Mapping[str, WholeBlock]  # residual blocks bounded as a whole
    layered: Composition  # the per-layer composition (depth profile, product)
    comp: Composition  # the global composition, linear regions bounded as a whole
    methods: list[MethodBound]  # the product, then the global methods
    regions: Mapping[str, RegionBound]  # linear regions bounded as a whole, by region output
    # global_methods
    exact: ExactResult | None = None
    # the tightest verified chain certificate of the global methods (the domain's boxes start from it)
    chain_certificate: ChainCertificate | None = None
    # jumps: the report's graph as executed (every jumping operator as it is, not its smooth part)
    executed: Graph | None = None
    # samples
    samples: np.ndarray | None = None  # [N, *input shape]
    sample_info: SampleInfo | None = None
    # sample_evidence, local_bounds, training, residual
    sampled: SampleEvidence | None = None
    local: LocalEvidence | None = None
    training: TrainingResult | None = None
    residual: ResidualEvidence
    # lower_bound_search
    low: LowerResult
    # the per-node bounds of the graph as loaded (``_loaded_bounds``: SA302, the interval Jacobian
    # over the domain, the float64 error model of the lower searches): built once, by the first
    loaded_bounds: dict[str, OpBound] | None = None
    # the same, quick where the folding changed a node (``_error_model_bounds``), when the lower
    # searches run before any stage asked for the above
    quick_loaded_bounds: dict[str, OpBound] | None = None
    # global_lipschitz
    lipschitz: GlobalLipschitz
    # domain_bounds (with an audit domain)
    domain_lipschitz: GlobalLipschitz | None = None
    domain_product: float | None = None  # the composed layer gains over the domain (SA103)

    # load: the bytes the stages with large allocations plan (limits.analysis_memory_plan)
    memory_plan: Mapping[str, int] = {}

    def __init__(self, *, memory_budget: int, reproducible: bool) -> None:
        self.memory_budget = memory_budget
        self.reproducible = reproducible
        self.timings = {}
        self.planned = {}

    def copy(self) -> AnalysisState:
        """The state for the next stage to write: its lists and dicts copied (a stage stopped
        half-way must leave the state of the stages before it as they finished), the values in
        them shared (immutable evidence)."""
        new = object.__new__(AnalysisState)
        for key, value in vars(self).items():
            setattr(new, key, list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value)
        return new


StageFn = Callable[["AuditRequest", AnalysisState], None]


@dataclass(frozen=True)
class Stage:
    """One step of the analysis: ``run`` writes its evidence into the state; ``say`` is the
    observer's line as it starts and ``timing`` the key of its seconds in the timings (None:
    neither); it runs when ``when`` holds (None: always)."""

    run: StageFn
    say: str | None = None
    timing: str | None = None
    when: Callable[[AuditRequest, AnalysisState], bool] | None = None
    # whether it will run, judged from the request alone (an audit that stopped before the stages
    # ``when`` reads); None: ``when`` reads only the request, or there is none
    planned: Callable[[AuditRequest], bool] | None = None

    def will_run(self, request: AuditRequest) -> bool:
        """Whether this stage would run for ``request`` (for a stage the audit never reached)."""
        if self.planned is not None:
            return self.planned(request)
        if self.when is None:
            return True
        return self.when(request, AnalysisState(memory_budget=0, reproducible=False))

    @property
    def name(self) -> str:
        return self.run.__name__


# --method: the global methods each choice runs beyond the product (analyses.feedforward.METHODS;
# "exact" is the branch and bound of analyses.exact)
METHOD_CHOICES: dict[str, tuple[str, ...]] = {
    "auto": ("layerwise", "sdp", "exact"),
    "product": (),
    "layerwise": ("layerwise",),
    "sdp": ("sdp",),
    "eclipse-fast": ("eclipse-fast",),
    "eclipse": ("eclipse",),
    "lipsdp-neuron": ("lipsdp-neuron",),
    "exact": ("exact",),
}
AUTO_EXACT_MAX_UNITS = 32  # auto tries the exact mode on chains with at most this many hidden units


def _global_methods(
    graph: Graph, request: AuditRequest, reproducible: bool, budget_s: float
) -> tuple[list[MethodBound], ExactResult | None, ChainCertificate | None]:
    """The certified global methods beyond the product; auto runs them only on the feedforward
    chains they apply to, an explicit --method reports why it did not apply. Also returns the
    exact mode's result (its lower bound is a witnessed region norm) and the tightest verified
    chain certificate."""
    from stabaudit.analyses.exact import exact_lipschitz
    from stabaudit.analyses.feedforward import extract_chain, global_bounds

    auto = request.method == "auto"
    chain = extract_chain(graph)
    if auto and chain is None:
        return [], None, None

    def method_bound(
        method: str, upper: float | None, certified: bool, seconds: float, notes: tuple[str, ...]
    ) -> MethodBound:
        return MethodBound(
            method=method,
            upper=_finite(upper),
            certified=certified and _finite(upper) is not None,
            seconds=0.0 if reproducible else round(seconds, 4),
            notes=notes,
        )

    wanted = METHOD_CHOICES[request.method]
    convex = tuple(m for m in wanted if m != "exact")
    results = global_bounds(graph, budget_s=budget_s, methods=convex) if convex else []
    out = [method_bound(r.method, r.upper, r.certified, r.seconds, tuple(r.notes)) for r in results]
    certified = [r for r in results if r.certificate is not None and r.upper is not None]
    certificate = min(certified, key=lambda r: r.upper or math.inf).certificate if certified else None
    exact = None
    units = sum(w.shape[0] for w in chain.weights[:-1]) if chain is not None else 0
    if "exact" in wanted and (not auto or units <= AUTO_EXACT_MAX_UNITS):
        exact = exact_lipschitz(graph, budget_s=budget_s, seed=request.seed)
        done = ("exact constant (branch and bound finished)",) if exact.exact else ()
        out.append(
            method_bound(
                exact.method,
                exact.upper,
                exact.upper is not None,
                exact.seconds,
                exact.notes + done,
            )
        )
    return out, exact, certificate


def _patch_entries(memory_budget: int) -> int:
    """The receptive-field Jacobians' largest tensor that what remains of the budget affords."""
    from stabaudit.analyses.patch_jacobian import patch_entries
    from stabaudit.limits import remaining_memory

    return patch_entries(remaining_memory(memory_budget))


def _loaded_bounds(ev: AnalysisState) -> dict[str, OpBound]:
    """Per-node bounds of the graph as loaded, for the analyses that run it as loaded (SA302's local
    bounds, the domain's interval Jacobian; the float64 error model of the lower searches reads them
    once they exist, ``_error_model_bounds``), computed once: ``_bounds_as_loaded``."""
    if ev.loaded_bounds is None:
        ev.loaded_bounds = _bounds_as_loaded(ev, quick=False)
    return ev.loaded_bounds


def _error_model_bounds(ev: AnalysisState) -> dict[str, OpBound]:
    """Per-node bounds of the graph as loaded for the float64 error model of the lower searches,
    which reads only their upper ends and needs them sound, not tight: ``_loaded_bounds`` when a
    stage has computed them; else ``_bounds_as_loaded`` with the rules' quickest certified bounds
    (``BoundSettings.quick``: a convolution's without its circulant certificate), computed once."""
    if ev.loaded_bounds is not None:
        return ev.loaded_bounds
    if ev.quick_loaded_bounds is None:
        ev.quick_loaded_bounds = _bounds_as_loaded(ev, quick=True)
    return ev.quick_loaded_bounds


def _bounds_as_loaded(ev: AnalysisState, *, quick: bool) -> dict[str, OpBound]:
    """The folded graph's bounds where the folding kept a node or only shifted it
    (``_shared_bounds``), the rules' (``quick``: ``BoundSettings.quick``) for the nodes it scaled or
    merged (a Conv and the BatchNorm folded into it). Where a rule fails, none of the others is
    kept: each analysis then computes what it needs itself (the error model's sensitivities are
    infinite there)."""
    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.bounds.base import BoundSettings
    from stabaudit.limits import raise_allocation_failure

    graph = ev.loaded.graph
    shared = _shared_bounds(graph, ev.graph, ev.op_bounds)
    missing = frozenset(node.output for node in graph.nodes if node.output not in shared)
    computed: dict[str, OpBound] = {}
    if missing:
        try:
            computed = rule_bounds(graph, BoundSettings(quick=quick), only=missing)
        except StabauditError:  # a timeout or resource limit: never a fallback
            raise
        except Exception as exc:  # no rule or a failing one: as error_sensitivities does
            raise_allocation_failure(exc)
    return {**shared, **computed}


def _jacobian_cost(graph: Graph, patches: int) -> float:
    """The counted seconds of one interval Jacobian of ``graph`` (one ball), dense or on receptive
    fields (analyses.local.jacobian_cost), 0 where it does not run at all."""
    from stabaudit.analyses.local import MAX_JACOBIAN_ENTRIES, jacobian_cost

    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    return jacobian_cost(graph, shapes, MAX_JACOBIAN_ENTRIES, patches)


def _jacobian_unbought(graph: Graph, patches: int, balls: int, budget_s: float) -> str:
    """Why the interval Jacobian over ``balls`` balls is not run ("": it is): its counted cost
    from the shapes is above twice ``budget_s`` (plan.SMALLEST_PLAN_FACTOR), the part of --budget
    the stage has left (a decision on the sizes alone, before any tensor is built)."""
    from stabaudit.analyses.local import MAX_JACOBIAN_ENTRIES, jacobian_form
    from stabaudit.analyses.plan import SMALLEST_PLAN_FACTOR

    total = _jacobian_cost(graph, patches) * balls
    if total <= SMALLEST_PLAN_FACTOR * budget_s:
        return ""
    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    form = "on receptive fields" if jacobian_form(graph, shapes, MAX_JACOBIAN_ENTRIES, patches) == "patches" else "(dense)"
    return (f"the interval Jacobian {form} is planned at {total:.3g} s for {balls} ball(s), above "
            f"twice the {budget_s:.3g} s of --budget this stage has left: not run (a larger --budget runs it)")


def _shared_bounds(loaded: Graph, folded: Graph, op_bounds: Mapping[str, OpBound]) -> dict[str, OpBound]:
    """The per-layer bounds of ``folded`` that hold for ``loaded``'s nodes too: the same node (the
    same operator object, inputs and output) at the same shapes; and a linear node into which the
    folding merged only a shift (a bias add after a MatMul): the folded node reads the same inputs
    and differs only in its bias and output name, and a bias moves no Lipschitz bound. The folding
    passes keep every node they do not change, so only the scaled or merged ones are bounded again."""
    theirs = {node.output: node for node in folded.nodes}
    by_inputs: dict[tuple[str, ...], list[Node]] = {}
    for node in folded.nodes:
        by_inputs.setdefault(node.inputs, []).append(node)
    out: dict[str, OpBound] = {}
    for node in loaded.nodes:
        other = theirs.get(node.output)
        if (other is not None and other.op is node.op and other.inputs == node.inputs and node.output in op_bounds
                and all(loaded.shapes.get(k) == folded.shapes.get(k) for k in (*node.inputs, node.output))):
            out[node.output] = op_bounds[node.output]
            continue
        for cand in by_inputs.get(node.inputs, ()):
            if (cand.output in op_bounds and _same_but_bias(node.op, cand.op)
                    and loaded.shapes.get(node.output) == folded.shapes.get(cand.output)
                    and all(loaded.shapes.get(k) == folded.shapes.get(k) for k in node.inputs)):
                out[node.output] = op_bounds[cand.output]
                break
    return out


def _same_but_bias(a: Any, b: Any) -> bool:
    """Whether two linear operators (Linear, Conv, ConvTranspose) are equal in every field but their
    bias: the same type, weights equal entry for entry, the same error bound and geometry."""
    from stabaudit.ir import ops as O

    if type(a) is not type(b) or not isinstance(a, O.Linear | O.Conv | O.ConvTranspose):
        return False
    for f in fields(a):
        if f.name == "bias":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape
                    and (x is y or bool(np.array_equal(x, y)))):
                return False
        elif x != y:
            return False
    return True


def _local_evidence(graph: Graph, samples: np.ndarray, request: AuditRequest, memory_budget: int,
                    op_bounds: Callable[[], Mapping[str, OpBound]] | None = None) -> LocalEvidence:
    """SA302's evidence: the certified local bound over linf balls around the samples (the first
    ones the budget plans, as for the other sample channels: analyses.plan.sample_count);
    ``op_bounds``: gives the per-layer bounds already computed for nodes of ``graph`` (reused), called
    only once the graph's operators are known to have local rules (a model the local bounds refuse
    costs no per-layer certificate)."""
    from stabaudit.analyses.local import MAX_JACOBIAN_ENTRIES, check_supported, local_bounds
    from stabaudit.analyses.plan import JACOBIAN_SHARE, remaining, spent
    from stabaudit.checks.base import LocalEvidence
    from stabaudit.errors import UnsupportedOperatorError

    samples = samples[:_planned_samples(graph, int(samples.shape[0]), request)]
    n = int(samples.shape[0])
    try:
        check_supported(graph)
    except UnsupportedOperatorError as exc:
        return LocalEvidence(upper=None, eps=request.eps, norm="linf", samples=n, message=str(exc))
    patches = _patch_entries(memory_budget)
    share = stage_share(request, "sample_evidence")
    start = spent()
    # half of the sample channels' part of --budget: tightened ranges over each ball, then the
    # reference-Jacobian bound; the interval Jacobian (counted) within what the part has left
    balls = _local_balls(graph, samples, request.eps, JACOBIAN_SHARE * share, patches)
    unbought = _jacobian_unbought(graph, patches, n, remaining(share, since=start))
    try:
        result = local_bounds(graph, samples, eps=request.eps, norm="linf",
                              max_jacobian_entries=0 if unbought else MAX_JACOBIAN_ENTRIES,
                              max_patch_entries=0 if unbought else patches,
                              op_bounds=None if op_bounds is None else op_bounds(),
                              known=[known for known, _ in balls] if balls else None)
    except UnsupportedOperatorError as exc:
        return LocalEvidence(upper=None, eps=request.eps, norm="linf", samples=n, message=str(exc))
    uppers = [s.upper for s in result.samples]
    for i, (_, ref) in enumerate(balls):
        if ref is not None and ref < uppers[i]:
            uppers[i] = ref
    upper = _finite(max(uppers))
    totals: dict[str, list[int]] = {}
    for sample in result.samples:
        for c in sample.counts:
            t = totals.setdefault(c.layer, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + c.active, t[1] + c.inactive, t[2] + c.unstable
    return LocalEvidence(
        upper=upper,
        eps=request.eps,
        norm="linf",
        samples=len(result.samples),
        message="" if upper is not None else "the local bound is not finite",
        units=tuple((layer, a, i, u) for layer, (a, i, u) in totals.items()),
        note=unbought,
    )


def _local_balls(graph: Graph, samples: np.ndarray, eps: float, budget_s: float,
                 patches: int) -> list[tuple[dict[str, Interval] | None, float | None]]:
    """Per sample, within ``budget_s`` of counted work in all (first come): the ranges
    over its linf ball and the bound around a reference Jacobian over it
    (``domain_bound.ball_references``; None where not bought or where it does not apply). Empty for
    a graph with several inputs (the interval Jacobian's own ranges stand)."""
    from stabaudit.analyses.domain_bound import ball_references

    if len(graph.inputs) != 1 or not (math.isfinite(eps) and eps > 0):
        return []
    r = float(np.nextafter(eps, math.inf))
    flat = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
    refs = ball_references(graph, [(x, r) for x in flat], max_patch_entries=patches, budget_s=budget_s)
    return [(ref.ranges, ref.reference) for ref in refs]


def _residual_evidence(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    samples: np.ndarray | None,
    request: AuditRequest,
    whole: Mapping[str, WholeBlock],
    budget_s: float,
) -> ResidualEvidence:
    """SA201/SA202's evidence: the residual blocks, their certified bounds, J_f at the samples, and
    each branch's own witnessed lower bound (its search's work from the stage's ``budget_s``)."""
    from stabaudit.analyses.plan import residual_branch_budget
    from stabaudit.checks.residual import residual_evidence
    from stabaudit.ir.patterns import find_residual_blocks

    budget = residual_branch_budget(budget_s, len(find_residual_blocks(graph)))
    if samples is not None:
        samples = samples[:_planned_samples(graph, int(samples.shape[0]), request)]
    return residual_evidence(graph, op_bounds, samples, seed=request.seed, whole=whole, lower_budget_s=budget,
                             points_budget_s=budget)


def _samples_resolve(graph: Graph, request: AuditRequest) -> tuple[np.ndarray | None, SampleInfo | None]:
    """The samples of the data-dependent channels [N, *input shape] and what the report says of
    them: the given inputs (checked against the model's input shape), else ``sample_count`` draws
    from the domain seeded with request.seed, else none."""
    from stabaudit.analyses import samples as S
    from stabaudit.report.model import DomainParameter, SampleInfo, SampleSource

    if request.inputs is not None:
        try:
            samples = S.conform_samples(request.inputs, graph)
        except UsageError as exc:
            raise UsageError(str(exc), path=str(request.path)) from None
        file = request.inputs_sha256 is not None
        return samples, SampleInfo(
            source=SampleSource.FILE if file else SampleSource.ARRAY,
            count=int(samples.shape[0]),
            shape=tuple(int(d) for d in samples.shape[1:]),
            sha256=request.inputs_sha256 if file else S.array_sha256(samples),
        )
    if request.domain is None or not S.is_sampled(request.domain):
        return None, None  # a ball or margin domain is built around samples, never sampled
    if len(graph.inputs) != 1:
        # several inputs: the samples are flat, their entries concatenated (as --inputs gives them);
        # one value per parameter applies to every entry of every input
        if any(len(v.values) != 1 for v in S.domain_parameters(request.domain).values()):
            raise UsageError(
                f"domain: the model has {len(graph.inputs)} inputs; a domain given per channel or entry "
                "needs one input (give one LOW,HIGH for all of them, or --inputs)",
                path=str(request.path),
            )
        shape: tuple[int, ...] = (S.input_size(graph),)
    else:
        shape = tuple(int(d) for d in graph.inputs[0].shape)
    try:
        samples = S.draw_samples(request.domain, shape, request.sample_count, request.seed)
    except UsageError as exc:
        raise UsageError(str(exc), path=str(request.path)) from None
    return samples, SampleInfo(
        source=SampleSource(S.domain_source(request.domain)),
        count=int(samples.shape[0]),
        shape=shape,
        seed=request.seed,
        domain=tuple(
            DomainParameter(name=name, values=v.values, shape=v.shape)
            for name, v in S.domain_parameters(request.domain).items()
        ),
    )


def _planned_samples(graph: Graph, available: int, request: AuditRequest) -> int:
    """How many of the samples the float64 sample channels evaluate (analyses.plan.sample_count)."""
    from stabaudit.analyses.lower import forward_macs
    from stabaudit.analyses.plan import call_macs, sample_count

    shapes = {k: tuple(v) for k, v in graph.shapes.items()}
    return sample_count(stage_share(request, "sample_evidence"), forward_macs(graph, shapes), available,
                        call_macs(len(graph.nodes)))


def _samples_evidence(
    graph: Graph, op_bounds: Mapping[str, OpBound], samples: np.ndarray, source: str, request: AuditRequest,
    budget_s: float,
) -> SampleEvidence:
    """SA301/SA303's unit counts and SA401's parameter sensitivities at the samples (the first
    ones the budget plans: analyses.plan.sample_count; the results state how many)."""
    from stabaudit.analyses.activations import activation_units
    from stabaudit.analyses.parameters import parameter_sensitivity
    from stabaudit.analyses.samples import SampleEvidence

    count = int(samples.shape[0])
    samples = samples[:_planned_samples(graph, count, request)]
    return SampleEvidence(
        count=count,
        source=source,
        activations=activation_units(graph, samples, eps=request.eps),
        parameters=parameter_sensitivity(graph, op_bounds, samples, seed=request.seed, budget_s=budget_s),
    )


def _training_evidence(graph: Graph, request: AuditRequest, parameterisation: Parameterisation | None) -> TrainingResult:
    """SA501-SA503's evidence: the loss Hessian's extreme eigenvalues at the stored parameters."""
    from stabaudit.analyses.training import training_dynamics

    assert request.training is not None
    return training_dynamics(graph, request.training, seed=request.seed, device=request.device,
                             parameterisation=parameterisation)


def _module_jobs(request: AuditRequest) -> dict[str, Callable[[LoadedModel], Any]]:
    """Work that needs the source module itself, run where the loader holds it (a TorchScript
    module stays in its isolated loading process, loaders.ts_child): the training channel's
    Hessian over the module's own parameters."""
    if request.training is None:
        return {}
    return {"training": functools.partial(_module_training, request.training, request.seed, request.device)}


def _module_training(spec: TrainingSpec, seed: int, device: str, loaded: LoadedModel) -> TrainingResult:
    """``_training_evidence`` on the loaded model, its graph's branch switches smoothed as the
    ``jumps`` stage does before the training stage."""
    from stabaudit.analyses.training import training_dynamics
    from stabaudit.ir.passes import smooth_part

    return training_dynamics(smooth_part(loaded.graph), spec, seed=seed, device=device,
                             parameterisation=loaded.parameterisation)


def _training_report(result: TrainingResult | None) -> TrainingReport | None:
    """The report's `training` section, None without a spec."""
    from stabaudit.checks.training import training_report

    return training_report(result)


def _is_translation(op: object) -> bool:
    from stabaudit.ir.ops import Affine

    return isinstance(op, Affine) and op.scale is None


def _finite(x: float | None) -> float | None:
    return x if x is not None and np.isfinite(x) else None


# ---- the stages, in the order of STAGES ----


def check_device(request: AuditRequest, ev: AnalysisState) -> None:
    """--device cuda needs a CUDA device here."""
    if request.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")


def load(request: AuditRequest, ev: AnalysisState) -> None:
    """The model within the memory budget: ``loaded`` as loaded, ``graph`` with the report's
    layers (affine maps folded, adjacent linear maps merged: one operator each; slices of one
    value concatenated back: one Gather; the root of a sum of squares: one ReduceL2). A TorchScript
    archive loads in a child process of its own (loaders.ts_child); the training channel's Hessian
    over its module's parameters is computed there (``_module_jobs``) and read by ``training``."""
    from stabaudit.ir.passes import (
        fold_affine,
        fuse_root_of_squares,
        gather_slices,
        merge_linear_maps,
    )
    from stabaudit.limits import analysis_memory_plan, check_model_memory
    from stabaudit.loaders import load_model

    memory_budget = ev.memory_budget
    check_model_memory(request.path, memory_budget)
    loaded = load_model(
        request.path, input_shape=request.input_shape, trust_torchscript=request.trust_torchscript,
        input_shapes=request.input_shapes, start=request.start, perturb=request.perturb, end=request.end,
        seed=request.seed,
        module_jobs=_module_jobs(request), cuda=request.device == "cuda", arguments=request.arguments,
    )
    # the report's layers: affine maps folded, adjacent linear maps merged (one operator each),
    # concatenated slices of one value (a roll) one Gather, a root of a sum of squares one ReduceL2
    graph = merge_linear_maps(fold_affine(gather_slices(fuse_root_of_squares(loaded.graph))))
    # what the analyses plan: each stage is checked against what remains of the budget as it
    # starts (engine.run_stages), so that a stage too large stops the audit with the evidence so far
    ev.loaded, ev.graph, ev.memory_plan = loaded, graph, analysis_memory_plan(graph)


def equivalence(request: AuditRequest, ev: AnalysisState) -> None:
    """SA902: the engine's forward pass of ``graph`` against the reference runtime; a difference
    stops the audit (no bound can be trusted)."""
    from stabaudit.analyses import plan
    from stabaudit.analyses.equivalence import check_equivalence
    from stabaudit.analyses.lower import forward_macs

    # the certified core is planned first (analyses.plan): the later stages share what it leaves
    plan.spend(plan.equivalence_s(forward_macs(ev.graph, dict(ev.graph.shapes))))
    folded = replace(ev.loaded, graph=ev.graph)
    eq = check_equivalence(folded, seed=request.seed)
    if not eq.passed:
        raise EquivalenceError(
            f"the engine's forward pass differs from {eq.reference} by {eq.max_abs_diff:.3g} "
            f"(tolerance {eq.tolerance:.3g}) [SA902]; no bound can be trusted",
            path=str(request.path),
        )
    ev.eq = eq


def layer_bounds(request: AuditRequest, ev: AnalysisState) -> None:
    """Every node's certified bound (``op_bounds``) and the report's layers: the nodes that change
    distances (not isometries, not translations)."""
    from stabaudit.analyses import plan
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import BoundSettings, Combine, RuleContext
    from stabaudit.bounds.domain import NEEDS_DOMAIN
    from stabaudit.ir.ops import STRUCTURAL
    from stabaudit.limits import check_deadline

    graph, reproducible = ev.graph, ev.reproducible
    plan.spend(plan.layer_bounds_s(graph))  # the certified core, planned first
    settings = BoundSettings(
        seed=request.seed, power_iterations=request.power_iterations, device=request.device
    )
    op_bounds = {}
    layers: list[Layer] = []
    for node in graph.nodes:
        check_deadline()
        ctx = RuleContext(
            input_shapes=tuple(graph.shapes[name] for name in node.inputs),
            output_shape=graph.shapes[node.output],
            settings=settings,
        )
        ob = bound_node(node, ctx)
        op_bounds[node.output] = ob
        if node.op.type in STRUCTURAL or _is_translation(node.op):
            continue  # isometries and translations do not change distances: not layers
        if ob.upper.method == NEEDS_DOMAIN:  # no number without a bounded input domain
            lip = LayerLipschitz(upper=None, lower=None, method=NEEDS_DOMAIN, certified=False)
        elif ob.combine is not Combine.CHAIN:
            lip = LayerLipschitz(
                upper=None, lower=None, method="composed at graph level", certified=False
            )
        else:
            lip = LayerLipschitz(
                upper=_finite(ob.upper.value),
                lower=_finite(ob.lower.value) if ob.lower else None,
                method=ob.upper.method,
                certified=bool(ob.upper.certified and np.isfinite(ob.upper.value)),
                lower_method=ob.lower.method if ob.lower else "",
                lower_certified=bool(ob.lower and ob.lower.certified),
            )
        layers.append(
            Layer(
                name=node.name,
                op=node.op.type.value,
                source_op=node.source_op,
                lipschitz=lip,
                seconds=0.0 if reproducible else round(ob.seconds, 4),
            )
        )
    ev.op_bounds, ev.layers = op_bounds, layers


def jumps(request: AuditRequest, ev: AnalysisState) -> None:
    """Branch switches (torch's thresholded softplus): the rules certify each jumping operator's
    smooth part and bound its jump; the additive term (``jumps``) carries the jumps to the output,
    and every stage after this one evaluates the smooth part (``graph`` and ``loaded`` replaced by
    theirs), the function all the Lipschitz figures are about."""
    from stabaudit.analyses.composition import additive_term
    from stabaudit.ir.passes import smooth_part

    ev.jumps = additive_term(ev.graph, ev.op_bounds)
    ev.executed = ev.graph
    ev.graph = smooth_part(ev.graph)
    ev.loaded = replace(ev.loaded, graph=smooth_part(ev.loaded.graph))


def global_bound(request: AuditRequest, ev: AnalysisState) -> None:
    """The certified composition of the per-node bounds: ``layered`` (the layers' own gains, for
    the depth profile and SA103), ``comp`` (linear regions and residual blocks bounded as a whole
    where tighter) and ``methods``, the product first."""
    from stabaudit.analyses.composition import compose
    from stabaudit.analyses.linear_regions import region_bounds, region_note
    from stabaudit.analyses.residual import block_bounds

    graph, op_bounds, reproducible = ev.graph, ev.op_bounds, ev.reproducible
    # residual blocks bounded as a whole where that is tighter than 1 + h Lip f
    whole = block_bounds(graph, op_bounds)
    blocks = {k: (b.x, b.value) for k, b in whole.items()}
    # the per-layer composition: the depth profile l -> prod_{j<=l} s_j and SA103's exponent
    # are about the layers' own gains (THEORY.md), so linear regions do not enter them
    layered = compose(graph, op_bounds, blocks)
    # the global bound: linear regions (affine in one value, fan-out and re-joining included)
    # bounded as a whole by the certified norm of their explicit matrix where that is tighter
    regions = region_bounds(graph, op_bounds)
    comp = (
        compose(graph, op_bounds, blocks, {k: (r.x, r.value) for k, r in regions.items()})
        if regions
        else layered
    )
    ev.whole, ev.layered, ev.comp, ev.regions = whole, layered, comp, regions
    ev.methods = [
        MethodBound(
            method=comp.upper.method,
            upper=_finite(comp.upper.value),
            # an overflowed (inf) product is no certified number: certified only with a finite one
            certified=comp.upper.certified and _finite(comp.upper.value) is not None,
            seconds=0.0 if reproducible else round(comp.seconds, 4),
            notes=tuple(comp.notes) + region_note(regions),
        )
    ]


def global_methods(request: AuditRequest, ev: AnalysisState) -> None:
    """The certified global methods beyond the product (--method), on the graph as loaded."""
    loaded, reproducible = ev.loaded, ev.reproducible
    more, exact, certificate = _global_methods(loaded.graph, request, reproducible, ev.budget_s)
    ev.methods += more
    ev.exact = exact
    ev.chain_certificate = certificate


def samples(request: AuditRequest, ev: AnalysisState) -> None:
    """The samples of every data-dependent channel (SA301, SA302, SA303, SA401, SA202): the
    inputs, or draws from the domain, or None."""
    ev.samples, ev.sample_info = _samples_resolve(ev.loaded.graph, request)


def sample_evidence(request: AuditRequest, ev: AnalysisState) -> None:
    """SA301/SA303's unit counts and SA401's parameter sensitivities at the samples, on the
    folded graph: its layers are the report's, W_l the effective weights."""
    assert ev.samples is not None and ev.sample_info is not None
    ev.sampled = _samples_evidence(
        ev.graph, ev.op_bounds, ev.samples, ev.sample_info.source.value, request, ev.budget_s
    )


def local_bounds(request: AuditRequest, ev: AnalysisState) -> None:
    """SA302: the certified local bound over linf balls around the samples."""
    assert ev.samples is not None
    ev.local = _local_evidence(ev.loaded.graph, ev.samples, request, ev.memory_budget,
                               functools.partial(_loaded_bounds, ev))


def training(request: AuditRequest, ev: AnalysisState) -> None:
    """The update channel (SA501-SA503): on the graph as loaded, the parameters as stored."""
    loaded = ev.loaded
    ev.training = loaded.module_results.get("training")  # computed where the module was loaded
    if ev.training is None:
        ev.training = _training_evidence(loaded.graph, request, loaded.parameterisation)


def residual(request: AuditRequest, ev: AnalysisState) -> None:
    """The residual channel (SA201, SA202): on the folded graph, whose per-node bounds op_bounds
    holds."""
    ev.residual = _residual_evidence(ev.graph, ev.op_bounds, ev.samples, request, ev.whole, ev.budget_s)


def lower_bound_search(request: AuditRequest, ev: AnalysisState) -> None:
    """The witnessed lower bound of the global constant (``low``)."""
    from stabaudit.analyses.lower import lower_bound

    loaded = ev.loaded
    # on the graph as loaded: the bound is about the stored weights, not the folded products
    ev.low = lower_bound(
        loaded.graph, seed=request.seed, budget_s=ev.budget_s, op_bounds=_error_model_bounds(ev),
        smallest_slack_s=ev.budget_rest_s,
    )


def global_lipschitz(request: AuditRequest, ev: AnalysisState) -> None:
    """The report's global figure: the least certified upper bound of ``methods``, the better of
    the search's and the exact mode's lower bounds with its witness, the additive term."""
    methods, comp, low, exact, jumps = ev.methods, ev.comp, ev.low, ev.exact, ev.jumps
    best = min(
        (m for m in methods if m.certified and m.upper is not None),
        key=lambda m: m.upper if m.upper is not None else math.inf,
        default=None,
    )
    upper = best.upper if best is not None else None
    lower = _finite(low.value) if low.value > 0 else None
    if upper is not None and lower is not None and lower > upper:
        raise InternalError(
            f"the lower bound {lower:.6g} exceeds the certified upper bound {upper:.6g}: a bug in stabaudit, "
            "please report it with the model",
            path=str(request.path),
        )
    witness = (
        Witness(x=tuple(low.witness.x), y=tuple(low.witness.y), quotient=low.witness.quotient)
        if low.witness is not None and lower is not None
        else None
    )
    lower_method = low.method
    if (
        exact is not None
        and exact.lower is not None
        and exact.witness is not None
        and (lower is None or exact.lower > lower)
        and not exact.witness_translated  # the witness point must be in model coordinates
    ):
        # THEORY.md SA101: a Jacobian norm at a point where the function is differentiable (the
        # interior of an activation region) is a sound lower bound of the Lipschitz constant
        lower = exact.lower
        lower_method = (
            "lipbab: Jacobian norm of an activation region (interior point in the witness)"
        )
        witness = Witness(x=exact.witness.point, y=(), quotient=exact.lower, kind="jacobian")
    ev.lipschitz = GlobalLipschitz(
        upper=upper,
        lower=lower,
        upper_method=best.method if best is not None else comp.upper.method,
        lower_method=lower_method,
        certified=best is not None,
        witness=witness,
        methods=tuple(methods),
        additive=(
            Additive(
                value=_finite(jumps.value),
                certified=jumps.certified,
                sources=jumps.sources,
                method=jumps.method,
            )
            if jumps.sources
            else None
        ),
    )


def _domain_points(loaded: LoadedModel, samples: np.ndarray | None, request: AuditRequest) -> np.ndarray | None:
    """The points a ball or margin domain is built around: the samples, else (an audit that starts
    inside the model) the start tensors' values at the held inputs, else None."""
    if samples is not None:
        return samples
    if loaded.reference_at is None:
        return None
    feeds, _ = loaded.reference_at(np.random.default_rng(request.seed))
    flat = [np.asarray(feeds[spec.name], dtype=np.float64).ravel() for spec in loaded.graph.inputs]
    return np.concatenate(flat)[None, :]


def _in_boxes(graph: Graph, boxes: Boxes, x: tuple[float, ...], y: tuple[float, ...]) -> bool:
    """Whether the points x and y (flat, the inputs' entries concatenated) lie in one box."""
    from stabaudit.analyses.domain_bound import flat_box

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for box in boxes.search:
        lo, hi = flat_box(graph, box)
        if a.shape == lo.shape and b.shape == lo.shape and np.all((lo <= a) & (a <= hi) & (lo <= b) & (b <= hi)):
            return True
    return False


def _balls_in_boxes(graph: Graph, boxes: Boxes, samples: np.ndarray, eps: float) -> bool:
    """Whether every linf ball {x : ||x - s||_inf <= eps} around a sample lies in one box of the
    domain (those the domain bound holds over); the ball's ends rounded outward."""
    from stabaudit.analyses.domain_bound import flat_box

    flat = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
    ends = [flat_box(graph, box) for box in boxes.boxes]
    for s in flat:
        lo_s, hi_s = np.nextafter(s - eps, -np.inf), np.nextafter(s + eps, np.inf)
        if not any(lo.shape == s.shape and np.all(lo <= lo_s) and np.all(hi_s <= hi) for lo, hi in ends):
            return False
    return True


def _names(names: tuple[str, ...], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def domain_bounds(request: AuditRequest, ev: AnalysisState) -> None:
    """The bracket over the audit domain (``domain_lipschitz``): value ranges, the operators
    bounded on them and composed (analyses.domain_bound), the interval Jacobian where it applies,
    never above the global bound; the lower bound from a pair inside the domain
    (analyses.domain_lower). Each layer gets its bound over the domain (``domain_upper``)."""
    from stabaudit.analyses.domain_bound import (
        ball_references,
        domain_bound,
        domain_boxes,
        enclosing_balls,
        jacobian_bound,
    )
    from stabaudit.analyses.domain_lower import domain_lower
    from stabaudit.analyses.plan import (
        DOMAIN_BB_SHARE,
        DOMAIN_CHAIN_SHARE,
        JACOBIAN_SHARE,
        remaining,
    )
    from stabaudit.report.model import DomainInfo

    assert request.domain is not None
    loaded, graph, op_bounds = ev.loaded, ev.graph, ev.op_bounds
    try:
        boxes = domain_boxes(graph, request.domain, _domain_points(loaded, ev.samples, request))
    except UsageError as exc:
        raise UsageError(str(exc), path=str(request.path)) from None
    whole = ev.lipschitz
    global_upper = whole.upper if whole.certified else None
    # the stage's part of --budget: DOMAIN_CHAIN_SHARE for the certificates of a ReLU chain over the
    # boxes, DOMAIN_BB_SHARE for its branch and bound (its regions' norms are lower bounds over D),
    # DOMAIN_RESIDUAL_SHARE of what they leave for the residual branches' searches, the pair search
    # the rest
    result = domain_bound(graph, op_bounds, boxes, global_upper=global_upper,
                          regions={k: (r.x, r.value) for k, r in ev.regions.items()},
                          keep=_residual_values(graph), budget_s=DOMAIN_CHAIN_SHARE * ev.budget_s,
                          bb_budget_s=DOMAIN_BB_SHARE * ev.budget_s, chain_graph=loaded.graph,
                          certificate=ev.chain_certificate)
    _residual_domain(request, ev, result.kept)
    upper, method, certified = result.upper.value, result.upper.method, result.upper.certified
    notes = list(result.notes)
    patches = _patch_entries(ev.memory_budget)
    # the ranges over each box and the reference-Jacobian bound within half of what is left, then
    # the interval Jacobian (counted) where what the stage has left buys it (before the pair search)
    balls = enclosing_balls(loaded.graph, boxes)
    references = None if balls is None else ball_references(
        loaded.graph, balls, max_patch_entries=patches, budget_s=JACOBIAN_SHARE * remaining(ev.budget_s))
    unbought = _jacobian_unbought(loaded.graph, patches, len(boxes.boxes), remaining(ev.budget_s))
    if unbought:
        notes.append(unbought)
    interval = None if references is None else jacobian_bound(
        loaded.graph, boxes, max_patch_entries=patches, op_bounds=functools.partial(_loaded_bounds, ev),
        interval=not unbought, references=references)
    if interval is not None and interval[0] < upper:
        upper, method, certified = interval[0], f"local Jacobian bound over the domain ({interval[1]})", True
    if result.resolved:
        notes.append(f"{len(result.resolved)} operator(s) with no global bound bounded on the domain's ranges: "
                     + _names(result.resolved))
    if result.unresolved:
        notes.append(f"{len(result.unresolved)} operator(s) still unbounded on the domain's ranges (their "
                     "inputs' ranges are unbounded or reach a pole): " + _names(result.unresolved))
    low = domain_lower(loaded.graph, boxes, seed=request.seed, budget_s=remaining(ev.budget_s),
                       op_bounds=_error_model_bounds(ev))
    lower = _finite(low.value) if low.value > 0 else None
    lower_method, witness = low.method, Witness(x=low.x, y=low.y, quotient=low.value) if lower is not None else None
    if result.lower_point is not None and result.lower > 0 and (lower is None or result.lower > lower):
        # the norm of a region's Jacobian at a point of D where the network is differentiable
        lower, lower_method = result.lower, result.lower_method
        witness = Witness(x=result.lower_point, y=(), quotient=result.lower, kind="jacobian")
    found = whole.witness
    if (found is not None and found.kind == "pair" and whole.lower is not None and (lower is None or whole.lower > lower)
            and _in_boxes(graph, boxes, found.x, found.y)):
        # the global search's confirmed pair lies in the domain: it bounds K_D from below too
        lower, lower_method, witness = whole.lower, whole.lower_method + " (its pair lies in the domain)", found
    up = _finite(upper)
    if up is not None and lower is not None and certified and lower > up:
        raise InternalError(
            f"the lower bound {lower:.6g} over the domain exceeds its certified upper bound {up:.6g}: a bug "
            "in stabaudit, please report it with the model",
            path=str(request.path),
        )
    reproducible = ev.reproducible
    methods = [MethodBound(method=result.upper.method, upper=_finite(result.upper.value),
                           certified=result.upper.certified and _finite(result.upper.value) is not None,
                           seconds=0.0 if reproducible else round(result.seconds, 4))]
    if interval is not None:
        methods.append(MethodBound(method="interval Clarke Jacobian", upper=_finite(interval[0]),
                                   certified=_finite(interval[0]) is not None, seconds=0.0))
    ev.domain_lipschitz = GlobalLipschitz(
        upper=up,
        lower=lower,
        upper_method=method,
        lower_method=lower_method,
        certified=bool(certified and up is not None),
        witness=witness,
        methods=tuple(methods),
        additive=_domain_additive(ev, boxes.boxes),
        domain=DomainInfo(
            kind=boxes.kind, description=boxes.description, boxes=len(boxes.boxes), radius=boxes.radius,
            low=_finite(boxes.low), high=_finite(boxes.high),
        ),
        notes=tuple(notes),
    )
    ev.domain_product = _finite(result.product) if result.upper.certified else None
    if (ev.local is not None and ev.samples is not None and certified and up is not None
            and _balls_in_boxes(graph, boxes, ev.samples, ev.local.eps)):
        ev.local = replace(ev.local, domain_upper=up)  # SA302: a certified bound on every ball
    ev.layers = [
        replace(layer, lipschitz=replace(layer.lipschitz, domain_upper=result.node_uppers.get(layer.name)))
        for layer in ev.layers
    ]


def domain_witness(request: AuditRequest, ev: AnalysisState) -> None:
    """The global lower bound raised to the domain's, with its witness, where that is larger: a
    pair of points of the domain (or a point where the network is differentiable) is one of the
    whole input space, so its quotient (or Jacobian norm) bounds the global constant from below
    too. The global search draws its points at the inputs' scale, the domain's searches inside
    the domain: where the steep part of the model is in the domain (a LayerNorm over nearly
    constant tokens), only the latter find it."""
    whole, dom = ev.lipschitz, ev.domain_lipschitz
    if whole is None or dom is None or dom.lower is None or dom.witness is None:
        return
    if whole.lower is not None and whole.lower >= dom.lower:
        return
    if whole.upper is not None and dom.lower > whole.upper:
        raise InternalError(
            f"the lower bound {dom.lower:.6g} over the domain exceeds the certified global upper bound "
            f"{whole.upper:.6g}: a bug in stabaudit, please report it with the model",
            path=str(request.path),
        )
    ev.lipschitz = replace(whole, lower=dom.lower, witness=dom.witness,
                           lower_method=f"{dom.lower_method} (the domain's witness: it lies in the input space)")


def _residual_values(graph: Graph) -> frozenset[str]:
    """The values whose ranges and bounds over the domain the residual channel reads: each
    block's input and its branch's node outputs."""
    from stabaudit.ir.patterns import find_residual_blocks

    keep: set[str] = set()
    for m in find_residual_blocks(graph):
        keep.add(m.x)
        keep.update(n.output for n in m.branch)
    return frozenset(keep)


def _residual_domain(
    request: AuditRequest, ev: AnalysisState,
    kept: Sequence[tuple[Mapping[str, Interval], Mapping[str, OpBound]]],
) -> None:
    """SA201/SA202 over the domain: each residual block's branch bounded on its input's value
    ranges over the domain, with a witnessed lower bound from pairs inside those ranges."""
    from stabaudit.analyses.plan import DOMAIN_RESIDUAL_SHARE, remaining
    from stabaudit.analyses.residual import GlobalBlock, domain_blocks
    from stabaudit.checks.residual import with_domain

    res = ev.residual
    if not res.blocks or not kept:
        return
    budget = DOMAIN_RESIDUAL_SHARE * remaining(ev.budget_s) / len(res.blocks)
    known = {b.name: GlobalBlock(lip_f_upper=b.lip_f_upper, growth_upper=b.growth_upper, certified=b.certified)
             for b in res.blocks}
    found = domain_blocks(ev.graph, ev.op_bounds, kept, seed=request.seed, lower_budget_s=budget,
                          global_blocks=known)
    ev.residual = with_domain(res, found)


def _domain_additive(ev: AnalysisState, boxes: Sequence[Mapping[str, Interval]]) -> Additive | None:
    """The additive term over the domain: the global one, except that a dynamic quantization's jump
    (infinite on the whole space: its step grows with its input's range) is bounded on the domain's
    value ranges (analyses.composition.domain_additive_term)."""
    from stabaudit.analyses.composition import domain_additive_term

    whole = ev.lipschitz.additive
    if whole is None or whole.certified or ev.executed is None:
        return whole
    term = domain_additive_term(ev.executed, ev.op_bounds, boxes)
    return Additive(value=_finite(term.value), certified=term.certified, sources=term.sources, method=term.method)


def _has_samples(request: AuditRequest, ev: AnalysisState) -> bool:
    return ev.samples is not None


def _may_have_samples(request: AuditRequest) -> bool:
    """The samples stage will find samples: inputs given, or a domain to draw them from."""
    return request.inputs is not None or request.domain is not None


def _has_domain(request: AuditRequest, ev: AnalysisState) -> bool:
    """A bounded audit domain was given (a normal domain is only sampled)."""
    from stabaudit.analyses.samples import NormalDomain

    return request.domain is not None and not isinstance(request.domain, NormalDomain)


STAGES: tuple[Stage, ...] = (
    Stage(check_device),
    Stage(load, "loading", "load"),
    Stage(equivalence, "equivalence", "equivalence"),
    Stage(layer_bounds, "per-layer bounds", "layer_bounds"),
    Stage(jumps),
    Stage(global_bound, "global bound", "composition"),
    Stage(global_methods, "global methods", "global_methods",
          when=lambda request, ev: request.method != "product"),
    Stage(samples),
    Stage(sample_evidence, "activations and parameter sensitivity at the samples", "samples",
          when=_has_samples, planned=_may_have_samples),
    Stage(local_bounds, "local bounds", "local_bounds", when=_has_samples, planned=_may_have_samples),
    Stage(training, "training dynamics", "training",
          when=lambda request, ev: request.training is not None),
    Stage(residual, "residual blocks", "residual"),
    Stage(lower_bound_search, "lower bound search", "lower_bound"),
    Stage(global_lipschitz),
    Stage(domain_bounds, "bounds over the domain", "domain", when=_has_domain),
    Stage(domain_witness, when=_has_domain),
)


def _weight(stage: Stage) -> float:
    from stabaudit.analyses.plan import STAGE_WEIGHTS

    return STAGE_WEIGHTS.get(stage.name, 0.0)


def _pool(request: AuditRequest, name: str) -> float:
    """The most of --budget the stage ``name`` may draw on: ``budget_s`` for the global methods,
    for the later stages also at most ``lower_budget_s`` together."""
    if name == "global_methods":
        return request.budget_s
    return min(request.budget_s, request.lower_budget_s)


def stage_share(request: AuditRequest, name: str) -> float:
    """The planned seconds of the stage ``name`` in the split of --budget before anything flows on:
    its weight over the weights of the stages that will run (analyses.plan.STAGE_WEIGHTS). What
    must not depend on the earlier stages' work reads this (the samples' count, which two stages
    share)."""
    from stabaudit.analyses.plan import STAGE_WEIGHTS, allot

    running = math.fsum(_weight(s) for s in STAGES if s.will_run(request))
    return allot(_pool(request, name), STAGE_WEIGHTS.get(name, 0.0), running)


def allotment(request: AuditRequest, at: int, planned: Mapping[str, float]) -> tuple[float, float]:
    """(the planned seconds of --budget allotted to ``STAGES[at]``, what remains of the budget
    beyond them) once the stages before it planned ``planned`` (seconds per stage): its weight
    over its own and the later running stages' weights, times what remains (analyses.plan.allot).
    Deterministic: the planned seconds are the cost model's counts, never the clock's."""
    from stabaudit.analyses.plan import allot

    stage = STAGES[at]
    weight = _weight(stage)
    rest = weight + math.fsum(_weight(s) for s in STAGES[at + 1:] if s.will_run(request))
    spent_all = math.fsum(planned.values())
    remaining = request.budget_s - spent_all
    if stage.name != "global_methods":
        # lower_budget_s caps the stages after the global methods: the core and the global methods
        # before them do not count against it
        first = next(i for i, s in enumerate(STAGES) if s.name == "global_methods")
        before = {s.timing or s.name for s in STAGES[:first + 1]}
        searched = math.fsum(v for k, v in planned.items() if k not in before)
        remaining = min(remaining, request.lower_budget_s - searched)
    share = allot(remaining, weight, rest)
    return share, max(remaining - share, 0.0)


# The stages whose evidence each check reads (besides load and equivalence, which every report
# has). When an audit stops early (a timeout, the memory cap), a check with one of them missing
# is inconclusive whatever it would have said: never a pass on missing evidence. A check not
# listed here reads every stage (the safe default for a new check).
_GLOBAL = ("layer_bounds", "jumps", "global_bound", "global_methods", "lower_bound_search", "global_lipschitz")
CHECK_STAGES: dict[str, tuple[str, ...]] = {
    "SA001": (*_GLOBAL, "residual", "training", "domain_bounds"),  # compares every bound with the baseline
    "SA002": (),  # the waivers' dates
    "SA101": (*_GLOBAL, "domain_bounds"),
    "SA102": ("layer_bounds", "domain_bounds"),
    "SA103": ("layer_bounds", "jumps", "global_bound", "domain_bounds"),
    "SA201": ("layer_bounds", "global_bound", "samples", "residual"),
    "SA202": ("layer_bounds", "global_bound", "samples", "residual"),
    "SA301": ("layer_bounds", "samples", "sample_evidence"),
    "SA302": ("samples", "local_bounds"),
    "SA303": ("layer_bounds", "samples", "sample_evidence"),
    "SA401": ("layer_bounds", "samples", "sample_evidence"),
    "SA402": (),  # the loaded weights
    "SA501": ("training",),
    "SA502": ("training",),
    "SA503": ("training",),
    "SA601": (),  # trajectories only
    "SA602": (),
    "SA901": (),  # the loader
    "SA902": (),  # equivalence
}


def missing_stages(check_id: str, missing: frozenset[str]) -> tuple[str, ...]:
    """The stages ``check_id`` reads (CHECK_STAGES; every stage when not listed) among ``missing``."""
    wanted = CHECK_STAGES.get(check_id, tuple(stage.name for stage in STAGES))
    return tuple(name for name in wanted if name in missing)
