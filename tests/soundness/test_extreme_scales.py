"""Certified upper bounds at extreme weight scales: never 0 (or below the true constant) from underflow, never a wrong finite number from overflow.

The references are exact: every float is a dyadic rational, so Python fractions evaluate the
stored network without rounding. A Jacobian at a point where no pre-activation is 0 is the
Jacobian of an open activation region, so its norm (at least its largest column norm) is a lower
bound of the Lipschitz constant; and a chain with weights W_l * 2^k has constant exactly 2^(k L)
times that of the chain of the W_l (ReLU is positively homogeneous).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.composition import compose, rule_bounds
from stabaudit.analyses.exact import exact_lipschitz
from stabaudit.analyses.feedforward import explain_chain, global_bounds
from stabaudit.analyses.residual import block_bounds
from stabaudit.analyses.sdp import pow2_scaled
from stabaudit.bounds import bound_node
from stabaudit.bounds.base import RuleContext
from stabaudit.bounds.numerics import DENSE_BUDGET, conv_norm_certified
from stabaudit.engine import AuditRequest, audit
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.rounding import ldexp_down, ldexp_up, mul_up

SMALLEST = 5e-324  # 2^-1074, the smallest positive float64
METHODS = ("eclipse-fast", "eclipse", "lipsdp-neuron")
BUDGET = 0.2
EXACT_BUDGET = 0.05  # exact mode's fewest nodes (MIN_NODES): a bracket, which is all these tests need


# ---- models --------------------------------------------------------------------------------------
def _unit_weights(depth: int, width: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``depth`` float32-valued matrices (width -> width, the last width -> 2): the identity plus
    Gaussian noise of either sign, so that many inputs keep some unit active through all layers."""
    rng = np.random.default_rng(seed)
    shapes = [(width, width)] * (depth - 1) + [(2, width)]
    return [(np.eye(*s) + 0.5 * rng.standard_normal(s)).astype(np.float32).astype(np.float64) for s in shapes]


def _chain(weights: list[np.ndarray], *, final_relu: bool = True) -> Graph:
    """Linear (no bias) + Relu per weight: the audit's "Linear+Relu x12" chain."""
    nodes: list[Node] = []
    cur = "x"
    for i, w in enumerate(weights):
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w), inputs=(cur,), output=f"h{i}"))
        cur = f"h{i}"
        if final_relu or i < len(weights) - 1:
            nodes.append(Node(name=f"relu{i}", op=O.Relu(), inputs=(cur,), output=f"a{i}"))
            cur = f"a{i}"
    spec = TensorSpec(name="x", shape=(1, weights[0].shape[1]))
    return with_shapes(Graph(inputs=(spec,), outputs=(cur,), nodes=tuple(nodes)))


def _exact_lower_squared(weights: list[np.ndarray], *, points: int = 8, seed: int = 1) -> Fraction:
    """A lower bound of K^2 in exact arithmetic: the largest squared column norm of the Jacobian
    of the (bias-free, ReLU after every layer but the last one of a chain without final ReLU:
    the Jacobian is then the same up to the last mask) chain at seeded points where no
    pre-activation is exactly 0 (interior points of their activation regions)."""
    rng = np.random.default_rng(seed)
    ws = [[[Fraction(float(v)) for v in row] for row in w] for w in weights]
    best = Fraction(0)
    for _ in range(points):
        h = [Fraction(float(v)) for v in np.abs(rng.standard_normal(weights[0].shape[1]))]
        jac = [[Fraction(int(i == j)) for j in range(len(h))] for i in range(len(h))]
        for w in ws:
            z = [sum((a * b for a, b in zip(row, h, strict=True)), Fraction(0)) for row in w]
            if any(v == 0 for v in z):
                break  # on a region boundary (or every unit off): no lower bound from this point
            mask = [v > 0 for v in z]
            h = [v if m else Fraction(0) for v, m in zip(z, mask, strict=True)]
            jac = [
                [sum((row[k] * jac[k][j] for k in range(len(row))), Fraction(0)) if m else Fraction(0) for j in range(len(jac[0]))]
                for row, m in zip(w, mask, strict=True)
            ]
        else:
            for j in range(len(jac[0])):
                best = max(best, sum((jac[i][j] ** 2 for i in range(len(jac))), Fraction(0)))
    assert best > 0, "no point gave a positive reference: pick other points"
    return best


