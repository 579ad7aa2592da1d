"""The immutable report: what an audit found, independent of how it is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = "1"


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}[self]


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    name: str
    version: str


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    path: str
    format: str
    sha256: str
    parameters: int
    input_shape: tuple[int, ...]
    # where the audit starts when not at the graph inputs: start tensor -> why (an embedding
    # Gather's output, a Cast to float, --from); absent when it starts at the graph inputs
    start: dict[str, str] | None = field(default=None, metadata={"omit_when_none": True})
    # inputs held at values (integer / bool inputs, float inputs upstream of --from) -> which values
    held: dict[str, str] | None = field(default=None, metadata={"omit_when_none": True})
    # the tensors the audit ends at (--to, config `to:`), its outputs; absent when it ends at the graph outputs
    end: tuple[str, ...] | None = field(default=None, metadata={"omit_when_none": True})


@dataclass(frozen=True, kw_only=True)
class Equivalence:
    reference: str
    max_abs_diff: float
    tolerance: float
    passed: bool
    samples: int


@dataclass(frozen=True, kw_only=True)
class LayerLipschitz:
    upper: float | None
    lower: float | None
    method: str
    certified: bool  # the upper bound is sound
    lower_method: str = ""
    lower_certified: bool = False
    # the certified bound of this layer over the audit domain (its inputs' value ranges); only
    # with a bounded domain, and only where it is finite
    domain_upper: float | None = field(default=None, metadata={"omit_when_none": True})


@dataclass(frozen=True, kw_only=True)
class Layer:
    name: str
    op: str
    source_op: str
    lipschitz: LayerLipschitz
    seconds: float = 0.0


# Field metadata: the JSON leaves the key out while the value is None (a field added within
# schema version 1 that most reports do not have, so that their JSON stays as it was).
OMIT_WHEN_NONE = {"omit_when_none": True}
# The JSON leaves the key out while the value is the field's default (a field added within schema
# version 1 whose default is what every earlier report meant).
OMIT_WHEN_DEFAULT = {"omit_when_default": True}


@dataclass(frozen=True, kw_only=True)
class Witness:
    """kind "pair": |F(x) - F(y)| / |x - y| = quotient; kind "jacobian": ||J_F(x)||_2 = quotient at a
    point x where F is differentiable (y is empty)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    quotient: float
    kind: str = "pair"
    # a witness above WITNESS_INLINE_MAX entries is not inline: x and y are then empty and this
    # says where the arrays are (a sidecar .npz beside the report) or only their digest and norms
    stored: WitnessStore | None = field(default=None, metadata=OMIT_WHEN_NONE)


@dataclass(frozen=True, kw_only=True)
class WitnessStore:
    """Where a large witness lives: ``file`` is the sidecar .npz's name, relative to the report's
    directory (None when the report went to stdout: then only the digest and the norms are kept),
    ``arrays`` the names of x and y inside it; ``sha256`` hashes x then y as little-endian float64
    bytes, so that the arrays can be checked against the report."""

    file: str | None
    arrays: tuple[str, ...]
    entries: int  # the number of entries of x (and of y)
    sha256: str
    x_norm: float
    y_norm: float | None


@dataclass(frozen=True, kw_only=True)
class MethodBound:
    """One global method's upper bound and what it cost (the report keeps every method tried)."""

    method: str
    upper: float | None
    certified: bool
    seconds: float
    notes: tuple[str, ...] = ()



@dataclass(frozen=True, kw_only=True)
class Additive:
    """The model as executed switches branch (a jump): ||F(x) - F(y)|| <= upper ||x - y|| + value,
    where upper/lower and every other Lipschitz figure are about the smooth part (each jumping
    operator replaced by its smooth formula). ``sources``: the jumping layers."""

    value: float | None
    certified: bool
    sources: tuple[str, ...]
    method: str


@dataclass(frozen=True, kw_only=True)
class DomainInfo:
    """What a bound is over: ``kind`` "global" (every input) or the audit domain: "box" (low <= x
    <= high), "ball" (linf balls of radius ``radius`` around ``boxes`` samples), "margin" (the
    samples' box widened by ``radius``). ``low``/``high``: the smallest and largest entry bound of
    the domain; ``description``: the domain in words."""

    kind: str = "global"
    description: str = "every input"
    boxes: int | None = field(default=None, metadata={"omit_when_none": True})
    radius: float | None = field(default=None, metadata={"omit_when_none": True})
    low: float | None = field(default=None, metadata={"omit_when_none": True})
    high: float | None = field(default=None, metadata={"omit_when_none": True})


GLOBAL = DomainInfo()


