"""Translators of TorchScript's recurrent layers aten::lstm, aten::gru, aten::rnn_tanh and
aten::rnn_relu (nn.LSTM, nn.GRU, nn.RNN), unrolled over the static sequence length.

Each layer is the ONNX cell of the same kind (stabaudit.loaders.onnx_ops.recurrent builds the IR,
through a view of the TorchScript translation state as the ONNX one): torch's gate order is
rearranged to ONNX's (LSTM i, f, g, o -> i, o, f, c; GRU r, z, n -> z, r, h) and torch's GRU is
ONNX's with linear_before_reset = 1 (n = tanh(W_n x + b_in + r . (R_n h + b_hn))). Layers are
chained (the next layer reads [seq, batch, directions * hidden]); h_n (and c_n) stack the layers'
last states; batch_first transposes the input and the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.common import OnnxNode
from stabaudit.loaders.ts_ops.base import (
    Context,
    SourceNode,
    Unsupported,
    Var,
    const_array,
    translates,
)

# torch's gate blocks in ONNX's order, per cell
_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_KINDS = {"lstm": ("LSTM", None), "gru": ("GRU", None), "rnn_tanh": ("RNN", "Tanh"), "rnn_relu": ("RNN", "Relu")}


class _OnnxView:
    """What onnx_ops.recurrent reads and writes of an ONNX Context, over a TorchScript one: values
    by name (Vars and constants), emit appending IR nodes through the TorchScript context."""

    def __init__(self, ctx: Context, variables: dict[str, Var], constants: dict[str, np.ndarray]):
        self.ts, self.vars, self.constants = ctx, variables, constants

    def shape(self, name: str) -> tuple[int, ...]:
        return self.vars[name].shape

    def const(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.constants.get(name)

    def is_var(self, name: str | None) -> bool:
        return name is not None and name in self.vars

    def is_used(self, name: str | None) -> bool:
        return bool(name)

    def param(self, node: OnnxNode, index: int, what: str, *, optional: bool = False) -> np.ndarray | None:
        value = self.const(node.input(index))
        if value is None and not optional:
            raise Unsupported(f"no constant {what}")
        return value

    def term(self, *args: Any, **kwargs: Any) -> None:
        return None  # the training parameters of a TorchScript recurrent layer are not bound

    def bind(self, *args: Any, **kwargs: Any) -> None:
        return None

    def emit(self, node: OnnxNode, op: O.Op, inputs: Sequence[str], *, tag: str | None = None,
             output_index: int = 0) -> str:
        name = node.outputs[output_index] if tag is None else f"{node.outputs[0]}/{tag}"
        self.vars[name] = self.ts.emit(op, [self.vars[i] for i in inputs], role=tag or name)
        return name


def _blocks(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """The gate blocks of a [gates * hidden, ...] weight or bias in ONNX's order."""
    parts = np.split(np.asarray(array), len(order), axis=0)
    return np.concatenate([parts[k] for k in order], axis=0)


