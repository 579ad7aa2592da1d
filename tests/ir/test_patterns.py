"""Tests of stabaudit.ir.patterns: residual block detection on both loaders' graphs and hand-built ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import fold_affine
from stabaudit.ir.patterns import Shortcut, find_residual_blocks
from stabaudit.loaders import load_model

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
RNG = np.random.default_rng(0)


def _conv(name: str, src: str, c_in: int, c_out: int, stride: int = 1) -> Node:
    w = RNG.normal(size=(c_out, c_in, 3, 3))
    return Node(
        name=name,
        op=O.Conv(weight=w, strides=(stride, stride), pads=(1, 1, 1, 1), dilations=(1, 1)),
        inputs=(src,),
        output=name,
    )


def _graph(nodes: list[Node], shape: tuple[int, ...] = (1, 2, 4, 4), inputs: tuple[str, ...] = ("x",)) -> Graph:
    g = Graph(
        inputs=tuple(TensorSpec(name=n, shape=shape) for n in inputs),
        outputs=(nodes[-1].output,),
        nodes=tuple(nodes),
    )
    return with_shapes(g.validate())


@pytest.mark.parametrize(
    ("name", "adds"),
    [("resnet.onnx", ("/block1/Add", "/block2/Add")), ("resnet.pt", ("block1", "block2"))],
)
def test_sample_resnets_have_two_identity_blocks(name: str, adds: tuple[str, str]) -> None:
    # by hand from the graph: stem conv + relu, then twice relu(x + bn(conv(relu(bn(conv(x)))))),
    # pool, fc: two Adds, each with the identity shortcut and a conv-relu-conv branch (BN folded)
    graph = fold_affine(load_model(SAMPLES / name).graph)
    blocks = find_residual_blocks(graph)
    assert tuple(b.name for b in blocks) == adds
    for b in blocks:
        assert b.shortcut is Shortcut.IDENTITY
        assert b.h == 1.0 and b.scale is None and b.projection is None
        assert [n.op.type for n in b.branch] == [O.OpType.CONV, O.OpType.RELU, O.OpType.CONV]
    # the second block's input is the first block's output after its ReLU
    producers = graph.producers()
    assert producers[blocks[1].x].inputs == (blocks[0].add.output,)


def test_projection_shortcut_with_stride() -> None:
    nodes = [
        _conv("a", "x", 2, 4, stride=2),
        Node(name="r", op=O.Relu(), inputs=("a",), output="r"),
        _conv("b", "r", 4, 4),
        _conv("p", "x", 2, 4, stride=2),
        Node(name="add", op=O.Add(), inputs=("p", "b"), output="add"),
    ]
    (block,) = find_residual_blocks(_graph(nodes))
    assert block.shortcut is Shortcut.PROJECTION
    assert block.projection is not None and block.projection.name == "p"
    assert block.x == "x" and [n.name for n in block.branch] == ["a", "r", "b"]


def test_scale_at_the_end_of_the_branch() -> None:
    scale = np.array([0.5, -2.0]).reshape(1, 2, 1, 1)
    nodes = [
        _conv("a", "x", 2, 2),
        Node(name="r", op=O.Relu(), inputs=("a",), output="r"),
        Node(name="ls", op=O.Affine(scale=scale), inputs=("r",), output="ls"),
        Node(name="add", op=O.Add(), inputs=("ls", "x"), output="add"),
    ]
    (block,) = find_residual_blocks(_graph(nodes))
    assert block.shortcut is Shortcut.IDENTITY and block.x == "x"
    assert block.scale is not None and block.scale.name == "ls"
    assert block.h == 2.0
    assert [n.name for n in block.inner] == ["a", "r"] and block.inner_output == "r"


def test_a_lone_multiplication_is_the_branch_itself() -> None:
    nodes = [
        Node(name="m", op=O.Affine(scale=np.array(-0.5)), inputs=("x",), output="m"),
        Node(name="add", op=O.Add(), inputs=("x", "m"), output="add"),
    ]
    (block,) = find_residual_blocks(_graph(nodes))
    assert block.scale is None and block.h == 1.0 and [n.name for n in block.branch] == ["m"]


def test_adds_that_are_no_residual_block() -> None:
    # two independent inputs; a branch that also reads another input; x + x
    two = [
        _conv("a", "x", 2, 2),
        _conv("b", "y", 2, 2),
        Node(name="add", op=O.Add(), inputs=("a", "b"), output="add"),
    ]
    assert find_residual_blocks(_graph(two, inputs=("x", "y"))) == ()
    mixed = [
        _conv("a", "x", 2, 2),
        Node(name="s", op=O.Add(), inputs=("a", "y"), output="s"),
        Node(name="add", op=O.Add(), inputs=("x", "s"), output="add"),
    ]
    blocks = find_residual_blocks(_graph(mixed, inputs=("x", "y")))
    # "s" = conv(x) + y: y does not depend on x, so conv is no projection shortcut of a branch;
    # "add" = x + s: the branch s also reads y, so it is no function f(x)
    assert blocks == ()
    same = [Node(name="add", op=O.Add(), inputs=("x", "x"), output="add")]
    assert find_residual_blocks(_graph(same)) == ()
