"""The command line end to end: reports, gates, exit codes and one-line errors (CONTRACT.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stabaudit.checks import CHECKS
from stabaudit.cli import app
from tests.sarif_schema import validate_sarif

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
runner = CliRunner()


def run(*args: str):
    argv = [str(a) for a in args]
    if argv[:1] == ["check"] and "--budget" not in argv:
        argv += ["--budget", "0.3"]  # a short lower-bound search keeps the suite fast
    return runner.invoke(app, argv)


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """One `error: ` line per problem; a refused audit (the report is still written) ends with the
    summary line `stabaudit: FAIL (exit code 2) ...`."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    if lines and lines[-1].startswith("stabaudit: "):
        assert lines[-1].startswith(f"stabaudit: FAIL (exit code {code}) "), lines[-1]
        lines = lines[:-1]
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_check_json_report_on_sample_mlp(tmp_path):
    out = tmp_path / "r.json"
    result = run("check", SAMPLES / "mlp.onnx", "--output", out)
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["model"]["format"] == "onnx" and data["model"]["input_shape"] == [1, 64]
    assert data["equivalence"]["passed"] and data["equivalence"]["reference"] == "onnxruntime"
    lip = data["lipschitz"]
    assert lip["certified"] and 0 < lip["lower"] <= lip["upper"]
    assert lip["witness"]["quotient"] == pytest.approx(lip["lower"], rel=1e-6)
    ops = [layer["op"] for layer in data["layers"]]
    assert ops.count("Linear") == 3 and "Relu" in ops
    # every registered check, in id order (tests/checks/test_checks.py pins the ids themselves)
    assert [c["id"] for c in data["checks"]] == sorted(CHECKS)
    # the product of the layer bounds is what composition gives for a chain; auto may beat it
    uppers = [layer["lipschitz"]["upper"] for layer in data["layers"]]
    product = lip["methods"][0]
    assert product["method"] == "product" and product["certified"]
    assert product["upper"] == pytest.approx(float(np.prod(uppers)), rel=1e-9)
    assert lip["upper"] <= product["upper"]


def test_threshold_gates_exit_code():
    low = run("check", SAMPLES / "mlp.onnx", "--threshold", "lipschitz=1e-6", "--format", "json")
    assert low.exit_code == 1
    sa101 = next(c for c in json.loads(low.stdout)["checks"] if c["id"] == "SA101")
    assert sa101["status"] == "fail" and sa101["severity"] == "error" and sa101["threshold"] == 1e-6
    high = run("check", SAMPLES / "mlp.onnx", "--threshold", "SA101=1e9", "--format", "json")
    assert high.exit_code == 0
    sa101 = next(c for c in json.loads(high.stdout)["checks"] if c["id"] == "SA101")
    assert sa101["status"] == "pass"


def test_config_thresholds_and_fail_on(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("thresholds:\n  lipschitz: 1.0e-6\n")
    assert run("check", SAMPLES / "mlp.onnx", "--config", cfg).exit_code == 1
    # on default thresholds the stability checks are informational: no --fail-on level gates on them
    assert run("check", SAMPLES / "mlp.onnx").exit_code == 0
    assert run("check", SAMPLES / "mlp.onnx", "--fail-on", "warning").exit_code == 0
    # a threshold the user sets gates, and only its own check
    assert run("check", SAMPLES / "mlp.onnx", "--threshold", "layer_lipschitz=1e-6").exit_code == 1


def test_table_output_marks_numbers():
    result = run("check", SAMPLES / "cnn.pt")
    assert result.exit_code == 0, result.stderr
    assert "certified" in result.stdout and "verdict: PASS" in result.stdout
    assert "equivalence vs torchscript" in result.stdout


# ---- bad input: exit 2, one line per problem, no traceback ----------------------------------------


def test_missing_file(tmp_path):
    assert_one_line_error(run("check", tmp_path / "nope.onnx"), 2, "nope.onnx")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert_one_line_error(run("check", p), 2, "empty")


def test_truncated_onnx(tmp_path):
    data = (SAMPLES / "cnn.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("check", p), 2, "cut.onnx")


def test_truncated_torchscript(tmp_path):
    data = (SAMPLES / "cnn.pt").read_bytes()
    p = tmp_path / "cut.pt"
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("check", p), 2, "cut.pt")


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_one_line_error(run("check", p), 2, "noise.onnx")


def test_unknown_format(tmp_path):
    p = tmp_path / "model.txt"
    p.write_text("this is not a model\n")
    assert_one_line_error(run("check", p), 2, "model.txt")


def test_pickle_instead_of_torchscript(tmp_path):
    import torch

    p = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, p)
    assert_one_line_error(run("check", p), 2, "TorchScript")


