"""Parameter and faithfulness checks: SA402 finite weights, SA901 coverage, SA902 equivalence."""

from __future__ import annotations

from dataclasses import replace

from stabaudit.checks.base import CheckContext, Evidence, check
from stabaudit.report.model import Finding, Severity, Status


@check("SA402", "weights.finite", severity=Severity.ERROR)
def weights_finite(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every parameter of the model is a finite number.

    A NaN or Inf weight makes every bound meaningless: the check fails and names the layers that
    hold them (a non-numeric defect, so a fail needs no bracket). Severity error by default.
    """
    bad = {name: n for name, n in ev.nonfinite.items() if n}
    if bad:
        listing = ", ".join(f"{name} ({n})" for name, n in sorted(bad.items()))
        return ctx.finding(
            Status.FAIL, sum(bad.values()), f"non-finite parameters in: {listing}", tuple(sorted(bad))
        )
    return ctx.finding(Status.PASS, 0, "every parameter is finite")


@check("SA901", "coverage.operators", severity=Severity.ERROR)
def coverage(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every operator of the model is understood by the engine.

    The loaders name every unknown operator at once, with its count, and the audit stops with
    exit code 2: no bound is computed for a graph the engine cannot represent. In a
    report this check therefore always passes and counts the operators translated.
    """
    n = sum(ev.source_ops.values()) or ev.operators
    return ctx.finding(Status.PASS, n, f"all {n} operators understood")


@check("SA902", "equivalence", severity=Severity.ERROR)
def equivalence(ev: Evidence, ctx: CheckContext) -> Finding:
    """The engine's own forward pass reproduces the reference runtime.

    The graph the bounds are computed on runs in torch on seeded inputs and is compared with
    onnxruntime (ONNX) or the loaded module (TorchScript): max |engine - reference| <=
    1e-4 * max|reference| + 1e-6. A model that runs in float16 or bfloat16 is compared at that
    precision: the engine computes in float32 with the weights upcast exactly (every float16 and
    bfloat16 number is a float32 number), the seeded inputs are rounded to the model's precision
    so that both read the same input, and the relative tolerance is 32 units of its roundoff
    (32 * 2^-11 for float16, 32 * 2^-8 for bfloat16), stated in the report's notes. A mismatch
    means no bound can be trusted: the audit stops with exit code 2. In a report the check passes
    and gives max_abs_diff.
    """
    eq = ev.equivalence
    status = Status.PASS if eq.passed else Status.FAIL
    finding = ctx.finding(
        status,
        eq.max_abs_diff,
        f"max |engine - {eq.reference}| = {eq.max_abs_diff:.3g} over {eq.samples} seeded inputs "
        f"(tolerance {eq.tolerance:.3g})",
    )
    return replace(finding, threshold=eq.tolerance)
