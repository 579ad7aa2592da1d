"""Tests of stabaudit.analyses.composition: composing operator bounds along a graph."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabaudit.analyses.composition import Composition, compose
from stabaudit.bounds.base import Bound, Combine, Guarantee, OpBound
from stabaudit.errors import InternalError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec

REL = 1e-12  # the outward rounding adds a few ulps at most


def _ub(value: float, guarantee: Guarantee = Guarantee.UPPER, **kw: object) -> OpBound:
    return OpBound(upper=Bound(value=value, guarantee=guarantee, method="test"), **kw)  # type: ignore[arg-type]


def _lin(name: str, src: str, out: str) -> Node:
    return Node(name=name, op=O.Linear(weight=np.eye(2)), inputs=(src,), output=out)


def _relu(name: str, src: str, out: str) -> Node:
    return Node(name=name, op=O.Relu(), inputs=(src,), output=out)


def _graph(nodes: list[Node], outputs: tuple[str, ...], inputs: tuple[str, ...] = ("x",)) -> Graph:
    return Graph(
        inputs=tuple(TensorSpec(name=n, shape=(1, 2)) for n in inputs),
        outputs=outputs,
        nodes=tuple(nodes),
    ).validate()


def _close(value: float, exact: float) -> None:
    assert value >= exact  # rounded upward: never below the exact real value
    assert value <= exact * (1 + REL)


def test_chain_is_the_product_and_profile_runs_along_depth() -> None:
    g = _graph(
        [
            _lin("fc1", "x", "a"),
            _relu("r1", "a", "b"),
            _lin("fc2", "b", "c"),
            _lin("fc3", "c", "y"),
        ],
        ("y",),
    )
    bounds = {"a": _ub(3.0), "b": _ub(1.0), "c": _ub(0.5), "y": _ub(7.0)}
    comp = compose(g, bounds)
    assert isinstance(comp, Composition)
    _close(comp.upper.value, 3.0 * 0.5 * 7.0)
    assert comp.upper.guarantee is Guarantee.UPPER and comp.upper.certified
    assert comp.method == "product" and comp.upper.method == "product"
    assert [name for name, _ in comp.profile] == ["fc1", "r1", "fc2", "fc3"]
    for (_, got), exact in zip(comp.profile, [3.0, 3.0, 1.5, 10.5], strict=True):
        _close(got, exact)
    assert comp.per_value["x"] == 1.0
    _close(comp.per_value["c"], 1.5)
    assert comp.seconds >= 0.0


def test_rounding_is_outward() -> None:
    # products of 0.1 round to nearest, sometimes below the exact product of the stored values
    values = [0.1] * 10 + [3.0]
    nodes = []
    src = "x"
    for i, _ in enumerate(values):
        nodes.append(_lin(f"l{i}", src, f"v{i}"))
        src = f"v{i}"
    g = _graph(nodes, (src,))
    comp = compose(g, {f"v{i}": _ub(v) for i, v in enumerate(values)})
    from fractions import Fraction

    exact = Fraction(3)
    for v in values[:-1]:
        exact *= Fraction(v)  # the exact product of the stored float64 values
    assert Fraction(comp.upper.value) >= exact
    assert comp.upper.value <= float(exact) * (1 + 1e-13)


def test_residual_block_is_one_plus_branch() -> None:
    # y = x + f(x), f = fc2 o relu o fc1 with Lip(f) <= 2 * 1.5
    g = _graph(
        [
            _lin("fc1", "x", "a"),
            _relu("r", "a", "b"),
            _lin("fc2", "b", "f"),
            Node(name="res", op=O.Add(), inputs=("x", "f"), output="y"),
        ],
        ("y",),
    )
    bounds = {
        "a": _ub(2.0),
        "b": _ub(1.0),
        "f": _ub(1.5),
        "y": _ub(math.sqrt(2.0), combine=Combine.SUM, input_gains=(1.0, 1.0)),
    }
    comp = compose(g, bounds)
    _close(comp.upper.value, 1.0 + 3.0)


def test_branches_summed_at_add_with_gains() -> None:
    # y = 2 * g1(x) - 0.5 * g2(x) as a Sub with gains (2, 0.5)
    g = _graph(
        [
            _lin("g1", "x", "a"),
            _lin("g2", "x", "b"),
            Node(name="sub", op=O.Sub(), inputs=("a", "b"), output="y"),
        ],
        ("y",),
    )
    bounds = {
        "a": _ub(3.0),
        "b": _ub(4.0),
        "y": _ub(1.0, combine=Combine.SUM, input_gains=(2.0, -0.5)),
    }
    _close(compose(g, bounds).upper.value, 2.0 * 3.0 + 0.5 * 4.0)


def test_region_bounds_replace_the_composed_value_when_smaller() -> None:
    # x -> relu -> (g1 - g2) -> relu: the region r -> y bounded as a whole by 0.5, which then
    # multiplies L(r); an estimate upstream of the region's input keeps it unused
    g = _graph(
        [
            _relu("r0", "x", "r"),
            _lin("g1", "r", "a"),
            _lin("g2", "r", "b"),
            Node(name="sub", op=O.Sub(), inputs=("a", "b"), output="c"),
            _relu("r1", "c", "y"),
        ],
        ("y",),
    )
    bounds = {
        "r": _ub(2.0),
        "a": _ub(3.0),
        "b": _ub(4.0),
        "c": _ub(1.0, combine=Combine.SUM, input_gains=(1.0, 1.0)),
        "y": _ub(1.0),
    }
    _close(compose(g, bounds).upper.value, 2.0 * 7.0)
    comp = compose(g, bounds, region_bounds={"c": ("r", 0.5)})
    _close(comp.upper.value, 2.0 * 0.5)
    _close(comp.per_value["c"], 1.0)
    assert [name for name, _ in comp.profile] == ["r0", "g1", "g2", "sub", "r1"]
    # a looser whole bound changes nothing
    _close(compose(g, bounds, region_bounds={"c": ("r", 9.0)}).upper.value, 14.0)
    # both kinds of whole bounds on one value: the smaller product wins
    both = compose(g, bounds, {"c": ("r", 3.0)}, {"c": ("r", 0.5)})
    _close(both.upper.value, 1.0)
    estimated = dict(bounds, r=_ub(2.0, Guarantee.ESTIMATE))
    _close(compose(g, estimated, region_bounds={"c": ("r", 0.5)}).upper.value, 14.0)


def test_concat_is_root_sum_of_squares() -> None:
    g = _graph(
        [
            _lin("g1", "x", "a"),
            _lin("g2", "x", "b"),
            Node(name="cat", op=O.Concat(axis=1), inputs=("a", "b"), output="y"),
        ],
        ("y",),
    )
    bounds = {"a": _ub(3.0), "b": _ub(4.0), "y": _ub(1.0, combine=Combine.STACK)}
    _close(compose(g, bounds).upper.value, 5.0)


def test_several_outputs_and_inputs_are_stacked() -> None:
    g = _graph(
        [
            _lin("g1", "x1", "a"),
            _lin("g2", "x2", "b"),
            Node(name="add", op=O.Add(), inputs=("a", "b"), output="c"),
        ],
        ("a", "c"),
        inputs=("x1", "x2"),
    )
    bounds = {"a": _ub(3.0), "b": _ub(4.0), "c": _ub(math.sqrt(2), combine=Combine.SUM)}
    comp = compose(g, bounds)
    _close(comp.per_value["c"], 7.0)
    _close(comp.upper.value, math.sqrt(3.0**2 + 7.0**2))


def test_estimate_anywhere_on_the_path_makes_the_result_an_estimate() -> None:
    g = _graph(
        [
            _lin("g1", "x", "a"),
            _lin("g2", "x", "b"),
            Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
        ],
        ("y",),
    )
    bounds = {
        "a": _ub(3.0),
        "b": _ub(4.0, Guarantee.ESTIMATE),
        "y": _ub(math.sqrt(2), combine=Combine.SUM),
    }
    comp = compose(g, bounds)
    assert comp.upper.guarantee is Guarantee.ESTIMATE and not comp.upper.certified
    assert comp.estimated == frozenset({"b", "y"})
    _close(comp.upper.value, 7.0)


def test_estimate_off_the_path_does_not_matter() -> None:
    g = _graph([_lin("g1", "x", "a"), _lin("dead", "x", "unused")], ("a",))
    comp = compose(g, {"a": _ub(2.0)})  # no bound needed for the unused node
    assert comp.upper.guarantee is Guarantee.UPPER
    assert [name for name, _ in comp.profile] == ["g1"]


def test_inf_stays_inf_and_nan_becomes_inf_estimate() -> None:
    g = _graph([_lin("g1", "x", "a"), _lin("g2", "a", "y")], ("y",))
    comp = compose(g, {"a": _ub(math.inf), "y": _ub(2.0)})
    assert comp.upper.value == math.inf and comp.upper.guarantee is Guarantee.UPPER
    comp = compose(g, {"a": _ub(math.nan), "y": _ub(2.0)})
    assert comp.upper.value == math.inf and comp.upper.guarantee is Guarantee.ESTIMATE


def test_constant_map_stops_infinite_growth() -> None:
    # a zero operator after an unbounded one: its output is constant, so L = 0 (not NaN)
    g = _graph([_lin("g1", "x", "a"), _lin("zero", "a", "y")], ("y",))
    comp = compose(g, {"a": _ub(math.inf), "y": _ub(0.0)})
    assert comp.upper.value == 0.0


def test_missing_bound_and_bad_gains_are_internal_errors() -> None:
    g = _graph(
        [
            _lin("g1", "x", "a"),
            _lin("g2", "x", "b"),
            Node(name="add", op=O.Add(), inputs=("a", "b"), output="y"),
        ],
        ("y",),
    )
    with pytest.raises(InternalError, match="g2"):
        compose(g, {"a": _ub(1.0), "y": _ub(1.0, combine=Combine.SUM)})
    with pytest.raises(InternalError, match="add"):
        compose(
            g,
            {"a": _ub(1.0), "b": _ub(1.0), "y": _ub(1.0, combine=Combine.SUM, input_gains=(1.0,))},
        )
    with pytest.raises(InternalError, match="g1"):
        compose(g, {"a": _ub(-1.0), "b": _ub(1.0), "y": _ub(1.0, combine=Combine.SUM)})


def test_graph_output_that_is_an_input() -> None:
    g = _graph([_lin("g1", "x", "a")], ("x", "a"))
    _close(compose(g, {"a": _ub(0.0)}).upper.value, 1.0)


def _rule_graph() -> Graph:
    from stabaudit.ir.executor import with_shapes

    rng = np.random.default_rng(0)
    conv = O.Conv(
        weight=rng.normal(size=(3, 2, 3, 3)), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)
    )
    pool = O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1))
    nodes = [
        Node(name="conv", op=conv, inputs=("x",), output="c"),
        Node(
            name="bn",
            op=O.Affine(scale=rng.uniform(0.5, 2, size=(3, 1, 1))),
            inputs=("c",),
            output="cb",
        ),
        Node(name="relu", op=O.Relu(), inputs=("cb",), output="r"),
        Node(name="pool", op=pool, inputs=("r",), output="p"),
        Node(name="flat", op=O.Reshape(shape=(1, 12)), inputs=("p",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(12, 12))), inputs=("f",), output="h"),
        Node(name="res", op=O.Add(), inputs=("f", "h"), output="s"),
        Node(name="cat", op=O.Concat(axis=1), inputs=("s", "f"), output="y"),
    ]
    g = Graph(
        inputs=(TensorSpec(name="x", shape=(1, 2, 4, 4)),), outputs=("y",), nodes=tuple(nodes)
    )
    return with_shapes(g.validate())


def test_with_the_registered_rules_the_bound_brackets_the_lower_bound() -> None:
    import torch

    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.analyses.lower import lower_bound

    g = _rule_graph()
    comp = compose(g, rule_bounds(g))
    assert comp.upper.guarantee is Guarantee.UPPER
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small model on a shared machine: one thread is faster
    try:
        lower = lower_bound(g, seed=0, starts=8, steps=8, budget_s=2.0)
    finally:
        torch.set_num_threads(threads)
    assert 0.0 < lower.value <= comp.upper.value
    assert [name for name, _ in comp.profile] == [n.name for n in g.nodes]


def test_with_the_registered_rules_a_linear_chain_is_the_product_of_norms() -> None:
    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.ir.executor import with_shapes

    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(5, 4)), rng.normal(size=(3, 5))]
    g = _graph(
        [
            Node(name="fc1", op=O.Linear(weight=ws[0]), inputs=("x",), output="a"),
            Node(name="fc2", op=O.Linear(weight=ws[1]), inputs=("a",), output="y"),
        ],
        ("y",),
    )
    g = with_shapes(
        Graph(inputs=(TensorSpec(name="x", shape=(1, 4)),), outputs=g.outputs, nodes=g.nodes)
    )
    comp = compose(g, rule_bounds(g))
    product = math.prod(float(np.linalg.svd(w, compute_uv=False)[0]) for w in ws)
    assert product <= comp.upper.value <= product * (1 + 1e-6)


def test_output_sensitivities_reverse_sweep() -> None:
    from stabaudit.analyses.composition import output_sensitivities

    # y = x + fc2(relu(fc1(x))), z = 3 * y; outputs (z, y) stacked
    g = _graph(
        [
            _lin("fc1", "x", "a"),
            _relu("r", "a", "b"),
            _lin("fc2", "b", "f"),
            Node(name="res", op=O.Add(), inputs=("x", "f"), output="y"),
            _lin("triple", "y", "z"),
        ],
        ("z", "y"),
    )
    bounds = {
        "a": _ub(2.0),
        "b": _ub(1.0),
        "f": _ub(1.5),
        "y": _ub(math.sqrt(2.0), combine=Combine.SUM, input_gains=(1.0, 1.0)),
        "z": _ub(3.0),
    }
    s = output_sensitivities(g, bounds)
    _close(s["z"], 1.0)
    _close(s["y"], 1.0 + 3.0)  # its own output plus through z
    _close(s["f"], 4.0)
    _close(s["a"], 4.0 * 1.5)
    _close(s["x"], 4.0 + 4.0 * 1.5 * 2.0)  # the skip path plus the branch
    bounds["b"] = _ub(1.0, Guarantee.ESTIMATE)
    s = output_sensitivities(g, bounds)
    assert s["a"] == math.inf and s["x"] == math.inf
    _close(s["f"], 4.0)


# ---- the additive term of branch switches --------------------------------------------------------
def test_additive_term_is_twice_jump_times_downstream_sensitivity() -> None:
    from stabaudit.analyses.composition import additive_term

    # x -> fc1 -> sp1 (jump 0.3) -> fc2 -> sp2 (jump 0.05) -> y, plus a skip y2 = x + sp1's value
    g = _graph(
        [
            _lin("fc1", "x", "a"),
            Node(name="sp1", op=O.Softplus(beta=1.0, threshold=5.0), inputs=("a",), output="b"),
            _lin("fc2", "b", "c"),
            Node(name="sp2", op=O.Softplus(beta=1.0, threshold=5.0), inputs=("c",), output="d"),
            Node(name="res", op=O.Add(), inputs=("d", "b"), output="y"),
        ],
        ("y",),
    )
    bounds = {
        "a": _ub(2.0),
        "b": _ub(1.0, jump=0.3),
        "c": _ub(0.5),
        "d": _ub(1.0, jump=0.05),
        "y": _ub(1.0, combine=Combine.SUM, input_gains=(1.0, 1.0)),
    }
    add = additive_term(g, bounds)
    # S(d) = 1, S(b) = 1 (skip) + 0.5 * 1 (through fc2, sp2): delta = 2 (1.5 * 0.3 + 1 * 0.05)
    _close(add.value, 2 * (1.5 * 0.3 + 0.05))
    assert add.certified and add.sources == ("sp1", "sp2")


def test_additive_term_is_zero_without_a_jump_and_unbounded_after_an_estimate() -> None:
    from stabaudit.analyses.composition import additive_term

    g = _graph([_lin("fc1", "x", "a"), _relu("r", "a", "b"), _lin("fc2", "b", "y")], ("y",))
    plain = additive_term(g, {"a": _ub(2.0), "b": _ub(1.0), "y": _ub(3.0)})
    assert plain.value == 0.0 and plain.certified and plain.sources == ()
    # a jump whose downstream rests on an estimate: no certified additive term
    est = additive_term(g, {"a": _ub(2.0), "b": _ub(1.0, jump=0.1), "y": _ub(3.0, Guarantee.ESTIMATE)})
    assert est.value == math.inf and not est.certified and est.sources == ("r",)