def _uppers(graph: Graph) -> dict[str, float | None]:
    """Every global method's certified upper bound (None: no finite certified bound)."""
    out: dict[str, float | None] = {}
    comp = compose(graph, rule_bounds(graph))
    out["product"] = comp.upper.value
    for r in global_bounds(graph, budget_s=BUDGET, methods=METHODS):
        assert (r.upper is not None) == r.certified
        out[r.method] = r.upper
    ex = exact_lipschitz(graph, budget_s=EXACT_BUDGET)
    if ex.upper is not None and ex.lower is not None:
        assert ex.lower <= ex.upper
    out["lipbab"] = ex.upper
    return out


# ---- the audit's chain: twelve layers of 1e-30 weights (constant ~1e-355, below float64) ----------
@pytest.mark.parametrize("scale", [2.0**-100, 1e-30])
def test_tiny_chain_no_method_certifies_zero(scale: float) -> None:
    weights = [(w * scale).astype(np.float32).astype(np.float64) for w in _unit_weights(12)]
    reference = _exact_lower_squared(weights)
    assert 0 < reference < Fraction(SMALLEST) ** 2  # the true constant is below every positive float
    uppers = _uppers(_chain(weights))
    assert set(uppers) == {"product", "lipbab", *METHODS}
    for method, upper in uppers.items():
        assert upper is not None and upper > 0.0, method
        assert Fraction(upper) ** 2 >= reference, method
        assert upper <= 4 * SMALLEST, method  # rounded outward: a few ulps above the constant


def test_tiny_chain_exact_mode_brackets_without_claiming_exactness() -> None:
    weights = [w * 2.0**-100 for w in _unit_weights(12)]
    scaled = exact_lipschitz(_chain(weights), budget_s=EXACT_BUDGET)
    unit = exact_lipschitz(_chain(_unit_weights(12)), budget_s=EXACT_BUDGET)
    assert unit.upper is not None and unit.lower is not None and unit.lower > 0.0
    assert scaled.upper == SMALLEST and scaled.lower == 0.0 and not scaled.exact
    assert any("below float64's normal range" in n for n in scaled.notes)
    # the same search on the same (rescaled) network: the witness region's norm is 2^-1200 times
    assert scaled.witness is not None and unit.witness is not None
    assert scaled.witness.pattern == unit.witness.pattern and scaled.witness.norm_upper == SMALLEST


# ---- powers of two: the scaled chain's constant is exactly 2^(kL) times the unit chain's ----------
@pytest.mark.parametrize(("depth", "k"), [(9, -100), (3, 100), (2, -1000)])
def test_scaled_chain_bounds_are_the_unit_bounds_times_the_scale(depth: int, k: int) -> None:
    """In float64's range: every method's bound of the scaled chain is its bound of the unit chain
    times 2^(k depth) (the rescaling inside the methods makes them the same computation), so it is
    sound and exactly as tight; and it is at least the exact-arithmetic reference."""
    unit_weights = _unit_weights(depth, seed=depth)
    weights = [np.ldexp(w, k) for w in unit_weights]
    reference = _exact_lower_squared(weights)
    unit, scaled = _uppers(_chain(unit_weights)), _uppers(_chain(weights))
    for method, upper in scaled.items():
        expected = unit[method]
        assert upper is not None and expected is not None, method
        assert Fraction(upper) ** 2 >= reference, method
        assert upper == pytest.approx(math.ldexp(expected, k * depth), rel=1e-12), method


