"""Value ranges (analyses.ranges): every value the float64 executor computes over a box lies in its
enclosure, on one sample per operator, every soundness case and the real networks; exact or
nearly exact enclosures on simple cases."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.ranges import range_analysis, value_ranges, variance_lower
from stabaudit.bounds.base import Interval
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from tests.bounds.test_bound_node import SAMPLES, single
from tests.soundness import harness as H
from tests.soundness.cases import CASES, TS

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
# one network per source folder (the first by name): every architecture family, in a few seconds
EXTERNAL_MODELS = sorted({p.parent: p for p in sorted(EXTERNAL.rglob("*.onnx"), reverse=True)}.values()) \
    if EXTERNAL.is_dir() else []


# ---- the check ---------------------------------------------------------------------------------
def _points(graph: Graph, box: dict[str, Interval], count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` uniform points of the box, its corners when it has few entries, and its center."""
    rng = np.random.default_rng(seed)
    names = graph.input_names
    out = [{n: torch.from_numpy(rng.uniform(box[n].lo, box[n].hi)) for n in names} for _ in range(count)]
    out.append({n: torch.from_numpy((box[n].lo + box[n].hi) / 2) for n in names})
    n_entries = sum(box[n].lo.size for n in names)
    if n_entries <= 10:
        for bits in itertools.product((0, 1), repeat=n_entries):
            point, offset = {}, 0
            for n in names:
                size = box[n].lo.size
                pick = np.array(bits[offset: offset + size], dtype=bool).reshape(box[n].lo.shape)
                point[n] = torch.from_numpy(np.where(pick, box[n].hi, box[n].lo))
                offset += size
            out.append(point)
    return out


