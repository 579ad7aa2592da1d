"""Path text: control characters refused with exit 2, one `error:` line whatever a name holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.errors import ModelLoadError, UsageError
from stabaudit.paths import check_path_text, has_control, one_line, shown

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _one_error_line(result, *fragments: str) -> str:
    """Exactly one `error:` line; any other line is the summary line (`stabaudit: ...`), whole."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(line.startswith(("error: ", "stabaudit: ")) for line in lines), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_shown_and_one_line() -> None:
    assert shown("models/a b.onnx") == "models/a b.onnx"  # printable names stay as they are
    assert shown("a\nb") == "'a\\nb'" and shown("a\x00b") == "'a\\x00b'"
    assert one_line("x\ny\rz\x1b[31m\u2028") == "x\\ny\\rz\\x1b[31m\\u2028"
    assert has_control("\x7f") and has_control("\x85") and not has_control("é ü")


@pytest.mark.parametrize("text", ["a\x00b.onnx", "a\nb.onnx", "a\tb", "a\x1b[2Jb", "a\u2029b"])
def test_check_path_text_refuses_control_characters(text: str) -> None:
    with pytest.raises(UsageError, match="control character") as info:
        check_path_text(text, "--output")
    assert info.value.exit_code == 2 and repr(text) in str(info.value)
    with pytest.raises(ModelLoadError) as model_info:
        check_path_text(Path(text), error=ModelLoadError)
    assert model_info.value.path == text
    check_path_text("ordinary/path é.onnx", "--output")


def test_model_path_with_a_newline_gives_one_error_line(tmp_path: Path) -> None:
    name = str(tmp_path / "m.onnx\nerror: forged line")
    line = _one_error_line(runner.invoke(app, ["check", name]), repr(name), "control character")
    assert line.count("error:") == 2  # the forged text stays inside the one escaped name


def test_output_path_with_a_control_character_is_refused_before_the_audit(tmp_path: Path) -> None:
    out = tmp_path / "r\x1b.json"
    _one_error_line(runner.invoke(app, ["check", str(ROOT / "sample_models" / "mlp.onnx"), "-o", str(out)]),
                    "--output", "control character")
    assert list(tmp_path.iterdir()) == []


def test_external_data_location_with_a_nul_byte_is_exit_2(tmp_path: Path) -> None:
    w = np.arange(8 * 16, dtype=np.float32).reshape(8, 16) / 100
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin\x00../../etc/passwd"), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [tensor])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _one_error_line(runner.invoke(app, ["check", str(path), "--no-cache"]),
                    "model.onnx", "'w.bin\\x00../../etc/passwd'", "control character (NUL")
