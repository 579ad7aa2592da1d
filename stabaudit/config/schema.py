"""The config schema: what the YAML may say (strict pydantic models) and what loading yields."""

from __future__ import annotations

import datetime
import glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stabaudit.analyses.samples import (
    MAX_SAMPLE_COUNT,
    BallDomain,
    Domain,
    MarginDomain,
    NormalDomain,
    UniformDomain,
    Values,
    check_domain,
    values_of,
)
from stabaudit.errors import UsageError

SeverityName = Literal["error", "warning", "info"]
FailOn = Literal["error", "warning", "inconclusive"]
Method = Literal["auto", "product", "layerwise", "sdp", "eclipse-fast", "eclipse", "lipsdp-neuron", "exact"]
METHODS: tuple[str, ...] = get_args(Method)
SEVERITIES: tuple[str, ...] = get_args(SeverityName)
FAIL_ON: tuple[str, ...] = get_args(FailOn)
MAX_SEED = 2**32 - 1  # every random generator the engine seeds accepts this range
CHECK_ID = r"^SA\d{3}$"
INPUT_SUFFIXES = (".npz", ".npy")
CUSTOM = "stabaudit"  # the pydantic error type whose message is already ours, passed through as is


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError(CUSTOM, message)


# ---- the public result of loading ------------------------------------------------------------------
Optimizer = Literal["sgd", "momentum", "adam"]
LossName = Literal["mse", "cross_entropy"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LOSSES: tuple[str, ...] = get_args(LossName)
Unit = Annotated[float, Field(ge=0, lt=1)]  # a momentum coefficient in [0, 1)


class TrainingSettings(BaseModel):
    """The update channel's spec (SA501-SA503): optimizer, loss and the data the loss is taken over."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    optimizer: Optimizer = "sgd"
    momentum: Unit | None = None  # heavy-ball beta (optimizer momentum; default 0.9)
    betas: tuple[Unit, Unit] | None = None  # Adam's (beta1, beta2) (default (0.9, 0.999))
    loss: LossName = "mse"
    data: Path  # .npz with arrays x and y; absolute when it comes from a config
    second_moment: Path | None = None  # .npz: Adam's v by parameter name (SA502)
    noise: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # sigma^2 (SA503)
    parameters: tuple[str, ...] | None = None  # globs of the parameter names training updates


ARGUMENT_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A forward argument's value in a config: a number, bool, string or null, or a list of those
# (strict: YAML's own types, read as the argument's declared type by the loader)
ArgumentScalar = bool | int | float | str | None
ArgumentInput = ArgumentScalar | list[ArgumentScalar]


class Settings(BaseModel):
    """Audit settings of one level (defaults or a model entry); empty or None means "not set"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: dict[str, float] = Field(default_factory=dict)
    severity: dict[str, SeverityName] = Field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None  # by input name (replaced as a whole)
    start: str | None = None  # ONNX: the tensor the audit starts from (config key `from`, --from)
    perturb: tuple[str, ...] | None = None  # ONNX: the real inputs perturbed, the others held (--perturb)
    end: tuple[str, ...] | None = None  # ONNX: the tensors the audit ends at (config key `to`, --to)
    seed: int | None = None
    fail_on: FailOn | None = None
    method: Method | None = None
    budget: float | None = None
    timeout: float | None = None
    eps: float | None = None
    inputs: Path | None = None  # absolute
    max_memory: int | None = None  # bytes
    disable: frozenset[str] = frozenset()
    training: TrainingSettings | None = None  # replaced as a whole by a more specific level
    # the input domain sampled when no inputs are given (replaced as a whole), and the count
    domain: (InstanceOf[UniformDomain] | InstanceOf[NormalDomain] | InstanceOf[BallDomain]
             | InstanceOf[MarginDomain] | None) = None
    samples: int | None = None
    # skip the static gate of TorchScript code (loaders.ts_gate): the user vouches for the archive
    trust_torchscript: bool | None = None
    # values by name of TorchScript forward's non-tensor arguments, or of an ONNX model's integer and
    # bool inputs (merged key by key; the command line's --arg gives strings, a config YAML values;
    # the loader reads them as the declared types or the input's dtype)
    arguments: dict[str, ArgumentInput] | None = None

    def merged(self, over: Settings) -> Settings:
        """These settings overridden by ``over``: its set values win, thresholds and severity merge
        key by key (``over`` wins), the disabled checks are the union."""
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(over, name)
            if name in ("thresholds", "severity"):
                values[name] = {**mine, **theirs}
            elif name == "arguments":
                values[name] = {**(mine or {}), **(theirs or {})} or None
            elif name == "disable":
                values[name] = mine | theirs
            else:
                values[name] = mine if theirs is None else theirs
        return Settings(**values)


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One entry of ``models:``: a path or glob as written, its own settings, the line of its path."""

    path: str
    settings: Settings
    line: int


@dataclass(frozen=True, kw_only=True)
class WaiverEntry:
    """One entry of ``waivers:``: a check accepted for the models matching a glob, until a date."""

    check: str
    model: str
    reason: str
    expires: datetime.date | None = None


@dataclass(frozen=True, kw_only=True)
class ConfigFile:
    """A loaded config: the file it came from, the defaults, the model entries and the waivers."""

    path: Path
    defaults: Settings
    models: tuple[ModelEntry, ...]
    waivers: tuple[WaiverEntry, ...]
    trajectory: tuple[TrajectoryEntry, ...] = ()  # `stabaudit trajectory`: checkpoints of one run


@dataclass(frozen=True, kw_only=True)
class TrajectoryEntry:
    """One entry of ``trajectory:``: a checkpoint path (a glob only without steps), its training
    step (None: the checkpoints' index, in sorted glob order), the line of its path."""

    path: str
    step: int | None
    line: int


# ---- the YAML as written (validated strictly; ``context={"base": <config dir>}``) -----------------
def _not_nan(value: float) -> float:
    # inf stays allowed: a threshold of .inf switches a check's limit off.
    if math.isnan(value):
        raise _error("expected a number")
    return value


def _size(value: object) -> object:
    from stabaudit.limits import parse_size

    if isinstance(value, bool) or not isinstance(value, int | str):
        return value  # left to the strict int check, which refuses it
    try:
        return parse_size(value)
    except UsageError as exc:
        # parse_size speaks of the command-line option; keep only its reason.
        reason = str(exc).split(": ", 1)[-1]
        raise _error(reason) from None


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date(value: object) -> object:
    if isinstance(value, datetime.datetime):
        raise _error("expected a date YYYY-MM-DD, not a date and time")
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError as exc:
            raise _error(f"expected a date YYYY-MM-DD ({exc})") from None
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise _error("expected a non-empty reason")
    return value


CheckId = Annotated[str, Field(pattern=CHECK_ID)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, value: object) -> object:
        # An empty value (`seed:`) is a mistake, not "not set": not setting a key is how to leave it out.
        if value is None:
            raise PydanticCustomError("null", "empty value")
        return value


class ChecksInput(_Input):
    disable: list[CheckId] = Field(default_factory=list)


def _path_text(value: str) -> str:
    """A path or glob without NUL or other control characters (stabaudit.paths)."""
    from stabaudit.paths import control_problem

    problem = control_problem(value)
    if problem:
        raise _error(problem)
    return value


PathText = Annotated[str, Field(min_length=1), AfterValidator(_path_text)]


def _npz_file(value: str, info: ValidationInfo) -> str:
    base = Path((info.context or {}).get("base", "."))
    _path_text(value)
    if Path(value).suffix.lower() != ".npz":
        raise _error(f"expected a .npz file, not {value!r}")
    if not (base / value).is_file():
        raise _error(f"no such file {value!r}")
    return value


class TrainingInput(_Input):
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    optimizer: Optimizer = "sgd"
    momentum: Unit | None = None
    betas: Annotated[list[Unit], Field(min_length=2, max_length=2)] | None = None
    loss: LossName = "mse"
    data: str
    second_moment: str | None = None
    noise: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    parameters: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None

    _files = field_validator("data", "second_moment")(_npz_file)

    @model_validator(mode="after")
    def _fits_optimizer(self) -> TrainingInput:
        # a setting the chosen optimizer ignores is most likely a mistake in the optimizer's name
        if self.momentum is not None and self.optimizer != "momentum":
            raise _error("momentum is only used with optimizer: momentum")
        for name in ("betas", "second_moment"):
            if getattr(self, name) is not None and self.optimizer != "adam":
                raise _error(f"{name} is only used with optimizer: adam")
        return self

    def to_settings(self, base: Path) -> TrainingSettings:
        def absolute(p: str) -> Path:
            return Path(os.path.normpath(base.absolute() / p))

        return TrainingSettings(
            learning_rate=self.learning_rate, optimizer=self.optimizer, momentum=self.momentum,
            betas=(self.betas[0], self.betas[1]) if self.betas is not None else None, loss=self.loss,
            data=absolute(self.data),
            second_moment=absolute(self.second_moment) if self.second_moment is not None else None,
            noise=self.noise,
            parameters=tuple(self.parameters) if self.parameters is not None else None,
        )


class DomainInput(_Input):
    """``domain:``: {low, high} (the box, sampled uniformly), {mean, std} (normal: sampled only,
    no bounded audit domain), each a number, a list with one number per channel, or nested lists
    that broadcast to the model's input shape; or {ball: EPS} (linf balls around the sample
    inputs) or {margin: M} (the samples' box widened by M), audit domains built from --inputs."""

    low: Any = None
    high: Any = None
    mean: Any = None
    std: Any = None
    ball: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    margin: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None

    @field_validator("low", "high", "mean", "std")
    @classmethod
    def _values(cls, value: object, info: ValidationInfo) -> Values:
        try:
            values = values_of(value)
        except ValueError as exc:
            raise _error(str(exc)) from None
        if info.field_name == "std" and min(values.values) < 0:
            raise _error("expected std >= 0 for every entry")
        return values

    @model_validator(mode="after")
    def _one_form(self) -> DomainInput:
        given = {name for name in ("low", "high", "mean", "std", "ball", "margin") if getattr(self, name) is not None}
        if given not in ({"low", "high"}, {"mean", "std"}, {"ball"}, {"margin"}):
            raise _error(
                "expected one of {low, high} (a box), {mean, std} (normal), {ball} or {margin}"
                + (f", got {{{', '.join(sorted(given))}}}" if given else "")
            )
        try:
            check_domain(self.to_domain())
        except ValueError as exc:
            raise _error(str(exc)) from None
        return self

    def to_domain(self) -> Domain:
        if self.ball is not None:
            return BallDomain(eps=self.ball)
        if self.margin is not None:
            return MarginDomain(margin=self.margin)
        if self.low is not None:
            return UniformDomain(low=self.low, high=self.high)
        return NormalDomain(mean=self.mean, std=self.std)


class SettingsInput(_Input):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)
    thresholds: dict[str, Annotated[float, AfterValidator(_not_nan)]] = Field(default_factory=dict)
    severity: dict[str, SeverityName] = Field(default_factory=dict)
    input_shape: (Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
                  | dict[str, Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]] | None) = None
    start: str | None = Field(default=None, alias="from", min_length=1)
    perturb: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    end: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = Field(default=None, alias="to")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    fail_on: FailOn | None = None
    method: Method | None = None
    budget: Seconds | None = None
    timeout: Seconds | None = None
    eps: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    inputs: str | None = None
    max_memory: Annotated[int, BeforeValidator(_size)] | None = None
    checks: ChecksInput | None = None
    training: TrainingInput | None = None
    domain: DomainInput | None = None
    samples: Annotated[int, Field(gt=0, le=MAX_SAMPLE_COUNT)] | None = None
    trust_torchscript: bool | None = None
    arguments: dict[Annotated[str, Field(pattern=ARGUMENT_NAME)], ArgumentInput] | None = None

    @field_validator("inputs")
    @classmethod
    def _inputs_exist(cls, value: str, info: ValidationInfo) -> str:
        base = Path((info.context or {}).get("base", "."))
        _path_text(value)
        if Path(value).suffix.lower() not in INPUT_SUFFIXES:
            raise _error(f"expected a .npz or .npy file, not {value!r}")
        if not (base / value).is_file():
            raise _error(f"no such file {value!r}")
        return value

    def to_settings(self, base: Path) -> Settings:
        """The public settings; ``inputs`` made absolute against ``base`` (the config's directory)."""
        inputs = Path(os.path.normpath(base.absolute() / self.inputs)) if self.inputs is not None else None
        return Settings(
            thresholds=dict(self.thresholds), severity=dict(self.severity),
            input_shape=tuple(self.input_shape) if isinstance(self.input_shape, list) else None,
            input_shapes={k: tuple(v) for k, v in self.input_shape.items()} if isinstance(self.input_shape, dict)
            else None,
            start=self.start,
            perturb=tuple(self.perturb) if self.perturb is not None else None,
            end=tuple(self.end) if self.end is not None else None,
            seed=self.seed, fail_on=self.fail_on, method=self.method, budget=self.budget, timeout=self.timeout,
            eps=self.eps, inputs=inputs, max_memory=self.max_memory,
            disable=frozenset(self.checks.disable) if self.checks is not None else frozenset(),
            training=self.training.to_settings(base) if self.training is not None else None,
            domain=self.domain.to_domain() if self.domain is not None else None, samples=self.samples,
            trust_torchscript=self.trust_torchscript,
            arguments=dict(self.arguments) if self.arguments is not None else None,
        )


