"""SA501-SA503 against hand-built spectra, and through the engine, the config and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import stabaudit
from stabaudit.analyses.training import Bracket, Optimizer, TrainingResult
from stabaudit.checks import CheckPolicy, Evidence, run_checks
from stabaudit.config import load_config
from stabaudit.errors import ConfigError
from stabaudit.report.model import Equivalence, GlobalLipschitz, Severity, Status
from stabaudit.report.serialize import report_from_dict, report_to_dict


def result(
    top: float,
    low: float,
    *,
    eta: float,
    optimizer: Optimizer = Optimizer.SGD,
    momentum: float = 0.9,
    certified: bool = True,
    slack: float = 1e-12,
    pre: float | None = None,
    noise: float | None = None,
) -> TrainingResult:
    def bracket(x: float, *, inner_lower: bool) -> Bracket:
        if certified:
            return Bracket(estimate=x, lower=x - slack, upper=x + slack)
        # Lanczos: lambda_max >= Ritz max (a lower bound), lambda_min <= Ritz min (an upper bound)
        return Bracket(estimate=x, lower=x - slack, upper=None) if inner_lower else Bracket(
            estimate=x, lower=None, upper=x + slack
        )

    return TrainingResult(
        learning_rate=eta,
        optimizer=optimizer,
        momentum=momentum,
        betas=(0.9, 0.999),
        noise=noise,
        lambda_max=bracket(top, inner_lower=True),
        lambda_min=bracket(low, inner_lower=False),
        preconditioned=bracket(pre, inner_lower=True) if pre is not None else None,
        method="dense eigvalsh" if certified else "lanczos",
        certified=certified,
        iterations=10,
        parameters=10,
        parameter_names=("fc.weight",),
        samples=4,
        loss_value=0.5,
    )


def findings(training: TrainingResult | None) -> dict[str, object]:
    ev = Evidence(
        layers=(),
        lipschitz=GlobalLipschitz(
            upper=0.5, lower=0.1, upper_method="product", lower_method="search", certified=True, witness=None
        ),
        product_upper=0.5,
        depth=1,
        nonfinite={},
        equivalence=Equivalence(reference="onnxruntime", max_abs_diff=0.0, tolerance=1e-5, passed=True, samples=1),
        operators=1,
        training=training,
    )
    return {f.id: f for f in run_checks(ev, CheckPolicy()) if f.id.startswith("SA5")}


def test_all_training_checks_are_skipped_without_a_spec():
    got = findings(None)
    assert sorted(got) == ["SA501", "SA502", "SA503"]
    assert all(f.status is Status.SKIPPED and "no training spec" in f.message for f in got.values())


def test_sa501_gradient_descent_threshold_two_over_eta():
    lam = 4.0
    ok = findings(result(lam, 1.0, eta=1.9 / lam))["SA501"]
    assert ok.status is Status.PASS and ok.severity is Severity.ERROR
    assert ok.threshold == pytest.approx(2 / (1.9 / lam))
    assert ok.value["sharpness"] == lam and ok.value["margin"] == pytest.approx(2 / (1.9 / lam) - lam)
    bad = findings(result(lam, 1.0, eta=2.1 / lam))["SA501"]
    assert bad.status is Status.FAIL and "unstable" in bad.message


def test_sa501_momentum_threshold_two_times_one_plus_beta():
    lam, beta = 4.0, 0.5
    # eta * lambda = 2.5: unstable for plain GD, stable with heavy-ball beta = 0.5 (limit 3)
    assert findings(result(lam, 1.0, eta=2.5 / lam))["SA501"].status is Status.FAIL
    ok = findings(result(lam, 1.0, eta=2.5 / lam, optimizer=Optimizer.MOMENTUM, momentum=beta))["SA501"]
    assert ok.status is Status.PASS
    assert ok.threshold == pytest.approx(2 * (1 + beta) / (2.5 / lam))
    over = findings(result(lam, 1.0, eta=3.1 / lam, optimizer=Optimizer.MOMENTUM, momentum=beta))["SA501"]
    assert over.status is Status.FAIL


def test_sa501_lanczos_can_fail_but_never_pass():
    lam = 4.0
    assert findings(result(lam, 1.0, eta=1.0 / lam, certified=False))["SA501"].status is Status.INCONCLUSIVE
    assert findings(result(lam, 1.0, eta=2.5 / lam, certified=False))["SA501"].status is Status.FAIL
    # a bracket that straddles the limit is inconclusive even when certified
    assert findings(result(lam, 1.0, eta=2.0 / lam, slack=0.01))["SA501"].status is Status.INCONCLUSIVE


def test_sa502_adam_preconditioned_threshold():
    eta = 0.01  # limit (2 + 2*0.9) / (0.1 * eta) = 38 / eta = 3800
    got = findings(result(5.0, 1.0, eta=eta, optimizer=Optimizer.ADAM, pre=3700.0))
    assert got["SA502"].status is Status.PASS and got["SA502"].threshold == pytest.approx(3800.0)
    assert got["SA501"].status is Status.SKIPPED and got["SA503"].status is Status.SKIPPED
    assert findings(result(5.0, 1.0, eta=eta, optimizer=Optimizer.ADAM, pre=3900.0))["SA502"].status is Status.FAIL
    none = findings(result(5.0, 1.0, eta=eta, optimizer=Optimizer.ADAM))["SA502"]
    assert none.status is Status.SKIPPED and "second_moment" in none.message
    assert findings(result(5.0, 1.0, eta=eta))["SA502"].status is Status.SKIPPED


def test_sa503_mean_square_contraction_and_noise_floor():
    top, mu = 4.0, 1.0  # limit 2 mu / lambda_max^2 = 0.125
    ok = findings(result(top, mu, eta=0.1, noise=0.2))["SA503"]
    assert ok.status is Status.PASS and ok.threshold == pytest.approx(0.125)
    assert ok.value["noise_floor"] == pytest.approx(0.1 * 0.2 / (2 * mu - 0.1 * top**2))
    assert findings(result(top, mu, eta=0.13))["SA503"].status is Status.FAIL
    flat = findings(result(top, -0.5, eta=0.1))["SA503"]
    assert flat.status is Status.SKIPPED and flat.message == "not applicable: lambda_min <= 0"
    # Lanczos does not prove lambda_min > 0: inconclusive below the limit, fail beyond it
    assert findings(result(top, mu, eta=0.1, certified=False))["SA503"].status is Status.INCONCLUSIVE
    assert findings(result(top, mu, eta=0.13, certified=False))["SA503"].status is Status.FAIL
    assert findings(result(top, mu, eta=0.1, optimizer=Optimizer.MOMENTUM))["SA503"].status is Status.SKIPPED


# ---- through the engine ---------------------------------------------------------------------------------
def linear_model(tmp_path: Path) -> tuple[Path, Path, float]:
    """A TorchScript y = W x (non-expansive W) and data whose mse Hessian is (2/(N m)) X^T X kron I."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.mul_(0.3)
    path = tmp_path / "lin.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3)), str(path), _extra_files={"stabaudit.json": '{"input_shape": [1, 3]}'})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    np.savez(tmp_path / "data.npz", x=x, y=y)
    lam = 2.0 / (10 * 2) * float(np.linalg.eigvalsh(x.T @ x)[-1])
    return path, tmp_path / "data.npz", lam


