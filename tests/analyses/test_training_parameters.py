"""The update channel's Hessian is over the parameters the user trains: the module's own
parameters for TorchScript (BatchNorm unfolded, constants and buffers excluded), the weights and
biases of parameterised operators for ONNX (or the globs of training.parameters)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.training import Loss, TrainingSpec, training_dynamics
from stabaudit.errors import UsageError
from stabaudit.loaders.onnx import load_onnx
from stabaudit.loaders.torchscript import load_torchscript

ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
    "softplus": torch.nn.Softplus,
    "elu": torch.nn.ELU,
    "leaky": lambda: torch.nn.LeakyReLU(0.1),
}


class ConvBnNet(torch.nn.Module):
    """Conv-BN-activation-Linear, times a constant 3.0 (a constant, not a parameter)."""

    def __init__(self, act: torch.nn.Module, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.act = act
        self.fc = torch.nn.Linear(3 * 4 * 4, 2)
        with torch.no_grad():  # eval statistics and affine parameters away from their defaults
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1)) * 3.0


def _data(seed: int, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 1, 6, 6)), rng.integers(0, 2, size=n)


def exact_hessian(module: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The loss Hessian over the module's own parameters, by torch.autograd.functional.hessian."""
    from torch.func import functional_call

    m = module.double()
    names = [k for k, _ in m.named_parameters()]
    values = tuple(p.detach().clone() for _, p in m.named_parameters())
    xt = torch.tensor(x.reshape(x.shape[0], *x.shape[2:]))
    yt = torch.tensor(y)

    def loss(*theta: torch.Tensor) -> torch.Tensor:
        out = functional_call(m, dict(zip(names, theta, strict=True)), (xt,))
        return torch.nn.functional.cross_entropy(out, yt)

    blocks = torch.autograd.functional.hessian(loss, values)
    sizes = [v.numel() for v in values]
    return np.block([[blocks[i][j].reshape(sizes[i], sizes[j]).numpy() for j in range(len(sizes))]
                     for i in range(len(sizes))])


def _script(module: torch.nn.Module, path: Path, traced: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(module, torch.zeros(1, 1, 6, 6)) if traced else torch.jit.script(module)
        ts.save(str(path))
    return path


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("traced", [True, False], ids=["traced", "scripted"])
def test_torchscript_sharpness_is_the_modules_own_hessian(tmp_path: Path, act: str, traced: bool) -> None:
    seed = sorted(ACTIVATIONS).index(act)
    module = ConvBnNet(ACTIVATIONS[act](), seed)
    path = _script(module, tmp_path / "m.pt", traced)
    x, y = _data(seed)
    exact = np.linalg.eigvalsh(exact_hessian(module, x, y))
    loaded = load_torchscript(path, input_shape=(1, 1, 6, 6))
    spec = TrainingSpec(learning_rate=0.1, x=x, y=y, loss=Loss.CROSS_ENTROPY)
    result = training_dynamics(loaded.graph, spec, parameterisation=loaded.parameterisation)
    # the module's 6 parameter arrays (conv 30, bn gamma/beta 6, fc 98 entries); no constant, no buffer
    assert result.parameter_names == ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias")
    assert result.parameters == 134
    assert result.parameter_source == "TorchScript module parameters"
    assert result.certified and result.lambda_max is not None and result.lambda_min is not None
    assert result.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-6, abs=1e-9)
    assert result.lambda_min.estimate == pytest.approx(exact[0], rel=1e-6, abs=1e-9)
    assert result.lambda_max.lower is not None and result.lambda_max.upper is not None
    assert result.lambda_max.lower <= exact[-1] + 1e-9 <= result.lambda_max.upper + 2e-9
    # the loaded module is left as it was: float32 weights, evaluation unchanged
    assert all(p.dtype == torch.float32 for p in loaded.parameterisation.module.parameters())  # type: ignore[union-attr]


def test_sa501_fails_where_eta_lambda_exceeds_two(tmp_path: Path) -> None:
    """The issue's case: sharpness over the module's parameters above 2 / eta fails SA501."""
    from stabaudit.checks.training import training_report

    module = ConvBnNet(torch.nn.ReLU(), 0)
    path = _script(module, tmp_path / "m.pt", traced=True)
    x, y = _data(0)
    top = float(np.linalg.eigvalsh(exact_hessian(module, x, y))[-1])
    loaded = load_torchscript(path, input_shape=(1, 1, 6, 6))
    eta = 2.3 / top  # eta * lambda = 2.3 > 2: gradient descent is unstable
    result = training_dynamics(loaded.graph, TrainingSpec(learning_rate=eta, x=x, y=y, loss=Loss.CROSS_ENTROPY),
                               parameterisation=loaded.parameterisation)
    assert result.lambda_max is not None and result.lambda_max.lower is not None
    assert result.lambda_max.lower * eta > 2
    report = training_report(result)
    assert report is not None and report.parameter_names[2] == "bn.weight"


