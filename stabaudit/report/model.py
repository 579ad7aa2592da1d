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


@dataclass(frozen=True, kw_only=True)
class Layer:
    name: str
    op: str
    source_op: str
    lipschitz: LayerLipschitz
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Witness:
    """kind "pair": |F(x) - F(y)| / |x - y| = quotient; kind "jacobian": ||J_F(x)||_2 = quotient at a
    point x where F is differentiable (y is empty)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    quotient: float
    kind: str = "pair"


@dataclass(frozen=True, kw_only=True)
class MethodBound:
    """One global method's upper bound and what it cost (the report keeps every method tried)."""

    method: str
    upper: float | None
    certified: bool
    seconds: float
    notes: tuple[str, ...] = ()


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
    notes: tuple[str, ...] = ()
    rules: tuple[RuleInfo, ...] = ()  # not part of the JSON report (see report.serialize)
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
    if any(isinstance(m, ModelError) for m in models):
        return "error", max(m.exit_code for m in models if isinstance(m, ModelError))
    if any(isinstance(m, Report) and m.exit_code == 1 for m in models):
        return "fail", 1
    return "pass", 0
