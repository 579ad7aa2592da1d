"""Tests of stabaudit.analyses.lower: sound lower bounds with witnesses, on exact references."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses import plan
from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.lower import (
    DECISIVE_RATIO,
    UNCONFIRMABLE_RATIO,
    ForwardErrorModel,
    LowerResult,
    error_sensitivities,
    lower_bound,
)
from stabaudit.analyses.precise import PASSES, PreciseModel
from stabaudit.bounds.base import Guarantee
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

FAST = {"starts": 8, "steps": 8, "budget_s": 10.0}  # small plans that finish far within the budget


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: faster for these small models on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _graph(
    inputs: dict[str, tuple[int, ...]], nodes: list[Node], outputs: tuple[str, ...] | None = None
) -> Graph:
    g = Graph(
        inputs=tuple(TensorSpec(name=k, shape=v) for k, v in inputs.items()),
        outputs=outputs or (nodes[-1].output,),
        nodes=tuple(nodes),
    )
    return with_shapes(g.validate())


def _mlp(weights: list[np.ndarray], biases: list[np.ndarray], act: O.Op) -> Graph:
    nodes: list[Node] = []
    src = "x"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        nodes.append(
            Node(name=f"fc{i}", op=O.Linear(weight=w, bias=b), inputs=(src,), output=f"h{i}")
        )
        src = f"h{i}"
        if i < len(weights) - 1:
            nodes.append(Node(name=f"act{i}", op=act, inputs=(src,), output=f"a{i}"))
            src = f"a{i}"
    return _graph({"x": (1, weights[0].shape[1])}, nodes)


def _quotient(graph: Graph, x: list[float], y: list[float]) -> float:
    f = Executor(graph, dtype=torch.float64).flat()
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    return float((f(ty) - f(tx)).norm() / (ty - tx).norm())


def _check_witness(graph: Graph, result: LowerResult, margin: float = 1e-6) -> None:
    assert result.witness is not None
    assert result.witness.quotient == result.value
    recomputed = _quotient(graph, result.witness.x, result.witness.y)
    # the value is the recomputed quotient minus the explicit rounding margin
    assert result.value <= recomputed * (1 + 1e-12)
    assert recomputed <= result.value * (1 + margin)


def test_linear_model_gives_its_spectral_norm() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 7)), rng.normal(size=5)
    g = _graph(
        {"x": (1, 7)}, [Node(name="fc", op=O.Linear(weight=w, bias=b), inputs=("x",), output="y")]
    )
    exact = float(np.linalg.svd(w, compute_uv=False)[0])
    result = lower_bound(g, seed=1, **FAST)
    assert result.guarantee is Guarantee.LOWER
    assert result.value <= exact * (1 + 1e-12)
    assert result.value >= exact * (1 - 1e-6)
    assert "multi-start jacobian ascent + difference quotient" in result.method
    assert result.evaluations > 0 and result.seconds > 0
    _check_witness(g, result)


def test_wide_linear_model_through_power_iteration() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(80, 90))  # min(n, m) > 64: jvp/vjp power iteration
    g = _graph({"x": (1, 90)}, [Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y")])
    exact = float(np.linalg.svd(w, compute_uv=False)[0])
    result = lower_bound(g, seed=0, **FAST)
    assert "power iteration" in result.method
    assert exact * (1 - 1e-6) <= result.value <= exact * (1 + 1e-12)


def _relu_exact_constant(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> float:
    """max over the cells of the line arrangement {w1_i . x + b1_i = 0} in R^2 of ||W2 D W1||.

    In general position every cell has a vertex, and the four points around each vertex
    (offsets along both normals) visit all cells that meet there.
    """
    best = 0.0
    for i, j in itertools.combinations(range(w1.shape[0]), 2):
        a = np.stack([w1[i], w1[j]])
        vertex = np.linalg.solve(a, -np.array([b1[i], b1[j]]))
        for si, sj in itertools.product((-1.0, 1.0), repeat=2):
            p = vertex + 1e-7 * (
                si * w1[i] / np.linalg.norm(w1[i]) + sj * w1[j] / np.linalg.norm(w1[j])
            )
            d = (w1 @ p + b1 > 0).astype(np.float64)
            best = max(best, float(np.linalg.svd(w2 @ (d[:, None] * w1), compute_uv=False)[0]))
    return best


def test_one_hidden_layer_relu_net_against_its_exact_constant() -> None:
    rng = np.random.default_rng(2)
    w1, b1, w2 = rng.normal(size=(7, 2)), rng.normal(size=7), rng.normal(size=(3, 7))
    g = _mlp([w1, w2], [b1, np.zeros(3)], O.Relu())
    exact = _relu_exact_constant(w1, b1, w2)
    result = lower_bound(g, seed=3, **FAST)
    assert result.value <= exact * (1 + 1e-12)
    assert result.value >= 0.999 * exact  # two inputs: the search finds the best cell
    _check_witness(g, result)


def test_deep_relu_net_with_operator_bounds() -> None:
    # deep and wide: the propagated float64 error bound alone grows with depth; the telescoped
    # one (from the operator bounds) and the off-unit refinement keep small steps confirmable
    rng = np.random.default_rng(10)
    sizes = [6] + [40] * 8 + [3]
    ws = [rng.normal(size=(b, a)) * 1.5 / math.sqrt(a) for a, b in itertools.pairwise(sizes)]
    bs = [rng.normal(size=b) * 0.1 for b in sizes[1:]]
    g = _mlp(ws, bs, O.Relu())
    plain = lower_bound(g, seed=0, **FAST)
    tight = lower_bound(g, seed=0, op_bounds=rule_bounds(g), **FAST)
    assert tight.value >= plain.value * (1 - 1e-9)
    assert tight.value >= tight.estimate * (1 - 1e-6)  # the best local constant was confirmed
    _check_witness(g, tight)


def test_same_seed_same_result() -> None:
    rng = np.random.default_rng(3)
    g = _mlp(
        [rng.normal(size=(16, 4)), rng.normal(size=(16, 16)), rng.normal(size=(2, 16))],
        [rng.normal(size=16), rng.normal(size=16), rng.normal(size=2)],
        O.Relu(),
    )
    a = lower_bound(g, seed=5, **FAST)
    b = lower_bound(g, seed=5, **FAST)
    assert a.value == b.value and a.witness == b.witness and a.evaluations == b.evaluations
    assert a.value > 0.0
    _check_witness(g, a)


def test_smooth_network_uses_the_jacobian_gradient_and_stays_below_the_product() -> None:
    rng = np.random.default_rng(4)
    ws = [rng.normal(size=(12, 3)), rng.normal(size=(12, 12)), rng.normal(size=(2, 12))]
    g = _mlp(ws, [rng.normal(size=12), rng.normal(size=12), np.zeros(2)], O.Tanh())
    product = math.prod(float(np.linalg.svd(w, compute_uv=False)[0]) for w in ws)
    f = Executor(g, dtype=torch.float64).flat()
    at_zero = float(
        torch.linalg.matrix_norm(torch.func.jacrev(f)(torch.zeros(3, dtype=torch.float64)), ord=2)
    )
    result = lower_bound(g, seed=0, **FAST)
    assert at_zero * 0.999 <= result.value <= product
    _check_witness(g, result)


def test_rounding_margin_under_heavy_cancellation() -> None:
    # y = A x - B x with |A|, |B| ~ 1e8 and A - B ~ 1: float64 evaluation loses about 8 digits
    rng = np.random.default_rng(5)
    a = 1e8 * rng.uniform(1.0, 2.0, size=(3, 4))
    b = a + rng.normal(size=(3, 4))
    diff = b - a  # exact (Sterbenz lemma: b/2 <= a <= 2b entrywise)
    g = _graph(
        {"x": (1, 4)},
        [
            Node(name="fa", op=O.Linear(weight=a), inputs=("x",), output="p"),
            Node(name="fb", op=O.Linear(weight=b), inputs=("x",), output="q"),
            Node(name="sub", op=O.Sub(), inputs=("q", "p"), output="y"),
        ],
    )
    exact = float(np.linalg.svd(diff, compute_uv=False)[0])
    result = lower_bound(g, seed=0, **FAST)
    assert result.value <= exact * (1 + 1e-12)
    assert result.value >= 0.99 * exact


def test_several_inputs_and_outputs_are_stacked() -> None:
    rng = np.random.default_rng(6)
    w1, w2 = rng.normal(size=(3, 2)), rng.normal(size=(3, 4))
    g = _graph(
        {"x1": (1, 2), "x2": (1, 4)},
        [
            Node(name="f1", op=O.Linear(weight=w1), inputs=("x1",), output="a"),
            Node(name="f2", op=O.Linear(weight=w2), inputs=("x2",), output="b"),
            Node(name="sum", op=O.Add(), inputs=("a", "b"), output="y"),
            Node(name="cat", op=O.Concat(axis=1), inputs=("a", "y"), output="z"),
        ],
        outputs=("z", "b"),
    )
    # the whole map (x1, x2) -> (a, a + b, b) is linear: its matrix gives the exact constant
    m = np.block([[w1, np.zeros((3, 4))], [w1, w2], [np.zeros((3, 2)), w2]])
    exact = float(np.linalg.svd(m, compute_uv=False)[0])
    result = lower_bound(g, seed=0, **FAST)
    assert exact * (1 - 1e-6) <= result.value <= exact * (1 + 1e-12)
    assert result.witness is not None and len(result.witness.x) == 6


def test_zero_budget_still_returns_a_sound_value() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3))
    g = _graph({"x": (1, 3)}, [Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y")])
    result = lower_bound(g, seed=0, budget_s=0.0)
    assert 0.0 < result.value <= float(np.linalg.svd(w, compute_uv=False)[0]) * (1 + 1e-12)
    assert "budget" in result.method


def _exact_forward(
    weights: list[tuple[np.ndarray, np.ndarray]],
    scale: np.ndarray,
    shift: np.ndarray,
    x: np.ndarray,
) -> list[Fraction]:
    """The MLP of the error-model test in exact rational arithmetic."""

    def lin(w: np.ndarray, b: np.ndarray, v: list[Fraction]) -> list[Fraction]:
        return [
            sum((Fraction(float(w[i, j])) * v[j] for j in range(len(v))), Fraction(float(b[i])))
            for i in range(w.shape[0])
        ]

    v = [Fraction(float(t)) for t in x]
    h = lin(*weights[0], v)
    h = [
        t * Fraction(float(s)) + Fraction(float(c)) for t, s, c in zip(h, scale, shift, strict=True)
    ]
    r = [max(t, Fraction(0)) for t in h]
    y = lin(*weights[1], r)
    return [a + b for a, b in zip(y, lin(*weights[2], v), strict=True)]  # residual-like skip


def test_error_model_bounds_the_float64_evaluation_error() -> None:
    rng = np.random.default_rng(8)
    # large, cancelling weights so that the float64 result carries a visible error
    w1, b1 = rng.normal(size=(6, 4)) * 1e6, rng.normal(size=6) * 1e6
    w2, b2 = rng.normal(size=(3, 6)) * 1e3, rng.normal(size=3)
    w3, b3 = rng.normal(size=(3, 4)), np.zeros(3)
    scale, shift = rng.normal(size=6), rng.normal(size=6) * 1e6
    g = _graph(
        {"x": (1, 4)},
        [
            Node(name="fc1", op=O.Linear(weight=w1, bias=b1), inputs=("x",), output="h"),
            Node(name="bn", op=O.Affine(scale=scale, shift=shift), inputs=("h",), output="hb"),
            Node(name="relu", op=O.Relu(), inputs=("hb",), output="r"),
            Node(name="fc2", op=O.Linear(weight=w2, bias=b2), inputs=("r",), output="y1"),
            Node(name="skip", op=O.Linear(weight=w3, bias=b3), inputs=("x",), output="y2"),
            Node(name="add", op=O.Add(), inputs=("y1", "y2"), output="y"),
        ],
    )
    propagated = ForwardErrorModel(g, dict(g.shapes))
    telescoped = ForwardErrorModel(g, dict(g.shapes), error_sensitivities(g, rule_bounds(g)))
    worst = 0.0
    for trial in range(20):
        x = rng.normal(size=4) * (10.0 ** (trial % 4))
        model = propagated if trial % 2 else telescoped
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        exact = _exact_forward([(w1, b1), (w2, b2), (w3, b3)], scale, shift, x)
        err = math.sqrt(
            float(sum((Fraction(float(a)) - e) ** 2 for a, e in zip(y_hat, exact, strict=True)))
        )
        assert err <= bound
        assert bound <= 1e-3 * (1.0 + float(np.abs(y_hat).max())) * 1e6  # not absurdly loose
        worst = max(worst, err)
    assert worst > 0.0  # the test does exercise rounding


@pytest.mark.external
def test_acasxu_lower_bound(external_dir: Path) -> None:
    onnx_loader = pytest.importorskip("stabaudit.loaders.onnx")
    model = onnx_loader.load_onnx(external_dir / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    g = model.graph
    result = lower_bound(g, seed=0)
    product = math.prod(
        float(np.linalg.svd(np.asarray(n.op.weight, dtype=np.float64), compute_uv=False)[0])
        for n in g.nodes
        if isinstance(n.op, O.Linear)
    )
    print(f"ACAS Xu 1_1 lower bound {result.value:.6g} in {result.seconds:.2f} s ({result.method})")
    assert 269.0 <= result.value <= product
    _check_witness(g, result, margin=1e-4)  # thin linear regions: small steps, larger margins


def _matrix_of(graph: Graph, shape: tuple[int, ...]) -> np.ndarray:
    """The explicit matrix of a bias-free linear graph: its images of the unit vectors (exact:
    each entry is one stored weight times 1 plus exact zeros)."""
    f = Executor(graph, dtype=torch.float64).flat()
    n = int(np.prod(shape))
    return np.stack([f(torch.eye(n, dtype=torch.float64)[i]).numpy() for i in range(n)], axis=1)


def test_error_model_bounds_conv_tanh_pool_softmax() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    rng = np.random.default_rng(9)
    shape = (1, 2, 4, 4)
    conv = O.Conv(
        weight=rng.normal(size=(3, 2, 3, 3)) * 30,
        strides=(1, 1),
        pads=(1, 1, 1, 1),
        dilations=(1, 1),
    )
    pool = O.AvgPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1))
    w, b = rng.normal(size=(4, 12)) * 10, rng.normal(size=4) * 10
    bias = rng.normal(size=3)
    g = _graph(
        {"x": shape},
        [
            Node(name="conv", op=dataclasses.replace(conv, bias=bias), inputs=("x",), output="c"),
            Node(name="tanh", op=O.Tanh(), inputs=("c",), output="t"),
            Node(name="pool", op=pool, inputs=("t",), output="p"),
            Node(name="flat", op=O.Reshape(shape=(1, 12)), inputs=("p",), output="r"),
            Node(name="fc", op=O.Linear(weight=w, bias=b), inputs=("r",), output="z"),
            Node(name="soft", op=O.Softmax(axis=1), inputs=("z",), output="y"),
        ],
    )
    m_conv = _matrix_of(
        _graph({"x": shape}, [Node(name="c", op=conv, inputs=("x",), output="c")]), shape
    )
    m_pool = _matrix_of(
        _graph({"x": (1, 3, 4, 4)}, [Node(name="p", op=pool, inputs=("x",), output="p")]),
        (1, 3, 4, 4),
    )
    bias_c = np.repeat(bias, 16)
    mp = mpmath.mpf
    propagated = ForwardErrorModel(g, dict(g.shapes))
    telescoped = ForwardErrorModel(g, dict(g.shapes), error_sensitivities(g, rule_bounds(g)))
    for trial in range(6):
        model = propagated if trial % 2 else telescoped
        x = rng.normal(size=32) * (0.3 * (trial + 1))
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        c = [
            sum(
                (mp(float(m_conv[i, j])) * mp(float(x[j])) for j in range(32)), mp(float(bias_c[i]))
            )
            for i in range(48)
        ]
        t = [mpmath.tanh(v) for v in c]
        p = [sum((mp(float(m_pool[i, j])) * t[j] for j in range(48)), mp(0)) for i in range(12)]
        z = [sum((mp(float(w[i, j])) * p[j] for j in range(12)), mp(float(b[i]))) for i in range(4)]
        top = max(z)
        e = [mpmath.exp(v - top) for v in z]
        exact = [v / sum(e) for v in e]
        err = float(
            mpmath.sqrt(sum((mp(float(a)) - v) ** 2 for a, v in zip(y_hat, exact, strict=True)))
        )
        assert err <= bound
        assert bound <= 1e-9


@pytest.mark.parametrize(("centered", "eps", "seed"), [(True, 1e-12, 3), (False, 1e-6, 5)])
def test_error_model_of_a_layer_norm_with_a_tiny_eps_follows_the_variance(centered: bool, eps: float,
                                                                          seed: int) -> None:
    """BERT's LayerNorm (eps 1e-12) and an RMSNorm (centered=False, eps 1e-6): the error bound
    divides by the group's standard deviation (or root mean square; bounded below on the segment to
    the exact input), not by sqrt(eps); it still bounds the float64 evaluation error, measured
    against an extended-precision evaluation."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(8, 4)) * 3.0, rng.normal(size=8)
    scale, bias = rng.normal(size=8), (rng.normal(size=8) if centered else None)
    norm = O.LayerNorm(axis=1, epsilon=eps, scale=scale, bias=bias, centered=centered)
    g = _graph(
        {"x": (2, 4)},
        [
            Node(name="fc", op=O.Linear(weight=w1, bias=b1), inputs=("x",), output="h"),
            Node(name="ln", op=norm, inputs=("h",), output="y"),
        ],
    )
    model = ForwardErrorModel(g, dict(g.shapes))
    ld = np.longdouble
    for trial in range(10):
        x = rng.normal(size=8) * (10.0 ** (trial % 3))
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        h = x.reshape(2, 4).astype(ld) @ w1.T.astype(ld) + b1.astype(ld)
        d = h - h.mean(axis=1, keepdims=True) if centered else h
        exact = d / np.sqrt((d * d).mean(axis=1, keepdims=True) + ld(eps)) * scale.astype(ld)
        if bias is not None:
            exact = exact + bias.astype(ld)
        err = float(np.sqrt(((y_hat.astype(ld) - exact.reshape(-1)) ** 2).sum()))
        assert err <= bound
        assert bound <= 1e-11 * (10.0 ** (trial % 3)), bound  # 1/sqrt(eps) = 1e6 would give ~1e-9