@dataclass(frozen=True, kw_only=True)
class GlobalLipschitz:
    upper: float | None
    lower: float | None
    upper_method: str
    lower_method: str
    certified: bool
    witness: Witness | None
    norm: str = "l2"
    methods: tuple[MethodBound, ...] = ()
    additive: Additive | None = field(default=None, metadata=OMIT_WHEN_NONE)
    domain: DomainInfo = GLOBAL  # what the bracket is over
    notes: tuple[str, ...] = field(default=(), metadata={"omit_when_empty": True})


@dataclass(frozen=True, kw_only=True)
class ProfileStep:
    """Running certified bound of the depth profile l -> prod_{j<=l} s_j after one layer."""

    layer: str
    upper: float | None


@dataclass(frozen=True, kw_only=True)
class Waiver:
    """An accepted finding (config ``waivers:``): the check still runs and is reported, but a waived
    failure does not fail the gate until ``expires`` (ISO date; empty: never)."""

    check: str
    reason: str
    expires: str = ""
    model: str = "*"  # glob over model paths, as written in the config


@dataclass(frozen=True, kw_only=True)
class Finding:
    id: str
    name: str
    status: Status
    severity: Severity
    value: Any
    threshold: Any
    message: str
    locations: tuple[str, ...] = ()  # the layers the finding is about (SARIF logical locations)
    waiver: Waiver | None = None  # set when a valid waiver covers this (failed) finding


@dataclass(frozen=True, kw_only=True)
class RuleInfo:
    """A check's catalogue entry, carried by the report so renderers need no registry."""

    id: str
    name: str
    summary: str
    doc: str
    severity: Severity
    default_threshold: float | None


@dataclass(frozen=True, kw_only=True)
class Stopped:
    """Why an audit stopped before its last stage (the report is then incomplete, exit code 2):
    ``reason`` "timeout" (--timeout) or "memory" (--max-memory: a refused estimate or an
    allocation beyond the cap), ``stage`` the analysis stage that was running or refused (its
    evidence, and that of every later stage, is absent), ``seconds`` the timeout (None for a
    memory stop), ``message`` the reason as stderr says it, ``completed`` the stages whose
    evidence the report holds."""

    reason: str
    stage: str
    message: str
    seconds: float | None = None
    completed: tuple[str, ...] = ()


def stopped_line(stopped: Stopped) -> str:
    """One line for renderers: ``INCOMPLETE: stopped by the timeout in the lower_bound_search stage
    (...)``; only the evidence of the stages that finished is reported."""
    why = "the timeout" if stopped.reason == "timeout" else "the memory budget"
    return (f"INCOMPLETE: stopped by {why} in the {stopped.stage} stage ({stopped.message}); only the "
            "stages that finished are reported, checks that need the others are inconclusive")


@dataclass(frozen=True, kw_only=True)
class Report:
    tool: ToolInfo
    model: ModelInfo
    equivalence: Equivalence
    layers: tuple[Layer, ...]
    lipschitz: GlobalLipschitz
    profile: tuple[ProfileStep, ...]
    checks: tuple[Finding, ...]
    verdict: str
    exit_code: int
    fail_on: str
    created: str = ""  # UTC, ISO 8601; pinned by SOURCE_DATE_EPOCH
    timings: dict[str, float] = field(default_factory=dict)
    # the planned seconds of counted work per stage (the cost model's, from --budget) and "total"
    planned: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    rules: tuple[RuleInfo, ...] = ()  # not part of the JSON report (see report.serialize)
    residual_blocks: tuple[ResidualBlock, ...] = ()  # THEORY.md residual channel (SA201, SA202)
    training: TrainingReport | None = None  # THEORY.md update channel (SA501-SA503)
    samples: SampleInfo | None = None  # the sample inputs of the data-dependent checks; None: none
    # the Lipschitz bracket over the audit domain (--domain, config domain:); absent without one
    domain_lipschitz: GlobalLipschitz | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # false when the audit stopped early (timeout, memory): the report holds only the evidence of
    # the stages that finished (``stopped``), its checks without evidence are inconclusive, and
    # exit_code is 2. The JSON has the key only when false.
    complete: bool = field(default=True, metadata=OMIT_WHEN_DEFAULT)
    stopped: Stopped | None = field(default=None, metadata=OMIT_WHEN_NONE)
    schema_version: str = SCHEMA_VERSION


@dataclass(frozen=True, kw_only=True)
class ModelError:
    """A batch entry that could not be audited: its path and the one-line error (exit code 2, or 3
    for an internal error)."""

    path: str
    error: str
    exit_code: int = 2


