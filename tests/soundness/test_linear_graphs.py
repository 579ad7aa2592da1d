"""Exactness of linear graphs: through the full engine, linear regions get their exact operator norm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, save

from stabaudit.analyses import linear_regions
from stabaudit.analyses.composition import rule_bounds
from stabaudit.api import audit
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.regions import find_linear_regions


def _model(path: Path, nodes: list, inits: dict[str, np.ndarray], in_shape: list[int], out_shape: list[int]) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def _f64(a: np.ndarray) -> np.ndarray:
    """The stored (float32) weights, exactly, in float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _upper(path: Path, **options: object) -> tuple[float, object]:
    report = audit(path, budget=0.5, **options)
    assert report.lipschitz.certified and report.lipschitz.upper is not None
    return float(report.lipschitz.upper), report


def test_sum_of_three_copies_minus_x_is_two(tmp_path: Path) -> None:
    path = _model(
        tmp_path / "sum.onnx",
        [helper.make_node("Sum", ["x", "x", "x"], ["s"]), helper.make_node("Sub", ["s", "x"], ["y"])],
        {}, [1, 6], [1, 6],
    )
    upper, report = _upper(path)
    assert 2.0 <= upper <= 2.0 + 1e-9  # composition alone: 1 + 1 + 1 + 1 = 4
    assert report.lipschitz.lower is not None and report.lipschitz.lower <= 2.0
    # the per-layer list still shows each operator on its own (the Sum as two Adds, the Sub)
    assert [(layer.op, layer.lipschitz.method) for layer in report.layers] == [
        ("Add", "composed at graph level")
    ] * 2 + [("Sub", "composed at graph level")]
    (product,) = [m for m in report.lipschitz.methods if m.method == "product"]
    assert any("linear region(s) bounded as a whole" in note for note in product.notes)


