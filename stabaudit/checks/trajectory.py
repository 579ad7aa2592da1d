"""Trajectory channel: SA601 the supremum over checkpoints, SA602 the growth exponent across them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from stabaudit.checks.base import (
    CHECKS,
    CheckContext,
    CheckPolicy,
    Evidence,
    bracket_status,
    check,
    check_context,
    fmt,
)
from stabaudit.report.model import (
    ChannelBracket,
    ChannelSummary,
    Finding,
    GrowthFit,
    Severity,
    Status,
    TrajectoryChannel,
    TrajectoryPoint,
    Waiver,
)

NEEDS_TRAJECTORY = "needs several checkpoints (stabaudit trajectory)"
MIN_FIT_POINTS = 3  # two points always lie on a line: a fit needs a third to mean anything
# The threshold keys of the channels SA601 judges: a user value for any of them makes SA601 an error,
# and then only the channels whose key the user set (and the sharpness, whose limit 2/eta comes from
# the user's own training spec) decide its status; the others are reported beside them.
CHANNEL_KEYS: dict[str, TrajectoryChannel] = {
    "lipschitz": TrajectoryChannel.LIPSCHITZ,
    "layer_lipschitz": TrajectoryChannel.LAYER,
    "exponent": TrajectoryChannel.EXPONENT,
    "residual_growth": TrajectoryChannel.RESIDUAL,
}


@dataclass(frozen=True, kw_only=True)
class TrajectoryEvidence:
    """What SA601 and SA602 read: every checkpoint in step order, with its channel brackets and
    each channel's limit there (a checkpoint that could not be audited has no channels)."""

    points: tuple[TrajectoryPoint, ...]


# ---- the maths: suprema and least-squares exponents ------------------------------------------------
def _bracket(point: TrajectoryPoint, channel: TrajectoryChannel) -> ChannelBracket | None:
    return next((b for b in point.channels if b.channel is channel), None)


def _proved_within(b: ChannelBracket | None) -> bool:
    return (
        b is not None
        and b.limit is not None
        and b.certified
        and b.upper is not None
        and math.isfinite(b.upper)
        and b.upper <= b.limit
    )


def _proved_beyond(b: ChannelBracket | None) -> bool:
    return b is not None and b.limit is not None and b.lower is not None and b.lower > b.limit


def channel_summaries(points: Sequence[TrajectoryPoint]) -> tuple[ChannelSummary, ...]:
    """Each channel that some checkpoint has, in enum order: sup_t upper_t (None unless every
    checkpoint has an upper bound), sup_t lower_t over the checkpoints that have one (a sound lower
    bound of sup_t K_t), and SA601's status for the channel: pass when every checkpoint's certified
    upper bound is within its limit, fail when some sound lower bound exceeds it, inconclusive
    otherwise, skipped when the channel has no limit."""
    out = []
    for channel in TrajectoryChannel:
        brackets = [_bracket(p, channel) for p in points]
        present = [b for b in brackets if b is not None]
        if not present:
            continue
        uppers = [b.upper if b is not None else None for b in brackets]
        sup_upper = max(u for u in uppers if u is not None) if all(u is not None for u in uppers) else None
        lowers = [b.lower for b in present if b.lower is not None]
        limits = [b.limit for b in present if b.limit is not None]
        if not limits:
            status = Status.SKIPPED
        elif any(_proved_beyond(b) for b in brackets):
            status = Status.FAIL
        elif all(_proved_within(b) for b in brackets):
            status = Status.PASS
        else:
            status = Status.INCONCLUSIVE
        out.append(
            ChannelSummary(
                channel=channel,
                sup_upper=sup_upper,
                sup_lower=max(lowers) if lowers else None,
                certified=all(b is not None and b.certified for b in brackets),
                limit=min(limits) if limits else None,
                status=status,
            )
        )
    return tuple(out)


def fit_growth(steps: Sequence[float], values: Sequence[float | None]) -> GrowthFit:
    """log v ~ a + b * step by ordinary least squares: b = sum (t - t_mean)(y - y_mean) /
    sum (t - t_mean)^2 with y = log v; residual = sqrt(mean((y - a - b t)^2)). None (with the
    reason) when some value is missing, not positive or not finite, or with fewer than 2 points."""
    n = len(steps)
    if n < 2:
        return GrowthFit(slope=None, intercept=None, residual=None, points=n, message="fewer than 2 checkpoints")
    if any(v is None or not (v > 0 and math.isfinite(v)) for v in values):
        return GrowthFit(
            slope=None, intercept=None, residual=None, points=n,
            message="some checkpoint has no positive finite bound",
        )
    ys = [math.log(v) for v in values if v is not None]
    ts = [float(t) for t in steps]
    t_mean = math.fsum(ts) / n
    y_mean = math.fsum(ys) / n
    sxx = math.fsum((t - t_mean) ** 2 for t in ts)
    if sxx == 0:
        return GrowthFit(slope=None, intercept=None, residual=None, points=n, message="all steps are equal")
    slope = math.fsum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / sxx
    intercept = y_mean - slope * t_mean
    residual = math.sqrt(math.fsum((y - intercept - slope * t) ** 2 for t, y in zip(ts, ys, strict=True)) / n)
    return GrowthFit(slope=slope, intercept=intercept, residual=residual, points=n)


