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


def _model(tmp_path: Path, op: str, *, directions: int = 1, layout: int = 0, initial: bool = False,
           peepholes: bool = False, outputs: tuple[str, ...] = ("y", "yh", "yc"), lens: int | None = None,
           **attrs: Any) -> Path:
    """One cell with seeded weights; its initial states (when ``initial``) and peepholes are constants."""
    g = GATES[op]
    params = {"w": rand(directions, g * HIDDEN, FEATURES, seed=1), "r": rand(directions, g * HIDDEN, HIDDEN, seed=2),
              "b": rand(directions, 2 * g * HIDDEN, seed=3)}
    inputs = ["x", "w", "r", "b", "", "", "", ""]
    if lens is not None:
        params["lens"] = np.full(BATCH, lens, np.int32)
        inputs[4] = "lens"
    state = (BATCH, directions, HIDDEN) if layout else (directions, BATCH, HIDDEN)
    if initial:
        params["h0"] = rand(*state, seed=4)
        inputs[5] = "h0"
        if op == "LSTM":
            params["c0"] = rand(*state, seed=5)
            inputs[6] = "c0"
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
    return save(tmp_path, [node], {"x": shape}, outputs=[n for n in names if n], params=params)


def _check_with_onnx_reference(path: Path) -> Any:
    from onnx.reference import ReferenceEvaluator

    lm = load_onnx(path)
    x = np.random.default_rng(1).standard_normal(lm.graph.inputs[0].shape).astype(np.float32)
    want = ReferenceEvaluator(str(path)).run(None, {"x": x})
    got = Executor(lm.graph, dtype=torch.float64)(torch.from_numpy(x.astype(np.float64)))
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
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "defaults")
def test_recurrent_cells_match_onnxruntime(tmp_path: Path, op: str, kwargs: dict[str, Any]) -> None:
    """onnxruntime refuses layout 1 (batch first): there the reference is onnx's own evaluator
    (which ignores clip: clip is checked in layout 0)."""
    path = _model(tmp_path, op, **kwargs)
    lm = check(path) if not kwargs.get("layout") else _check_with_onnx_reference(path)
    assert op in lm.source_ops
    types = {n.op.type for n in lm.graph.nodes}
    assert (OpType.MUL in types) == (op != "RNN")


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
