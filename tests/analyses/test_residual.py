"""Tests of stabaudit.analyses.residual: known answers of linear blocks, soundness on the sample ResNets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from stabaudit.analyses.composition import rule_bounds
from stabaudit.analyses.residual import _block_graph, analyse_residual
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.passes import fold_affine
from stabaudit.loaders import load_model

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def linear_block(path: Path, a: float, h: float | None = None, n: int = 4) -> Path:
    """ONNX y = x + h * Mul(x, -a) (no h: y = x + Mul(x, -a)) over x of shape [1, n]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    inits = [numpy_helper.from_array(np.array(-a, dtype=np.float32), "neg_a")]
    nodes = [helper.make_node("Mul", ["x", "neg_a"], ["fx"], name="mul_a")]
    last = "fx"
    if h is not None:
        inits.append(numpy_helper.from_array(np.array(h, dtype=np.float32), "h"))
        nodes.append(helper.make_node("Mul", ["fx", "h"], ["hfx"], name="scale"))
        last = "hfx"
    nodes.append(helper.make_node("Add", ["x", last], ["y"], name="block"))
    graph = helper.make_graph(nodes, "linear_block", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _analyse(path: Path, samples: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    graph = fold_affine(load_model(path).graph)
    return graph, analyse_residual(graph, rule_bounds(graph), samples, seed=0)


def test_linear_block_known_answers(tmp_path: Path) -> None:
    a = 0.625  # exact in float32
    path = linear_block(tmp_path / "lin.onnx", a)
    samples = np.random.default_rng(0).normal(size=(3, 1, 4))
    for s in (samples, None):  # without samples: the affine branch is analysed at x = 0
        _, result = _analyse(path, s)
        (b,) = result.blocks
        assert b.match.name == "block" and b.h == 1.0
        assert b.mu == pytest.approx(-a, abs=1e-12)
        assert b.jacobian_norm == pytest.approx(a, abs=1e-12)
        assert b.h_star == pytest.approx(2.0 / a, abs=1e-9)
        assert a <= b.lip_f_upper <= a * (1 + 1e-9)
        assert b.lip_f_lower is not None and a * (1 - 1e-9) <= b.lip_f_lower <= a
        assert b.cfl == pytest.approx(a) and b.growth_upper == pytest.approx(1 + a)
        # the block is (1 - a) I: its Lipschitz constant is 1 - a, bracketed by the bounds
        assert b.growth_lower is not None and b.growth_lower <= 1 - a + 1e-12
        assert b.growth_lower == pytest.approx(1 - a, rel=1e-9)
        assert b.certified
    assert result.samples == 0


def test_explicit_scale_is_h(tmp_path: Path) -> None:
    a, h = 0.625, 3.0
    _, result = _analyse(linear_block(tmp_path / "lin.onnx", a, h), np.ones((2, 1, 4)))
    (b,) = result.blocks
    assert b.h == h and b.match.scale is not None and b.match.scale.name == "scale"
    assert b.mu == pytest.approx(-a, abs=1e-12)  # J_f of f, not of h*f
    assert b.h_star == pytest.approx(2.0 / a, abs=1e-9)
    assert b.cfl == pytest.approx(h * a, rel=1e-12)
    assert b.lip_f_lower == pytest.approx(a, rel=1e-9)
    assert any("explicit scale" in note for note in b.notes)


def test_vector_layer_scale() -> None:
    scale = np.array([0.5, -3.0, 1.0])
    w = np.diag([2.0, 1.0, -1.0])
    nodes = (
        Node(name="lin", op=O.Linear(weight=w), inputs=("x",), output="lin"),
        Node(name="tanh", op=O.Tanh(), inputs=("lin",), output="tanh"),
        Node(name="ls", op=O.Affine(scale=scale), inputs=("tanh",), output="ls"),
        Node(name="add", op=O.Add(), inputs=("x", "ls"), output="add"),
    )
    graph = with_shapes(
        Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("add",), nodes=nodes).validate()
    )
    (b,) = analyse_residual(graph, rule_bounds(graph)).blocks
    assert b.h == 3.0
    assert b.lip_f_upper == pytest.approx(2.0, rel=1e-9)  # Lip(tanh o lin) = ||W|| = 2
    assert b.mu is None  # no samples and a non-affine branch
    assert any("layer) scale" in note and "Lip f <= Lip g" in note for note in b.notes)


def test_projection_block() -> None:
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 2))
    nodes = (
        Node(name="f1", op=O.Linear(weight=rng.normal(size=(3, 2))), inputs=("x",), output="f1"),
        Node(name="relu", op=O.Relu(), inputs=("f1",), output="relu"),
        Node(name="p", op=O.Linear(weight=p), inputs=("x",), output="p"),
        Node(name="add", op=O.Add(), inputs=("relu", "p"), output="add"),
    )
    graph = with_shapes(
        Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("add",), nodes=nodes).validate()
    )
    (b,) = analyse_residual(graph, rule_bounds(graph), rng.normal(size=(4, 1, 2))).blocks
    assert b.match.shortcut.value == "projection"
    assert b.shortcut_norm == pytest.approx(np.linalg.norm(p, 2), rel=1e-6)
    assert b.growth_upper >= b.shortcut_norm + b.lip_f_upper
    assert b.mu is None and b.h_star is None and b.jacobian_norm is not None
    assert any("projection shortcut" in note for note in b.notes)