def test_the_search_is_skipped_when_no_quotient_could_be_confirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error bound that overflows (or dwarfs the outputs) at the seeded points: where the
    double-double evaluation does not fit the budget no search is run, the result says why and is
    the trivial bound 0; where it fits, the search runs and stops at its first double-double
    evaluation when that bound is hopeless too; a sane bound confirms."""
    from stabaudit.analyses import lower as L

    rng = np.random.default_rng(0)
    g = _mlp([rng.standard_normal((8, 4)), rng.standard_normal((3, 8))], [np.zeros(8), np.zeros(3)], O.Tanh())
    sane = lower_bound(g, seed=0, **FAST)
    assert sane.value > 0 and sane.witness is not None
    real = ForwardErrorModel.evaluate
    real_precise = PreciseModel.evaluate

    def both(bound: Callable[[np.ndarray], float]) -> None:
        def fake(self: ForwardErrorModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
            y = real(self, x)[0]
            return y, bound(y)

        def fake_precise(self: PreciseModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
            y = real_precise(self, x)[0]
            return y, bound(y)

        monkeypatch.setattr(ForwardErrorModel, "evaluate", fake)
        monkeypatch.setattr(PreciseModel, "evaluate", fake_precise)

    starved = {"starts": 1, "steps": 0, "budget_s": 0.0, "smallest_slack_s": 0.0}
    monkeypatch.setattr(L, "PRECISE_FLOOR_S", 0.0)
    both(lambda y: math.inf)
    skipped = lower_bound(g, seed=0, **starved)
    # an infinite bound at the first seeded point decides alone: one float64 evaluation
    assert skipped.value == 0.0 and skipped.witness is None and skipped.evaluations == 1
    assert skipped.method.startswith("not searched: the float64 rounding-error bound of this network overflows")
    assert "a larger --budget confirms it" in skipped.method

    both(lambda y: 50.0 * (float(np.linalg.norm(y)) + 1.0))
    fifty = lower_bound(g, seed=0, **starved)
    assert "is 50 times the output's norm" in fifty.method and fifty.evaluations == 2

    # far beyond DECISIVE_RATIO at the first point: the second is not evaluated
    both(lambda y: 2e4 * UNCONFIRMABLE_RATIO * (float(np.linalg.norm(y)) + 1.0))
    decided = lower_bound(g, seed=0, **starved)
    assert "is 2e+05 times the output's norm" in decided.method and decided.evaluations == 1
    assert 2e4 * UNCONFIRMABLE_RATIO > DECISIVE_RATIO

    # the double-double evaluation fits, the float64 bound within PRECISE_DOUBT of the outputs: the
    # search runs and stops at its first double-double evaluation
    both(lambda y: 50.0 * (float(np.linalg.norm(y)) + 1.0))
    monkeypatch.setattr(PreciseModel, "evaluate", lambda self, x: (real_precise(self, x)[0], math.inf))
    stopped = lower_bound(g, seed=0, **FAST)
    assert stopped.value == 0.0 and stopped.witness is None
    assert "not confirmed: the double-double error bound of this network overflows" in stopped.method

    # a float64 bound beyond PRECISE_DOUBT: one double-double evaluation at the seeded point decides
    # first, and where its bound is hopeless too, no search runs (one float64, one double-double
    # evaluation) and one message says both
    both(lambda y: math.inf)
    with plan.ledger() as spent:
        doubted = lower_bound(g, seed=0, **FAST)
    one_precise = PASSES * L.forward_macs(g, dict(g.shapes)) / plan.LOWER_MACS_PER_S
    assert doubted.value == 0.0 and doubted.evaluations == 2 and spent[0] >= one_precise
    assert doubted.method == (
        "not searched: the float64 rounding-error bound of this network overflows at seeded points; the "
        "double-double error bound of this network overflows at seeded points, so no difference quotient "
        "can be confirmed (a sound lower bound needs the output difference to exceed the error bounds of "
        "both points)")

    # float64 hopeless, the double-double bound sane (its Tanh nodes in float64 at the size of one
    # layer's rounding): the search runs and confirms
    monkeypatch.setattr(PreciseModel, "evaluate", real_precise)
    rescued = lower_bound(g, seed=0, **FAST)
    assert rescued.value > 0.0
    assert "double-double evaluation of up to" in rescued.method
    _check_witness(g, rescued)


def test_deep_piecewise_linear_networks_confirm_in_double_double(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where float64's error bound dwarfs the outputs, a ReLU network's pairs are confirmed by the
    double-double evaluation: a positive bound below the exact constant, its witness a pair whose
    quotient it is, and the method says so; the plan's evaluations are counted."""
    w1 = np.array([[2.0, -1.0], [1.0, 3.0], [-1.0, 1.0]])
    b1 = np.array([0.5, -0.25, 0.1])
    w2 = np.array([[1.0, 2.0, -1.0]])
    g = _mlp([w1, w2], [b1, np.zeros(1)], O.Relu())
    real = ForwardErrorModel.evaluate

    def huge(self: ForwardErrorModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
        y = real(self, x)[0]
        return y, 1e6 * (float(np.linalg.norm(y)) + 1.0)

    monkeypatch.setattr(ForwardErrorModel, "evaluate", huge)
    result = lower_bound(g, seed=0, **FAST)
    exact = _relu_exact_constant(w1, b1, w2)
    assert 0.9 * exact <= result.value <= exact * (1 + 1e-12)
    assert "double-double evaluation of" in result.method and "1e+06 times the output's norm" in result.method
    _check_witness(g, result)


def test_error_model_uses_the_slope_of_saturated_tanh_and_sigmoid_units() -> None:
    """A recurrent-like chain h <- tanh(W h) * sigmoid(V h) whose units mostly saturate: the error
    bound takes each unit's slope on the segment to the exact input (sech^2 at the smallest |x|),
    not the global 1 and 1/4, and stays a bound of the float64 error (against 40 digits)."""
    rng = np.random.default_rng(5)
    n, steps = 16, 10
    w = rng.normal(size=(n, n)) * 3.0   # strong weights: most units saturate
    v = rng.normal(size=(n, n)) * 3.0
    nodes = []
    h = "x"
    for t in range(steps):
        nodes += [
            Node(name=f"a{t}", op=O.Linear(weight=w, bias=None), inputs=(h,), output=f"a{t}"),
            Node(name=f"t{t}", op=O.Tanh(), inputs=(f"a{t}",), output=f"t{t}"),
            Node(name=f"b{t}", op=O.Linear(weight=v, bias=None), inputs=(h,), output=f"b{t}"),
            Node(name=f"s{t}", op=O.Sigmoid(), inputs=(f"b{t}",), output=f"s{t}"),
            Node(name=f"m{t}", op=O.Mul(), inputs=(f"t{t}", f"s{t}"), output=f"h{t}"),
        ]
        h = f"h{t}"
    g = _graph({"x": (1, n)}, nodes)
    model = ForwardErrorModel(g, dict(g.shapes))
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mpf
    mpmath.mp.dps = 40
    for _ in range(4):
        x = rng.normal(size=n)
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        cur = [mp(float(c)) for c in x]
        for _step in range(steps):
            a = [mpmath.tanh(sum(mp(float(w[i, j])) * cur[j] for j in range(n))) for i in range(n)]
            b = [1 / (1 + mpmath.exp(-sum(mp(float(v[i, j])) * cur[j] for j in range(n)))) for i in range(n)]
            cur = [p * q for p, q in zip(a, b, strict=True)]
        err = float(mpmath.sqrt(sum((mp(float(p)) - q) ** 2 for p, q in zip(y_hat, cur, strict=True))))
        assert err <= bound
        assert bound <= 1e-4  # the global slopes give 17 to 94 here


def test_fast_norm_of_error_tensors_is_an_upper_bound_of_the_exact_norm() -> None:
    """The BLAS sum of squares widened by gamma_n: above the exact norm (rational arithmetic) and
    within 1e-6 of it, at every scale, underflowing squares included."""
    from stabaudit.analyses.lower import _norm_up

    rng = np.random.default_rng(7)
    for n, scale in ((1, 1.0), (7, 1e-160), (300, 1e150), (1000, 1.0), (5000, 1e-5)):
        a = rng.standard_normal(n) * scale
        exact_sq = sum(Fraction(float(v)) ** 2 for v in a)
        bound = _norm_up(a)
        assert Fraction(bound) ** 2 >= exact_sq
        assert bound <= math.sqrt(float(exact_sq)) * (1 + 1e-6) + math.sqrt(n) * 2e-154
    assert _norm_up(np.zeros(0)) == 0.0
    assert _norm_up(np.array([1e200, 1e200])) == math.inf


def _resize_reference(op: O.Resize, x: np.ndarray) -> np.ndarray:
    """The separable Resize in extended precision (the float64 axis matrices as its parameters)."""
    from stabaudit.ir.resize import axis_matrix

    y = x.astype(np.longdouble)
    for k, axis in enumerate(op.axes):
        m, outside = axis_matrix(op, k)
        y = np.moveaxis(np.tensordot(m.astype(np.longdouble), y, axes=([1], [axis])), 0, axis)
        if outside is not None:
            shape = [1] * y.ndim
            shape[axis] = -1
            y = y + (outside.astype(np.float64) * op.extrapolation_value).astype(np.longdouble).reshape(shape)
    return y


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_error_model_bounds_a_resize_after_a_linear_map(mode: str) -> None:
    """Upsampling (FPN and U-Net decoders): the error bound of a Linear map followed by a Resize of
    two axes holds against an extended-precision evaluation, and is of the size of the float64
    rounding (it was infinite: no lower bound on any model with a Resize)."""
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(12, 6)) * 5.0, rng.normal(size=12) * 100.0
    resize = O.Resize(axes=(1, 2), in_sizes=(3, 4), sizes=(7, 9), scales=(7 / 3, 9 / 4), mode=mode)
    g = _graph(
        {"x": (1, 6)},
        [
            Node(name="fc", op=O.Linear(weight=w, bias=b), inputs=("x",), output="h"),
            Node(name="r", op=O.Reshape(shape=(1, 3, 4)), inputs=("h",), output="hr"),
            Node(name="up", op=resize, inputs=("hr",), output="y"),
        ],
    )
    model = ForwardErrorModel(g, dict(g.shapes))
    ld = np.longdouble
    for trial in range(6):
        x = rng.normal(size=6) * 10.0 ** (trial % 3)
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        h = (x.astype(ld) @ w.T.astype(ld) + b.astype(ld)).reshape(1, 3, 4)
        exact = _resize_reference(resize, h).reshape(-1)
        err = float(np.sqrt(((y_hat.astype(ld) - exact) ** 2).sum()))
        assert math.isfinite(bound) and err <= bound
        assert bound <= 1e-12 * (float(np.abs(exact).max()) + 1.0), bound
    # the Resize alone on exact inputs: its own rounding is all the error there is
    alone = _graph({"x": (1, 3, 4)}, [Node(name="up", op=resize, inputs=("x",), output="y")])
    own = ForwardErrorModel(alone, dict(alone.shapes))
    worst = 0.0
    for _ in range(20):
        x = rng.normal(size=(1, 3, 4)) * np.exp(rng.normal(size=(1, 3, 4)) * 3.0)
        y_hat, bound = own.evaluate(torch.tensor(x.reshape(-1), dtype=torch.float64))
        err = float(np.sqrt(((y_hat.astype(ld) - _resize_reference(resize, x).reshape(-1)) ** 2).sum()))
        assert err <= bound
        worst = max(worst, err / bound)
    if mode != "nearest":  # nearest copies entries exactly: no rounding to see
        assert worst > 1e-3  # the bound is of the size of the rounding it bounds


