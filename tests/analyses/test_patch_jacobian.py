"""Interval Jacobians on receptive fields (analyses.patch_jacobian) against the dense ones and
against float64 Jacobians at points of the ball."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabaudit.analyses import patch_jacobian as PJ
from stabaudit.analyses.local import METHOD_INTERVAL, local_bounds
from stabaudit.ir import ops as O
from tests.analyses.cnn_fixture import ball_jacobians, cnn


@pytest.mark.parametrize("eps", [1e-9, 0.02, 0.1])
def test_receptive_fields_match_the_dense_jacobian_and_are_sound(eps: float) -> None:
    g = cnn()
    x0 = np.random.default_rng(1).normal(size=(2, 162))
    dense = local_bounds(g, x0, eps=eps, max_vertex_work=0)
    n_in = 162
    largest = max(int(np.prod(g.shapes[n.output])) for n in g.nodes)
    # too small for the dense form of the largest value, enough for the flattened features
    cap = n_in * int(np.prod(g.shapes["f"]))
    assert cap < n_in * largest
    patched = local_bounds(g, x0, eps=eps, max_jacobian_entries=cap, max_vertex_work=0)
    assert patched.notes == ("interval Jacobian on receptive fields (patches)",)
    for i, (a, b) in enumerate(zip(dense.samples, patched.samples, strict=True)):
        assert a.jac_abs_upper is not None and b.jac_abs_upper is not None
        # the same arithmetic in another order: equal up to rounding
        np.testing.assert_allclose(b.jac_abs_upper, a.jac_abs_upper, rtol=1e-9, atol=1e-12)
        assert b.candidates[METHOD_INTERVAL] == pytest.approx(a.candidates[METHOD_INTERVAL], rel=1e-9)
        assert [c.unstable for c in a.counts] == [c.unstable for c in b.counts]
        jacs = ball_jacobians(g, x0[i], eps, 64, seed=i)
        assert np.all(np.abs(jacs) <= b.jac_abs_upper[None])
        assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= b.upper


def test_softmax_interval_jacobian_is_sound_and_tight_at_a_point() -> None:
    g = cnn(seed=3)
    x0 = np.random.default_rng(4).normal(size=(1, 162))
    tiny = local_bounds(g, x0, eps=1e-10).samples[0]
    exact = np.linalg.norm(ball_jacobians(g, x0[0], 0.0, 4, seed=0)[0], ord=2)
    assert exact <= tiny.upper <= exact * (1 + 1e-6)
    wide = local_bounds(g, x0, eps=0.05).samples[0]
    jacs = ball_jacobians(g, x0[0], 0.05, 64, seed=5)
    assert wide.jac_abs_upper is not None and np.all(np.abs(jacs) <= wide.jac_abs_upper[None])


def test_patch_rules_against_dense_conversion() -> None:
    """Conv and the identity's conversions: the patches' dense form is the conv's Jacobian."""
    rng = np.random.default_rng(2)
    op = O.Conv(weight=rng.normal(size=(3, 2, 3, 2)), bias=None, strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2))
    d = PJ.identity((1, 2, 6, 5))
    p = PJ.to_patches(d)
    assert p is not None
    x = torch.from_numpy(rng.normal(size=(1, 2, 6, 5)))
    weight = torch.from_numpy(np.array(op.weight))
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 1, 2)), weight,
                                   stride=(2, 1), dilation=(1, 2))
    out = PJ.conv(p, op, tuple(y.shape), rel=0.0)
    assert out is not None
    jc, _ = PJ.to_dense(out, 60, tuple(y.shape))
    ref = torch.autograd.functional.jacobian(
        lambda v: torch.nn.functional.conv2d(torch.nn.functional.pad(v.reshape(1, 2, 6, 5), (0, 1, 1, 2)),
                                             weight, stride=(2, 1), dilation=(1, 2)).reshape(-1),
        x.reshape(-1))
    np.testing.assert_allclose(jc.reshape(60, -1).T.numpy(), ref.numpy(), atol=1e-14)
    assert PJ.conv(p, op, tuple(y.shape), rel=0.0, max_entries=10) is None


def test_the_shape_walk_decides_before_any_tensor_is_built() -> None:
    g = cnn()
    n_in = 162
    cap = n_in * int(np.prod(g.shapes["f"]))
    assert PJ.reaches_outputs(g, g.shapes, cap, PJ.MAX_PATCH_ENTRIES)
    assert not PJ.reaches_outputs(g, g.shapes, cap, 10)  # no patch fits: nothing is built
    x0 = np.random.default_rng(1).normal(size=(1, 162))
    starved = local_bounds(g, x0, eps=0.02, max_jacobian_entries=cap, max_patch_entries=10)
    assert METHOD_INTERVAL not in starved.samples[0].candidates
    assert "on receptive fields too" in starved.notes[0]
    full = local_bounds(g, x0, eps=0.02, max_jacobian_entries=cap)
    assert full.upper.value <= starved.upper.value
    assert not PJ.reaches_outputs(g, g.shapes, 10, PJ.MAX_PATCH_ENTRIES)  # the head does not fit densely
    assert PJ.patch_entries(64 * 1000) == 1000 and PJ.patch_entries(1 << 40) == PJ.MAX_PATCH_ENTRIES


def test_the_shape_walk_counts_what_the_receptive_fields_charge() -> None:
    # patch_cost is what conv and max_pool charge as they run, known before any tensor is built:
    # a stage decides from it whether its budget buys the interval Jacobian (stages._jacobian_unbought)
    from stabaudit.analyses import plan

    g = cnn()
    cap = 162 * int(np.prod(g.shapes["f"]))
    cost = PJ.patch_cost(g, g.shapes, cap, PJ.MAX_PATCH_ENTRIES)
    assert cost > 0
    x0 = np.random.default_rng(1).normal(size=(2, 162))
    with plan.ledger() as spent:
        found = local_bounds(g, x0, eps=0.02, max_jacobian_entries=cap, max_vertex_work=0)
    assert found.notes == ("interval Jacobian on receptive fields (patches)",)
    assert spent[0] == pytest.approx(2 * cost, rel=1e-12)
    assert PJ.patch_cost(g, g.shapes, cap, 10) == 0.0  # no patch fits: nothing would be charged
    # densely, local_bounds charges local.dense_cost per ball before it runs
    from stabaudit.analyses.local import dense_cost, jacobian_cost

    with plan.ledger() as spent:
        dense = local_bounds(g, x0, eps=0.02, max_vertex_work=0)
    assert dense.notes == () and dense_cost(g, g.shapes) > 0
    assert spent[0] == pytest.approx(2 * dense_cost(g, g.shapes), rel=1e-12) == 2 * jacobian_cost(g, g.shapes)
    assert jacobian_cost(g, g.shapes, cap) == pytest.approx(cost, rel=1e-12)
