"""The certified figures hold for the batch sizes a model allows and for half-precision models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.errors import ModelLoadError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.onnx import load_onnx

runner = CliRunner()


def _check(*args: object) -> tuple[int, str, dict | None]:
    """stabaudit check ... --format json: (exit code, stderr, report or None)."""
    argv = ["check", *(str(a) for a in args), "--format", "json", "--budget", "0.3"]
    result = runner.invoke(app, argv)
    report = json.loads(result.stdout) if result.exit_code in (0, 1) else None
    return result.exit_code, result.stderr, report


def _one_line_error(stderr: str, *fragments: str) -> None:
    """One `error: ` line, then the summary line of a refused audit (`stabaudit: FAIL (exit code 2) ...`)."""
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("stabaudit: "):
        assert lines[-1].startswith("stabaudit: FAIL (exit code 2) "), lines[-1]
        lines = lines[:-1]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _onnx(path: Path, nodes: list, inputs: dict[str, list], params: dict[str, np.ndarray] | None = None,
          *, opset: int = 13, elem: int = TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], elem, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (params or {}).items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _jacobian_norm(graph_path: Path, shape: tuple[int, ...], x: np.ndarray) -> float:
    """||J_f(x)||_2 of the model at ``shape``, in float64 (the engine's executor; SA902 ties it
    to onnxruntime)."""
    ex = Executor(load_onnx(graph_path, input_shape=shape).graph, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: ex(t)[0], torch.from_numpy(x))
    return float(np.linalg.norm(jac.reshape(-1, x.size).numpy(), 2))


# ---- (a) unknown batch dims ---------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_over_the_batch_asks_for_the_batch_size(tmp_path: Path, opset: int) -> None:
    path = _onnx(tmp_path / "m.onnx", [helper.make_node("Softmax", ["x"], ["y"], axis=0, name="sm")],
                 {"x": ["n", 3]}, opset=opset)
    code, stderr, _ = _check(path)
    assert code == 2
    _one_line_error(stderr, "unknown batch dim 'n'", "node 'sm", "(Softmax)", "--input-shape N,3")


def test_softmax_over_the_batch_is_bounded_at_the_given_batch(tmp_path: Path) -> None:
    path = _onnx(tmp_path / "m.onnx", [helper.make_node("Softmax", ["x"], ["y"], axis=0, name="sm")], {"x": ["n", 3]})
    # at x = 0 each column is softmax([a, b]) at p = 1/2, J = p(1-p)[[1,-1],[-1,1]] of norm 2p(1-p) = 1/2,
    # and 1/2 is also the supremum (2p(1-p) <= 1/2): the exact Lipschitz constant at n = 2
    exact = _jacobian_norm(path, (2, 3), np.zeros((2, 3)))
    assert exact == pytest.approx(0.5, abs=1e-15)
    code, stderr, report = _check(path, "--input-shape", "2,3")
    assert code in (0, 1), stderr
    assert report is not None and report["model"]["input_shape"] == [2, 3]
    lip = report["lipschitz"]
    assert lip["certified"] and lip["upper"] >= exact
    assert lip["lower"] <= 0.5 + 1e-9  # a sound lower bound never passes the true constant


def test_dynamic_batch_without_mixing_audits_as_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((5, 4 * 2 * 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1), helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    path = _onnx(tmp_path / "m.onnx", nodes, {"x": ["batch", 3, 4, 4]}, {"w": w, "g": g})
    loaded = load_onnx(path)
    assert loaded.graph.inputs[0].shape == (1, 3, 4, 4)
    assert any("no operator mixes samples" in n for n in loaded.notes)
    fixed = load_onnx(path, input_shape=(1, 3, 4, 4))
    assert [n.op.type for n in loaded.graph] == [n.op.type for n in fixed.graph]
    code, stderr, report = _check(path)
    assert code in (0, 1), stderr
    assert report is not None
    layers = {layer["op"]: layer["lipschitz"] for layer in report["layers"]}
    exact_gemm = float(np.linalg.norm(g.astype(np.float64), 2))
    assert exact_gemm <= layers["Linear"]["upper"] <= exact_gemm * (1 + 1e-6)
    # the claim behind auditing at batch 1: at n = 3 the Jacobian is block diagonal, so its norm
    # is the largest per-sample norm and stays below the certified bound of batch 1
    x = rng.standard_normal((3, 3, 4, 4))
    at_three = _jacobian_norm(path, (3, 3, 4, 4), x)
    per_sample = max(_jacobian_norm(path, (1, 3, 4, 4), x[i:i + 1]) for i in range(3))
    assert at_three == pytest.approx(per_sample, rel=1e-12)
    assert at_three <= report["lipschitz"]["upper"]


@pytest.mark.parametrize(
    ("nodes", "params", "op"),
    [
        ([helper.make_node("Flatten", ["x"], ["f"], axis=0, name="fl"),
          helper.make_node("Softmax", ["f"], ["y"], axis=-1)], {}, "(Flatten)"),
        ([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], {"s": np.array([1, -1], np.int64)}, "(Reshape)"),
        ([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], {"s": np.array([3, -1], np.int64)}, "(Reshape)"),
        ([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, name="gm")],
         {"w": np.ones((1, 2), np.float32)}, "(Gemm)"),
    ],
    ids=["flatten-axis0", "reshape-1-minus1", "reshape-transposing", "gemm-transA"],
)
def test_operators_that_merge_or_contract_the_batch_refuse(tmp_path: Path, nodes: list, params: dict, op: str) -> None:
    path = _onnx(tmp_path / "m.onnx", nodes, {"x": ["n", 3]}, params)
    with pytest.raises(ModelLoadError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "unknown batch dim 'n'" in message and op in message and "--input-shape" in message


def test_an_input_shared_by_every_sample_refuses(tmp_path: Path) -> None:
    """y_i = x_i + z with z of static shape: dz moves all n outputs (||dy/dz|| = sqrt(n))."""
    add = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    path = _onnx(tmp_path / "m.onnx", add, {"x": ["n", 3], "z": [1, 3]})
    with pytest.raises(ModelLoadError, match="node 'add' \\(Add\\) combines batched values with a value shared"):
        load_onnx(path)
    same = _onnx(tmp_path / "same.onnx", add, {"x": ["n", 3], "z": ["n", 3]})
    assert any("input(s) 'x', 'z'" in n for n in load_onnx(same).notes)
    other = _onnx(tmp_path / "other.onnx", add, {"x": ["n", 3], "z": ["m", 3]})
    with pytest.raises(ModelLoadError, match="shared by every sample"):  # n and m may differ
        load_onnx(other)


# ---- (b) float16 and bfloat16 -------------------------------------------------------------------
def _explicit_matrix(layer: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear map without bias at ``shape``, in float64 (weights upcast exactly)."""
    layer = layer.to(torch.float64)
    if getattr(layer, "bias", None) is not None:
        layer.bias = None
    n = int(np.prod(shape))
    with torch.no_grad():
        cols = layer(torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:]))
    return cols.reshape(n, -1).T.numpy()


