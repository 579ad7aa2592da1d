"""Soundness of every certified figure, per operator: the real engine against float64 truth."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from stabaudit.errors import StabauditError
from stabaudit.ir.ops import OpType
from tests.soundness import harness as H
from tests.soundness.cases import CASE_BY_ID, CASES, ONNX, TS, VARIANTS, Case, Variant

# operators whose rule needs a bounded input domain (bounds.domain): the global upper bound is none
DOMAIN_OPS = frozenset({OpType.MUL, OpType.DIV, OpType.MATMUL, OpType.POW, OpType.SQRT, OpType.RECIPROCAL, OpType.EXP,
                        OpType.LOG, OpType.REDUCE_SUM_SQUARE})
PAIRS = [pytest.param(c, fmt, id=f"{c.id}-{fmt}") for c in CASES for fmt in c.formats]


def _problems(report, built: H.Built, case: Case) -> list[str]:
    problems = H.layer_problems(report, built) + H.global_problems(report, built)
    if case.residual:
        problems += H.residual_problems(report, built)
    return problems


@pytest.mark.parametrize(("case", "fmt"), PAIRS)
def test_every_certified_figure_is_sound(case: Case, fmt: str, tmp_path: Path) -> None:
    """Per-layer upper >= the layer's exact norm >= its certified lower; global upper (every
    certified method) >= float64 Jacobian norms and difference quotients; the witness recomputes."""
    from stabaudit.loaders import load_model

    built = H.build(case, fmt, tmp_path)
    H.check_reference(built)
    loaded = load_model(built.path, input_shape=built.input_shape)
    assert case.ops <= {n.op.type for n in loaded.graph.nodes}, "the case no longer holds its operators"
    declared = case.onnx_ops if fmt == ONNX else case.ts_ops
    assert declared <= set(loaded.source_ops), set(declared) - set(loaded.source_ops)
    report = H.audit(built)
    if case.switch:  # a data-dependent branch switch: no finite bound, and the report says why
        assert report.lipschitz.upper is None
        assert "branch switch" in repr(report.lipschitz.methods), report.lipschitz.methods
    elif case.ops & DOMAIN_OPS:  # no finite global bound without a domain: the report says why
        assert report.lipschitz.upper is None
        assert "bounded domain" in repr(report.lipschitz.methods), report.lipschitz.methods
    else:
        assert report.lipschitz.certified and report.lipschitz.upper is not None
    assert _problems(report, built, case) == []


# ---- coverage: the suite grows with every operator ------------------------------------------------------
def test_every_bound_rule_has_a_soundness_case() -> None:
    from stabaudit.bounds import RULES

    covered = set().union(*(c.ops for c in CASES))
    missing = sorted(op.value for op in RULES if op not in covered)
    assert missing == [], f"bound rules without a soundness case in tests/soundness/cases.py: {missing}"


def test_every_onnx_operator_has_a_soundness_case() -> None:
    from stabaudit.loaders import supported_operators

    covered = set().union(*(c.onnx_ops for c in CASES))
    # written out in the model as the standard operators it fuses (Gather, Add, LayerNormalization),
    # whose cases are here; its integer ids cannot be this harness's float input x (its loading and
    # the check of the expansion: tests/loaders/test_onnx_contrib.py)
    covered.add("com.microsoft.EmbedLayerNormalization")
    missing = sorted(set(supported_operators()["onnx"]) - covered)
    assert missing == [], f"ONNX operators without a soundness case: {missing}"


# Spellings that torch.jit.script and torch.jit.trace (torch 2.13) rewrite to a canonical operator, so
# no archive saved by them holds them (aten::divide is stored as aten::div, padding="same" as
# aten::conv2d, ...), and aten::detach, which would cut the float64 reference's autograd. Each shares its
# translator with the covered spelling. Listed so that a new aten operator without a case fails below.
TS_ALIASES = frozenset({
    "aten::divide", "aten::true_divide", "aten::multiply", "aten::subtract", "aten::negative", "aten::clip",
    "aten::concat", "aten::concatenate", "aten::_convolution_mode", "aten::alias", "aten::detach",
})


def test_every_torchscript_operator_has_a_soundness_case() -> None:
    from stabaudit.loaders import supported_operators

    covered = set().union(*(c.ts_ops for c in CASES))
    missing = sorted(set(supported_operators()["torchscript"]) - covered - TS_ALIASES)
    assert missing == [], f"TorchScript operators without a soundness case: {missing}"
    assert not covered & TS_ALIASES, "an alias is covered by a case now: drop it from TS_ALIASES"


# ---- extreme scales, float64 models, dynamic batch dims -----------------------------------------------
EXTREME_CASES = ("mlp_relu", "cnn", "onnx_acts", "onnx_pools", "conv_transpose", "residual")
SCALES = {"tiny": 1e-30, "huge": 1e30, "subnormal": 1e-40}


def _audit_or_refusal(built: H.Built):
    """The report, or None when the engine refused the model (exit 2); never an internal error."""
    try:
        return H.audit(built)
    except StabauditError as exc:
        assert exc.exit_code == 2, f"exit {exc.exit_code}: {exc}"
        return None


@pytest.mark.parametrize("scale", list(SCALES), ids=list(SCALES))
@pytest.mark.parametrize("case_id", EXTREME_CASES)
def test_extreme_weights_give_sound_or_no_figures(case_id: str, scale: str, tmp_path: Path) -> None:
    """Weights times 1e-30, 1e30 or into float32 subnormals: every certified figure still sound (an
    overflow is no figure or an uncertified one, never a finite wrong one), never exit 3."""
    case = CASE_BY_ID[case_id]
    fmt = case.formats[len(case_id) % len(case.formats)]
    built = H.build(case, fmt, tmp_path, scale=SCALES[scale])
    report = _audit_or_refusal(built)
    if report is None:
        return
    assert _problems(report, built, case) == []
    if scale == "huge" and report.lipschitz.upper is not None:
        assert math.isfinite(report.lipschitz.upper)


# (onnxruntime has no float64 Softplus or AveragePool: those run as TorchScript)
FLOAT64_CASES = (("mlp_relu", ONNX), ("cnn", TS), ("act_softplus", TS), ("onnx_arith", ONNX),
                 ("conv_transpose", TS), ("batchnorm_alone", ONNX), ("residual", ONNX))
FLOAT64_PARAMS = [
    pytest.param(case_id, fmt, scale, id=f"{case_id}-{fmt}-{name}")
    for case_id, fmt in FLOAT64_CASES
    for name, scale in (("unit", 1.0), ("subnormal", 1e-310))
]


@pytest.mark.parametrize(("case_id", "fmt", "scale"), FLOAT64_PARAMS)
def test_float64_models(case_id: str, fmt: str, scale: float, tmp_path: Path) -> None:
    """Models stored in float64 (weights into float64 subnormals too) get sound figures."""
    case = CASE_BY_ID[case_id]
    built = H.build(case, fmt, tmp_path, dtype=torch.float64, scale=scale)
    if scale == 1.0:
        H.check_reference(built)
        report = H.audit(built)
    else:
        report = _audit_or_refusal(built)
        if report is None:
            return
    assert _problems(report, built, case) == []


DYNAMIC_CASES = ("mlp_relu", "cnn", "onnx_acts", "concat_branches")


@pytest.mark.parametrize("case_id", DYNAMIC_CASES)
def test_dynamic_batch_dim(case_id: str, tmp_path: Path) -> None:
    """An ONNX input [N, ...] audited at N = 3: the figures are about the batched map."""
    case = CASE_BY_ID[case_id]
    built = H.build(case, ONNX, tmp_path, batch=3)
    H.check_reference(built)
    report = H.audit(built)
    assert tuple(report.model.input_shape) == built.input_shape
    assert _problems(report, built, case) == []


GLOBAL_METHODS = ("layerwise", "sdp", "eclipse-fast", "eclipse", "lipsdp-neuron", "exact", "auto")


@pytest.mark.parametrize("method", GLOBAL_METHODS)
def test_global_methods_on_a_small_mlp(method: str, tmp_path: Path) -> None:
    """Each global method's certified upper bound >= the float64 truth on one ReLU MLP (TorchScript:
    the reference is the file's exact function)."""
    built = H.build(CASE_BY_ID["mlp_relu"], TS, tmp_path)
    report = H.audit(built, method=method, budget=1.0)
    assert any(m.method != "product" for m in report.lipschitz.methods) or method == "auto"
    assert _problems(report, built, CASE_BY_ID["mlp_relu"]) == []


