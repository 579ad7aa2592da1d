"""Tests of the rule registry and bound_node: every OpType has a rule, timing, errors named by node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabaudit.bounds import RULES, bound_node, rule_for
from stabaudit.bounds.base import Guarantee, OpBound, RuleContext
from stabaudit.errors import InternalError, ResourceError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

RNG = np.random.default_rng(0)

# one small instance of every canonical op, with the input shapes it runs on
SAMPLES: dict[O.OpType, tuple[O.Op, list[tuple[int, ...]]]] = {
    O.OpType.LINEAR: (O.Linear(weight=RNG.standard_normal((3, 4)), bias=np.ones(3)), [(1, 4)]),
    O.OpType.CONV: (O.Conv(weight=RNG.standard_normal((2, 2, 3, 3)), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), [(1, 2, 5, 5)]),
    O.OpType.CONV_TRANSPOSE: (
        O.ConvTranspose(weight=RNG.standard_normal((2, 2, 3, 3)), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), output_padding=(1, 1)),
        [(1, 2, 3, 3)],
    ),
    O.OpType.AFFINE: (O.Affine(scale=RNG.standard_normal((1, 2, 1, 1)), shift=np.ones((1, 2, 1, 1))), [(1, 2, 3, 3)]),
    O.OpType.ADD: (O.Add(), [(1, 2, 3), (1, 1, 3)]),
    O.OpType.SUB: (O.Sub(), [(1, 2, 3), (1, 2, 3)]),
    O.OpType.RELU: (O.Relu(), [(1, 6)]),
    O.OpType.LEAKY_RELU: (O.LeakyRelu(alpha=0.2), [(1, 6)]),
    O.OpType.PRELU: (O.PRelu(slope=np.array([0.1, 1.7]).reshape(1, 2, 1)), [(1, 2, 3)]),
    O.OpType.SIGMOID: (O.Sigmoid(), [(1, 6)]),
    O.OpType.TANH: (O.Tanh(), [(1, 6)]),
    O.OpType.SOFTPLUS: (O.Softplus(beta=2.0), [(1, 6)]),
    O.OpType.ELU: (O.Elu(alpha=1.0), [(1, 6)]),
    O.OpType.GELU: (O.Gelu(), [(1, 6)]),
    O.OpType.HARD_SIGMOID: (O.HardSigmoid(), [(1, 6)]),
    O.OpType.HARD_SWISH: (O.HardSwish(), [(1, 6)]),
    O.OpType.SILU: (O.Silu(), [(1, 6)]),
    O.OpType.MISH: (O.Mish(), [(1, 6)]),
    O.OpType.CLIP: (O.Clip(min=0.0, max=6.0), [(1, 6)]),
    O.OpType.SOFTMAX: (O.Softmax(axis=-1), [(1, 2, 6)]),
    O.OpType.MAX_POOL: (O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)), [(1, 2, 6, 6)]),
    O.OpType.AVG_POOL: (O.AvgPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)), [(1, 2, 6, 6)]),
    O.OpType.GLOBAL_AVG_POOL: (O.GlobalAvgPool(), [(1, 2, 4, 4)]),
    O.OpType.GLOBAL_MAX_POOL: (O.GlobalMaxPool(), [(1, 2, 4, 4)]),
    O.OpType.RESHAPE: (O.Reshape(shape=(1, 12)), [(1, 3, 4)]),
    O.OpType.TRANSPOSE: (O.Transpose(perm=(0, 2, 1)), [(1, 3, 4)]),
    O.OpType.PAD: (O.Pad(pads=(0, 0, 1, 0, 0, 2)), [(1, 2, 3)]),
    O.OpType.CONCAT: (O.Concat(axis=1), [(1, 2, 3), (1, 1, 3)]),
    O.OpType.SLICE: (O.Slice(starts=(0, 2, 1), ends=(1, -1, 3), steps=(1, -1, 2)), [(1, 3, 4)]),
    O.OpType.MUL: (O.Mul(), [(1, 2, 3), (1, 1, 3)]),
    O.OpType.RESIZE: (O.Resize(axes=(2, 3), in_sizes=(3, 4), sizes=(5, 7), scales=(5 / 3, 7 / 4), mode="cubic"),
                      [(1, 2, 3, 4)]),
    O.OpType.DIV: (O.Div(), [(1, 2, 3), (1, 1, 3)]),
    O.OpType.MATMUL: (O.MatMul(), [(2, 2, 3), (1, 3, 4)]),
    O.OpType.LAYER_NORM: (O.LayerNorm(axis=1, epsilon=0.5, scale=np.array([1.5, -0.5, 2.0]),
                                      bias=np.array([0.1, 0.2, 0.3])), [(2, 3)]),
    O.OpType.POW: (O.Pow(exponent=2.0), [(1, 4)]),
    O.OpType.SQRT: (O.Sqrt(), [(1, 4)]),
    O.OpType.RECIPROCAL: (O.Reciprocal(), [(1, 4)]),
    O.OpType.EXP: (O.Exp(), [(1, 4)]),
    O.OpType.LOG: (O.Log(), [(1, 4)]),
    O.OpType.ERF: (O.Erf(), [(1, 4)]),
    O.OpType.SIN: (O.Sin(), [(1, 4)]),
    O.OpType.COS: (O.Cos(), [(1, 4)]),
    O.OpType.REDUCE_SUM: (O.ReduceSum(axes=(1, 3), keepdims=False), [(1, 2, 3, 2)]),
    O.OpType.REDUCE_MEAN: (O.ReduceMean(axes=(0, 2)), [(1, 2, 3)]),
    O.OpType.REDUCE_L2: (O.ReduceL2(axes=(1,)), [(1, 4, 2)]),
    O.OpType.REDUCE_MAX: (O.ReduceMax(axes=(2,), keepdims=False), [(1, 2, 3)]),
    O.OpType.REDUCE_MIN: (O.ReduceMin(axes=(0, 1, 2)), [(1, 2, 3)]),
    O.OpType.REDUCE_LOG_SUM_EXP: (O.ReduceLogSumExp(axes=(1,)), [(1, 3, 2)]),
    O.OpType.REDUCE_L1: (O.ReduceL1(axes=(1, 2), keepdims=False), [(1, 3, 2)]),
    O.OpType.REDUCE_SUM_SQUARE: (O.ReduceSumSquare(axes=(1,)), [(1, 3, 2)]),
    O.OpType.MAX: (O.Max(constant=np.array([0.0, -1.0, 0.5])), [(1, 2, 3), (1, 1, 3)]),
    O.OpType.MIN: (O.Min(), [(2, 3), (1, 3), (1, 1)]),
    O.OpType.GATHER: (O.Gather(axis=2, indices=np.array([[3, 0], [3, 1], [3, 3]])), [(1, 2, 4)]),
    O.OpType.TILE: (O.Tile(repeats=(1, 3, 2)), [(1, 2, 3)]),
    O.OpType.ABS: (O.Abs(), [(1, 2, 3)]),
    # the smooth parts (the rounding errors are the jumps, tests/bounds/test_quantization.py)
    O.OpType.QUANTIZE: (O.Quantize(scale=(0.5, 0.25), zero_point=(3.0, -2.0), qmin=-8, qmax=7, axis=1, integer=True,
                                   smooth=True), [(1, 2, 3)]),
    O.OpType.DYNAMIC_QUANTIZE: (O.DynamicQuantize(smooth=True), [(1, 2, 3)]),
    O.OpType.WHERE: (O.Where(mask=np.array([[True, False, False], [True, True, False]])), [(1, 2, 3), (2, 1)]),
}


def single(op: O.Op, shapes: list[tuple[int, ...]]):
    names = tuple(f"x{i}" for i in range(len(shapes)))
    node = Node(name=f"n_{op.type.value}", op=op, inputs=names, output="y")
    specs = tuple(TensorSpec(name=n, shape=s) for n, s in zip(names, shapes, strict=True))
    graph = with_shapes(Graph(inputs=specs, outputs=("y",), nodes=(node,)).validate())
    return graph, node, RuleContext(input_shapes=tuple(shapes), output_shape=graph.shapes["y"])


def test_every_op_type_has_a_rule_and_a_sample() -> None:
    for op_type in O.OpType:
        assert op_type in RULES, f"no bound rule for {op_type.value}"
        assert op_type in SAMPLES, f"no test sample for {op_type.value}"
        assert SAMPLES[op_type][0].type is op_type
    assert len(RULES) == len(O.OpType)


@pytest.mark.parametrize("op_type", list(O.OpType), ids=lambda t: t.value)
def test_every_rule_is_sound_on_its_sample(op_type: O.OpType) -> None:
    op, shapes = SAMPLES[op_type]
    graph, node, ctx = single(op, shapes)
    result = bound_node(node, ctx)
    assert isinstance(result, OpBound) and result.seconds > 0.0
    assert result.upper.guarantee is Guarantee.UPPER
    if result.lower is not None:
        assert result.lower.guarantee is Guarantee.LOWER
        assert result.lower.value <= result.upper.value
    if len(shapes) > 1:
        assert len(result.input_gains) == len(shapes)
    # difference quotients of the joint input never exceed the upper bound
    f = Executor(graph, dtype=torch.float64).flat()
    n = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((64, n)) * 2)
    y = x + torch.from_numpy(rng.standard_normal((64, n)) * 0.3)
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    q = q[~q.isnan()]  # pairs outside the map's domain (sqrt, log of negatives) have no quotient
    assert float(q.max()) <= result.upper.value * (1 + 1e-12)


def test_errors_name_the_node_and_keep_their_class(monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(name="conv_7", op=O.Gelu(approximate="bogus"), inputs=("a",), output="b")
    with pytest.raises(InternalError, match=r"node 'conv_7' \(Gelu\).*bogus") as info:
        bound_node(node, RuleContext(input_shapes=((1, 2),), output_shape=(1, 2)))
    assert isinstance(info.value.__cause__, ValueError)

    def too_big(node: Node, ctx: RuleContext) -> OpBound:
        raise ResourceError("layer too large")

    monkeypatch.setitem(RULES._items, O.OpType.RELU, too_big)
    relu = Node(name="act1", op=O.Relu(), inputs=("a",), output="b")
    with pytest.raises(ResourceError, match=r"node 'act1' \(Relu\): layer too large") as rinfo:
        bound_node(relu, RuleContext(input_shapes=((1, 2),), output_shape=(1, 2)))
    assert rinfo.value.exit_code == 2


def test_rule_for_returns_the_registered_function() -> None:
    from stabaudit.bounds.linear import bound_linear

    node = Node(name="fc", op=SAMPLES[O.OpType.LINEAR][0], inputs=("a",), output="b")
    assert rule_for(node) is bound_linear


def test_importing_the_rules_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, stabaudit.bounds; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_where_counts_the_selected_copies_of_each_branch() -> None:
    """b (2, 1) broadcast over the mask's 3 columns: b_0 is picked twice, b_1 once -> sqrt 2; a is
    picked at most once per entry -> 1; the tested input of IsNaN gets the tiny TESTED_GAIN (0 * its
    bound, unless that bound is infinite), a comparison is a switch."""
    mask = np.array([[True, False, False], [True, True, False]])
    _, node, ctx = single(O.Where(mask=mask), [(1, 2, 3), (2, 1)])
    result = bound_node(node, ctx)
    assert result.input_gains == (1.0, float(np.nextafter(np.sqrt(2.0), np.inf)))
    assert result.upper.value == result.input_gains[1] and result.lower is not None
    assert result.lower.value == float(np.nextafter(np.sqrt(2.0), 0.0))
    _, node, ctx = single(O.Where(mask=mask, when_false=np.zeros(())), [(2, 3)])
    assert bound_node(node, ctx).upper.value == 1.0
    _, node, ctx = single(O.Where(test="isnan", when_true=np.zeros(())), [(2, 3), (2, 3)])
    nan_test = bound_node(node, ctx)
    assert nan_test.input_gains == (5e-324, 1.0) and nan_test.upper.value == 1.0  # ~0 (TESTED_GAIN)
    _, node, ctx = single(O.Where(test="isnan", negate=True, when_true=np.zeros(())), [(2, 3), (2, 3)])
    assert bound_node(node, ctx).upper.value <= 1e-300  # not-NaN: the constant branch on finite inputs
    _, node, ctx = single(O.Where(test="greater", other=np.zeros(())), [(2, 3), (2, 3), (2, 3)])
    switch = bound_node(node, ctx)
    assert switch.upper.value == float("inf") and switch.upper.method == "branch-switch"
    assert "branch switch" in switch.notes[0]


@pytest.mark.parametrize(("tested", "expected"), [(O.Sigmoid(), 1.0), (O.Reciprocal(), float("inf"))])
def test_a_nan_test_is_free_only_when_its_input_is_proved_finite(tested: O.Op, expected: float) -> None:
    """where(isinf(t), 5, x): t = sigmoid(x) is finite everywhere (finite bound), so the output is x,
    Lipschitz 1 (plus a 5e-324-sized term); t = 1/x is inf at x = 0, where the output jumps to 5: no
    finite bound (0 * inf would have counted as 0)."""
    from stabaudit.analyses.composition import compose, rule_bounds

    nodes = (Node(name="t", op=tested, inputs=("x",), output="t"),
             Node(name="w", op=O.Where(test="isinf", when_true=np.array(5.0)), inputs=("t", "x"), output="y"))
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes).validate())
    upper = compose(graph, rule_bounds(graph)).upper.value
    assert upper == expected or (expected == 1.0 and 1.0 <= upper <= 1.0 + 1e-15)
