"""audit(request) -> Report: orchestration of loading, verification, bounds and checks."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit import __version__
from stabaudit.errors import StabauditError, UsageError
from stabaudit.ir.graph import Graph
from stabaudit.report.gate import FailOn, gate
from stabaudit.report.model import (
    Equivalence,
    Finding,
    GlobalLipschitz,
    Layer,
    ModelInfo,
    ProfileStep,
    Report,
    Severity,
    Stopped,
    ToolInfo,
    Waiver,
)
from stabaudit.stages import _finite, _training_report

if TYPE_CHECKING:
    from stabaudit.analyses.samples import Domain, SampleEvidence
    from stabaudit.analyses.training import TrainingResult, TrainingSpec
    from stabaudit.cache import AnalysisCache
    from stabaudit.checks.base import LocalEvidence
    from stabaudit.checks.residual import ResidualEvidence
    from stabaudit.report.model import SampleInfo, TrainingReport
    from stabaudit.stages import AnalysisState

Observer = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class AuditRequest:
    path: Path
    input_shape: tuple[int, ...] | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # ONNX: by input name
    start: str | None = None  # ONNX: the tensor the audit starts from (--from)
    perturb: tuple[str, ...] = ()  # ONNX: the real inputs perturbed; the others held (--perturb)
    end: tuple[str, ...] = ()  # ONNX: the tensors the audit ends at, its outputs (--to)
    thresholds: Mapping[str, float] = field(default_factory=dict)  # canonical keys
    severities: Mapping[str, Severity] = field(default_factory=dict)
    fail_on: FailOn = FailOn.ERROR
    seed: int = 0
    device: str = "cpu"
    # the most of budget_s that the stages after the global methods (samples, residual blocks, lower
    # bound, domain) plan together; --budget sets it to budget_s (no further limit)
    lower_budget_s: float = 10.0
    power_iterations: int = 50
    baseline: Mapping[str, Any] | None = None  # a previous JSON report of this model (SA001)
    max_memory: int | None = None  # bytes; None: limits.default_memory_budget()
    timeout_s: float | None = None  # seconds for the whole audit; None: no limit
    method: str = "auto"  # global upper bound: auto | product | layerwise | sdp | ... (METHODS)
    # --budget: the planned seconds of the whole audit, split over its stages (stages.allotment);
    # the certified core (equivalence, per-layer bounds) always runs and is charged first
    budget_s: float = 10.0
    inputs: np.ndarray | None = None  # sample inputs [N, ...] for the data-dependent checks (SA302)
    eps: float = 0.01  # radius of the linf balls around the samples (SA302)
    disabled: frozenset[str] = frozenset()  # check ids turned off (config checks.disable)
    waivers: tuple[Waiver, ...] = ()  # the config waivers that apply to this model (SA002)
    training: TrainingSpec | None = None  # the update channel (SA501-SA503): optimizer, loss, data
    domain: Domain | None = None  # sampled when inputs is None (analyses.samples)
    sample_count: int = 64  # how many samples to draw from the domain
    inputs_sha256: str | None = None  # the sha256 of the file `inputs` came from (the report's samples)
    # load a TorchScript archive without the static gate of its code (loaders.ts_gate); in the
    # cache key, so that an analysis made under trust is never served to an audit without it
    trust_torchscript: bool = False
    # TorchScript: the values of forward's non-tensor arguments by name (--arg, config arguments:)
    arguments: Mapping[str, Any] = field(default_factory=dict)


_REPRODUCIBLE_NOTE = (
    "SOURCE_DATE_EPOCH is set: timings omitted so that the report is reproducible",
)
_CACHED_NOTE = (
    "analysis evidence read from the cache (same model bytes, analysis settings and stabaudit); "
    "checks, thresholds, waivers and the gate evaluated in this run",
)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """The analysis stage's evidence: everything computed from the model and the analysis
    settings, nothing of the policy (thresholds, severities, disabled checks, waivers, baseline,
    --fail-on). This is what the cache stores; ``assess`` turns it into a report on every run."""

    model: ModelInfo
    equivalence: Equivalence
    layers: tuple[Layer, ...]
    lipschitz: GlobalLipschitz
    profile: tuple[ProfileStep, ...]
    product_upper: float | None
    depth: int
    nonfinite: Mapping[str, int]
    operators: int
    source_ops: Mapping[str, int]
    local: LocalEvidence | None
    training: TrainingResult | None
    training_report: TrainingReport | None
    sampled: SampleEvidence | None
    samples: SampleInfo | None
    residual: ResidualEvidence
    timings: Mapping[str, float]  # seconds per analysis stage ({} when reproducible)
    notes: tuple[str, ...]
    # the bracket over the audit domain and the composed layer gains over it (None: no domain)
    domain_lipschitz: GlobalLipschitz | None = None
    domain_product: float | None = None
    # set when the audit stopped early: the stages that finished and why the others did not run
    stopped: Stopped | None = None
    # planned seconds of counted work per stage (and "total"): the cost model's, deterministic
    planned: Mapping[str, float] = field(default_factory=dict)


def report_timestamp() -> tuple[str, bool]:
    """The report's creation time (UTC, ISO 8601) and whether it is pinned by SOURCE_DATE_EPOCH
    (the reproducible-builds convention): then the whole report is a function of its inputs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            moment = datetime.fromtimestamp(int(epoch), tz=timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise UsageError(
                f"SOURCE_DATE_EPOCH={epoch!r}: expected a Unix timestamp in seconds"
            ) from None
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), True
    return datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _nonfinite(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        n = 0
        for value in vars(node.op).values():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                n += int((~np.isfinite(value)).sum())
        counts[node.name] = n
    return counts



def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON data for any request value: arrays by shape, dtype and sha256; dataclasses field by
    field; enums by value; mappings with sorted keys; floats as they are (NaN refused later)."""
    import dataclasses
    import json
    from enum import Enum

    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return [list(arr.shape), str(arr.dtype), _digest(arr.tobytes())]
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        text = json.dumps({str(k): _canonical(v) for k, v in value.items()}, sort_keys=True, default=str)
        return json.loads(text)
    if isinstance(value, set | frozenset):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


# The request fields the analysis never reads: the path (the model's bytes are in the key), the
# memory budget and the timeout (they only decide whether it finishes), and the policy, which
# `assess` applies to the evidence on every run.
_NOT_IN_KEY = ("path", "max_memory", "timeout_s")
POLICY_FIELDS = ("thresholds", "severities", "fail_on", "baseline", "disabled", "waivers")


def request_fingerprint(request: AuditRequest) -> dict[str, Any]:
    """Everything of the request that can change the analysis, as canonical JSON data (the cache
    key together with the model's sha256 and the version): every field of AuditRequest, so a new
    field can never be forgotten, except ``_NOT_IN_KEY`` and the policy (``POLICY_FIELDS``).
    Whether the report is pinned by SOURCE_DATE_EPOCH changes the analysis' timings."""
    import dataclasses

    data = {
        f.name: _canonical(getattr(request, f.name))
        for f in dataclasses.fields(request)
        if f.name not in _NOT_IN_KEY and f.name not in POLICY_FIELDS
    }
    data["reproducible"] = bool(os.environ.get("SOURCE_DATE_EPOCH", "").strip())
    return data


def policy_problem(request: AuditRequest) -> str | None:
    """The first check id named by the request's policy (disabled checks, waivers, severities)
    that is no registered check, as "key: message", or None."""
    from stabaudit.checks import unknown_check_ids

    for what, ids in (
        ("checks.disable", request.disabled),
        ("waivers", {w.check for w in request.waivers}),
        ("severity", set(request.severities)),
    ):
        problem = unknown_check_ids(ids)
        if problem:
            return f"{what}: {problem}"
    return None


def audit(
    request: AuditRequest, observer: Observer | None = None, cache: AnalysisCache | None = None
) -> Report:
    """Run one audit: the analysis (or its cached evidence), then the policy (``assess``); raises
    StabauditError subclasses for anything that stops it (exit 2).

    The memory budget is checked before the model's tensors and the analyses' large buffers are
    allocated; the timeout stops the analysis cleanly (limits.run_with_timeout). With a cache, the
    analysis of the same model bytes, analysis settings and stabaudit is reused: a changed
    threshold, --fail-on, baseline, waiver or day only re-runs the checks.
    """
    from stabaudit.errors import ModelLoadError
    from stabaudit.limits import (
        MEMORY_ENV,
        MemoryLimitError,
        default_memory_budget,
        memory_cap,
        one_thread,
        run_with_timeout,
        use_limits,
    )
    from stabaudit.paths import check_path_text
    from stabaudit.stages import AnalysisState

    # before the cache and the memory check open it (a NUL would be a ValueError there)
    check_path_text(request.path, error=ModelLoadError)
    problem = policy_problem(request)
    if problem:
        raise UsageError(f"{request.path}: {problem}")
    key = None
    sha: str | None = None  # the model file's sha256, read once (cache key and report)
    if cache is not None:
        from stabaudit.cache import cache_key

        t = time.perf_counter()
        try:
            sha = _sha256(request.path)
        except OSError:
            sha = None  # the analysis itself reports the unreadable file
        if sha is not None:
            key = cache_key(sha, request_fingerprint(request))
            hit = cache.get(key)
            if isinstance(hit, Analysis):
                if observer is not None:
                    observer("cached")
                return assess(hit, request, cached=True, seconds=time.perf_counter() - t)
    budget = request.max_memory if request.max_memory is not None else default_memory_budget()
    # the cap is enforced (limits.memory_cap) when it was asked for: --max-memory, the config's
    # max_memory or STABAUDIT_MAX_MEMORY; not on CUDA, whose driver maps far more address space
    # than it uses
    explicit = request.max_memory is not None or bool(os.environ.get(MEMORY_ENV, "").strip())
    enforced = budget if explicit and request.device == "cpu" else None
    run = StageRun(AnalysisState(memory_budget=budget, reproducible=report_timestamp()[1]))
    stopped: Stopped | None = None
    # one thread: the report must not depend on the machine's cores or on --jobs (limits.one_thread)
    with use_limits(max_memory=budget), one_thread():  # the ONNX loader reads the memory budget
        try:
            with memory_cap(enforced, path=str(request.path)):
                run_with_timeout(lambda: run_stages(request, run, observer), request.timeout_s,
                                 path=str(request.path))
        except Exception as exc:
            # the timer is disarmed and the cap lifted here: what follows allocates freely
            stopped = stop_of(exc, request, run)
            if stopped is None:
                raise
            if "equivalence" not in run.completed:  # no evidence to report: the audit is refused
                error = exc if isinstance(exc, StabauditError) else MemoryLimitError(stopped.message, path=str(request.path))
                error.stopped = stopped  # the refusal report says where it stopped
                if error is exc:
                    raise
                raise error from exc
    analysis = _analysis(request, run.state, sha, stopped)
    # an incomplete analysis is never cached: the next run with more time or memory computes it
    if cache is not None and key is not None and stopped is None:
        cache.put(key, analysis)
    return assess(analysis, request)


class StageRun:
    """The progress of the stages: the state after the last stage that finished, with the names of
    the stages that finished and of those ``when`` skipped, and the stage running now. The state
    and the names change together, in one assignment, so that an alarm can never separate them."""

    def __init__(self, state: AnalysisState) -> None:
        self.progress: tuple[AnalysisState, tuple[str, ...]] = (state, ())
        self.skipped: tuple[str, ...] = ()
        self.current = ""

    @property
    def state(self) -> AnalysisState:
        return self.progress[0]

    @property
    def completed(self) -> tuple[str, ...]:
        return self.progress[1]


def run_stages(request: AuditRequest, run: StageRun, observer: Observer | None = None) -> None:
    """The stages of ``stabaudit.stages.STAGES`` in order (load, verify, bound, the data-dependent
    channels, the lower bound), each saying its line to the observer, timed under its key, and
    checked first against what remains of the memory budget (its planned bytes,
    limits.analysis_memory_plan). Each stage writes a copy of the state, kept only once the stage
    returned: a stage stopped half-way (a timeout, a failed allocation) leaves nothing behind."""
    from stabaudit.analyses import plan
    from stabaudit.limits import check_stage_memory
    from stabaudit.stages import STAGES, allotment

    say = observer or (lambda _msg: None)
    t0 = time.perf_counter()
    for at, stage in enumerate(STAGES):
        ev = run.state
        if stage.when is not None and not stage.when(request, ev):
            run.skipped += (stage.name,)
            continue
        run.current = stage.name
        planned = ev.memory_plan.get(stage.name)
        if planned is not None:
            check_stage_memory(stage.name, planned, ev.memory_budget, path=str(request.path))
        if stage.say is not None:
            say(stage.say)
        work = ev.copy()
        # one split of --budget: this stage's part of what the earlier stages left
        work.budget_s, work.budget_rest_s = allotment(request, at, ev.planned)
        t = time.perf_counter()
        with plan.ledger() as spent:
            stage.run(request, work)
        if stage.timing is not None:
            work.timings[stage.timing] = time.perf_counter() - t
        if spent[0] > 0.0:
            key = stage.timing or stage.name
            work.planned[key] = work.planned.get(key, 0.0) + spent[0]
        work.timings.pop("total", None)  # kept last: the seconds of the stages that finished
        work.timings["total"] = time.perf_counter() - t0
        run.progress = (work, run.completed + (stage.name,))
    run.current = ""


def _planned(spent: Mapping[str, float]) -> dict[str, float]:
    """The planned seconds per stage and their total, to 4 significant digits (deterministic: the
    cost model's counts, never the clock)."""
    out = {k: float(f"{v:.4g}") for k, v in spent.items() if v > 0.0}
    if out:
        out["total"] = float(f"{math.fsum(spent.values()):.4g}")
    return out


def stop_of(exc: BaseException, request: AuditRequest, run: StageRun) -> Stopped | None:
    """What stopped the stages, when it is a resource limit of this audit: its own --timeout (an
    enclosing deadline is the caller's), the memory budget, or a failed allocation; else None."""
    from stabaudit.limits import AuditTimeoutError, is_allocation_failure

    if isinstance(exc, AuditTimeoutError):
        if request.timeout_s is None:
            return None
        reason, seconds = "timeout", exc.seconds
    elif is_allocation_failure(exc):
        reason, seconds = "memory", None
    else:
        return None
    stage = run.current or "load"
    if isinstance(exc, StabauditError):
        message = "; ".join(exc.problems)
    else:
        message = f"an allocation failed in the {stage} stage: out of memory (--max-memory)"
    return Stopped(reason=reason, stage=stage, message=message, seconds=seconds, completed=run.completed)


_NOT_REACHED = "not computed: the audit stopped before this stage"


def _analysis(request: AuditRequest, ev: AnalysisState, sha256: str | None, stopped: Stopped | None) -> Analysis:
    """The evidence of the stages as the cached Analysis. With ``stopped``, only the evidence of
    the stages that finished (at least load and equivalence): the others' fields stay empty, and
    the global figure is the best certified method that finished, with no lower bound."""
    from stabaudit.ir.ops import LINEAR_MAPS

    done = set(stopped.completed) if stopped is not None else None

    def has(stage: str) -> bool:
        return done is None or stage in done

    loaded, graph, eq = ev.loaded, ev.graph, ev.eq
    layered = ev.layered if has("global_bound") else None
    if has("global_lipschitz"):
        lipschitz = ev.lipschitz
    else:
        lipschitz = _partial_lipschitz(ev, has("global_bound"))
    return Analysis(
        model=ModelInfo(
            path=str(request.path),
            format=loaded.format.value,
            sha256=sha256 if sha256 is not None else _sha256(request.path),
            parameters=loaded.parameters,
            input_shape=tuple(graph.inputs[0].shape),
            start=dict(loaded.start) or None,
            held=dict(loaded.held) or None,
            end=tuple(request.end) or None,
        ),
        equivalence=Equivalence(
            reference=eq.reference,
            max_abs_diff=eq.max_abs_diff,
            tolerance=eq.tolerance,
            passed=eq.passed,
            samples=eq.samples,
        ),
        layers=tuple(ev.layers) if has("layer_bounds") else (),
        lipschitz=lipschitz,
        profile=tuple(
            ProfileStep(layer=name, upper=_finite(value)) for name, value in layered.profile
        ) if layered is not None else (),
        product_upper=_finite(layered.upper.value) if layered is not None and layered.upper.certified else None,
        depth=sum(1 for node in graph.nodes if node.op.type in LINEAR_MAPS),
        nonfinite=_nonfinite(graph),
        operators=len(graph.nodes),
        source_ops=dict(loaded.source_ops),
        local=ev.local,
        training=ev.training,
        training_report=_training_report(ev.training),
        sampled=ev.sampled,
        samples=ev.sample_info,
        residual=ev.residual if has("residual") else _no_residual(),
        timings={} if ev.reproducible else {k: round(v, 4) for k, v in ev.timings.items()},
        planned=_planned(ev.planned),
        notes=tuple(loaded.notes) + tuple(eq.notes) + (tuple(ev.comp.notes) if has("global_bound") else ()),
        domain_lipschitz=ev.domain_lipschitz,
        domain_product=ev.domain_product,
        stopped=stopped,
    )


def _partial_lipschitz(ev: AnalysisState, composed: bool) -> GlobalLipschitz:
    """The global figure of an audit that stopped before ``global_lipschitz``: the least certified
    upper bound among the methods that finished (the product first), its additive term, no lower
    bound (the lower search did not finish, or its figure was not confirmed); nothing before the
    composition finished."""
    import math

    from stabaudit.report.model import Additive

    if not composed:
        return GlobalLipschitz(upper=None, lower=None, upper_method=_NOT_REACHED, lower_method=_NOT_REACHED,
                               certified=False, witness=None)
    methods = tuple(ev.methods)
    best = min((m for m in methods if m.certified and m.upper is not None),
               key=lambda m: m.upper if m.upper is not None else math.inf, default=None)
    jumps = ev.jumps
    return GlobalLipschitz(
        upper=best.upper if best is not None else None,
        lower=None,
        upper_method=best.method if best is not None else ev.comp.upper.method,
        lower_method=_NOT_REACHED,
        certified=best is not None,
        witness=None,
        methods=methods,
        additive=Additive(value=_finite(jumps.value), certified=jumps.certified, sources=jumps.sources,
                          method=jumps.method) if jumps.sources else None,
    )


def _no_residual() -> ResidualEvidence:
    """The residual channel's evidence of an audit that stopped before it: no block known."""
    from stabaudit.checks.residual import ResidualEvidence

    return ResidualEvidence(blocks=())


def assess(
    analysis: Analysis, request: AuditRequest, *, cached: bool = False, seconds: float = 0.0
) -> Report:
    """The policy stage: the analysis evidence + the request's thresholds, severities, disabled
    checks, waivers (dated today), baseline and --fail-on -> findings, gate and report. Cheap
    (milliseconds), so it runs on every audit, a cached analysis included; ``seconds`` is what
    producing ``analysis`` took in this run (reading the cache, on a hit)."""
    from stabaudit.checks import CheckPolicy, Evidence, rule_catalogue, run_checks

    t = time.perf_counter()
    created, reproducible = report_timestamp()
    evidence = Evidence(
        layers=analysis.layers,
        lipschitz=analysis.lipschitz,
        product_upper=analysis.product_upper,
        depth=analysis.depth,
        nonfinite=analysis.nonfinite,
        equivalence=analysis.equivalence,
        operators=analysis.operators,
        source_ops=analysis.source_ops,
        baseline=request.baseline,
        local=analysis.local,
        waivers=request.waivers,
        today=created[:10],
        training=analysis.training,
        sampled=analysis.sampled,
        residual=analysis.residual,
        domain_lipschitz=analysis.domain_lipschitz,
        domain_product_upper=analysis.domain_product,
    )
    findings = run_checks(
        evidence,
        CheckPolicy(
            thresholds=dict(request.thresholds),
            severities=dict(request.severities),
            disabled=request.disabled,
        ),
    )
    verdict, exit_code = gate(findings, request.fail_on)
    stopped = analysis.stopped
    if stopped is not None:
        findings = _without_missing_evidence(findings, stopped, request)
        verdict, exit_code = "fail", 2  # an incomplete audit never passes: the resource exit code
    checks_s = time.perf_counter() - t
    if cached:
        # the analysis of this run was reading the cache: its timings are this run's, not the
        # stored ones (those are the run that computed it)
        timings = {"cache": seconds, "checks": checks_s, "total": seconds + checks_s}
    else:
        timings = {**analysis.timings, "checks": checks_s}
        timings["total"] = timings.get("total", 0.0) + checks_s
    return Report(
        tool=ToolInfo(name="stabaudit", version=__version__),
        model=replace(analysis.model, path=str(request.path)),
        equivalence=analysis.equivalence,
        layers=analysis.layers,
        lipschitz=analysis.lipschitz,
        profile=analysis.profile,
        checks=findings,
        verdict=verdict,
        exit_code=exit_code,
        fail_on=request.fail_on.value,
        created=created,
        rules=rule_catalogue(),
        training=analysis.training_report,
        samples=analysis.samples,
        residual_blocks=analysis.residual.blocks,
        domain_lipschitz=analysis.domain_lipschitz,
        timings={} if reproducible else {k: round(v, 4) for k, v in timings.items()},
        planned=dict(analysis.planned),
        notes=analysis.notes
        + (_CACHED_NOTE if cached else ())
        + (_REPRODUCIBLE_NOTE if reproducible else ())
        + ((incomplete_note(stopped),) if stopped is not None else ()),
        complete=stopped is None,
        stopped=stopped,
    )


def incomplete_note(stopped: Stopped) -> str:
    """The note an incomplete report carries (every renderer shows it)."""
    what = "timed out" if stopped.reason == "timeout" else "stopped by the memory budget"
    return (f"incomplete: the audit {what} in the {stopped.stage} stage ({stopped.message}); only the "
            "evidence of the stages that finished is reported, checks that need the rest are inconclusive")


def missing_evidence(stopped: Stopped, request: AuditRequest) -> frozenset[str]:
    """The stages whose evidence an incomplete report lacks: the stage that was stopped and every
    later one that would have run. (The stages before it either finished or were not due.)"""
    from stabaudit.stages import STAGES

    names = [stage.name for stage in STAGES]
    at = names.index(stopped.stage) if stopped.stage in names else 0
    later = {stage.name for stage in STAGES[at + 1:] if stage.will_run(request)}
    return frozenset({names[at]} | later) - set(stopped.completed)


def _without_missing_evidence(findings: tuple[Finding, ...], stopped: Stopped,
                              request: AuditRequest) -> tuple[Finding, ...]:
    """The findings of an incomplete audit: a check that reads a stage that did not finish is
    inconclusive (never a pass, a fail or a skip on evidence that is not there); a check disabled
    by the config stays skipped."""
    from stabaudit.report.model import Status
    from stabaudit.stages import missing_stages

    missing = missing_evidence(stopped, request)
    out = []
    for f in findings:
        lacking = missing_stages(f.id, missing)
        if lacking and f.id not in request.disabled:
            why = "timed out" if stopped.reason == "timeout" else "was stopped by the memory budget"
            f = replace(f, status=Status.INCONCLUSIVE, waiver=None,
                        message=f"not judged: the audit {why} before {', '.join(lacking)} finished")
        out.append(f)
    return tuple(out)
