"""check on TorchScript archives without --input-shape, and forward's non-tensor arguments from
--arg and the config's arguments: (exit codes and one-line errors of CONTRACT.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from stabaudit.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


class Rate(nn.Module):
    """A linear map scaled by sr / 16000: its Lipschitz constant is (sr / 16000) * sigma_max(W)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        return self.fc(x) * (sr / 16000.0)


def run(*args: object):
    return runner.invoke(app, ["check", *[str(a) for a in args], "--budget", "0.3", "--no-cache", "-q"])


@pytest.fixture
def rate(tmp_path: Path) -> tuple[Path, float]:
    """The archive and sigma_max of its stored weight (float64 SVD of the float32 entries)."""
    torch.manual_seed(0)
    module = Rate().eval()
    path = tmp_path / "rate.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    sigma = float(np.linalg.norm(module.fc.weight.detach().numpy().astype(np.float64), 2))
    return path, sigma


def _one_line_error(result, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("stabaudit: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("sr", "factor"), [("8000", 0.5), ("32000", 2.0)])
def test_arg_binds_the_value_and_the_bound_is_exact(rate: tuple[Path, float], sr: str, factor: float,
                                                    tmp_path: Path) -> None:
    path, sigma = rate
    out = tmp_path / "r.json"
    result = run(path, "--arg", f"sr={sr}", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    exact = factor * sigma
    assert report["lipschitz"]["certified"]
    assert exact <= report["lipschitz"]["upper"] <= exact * (1 + 1e-9)
    assert report["lipschitz"]["lower"] == pytest.approx(exact, rel=1e-6)
    assert report["model"]["input_shape"] == [1, 5]  # from the Linear's in_features
    notes = report["notes"]
    assert any(n.startswith("input shape [1, 5] inferred from the first layer on the input, 'fc'") for n in notes)
    assert f"forward's non-tensor arguments, translated at these values: sr={sr} (int, given)" in notes


def test_missing_and_bad_arguments_are_one_line_errors(rate: tuple[Path, float]) -> None:
    path, _ = rate
    _one_line_error(run(path), f"error: {path}: forward argument 'sr' (int) has no value: give it with --arg "
                               "sr=VALUE or the config's arguments: {sr: VALUE}")
    _one_line_error(run(path, "--arg", "sr=fast"), "forward argument 'sr' (int): 'fast' is not an int")
    _one_line_error(run(path, "--arg", "rate=3", "--arg", "sr=1"), "forward has no argument 'rate' (its arguments: x, sr)")
    _one_line_error(run(path, "--arg", "sr"), "error: --arg 'sr': expected NAME=VALUE, e.g. sr=16000")
    _one_line_error(run(path, "--arg", "sr=1", "--arg", "sr=2"), "--arg: argument 'sr' is given twice")


def test_config_arguments_and_the_command_line_override(rate: tuple[Path, float], tmp_path: Path) -> None:
    path, sigma = rate
    config = tmp_path / "audit.yaml"
    config.write_text(f"defaults:\n  arguments: {{sr: 4000}}\nmodels:\n  - path: {path.name}\n    arguments:\n"
                      "      sr: 8000\n")
    out = tmp_path / "r.json"
    assert run(path, "--config", config, "-o", out).exit_code == 0
    upper = json.loads(out.read_text())["lipschitz"]["upper"]
    assert 0.5 * sigma <= upper <= 0.5 * sigma * (1 + 1e-9)  # the model's entry over the defaults
    assert run(path, "--config", config, "--arg", "sr=16000", "-o", out).exit_code == 0
    upper = json.loads(out.read_text())["lipschitz"]["upper"]
    assert sigma <= upper <= sigma * (1 + 1e-9)  # --arg over the config


def test_arguments_for_an_onnx_model_name_its_integer_inputs() -> None:
    """An ONNX model takes --arg for its integer and bool inputs only: this one has none."""
    _one_line_error(run(ROOT / "sample_models" / "mlp.onnx", "--arg", "sr=1"),
                    "--arg sr: not an input; --arg gives the values of the model's integer and bool inputs: it has none")


def test_a_convolution_names_the_missing_spatial_size(tmp_path: Path) -> None:
    path = tmp_path / "conv.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()), str(path))
    _one_line_error(run(path), "the input shape is unknown: the first layer on the input, '0' (aten::conv2d, "
                               "in_channels 3), makes it (1, 3, H, W): give --input-shape 1,3,H,W")
    assert run(path, "--input-shape", "1,3,6,6").exit_code == 0
