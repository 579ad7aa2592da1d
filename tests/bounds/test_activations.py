"""Tests of the activation rules: every constant against sup |sigma'| of the executor's own function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special

from stabaudit.bounds import activations as A
from stabaudit.bounds import bound_node
from stabaudit.bounds.base import Guarantee, RuleContext
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

H = 1e-3  # grid spacing; near an interior maximum the grid misses at most H^2/8 * sup|sigma'''|
GRID = torch.arange(-12.0, 12.0 + H / 2, H, dtype=torch.float64)


def single(op, in_shape):
    node = Node(name="act", op=op, inputs=("x",), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=in_shape),), outputs=("y",), nodes=(node,)).validate())
    return graph, node, RuleContext(input_shapes=(in_shape,), output_shape=graph.shapes["y"])


def grid_sup_derivative(op) -> float:
    """max |d sigma / dx| over GRID, by autograd through the executor's kernel (element-wise)."""
    graph, _, _ = single(op, (1, GRID.numel()))
    f = Executor(graph, dtype=torch.float64).flat()
    x = GRID.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return float(grad.abs().max())


ELEMENTWISE = [
    (O.Relu(), 1.0),
    (O.LeakyRelu(alpha=0.01), 1.0),
    (O.LeakyRelu(alpha=-1.5), 1.5),
    (O.Sigmoid(), 0.25),
    (O.Tanh(), 1.0),
    (O.Softplus(beta=1.0), 1.0),
    (O.Softplus(beta=0.5), 1.0),
    (O.Elu(alpha=1.0), 1.0),
    (O.Elu(alpha=2.0), 2.0),
    (O.Gelu(approximate="none"), A.GELU_ERF_SUP),
    (O.Gelu(approximate="tanh"), A.GELU_TANH_SUP),
    (O.HardSigmoid(alpha=0.2, beta=0.5), 0.2),
    (O.HardSigmoid(alpha=-0.5, beta=0.1), 0.5),
    (O.HardSwish(), 1.5),
    (O.Silu(), A.SILU_SUP),
    (O.Mish(), A.MISH_SUP),
    (O.Clip(min=0.0, max=6.0), 1.0),
    (O.Clip(min=-1.0, max=None), 1.0),
    (O.Clip(min=2.0, max=2.0), 0.0),
]


@pytest.mark.parametrize(("op", "sup"), ELEMENTWISE, ids=lambda v: type(v).__name__ if isinstance(v, O.Op) else "")
def test_activation_constant_brackets_the_grid_supremum(op, sup) -> None:
    _, node, ctx = single(op, (1, 4))
    result = bound_node(node, ctx)
    assert result.upper.guarantee is Guarantee.UPPER and result.lower is not None
    assert result.lower.value <= sup <= result.upper.value
    assert result.upper.value - result.lower.value <= 2e-6
    measured = grid_sup_derivative(op)
    assert measured <= result.upper.value  # never above the bound
    # the supremum is attained on the grid or approached at its edge (3e-3 covers the one-sided
    # limits of HardSwish at 3-, ELU at 0- within H, Softplus(beta=0.5) at +12)
    assert measured >= result.lower.value - 3e-3


