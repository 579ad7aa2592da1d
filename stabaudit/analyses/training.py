"""Update channel: the loss Hessian's extreme eigenvalues at the stored parameters (HVP + Lanczos)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.analyses.lanczos import Extremes, dense_extremes, lanczos_extremes
from stabaudit.errors import InternalError, UsageError
from stabaudit.ir.graph import Graph
from stabaudit.ir.parameters import (
    GraphParameters,
    ModuleParameters,
    Parameterisation,
    SourceParameter,
    select,
    unmatched,
)
from stabaudit.limits import raise_allocation_failure

if TYPE_CHECKING:
    import torch

DENSE_MAX = 2000  # parameters up to which the full Hessian is formed (certified eigenvalues)
MAX_SAMPLES = 256  # full batch up to this many samples, else a seeded subset
LANCZOS_ITERATIONS = 100  # at most this many Lanczos steps (Hessian-vector products)
# ... fewer once the extreme Ritz pairs' residuals are below this fraction of the spectrum's scale
# (lanczos.lanczos_extremes): their Ritz values then move by about residual^2 / gap at most
LANCZOS_TOLERANCE = 1e-6
LANCZOS_MEMORY = 512 * 2**20  # bytes for the Lanczos basis and its images (2 k n float64)
ADAM_EPS = 1e-8
METHOD_DENSE = "dense eigvalsh"
METHOD_LANCZOS = "lanczos"


class Optimizer(str, Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


class Loss(str, Enum):
    MSE = "mse"  # mean over all elements of (f(x) - y)^2
    CROSS_ENTROPY = "cross_entropy"  # on logits, integer class labels y


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """How the model is trained: the update rule and the data its loss is taken over."""

    learning_rate: float
    x: np.ndarray  # [N, ...] inputs
    y: np.ndarray  # [N, ...] targets (mse) or [N] class labels (cross_entropy)
    optimizer: Optimizer = Optimizer.SGD
    momentum: float = 0.9  # heavy-ball beta (optimizer momentum)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (beta1, beta2)
    loss: Loss = Loss.MSE
    second_moment: Mapping[str, np.ndarray] | None = None  # Adam's v by parameter name (SA502)
    noise: float | None = None  # gradient-noise variance sigma^2 (SA503's noise floor)
    parameters: tuple[str, ...] | None = None  # globs of the parameters trained (None: the defaults)


@dataclass(frozen=True, kw_only=True)
class Bracket:
    """An extreme eigenvalue: the computed value and the sound bounds known (None: not known)."""

    estimate: float
    lower: float | None
    upper: float | None


@dataclass(frozen=True, kw_only=True)
class TrainingResult:
    """The Hessian's spectrum at the stored parameters, with the spec the checks compare it to."""

    learning_rate: float
    optimizer: Optimizer
    momentum: float
    betas: tuple[float, float]
    noise: float | None
    lambda_max: Bracket | None  # None: the Hessian is not finite
    lambda_min: Bracket | None
    preconditioned: Bracket | None  # lambda_max(P^1/2 H P^1/2), Adam with a second moment only
    method: str  # METHOD_DENSE | METHOD_LANCZOS
    certified: bool  # two-sided bounds (dense path)
    iterations: int
    parameters: int
    parameter_names: tuple[str, ...]
    samples: int
    loss_value: float
    notes: tuple[str, ...] = ()
    parameter_source: str = ""  # "TorchScript module parameters" | "ONNX initializers" | "IR arrays"
    parameter_roles: tuple[str, ...] = ()  # per name: how the model uses it (and where it came from)
    parameterisation_notes: tuple[str, ...] = ()  # e.g. the exporter folded BatchNorm
    unavailable: str = ""  # why no Hessian could be computed (lambda_max and lambda_min None)


def parameter_name(node: str, field: str) -> str:
    """How a parameter array is named in the report and in the second-moment file."""
    return f"{node}.{field}"


