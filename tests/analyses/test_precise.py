"""Tests of stabaudit.analyses.precise: double-double evaluation of piecewise-linear graphs with a
certified error bound, against the exact outputs in rational arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
import torch

from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.lower import ForwardErrorModel, error_sensitivities
from stabaudit.analyses.precise import PreciseModel, Value, extract
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

F = np.vectorize(Fraction, otypes=[object])


def _exact(a: np.ndarray) -> np.ndarray:
    return F(np.asarray(a, dtype=np.float64))


def _wide(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """float32 values over ten decades (both signs): what a slicing with one scale per tensor
    must still get exactly."""
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 4, shape)).astype(np.float32).astype(np.float64)


def _one(op: O.Op, shapes: list[tuple[int, ...]]) -> Graph:
    names = [f"x{i}" for i in range(len(shapes))]
    g = Graph(inputs=tuple(TensorSpec(name=n, shape=s) for n, s in zip(names, shapes, strict=True)),
              outputs=("y",), nodes=(Node(name="n", op=op, inputs=tuple(names), output="y"),))
    return with_shapes(g)


def _exact_sum(value: Value) -> list[Fraction]:
    """The exact sums of an enclosure's limbs, entry by entry."""
    limbs = [p.expand_as(value.parts[0]).numpy().ravel() for p in value.parts]
    return [sum((Fraction(float(p[i])) for p in limbs), Fraction(0)) for i in range(limbs[0].size)]


