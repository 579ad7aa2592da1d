"""Non-finite and extreme weights end to end: SA402, overflow statuses, and float64 margins at the extremes.

Every model is built here with onnx.helper. The rule for extremes: the audit gives either a finite
certified upper bound that really is >= every sampled difference quotient (in float64, or exactly
in rational arithmetic), or no finite upper bound with a note saying why; never a wrong finite
number, and lower <= upper always.
"""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from stabaudit.analyses.composition import _root_sum_squares, compose, rule_bounds
from stabaudit.analyses.equivalence import ATOL, _diff, check_equivalence
from stabaudit.bounds.base import Bound, Guarantee, OpBound
from stabaudit.bounds.linear import scaled_spectral_norm
from stabaudit.cli import app
from stabaudit.engine import AuditRequest, audit
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec

BUDGET = 0.5


# ---- models ------------------------------------------------------------------------------------
def _save(
    path: Path, nodes: list, inits: list, x_shape: list[int], y_shape: list[int], opset: int = 17
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def mlp(path: Path, weights: list[np.ndarray], scales: list[float | None] | None = None) -> Path:
    """Gemm layers (zero bias), each optionally followed by Mul by a constant, Relu between layers."""
    nodes, inits, cur = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), f"b{i}"))
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"h{i}"], transB=1))
        cur = f"h{i}"
        if scales is not None and scales[i] is not None:
            inits.append(
                numpy_helper.from_array(np.full(w.shape[0], scales[i], np.float32), f"s{i}")
            )
            nodes.append(helper.make_node("Mul", [cur, f"s{i}"], [f"m{i}"]))
            cur = f"m{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return _save(path, nodes, inits, [1, weights[0].shape[1]], [1, weights[-1].shape[0]])


def batchnorm(path: Path, *, var: float, eps: float, gamma: float = 1.0) -> Path:
    c = 3
    inits = [
        numpy_helper.from_array(np.full(c, gamma, np.float32), "g"),
        numpy_helper.from_array(np.zeros(c, np.float32), "b"),
        numpy_helper.from_array(np.zeros(c, np.float32), "mu"),
        numpy_helper.from_array(np.full(c, var, np.float32), "var"),
    ]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["y"], epsilon=eps)
    return _save(path, [node], inits, [1, c, 4], [1, c, 4], opset=15)


