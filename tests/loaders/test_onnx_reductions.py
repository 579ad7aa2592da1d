"""The ONNX loader on reductions and element-wise Max/Min: axes as attribute or input, defaults,
noop_with_empty_axes, constants folded into one, Max(x, 0) as Relu; checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.test_onnx import X4, node, rand, run_both, save

AX = np.array([1, -1], np.int64)
NONE = np.zeros(0, np.int64)

CASES: list[tuple[str, list[Any], dict[str, Any], int, list[O.Op]]] = [
    ("mean_attr_axes", [node("ReduceMean", ["x"], axes=[2, 3], keepdims=0)], {}, 17,
     [O.ReduceMean(axes=(2, 3), keepdims=False)]),
    ("mean_input_axes", [node("ReduceMean", ["x", "ax"])], {"ax": AX}, 18, [O.ReduceMean(axes=(1, 3))]),
    ("mean_all_axes", [node("ReduceMean", ["x"])], {}, 17, [O.ReduceMean(axes=(0, 1, 2, 3))]),
    ("sum_attr_axes", [node("ReduceSum", ["x"], axes=[-1])], {}, 11, [O.ReduceSum(axes=(3,))]),
    ("sum_input_axes", [node("ReduceSum", ["x", "ax"], keepdims=0)], {"ax": AX}, 13,
     [O.ReduceSum(axes=(1, 3), keepdims=False)]),
    ("sum_empty_axes_all", [node("ReduceSum", ["x", "ax"])], {"ax": NONE}, 13, [O.ReduceSum(axes=(0, 1, 2, 3))]),
    ("sum_empty_axes_noop", [node("ReduceSum", ["x", "ax"], noop_with_empty_axes=1), node("Relu", ["y"], ["z"])],
     {"ax": NONE}, 13, [O.ReduceSum(axes=()), O.Relu()]),
    ("l2_noop", [node("ReduceL2", ["x"], noop_with_empty_axes=1)], {}, 18, [O.ReduceL2(axes=())]),
    ("max_min_lse", [node("ReduceMax", ["x"], ["a"], axes=[1]), node("ReduceMin", ["a"], ["b"], axes=[2]),
                     node("ReduceLogSumExp", ["b"], axes=[3], keepdims=0)], {}, 17,
     [O.ReduceMax(axes=(1,)), O.ReduceMin(axes=(2,)), O.ReduceLogSumExp(axes=(3,), keepdims=False)]),
    ("max_zero_is_relu", [node("Max", ["x", "z"])], {"z": np.zeros((), np.float32)}, 13, [O.Relu()]),
    ("min_scalar_is_clip", [node("Min", ["c", "x"])], {"c": np.array([0.5], np.float32)}, 13, [O.Clip(max=0.5)]),
    ("max_constants_combined", [node("Max", ["x", "c1", "c2"])],
     {"c1": rand(3, 1, 1, seed=4), "c2": rand(8, seed=5)}, 13, [O.Max()]),
    ("max_variables", [node("Relu", ["x"], ["r"]), node("ReduceMean", ["x"], ["m"], axes=[1]),
                       node("Max", ["x", "r", "m"])], {}, 13, [O.Relu(), O.ReduceMean(axes=(1,)), O.Max()]),
    ("min_alone_is_identity", [node("Min", ["x"], ["m"]), node("Relu", ["m"])], {}, 13, [O.Relu()]),
]


@pytest.mark.parametrize(("nodes", "params", "opset", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reduction_loads_and_matches_onnxruntime(tmp_path: Path, nodes: list[Any], params: dict[str, Any],
                                                 opset: int, expected: list[O.Op]) -> None:
    outputs = ("z",) if nodes[-1].output[0] == "z" else ("y",)
    lm = load_onnx(save(tmp_path, nodes, X4, outputs=outputs, params=params, opset=opset))
    ops = [n.op for n in lm.graph.nodes]
    assert [type(op) for op in ops] == [type(op) for op in expected]
    for got, want in zip(ops, expected, strict=True):
        for field in ("axes", "keepdims", "min", "max"):
            if hasattr(want, field):
                assert getattr(got, field) == getattr(want, field), field
    ours, theirs = run_both(lm)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_max_constant_is_the_combined_constant(tmp_path: Path) -> None:
    c1, c2 = rand(3, 1, 1, seed=4), rand(8, seed=5)
    lm = load_onnx(save(tmp_path, [node("Max", ["x", "c1", "c2"])], X4, params={"c1": c1, "c2": c2}, opset=13))
    (only,) = lm.graph.nodes
    assert isinstance(only.op, O.Max) and only.op.constant is not None
    np.testing.assert_array_equal(only.op.constant, np.maximum(c1, c2))


def test_a_reduction_keeps_samples_apart_unless_it_reduces_the_batch_axis(tmp_path: Path) -> None:
    dynamic = {"x": ["N", 3, 8, 8]}
    lm = load_onnx(save(tmp_path, [node("ReduceMean", ["x"], axes=[2, 3], keepdims=0)], dynamic, opset=17))
    assert lm.graph.inputs[0].shape == (1, 3, 8, 8)  # loaded without --input-shape: proved per sample
    with pytest.raises(Exception, match="batch"):
        load_onnx(save(tmp_path, [node("ReduceSum", ["x"], axes=[0, 1])], dynamic, opset=11, name="b.onnx"))