@pytest.mark.parametrize("name", ["resnet.onnx", "resnet.pt"])
def test_sample_resnet_bounds_are_sound(name: str) -> None:
    samples = np.load(SAMPLES / "digits_samples.npz")["x_image"][:2]
    graph, result = _analyse(SAMPLES / name, samples)
    assert len(result.blocks) == 2 and result.samples == 2
    rng = np.random.default_rng(0)
    for b in result.blocks:
        assert b.certified and b.lip_f_lower is not None and b.growth_lower is not None
        assert b.lip_f_lower <= b.lip_f_upper and b.growth_lower <= b.growth_upper
        assert b.cfl == pytest.approx(b.h * b.lip_f_upper)
        assert b.mu is not None and b.mu <= b.jacobian_norm * (1 + 1e-9)
        # soundness: sampled difference quotients of the block never exceed its growth bound
        block = _block_graph(graph, b.match)
        f = torch.func.vmap(Executor(block, dtype=torch.float64).flat())
        n = int(np.prod(graph.shapes[b.match.x]))
        x = torch.from_numpy(rng.normal(size=(256, n)))
        for step in (1e-3, 1.0):
            y = x + step * torch.from_numpy(rng.normal(size=(256, n)))
            with torch.no_grad():
                q = ((f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1)).max().item()
            assert q <= b.growth_upper


def test_branch_search_is_witnessed_and_below_the_upper_bound() -> None:
    from stabaudit.analyses.residual import branch_graph, branch_lower

    graph = fold_affine(load_model(SAMPLES / "resnet.onnx").graph)
    bounds = rule_bounds(graph)
    _, without = _analyse(SAMPLES / "resnet.onnx")
    result = analyse_residual(graph, bounds, None, seed=0, lower_budget_s=0.05)
    for plain_block, b in zip(without.blocks, result.blocks, strict=True):
        assert plain_block.lip_f_lower is None  # no samples, no search: no lower bound
        assert b.witness is not None and b.lip_f_lower is not None and 0.0 < b.lip_f_lower <= b.lip_f_upper
        branch = branch_graph(graph, b.match)
        x, y = np.asarray(b.witness.x), np.asarray(b.witness.y)
        f = Executor(branch, dtype=torch.float64).flat()
        with torch.no_grad():
            q = float((f(torch.from_numpy(y)) - f(torch.from_numpy(x))).norm() / np.linalg.norm(y - x))
        assert b.h * b.lip_f_lower <= b.witness.value <= q
        # the same search inside a box of branch inputs keeps its pair in the box
        lo, hi = x - 0.5, x + 0.5
        boxed = branch_lower(graph, b.match, bounds, seed=0, budget_s=0.05, boxes=[(lo, hi)])
        bx, by = np.asarray(boxed.x), np.asarray(boxed.y)
        assert boxed.value > 0.0 and np.all((lo <= bx) & (bx <= hi) & (lo <= by) & (by <= hi))


def test_fold_slack_of_a_merged_map() -> None:
    # a branch node standing for A with ||A - W|| <= e: the quotient of W loses S * e * 2||u|| per point
    from stabaudit.analyses.residual import BranchLower, _fold_slack, _with_fold

    w = np.array([[3.0, 0.0], [0.0, 1.0]])
    e = 1e-3
    nodes = (
        Node(name="fc", op=O.Linear(weight=w, error=e), inputs=("x",), output="f"),
        Node(name="add", op=O.Add(), inputs=("x", "f"), output="y"),
    )
    graph = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("y",), nodes=nodes).validate())
    bounds = rule_bounds(graph)
    branch = Graph(inputs=(TensorSpec(name="x", shape=(1, 2)),), outputs=("f",), nodes=nodes[:1],
                   shapes=dict(graph.shapes))
    x, y = np.array([1.0, 0.0]), np.array([1.5, 0.0])
    slack = _fold_slack(branch, bounds, x, y)
    assert slack == pytest.approx(2 * e * (1.0 + 1.5), rel=1e-9) and slack >= 2 * e * 2.5
    found = _with_fold(branch, bounds, BranchLower(value=3.0, x=tuple(x), y=tuple(y), method="m"))
    assert 3.0 - slack / 0.5 * (1 + 1e-9) <= found.value < 3.0 - slack / 0.5 * (1 - 1e-9)