def test_smooth_activation_constants_are_the_exact_suprema() -> None:
    # GELU (erf): closed form at sqrt(2); THEORY.md's 1.1289 is below the true value
    closed_form = (1 + math.erf(1)) / 2 + 1 / (math.e * math.sqrt(math.pi))
    assert abs(A.GELU_ERF_SUP - closed_form) <= 1e-15
    assert 1.1289 < A.GELU_ERF_SUP < A.GELU_ERF_UPPER

    def gelu_d(x: float) -> float:
        return special.ndtr(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    def gelu_tanh_d(x: float) -> float:
        c = math.sqrt(2 / math.pi)
        u = c * (x + 0.044715 * x**3)
        return 0.5 * (1 + math.tanh(u)) + 0.5 * x * (1 - math.tanh(u) ** 2) * c * (1 + 3 * 0.044715 * x**2)

    def silu_d(x: float) -> float:
        s = special.expit(x)
        return s * (1 + x * (1 - s))

    for fn, sup, upper, lower in [
        (gelu_d, A.GELU_ERF_SUP, A.GELU_ERF_UPPER, A.GELU_ERF_LOWER),
        (gelu_tanh_d, A.GELU_TANH_SUP, A.GELU_TANH_UPPER, A.GELU_TANH_LOWER),
        (silu_d, A.SILU_SUP, A.SILU_UPPER, A.SILU_LOWER),
    ]:
        best = optimize.minimize_scalar(lambda x, f=fn: -f(x), bounds=(0.5, 4.0), method="bounded", options={"xatol": 1e-10})
        assert -best.fun == pytest.approx(sup, abs=1e-12)
        worst = optimize.minimize_scalar(fn, bounds=(-4.0, -0.5), method="bounded", options={"xatol": 1e-10})
        assert abs(worst.fun) < sup  # the negative side is smaller in magnitude
        # the grid maximum plus the second-order grid error stays below the rounded-up constant
        xs = np.arange(-12.0, 12.0, H)
        grid = max(abs(fn(float(x))) for x in xs[np.abs(xs - best.x) < 0.1])
        assert grid + H * H / 8 * 5.0 <= upper and lower <= sup <= upper


def test_mish_constants_are_its_derivative_extrema() -> None:
    # f' = tanh(sp) + x sech^2(sp) sigmoid(x), sp = softplus(x): its maximum (the constant) and its
    # minimum (negative, smaller in magnitude), each found by a bounded search and on a fine grid
    def mish_d(x: float) -> float:
        sp = math.log1p(math.exp(x)) if x < 30 else x
        return math.tanh(sp) + x / math.cosh(sp) ** 2 * special.expit(x)

    best = optimize.minimize_scalar(lambda x: -mish_d(x), bounds=(0.5, 3.0), method="bounded", options={"xatol": 1e-10})
    assert -best.fun == pytest.approx(A.MISH_SUP, abs=1e-12)
    worst = optimize.minimize_scalar(mish_d, bounds=(-5.0, -0.5), method="bounded", options={"xatol": 1e-10})
    assert worst.fun == pytest.approx(A.MISH_INF, abs=1e-12) and -worst.fun < A.MISH_NEG_UPPER < A.MISH_SUP
    xs = np.arange(-12.0, 12.0, H)
    grid = max(abs(mish_d(float(x))) for x in xs[np.abs(xs - best.x) < 0.1])
    assert grid + H * H / 8 * 5.0 <= A.MISH_UPPER and A.MISH_LOWER <= A.MISH_SUP <= A.MISH_UPPER


def test_activation_difference_quotients_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(0)
    for op, _ in ELEMENTWISE:
        graph, node, ctx = single(op, (1, 8))
        bound = bound_node(node, ctx).upper.value
        f = Executor(graph, dtype=torch.float64).flat()
        x = torch.from_numpy(rng.standard_normal((256, 8)) * 3)
        y = x + torch.from_numpy(rng.standard_normal((256, 8)) * 0.05)
        q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
        assert float(q.max()) <= bound * (1 + 1e-9), op


def test_prelu_per_channel_slopes() -> None:
    slope = np.array([0.1, -2.5, 0.3]).reshape(1, 3, 1)
    graph, node, ctx = single(O.PRelu(slope=slope), (1, 3, 5))
    result = bound_node(node, ctx)
    assert result.upper.value == 2.5 and result.lower is not None and result.lower.value == 2.5
    exec_f = Executor(graph, dtype=torch.float64).flat()
    x = -torch.ones(15, dtype=torch.float64)
    d = torch.zeros(15, dtype=torch.float64)
    d[5:10] = 1e-3  # the channel with slope -2.5, negative side
    assert float((exec_f(x + d) - exec_f(x)).norm() / d.norm()) == pytest.approx(2.5, rel=1e-9)
    # slopes that broadcast the output beyond the input: each x_j copied twice
    graph2, node2, ctx2 = single(O.PRelu(slope=np.array([[[0.5]], [[-3.0]]])), (1, 1, 2))
    r2 = bound_node(node2, ctx2)
    f2 = Executor(graph2, dtype=torch.float64).flat()
    m = (torch.func.vmap(f2)(torch.eye(2, dtype=torch.float64) * -1.0) - f2(torch.zeros(2, dtype=torch.float64))).T
    exact_neg = float(torch.linalg.matrix_norm(m, ord=2))  # all-negative inputs: sqrt(0.25 + 9)
    assert r2.lower is not None and r2.lower.value <= exact_neg <= r2.upper.value
    assert r2.upper.value == pytest.approx(math.sqrt(1 + 9), rel=1e-12)


def test_softmax_jacobian_norm_is_at_most_one_half() -> None:
    rng = np.random.default_rng(1)
    graph, node, ctx = single(O.Softmax(axis=-1), (1, 5))
    result = bound_node(node, ctx)
    assert result.upper.value == 0.5 and result.lower is not None and result.lower.value == 0.5
    f = Executor(graph, dtype=torch.float64).flat()
    points = [rng.standard_normal(5) * s for s in (0.1, 1, 5, 30) for _ in range(50)]
    points.append(np.array([0.0, 0.0, -60.0, -60.0, -60.0]))  # approaches the supremum 1/2
    norms = [float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, torch.from_numpy(p)), ord=2)) for p in points]
    assert max(norms) <= 0.5 + 1e-15
    assert norms[-1] == pytest.approx(0.5, abs=1e-12)