@pytest.mark.parametrize("kind", ["identity", "matmul", "gemm", "affine"])
def test_scaled_copies_of_a_linear_branch_are_exact(tmp_path: Path, kind: str) -> None:
    """(a + a) * 3 - (-x) * 2 with a = x, x W, Gemm(x) + b or x * c + b: the map 6 A + 2 I."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 6)).astype(np.float32)
    inits: dict[str, np.ndarray] = {"three": np.array(3.0), "two": np.array(2.0)}
    match kind:
        case "identity":
            first, a_mat = [helper.make_node("Identity", ["x"], ["a"])], np.eye(6)
        case "matmul":
            first, a_mat = [helper.make_node("MatMul", ["x", "w"], ["a"])], _f64(w).T
            inits["w"] = w
        case "gemm":
            first, a_mat = [helper.make_node("Gemm", ["x", "w", "b"], ["a"], transB=1)], _f64(w)
            inits |= {"w": w, "b": rng.normal(size=6)}
        case _:
            c = rng.normal(size=(1, 6)).astype(np.float32)
            first = [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"])]
            inits |= {"c": c, "b": rng.normal(size=(1, 6))}
            a_mat = np.diag(_f64(c)[0])
    nodes = [
        *first,
        helper.make_node("Add", ["a", "a"], ["s"]),
        helper.make_node("Mul", ["s", "three"], ["t"]),
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node("Mul", ["n", "two"], ["u"]),
        helper.make_node("Sub", ["t", "u"], ["y"]),
    ]
    path = _model(tmp_path / f"{kind}.onnx", nodes, inits, [1, 6], [1, 6])
    upper, _ = _upper(path, method="product")
    exact = np.linalg.norm(6.0 * a_mat + 2.0 * np.eye(6), 2)
    assert exact * (1 - 1e-12) <= upper <= exact * (1 + 1e-9)


def _conv_convt(tmp_path: Path, seed: int, stride: int = 1) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    out = 8 if stride == 1 else 7
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], strides=[stride, stride]),
        helper.make_node("ConvTranspose", ["h", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], strides=[stride, stride]),
    ]
    inits = {"w1": w1, "w2": w2, "b1": rng.normal(size=4), "b2": rng.normal(size=3)}
    path = _model(tmp_path / f"convt{seed}.onnx", nodes, inits, [1, 3, 8, 8], [1, 3, out, out])

    def f(x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.conv2d(x.reshape(1, 3, 8, 8), torch.from_numpy(_f64(w1)), padding=1, stride=stride)
        return torch.nn.functional.conv_transpose2d(h, torch.from_numpy(_f64(w2)), padding=1, stride=stride).reshape(-1)

    matrix = torch.func.vmap(f)(torch.eye(192, dtype=torch.float64)).T.numpy()
    return path, matrix


def test_conv_then_conv_transpose_is_the_norm_of_its_matrix(tmp_path: Path) -> None:
    path, matrix = _conv_convt(tmp_path, 0)
    upper, report = _upper(path, method="product")
    exact = np.linalg.norm(matrix, 2)
    assert exact <= upper <= exact * (1 + 1e-6)
    # each layer keeps its own bound; their product is what the composition alone gives
    conv, convt = report.layers
    assert (conv.op, convt.op) == ("Conv", "ConvTranspose")
    assert conv.lipschitz.upper * convt.lipschitz.upper > 1.2 * upper


def test_two_linear_branches_added_then_a_relu_layer(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w1, w2, w3 = (rng.normal(size=(8, 8)).astype(np.float32) for _ in range(3))
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], transB=1),
        helper.make_node("Gemm", ["x", "w2"], ["b"], transB=1),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Gemm", ["r", "w3"], ["y"], transB=1),
    ]
    inits = {"w1": w1, "w2": w2, "w3": w3, "b1": rng.normal(size=8)}
    path = _model(tmp_path / "branches.onnx", nodes, inits, [1, 8], [1, 8])
    upper, report = _upper(path, method="product")
    region = np.linalg.norm(_f64(w1) + _f64(w2), 2)
    expected = region * np.linalg.norm(_f64(w3), 2)  # Lip(relu) = 1: the product over the two parts
    assert expected <= upper <= expected * (1 + 1e-9)
    composed = (np.linalg.norm(_f64(w1), 2) + np.linalg.norm(_f64(w2), 2)) * np.linalg.norm(_f64(w3), 2)
    assert upper < composed
    # the depth profile (and SA103's exponent) stay products of the layers' own gains
    profile = {step.layer: step.upper for step in report.profile}
    layers = {layer.name: layer.lipschitz.upper for layer in report.layers}
    assert profile["Add_2"] == pytest.approx(layers["Gemm_0"] + layers["Gemm_1"], rel=1e-12)
    assert profile["Gemm_4"] == pytest.approx(composed, rel=1e-9)
    (exponent,) = [c for c in report.checks if c.id == "SA103"]
    assert exponent.value["upper"] == pytest.approx(np.log(composed) / 3, rel=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_the_bound_is_never_below_the_exact_norm(tmp_path: Path, seed: int) -> None:
    """Random affine DAGs (fan-out, scaled copies, subtraction, strided conv and its transpose):
    the certified bound is at or above the exact norm of the model's matrix, and within 1e-6."""
    rng = np.random.default_rng(100 + seed)
    path, matrix = _conv_convt(tmp_path, 100 + seed, stride=1 + seed % 2)
    upper, report = _upper(path, method="product")
    exact = np.linalg.norm(matrix, 2)
    assert exact <= upper <= exact * (1 + 1e-6)
    assert report.lipschitz.lower is None or report.lipschitz.lower <= exact * (1 + 1e-9)
    k = int(rng.integers(2, 5))
    w = rng.normal(size=(5, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["v0"])]
    for i in range(1, k):
        nodes.append(helper.make_node("Sum", [f"v{i - 1}", "x", f"v{i - 1}"], [f"v{i}"]))
    nodes.append(helper.make_node("Sub", [f"v{k - 1}", "x"], ["y"]))
    path = _model(tmp_path / f"dag{seed}.onnx", nodes, {"w": w}, [1, 5], [1, 5])
    upper, _ = _upper(path, method="product")
    a = _f64(w).T
    for _ in range(1, k):
        a = 2.0 * a + np.eye(5)
    exact = np.linalg.norm(a - np.eye(5), 2)
    assert exact <= upper <= exact * (1 + 1e-9)


