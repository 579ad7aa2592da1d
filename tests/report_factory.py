"""Hand-built reports (single and batch) for renderer and gate tests (no engine involved)."""

from __future__ import annotations

from dataclasses import replace

from stabaudit.report.model import (
    BatchReport,
    Equivalence,
    Finding,
    GlobalLipschitz,
    Layer,
    LayerLipschitz,
    MethodBound,
    ModelError,
    ModelInfo,
    ProfileStep,
    Report,
    RuleInfo,
    Severity,
    Status,
    ToolInfo,
    Waiver,
    Witness,
    batch_outcome,
)


def make_report() -> Report:
    return Report(
        tool=ToolInfo(name="stabaudit", version="0.1.0"),
        model=ModelInfo(path="m.onnx", format="onnx", sha256="ab" * 32, parameters=123, input_shape=(1, 4)),
        equivalence=Equivalence(reference="onnxruntime", max_abs_diff=1.5e-7, tolerance=1e-4, passed=True, samples=4),
        layers=(
            Layer(
                name="fc1",
                op="Linear",
                source_op="Gemm",
                lipschitz=LayerLipschitz(upper=2.5, lower=2.4999, method="svd", certified=True, lower_method="svd", lower_certified=True),
            ),
            Layer(
                name="conv",
                op="Conv",
                source_op="Conv",
                lipschitz=LayerLipschitz(upper=1.25, lower=1.2, method="circulant-embedding", certified=True, lower_method="power-iteration"),
            ),
            Layer(
                name="relu",
                op="Relu",
                source_op="Relu",
                lipschitz=LayerLipschitz(upper=1.0, lower=1.0, method="constant", certified=True),
            ),
        ),
        lipschitz=GlobalLipschitz(
            upper=3.125,
            lower=1.5,
            upper_method="product",
            lower_method="search",
            certified=True,
            witness=Witness(x=(0.0, 1.0), y=(0.5, 1.0), quotient=1.5),
            methods=(
                MethodBound(method="product", upper=3.125, certified=True, seconds=0.001),
                MethodBound(method="lipsdp-neuron", upper=None, certified=False, seconds=0.0,
                            notes=("not a feedforward chain: residual Add",)),
            ),
        ),
        profile=(ProfileStep(layer="fc1", upper=2.5), ProfileStep(layer="conv", upper=3.125)),
        checks=(
            Finding(id="SA101", name="lipschitz.global", status=Status.FAIL, severity=Severity.WARNING,
                    value={"lower": 1.5, "upper": 3.125}, threshold=1.0, message="K >= 1.5 > 1",
                    locations=("fc1",)),
            Finding(id="SA402", name="weights.finite", status=Status.PASS, severity=Severity.ERROR,
                    value=0, threshold=None, message="every parameter is finite"),
        ),
        verdict="pass",
        exit_code=0,
        fail_on="error",
        created="2026-01-02T03:04:05Z",
        timings={"total": 0.5},
        rules=(
            RuleInfo(id="SA101", name="lipschitz.global", summary="K <= K_max.", doc="K <= K_max.\n\nInequality: ...",
                     severity=Severity.WARNING, default_threshold=1.0),
            RuleInfo(id="SA402", name="weights.finite", summary="Finite weights.", doc="Finite weights.",
                     severity=Severity.ERROR, default_threshold=None),
        ),
    )


def make_batch_report() -> BatchReport:
    """Three entries: a passing model whose failed check is waived, a failing model, a model that
    could not be audited."""
    base = make_report()
    sa101, sa402 = base.checks
    waived = replace(
        base,
        model=replace(base.model, path="models/a.onnx"),
        checks=(
            replace(sa101, waiver=Waiver(check="SA101", reason="bracket accepted by review", expires="2026-12-31")),
            sa402,
        ),
    )
    failing = replace(
        base,
        model=replace(base.model, path="models/b.pt", format="torchscript", sha256="cd" * 32),
        lipschitz=replace(base.lipschitz, upper=40.0, lower=12.5, certified=False, upper_method="gram-iteration"),
        checks=(
            replace(sa101, value={"lower": 12.5, "upper": 40.0}, message="K >= 12.5 > 1"),
            replace(sa402, status=Status.FAIL, value=3, message="3 parameters are NaN or infinite",
                    locations=("conv",)),
        ),
        verdict="fail",
        exit_code=1,
    )
    broken = ModelError(path="models/broken.onnx", error="not an ONNX model or TorchScript archive")
    models: tuple[Report | ModelError, ...] = (waived, failing, broken)
    verdict, exit_code = batch_outcome(models)
    return BatchReport(
        tool=base.tool,
        config="audit.yaml",
        models=models,
        verdict=verdict,
        exit_code=exit_code,
        created="2026-01-02T03:04:05Z",
        timings={"total": 1.5},
    )
