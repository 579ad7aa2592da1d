"""Interval Jacobians on receptive fields (analyses.patch_jacobian) against the dense ones and
against float64 Jacobians at points of the ball."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabaudit.analyses import patch_jacobian as PJ
from stabaudit.analyses.local import METHOD_INTERVAL, local_bounds
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _cnn(seed: int = 0, softmax: bool = True) -> Graph:
    """NHWC input, normalisation, a strided padded conv, PReLU, an overlapping ceil-mode max pool, a
    grouped dilated conv, a residual 1x1 branch, a dense head with a softmax and a plain output."""
    rng = np.random.default_rng(seed)

    def conv(cin: int, cout: int, k: int, *, stride: int = 1, pad: int = 0, dil: int = 1, groups: int = 1) -> O.Conv:
        return O.Conv(weight=rng.normal(size=(cout, cin // groups, k, k)) * 0.5, bias=rng.normal(size=cout) * 0.2,
                      strides=(stride, stride), pads=(pad, pad, pad, pad), dilations=(dil, dil), groups=groups)

    nodes = [
        Node(name="t", op=O.Transpose(perm=(0, 3, 1, 2)), inputs=("x",), output="t"),
        Node(name="norm", op=O.Affine(scale=np.array([[[[1.5]], [[0.8]]]]), shift=np.array([[[[-0.2]], [[0.1]]]])),
             inputs=("t",), output="n"),
        Node(name="c1", op=conv(2, 4, 3, stride=2, pad=1), inputs=("n",), output="c1"),
        Node(name="p1", op=O.PRelu(slope=rng.uniform(0.1, 0.3, size=(1, 4, 1, 1))), inputs=("c1",), output="a1"),
        Node(name="mp", op=O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=True),
             inputs=("a1",), output="m"),
        Node(name="c2", op=conv(4, 4, 3, pad=2, dil=2, groups=2), inputs=("m",), output="c2"),
        Node(name="r2", op=O.Relu(), inputs=("c2",), output="a2"),
        Node(name="c3", op=conv(4, 4, 1), inputs=("m",), output="c3"),
        Node(name="add", op=O.Add(), inputs=("a2", "c3"), output="s"),
        Node(name="flat", op=O.Reshape(shape=(1, -1)), inputs=("s",), output="f"),
    ]
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 9, 9, 2)),), outputs=("f",), nodes=tuple(nodes)).validate())
    n = int(np.prod(g.shapes["s"]))
    nodes[-1] = Node(name="flat", op=O.Reshape(shape=(1, n)), inputs=("s",), output="f")
    nodes += [
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(3, n)) * 0.3, bias=rng.normal(size=3) * 0.1),
             inputs=("f",), output="y"),
        Node(name="fc2", op=O.Linear(weight=rng.normal(size=(2, n)) * 0.3), inputs=("f",), output="z"),
    ]
    outputs = ("y", "z")
    if softmax:
        nodes.append(Node(name="sm", op=O.Softmax(axis=-1), inputs=("z",), output="p"))
        outputs = ("y", "p")
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 9, 9, 2)),), outputs=outputs,
                             nodes=tuple(nodes)).validate())


def _ball_jacobians(g: Graph, x0: np.ndarray, eps: float, n: int, seed: int) -> np.ndarray:
    ex = Executor(g, dtype=torch.float64)

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ex(v.reshape(1, 9, 9, 2))])

    rng = np.random.default_rng(seed)
    pts = x0[None] + rng.uniform(-eps, eps, size=(n, x0.size))
    pts[: n // 4] = x0[None] + eps * np.sign(rng.normal(size=(n // 4, x0.size)))  # corners
    return torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()


@pytest.mark.parametrize("eps", [1e-9, 0.02, 0.1])
def test_receptive_fields_match_the_dense_jacobian_and_are_sound(eps: float) -> None:
    g = _cnn()
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
        jacs = _ball_jacobians(g, x0[i], eps, 64, seed=i)
        assert np.all(np.abs(jacs) <= b.jac_abs_upper[None])
        assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= b.upper


def test_softmax_interval_jacobian_is_sound_and_tight_at_a_point() -> None:
    g = _cnn(seed=3)
    x0 = np.random.default_rng(4).normal(size=(1, 162))
    tiny = local_bounds(g, x0, eps=1e-10).samples[0]
    exact = np.linalg.norm(_ball_jacobians(g, x0[0], 0.0, 4, seed=0)[0], ord=2)
    assert exact <= tiny.upper <= exact * (1 + 1e-6)
    wide = local_bounds(g, x0, eps=0.05).samples[0]
    jacs = _ball_jacobians(g, x0[0], 0.05, 64, seed=5)
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
    g = _cnn()
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
    # a stage decides from it whether its budget buys the interval Jacobian (stages._patches_unbought)
    from stabaudit.analyses import plan

    g = _cnn()
    cap = 162 * int(np.prod(g.shapes["f"]))
    cost = PJ.patch_cost(g, g.shapes, cap, PJ.MAX_PATCH_ENTRIES)
    assert cost > 0
    x0 = np.random.default_rng(1).normal(size=(2, 162))
    with plan.ledger() as spent:
        found = local_bounds(g, x0, eps=0.02, max_jacobian_entries=cap, max_vertex_work=0)
    assert found.notes == ("interval Jacobian on receptive fields (patches)",)
    assert spent[0] == pytest.approx(2 * cost, rel=1e-12)
    assert PJ.patch_cost(g, g.shapes, cap, 10) == 0.0  # no patch fits: nothing would be charged
