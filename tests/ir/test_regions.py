"""Linear regions: maximal single-input subgraphs of affine nodes, fan-out and re-joining included."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.regions import find_linear_regions


def _graph(nodes: list[Node], outputs: tuple[str, ...] = ("y",), n: int = 4) -> Graph:
    return Graph(inputs=(TensorSpec(name="x", shape=(1, n)),), outputs=outputs, nodes=tuple(nodes)).validate()


def _lin(name: str, src: str, out: str, n: int = 4) -> Node:
    return Node(name=name, op=O.Linear(weight=np.eye(n)), inputs=(src,), output=out)


def _names(region) -> list[str]:
    return [n.name for n in region.nodes]


def test_sum_of_copies_minus_x_is_one_region() -> None:
    g = _graph([
        Node(name="s1", op=O.Add(), inputs=("x", "x"), output="a"),
        Node(name="s2", op=O.Add(), inputs=("a", "x"), output="b"),
        Node(name="sub", op=O.Sub(), inputs=("b", "x"), output="y"),
    ])
    (region,) = find_linear_regions(g)
    assert (region.x, region.output, _names(region)) == ("x", "y", ["s1", "s2", "sub"])
    assert region.scaling_nodes == 3


def test_two_branches_rejoined_and_a_reshape_in_between() -> None:
    g = _graph([
        _lin("fc1", "x", "a"),
        Node(name="flat", op=O.Reshape(shape=(1, 4)), inputs=("a",), output="a2"),
        _lin("fc2", "x", "b"),
        Node(name="add", op=O.Add(), inputs=("a2", "b"), output="c"),
        Node(name="relu", op=O.Relu(), inputs=("c",), output="y"),
    ])
    (region,) = find_linear_regions(g)
    assert (region.x, region.output) == ("x", "c")
    assert _names(region) == ["fc1", "flat", "fc2", "add"]
    assert region.scaling_nodes == 3  # the reshape moves entries only


def test_nonlinear_nodes_start_new_roots_and_mixed_sums_are_roots() -> None:
    # y = W3 W2 (relu(W1 x) + W1 x): the Add reads two roots (x via fc1, and relu's output), so
    # it is a root itself; fc2 -> fc3 after it form a region rooted at the Add
    g = _graph([
        _lin("fc1", "x", "a"),
        Node(name="relu", op=O.Relu(), inputs=("a",), output="r"),
        Node(name="add", op=O.Add(), inputs=("r", "a"), output="s"),
        _lin("fc2", "s", "t"),
        _lin("fc3", "t", "y"),
    ])
    regions = find_linear_regions(g)
    assert [(r.x, r.output, _names(r)) for r in regions] == [("s", "y", ["fc2", "fc3"])]
    # with min_scaling=1 the single-node region x -> a (read by relu and the Add) is found too
    loose = find_linear_regions(g, min_scaling=1)
    assert [(r.x, r.output) for r in loose] == [("x", "a"), ("s", "y")]


def test_a_value_read_outside_the_region_is_a_region_output_too() -> None:
    g = _graph([
        _lin("fc1", "x", "a"),
        _lin("fc2", "a", "b"),
        Node(name="relu", op=O.Relu(), inputs=("b",), output="r"),
        _lin("fc3", "b", "c"),
        Node(name="add", op=O.Add(), inputs=("c", "r"), output="y"),
    ])
    regions = find_linear_regions(g)
    # b is read by relu (outside): maximal; c is read by the Add, which mixes roots: maximal
    assert [(r.x, r.output, _names(r)) for r in regions] == [
        ("x", "b", ["fc1", "fc2"]),
        ("x", "c", ["fc1", "fc2", "fc3"]),
    ]


def test_graph_outputs_and_unused_nodes() -> None:
    g = _graph(
        [
            _lin("fc1", "x", "a"),
            _lin("fc2", "a", "b"),
            _lin("fc3", "b", "y"),
            _lin("dead", "b", "unused"),  # no output depends on it: ignored
        ],
        outputs=("b", "y"),
    )
    regions = find_linear_regions(g)
    assert [(r.output, _names(r)) for r in regions] == [("b", ["fc1", "fc2"]), ("y", ["fc1", "fc2", "fc3"])]


def test_structural_only_chains_and_single_maps_are_left_to_the_composition() -> None:
    g = _graph([
        Node(name="flat", op=O.Reshape(shape=(4, 1)), inputs=("x",), output="a"),
        Node(name="tr", op=O.Transpose(perm=(1, 0)), inputs=("a",), output="b"),
        _lin("fc", "b", "y"),
    ])
    assert find_linear_regions(g) == ()
    assert [r.output for r in find_linear_regions(g, min_scaling=1)] == ["y"]