def test_external_data_escaping_directory(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "W")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    sub = tmp_path / "model"
    sub.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    p = sub / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)
    assert_one_line_error(run("check", p), 2, "m.onnx")


def test_unsupported_operators_all_listed(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Sinh", ["a"], ["b"]),
            helper.make_node("Cosh", ["b"], ["c"]),
            helper.make_node("Sinh", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    p = tmp_path / "trig.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)
    result = run("check", p)
    assert_one_line_error(result, 2, "Sinh (x2)", "Cosh (x1)", "SA901")


def test_equivalence_mismatch(monkeypatch):
    import dataclasses

    import stabaudit.loaders as loaders

    real = loaders.load_model

    def skewed(path, **kw):
        model = real(path, **kw)
        return dataclasses.replace(
            model, reference=lambda feeds: [o + 1.0 for o in model.reference(feeds)]
        )

    monkeypatch.setattr(loaders, "load_model", skewed)
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx"), 2, "SA902")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--input-shape", "1,x"], "--input-shape"),
        (["--input-shape", "1,2,3"], "rank"),
        (["--threshold", "lipschitz"], "NAME=VALUE"),
        (["--threshold", "nonsense=1"], "unknown threshold"),
        (["--threshold", "lipschitz=abc"], "not a number"),
        (["--format", "pdf"], "--format"),
        (["--fail-on", "never"], "--fail-on"),
        (["--budget", "0"], "--budget"),
    ],
)
def test_bad_options(args, fragment):
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx", *args), 2, fragment)


def test_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("thresholds:\n  lipschitz: high\n")
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--config", cfg), 2, "bad.yaml:2: thresholds.lipschitz"
    )


def test_a_refused_model_still_gets_its_report_and_nothing_half_written(tmp_path):
    out = tmp_path / "r.json"
    result = run("check", tmp_path / "missing.onnx", "--output", out)
    assert_one_line_error(result, 2, "missing.onnx: no such file")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left beside it
    data = json.loads(out.read_text())
    assert (data["verdict"], data["exit_code"], data["layers"]) == ("fail", 2, [])
    assert [(c["id"], c["status"], c["message"]) for c in data["checks"]] == [
        ("SA900", "fail", "no such file")
    ]


# ---- other commands ---------------------------------------------------------------------------


def test_explain_every_check():
    for check_id in CHECKS:
        result = run("explain", check_id)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith(check_id)
        assert CHECKS.get(check_id).doc in result.stdout
    assert "Inequality" in run("explain", "lipschitz.global").stdout
    assert_one_line_error(run("explain", "SA999"), 2, "unknown check")


def test_ops_lists_both_loaders():
    result = run("ops")
    assert result.exit_code == 0
    assert "onnx" in result.stdout and "torchscript" in result.stdout and "Conv" in result.stdout


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys\nfrom stabaudit.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules\n"
    )
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "check" in proc.stdout
    assert run("--version").stdout.startswith("stabaudit ")


def test_cuda_without_a_device_is_a_usage_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--device", "cuda"), 2, "--device cuda"
    )