# ---- the loss and its Hessian-vector products ---------------------------------------------------------
NON_SMOOTH = frozenset(
    {"Relu", "LeakyRelu", "PRelu", "Clip", "MaxPool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "ReduceMax",
     "ReduceMin", "ReduceL1", "ReduceL2", "Max", "Min", "Quantize"}
)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Parameters:
    """The leaves the Hessian is taken over and the model as a function of them: x [N, n_in]
    (flattened inputs) -> [N, n_out] (flattened outputs), in float64."""

    names: tuple[str, ...]
    roles: tuple[str, ...]
    leaves: tuple[torch.Tensor, ...]
    forward: Callable[[torch.Tensor], torch.Tensor]
    source: str
    notes: tuple[str, ...]


def _selected(params: Sequence[SourceParameter], patterns: tuple[str, ...] | None) -> tuple[SourceParameter, ...]:
    if patterns is not None:
        missing = unmatched(params, patterns)
        if missing:
            known = ", ".join(p.name for p in params[:20]) + (" ..." if len(params) > 20 else "")
            raise UsageError(f"training.parameters: {', '.join(repr(m) for m in missing)} match no parameter "
                             f"of the model (its parameters: {known or 'none'})")
    return select(params, patterns)


def _role(p: SourceParameter) -> str:
    return f"{p.role} ({p.origin.value})" if p.role and p.role != p.origin.value else p.origin.value


def _graph_parameters(graph: Graph, gp: GraphParameters, patterns: tuple[str, ...] | None,
                      device: str) -> _Parameters:
    """Leaves: the chosen source parameters; every IR array bound to one of them is rebuilt from
    its binding (linear in the parameters: BatchNorm's scale r * gamma, a Gemm's alpha * B^T), the
    other arrays stay constants."""
    import torch

    from stabaudit.ir.executor import Executor

    chosen = _selected(gp.parameters, patterns)
    leaves = {p.name: torch.tensor(np.array(gp.values[p.name], dtype=np.float64), device=device,
                                   requires_grad=True) for p in chosen}
    by_node = {node.name: node for node in graph.nodes}

    def value(name: str) -> torch.Tensor:
        if name in leaves:
            return leaves[name]
        return torch.tensor(np.array(gp.values[name], dtype=np.float64), device=device)

    substitutes: dict[tuple[str, str], torch.Tensor] = {}
    for b in gp.bindings:
        if not any(t.parameter in leaves for t in b.terms):
            continue
        target = np.asarray(vars(by_node[b.node].op)[b.field])
        total: torch.Tensor | None = None
        for t in b.terms:
            v = value(t.parameter)
            v = v.T if t.transpose else v
            c = np.asarray(t.coefficient, dtype=np.float64)
            if not (c.ndim == 0 and float(c) == 1.0):  # a unit coefficient: no product in every HVP
                v = v * torch.as_tensor(c, device=device)
            total = v if total is None else total + v
        assert total is not None
        rebuilt = (total.reshape(target.shape) if total.numel() == target.size
                   else torch.broadcast_to(total, target.shape))
        # the binding must reproduce the array the loader computed (float32 rounding apart)
        expected = np.asarray(target, dtype=np.float64)
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        if not np.allclose(rebuilt.detach().cpu().numpy(), expected, rtol=1e-5, atol=1e-6 * scale):
            raise InternalError(f"training parameters: {b.node}.{b.field} is not reproduced by its binding "
                                "to the model's parameters: a bug in stabaudit, please report it with the model")
        substitutes[(b.node, b.field)] = rebuilt
    executor = Executor(graph, dtype=torch.float64, device=device, parameters=substitutes)
    flat = executor.flat()

    def forward(xt: torch.Tensor) -> torch.Tensor:
        # one sample at a time through vmap: graphs may fix the batch dimension (Reshape to [1, k])
        return torch.func.vmap(flat)(xt)

    return _Parameters(names=tuple(p.name for p in chosen), roles=tuple(_role(p) for p in chosen),
                       leaves=tuple(leaves.values()), forward=forward, source=gp.source, notes=gp.notes)