@dataclass(frozen=True, kw_only=True)
class BatchReport:
    """Many audits: one Report or ModelError per model, in config order. exit_code: 2 if any model
    could not be audited, else 1 if any gate failed, else 0 (verdict error | fail | pass)."""

    tool: ToolInfo
    config: str
    models: tuple[Report | ModelError, ...]
    verdict: str
    exit_code: int
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION


def batch_outcome(models: tuple[Report | ModelError, ...]) -> tuple[str, int]:
    """The batch verdict and exit code from its entries (CONTRACT.md exit codes)."""
    # an incomplete report (a timeout or the memory cap stopped it) is an error entry too
    errors = [m.exit_code for m in models if isinstance(m, ModelError) or m.exit_code >= 2]
    if errors:
        return "error", max(errors)
    if any(isinstance(m, Report) and m.exit_code == 1 for m in models):
        return "fail", 1
    return "pass", 0


@dataclass(frozen=True, kw_only=True)
class ResidualBlock:
    """One residual block x -> S(x) + h*f(x) (THEORY.md residual channel), named by its Add node.

    shortcut: "identity" (S = I) or "projection" (S = P, a linear map). Bounds on f are certified
    when ``certified``; lip_f_lower is a sound lower bound of Lip(f); cfl = h*lip_f_upper;
    growth_upper bounds the block's Lipschitz constant (1 + h Lip f, or ||P|| + h Lip f) and
    growth_lower is a sound lower bound of it. mu, jacobian_norm and h_star are measured at the
    sample inputs (max, max, min over samples): estimates, not bounds. None: not known.
    """

    name: str
    shortcut: str
    branch: tuple[str, ...]
    h: float
    lip_f_upper: float | None
    lip_f_lower: float | None
    cfl: float | None
    growth_upper: float | None
    growth_lower: float | None = None
    shortcut_norm: float | None = None  # ||P||_2 upper bound (projection shortcuts)
    certified: bool = False
    mu: float | None = None
    jacobian_norm: float | None = None
    h_star: float | None = None
    notes: tuple[str, ...] = ()
    # the pair of branch inputs behind lip_f_lower: quotient = ||b(y) - b(x)|| / ||y - x|| of the
    # branch b = h*f (so h * lip_f_lower <= quotient), confirmed in float64; absent without one
    lip_f_witness: Witness | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # the pair of block inputs behind growth_lower: the block's quotient there is >= quotient
    # (absent when growth_lower is 1 - h*lip_f_upper, which holds for every pair, or unknown)
    growth_witness: Witness | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # the block over the audit domain (only with a bounded --domain)
    domain: ResidualDomain | None = field(default=None, metadata=OMIT_WHEN_NONE)


@dataclass(frozen=True, kw_only=True)
class ResidualDomain:
    """A residual block over the audit domain D: Lip f restricted to R, the box of the values its
    input x takes while the model's input ranges over D (interval value ranges, the largest over
    D's boxes). lip_f_upper is certified when ``certified`` (never above the global Lip f bound);
    lip_f_lower is a sound lower bound of Lip f on R from ``witness`` (a pair inside R,
    quotient of the branch h*f as in ResidualBlock.lip_f_witness); cfl = h * lip_f_upper;
    growth_upper / growth_lower bound the block's Lipschitz constant on R (growth_lower is
    1 - cfl, or witness.quotient - 1 at the witness pair). None: not known."""

    lip_f_upper: float | None
    lip_f_lower: float | None
    cfl: float | None
    growth_upper: float | None
    growth_lower: float | None
    certified: bool
    witness: Witness | None = field(default=None, metadata=OMIT_WHEN_NONE)


@dataclass(frozen=True, kw_only=True)
class TrainingReport:
    """The update channel (THEORY.md SA501-SA503): the loss Hessian H at the stored parameters.

    sharpness = lambda_max(H) and lambda_min = lambda_min(H) as computed, with their sound bounds
    (None: not known). method "dense eigvalsh" (full Hessian): two-sided bounds, ``certified``;
    method "lanczos": Ritz values, inner bounds only (sharpness_lower, lambda_min_upper).
    margin = limit - sharpness with limit 2/eta (2(1+beta)/eta with momentum); for Adam,
    preconditioned_sharpness = lambda_max(P^1/2 H P^1/2), P = diag(1/(sqrt(v)+eps)).
    parameter_names: the parameter arrays in order (the keys of a second-moment file), as the
    source model names them; parameter_roles: how the model uses each and where it came from;
    parameter_source: the parameterisation H is over ("TorchScript module parameters": the
    module's own nn.Parameters, nothing folded; "ONNX initializers": the file's weights and
    biases, or those `training.parameters` lists). A certified sharpness is certified for that
    parameterisation only; parameterisation_notes says when it is not the one trained (BatchNorm
    folded by the exporter).
    """

    sharpness: float | None
    lambda_min: float | None
    learning_rate: float
    optimizer: str
    margin: float | None
    iterations: int
    certified: bool
    method: str
    sharpness_lower: float | None = None
    sharpness_upper: float | None = None
    lambda_min_lower: float | None = None
    lambda_min_upper: float | None = None
    preconditioned_sharpness: float | None = None
    parameters: int = 0
    parameter_names: tuple[str, ...] = ()
    samples: int = 0
    loss: float | None = None
    notes: tuple[str, ...] = ()
    parameter_source: str = ""
    parameter_roles: tuple[str, ...] = ()
    parameterisation_notes: tuple[str, ...] = ()


