"""Non-smooth channel: SA301 kinks at the samples, SA302 certified local (Clarke) bounds, SA303 dead units."""

from __future__ import annotations

import math

from stabaudit.checks.base import CheckContext, Evidence, branch_switch_note, check, fmt
from stabaudit.report.model import Finding, Severity, Status


@check(
    "SA302",
    "clarke.local",
    severity=Severity.INFO,
    threshold_key="local_lipschitz",
    default_threshold=1.0,
    inherits="lipschitz",
)
def clarke_local(ev: Evidence, ctx: CheckContext) -> Finding:
    """Over an eps-ball around every sample input, the local Lipschitz constant is at most K_max.

    Inequality: ||G||_2 <= L_local for every element G of the Clarke generalized Jacobian of the
    model at every point of the ball {x : ||x - x_i||_inf <= eps} around each sample x_i, hence
    ||F(x) - F(y)||_2 <= L_local ||x - y||_2 inside the ball. Pre-activation ranges come from
    interval propagation in float64 with outward rounding, tightened where the budget buys it
    (back-substitution; for convolutional networks symbolic intervals on receptive fields); a
    ReLU-type unit whose range straddles 0 gets the slope interval [0, 1] (its Clarke
    derivative), smooth activations the range of their derivative; L_local is the smallest of
    the certified candidates (interval Jacobian, dense or on receptive fields for image inputs;
    the exact Jacobian of a reference network plus the perturbations of the units that can
    change state (docs/domain.md); local products of layer gains with dead units removed, slope
    vertices), and never
    more than the global certified bound K (which holds on every ball). The value lists, per
    activation layer and summed over the balls, the stably active, stably inactive and unstable
    units (an unstable unit's pre-activation interval straddles a kink).
    Inputs: `--inputs samples.npz` (array `x`, or the first array; .npy also read) and `--eps`
    (default 0.01), or samples drawn from a config `domain:`; the balls are those of the first
    samples that `--budget` plans for the sample channels (all of them on small networks, at least
    4; the value's `samples` and the message say how many). Skipped without inputs. The threshold
    is `--threshold local_lipschitz=VALUE` (then an error); unset, it is K_max (`lipschitz`, shared
    with SA101, default 1) and the check is informational, its message stating the threshold the
    certified local bound would pass. Passes when L_local <= K_max on every sample; this
    version reports no sound local lower bound, so otherwise the check is inconclusive.
    Over a domain (`--domain`): when every ball lies in one box of the audit domain (a ball
    domain of radius >= eps around these samples, a margin domain, a box that holds them), the
    certified bound over the domain (domain_lipschitz.upper) bounds every ball too and is a
    candidate for L_local (value "domain"); it also stands where the local analysis has none
    (an operator the interval Jacobian lacks), instead of the global bound alone.
    Branch switches (as in SA101): L_local is about the smooth part, the model as executed adds
    the certified additive term delta inside each ball too, stated in the message; no pass
    without a finite certified delta.
    """
    local = ev.local
    if local is None:
        return ctx.finding(
            Status.SKIPPED, None, "no samples (--inputs or a config domain): local bounds need them"
        )
    if local.upper is None and local.domain_upper is None:
        return ctx.finding(Status.SKIPPED, None, f"no local bound: {local.message}")
    t = ctx.threshold if ctx.threshold is not None else 1.0
    upper, how = math.inf, ""
    if local.upper is not None:
        upper = local.upper
    if local.domain_upper is not None and local.domain_upper <= upper:
        # the bound over the audit domain holds on every ball inside it: a certified local bound
        upper = local.domain_upper
        assert ev.domain_lipschitz is not None
        how = (f" (the certified bound over the domain, {ev.domain_lipschitz.domain.description}, which "
               "holds every ball" + (", no looser than the local analysis here)" if local.upper is not None else
                                     f"; the local analysis gave none: {local.message})"))
    g = ev.lipschitz
    if g.certified and g.upper is not None and g.upper < upper:
        # a global Lipschitz bound holds on every ball too: the smaller one is the local bound
        upper, how = g.upper, " (the global certified bound, tighter than the local analysis here)"
    value: dict[str, object] = {
        "upper": upper,
        "local_analysis": local.upper,
        "eps": local.eps,
        "norm": local.norm,
        "samples": local.samples,
    }
    if local.domain_upper is not None:
        value["domain"] = local.domain_upper
    if local.units:
        value["units"] = {
            layer: {"stable_active": a, "stable_inactive": i, "unstable": u}
            for layer, a, i, u in local.units
        }
    where = f"over linf balls of radius {fmt(local.eps)} around {local.samples} samples{how}"
    if local.note:
        where += f"; {local.note}"
    jump_ok, jump_text = branch_switch_note(g, "L")
    if g.additive is not None:
        value["additive"] = g.additive.value
    if upper <= t and jump_ok:
        return ctx.finding(Status.PASS, value, f"certified local L <= {fmt(upper)} <= {fmt(t)} {where}{jump_text}")
    if upper <= t:
        return ctx.finding(Status.INCONCLUSIVE, value, f"local L <= {fmt(upper)} <= {fmt(t)} {where}{jump_text}")
    return ctx.finding(
        Status.INCONCLUSIVE,
        value,
        f"certified local L <= {fmt(upper)} {where}, not <= {fmt(t)}{jump_text}"
        + (ctx.would_pass(upper) if jump_ok else ""),
    )