SETTINGS_KEYS: tuple[str, ...] = tuple(SettingsInput.model_fields)


class ModelInput(SettingsInput):
    path: PathText


class WaiverInput(_Input):
    check: CheckId
    model: PathText = "*"
    reason: Annotated[str, AfterValidator(_non_blank)]
    expires: Annotated[datetime.date, BeforeValidator(_date)] | None = None


class TrajectoryInput(_Input):
    path: PathText
    step: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _glob_without_step(self) -> TrajectoryInput:
        # a glob names several checkpoints: one step cannot belong to all of them
        if self.step is not None and glob.has_magic(self.path):
            raise _error(f"a glob ({self.path!r}) takes no step: list each checkpoint with its step, or omit the steps")
        return self


def _steps_increase(entries: list[TrajectoryInput]) -> list[TrajectoryInput]:
    given = [e.step is not None for e in entries]
    if any(given) and not all(given):
        raise _error("give a step for every checkpoint or for none (then step = position, sorted glob order)")
    steps = [e.step for e in entries if e.step is not None]
    for i, (before, after) in enumerate(zip(steps, steps[1:], strict=False)):
        if after <= before:
            raise _error(f"expected strictly increasing steps: trajectory[{i + 1}] has step {after} after {before}")
    return entries


class ConfigInput(SettingsInput):
    """The whole file; settings at the top level are the old flat form and mean ``defaults:``."""

    defaults: SettingsInput | None = None
    models: list[ModelInput] | None = None
    waivers: list[WaiverInput] | None = None
    trajectory: Annotated[list[TrajectoryInput], AfterValidator(_steps_increase)] | None = None