def test_huge_chain_overflow_gives_no_finite_certified_bound() -> None:
    """Twelve layers of 2^100 weights: the constant (~1e361) is beyond float64."""
    weights = [np.ldexp(w, 100) for w in _unit_weights(12)]
    graph = _chain(weights)
    comp = compose(graph, rule_bounds(graph))
    assert comp.upper.value == math.inf and any("overflows float64" in n for n in comp.notes)
    for r in global_bounds(graph, budget_s=BUDGET, methods=METHODS):
        assert r.upper is None and not r.certified, r.method
        assert any("overflows float64" in n for n in r.notes), r.method
    ex = exact_lipschitz(graph, budget_s=EXACT_BUDGET)
    assert ex.upper == math.inf and not ex.exact
    assert ex.lower is None or ex.lower <= ex.upper


def test_1e30_chain_in_range_is_sound() -> None:
    weights = [(w * 1e30).astype(np.float32).astype(np.float64) for w in _unit_weights(3, seed=5)]
    reference = _exact_lower_squared(weights)
    product = math.prod(float(np.linalg.svd(w, compute_uv=False)[0]) for w in weights)
    for method, upper in _uppers(_chain(weights)).items():
        assert upper is not None and math.isfinite(upper), method
        assert Fraction(upper) ** 2 >= reference, method
        assert upper <= product * (1 + 1e-6), method  # and never above the product of the norms


# ---- subnormal weights (float64 models: float32 has no 1e-310) -----------------------------------
def test_subnormal_single_layer_is_tight() -> None:
    """One Linear of 1e-310 entries: K = ||W||_2 ~ 4e-310 is itself subnormal."""
    w = np.random.default_rng(3).standard_normal((3, 3)) * 1e-310
    graph = _chain([w], final_relu=False)
    # ||W||^2 >= every squared column norm, exactly; the SVD of W * 2^1074 (exact) for tightness
    reference = max(sum((Fraction(float(v)) ** 2 for v in w[:, j]), Fraction(0)) for j in range(3))
    norm = math.ldexp(float(np.linalg.svd(np.ldexp(w, 1074), compute_uv=False)[0]), -1074)
    for method, upper in _uppers(graph).items():
        assert upper is not None and upper > 0.0, method
        assert Fraction(upper) ** 2 >= reference, method
        assert upper <= norm * (1 + 1e-8) + 4 * SMALLEST, method  # the certificates' 1e-9 inflations


def test_subnormal_chain_never_certifies_zero() -> None:
    weights = [w * 1e-310 for w in _unit_weights(3, seed=7)]
    reference = _exact_lower_squared(weights)
    for method, upper in _uppers(_chain(weights)).items():
        assert upper is not None and 0.0 < upper <= 4 * SMALLEST, method
        assert Fraction(upper) ** 2 >= reference, method


def test_scaling_that_rounds_a_subnormal_entry_widens_the_verified_error() -> None:
    """Entries 3 and 3 * 2^-1074 in one matrix: dividing by 2^e (e > 0) rounds the second one,
    which ``pow2_scaled`` must carry as an error bound into the verified LMI."""
    w0 = np.array([[3.0, 3 * SMALLEST], [1.0, -2.0]])
    w1 = np.array([[1.5, -0.5]])
    chain = explain_chain(_chain([w0, w1], final_relu=False))
    assert not isinstance(chain, str)
    scaled, exponent = pow2_scaled(chain.lmi())
    assert exponent > 0 and scaled.errors[0] is not None and scaled.errors[0][0, 1] == SMALLEST
    assert scaled.errors[1] is None
    graph = _chain([w0, w1], final_relu=False)
    reference = _exact_lower_squared([w0, w1])
    for r in global_bounds(graph, budget_s=BUDGET, methods=METHODS):
        assert r.upper is not None and r.certified, r.method
        assert Fraction(r.upper) ** 2 >= reference, r.method


