"""Linear regions bounded as a whole: the certified norm of the explicit matrix against exact references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.analyses import linear_regions as R
from stabaudit.analyses.composition import compose, rule_bounds
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import merge_linear_maps
from stabaudit.ir.regions import find_linear_regions


def _graph(nodes: list[Node], shape: tuple[int, ...], outputs: tuple[str, ...] = ("y",)) -> Graph:
    g = Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=outputs, nodes=tuple(nodes))
    return with_shapes(g.validate())


def _jacobian(g: Graph) -> np.ndarray:
    """The float64 Jacobian of the whole graph (an affine graph: its explicit matrix)."""
    f = Executor(g, dtype=torch.float64).flat()
    n = int(np.prod(g.inputs[0].shape))
    return torch.func.jacrev(f)(torch.zeros(n, dtype=torch.float64)).numpy()


def _only_bound(g: Graph) -> R.RegionBound:
    (region,) = find_linear_regions(g)
    found = R.region_bound(g, region, rule_bounds(g))
    assert found is not None
    return found


def test_two_linear_branches_added_is_the_norm_of_the_sum() -> None:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w1, bias=rng.normal(size=5)), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("x",), output="b"),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
    ], (1, 7))
    found = _only_bound(g)
    exact = np.linalg.norm(w1 + w2, 2)
    assert exact <= found.value <= exact * (1 + 1e-12)
    assert found.lower is not None and exact * (1 - 1e-12) <= found.lower <= exact
    # what the composition gives: ||W1|| + ||W2||, well above
    assert found.composed == pytest.approx(np.linalg.norm(w1, 2) + np.linalg.norm(w2, 2), rel=1e-12)
    assert found.nodes == ("fc1", "fc2", "add")


@pytest.mark.parametrize(("stride", "pad"), [(1, 1), (2, 1), (1, 0)])
def test_conv_then_conv_transpose_is_the_norm_of_the_explicit_matrix(stride: int, pad: int) -> None:
    rng = np.random.default_rng(stride + 10 * pad)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    conv = O.Conv(weight=w1, strides=(stride, stride), pads=(pad,) * 4, dilations=(1, 1))
    convt = O.ConvTranspose(
        weight=w2, bias=np.ones(3, dtype=np.float32), strides=(stride, stride), pads=(pad,) * 4,
        dilations=(1, 1), output_padding=(stride - 1, stride - 1),
    )
    g = _graph([
        Node(name="conv", op=conv, inputs=("x",), output="h"),
        Node(name="convt", op=convt, inputs=("h",), output="y"),
    ], (1, 3, 8, 8))
    found = _only_bound(g)
    exact = np.linalg.norm(_jacobian(g), 2)
    assert exact <= found.value <= exact * (1 + 1e-6)
    assert found.composed > 1.1 * exact  # the product of the two norms


def test_merged_maps_inside_a_region_carry_their_error() -> None:
    rng = np.random.default_rng(3)
    w1, w2, w3 = rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(5, 4))
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w1), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("a",), output="b"),
        Node(name="fc3", op=O.Linear(weight=w3), inputs=("x",), output="c"),
        Node(name="sub", op=O.Sub(), inputs=("b", "c"), output="y"),
    ], (1, 4))
    merged = merge_linear_maps(g)
    assert [n.name for n in merged.nodes] == ["fc1+fc2", "fc3", "sub"]
    assert merged.nodes[0].op.error > 0.0
    (region,) = find_linear_regions(merged)
    bounds = rule_bounds(merged)
    assert R._representation_errors(merged, region, bounds) >= merged.nodes[0].op.error  # S = R = 1 here
    found = R.region_bound(merged, region, bounds)
    assert found is not None
    exact = np.linalg.norm(w2 @ w1 - w3, 2)
    assert exact <= found.value <= exact * (1 + 1e-12)


def test_translations_change_nothing_and_structure_is_followed() -> None:
    # avg pool, zero and constant pads, concat, transpose and per-channel affine maps with shifts
    rng = np.random.default_rng(4)
    w = rng.normal(size=(2, 2, 3, 3))

    def nodes(shifted: bool) -> list[Node]:
        shift = np.full((1, 2, 1, 1), 0.5) if shifted else None
        return [
            Node(name="conv", op=O.Conv(weight=w, bias=np.ones(2) if shifted else None, strides=(1, 1),
                                        pads=(1, 1, 1, 1), dilations=(1, 1)), inputs=("x",), output="c"),
            Node(name="pool", op=O.AvgPool(kernel=(2, 2), strides=(1, 1), pads=(0, 0, 1, 1),
                                           dilations=(1, 1)), inputs=("x",), output="p"),
            Node(name="bn", op=O.Affine(scale=np.array([0.5, -2.0]).reshape(1, 2, 1, 1), shift=shift),
                 inputs=("p",), output="q"),
            Node(name="cat", op=O.Concat(axis=1), inputs=("c", "q"), output="k"),
            Node(name="pad", op=O.Pad(pads=(0, 0, 1, 0, 0, 0, 0, 1), value=3.0 if shifted else 0.0),
                 inputs=("k",), output="kp"),
            Node(name="tr", op=O.Transpose(perm=(0, 1, 3, 2)), inputs=("kp",), output="t"),
            Node(name="sub", op=O.Sub(), inputs=("t", "kp"), output="y"),
        ]

    with_shift, without = _graph(nodes(True), (1, 2, 5, 5)), _graph(nodes(False), (1, 2, 5, 5))
    a, b = _only_bound(with_shift), _only_bound(without)
    assert a.value == b.value
    exact = np.linalg.norm(_jacobian(without), 2)
    assert exact <= a.value <= exact * (1 + 1e-12)


def test_rounding_bound_is_tiny_and_grows_with_the_work() -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(size=(8, 8))
    chain = [Node(name="fc0", op=O.Linear(weight=w), inputs=("x",), output="v0")]
    for i in range(1, 4):
        chain.append(Node(name=f"fc{i}", op=O.Linear(weight=w), inputs=(f"v{i - 1}",), output=f"v{i}"))
    chain.append(Node(name="add", op=O.Add(), inputs=("v3", "x"), output="y"))
    g = _graph(chain, (1, 8))
    (region,) = find_linear_regions(g)
    mat, abs_frobenius = R._matrices(g, region)
    err = R._rounding(g, region, abs_frobenius)
    # ||M^ - M|| for this chain is below its bound; the bound is ~(4 gamma_8 + u) ||P||_F
    exact = np.linalg.matrix_power(w, 4) + np.eye(8)
    assert np.linalg.norm(mat - exact, 2) <= err
    p = np.linalg.matrix_power(np.abs(w), 4) + np.eye(8)
    assert err == pytest.approx((4 * 8 + 1) * 2.0**-53 * np.linalg.norm(p), rel=0.05)
    shorter = [*chain[:2], Node(name="add", op=O.Add(), inputs=("v1", "x"), output="y")]
    g2 = _graph(shorter, (1, 8))
    (r2,) = find_linear_regions(g2)
    assert R._rounding(g2, r2, R._matrices(g2, r2)[1]) < err


def test_sampled_difference_quotients_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(6)
    w1, w2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w1, bias=rng.normal(size=6)), inputs=("x",), output="a"),
        Node(name="twice", op=O.Add(), inputs=("a", "a"), output="aa"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("aa",), output="b"),
        Node(name="neg", op=O.Affine(scale=np.array(-3.0), shift=np.array(1.0)), inputs=("x",), output="n"),
        Node(name="sub", op=O.Sub(), inputs=("b", "n"), output="y"),
    ], (1, 6))
    found = _only_bound(g)
    exact = np.linalg.norm(2 * w2 @ w1 + 3 * np.eye(6), 2)
    assert exact <= found.value <= exact * (1 + 1e-12)
    f = Executor(g, dtype=torch.float64).flat()
    x = torch.from_numpy(rng.normal(size=(300, 6)) * 4)
    d = torch.from_numpy(rng.normal(size=(300, 6)))
    q = torch.linalg.norm(torch.func.vmap(f)(x + d) - torch.func.vmap(f)(x), dim=1) / torch.linalg.norm(d, dim=1)
    assert float(q.max()) <= found.value


def test_composition_uses_the_region_bounds() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 4))
    g = _graph([
        Node(name="relu0", op=O.Relu(), inputs=("x",), output="r"),
        Node(name="fc1", op=O.Linear(weight=w), inputs=("r",), output="a"),
        Node(name="fc2", op=O.Linear(weight=-w), inputs=("r",), output="b"),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="c"),  # W - W = 0
        Node(name="scale", op=O.Affine(scale=np.array(2.0)), inputs=("x",), output="s"),
        Node(name="join", op=O.Add(), inputs=("c", "s"), output="y"),  # two roots: r and x
    ], (1, 4))
    bounds = rule_bounds(g)
    found = R.region_bounds(g, bounds)
    assert set(found) == {"c"}  # the x -> s map is a single Affine: left to the composition
    # the computed matrix is exactly 0; what remains is its certified rounding bound
    assert found["c"].x == "r" and 0.0 < found["c"].value < 1e-14
    before = compose(g, bounds)
    after = compose(g, bounds, region_bounds={k: (b.x, b.value) for k, b in found.items()})
    assert before.per_value["c"] == pytest.approx(2 * np.linalg.norm(w, 2))
    assert after.per_value["c"] < 1e-14
    assert after.upper.value == pytest.approx(2.0, rel=1e-14) and after.upper.certified
    assert before.upper.value == pytest.approx(2 + 2 * np.linalg.norm(w, 2))
    assert "largest gain: 'r' -> 'c'" in R.region_note(found)[0]


def test_too_large_or_not_finite_regions_are_left_to_the_composition(monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.ones((3, 3))
    nodes = [
        Node(name="fc1", op=O.Linear(weight=w), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w), inputs=("x",), output="b"),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
    ]
    g = _graph(nodes, (1, 3))
    (region,) = find_linear_regions(g)
    assert R.region_bound(g, region, rule_bounds(g)).value == pytest.approx(6.0, rel=1e-12)
    monkeypatch.setattr(R, "WORK_BUDGET", 10.0)
    assert R.region_bound(g, region, rule_bounds(g)) is None
    monkeypatch.undo()
    monkeypatch.setattr(R, "DENSE_MAX_ENTRIES", 4)
    monkeypatch.setattr(R, "DENSE_CHOLESKY_MAX_ENTRIES", 8)
    assert R.region_bound(g, region, rule_bounds(g)) is None
    monkeypatch.undo()
    bad = w.copy()
    bad[0, 0] = math.nan
    nodes[1] = Node(name="fc2", op=O.Linear(weight=bad), inputs=("x",), output="b")
    g = _graph(nodes, (1, 3))
    (region,) = find_linear_regions(g)
    assert R.region_bound(g, region, rule_bounds(g)) is None


def test_the_cholesky_path_certifies_larger_matrices(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    w1, w2 = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w1), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w2), inputs=("x",), output="b"),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
    ], (1, 30))
    monkeypatch.setattr(R, "DENSE_MAX_ENTRIES", 100)  # too large for the Gram eigenvalue path
    found = _only_bound(g)
    exact = np.linalg.norm(w1 + w2, 2)
    assert exact <= found.value <= exact * (1 + 1e-4)
    assert found.lower is None


def test_branches_that_cancel_keep_the_rounding_of_their_weights() -> None:
    """W x - W x computes exactly 0, but weights folded or divided in float64 may stand for
    operators a rounding apart: the bound keeps u ||W||_F per branch (cancellation makes it
    visible, unlike for one layer, whose norm is at least ||W||_F / sqrt(rank))."""
    rng = np.random.default_rng(9)
    w = rng.normal(size=(6, 6)) * 100
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w), inputs=("x",), output="b"),
        Node(name="half", op=O.Affine(scale=np.array(0.5)), inputs=("b",), output="c"),
        Node(name="sub", op=O.Sub(), inputs=("a", "c"), output="d"),
        Node(name="sub2", op=O.Sub(), inputs=("d", "c"), output="y"),
    ], (1, 6))
    found = _only_bound(g)
    u = 2.0**-53
    assert found.value >= 2 * u * np.linalg.norm(w)  # one rounding per branch at least
    assert found.value <= 1e-10 * np.linalg.norm(w, 2)
    assert found.lower == 0.0


def test_selections_and_constant_masks_join_a_region() -> None:
    """Slice, Gather, Tile and a Where on a constant mask are affine in their input (an exporter
    writes an uneven adaptive pool with them): the region runs through them, the constant branch
    is a translation, and the bound is the norm of the explicit matrix."""
    rng = np.random.default_rng(11)
    w = rng.normal(size=(3, 2, 3, 3))
    mask = rng.random((1, 3, 4, 4)) < 0.6
    v = rng.normal(size=(4, 36))

    def nodes(fill: float) -> list[Node]:
        return [
            Node(name="conv", op=O.Conv(weight=w, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)),
                 inputs=("x",), output="c"),
            Node(name="pick", op=O.Gather(axis=2, indices=np.array([0, 2, 3, 3])), inputs=("c",), output="g"),
            Node(name="mask", op=O.Where(mask=mask, when_false=np.array(fill)), inputs=("g",), output="m"),
            Node(name="cut", op=O.Slice(starts=(0, 0, 1, 0), ends=(1, 3, 4, 4), steps=(1, 1, 1, 2)),
                 inputs=("m",), output="s"),
            Node(name="tile", op=O.Tile(repeats=(1, 1, 1, 2)), inputs=("s",), output="t"),
            Node(name="sum", op=O.Add(), inputs=("t", "t"), output="u"),
            Node(name="flat", op=O.Reshape(shape=(1, 36)), inputs=("u",), output="f"),
            Node(name="fc", op=O.Linear(weight=v), inputs=("f",), output="y"),
        ]

    filled, zero = _graph(nodes(5.0), (1, 2, 4, 4)), _graph(nodes(0.0), (1, 2, 4, 4))
    (region,) = find_linear_regions(filled)
    assert region.x == "x" and [n.name for n in region.nodes] == [n.name for n in filled.nodes]
    a, b = _only_bound(filled), _only_bound(zero)
    assert a.value == b.value
    exact = np.linalg.norm(_jacobian(zero), 2)
    assert exact <= a.value <= exact * (1 + 1e-12)
    assert a.value < a.composed


def test_a_data_dependent_where_ends_a_region() -> None:
    w = np.eye(3) * 2.0
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=w), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=w), inputs=("a",), output="b"),
        # where(b > 0, b, 0): the tested input, then the variable branch
        Node(name="sel", op=O.Where(test="greater", other=np.array(0.0), when_false=np.array(0.0)),
             inputs=("b", "b"), output="c"),
        Node(name="fc3", op=O.Linear(weight=w), inputs=("c",), output="d"),
        Node(name="fc4", op=O.Linear(weight=w), inputs=("d",), output="y"),
    ], (1, 3))
    assert [(r.x, r.output) for r in find_linear_regions(g)] == [("x", "b"), ("c", "y")]


def test_long_window_sums_are_not_taken_for_underflow() -> None:
    """The sum of 12 x 12 gathered entries (143 chained Adds, as an exported adaptive pool writes
    it) keeps the quantum of its terms: no product of the passes can be subnormal, so the region
    is bounded (a shrink of 2^-53 per sum would have given up after 20 of them)."""
    rng = np.random.default_rng(12)
    nodes = [Node(name="fc", op=O.Linear(weight=rng.normal(size=(144, 6))), inputs=("x",), output="h")]
    terms = []
    for i in range(144):
        nodes.append(Node(name=f"g{i}", op=O.Gather(axis=1, indices=np.array([i])), inputs=("h",), output=f"g{i}"))
        terms.append(f"g{i}")
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        nodes.append(Node(name=f"s{i}", op=O.Add(), inputs=(acc, t), output=f"s{i}"))
        acc = f"s{i}"
    nodes.append(Node(name="out", op=O.Linear(weight=rng.normal(size=(2, 1))), inputs=(acc,), output="y"))
    g = _graph(nodes, (1, 6))
    (region,) = find_linear_regions(g)
    assert not R._may_underflow(g, region)
    found = _only_bound(g)
    exact = np.linalg.norm(_jacobian(g), 2)
    assert exact <= found.value <= exact * (1 + 1e-11)
    # coefficients whose products reach the subnormal range are still refused
    tiny = [
        Node(name="fc1", op=O.Linear(weight=np.full((2, 2), 2.0**-500)), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=np.full((2, 2), 2.0**-500)), inputs=("a",), output="b"),
        Node(name="fc3", op=O.Linear(weight=np.full((2, 2), 1.0)), inputs=("x",), output="c"),
        Node(name="add", op=O.Add(), inputs=("b", "c"), output="y"),
    ]
    g = _graph(tiny, (1, 2))
    (region,) = find_linear_regions(g)
    assert R._may_underflow(g, region)


def test_a_region_too_large_through_a_selection_falls_back_to_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    ws = [rng.normal(size=(6, 6)) for _ in range(4)]
    g = _graph([
        Node(name="fc1", op=O.Linear(weight=ws[0]), inputs=("x",), output="a"),
        Node(name="fc2", op=O.Linear(weight=ws[1]), inputs=("a",), output="b"),
        Node(name="rev", op=O.Gather(axis=1, indices=np.arange(5, -1, -1)), inputs=("b",), output="c"),
        Node(name="fc3", op=O.Linear(weight=ws[2]), inputs=("c",), output="d"),
        Node(name="fc4", op=O.Linear(weight=ws[3]), inputs=("d",), output="y"),
    ], (1, 6))
    (whole,) = find_linear_regions(g)
    parts = find_linear_regions(g, selections=False)
    assert [(r.x, r.output) for r in parts] == [("x", "b"), ("c", "y")]
    ops = rule_bounds(g)
    assert set(R.region_bounds(g, ops)) == {"y"}
    # the whole too much work, its parts not: both parts are bounded, each by its own matrix
    monkeypatch.setattr(R, "WORK_BUDGET", 2.0 * 6 * max(R._work(g, r) for r in parts))
    assert R.region_bound(g, whole, ops) is None
    found = R.region_bounds(g, ops)
    assert set(found) == {"b", "y"}
    first = np.linalg.norm(ws[1] @ ws[0], 2)
    assert first <= found["b"].value <= first * (1 + 1e-12)
