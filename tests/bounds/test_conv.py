"""Tests of the Conv and ConvTranspose rules against explicit operator matrices built by the Executor."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.bounds import bound_node
from stabaudit.bounds.base import BoundSettings, Guarantee, RuleContext
from stabaudit.bounds.conv import bound_conv, bound_conv_transpose
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import Conv, ConvTranspose


def single(op, *in_shapes, iterations: int = 50):
    names = tuple(f"x{i}" for i in range(len(in_shapes)))
    node = Node(name="layer", op=op, inputs=names, output="y")
    specs = tuple(TensorSpec(name=n, shape=tuple(s)) for n, s in zip(names, in_shapes, strict=True))
    graph = with_shapes(Graph(inputs=specs, outputs=("y",), nodes=(node,)).validate())
    ctx = RuleContext(
        input_shapes=tuple(tuple(s) for s in in_shapes), output_shape=graph.shapes["y"],
        settings=BoundSettings(seed=0, power_iterations=iterations),
    )
    return graph, node, ctx


def explicit_matrix(graph) -> np.ndarray:
    """The operator's matrix, column j = f(e_j) - f(0), through the Executor in float64."""
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    base = f(torch.zeros(n, dtype=torch.float64))
    return (torch.func.vmap(f)(torch.eye(n, dtype=torch.float64)) - base).T.numpy()


def norm2(mat: np.ndarray) -> float:
    return float(np.sqrt(np.linalg.eigvalsh(mat.T @ mat)[-1])) if mat.shape[0] >= mat.shape[1] else float(
        np.sqrt(np.linalg.eigvalsh(mat @ mat.T)[-1])
    )


