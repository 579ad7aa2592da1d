"""Tests of stabaudit.ir.passes: folding per-channel affine maps into the linear op before them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import fold_affine


def _graph(
    shape: tuple[int, ...], nodes: list[Node], outputs: tuple[str, ...] | None = None
) -> Graph:
    g = Graph(
        inputs=(TensorSpec(name="x", shape=shape),),
        outputs=outputs or (nodes[-1].output,),
        nodes=tuple(nodes),
    )
    return with_shapes(g.validate())


def _run(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    ex = Executor(graph, dtype=torch.float64)
    return [t.numpy() for t in ex(torch.from_numpy(x))]


def _assert_same(a: Graph, b: Graph, shape: tuple[int, ...], seed: int = 0) -> None:
    x = np.random.default_rng(seed).normal(size=shape)
    for ya, yb in zip(_run(a, x), _run(b, x), strict=True):
        np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-12)


def test_linear_then_affine_folds_exactly() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    scale = rng.normal(size=6).astype(np.float32)
    shift = rng.normal(size=(1, 6)).astype(np.float32)
    g = _graph(
        (2, 4),
        [
            Node(
                name="fc1",
                op=O.Linear(weight=w, bias=b),
                inputs=("x",),
                output="h",
                source_op="Gemm",
            ),
            Node(
                name="mul1",
                op=O.Affine(scale=scale, shift=shift),
                inputs=("h",),
                output="y",
                source_op="Mul",
            ),
            Node(name="act", op=O.Relu(), inputs=("y",), output="z", source_op="Relu"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["fc1+mul1", "act"]
    assert folded.nodes[0].source_op == "Gemm+Mul"
    assert folded.nodes[0].output == "y"
    assert folded.shapes["y"] == (2, 6)
    op = folded.nodes[0].op
    assert isinstance(op, O.Linear)
    np.testing.assert_allclose(op.weight, scale[:, None].astype(np.float64) * w, rtol=1e-15)
    _assert_same(g, folded, (2, 4))


def test_conv_then_batchnorm_like_affine_folds_exactly() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 3, 3, 3))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    mean, var = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    scale = (gamma / np.sqrt(var + 1e-5)).reshape(1, 5, 1, 1)
    shift = (beta - mean * gamma / np.sqrt(var + 1e-5)).reshape(5, 1, 1)
    g = _graph(
        (1, 3, 8, 8),
        [
            Node(
                name="conv1",
                op=O.Conv(weight=w, bias=None, strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 1)),
                inputs=("x",),
                output="c",
                source_op="Conv",
            ),
            Node(
                name="bn1",
                op=O.Affine(scale=scale, shift=shift),
                inputs=("c",),
                output="y",
                source_op="BatchNormalization",
            ),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["conv1+bn1"]
    assert folded.nodes[0].source_op == "Conv+BatchNormalization"
    op = folded.nodes[0].op
    assert isinstance(op, O.Conv) and op.bias is not None
    _assert_same(g, folded, (1, 3, 8, 8))


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_grouped_conv_transpose_then_affine_folds_exactly(groups: int) -> None:
    rng = np.random.default_rng(3 + groups)
    c_in, c_out = 6, 3 * groups
    w = rng.normal(size=(c_in, c_out // groups, 3, 2))
    b = rng.normal(size=c_out)
    scale = rng.normal(size=(c_out, 1, 1))  # distinct per output channel
    shift = rng.normal(size=(1, c_out, 1, 1))
    g = _graph(
        (1, c_in, 5, 4),
        [
            Node(
                name="up",
                op=O.ConvTranspose(
                    weight=w,
                    bias=b,
                    strides=(2, 1),
                    pads=(1, 0, 0, 1),
                    dilations=(1, 2),
                    groups=groups,
                    output_padding=(1, 0),
                ),
                inputs=("x",),
                output="u",
            ),
            Node(name="aff", op=O.Affine(scale=scale, shift=shift), inputs=("u",), output="y"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["up+aff"]
    assert folded.nodes[0].source_op == "ConvTranspose+Affine"
    _assert_same(g, folded, (1, c_in, 5, 4))


def test_chain_of_affines_folds_one_after_another() -> None:
    rng = np.random.default_rng(4)
    g = _graph(
        (3, 4),
        [
            Node(name="fc", op=O.Linear(weight=rng.normal(size=(5, 4))), inputs=("x",), output="h"),
            Node(name="mul", op=O.Affine(scale=rng.normal(size=5)), inputs=("h",), output="h2"),
            Node(name="add", op=O.Affine(shift=np.float64(0.5)), inputs=("h2",), output="y"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["fc+mul+add"]
    _assert_same(g, folded, (3, 4))


def test_not_folded_when_linear_output_has_two_consumers() -> None:
    rng = np.random.default_rng(5)
    g = _graph(
        (1, 4),
        [
            Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 4))), inputs=("x",), output="h"),
            Node(name="aff", op=O.Affine(scale=rng.normal(size=4)), inputs=("h",), output="a"),
            Node(name="res", op=O.Add(), inputs=("a", "h"), output="y"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["fc", "aff", "res"]
    _assert_same(g, folded, (1, 4))


def test_not_folded_when_linear_output_is_a_graph_output() -> None:
    rng = np.random.default_rng(6)
    g = _graph(
        (1, 4),
        [
            Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 4))), inputs=("x",), output="h"),
            Node(name="aff", op=O.Affine(scale=rng.normal(size=4)), inputs=("h",), output="y"),
        ],
        outputs=("h", "y"),
    )
    assert [n.name for n in fold_affine(g).nodes] == ["fc", "aff"]


@pytest.mark.parametrize(
    "scale",
    [
        np.linspace(0.5, 2.0, 36).reshape(1, 1, 6, 6),  # varies spatially
        np.linspace(0.5, 2.0, 4 * 6).reshape(4, 6, 1),  # varies along channel and height
        np.linspace(0.5, 2.0, 4).reshape(4),  # aligned with the last (width) axis, not channels
    ],
)
def test_not_folded_when_scale_is_not_per_channel(scale: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    g = _graph(
        (1, 2, 6, 4) if scale.ndim != 4 else (1, 2, 6, 6),
        [
            Node(
                name="conv",
                op=O.Conv(
                    weight=rng.normal(size=(4, 2, 1, 1)),
                    strides=(1, 1),
                    pads=(0, 0, 0, 0),
                    dilations=(1, 1),
                ),
                inputs=("x",),
                output="c",
            ),
            Node(name="aff", op=O.Affine(scale=scale), inputs=("c",), output="y"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["conv", "aff"]


def test_not_folded_when_affine_broadcasts_to_a_larger_shape() -> None:
    g = _graph(
        (1, 3),
        [
            Node(name="fc", op=O.Linear(weight=np.eye(3)), inputs=("x",), output="h"),
            Node(name="aff", op=O.Affine(scale=np.ones((2, 1, 3))), inputs=("h",), output="y"),
        ],
    )
    assert [n.name for n in fold_affine(g).nodes] == ["fc", "aff"]


def test_unrelated_nodes_are_kept_and_order_is_valid() -> None:
    rng = np.random.default_rng(8)
    g = _graph(
        (1, 4),
        [
            Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 4))), inputs=("x",), output="h"),
            Node(name="side", op=O.Tanh(), inputs=("x",), output="t"),
            Node(
                name="aff",
                op=O.Affine(scale=rng.normal(size=4), shift=rng.normal(size=4)),
                inputs=("h",),
                output="a",
            ),
            Node(name="sum", op=O.Add(), inputs=("a", "t"), output="y"),
        ],
    )
    folded = fold_affine(g)
    assert [n.name for n in folded.nodes] == ["side", "fc+aff", "sum"]
    assert set(folded.shapes) == {"x", "t", "a", "y"}
    _assert_same(g, folded, (1, 4))


# ---- smooth_part: branch switches replaced by their smooth formula -------------------------------
def test_smooth_part_replaces_thresholded_softplus_and_keeps_everything_else() -> None:
    from stabaudit.ir.passes import branch_switches, smooth_part

    w = np.array([[30.0, -1.0], [2.0, 0.5], [-3.0, 40.0]])
    nodes = [
        Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="a"),
        Node(name="sp", op=O.Softplus(beta=2.0, threshold=5.0), inputs=("a",), output="y"),
    ]
    g = _graph((1, 2), nodes)
    assert [n.name for n in branch_switches(g)] == ["sp"]
    s = smooth_part(g)
    assert branch_switches(s) == [] and s.nodes[0] is g.nodes[0]
    assert isinstance(s.nodes[1].op, O.Softplus) and s.nodes[1].op.beta == 2.0
    assert s.nodes[1].op.threshold is None and dict(s.shapes) == dict(g.shapes)
    x = np.array([[0.2, 0.1]])  # pre-activations 5.9, 0.45, 3.4: unit 0 and 2 above 5/2
    a = x @ w.T
    executed, smooth = _run(g, x)[0], _run(s, x)[0]
    np.testing.assert_allclose(executed, np.where(2 * a > 5, a, np.logaddexp(2 * a, 0) / 2), rtol=1e-15)
    np.testing.assert_allclose(smooth, np.logaddexp(2 * a, 0) / 2, rtol=1e-15)
    assert smooth_part(s) is s  # nothing left to replace: the same graph


# ---- gather_slices ---------------------------------------------------------------------------------
def _sliced(parts: list[tuple[int, int, int]], axis: int = 1, shape: tuple[int, ...] = (2, 6, 3),
            extra_use: bool = False) -> Graph:
    """x -> one Slice per part (start, end, step) along ``axis`` -> Concat (-> y); with
    ``extra_use``, the first Slice is a graph output too."""
    nodes = []
    for k, (start, end, step) in enumerate(parts):
        starts, ends, steps = [0] * len(shape), list(shape), [1] * len(shape)
        starts[axis], ends[axis], steps[axis] = start, end, step
        nodes.append(Node(name=f"s{k}", op=O.Slice(starts=tuple(starts), ends=tuple(ends), steps=tuple(steps)),
                          inputs=("x",), output=f"p{k}"))
    nodes.append(Node(name="cat", op=O.Concat(axis=axis), inputs=tuple(f"p{k}" for k in range(len(parts))), output="y"))
    outputs = ("y", "p0") if extra_use else ("y",)
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=outputs, nodes=tuple(nodes)))


@pytest.mark.parametrize(("parts", "indices"), [
    ([(4, 6, 1), (0, 4, 1)], [4, 5, 0, 1, 2, 3]),  # torch.roll(x, 2, 1) as exporters write it
    ([(3, 6, 1), (0, 3, 1), (1, 2, 1)], [3, 4, 5, 0, 1, 2, 1]),  # an entry copied twice
    ([(5, -1, -1)], None),  # one part: a Concat of one input is left alone
    ([(0, 6, 2), (1, 6, 2)], [0, 2, 4, 1, 3, 5]),
])
def test_concatenated_slices_of_one_value_become_one_gather(parts: list[tuple[int, int, int]],
                                                            indices: list[int] | None) -> None:
    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.ir.passes import gather_slices

    graph = _sliced(parts)
    merged = gather_slices(graph)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    np.testing.assert_array_equal(Executor(merged, dtype=torch.float64)(x)[0], Executor(graph, dtype=torch.float64)(x)[0])
    if indices is None:
        assert merged is graph
        return
    (node,) = merged.nodes
    assert isinstance(node.op, O.Gather) and node.op.indices.tolist() == indices and node.op.axis == 1
    bound = rule_bounds(merged)["y"].upper
    assert bound is not None and bound.value == pytest.approx(np.sqrt(max(indices.count(i) for i in indices)))


def test_slices_of_other_axes_or_values_stay() -> None:
    from stabaudit.ir.passes import gather_slices

    shape = (2, 6, 3)
    cut = Node(name="s0", op=O.Slice(starts=(0, 0, 1), ends=(2, 3, 3), steps=(1, 1, 1)), inputs=("x",), output="p0")
    whole = Node(name="s1", op=O.Slice(starts=(0, 3, 1), ends=(2, 6, 3), steps=(1, 1, 1)), inputs=("x",), output="p1")
    cat = Node(name="cat", op=O.Concat(axis=1), inputs=("p0", "p1"), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=("y",), nodes=(cut, whole, cat)))
    assert gather_slices(graph) is graph  # the slices also cut axis 2
    kept = gather_slices(_sliced([(4, 6, 1), (0, 4, 1)], extra_use=True))
    assert [type(n.op).__name__ for n in kept.nodes] == ["Slice", "Gather"]  # p0 is an output too


def test_a_slice_read_twice_by_the_concat_is_dropped_too() -> None:
    from stabaudit.ir.passes import gather_slices

    half = Node(name="s0", op=O.Slice(starts=(0, 3, 0), ends=(2, 6, 3), steps=(1, 1, 1)), inputs=("x",), output="p0")
    cat = Node(name="cat", op=O.Concat(axis=1), inputs=("p0", "p0"), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(2, 6, 3)),), outputs=("y",), nodes=(half, cat)))
    (node,) = gather_slices(graph).nodes
    assert isinstance(node.op, O.Gather) and node.op.indices.tolist() == [3, 4, 5, 3, 4, 5]


# ---- fuse_root_of_squares ---------------------------------------------------------------------------
def _squares(terms: list[Node], square_kinds: list[str], extra: list[Node] | None = None,
             shape: tuple[int, ...] = (2, 6, 3), outputs: tuple[str, ...] = ("y",)) -> Graph:
    """x -> ``terms`` (values t0, t1, ..) -> a square of each (Pow 2 or Mul(t, t)) -> a chain of Adds -> Sqrt."""
    nodes = list(extra or []) + list(terms)
    for k, (term, kind) in enumerate(zip(terms, square_kinds, strict=True)):
        op = O.Pow(exponent=2.0) if kind == "pow" else O.Mul()
        ins = (term.output,) if kind == "pow" else (term.output, term.output)
        nodes.append(Node(name=f"sq{k}", op=op, inputs=ins, output=f"q{k}"))
    total = "q0"
    for k in range(1, len(terms)):
        nodes.append(Node(name=f"add{k}", op=O.Add(), inputs=(total, f"q{k}"), output=f"a{k}"))
        total = f"a{k}"
    nodes.append(Node(name="root", op=O.Sqrt(), inputs=(total,), output="y"))
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=outputs, nodes=tuple(nodes)))


def _slice(name: str, axis: int, start: int, end: int, shape: tuple[int, ...]) -> Node:
    starts, ends = [0] * len(shape), list(shape)
    starts[axis], ends[axis] = start, end
    return Node(name=name, op=O.Slice(starts=tuple(starts), ends=tuple(ends), steps=(1,) * len(shape)),
                inputs=("x",), output=f"t{name[1:]}")


@pytest.mark.parametrize(("chunks", "shape", "kinds", "ops"), [
    # an STFT's magnitude: real and imaginary halves of one convolution's channels
    ([(0, 3), (3, 6)], (2, 6, 3), ["pow", "pow"], ["Reshape", "ReduceL2"]),
    # three chunks tiling a range that is not the whole axis, listed out of order
    ([(7, 10), (1, 4), (4, 7)], (2, 10, 3), ["mul", "pow", "mul"], ["Slice", "Reshape", "ReduceL2"]),
])
def test_a_root_of_squared_slices_becomes_one_norm(chunks: list[tuple[int, int]], shape: tuple[int, ...],
                                                    kinds: list[str], ops: list[str]) -> None:
    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.ir.passes import fuse_root_of_squares

    terms = [_slice(f"s{k}", 1, a, b, shape) for k, (a, b) in enumerate(chunks)]
    graph = _squares(terms, kinds, shape=shape)
    fused = fuse_root_of_squares(graph)
    assert [n.op.type.value for n in fused.nodes] == ops
    x = torch.randn(*shape, dtype=torch.float64)
    np.testing.assert_allclose(Executor(fused, dtype=torch.float64)(x)[0], Executor(graph, dtype=torch.float64)(x)[0],
                               rtol=1e-15)
    assert rule_bounds(fused)["y"].upper.value == 1.0  # a norm of each group: exactly 1


def test_a_root_of_squares_of_other_values_stacks_them() -> None:
    from stabaudit.ir.passes import fuse_root_of_squares

    terms = [Node(name="a", op=O.Tanh(), inputs=("x",), output="t0"), Node(name="b", op=O.Sigmoid(), inputs=("x",), output="t1"),
             Node(name="c", op=O.Relu(), inputs=("x",), output="t2")]
    graph = _squares(terms, ["pow", "mul", "pow"])
    fused = fuse_root_of_squares(graph)
    assert [n.op.type.value for n in fused.nodes] == ["Tanh", "Sigmoid", "Relu", "Reshape", "Reshape", "Reshape",
                                                      "Concat", "ReduceL2"]
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    np.testing.assert_allclose(Executor(fused, dtype=torch.float64)(x)[0], Executor(graph, dtype=torch.float64)(x)[0],
                               rtol=1e-15)


@pytest.mark.parametrize("reduce", ["sum", "sumsquare"])
def test_a_root_of_a_sum_of_squares_over_axes_is_reduce_l2(reduce: str) -> None:
    from stabaudit.ir.passes import fuse_root_of_squares

    nodes: list[Node] = []
    if reduce == "sum":
        nodes += [Node(name="sq", op=O.Pow(exponent=2.0), inputs=("x",), output="q"),
                  Node(name="sum", op=O.ReduceSum(axes=(1, 2), keepdims=False), inputs=("q",), output="s")]
    else:
        nodes.append(Node(name="sum", op=O.ReduceSumSquare(axes=(2,), keepdims=True), inputs=("x",), output="s"))
    nodes.append(Node(name="root", op=O.Sqrt(), inputs=("s",), output="y"))
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(2, 6, 3)),), outputs=("y",), nodes=tuple(nodes)))
    fused = fuse_root_of_squares(graph)
    (node,) = fused.nodes
    assert isinstance(node.op, O.ReduceL2) and node.op.axes == ((1, 2) if reduce == "sum" else (2,))
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    np.testing.assert_allclose(Executor(fused, dtype=torch.float64)(x)[0], Executor(graph, dtype=torch.float64)(x)[0],
                               rtol=1e-15)


def test_roots_that_are_not_norms_stay() -> None:
    """A mean under the root, an eps added, a square read twice, x^2 + x^2: left as they are."""
    from stabaudit.ir.passes import fuse_root_of_squares

    x = TensorSpec(name="x", shape=(2, 6, 3))
    mean = (Node(name="sq", op=O.Pow(exponent=2.0), inputs=("x",), output="q"),
            Node(name="m", op=O.ReduceMean(axes=(2,), keepdims=True), inputs=("q",), output="s"),
            Node(name="root", op=O.Sqrt(), inputs=("s",), output="y"))
    eps = (Node(name="sq", op=O.Pow(exponent=2.0), inputs=("x",), output="q"),
           Node(name="sum", op=O.ReduceSum(axes=(2,), keepdims=True), inputs=("q",), output="s0"),
           Node(name="eps", op=O.Affine(shift=np.array(1e-6)), inputs=("s0",), output="s"),
           Node(name="root", op=O.Sqrt(), inputs=("s",), output="y"))
    twice = (Node(name="sq", op=O.Pow(exponent=2.0), inputs=("x",), output="q"),
             Node(name="add", op=O.Add(), inputs=("q", "q"), output="s"),
             Node(name="root", op=O.Sqrt(), inputs=("s",), output="y"))
    for nodes in (mean, eps, twice):
        graph = with_shapes(Graph(inputs=(x,), outputs=("y",), nodes=nodes))
        assert fuse_root_of_squares(graph) is graph
    shared = _squares([_slice("s0", 1, 0, 3, (2, 6, 3)), _slice("s1", 1, 3, 6, (2, 6, 3))], ["pow", "pow"],
                      outputs=("y", "q0"))  # a square is also an output
    assert fuse_root_of_squares(shared) is shared


def test_the_magnitude_of_an_exported_stft_gets_a_global_bound(tmp_path: Path) -> None:
    """Conv (real and imaginary filters as channels) -> Slice, Slice -> Pow 2, Pow 2 -> Add -> Sqrt,
    as audio front ends export |STFT|: the upper end is the convolution's norm (the magnitude is
    1-Lipschitz), where the root alone had no global bound."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from stabaudit.api import audit

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4]),
             helper.make_node("Slice", ["c", "s0", "e0", "ax"], ["re"]),
             helper.make_node("Slice", ["c", "s1", "e1", "ax"], ["im"]),
             helper.make_node("Pow", ["re", "two"], ["r2"]), helper.make_node("Pow", ["im", "two"], ["i2"]),
             helper.make_node("Add", ["r2", "i2"], ["p"]), helper.make_node("Sqrt", ["p"], ["y"])]
    consts = {"w": w, "s0": np.array([0], np.int64), "e0": np.array([4], np.int64), "s1": np.array([4], np.int64),
              "e1": np.array([8], np.int64), "ax": np.array([1], np.int64), "two": np.float32(2.0)}
    graph = helper.make_graph(nodes, "stft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "stft.onnx"
    onnx.save(model, path)
    report = audit(path, budget=0.5)
    conv = next(layer for layer in report.layers if layer.op == "Conv")
    assert report.lipschitz.certified and report.lipschitz.upper is not None
    assert report.lipschitz.upper == pytest.approx(conv.lipschitz.upper, rel=1e-9)
    assert report.lipschitz.lower is not None and report.lipschitz.lower <= report.lipschitz.upper
    assert any(layer.op == "ReduceL2" for layer in report.layers)