def test_torchscript_branches_and_scaled_copies(tmp_path: Path) -> None:
    class Branches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(6, 6)
            self.b = torch.nn.Linear(6, 6, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.a(x) + self.a(x)) * 3 - (-x) * 2 + self.b(x)

    torch.manual_seed(0)
    module = Branches().eval()
    path = tmp_path / "branches.pt"
    torch.jit.trace(module, torch.zeros(1, 6)).save(str(path))
    upper, _ = _upper(path, input_shape=(1, 6), method="product")
    wa, wb = (layer.weight.detach().double().numpy() for layer in (module.a, module.b))
    exact = np.linalg.norm(6.0 * wa + 2.0 * np.eye(6) + wb, 2)
    assert exact <= upper <= exact * (1 + 1e-9)


def _random_affine_dag(rng: np.random.Generator) -> Graph:
    """A random DAG of affine nodes on [1, 2, 4, 4] values: convolutions and their transposes,
    per-channel affine maps with shifts, average pools, transposes, shifts by pad-and-crop, and
    sums and differences of any two earlier values (fan-out and re-joining)."""
    values = ["x"]
    nodes: list[Node] = []
    for i in range(int(rng.integers(4, 9))):
        out = f"v{i}"
        src = values[int(rng.integers(len(values)))]
        kind = int(rng.integers(7))
        if kind == 0:
            op: O.Op = O.Conv(weight=rng.normal(size=(2, 2, 3, 3)), bias=rng.normal(size=2), strides=(1, 1),
                              pads=(1, 1, 1, 1), dilations=(1, 1))
        elif kind == 1:
            op = O.ConvTranspose(weight=rng.normal(size=(2, 2, 3, 3)), strides=(1, 1), pads=(1, 1, 1, 1),
                                 dilations=(1, 1), output_padding=(0, 0))
        elif kind == 2:
            op = O.Affine(scale=rng.normal(size=(1, 2, 1, 1)), shift=rng.normal(size=(1, 2, 1, 1)))
        elif kind == 3:
            op = O.AvgPool(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                           count_include_pad=bool(rng.integers(2)))
        elif kind == 4:
            op = O.Transpose(perm=(0, 1, 3, 2))
        elif kind == 5:
            op = O.Pad(pads=(0, 0, 1, 0, 0, 0, -1, 0), value=float(rng.normal()))
        else:
            other = values[int(rng.integers(len(values)))]
            op2: O.Op = O.Add() if rng.integers(2) else O.Sub()
            nodes.append(Node(name=f"n{i}", op=op2, inputs=(src, other), output=out))
            values.append(out)
            continue
        nodes.append(Node(name=f"n{i}", op=op, inputs=(src,), output=out))
        values.append(out)
    # join every value into the output, so that the whole DAG is one region
    total = values[-1]
    for j, v in enumerate(values[1:-1]):
        nodes.append(Node(name=f"j{j}", op=O.Add(), inputs=(total, v), output=f"s{j}"))
        total = f"s{j}"
    nodes.append(Node(name="out", op=O.Affine(scale=np.array(0.5)), inputs=(total,), output="y"))
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 4, 4)),), outputs=("y",), nodes=tuple(nodes))
    return with_shapes(g.validate())


@pytest.mark.parametrize("seed", range(8))
def test_random_affine_dags_are_bounded_by_their_exact_norm(seed: int) -> None:
    """The region's bound never falls below the exact norm of the DAG's matrix (its float64
    Jacobian) and is within 1e-9 of it; sampled difference quotients never exceed it."""
    rng = np.random.default_rng(seed)
    g = _random_affine_dag(rng)
    (region,) = find_linear_regions(g)
    assert region.x == "x" and region.output == "y"
    found = linear_regions.region_bound(g, region, rule_bounds(g))
    assert found is not None
    f = Executor(g, dtype=torch.float64).flat()
    exact = np.linalg.norm(torch.func.jacrev(f)(torch.zeros(32, dtype=torch.float64)).numpy(), 2)
    assert exact <= found.value <= exact * (1 + 1e-9)
    assert found.lower is not None and found.lower <= exact
    x = torch.from_numpy(rng.normal(size=(64, 32)) * 10)
    d = torch.from_numpy(rng.normal(size=(64, 32)))
    q = torch.linalg.norm(torch.func.vmap(f)(x + d) - torch.func.vmap(f)(x), dim=1) / torch.linalg.norm(d, dim=1)
    assert float(q.max()) <= found.value
