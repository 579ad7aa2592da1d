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
    _rounded,
    check_equivalence,
    tolerance_rule,
)
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.loaders.base import LoadedModel, ModelFormat

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