def test_sarif_and_junit_from_the_output_suffix(tmp_path):
    import xml.etree.ElementTree as ET

    sarif, junit = tmp_path / "r.sarif", tmp_path / "r.xml"
    assert run("check", SAMPLES / "cnn.onnx", "-o", sarif).exit_code == 0
    assert run("check", SAMPLES / "cnn.onnx", "-o", junit).exit_code == 0
    doc = json.loads(sarif.read_text())
    validate_sarif(doc)
    rules = [r["id"] for r in doc["runs"][0]["tool"]["driver"]["rules"]]
    assert rules == sorted(CHECKS)
    assert ET.parse(junit).getroot().find("testsuite").get("tests") == str(len(CHECKS))


def test_baseline_regression_of_scaled_weights(tmp_path):
    import onnx
    from onnx import numpy_helper

    base = tmp_path / "base.json"
    assert run("check", SAMPLES / "mlp.onnx", "-o", base).exit_code == 0
    model = onnx.load(SAMPLES / "mlp.onnx")
    first = model.graph.initializer[0]
    first.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.2), first.name)
    )
    scaled = tmp_path / "mlp.onnx"
    onnx.save(model, scaled)
    result = run("check", scaled, "--baseline", base, "--format", "json")
    assert result.exit_code == 1, result.stderr
    sa001 = next(c for c in json.loads(result.stdout)["checks"] if c["id"] == "SA001")
    assert sa001["status"] == "fail" and sa001["message"].startswith("regression")
    assert "+20.0%" in sa001["message"]
    # the original against its own baseline passes; a looser allowance passes the scaled model
    assert run("check", SAMPLES / "mlp.onnx", "--baseline", base).exit_code == 0
    assert run("check", scaled, "--baseline", base, "--max-regression", "0.25").exit_code == 0


def test_bad_baseline(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx", "--baseline", bad), 2, "--baseline")
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--baseline", tmp_path / "none.json"), 2, "no such file"
    )


def test_timeout_stops_cleanly(tmp_path):
    out = tmp_path / "r.json"
    result = run("check", SAMPLES / "cnn.onnx", "--budget", "60", "--timeout", "1", "-o", out)
    assert_one_line_error(result, 2, "timed out after 1", "--timeout")
    # exit 2 still writes the requested report, marked incomplete: the refusal when the timeout came
    # before the equivalence check, else the evidence of the stages that finished
    data = json.loads(out.read_text())
    assert data["exit_code"] == 2 and data["complete"] is False and data["verdict"] == "fail"
    stopped = data["stopped"]
    assert stopped["reason"] == "timeout" and stopped["seconds"] == 1 and stopped["stage"] not in stopped["completed"]
    if "equivalence" not in stopped["completed"]:
        assert data["lipschitz"]["upper"] is None
        assert data["checks"][0]["id"] == "SA900" and "timed out after 1" in data["checks"][0]["message"]
    else:
        assert all(c["status"] != "pass" for c in data["checks"] if c["id"] in ("SA101", "SA302", "SA201"))


def test_memory_budget_refuses_before_loading():
    assert_one_line_error(
        run("check", SAMPLES / "cnn.onnx", "--max-memory", "1K"), 2, "memory budget", "--max-memory"
    )
    assert_one_line_error(
        run("check", SAMPLES / "cnn.onnx", "--max-memory", "lots"), 2, "--max-memory"
    )


def test_method_choice_and_every_method_reported():
    auto = json.loads(run("check", SAMPLES / "mlp.onnx", "--format", "json").stdout)["lipschitz"]
    product = json.loads(
        run("check", SAMPLES / "mlp.onnx", "--format", "json", "--method", "product").stdout
    )["lipschitz"]
    assert [m["method"] for m in product["methods"]] == ["product"]
    assert (
        product["upper"] == product["methods"][0]["upper"] and product["upper_method"] == "product"
    )
    names = [m["method"] for m in auto["methods"]]
    assert names == ["product", "eclipse-fast", "eclipse", "lipsdp-neuron"]
    certified = [m["upper"] for m in auto["methods"] if m["certified"]]
    assert auto["upper"] == min(certified) < product["upper"]
    assert auto["lower"] <= auto["upper"]
    # a residual net is not a feedforward chain: auto keeps the product, an explicit method says why
    resnet = json.loads(
        run("check", SAMPLES / "resnet.onnx", "--format", "json", "--method", "sdp").stdout
    )
    sdp = resnet["lipschitz"]["methods"][1]
    assert sdp["upper"] is None and "not a feedforward chain" in " ".join(sdp["notes"])
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx", "--method", "magic"), 2, "--method")