# ---- a provably constant map may be certified 0 ----------------------------------------------------
def test_an_all_zero_weight_is_a_constant_map() -> None:
    weights = _unit_weights(4)
    weights[1] = np.zeros_like(weights[1])
    graph = _chain(weights)
    assert compose(graph, rule_bounds(graph)).upper.value == 0.0  # every path meets exact zeros
    for method, upper in _uppers(graph).items():
        assert upper is not None and 0.0 <= upper < math.inf, method


# ---- per-layer rules: dense and conv ---------------------------------------------------------------
def _dense_reference(w: np.ndarray) -> Fraction:
    return max(sum((Fraction(float(v)) ** 2 for v in w[:, j]), Fraction(0)) for j in range(w.shape[1]))


@pytest.mark.parametrize("scale", [2.0**-100, 1e-30, 1e-310, 1e30, 2.0**1000])
def test_dense_rule_at_extreme_scales(scale: float) -> None:
    unit = np.random.default_rng(11).standard_normal((4, 3))
    w = unit * scale
    node = Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y")
    ob = bound_node(node, RuleContext(input_shapes=((1, 3),), output_shape=(1, 4)))
    upper = ob.upper.value
    assert 0.0 < upper < math.inf and Fraction(upper) ** 2 >= _dense_reference(w)
    assert ob.lower is not None and ob.lower.value <= upper
    if math.frexp(scale)[0] == 0.5:  # a power of two: the bound is the unit bound times it
        unit_ob = bound_node(Node(name="fc", op=O.Linear(weight=unit), inputs=("x",), output="y"), RuleContext(input_shapes=((1, 3),), output_shape=(1, 4)))
        assert upper == pytest.approx(unit_ob.upper.value * scale, rel=1e-12)


def _conv_reference(k: np.ndarray) -> Fraction:
    """||A||^2 >= the squared norm of A's column of an interior input pixel of channel c: every
    tap of every output channel meets it once (stride 1, the input larger than the kernel)."""
    return max(sum((Fraction(float(v)) ** 2 for v in k[:, c].reshape(-1)), Fraction(0)) for c in range(k.shape[1]))


@pytest.mark.parametrize("scale", [2.0**-100, 1e-30, 1e-310, 1e30])
@pytest.mark.parametrize("path", ["rule", "circulant"])
def test_conv_bound_at_extreme_scales(scale: float, path: str) -> None:
    unit = np.random.default_rng(13).standard_normal((2, 2, 3, 3))
    k = unit * scale
    strides, pads, dilations = (1, 1), (1, 1, 1, 1), (1, 1)
    if path == "rule":
        op = O.Conv(weight=k, strides=strides, pads=pads, dilations=dilations)
        ob = bound_node(Node(name="c", op=op, inputs=("x",), output="y"), RuleContext(input_shapes=((1, 2, 6, 6),), output_shape=(1, 2, 6, 6)))
        upper, lower = ob.upper.value, (ob.lower.value if ob.lower is not None else None)
    else:  # the certified circulant path (the dense explicit matrix refused)
        cert = conv_norm_certified(k, strides, pads, dilations, 1, (6, 6), dense_budget=0.0)
        assert cert.method.startswith("circulant")
        upper, lower = cert.upper, cert.lower
    assert 0.0 < upper < math.inf and Fraction(upper) ** 2 >= _conv_reference(k)
    assert lower is None or lower <= upper
    if math.frexp(scale)[0] == 0.5:
        dense_budget = 0.0 if path == "circulant" else DENSE_BUDGET  # the rule's default: the dense SVD here
        unit_upper = conv_norm_certified(unit, strides, pads, dilations, 1, (6, 6), dense_budget=dense_budget).upper
        assert upper == pytest.approx(unit_upper * scale, rel=1e-12)