def _evaluate(graph: Graph, points: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Every value of the graph at every point, stacked on a leading axis (vmap; a loop when a
    kernel does not batch)."""
    ex = Executor(graph, dtype=torch.float64)
    names = graph.input_names
    stacked = [torch.stack([p[n] for p in points]) for n in names]

    def run(*args: torch.Tensor) -> dict[str, torch.Tensor]:
        return ex.run(dict(zip(names, args, strict=True)), keep=True)

    with torch.no_grad():
        try:
            env = torch.func.vmap(run)(*stacked)
        except Exception:
            rows = [run(*[p[n] for n in names]) for p in points]
            env = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return {k: v.numpy() for k, v in env.items()}


def _violations(graph: Graph, box: dict[str, Interval], ranges: dict[str, Interval], count: int = 200,
                seed: int = 0) -> list[str]:
    """Every value at every point must lie in its interval; a NaN only where it is (-inf, inf)."""
    problems: list[str] = []
    for name, v in _evaluate(graph, _points(graph, box, count, seed)).items():
        iv = ranges[name]
        assert iv.lo.shape == v.shape[1:] and iv.hi.shape == v.shape[1:], name
        assert not (np.isnan(iv.lo).any() or np.isnan(iv.hi).any()), name
        unbounded = np.isneginf(iv.lo) & np.isposinf(iv.hi)
        inside = ((iv.lo <= v) & (v <= iv.hi)) | unbounded
        if not inside.all():
            i = np.argwhere(~inside)[0]
            j = tuple(i[1:])
            problems.append(f"{name}{list(i)}: {v[tuple(i)]!r} not in [{iv.lo[j]!r}, {iv.hi[j]!r}]")
    return problems


def _box(graph: Graph, radius: float, seed: int, shift: float = 0.0) -> dict[str, Interval]:
    rng = np.random.default_rng(seed)
    box = {}
    for spec in graph.inputs:
        x0 = rng.standard_normal(spec.shape) + shift
        box[spec.name] = Interval(lo=x0 - radius, hi=x0 + radius)
    return box


# ---- one sample per operator -------------------------------------------------------------------
@pytest.mark.parametrize("radius", [1e-3, 1.5])
@pytest.mark.parametrize("op_type", list(O.OpType), ids=lambda t: t.value)
def test_every_operator_sample_is_enclosed(op_type: O.OpType, radius: float) -> None:
    op, shapes = SAMPLES[op_type]
    graph, _, _ = single(op, shapes)
    # Sqrt and Log: once inside their domain (finite enclosures), once across it
    for shift in ([0.0, radius + 3.0] if op_type in (O.OpType.SQRT, O.OpType.LOG) else [0.0]):
        box = _box(graph, radius, seed=3, shift=shift)
        result = range_analysis(graph, box)
        assert set(result.ranges) == set(graph.input_names) | {"y"}
        assert _violations(graph, box, dict(result.ranges)) == []
        y = result.ranges["y"]
        if shift:
            assert np.isfinite(y.lo).all() and np.isfinite(y.hi).all()
        if not (np.isfinite(y.lo).all() and np.isfinite(y.hi).all()):
            assert result.notes, "an unbounded output names its origin"


# ---- every soundness case ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def case_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    from stabaudit.loaders import load_model
    from stabaudit.loaders.torchscript import load_torchscript

    directory = tmp_path_factory.mktemp("ranges_cases")
    graphs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in CASES:
            fmt = TS if TS in case.formats else case.formats[0]
            built = H.build(case, fmt, directory)
            # the team's own archives load in this process (the isolated child costs seconds each)
            load = load_torchscript if fmt == TS else load_model
            graphs[case.id] = load(built.path, input_shape=built.input_shape).graph
    return graphs


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_every_soundness_case_is_enclosed(case_graphs: dict[str, Graph], case_id: str) -> None:
    graph = case_graphs[case_id]
    for seed, radius in ((1, 1e-3), (2, 0.5)):
        box = _box(graph, radius, seed)
        ranges = value_ranges(graph, box)
        assert set(ranges) == set(graph.input_names) | {n.output for n in graph.nodes}
        assert _violations(graph, box, ranges, count=100, seed=seed) == [], case_id
    # a small box keeps every value finite (no case divides by a variable near 0 at its seed)
    small = value_ranges(graph, _box(graph, 1e-3, 1))
    assert all(np.isfinite(iv.lo).all() and np.isfinite(iv.hi).all() for iv in small.values()), case_id


# ---- the real networks -------------------------------------------------------------------------
@pytest.mark.external
@pytest.mark.parametrize("path", EXTERNAL_MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_external_networks_are_enclosed(path: Path) -> None:
    from stabaudit.loaders import load_model

    graph = load_model(path).graph
    rng = np.random.default_rng(4)
    box = {}
    for spec in graph.inputs:
        x0 = rng.uniform(0.0, 1.0, spec.shape)
        box[spec.name] = Interval(lo=x0 - 0.01, hi=x0 + 0.01)
    result = range_analysis(graph, box)
    assert _violations(graph, box, dict(result.ranges), count=16, seed=5) == []
    out = result.ranges[graph.outputs[0]]
    assert np.isfinite(out.lo).all() and np.isfinite(out.hi).all(), result.notes


# ---- exact references --------------------------------------------------------------------------
def _one(op: O.Op, lows: list[np.ndarray], highs: list[np.ndarray]) -> tuple[Interval, tuple[str, ...]]:
    shapes = [np.shape(a) for a in lows]
    graph, _, _ = single(op, shapes)
    box = {f"x{i}": Interval(lo=np.asarray(a, dtype=np.float64), hi=np.asarray(b, dtype=np.float64))
           for i, (a, b) in enumerate(zip(lows, highs, strict=True))}
    result = range_analysis(graph, box)
    assert _violations(graph, box, dict(result.ranges)) == []
    return result.ranges["y"], result.notes


def test_relu_mul_div_are_exact() -> None:
    y, _ = _one(O.Relu(), [np.array([[-1.0, 0.5]])], [np.array([[2.0, 3.0]])])
    assert y.lo.tolist() == [[0.0, 0.5]] and y.hi.tolist() == [[2.0, 3.0]]
    y, _ = _one(O.Mul(), [np.array([[1.0]]), np.array([[-3.0]])], [np.array([[2.0]]), np.array([[4.0]])])
    assert y.lo.tolist() == [[-6.0]] and y.hi.tolist() == [[8.0]]
    y, _ = _one(O.Div(), [np.array([[1.0]]), np.array([[4.0]])], [np.array([[2.0]]), np.array([[8.0]])])
    assert y.lo.tolist() == [[0.125]] and y.hi.tolist() == [[0.5]]
    y, _ = _one(O.Add(), [np.array([[1.0]]), np.array([[-3.0]])], [np.array([[2.0]]), np.array([[4.0]])])
    assert y.lo.tolist() == [[-2.0]] and y.hi.tolist() == [[6.0]]
    y, _ = _one(O.Sqrt(), [np.array([[1.0]])], [np.array([[4.0]])])
    assert y.lo.tolist() == [[1.0]] and y.hi.tolist() == [[2.0]]


def test_a_value_times_itself_is_a_square() -> None:
    """Mul(x, x) (variances as exporters write them) is enclosed as a square: nonnegative, the
    nearest end's square below; two independent operands keep the corner product."""
    x = TensorSpec(name="x", shape=(1, 3))
    g = with_shapes(Graph(inputs=(x,), outputs=("y",),
                          nodes=(Node(name="sq", op=O.Mul(), inputs=("x", "x"), output="y"),)).validate())
    box = {"x": Interval(lo=np.array([[-2.0, 1.0, -5.0]]), hi=np.array([[3.0, 2.0, -4.0]]))}
    y = value_ranges(g, box)["y"]
    assert y.lo.tolist() == [[0.0, 1.0, 16.0]] and y.hi.tolist() == [[9.0, 4.0, 25.0]]
    for point in _points(g, box, 50, seed=0):
        v = Executor(g, dtype=torch.float64)(point["x"])[0].numpy()
        assert np.all(v >= y.lo) and np.all(v <= y.hi)


def test_division_by_an_interval_holding_zero_is_unbounded_and_named() -> None:
    y, notes = _one(O.Div(), [np.array([[1.0, 1.0]]), np.array([[-1.0, 1.0]])],
                    [np.array([[2.0, 2.0]]), np.array([[1.0, 2.0]])])
    assert y.lo.tolist() == [[-math.inf, 0.5]] and y.hi.tolist() == [[math.inf, 2.0]]
    assert any("n_Div" in n and "holding 0" in n for n in notes)
    y, notes = _one(O.Sqrt(), [np.array([[-1.0, 0.0]])], [np.array([[4.0, 4.0]])])
    assert y.lo.tolist() == [[-math.inf, 0.0]] and y.hi.tolist() == [[math.inf, 2.0]]
    assert any("negative" in n for n in notes)
    y, _ = _one(O.Reciprocal(), [np.array([[-1.0]])], [np.array([[0.0]])])
    assert y.lo.tolist() == [[-math.inf]] and y.hi.tolist() == [[math.inf]]
    y, notes = _one(O.Exp(), [np.array([[700.0, 1.0]])], [np.array([[720.0, 2.0]])])  # overflow
    assert y.lo[0, 0] == -math.inf and y.hi[0, 0] == math.inf and np.isfinite(y.lo[0, 1]) and notes


def test_unbounded_values_propagate_downstream() -> None:
    a = Node(name="inv", op=O.Reciprocal(), inputs=("x",), output="r")
    b = Node(name="fc", op=O.Linear(weight=np.array([[1.0, 0.0], [0.0, 1.0]])), inputs=("r",), output="h")
    c = Node(name="sig", op=O.Sigmoid(), inputs=("h",), output="y")
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=(a, b, c)))
    box = {"x": Interval(lo=np.array([[-1.0, 1.0]]), hi=np.array([[1.0, 2.0]]))}
    result = range_analysis(graph, box)
    y = result.ranges["y"]
    # the NaN or infinity of 1 / 0 reaches both outputs through the matrix product (0 * inf = NaN)
    assert np.isneginf(y.lo).all() and np.isposinf(y.hi).all()
    assert len(result.notes) == 1 and "inv" in result.notes[0]