def _reduced(reduce: type[O.Reduce], h: np.ndarray) -> np.ndarray:
    """The reduction over axis 1 of the rows of h, in h's (extended) precision."""
    if reduce is O.ReduceL1:
        return np.abs(h).sum(axis=1)
    if reduce is O.ReduceSumSquare:
        return (h * h).sum(axis=1)
    if reduce is O.ReduceL2:
        return np.sqrt((h * h).sum(axis=1))
    top = h.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(h - top).sum(axis=1, keepdims=True))).reshape(-1)


@pytest.mark.parametrize("reduce", [O.ReduceL1, O.ReduceSumSquare, O.ReduceL2, O.ReduceLogSumExp])
def test_error_model_bounds_the_nonlinear_sum_reductions(reduce: type[O.Reduce]) -> None:
    """sum |x|, sum x^2, the L2 norm (F.normalize's denominator) and log-sum-exp over the rows of a
    Linear map's output: the error bound holds against an extended-precision evaluation and stays
    at the rounding's size."""
    rng = np.random.default_rng(11)
    w, b = rng.normal(size=(24, 5)) * 3.0, rng.normal(size=24) * 10.0
    g = _graph(
        {"x": (1, 5)},
        [
            Node(name="fc", op=O.Linear(weight=w, bias=b), inputs=("x",), output="h"),
            Node(name="r", op=O.Reshape(shape=(4, 6)), inputs=("h",), output="hr"),
            Node(name="red", op=reduce(axes=(1,), keepdims=True), inputs=("hr",), output="y"),
        ],
    )
    model = ForwardErrorModel(g, dict(g.shapes))
    ld = np.longdouble
    for trial in range(8):
        x = rng.normal(size=5) * 10.0 ** (trial % 4 - 1)
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        h = (x.astype(ld) @ w.T.astype(ld) + b.astype(ld)).reshape(4, 6)
        exact = _reduced(reduce, h)
        err = float(np.sqrt(((y_hat.astype(ld) - exact) ** 2).sum()))
        assert math.isfinite(bound) and err <= bound
        assert bound <= 1e-12 * (float(np.abs(exact).max()) + 1.0), bound
    # the reduction alone on exact inputs: its own rounding is all the error there is
    alone = _graph({"x": (4, 6)}, [Node(name="red", op=reduce(axes=(1,), keepdims=True), inputs=("x",), output="y")])
    own = ForwardErrorModel(alone, dict(alone.shapes))
    worst = 0.0
    for _ in range(20):
        x = rng.normal(size=(4, 6)) * np.exp(rng.normal(size=(4, 6)) * 2.0)
        y_hat, bound = own.evaluate(torch.tensor(x.reshape(-1), dtype=torch.float64))
        h = x.astype(ld)
        exact = _reduced(reduce, h)
        err = float(np.sqrt(((y_hat.astype(ld) - exact) ** 2).sum()))
        assert err <= bound
        worst = max(worst, err / bound)
    assert worst > 1e-3  # the bound is of the size of the rounding it bounds