def _check(graph: Graph, xs: list[np.ndarray], exact: np.ndarray, rel: float = 1e-26, than_float64: bool = True,
           telescoped: bool = True, limbs: int = 2) -> float:
    """Every entry of the precise model's enclosure h + l is within its e of the exact output, e is
    below ``rel`` times the outputs' size and far below float64's bound (``than_float64``: an
    operator that float64 evaluates exactly, such as max, has none); ``evaluate``'s rounded
    outputs are within its L2 bound; with ``telescoped``, the telescoped bound of the certified
    operator bounds holds too (a graph with a product of two values has none). Returns the largest e."""
    model = PreciseModel(graph, dict(graph.shapes), limbs=limbs)
    assert model.supported, model.why
    flat = torch.from_numpy(np.concatenate([x.ravel() for x in xs]))
    (out,) = model.run(flat)
    truth = exact.ravel()
    sums = _exact_sum(out)
    for s, e, t in zip(sums, out.e.numpy().ravel(), truth, strict=True):
        assert abs(s - t) <= Fraction(float(e))
    top = max(abs(b) for b in truth)
    size = float(top) * math.sqrt(float(sum((b / top) ** 2 for b in truth))) if top else 0.0  # no underflow
    worst = float(out.e.max())
    assert worst <= rel * size + 1e-280
    y, bound = model._evaluate(flat)
    diffs = [Fraction(float(a)) - b for a, b in zip(y, truth, strict=True)]
    far = max(abs(d) for d in diffs)
    dist = float(far) * math.sqrt(float(sum((d / far) ** 2 for d in diffs))) if far else 0.0  # no underflow
    assert dist <= bound <= 2.3e-16 * size + 1e-153 * math.sqrt(len(truth))
    _, float64_bound = ForwardErrorModel(graph, dict(graph.shapes)).evaluate(flat)
    assert worst < 1e-6 * float64_bound or float64_bound == 0.0 or not than_float64
    # the telescoped bound (certified operator bounds downstream of each node) encloses h + l too
    fallback = ForwardErrorModel(graph, dict(graph.shapes), error_sensitivities(graph, rule_bounds(graph)))
    tele = PreciseModel(graph, dict(graph.shapes), fallback=fallback, limbs=limbs)
    (again,) = tele.run(flat)
    assert all(torch.equal(p, q) for p, q in zip(again.parts, out.parts, strict=True))
    gap = math.sqrt(float(sum((s - t) ** 2 for s, t in zip(sums, truth, strict=True))))
    # looser on small networks (global S_v); each norm has a floor for squares that underflow
    assert not telescoped or gap <= tele.telescoped <= 1e-20 * size + 1e-152 * len(graph.nodes) * math.sqrt(len(truth))
    return worst


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Exact 2-D cross-correlation of one image (object arrays)."""
    c, hgt, wid = x.shape
    xp = np.full((c, hgt + 2 * pad, wid + 2 * pad), Fraction(0), dtype=object)
    xp[:, pad:pad + hgt, pad:pad + wid] = x
    k = w.shape[-1]
    oh, ow = (hgt + 2 * pad - k) // stride + 1, (wid + 2 * pad - k) // stride + 1
    out = np.empty((w.shape[0], oh, ow), dtype=object)
    for o in range(w.shape[0]):
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
                out[o, i, j] = (patch * w[o]).sum()
    return out


def test_extract_splits_exactly_into_narrow_slices() -> None:
    rng = np.random.default_rng(0)
    h = torch.from_numpy(_wide(rng, 200))
    low = h * 2.0**-60
    beta = 20
    slices, rest = extract([h, low], beta, 4)
    total = sum((_exact(s.numpy()) for s in slices), _exact(np.zeros(200)))
    total = total + _exact(rest[0].numpy()) + _exact(rest[1].numpy())
    assert all(a == b for a, b in zip(total, _exact(h.numpy()) + _exact(low.numpy()), strict=True))
    for s in slices:
        # every entry a multiple of one power of two 2^m, with fewer than 2^beta of them
        exps = []
        for v in s.numpy():
            if v != 0.0:
                f = Fraction(float(v))
                exps.append(((abs(f.numerator) & -abs(f.numerator)).bit_length() - 1) - (f.denominator.bit_length() - 1))
        m = min(exps)
        assert float(s.abs().max()) / 2.0**m < 2**beta
    # each slice takes beta - 2 bits of the two parts' scale (2^e > their largest sum)
    e0 = math.frexp(float(h.abs().max() + low.abs().max()))[1]
    assert 0.0 < float(sum(r.abs().max() for r in rest)) <= 2.0 ** (e0 - 4 * (beta - 2))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_exact_to_its_bound(bias: bool) -> None:
    rng = np.random.default_rng(1)
    w, x = _wide(rng, 7, 300), _wide(rng, 2, 300)
    b = _wide(rng, 7) if bias else None
    g = _one(O.Linear(weight=w, bias=b), [(2, 300)])
    exact = _exact(x) @ _exact(w).T + (_exact(b) if b is not None else 0)
    _check(g, [x], exact)


def test_conv_is_exact_to_its_bound() -> None:
    rng = np.random.default_rng(2)
    w, b, x = _wide(rng, 3, 2, 3, 3), _wide(rng, 3), _wide(rng, 1, 2, 7, 6)
    op = O.Conv(weight=w, bias=b, strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1))
    exact = _conv2d(_exact(x[0]), _exact(w), 2, 1) + _exact(b)[:, None, None]
    _check(_one(op, [(1, 2, 7, 6)]), [x], exact[None])


def test_affine_mean_sum_and_two_inputs() -> None:
    rng = np.random.default_rng(3)
    x, z = _wide(rng, 2, 3, 5, 7), _wide(rng, 2, 3, 5, 7)
    s, t = _wide(rng, 1, 3, 1, 1), _wide(rng, 1, 3, 1, 1)
    ex, ez = _exact(x), _exact(z)
    _check(_one(O.Affine(scale=s, shift=t), [x.shape]), [x], ex * _exact(s) + _exact(t))
    # the mean's 1/35 is not a float: the exact quotient
    _check(_one(O.GlobalAvgPool(), [x.shape]), [x], ex.sum(axis=(2, 3), keepdims=True) / 35)
    _check(_one(O.ReduceMean(axes=(1,), keepdims=False), [x.shape]), [x], ex.sum(axis=1) / 3)
    _check(_one(O.ReduceSum(axes=(3,), keepdims=True), [x.shape]), [x], ex.sum(axis=3, keepdims=True))
    _check(_one(O.Add(), [x.shape, z.shape]), [x, z], ex + ez)
    _check(_one(O.Sub(), [x.shape, z.shape]), [x, z], ex - ez)


def _pieces() -> list[tuple[O.Op, Callable[[Fraction], Fraction]]]:
    return [
        (O.Relu(), lambda v: max(v, Fraction(0))),
        (O.Clip(min=0.0, max=6.0), lambda v: min(max(v, Fraction(0)), Fraction(6))),
        (O.Clip(min=-0.25, max=None), lambda v: max(v, Fraction(-0.25))),
        (O.LeakyRelu(alpha=0.1), lambda v: v if v >= 0 else Fraction(0.1) * v),
    ]


@pytest.mark.parametrize("case", range(4))
def test_kinks_after_a_linear_map(case: int) -> None:
    """Units near the kink (values close to 0 after a linear map with cancellation) and far from
    it: the exact branch where the side is sure, a bound within the error otherwise."""
    op, ref = _pieces()[case]
    rng = np.random.default_rng(4 + case)
    w = _wide(rng, 40, 30)
    x = _wide(rng, 1, 30)
    lin = O.Linear(weight=w, bias=None)
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 30)),), outputs=("y",), nodes=(
        Node(name="a", op=lin, inputs=("x",), output="z"),
        Node(name="b", op=op, inputs=("z",), output="y"))))
    z = _exact(x) @ _exact(w).T
    _check(g, [x], np.vectorize(ref, otypes=[object])(z))
    # exactly at the kink: the input 0 gives the kink's value with a zero bound
    zero = np.zeros((1, 30))
    model = PreciseModel(g, dict(g.shapes))
    y, bound = model.evaluate(torch.from_numpy(zero.ravel()))
    assert bound <= 1e-150 and np.array_equal(y, np.full(40, float(ref(Fraction(0)))))


def test_prelu_and_max_pools() -> None:
    rng = np.random.default_rng(9)
    x = _wide(rng, 1, 2, 5, 5)
    slope = _wide(rng, 1, 2, 1, 1)
    ex = _exact(x)
    pr = np.where(ex >= 0, ex, ex * _exact(slope))
    _check(_one(O.PRelu(slope=slope), [x.shape]), [x], pr)
    pool = O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1))
    ref = np.empty((1, 2, 3, 3), dtype=object)
    for c in range(2):
        for i in range(3):
            for j in range(3):
                rows = range(max(0, 2 * i - 1), min(5, 2 * i + 2))
                cols = range(max(0, 2 * j - 1), min(5, 2 * j + 2))
                ref[0, c, i, j] = max(ex[0, c, r, q] for r in rows for q in cols)
    _check(_one(pool, [x.shape]), [x], ref)
    ceil = O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=True)
    ref2 = np.empty((1, 2, 3, 3), dtype=object)
    for c in range(2):
        for i in range(3):
            for j in range(3):
                ref2[0, c, i, j] = max(ex[0, c, r, q] for r in range(2 * i, min(5, 2 * i + 2))
                                       for q in range(2 * j, min(5, 2 * j + 2)))
    _check(_one(ceil, [x.shape]), [x], ref2)
    _check(_one(O.GlobalMaxPool(), [x.shape]), [x], ex.max(axis=(2, 3), keepdims=True))


def test_max_pool_ties_in_the_high_part_are_decided_by_the_low_part() -> None:
    """Two entries whose float64 parts tie and whose exact values differ below float64's precision
    (a linear map of exact slices with a tiny extra term): the pool takes the larger."""
    big, tiny = 1.0, 2.0**-70
    w = np.array([[big, 0.0], [big, tiny]])  # z = (x0, x0 + tiny x1)
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=(
        Node(name="a", op=O.Linear(weight=w), inputs=("x",), output="z"),
        Node(name="r", op=O.Reshape(shape=(1, 1, 1, 2)), inputs=("z",), output="r"),
        Node(name="p", op=O.GlobalMaxPool(), inputs=("r",), output="y"))))
    model = PreciseModel(g, dict(g.shapes))
    (pool,) = model.run(torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert float(pool.e.max()) < 2.0**-100
    # the exact maximum 1 + 2^-70 (a max of the high parts alone would give 1)
    assert _exact_sum(pool)[0] == 1 + Fraction(2) ** -70


@pytest.mark.parametrize(("limbs", "rel"), [(2, 1e-26), (4, 1e-55)])
def test_a_residual_cnn_end_to_end(limbs: int, rel: float) -> None:
    """Conv, Affine (batch norm), Relu, MaxPool, Conv, Clip, Add (skip), GlobalAvgPool, Reshape,
    Linear against the exact outputs; float64's own bound is far larger; four limbs some 2^-100
    below two."""
    rng = np.random.default_rng(11)
    w1 = _wide(rng, 3, 2, 3, 3)
    w2 = _wide(rng, 3, 3, 3, 3)
    s, t = _wide(rng, 1, 3, 1, 1), _wide(rng, 1, 3, 1, 1)
    wl, bl = _wide(rng, 4, 3), _wide(rng, 4)
    x = _wide(rng, 1, 2, 6, 6)
    nodes = (
        Node(name="c1", op=O.Conv(weight=w1, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="a"),
        Node(name="bn", op=O.Affine(scale=s, shift=t), inputs=("a",), output="b"),
        Node(name="r", op=O.Relu(), inputs=("b",), output="c"),
        Node(name="p", op=O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)),
             inputs=("c",), output="d"),
        Node(name="c2", op=O.Conv(weight=w2, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("d",), output="e"),
        Node(name="six", op=O.Clip(min=0.0, max=6.0), inputs=("e",), output="f"),
        Node(name="add", op=O.Add(), inputs=("f", "d"), output="g"),
        Node(name="gap", op=O.GlobalAvgPool(), inputs=("g",), output="h"),
        Node(name="flat", op=O.Reshape(shape=(1, 3)), inputs=("h",), output="i"),
        Node(name="fc", op=O.Linear(weight=wl, bias=bl), inputs=("i",), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 6, 6)),), outputs=("y",), nodes=nodes))
    a = _conv2d(_exact(x[0]), _exact(w1), 1, 1)
    c = np.vectorize(lambda v: max(v, Fraction(0)), otypes=[object])(a * _exact(s)[0] + _exact(t)[0])
    d = c.reshape(3, 3, 2, 3, 2).max(axis=(2, 4))
    e = _conv2d(d, _exact(w2), 1, 1)
    f = np.vectorize(lambda v: min(max(v, Fraction(0)), Fraction(6)), otypes=[object])(e)
    h = (f + d).sum(axis=(1, 2)) / 9
    y = _exact(wl) @ h + _exact(bl)
    _check(g, [x], y[None], rel=rel, limbs=limbs)


def test_unsupported_operators_are_named() -> None:
    g = _one(O.Exp(), [(1, 3)])
    model = PreciseModel(g, dict(g.shapes))
    assert not model.supported and model.why is not None and "exp" in model.why.lower()
    y, bound = model.evaluate(torch.zeros(3, dtype=torch.float64))
    assert bound == math.inf


@pytest.mark.parametrize(("pads", "ceil", "include"), [((0, 0, 0, 0), False, False), ((1, 0, 1, 1), False, False),
                                                         ((1, 1, 0, 1), True, True), ((0, 1, 1, 0), True, False)])
def test_average_pool_divides_each_window_by_its_count(pads: tuple[int, ...], ceil: bool, include: bool) -> None:
    """Window sums over the zero-padded input divided by the executor's count (the padding counted
    or not, ceil mode's partial windows), exactly: 1/3, 1/6 ... are not floats."""
    rng = np.random.default_rng(21)
    x = _wide(rng, 1, 2, 5, 7)
    op = O.AvgPool(kernel=(3, 2), strides=(2, 2), pads=pads, dilations=(1, 1), ceil_mode=ceil,
                   count_include_pad=include)
    g = _one(op, [x.shape])
    out_shape = g.shapes["y"]
    ex = _exact(x)
    ref = np.empty(out_shape, dtype=object)
    top, left = pads[0], pads[1]
    padded_h, padded_w = 5 + pads[0] + pads[2], 7 + pads[1] + pads[3]
    for c in range(2):
        for i in range(out_shape[2]):
            for j in range(out_shape[3]):
                total, count = Fraction(0), 0
                for r in range(2 * i, 2 * i + 3):
                    for q in range(2 * j, 2 * j + 2):
                        if r >= padded_h or q >= padded_w:
                            continue  # beyond the padded input (ceil mode): neither summed nor counted
                        inside = top <= r < top + 5 and left <= q < left + 7
                        if inside:
                            total += ex[0, c, r - top, q - left]
                        count += 1 if (inside or include) else 0
                ref[0, c, i, j] = total / count
    _check(g, [x], ref)