def test_seed_out_of_range():
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--seed", "99999999999999999999"), 2, "--seed"
    )


def _small_relu_net(path: Path, widths=(2, 6, 6, 2), seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        inits += [
            numpy_helper.from_array(rng.normal(size=(a, b)).astype(np.float32), f"W{i}"),
            numpy_helper.from_array(rng.normal(size=(b,)).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        prev = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_auto_runs_the_exact_mode_on_small_relu_nets(tmp_path):
    model = _small_relu_net(tmp_path / "small.onnx")
    result = run("check", model, "--format", "json", "--budget", "5")
    assert result.exit_code == 0, result.stderr
    lip = json.loads(result.stdout)["lipschitz"]
    exact = next(m for m in lip["methods"] if m["method"] == "lipbab")
    assert "exact constant (branch and bound finished)" in exact["notes"]
    # the bracket closes: the certified upper bound equals a witnessed region's Jacobian norm
    assert lip["upper"] == pytest.approx(lip["lower"], rel=1e-9)
    assert lip["witness"]["kind"] == "jacobian" and len(lip["witness"]["x"]) == 2
    import torch

    from stabaudit.ir.executor import Executor
    from stabaudit.loaders import load_model

    f = Executor(load_model(model).graph, dtype=torch.float64).flat()
    jac = torch.autograd.functional.jacobian(
        f, torch.tensor(lip["witness"]["x"], dtype=torch.float64)
    )
    assert float(torch.linalg.matrix_norm(jac, ord=2)) == pytest.approx(lip["lower"], rel=1e-9)


def test_local_clarke_bound_with_sample_inputs(tmp_path):
    samples = np.load(SAMPLES / "digits_samples.npz")["x_flat"][:4]
    np.save(tmp_path / "x.npy", samples)
    result = run(
        "check",
        SAMPLES / "mlp.onnx",
        "--inputs",
        tmp_path / "x.npy",
        "--eps",
        "0.01",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    sa302 = next(c for c in data["checks"] if c["id"] == "SA302")
    assert sa302["status"] == "inconclusive" and sa302["value"]["samples"] == 4
    local = sa302["value"]["upper"]
    # every hidden unit of every ball is stably active, stably inactive or unstable
    units = sa302["value"]["units"]
    assert len(units) == 2
    for counts in units.values():
        assert sum(counts.values()) == 4 * 32
    # a local bound over small balls never exceeds the global certified bound, and is at least
    # the Jacobian norm at each sample
    assert local <= data["lipschitz"]["methods"][0]["upper"]
    import torch

    from stabaudit.ir.executor import Executor
    from stabaudit.loaders import load_model

    f = Executor(load_model(SAMPLES / "mlp.onnx").graph, dtype=torch.float64).flat()
    for x in samples:
        jac = torch.autograd.functional.jacobian(f, torch.tensor(x, dtype=torch.float64))
        assert float(torch.linalg.matrix_norm(jac, ord=2)) <= local
    plain = json.loads(run("check", SAMPLES / "mlp.onnx", "--format", "json").stdout)
    assert next(c for c in plain["checks"] if c["id"] == "SA302")["status"] == "skipped"


def test_bad_inputs(tmp_path):
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--inputs", tmp_path / "none.npy"), 2, "--inputs"
    )
    (tmp_path / "bad.npy").write_text("no")
    assert_one_line_error(
        run("check", SAMPLES / "mlp.onnx", "--inputs", tmp_path / "bad.npy"), 2, "--inputs"
    )
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5)))
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx", "--inputs", tmp_path / "wrong.npy"), 2)
    assert_one_line_error(run("check", SAMPLES / "mlp.onnx", "--eps", "-1"), 2, "--eps")
