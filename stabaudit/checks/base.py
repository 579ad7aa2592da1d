"""Check specifications, the evidence they read, the policy they apply, and the registry."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

from stabaudit.errors import UsageError
from stabaudit.registry import Registry
from stabaudit.report.model import (
    Equivalence,
    Finding,
    GlobalLipschitz,
    Layer,
    RuleInfo,
    Severity,
    Status,
    Waiver,
)

if TYPE_CHECKING:
    from stabaudit.analyses.samples import SampleEvidence
    from stabaudit.analyses.training import TrainingResult
    from stabaudit.checks.residual import ResidualEvidence


@dataclass(frozen=True, kw_only=True)
class LocalEvidence:
    """The local (Clarke) bound over eps-balls around the sample inputs, for SA302."""

    upper: float | None
    eps: float
    norm: str
    samples: int
    message: str = ""
    # per activation layer, summed over the samples' balls: (layer, stably active, stably
    # inactive, unstable: the pre-activation interval straddles a kink, Clarke slope interval)
    units: tuple[tuple[str, int, int, int], ...] = ()
    # the certified bound over the audit domain when every ball above lies in one of its boxes
    # (a ball or margin domain around these samples, or a box that holds them): a local bound too
    domain_upper: float | None = None
    note: str = ""  # what the local analysis left out (the budget did not buy it), for the message


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """Everything the checks may read: analysis results, never the engine itself."""

    layers: tuple[Layer, ...]
    lipschitz: GlobalLipschitz
    product_upper: float | None  # the composed layer-gain bound (prod s_l over the graph)
    depth: int  # number of linear/conv layers (L in THEORY.md)
    nonfinite: Mapping[str, int]  # layer name -> count of NaN/Inf parameters
    equivalence: Equivalence
    operators: int
    source_ops: Mapping[str, int] = field(default_factory=dict)
    baseline: Mapping[str, Any] | None = None  # a previous JSON report of the same model (SA001)
    local: LocalEvidence | None = None  # SA302; None without sample inputs
    waivers: tuple[Waiver, ...] = ()  # the config waivers that apply to this model (SA002)
    today: str = ""  # the report's date, ISO (waiver expiry)
    training: TrainingResult | None = None  # the update channel (SA501-SA503); None without a spec
    sampled: SampleEvidence | None = None  # SA301, SA303, SA401; None without samples
    residual: ResidualEvidence | None = None  # SA201, SA202: the residual blocks (residual channel)
    # the bracket over the audit domain (--domain): SA101-SA103 judge over it when present
    domain_lipschitz: GlobalLipschitz | None = None
    domain_product_upper: float | None = None  # the composed layer gains over the domain (SA103)


@dataclass(frozen=True, kw_only=True)
class CheckPolicy:
    """Thresholds and severities after defaults, config and command line are merged."""

    thresholds: Mapping[str, float] = field(default_factory=dict)  # by threshold key
    severities: Mapping[str, Severity] = field(default_factory=dict)  # by check id
    disabled: frozenset[str] = frozenset()  # check ids turned off (reported as skipped)


@dataclass(frozen=True, kw_only=True)
class CheckSpec:
    id: str
    name: str
    summary: str
    doc: str  # the user documentation (the function's docstring): `stabaudit explain`
    severity: Severity
    threshold_key: str | None
    default_threshold: float | None
    run: Callable[[Evidence, CheckContext], Finding]
    # a threshold key whose user value this check also uses when its own is unset (SA202 and
    # SA302 judge against K_max, SA101's `lipschitz`); it never makes this check an error
    inherits: str | None = None


@dataclass(frozen=True, kw_only=True)
class CheckContext:
    """What one check gets: its spec, its effective threshold and severity."""

    spec: CheckSpec
    threshold: float | None
    severity: Severity
    user_threshold: bool = False  # the user set this check's own threshold (config or CLI)

    def would_pass(self, upper: float | None, what: str = "the certified upper bound") -> str:
        """The first-run advice for a check judged on a default threshold: the threshold that
        the certified upper bound ``upper`` proves today (rounded up, so that it does pass), or ""
        when the user set the threshold, the check has no key, or there is no certified bound."""
        if self.user_threshold or self.spec.threshold_key is None or upper is None or not math.isfinite(upper):
            return ""
        return (
            f"; default threshold {fmt(self.threshold)}, not set by the user: informational; "
            f"would pass with --threshold {self.spec.threshold_key}={fmt_up(upper)} ({what})"
        )

    def finding(
        self, status: Status, value: object, message: str, locations: tuple[str, ...] = ()
    ) -> Finding:
        return Finding(
            locations=locations,
            id=self.spec.id,
            name=self.spec.name,
            status=status,
            severity=self.severity,
            value=value,
            threshold=self.threshold,
            message=message,
        )


CHECKS: Registry[str, CheckSpec] = Registry("checks")


def check(
    id: str,
    name: str,
    *,
    severity: Severity,
    threshold_key: str | None = None,
    default_threshold: float | None = None,
    inherits: str | None = None,
) -> Callable[[Callable[[Evidence, CheckContext], Finding]], Callable[[Evidence, CheckContext], Finding]]:
    """Register a check; its docstring is its documentation, the first line its summary."""

    def decorate(fn: Callable[[Evidence, CheckContext], Finding]) -> Callable[[Evidence, CheckContext], Finding]:
        doc = inspect.cleandoc(fn.__doc__ or "")
        CHECKS.add(
            id,
            CheckSpec(
                id=id,
                name=name,
                summary=doc.splitlines()[0] if doc else name,
                doc=doc,
                severity=severity,
                threshold_key=threshold_key,
                default_threshold=default_threshold,
                run=fn,
                inherits=inherits,
            ),
        )
        return fn

    return decorate


def rule_catalogue() -> tuple[RuleInfo, ...]:
    """Every check's id, name, documentation and defaults, in id order."""
    return tuple(
        RuleInfo(
            id=spec.id,
            name=spec.name,
            summary=spec.summary,
            doc=spec.doc,
            severity=spec.severity,
            default_threshold=spec.default_threshold,
        )
        for spec in (CHECKS.get(key) for key in sorted(CHECKS))
    )


