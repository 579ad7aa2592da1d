"""Fusion of exported patterns: activations (GELU via Erf or Tanh, x*Sigmoid(x), x*HardSigmoid(x)), the
decomposed LayerNorm (ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul scale, Add bias)
and RMSNorm (Pow 2, ReduceMean, Add eps, Sqrt, Div or Reciprocal and Mul, Mul scale), the
decomposed softmax (Exp(x - max x) / ReduceSum(...), as jax2tf and TensorFlow export it), and
an attention mask of -inf before a Softmax (Where(mask, x, -inf), Add(x, M) with -inf entries in M)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stabaudit.loaders.onnx_ops.common import OnnxNode

ANCHORS = frozenset({"Erf", "Sigmoid", "HardSigmoid", "Tanh", "ReduceMean", "Exp", "Softmax", "Clip"})  # fusion is tried only when one occurs


@dataclass(frozen=True, kw_only=True)
class _Match:
    nodes: tuple[OnnxNode, ...]  # consumed ONNX nodes; the last one produces the output
    fused: OnnxNode


class _Graph:
    """Producers, consumers and constants of an ONNX node list."""

    def __init__(self, nodes: Sequence[OnnxNode], constants: Mapping[str, np.ndarray], outputs: set[str]):
        self.constants = constants
        self.producer = {out: node for node in nodes for out in node.outputs}
        self.consumers: dict[str, list[OnnxNode]] = {}
        for node in nodes:
            for name in node.present_inputs:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = outputs

    def sole_consumer(self, name: str) -> OnnxNode | None:
        """The only reader of ``name`` when it is also not a graph output."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def is_scalar(self, name: str, target: float) -> bool:
        value = self.constants.get(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return False
        return abs(float(value.reshape(-1)[0]) - target) <= 1e-6 * abs(target)

    def is_exactly(self, name: str | None, target: float) -> bool:
        """Whether ``name`` is a constant scalar equal to ``target`` (no tolerance)."""
        value = None if name is None else self.constants.get(name)
        return (value is not None and value.size == 1 and value.dtype.kind in "fiu"
                and float(value.reshape(-1)[0]) == target)

    def other(self, node: OnnxNode, name: str) -> str | None:
        """The second operand of binary ``node`` that reads ``name`` once."""
        if len(node.inputs) != 2 or list(node.inputs).count(name) != 1:
            return None
        return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def _fused(op_type: str, chain: Sequence[OnnxNode], x: str, attrs: dict[str, object]) -> OnnxNode:
    last = chain[-1]
    return OnnxNode(op_type=op_type, name=last.name, inputs=(x,), outputs=(last.outputs[0],), attrs=attrs,
                    opset=last.opset, source_op="+".join(n.op_type for n in chain))


def _match_gelu(erf: OnnxNode, g: _Graph) -> _Match | None:
    """x * 0.5 * (1 + erf(x / sqrt 2)) in its usual exported forms.

    The scaled input is Div(x, sqrt 2) or Mul(x, 1/sqrt 2); 1 + erf is Add or Sum; the product
    with x and 0.5 (or a Div by 2) comes in any order, or as a separate Mul(x, 0.5).
    """
    scaled = g.producer.get(erf.inputs[0])
    if scaled is None or len(scaled.inputs) != 2 or g.sole_consumer(erf.inputs[0]) is not erf:
        return None
    if scaled.op_type == "Div" and g.is_scalar(scaled.inputs[1], math.sqrt(2.0)) or scaled.op_type == "Mul" and g.is_scalar(scaled.inputs[1], math.sqrt(0.5)):
        x = scaled.inputs[0]
    elif scaled.op_type == "Mul" and g.is_scalar(scaled.inputs[0], math.sqrt(0.5)):
        x = scaled.inputs[1]
    else:
        return None
    plus = _one_plus(erf.outputs[0], g)
    if x in g.constants or plus is None:
        return None
    return _times_half_x([scaled, erf, plus], x, g, "none")


def _one_plus(value: str, g: _Graph) -> OnnxNode | None:
    """The sole reader of ``value`` when it adds the constant 1 to it (Add or Sum)."""
    plus = g.sole_consumer(value)
    if plus is None or plus.op_type not in ("Add", "Sum"):
        return None
    one = g.other(plus, value)
    return plus if one is not None and g.is_scalar(one, 1.0) else None


def _times_half_x(chain: list[OnnxNode], x: str, g: _Graph, approximate: str) -> _Match | None:
    """The GELU patterns' last steps: the value of ``chain`` (1 + erf(...) or 1 + tanh(...)) times x
    and 0.5 (or divided by 2), in any order, or times a separate Mul(x, 0.5)."""
    value = chain[-1].outputs[0]
    need_x, need_half = True, True
    while need_x or need_half:
        step = g.sole_consumer(value)
        operand = None if step is None else g.other(step, value)
        if step is None or operand is None:
            return None
        half_mul = g.producer.get(operand)
        if step.op_type == "Div" and step.inputs[0] == value and need_half and g.is_scalar(operand, 2.0):
            need_half = False
        elif step.op_type != "Mul":
            return None
        elif need_x and operand == x:
            need_x = False
        elif need_half and g.is_scalar(operand, 0.5):
            need_half = False
        elif (need_x and need_half and half_mul is not None and half_mul.op_type == "Mul"
              and g.sole_consumer(operand) is step and x in half_mul.inputs
              and g.is_scalar(g.other(half_mul, x) or "", 0.5)):
            need_x = need_half = False
            chain.append(half_mul)
        else:
            return None
        chain.append(step)
        value = step.outputs[0]
    return _Match(nodes=tuple(chain), fused=_fused("Gelu", chain, x, {"approximate": approximate}))


def _cube_of(name: str, g: _Graph) -> tuple[str, list[OnnxNode]] | None:
    """(x, nodes) where ``name`` is x^3 as exported: Pow(x, 3), or x * (x * x) in either order."""
    node = g.producer.get(name)
    if node is None or g.sole_consumer(name) is None:
        return None
    if node.op_type == "Pow" and len(node.inputs) == 2 and g.is_scalar(node.inputs[1], 3.0):
        return node.inputs[0], [node]
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    for a, b in (node.inputs, tuple(reversed(node.inputs))):
        square = g.producer.get(b)
        if (square is not None and square.op_type == "Mul" and list(square.inputs) == [a, a]
                and g.sole_consumer(b) is node):
            return a, [square, node]
    return None


def _match_gelu_tanh(tanh: OnnxNode, g: _Graph) -> _Match | None:
    """x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))), torch's gelu(approximate="tanh")
    as the TorchScript-based exporter writes it (and GPT-2's "new GELU" in Python)."""
    scaled = g.producer.get(tanh.inputs[0])
    if scaled is None or scaled.op_type != "Mul" or len(scaled.inputs) != 2 or g.sole_consumer(tanh.inputs[0]) is not tanh:
        return None
    c = math.sqrt(2.0 / math.pi)
    inner = scaled.inputs[1] if g.is_scalar(scaled.inputs[0], c) else scaled.inputs[0] if g.is_scalar(scaled.inputs[1], c) else None
    if inner is None or g.sole_consumer(inner) is not scaled:
        return None
    total = g.producer.get(inner)
    if total is None or total.op_type != "Add" or len(total.inputs) != 2:
        return None
    for x, term in (total.inputs, tuple(reversed(total.inputs))):
        times = g.producer.get(term)
        if times is None or times.op_type != "Mul" or len(times.inputs) != 2 or g.sole_consumer(term) is not total:
            continue
        for k, cube in (times.inputs, tuple(reversed(times.inputs))):
            found = _cube_of(cube, g) if g.is_scalar(k, 0.044715) else None
            if found is None or found[0] != x or x in g.constants:
                continue
            plus = _one_plus(tanh.outputs[0], g)
            if plus is None:
                return None
            return _times_half_x([*found[1], times, total, scaled, tanh, plus], x, g, "tanh")
    return None


def _match_gated(mul: OnnxNode, g: _Graph) -> _Match | None:
    """x * Sigmoid(x) -> Swish(alpha=1) (SiLU); x * HardSigmoid(x; 1/6, 1/2) -> HardSwish;
    x * Tanh(Softplus(x)) -> Mish (the legacy exporter's Mish)."""
    if len(mul.inputs) != 2:
        return None
    for gate_name, x in (mul.inputs, tuple(reversed(mul.inputs))):
        gate = g.producer.get(gate_name)
        if gate is not None and gate.op_type == "Tanh" and g.sole_consumer(gate_name) is mul:
            soft = g.producer.get(gate.inputs[0])
            if soft is not None and soft.op_type == "Softplus" and soft.inputs[0] == x \
                    and g.sole_consumer(soft.outputs[0]) is gate:
                return _Match(nodes=(soft, gate, mul), fused=_fused("Mish", (soft, gate, mul), x, {}))
        if gate is None or gate.op_type not in ("Sigmoid", "HardSigmoid") or gate.inputs[0] != x \
                or g.sole_consumer(gate_name) is not mul:
            continue
        if gate.op_type == "Sigmoid":
            return _Match(nodes=(gate, mul), fused=_fused("Swish", (gate, mul), x, {"alpha": 1.0}))
        if (gate.op_type == "HardSigmoid" and abs(float(gate.attr("alpha")) - 1 / 6) <= 1e-6
                and float(gate.attr("beta")) == 0.5):
            return _Match(nodes=(gate, mul), fused=_fused("HardSwish", (gate, mul), x, {}))
    return None


def _relu6_of_shift(gate: OnnxNode, x: str, g: _Graph) -> OnnxNode | None:
    """The Add of Clip(x + 3, 0, 6) when ``gate`` is that Clip (bounds exactly 0 and 6, the shift
    exactly 3, the sum read only by the Clip), else None."""
    if gate.op_type != "Clip":
        return None
    if gate.opset < 11:
        low, high = gate.attr("min", None), gate.attr("max", None)
        bounded = low is not None and high is not None and float(low) == 0.0 and float(high) == 6.0
    else:
        bounded = g.is_exactly(gate.input(1), 0.0) and g.is_exactly(gate.input(2), 6.0)
    add = g.producer.get(gate.inputs[0])
    if not bounded or add is None or add.op_type != "Add" or g.sole_consumer(add.outputs[0]) is not gate:
        return None
    return add if g.other(add, x) is not None and g.is_exactly(g.other(add, x), 3.0) else None


def _sixth(node: OnnxNode | None, value: str, g: _Graph) -> float | None:
    """When ``node`` divides ``value`` by exactly 6 or multiplies it by a constant c near 1/6: the
    factor 6 c that remains once the division by 6 is taken out (1 for the exact division; 6 c
    only where it is exact in float64), else None."""
    from fractions import Fraction

    if node is None:
        return None
    if node.op_type == "Div" and node.inputs[0] == value and g.is_exactly(node.inputs[1], 6.0):
        return 1.0
    other = g.other(node, value) if node.op_type == "Mul" else None
    if other is None or not g.is_scalar(other, 1 / 6):
        return None
    c = float(np.asarray(g.constants[other]).reshape(-1)[0])
    return 6.0 * c if Fraction(6.0 * c) == 6 * Fraction(c) else None


def _match_hard_swish_clip(mul: OnnxNode, g: _Graph) -> _Match | None:
    """HardSwish written with a Clip, as paddle2onnx and TensorFlow exports write it: x * Clip(x + 3,
    0, 6) / 6 (the division after the product, or on the Clip before it; a Div by 6 or a Mul by a
    constant near 1/6). The fused node is HardSwish(x) = x * max(0, min(1, x / 6 + 1/2)) times the
    factor the constant leaves (``_scale``: 6 c for a Mul by c, exact in float64; 1 for a Div by
    6), so the map is the stored one exactly. Without a division it is 6 HardSwish(x)."""
    if len(mul.inputs) != 2:
        return None
    for gate_name, x in (mul.inputs, tuple(reversed(mul.inputs))):
        gate = g.producer.get(gate_name)
        if gate is None or g.sole_consumer(gate_name) is not mul:
            continue
        scaled = None
        if gate.op_type in ("Div", "Mul"):  # the division on the gate: x * (Clip(x + 3, 0, 6) / 6)
            inner = g.producer.get(gate.inputs[0]) if gate.op_type == "Div" else next(
                (g.producer.get(n) for n in gate.inputs if g.producer.get(n) is not None
                 and g.producer[n].op_type == "Clip"), None)
            if inner is None or g.sole_consumer(inner.outputs[0]) is not gate:
                continue
            scaled = _sixth(gate, inner.outputs[0], g)
            if scaled is None:
                continue
            gate, divide = inner, gate
        add = _relu6_of_shift(gate, x, g)
        if add is None:
            continue
        if scaled is not None:
            return _Match(nodes=(add, gate, divide, mul),
                          fused=_fused("HardSwish", (add, gate, divide, mul), x, {"_scale": scaled}))
        after = g.sole_consumer(mul.outputs[0])
        factor = _sixth(after, mul.outputs[0], g)
        if after is not None and factor is not None:
            return _Match(nodes=(add, gate, mul, after),
                          fused=_fused("HardSwish", (add, gate, mul, after), x, {"_scale": factor}))
        return _Match(nodes=(add, gate, mul), fused=_fused("HardSwish", (add, gate, mul), x, {"_scale": 6.0}))
    return None


def _axes(node: OnnxNode, g: _Graph) -> tuple[int, ...] | None:
    """The axes a Reduce* node names (attribute before opset 18, constant input after); None when
    they are computed or absent."""
    if len(node.inputs) > 1 and node.inputs[1]:
        value = g.constants.get(node.inputs[1])
        if value is None:
            return None
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    else:
        axes = list(node.attr("axes", None) or [])
    return tuple(axes) if axes else None


def _reduce_axes(node: OnnxNode, g: _Graph) -> tuple[int, ...] | None:
    """The axes of a ReduceMean that keeps dims."""
    if node.op_type != "ReduceMean" or not node.attr("keepdims", 1):
        return None
    return _axes(node, g)


def _eps_root(g: _Graph, value: str) -> tuple[OnnxNode, np.ndarray, OnnxNode] | None:
    """sqrt(value + eps) as normalisations write it: the sole consumer of ``value`` an Add of a
    positive scalar constant eps, its sole consumer a Sqrt; (the Add, eps, the Sqrt) or None."""
    add = g.sole_consumer(value)
    eps_name = None if add is None or add.op_type != "Add" else g.other(add, value)
    eps = None if eps_name is None else g.constants.get(eps_name)
    if add is None or eps is None or eps.size != 1 or eps.dtype.kind != "f" or not float(eps.reshape(-1)[0]) > 0.0:
        return None
    root = g.sole_consumer(add.outputs[0])
    if root is None or root.op_type != "Sqrt":
        return None
    return add, eps, root


def _match_layer_norm(mean: OnnxNode, g: _Graph) -> _Match | None:
    """(x - m) / sqrt(mean((x - m)^2) + eps) [* scale] [+ bias] with m = mean(x) over trailing axes.

    The square is Pow(d, 2) or Mul(d, d); eps is a scalar constant added to the variance; the scale
    and bias are constants (Mul and Add after the Div, in that order, each optional).
    """
    axes = _reduce_axes(mean, g)
    x = mean.inputs[0]
    if axes is None or x in g.constants:
        return None
    sub = g.sole_consumer(mean.outputs[0])
    if sub is None or sub.op_type != "Sub" or tuple(sub.inputs) != (x, mean.outputs[0]):
        return None
    d = sub.outputs[0]
    users = list({id(u): u for u in g.consumers.get(d, [])}.values())  # Mul(d, d) reads d twice
    if d in g.outputs:
        return None
    square = next((u for u in users if u.op_type == "Pow" and u.inputs[0] == d and g.is_scalar(u.inputs[1], 2.0)
                   or u.op_type == "Mul" and tuple(u.inputs) == (d, d)), None)
    div = next((u for u in users if u.op_type == "Div" and u.inputs[0] == d), None)
    if square is None or div is None or len(users) != 2:
        return None
    var = g.sole_consumer(square.outputs[0])
    if var is None or _reduce_axes(var, g) != axes or var.inputs[0] != square.outputs[0]:
        return None
    found = _eps_root(g, var.outputs[0])
    if found is None:
        return None
    add, eps, root = found
    if g.sole_consumer(root.outputs[0]) is not div or div.inputs[1] != root.outputs[0]:
        return None
    chain = [mean, sub, square, var, add, root, div]
    scale = bias = ""
    step = g.sole_consumer(div.outputs[0])
    if step is not None and step.op_type == "Mul":
        other = g.other(step, div.outputs[0])
        if other is not None and other in g.constants:
            scale = other
            chain.append(step)
            step = g.sole_consumer(step.outputs[0])
    if step is not None and step.op_type == "Add":
        other = g.other(step, chain[-1].outputs[0])
        if other is not None and other in g.constants:
            bias = other
            chain.append(step)
    last = chain[-1]
    fused = OnnxNode(op_type="LayerNormalization", name=last.name, inputs=(x, scale, bias),
                     outputs=(last.outputs[0],),
                     attrs={"axis": min(axes), "epsilon": float(eps.reshape(-1)[0]), "_axes": axes},
                     opset=last.opset, source_op="+".join(n.op_type for n in chain))
    return _Match(nodes=tuple(chain), fused=fused)


def _trailing_only(value: np.ndarray, count: int) -> bool:
    """Whether a constant varies along the last ``count`` axes only (leading 1s dropped)."""
    shape = list(np.shape(value))
    while shape and shape[0] == 1:
        shape.pop(0)
    return len(shape) <= count


def _match_rms_norm(mean: OnnxNode, g: _Graph) -> _Match | None:
    """x / sqrt(mean(x^2) + eps) [* scale] over trailing axes (RMSNorm as T5 and LLaMA-style
    models export it): the square is Pow(x, 2) or Mul(x, x); then ReduceMean, Add eps, Sqrt, and
    either Div(x, root) or Reciprocal(root) (or Div(1, root)) times x; the scale a constant Mul."""
    axes = _reduce_axes(mean, g)
    square = g.producer.get(mean.inputs[0])
    if axes is None or square is None or g.sole_consumer(square.outputs[0]) is not mean:
        return None
    squares = (square.op_type == "Pow" and g.is_scalar(square.inputs[1], 2.0)
               or square.op_type == "Mul" and square.inputs[0] == square.inputs[1])
    x = square.inputs[0]
    if not squares or x in g.constants:
        return None
    found = _eps_root(g, mean.outputs[0])
    if found is None:
        return None
    add, eps, root = found
    chain = [square, mean, add, root]
    step = g.sole_consumer(root.outputs[0])
    if step is None:
        return None
    if step.op_type == "Div" and tuple(step.inputs) == (x, root.outputs[0]):
        chain.append(step)
    else:
        if step.op_type == "Reciprocal" or step.op_type == "Div" and step.inputs[1] == root.outputs[0] \
                and g.is_scalar(step.inputs[0], 1.0):
            chain.append(step)
        else:
            return None
        mul = g.sole_consumer(step.outputs[0])
        if mul is None or mul.op_type != "Mul" or g.other(mul, step.outputs[0]) != x:
            return None
        chain.append(mul)
    scale = ""
    after = g.sole_consumer(chain[-1].outputs[0])
    if after is not None and after.op_type == "Mul":
        other = g.other(after, chain[-1].outputs[0])
        if other is not None and other in g.constants and _trailing_only(g.constants[other], len(axes)):
            scale = other
            chain.append(after)
    last = chain[-1]
    fused = OnnxNode(op_type="RMSNormalization", name=last.name, inputs=(x, scale), outputs=(last.outputs[0],),
                     attrs={"axis": min(axes), "epsilon": float(eps.reshape(-1)[0]), "_axes": axes},
                     opset=last.opset, source_op="+".join(n.op_type for n in chain))
    return _Match(nodes=tuple(chain), fused=fused)


_BROADCASTS = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity")  # moves of a reduced value


def _single_axis(node: OnnxNode, g: _Graph) -> int | None:
    """The one axis a ReduceSum/ReduceMax reduces over (attribute or constant input), else None."""
    axes = _axes(node, g)
    return axes[0] if axes is not None and len(axes) == 1 else None


def _match_softmax(exp: OnnxNode, g: _Graph) -> _Match | None:
    """Exp(x - B) / ReduceSum(Exp(x - B), axis a) -> Softmax(x, axis a), B = ReduceMax(x, axis a)
    (through Reshape/Expand/Unsqueeze and a Max with a constant, as exported) or no shift at all.

    Exact for any B constant along the axis: exp(x_i - B) / sum_j exp(x_j - B) = softmax(x)_i;
    the engine's forward pass is still checked against onnxruntime. Every consumed value must be
    read by the pattern alone."""
    e = exp.outputs[0]
    if e in g.outputs:
        return None
    users = list({id(u): u for u in g.consumers.get(e, [])}.values())
    total = next((u for u in users if u.op_type == "ReduceSum" and u.inputs[0] == e), None)
    div = next((u for u in users if u.op_type == "Div" and u.inputs[0] == e), None)
    if total is None or div is None or len(users) != 2:
        return None
    axis = _single_axis(total, g)
    if axis is None:
        return None
    chain = [total]
    cur = total.outputs[0]
    while True:
        step = g.sole_consumer(cur)
        if step is None:
            return None
        if step is div:
            if div.inputs[1] != cur:
                return None
            break
        if step.op_type not in _BROADCASTS or step.inputs[0] != cur:
            return None
        chain.append(step)
        cur = step.outputs[0]
    x = exp.inputs[0]
    head: list[OnnxNode] = []
    sub = g.producer.get(x)
    if sub is not None and sub.op_type == "Sub" and g.sole_consumer(x) is exp:
        shift: list[OnnxNode] = []
        cur = sub.inputs[1]
        while True:
            node = g.producer.get(cur)
            if node is None or g.sole_consumer(cur) is None:
                return None
            if node.op_type in _BROADCASTS:
                shift.append(node)
                cur = node.inputs[0]
            elif node.op_type in ("Max", "Min") and len(node.inputs) == 2:
                other = g.other(node, next((i for i in node.inputs if i not in g.constants), ""))
                if other is None or other not in g.constants:
                    return None
                shift.append(node)
                cur = next(i for i in node.inputs if i not in g.constants)
            elif node.op_type == "ReduceMax" and node.inputs[0] == sub.inputs[0] \
                    and _single_axis(node, g) == axis:
                shift.append(node)
                break
            else:
                return None
        head = [*reversed(shift), sub]
        x = sub.inputs[0]
    if x in g.constants:
        return None
    nodes = (*head, exp, *chain, div)
    fused = OnnxNode(op_type="Softmax", name=div.name, inputs=(x,), outputs=(div.outputs[0],),
                     attrs={"axis": axis}, opset=max(div.opset, 13),
                     source_op="+".join(n.op_type for n in nodes))
    return _Match(nodes=nodes, fused=fused)


def _minus_inf(value: np.ndarray | None) -> bool:
    return value is not None and value.dtype.kind == "f" and value.size > 0 and bool(np.all(value == -np.inf))


def _match_masked_softmax(softmax: OnnxNode, g: _Graph) -> _Match | None:
    """Where(c, x, -inf) -> Softmax (or Where(c, -inf, x)), c constant, and Add(x, M) -> Softmax with
    M constant holding -inf entries and finite others: one Softmax with a mask (the entries the
    -inf drops) and, for the Add, the finite part of M as a shift. Exact: e^-inf is 0, so the
    dropped entries output 0 and the others are the softmax of their row's kept entries (the
    masked_fill(-inf) of causal and padding attention masks)."""
    x = softmax.inputs[0]
    prod = g.producer.get(x)
    if prod is None or g.sole_consumer(x) is not softmax:
        return None
    attrs: dict[str, object] = dict(softmax.attrs)
    if prod.op_type == "Where" and len(prod.inputs) == 3:
        cond, a, b = (g.constants.get(name) for name in prod.inputs)
        if cond is None or cond.dtype != np.bool_:
            return None
        if _minus_inf(b) and a is None:
            source, kept = prod.inputs[1], cond
        elif _minus_inf(a) and b is None:
            source, kept = prod.inputs[2], ~cond
        else:
            return None
        attrs["_mask"] = np.asarray(kept, dtype=bool)
    elif prod.op_type == "Add" and len(prod.inputs) == 2:
        consts = [g.constants.get(name) for name in prod.inputs]
        k = next((i for i, c in enumerate(consts) if c is not None), None)
        if k is None or consts[1 - k] is not None:
            return None
        m = np.asarray(consts[k])
        if m.dtype.kind != "f" or not np.any(m == -np.inf) or np.any(np.isnan(m) | (m == np.inf)):
            return None
        source = prod.inputs[1 - k]
        attrs["_mask"] = m > -np.inf
        shift = np.where(m > -np.inf, m, 0.0)
        if np.any(shift != 0.0):
            attrs["_shift"] = shift
    else:
        return None
    fused = OnnxNode(op_type="Softmax", name=softmax.name, inputs=(source,), outputs=softmax.outputs, attrs=attrs,
                     opset=softmax.opset, source_op=f"{prod.op_type}+Softmax")
    return _Match(nodes=(prod, softmax), fused=fused)


def fuse_patterns(nodes: Sequence[OnnxNode], constants: Mapping[str, np.ndarray],
                  outputs: set[str]) -> tuple[list[OnnxNode], list[str]]:
    """The node list with each matched pattern replaced by one node at its last node's place.

    ``constants`` are the values known after a first translation pass (so constants computed
    in the graph, like CastLike(2) -> Sqrt, are seen). Returns the nodes and the fused labels.
    """
    g = _Graph(nodes, constants, outputs)
    taken: set[int] = set()
    replace: dict[int, OnnxNode] = {}
    labels: list[str] = []
    for node in nodes:
        match = None
        if node.op_type == "Erf":
            match = _match_gelu(node, g)
        elif node.op_type == "Tanh":
            match = _match_gelu_tanh(node, g)
        elif node.op_type == "Mul":
            match = _match_gated(node, g) or _match_hard_swish_clip(node, g)
        elif node.op_type == "ReduceMean":
            match = _match_layer_norm(node, g) or _match_rms_norm(node, g)
        elif node.op_type == "Exp":
            match = _match_softmax(node, g)
        elif node.op_type == "Softmax":
            match = _match_masked_softmax(node, g)
        if match is None or any(id(n) in taken for n in match.nodes):
            continue
        taken.update(id(n) for n in match.nodes)
        replace[id(match.nodes[-1])] = match.fused
        labels.append(f"{match.fused.op_type} ({match.fused.source_op})")
    fused = [replace.get(id(n), n) for n in nodes if id(n) not in taken or id(n) in replace]
    return fused, labels