def test_max_and_min_of_values_and_a_constant() -> None:
    rng = np.random.default_rng(23)
    x, z = _wide(rng, 2, 3, 4), _wide(rng, 2, 3, 4)
    z[0, 0, :2] = x[0, 0, :2]  # ties
    c = _wide(rng, 1, 3, 1)
    ex, ez, ec = _exact(x), _exact(z), _exact(c)
    big = np.vectorize(max, otypes=[object])
    small = np.vectorize(min, otypes=[object])
    _check(_one(O.Max(), [x.shape, z.shape]), [x, z], big(ex, ez), than_float64=False)
    _check(_one(O.Min(constant=c), [x.shape, z.shape]), [x, z], small(small(ex, ez), np.broadcast_to(ec, x.shape)),
           than_float64=False)
    _check(_one(O.Max(constant=c), [x.shape]), [x], big(ex, np.broadcast_to(ec, x.shape)), than_float64=False)


def test_tiny_outputs_keep_a_sound_bound() -> None:
    """Outputs near 1e-160 (weights near 1e-60, inputs near 1e-100): squares of their error bounds
    underflow; the L2 bound still holds them."""
    rng = np.random.default_rng(25)
    w = _wide(rng, 6, 20) * 1e-60
    x = _wide(rng, 1, 20) * 1e-100
    _check(_one(O.Linear(weight=w), [(1, 20)]), [x], _exact(x) @ _exact(w).T, than_float64=False)