EXTREME_METHODS = [
    pytest.param(torch.float32, 1e-30, id="float32-tiny"),
    pytest.param(torch.float32, 1e-40, id="float32-subnormal"),
    pytest.param(torch.float32, 1e30, id="float32-huge"),
    pytest.param(torch.float64, 1e100, id="float64-huge"),
    pytest.param(torch.float64, 1e-310, id="float64-subnormal"),
]


@pytest.mark.parametrize(("dtype", "scale"), EXTREME_METHODS)
def test_global_methods_at_extreme_scales(dtype: torch.dtype, scale: float, tmp_path: Path) -> None:
    """Every global method (auto: layerwise, SDP-class and the exact mode) at extreme weights: a
    certified figure is sound, also against far points where the biases no longer matter, and never
    0 for a non-constant model; exit code never 3."""
    built = H.build(CASE_BY_ID["mlp_relu"], TS, tmp_path, dtype=dtype, scale=scale)
    report = H.audit(built, method="auto", budget=1.0)
    assert _problems(report, built, CASE_BY_ID["mlp_relu"]) == []


# ---- branch switches, batch-mixing operators, reduced precision --------------------------------------
def test_torchscript_softplus_threshold_jump(tmp_path: Path) -> None:
    """torch's softplus is log(1 + e^(beta x)) / beta below threshold / beta and x above it: a jump of
    log(1 + e^-threshold) / beta. Across it, ||f(x) - f(y)|| <= K ||x - y|| + the certified additive
    term of branch switches (lipschitz.additive), K the smooth part's constant."""
    module = torch.nn.Softplus(beta=1.0, threshold=20.0).eval()
    path = tmp_path / "softplus.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 2)), str(path),
                   _extra_files={"stabaudit.json": '{"input_shape": [1, 2]}'})
    built = H.Built(path=path, fmt=TS, input_shape=(1, 2), reference=module.double())
    report = _audit_or_refusal(built)
    if report is None:
        return
    x = torch.tensor([[20.0 - 1e-12, 0.0]], dtype=torch.float64)
    y = torch.tensor([[20.0 + 1e-12, 0.0]], dtype=torch.float64)
    quotient = float((module(y) - module(x)).norm() / (y - x).norm())
    assert quotient > 100.0  # the jump, seen in float64
    lip = report.lipschitz
    if lip.certified and lip.upper is not None:
        assert lip.additive is not None and lip.additive.certified and lip.additive.value is not None
        num, den = float((module(y) - module(x)).norm()), float((y - x).norm())
        assert num <= lip.upper * den + lip.additive.value