def _module_parameters(graph: Graph, mp: ModuleParameters, patterns: tuple[str, ...] | None,
                       device: str) -> _Parameters:
    """Leaves: the module's own parameters (float64 copies swapped in by ``_float64_module``); the
    forward is the module as executed, one sample at a time (a module may mix or fix the batch)."""
    import torch

    if mp.module is None:  # an isolated TorchScript load: the Hessian runs in its process (engine._module_jobs)
        from stabaudit.errors import InternalError

        raise InternalError("the TorchScript module lives in its isolated loading process: pass the training "
                            "channel to load_model as a module job")
    chosen = _selected(mp.parameters, patterns)
    wanted = {p.name for p in chosen}
    named = dict(mp.module.named_parameters())
    leaves = tuple(named[p.name] for p in chosen)
    for name, p in named.items():
        p.requires_grad_(name in wanted)
    specs = graph.inputs
    sizes = [int(np.prod(s.shape)) for s in specs]

    def one(row: torch.Tensor) -> torch.Tensor:
        args = [part.reshape(spec.shape) for part, spec in zip(torch.split(row, sizes), specs, strict=True)]
        return torch.cat([t.reshape(-1) for t in _tensors(mp.module(*args))])

    def forward(xt: torch.Tensor) -> torch.Tensor:
        # vmap: one sample at a time by construction, but one batched operation per op, so that every
        # Hessian-vector product is one backward pass through N-row operations rather than through
        # N copies of the module (about 40x faster on a 20k-parameter MLP over 256 samples). The
        # TorchScript interpreter's optimized plans read tensors' .data, which vmap forbids: the
        # plain interpreter runs it. A module vmap cannot run (data-dependent control flow, an op
        # without a batching rule) is called once per sample instead.
        try:
            with torch.jit.optimized_execution(False):
                return torch.func.vmap(one)(xt)
        except (RuntimeError, ValueError):
            return torch.stack([one(row) for row in xt])

    return _Parameters(names=tuple(p.name for p in chosen), roles=tuple(_role(p) for p in chosen),
                       leaves=leaves, forward=forward, source=mp.source, notes=mp.notes)


def _tensors(value: object) -> list[torch.Tensor]:
    """The tensors of a module's output (a tensor, or nested tuples, lists and dicts of them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@contextmanager
def _float64_module(parameterisation: Parameterisation | None) -> Iterator[None]:
    """A TorchScript module's floating-point parameters and buffers in float64 for the duration
    (the stored tensors are put back afterwards, bit for bit, with their requires_grad flags)."""
    if not isinstance(parameterisation, ModuleParameters):
        yield
        return
    import torch

    module = parameterisation.module
    saved = []
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            saved.append((t, t.data, t.requires_grad))
            t.data = t.data.to(torch.float64)
    try:
        yield
    finally:
        for t, data, grad in saved:
            t.data = data
            if t.is_leaf:
                t.requires_grad_(grad)


def _ir_parameters(graph: Graph) -> GraphParameters:
    """Without a loader's parameterisation (a graph built in code): every float array of the IR."""
    from stabaudit.ir.executor import parameter_arrays
    from stabaudit.ir.parameters import Binding, Origin, Term

    arrays = parameter_arrays(graph)
    params = tuple(SourceParameter(name=parameter_name(node, field), shape=tuple(a.shape), origin=Origin.FOLDED,
                                   role="IR array") for (node, field), a in arrays.items())
    return GraphParameters(
        parameters=params,
        values={parameter_name(node, field): a for (node, field), a in arrays.items()},
        bindings=tuple(Binding(node=node, field=field, terms=(Term(parameter=parameter_name(node, field)),))
                       for node, field in arrays),
        source="IR arrays",
    )


def training_parameters(graph: Graph, parameterisation: Parameterisation | None,
                        patterns: tuple[str, ...] | None, device: str) -> _Parameters:
    """The parameters the Hessian is taken over (see ``_graph_parameters`` and ``_module_parameters``)."""
    match parameterisation:
        case ModuleParameters():
            return _module_parameters(graph, parameterisation, patterns, device)
        case GraphParameters():
            return _graph_parameters(graph, parameterisation, patterns, device)
        case None:
            return _graph_parameters(graph, _ir_parameters(graph), patterns, device)


