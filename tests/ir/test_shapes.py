"""Static shapes by formula (``executor._formula_shape``) agree with the executor on the meta device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, _formula_shape, infer_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = ROOT.parent / "shared" / "models" / "external"
W = np.zeros


def _meta(op: O.Op, shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The executor's output shape on the meta device, None where it raises."""
    names = [f"in{i}" for i in range(len(shapes))]
    graph = Graph(inputs=tuple(TensorSpec(name=n, shape=s) for n, s in zip(names, shapes, strict=True)),
                  outputs=("out",), nodes=(Node(name="n", op=op, inputs=tuple(names), output="out"),))
    try:
        env = Executor(graph, dtype=torch.float32, device="meta").run(
            {n: torch.empty(s, device="meta") for n, s in zip(names, shapes, strict=True)}, keep=True)
    except Exception:
        return None
    return tuple(int(d) for d in env["out"].shape)


CASES = [
    (O.Relu(), [(2, 3, 5)]),
    (O.Clip(min=0.0, max=6.0), [(1, 7)]),
    (O.Add(), [(2, 1, 5), (3, 1)]),
    (O.Mul(), [(4,), (2, 3, 4)]),
    (O.Sub(), [(2, 3), (4, 3)]),  # does not broadcast
    (O.Affine(scale=W((3, 1, 1)), shift=W((3, 1, 1))), [(1, 3, 8, 8)]),
    (O.Affine(scale=W((4, 1, 1)), shift=None), [(1, 3, 8, 8)]),  # does not broadcast
    (O.Linear(weight=W((6, 5)), bias=W(6)), [(2, 7, 5)]),
    (O.Linear(weight=W((6, 5)), bias=None), [(2, 4)]),  # wrong width
    (O.Conv(weight=W((8, 3, 3, 3)), bias=W(8), strides=(2, 2), pads=(1, 1, 0, 2), dilations=(1, 1)), [(1, 3, 11, 9)]),
    (O.Conv(weight=W((8, 2, 3, 5)), strides=(1, 3), pads=(0, 0, 0, 0), dilations=(2, 1), groups=2), [(2, 4, 9, 17)]),
    (O.Conv(weight=W((6, 1, 3)), strides=(1,), pads=(1, 1), dilations=(1,), groups=6), [(1, 6, 10)]),  # depthwise 1-d
    (O.Conv(weight=W((8, 3, 5, 5)), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), [(1, 3, 4, 4)]),  # too small
    (O.Conv(weight=W((8, 3, 3, 3)), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), [(1, 4, 8, 8)]),  # channels
    (O.Conv(weight=W((4, 2, 3, 3, 3)), strides=(1, 2, 1), pads=(1, 0, 1, 1, 0, 1), dilations=(1, 1, 2)), [(1, 2, 5, 6, 7)]),
    (O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)), [(1, 4, 112, 111)]),
    (O.MaxPool(kernel=(2,), strides=(2,), pads=(0, 0), dilations=(1,)), [(3, 2, 9)]),
    (O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=True), [(1, 4, 8, 8)]),
    (O.AvgPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 1, 1), dilations=(1, 1)), [(1, 4, 7, 8)]),
    (O.AvgPool(kernel=(3,), strides=(1,), pads=(1, 1), dilations=(1,), count_include_pad=True), [(2, 3, 5)]),
    (O.AvgPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(2, 2)), [(1, 4, 8, 8)]),  # dilated
    (O.AvgPool(kernel=(5, 5), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), [(1, 4, 3, 3)]),  # too small
    (O.Pad(pads=(0, 0, 1, 2, 0, 0, 3, 0)), [(1, 2, 4, 5)]),
    (O.Pad(pads=(1, -1)), [(3, 4)]),  # a crop
    (O.Pad(pads=(0, -4)), [(3, 4)]),  # nothing left (a size-0 axis)
    (O.Pad(pads=(0, -5)), [(3, 4)]),  # beyond the size
    (O.Concat(axis=1), [(1, 2, 5), (1, 3, 5), (1, 1, 5)]),
    (O.Concat(axis=-1), [(2, 3), (2, 4)]),
    (O.Concat(axis=0), [(2, 3), (2, 4)]),  # other axes differ
    (O.GlobalAvgPool(), [(2, 5, 7, 3)]),
    (O.GlobalMaxPool(), [(2, 5, 7)]),
    (O.Softmax(axis=-1), [(2, 5)]),
    (O.Reshape(shape=(2, 15)), [(2, 3, 5)]),
    (O.Reshape(shape=(2, 16)), [(2, 3, 5)]),  # wrong size
    (O.Transpose(perm=(0, 2, 3, 1)), [(1, 3, 4, 5)]),
    (O.LayerNorm(axis=2, epsilon=1e-5), [(2, 3, 8)]),
    (O.Pow(exponent=2.0), [(2, 3)]),
    (O.ReduceMean(axes=(1,), keepdims=True), [(2, 3, 4)]),
    (O.ReduceSum(axes=(0, 2), keepdims=False), [(2, 3, 4)]),
    (O.ReduceMax(axes=(), keepdims=False), [(2, 3)]),
    (O.Slice(starts=(0, 1, 4), ends=(2, 3, -1), steps=(1, 1, -2)), [(2, 3, 5)]),
    (O.Slice(starts=(0, 0), ends=(2, 5), steps=(1, 3)), [(2, 7)]),
    (O.Gather(axis=1, indices=np.array([[0, 2], [1, 1]])), [(2, 3, 4)]),
    (O.Gather(axis=2, indices=np.array(3)), [(2, 3, 4)]),
    (O.Gather(axis=0, indices=np.array([0, 1, 2])), [(2, 3)]),  # beyond the axis
    (O.Tile(repeats=(1, 2, 3)), [(2, 3, 4)]),
    (O.Where(mask=np.ones((3, 1), dtype=bool), when_false=np.array(0.0)), [(2, 3, 4)]),
    (O.Where(test="greater", other=np.array(0.0), when_false=np.array(1.0)), [(3, 4), (1, 4)]),
    (O.Max(constant=np.zeros(4)), [(2, 4)]),
    (O.Min(), [(2, 1), (1, 3)]),
    (O.MatMul(), [(2, 1, 3, 4), (5, 4, 6)]),
    (O.MatMul(), [(3, 4), (5, 6)]),  # inner sizes differ
    (O.Resize(axes=(2, 3), in_sizes=(4, 4), sizes=(8, 6), scales=(2.0, 1.5)), [(1, 2, 4, 4)]),
    (O.PRelu(slope=W((3, 1, 1))), [(1, 3, 5, 5)]),
    (O.ConvTranspose(weight=W((4, 3, 3, 3)), bias=W(3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
                     output_padding=(1, 0)), [(1, 4, 5, 6)]),
    (O.ConvTranspose(weight=W((4, 2, 2, 3)), strides=(2, 1), pads=(0, 1, 1, 0), dilations=(1, 2), groups=2,
                     output_padding=(0, 1)), [(2, 4, 3, 4)]),
    (O.ConvTranspose(weight=W((4, 2, 5)), strides=(3,), pads=(2, 0), dilations=(1,), output_padding=(2,)), [(1, 4, 7)]),
]


