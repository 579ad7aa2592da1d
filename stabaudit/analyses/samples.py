"""Sample inputs for the data-dependent channels: input domains, seeded draws, shape checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stabaudit.errors import UsageError
from stabaudit.ir.graph import Graph

if TYPE_CHECKING:
    from stabaudit.analyses.activations import ActivationResult
    from stabaudit.analyses.parameters import ParameterResult

DEFAULT_SAMPLE_COUNT = 64
MAX_SAMPLE_COUNT = 100_000


@dataclass(frozen=True, kw_only=True)
class Values:
    """One domain parameter as written: its numbers (row-major) and their shape.

    Broadcast to the model's input shape: shape () is one value for every entry; shape (C,) is
    one value per channel (axis 1 of the input, the feature axis of an [1, d] input); any other
    shape broadcasts to the whole input shape, batch axis included, by numpy's rules.
    """

    values: tuple[float, ...]
    shape: tuple[int, ...] = ()

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64).reshape(self.shape)


@dataclass(frozen=True, kw_only=True)
class UniformDomain:
    """The box low <= x <= high (element-wise); samples are uniform in it."""

    low: Values
    high: Values


@dataclass(frozen=True, kw_only=True)
class NormalDomain:
    """Independent normal entries x ~ N(mean, std^2) (element-wise); no bounded support."""

    mean: Values
    std: Values


@dataclass(frozen=True, kw_only=True)
class BallDomain:
    """The union of the linf balls {x : ||x - x_i||_inf <= eps} around the sample inputs x_i (an
    audit domain only: it is built from the samples, never sampled)."""

    eps: float


@dataclass(frozen=True, kw_only=True)
class MarginDomain:
    """The box [min_i x_i - margin, max_i x_i + margin] (entry by entry) of the sample inputs x_i
    widened by ``margin`` (an audit domain only: built from the samples, never sampled)."""

    margin: float


Domain = UniformDomain | NormalDomain | BallDomain | MarginDomain


@dataclass(frozen=True, kw_only=True)
class SampleEvidence:
    """What the sample-based checks read (SA301, SA303, SA401); None parts were not computed."""

    count: int
    source: str  # SampleInfo.source of the report: file, array, domain-uniform, domain-normal
    activations: ActivationResult | None = None
    parameters: ParameterResult | None = None
    message: str = ""  # why a part is missing (an operator the analyses do not run, ...)


def values_of(data: object) -> Values:
    """A number or (nested, rectangular) list of finite numbers as Values; ValueError otherwise."""
    if isinstance(data, bool) or data is None:
        raise ValueError("expected a number or a list of numbers")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("expected a number or a rectangular list of numbers") from None
    if _has_bool(data):
        raise ValueError("expected a number or a list of numbers")
    if array.size == 0:
        raise ValueError("expected at least one number")
    if not np.all(np.isfinite(array)):
        raise ValueError("expected finite numbers")
    return Values(values=tuple(float(v) for v in array.reshape(-1)), shape=tuple(array.shape))


def _has_bool(data: object) -> bool:
    if isinstance(data, bool):
        return True
    if isinstance(data, list | tuple):
        return any(_has_bool(item) for item in data)
    return False


def check_domain(domain: Domain) -> None:
    """ValueError unless the parameters fit together: low <= high, std >= 0, shapes compatible."""
    match domain:
        case UniformDomain(low=low, high=high):
            a, b = low.array(), high.array()
            try:
                below = np.all(a <= b)
            except ValueError:
                raise ValueError(f"low {a.shape} and high {b.shape} have incompatible shapes") from None
            if not below:
                raise ValueError("expected low <= high for every entry")
        case NormalDomain(mean=mean, std=std):
            m, s = mean.array(), std.array()
            try:
                np.broadcast_shapes(m.shape, s.shape)
            except ValueError:
                raise ValueError(f"mean {m.shape} and std {s.shape} have incompatible shapes") from None
            if not np.all(s >= 0):
                raise ValueError("expected std >= 0 for every entry")
        case BallDomain(eps=eps):
            if not (0 <= eps < float("inf")):
                raise ValueError(f"expected a finite ball radius >= 0, got {eps}")
        case MarginDomain(margin=margin):
            if not (0 <= margin < float("inf")):
                raise ValueError(f"expected a finite margin >= 0, got {margin}")


def domain_parameters(domain: Domain) -> dict[str, Values]:
    """The domain's parameters by name, as written (the report's record of the domain)."""
    match domain:
        case UniformDomain(low=low, high=high):
            return {"low": low, "high": high}
        case NormalDomain(mean=mean, std=std):
            return {"mean": mean, "std": std}
        case BallDomain(eps=eps):
            return {"ball": Values(values=(eps,))}
        case MarginDomain(margin=margin):
            return {"margin": Values(values=(margin,))}


def domain_source(domain: Domain) -> str:
    match domain:
        case UniformDomain():
            return "domain-uniform"
        case NormalDomain():
            return "domain-normal"
        case BallDomain() | MarginDomain():
            raise ValueError("a domain built from the samples is never sampled")


def broadcast(name: str, values: Values, input_shape: tuple[int, ...]) -> np.ndarray:
    """The parameter broadcast to ``input_shape`` (Values' rules); UsageError when it does not fit."""
    a = values.array()
    if a.ndim == 1 and len(input_shape) >= 2:
        if a.shape[0] != input_shape[1]:
            raise UsageError(
                f"domain.{name}: {a.shape[0]} values, but the model's input {list(input_shape)} "
                f"has {input_shape[1]} channels (axis 1): give one value per channel, one number, "
                "or nested lists in the input's shape"
            )
        a = a.reshape((1, a.shape[0]) + (1,) * (len(input_shape) - 2))
    try:
        return np.broadcast_to(a, input_shape).astype(np.float64)
    except ValueError:
        raise UsageError(
            f"domain.{name}: values of shape {list(a.shape)} do not broadcast to the model's input "
            f"shape {list(input_shape)}"
        ) from None


def is_sampled(domain: Domain) -> bool:
    """Whether samples are drawn from the domain when no inputs are given (box or normal)."""
    return isinstance(domain, UniformDomain | NormalDomain)


def parse_domain(text: str) -> Domain:
    """``--domain``: ``LOW,HIGH`` (a box, every entry), ``ball:EPS`` (linf balls around the sample
    inputs) or ``margin:M`` (the samples' box widened by M); ValueError with the reason."""
    t = text.strip()
    kind, sep, rest = t.partition(":")
    try:
        if sep and kind.strip().lower() == "ball":
            domain: Domain = BallDomain(eps=float(rest))
        elif sep and kind.strip().lower() == "margin":
            domain = MarginDomain(margin=float(rest))
        else:
            low, comma, high = t.partition(",")
            if not comma:
                raise ValueError
            domain = UniformDomain(low=Values(values=(float(low),)), high=Values(values=(float(high),)))
    except ValueError:
        raise ValueError(f"expected LOW,HIGH, ball:EPS or margin:M, got {text!r}") from None
    if isinstance(domain, UniformDomain) and not all(np.isfinite(domain.low.values + domain.high.values)):
        raise ValueError(f"expected finite LOW and HIGH, got {text!r}")
    check_domain(domain)
    return domain


def draw_samples(domain: Domain, input_shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """``count`` seeded samples [count, *input_shape] in float64 (numpy's PCG64 from ``seed``):
    the same domain, shape, count and seed give the same array on every platform."""
    if count < 1:
        raise UsageError(f"samples: {count}: expected a positive count")
    rng = np.random.default_rng(seed)
    shape = (count, *input_shape)
    match domain:
        case UniformDomain(low=low, high=high):
            a, b = broadcast("low", low, input_shape), broadcast("high", high, input_shape)
            # low + (high - low) * u, u in [0, 1); clipped so rounding never leaves the box
            return np.clip(a + (b - a) * rng.random(shape), a, b)
        case NormalDomain(mean=mean, std=std):
            m, s = broadcast("mean", mean, input_shape), broadcast("std", std, input_shape)
            return m + s * rng.standard_normal(shape)
        case BallDomain() | MarginDomain():
            raise UsageError("domain: a ball or margin domain is built around the sample inputs: give "
                             "--inputs (or use a box domain LOW,HIGH)")


def input_size(graph: Graph) -> int:
    return int(sum(int(np.prod(spec.shape)) for spec in graph.inputs))


def conform_samples(samples: np.ndarray, graph: Graph, *, what: str = "--inputs") -> np.ndarray:
    """The samples as [N, *input_shape] (float64); UsageError unless each sample has the model's
    input shape, the same without its leading batch axes of size 1, or is flat with as many
    entries (several model inputs: flat, the inputs' entries concatenated)."""
    x = np.asarray(samples, dtype=np.float64)
    n_in = input_size(graph)
    single = len(graph.inputs) == 1
    shape = tuple(graph.inputs[0].shape) if single else (n_in,)
    squeezed = shape
    while len(squeezed) > 1 and squeezed[0] == 1:
        squeezed = squeezed[1:]
    one = tuple(x.shape[1:])
    if x.ndim >= 1 and x.shape[0] >= 1 and (one in (shape, squeezed, (n_in,)) or (one == () and n_in == 1)):
        return x.reshape((x.shape[0], *shape))
    expected = " or ".join(dict.fromkeys(f"[N, {', '.join(map(str, s))}]" for s in (shape, squeezed, (n_in,))))
    raise UsageError(
        f"{what}: samples of shape {list(x.shape)} do not match the model's input shape "
        f"{list(shape)}: expected {expected}"
    )


def file_sha256(path: str | Path) -> str | None:
    """The file's sha256 (hex), None when it cannot be read (its loader reports why)."""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def array_sha256(samples: np.ndarray) -> str:
    """The sha256 of the samples' float64 bytes (C order): names an array given without a file."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float64).tobytes()).hexdigest()