def test_engine_sa501_gates_the_exit_code(tmp_path):
    path, data, lam = linear_model(tmp_path)
    ok = stabaudit.audit(path, training={"learning_rate": 1.9 / lam, "data": str(data)})
    sa501 = next(f for f in ok.checks if f.id == "SA501")
    assert sa501.status is Status.PASS and ok.exit_code == 0
    assert ok.training is not None and ok.training.certified and ok.training.method == "dense eigvalsh"
    assert ok.training.sharpness == pytest.approx(lam, rel=1e-3)
    assert ok.training.margin == pytest.approx(2 / (1.9 / lam) - lam, rel=1e-6)
    assert ok.training.parameter_names == tuple(ok.training.parameter_names) and ok.training.parameters == 6
    bad = stabaudit.audit(path, training={"learning_rate": 2.1 / lam, "data": str(data)})
    assert next(f for f in bad.checks if f.id == "SA501").status is Status.FAIL
    assert bad.exit_code == 1
    # the JSON report carries the section and round-trips
    data_json = report_to_dict(bad)
    assert data_json["training"]["sharpness"] == pytest.approx(lam, rel=1e-3)
    assert report_to_dict(report_from_dict(json.loads(json.dumps(data_json)))) == data_json
    none = report_to_dict(stabaudit.audit(path))
    assert none["training"] is None


def test_config_training_through_the_engine(tmp_path):
    path, _data, lam = linear_model(tmp_path)
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        f"training:\n  learning_rate: {2.5 / lam}\n  optimizer: momentum\n  momentum: 0.5\n  data: data.npz\n"
    )
    settings = load_config(cfg).defaults.training
    assert settings is not None and settings.data == tmp_path / "data.npz" and settings.momentum == 0.5
    report = stabaudit.audit(path, config=cfg)
    assert next(f for f in report.checks if f.id == "SA501").status is Status.PASS  # 2.5 < 2(1 + 0.5)
    assert report.training is not None and report.training.optimizer == "momentum"


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ("  learning_rate: 0\n  data: data.npz\n", ":2: training.learning_rate:", "expected a finite number > 0"),
        ("  learning_rate: 0.1\n  data: nope.npz\n", ":3: training.data:", "no such file 'nope.npz'"),
        ("  learning_rate: 0.1\n  optimizer: adamw\n  data: data.npz\n", ":3: training.optimizer:", "expected one of sgd"),
        ("  learning_rate: 0.1\n  momentum: 0.9\n  data: data.npz\n", ":2: training:", "only used with optimizer: momentum"),
        (
            "  learning_rate: 0.1\n  optimizer: adam\n  betas: [0.9, 1.0]\n  data: data.npz\n",
            ":4: training.betas[1]:", "expected a number in [0, 1)",
        ),
        ("  learning_rate: 0.1\n  loss: hinge\n  data: data.npz\n", ":3: training.loss:", "expected one of mse, cross_entropy"),
        ("  learning_rate: 0.1\n", ":2: training.data:", "missing"),
        ("  learning_rate: 0.1\n  data: data.npz\n  lr: 3\n", ":4: training.lr:", "unknown key"),
    ],
)
def test_config_training_errors_name_line_and_key(tmp_path, body, where, message):
    np.savez(tmp_path / "data.npz", x=np.ones((2, 3)), y=np.ones((2, 2)))
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("training:\n" + body)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    text = str(info.value)
    assert where in text and message in text, text
