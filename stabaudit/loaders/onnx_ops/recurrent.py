"""Translators of the recurrent cells RNN, GRU and LSTM, unrolled over the static sequence length.

Each direction projects the whole sequence at once (one Linear over the last axis: W x_t + Wb + Rb
for every t), then walks the steps: a Slice and a Reshape take step t's projection, a Linear of
the previous hidden state adds R h, Slices take the gates, Sigmoid / Tanh / Relu, products of two
variables (Mul) and sums (Add) make the new state. Y is the Concat of the hidden states, Y_h and
Y_c the last ones, reshaped (and transposed for layout 1) as ONNX lays them out.

A state is an IR value (every state after the first, and an initial_h / initial_c computed from
the inputs, as streaming models carry their state from call to call), a constant (a stored
initial_h / initial_c before the first step) or None for zero (absent initial state), so that the first step folds the constant terms into
Affine shifts and scales instead of multiplying constants at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.parameters import Term
from stabaudit.loaders.onnx_ops.common import Context, OnnxNode, Unsupported, register

State = str | np.ndarray | None  # an IR value, a constant [batch, hidden], or zero

_ACTIVATIONS = {"sigmoid": O.Sigmoid, "tanh": O.Tanh, "relu": O.Relu}
_NUMPY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0.0),
}
# per cell: number of gates and the default activations of one direction
_CELLS = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}


class _Unroll:
    """The IR building blocks of one recurrent node, with unique tags and constant folding."""

    def __init__(self, node: OnnxNode, ctx: Context, batch: int, hidden: int, clip: float | None):
        self.node, self.ctx, self.batch, self.hidden, self.clip = node, ctx, batch, hidden, clip
        self.count = 0
        self.where = ""  # the direction and step being unrolled, in every tag: "d0t2/"

    def tag(self, what: str) -> str:
        self.count += 1
        return f"{self.where}{what}{self.count}"

    def emit(self, op: O.Op, inputs: list[str], what: str) -> str:
        return self.ctx.emit(self.node, op, inputs, tag=self.tag(what))

    def step_input(self, projection: str, t: int, axis: int) -> str:
        """Step t of the projected sequence, [batch, gates * hidden]."""
        shape = self.ctx.shape(projection)
        starts, ends = [0] * 3, list(shape)
        starts[axis], ends[axis] = t, t + 1
        part = self.emit(O.Slice(starts=tuple(starts), ends=tuple(ends), steps=(1, 1, 1)), [projection], "x")
        return self.emit(O.Reshape(shape=(self.batch, shape[2])), [part], "xt")

    def gate(self, value: State, k: int) -> State:
        """Gate k (hidden entries) of a [batch, gates * hidden] value."""
        lo, hi = k * self.hidden, (k + 1) * self.hidden
        if value is None or isinstance(value, np.ndarray):
            return value if value is None else value[:, lo:hi]
        op = O.Slice(starts=(0, lo), ends=(self.batch, hi), steps=(1, 1))
        return self.emit(op, [value], "gate")

    def linear(self, h: State, weight: np.ndarray, bias: np.ndarray | None = None,
               term: Term | None = None) -> State:
        """h @ weight.T + bias; ``term``: the training parameter the weight is."""
        if h is None:
            return None if bias is None else np.broadcast_to(bias, (self.batch, weight.shape[0])).copy()
        if isinstance(h, np.ndarray):
            out = h @ weight.T.astype(np.float64)
            return out if bias is None else out + bias
        y = self.emit(O.Linear(weight=np.ascontiguousarray(weight), bias=bias), [h], "linear")
        if term is not None:
            self.ctx.bind(y, "weight", [term])
        return y

    def add(self, a: State, b: State) -> State:
        if a is None or b is None:
            return b if a is None else a
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a + b
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            var, c = (b, a) if isinstance(a, np.ndarray) else (a, b)
            assert isinstance(var, str) and isinstance(c, np.ndarray)
            return self.emit(O.Affine(shift=np.asarray(c, np.float64)), [var], "shift")
        return self.emit(O.Add(), [a, b], "add")

    def mul(self, a: State, b: State) -> State:
        if a is None or b is None:
            return None
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a * b
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            var, c = (b, a) if isinstance(a, np.ndarray) else (a, b)
            assert isinstance(var, str) and isinstance(c, np.ndarray)
            if not c.any():
                return None
            return self.emit(O.Affine(scale=np.asarray(c, np.float64)), [var], "scale")
        return self.emit(O.Mul(), [a, b], "mul")

    def sub(self, a: State, b: State) -> State:
        """a - b."""
        if b is None:
            return a
        if isinstance(b, np.ndarray):
            return self.add(a, -b)
        if a is None:
            return self.emit(O.Affine(scale=np.array(-1.0)), [b], "neg")
        if isinstance(a, np.ndarray):
            return self.emit(O.Affine(scale=np.array(-1.0), shift=np.asarray(a, np.float64)), [b], "rsub")
        return self.emit(O.Sub(), [a, b], "sub")

    def act(self, kind: str, value: State) -> State:
        """The activation ``kind`` of a gate's pre-activation, clipped to [-clip, clip] first."""
        if value is None:
            value = np.zeros((self.batch, self.hidden))
        if isinstance(value, np.ndarray):
            if self.clip is not None:
                value = np.clip(value, -self.clip, self.clip)
            return _NUMPY[kind](value)
        if self.clip is not None:
            value = self.emit(O.Clip(min=-self.clip, max=self.clip), [value], "clip")
        return self.emit(_ACTIVATIONS[kind](), [value], kind)


