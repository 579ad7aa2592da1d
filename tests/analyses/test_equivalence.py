"""SA902 at the precision the model runs in: inputs rounded to it, tolerance from its roundoff."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from stabaudit.analyses.equivalence import (
    ATOL,
    HALF_RTOL,
    RTOL,
    check_equivalence,
    tolerance_rule,
)
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.loaders.base import LoadedModel, ModelFormat
from stabaudit.loaders.base import rounded_to as _rounded

W = np.random.default_rng(0).standard_normal((6, 8))


def _model(precision: str, reference_dtype: torch.dtype, *, skew: float = 1.0) -> LoadedModel:
    """x -> tanh(W x) in the IR; the reference computes it in ``reference_dtype`` (times ``skew``)."""
    weight = torch.from_numpy(W).to(reference_dtype)
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(2, 8)),), outputs=("t",), nodes=(
        Node(name="fc", op=O.Linear(weight=W.copy()), inputs=("x",), output="y"),
        Node(name="act", op=O.Tanh(), inputs=("y",), output="t"))).validate())

    def reference(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(np.asarray(inputs["x"], np.float32)).to(reference_dtype)
        return [(torch.tanh(x @ weight.T) * skew).float().numpy()]

    return LoadedModel(graph=graph, format=ModelFormat.TORCHSCRIPT, reference_name="torchscript",
                       reference=reference, parameters=W.size, precision=precision)


def test_tolerance_rule_follows_the_unit_roundoff() -> None:
    assert tolerance_rule("float32") == (RTOL, ATOL) == tolerance_rule("float64")
    assert tolerance_rule("float16") == (32 * 2.0**-11, ATOL)
    assert tolerance_rule("bfloat16") == (32 * 2.0**-8, ATOL)
    assert set(HALF_RTOL) == {"float16", "bfloat16"}


def test_inputs_are_rounded_to_the_model_precision() -> None:
    x = np.array([1 + 2.0**-10, 1 + 2.0**-7, 3.0], np.float32)
    np.testing.assert_array_equal(_rounded(x, "float32"), x)
    np.testing.assert_array_equal(_rounded(x, "float16"), [1 + 2.0**-10, 1 + 2.0**-7, 3.0])
    np.testing.assert_array_equal(_rounded(x, "bfloat16"), [1.0, 1 + 2.0**-7, 3.0])  # 8 significant bits


@pytest.mark.parametrize(("precision", "dtype"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_reference_passes_at_its_precision_only(precision: str, dtype: torch.dtype) -> None:
    result = check_equivalence(_model(precision, dtype), seed=0)
    assert result.passed and result.precision == precision and result.max_abs_diff > 0
    assert result.tolerance == pytest.approx(HALF_RTOL[precision] * _scale(precision, dtype) + ATOL, rel=1e-12)
    assert any(f"the reference runs in {precision}" in note for note in result.notes)
    # the same reference judged as a float32 model: its rounding is far above 1e-4 of the scale
    assert not check_equivalence(_model("float32", dtype), seed=0).passed
    # a wrong operator (outputs off by 30%) is caught even at bfloat16's tolerance
    assert not check_equivalence(_model(precision, dtype, skew=1.3), seed=0).passed


def _scale(precision: str, dtype: torch.dtype) -> float:
    """max |reference| over the seeded inputs check_equivalence draws (seed 0, 4 samples)."""
    rng = np.random.default_rng(0)
    model = _model(precision, dtype)
    return max(float(np.abs(model.reference({"x": _rounded(rng.standard_normal((2, 8)).astype(np.float32),
                                                                    precision)})[0]).max()) for _ in range(4))


# ---- quantized models: one rounding step per quantization ------------------------------------------------
QUANT = O.Quantize(scale=(0.05,), zero_point=(128.0,), qmin=0, qmax=255)


def _quantized(reference_shift: float) -> LoadedModel:
    """x -> q(W x) -> W2 q; the reference quantizes in float64 and adds ``reference_shift``."""
    w2 = np.random.default_rng(1).standard_normal((3, 6))
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(2, 8)),), outputs=("z",), nodes=(
        Node(name="fc", op=O.Linear(weight=W.copy()), inputs=("x",), output="y"),
        Node(name="q", op=QUANT, inputs=("y",), output="q"),
        Node(name="out", op=O.Linear(weight=w2), inputs=("q",), output="z"))).validate())

    def reference(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        y = np.asarray(inputs["x"], np.float64) @ W.T
        q = (np.clip(np.round(y / 0.05) + 128, 0, 255) - 128) * 0.05
        return [(q @ w2.T + reference_shift).astype(np.float32)]

    return LoadedModel(graph=graph, format=ModelFormat.ONNX, reference_name="onnxruntime",
                       reference=reference, parameters=W.size + w2.size, precision="float32")


def test_quantized_tolerance_is_one_step_carried_to_the_output() -> None:
    """The allowance is the output change of one step of each quantization: one step (0.05, times a
    column of W2 here) passes, an O(1) disagreement does not; the note says so."""
    result = check_equivalence(_quantized(0.0), seed=0)
    assert result.passed and result.max_abs_diff < 1e-5
    w2 = np.abs(np.random.default_rng(1).standard_normal((3, 6)))
    # one entry of q moved by 0.05 moves z by 0.05 |W2[:, j]| (max abs): between the smallest and
    # the largest column maximum, plus the float tolerance (outputs of size < 100 here)
    assert 0.05 * w2.max(axis=0).min() <= result.tolerance <= 0.05 * w2.max() + RTOL * 100 + ATOL
    assert any("quantization" in n and "one rounding step" in n for n in result.notes)
    assert not check_equivalence(_quantized(1.0), seed=0).passed