def test_linear_is_the_center_radius_form() -> None:
    rng = np.random.default_rng(7)
    w, b = rng.standard_normal((5, 4)), rng.standard_normal(5)
    c, r = rng.standard_normal((1, 4)), rng.uniform(0.1, 1.0, (1, 4))
    y, _ = _one(O.Linear(weight=w, bias=b), [c - r], [c + r])
    mid, rad = c @ w.T + b, r @ np.abs(w).T
    np.testing.assert_allclose(y.lo, mid - rad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.hi, mid + rad, rtol=1e-12, atol=1e-12)


def test_cubic_resize_takes_absolute_weights() -> None:
    from stabaudit.ir.resize import axis_matrix

    op, shapes = SAMPLES[O.OpType.RESIZE]
    x0 = np.random.default_rng(8).standard_normal(shapes[0])
    y, _ = _one(op, [x0 - 0.5], [x0 + 0.5])
    a = np.kron(axis_matrix(op, 0)[0], axis_matrix(op, 1)[0])  # the map of the two resized axes
    mid = np.einsum("ij,bcj->bci", a, x0.reshape(1, 2, -1)).reshape(y.lo.shape)
    rad = 0.5 * np.abs(a).sum(axis=1)
    assert (np.abs(a).sum(axis=1) > np.abs(a.sum(axis=1)) + 0.01).any()  # negative weights
    np.testing.assert_allclose(y.hi - mid, np.broadcast_to(rad.reshape(1, 1, 5, 7), y.lo.shape), rtol=1e-12)


