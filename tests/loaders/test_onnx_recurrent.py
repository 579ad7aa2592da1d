"""ONNX RNN, GRU and LSTM unrolled: every attribute the translator resolves, against onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import helper

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir.executor import Executor
from stabaudit.ir.ops import OpType
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.test_onnx import check, rand, save

SEQ, BATCH, FEATURES, HIDDEN = 4, 2, 3, 5
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(tmp_path: Path, op: str, *, directions: int = 1, layout: int = 0, initial: bool | str = False,
           peepholes: bool = False, outputs: tuple[str, ...] = ("y", "yh", "yc"), lens: int | None = None,
           **attrs: Any) -> Path:
    """One cell with seeded weights; its peepholes and, when ``initial``, its initial states are
    constants (``initial="input"``: the initial states are graph inputs, as streaming models pass
    their state from call to call)."""
    g = GATES[op]
    params = {"w": rand(directions, g * HIDDEN, FEATURES, seed=1), "r": rand(directions, g * HIDDEN, HIDDEN, seed=2),
              "b": rand(directions, 2 * g * HIDDEN, seed=3)}
    inputs = ["x", "w", "r", "b", "", "", "", ""]
    if lens is not None:
        params["lens"] = np.full(BATCH, lens, np.int32)
        inputs[4] = "lens"
    state = (BATCH, directions, HIDDEN) if layout else (directions, BATCH, HIDDEN)
    fed: dict[str, list[int]] = {}
    if initial:
        params["h0"] = rand(*state, seed=4)
        inputs[5] = "h0"
        if op == "LSTM":
            params["c0"] = rand(*state, seed=5)
            inputs[6] = "c0"
        if initial == "input":
            fed = {name: list(state) for name in ("h0", "c0") if params.pop(name, None) is not None}
    if peepholes:
        params["p"] = rand(directions, 3 * HIDDEN, seed=6)
        inputs[7] = "p"
    while inputs[-1] == "":
        inputs.pop()
    names = list(outputs[:2] if op != "LSTM" else outputs)
    if layout:
        attrs["layout"] = 1
    direction = "bidirectional" if directions == 2 else attrs.pop("direction", "forward")
    node = helper.make_node(op, inputs, names, hidden_size=HIDDEN, direction=direction, **attrs)
    shape = [BATCH, SEQ, FEATURES] if layout else [SEQ, BATCH, FEATURES]
    return save(tmp_path, [node], {"x": shape, **fed}, outputs=[n for n in names if n], params=params)


def _check_with_onnx_reference(path: Path) -> Any:
    from onnx.reference import ReferenceEvaluator

    lm = load_onnx(path)
    rng = np.random.default_rng(1)
    xs = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in lm.graph.inputs}
    want = ReferenceEvaluator(str(path)).run(None, xs)
    got = Executor(lm.graph, dtype=torch.float64)(*(torch.from_numpy(v.astype(np.float64)) for v in xs.values()))
    assert len(got) == len(want)
    for ours, ref in zip(got, want, strict=True):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)
    return lm


@pytest.mark.parametrize(("op", "kwargs"), [
    ("RNN", {}),
    ("RNN", {"directions": 2, "initial": True, "activations": ["Relu", "Tanh"], "lens": SEQ}),
    ("RNN", {"layout": 1, "initial": True, "direction": "reverse"}),
    ("RNN", {"direction": "reverse", "clip": 0.5}),
    ("GRU", {"directions": 2, "initial": True}),
    ("GRU", {"layout": 1, "initial": True, "direction": "reverse", "linear_before_reset": 1}),
    ("GRU", {"linear_before_reset": 1, "clip": 1.0}),
    ("LSTM", {"directions": 2, "initial": True, "peepholes": True, "clip": 1.5}),
    ("LSTM", {"layout": 1, "initial": True, "peepholes": True}),
    ("LSTM", {"direction": "reverse", "outputs": ("", "yh", "yc")}),
    ("LSTM", {"outputs": ("y", "", "yc")}),
    # initial states carried in as inputs (streaming models such as voice-activity detectors)
    ("RNN", {"initial": "input", "directions": 2}),
    ("GRU", {"initial": "input", "layout": 1, "linear_before_reset": 1}),
    ("GRU", {"initial": "input", "direction": "reverse"}),
    ("LSTM", {"initial": "input", "directions": 2, "peepholes": True}),
    ("LSTM", {"initial": "input", "layout": 1}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "defaults")
def test_recurrent_cells_match_onnxruntime(tmp_path: Path, op: str, kwargs: dict[str, Any]) -> None:
    """onnxruntime refuses layout 1 (batch first): there the reference is onnx's own evaluator
    (which ignores clip: clip is checked in layout 0)."""
    path = _model(tmp_path, op, **kwargs)
    lm = check(path) if not kwargs.get("layout") else _check_with_onnx_reference(path)
    assert op in lm.source_ops
    assert not [n for n in lm.notes if "dropped" in n], lm.notes  # no gate computed for nothing
    types = {n.op.type for n in lm.graph.nodes}
    assert (OpType.MUL in types) == (op != "RNN")
    if kwargs.get("initial") == "input":  # the states are audited inputs beside x
        want = {"x", "h0", "c0"} if op == "LSTM" else {"x", "h0"}
        assert {s.name for s in lm.graph.inputs} == want


@pytest.mark.parametrize(("op", "kwargs", "label"), [
    ("RNN", {"activations": ["LeakyRelu"]}, "RNN(activation LeakyRelu)"),
    ("GRU", {"activations": ["Sigmoid"]}, "GRU(activations list of length 1)"),
    ("RNN", {"lens": SEQ - 1}, "RNN(sequence_lens shorter than the sequence)"),
    ("LSTM", {"input_forget": 1}, "LSTM(input_forget)"),
])
def test_unsupported_recurrent_variants(tmp_path: Path, op: str, kwargs: dict[str, Any], label: str) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(_model(tmp_path, op, **kwargs))
    assert info.value.counts == {label: 1}


class _Cell(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(7)
        self.cell = getattr(torch.nn, kind)(3, 4, batch_first=True)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cell(x)[0][:, -1:].flatten(1))


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_weights_are_training_parameters(tmp_path: Path, kind: str) -> None:
    """W and R of a one-direction cell with a zero initial state are bound (B is a constant): the
    loss Hessian over them and the Linear's parameters is the module's own over weight_ih, weight_hh
    and the Linear's (the export permutes LSTM gates, which leaves the eigenvalues as they are)."""
    import warnings

    from torch.func import functional_call

    from stabaudit.analyses.training import Loss, TrainingSpec, training_dynamics

    module = _Cell(kind).eval().double()
    path = tmp_path / "cell.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.float(), (torch.zeros(1, 3, 3),), str(path), dynamo=False)
    module = module.double()
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 1, 1, 3, 3)), rng.integers(0, 2, size=6)
    loaded = load_onnx(path)
    result = training_dynamics(loaded.graph, TrainingSpec(learning_rate=0.1, x=x, y=y, loss=Loss.CROSS_ENTROPY),
                               parameterisation=loaded.parameterisation)
    gates = 4 if kind == "LSTM" else 1
    assert result.parameters == gates * 4 * (3 + 4) + 4 * 2 + 2  # W, R, fc.weight, fc.bias
    names = ["cell.weight_ih_l0", "cell.weight_hh_l0", "fc.weight", "fc.bias"]
    params = dict(module.named_parameters())
    values = tuple(params[n].detach().clone() for n in names)
    xt, yt = torch.tensor(x.reshape(6, 3, 3)), torch.tensor(y)

    def loss(*theta: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, dict(zip(names, theta, strict=True)), (xt,))
        return torch.nn.functional.cross_entropy(out, yt)

    blocks = torch.autograd.functional.hessian(loss, values)
    sizes = [v.numel() for v in values]
    exact = np.linalg.eigvalsh(np.block([[blocks[i][j].reshape(sizes[i], sizes[j]).numpy()
                                          for j in range(len(sizes))] for i in range(len(sizes))]))
    assert result.lambda_max is not None
    assert result.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-5)