def representation_fits(points: Sequence[TrajectoryPoint]) -> tuple[GrowthFit, GrowthFit]:
    """The growth fits of the global Lipschitz bracket: of K_upper and of K_lower against the step."""
    steps = [p.step for p in points]
    brackets = [_bracket(p, TrajectoryChannel.LIPSCHITZ) for p in points]
    upper = fit_growth(steps, [b.upper if b is not None else None for b in brackets])
    lower = fit_growth(steps, [b.lower if b is not None else None for b in brackets])
    return upper, lower


# ---- the checks ---------------------------------------------------------------------------------------
@check("SA601", "trajectory.bounded", severity=Severity.INFO)
def trajectory_bounded(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every stability channel stays within its limit at every checkpoint of a training run.

    Inequality: sup_t c(theta_t) <= c_max for each channel c of the Learning Stability Profile
    that the checkpoints' reports carry (SA601): the global Lipschitz constant K
    (limit K_max, SA101's threshold `lipschitz`, default 1), the largest layer gain max_l s_l
    (SA102's `layer_lipschitz`, default 1), the stability exponent Lambda (SA103's `exponent`,
    default 0), the residual depth growth when the model has residual blocks (SA202's limit,
    default K_max) and the loss sharpness lambda_max(H) when a training spec is given (each
    checkpoint's own stability limit, 2/eta for gradient descent).
    Status per channel: pass when every checkpoint's certified upper bound is within the limit,
    fail when some checkpoint's sound lower bound exceeds it, inconclusive otherwise (a bound
    that is not certified, or a checkpoint that could not be audited). SA601 fails when some
    channel fails, passes when every channel passes. The supremum is a statement about the
    checkpoints given, not about the steps between them.
    Inputs: several checkpoints of one run (`stabaudit trajectory CKPT... --steps ...` or a
    config `trajectory:` list); skipped in a single-model audit.
    Informational while every limit is a default (the status still judges every channel). A
    threshold set for some channel (`--threshold lipschitz=VALUE`, `layer_lipschitz`, `exponent`,
    `residual_growth`) makes it an error judged on the channels whose threshold was set (and the
    sharpness, whose limit comes from the training spec); the other channels are reported in the
    value and the message, informational. Reported together with SA602, never instead.
    """
    return ctx.finding(Status.SKIPPED, None, NEEDS_TRAJECTORY)


@check(
    "SA602", "trajectory.exponent", severity=Severity.INFO,
    threshold_key="growth_exponent", default_threshold=0.0,
)
def trajectory_exponent(ev: Evidence, ctx: CheckContext) -> Finding:
    """The growth exponent of the representation bound across checkpoints is at most g_max.

    Definition: the least-squares slope b of log K_t ~ a + b * t over the checkpoints (t the
    training step), for the certified upper bound K_upper and, beside it, for the sound lower
    bound K_lower, each with the root-mean-square residual of its fit (a large residual means
    the growth is not geometric and the slope summarizes it poorly). K_t = K_0 * exp(b t)
    exactly when the bound grows geometrically.
    Status: pass when the slope of the certified upper bounds is <= g_max, fail when the slope of
    the sound lower bounds is > g_max, inconclusive otherwise, and inconclusive with fewer than 3
    checkpoints. A slope <= 0 does not by itself mean bounded: read it with SA601,
    which reports the supremum, and which is always reported with it.
    Inputs: several checkpoints of one run with their steps; skipped in a single-model audit.
    Default threshold 0, informational (the message states the threshold the certified slope
    would pass); `--threshold growth_exponent=VALUE` sets it and makes the check an error.
    """
    return ctx.finding(Status.SKIPPED, None, NEEDS_TRAJECTORY)


def bounded(
    tev: TrajectoryEvidence, ctx: CheckContext, gating: frozenset[TrajectoryChannel] | None = None
) -> Finding:
    """SA601 over a trajectory; ``gating`` the channels that decide the status (None: all)."""
    summaries = channel_summaries(tev.points)
    judged = [
        s for s in summaries
        if s.status is not Status.SKIPPED and (gating is None or s.channel in gating)
    ]
    aside = [s for s in summaries if s.status is not Status.SKIPPED and s not in judged]
    note = (
        "; informational (threshold not set): "
        + ", ".join(f"{s.channel.value} {s.status.value} (sup upper {fmt(s.sup_upper)}, limit {fmt(s.limit)})" for s in aside)
        if aside else ""
    )
    value = {
        s.channel.value: {"sup_upper": s.sup_upper, "sup_lower": s.sup_lower, "limit": s.limit, "status": s.status.value}
        for s in summaries
    }
    errors = [p.path for p in tev.points if p.error]
    failed = [s.channel.value for s in judged if s.status is Status.FAIL]
    open_ = [s.channel.value for s in judged if s.status is not Status.PASS]
    if not judged:
        return ctx.finding(Status.SKIPPED, value, "no channel with a limit in the checkpoints' reports" + note)
    n = len(tev.points)
    if failed:
        parts = [f"{s.channel.value} >= {fmt(s.sup_lower)} > {fmt(s.limit)}" for s in judged if s.status is Status.FAIL]
        return ctx.finding(Status.FAIL, value, f"over {n} checkpoints, proved beyond the limit: {'; '.join(parts)}{note}")
    if not open_ and not errors:
        parts = [f"{s.channel.value} <= {fmt(s.sup_upper)} <= {fmt(s.limit)}" for s in judged]
        return ctx.finding(Status.PASS, value, f"certified over {n} checkpoints: {'; '.join(parts)}{note}")
    why = f"not proved within the limit: {', '.join(open_)}" if open_ else ""
    if errors:
        why += ("; " if why else "") + f"{len(errors)} checkpoint(s) could not be audited"
    return ctx.finding(Status.INCONCLUSIVE, value, f"over {n} checkpoints, {why}{note}")


def exponent(tev: TrajectoryEvidence, ctx: CheckContext) -> Finding:
    """SA602 over a trajectory."""
    assert ctx.threshold is not None
    upper, lower = representation_fits(tev.points)
    sup = next((s for s in channel_summaries(tev.points) if s.channel is TrajectoryChannel.LIPSCHITZ), None)
    value = {
        "upper": upper.slope,
        "lower": lower.slope,
        "upper_residual": upper.residual,
        "lower_residual": lower.residual,
        "points": len(tev.points),
        "sup_upper": sup.sup_upper if sup is not None else None,
    }
    text = (
        f"growth exponent of K_upper {fmt(upper.slope)} per step (residual {fmt(upper.residual)}), "
        f"of K_lower {fmt(lower.slope)} (residual {fmt(lower.residual)}); "
        f"sup K_upper {fmt(value['sup_upper'])}; threshold {fmt(ctx.threshold)}"
    )
    if len(tev.points) < MIN_FIT_POINTS:
        return ctx.finding(
            Status.INCONCLUSIVE, value,
            f"{len(tev.points)} checkpoint(s): an exponent needs at least {MIN_FIT_POINTS}; {text}",
        )
    certified = all(
        (b := _bracket(p, TrajectoryChannel.LIPSCHITZ)) is not None and b.certified for p in tev.points
    )
    status = bracket_status(lower.slope, upper.slope, ctx.threshold, certified=certified)
    if upper.slope is None and upper.message:
        text += f" ({upper.message})"
    if status is not Status.PASS and certified:
        text += ctx.would_pass(upper.slope, "the certified slope")
    return ctx.finding(status, value, text)


TRAJECTORY_RULES: dict[str, Callable[[TrajectoryEvidence, CheckContext], Finding]] = {
    "SA601": bounded,
    "SA602": exponent,
}


def run_trajectory_checks(
    tev: TrajectoryEvidence, policy: CheckPolicy, *, waivers: Iterable[Waiver] = (), today: str = ""
) -> tuple[Finding, ...]:
    """SA601 and SA602 over a trajectory, with thresholds, severities, disabled checks and waivers
    applied as run_checks applies them to a single model."""
    from stabaudit.checks.waivers import apply_waivers

    findings = []
    set_channels = frozenset(ch for key, ch in CHANNEL_KEYS.items() if key in policy.thresholds)
    for check_id, rule in sorted(TRAJECTORY_RULES.items()):
        spec = CHECKS.get(check_id)
        ctx = check_context(spec, policy)
        if check_id == "SA601":
            # informational on defaults; an error once the user sets some channel's threshold
            severity = Severity.ERROR if set_channels else Severity.INFO
            ctx = replace(ctx, severity=policy.severities.get(check_id, severity))
        if check_id in policy.disabled:
            findings.append(ctx.finding(Status.SKIPPED, None, "disabled by the config"))
            continue
        if check_id == "SA601":
            gating = set_channels | {TrajectoryChannel.SHARPNESS} if set_channels else None
            findings.append(bounded(tev, ctx, gating))
        else:
            findings.append(rule(tev, ctx))
    return apply_waivers(findings, waivers, today)