def test_activation_ranges_against_their_exact_ones() -> None:
    x_lo, x_hi = np.array([[-3.0, -1.0, 0.5, -4.0]]), np.array([[1.0, -0.9, 2.0, -2.0]])
    silu = torch.nn.functional.silu
    y, _ = _one(O.Silu(), [x_lo], [x_hi])
    f = [float(silu(torch.tensor(v, dtype=torch.float64))) for v in (-1.0, -0.9, 0.5, 2.0, -2.0, -4.0, 1.0)]
    # [-3, 1] holds the turning point; [-1, -0.9] and [0.5, 2] lie right of it, [-4, -2] left
    np.testing.assert_allclose(y.lo[0], [-0.2784645427610738, f[0], f[2], f[4]], rtol=1e-12)
    np.testing.assert_allclose(y.hi[0], [f[6], f[1], f[3], f[5]], rtol=1e-12)
    mish = torch.nn.functional.mish
    y, _ = _one(O.Mish(), [x_lo], [x_hi])
    f = [float(mish(torch.tensor(v, dtype=torch.float64))) for v in (-1.0, -0.9, 0.5, 2.0, -2.0, -4.0, 1.0)]
    # the turning point -1.1924: inside [-3, 1], left of [-1, -0.9] and [0.5, 2], right of [-4, -2]
    np.testing.assert_allclose(y.lo[0], [-0.30884341301725040663, f[0], f[2], f[4]], rtol=1e-12)
    np.testing.assert_allclose(y.hi[0], [f[6], f[1], f[3], f[5]], rtol=1e-12)
    y, _ = _one(O.HardSwish(), [np.array([[-2.0]])], [np.array([[0.0]])])
    np.testing.assert_allclose([y.lo[0, 0], y.hi[0, 0]], [-0.375, 0.0], atol=1e-12)
    y, _ = _one(O.Gelu(), [np.array([[-2.0]])], [np.array([[0.0]])])
    np.testing.assert_allclose(y.lo[0, 0], -0.16997120747990366, rtol=1e-12)
    y, _ = _one(O.LeakyRelu(alpha=-0.5), [np.array([[-2.0]])], [np.array([[1.0]])])  # non-monotone
    np.testing.assert_allclose([y.lo[0, 0], y.hi[0, 0]], [0.0, 1.0], atol=1e-15)
    y, _ = _one(O.Pow(exponent=2.0), [np.array([[-1.0, -2.0]])], [np.array([[3.0, -1.0]])])
    np.testing.assert_allclose(y.lo, [[0.0, 1.0]], atol=1e-13)
    np.testing.assert_allclose(y.hi, [[9.0, 4.0]], rtol=1e-13)
    y, _ = _one(O.Pow(exponent=3.0), [np.array([[-2.0]])], [np.array([[1.0]])])
    np.testing.assert_allclose([y.lo[0, 0], y.hi[0, 0]], [-8.0, 1.0], rtol=1e-13)
    y, notes = _one(O.Pow(exponent=1.5), [np.array([[-1.0, 1.0]])], [np.array([[1.0, 4.0]])])
    assert np.isneginf(y.lo[0, 0]) and y.hi[0, 1] == pytest.approx(8.0, rel=1e-13) and notes


def test_softmax_is_the_corner_formula_inside_the_unit_interval() -> None:
    lo, hi = np.array([[0.0, 1.0, -2.0]]), np.array([[0.5, 1.5, 3.0]])
    y, _ = _one(O.Softmax(axis=-1), [lo], [hi])
    e_lo, e_hi = np.exp(lo[0]), np.exp(hi[0])
    exact_lo = [e_lo[i] / (e_lo[i] + e_hi.sum() - e_hi[i]) for i in range(3)]
    exact_hi = [e_hi[i] / (e_hi[i] + e_lo.sum() - e_lo[i]) for i in range(3)]
    np.testing.assert_allclose(y.lo[0], exact_lo, rtol=1e-12)
    np.testing.assert_allclose(y.hi[0], exact_hi, rtol=1e-12)
    wide, _ = _one(O.Softmax(axis=1), [np.full((1, 4, 2), -800.0)], [np.full((1, 4, 2), 900.0)])
    assert (wide.lo >= 0).all() and (wide.hi <= 1).all()