def test_a_network_with_an_upsampling_gets_a_lower_bound() -> None:
    """A conv, a nearest upsampling and a conv (a decoder's shape): the search now confirms a
    difference quotient (the error bound of the Resize was infinite, so none could be)."""
    rng = np.random.default_rng(5)
    c1 = O.Conv(weight=rng.normal(size=(4, 2, 3, 3)) * 0.3, bias=rng.normal(size=4) * 0.1, strides=(1, 1),
                pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
    c2 = O.Conv(weight=rng.normal(size=(1, 4, 3, 3)) * 0.3, bias=None, strides=(1, 1), pads=(1, 1, 1, 1),
                dilations=(1, 1), groups=1)
    up = O.Resize(axes=(2, 3), in_sizes=(5, 5), sizes=(10, 10), scales=(2.0, 2.0), mode="nearest",
                  coordinate_mode="asymmetric", nearest_mode="floor")
    g = _graph(
        {"x": (1, 2, 5, 5)},
        [
            Node(name="c1", op=c1, inputs=("x",), output="a"),
            Node(name="act", op=O.Relu(), inputs=("a",), output="r"),
            Node(name="up", op=up, inputs=("r",), output="u"),
            Node(name="c2", op=c2, inputs=("u",), output="y"),
        ],
    )
    found = lower_bound(g, seed=0, **FAST)
    assert found.value > 0.0 and found.witness is not None, found.method
    # the witness is a real difference quotient of the float64 network, below its global bound
    f = Executor(g, dtype=torch.float64).flat()
    x, y = torch.tensor(found.witness.x, dtype=torch.float64), torch.tensor(found.witness.y, dtype=torch.float64)
    q = float(torch.linalg.vector_norm(f(y) - f(x)) / torch.linalg.vector_norm(y - x))
    assert found.value <= q * (1 + 1e-9)


def test_error_model_of_a_masked_softmax() -> None:
    """A causal-masked softmax after a Linear map: the dropped entries are exactly 0 in both the
    float64 and the exact evaluation; the error bound holds against extended precision and is of
    the rounding's size (the -inf entries used to make it infinite)."""
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(16, 5)) * 4.0, rng.normal(size=16)
    mask = np.tril(np.ones((4, 4), dtype=bool))
    g = _graph(
        {"x": (1, 5)},
        [
            Node(name="fc", op=O.Linear(weight=w, bias=b), inputs=("x",), output="h"),
            Node(name="r", op=O.Reshape(shape=(4, 4)), inputs=("h",), output="hr"),
            Node(name="sm", op=O.Softmax(axis=1, mask=mask), inputs=("hr",), output="y"),
        ],
    )
    model = ForwardErrorModel(g, dict(g.shapes))
    ld = np.longdouble
    for trial in range(8):
        x = rng.normal(size=5) * 2.0 ** (trial % 4)
        y_hat, bound = model.evaluate(torch.tensor(x, dtype=torch.float64))
        h = (x.astype(ld) @ w.T.astype(ld) + b.astype(ld)).reshape(4, 4)
        h = np.where(mask, h, -np.inf)
        e = np.exp(h - h.max(axis=1, keepdims=True))
        exact = (e / e.sum(axis=1, keepdims=True)).reshape(-1)
        assert (y_hat.reshape(4, 4)[~mask] == 0).all()
        err = float(np.sqrt(((y_hat.astype(ld) - exact) ** 2).sum()))
        assert math.isfinite(bound) and err <= bound
        assert bound <= 1e-10, bound


def test_the_double_double_evaluation_keeps_within_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A double-double model larger than what the memory budget leaves is not built: the search
    is not run and the method says why (a memory refusal would lose the whole audit)."""
    from stabaudit.analyses import precise as P
    from stabaudit.limits import use_limits

    g = _mlp([np.eye(3), np.eye(3)], [np.zeros(3), np.zeros(3)], O.Relu())
    real = ForwardErrorModel.evaluate

    def huge(self: ForwardErrorModel, x: torch.Tensor) -> tuple[np.ndarray, float]:
        y = real(self, x)[0]
        return y, 1e6 * (float(np.linalg.norm(y)) + 1.0)

    monkeypatch.setattr(ForwardErrorModel, "evaluate", huge)
    monkeypatch.setattr(P, "memory_estimate", lambda graph, shapes: 1 << 50)
    with use_limits(max_memory=8 << 30):
        result = lower_bound(g, seed=0, **FAST)
    assert result.value == 0.0 and result.method.startswith("not searched")
    assert "needs about" in result.method and "--max-memory" in result.method