def _w(seed: int, out: int, n_in: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((out, n_in))


def _with(w: np.ndarray, index: tuple[int, int], value: float) -> np.ndarray:
    w = w.copy()
    w[index] = value
    return w


NONFINITE = {
    "nan_weight": lambda p: mlp(p, [_with(_w(0, 4, 3), (1, 2), np.nan), _w(1, 2, 4)]),
    "inf_weight": lambda p: mlp(p, [_with(_w(0, 4, 3), (0, 0), np.inf), _w(1, 2, 4)]),
    "neg_inf_in_last_layer": lambda p: mlp(p, [_w(0, 4, 3), _with(_w(1, 2, 4), (1, 3), -np.inf)]),
    "batchnorm_zero_var": lambda p: batchnorm(p, var=0.0, eps=0.0),  # scale 1/sqrt(0) = inf
}

EXTREME = {
    "weights_1e30": lambda p: mlp(p, [_w(0, 4, 3) * 1e30, _w(1, 2, 4)]),
    "two_layers_1e30": lambda p: mlp(
        p, [_w(0, 4, 3) * 1e30, _w(1, 2, 4) * 1e30]
    ),  # float32 outputs overflow
    "scale_1e-30": lambda p: mlp(p, [_w(0, 4, 3), _w(1, 2, 4)], scales=[1e-30, None]),
    "scale_1e-30_then_1e30": lambda p: mlp(
        p, [_w(0, 4, 3), _w(1, 2, 4) * 1e30], scales=[1e-30, None]
    ),
    "batchnorm_tiny_var": lambda p: batchnorm(p, var=1e-30, eps=0.0),  # scale 1e15
    "batchnorm_gamma_1e-30": lambda p: batchnorm(p, var=1.0, eps=1e-5, gamma=1e-30),
    "float64_overflow": lambda p: mlp(
        p, [_w(0, 4, 3) * 1e37] + [_w(i, 4, 4) * 1e37 for i in range(1, 10)] + [_w(10, 2, 4)]
    ),
}


def sampled_quotient(path: Path, *, pairs: int = 256, seed: int = 1) -> float:
    """max ||f(x) - f(y)|| / ||x - y|| over random pairs, f run in float64 (inf/NaN pairs skipped)."""
    from stabaudit.analyses.sampling import sampled_max_quotient
    from stabaudit.loaders import load_model

    return sampled_max_quotient(load_model(path).graph, pairs=pairs, seed=seed)


def _audit(path: Path):
    return audit(AuditRequest(path=path, lower_budget_s=BUDGET, budget_s=BUDGET))


@pytest.fixture(scope="module")
def extreme(tmp_path_factory):
    """name -> (path, report): each extreme model built and audited once for the whole module."""
    folder = tmp_path_factory.mktemp("extreme")
    cache: dict[str, tuple[Path, object]] = {}

    def get(name: str):
        if name not in cache:
            path = EXTREME[name](folder / f"{name}.onnx")
            cache[name] = (path, _audit(path))
        return cache[name]

    return get


def _status(report, check_id: str) -> str:
    return next(c.status.value for c in report.checks if c.id == check_id)


def _composition_notes(path: Path) -> tuple[str, ...]:
    from stabaudit.ir.passes import fold_affine
    from stabaudit.loaders import load_model

    graph = fold_affine(load_model(path).graph)
    return compose(graph, rule_bounds(graph)).notes


# ---- non-finite weights --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NONFINITE))
def test_nonfinite_weights_fail_sa402_without_a_crash(tmp_path, name):
    path = NONFINITE[name](tmp_path / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loader folds BatchNorm by 1/sqrt(0)
        report = _audit(path)
        notes = _composition_notes(path)
    assert _status(report, "SA402") == "fail"
    assert report.exit_code == 1
    assert report.lipschitz.upper is None and not report.lipschitz.certified
    assert report.lipschitz.lower is None
    assert report.equivalence.passed  # both runtimes give the same NaN/Inf outputs
    assert notes and all("no finite Lipschitz bound" in n for n in notes)
    assert any("NaN or Inf" in n for n in notes)


def test_nonfinite_weights_cli_exit_1_with_a_report(tmp_path):
    path = NONFINITE["nan_weight"](tmp_path / "nan.onnx")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["check", str(path), "--budget", str(BUDGET), "--output", str(out)]
    )
    assert result.exit_code == 1, result.output
    data = json.loads(out.read_text())
    assert data["lipschitz"]["upper"] is None and data["lipschitz"]["lower"] is None
    assert {c["id"]: c["status"] for c in data["checks"]}["SA402"] == "fail"
    result = CliRunner().invoke(app, ["check", str(path), "--budget", str(BUDGET)])
    assert result.exit_code == 1 and "SA402" in result.output


def test_report_notes_explain_the_missing_upper_bound(tmp_path):
    report = _audit(NONFINITE["inf_weight"](tmp_path / "inf.onnx"))
    assert any("no finite Lipschitz bound" in n for n in report.notes)


def test_sa102_does_not_pass_a_layer_without_a_finite_bound(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = _audit(NONFINITE["batchnorm_zero_var"](tmp_path / "bn.onnx"))
    assert _status(report, "SA102") != "pass"


# ---- extreme magnitudes ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXTREME))
def test_extremes_give_a_sound_bound_or_an_explicit_overflow(extreme, name):
    path, report = extreme(name)
    assert _status(report, "SA402") == "pass"
    assert report.exit_code in (0, 1)
    upper, lower = report.lipschitz.upper, report.lipschitz.lower
    if upper is None:
        # explicit overflow status: no number, not certified, and the composition says why
        assert not report.lipschitz.certified
        notes = _composition_notes(path)
        assert any("overflows float64" in n for n in notes)
    else:
        assert math.isfinite(upper) and report.lipschitz.certified
        # the float64 quotient of a close pair loses digits to cancellation: each output carries an
        # absolute rounding error ~u |f(x)|, about u / step relative to f(x) - f(y); 1e-9 covers
        # u / 1e-3 with a wide margin (the exact-arithmetic test below has no margin at all)
        q = sampled_quotient(path)
        assert q <= upper * (1 + 1e-9)
        if lower is not None:
            assert lower <= upper


def test_float64_overflow_model_reports_no_upper(extreme):
    _, report = extreme("float64_overflow")
    assert report.lipschitz.upper is None
    # every layer still has its own finite certified bound (about 1e37 each)
    linear = [layer for layer in report.layers if layer.op == "Linear"]
    assert len(linear) == 11 and all(layer.lipschitz.upper is not None for layer in linear)


def test_extremes_cli_runs(tmp_path):
    path = EXTREME["two_layers_1e30"](
        tmp_path / "big.onnx"
    )  # float32 outputs overflow in both runtimes
    result = CliRunner().invoke(
        app, ["check", str(path), "--budget", str(BUDGET), "--format", "json"]
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert data["equivalence"]["passed"] and data["lipschitz"]["certified"]
    assert data["lipschitz"]["lower"] <= data["lipschitz"]["upper"]


def _exact_chain(
    weights: list[np.ndarray], scales: list[float | None], x: list[Fraction]
) -> list[Fraction]:
    """The float32-stored chain of ``mlp`` evaluated exactly in rationals (Gemm, Mul, Relu)."""
    h = x
    for i, w in enumerate(weights):
        w32 = [[Fraction(float(v)) for v in row] for row in w.astype(np.float32)]
        h = [sum((wij * hj for wij, hj in zip(row, h, strict=True)), Fraction(0)) for row in w32]
        if scales[i] is not None:
            s = Fraction(float(np.float32(scales[i])))
            h = [v * s for v in h]
        if i < len(weights) - 1:
            h = [max(v, Fraction(0)) for v in h]
    return h


def test_tiny_then_huge_bound_holds_in_exact_arithmetic(extreme):
    weights, scales = [_w(0, 4, 3), _w(1, 2, 4) * 1e30], [1e-30, None]  # as EXTREME's model
    upper = extreme("scale_1e-30_then_1e30")[1].lipschitz.upper
    assert upper is not None
    rng = np.random.default_rng(5)
    bound2 = Fraction(upper) ** 2
    worst = Fraction(0)
    for _ in range(40):
        xs = rng.standard_normal(3)
        ys = xs + rng.standard_normal(3) * rng.choice([1e-3, 1.0])
        fx = _exact_chain(weights, scales, [Fraction(float(v)) for v in xs])
        fy = _exact_chain(weights, scales, [Fraction(float(v)) for v in ys])
        num = sum(((a - b) ** 2 for a, b in zip(fx, fy, strict=True)), Fraction(0))
        den = sum(
            ((Fraction(float(a)) - Fraction(float(b))) ** 2 for a, b in zip(xs, ys, strict=True)),
            Fraction(0),
        )
        assert num <= bound2 * den  # ||f(x) - f(y)||^2 <= K^2 ||x - y||^2, exactly
        worst = max(worst, num / den)
    assert float(worst) > 0.1 * upper**2  # the samples are not trivially below the bound


# ---- equivalence on non-finite and zero outputs ------------------------------------------------
def test_equivalence_agrees_on_nonfinite_outputs_of_both_runtimes():
    inf, nan = np.inf, np.nan
    assert _diff(np.array([inf, -inf, nan, 1.0]), np.array([inf, -inf, nan, 1.0])) == 0.0
    assert _diff(np.array([inf, nan]), np.array([nan, -inf])) == 0.0  # both overflowed
    assert _diff(np.array([inf]), np.array([1.0])) == math.inf
    assert _diff(np.array([nan]), np.array([0.0])) == math.inf
    assert _diff(np.array([1.0, 2.0]), np.array([1.5, 2.0])) == 0.5


def test_equivalence_on_float32_overflow_passes_with_a_note(tmp_path):
    from stabaudit.loaders import load_model

    model = load_model(EXTREME["two_layers_1e30"](tmp_path / "big.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = check_equivalence(model, seed=0)
    assert result.passed and result.nonfinite > 0 and result.entries >= result.nonfinite
    assert result.notes and "NaN/Inf in both runtimes" in result.notes[0]


def test_equivalence_with_an_all_zero_output_does_not_divide_by_zero(tmp_path):
    from stabaudit.loaders import load_model

    model = load_model(mlp(tmp_path / "zero.onnx", [np.zeros((4, 3)), _w(1, 2, 4)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = check_equivalence(model, seed=0)
    assert result.passed and result.max_abs_diff == 0.0 and result.tolerance == ATOL
    assert result.nonfinite == 0 and result.notes == ()


# ---- the dense SVD margin at the extremes ----------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30, 1e300, 1e-300, 1e-310, 2.0**-1070])
def test_dense_bound_is_sound_and_tight_at_every_scale(scale):
    w = _w(3, 5, 4)
    exact = float(np.linalg.svd(w, compute_uv=False)[0])
    scaled = w * scale
    upper, lower = scaled_spectral_norm(scaled)
    assert lower is not None
    # the exact norm of the stored (rounded) scaled matrix, in extended range
    true = float(np.linalg.svd(scaled / scale, compute_uv=False)[0]) if scale >= 1e-300 else None
    if true is not None:
        assert lower / scale <= true * (1 + 1e-15) and upper / scale >= true * (1 - 1e-15)
        assert upper / scale <= exact * (1 + 1e-12)  # tight: no absolute slack dominating
        assert lower / scale >= exact * (1 - 1e-12)
    assert 0.0 <= lower <= upper and math.isfinite(upper)


def test_dense_bound_is_homogeneous_under_powers_of_two():
    w = _w(4, 6, 3)
    base_u, base_l = scaled_spectral_norm(w)
    for k in (-1000, -100, -1, 1, 100, 1000):
        u, lo = scaled_spectral_norm(np.ldexp(w, k))
        assert u == math.ldexp(base_u, k) and lo == math.ldexp(base_l, k)


def test_dense_bound_with_mixed_extreme_entries():
    w = _w(5, 4, 4)
    w[0, 0], w[1, 1] = 1e300, 1e-300
    upper, lower = scaled_spectral_norm(w)
    # the 1e300 entry dominates: ||W|| is within 1e-300 relative of 1e300 (Weyl)
    assert lower is not None and lower <= 1e300 <= upper and upper <= 1e300 * (1 + 1e-12)


def test_dense_bound_overflow_is_infinite_not_wrong():
    big = np.full((2, 2), 1.7e308)  # ||W|| = 3.4e308 > float64 max
    upper, lower = scaled_spectral_norm(big)
    assert upper == math.inf and lower is not None and lower <= float(np.finfo(np.float64).max)


def test_linear_rule_tight_at_1e_minus_300():
    from stabaudit.bounds.base import RuleContext
    from stabaudit.bounds.linear import bound_linear

    w = _w(6, 3, 3) * 1e-300
    node = Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y")
    ob = bound_linear(node, RuleContext(input_shapes=((1, 3),), output_shape=(1, 3)))
    exact = float(np.linalg.svd(w * 1e300, compute_uv=False)[0]) * 1e-300
    assert ob.lower is not None
    assert ob.lower.value <= exact * (1 + 1e-13) and exact * (
        1 - 1e-13
    ) <= ob.upper.value <= exact * (1 + 1e-12)


# ---- composition: outward rounding near overflow ------------------------------------------------
def _chain_graph(uppers: list[float]) -> tuple[Graph, dict[str, OpBound]]:
    nodes, bounds, cur = [], {}, "x"
    for i, value in enumerate(uppers):
        out = f"v{i}"
        nodes.append(Node(name=f"n{i}", op=O.Relu(), inputs=(cur,), output=out))
        bounds[out] = OpBound(upper=Bound(value=value, guarantee=Guarantee.UPPER, method="test"))
        cur = out
    graph = Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=(cur,), nodes=tuple(nodes))
    return graph, bounds


def test_composition_near_overflow_is_an_upper_bound():
    a, b = 1.3e154, 1.3e154  # product 1.69e308, just below the float64 maximum
    graph, bounds = _chain_graph([a, b])
    comp = compose(graph, bounds)
    assert math.isfinite(comp.upper.value) and comp.notes == ()
    assert Fraction(comp.upper.value) >= Fraction(a) * Fraction(b)


def test_composition_overflow_is_infinite_with_a_note():
    graph, bounds = _chain_graph([1e200, 1e200])
    comp = compose(graph, bounds)
    assert comp.upper.value == math.inf and comp.upper.guarantee is Guarantee.UPPER
    assert comp.notes and "overflows float64" in comp.notes[0]


def test_composition_underflow_never_rounds_to_zero():
    graph, bounds = _chain_graph([1e-200, 1e-200])
    comp = compose(graph, bounds)
    assert comp.upper.value > 0.0 and Fraction(comp.upper.value) >= Fraction(1e-200) ** 2


@pytest.mark.parametrize(
    "values",
    [
        [1e200, 1e200],
        [1e-200, 3e-200, 0.0],
        [1.0, 2.0, 2.0],
        [1e300, 1e-300],
        [5e-324, 5e-324],
        [1e154, 1e154, 1e154],
    ],
)
def test_root_sum_squares_is_an_upper_bound_without_overflow(values):
    result = _root_sum_squares(values)
    exact2 = sum((Fraction(v) ** 2 for v in values), Fraction(0))
    assert math.isfinite(result) and Fraction(result) ** 2 >= exact2
    assert (
        result
        <= math.sqrt(float(sum(Fraction(v) ** 2 / Fraction(max(values)) ** 2 for v in values)))
        * max(values)
        * (1 + 1e-12)
        + 1e-320
    )


def test_root_sum_squares_overflow_and_nonfinite_are_infinite():
    assert _root_sum_squares([1.7e308, 1.7e308]) == math.inf
    assert _root_sum_squares([1.0, math.nan]) == math.inf
    assert _root_sum_squares([1.0, math.inf]) == math.inf
    assert _root_sum_squares([0.0, 0.0]) == 0.0


# ---- conv numerics at float64 extremes (the Gram matrix must not underflow or overflow) ---------
_CONV = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, input_spatial=(5, 5))


def test_conv_dense_bound_sound_at_1e_minus_200():
    from stabaudit.bounds.numerics import conv_norm_certified

    k = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    reference = conv_norm_certified(k, **_CONV)
    tiny = conv_norm_certified(k * 1e-200, **_CONV)
    assert reference.lower is not None
    assert tiny.upper >= reference.lower * 1e-200 * (1 - 1e-12)


def test_conv_dense_bound_no_crash_at_1e200():
    from stabaudit.bounds.numerics import conv_norm_certified

    k = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    reference = conv_norm_certified(k, **_CONV)
    huge = conv_norm_certified(k * 1e200, **_CONV)
    assert reference.lower is not None and huge.upper >= reference.lower * 1e200


# ---- element-wise affine maps with broadcast copies at the extremes -------------------------------
@pytest.mark.parametrize("unit", [1.0, 1e200, 1e-200, 1e-300, 1e300])
def test_affine_broadcast_gain_at_extreme_scales(unit):
    from stabaudit.bounds.base import RuleContext
    from stabaudit.bounds.normalization import bound_affine

    scale = np.array([1.0, 2.0, 2.0]).reshape(3, 1, 1) * unit  # each input entry copied 3 times
    node = Node(name="mul", op=O.Affine(scale=scale), inputs=("x",), output="y")
    ob = bound_affine(node, RuleContext(input_shapes=((1, 1, 4),), output_shape=(3, 1, 4)))
    exact2 = sum((Fraction(float(v)) ** 2 for v in scale.reshape(-1)), Fraction(0))  # (3 unit)^2
    assert ob.lower is not None
    assert Fraction(ob.lower.value) ** 2 <= exact2 <= Fraction(ob.upper.value) ** 2
    assert ob.upper.value <= 3.0 * unit * (1 + 1e-12) and ob.lower.value >= 3.0 * unit * (1 - 1e-12)


# ---- iterative methods report non-convergence ------------------------------------------------------
def test_lower_search_reports_a_power_iteration_that_did_not_converge(monkeypatch):
    import stabaudit.analyses.lower as lower
    from stabaudit.ir.executor import with_shapes

    w = np.random.default_rng(2).standard_normal((80, 80))
    graph = with_shapes(
        Graph(
            inputs=(TensorSpec(name="x", shape=(1, 80)),),
            outputs=("y",),
            nodes=(Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y"),),
        )
    )
    monkeypatch.setattr(lower, "POWER_RTOL", -1.0)  # any change counts as not converged
    flagged = lower.lower_bound(graph, seed=0, starts=2, steps=1, budget_s=0.0)  # the minimal plan
    assert "power iteration (" in flagged.method  # n, m > 64: the power-iteration path
    assert "power iteration not converged" in flagged.method
    exact = float(np.linalg.svd(w, compute_uv=False)[0])
    assert 0.0 < flagged.value <= exact