# ---- residual whole-block bounds -------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-30, 1e-310, 1e30])
def test_residual_whole_block_at_extreme_scales(scale: float) -> None:
    """x + W2 relu(W1 x): Lip >= ||I + W2 D W1 v|| / ||v|| for every pattern D realised; with tiny
    weights that is ~1 (never below 1 - ||W2|| ||W1||), with huge ones a finite bound or none."""
    rng = np.random.default_rng(17)
    w1, w2 = rng.standard_normal((3, 3)) * scale, rng.standard_normal((3, 3)) * scale
    nodes = (
        Node(name="fc1", op=O.Linear(weight=w1), inputs=("x",), output="h"),
        Node(name="relu", op=O.Relu(), inputs=("h",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("a",), output="f"),
        Node(name="add", op=O.Add(), inputs=("x", "f"), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes))
    ops = rule_bounds(graph)
    whole = block_bounds(graph, ops).get("y")
    comp = compose(graph, ops, {k: (v.x, v.value) for k, v in block_bounds(graph, ops).items()})
    if scale > 1.0:
        assert whole is None or whole.value >= 0.5 * scale**2  # never a wrong finite number
        assert comp.upper.value >= 0.5 * scale**2
        return
    assert whole is not None and whole.value >= 1.0
    assert comp.upper.value >= 1.0


# ---- the rounding helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "exponent"), [(1.0, -1074), (1.0, -1075), (1.5, -1074), (3.0, -1076), (1.0, -2000), (1.0, 1024), (1.7, 1023), (0.75, 10)])
def test_ldexp_rounding_is_outward(value: float, exponent: int) -> None:
    exact = Fraction(value) * Fraction(2) ** exponent
    up, down = ldexp_up(value, exponent), ldexp_down(value, exponent)
    assert up > 0.0 and (up == math.inf or Fraction(up) >= exact)
    assert down >= 0.0 and Fraction(down) <= exact


def test_mul_up_never_underflows_to_zero() -> None:
    assert mul_up(1e-200, 1e-200) == SMALLEST and mul_up(0.0, math.inf) == 0.0
    assert Fraction(mul_up(3e-162, 7e-162)) >= Fraction(3e-162) * Fraction(7e-162)


# ---- end to end: the audit of an onnx.helper model ------------------------------------------------
def _onnx_chain(
    path: Path, scale: float, depth: int = 12, width: int = 2, *, positive: bool = False, relu: bool = True
) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for i in range(depth):
        g = rng.standard_normal((width, width))
        w = ((np.abs(g) if positive else g) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"h{i}"]))
        cur = f"h{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_audit_of_the_tiny_chain_does_not_call_it_constant(tmp_path: Path) -> None:
    report = audit(AuditRequest(path=_onnx_chain(tmp_path / "tiny.onnx", 1e-30), lower_budget_s=0.3, budget_s=BUDGET))
    assert report.exit_code != 3
    upper, lower = report.lipschitz.upper, report.lipschitz.lower
    assert upper is not None and upper > 0.0 and report.lipschitz.certified
    assert lower is None or lower <= upper
    methods = {m.method: m for m in report.lipschitz.methods}
    assert {"product", "lipbab", *METHODS} <= set(methods)  # 22 hidden units: auto runs exact mode too
    for m in methods.values():
        assert m.upper is not None and m.upper > 0.0, m.method
        assert not any("exact constant" in n for n in m.notes), m.method
    sa101 = next(c for c in report.checks if c.id == "SA101")
    assert sa101.value["upper"] > 0.0
    assert "<= 0 " not in sa101.message and "constant" not in sa101.message


def test_audit_of_the_tiny_linear_chain_does_not_report_zero(tmp_path: Path) -> None:
    """Without activations the twelve maps are merged into one whose float64 weight is 0."""
    path = _onnx_chain(tmp_path / "linear.onnx", 1e-30, relu=False)
    report = audit(AuditRequest(path=path, lower_budget_s=0.3, budget_s=BUDGET))
    assert report.lipschitz.upper is not None and report.lipschitz.upper > 0.0
    assert all(m.upper is not None and m.upper > 0.0 for m in report.lipschitz.methods)
    (layer,) = [x for x in report.layers if x.op == "Linear"]
    assert layer.lipschitz.upper is not None and layer.lipschitz.upper > 0.0
    sa101 = next(c for c in report.checks if c.id == "SA101")
    assert sa101.value["upper"] > 0.0 and "<= 0 " not in sa101.message