# ---- pydantic errors in our words --------------------------------------------------------------------
# field -> (message for the value itself, message for an item or value inside it; None: report the
# error at the field itself, a list whose one bad item is the whole field's problem)
_EXPECTED: dict[str, tuple[str, str | None]] = {
    "thresholds": ("expected a mapping NAME: number", "expected a number"),
    "severity": ("expected a mapping CHECK_ID: error|warning|info", "expected one of error, warning, info"),
    "input_shape": ("expected a list of positive integers (the first input) or a mapping NAME: list", None),
    "start": ("expected the name of a tensor of the model", None),
    "perturb": ("expected a list of input names", None),
    "end": ("expected a list of tensor names", None),
    "seed": (f"expected a non-negative integer (at most {MAX_SEED})", None),
    "fail_on": ("expected one of " + ", ".join(FAIL_ON), None),
    "method": ("expected one of " + ", ".join(METHODS), None),
    "budget": ("expected a finite number of seconds > 0", None),
    "timeout": ("expected a finite number of seconds > 0", None),
    "eps": ("expected a finite number >= 0", None),
    "inputs": ("expected the path of a .npz or .npy file", None),
    "max_memory": ("expected a size such as 8G, 512M, 25% or a number of bytes", None),
    "checks": ("expected a mapping such as {disable: [SA101]}", None),
    "disable": ("expected a list of check ids such as [SA101, SA303]", "expected a check id such as SA101"),
    "defaults": ("expected a mapping of settings", None),
    "models": ("expected a list of models, each a mapping with a 'path'", "expected a mapping with a 'path'"),
    "waivers": ("expected a list of waivers", "expected a mapping with 'check' and 'reason'"),
    "path": ("expected a file path or glob", None),
    "check": ("expected a check id such as SA101", None),
    "model": ("expected a glob over model paths", None),
    "reason": ("expected a non-empty reason", None),
    "expires": ("expected a date YYYY-MM-DD", None),
    "trajectory": ("expected a list of checkpoints, each a mapping {path, step}", "expected a mapping {path, step}"),
    "step": ("expected a training step, an integer >= 0", None),
    "training": ("expected a mapping with learning_rate, optimizer, loss and data", None),
    "learning_rate": ("expected a finite number > 0", None),
    "optimizer": ("expected one of " + ", ".join(OPTIMIZERS), None),
    "momentum": ("expected a number in [0, 1)", None),
    "betas": ("expected a list of two numbers [b1, b2], each in [0, 1)", "expected a number in [0, 1)"),
    "loss": ("expected one of " + ", ".join(LOSSES), None),
    "data": ("expected the path of a .npz file with arrays x and y", None),
    "second_moment": ("expected the path of a .npz file (Adam's v by parameter name)", None),
    "noise": ("expected a finite number >= 0 (the gradient-noise variance)", None),
    "domain": ("expected a mapping {low, high} (a box), {mean, std} (normal), {ball: EPS} or {margin: M}", None),
    "ball": ("expected a finite number >= 0 (the linf radius around each sample)", None),
    "margin": ("expected a finite number >= 0 (added around the samples' box)", None),
    "samples": (f"expected a positive integer (at most {MAX_SAMPLE_COUNT})", None),
    "trust_torchscript": ("expected true or false", None),
    "arguments": ("expected a mapping NAME: value (forward's non-tensor arguments of a TorchScript model, "
                  "integer and bool inputs of an ONNX model)",
                  "expected a number, true/false, a string, null or a list of those"),
    "low": ("expected a number or a list of numbers", None),
    "high": ("expected a number or a list of numbers", None),
    "mean": ("expected a number or a list of numbers", None),
    "std": ("expected a number or a list of numbers", None),
}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def explain(loc: tuple[int | str, ...], kind: str, message: str) -> tuple[tuple[int | str, ...], str]:
    """(where, what) for one pydantic error: the location to report (a prefix of ``loc`` where the
    whole value is at fault) and the message in our words."""
    model: type[BaseModel] = ConfigInput
    field: str | None = None
    end = 0  # loc[:end] reaches `field`
    i = 0
    while i < len(loc):
        segment = loc[i]
        if not (isinstance(segment, str) and segment in model.model_fields):
            break
        field, end = segment, i + 1
        nested = _nested_model(model.model_fields[segment].annotation)
        if nested is None:
            break
        model = nested
        i += 1
        while i < len(loc) and isinstance(loc[i], int):
            i += 1
    if kind == "extra_forbidden":
        import difflib

        key, known = str(loc[-1]), sorted(model.model_fields)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        return loc, f"unknown key ({hint})"
    if kind == "missing":
        return loc, "missing (required)"
    if kind == CUSTOM:
        return loc, message
    if field is None:
        return loc, "expected a mapping of settings"
    whole, item = _EXPECTED[field]
    if field == "arguments" and end < len(loc):  # past the name: pydantic's union branch tags
        if "[key]" in loc[end:]:
            return loc[: end + 1], "expected an argument name (letters, digits and _, not starting with a digit)"
        return loc[: end + 1], item or whole
    if end == len(loc):
        return loc, whole
    if item is None:
        return loc[:end], whole
    return loc, item