def test_a_zero_input_keeps_the_output_shape_of_a_biased_linear_map() -> None:
    """No slice of an all-zero input: the bias alone, in the output's shape (a crash before)."""
    rng = np.random.default_rng(27)
    w, b = _wide(rng, 4, 5), _wide(rng, 4)
    g = _one(O.Linear(weight=w, bias=b), [(1, 5)])
    _check(g, [np.zeros((1, 5))], _exact(b)[None, :], than_float64=False)


def test_an_evaluation_that_fails_bounds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _one(O.Relu(), [(1, 3)])
    model = PreciseModel(g, dict(g.shapes))

    def broken(self: PreciseModel, x: torch.Tensor) -> list[object]:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(PreciseModel, "run", broken)
    y, bound = model.evaluate(torch.zeros(3, dtype=torch.float64))
    assert bound == math.inf and model.failure is not None and "shape mismatch" in model.failure


def test_nearest_resizing_copies_the_enclosures() -> None:
    rng = np.random.default_rng(29)
    x = _wide(rng, 1, 2, 3, 3)
    op = O.Resize(axes=(2, 3), in_sizes=(3, 3), sizes=(6, 6), scales=(2.0, 2.0), mode="nearest",
                  coordinate_mode="asymmetric", nearest_mode="floor")
    ref = _exact(x).repeat(2, axis=2).repeat(2, axis=3)
    _check(_one(op, [x.shape]), [x], ref, than_float64=False)