def test_batch_mixing_operator_with_a_dynamic_batch_dim(tmp_path: Path) -> None:
    """Softmax over the batch axis of an input [N, 3]: constant at N = 1, Lipschitz 1/2 for N >= 2.
    Without --input-shape a certified figure must hold for the batches the model accepts (or the
    audit must refuse)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=0)], "batch_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "batch_softmax.onnx"
    onnx.save(model, str(path))
    from stabaudit.api import audit

    try:
        report = audit(path, method="product", budget=0.2)
    except StabauditError as exc:
        assert exc.exit_code == 2
        return
    two = H.Built(path=path, fmt=ONNX, input_shape=(2, 3), reference=lambda v: torch.softmax(v, dim=0))
    jmax, _ = H.global_truth(two, [])
    assert jmax > 0.49
    assert not report.lipschitz.certified or (report.lipschitz.upper or 0.0) >= jmax


def test_float16_onnx_model_gets_sound_figures_or_a_refusal(tmp_path: Path) -> None:
    """Half-precision weights: sound figures for the stored values, or exit 2; never exit 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (torch.randn(3, 4, generator=torch.Generator().manual_seed(3)) * 3).to(torch.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        [numpy_helper.from_array(w.numpy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "half.onnx"
    onnx.save(model, str(path))
    w64 = w.double()
    built = H.Built(path=path, fmt=ONNX, input_shape=(1, 3), reference=lambda v: torch.relu(v @ w64))
    report = _audit_or_refusal(built)
    if report is not None:
        assert H.global_problems(report, built) == []


def test_bfloat16_torchscript_model_gets_sound_figures_or_a_refusal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).to(torch.bfloat16).eval()
    path = tmp_path / "bf16.pt"
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 4, dtype=torch.bfloat16)), str(path),
                   _extra_files={"stabaudit.json": '{"input_shape": [1, 4]}'})
    reference = copy.deepcopy(module).double()
    built = H.Built(path=path, fmt=TS, input_shape=(1, 4), reference=reference, dtype=torch.bfloat16)
    report = _audit_or_refusal(built)
    if report is not None:
        assert H.global_problems(report, built) == []