def threshold_keys() -> dict[str, str]:
    """Every accepted threshold name (key or check id) -> the canonical key."""
    keys: dict[str, str] = {}
    for check_id in CHECKS:
        spec = CHECKS.get(check_id)
        if spec.threshold_key:
            keys[spec.threshold_key] = spec.threshold_key
            keys[spec.id] = spec.threshold_key
            keys[spec.name] = spec.threshold_key
    return keys


def canonical_threshold(name: str) -> str:
    keys = threshold_keys()
    if name not in keys:
        known = ", ".join(sorted({k for k in keys.values()}))
        close = difflib.get_close_matches(name, sorted(keys), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown threshold {name!r}{hint}; known: {known} (or a check id such as SA101)")
    return keys[name]


def unknown_check_ids(ids: Iterable[str]) -> str | None:
    """A message naming the first id that is no registered check (with a did-you-mean), or None."""
    for check_id in sorted(ids):
        if check_id not in CHECKS:
            close = difflib.get_close_matches(check_id, sorted(CHECKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown check id {check_id!r}{hint}"
    return None


def check_context(spec: CheckSpec, policy: CheckPolicy) -> CheckContext:
    """The effective threshold and severity of one check. A check judged on a default threshold
    keeps its declared severity (info for the stability checks: a first run gates on nothing the
    user did not ask for, yet every status is computed and reported), and is an error once the
    user sets its own key; a key it only inherits (SA202 and SA302 use
    K_max) gives the value, never the severity. An explicit `severity:` entry wins over both."""
    threshold = spec.default_threshold
    severity = spec.severity
    user = False
    if spec.threshold_key:
        if spec.threshold_key in policy.thresholds:
            threshold, severity, user = policy.thresholds[spec.threshold_key], Severity.ERROR, True
        elif spec.inherits and spec.inherits in policy.thresholds:
            threshold = policy.thresholds[spec.inherits]
    severity = policy.severities.get(spec.id, severity)
    return CheckContext(spec=spec, threshold=threshold, severity=severity, user_threshold=user)


def run_checks(evidence: Evidence, policy: CheckPolicy) -> tuple[Finding, ...]:
    """Every registered check in id order, each with check_context's threshold and severity.
    A disabled check is reported as skipped; failed findings a valid waiver covers carry it."""
    from stabaudit.checks.waivers import apply_waivers

    findings = []
    for check_id in sorted(CHECKS):
        spec = CHECKS.get(check_id)
        ctx = check_context(spec, policy)
        if check_id in policy.disabled:
            findings.append(ctx.finding(Status.SKIPPED, None, "disabled by the config"))
            continue
        findings.append(spec.run(evidence, ctx))
    from stabaudit.checks.baseline import with_status_changes

    found = with_status_changes(tuple(findings), evidence.baseline)
    return apply_waivers(found, evidence.waivers, evidence.today)


def bracket_status(lower: float | None, upper: float | None, threshold: float, *, certified: bool) -> Status:
    """THEORY.md's three-way status: pass only when a certified upper bound proves the condition,
    fail only when a sound lower bound proves the violation, inconclusive otherwise."""
    if upper is not None and certified and math.isfinite(upper) and upper <= threshold:
        return Status.PASS
    if lower is not None and lower > threshold:
        return Status.FAIL
    return Status.INCONCLUSIVE


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def fmt_up(x: float) -> str:
    """x rounded up to 6 significant digits: a threshold printed from it is >= x, so a bound
    <= x also passes it (the exact decimal value of x is ceiled, then the nearest float of that
    decimal is still >= x because rounding to nearest is monotone)."""
    if x == 0.0:
        return "0"
    d = Decimal(x)
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - 5), rounding=ROUND_CEILING)
    return f"{float(q):.6g}"


def branch_switch_note(lip: GlobalLipschitz, symbol: str) -> tuple[bool, str]:
    """Whether the model's additive term of branch switches is absent or finite and certified
    (no pass otherwise), and the message suffix that states it for the figure ``symbol``: the
    figure is about the smooth part, the executed model adds the term (lipschitz.additive)."""
    add = lip.additive
    if add is None:
        return True, ""
    ok = add.certified and add.value is not None and math.isfinite(add.value)
    sound = "certified" if ok else "not certified"
    where = ", ".join(add.sources) or "no layer"
    return ok, (
        f"; {symbol} is for the smooth part: as executed, ||F(x) - F(y)|| <= {symbol} ||x - y|| + "
        f"{fmt(add.value)} ({sound} additive term of the branch switches in {where})"
    )