CONVS = [
    # weight shape, strides, pads, dilations, groups, input shape
    ((4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (1, 3, 6, 6)),
    ((4, 3, 3, 3), (2, 2), (1, 0, 0, 1), (1, 1), 1, (1, 3, 7, 6)),  # stride 2, asymmetric pads
    ((6, 2, 3, 3), (2, 1), (0, 2, 1, 0), (1, 2), 3, (1, 6, 7, 8)),  # groups, dilation
    ((5, 2, 4), (2,), (2, 1), (2,), 1, (1, 2, 13)),  # 1-D
    ((4, 1, 3), (1,), (1, 1), (1,), 4, (2, 4, 9)),  # depthwise 1-D, batch 2
]


@pytest.mark.parametrize("case", CONVS)
def test_conv_rule_brackets_the_explicit_norm(case) -> None:
    shape, strides, pads, dilations, groups, in_shape = case
    rng = np.random.default_rng(shape[0] + len(shape))
    op = Conv(weight=rng.standard_normal(shape), bias=rng.standard_normal(shape[0]), strides=strides,
              pads=pads, dilations=dilations, groups=groups)
    graph, node, ctx = single(op, in_shape)
    exact = norm2(explicit_matrix(graph))
    result = bound_node(node, ctx)
    assert result.upper.guarantee is Guarantee.UPPER and result.lower is not None
    assert result.lower.guarantee is Guarantee.LOWER
    # small layers take the exact explicit matrix: upper and lower within rounding margins
    assert result.upper.method == "dense-svd"
    assert result.lower.value <= exact <= result.upper.value <= exact * (1 + 1e-9)


def test_conv_rule_on_a_layer_too_big_for_the_dense_matrix() -> None:
    # 2 -> 2 channels, 1-D length 1100: a 2200 x 2200 matrix (over the dense limit of 2^21 entries),
    # so the rule takes the circulant bound (Gram matrix + Cholesky certificate) for the upper bound
    # and power iteration, warm-started at the worst frequency's singular vector, below.
    rng = np.random.default_rng(11)
    op = Conv(weight=rng.standard_normal((2, 2, 5)), strides=(1,), pads=(2, 1), dilations=(1,), groups=1)
    graph, node, ctx = single(op, (1, 2, 1100), iterations=60)
    exact = norm2(explicit_matrix(graph))
    result = bound_node(node, ctx)
    assert result.upper.method == "circulant-cholesky" and result.lower is not None
    assert result.lower.method == "power-iteration-warm" and result.lower.guarantee is Guarantee.LOWER
    assert result.lower.value <= exact <= result.upper.value
    # measured: upper / exact = 1.0000029 (long input: little boundary effect)
    assert result.upper.value <= exact * 1.001
    assert result.lower.value >= 0.97 * exact  # 8 warm-started steps instead of 60 cold ones


@pytest.mark.parametrize("case", CONVS[:3])
def test_conv_difference_quotients_never_exceed_the_bound(case) -> None:
    shape, strides, pads, dilations, groups, in_shape = case
    rng = np.random.default_rng(3)
    op = Conv(weight=rng.standard_normal(shape), bias=rng.standard_normal(shape[0]), strides=strides,
              pads=pads, dilations=dilations, groups=groups)
    graph, node, ctx = single(op, in_shape)
    bound = bound_node(node, ctx).upper.value
    f = Executor(graph, dtype=torch.float64).flat()
    n = int(np.prod(in_shape))
    x = torch.from_numpy(rng.standard_normal((128, n)) * 10)
    y = x + torch.from_numpy(rng.standard_normal((128, n)))
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(q.max()) <= bound * (1 + 1e-12)


def test_conv_rule_in_isolation() -> None:
    # a 1x1 conv is I (x) W over the pixels: its norm is ||W||_2 = 3 here
    w = np.zeros((2, 2, 1, 1))
    w[0, 0, 0, 0], w[1, 1, 0, 0] = 3.0, -1.0
    op = Conv(weight=w, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    node = Node(name="c", op=op, inputs=("a",), output="b")
    ctx = RuleContext(input_shapes=((1, 2, 4, 4),), output_shape=(1, 2, 4, 4))
    result = bound_conv(node, ctx)
    assert result.lower is not None
    assert result.lower.value <= 3.0 <= result.upper.value <= 3.0 * (1 + 1e-12)
    # a 2-tap all-ones 1-D kernel, stride 2, no padding: disjoint windows, norm sqrt(2)
    op1 = Conv(weight=np.ones((1, 1, 2)), strides=(2,), pads=(0, 0), dilations=(1,))
    r1 = bound_conv(Node(name="c", op=op1, inputs=("a",), output="b"), RuleContext(input_shapes=((1, 1, 8),), output_shape=(1, 1, 4)))
    assert r1.lower is not None and r1.lower.value <= math.sqrt(2) <= r1.upper.value <= math.sqrt(2) * (1 + 1e-12)
    bad = w.copy()
    bad[0, 1, 0, 0] = np.inf
    r2 = bound_conv(Node(name="c", op=Conv(weight=bad, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)),
                         inputs=("a",), output="b"), ctx)
    assert r2.upper.value == math.inf and r2.lower is None


# ---- ConvTranspose ---------------------------------------------------------------------------------
CONV_TRANSPOSES = [
    # weight [C_in, C_out/groups, k...], strides, pads, dilations, groups, output_padding, input shape
    ((3, 2, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 0), (1, 3, 4, 5)),
    ((4, 1, 3), (3,), (0, 2), (1,), 2, (2,), (1, 4, 6)),  # groups, output_padding 2 < stride 3
    ((2, 3, 2, 3), (1, 2), (0, 1, 1, 0), (2, 1), 1, (0, 1), (1, 2, 5, 4)),  # dilation, asymmetric pads
]


def _adjoint_conv(op: ConvTranspose) -> Conv:
    return Conv(weight=op.weight, strides=op.strides, pads=op.pads, dilations=op.dilations, groups=op.groups)


@pytest.mark.parametrize("case", CONV_TRANSPOSES)
def test_conv_transpose_is_the_adjoint_of_the_conv_at_its_output_size(case) -> None:
    shape, strides, pads, dilations, groups, opad, in_shape = case
    rng = np.random.default_rng(21)
    op = ConvTranspose(weight=rng.standard_normal(shape), strides=strides, pads=pads, dilations=dilations,
                       groups=groups, output_padding=opad)
    graph, node, ctx = single(op, in_shape)
    t_mat = explicit_matrix(graph)
    conv_graph, _, _ = single(_adjoint_conv(op), ctx.output_shape)
    a_mat = explicit_matrix(conv_graph)
    assert a_mat.shape == t_mat.T.shape
    np.testing.assert_allclose(a_mat, t_mat.T, atol=1e-12)
    exact = norm2(t_mat)
    result = bound_node(node, ctx)
    assert result.lower is not None and result.upper.method == "dense-svd"
    assert result.lower.value <= exact <= result.upper.value <= exact * (1 + 1e-9)


def test_conv_transpose_with_output_padding_beyond_the_stride() -> None:
    # output_padding 2 >= stride 2 (allowed since dilation 3 > 2): T^T = P A with P dropping A's
    # last output; the dense method computes ||P A|| exactly, the circulant bounds ||A|| >= ||T||.
    rng = np.random.default_rng(5)
    op = ConvTranspose(weight=rng.standard_normal((2, 2, 3)), strides=(2,), pads=(1, 0), dilations=(3,),
                       groups=1, output_padding=(2,))
    graph, node, ctx = single(op, (1, 2, 6))
    t_mat = explicit_matrix(graph)
    exact = norm2(t_mat)
    conv_graph, _, _ = single(_adjoint_conv(op), ctx.output_shape)
    a_mat = explicit_matrix(conv_graph)
    assert a_mat.shape[0] == t_mat.shape[1] + 2  # A has one more output position (x 2 channels)
    np.testing.assert_allclose(a_mat.reshape(2, 7, -1)[:, :6].reshape(12, -1), t_mat.T, atol=1e-12)
    result = bound_node(node, ctx)
    assert result.lower is not None and result.lower.value <= exact <= result.upper.value <= exact * (1 + 1e-9)


def test_conv_transpose_difference_quotients_and_power_lower() -> None:
    shape, strides, pads, dilations, groups, opad, in_shape = CONV_TRANSPOSES[0]
    rng = np.random.default_rng(8)
    op = ConvTranspose(weight=rng.standard_normal(shape), bias=np.ones(shape[1]), strides=strides, pads=pads,
                       dilations=dilations, groups=groups, output_padding=opad)
    graph, node, ctx = single(op, in_shape)
    result = bound_node(node, ctx)
    f = Executor(graph, dtype=torch.float64).flat()
    n = int(np.prod(in_shape))
    x = torch.from_numpy(rng.standard_normal((128, n)))
    y = x + torch.from_numpy(rng.standard_normal((128, n)))
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(q.max()) <= result.upper.value * (1 + 1e-12)
    # the power-iteration lower bound on T itself agrees with the dense one
    from stabaudit.bounds.numerics import conv_power

    power = conv_power(op.weight, strides, pads, dilations, groups, in_shape[2:], seed=0, iterations=200,
                       transpose=True, output_padding=opad)
    assert result.lower is not None
    assert power.lower <= result.upper.value and power.lower >= 0.99 * result.lower.value


def test_conv_transpose_rule_in_isolation() -> None:
    # 1x1 ConvTranspose with stride 1: y = W^T x per pixel, norm ||W|| = 2
    w = np.zeros((2, 3, 1, 1))
    w[0, 0, 0, 0], w[1, 2, 0, 0] = 2.0, 1.5
    op = ConvTranspose(weight=w, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), output_padding=(0, 0))
    node = Node(name="up", op=op, inputs=("a",), output="b")
    result = bound_conv_transpose(node, RuleContext(input_shapes=((1, 2, 3, 3),), output_shape=(1, 3, 3, 3)))
    assert result.lower is not None and result.lower.value <= 2.0 <= result.upper.value <= 2.0 * (1 + 1e-12)
    with pytest.raises(ValueError, match="does not match"):
        bound_conv_transpose(node, RuleContext(input_shapes=((1, 2, 3, 3),), output_shape=(1, 3, 4, 4)))