class _Hessian:
    """v -> H v for the loss at the stored parameters, by double backward in float64: through the
    engine's own executor with the IR arrays rebuilt from the source parameters (ONNX), or
    through the module as executed (TorchScript), so that H is over the parameters training
    updates (``_Parameters``)."""

    def __init__(self, graph: Graph, x: np.ndarray, y: np.ndarray, loss: Loss, device: str,
                 params: _Parameters):
        import torch
        import torch.nn.functional as F

        self.names = params.names
        self.shapes = [tuple(t.shape) for t in params.leaves]
        self.sizes = [int(t.numel()) for t in params.leaves]
        self.n = int(sum(self.sizes))
        self.device = device
        self.leaves = list(params.leaves)
        n_in = int(sum(int(np.prod(s.shape)) for s in graph.inputs))
        if int(np.prod(x.shape[1:])) != n_in:
            raise UsageError(
                f"training.data: each sample of x has shape {list(x.shape[1:])}, "
                f"the model's input has {n_in} elements ({', '.join(str(list(s.shape)) for s in graph.inputs)})"
            )
        xt = torch.tensor(x.reshape(x.shape[0], n_in), dtype=torch.float64, device=device)
        out = params.forward(xt)
        n_out = out.shape[1]
        if loss is Loss.MSE:
            if y.size != out.numel():
                raise UsageError(
                    f"training.data: y has {y.size // max(y.shape[0], 1)} values per sample, "
                    f"the model's output has {n_out}"
                )
            target = torch.tensor(np.asarray(y, dtype=np.float64).reshape(out.shape), device=device)
            value = ((out - target) ** 2).mean()
        else:
            labels = np.asarray(y).reshape(-1)
            if labels.size != out.shape[0] or np.any(labels != np.round(labels)):
                raise UsageError("training.data: cross_entropy needs one integer class label per sample in y")
            if np.any(labels < 0) or np.any(labels >= n_out):
                raise UsageError(
                    f"training.data: class labels must lie in [0, {n_out - 1}] (the model has {n_out} outputs)"
                )
            target = torch.tensor(labels.astype(np.int64), device=device)
            value = F.cross_entropy(out, target)
        self.loss = float(value.detach())
        grads = torch.autograd.grad(value, self.leaves, create_graph=True, allow_unused=True)
        self.grad = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, self.leaves, strict=True)
            ]
        )

    def _flat(self, parts: tuple[torch.Tensor | None, ...], batch: int | None = None) -> torch.Tensor:
        import torch

        flat = []
        for part, leaf in zip(parts, self.leaves, strict=True):
            if part is None:  # the gradient does not depend on this parameter (H block of zeros)
                shape = (batch, leaf.numel()) if batch is not None else (leaf.numel(),)
                flat.append(torch.zeros(shape, dtype=torch.float64, device=self.device))
            else:
                flat.append(part.reshape(batch, -1) if batch is not None else part.reshape(-1))
        return torch.cat(flat, dim=-1)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        import torch

        if not self.grad.requires_grad:  # the loss is linear in theta: H = 0
            return np.zeros(self.n)
        vt = torch.tensor(v, dtype=torch.float64, device=self.device)
        parts = torch.autograd.grad(self.grad, self.leaves, grad_outputs=vt, retain_graph=True, allow_unused=True)
        return self._flat(parts).cpu().numpy()

    def dense(self, tick: Callable[[], None]) -> np.ndarray:
        """The full Hessian, columns in chunks (batched backward, else one column at a time)."""
        import torch

        h = np.zeros((self.n, self.n))
        if not self.grad.requires_grad:
            return h
        chunk = max(1, min(self.n, 2**22 // max(self.n, 1)))
        for start in range(0, self.n, chunk):
            tick()
            stop = min(self.n, start + chunk)
            eye = torch.zeros((stop - start, self.n), dtype=torch.float64, device=self.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            try:
                parts = torch.autograd.grad(
                    self.grad, self.leaves, grad_outputs=eye, retain_graph=True,
                    allow_unused=True, is_grads_batched=True,
                )
                h[start:stop] = self._flat(parts, stop - start).cpu().numpy()
            except RuntimeError as exc:  # an op without a batching rule: one column at a time
                raise_allocation_failure(exc)
                for i in range(start, stop):
                    h[i] = self.matvec(eye[i - start].cpu().numpy())
        return h


def _bracket_max(e: Extremes) -> Bracket:
    return Bracket(estimate=e.largest, lower=e.largest - e.slack, upper=e.largest + e.slack if e.two_sided else None)


def _bracket_min(e: Extremes) -> Bracket:
    return Bracket(estimate=e.smallest, lower=e.smallest - e.slack if e.two_sided else None, upper=e.smallest + e.slack)


def _preconditioner(spec: TrainingSpec, names: tuple[str, ...], shapes: list[tuple[int, ...]]) -> np.ndarray:
    """Adam's diag(P)^(1/2) = 1/sqrt(sqrt(v) + eps), flattened in parameter order."""
    assert spec.second_moment is not None
    moments = spec.second_moment
    missing = [n for n in names if n not in moments]
    unknown = sorted(set(moments) - set(names))
    if missing or unknown:
        detail = (f"missing {', '.join(missing)}" if missing else "") + (
            ("; " if missing else "") + f"unknown {', '.join(unknown)}" if unknown else ""
        )
        raise UsageError(
            f"training.second_moment: expected one array per parameter ({', '.join(names)}): {detail}"
        )
    parts = []
    for name, shape in zip(names, shapes, strict=True):
        v = np.asarray(moments[name], dtype=np.float64)
        if v.size != int(np.prod(shape)):
            raise UsageError(
                f"training.second_moment: {name!r} has {v.size} values, the parameter has shape {list(shape)}"
            )
        parts.append(v.reshape(-1))
    v = np.concatenate(parts) if parts else np.zeros(0)
    return 1.0 / np.sqrt(np.sqrt(v) + ADAM_EPS)


def training_dynamics(
    graph: Graph,
    spec: TrainingSpec,
    *,
    seed: int = 0,
    device: str = "cpu",
    dense_max: int = DENSE_MAX,
    iterations: int = LANCZOS_ITERATIONS,
    max_samples: int = MAX_SAMPLES,
    parameterisation: Parameterisation | None = None,
) -> TrainingResult:
    """lambda_max and lambda_min of the loss Hessian H at the graph's stored parameters (and, for
    Adam with a second moment, lambda_max(P^1/2 H P^1/2)): dense eigvalsh with two-sided bounds up
    to ``dense_max`` parameters, else Lanczos Ritz values (inner bounds only).

    H is over the parameters training updates, as the loader names them (``parameterisation``:
    a TorchScript module's own parameters, an ONNX file's weights and biases, or the globs of
    ``spec.parameters``); without one, over every float array of the graph."""
    with _float64_module(parameterisation):
        return _training_dynamics(graph, spec, seed=seed, device=device, dense_max=dense_max,
                                  iterations=iterations, max_samples=max_samples,
                                  parameterisation=parameterisation)


def _training_dynamics(graph: Graph, spec: TrainingSpec, *, seed: int, device: str, dense_max: int,
                       iterations: int, max_samples: int, parameterisation: Parameterisation | None) -> TrainingResult:
    from stabaudit.limits import check_deadline

    notes: list[str] = []
    x, y = spec.x, spec.y
    total = int(x.shape[0])
    if total > max_samples:
        pick = np.sort(np.random.default_rng(seed).choice(total, size=max_samples, replace=False))
        x, y = x[pick], y[pick]
        notes.append(f"loss over a seeded subset of {max_samples} of the {total} samples (full batch is capped)")
    params = training_parameters(graph, parameterisation, spec.parameters, device)
    try:
        hess = _Hessian(graph, x, y, spec.loss, device, params)
    except RuntimeError as exc:
        if not isinstance(parameterisation, ModuleParameters):
            raise
        # the module as executed cannot run on float64 parameters (e.g. it casts its input to
        # float32 before a layer): no Hessian over its parameters, said instead of guessed
        first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
        return _unavailable(spec, params, x, f"the module cannot be differentiated in float64 over its own "
                            f"parameters ({first}); no Hessian is computed", notes)
    if any(node.op.type.value in NON_SMOOTH for node in graph.nodes):
        notes.append(
            "non-smooth operators: double backward gives the Hessian of the piece autodiff selects "
            "at each kink (one element of the Clarke generalized Hessian)"
        )
    adam = spec.optimizer is Optimizer.ADAM and spec.second_moment is not None
    root_p = _preconditioner(spec, hess.names, hess.shapes) if adam else None
    n = hess.n
    pre: Extremes | None = None
    if n <= dense_max:
        method = METHOD_DENSE
        h = hess.dense(check_deadline)
        if not np.all(np.isfinite(h)):
            return _not_finite(spec, hess, x, method, notes, params)
        plain = dense_extremes(h)
        if root_p is not None:
            pre = dense_extremes(root_p[:, None] * h * root_p[None, :])
        iterations_done = n
    else:
        method = METHOD_LANCZOS
        k = min(n, iterations, max(8, LANCZOS_MEMORY // (16 * n)))
        if k < min(n, iterations):
            notes.append(f"Lanczos steps capped at {k} by memory")
        plain = lanczos_extremes(hess.matvec, n, iterations=k, seed=seed, tolerance=LANCZOS_TOLERANCE,
                                 tick=check_deadline)
        if not (np.isfinite(plain.largest) and np.isfinite(plain.smallest)):
            return _not_finite(spec, hess, x, method, notes, params)
        if root_p is not None:
            d = root_p
            pre = lanczos_extremes(
                lambda v: d * hess.matvec(d * v), n, iterations=k, seed=seed, tolerance=LANCZOS_TOLERANCE,
                tick=check_deadline,
            )
        iterations_done = plain.iterations
        notes.append(
            f"Lanczos ({plain.iterations} steps, full reorthogonalization): the Ritz values are inner "
            "bounds (lambda_max >= Ritz max, lambda_min <= Ritz min), not enclosures"
        )
    notes += plain.notes
    return TrainingResult(
        learning_rate=spec.learning_rate,
        optimizer=spec.optimizer,
        momentum=spec.momentum,
        betas=spec.betas,
        noise=spec.noise,
        lambda_max=_bracket_max(plain),
        lambda_min=_bracket_min(plain),
        preconditioned=_bracket_max(pre) if pre is not None else None,
        method=method,
        certified=plain.two_sided,
        iterations=iterations_done,
        parameters=n,
        parameter_names=hess.names,
        samples=int(x.shape[0]),
        loss_value=hess.loss,
        notes=tuple(notes),
        parameter_source=params.source,
        parameter_roles=params.roles,
        parameterisation_notes=params.notes,
    )


def _no_spectrum(spec: TrainingSpec, params: _Parameters, x: np.ndarray, *, method: str, loss: float,
                 reason: str, notes: list[str], unavailable: bool) -> TrainingResult:
    """A result without eigenvalues: the Hessian could not be computed (``unavailable``), or it
    is not finite; ``reason`` says which."""
    return TrainingResult(
        learning_rate=spec.learning_rate,
        optimizer=spec.optimizer,
        momentum=spec.momentum,
        betas=spec.betas,
        noise=spec.noise,
        lambda_max=None,
        lambda_min=None,
        preconditioned=None,
        method=method,
        certified=False,
        iterations=0,
        parameters=int(sum(t.numel() for t in params.leaves)),
        parameter_names=params.names,
        samples=int(x.shape[0]),
        loss_value=loss,
        notes=(*notes, reason),
        parameter_source=params.source,
        parameter_roles=params.roles,
        parameterisation_notes=params.notes,
        unavailable=reason if unavailable else "",
    )


def _unavailable(spec: TrainingSpec, params: _Parameters, x: np.ndarray, reason: str,
                 notes: list[str]) -> TrainingResult:
    return _no_spectrum(spec, params, x, method="none", loss=math.nan, reason=reason, notes=notes,
                        unavailable=True)


def _not_finite(
    spec: TrainingSpec, hess: _Hessian, x: np.ndarray, method: str, notes: list[str], params: _Parameters
) -> TrainingResult:
    return _no_spectrum(spec, params, x, method=method, loss=hess.loss,
                        reason="the loss Hessian is not finite at the stored parameters", notes=notes,
                        unavailable=False)