def _state(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(const_array(value, what=what), dtype=np.float64)
    except Unsupported:
        raise Unsupported(f"{what} computed from the input") from None


@translates("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu")
def recurrent(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """nn.LSTM / nn.GRU / nn.RNN in eval mode, unpacked input: one ONNX cell per layer (see the module)."""
    from stabaudit.loaders.onnx_ops.recurrent import recurrent as onnx_recurrent

    cell, activation = _KINDS[node.base]
    if node.arg("batch_first") is None:
        raise Unsupported("a packed sequence")
    x = node.var(0)
    hx, params = node.arg(1), list(node.arg(2))
    has_biases, layers = bool(node.arg(3)), int(node.arg(4))
    train, bidirectional, batch_first = bool(node.arg(6)), bool(node.arg(7)), bool(node.arg(8))
    if train and layers > 1 and float(node.arg(5)):
        raise Unsupported("dropout between layers in training mode")
    if x.rank != 3:
        raise Unsupported(f"an input of rank {x.rank} (unbatched)")
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != layers * dirs * per:
        raise Unsupported(f"{len(params)} weights for {layers} layer(s) of {dirs} direction(s) (proj_size)")
    weights = [np.asarray(const_array(p, what="weight"), dtype=np.float32) for p in params]
    states = list(hx) if cell == "LSTM" else [hx]
    h0 = _state(states[0], "initial hidden state")
    c0 = _state(states[1], "initial cell state") if cell == "LSTM" else None
    order = _ORDER[cell]
    variables: dict[str, Var] = {}
    view = _OnnxView(ctx, variables, {})
    current = x if not batch_first else ctx.emit(O.Transpose(perm=(1, 0, 2)), [x], role="seq_first")
    seq, batch = current.shape[0], current.shape[1]
    last_h: list[Var] = []
    last_c: list[Var] = []
    for layer in range(layers):
        group = [weights[(layer * dirs + d) * per:(layer * dirs + d + 1) * per] for d in range(dirs)]
        hidden = group[0][1].shape[1]
        w = np.stack([_blocks(g[0], order) for g in group])
        r = np.stack([_blocks(g[1], order) for g in group])
        prefix = f"l{layer}"
        view.constants.update({f"{prefix}W": w, f"{prefix}R": r})
        inputs = [f"{prefix}X", f"{prefix}W", f"{prefix}R", "", "", f"{prefix}h0"]
        if has_biases:
            view.constants[f"{prefix}B"] = np.stack([np.concatenate([_blocks(g[2], order), _blocks(g[3], order)])
                                                     for g in group])
            inputs[3] = f"{prefix}B"
        view.constants[f"{prefix}h0"] = h0[layer * dirs:(layer + 1) * dirs]
        if c0 is not None:
            view.constants[f"{prefix}c0"] = c0[layer * dirs:(layer + 1) * dirs]
            inputs.append(f"{prefix}c0")
        variables[f"{prefix}X"] = current
        attrs: dict[str, Any] = {"hidden_size": hidden, "layout": 0,
                                 "direction": "bidirectional" if bidirectional else "forward"}
        if cell == "GRU":
            attrs["linear_before_reset"] = 1
        if activation is not None:
            attrs["activations"] = [activation] * dirs
        outputs = (f"{prefix}Y", f"{prefix}Yh", f"{prefix}Yc" if cell == "LSTM" else "")
        onnx_node = OnnxNode(op_type=cell, name=f"{cell.lower()}{layer}", inputs=tuple(inputs),
                             outputs=tuple(o for o in outputs if o), attrs=attrs, opset=14, source_op=cell)
        try:
            onnx_recurrent(onnx_node, cast(Any, view))
        except Exception as exc:  # an ONNX refusal (Unsupported of onnx_ops) or a shape mismatch
            raise Unsupported(f"layer {layer}: {getattr(exc, 'label', None) or exc}") from exc
        y = variables[f"{prefix}Y"]  # [seq, dirs, batch, hidden]
        y = ctx.emit(O.Transpose(perm=(0, 2, 1, 3)), [y], role=f"{prefix}/out")
        current = ctx.emit(O.Reshape(shape=(seq, batch, dirs * hidden)), [y], role=f"{prefix}/out")
        last_h.append(variables[f"{prefix}Yh"])
        if cell == "LSTM":
            last_c.append(variables[f"{prefix}Yc"])
    output = current if not batch_first else ctx.emit(O.Transpose(perm=(1, 0, 2)), [current], role="batch_first")

    def stacked(parts: list[Var], role: str) -> Var:
        return parts[0] if len(parts) == 1 else ctx.emit(O.Concat(axis=0), parts, role=role)

    outs: list[Any] = [output, stacked(last_h, "h_n")]
    if cell == "LSTM":
        outs.append(stacked(last_c, "c_n"))
    return outs