def _export(module: torch.nn.Module, path: Path, preserve: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, 6, 6),), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE if preserve else torch.onnx.TrainingMode.EVAL)
    return path


def test_onnx_with_batchnorm_kept_is_the_modules_hessian(tmp_path: Path) -> None:
    module = ConvBnNet(torch.nn.Tanh(), 3)
    path = _export(module, tmp_path / "m.onnx", preserve=True)
    x, y = _data(3)
    exact = np.linalg.eigvalsh(exact_hessian(module, x, y))
    loaded = load_onnx(path)
    result = training_dynamics(loaded.graph, TrainingSpec(learning_rate=0.1, x=x, y=y, loss=Loss.CROSS_ENTROPY),
                               parameterisation=loaded.parameterisation)
    assert set(result.parameter_names) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    assert result.parameters == 134  # the Mul by 3.0 is a constant, not a parameter
    assert result.parameter_source == "ONNX initializers"
    assert result.parameterisation_notes == ()
    assert result.lambda_max is not None and result.lambda_min is not None
    assert result.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-6)
    assert result.lambda_min.estimate == pytest.approx(exact[0], rel=1e-6, abs=1e-9)


def test_onnx_with_batchnorm_folded_by_the_exporter_says_so(tmp_path: Path) -> None:
    module = ConvBnNet(torch.nn.ReLU(), 4)
    path = _export(module, tmp_path / "m.onnx", preserve=False)
    loaded = load_onnx(path)
    x, y = _data(4)
    result = training_dynamics(loaded.graph, TrainingSpec(learning_rate=0.1, x=x, y=y, loss=Loss.CROSS_ENTROPY),
                               parameterisation=loaded.parameterisation)
    assert result.parameters == 3 * 9 + 3 + 96 + 2  # the folded conv, the linear layer; no BN, no 3.0
    assert any(n.startswith("onnx::Conv") for n in result.parameter_names)
    (note,) = result.parameterisation_notes
    assert "folded BatchNormalization" in note and "TorchScript" in note
    # the folded parameterisation is another Hessian: the module's own differs
    exact = np.linalg.eigvalsh(exact_hessian(module, x, y))[-1]
    assert result.lambda_max is not None
    assert abs(result.lambda_max.estimate - exact) > 1e-3 * exact


def test_training_parameters_globs_select_and_unknown_globs_are_errors(tmp_path: Path) -> None:
    module = ConvBnNet(torch.nn.Tanh(), 5)
    loaded = load_onnx(_export(module, tmp_path / "m.onnx", preserve=True))
    x, y = _data(5)

    def run(patterns: tuple[str, ...]) -> tuple[tuple[str, ...], float]:
        spec = TrainingSpec(learning_rate=0.1, x=x, y=y, loss=Loss.CROSS_ENTROPY, parameters=patterns)
        r = training_dynamics(loaded.graph, spec, parameterisation=loaded.parameterisation)
        assert r.lambda_max is not None
        return r.parameter_names, r.lambda_max.estimate

    names, top = run(("fc.*",))
    assert names == ("fc.weight", "fc.bias")
    # the fc block of the module's Hessian: the loss over fc's parameters alone
    full = exact_hessian(module, x, y)
    assert top == pytest.approx(np.linalg.eigvalsh(full[-98:, -98:])[-1], rel=1e-6)
    names, _ = run(("*.weight", "/Constant*"))  # a constant is a parameter only when listed
    assert len(names) == 4 and any(n.startswith("/Constant") for n in names)
    with pytest.raises(UsageError, match="'nope.\\*' match no parameter"):
        run(("fc.*", "nope.*"))