def test_conv_transpose_rule_on_a_layer_too_big_for_the_dense_matrix(monkeypatch) -> None:
    # ConvTranspose 2 -> 2 channels, 1-D, stride 2, input 540 -> output 1080: the adjoint conv is
    # too big for the dense-svd matrix (and the dense-cholesky one is turned off here); the
    # circulant bound of the adjoint bounds T, and A's left singular vector warm-starts the power
    # iteration on T
    import stabaudit.bounds.numerics as numerics

    monkeypatch.setattr(numerics, "DENSE_CHOLESKY_MAX_ENTRIES", 0)
    rng = np.random.default_rng(12)
    op = ConvTranspose(weight=rng.standard_normal((2, 2, 4)), strides=(2,), pads=(1, 1), dilations=(1,),
                       groups=1, output_padding=(0,))
    graph, node, ctx = single(op, (1, 2, 540))
    exact = norm2(explicit_matrix(graph))
    result = bound_node(node, ctx)
    assert result.upper.method == "circulant-cholesky" and result.lower is not None
    assert result.lower.method == "power-iteration-warm"
    assert result.lower.value <= exact <= result.upper.value <= 1.001 * exact
    assert result.lower.value >= 0.97 * exact


@pytest.mark.parametrize("spatial", [6, 40])  # the dense path, then the circulant one
def test_conv_rules_under_extreme_weights(spatial: int) -> None:
    w = np.random.default_rng(13).standard_normal((8, 8, 3, 3))
    in_shape = (1, 8, spatial, spatial)

    def run(weight: np.ndarray, transpose: bool = False):
        op = (ConvTranspose(weight=weight, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), output_padding=(0, 0))
              if transpose else Conv(weight=weight, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)))
        node = Node(name="c", op=op, inputs=("a",), output="b")
        ctx = RuleContext(input_shapes=(in_shape,), output_shape=in_shape, settings=BoundSettings(power_iterations=10))
        return (bound_conv_transpose if transpose else bound_conv)(node, ctx)

    unit = run(w)
    assert unit.lower is not None and unit.lower.value <= unit.upper.value
    for transpose in (False, True):
        # 1e30-magnitude weights: rescaled, a finite certified bound, 1e30 times the unit one
        big = run(w * 1e30, transpose)
        assert big.upper.guarantee is Guarantee.UPPER and math.isfinite(big.upper.value)
        # equal up to the single-precision eigenvalue estimate that sets the certified level
        assert abs(big.upper.value / 1e30 - unit.upper.value) <= 1e-6 * unit.upper.value
        assert big.lower is not None and 0.0 < big.lower.value <= big.upper.value
        # a norm beyond float64: inf with a note, never a wrong finite number, never a crash
        over = run(w / np.abs(w).max() * 1.7e308, transpose)
        assert over.upper.value == math.inf and over.notes
        # NaN / Inf weights: upper inf, no lower bound
        for bad in (np.nan, np.inf):
            broken = w.copy()
            broken[3, 2, 1, 0] = bad
            result = run(broken, transpose)
            assert result.upper.value == math.inf and result.lower is None
            assert result.upper.method == "non-finite-weights"