@pytest.mark.parametrize(("op", "shapes"), CASES)
def test_formula_matches_the_meta_device_or_defers_to_it(op: O.Op, shapes: list[tuple[int, ...]]) -> None:
    formula = _formula_shape(op, shapes)
    meta = _meta(op, shapes)
    if formula is not None:
        assert formula == meta
    # where the meta device raises, the formula never claims a shape (the executor's error stands)
    if meta is None:
        assert formula is None
    # the ops of this list that the formulas cover
    if type(op) is not O.MaxPool or not op.ceil_mode:
        assert (formula is None) == (meta is None)


def test_infer_shapes_falls_back_to_the_meta_device_for_the_rest() -> None:
    nodes = [Node(name="a", op=O.Relu(), inputs=("x",), output="a"),
             Node(name="b", op=O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1),
                                         ceil_mode=True), inputs=("a",), output="b"),  # no formula
             Node(name="c", op=O.GlobalAvgPool(), inputs=("b",), output="c")]
    assert infer_shapes([("x", (1, 2, 3, 5))], nodes) == {"x": (1, 2, 3, 5), "a": (1, 2, 3, 5), "b": (1, 2, 2, 3),
                                                          "c": (1, 2, 1, 1)}


def _models() -> list[Path]:
    found = sorted((ROOT / "sample_models").glob("*.onnx"))
    if EXTERNAL.is_dir():
        found += sorted(EXTERNAL.rglob("*.onnx"))
    return found


@pytest.mark.parametrize("path", _models(), ids=lambda p: p.name)
def test_formulas_agree_with_the_meta_device_on_real_models(path: Path) -> None:
    from stabaudit.loaders import load_model

    graph = load_model(path).graph
    env = Executor(graph, dtype=torch.float32, device="meta").run(
        {s.name: torch.empty(s.shape, device="meta") for s in graph.inputs}, keep=True)
    meta = {k: tuple(int(d) for d in v.shape) for k, v in env.items()}
    covered = 0
    for node in graph.nodes:
        found = _formula_shape(node.op, [meta[i] for i in node.inputs])
        if found is not None:
            covered += 1
            assert found == meta[node.output], node.name
        assert graph.shapes[node.output] == meta[node.output]
    assert covered > 0