def _activations(node: OnnxNode, directions: int) -> list[tuple[str, ...]]:
    """The activations of each direction; only the parameter-free Sigmoid, Tanh and Relu load."""
    default = _CELLS[node.op_type][1]
    given = node.attr("activations", None)
    names = list(given) if given else list(default) * directions
    if len(names) != len(default) * directions:
        raise Unsupported(f"{node.op_type}(activations list of length {len(names)})")
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise Unsupported(f"{node.op_type}(activation {name})")
    k = len(default)
    return [tuple(n.lower() for n in names[d * k:(d + 1) * k]) for d in range(directions)]


def _state(ctx: Context, node: OnnxNode, index: int, layout: int,
           shape: tuple[int, int, int]) -> np.ndarray | str | None:
    """initial_h / initial_c: a constant as [num_directions, batch, hidden] float64, None when
    absent or zero, or the name of the variable (a state carried in from a graph input, as streaming
    models pass it from call to call)."""
    name = node.input(index)
    if name is None:
        return None
    value = ctx.const(name)
    if value is None:
        var = ctx.var(name)
        given = tuple(ctx.shape(var))
        expected = (shape[1], shape[0], shape[2]) if layout == 1 else shape
        if given != expected:
            raise ModelLoadError(f"{node.op_type} initial state of shape {list(given)}, expected {list(expected)}")
        return var
    value = np.asarray(value, np.float64)
    if layout == 1:
        value = np.swapaxes(value, 0, 1)
    if value.shape != shape:
        raise ModelLoadError(f"{node.op_type} initial state of shape {list(value.shape)} (layout 0), expected {list(shape)}")
    return value if value.any() else None


def _direction(unroll: _Unroll, state: np.ndarray | str | None, d: int, layout: int) -> State:
    """Direction d's initial state [batch, hidden]: a constant's row, or a Slice of the variable
    ([directions, batch, hidden], or [batch, directions, hidden] for layout 1) reshaped."""
    if state is None or isinstance(state, np.ndarray):
        return None if state is None else state[d]
    axis = 1 if layout else 0
    starts, ends = [0, 0, 0], [unroll.batch, unroll.batch, unroll.hidden]
    starts[axis], ends[axis] = d, d + 1
    unroll.where = f"d{d}/"
    part = unroll.emit(O.Slice(starts=tuple(starts), ends=tuple(ends), steps=(1, 1, 1)), [state], "state")
    out = unroll.emit(O.Reshape(shape=(unroll.batch, unroll.hidden)), [part], "state")
    unroll.where = ""
    return out