def test_audit_of_the_huge_chain_reports_no_finite_bound(tmp_path: Path) -> None:
    # positive weights: the float32 forward passes overflow to inf in both runtimes alike (with
    # mixed signs inf - inf = NaN, which onnxruntime's Relu maps to 0 and torch's keeps)
    path = _onnx_chain(tmp_path / "huge.onnx", 1e30, positive=True)
    report = audit(AuditRequest(path=path, lower_budget_s=0.3, budget_s=BUDGET))
    assert report.exit_code in (0, 1)
    assert report.lipschitz.upper is None and not report.lipschitz.certified
    for m in report.lipschitz.methods:
        assert m.upper is None and not m.certified, m
    assert next(c for c in report.checks if c.id == "SA101").status.value != "pass"


# ---- graph rewrites: merged and folded maps whose products underflow ---------------------------------
def _exact_matmul(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0)) for j in range(len(b[0]))] for i in range(len(a))]


def _fractions(w: np.ndarray) -> list[list[Fraction]]:
    return [[Fraction(float(v)) for v in row] for row in np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)]


def _column_reference(m: list[list[Fraction]]) -> Fraction:
    return max(sum((m[i][j] ** 2 for i in range(len(m))), Fraction(0)) for j in range(len(m[0])))


def _product_bound(graph: Graph) -> float:
    from stabaudit.ir.passes import fold_affine, merge_linear_maps

    merged = merge_linear_maps(fold_affine(graph))
    return compose(merged, rule_bounds(merged)).upper.value


def test_merged_linear_maps_whose_product_underflows_keep_a_positive_bound() -> None:
    """Twelve Linear maps of 1e-30 weights without activations: merged into one whose computed
    weight is 0 (the product is ~1e-360); the merge error keeps the bound positive and sound."""
    weights = [(w * 1e-30).astype(np.float32).astype(np.float64) for w in _unit_weights(12)]
    nodes = tuple(
        Node(name=f"fc{i}", op=O.Linear(weight=w), inputs=("x" if i == 0 else f"h{i - 1}",), output=f"h{i}")
        for i, w in enumerate(weights)
    )
    linear_only = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("h11",), nodes=nodes))
    exact = _fractions(weights[0])
    for w in weights[1:]:
        exact = _exact_matmul(_fractions(w), exact)
    reference = _column_reference(exact)
    assert 0 < reference < Fraction(SMALLEST) ** 2
    upper = _product_bound(linear_only)
    assert upper > 0.0 and Fraction(upper) ** 2 >= reference


@pytest.mark.parametrize("where", ["after", "before"])
def test_folded_scale_whose_product_underflows_keeps_a_positive_bound(where: str) -> None:
    """A float64 Linear of 1e-300 weights and a per-feature scale of 1e-30 folded into it (after
    it: fold_affine; before it: merge_linear_maps): the folded weights are subnormal or 0."""
    rng = np.random.default_rng(19)
    w = rng.standard_normal((3, 3)) * 1e-300
    s = np.abs(rng.standard_normal(3)) * 1e-30
    lin, aff = O.Linear(weight=w), O.Affine(scale=s)
    first, second = (lin, aff) if where == "after" else (aff, lin)
    nodes = (Node(name="a", op=first, inputs=("x",), output="h"), Node(name="b", op=second, inputs=("h",), output="y"))
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes))
    exact = [[Fraction(float(w[i, j])) * Fraction(float(s[i if where == "after" else j])) for j in range(3)] for i in range(3)]
    reference = _column_reference(exact)
    upper = _product_bound(graph)
    assert upper > 0.0 and Fraction(upper) ** 2 >= reference
    assert upper <= 1e-320  # and still of the size of the map (~1e-330), not a margin of 1e-290