def test_equal_weights_share_their_slices_and_different_ones_do_not() -> None:
    """Three square maps in a chain: two with equal weights (distinct arrays: sliced once) and one
    that differs from them in a single entry that the cache's key does not sample."""
    rng = np.random.default_rng(31)
    w = _wide(rng, 130, 130)
    other = w.copy()
    other[0, 1] = other[0, 1] * 0.5 + 1.0  # the key samples every 264th entry (130 * 130 // 64)
    nodes = (Node(name="a", op=O.Linear(weight=w), inputs=("x",), output="a"),
             Node(name="b", op=O.Linear(weight=w.copy()), inputs=("a",), output="b"),
             Node(name="c", op=O.Linear(weight=other), inputs=("b",), output="y"))
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 130)),), outputs=("y",), nodes=nodes))
    model = PreciseModel(g, dict(g.shapes))
    assert sum(len(v) for v in model._sliced.values()) == 2
    x = _wide(rng, 1, 130) * 1e-8
    ew, eo = _exact(w), _exact(other)
    _check(g, [x], ((_exact(x) @ ew.T) @ ew.T) @ eo.T, rel=1e-24)


def _hard_swish_exact(v: Fraction) -> Fraction:
    return Fraction(0) if v <= -3 else v if v >= 3 else v * (v + 3) / 6


