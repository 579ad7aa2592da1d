"""The stages of the analysis (engine.analyse): what each computes from the request and the
evidence of the stages before it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.errors import UsageError
from stabaudit.ir.graph import Graph
from stabaudit.report.model import MethodBound

if TYPE_CHECKING:
    from stabaudit.analyses.exact import ExactResult
    from stabaudit.analyses.residual import WholeBlock
    from stabaudit.analyses.samples import SampleEvidence
    from stabaudit.analyses.training import TrainingResult
    from stabaudit.bounds.base import OpBound
    from stabaudit.checks.base import LocalEvidence
    from stabaudit.checks.residual import ResidualEvidence
    from stabaudit.engine import AuditRequest
    from stabaudit.ir.parameters import Parameterisation
    from stabaudit.report.model import SampleInfo, TrainingReport


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
    graph: Graph, request: AuditRequest, reproducible: bool
) -> tuple[list[MethodBound], ExactResult | None]:
    """The certified global methods beyond the product; auto runs them only on the feedforward
    chains they apply to, an explicit --method reports why it did not apply. Also returns the
    exact mode's result (its lower bound is a witnessed region norm)."""
    from stabaudit.analyses.exact import exact_lipschitz
    from stabaudit.analyses.feedforward import extract_chain, global_bounds

    auto = request.method == "auto"
    chain = extract_chain(graph)
    if auto and chain is None:
        return [], None

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
    out = [
        method_bound(r.method, r.upper, r.certified, r.seconds, tuple(r.notes))
        for r in (global_bounds(graph, budget_s=request.budget_s, methods=convex) if convex else [])
    ]
    exact = None
    units = sum(w.shape[0] for w in chain.weights[:-1]) if chain is not None else 0
    if "exact" in wanted and (not auto or units <= AUTO_EXACT_MAX_UNITS):
        exact = exact_lipschitz(graph, budget_s=request.budget_s, seed=request.seed)
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
    return out, exact


def _local_evidence(graph: Graph, samples: np.ndarray, request: AuditRequest) -> LocalEvidence:
    """SA302's evidence: the certified local bound over linf balls around the samples."""
    from stabaudit.analyses.local import local_bounds
    from stabaudit.checks.base import LocalEvidence
    from stabaudit.errors import UnsupportedOperatorError

    n = int(samples.shape[0])
    try:
        result = local_bounds(graph, samples, eps=request.eps, norm="linf")
    except UnsupportedOperatorError as exc:
        return LocalEvidence(upper=None, eps=request.eps, norm="linf", samples=n, message=str(exc))
    upper = _finite(result.upper.value)
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
    )


def _residual_evidence(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    samples: np.ndarray | None,
    request: AuditRequest,
    whole: Mapping[str, WholeBlock],
) -> ResidualEvidence:
    """SA201/SA202's evidence: the residual blocks, their certified bounds, and J_f at the samples."""
    from stabaudit.checks.residual import residual_evidence

    return residual_evidence(graph, op_bounds, samples, seed=request.seed, whole=whole)


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
    if request.domain is None:
        return None, None
    if len(graph.inputs) != 1:
        raise UsageError(
            f"domain: the model has {len(graph.inputs)} inputs; a domain is sampled for models "
            "with one input (give --inputs instead)",
            path=str(request.path),
        )
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


def _samples_evidence(
    graph: Graph, op_bounds: Mapping[str, OpBound], samples: np.ndarray, source: str, request: AuditRequest
) -> SampleEvidence:
    """SA301/SA303's unit counts and SA401's parameter sensitivities at the samples."""
    from stabaudit.analyses.activations import activation_units
    from stabaudit.analyses.parameters import parameter_sensitivity
    from stabaudit.analyses.samples import SampleEvidence

    return SampleEvidence(
        count=int(samples.shape[0]),
        source=source,
        activations=activation_units(graph, samples, eps=request.eps),
        parameters=parameter_sensitivity(graph, op_bounds, samples, seed=request.seed),
    )


def _training_evidence(graph: Graph, request: AuditRequest, parameterisation: Parameterisation | None) -> TrainingResult:
    """SA501-SA503's evidence: the loss Hessian's extreme eigenvalues at the stored parameters."""
    from stabaudit.analyses.training import training_dynamics

    assert request.training is not None
    return training_dynamics(graph, request.training, seed=request.seed, device=request.device,
                             parameterisation=parameterisation)


def _training_report(result: TrainingResult | None) -> TrainingReport | None:
    """The report's `training` section, None without a spec."""
    from stabaudit.checks.training import training_report

    return training_report(result)


def _is_translation(op: object) -> bool:
    from stabaudit.ir.ops import Affine

    return isinstance(op, Affine) and op.scale is None


def _finite(x: float | None) -> float | None:
    return x if x is not None and np.isfinite(x) else None