def test_merged_pointwise_convolutions_whose_product_underflows_keep_a_positive_bound() -> None:
    rng = np.random.default_rng(23)
    k1, k2 = rng.standard_normal((2, 2, 1, 1)) * 1e-200, rng.standard_normal((2, 2, 1, 1)) * 1e-200
    nodes = tuple(
        Node(name=f"c{i}", op=O.Conv(weight=k, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), inputs=(src,), output=dst)
        for i, (k, src, dst) in enumerate(((k1, "x", "h"), (k2, "h", "y")))
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 3, 3)),), outputs=("y",), nodes=nodes))
    # a 1x1 convolution is its channel matrix at every pixel: the norm of K2 K1
    reference = _column_reference(_exact_matmul(_fractions(k2[:, :, 0, 0]), _fractions(k1[:, :, 0, 0])))
    upper = _product_bound(graph)
    assert upper > 0.0 and Fraction(upper) ** 2 >= reference


def test_exact_mode_refuses_biases_beyond_the_rescaled_range() -> None:
    """Biases of 1 after twelve layers of 2^-100 weights would be 2^1100 in the rescaled network
    (beyond float64): exact mode says so instead of guessing the activation regions."""
    weights = [w * 2.0**-100 for w in _unit_weights(12)]
    nodes: list[Node] = []
    cur = "x"
    for i, w in enumerate(weights):
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=np.ones(w.shape[0])), inputs=(cur,), output=f"h{i}"))
        nodes.append(Node(name=f"relu{i}", op=O.Relu(), inputs=(f"h{i}",), output=f"a{i}"))
        cur = f"a{i}"
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=(cur,), nodes=tuple(nodes)))
    result = exact_lipschitz(graph, budget_s=EXACT_BUDGET)
    assert result.upper is None and result.lower is None and not result.exact
    assert any("exponent range" in n for n in result.notes)


def _double_gemm_chain(path: Path, weights: list[np.ndarray], alpha: float) -> Path:
    """A float64 ONNX chain: Gemm(alpha, transB) + Relu per weight (no Relu after the last)."""
    nodes, inits, cur = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}"], [f"h{i}"], alpha=alpha, transB=1))
        cur = f"h{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, weights[0].shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, weights[-1].shape[0]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(("unit", "alpha"), [(1e-300, 1e-30), (1.0, 0.1)])
def test_gemm_alpha_rounding_is_carried_by_every_method(tmp_path: Path, unit: float, alpha: float) -> None:
    """alpha * B of a float64 model is rounded (at 1e-330 all of it is lost to underflow): the
    Linear carries the rounding bound, the product adds it, the chain methods verify their
    certificates for every weight within it, and exact mode (exact weights only) declines."""
    from stabaudit.loaders import load_model

    rng = np.random.default_rng(29)
    weights = [rng.standard_normal((3, 3)) * unit, rng.standard_normal((2, 3))]
    graph = load_model(_double_gemm_chain(tmp_path / "double.onnx", weights, alpha)).graph
    a = Fraction(float(np.float32(alpha)))  # an ONNX float attribute
    exact = [[Fraction(float(v)) * a for v in row] for row in weights[0]]
    # one hidden layer, all units active at some input (W0 is invertible): ||a W1 D W0|| with D = I
    reference = _column_reference(_exact_matmul([[Fraction(float(v)) * a for v in row] for row in weights[1]], exact))
    comp = compose(graph, rule_bounds(graph))
    assert comp.upper.value > 0.0 and Fraction(comp.upper.value) ** 2 >= reference
    for r in global_bounds(graph, budget_s=BUDGET, methods=METHODS):
        assert r.upper is None or (r.upper > 0.0 and Fraction(r.upper) ** 2 >= reference), r.method
        assert any("carried entry-wise" in n for n in r.notes), r.method
    result = exact_lipschitz(graph, budget_s=EXACT_BUDGET)
    assert result.upper is None and any("rounding error bound" in n for n in result.notes)