@check(
    "SA301",
    "clarke.kinks",
    severity=Severity.INFO,
    threshold_key="kinks",
    default_threshold=0.05,
)
def clarke_kinks(ev: Evidence, ctx: CheckContext) -> Finding:
    """At the sample inputs, at most a share (default 5%) of ReLU-type units sit within eps of a kink.

    At a kink the Clarke generalized Jacobian is a set (for ReLU at 0, the slope interval
    [0, 1]) and autodiff silently returns one selection of it; a unit within eps of its kink can
    change its piece under a perturbation of its pre-activation by eps. Measured per ReLU-type
    layer: share = #{(sample, unit) : |z - kink| <= eps} / (samples x units), where z is the
    unit's pre-activation (one entry of the layer's input tensor; a conv layer has channels x
    positions units) and a unit exactly at its kink counts. Layers counted: Relu, LeakyRelu and
    PRelu (kink at 0; a slope of 1 has none), Clip (HardTanh, ReLU6: at min and max),
    HardSigmoid (where alpha z + beta is 0 or 1), HardSwish (at -3 and 3); smooth activations
    have no kink, and max-pooling ties and Abs are out of scope.
    This is a measurement at these samples, exact for them up to the float64 forward pass, not a
    bound over a domain: the status compares the measured max share over layers directly with
    the threshold (pass when <= it, fail when above). Value: the max share and the per-layer shares.
    Inputs: `--inputs samples.npz` or a config `domain:` ({low, high} or {mean, std}) with
    `samples: N`; eps is `--eps` / config `eps:` (default 0.01), in the pre-activation's units.
    Skipped without samples or without ReLU-type units. Default threshold 0.05, informational
    (a failing message states the share that would pass); `--threshold kinks=0.1` (a share in
    [0, 1]) sets it and makes the check an error (or config `severity: {SA301: error}`).
    """
    acts = ev.sampled.activations if ev.sampled is not None else None
    if ev.sampled is None:
        return ctx.finding(Status.SKIPPED, None, "no samples: give --inputs or a config domain")
    if acts is None:
        return ctx.finding(Status.SKIPPED, None, f"no activation analysis: {ev.sampled.message}")
    if not acts.layers:
        return ctx.finding(Status.SKIPPED, None, "the model has no ReLU-type units")
    t = ctx.threshold if ctx.threshold is not None else 0.05
    top = acts.max_share
    value = {
        "max_share": top,
        "eps": acts.eps,
        "samples": acts.samples,
        "layers": {layer.layer: layer.share for layer in acts.layers},
    }
    over = tuple(layer.layer for layer in acts.layers if layer.share > t)
    where = f"within eps={fmt(acts.eps)} of a kink at {acts.samples} samples"
    if top <= t:
        return ctx.finding(Status.PASS, value, f"max share {fmt(top)} <= {fmt(t)} of units {where}")
    return ctx.finding(
        Status.FAIL,
        value,
        f"max share {fmt(top)} > {fmt(t)} of units {where} (layers: {', '.join(over)})"
        + ctx.would_pass(top, "the measured share"),
        locations=over,
    )


@check("SA303", "relu.dead", severity=Severity.INFO)
def relu_dead(ev: Evidence, ctx: CheckContext) -> Finding:
    """Information: ReLU-type units that are never active on the samples (dead units).

    A unit is dead when its slope is 0 at every sample: for ReLU, its pre-activation is <= 0 at
    every sample (PyTorch's selection at 0 is the slope 0); for LeakyRelu/PRelu only with a zero
    negative slope; Clip and HardSigmoid when on a flat piece (at or beyond a kink), HardSwish at
    or below -3. A unit is one entry of the layer's pre-activation tensor (per position for a
    conv layer). A dead unit passes no gradient at these samples; it proves nothing about other
    inputs. Value: the total count and the count per layer (with the layer's units).
    Status fail when some unit is dead, pass when none; the severity is info, so it never fails
    the gate unless raised (config `severity: {SA303: warning}`). Inputs: `--inputs` or a config
    `domain:`; skipped without samples or without ReLU-type units. No threshold.
    """
    acts = ev.sampled.activations if ev.sampled is not None else None
    if ev.sampled is None:
        return ctx.finding(Status.SKIPPED, None, "no samples: give --inputs or a config domain")
    if acts is None:
        return ctx.finding(Status.SKIPPED, None, f"no activation analysis: {ev.sampled.message}")
    if not acts.layers:
        return ctx.finding(Status.SKIPPED, None, "the model has no ReLU-type units")
    value = {
        "dead": acts.dead,
        "samples": acts.samples,
        "layers": {layer.layer: {"dead": layer.dead, "units": layer.units} for layer in acts.layers},
    }
    units = sum(layer.units for layer in acts.layers)
    with_dead = tuple(layer.layer for layer in acts.layers if layer.dead)
    if not with_dead:
        return ctx.finding(Status.PASS, value, f"no dead unit among {units} at {acts.samples} samples")
    return ctx.finding(
        Status.FAIL,
        value,
        f"{acts.dead} of {units} units never active at {acts.samples} samples "
        f"(layers: {', '.join(with_dead)})",
        locations=with_dead,
    )