@pytest.mark.parametrize("limbs", [2, 4])
@pytest.mark.parametrize("kind", ["hardswish", "hardsigmoid"])
def test_hard_activations_near_and_far_from_their_kinks(kind: str, limbs: int) -> None:
    """A linear map with cancellation puts units within a few ulps of HardSwish's kinks -3 and 3
    (and of HardSigmoid's 0 and 1) and others far from them: every entry within its bound of the
    exact value, far below float64's bound."""
    rng = np.random.default_rng(21)
    w = _wide(rng, 40, 30)
    x = _wide(rng, 1, 30)
    if kind == "hardswish":
        bias = np.where(np.arange(40) % 2 == 0, 3.0, -3.0)
        op: O.Op = O.HardSwish()
        ref: Callable[[Fraction], Fraction] = _hard_swish_exact
    else:
        bias = np.where(np.arange(40) % 2 == 0, 0.5, -0.5) * 6.0  # alpha z + beta near 0 and 1
        op = O.HardSigmoid(alpha=1 / 6, beta=0.5)
        ref = lambda v: min(max(Fraction(1 / 6) * v + Fraction(0.5), Fraction(0)), Fraction(1))  # noqa: E731
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 30)),), outputs=("y",), nodes=(
        Node(name="a", op=O.Linear(weight=w, bias=bias), inputs=("x",), output="z"),
        Node(name="b", op=op, inputs=("z",), output="y"))))
    z = _exact(x) @ _exact(w).T + _exact(bias)
    rel = 1e-26 if limbs == 2 else 1e-55
    _check(g, [x * 1e-12], np.vectorize(ref, otypes=[object])(_exact(x * 1e-12) @ _exact(w).T + _exact(bias)),
           rel=rel, limbs=limbs)
    _check(g, [x], np.vectorize(ref, otypes=[object])(z), rel=rel, limbs=limbs)


@pytest.mark.parametrize(("limbs", "rel"), [(2, 1e-24), (4, 1e-52)])
def test_products_of_two_values_with_broadcasting(limbs: int, rel: float) -> None:
    """A squeeze-and-excitation gate: a (1, 3, 4, 4) map times a (1, 3, 1, 1) gate from its pooled
    HardSigmoid, as MobileNetV3 computes it, against the exact outputs."""
    rng = np.random.default_rng(5)
    w1 = _wide(rng, 3, 2, 3, 3)
    wl, bl = _wide(rng, 3, 3) * 1e-3, _wide(rng, 3)
    x = _wide(rng, 1, 2, 4, 4) * 1e-3
    nodes = (
        Node(name="c1", op=O.Conv(weight=w1, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="a"),
        Node(name="hs", op=O.HardSwish(), inputs=("a",), output="b"),
        Node(name="gap", op=O.GlobalAvgPool(), inputs=("b",), output="c"),
        Node(name="flat", op=O.Reshape(shape=(1, 3)), inputs=("c",), output="d"),
        Node(name="fc", op=O.Linear(weight=wl, bias=bl), inputs=("d",), output="e"),
        Node(name="hsig", op=O.HardSigmoid(alpha=0.2, beta=0.5), inputs=("e",), output="f"),
        Node(name="up", op=O.Reshape(shape=(1, 3, 1, 1)), inputs=("f",), output="g"),
        Node(name="gate", op=O.Mul(), inputs=("b", "g"), output="y"),
    )
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 4, 4)),), outputs=("y",), nodes=nodes))
    a = _conv2d(_exact(x[0]), _exact(w1), 1, 1)
    b = np.vectorize(_hard_swish_exact, otypes=[object])(a)
    c = b.sum(axis=(1, 2)) / 16
    e = _exact(wl) @ c + _exact(bl)
    f = np.vectorize(lambda v: min(max(Fraction(0.2) * v + Fraction(0.5), Fraction(0)), Fraction(1)), otypes=[object])(e)
    _check(g, [x], (b * f[:, None, None])[None], rel=rel,  # wide values: cancellation in the conv
           telescoped=False, limbs=limbs)


def test_two_prod_is_exact() -> None:
    from stabaudit.analyses.precise import two_prod

    rng = np.random.default_rng(2)
    a, b = _wide(rng, 200) * 1e3, rng.standard_normal(200) * 10.0 ** rng.uniform(-30, 30, 200)
    p, e = two_prod(torch.from_numpy(a), torch.from_numpy(b))
    for ai, bi, pi, ei in zip(a, b, p.numpy(), e.numpy(), strict=True):
        assert Fraction(float(ai)) * Fraction(float(bi)) == Fraction(float(pi)) + Fraction(float(ei))