class SampleSource(str, Enum):
    FILE = "file"  # --inputs / config inputs:
    ARRAY = "array"  # an array given to the Python API, no file
    DOMAIN_UNIFORM = "domain-uniform"  # drawn from a config domain {low, high}
    DOMAIN_NORMAL = "domain-normal"  # drawn from a config domain {mean, std}


@dataclass(frozen=True, kw_only=True)
class DomainParameter:
    """One parameter of the sampled domain as written: low, high, mean or std."""

    name: str
    values: tuple[float, ...]  # row-major
    shape: tuple[int, ...] = ()  # () one number; (C,) one per channel; else broadcast to the input


@dataclass(frozen=True, kw_only=True)
class SampleInfo:
    """Which sample inputs the data-dependent checks used (SA301-SA303, SA401, ...).

    shape is one sample's (the model's input shape); seed is the seed of a domain draw;
    sha256 is the file's (source file) or the array's float64 bytes (source array).
    """

    source: SampleSource
    count: int
    shape: tuple[int, ...]
    seed: int | None = None
    sha256: str | None = None
    domain: tuple[DomainParameter, ...] = ()


class TrajectoryChannel(str, Enum):
    """The LSP channels followed across checkpoints (THEORY.md trajectory, SA601/SA602)."""

    LIPSCHITZ = "lipschitz"  # the global certified bracket [K_lower, K_upper] (SA101)
    LAYER = "layer_lipschitz"  # max_l s_l (SA102)
    EXPONENT = "exponent"  # Lambda (SA103's value)
    RESIDUAL = "residual_growth"  # the residual depth growth (SA202), when the report has it
    SHARPNESS = "sharpness"  # lambda_max of the loss Hessian (SA501), when the report has it


@dataclass(frozen=True, kw_only=True)
class ChannelBracket:
    """One channel at one checkpoint: a sound lower bound, an upper bound (sound when
    ``certified``) and the limit the channel is judged against there (None: none)."""

    channel: TrajectoryChannel
    lower: float | None
    upper: float | None
    certified: bool
    limit: float | None = None


@dataclass(frozen=True, kw_only=True)
class TrajectoryPoint:
    """One checkpoint of the run: its step, file, audit outcome and channel brackets. A checkpoint
    that could not be audited has verdict "error", its error, and no channels."""

    step: int
    path: str
    verdict: str
    exit_code: int
    sha256: str = ""
    channels: tuple[ChannelBracket, ...] = ()
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class ChannelSummary:
    """A channel over the whole trajectory: sup over checkpoints of its upper and lower bounds
    (None when some checkpoint lacks one), the limit and SA601's status for this channel."""

    channel: TrajectoryChannel
    sup_upper: float | None
    sup_lower: float | None
    certified: bool
    limit: float | None
    status: Status


@dataclass(frozen=True, kw_only=True)
class GrowthFit:
    """log v_t ~ intercept + slope * step by least squares over the checkpoints (SA602): slope is
    the growth exponent per step unit, residual the root mean square of the log residuals."""

    slope: float | None
    intercept: float | None
    residual: float | None
    points: int
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class TrajectoryReport:
    """Audits of several checkpoints of one training run (THEORY.md SA601, SA602). exit_code: 2
    if any checkpoint could not be audited, else 1 if SA601/SA602 or any checkpoint's gate
    failed, else 0 (verdict error | fail | pass)."""

    tool: ToolInfo
    config: str
    points: tuple[TrajectoryPoint, ...]
    channels: tuple[ChannelSummary, ...]
    growth_upper: GrowthFit
    growth_lower: GrowthFit
    checks: tuple[Finding, ...]
    verdict: str
    exit_code: int
    fail_on: str
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