def _save(module: nn.Module, path: Path, shape: tuple[int, ...], dtype: torch.dtype, how: str) -> Path:
    module = module.to(dtype).eval()
    scripted = torch.jit.trace(module, torch.zeros(shape, dtype=dtype)) if how == "trace" else torch.jit.script(module)
    torch.jit.save(scripted, str(path), _extra_files={"stabaudit.json": json.dumps({"input_shape": list(shape)})})
    return path


@pytest.mark.parametrize(
    ("dtype", "how", "cnn"),
    [(torch.bfloat16, "trace", False), (torch.bfloat16, "script", True),
     (torch.float16, "script", False), (torch.float16, "trace", True)],
    ids=["bf16-mlp-trace", "bf16-cnn-script", "f16-mlp-script", "f16-cnn-trace"],
)
def test_half_precision_torchscript_is_audited(tmp_path: Path, dtype: torch.dtype, how: str, cnn: bool) -> None:
    torch.manual_seed(3)
    if cnn:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
        shape: tuple[int, ...] = (1, 2, 5, 5)
    else:
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        shape = (1, 4)
    path = _save(model, tmp_path / "m.pt", shape, dtype, how)
    code, stderr, report = _check(path)
    assert code in (0, 1), stderr
    assert report is not None and report["equivalence"]["passed"]
    name = str(dtype).removeprefix("torch.")
    assert any(f"the reference runs in {name}" in n for n in report["notes"])
    # each linear layer's certified bound against the exact norm of its float64-upcast operator
    first_shape = shape
    exact = [np.linalg.norm(_explicit_matrix(model[0], first_shape), 2),
             np.linalg.norm(model[-1].weight.detach().to(torch.float64).numpy(), 2)]
    uppers = [layer["lipschitz"]["upper"] for layer in report["layers"] if layer["op"] in ("Linear", "Conv")]
    assert len(uppers) == 2
    for upper, norm in zip(uppers, exact, strict=True):
        assert norm <= upper <= norm * (1 + 1e-6)
    lip = report["lipschitz"]
    assert lip["certified"] and lip["lower"] <= lip["upper"] <= exact[0] * exact[1] * (1 + 1e-6)


def test_float16_onnx_is_audited(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((4, 6)).astype(np.float16)
    b1 = rng.standard_normal(6).astype(np.float16)
    w2 = rng.standard_normal((6, 2)).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    path = _onnx(tmp_path / "m.onnx", nodes, {"x": ["n", 4]}, {"w1": w1, "b1": b1, "w2": w2},
                 elem=TensorProto.FLOAT16)
    code, stderr, report = _check(path)
    assert code in (0, 1), stderr
    assert report is not None and report["equivalence"]["passed"]
    assert any("the reference runs in float16" in n for n in report["notes"])
    exact = [float(np.linalg.norm(w.astype(np.float64), 2)) for w in (w1, w2)]
    uppers = [layer["lipschitz"]["upper"] for layer in report["layers"] if layer["op"] == "Linear"]
    assert len(uppers) == 2
    for upper, norm in zip(uppers, exact, strict=True):
        assert norm <= upper <= norm * (1 + 1e-6)


def test_bfloat16_onnx_is_refused_cleanly(tmp_path: Path) -> None:
    """onnxruntime's Python API exchanges no bfloat16 arrays, and its CPU provider has few bfloat16
    kernels: the reference cannot run, so the audit stops with exit 2, never 3."""
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 3], np.ones(12).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, None)], initializer=[w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, stderr, _ = _check(path)
    assert code == 2
    _one_line_error(stderr, "bfloat16")
