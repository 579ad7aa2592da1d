"""Every crasher the fuzzers found, minimized and built in-process: each now ends in a one-line
refusal (exit 2) naming the problem, or in a normal report."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit.config import load_config
from stabaudit.errors import ConfigError, ModelLoadError, ResourceError, StabauditError
from tests.fuzz import onnx_seeds, ts_seeds
from tests.fuzz.harness import check_cli, check_error, load_cleanly

F = TensorProto.FLOAT


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _refused(path: Path, kind: type[StabauditError], *fragments: str) -> StabauditError:
    exc = load_cleanly(path)
    assert isinstance(exc, kind), exc
    for fragment in fragments:
        assert fragment in str(exc), str(exc)
    return exc


def _gemm(opset: int = 17, **attrs: object) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [1, 2])],
                              [helper.make_tensor_value_info("y", F, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


# ---- ONNX ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [0, -5, 2**40])
def test_opset_that_does_not_exist(tmp_path: Path, opset: int) -> None:
    """Was: TypeError float(None) in the Gemm/BatchNorm translators (no schema default at that opset)."""
    _refused(_save(tmp_path, _gemm(opset)), ModelLoadError, f"opset {opset}")


def test_attribute_of_the_wrong_type(tmp_path: Path) -> None:
    """Was: TypeError/ValueError escaping the translator (alpha given as a string or a tensor)."""
    _refused(_save(tmp_path, _gemm(alpha="text")), ModelLoadError, "node 'fc' (Gemm)")
    _refused(_save(tmp_path, _gemm(alpha=[1.0, 2.0])), ModelLoadError, "node 'fc' (Gemm)")


def test_input_of_an_unknown_element_type(tmp_path: Path) -> None:
    """Was: ValueError from TensorProto.DataType.Name(40)."""
    model = _gemm()
    model.graph.input[0].type.tensor_type.elem_type = 40
    _refused(_save(tmp_path, model), ModelLoadError, "unknown (40)")


@pytest.mark.parametrize("kind", ["ConstantOfShape", "Expand", "Tile", "Range", "Pad"])
def test_folding_a_huge_constant_is_refused_before_allocating(tmp_path: Path, kind: str) -> None:
    """Was: MemoryError (or the OOM killer) while folding ConstantOfShape([2**20, 2**20]) and kin."""
    model = onnx_seeds.mlp()
    # huge_constant_shape with a seed that picks each kind and the size 2**40 (see onnx_seeds)
    seed = next(s for s in range(500) if _pick(s) == (kind, 2**40))
    onnx_seeds.huge_constant_shape(model, random.Random(seed))
    _refused(_save(tmp_path, model), ResourceError, "above the limit")


def _pick(seed: int) -> tuple[str, int]:
    rng = random.Random(seed)
    big = rng.choice([2**20, 2**33, 2**40])
    return rng.choice(["ConstantOfShape", "Expand", "Tile", "Range", "Pad"]), big


def test_huge_initializer_with_tiny_raw_data(tmp_path: Path) -> None:
    """A 2**40-element initializer holding 16 bytes: refused by its declared size, not MemoryError."""
    model = _gemm()
    w = model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([2**20, 2**20])
    w.raw_data = bytes(16)
    exc = _refused(_save(tmp_path, model), StabauditError)
    assert "limit" in str(exc) or "budget" in str(exc) or "memory" in str(exc), exc


def test_raw_data_shorter_than_declared(tmp_path: Path) -> None:
    model = _gemm()
    model.graph.initializer[0].raw_data = bytes(12)  # 3 floats for a [2, 2] tensor
    _refused(_save(tmp_path, model), ModelLoadError, "tensor 'w'", "holds 12 bytes")


def test_negative_initializer_dim(tmp_path: Path) -> None:
    model = _gemm()
    model.graph.initializer[0].dims[0] = -2
    _refused(_save(tmp_path, model), ModelLoadError, "negative dim")


def test_huge_input_dim_is_refused_before_the_engine_allocates(tmp_path: Path) -> None:
    """A [1, 2**40] input through Relu loads on the meta device; the engine would allocate it."""
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [1, 2**40])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _refused(_save(tmp_path, model), ResourceError, "above the limit")


def test_loop_on_constants_is_not_evaluated(tmp_path: Path) -> None:
    """A Loop whose trip count the file chooses (2**62) is never run at load time."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])],
    )
    model = onnx_seeds.mlp()
    model.graph.initializer.extend([numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
                                    numpy_helper.from_array(np.array(True), "cond")])
    model.graph.node.append(helper.make_node("Loop", ["trips", "cond"], [], body=body))
    exc = load_cleanly(_save(tmp_path, model))
    assert exc is None or "Loop" in str(exc), exc