LOCAL_CASES = (("mlp_relu", TS), ("cnn", ONNX), ("act_tanh", TS), ("act_elu", ONNX), ("residual", TS),
               ("act_leaky_relu_steep", ONNX), ("act_prelu", TS), ("act_sigmoid", ONNX),
               ("onnx_depth_to_space", ONNX), ("onnx_qlinear", ONNX), ("onnx_integer", ONNX), ("onnx_qgemm", ONNX),
               ("onnx_dynamic_quant", ONNX))


@pytest.mark.parametrize(("case_id", "fmt"), LOCAL_CASES, ids=[f"{c}-{f}" for c, f in LOCAL_CASES])
def test_local_bounds_hold_inside_the_balls(case_id: str, fmt: str, tmp_path: Path) -> None:
    """SA302: the certified local bound over the linf ball of radius eps around each sample is >= the
    float64 Jacobian norm at seeded points of every ball (its corners included)."""
    import numpy as np

    case = CASE_BY_ID[case_id]
    built = H.build(case, fmt, tmp_path)
    g = torch.Generator().manual_seed(5)
    samples = torch.randn((4, *built.input_shape[1:]) if built.input_shape[0] == 1 else
                          (4, *built.input_shape), generator=g, dtype=torch.float64)
    eps = 0.3
    np.savez(tmp_path / "samples.npz", x=samples.numpy().astype(np.float32))
    report = H.audit(built, inputs=tmp_path / "samples.npz", eps=eps)
    (finding,) = [c for c in report.checks if c.id == "SA302"]
    assert finding.value is not None, finding.message
    bound = finding.value["upper"]
    f = built.flat()
    n = int(np.prod(built.input_shape))
    stored = torch.from_numpy(samples.numpy().astype(np.float32)).double().reshape(len(samples), n)
    points = []
    for x in stored:
        for _ in range(8):
            points.append(x + eps * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1))
            points.append(x + eps * torch.sign(torch.randn(n, generator=g, dtype=torch.float64)))
    seen = max(v for v in H.jacobian_norms(f, points) if math.isfinite(v))
    assert bound >= seen * (1 - built.rel), (bound, seen)
    assert finding.value["local_analysis"] >= seen * (1 - built.rel)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_onnx_attribute_variants(variant: Variant, tmp_path: Path) -> None:
    """Auto padding, asymmetric pads, output_shape, ceil mode, dilations, negative slopes, a rank-3
    MatMul, a tiny BatchNorm variance: the engine's float64 forward pass (checked against
    onnxruntime) is the reference of every certified figure."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from stabaudit.ir.executor import Executor
    from stabaudit.loaders import load_model

    graph = helper.make_graph(
        [variant.node()], variant.id, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(variant.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in variant.params().items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{variant.id}.onnx"
    onnx.save(model, str(path))
    executor = Executor(load_model(path, input_shape=variant.input_shape).graph, dtype=torch.float64)
    built = H.Built(path=path, fmt=ONNX, input_shape=variant.input_shape, reference=lambda v: executor(v)[0])
    H.check_reference(built)
    report = H.audit(built)
    assert report.lipschitz.certified
    problems = H.layer_problems(report, built) + H.global_problems(report, built)
    assert problems == []
