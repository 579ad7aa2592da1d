"""Tests of certified local Lipschitz bounds (SA302): soundness, tightness near eps = 0, counts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.composition import compose
from stabaudit.analyses.local import METHOD_INTERVAL, _slopes, local_bounds
from stabaudit.bounds import bound_node
from stabaudit.bounds.base import RuleContext
from stabaudit.errors import UnsupportedOperatorError, UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

SAMPLE_MODELS = Path(__file__).resolve().parents[2] / "sample_models"


def _mlp(act: type[O.Op], widths: tuple[int, ...] = (6, 10, 8, 3), seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    nodes: list[Node] = []
    src = "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        w = rng.normal(size=(b, a)) / math.sqrt(a) * 1.5
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=rng.normal(size=b) * 0.3), inputs=(src,), output=f"h{i}"))
        src = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(Node(name=f"act{i}", op=act(), inputs=(src,), output=f"a{i}"))
            src = f"a{i}"
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, widths[0])),), outputs=(src,), nodes=tuple(nodes))
    return with_shapes(g.validate())


def _cnn(seed: int = 1) -> Graph:
    rng = np.random.default_rng(seed)
    nodes = [
        Node(name="conv", op=O.Conv(weight=rng.normal(size=(3, 1, 3, 3)) * 0.5, bias=rng.normal(size=3) * 0.2,
                                    strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="c"),
        Node(name="bn", op=O.Affine(scale=rng.uniform(0.5, 1.5, size=(1, 3, 1, 1)), shift=rng.normal(size=(1, 3, 1, 1)) * 0.1),
             inputs=("c",), output="b"),
        Node(name="relu", op=O.Relu(), inputs=("b",), output="r"),
        Node(name="pool", op=O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
             inputs=("r",), output="p"),
        Node(name="flat", op=O.Reshape(shape=(1, 12)), inputs=("p",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 12)) * 0.4, bias=rng.normal(size=4) * 0.1),
             inputs=("f",), output="y"),
    ]
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, 1, 4, 4)),), outputs=("y",), nodes=tuple(nodes))
    return with_shapes(g.validate())


def _jac_norm(graph: Graph, x: np.ndarray) -> float:
    f = Executor(graph, dtype=torch.float64).flat()
    jac = torch.autograd.functional.jacobian(f, torch.from_numpy(x))
    return float(torch.linalg.matrix_norm(jac, ord=2))


def _global(graph: Graph) -> float:
    ob = {
        n.output: bound_node(n, RuleContext(input_shapes=tuple(graph.shapes[i] for i in n.inputs),
                                            output_shape=graph.shapes[n.output]))
        for n in graph.nodes
    }
    return float(compose(graph, ob).upper.value)


@pytest.mark.parametrize("act", [O.Relu, O.Tanh, O.Sigmoid, O.LeakyRelu])
def test_tight_near_zero_eps(act: type[O.Op]) -> None:
    g = _mlp(act)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6))
    res = local_bounds(g, x, eps=1e-9)
    for xi, s in zip(x, res.samples, strict=True):
        exact = _jac_norm(g, xi)
        assert min(s.candidates.values()) == s.upper
        for value in s.candidates.values():  # every candidate is sound, not only the minimum
            assert value >= exact
        assert s.candidates[METHOD_INTERVAL] <= exact * 1.02 + 1e-9
        assert s.jac_abs_upper is not None
        jac = torch.autograd.functional.jacobian(_flat(g), torch.from_numpy(xi)).numpy()
        assert np.all(np.abs(jac) <= s.jac_abs_upper)
    assert res.upper.value == max(s.upper for s in res.samples)


def _flat(g: Graph):  # type: ignore[no-untyped-def]
    return Executor(g, dtype=torch.float64).flat()


def _ball(rng: np.random.Generator, x0: np.ndarray, eps: float, norm: str, n: int) -> np.ndarray:
    d = rng.uniform(-1, 1, size=(n, x0.size))
    if norm == "l2":
        d = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(0, 1, size=(n, 1))
    pts = x0 + eps * d
    # corners (linf) stress the bound hardest
    if norm == "linf":
        pts[: n // 4] = x0 + eps * np.sign(d[: n // 4])
    return pts


@pytest.mark.parametrize(("which", "norm", "eps"), [
    ("relu", "linf", 0.05), ("relu", "l2", 0.2), ("tanh", "linf", 0.1), ("cnn", "linf", 0.05), ("cnn", "l2", 0.3),
])
def test_sound_on_sampled_pairs_and_jacobians(which: str, norm: str, eps: float) -> None:
    g = _cnn() if which == "cnn" else _mlp(O.Relu if which == "relu" else O.Tanh)
    n_in = 16 if which == "cnn" else 6
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=(2, n_in)) * 0.5
    res = local_bounds(g, x0, eps=eps, norm=norm)
    f = _flat(g)
    for xi, s in zip(x0, res.samples, strict=True):
        pts = _ball(rng, xi, eps, norm, 200)
        with torch.no_grad():
            ys = torch.func.vmap(f)(torch.from_numpy(pts)).numpy()
        a, b = pts[:100], pts[100:]
        q = np.linalg.norm(ys[:100] - ys[100:], axis=1) / np.linalg.norm(a - b, axis=1)
        assert q.max() <= min(s.candidates.values())
        assert q.max() <= s.candidates["local-product"]
        jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts[:50])).numpy()
        norms = np.linalg.norm(jacs, ord=2, axis=(1, 2))
        assert norms.max() <= s.upper
        assert s.jac_abs_upper is not None
        assert np.all(np.abs(jacs) <= s.jac_abs_upper[None])
        # IBP encloses the outputs too: every sampled output's Jacobian bound is finite and positive
        assert 0 < s.upper < math.inf


def test_kink_at_center_is_unstable() -> None:
    w1 = np.array([[1.0, -1.0], [1.0, 1.0]])
    nodes = (
        Node(name="fc0", op=O.Linear(weight=w1, bias=np.zeros(2)), inputs=("x",), output="h"),
        Node(name="relu", op=O.Relu(), inputs=("h",), output="a"),
        Node(name="fc1", op=O.Linear(weight=np.array([[1.0, 1.0]])), inputs=("a",), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=nodes))
    x0 = np.array([[0.5, 0.5]])  # first unit exactly at its kink, second at 1.0
    for eps in (0.0, 1e-12, 0.1):
        res = local_bounds(g, x0, eps=eps)
        (c,) = res.samples[0].counts
        assert (c.active, c.inactive, c.unstable) == (1, 0, 1)
        # G = [1, 1] diag(s, 1) W1 with s in [0, 1]: worst at s = 1: [2, 0], norm 2
        assert 2.0 <= res.samples[0].upper <= 2.0 * (1 + 1e-9)
    s_lo, s_hi, *_ = _slopes(O.Relu(), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert s_lo.tolist() == [[0.0, 0.0]] and s_hi.tolist() == [[1.0, 1.0]]


def test_below_global_and_monotone_in_eps() -> None:
    for g, n_in in ((_mlp(O.Relu), 6), (_cnn(), 16)):
        x0 = np.random.default_rng(11).normal(size=(1, n_in)) * 0.5
        glob = _global(g)
        previous = 0.0
        for eps in (0.0, 1e-2, 0.05, 0.3):
            value = local_bounds(g, x0, eps=eps).upper.value
            assert value >= previous * (1 - 1e-12)
            previous = value
            if eps <= 1e-2:
                assert value <= glob


def test_counts_on_hand_built_net() -> None:
    # pre-activations are x + b exactly (identity weights); x0 = 0, eps = 0.5
    b = np.array([1.0, -1.0, 0.2, -0.2, 0.6])
    nodes = (
        Node(name="fc", op=O.Linear(weight=np.eye(5), bias=b), inputs=("x",), output="h"),
        Node(name="relu", op=O.Relu(), inputs=("h",), output="a"),
        Node(name="fc2", op=O.Linear(weight=np.eye(5)), inputs=("a",), output="z"),
        Node(name="lrelu", op=O.LeakyRelu(alpha=0.1), inputs=("z",), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 5)),), outputs=("y",), nodes=nodes))
    res = local_bounds(g, np.zeros((1, 5)), eps=0.5)
    c1, c2 = res.samples[0].counts
    assert (c1.layer, c1.active, c1.inactive, c1.unstable) == ("relu", 2, 1, 2)
    # relu outputs: [0.5,1.5], 0, [0,0.7], [0,0.3], [0.1,1.1]: lrelu sees l >= 0 everywhere,
    # the dead unit and the ones touching 0 at their kink
    assert (c2.active, c2.inactive, c2.unstable) == (2, 0, 3)
    # G = diag(s2) diag(s1): largest entry 1 (units 0 and 4 stable active): norm exactly 1
    assert 1.0 <= res.upper.value <= 1.0 + 1e-9


def test_sample_mlp_local_below_global() -> None:
    from stabaudit.loaders import load_model

    path = SAMPLE_MODELS / "mlp.onnx"
    if not path.exists():
        pytest.skip("sample models absent")
    g = load_model(path).graph
    x = np.load(SAMPLE_MODELS / "digits_samples.npz")["x_flat"][:2]
    glob = _global(g)
    res = local_bounds(g, x, eps=0.01)
    assert res.upper.value < glob
    for xi, s in zip(x, res.samples, strict=True):
        assert s.upper >= _jac_norm(g, xi.astype(np.float64))


def test_bad_input() -> None:
    g = _mlp(O.Relu)
    with pytest.raises(UsageError):
        local_bounds(g, np.zeros((2, 5)), eps=0.1)
    with pytest.raises(UsageError):
        local_bounds(g, np.zeros((2, 6)), eps=-1.0)
    with pytest.raises(UsageError):
        local_bounds(g, np.zeros((2, 6)), eps=0.1, norm="l1")
    gelu = Graph(inputs=g.inputs, outputs=("s",), nodes=(*g.nodes, Node(name="ge", op=O.Gelu(), inputs=(g.outputs[0],), output="s")))
    with pytest.raises(UnsupportedOperatorError):
        local_bounds(with_shapes(gelu), np.zeros((1, 6)), eps=0.1)


@pytest.mark.parametrize("act", [O.Relu, O.Sigmoid, O.Tanh])
def test_fallback_without_interval_jacobian(act: type[O.Op]) -> None:
    g = _mlp(act)
    x0 = np.random.default_rng(5).normal(size=(1, 6))
    small = local_bounds(g, x0, eps=0.01, max_jacobian_entries=1)
    assert small.samples[0].jac_abs_upper is None
    assert small.notes
    full = local_bounds(g, x0, eps=0.01)
    assert small.upper.value >= full.upper.value
    assert small.upper.value <= _global(g)
    assert small.upper.value >= _jac_norm(g, x0[0])


def _zoo(seed: int = 4) -> Graph:
    """A DAG with every structural op and the pools: residual Add/Sub, Concat, Pad, Transpose,
    overlapping padded MaxPool in ceil mode, GlobalMaxPool, AvgPool, smooth and kinked activations."""
    rng = np.random.default_rng(seed)

    def conv(cin: int, cout: int) -> O.Conv:
        return O.Conv(weight=rng.normal(size=(cout, cin, 3, 3)) * 0.4, bias=rng.normal(size=cout) * 0.1,
                      strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))

    nodes = (
        Node(name="c0", op=conv(1, 2), inputs=("x",), output="c0"),
        Node(name="r0", op=O.Relu(), inputs=("c0",), output="r0"),
        Node(name="c1", op=conv(2, 2), inputs=("r0",), output="c1"),
        Node(name="t1", op=O.Tanh(), inputs=("c1",), output="t1"),
        Node(name="add", op=O.Add(), inputs=("t1", "r0"), output="s"),
        Node(name="sub", op=O.Sub(), inputs=("s", "c0"), output="d"),
        Node(name="cat", op=O.Concat(axis=1), inputs=("s", "d"), output="k"),
        Node(name="lk", op=O.LeakyRelu(alpha=0.2), inputs=("k",), output="lk"),
        Node(name="pad", op=O.Pad(pads=(0, 0, 0, 1, 0, 0, 1, 0), value=0.5), inputs=("lk",), output="p"),
        Node(name="mp", op=O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=True),
             inputs=("p",), output="m"),
        Node(name="tr", op=O.Transpose(perm=(0, 1, 3, 2)), inputs=("m",), output="tm"),
        Node(name="ap", op=O.AvgPool(kernel=(2, 2), strides=(1, 1), pads=(0, 0, 1, 1), dilations=(1, 1)),
             inputs=("tm",), output="a"),
        Node(name="sg", op=O.Sigmoid(), inputs=("a",), output="sg"),
        Node(name="gmp", op=O.GlobalMaxPool(), inputs=("sg",), output="g"),
        Node(name="flat", op=O.Reshape(shape=(1, 4)), inputs=("g",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(3, 4))), inputs=("f",), output="y"),
        Node(name="flat2", op=O.Reshape(shape=(1, -1)), inputs=("a",), output="y2"),
    )
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, 1, 5, 5)),), outputs=("y", "y2"), nodes=nodes)
    g = with_shapes(g.validate())
    # the static reshape needs the real size
    n = int(np.prod(g.shapes["a"]))
    nodes = (*nodes[:-1], Node(name="flat2", op=O.Reshape(shape=(1, n)), inputs=("a",), output="y2"))
    return with_shapes(Graph(inputs=g.inputs, outputs=g.outputs, nodes=nodes).validate())


@pytest.mark.parametrize("eps", [1e-9, 0.05, 0.3])
def test_zoo_graph_sound(eps: float) -> None:
    g = _zoo()
    rng = np.random.default_rng(9)
    x0 = rng.normal(size=(2, 25))
    res = local_bounds(g, x0, eps=eps)
    f = _flat(g)
    for xi, s in zip(x0, res.samples, strict=True):
        pts = _ball(rng, xi, eps, "linf", 80)
        jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()
        assert s.jac_abs_upper is not None
        assert np.all(np.abs(jacs) <= s.jac_abs_upper[None])
        for value in s.candidates.values():
            assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= value
        if eps < 1e-6:
            exact = _jac_norm(g, xi)
            assert s.upper <= exact * 1.05 + 1e-9


def test_l2_ball_tighter_than_box_and_op_bounds_reused() -> None:
    g = _mlp(O.Relu)
    x0 = np.random.default_rng(2).normal(size=(2, 6))
    for eps in (0.01, 0.1, 0.5):
        assert local_bounds(g, x0, eps=eps, norm="l2").upper.value <= local_bounds(g, x0, eps=eps).upper.value
    ob = {
        n.output: bound_node(n, RuleContext(input_shapes=tuple(g.shapes[i] for i in n.inputs),
                                            output_shape=g.shapes[n.output]))
        for n in g.nodes
    }
    a = local_bounds(g, x0, eps=0.1, op_bounds=ob)
    b = local_bounds(g, x0, eps=0.1)
    assert [s.candidates for s in a.samples] == [s.candidates for s in b.samples]


@pytest.mark.parametrize("act", [O.Softplus, O.Elu, O.HardSigmoid, O.Clip])
def test_other_activations_sound(act: type[O.Op]) -> None:
    op_kwargs: dict[str, object] = {"min": -0.5, "max": 0.5} if act is O.Clip else {}
    g = _mlp(O.Relu)
    nodes = tuple(
        Node(name=n.name, op=act(**op_kwargs), inputs=n.inputs, output=n.output) if isinstance(n.op, O.Relu) else n  # type: ignore[arg-type]
        for n in g.nodes
    )
    g = with_shapes(Graph(inputs=g.inputs, outputs=g.outputs, nodes=nodes))
    rng = np.random.default_rng(12)
    x0 = rng.normal(size=(2, 6)) * 2
    f = _flat(g)
    for eps in (1e-9, 0.1, 1.0):
        res = local_bounds(g, x0, eps=eps)
        for xi, s in zip(x0, res.samples, strict=True):
            pts = _ball(rng, xi, eps, "linf", 100)
            jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()
            assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= s.upper
            with torch.no_grad():
                ys = torch.func.vmap(f)(torch.from_numpy(pts)).numpy()
            q = np.linalg.norm(ys[:50] - ys[50:], axis=1) / np.linalg.norm(pts[:50] - pts[50:], axis=1)
            assert q.max() <= s.upper


def test_two_inputs_stacked() -> None:
    rng = np.random.default_rng(21)
    nodes = (
        Node(name="cat", op=O.Concat(axis=1), inputs=("x", "z"), output="k"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(7, 5)), bias=rng.normal(size=7)), inputs=("k",), output="h"),
        Node(name="relu", op=O.Relu(), inputs=("h",), output="a"),
        Node(name="fc2", op=O.Linear(weight=rng.normal(size=(2, 7))), inputs=("a",), output="y1"),
        Node(name="fcz", op=O.Linear(weight=rng.normal(size=(3, 2))), inputs=("z",), output="y2"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)), TensorSpec(name="z", shape=(1, 2))),
                          outputs=("y1", "y2"), nodes=nodes).validate())
    x0 = rng.normal(size=(2, 5))
    for eps, norm in ((1e-9, "linf"), (0.2, "linf"), (0.4, "l2")):
        res = local_bounds(g, x0, eps=eps, norm=norm)
        f = _flat(g)
        for xi, s in zip(x0, res.samples, strict=True):
            pts = _ball(rng, xi, eps, norm, 100)
            jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()
            assert jacs.shape[1:] == (5, 5)
            assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= s.upper
            if eps < 1e-6:
                assert s.upper <= _jac_norm(g, xi) * 1.02 + 1e-9


def test_slope_vertices_sound_and_tighter() -> None:
    from stabaudit.analyses.local import METHOD_VERTICES

    g = _mlp(O.Relu, widths=(6, 12, 3), seed=8)
    rng = np.random.default_rng(30)
    x0 = rng.normal(size=(6, 6))
    res = local_bounds(g, x0, eps=0.05)
    used = [s for s in res.samples if METHOD_VERTICES in s.candidates]
    assert used
    f = _flat(g)
    for s in used:
        xi = x0[s.index]
        assert s.candidates[METHOD_VERTICES] <= s.candidates[METHOD_INTERVAL] * (1 + 1e-9)
        pts = _ball(rng, xi, 0.05, "linf", 200)
        jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()
        assert np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= s.candidates[METHOD_VERTICES]
    off = local_bounds(g, x0, eps=0.05, max_vertex_work=0)
    assert all(METHOD_VERTICES not in s.candidates for s in off.samples)
    assert all(a.upper <= b.upper for a, b in zip(res.samples, off.samples, strict=True))


def test_a_large_input_skips_the_interval_jacobian_without_allocating_it() -> None:
    """SA302 on a 3x256x256 input: the identity Jacobian (196608^2 entries, 300 GB) is never built;
    the local product answers."""
    n = 3 * 256 * 256
    nodes = (
        Node(name="flat", op=O.Reshape(shape=(1, n)), inputs=("x",), output="f"),
        Node(name="relu", op=O.Relu(), inputs=("f",), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3, 256, 256)),), outputs=("y",), nodes=nodes).validate())
    x = np.random.default_rng(0).uniform(0.5, 1.0, size=(1, 3, 256, 256))
    result = local_bounds(g, x, eps=0.01)
    assert 1.0 <= result.upper.value <= 1.0 + 1e-12 and "skipped" in result.notes[0]


def test_sound_through_a_masked_softmax() -> None:
    """A Linear map, a causal-masked softmax and a Linear map over linf balls: every sampled
    quotient and Jacobian norm in the ball is below the local bound, and that bound is below the
    global one (the mask's dropped entries are constant 0: their rows and columns of the softmax's
    Jacobian vanish)."""
    rng = np.random.default_rng(2)
    mask = np.tril(np.ones((4, 4), dtype=bool))
    nodes = [
        Node(name="fc0", op=O.Linear(weight=rng.normal(size=(16, 6)), bias=rng.normal(size=16) * 0.3), inputs=("x",), output="h"),
        Node(name="r", op=O.Reshape(shape=(1, 4, 4)), inputs=("h",), output="hr"),
        Node(name="sm", op=O.Softmax(axis=2, mask=mask), inputs=("hr",), output="s"),
        Node(name="f", op=O.Reshape(shape=(1, 16)), inputs=("s",), output="sf"),
        Node(name="fc1", op=O.Linear(weight=rng.normal(size=(3, 16)), bias=None), inputs=("sf",), output="y"),
    ]
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 6)),), outputs=("y",), nodes=tuple(nodes)).validate())
    x0 = rng.normal(size=(2, 6)) * 0.5
    eps = 0.1
    res = local_bounds(g, x0, eps=eps, norm="linf")
    f = _flat(g)
    for xi, s in zip(x0, res.samples, strict=True):
        pts = _ball(rng, xi, eps, "linf", 200)
        with torch.no_grad():
            ys = torch.func.vmap(f)(torch.from_numpy(pts)).numpy()
        q = np.linalg.norm(ys[:100] - ys[100:], axis=1) / np.linalg.norm(pts[:100] - pts[100:], axis=1)
        jacs = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts[:50])).numpy()
        assert np.isfinite(jacs).all()
        assert q.max() <= s.upper and np.linalg.norm(jacs, ord=2, axis=(1, 2)).max() <= s.upper
        assert s.upper < _global(g)