def test_softmax_along_an_inner_axis_and_of_length_one() -> None:
    graph, node, ctx = single(O.Softmax(axis=1), (1, 3, 4))
    bound = bound_node(node, ctx).upper.value
    f = Executor(graph, dtype=torch.float64).flat()
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((256, 12)) * 2)
    y = x + torch.from_numpy(rng.standard_normal((256, 12)))
    q = (torch.func.vmap(f)(x) - torch.func.vmap(f)(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(q.max()) <= bound
    _, node1, ctx1 = single(O.Softmax(axis=1), (1, 1, 4))
    assert bound_node(node1, ctx1).upper.value == 0.0


def test_activation_rules_in_isolation() -> None:
    ctx = RuleContext(input_shapes=((1, 3),), output_shape=(1, 3))
    node = Node(name="g", op=O.Gelu(approximate="none"), inputs=("a",), output="b")
    r = A.bound_gelu(node, ctx)
    assert (r.upper.value, r.lower.value if r.lower else None) == (A.GELU_ERF_UPPER, A.GELU_ERF_LOWER)
    assert A.bound_sigmoid(Node(name="s", op=O.Sigmoid(), inputs=("a",), output="b"), ctx).upper.value == 0.25
    assert A.bound_elu(Node(name="e", op=O.Elu(alpha=0.5), inputs=("a",), output="b"), ctx).upper.value == 1.0
    nan = A.bound_leaky_relu(Node(name="l", op=O.LeakyRelu(alpha=float("nan")), inputs=("a",), output="b"), ctx)
    assert nan.upper.value == math.inf and nan.lower is None
    with pytest.raises(ValueError, match="approximation"):
        A.bound_gelu(Node(name="g", op=O.Gelu(approximate="fast"), inputs=("a",), output="b"), ctx)
    with pytest.raises(TypeError):
        A.bound_relu(Node(name="r", op=O.Tanh(), inputs=("a",), output="b"), ctx)
    empty = RuleContext(input_shapes=((0, 3),), output_shape=(0, 3))
    assert A.bound_tanh(Node(name="t", op=O.Tanh(), inputs=("a",), output="b"), empty).upper.value == 0.0


# ---- torch's thresholded softplus: the smooth part's constant and the jump -------------------
@pytest.mark.parametrize(("beta", "threshold"), [(1.0, 20.0), (2.0, 5.0), (0.5, -3.0)])
def test_softplus_switch_gap_is_the_exact_jump_rounded_up(beta: float, threshold: float) -> None:
    from fractions import Fraction

    import mpmath

    mpmath.mp.dps = 50
    exact = mpmath.log1p(mpmath.exp(-mpmath.mpf(threshold))) / beta
    gap = A.softplus_switch_gap(beta, threshold)
    assert Fraction(gap) >= Fraction(str(mpmath.nstr(exact, 40)))
    assert gap <= float(exact) * (1 + 1e-13)


@pytest.mark.parametrize(("beta", "threshold"), [(1.0, 20.0), (2.0, 5.0), (0.5, -3.0)])
def test_softplus_with_threshold_bounds_the_executed_jump(beta: float, threshold: float) -> None:
    shape = (2, 3, 5)
    op = O.Softplus(beta=beta, threshold=threshold)
    graph, node, ctx = single(op, shape)
    ob = bound_node(node, ctx)
    assert ob.upper.value == 1.0 and ob.lower is not None and ob.lower.value == 1.0
    n = 30
    gap = A.softplus_switch_gap(beta, threshold)
    assert ob.jump >= math.sqrt(n) * gap
    assert ob.jump <= math.sqrt(n) * gap * (1 + 1e-13)
    # the executed op minus its smooth part, on a grid through the switch: |e_j| <= gap, and the
    # gap is attained (up to the grid) just above beta x = threshold
    x = torch.linspace(threshold / beta - 4.0, threshold / beta + 4.0, 80001, dtype=torch.float64)
    executed = Executor(single(op, (1, x.numel()))[0], dtype=torch.float64).flat()(x)
    smooth = torch.logaddexp(beta * x, torch.zeros_like(x)) / beta
    e = (executed - smooth).abs()
    assert float(e.max()) <= gap
    assert float(e.max()) >= gap * (1 - 1e-3)
    # the smooth branch below the switch (two formulas of it: a few ulps apart)
    assert float(e[beta * x <= threshold].max()) <= 1e-13


def test_softplus_without_threshold_has_no_jump_and_no_switch() -> None:
    op = O.Softplus(beta=1.0)
    graph, node, ctx = single(op, (1, 4))
    assert bound_node(node, ctx).jump == 0.0
    # the smooth formula far beyond torch's default threshold 20 (no switch to x)
    x = torch.tensor([19.0, 20.0, 21.0, 25.0, 30.0], dtype=torch.float64)
    y = Executor(single(op, (1, 5))[0], dtype=torch.float64).flat()(x)
    exact = x + torch.log1p(torch.exp(-x))
    np.testing.assert_allclose(y.numpy(), exact.numpy(), rtol=1e-15, atol=0)
    assert float(y[-1] - x[-1]) > 0.0  # 30 + 9.4e-14, not 30


def test_every_other_activation_rule_reports_no_jump() -> None:
    for op, _ in ELEMENTWISE:
        _, node, ctx = single(op, (1, 4))
        assert bound_node(node, ctx).jump == 0.0