def test_nested_if_subgraphs(tmp_path: Path) -> None:
    """Was: exponential blow-up of a nested If (both branches nesting) in the mutation itself; a
    linear 30-deep nesting is read and refused or loaded in bounded time."""
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_seeds.mutated("cnn", [("nested_subgraphs", 103694312)]))
    load_cleanly(path)


def test_scalar_constant_added_to_the_output_through_the_cli(tmp_path: Path) -> None:
    """Found by the CLI fuzzer: y + ReduceSum(constant) folds into a 0-d Affine shift, which the
    lower-bound search turns into torch.from_numpy(numpy.float64) -> TypeError (exit 3)."""
    model = onnx_seeds.mlp()
    seed = next(s for s in range(500) if _pick(s) == ("Range", 2**20))
    onnx_seeds.huge_constant_shape(model, random.Random(seed))
    check_cli(_save(tmp_path, model))


# ---- external data -----------------------------------------------------------------------------
def _external(tmp_path: Path, **entries: str) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    model = _gemm()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", **entries}.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _save(folder, model)


@pytest.mark.parametrize(("entries", "fragment"), [
    ({"offset": "x"}, "offset 'x' is not a non-negative integer"),
    ({"offset": "-1"}, "offset '-1'"),
    ({"length": str(2**40)}, "beyond the end of the file"),
    ({"offset": "8", "length": "16"}, "beyond the end of the file"),
])
def test_external_data_offsets_and_lengths(tmp_path: Path, entries: dict[str, str], fragment: str) -> None:
    """Was: ValueError from int("x"), OSError from a negative seek, and a 2**40-byte read buffer."""
    _refused(_external(tmp_path, **entries), ModelLoadError, fragment)


# ---- TorchScript -------------------------------------------------------------------------------
def test_truncated_tensor_record(tmp_path: Path) -> None:
    """Was: torch.jit.load accepts a truncated data record; reading the tensor later raised
    RuntimeError ("data is not allocated") in the reference run (exit 3)."""
    path = tmp_path / "model.pt"
    path.write_bytes(ts_seeds.mutated("cnn.pt", [("truncate_entry", 4736)]))
    _refused(path, ModelLoadError, "missing or truncated")


def test_truncated_tensor_record_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(ts_seeds.mutated("cnn.pt", [("truncate_entry", 4736)]))
    code, err = check_cli(path)
    assert code == 2 and "truncated" in err