def test_matmul_of_points_is_tight() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    y, _ = _one(O.MatMul(), [a, b], [a, b])
    np.testing.assert_allclose(y.lo, a @ b, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(y.hi, a @ b, rtol=1e-13, atol=1e-14)
    y, _ = _one(O.MatMul(), [np.array([[1.0]]), np.array([[-3.0]])], [np.array([[2.0]]), np.array([[4.0]])])
    np.testing.assert_allclose([y.lo[0, 0], y.hi[0, 0]], [-6.0, 8.0], rtol=1e-13)  # midpoint-radius: exact here


def test_layer_norm_fallback_and_tight_case() -> None:
    op = O.LayerNorm(axis=1, epsilon=1e-5)
    wide, _ = _one(op, [np.full((1, 4), -10.0)], [np.full((1, 4), 10.0)])
    np.testing.assert_allclose(wide.hi, 2.0, rtol=1e-12)  # sqrt(n): the fallback
    np.testing.assert_allclose(wide.lo, -2.0, rtol=1e-12)
    x0 = np.array([[0.0, 1.0, 2.0]])
    tight, _ = _one(op, [x0 - 1e-3], [x0 + 1e-3])
    z = (x0 - 1.0) / np.sqrt(2 / 3 + 1e-5)
    assert (tight.lo <= z).all() and (z <= tight.hi).all()
    assert (tight.hi - tight.lo).max() < 0.01
    flat, _ = _one(O.LayerNorm(axis=1, epsilon=0.0), [np.zeros((1, 3))], [np.ones((1, 3))])
    assert np.isneginf(flat.lo).all() and np.isposinf(flat.hi).all()  # 0 / 0 possible


def test_variance_lower_bound() -> None:
    lo, hi = np.array([[0.0, 10.0]]), np.array([[1.0, 11.0]])
    v = variance_lower(lo, hi, (1,))
    assert v.shape == (1, 1)
    # the least variance over the box is 20.25 (x = (1, 10)); the simple bound gives 4^2 = 16
    assert 16.0 * (1 - 1e-12) <= v[0, 0] <= 20.25
    assert variance_lower(np.zeros((2, 3)), np.ones((2, 3)), (1,)).tolist() == [[0.0], [0.0]]


def test_an_operator_without_a_rule_is_unbounded_and_named() -> None:
    class Mystery(O.Op):
        type = O.OpType.ABS  # borrowed: only the class is unknown to the rules and the executor

    node = Node(name="odd", op=Mystery(), inputs=("x",), output="y")
    graph = Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=(node,),
                  shapes={"x": (1, 3), "y": (1, 3)})
    result = range_analysis(graph, {"x": Interval(lo=np.zeros((1, 3)), hi=np.ones((1, 3)))})
    y = result.ranges["y"]
    assert np.isneginf(y.lo).all() and np.isposinf(y.hi).all()
    assert result.notes and "odd" in result.notes[0]


@pytest.mark.parametrize("op_type", list(O.OpType), ids=lambda t: t.value)
def test_a_point_box_gives_the_value_within_a_few_ulps(op_type: O.OpType) -> None:
    """With lo = hi the enclosure is the computed value itself plus the rounding allowance."""
    op, shapes = SAMPLES[op_type]
    graph, _, _ = single(op, shapes)
    rng = np.random.default_rng(5)
    box = {}
    for spec in graph.inputs:
        x0 = rng.standard_normal(spec.shape) + (3.0 if op_type in (O.OpType.SQRT, O.OpType.LOG) else 0.0)
        box[spec.name] = Interval(lo=x0, hi=x0)
    y = value_ranges(graph, box)["y"]
    assert _violations(graph, box, {**{n: box[n] for n in box}, "y": y}, count=1) == []
    width = (y.hi - y.lo) / np.maximum(np.abs(y.hi), 1.0)
    assert width.max() <= 1e-11, width.max()


