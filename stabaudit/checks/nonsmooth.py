"""Non-smooth channel: SA302, certified local Lipschitz bounds with Clarke generalized derivatives."""

from __future__ import annotations

from stabaudit.checks.base import CheckContext, Evidence, check, fmt
from stabaudit.report.model import Finding, Severity, Status


@check(
    "SA302",
    "clarke.local",
    severity=Severity.WARNING,
    threshold_key="lipschitz",
    default_threshold=1.0,
)
def clarke_local(ev: Evidence, ctx: CheckContext) -> Finding:
    """Over an eps-ball around every sample input, the local Lipschitz constant is at most K_max.

    Inequality: ||G||_2 <= L_local for every element G of the Clarke generalized Jacobian of the
    model at every point of the ball {x : ||x - x_i||_inf <= eps} around each sample x_i, hence
    ||F(x) - F(y)||_2 <= L_local ||x - y||_2 inside the ball. Pre-activation ranges come from
    interval propagation in float64 with outward rounding; a ReLU-type unit whose interval
    straddles 0 gets the slope interval [0, 1] (its Clarke derivative), smooth activations the
    range of their derivative; L_local is the smallest of the certified candidates (interval
    Jacobian, local products of layer gains with dead units removed, slope vertices).
    Inputs: `--inputs samples.npz` (array `x`, or the first array; .npy also read) and `--eps`
    (default 0.01). Skipped without inputs. The threshold is K_max, shared with SA101
    (`--threshold lipschitz=VALUE`). Passes when L_local <= K_max on every sample; this
    version reports no sound local lower bound, so otherwise the check is inconclusive.
    """
    local = ev.local
    if local is None:
        return ctx.finding(
            Status.SKIPPED, None, "no --inputs given: local bounds need sample inputs"
        )
    if local.upper is None:
        return ctx.finding(Status.SKIPPED, None, f"no local bound: {local.message}")
    t = ctx.threshold if ctx.threshold is not None else 1.0
    value = {"upper": local.upper, "eps": local.eps, "norm": local.norm, "samples": local.samples}
    where = f"over linf balls of radius {fmt(local.eps)} around {local.samples} samples"
    if local.upper <= t:
        return ctx.finding(
            Status.PASS, value, f"certified local L <= {fmt(local.upper)} <= {fmt(t)} {where}"
        )
    return ctx.finding(
        Status.INCONCLUSIVE,
        value,
        f"certified local L <= {fmt(local.upper)} {where}, not <= {fmt(t)}",
    )
