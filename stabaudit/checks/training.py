"""Update channel: SA501 (GD / heavy-ball linear stability), SA502 (Adam), SA503 (SGD mean square)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from stabaudit.checks.base import CheckContext, Evidence, check, fmt
from stabaudit.report.model import Finding, Severity, Status, TrainingReport

if TYPE_CHECKING:
    from stabaudit.analyses.training import Bracket, TrainingResult

NO_SPEC = "no training spec: give `training:` (learning_rate, optimizer, loss, data) in the config"


def gd_limit(result: TrainingResult) -> float:
    """The largest stable sharpness: 2/eta for gradient descent, 2(1+beta)/eta with heavy-ball
    momentum beta (the iteration matrix of one step is stable iff eta*lambda < 2(1+beta))."""
    from stabaudit.analyses.training import Optimizer

    c = 2.0 * (1.0 + result.momentum) if result.optimizer is Optimizer.MOMENTUM else 2.0
    return c / result.learning_rate


def adam_limit(result: TrainingResult) -> float:
    """(2 + 2 beta1) / ((1 - beta1) eta): the bound on the preconditioned sharpness (38/eta at 0.9)."""
    b1 = result.betas[0]
    return (2.0 + 2.0 * b1) / ((1.0 - b1) * result.learning_rate)


def _missing(result: TrainingResult) -> str:
    """Why there is no sharpness: the Hessian could not be computed, or it is not finite."""
    return result.unavailable or "the loss Hessian is not finite at the stored parameters"


def _over(result: TrainingResult) -> str:
    """The parameterisation a sharpness is about, for the finding's message."""
    text = f"; H over {result.parameters} parameters"
    if result.parameter_source:
        text += f" ({result.parameter_source})"
    if result.parameterisation_notes:
        text += " -- " + " ".join(result.parameterisation_notes)
    return text


def _versus_limit(
    ctx: CheckContext, what: str, bracket: Bracket, limit: float, certified: bool, method: str,
    over: str = "",
) -> Finding:
    """pass when a certified upper bound is below the limit, fail when a sound lower bound reaches
    it, inconclusive otherwise (THEORY.md statuses)."""
    value = {
        "sharpness": bracket.estimate,
        "limit": limit,
        "margin": limit - bracket.estimate,
        "lower": bracket.lower,
        "upper": bracket.upper,
        "method": method,
    }
    if certified and bracket.upper is not None and bracket.upper < limit:
        status = Status.PASS
        message = f"{what} <= {fmt(bracket.upper)} < {fmt(limit)} (certified, {method})"
    elif bracket.lower is not None and bracket.lower >= limit:
        status = Status.FAIL
        message = f"{what} >= {fmt(bracket.lower)} >= {fmt(limit)} (sound lower bound, {method}): unstable"
    else:
        status = Status.INCONCLUSIVE
        known = f"in [{fmt(bracket.lower)}, {fmt(bracket.upper)}]" if bracket.upper is not None else (
            f"~ {fmt(bracket.estimate)} (>= {fmt(bracket.lower)}; no certified upper bound)"
        )
        message = f"{what} {known}, limit {fmt(limit)} ({method})"
    return replace(ctx.finding(status, value, message + over), threshold=limit)