@register("RNN", "GRU", "LSTM")
def recurrent(node: OnnxNode, ctx: Context) -> None:
    """ONNX RNN, GRU and LSTM with constant weights, unrolled over the sequence (see the module).

    Every equation is the ONNX operator's, with its gate order (LSTM: i, o, f, c; GRU: z, r, h):
    RNN   h_t = f(W x_t + R h_{t-1} + Wb + Rb)
    GRU   z = f(Wz x + Rz h + Wbz + Rbz), r = f(Wr x + Rr h + Wbr + Rbr),
          n = g(Wh x + Rh (r . h) + Rbh + Wbh) or, linear_before_reset, g(Wh x + r . (Rh h + Rbh) + Wbh),
          h_t = (1 - z) . n + z . h = n + z . (h - n)
    LSTM  i = f(Wi x + Ri h + Pi . c + bi), f_ = f(Wf x + Rf h + Pf . c + bf), g_ = g(Wc x + Rc h + bc),
          c_t = f_ . c + i . g_, o = f(Wo x + Ro h + Po . c_t + bo), h_t = o . h(c_t)
    clip bounds every gate's pre-activation to [-clip, clip] (an IR Clip before the activation).
    """
    op = node.op_type
    gates = _CELLS[op][0]
    x_name = node.inputs[0]
    w = ctx.param(node, 1, "W")
    r = ctx.param(node, 2, "R")
    b = ctx.param(node, 3, "B", optional=True)
    assert w is not None and r is not None
    shape = ctx.shape(x_name)
    if len(shape) != 3:
        raise Unsupported(f"{op}(input of rank {len(shape)})")
    layout = int(node.attr("layout", 0) or 0)
    seq_axis = 1 if layout else 0
    seq, batch = shape[seq_axis], shape[1 - seq_axis]
    directions, hidden = w.shape[0], r.shape[-1]
    direction = node.attr("direction", "forward") or "forward"
    expected = 2 if direction == "bidirectional" else 1
    if direction not in ("forward", "reverse", "bidirectional") or directions != expected:
        raise Unsupported(f"{op}(direction {direction} with {directions} weight sets)")
    features = shape[2]
    size = int(node.attr("hidden_size", hidden) or hidden)
    if (w.shape != (directions, gates * hidden, features) or r.shape != (directions, gates * hidden, hidden)
            or size != hidden or (b is not None and b.shape != (directions, 2 * gates * hidden))):
        raise ModelLoadError(f"{op} weights of shapes {[list(a.shape) for a in (w, r, b) if a is not None]} do not "
                             f"match {features} input features and hidden_size {size}")
    lens = ctx.const(node.input(4))
    if ctx.is_var(node.input(4)) or (lens is not None and (np.asarray(lens) != seq).any()):
        raise Unsupported(f"{op}(sequence_lens shorter than the sequence)")
    if op == "LSTM" and int(node.attr("input_forget", 0) or 0):
        raise Unsupported("LSTM(input_forget)")
    clip = node.attr("clip", None)
    clip = float(clip) if clip is not None else None
    linear_before_reset = op == "GRU" and bool(int(node.attr("linear_before_reset", 0) or 0))
    acts = _activations(node, directions)
    h0 = _state(ctx, node, 5, layout, (directions, batch, hidden))
    c0 = _state(ctx, node, 6, layout, (directions, batch, hidden)) if op == "LSTM" else None
    peep = ctx.param(node, 7, "P", optional=True) if op == "LSTM" else None
    if peep is not None and peep.shape != (directions, 3 * hidden):
        raise ModelLoadError(f"LSTM peepholes of shape {list(peep.shape)}, expected {[directions, 3 * hidden]}")
    b64 = np.zeros((directions, 2 * gates * hidden)) if b is None else np.asarray(b, np.float64)
    unroll = _Unroll(node, ctx, batch, hidden, clip)
    # R as a training parameter: one direction whose R h_{t-1} never meets a constant state (R h_0
    # would be folded into a constant) and is not split by gates (GRU)
    r_term = (ctx.term(node, 2, "recurrence weight (R)")
              if directions == 1 and not isinstance(h0, np.ndarray) and op != "GRU" else None)
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        wb, rb = b64[d, :gates * hidden], b64[d, gates * hidden:]
        in_bias = wb + rb
        if linear_before_reset:  # Rbh stays inside the reset gate's product
            in_bias = wb + np.concatenate([rb[:2 * hidden], np.zeros(hidden)])
        projection = unroll.emit(O.Linear(weight=np.ascontiguousarray(w[d]), bias=in_bias), [x_name], f"d{d}/proj")
        if directions == 1:  # W [1, gates * hidden, input] is the projection's weight, reshaped
            ctx.bind(projection, "weight", [ctx.term(node, 1, "weight (W)")])
        h = _direction(unroll, h0, d, layout)
        c = _direction(unroll, c0, d, layout)
        p = None if peep is None or not np.asarray(peep).any() else np.asarray(peep[d], np.float64)
        steps = range(seq - 1, -1, -1) if direction == "reverse" or d == 1 else range(seq)
        hs: dict[int, State] = {}
        for t in steps:
            unroll.where = f"d{d}t{t}/"
            x_t = unroll.step_input(projection, t, seq_axis)
            if op == "RNN":
                h = unroll.act(acts[d][0], unroll.add(x_t, unroll.linear(h, r[d], term=r_term)))
            elif op == "LSTM":
                z = unroll.add(x_t, unroll.linear(h, r[d], term=r_term))
                f_act, g_act, h_act = acts[d]

                def peephole(k: int, state: State, p: np.ndarray | None = p) -> State:
                    return None if p is None else unroll.mul(state, p[k * hidden:(k + 1) * hidden])

                i = unroll.act(f_act, unroll.add(unroll.gate(z, 0), peephole(0, c)))
                # the forget gate only scales c_{t-1}: nothing to compute while c is zero
                f = None if c is None else unroll.act(f_act, unroll.add(unroll.gate(z, 2), peephole(2, c)))
                g = unroll.act(g_act, unroll.gate(z, 3))
                c = unroll.add(unroll.mul(f, c), unroll.mul(i, g))
                o = unroll.act(f_act, unroll.add(unroll.gate(z, 1), peephole(1, c)))
                h = unroll.mul(o, unroll.act(h_act, c))
            else:  # GRU
                f_act, g_act = acts[d]
                zr = unroll.add(_first(unroll, x_t, 2 * hidden), unroll.linear(h, r[d][:2 * hidden]))
                zg = unroll.act(f_act, unroll.gate(zr, 0))

                def reset(zr: State = zr, f_act: str = f_act) -> State:  # only where it multiplies something
                    return unroll.act(f_act, unroll.gate(zr, 1))

                if linear_before_reset:
                    lin = unroll.linear(h, r[d][2 * hidden:], rb[2 * hidden:])
                    inner = None if _zero(lin) else unroll.mul(reset(), lin)
                else:
                    inner = None if _zero(h) else unroll.linear(unroll.mul(reset(), h), r[d][2 * hidden:])
                n = unroll.act(g_act, unroll.add(unroll.gate(x_t, 2), inner))
                h = unroll.add(n, unroll.mul(zg, unroll.sub(h, n)))
            hs[t] = h
        ys.append([hs[t] for t in range(seq)])
        unroll.where = ""
        last_h.append(h)
        last_c.append(c)
    _outputs(node, ctx, unroll, ys, last_h, last_c, layout)