@pytest.mark.parametrize("shape", [[1, 2**40], [2**31, 2**31]])
def test_huge_input_shape_in_the_archive(tmp_path: Path, shape: list[int]) -> None:
    items = ts_seeds.entries((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    items = [(n, f'{{"input_shape": {shape}}}'.encode() if n.endswith("stabaudit.json") else c) for n, c in items]
    path = tmp_path / "model.pt"
    path.write_bytes(ts_seeds.pack(items))
    _refused(path, StabauditError)


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "fragment"), [
    ("thresholds: {a: !!float x}\n", "thresholds.a: invalid value"),  # was ValueError
    ("seed: !!int x\n", "seed: invalid value"),  # was ValueError
    ("seed: !!int \n", "seed: invalid value"),  # was IndexError (atheris, fuzz_config)
    ("fail_on: [error]\n", "fail_on: expected one of"),  # was TypeError: unhashable list
    ("severity: {SA102: [error]}\n", "severity.SA102: expected one of"),  # was TypeError
    ("thresholds: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),  # was RecursionError
    ("thresholds: {lipschitz: .nan}\n", "thresholds.lipschitz: expected a number"),  # was accepted
    ("seed: 99999999999999999999999999\n", "seed: expected a non-negative integer"),  # was exit 3 in torch
    ("thresholds: {? [a]: 1}\n", "thresholds.(key): expected a plain name as key"),
    ("{[1]: 2}\n", "expected a plain name as key"),
    ("\x00", "invalid YAML"),
])
def test_config_crashers(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check_error(info.value)
    assert fragment in str(info.value)


def test_huge_seed_in_config_through_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "audit.yaml"
    config.write_text("seed: 99999999999999999999999999\n")
    code, err = check_cli(Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx", "--config", str(config))
    assert code == 2 and "seed" in err


def test_torchscript_forward_building_a_huge_constant(tmp_path: Path) -> None:
    """A forward that folds to torch.zeros(2**20, 2**20) (4 TiB) is refused from its meta shape
    before the constant is built."""
    import torch

    class Huge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.zeros(1048576, 1048576).sum()

    path = tmp_path / "huge.pt"
    torch.jit.save(torch.jit.script(Huge()), str(path), _extra_files={"stabaudit.json": '{"input_shape": [1, 4]}'})
    _refused(path, ResourceError, "above the limit")


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x04", b"PK", b"PK\x03\x04"])
def test_tiny_files(tmp_path: Path, data: bytes) -> None:
    """Was (atheris, fuzz_torchscript): IndexError in detect_format on the one-byte file b"\\x80"."""
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    code, err = check_cli(path)
    assert code == 2 and err.startswith("error: ")


def test_input_with_a_huge_batch_dim(tmp_path: Path) -> None:
    """Was (atheris, fuzz_onnx, a timeout in native code at 5.7 GB): a [2**31, 4] input reached
    Gemm, which broadcast C to [2**31, 3] and compared it row by row."""
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_seeds.mutated(
        "mlp", [("huge_constant_shape", 981359389), ("corrupt_dim", 470025033), ("nested_subgraphs", 631046216)]))
    _refused(path, ResourceError, "input 'x'", "above the limit")


def test_gemm_output_above_the_limit_is_refused_before_broadcasting_c(tmp_path: Path) -> None:
    """A [2**26, 4] input (within the limit) times a [16, 4] weight plus a per-column C: the
    [2**26, 16] output is refused before C is broadcast to it."""
    w = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    c = numpy_helper.from_array(np.arange(16, dtype=np.float32), "c")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, name="fc")], "g",
                              [helper.make_tensor_value_info("x", F, [2**26, 4])],
                              [helper.make_tensor_value_info("y", F, None)], [w, c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _refused(_save(tmp_path, model), ResourceError, "Gemm output", "above the limit")


def _zip_version_255(tmp_path: Path) -> Path:
    data = bytearray((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    header = data.index(b"PK\x01\x02")  # first central-directory entry; +6: version needed to extract
    data[header + 6:header + 8] = (255).to_bytes(2, "little")
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(data))
    return path


def test_zip_with_an_unsupported_version(tmp_path: Path) -> None:
    """Was (atheris, fuzz_torchscript): NotImplementedError("zip file version 25.5") from zipfile
    in detect_format when a central-directory entry asks for a newer zip version to extract."""
    _refused(_zip_version_255(tmp_path), ModelLoadError, "zip")


def test_zip_with_an_unsupported_version_through_the_cli(tmp_path: Path) -> None:
    code, err = check_cli(_zip_version_255(tmp_path))
    assert code == 2 and "zip" in err


# ---- TorchScript code tables (fuzz/fuzz_ts_code.py) ---------------------------------------------------
def test_code_that_parses_with_a_syntax_warning_prints_nothing(tmp_path: Path) -> None:
    """Was: the static gate's ast.parse printed `archive/code/__torch__.py:14: SyntaxWarning: invalid
    decimal literal` on stderr, a line beside the `error:` one, its text chosen by the archive."""
    import warnings

    items = ts_seeds.entries((ts_seeds.SAMPLES / "mlp.pt").read_bytes())
    i = next(k for k, (name, _) in enumerate(items) if name.endswith("code/__torch__.py"))
    text = items[i][1].decode().replace("(fc1).forward(input, )", "(fc1).forward(input, 1if 1 else 2)")
    assert "1if" in text
    items[i] = (items[i][0], text.encode())
    path = tmp_path / "model.pt"
    path.write_bytes(ts_seeds.pack(items))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exc = load_cleanly(path)
    assert exc is not None and "not a loadable TorchScript archive" in str(exc)
    assert [str(w.message) for w in caught if issubclass(w.category, SyntaxWarning)] == []