@check("SA501", "training.gd", severity=Severity.ERROR)
def training_gd(ev: Evidence, ctx: CheckContext) -> Finding:
    """Gradient descent is linearly stable at the stored parameters: eta * lambda_max(H) < 2.

    Inequality: one step theta <- theta - eta grad L(theta) has the Jacobian I - eta H; near the
    stored parameters its iterates stay bounded along every eigendirection iff |1 - eta lambda| <= 1,
    so the top of the spectrum needs eta * lambda_max(H) < 2 (sharpness below 2/eta). With heavy-ball
    momentum beta the condition is eta * lambda_max < 2(1 + beta). Proximal or projected steps with
    a convex regularizer or set are non-expansive and inherit this condition.
    H is the Hessian of the training loss over the given data (full batch, at most 256 samples,
    a seeded subset beyond) at the stored weights, computed in float64 by double backward, over
    the parameters training updates: for TorchScript the module's own parameters (BatchNorm's
    gamma and beta included, buffers and constants excluded), through the module as executed;
    for ONNX the weights and biases of parameterised operators (Conv, ConvTranspose, Gemm,
    MatMul and the Add after it, BatchNormalization's scale and bias, PRelu; never a scalar
    constant), through the engine's executor, or the initializers `training.parameters` lists
    (globs). The report names them (training.parameter_names, parameter_roles, parameter_source)
    and says when an exporter folded BatchNorm into a convolution: the sharpness is then about
    the folded parameterisation, not the one trained. Up to 2000 parameters H is formed and its eigenvalues come with a
    two-sided rounding bound (certified: can pass or fail); beyond that Lanczos Ritz values give a
    sound lower bound of lambda_max (can fail, never pass: inconclusive otherwise). Lanczos takes
    at most 100 steps, fewer once the residuals of the largest and the smallest Ritz pair are both
    below 1e-6 of the spectrum's scale (a Ritz value is an inner bound after any number of steps).
    Inputs: the config's `training:` (learning_rate, optimizer sgd|momentum, momentum, loss,
    data). Skipped without it, and for optimizer adam (see SA502). The limit is 2/eta
    (2(1+beta)/eta): it is reported as the threshold; the value holds the sharpness, the limit and
    the margin (limit - sharpness). Severity error; change it with `severity: {SA501: warning}`.
    """
    from stabaudit.analyses.training import Optimizer

    r = ev.training
    if r is None:
        return ctx.finding(Status.SKIPPED, None, NO_SPEC)
    if r.optimizer is Optimizer.ADAM:
        return ctx.finding(Status.SKIPPED, None, "optimizer adam: its stability condition is SA502's")
    if r.lambda_max is None:
        return ctx.finding(Status.INCONCLUSIVE, None, _missing(r))
    what = "sharpness lambda_max(H)"
    if r.optimizer is Optimizer.MOMENTUM:
        what += f" (limit 2(1+beta)/eta, beta = {fmt(r.momentum)})"
    return _versus_limit(ctx, what, r.lambda_max, gd_limit(r), r.certified, r.method, _over(r))


@check("SA502", "training.adam", severity=Severity.ERROR)
def training_adam(ev: Evidence, ctx: CheckContext) -> Finding:
    """Adam's preconditioned sharpness is below (2 + 2 beta1) / ((1 - beta1) eta).

    Inequality: frozen at the given second moment v, Adam is heavy-ball momentum on the
    preconditioned problem with P = diag(1/(sqrt(v) + eps)), eps = 1e-8, effective momentum beta1
    and step (1 - beta1) eta; it is linearly stable iff lambda_max(P^1/2 H P^1/2) <
    (2 + 2 beta1) / ((1 - beta1) eta) (38/eta at beta1 = 0.9). Bounds and statuses as SA501:
    certified two-sided bounds up to 2000 parameters (dense eigvalsh), Lanczos inner bounds beyond.
    Inputs: `training:` with optimizer adam, betas [b1, b2] (default [0.9, 0.999]) and
    second_moment (an .npz with Adam's v for every parameter, keyed by the names the report's
    training.parameter_names lists). Skipped without them or for another optimizer.
    Severity error; change it with `severity: {SA502: warning}`.
    """
    from stabaudit.analyses.training import Optimizer

    r = ev.training
    if r is None:
        return ctx.finding(Status.SKIPPED, None, NO_SPEC)
    if r.optimizer is not Optimizer.ADAM:
        return ctx.finding(Status.SKIPPED, None, f"optimizer {r.optimizer.value}: SA502 is about Adam")
    if r.preconditioned is None:
        if r.lambda_max is None:
            return ctx.finding(Status.INCONCLUSIVE, None, _missing(r))
        return ctx.finding(
            Status.SKIPPED, None, "no training.second_moment: the preconditioner needs Adam's v"
        )
    what = "preconditioned sharpness lambda_max(P^1/2 H P^1/2)"
    return _versus_limit(ctx, what, r.preconditioned, adam_limit(r), r.certified, r.method, _over(r))


