"""Resize: the per-axis matrices against the ONNX reference implementation, and the bound rule
against the norm of the whole operator's explicit matrix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from stabaudit.bounds.base import RuleContext
from stabaudit.bounds.linear import bound_resize
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.resize import axis_matrix

SHAPE = (1, 2, 4, 5)


def _graph(op: O.Resize, shape: tuple[int, ...] = SHAPE) -> Graph:
    return Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=("y",),
                 nodes=(Node(name="r", op=op, inputs=("x",), output="y"),))


def _op(mode: str, ctm: str, scales: tuple[float, float], **kw: object) -> O.Resize:
    scales = tuple(float(np.float32(s)) for s in scales)  # as a model stores them
    sizes = tuple(int(s * n) for s, n in zip(scales, SHAPE[2:], strict=True))
    return O.Resize(axes=(2, 3), in_sizes=SHAPE[2:], sizes=sizes, scales=scales, mode=mode,
                    coordinate_mode=ctm, **kw)  # type: ignore[arg-type]


def _reference(op: O.Resize, x: np.ndarray) -> np.ndarray:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    attrs = {"mode": op.mode, "coordinate_transformation_mode": op.coordinate_mode,
             "cubic_coeff_a": op.cubic_a, "exclude_outside": int(op.exclude_outside), "antialias": int(op.antialias)}
    if op.mode == "nearest":
        attrs["nearest_mode"] = op.nearest_mode
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **attrs)
    scales = np.array([1, 1, *op.scales], np.float32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, list(x.shape))],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [helper.make_tensor("roi", 1, [0], []), helper.make_tensor("scales", 1, [4], scales)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


CONFIGS = (
    [("nearest", ctm, sc, {"nearest_mode": nm})
     for ctm in ("half_pixel", "asymmetric", "pytorch_half_pixel", "half_pixel_symmetric")
     for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
     for sc in ((2.0, 3.0), (0.5, 0.4))]
    + [(mode, ctm, sc, {"exclude_outside": ex, "antialias": aa})
       for mode in ("linear", "cubic")
       for ctm in ("half_pixel", "asymmetric", "pytorch_half_pixel", "half_pixel_symmetric")
       for sc in ((2.0, 3.0), (0.5, 0.4), (1.5, 1.0))
       for ex, aa in ((False, False), (True, False), (False, True))]
)


@pytest.mark.parametrize(("mode", "ctm", "scales", "kw"), CONFIGS,
                         ids=[f"{c[0]}-{c[1]}-{c[2][0]}x{c[2][1]}-{'-'.join(f'{k}={v}' for k, v in c[3].items())}"
                              for c in CONFIGS])
def test_matrices_reproduce_the_onnx_reference(mode: str, ctm: str, scales: tuple[float, float], kw: dict) -> None:
    op = _op(mode, ctm, scales, **kw)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ours = Executor(_graph(op), dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))[0].numpy()
    want = _reference(op, x)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


def _explicit_norm(op: O.Resize, shape: tuple[int, ...]) -> float:
    """The largest singular value of the operator, from its matrix formed column by column."""
    ex = Executor(_graph(op, shape), dtype=torch.float64)
    n = int(np.prod(shape))
    cols = [ex(torch.eye(n, dtype=torch.float64)[i].reshape(shape))[0].reshape(-1) for i in range(n)]
    return float(np.linalg.svd(torch.stack(cols, dim=1).numpy(), compute_uv=False)[0])


@pytest.mark.parametrize(("mode", "ctm", "scales", "kw"), CONFIGS[::5])
def test_rule_is_the_norm_of_the_explicit_matrix(mode: str, ctm: str, scales: tuple[float, float], kw: dict) -> None:
    op = _op(mode, ctm, scales, **kw)
    shape = (1, 1, *SHAPE[2:])
    out = (1, 1, *op.sizes)
    b = bound_resize(Node(name="r", op=op, inputs=("x",), output="y"),
                     RuleContext(input_shapes=(shape,), output_shape=out))
    exact = _explicit_norm(op, shape)
    assert b.lower is not None
    assert b.lower.value <= exact * (1 + 1e-12) and exact <= b.upper.value
    assert b.upper.value <= exact * (1 + 1e-6)


def test_nearest_norm_is_exactly_the_root_of_the_largest_repetition() -> None:
    op = _op("nearest", "asymmetric", (2.0, 3.0), nearest_mode="floor")
    b = bound_resize(Node(name="r", op=op, inputs=("x",), output="y"),
                     RuleContext(input_shapes=(SHAPE,), output_shape=(1, 2, 8, 15)))
    assert np.sqrt(6.0) <= b.upper.value <= np.sqrt(6.0) * (1 + 1e-15)


def test_tf_crop_and_resize_fills_outside_with_the_extrapolation_value() -> None:
    op = O.Resize(axes=(3,), in_sizes=(5,), sizes=(4,), scales=(0.8,), mode="linear",
                  coordinate_mode="tf_crop_and_resize", rois=((-0.5, 0.5),), extrapolation_value=7.0)
    a, outside = axis_matrix(op, 0)
    assert outside is not None and outside.tolist() == [True, True, False, False]
    assert not a[:2].any() and np.allclose(a.sum(axis=1)[2:], 1.0)
    y = Executor(_graph(op), dtype=torch.float64)(torch.zeros(SHAPE, dtype=torch.float64))[0]
    assert torch.all(y[..., :2] == 7.0) and torch.all(y[..., 2:] == 0.0)


@pytest.mark.parametrize(("n", "m"), list(itertools.product((1, 3, 7), (1, 2, 9))))
def test_every_row_of_an_interpolation_sums_to_one(n: int, m: int) -> None:
    for mode, ctm in itertools.product(("nearest", "linear", "cubic"), ("half_pixel", "align_corners", "asymmetric")):
        op = O.Resize(axes=(0,), in_sizes=(n,), sizes=(m,), scales=(m / n,), mode=mode, coordinate_mode=ctm)
        assert np.allclose(axis_matrix(op, 0)[0].sum(axis=1), 1.0)
