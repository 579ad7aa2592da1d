"""Quantization rules: the smooth part's constant, the rounding error's bound (the jump) against the
executed kernels, ties and saturation included, and the smooth part the analyses evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import Guarantee
from stabaudit.bounds.quantization import entry_error
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import branch_switches, smooth_part

PER_TENSOR = O.Quantize(scale=(0.1,), zero_point=(3.0,), qmin=-128, qmax=127)
PER_AXIS = O.Quantize(scale=(0.1, 0.2, 0.4), zero_point=(0.0, 10.0, 250.0), qmin=0, qmax=255, axis=1)
INTEGER = O.Quantize(scale=(0.25, 0.5, 2.0), zero_point=(1.0, -3.0, 0.0), qmin=-8, qmax=7, axis=1, integer=True)
SHAPE = (2, 3, 4)


def _graph(op: O.Op, shape: tuple[int, ...] = SHAPE) -> Graph:
    node = Node(name="q", op=op, inputs=("x",), output="y")
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=("y",), nodes=(node,)).validate())


def _bound(op: O.Op, shape: tuple[int, ...] = SHAPE):
    from stabaudit.bounds.base import RuleContext

    graph = _graph(op, shape)
    return bound_node(graph.nodes[0], RuleContext(input_shapes=(shape,), output_shape=graph.shapes["y"]))


@pytest.mark.parametrize(("op", "exact", "gain"), [
    (PER_TENSOR, math.sqrt(24) * 0.05, 1.0),
    (PER_AXIS, math.sqrt(8 * (0.05**2 + 0.1**2 + 0.2**2)), 1.0),
    (INTEGER, math.sqrt(24) * 0.5, 4.0),
], ids=["per-tensor", "per-axis", "integer"])
def test_jump_is_half_a_step_per_entry_and_the_clip_is_1_lipschitz(op: O.Quantize, exact: float, gain: float) -> None:
    ob = _bound(op)
    assert ob.upper.guarantee is Guarantee.UPPER and ob.lower is not None and ob.lower.guarantee is Guarantee.LOWER
    assert ob.upper.value == pytest.approx(gain, rel=1e-15) and ob.upper.value >= gain
    assert ob.lower.value <= gain and ob.lower.value == pytest.approx(gain, rel=1e-12)
    reach = max(max(abs(op.qmin - z), abs(op.qmax - z)) for z in op.zero_point) + 1
    assert exact <= ob.jump <= exact * (1 + 2.0**-21 * reach) * (1 + 1e-12)  # rounding margin: 2^-22 (R + 1) steps


def test_smooth_quantize_has_no_jump_and_bad_steps_no_bound() -> None:
    import dataclasses

    assert _bound(dataclasses.replace(PER_AXIS, smooth=True)).jump == 0.0
    bad = _bound(dataclasses.replace(PER_TENSOR, scale=(0.0,)))
    assert bad.upper.value == math.inf


def _points(op: O.Quantize, rng: np.random.Generator) -> np.ndarray:
    """Random values over and beyond the range, and exact ties (k + 1/2) s of every step."""
    scale = np.asarray(op.scale).reshape(op.steps(3)[2] or ())
    zero = np.asarray(op.zero_point).reshape(op.steps(3)[2] or ())
    wide = rng.uniform(-1.3, 1.3, (64, *SHAPE)) * scale * (op.qmax - op.qmin)
    k = rng.integers(op.qmin - 3, op.qmax + 3, (64, *SHAPE)) - zero
    ties = (k + 0.5) * scale
    return np.concatenate([wide, ties, np.zeros((1, *SHAPE))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", [PER_TENSOR, PER_AXIS, INTEGER], ids=["per-tensor", "per-axis", "integer"])
def test_executed_rounding_error_is_within_the_jump(op: O.Quantize, dtype: torch.dtype) -> None:
    """q(x) - smooth(x) entry by entry within entry_error (ties and saturated entries included), the
    largest close to half a step (the bound is tight), and its L2 norm within the jump."""
    import dataclasses

    graph = _graph(op)
    executed = Executor(graph, dtype=dtype)
    smooth = Executor(_graph(dataclasses.replace(op, smooth=True)), dtype=torch.float64)
    x = _points(op, np.random.default_rng(0))
    ob = _bound(op)
    scale = np.asarray(op.scale).reshape(op.steps(3)[2] or ())
    unit = np.ones_like(scale) if op.integer else scale
    limit = np.broadcast_to(np.asarray([entry_error(float(u), z, op.qmin, op.qmax)
                                        for u, z in zip(np.reshape(unit, -1), op.zero_point, strict=True)])
                            .reshape(np.shape(scale)), SHAPE)
    worst = 0.0
    for v in x:
        t = torch.from_numpy(v)
        (q,) = executed(t.to(dtype))
        (c,) = smooth(t)
        e = q.double().numpy() - c.numpy()
        assert np.all(np.abs(e) <= limit), np.abs(e).max()
        assert float(np.linalg.norm(e)) <= ob.jump
        worst = max(worst, float(np.max(np.abs(e) / np.broadcast_to(unit, SHAPE))))
    assert 0.49 <= worst <= 0.5 + 1e-4


def test_smooth_part_is_the_clip() -> None:
    graph = _graph(PER_TENSOR)
    smooth = smooth_part(graph)
    clip = smooth.nodes[0].op
    assert isinstance(clip, O.Clip) and clip.min == pytest.approx(0.1 * (-131)) and clip.max == pytest.approx(0.1 * 124)
    assert [n.name for n in branch_switches(graph)] == ["q"] and branch_switches(smooth) == []
    per_axis = smooth_part(_graph(PER_AXIS)).nodes[0].op
    assert isinstance(per_axis, O.Quantize) and per_axis.smooth
    x = torch.linspace(-30, 30, 24, dtype=torch.float64).reshape(SHAPE)
    (y,) = Executor(smooth_part(_graph(PER_AXIS)), dtype=torch.float64)(x)
    lo = torch.tensor([0.0, -2.0, -100.0], dtype=torch.float64).reshape(1, 3, 1)
    hi = torch.tensor([25.5, 49.0, 2.0], dtype=torch.float64).reshape(1, 3, 1)
    assert torch.allclose(y, torch.clamp(x, lo, hi))


def test_dynamic_quantization_error_is_within_half_the_data_step() -> None:
    """|q(x) - x| <= s / 2 per entry with s = (max(0, max x) - min(0, min x)) / 255, saturation at the
    ends included; the rule's jump is infinite (a range of x is needed), the smooth part the identity."""
    graph = _graph(O.DynamicQuantize())
    ex = Executor(graph, dtype=torch.float32)
    rng = np.random.default_rng(1)
    worst = 0.0
    for scale, shift in ((1.0, 0.0), (5.0, 3.0), (0.01, -1.0), (100.0, 0.0)):
        for _ in range(20):
            x = torch.from_numpy((rng.standard_normal(SHAPE) * scale + shift).astype(np.float32))
            (q,) = ex(x)
            step = (max(0.0, float(x.max())) - min(0.0, float(x.min()))) / 255
            e = (q.double() - x.double()).abs().max().item()
            assert e <= step * (0.5 + 2.0**-20)
            worst = max(worst, e / step)
    assert worst > 0.49
    ob = _bound(O.DynamicQuantize())
    assert ob.upper.value == 1.0 and ob.jump == math.inf
    assert isinstance(smooth_part(graph).nodes[0].op, O.Reshape)
    for part in (O.QuantPart.INTEGER, O.QuantPart.SCALE, O.QuantPart.ZERO_POINT):
        assert _bound(O.DynamicQuantize(part=part)).upper.value == math.inf