@pytest.mark.parametrize("k", [0, -520, -535])
def test_linear_region_bound_never_below_the_exact_norm_when_products_underflow(k: int) -> None:
    """h = W1 x; y = W2 h + W3 h (fan-out: a linear region, not a merge) with weights 2^k times
    positive unit ones: M = 2^(2k) (W2 + W3) W1 exactly. At k = -535 the region's float64 pass
    loses its products to the subnormal range; the bound used must still be >= ||M||."""
    from stabaudit.analyses.linear_regions import region_bounds

    rng = np.random.default_rng(0)
    n = 48
    unit = [np.abs(rng.standard_normal((n, n))) for _ in range(3)]
    w1, w2, w3 = (np.ldexp(w, k) for w in unit)
    nodes = (
        Node(name="l1", op=O.Linear(weight=w1), inputs=("x",), output="h"),
        Node(name="l2", op=O.Linear(weight=w2), inputs=("h",), output="a"),
        Node(name="l3", op=O.Linear(weight=w3), inputs=("h",), output="b"),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, n)),), outputs=("y",), nodes=nodes))
    ops = rule_bounds(graph)
    regions = region_bounds(graph, ops)
    upper = compose(graph, ops, None, {key: (r.x, r.value) for key, r in regions.items()}).upper.value
    # ||M|| >= 2^(2k) times the certified lower bound of the unit region's norm (its explicit
    # matrix, no underflow at unit scale), and >= ||M v|| / ||v|| for the all-ones v, exactly
    unit_graph = with_shapes(Graph(inputs=graph.inputs, outputs=("y",), nodes=tuple(
        Node(name=x.name, op=O.Linear(weight=w) if w is not None else x.op, inputs=x.inputs, output=x.output)
        for x, w in zip(nodes, [*unit, None], strict=True)
    )))
    unit_lower = region_bounds(unit_graph, rule_bounds(unit_graph))["y"].lower
    assert unit_lower is not None
    s = [[Fraction(float(a)) + Fraction(float(b)) for a, b in zip(r2, r3, strict=True)] for r2, r3 in zip(unit[1], unit[2], strict=True)]
    v = [sum((Fraction(float(c)) for c in row), Fraction(0)) for row in unit[0]]
    mv = [sum((a * b for a, b in zip(row, v, strict=True)), Fraction(0)) for row in s]
    reference = max(sum((x * x for x in mv), Fraction(0)) / n, Fraction(unit_lower) ** 2) * Fraction(2) ** (4 * k)
    assert upper > 0.0 and Fraction(upper) ** 2 >= reference
    assert bool(regions) == (k == 0)  # the whole-region bound is used only where no product underflows


@pytest.mark.parametrize(("gamma", "refused"), [(1e-300, True), (1e-200, False)])
def test_batchnorm_scale_below_the_normal_range_is_refused(tmp_path: Path, gamma: float, refused: bool) -> None:
    """A float64 BatchNormalization whose scale gamma / sqrt(var + eps) is ~1e-350 would become
    an Affine of scale 0 (a certified constant map): the loader refuses it (exit 2) instead."""
    from stabaudit.errors import UnsupportedOperatorError
    from stabaudit.loaders import load_model

    c = 3
    inits = [
        numpy_helper.from_array(np.full(c, gamma), "g"), numpy_helper.from_array(np.zeros(c), "b"),
        numpy_helper.from_array(np.zeros(c), "mu"), numpy_helper.from_array(np.full(c, 1e100), "var"),
    ]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["y"], epsilon=1e-5)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, c, 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, c, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path = tmp_path / "bn.onnx"
    onnx.save(model, path)
    if refused:
        with pytest.raises(UnsupportedOperatorError, match="normal range") as info:
            load_model(path)
        assert info.value.exit_code == 2
    else:
        loaded = load_model(path).graph
        comp = compose(loaded, rule_bounds(loaded))
        assert comp.upper.value == pytest.approx(gamma / 1e50, rel=1e-12)  # 1e-250: normal, loaded as usual
