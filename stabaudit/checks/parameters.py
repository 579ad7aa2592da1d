"""Parameter channel: SA401, the sensitivity of the output to each layer's weights at the samples."""

from __future__ import annotations

from stabaudit.checks.base import CheckContext, Evidence, check, fmt
from stabaudit.report.model import Finding, Severity, Status


@check(
    "SA401",
    "parameters.sensitivity",
    severity=Severity.INFO,
    threshold_key="param_sensitivity",
)
def parameters_sensitivity(ev: Evidence, ctx: CheckContext) -> Finding:
    """Per linear/conv layer: |dF/dW_l| <= |x_{l-1}| * prod_{j != l} s_j at the samples, and the measured value.

    Inequality: for z_l = W_l x_{l-1} + b_l and G_l the rest of the model (z_l -> F),
    dF/dW_l [D] = J_G(z_l) A_l(D, x_{l-1}), so ||dF/dW_l|| <= Lip(G_l) * c_l * ||x_{l-1}||_2 with
    the norm from ||D||_F to the L2 norm of the stacked outputs. Lip(G_l) is bounded by the
    certified per-operator gains downstream of the layer (prod_{j > l} s_j on a chain; the
    upstream gains of prod_{j != l} s_j are carried by ||x_{l-1}||, measured);
    c_l = 1 for Linear, sqrt(max number of conv patches that hold one input entry) for Conv,
    sqrt(kernel size) for ConvTranspose. ||x_{l-1}||_2 is the largest norm of the layer's input
    over the samples (float64, widened by a relative 1e-9), so the bound is certified *at the
    samples*, not over a whole input domain. Beside it, the measured value: the spectral norm of
    the Jacobian d vec(F) / d vec(W_l) by autograd at each sample, max over the samples (a sound
    lower value; power iteration from below when the output has more than 64 entries, or one
    shared reverse pass when the budget does not buy one sample's full Jacobian).
    W_l is the layer's effective weight (eval BatchNorm folded), as in the report's layers.
    Inputs: `--inputs samples.npz` or a config `domain:` with `samples: N`; skipped without.
    Information by default (no threshold). With `--threshold param_sensitivity=VALUE` (which
    makes it an error): pass when every layer's certified bound is <= VALUE, fail when a
    measured value is above it, inconclusive otherwise. Value: per layer, bound and measured.
    """
    params = ev.sampled.parameters if ev.sampled is not None else None
    if ev.sampled is None:
        return ctx.finding(Status.SKIPPED, None, "no samples: give --inputs or a config domain")
    if params is None:
        return ctx.finding(Status.SKIPPED, None, f"no parameter analysis: {ev.sampled.message}")
    if not params.layers:
        return ctx.finding(Status.SKIPPED, None, "the model has no linear or conv layer")
    value = {
        "samples": params.samples,
        "measured_samples": params.measured_samples,
        "power_iterations": params.power_iterations,
        "layers": {
            layer.layer: {"bound": layer.bound, "measured": layer.measured} for layer in params.layers
        },
    }
    bounds = [layer.bound for layer in params.layers]
    top_bound = None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
    top_measured = max(layer.measured for layer in params.layers)
    summary = (
        f"max |dF/dW_l| <= {fmt(top_bound)} (certified at {params.samples} samples), "
        f"measured {fmt(top_measured)}"
    )
    t = ctx.threshold
    if t is None:
        return ctx.finding(Status.PASS, value, f"{summary}; no threshold set (information)")
    over = tuple(layer.layer for layer in params.layers if layer.measured > t)
    if over:
        return ctx.finding(
            Status.FAIL, value, f"{summary} > {fmt(t)} (layers: {', '.join(over)})", locations=over
        )
    if top_bound is not None and top_bound <= t:
        return ctx.finding(Status.PASS, value, f"{summary}; bound <= {fmt(t)}")
    unsure = tuple(layer.layer for layer in params.layers if layer.bound is None or layer.bound > t)
    return ctx.finding(
        Status.INCONCLUSIVE,
        value,
        f"{summary}; the bound is not <= {fmt(t)} (layers: {', '.join(unsure)})",
        locations=unsure,
    )