def _zero(value: State) -> bool:
    return value is None or (isinstance(value, np.ndarray) and not value.any())


def _first(unroll: _Unroll, value: str, width: int) -> str:
    """The first ``width`` entries of the last axis of a [batch, n] value."""
    op = O.Slice(starts=(0, 0), ends=(unroll.batch, width), steps=(1, 1))
    return unroll.emit(op, [value], "zr")


def _outputs(node: OnnxNode, ctx: Context, unroll: _Unroll, ys: list[list[State]], last_h: list[State],
             last_c: list[State], layout: int) -> None:
    """Y [seq, dirs, batch, hidden], Y_h and Y_c [dirs, batch, hidden] (layout 1: batch first)."""
    batch, hidden = unroll.batch, unroll.hidden

    def var(value: State) -> str:
        if not isinstance(value, str):  # only with an empty sequence
            raise Unsupported(f"{node.op_type}(constant output)")
        return value

    def stack(values: list[State], shape: tuple[int, ...], axis: int, what: str) -> str:
        parts = [unroll.emit(O.Reshape(shape=shape), [var(v)], what) for v in values]
        return parts[0] if len(parts) == 1 else unroll.emit(O.Concat(axis=axis), parts, what)

    def write(index: int, value: str, perm: tuple[int, ...]) -> None:
        shape = ctx.shape(value)
        if layout:
            ctx.emit(node, O.Transpose(perm=perm), [value], output_index=index)
        else:
            ctx.emit(node, O.Reshape(shape=shape), [value], output_index=index)

    if len(node.outputs) > 0 and ctx.is_used(node.outputs[0]):
        per_dir = [stack(steps, (1, 1, batch, hidden), 0, "y") for steps in ys]
        y = per_dir[0] if len(per_dir) == 1 else unroll.emit(O.Concat(axis=1), per_dir, "y")
        write(0, y, (2, 0, 1, 3))
    for index, states in ((1, last_h), (2, last_c)):
        if len(node.outputs) > index and ctx.is_used(node.outputs[index]):
            write(index, stack(states, (1, batch, hidden), 0, "last"), (1, 0, 2))