def test_a_deep_chain_takes_four_limbs_when_two_are_not_enough() -> None:
    """60 layers of a rotation (float32 entries) and a wide clip: |W| grows some 2.7 times a layer
    where W keeps norms, so two limbs leave a bound above ESCALATE times the outputs; the model then
    evaluates with four, from then on, and its bound is the outputs' rounding to float64; the
    outputs stay within it of the exact ones."""
    from stabaudit.analyses.precise import ESCALATE, LIMBS

    rng = np.random.default_rng(8)
    nodes = []
    name = "x"
    ws = []
    for i in range(60):
        q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
        w = q.astype(np.float32).astype(np.float64)
        ws.append(w)
        nodes.append(Node(name=f"l{i}", op=O.Linear(weight=w), inputs=(name,), output=f"z{i}"))
        nodes.append(Node(name=f"c{i}", op=O.Clip(min=-100.0, max=100.0), inputs=(f"z{i}",), output=f"a{i}"))
        name = f"a{i}"
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 12)),), outputs=(name,), nodes=tuple(nodes)))
    x = rng.standard_normal(12)
    model = PreciseModel(g, dict(g.shapes))
    assert model.limbs == LIMBS[0]
    _, two = model._evaluate(torch.from_numpy(x))
    y, bound = model.evaluate(torch.from_numpy(x))
    assert model.limbs == LIMBS[-1] == 4
    norm = float(np.linalg.norm(y))
    # four limbs: only the outputs' rounding to float64 is left
    assert two > ESCALATE * norm and bound <= 2.3e-16 * norm
    # a plan that cannot afford four limbs keeps two
    kept = PreciseModel(g, dict(g.shapes), most_limbs=2)
    _, again = kept.evaluate(torch.from_numpy(x))
    assert kept.limbs == 2 and again == two
    v = _exact(x)
    for w in ws:
        v = _exact(w) @ v  # the clip is never reached
    assert max(abs(t) for t in v) < 100
    gap = math.sqrt(sum(float(Fraction(float(a)) - b) ** 2 for a, b in zip(y, v, strict=True)))
    assert gap <= bound


@pytest.mark.parametrize("limbs", [2, 4])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "silu"])
def test_logistic_activations_in_limbs(kind: str, limbs: int) -> None:
    """Sigmoid, Tanh and SiLU after a linear map (pre-activations from -800 to 800, some near 0),
    against 400-bit references (mpmath): every entry within its bound, the bound within 2^-90 (two
    limbs) or 2^-180 (four) of the outputs' size, far below float64's."""
    import mpmath

    mpmath.mp.prec = 400
    rng = np.random.default_rng(31)
    w = _wide(rng, 24, 6) * 1e-2
    x = _wide(rng, 1, 6) * 1e-2
    bias = np.concatenate([np.linspace(-800, 800, 12), rng.standard_normal(12) * 1e-3])
    op = {"sigmoid": O.Sigmoid(), "tanh": O.Tanh(), "silu": O.Silu()}[kind]
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 6)),), outputs=("y",), nodes=(
        Node(name="a", op=O.Linear(weight=w, bias=bias), inputs=("x",), output="z"),
        Node(name="b", op=op, inputs=("z",), output="y"))))
    z = _exact(x) @ _exact(w).T + _exact(bias)

    def ref(v: Fraction) -> Fraction:
        m = mpmath.mpf(v.numerator) / v.denominator
        s = 1 / (1 + mpmath.exp(-m))
        out = {"sigmoid": s, "tanh": mpmath.tanh(m), "silu": m * s}[kind]
        man, exp = mpmath.frexp(out)
        return Fraction(int(mpmath.floor(man * 2**380))) * Fraction(2) ** (int(exp) - 380)  # within 2^-379 |out|

    model = PreciseModel(g, dict(g.shapes), limbs=limbs)
    assert model.supported, model.why
    flat = torch.from_numpy(x.ravel())
    (out,) = model.run(flat)
    sums = _exact_sum(out)
    truth = [ref(t) for t in z.ravel()]
    for s, e, t in zip(sums, out.e.numpy().ravel(), truth, strict=True):
        assert abs(s - t) <= Fraction(float(e)) + abs(t) * Fraction(2) ** -378
    size = math.sqrt(sum(float(t) ** 2 for t in truth))
    assert float(out.e.max()) <= (2.0**-90 if limbs == 2 else 2.0**-180) * size
    _, float64_bound = ForwardErrorModel(g, dict(g.shapes)).evaluate(flat)
    assert float(out.e.max()) < 1e-6 * float64_bound


