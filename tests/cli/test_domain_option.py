"""--domain on the command line: the report's bracket over the domain, the checks' wording, and
clear one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx"


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stabaudit", "check", str(SAMPLE), "--budget", "0.2", "--method", "product",
         "--no-cache", "--quiet", *args],
        capture_output=True, text=True, check=False, cwd=cwd,
    )


def test_a_box_domain_gives_the_bracket_over_it(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = _check("--domain", "0,1", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["lipschitz"]["domain"] == {"kind": "global", "description": "every input"}
    dom = report["domain_lipschitz"]
    assert dom["domain"]["kind"] == "box" and dom["domain"]["low"] == 0.0 and dom["domain"]["high"] == 1.0
    assert dom["certified"] and dom["upper"] <= report["lipschitz"]["upper"]
    assert 0 < dom["lower"] <= dom["upper"]
    x = np.array(dom["witness"]["x"])
    assert np.all((x >= 0) & (x <= 1))
    sa101 = next(c for c in report["checks"] if c["id"] == "SA101")
    assert sa101["message"].startswith("over the domain (") and sa101["value"]["over"] == "box"


def test_a_ball_domain_around_the_samples(tmp_path: Path) -> None:
    shape = json.loads(_shape_probe(tmp_path))
    x = np.random.default_rng(0).uniform(0, 1, size=(3, *shape))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "r.json"
    proc = _check("--domain", "ball:0.05", "--inputs", str(tmp_path / "x.npy"), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dom = json.loads(out.read_text())["domain_lipschitz"]
    assert dom["domain"]["kind"] == "ball" and dom["domain"]["boxes"] == 3 and dom["domain"]["radius"] == 0.05
    w = np.array(dom["witness"]["x"])
    assert min(np.max(np.abs(w - s.ravel())) for s in x) <= 0.05


def _shape_probe(tmp_path: Path) -> str:
    from stabaudit.loaders import load_model

    return json.dumps(list(load_model(SAMPLE).graph.inputs[0].shape[1:]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "1,0"], "--domain: expected low <= high for every entry"),
        (["--domain", "wide"], "--domain: expected LOW,HIGH, ball:EPS or margin:M, got 'wide'"),
        (["--domain", "ball:0.1"], "a ball or margin domain is built around the sample inputs: give --inputs"),
    ],
)
def test_bad_domains_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _check(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_the_terminal_summary_states_the_bracket_over_the_domain(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stabaudit", "check", str(SAMPLE), "--budget", "0.2", "--method", "product",
         "--no-cache", "--domain", "0,1"],
        capture_output=True, text=True, check=False, cwd=tmp_path, env={"NO_COLOR": "1", "COLUMNS": "200",
                                                                         **_env()},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Over the domain (the box [0, 1] on every entry): [" in proc.stdout
    summary = proc.stderr.strip().splitlines()[-1]
    assert ", over the domain [" in summary and "(certified upper)" in summary


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "FORCE_COLOR")}


def _two_input_model(path: Path) -> Path:
    """y = W relu(a + b): two float inputs of 3 entries each."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
         helper.make_node("MatMul", ["r", "wt"], ["y"])],
        "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(w.T.copy(), "wt")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_box_domain_applies_to_every_input_of_a_model_with_several(tmp_path: Path) -> None:
    from stabaudit.analyses.samples import UniformDomain, Values
    from stabaudit.api import audit
    from stabaudit.errors import UsageError

    path = _two_input_model(tmp_path / "two.onnx")
    box = UniformDomain(low=Values(values=(-1.0,)), high=Values(values=(1.0,)))
    report = audit(path, domain=box, budget=0.2, method="product")
    assert report.samples is not None and report.samples.shape == (6,)  # flat: a's entries, then b's
    dom = report.domain_lipschitz
    assert dom is not None and dom.certified and dom.upper is not None and dom.upper <= report.lipschitz.upper
    # the constant over the box: ||W D [I I]|| at most ||W|| sqrt(2); the witness lies in the box
    assert dom.lower is not None and 0 < dom.lower <= dom.upper
    assert dom.witness is not None and all(-1.0 <= v <= 1.0 for v in (*dom.witness.x, *dom.witness.y))
    per_entry = UniformDomain(low=Values(values=(-1.0, 0.0, 0.0), shape=(3,)), high=Values(values=(1.0, 1.0, 1.0), shape=(3,)))
    with pytest.raises(UsageError, match="a domain given per channel or entry needs one input"):
        audit(path, domain=per_entry, budget=0.2, method="product")