@check("SA503", "training.sgd_mean_square", severity=Severity.WARNING)
def training_sgd_mean_square(ev: Evidence, ctx: CheckContext) -> Finding:
    """SGD contracts in mean square when lambda_min(H) = mu > 0 and eta < 2 mu / lambda_max^2.

    Inequality: on a mu-strongly convex quadratic with curvature at most lambda_max,
    |theta - eta H theta|^2 <= (1 - 2 eta mu + eta^2 lambda_max^2) |theta|^2, a contraction iff
    eta < 2 mu / lambda_max^2; with gradient noise of variance sigma^2 the mean-square error then
    settles below the noise floor eta sigma^2 / (2 mu - eta lambda_max^2).
    Passes when certified bounds (dense eigvalsh, up to 2000 parameters) prove mu > 0 and
    eta < 2 mu_lower / lambda_max_upper^2; fails when eta >= 2 mu_upper / lambda_max_lower^2
    (contraction impossible; Lanczos can prove this too); skipped as not applicable when
    lambda_min <= 0 is proved (the loss is not strongly convex there); inconclusive otherwise.
    Inputs: `training:` with optimizer sgd and, for the noise floor, noise (sigma^2). Skipped
    without a spec or for another optimizer. Severity warning; `severity: {SA503: error}` gates on it.
    """
    from stabaudit.analyses.training import Optimizer

    r = ev.training
    if r is None:
        return ctx.finding(Status.SKIPPED, None, NO_SPEC)
    if r.optimizer is not Optimizer.SGD:
        return ctx.finding(Status.SKIPPED, None, f"optimizer {r.optimizer.value}: SA503 is about plain SGD")
    if r.lambda_max is None or r.lambda_min is None:
        return ctx.finding(Status.INCONCLUSIVE, None, _missing(r))
    mu, top, eta = r.lambda_min, r.lambda_max, r.learning_rate
    if mu.upper is not None and mu.upper <= 0:
        return ctx.finding(Status.SKIPPED, {"lambda_min": mu.estimate}, "not applicable: lambda_min <= 0")
    limit = 2.0 * mu.estimate / top.estimate**2 if mu.estimate > 0 else 0.0
    value: dict[str, object] = {
        "lambda_min": mu.estimate,
        "lambda_max": top.estimate,
        "learning_rate": eta,
        "limit": limit,
        "method": r.method,
    }
    if r.noise is not None and mu.estimate > 0 and 2 * mu.estimate - eta * top.estimate**2 > 0:
        value["noise_floor"] = eta * r.noise / (2 * mu.estimate - eta * top.estimate**2)
    proved_positive = r.certified and mu.lower is not None and mu.lower > 0
    if proved_positive and top.upper is not None and mu.lower is not None:
        safe = 2.0 * mu.lower / top.upper**2
        if eta < safe:
            if r.noise is not None and 2 * mu.lower - eta * top.upper**2 > 0:
                value["noise_floor_upper"] = eta * r.noise / (2 * mu.lower - eta * top.upper**2)
            finding = ctx.finding(
                Status.PASS, value,
                f"eta = {fmt(eta)} < 2 mu / lambda_max^2 >= {fmt(safe)} (certified, mu >= {fmt(mu.lower)})",
            )
            return replace(finding, threshold=limit)
    if mu.upper is not None and top.lower is not None and top.lower > 0:
        unsafe = 2.0 * mu.upper / top.lower**2
        if eta >= unsafe:
            finding = ctx.finding(
                Status.FAIL, value,
                f"eta = {fmt(eta)} >= 2 mu / lambda_max^2 (at most {fmt(unsafe)}): no mean-square contraction",
            )
            return replace(finding, threshold=limit)
    why = "" if proved_positive else " (lambda_min > 0 not proved)"
    finding = ctx.finding(
        Status.INCONCLUSIVE, value,
        f"eta = {fmt(eta)} vs 2 mu / lambda_max^2 ~ {fmt(limit)} ({r.method}){why}",
    )
    return replace(finding, threshold=limit)


def training_report(result: TrainingResult | None) -> TrainingReport | None:
    """The report's `training` section from the analysis result (None without a spec)."""
    if result is None:
        return None
    from stabaudit.analyses.training import Optimizer

    top, low = result.lambda_max, result.lambda_min
    if result.optimizer is Optimizer.ADAM and result.preconditioned is not None:
        margin = adam_limit(result) - result.preconditioned.estimate
    elif result.optimizer is Optimizer.ADAM:
        margin = None
    else:
        margin = gd_limit(result) - top.estimate if top is not None else None
    return TrainingReport(
        sharpness=top.estimate if top is not None else None,
        lambda_min=low.estimate if low is not None else None,
        learning_rate=result.learning_rate,
        optimizer=result.optimizer.value,
        margin=margin,
        iterations=result.iterations,
        certified=result.certified,
        method=result.method,
        sharpness_lower=top.lower if top is not None else None,
        sharpness_upper=top.upper if top is not None else None,
        lambda_min_lower=low.lower if low is not None else None,
        lambda_min_upper=low.upper if low is not None else None,
        preconditioned_sharpness=(
            result.preconditioned.estimate if result.preconditioned is not None else None
        ),
        parameters=result.parameters,
        parameter_names=result.parameter_names,
        samples=result.samples,
        loss=result.loss_value,
        notes=result.notes,
        parameter_source=result.parameter_source,
        parameter_roles=result.parameter_roles,
        parameterisation_notes=result.parameterisation_notes,
    )