@pytest.mark.external
@pytest.mark.parametrize("name", ["oval21/cifar_deep_kw.onnx", "verivital/Convnet_avgpool.onnx"])
def test_conv_rules_on_real_networks(name: str, external_dir: Path) -> None:
    path = external_dir / name
    if not path.exists():
        pytest.skip(f"{name} is not available")
    from stabaudit.loaders import load_model

    graph = load_model(path).graph
    convs = [node for node in graph.nodes if isinstance(node.op, Conv | ConvTranspose)]
    assert convs
    for node in convs:
        ctx = RuleContext(input_shapes=tuple(graph.shapes[i] for i in node.inputs), output_shape=graph.shapes[node.output])
        result = bound_node(node, ctx)
        assert result.lower is not None and result.upper.guarantee is Guarantee.UPPER
        # measured brackets on these nets: upper / lower <= 1.015 (oval21 deep), 1.008 (verivital)
        assert result.lower.value <= result.upper.value <= 1.05 * result.lower.value


@pytest.mark.parametrize("transpose", [False, True])
def test_conv_rules_take_the_dense_cholesky_certificate_on_mid_size_layers(transpose: bool) -> None:
    # 2 -> 2 channels, 1-D, stride 2, 540 <-> 1080: past the dense-svd size, within dense-cholesky:
    # the exact operator (the adjoint for the transpose), certified within LEVEL_RTOL of its norm,
    # and its top singular vector starts the power iteration (which then is tight)
    from stabaudit.bounds.gram import LEVEL_RTOL

    rng = np.random.default_rng(12)
    weight = rng.standard_normal((2, 2, 4))
    if transpose:
        op = ConvTranspose(weight=weight, strides=(2,), pads=(1, 1), dilations=(1,), groups=1, output_padding=(0,))
        graph, node, ctx = single(op, (1, 2, 540))
    else:
        graph, node, ctx = single(Conv(weight=weight, strides=(2,), pads=(1, 1), dilations=(1,)), (1, 2, 1080))
    exact = norm2(explicit_matrix(graph))
    result = bound_node(node, ctx)
    assert result.upper.method == "dense-cholesky" and result.lower is not None
    assert exact <= result.upper.value <= exact * (1 + LEVEL_RTOL)
    assert result.lower.method == "power-iteration-warm"
    assert exact * (1 - 1e-3) <= result.lower.value <= exact