def test_onnx_matmul_add_exports_train_their_weights_and_biases(tmp_path: Path) -> None:
    """MatMul + Add (the common export of a linear layer, weight stored [in, out]) and a
    normalising Sub/Div in front: the weights and the Adds' biases are parameters, the
    normalisation constants are not; H matches the reference over (W1, b1, W2, b2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1, b1 = rng.normal(size=(5, 4)), rng.normal(size=4)
    w2, b2 = rng.normal(size=(4, 3)), rng.normal(size=3)
    mean, std = rng.normal(size=5), rng.uniform(0.5, 2, size=5)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for a, name in
             ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"), (mean, "mean"), (std, "std"))]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("Div", ["c", "std"], ["n"]),
        helper.make_node("MatMul", ["n", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Tanh", ["hb"], ["a"]), helper.make_node("MatMul", ["a", "W2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "mlp.onnx")
    loaded = load_onnx(tmp_path / "mlp.onnx")
    x = rng.normal(size=(10, 1, 5))
    y = rng.normal(size=(10, 1, 3))
    result = training_dynamics(loaded.graph, TrainingSpec(learning_rate=0.1, x=x, y=y),
                               parameterisation=loaded.parameterisation)
    assert result.parameter_names == ("W1", "b1", "W2", "b2")

    f32 = [np.asarray(a, dtype=np.float32).astype(np.float64) for a in (w1, b1, w2, b2, mean, std)]
    xt = torch.tensor(x.reshape(10, 5))
    yt = torch.tensor(y.reshape(10, 3))
    sizes = [20, 4, 12, 3]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        a, b, c, d = torch.split(theta, sizes)
        n = (xt - torch.tensor(f32[4])) * (1.0 / torch.tensor(f32[5]))
        out = torch.tanh(n @ a.reshape(5, 4) + b) @ c.reshape(4, 3) + d
        return ((out - yt) ** 2).mean()

    theta = torch.cat([torch.tensor(a.reshape(-1)) for a in f32[:4]])
    exact = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta).numpy())
    assert result.lambda_max is not None and result.lambda_min is not None
    assert result.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-9)
    assert result.lambda_min.estimate == pytest.approx(exact[0], rel=1e-6, abs=1e-12)


class _Casting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.to(torch.float32))  # runs in float32 whatever its parameters hold


def test_a_module_that_cannot_run_in_float64_gets_no_hessian_and_says_why(tmp_path: Path) -> None:
    from stabaudit.checks.training import training_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Casting()).save(str(tmp_path / "c.pt"))
    loaded = load_torchscript(tmp_path / "c.pt", input_shape=(1, 6))
    rng = np.random.default_rng(0)
    spec = TrainingSpec(learning_rate=0.1, x=rng.normal(size=(4, 1, 6)), y=rng.normal(size=(4, 1, 4)))
    result = training_dynamics(loaded.graph, spec, parameterisation=loaded.parameterisation)
    assert result.lambda_max is None and result.lambda_min is None and not result.certified
    assert "cannot be differentiated in float64" in result.unavailable
    assert result.parameter_names == ("fc.weight", "fc.bias")
    report = training_report(result)
    assert report is not None and report.sharpness is None
    # the module is left as it was
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.parameterisation.module.parameters())  # type: ignore[union-attr]


def test_torchscript_hvp_through_the_vmapped_module_equals_the_exact_hessian_product(tmp_path: Path) -> None:
    from stabaudit.analyses.training import _float64_module, _Hessian, training_parameters

    module = ConvBnNet(torch.nn.Tanh(), 5)
    path = _script(module, tmp_path / "m.pt", traced=False)
    x, y = _data(5, n=16)
    h = exact_hessian(module, x, y)
    loaded = load_torchscript(path, input_shape=(1, 1, 6, 6))
    with _float64_module(loaded.parameterisation):
        params = training_parameters(loaded.graph, loaded.parameterisation, None, "cpu")
        hess = _Hessian(loaded.graph, x, y, Loss.CROSS_ENTROPY, "cpu", params)
        rng = np.random.default_rng(3)
        for _ in range(3):
            v = rng.normal(size=hess.n)
            ref = h @ v
            got = hess.matvec(v)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * float(np.max(np.abs(ref))))


class Branching(torch.nn.Module):
    """Data-dependent control flow: vmap cannot run it, one call per sample can."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if bool(x.sum() > 0):
            return torch.tanh(y)
        return y * y


def test_a_module_vmap_cannot_run_is_called_once_per_sample() -> None:
    from stabaudit.analyses.training import _float64_module, training_parameters
    from stabaudit.ir.graph import Graph, TensorSpec
    from stabaudit.ir.parameters import ModuleParameters, Origin, SourceParameter

    module = torch.jit.script(Branching())
    params = tuple(SourceParameter(name=n, shape=tuple(p.shape), origin=Origin.MODULE, role="module parameter")
                   for n, p in module.named_parameters())
    mp = ModuleParameters(module=module, parameters=params)
    graph = Graph(inputs=(TensorSpec(name="x", shape=(1, 4)),), outputs=("x",), nodes=())
    xt = torch.tensor(np.random.default_rng(4).normal(size=(10, 4)))
    with _float64_module(mp):
        with pytest.raises(RuntimeError):  # the premise: vmap refuses the branch on a batched value
            torch.func.vmap(lambda r: module(r.reshape(1, 4)))(xt)
        out = training_parameters(graph, mp, None, "cpu").forward(xt)
        for i in range(10):
            row = module(xt[i].reshape(1, 4)).reshape(-1)
            torch.testing.assert_close(out[i], row, rtol=0, atol=0)
        assert bool((xt.sum(dim=1) > 0).any()) and bool((xt.sum(dim=1) <= 0).any())  # both branches taken