def test_a_malformed_box_is_a_usage_error() -> None:
    from stabaudit.errors import UsageError

    graph, _, _ = single(O.Relu(), [(1, 2)])
    with pytest.raises(UsageError, match="lo > hi"):
        value_ranges(graph, {"x0": Interval(lo=np.ones((1, 2)), hi=np.zeros((1, 2)))})
    with pytest.raises(UsageError, match="shape"):
        value_ranges(graph, {"x0": Interval(lo=np.zeros((2,)), hi=np.ones((2,)))})
    with pytest.raises(UsageError, match="no interval"):
        value_ranges(graph, {})


def test_masked_softmax_is_the_corner_formula_over_the_kept_entries() -> None:
    # a causal mask: row i keeps the entries j <= i; dropped entries are exactly 0 and the kept
    # ones the corner formula of the softmax of their row's kept entries
    mask = np.tril(np.ones((3, 3), dtype=bool))
    lo = np.array([[0.0, 1.0, -2.0], [0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    hi = lo + np.array([[0.5, 0.5, 1.0], [0.2, 0.3, 0.1], [0.4, 0.6, 0.8]])
    y, _ = _one(O.Softmax(axis=-1, mask=mask), [lo], [hi])
    for i in range(3):
        k = mask[i]
        e_lo, e_hi = np.exp(lo[i][k]), np.exp(hi[i][k])
        exact_lo = [e_lo[j] / (e_lo[j] + e_hi.sum() - e_hi[j]) for j in range(k.sum())]
        exact_hi = [e_hi[j] / (e_hi[j] + e_lo.sum() - e_lo[j]) for j in range(k.sum())]
        np.testing.assert_allclose(y.lo[i][k], exact_lo, rtol=1e-12)
        np.testing.assert_allclose(y.hi[i][k], exact_hi, rtol=1e-12)
        assert (y.lo[i][~k] == 0).all() and (y.hi[i][~k] == 0).all()


def test_rms_norm_ranges_enclose_and_are_tight() -> None:
    """RMSNorm's output ranges: |y_i| <= sqrt(n) whatever the box; tight on a small box (and the
    sampled values inside, which _one checks)."""
    op = O.LayerNorm(axis=1, epsilon=1e-5, centered=False)
    wide, _ = _one(op, [np.full((1, 4), -10.0)], [np.full((1, 4), 10.0)])
    np.testing.assert_allclose(wide.hi, 2.0, rtol=1e-12)
    np.testing.assert_allclose(wide.lo, -2.0, rtol=1e-12)
    x0 = np.array([[1.0, -2.0, 3.0]])
    tight, _ = _one(op, [x0 - 1e-3], [x0 + 1e-3])
    z = x0 / np.sqrt((x0**2).mean() + 1e-5)
    assert (tight.lo <= z).all() and (z <= tight.hi).all()
    assert (tight.hi - tight.lo).max() < 0.01
    assert variance_lower(x0 - 1, x0 + 1, (1,), centered=False)[0, 0] == pytest.approx(5.0 / 3.0, rel=1e-12)


def test_sine_and_cosine_ranges_hold_their_turning_points() -> None:
    """sin over [1, 2] holds its maximum at pi / 2 (1) and its least value at the end 1; over
    [-0.5, 0.5] it is monotone (the end values, a few ulps wider); cos over [3, 3.5] holds its
    minimum -1 at pi; over [-7, 0] both its maximum at 0 and its minimum at -pi."""
    lo, hi = np.array([[1.0, -0.5, 3.0, -7.0]]), np.array([[2.0, 0.5, 3.5, 0.0]])
    s, _ = _one(O.Sin(), [lo], [hi])
    np.testing.assert_allclose(s.hi[0, :2], [1.0, math.sin(0.5)], rtol=1e-13)
    np.testing.assert_allclose(s.lo[0, :2], [math.sin(1.0), -math.sin(0.5)], rtol=1e-13)
    c, _ = _one(O.Cos(), [lo], [hi])
    np.testing.assert_allclose(c.lo[0, 2:], [-1.0, -1.0], rtol=0)
    np.testing.assert_allclose(c.hi[0, 2:], [max(math.cos(3.0), math.cos(3.5)), 1.0], rtol=1e-13)
    assert s.lo[0, 1] <= -math.sin(0.5) and s.hi[0, 1] >= math.sin(0.5)