@pytest.mark.parametrize("op", [PER_TENSOR, PER_AXIS, INTEGER], ids=["per-tensor", "per-axis", "integer"])
def test_value_ranges_of_a_quantization_are_its_values_at_the_ends(op: O.Quantize) -> None:
    """The quantization is non-decreasing: over a box its values lie between those at the box's ends,
    and those are attained (the enclosure is exact)."""
    import dataclasses

    from stabaudit.analyses.ranges import value_ranges
    from stabaudit.bounds.base import Interval

    rng = np.random.default_rng(2)
    lo = rng.uniform(-40, 10, SHAPE)
    hi = lo + rng.uniform(0, 30, SHAPE)
    for variant in (op, dataclasses.replace(op, smooth=True)):
        graph = _graph(variant)
        out = value_ranges(graph, {"x": Interval(lo=lo, hi=hi)})["y"]
        ex = Executor(graph, dtype=torch.float64)
        (at_lo,), (at_hi,) = ex(torch.from_numpy(lo)), ex(torch.from_numpy(hi))
        assert np.array_equal(out.lo, at_lo.numpy()) and np.array_equal(out.hi, at_hi.numpy())
        for t in rng.uniform(0, 1, (32, *SHAPE)):
            (y,) = ex(torch.from_numpy(lo + t * (hi - lo)))
            assert np.all(out.lo <= y.numpy()) and np.all(y.numpy() <= out.hi)