def test_the_cost_model_counts_every_node_and_more_for_logistic_ones() -> None:
    # an evaluation in limbs costs PASSES forward passes, ENTRY_MACS per entry of the entry-wise
    # operators and NODE_MACS per node: a graph of many small nodes is not priced by its entries
    from stabaudit.analyses.precise import ENTRY_MACS, NODE_MACS, PASSES, PASSES_4, evaluation_macs

    w = np.ones((3, 3))
    nodes = (Node(name="l", op=O.Linear(weight=w), inputs=("x",), output="h"),
             Node(name="s", op=O.Sigmoid(), inputs=("h",), output="s"),
             Node(name="m", op=O.Mul(), inputs=("s", "h"), output="y"))
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes))
    shapes = dict(g.shapes)
    two = PASSES * 9.0 + 3 * (ENTRY_MACS["logistic"][2] + ENTRY_MACS["product"][2]) + sum(
        NODE_MACS[k][2] for k in (None, "logistic", "product"))
    assert evaluation_macs(g, shapes, 9.0, 2) == pytest.approx(two, rel=1e-15)
    four = PASSES_4 * 9.0 + 3 * (ENTRY_MACS["logistic"][4] + ENTRY_MACS["product"][4]) + sum(
        NODE_MACS[k][4] for k in (None, "logistic", "product"))
    assert evaluation_macs(g, shapes, 9.0, 4) == pytest.approx(four, rel=1e-15)
    assert NODE_MACS["logistic"][4] / 4e9 > 0.037  # 37 ms measured a Sigmoid or Tanh node of 256 with four limbs


def test_double_double_products_and_sums_enclose_the_exact_ones() -> None:
    """Two limbs: ``_mul`` and ``_add`` (Dekker's product, the double-double sum) against exact
    rationals, over 60 decades, both signs, zero and missing low limbs, inputs with their own
    distances: every result within its e of the exact result of the inputs' sums moved by up to
    their e, and the own error at most 16 u^2 of the operands. size."""
    from stabaudit.analyses.precise import U, _add, _mul

    rng = np.random.default_rng(7)
    n = 400
    hi = rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)
    lo = hi * rng.uniform(-1, 1, n) * 2.0**-53
    lo[::7] = 0.0
    e = np.abs(hi) * 2.0**-100 * (rng.random(n) < 0.5)

    def value(h: np.ndarray, low: np.ndarray | None, err: np.ndarray) -> Value:
        parts = [torch.from_numpy(h.copy())] + ([torch.from_numpy(low.copy())] if low is not None else [])
        return Value(parts=parts, e=torch.from_numpy(err.copy()))

    a = value(hi, lo, e)
    b = value(np.roll(hi, 1), np.roll(lo, 1), np.roll(e, 1))
    single = value(np.roll(hi, 2), None, np.zeros(n))  # a one-limb operand
    for x, y in ((a, b), (a, single), (single, b)):
        xs, ys = _exact_sum(x), _exact_sum(y)
        for op in ("mul", "add", "sub"):
            out = _mul(x, y, 2) if op == "mul" else _add(x, y, 2, 1.0 if op == "add" else -1.0)
            assert len(out.parts) == 2 and out.own is not None
            got = _exact_sum(out)
            for i in range(n):
                ex, ey = Fraction(float(x.e[i])), Fraction(float(y.e[i]))
                size = abs(xs[i]) * abs(ys[i]) if op == "mul" else abs(xs[i]) + abs(ys[i])
                exact = xs[i] * ys[i] if op == "mul" else xs[i] + (ys[i] if op == "add" else -ys[i])
                assert abs(got[i] - exact) <= Fraction(float(out.own[i]))  # the node's own error
                assert Fraction(float(out.own[i])) <= size * Fraction(16 * U * U) + Fraction(1e-280)
                # the inputs anywhere within their distances: the worst corner
                moved = (abs(xs[i]) * ey + abs(ys[i]) * ex + ex * ey) if op == "mul" else ex + ey
                assert abs(got[i] - exact) + moved <= Fraction(float(out.e[i]))