def test_a_depthwise_conv_is_certified_group_by_group_in_batches() -> None:
    # 240 single-channel groups at 14x14: the dense-cholesky path, in two batched calls (218 groups
    # of 196 x 196 entries fit DENSE_CHOLESKY_MAX_ENTRIES); the bound is the largest group's norm
    # within LEVEL_RTOL, whichever batch holds it, and its singular vectors start the power iteration
    from stabaudit.bounds.gram import LEVEL_RTOL
    from stabaudit.bounds.numerics import (
        DENSE_CHOLESKY_MAX_ENTRIES,
        _dense_group_matrix,
        _geometry,
        conv_norm_certified,
    )

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((240, 1, 3, 3)) * 0.5
    weight[230] *= 4.0  # the worst group lies in the second batch
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 240, (14, 14))
    assert DENSE_CHOLESKY_MAX_ENTRIES // 196**2 < 240
    g = _geometry(weight, *args)
    exact = max(float(np.linalg.norm(_dense_group_matrix(g, j), 2)) for j in range(240))
    result = conv_norm_certified(weight, *args)
    assert result.method == "dense-cholesky"
    assert exact <= result.upper <= exact * (1 + LEVEL_RTOL)
    assert result.start_in is not None and np.linalg.norm(result.start_in[230]) > 0.99 * np.linalg.norm(result.start_in)


@pytest.mark.parametrize(("weight_shape", "groups", "spatial", "method"), [
    ((8, 4, 3, 3), 1, (8, 8), "dense-svd"),
    ((240, 1, 3, 3), 240, (14, 14), "dense-cholesky"),
    ((64, 64, 3, 3), 1, (32, 32), "circulant"),
])
def test_the_certificate_cost_names_the_method_the_certificate_takes(
    weight_shape: tuple[int, ...], groups: int, spatial: tuple[int, int], method: str,
) -> None:
    # one source for the choice: the cost model of the per-layer bounds (analyses.plan) and the
    # certificate read the same counts
    from stabaudit.bounds.numerics import conv_certificate_cost, conv_norm_certified

    weight = np.random.default_rng(1).standard_normal(weight_shape)
    args = ((1, 1), (1, 1, 1, 1), (1, 1), groups, spatial)
    found, flops = conv_certificate_cost(weight_shape, *args)
    assert found == method and flops > 0
    taken = conv_norm_certified(weight, *args).method
    assert taken == method if method != "circulant" else taken in ("circulant-cholesky", "skew-circulant-cholesky")


@pytest.mark.parametrize("transpose", [False, True])
def test_quick_settings_give_a_cheaper_sound_upper_bound_and_no_lower(transpose: bool) -> None:
    # BoundSettings(quick=True): a layer beyond the quick dense budget takes the cheaper certified
    # bounds (unfolded coverage or tap sum), never a circulant certificate nor a power iteration;
    # the upper end stays above the exact norm (explicit matrix) and above the precise bound
    rng = np.random.default_rng(21)
    w = rng.standard_normal((6, 6, 3, 3))
    op = (ConvTranspose(weight=w, strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), output_padding=(1, 1))
          if transpose else Conv(weight=w, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)))
    graph, node, ctx = single(op, (1, 6, 12, 12))
    exact = norm2(explicit_matrix(graph))
    precise = bound_node(node, ctx)
    quick = bound_node(node, RuleContext(input_shapes=ctx.input_shapes, output_shape=ctx.output_shape,
                                         settings=BoundSettings(quick=True)))
    assert quick.lower is None and quick.upper.guarantee is Guarantee.UPPER
    assert quick.upper.method in ("unfolded-coverage", "tap-sum")
    assert exact <= precise.upper.value <= quick.upper.value
    # tap sum: at most the sum of the taps' spectral norms
    taps = sum(float(np.linalg.norm(w[:, :, i, j], 2)) for i in range(3) for j in range(3))
    assert quick.upper.value <= taps * (1 + 1e-9)
    # a layer within the quick dense budget keeps its exact dense norm
    small_graph, small, small_ctx = single(dataclasses.replace(op, weight=w[:2, :2]), (1, 2, 4, 4))
    got = bound_node(small, RuleContext(input_shapes=small_ctx.input_shapes, output_shape=small_ctx.output_shape,
                                        settings=BoundSettings(quick=True)))
    assert got.upper.method == "dense-svd"
    assert norm2(explicit_matrix(small_graph)) <= got.upper.value <= norm2(explicit_matrix(small_graph)) * (1 + 1e-9)
