"""Tests of the per-operator rules on ranges (bounds/ranged.py): soundness against difference
quotients and autograd Jacobians inside the boxes, tightness against exact references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special

from stabaudit.bounds import ranged as R
from stabaudit.bounds.base import Combine, Guarantee, Interval, RuleContext
from stabaudit.bounds.numerics import spectral_norm_dense
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

EPS = float(np.finfo(np.float64).eps)


def setup(op: O.Op, shapes: list[tuple[int, ...]]):
    names = tuple(f"x{i}" for i in range(len(shapes)))
    node = Node(name="n", op=op, inputs=names, output="y")
    graph = with_shapes(Graph(inputs=tuple(TensorSpec(name=n, shape=s) for n, s in zip(names, shapes, strict=True)),
                              outputs=("y",), nodes=(node,)).validate())
    ctx = RuleContext(input_shapes=tuple(shapes), output_shape=graph.shapes["y"])
    ex = Executor(graph, dtype=torch.float64)
    return node, ctx, (lambda *a: ex(*a)[0])


def iv(lo, hi) -> Interval:
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return Interval(lo=lo, hi=hi)


def bound_of(op, boxes):
    node, ctx, f = setup(op, [b.shape for b in boxes])
    out = Interval(lo=np.full(ctx.output_shape, -np.inf), hi=np.full(ctx.output_shape, np.inf))
    return R.ranged_bound(node, ctx, tuple(boxes), out), f


def random_box(rng, shape, center=0.0, spread=3.0, width=1.0):
    c = center + spread * rng.standard_normal(shape)
    w = width * rng.random(shape)
    return iv(c - w / 2, c + w / 2)


def inside(rng, box: Interval) -> torch.Tensor:
    t = rng.random(box.shape)
    # include the corners now and then: the extremes of the box are where slopes peak
    t = np.where(rng.random(box.shape) < 0.2, np.round(t), t)
    return torch.from_numpy(np.asarray(box.lo + t * (box.hi - box.lo)))


def gains(bound) -> tuple[float, ...]:
    return bound.input_gains if bound.input_gains else (bound.upper.value,)


def check_sound(op, boxes, bound, f, rng, pairs=40, jac_points=4):
    """Difference quotients of random pairs and autograd Jacobian norms at random points, all
    inside the boxes, against the bound (per input for Combine.SUM)."""
    g = gains(bound)
    assert bound.upper.guarantee is Guarantee.UPPER and bound.upper.method.startswith("ranged")
    for _ in range(pairs):
        xs = [inside(rng, b) for b in boxes]
        ys = [inside(rng, b) for b in boxes]
        diff = float(torch.linalg.vector_norm(f(*xs) - f(*ys)))
        allowed = sum(gi * float(torch.linalg.vector_norm(a - b)) for gi, a, b in zip(g, xs, ys, strict=True))
        scale = float(torch.linalg.vector_norm(f(*xs))) + 1.0
        assert diff <= allowed * (1 + 1e-9) + 1e-12 * scale, (diff, allowed)
    for _ in range(jac_points):
        xs = tuple(inside(rng, b) for b in boxes)
        jac = torch.autograd.functional.jacobian(f, xs)
        for gi, j, x in zip(g, jac, xs, strict=True):
            mat = j.reshape(-1, max(1, x.numel())).numpy()
            if not np.all(np.isfinite(mat)):
                continue
            # (+1e-100: torch's GELU backward errs by ~0.2% in the far tail, where |f'| ~ 1e-124)
            assert spectral_norm_dense(mat)[1] <= gi * (1 + 1e-9) + 1e-100, (op, gi)


ACTIVATIONS = [
    O.Relu(), O.LeakyRelu(alpha=0.1), O.LeakyRelu(alpha=-2.0), O.Sigmoid(), O.Tanh(), O.Softplus(beta=1.0),
    O.Softplus(beta=2.0, threshold=20.0), O.Elu(alpha=1.0), O.Elu(alpha=2.5), O.Gelu(approximate="none"),
    O.Gelu(approximate="tanh"), O.Silu(), O.Mish(), O.HardSigmoid(alpha=0.2, beta=0.5), O.HardSwish(),
    O.Clip(min=0.0, max=6.0), O.Clip(min=-1.0, max=None), O.Erf(), O.Abs(), O.Sin(), O.Cos(),
]


@pytest.mark.parametrize("op", ACTIVATIONS, ids=lambda o: f"{type(o).__name__}")
def test_activation_sound(op):
    rng = np.random.default_rng(0)
    for spread, width in ((3.0, 1.0), (1.0, 0.3), (6.0, 4.0)):
        box = random_box(rng, (3, 5), spread=spread, width=width)
        bound, f = bound_of(op, [box])
        if bound is None:
            continue
        check_sound(op, [box], bound, f, rng, pairs=15, jac_points=2)


def test_prelu_broadcast_sound():
    rng = np.random.default_rng(1)
    op = O.PRelu(slope=np.array([[0.5], [-3.0], [0.1]]))  # [3, 1] x [1, 4] -> [3, 4]
    box = iv(rng.uniform(-2, 0, (1, 4)), rng.uniform(-1, 0.5, (1, 4)))
    box = iv(np.minimum(box.lo, box.hi), np.maximum(box.lo, box.hi))
    bound, f = bound_of(op, [box])
    assert bound is not None
    check_sound(op, [box], bound, f, rng)


def one_entry(op, lo, hi):
    bound, _ = bound_of(op, [iv([lo], [hi])])
    return bound


def test_activation_tightness():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    b = one_entry(O.Sigmoid(), 2.0, 3.0)
    exact = sig(2.0) * (1 - sig(2.0))
    assert exact <= b.upper.value <= exact * (1 + 64 * EPS)
    b = one_entry(O.Sigmoid(), -3.0, -2.0)
    assert exact <= b.upper.value <= exact * (1 + 64 * EPS)
    assert one_entry(O.Relu(), 0.5, 3.0) is None  # slope 1: the global constant already
    assert one_entry(O.Relu(), -3.0, -0.5).upper.value == 0.0
    assert one_entry(O.LeakyRelu(alpha=0.1), -3.0, -0.5).upper.value == pytest.approx(0.1, abs=0)
    t = one_entry(O.Tanh(), 1.0, 2.0).upper.value
    assert 1 - math.tanh(1.0) ** 2 <= t <= (1 - math.tanh(1.0) ** 2) * (1 + 64 * EPS)
    e = one_entry(O.Erf(), -2.0, -1.0).upper.value
    assert 2 / math.sqrt(math.pi) * math.exp(-1.0) <= e <= 2 / math.sqrt(math.pi) * math.exp(-1.0) * (1 + 64 * EPS)
    # sin on [1, 1.5]: |cos| decreasing, its max cos(1); cos there: |sin| increasing, max sin(1.5);
    # an interval holding pi: |cos(pi)| = 1; one of 1e-12 about pi / 2 for cos: |sin(pi / 2)| = 1
    s = one_entry(O.Sin(), 1.0, 1.5).upper.value
    assert math.cos(1.0) <= s <= math.cos(1.0) * (1 + 64 * EPS) + 8 * EPS
    c = one_entry(O.Cos(), 1.0, 1.5).upper.value
    assert math.sin(1.5) <= c <= math.sin(1.5) * (1 + 64 * EPS) + 8 * EPS
    assert one_entry(O.Sin(), 3.0, 3.2) is None  # holds pi: the global constant 1
    assert one_entry(O.Cos(), math.pi / 2 - 1e-12, math.pi / 2 + 1e-12) is None
    t0 = round(1e6 / math.pi) * math.pi + 0.3  # far out, between k pi + 0.3 and k pi + 0.8
    big = one_entry(O.Sin(), t0, t0 + 0.5).upper.value
    assert abs(math.cos(t0)) <= big <= math.cos(0.3) + 1e-9
    # GELU: on [0, 1] the slope rises to f'(1) = Phi(1) + phi(1); the peak is at sqrt(2)
    g = one_entry(O.Gelu(), 0.0, 1.0).upper.value
    ref = special.ndtr(1.0) + math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert ref <= g <= ref * (1 + 1e-12)
    assert one_entry(O.Gelu(), 1.0, 2.0) is None  # holds the peak: the global constant
    assert one_entry(O.Gelu(), -6.0, -3.0).upper.value < 0.05
    s = one_entry(O.Silu(), -1.0, 1.0).upper.value
    ref = sig(1.0) * (1 + 1.0 * (1 - sig(1.0)))
    assert ref <= s <= ref * (1 + 1e-12)
    assert one_entry(O.Silu(), 2.0, 3.0) is None
    assert one_entry(O.HardSwish(), -1.0, 1.0).upper.value == pytest.approx(5 / 6, rel=1e-15)
    assert one_entry(O.Clip(min=0.0, max=6.0), 7.0, 9.0).upper.value == 0.0
    assert one_entry(O.HardSigmoid(alpha=0.2, beta=0.5), 3.0, 5.0).upper.value == 0.0
    assert one_entry(O.Elu(alpha=2.0), -3.0, -1.0).upper.value == pytest.approx(2 * math.exp(-1.0), rel=1e-14)
    sp = one_entry(O.Softplus(beta=1.0), -3.0, 0.0).upper.value
    assert 0.5 <= sp <= 0.5 * (1 + 64 * EPS)


def test_kinked_slopes_per_entry():
    lo, hi = np.array([0.5, -3.0, -1.0, 2.0]), np.array([3.0, -0.5, 1.0, 2.0])
    assert R.activation_slopes(O.Relu(), lo, hi, (4,)).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert R.activation_slopes(O.LeakyRelu(alpha=0.1), lo, hi, (4,)).tolist() == [1.0, 0.1, 1.0, 0.0]
    assert R.activation_slopes(O.Clip(min=0.0, max=1.0), lo, hi, (4,)).tolist() == [1.0, 0.0, 1.0, 0.0]
    m = R.activation_slopes(O.PRelu(slope=np.array([[0.5], [-2.0]])), lo, hi, (2, 4))
    assert m.tolist() == [[1.0, 0.5, 1.0, 0.0], [1.0, 2.0, 2.0, 0.0]]


def test_softplus_jump_only_where_the_switch_is_reachable():
    op = O.Softplus(beta=1.0, threshold=20.0)
    b = one_entry(op, -3.0, 0.0)
    assert b.jump == 0.0
    b2, _ = bound_of(op, [iv([0.0, 25.0], [1.0, 30.0])])
    assert b2 is not None and b2.jump > 0.0


def test_gelu_tanh_and_silu_critical_points():
    """f'' changes sign only at the enclosed critical points (monotone f' in between); Mish's two
    critical points are not symmetric."""
    x = torch.linspace(-30, 30, 600001, dtype=torch.float64, requires_grad=True)

    def sign_changes(fn) -> np.ndarray:  # type: ignore[no-untyped-def]
        """Where f'' changes sign on the grid (away from its underflowing tails)."""
        (d1,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), x)
        d2, xs = d2.detach().numpy(), x.detach().numpy()
        big = np.abs(d2) > 1e-12
        return xs[1:][big[1:] & big[:-1] & (np.sign(d2[1:]) != np.sign(d2[:-1]))]

    for fn, crit in ((lambda t: torch.nn.functional.gelu(t, approximate="tanh"), R.GELU_TANH_CRITICAL),
                     (torch.nn.functional.silu, R.SILU_CRITICAL),
                     (lambda t: torch.nn.functional.gelu(t), R.SQRT2_ENCLOSURE)):
        changes = sign_changes(fn)
        assert len(changes) == 2
        assert abs(changes[1] - crit[0]) < 1e-3 and abs(changes[0] + crit[0]) < 1e-3
    changes = sign_changes(torch.nn.functional.mish)
    assert len(changes) == 2
    assert abs(changes[0] - R.MISH_NEG_CRITICAL[0]) < 1e-3 and abs(changes[1] - R.MISH_CRITICAL[0]) < 1e-3


DOMAIN = [
    (O.Exp(), (-2.0, 3.0)),
    (O.Log(), (0.001, 5.0)),
    (O.Sqrt(), (0.001, 5.0)),
    (O.Reciprocal(), (0.01, 3.0)),
    (O.Reciprocal(), (-3.0, -0.01)),
    (O.Pow(exponent=2.0), (-3.0, 3.0)),
    (O.Pow(exponent=3.0), (-2.0, 2.0)),
    (O.Pow(exponent=1.5), (0.0, 4.0)),
    (O.Pow(exponent=-2.0), (0.2, 2.0)),
    (O.Pow(exponent=0.5), (0.01, 2.0)),
]


@pytest.mark.parametrize(("op", "span"), DOMAIN, ids=lambda v: type(v).__name__ if isinstance(v, O.Op) else str(v))
def test_domain_maps_sound(op, span):
    rng = np.random.default_rng(2)
    a, b = span
    for _ in range(3):
        u = np.sort(rng.uniform(a, b, (2, 4, 3)), axis=0)
        box = iv(u[0], u[1])
        bound, f = bound_of(op, [box])
        assert bound is not None and math.isfinite(bound.upper.value)
        check_sound(op, [box], bound, f, rng, pairs=15, jac_points=2)


def test_domain_maps_exact_and_infinite():
    e = one_entry(O.Exp(), 0.0, 1.0).upper.value
    assert math.e <= e <= math.e * (1 + 32 * EPS)
    assert one_entry(O.Log(), 0.5, 2.0).upper.value == pytest.approx(2.0, rel=4 * EPS)
    assert one_entry(O.Sqrt(), 0.25, 2.0).upper.value == pytest.approx(1.0, rel=8 * EPS)
    assert one_entry(O.Reciprocal(), -4.0, -0.5).upper.value == pytest.approx(4.0, rel=8 * EPS)
    assert one_entry(O.Pow(exponent=3.0), -2.0, 1.0).upper.value == pytest.approx(12.0, rel=32 * EPS)
    assert one_entry(O.Pow(exponent=2.0), -2.0, 1.0).upper.value >= 4.0
    # dangerous ranges: no finite bound (None: the global needs-domain bound stands)
    for op, lo, hi in ((O.Log(), 0.0, 1.0), (O.Log(), -1.0, 1.0), (O.Sqrt(), 0.0, 1.0),
                       (O.Reciprocal(), -1.0, 1.0), (O.Exp(), 0.0, math.inf), (O.Pow(exponent=2.0), -math.inf, 0.0),
                       (O.Pow(exponent=1.5), -1.0, 1.0), (O.Exp(), 0.0, math.nan)):
        assert one_entry(op, lo, hi) is None, op


def test_mul_sound_and_exact():
    rng = np.random.default_rng(3)
    for sx, sy in (((2, 3), (2, 3)), ((2, 3), (3,)), ((4, 1), (1, 5)), ((2, 3), ())):
        bx, by = random_box(rng, sx, spread=2.0), random_box(rng, sy, spread=2.0)
        bound, f = bound_of(O.Mul(), [bx, by])
        assert bound.combine is Combine.SUM and len(bound.input_gains) == 2
        check_sound(O.Mul(), [bx, by], bound, f, rng)
    # a scalar times a vector: y = s * x; the gain of s is ||x||max, that of x is max |s| (exact)
    bx = iv([1.0, -2.0, 0.5], [1.0, -2.0, 0.5])
    bs = iv(2.0, 3.0)
    bound, _ = bound_of(O.Mul(), [bx, bs])
    assert bound.input_gains[0] == 3.0
    assert bound.input_gains[1] == pytest.approx(math.sqrt(1 + 4 + 0.25), rel=16 * EPS)
    assert bound.input_gains[1] >= math.sqrt(5.25)


def test_div_sound_and_infinite():
    rng = np.random.default_rng(4)
    for sx, sy in (((2, 3), (2, 3)), ((2, 3), (3,)), ((3,), (2, 1))):
        bx = random_box(rng, sx, spread=2.0)
        c = rng.uniform(0.05, 2.0, sy) * rng.choice([-1.0, 1.0], sy)
        w = rng.uniform(0, 0.04, sy)
        by = iv(c - w, c + w)
        bound, f = bound_of(O.Div(), [bx, by])
        assert all(math.isfinite(g) for g in bound.input_gains)
        check_sound(O.Div(), [bx, by], bound, f, rng)
    bound, _ = bound_of(O.Div(), [iv([1.0], [2.0]), iv([-0.5], [0.5])])
    assert bound is None  # the divisor may vanish: the global (infinite) bound stands
    bound, _ = bound_of(O.Div(), [iv([1.0], [2.0]), iv([0.5], [1.0])])
    assert bound.input_gains[0] == pytest.approx(2.0, rel=4 * EPS)
    assert bound.input_gains[1] == pytest.approx(8.0, rel=8 * EPS)


def test_matmul_sound():
    rng = np.random.default_rng(5)
    for sa, sb in (((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 3)), ((3, 4), (4,))):
        ba, bb = random_box(rng, sa), random_box(rng, sb)
        bound, f = bound_of(O.MatMul(), [ba, bb])
        assert bound.combine is Combine.SUM
        check_sound(O.MatMul(), [ba, bb], bound, f, rng)


def test_matmul_point_operand_exact():
    """B fixed at a nonnegative matrix: gain_A = ||B||_2 (Perron: mag(B) = B)."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((3, 4))
    b = rng.random((4, 5))
    bound, _ = bound_of(O.MatMul(), [iv(a - 0.1, a + 0.1), iv(b, b)])
    exact = float(np.linalg.svd(b, compute_uv=False)[0])
    assert exact <= bound.input_gains[0] <= exact * (1 + 1e-6)


def test_nonneg_spectral_upper():
    rng = np.random.default_rng(7)
    m = np.abs(rng.standard_normal((6, 7, 5))) * np.array([1e-200, 1, 1e200, 3, 0, 1])[:, None, None]
    m[3, :, 0] = 0.0
    got = R.nonneg_spectral_upper(m)
    for k in range(6):
        exact = float(np.linalg.svd(m[k], compute_uv=False)[0])
        assert exact <= got[k] <= exact * (1 + 1e-6) + 1e-300


def test_variance_lower_exact():
    rng = np.random.default_rng(8)
    for _ in range(25):
        lo = rng.uniform(-2, 2, 3)
        hi = lo + rng.uniform(0, 1.5, 3)
        got = float(R.variance_lower(lo, hi))

        def var(x):
            return float(np.var(x))

        best = min(
            optimize.minimize(var, x0, bounds=list(zip(lo, hi, strict=True)), method="L-BFGS-B",
                              options={"ftol": 1e-15, "gtol": 1e-12}).fun
            for x0 in (lo, hi, (lo + hi) / 2, rng.uniform(lo, hi))
        )
        # the exact minimum: min over m of sum dist(m, I_i)^2 / n on a fine grid of m
        ms = np.linspace(lo.min(), hi.max(), 200001)
        grid = np.min(np.sum(np.maximum(np.maximum(lo[None] - ms[:, None], ms[:, None] - hi[None]), 0) ** 2, 1)) / 3
        assert got <= best + 1e-15 and got <= grid + 1e-15
        assert got >= best - 1e-9 and got >= grid - 1e-9


def test_variance_lower_cases():
    assert R.variance_lower(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0  # a common point
    v = float(R.variance_lower(np.array([0.0, 2.0]), np.array([0.0, 2.0])))
    assert 1.0 * (1 - 1e-14) <= v <= 1.0
    v = float(R.variance_lower(np.array([-np.inf, 2.0]), np.array([0.0, np.inf])))
    assert 1.0 * (1 - 1e-14) <= v <= 1.0  # unbounded sides: dist is still finite
    lo = np.array([[0.0, 10.0, 20.0], [0.0, 0.0, 0.0]])
    got = R.variance_lower(lo, lo + 1.0)
    assert got.shape == (2,) and got[1] == 0.0
    assert got[0] == pytest.approx(np.var([1.0, 10.5, 20.0]), rel=1e-12)  # 180.5 / 3


def test_layer_norm_ranged():
    rng = np.random.default_rng(9)
    scale = rng.uniform(0.5, 1.5, 6)
    op = O.LayerNorm(axis=1, epsilon=1e-5, scale=scale, bias=rng.standard_normal(6))
    base = np.arange(6.0) * rng.choice([-1.0, 1.0], (4, 6))
    box = iv(base - 0.4, base + 0.4)
    bound, f = bound_of(op, [box])
    assert bound is not None and bound.upper.value < np.max(scale) / math.sqrt(1e-5) / 100
    check_sound(op, [box], bound, f, rng)
    wide = iv(np.full((4, 6), -1.0), np.full((4, 6), 1.0))
    assert bound_of(op, [wide])[0] is None  # a constant vector is in the box: no help


def test_softmax_and_log_sum_exp():
    rng = np.random.default_rng(10)
    c = rng.standard_normal((3, 8)) * 0.3
    box = iv(c - 0.1, c + 0.1)
    bound, f = bound_of(O.Softmax(axis=-1), [box])
    assert bound is not None and bound.upper.value < 0.5
    check_sound(O.Softmax(axis=-1), [box], bound, f, rng)
    # exact at a point: the max softmax entry
    s = torch.softmax(torch.from_numpy(c), -1).numpy()
    point, _ = bound_of(O.Softmax(axis=-1), [iv(c, c)])
    assert s.max() <= point.upper.value <= s.max() * (1 + 1e-13)
    assert bound_of(O.Softmax(axis=-1), [iv(np.zeros((1, 3)), np.array([[20.0, 0.0, 0.0]]))])[0] is None
    op = O.ReduceLogSumExp(axes=(1,), keepdims=False)
    bound, f = bound_of(op, [box])
    assert bound is not None and bound.upper.value < 0.5
    check_sound(op, [box], bound, f, rng)


def test_reduce_sum_square():
    rng = np.random.default_rng(11)
    op = O.ReduceSumSquare(axes=(1,), keepdims=True)
    box = random_box(rng, (3, 4), spread=2.0)
    bound, f = bound_of(op, [box])
    mag = np.maximum(np.abs(box.lo), np.abs(box.hi))
    exact = 2 * float(np.max(np.sqrt(np.sum(mag**2, 1))))
    assert exact <= bound.upper.value <= exact * (1 + 1e-14)
    check_sound(op, [box], bound, f, rng)


def test_no_help_and_infinite_ranges():
    inf = iv(np.full((2, 3), -np.inf), np.full((2, 3), np.inf))
    for op in (O.Relu(), O.Sigmoid(), O.Gelu(), O.Silu(), O.Exp(), O.Softmax(axis=-1), O.Abs(),
               O.ReduceMax(axes=(1,)), O.ReduceL2(axes=(1,)),
               O.LayerNorm(axis=1, epsilon=1e-5), O.ReduceSumSquare(axes=(1,))):
        assert bound_of(op, [inf])[0] is None, op
    for op in (O.Mul(), O.Div(), O.Add()):
        assert bound_of(op, [inf, inf])[0] is None, op
    assert bound_of(O.MatMul(), [inf, iv(np.zeros((3, 2)), np.ones((3, 2)))])[0].input_gains[1] == math.inf


def test_endpoint_slopes_against_mpmath():
    """The rounded-up |f'| of GELU (both forms) and SiLU at points: >= the 30-digit value and
    within 1e-8 relatively plus 1e-12 (the margins are relative to the terms of f', which
    cancel: 2048 ulps for ndtr). (torch's float64 GELU backward is off by ~1% at x = -10: not a reference.)"""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    c, a = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")

    def gelu_tanh_d(x):
        u = c * (x + a * x**3)
        # (1 + tanh u) / 2 as 1 / (1 + e^(-2u)): 1 + tanh u cancels every digit in the tail
        return 1 / (1 + mpmath.exp(-2 * u)) + x / 2 * mpmath.sech(u) ** 2 * c * (1 + 3 * a * x**2)

    refs = ((lambda x: mpmath.ncdf(x) + x * mpmath.npdf(x), R._gelu_erf_slope),
            (gelu_tanh_d, R._gelu_tanh_slope),
            (lambda x: 1 / (1 + mpmath.exp(-x)) * (1 + x / (1 + mpmath.exp(x))), R._silu_slope),
            (lambda x: mpmath.tanh(mpmath.log1p(mpmath.exp(x)))
             + x * mpmath.sech(mpmath.log1p(mpmath.exp(x))) ** 2 / (1 + mpmath.exp(-x)), R._mish_slope))
    xs = np.concatenate([np.linspace(-30, 30, 241), [-1.4142135623730951, 1.4185040087, -2.3993572805]])
    for exact, ours in refs:
        got = ours(xs)
        for x, g in zip(xs, got, strict=True):
            ref = abs(float(exact(mpmath.mpf(float(x)))))
            assert ref <= g <= ref * (1 + 1e-8) + 1e-12, (x, g, ref)
    assert R._gelu_erf_slope(np.array([-np.inf, np.inf])).tolist() == [0.0, 1.0]


def test_box_spectral_upper():
    rng = np.random.default_rng(12)
    c = rng.standard_normal((3, 6, 4))
    r = rng.uniform(0, 0.05, c.shape)
    got = R.box_spectral_upper(c - r, c + r)
    for k in range(3):
        for _ in range(50):
            m = c[k] + r[k] * rng.uniform(-1, 1, r[k].shape)
            m = np.where(rng.random(m.shape) < 0.5, c[k] + r[k] * np.sign(m - c[k]), m)
            assert np.linalg.svd(m, compute_uv=False)[0] <= got[k]
        # centre + radius: within ||R||_2 of the centre's norm, far below || |C| ||_2
        sc = np.linalg.svd(c[k], compute_uv=False)[0]
        assert got[k] <= sc + np.linalg.svd(r[k], compute_uv=False)[0] * (1 + 1e-6) + 1e-12
    # a fixed mixed-sign operand: the gain of the other is its exact norm
    a = rng.standard_normal((5, 4))
    bound, _ = bound_of(O.MatMul(), [iv(a, a), iv(-np.ones((4, 3)), np.ones((4, 3)))])
    exact = float(np.linalg.svd(a, compute_uv=False)[0])
    assert exact <= bound.input_gains[1] <= exact * (1 + 1e-12)


def test_rms_norm_ranged():
    """RMSNorm over a box away from 0: Lip <= max|scale| / sqrt(min mean(x^2) + eps), far below the
    global max|scale| / sqrt(eps), and sound on samples; a box holding 0 gives no help."""
    rng = np.random.default_rng(12)
    scale = rng.uniform(0.5, 1.5, 6)
    op = O.LayerNorm(axis=1, epsilon=1e-6, scale=scale, centered=False)
    base = rng.uniform(1.0, 3.0, (4, 6)) * rng.choice([-1.0, 1.0], (4, 6))
    box = iv(base - 0.5, base + 0.5)
    bound, f = bound_of(op, [box])
    mig = np.maximum(np.abs(base) - 0.5, 0.0)
    exact = float(np.max(scale)) / math.sqrt(float(np.min(np.mean(mig**2, 1))) + 1e-6)
    assert bound is not None and exact <= bound.upper.value <= exact * (1 + 1e-13)
    check_sound(op, [box], bound, f, rng)
    assert bound_of(op, [iv(np.full((4, 6), -1.0), np.full((4, 6), 1.0))])[0] is None
    got = R.square_mean_lower(np.array([[1.0, -3.0, -1.0]]), np.array([[2.0, -2.0, 1.0]]))
    assert 5.0 / 3.0 * (1 - 1e-14) <= got[0] <= 5.0 / 3.0  # 1, 4 and 0: the least squares
