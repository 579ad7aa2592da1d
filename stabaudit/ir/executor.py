"""A torch executor of the IR: forward passes in any dtype/device, usable under autograd and vmap."""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node

if TYPE_CHECKING:
    import torch

Kernel = Callable[[Sequence["torch.Tensor"]], "torch.Tensor"]


def _torch_pads(pads: tuple[int, ...]) -> list[int]:
    """IR pads (begin..., end...) over the last N axes -> F.pad order (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


_COPIES_LOCK = threading.RLock()  # reentrant: a weakref callback may run inside (a collection)
_COPIES: dict[int, tuple[weakref.ref[np.ndarray], np.ndarray]] = {}


def float64_copy(array: np.ndarray) -> np.ndarray:
    """A float64 copy of ``array`` that the caller must not modify, shared by every caller while
    ``array`` lives when ``array`` is read-only (the operators' parameters are: ``ops._arr``).

    Every executor holds its parameters as tensors over such copies (torch.from_numpy: no copy of
    its own in float64 on the CPU), so the executors of one graph that an audit builds (the
    equivalence check's, the error model's, the searches') hold one float64 copy of each weight
    between them instead of one each (on an MLP of width 4096, 537 MB in all instead of 537 MB
    per executor: fresh memory each time, which the process pays for in page faults). No kernel modifies
    a parameter in place. A read-only array is taken as constant (no one writes to an operator's
    parameters); a writable array (one that may change) gets a copy of its own."""
    a = np.asarray(array)
    if a.flags.writeable:
        return np.array(a, dtype=np.float64)
    key = id(a)
    with _COPIES_LOCK:
        held = _COPIES.get(key)
        if held is not None and held[0]() is a:
            return held[1]
        copy = np.array(a, dtype=np.float64)
        try:
            ref = weakref.ref(a, functools.partial(_dropped, key))
        except TypeError:  # not weakly referable: not shared
            return copy
        _COPIES[key] = (ref, copy)
        return copy


def float64_view(array: np.ndarray) -> np.ndarray:
    """``float64_copy(array)`` as a read-only view: for numpy readers of the parameters (writing
    into it raises, so no reader can change what the executors compute)."""
    view = float64_copy(array).view()
    view.setflags(write=False)
    return view


def _dropped(key: int, _ref: weakref.ref[np.ndarray]) -> None:
    with _COPIES_LOCK:
        held = _COPIES.get(key)
        if held is not None and held[0]() is None:
            del _COPIES[key]


def _kernel(op: O.Op, param: Callable[[np.ndarray], torch.Tensor]) -> Kernel:
    """The torch function of one op; parameters converted once through ``param``."""
    import torch
    import torch.nn.functional as F

    match op:
        case O.Linear(weight=w, bias=b):
            wt, bt = param(w), (param(b) if b is not None else None)
            return lambda a: F.linear(a[0], wt, bt)
        case O.Conv(weight=w, bias=b, strides=s, pads=p, dilations=d, groups=g):
            wt, bt = param(w), (param(b) if b is not None else None)
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(s)]
            tp = _torch_pads(p)
            return lambda a: conv(F.pad(a[0], tp) if any(tp) else a[0], wt, bt, s, 0, d, g)
        case O.ConvTranspose(weight=w, bias=b, strides=s, pads=p, dilations=d, groups=g, output_padding=op_):
            wt, bt = param(w), (param(b) if b is not None else None)
            convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(s)]
            n = len(s)

            def conv_transpose(a: Sequence[torch.Tensor]) -> torch.Tensor:
                # full transposed conv, then crop pads (begin, end) and append output_padding
                y = convt(a[0], wt, bt, s, 0, op_, g, d)
                index: list[slice] = [slice(None), slice(None)]
                for i in range(n):
                    index.append(slice(p[i], y.shape[2 + i] - p[i + n]))
                return y[tuple(index)]

            return conv_transpose
        case O.Affine(scale=sc, shift=sh):
            st = param(sc) if sc is not None else None
            ht = param(sh) if sh is not None else None

            def affine(a: Sequence[torch.Tensor]) -> torch.Tensor:
                y = a[0]
                if st is not None:
                    y = y * st
                if ht is not None:
                    y = y + ht
                return y

            return affine
        case O.Add():
            return lambda a: a[0] + a[1]
        case O.Sub():
            return lambda a: a[0] - a[1]
        case O.Mul():
            return lambda a: a[0] * a[1]
        case O.Div():
            return lambda a: a[0] / a[1]
        case O.MatMul():
            return lambda a: torch.matmul(a[0], a[1])
        case O.Pow(exponent=exponent):
            return lambda a: torch.pow(a[0], exponent)
        case O.Sqrt():
            return lambda a: torch.sqrt(a[0])
        case O.Reciprocal():
            return lambda a: torch.reciprocal(a[0])
        case O.Exp():
            return lambda a: torch.exp(a[0])
        case O.Log():
            return lambda a: torch.log(a[0])
        case O.Erf():
            return lambda a: torch.erf(a[0])
        case O.Sin():
            return lambda a: torch.sin(a[0])
        case O.Cos():
            return lambda a: torch.cos(a[0])
        case O.Relu():
            return lambda a: F.relu(a[0])
        case O.LeakyRelu(alpha=alpha):
            return lambda a: F.leaky_relu(a[0], alpha)
        case O.PRelu(slope=slope):
            sl = param(slope)
            return lambda a: torch.where(a[0] >= 0, a[0], a[0] * sl)
        case O.Sigmoid():
            return lambda a: torch.sigmoid(a[0])
        case O.Tanh():
            return lambda a: torch.tanh(a[0])
        case O.Softplus(beta=beta, threshold=None):
            # the smooth formula everywhere, as onnxruntime computes it (no switch to x at any
            # threshold); logaddexp(z, 0) = log(1 + e^z) without overflow, with its exact gradient
            return lambda a: torch.logaddexp(a[0] * beta, torch.zeros_like(a[0])) / beta
        case O.Softplus(beta=beta, threshold=float() as threshold):
            # torch's own kernel: x itself where beta * x > threshold (the branch the loaded
            # TorchScript module executes, so that equivalence holds exactly)
            return lambda a: F.softplus(a[0], beta=beta, threshold=threshold)
        case O.Elu(alpha=alpha):
            return lambda a: F.elu(a[0], alpha)
        case O.Gelu(approximate=approx):
            return lambda a: F.gelu(a[0], approximate=approx)
        case O.HardSigmoid(alpha=alpha, beta=beta):
            return lambda a: torch.clamp(a[0] * alpha + beta, 0.0, 1.0)
        case O.HardSwish():
            return lambda a: F.hardswish(a[0])
        case O.Silu():
            return lambda a: F.silu(a[0])
        case O.Mish():
            # as its definition: torch's fused mish has no batching rule for its backward pass
            return lambda a: a[0] * torch.tanh(F.softplus(a[0]))
        case O.Clip(min=lo, max=hi):
            return lambda a: torch.clamp(a[0], lo, hi)
        case O.Softmax(axis=axis, mask=None):
            return lambda a: torch.softmax(a[0], dim=axis)
        case O.Softmax(axis=axis, mask=mask):
            dropped = torch.from_numpy(~np.asarray(mask, dtype=bool))
            return lambda a: torch.softmax(a[0].masked_fill(dropped.to(a[0].device), -math.inf), dim=axis)
        case O.MaxPool(kernel=k, strides=s, pads=p, dilations=d, ceil_mode=cm):
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(k)]
            tp = _torch_pads(p)
            return lambda a: pool(
                F.pad(a[0], tp, value=-float("inf")) if any(tp) else a[0], k, s, 0, d, ceil_mode=cm
            )
        case O.AvgPool():
            return _avg_pool_kernel(op)
        case O.GlobalAvgPool():
            return lambda a: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)
        case O.GlobalMaxPool():
            return lambda a: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True)
        case O.Reshape(shape=shape):
            return lambda a: a[0].reshape(shape)
        case O.Transpose(perm=perm):
            return lambda a: a[0].permute(perm)
        case O.Pad(pads=p, value=v):
            tp = _torch_pads(p)
            return lambda a: F.pad(a[0], tp, value=v)
        case O.Concat(axis=axis):
            return lambda a: torch.cat(list(a), dim=axis)
        case O.Slice():
            return _slice_kernel(op)
        case O.Resize():
            return _resize_kernel(op, param)
        case O.Gather(axis=axis, indices=indices):
            return _gather_kernel(axis, indices)
        case O.Tile(repeats=repeats):
            return lambda a: a[0].repeat(*repeats)
        case O.Abs():
            return lambda a: torch.abs(a[0])
        case O.Where():
            return _where_kernel(op, param)
        case O.LayerNorm(axis=axis, epsilon=eps, scale=sc, bias=b, centered=centered):
            st = param(sc) if sc is not None else None
            bt = param(b) if b is not None else None

            def layer_norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
                dims = tuple(range(axis, a[0].dim()))
                d = a[0] - a[0].mean(dim=dims, keepdim=True) if centered else a[0]
                y = d / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + eps)
                if st is not None:
                    y = y * st
                if bt is not None:
                    y = y + bt
                return y

            return layer_norm
        case O.Reduce():
            return _reduce_kernel(op)
        case O.Max(constant=c) | O.Min(constant=c):
            ct = param(c) if c is not None else None
            pick = torch.maximum if isinstance(op, O.Max) else torch.minimum

            def extremum(a: Sequence[torch.Tensor]) -> torch.Tensor:
                y = a[0]
                for other in a[1:]:
                    y = pick(y, other)
                return pick(y, ct) if ct is not None else y

            return extremum
        case O.Quantize():
            return _quantize_kernel(op)
        case O.DynamicQuantize():
            return _dynamic_quantize_kernel(op)
    raise ModelLoadError(f"the executor has no kernel for {type(op).__name__}")


def _quantize_kernel(op: O.Quantize) -> Kernel:
    """ONNX QuantizeLinear: clamp(round(x / s) + zp, qmin, qmax) with torch.round (half to even, as
    ONNX rounds), then DequantizeLinear (q - zp) * s unless ``integer``; ``smooth``: the clip alone.
    The rounding decisions are made in float32, the arithmetic of the runtimes that execute
    quantized models (x / s in float64 would round some float32 ties the other way)."""
    import torch

    lo, hi = float(op.qmin), float(op.qmax)

    def quantize(a: Sequence[torch.Tensor]) -> torch.Tensor:
        x = a[0]
        scale, zero, shape = op.steps(x.dim())
        if op.smooth:
            s = torch.tensor(scale, dtype=x.dtype, device=x.device).reshape(shape)
            z = torch.tensor(zero, dtype=x.dtype, device=x.device).reshape(shape)
            c = torch.clamp(x, s * (lo - z), s * (hi - z))
            return c / s + z if op.integer else c
        s = torch.tensor(scale, dtype=torch.float32, device=x.device).reshape(shape)
        z = torch.tensor(zero, dtype=torch.float32, device=x.device).reshape(shape)
        q = torch.clamp(torch.round(x.to(torch.float32) / s) + z, lo, hi)
        return (q if op.integer else (q - z) * s).to(x.dtype)

    return quantize


def _dynamic_quantize_kernel(op: O.DynamicQuantize) -> Kernel:
    """ONNX DynamicQuantizeLinear (uint8): the step and zero point from the whole tensor's range."""
    import torch

    def dynamic_quantize(a: Sequence[torch.Tensor]) -> torch.Tensor:
        if op.smooth and op.part is O.QuantPart.DEQUANTIZED:
            return a[0]
        return part(a[0].to(torch.float32)).to(a[0].dtype)

    def part(x: torch.Tensor) -> torch.Tensor:
        # in float32, as the runtimes compute the step, the zero point and the rounding
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        s = (hi - lo) / 255.0
        zp = torch.clamp(torch.round(-lo / s), 0.0, 255.0)
        match op.part:
            case O.QuantPart.SCALE:
                return s
            case O.QuantPart.ZERO_POINT:
                return zp
        q = torch.clamp(torch.round(x / s) + zp, 0.0, 255.0)
        return q if op.part is O.QuantPart.INTEGER else (q - zp) * s

    return dynamic_quantize


def _where_kernel(op: O.Where, param: Callable[[np.ndarray], torch.Tensor]) -> Kernel:
    """torch.where on the condition as the model computes it: the constant mask, or the test or
    comparison of the tested input(s) (NaN compares false, as in ONNX), negated with ``negate``."""
    import torch

    tests: dict[str, Callable[..., torch.Tensor]] = {
        "isnan": torch.isnan, "isinf": torch.isinf, "isposinf": torch.isposinf, "isneginf": torch.isneginf,
        "greater": torch.gt, "greater_equal": torch.ge, "less": torch.lt, "less_equal": torch.le, "equal": torch.eq,
    }
    if op.test and op.test not in tests:
        raise ModelLoadError(f"Where has an unknown test {op.test!r}")
    k = op.tested
    mask = None if op.mask is None else np.array(op.mask, dtype=bool)  # a writable copy for torch
    other = param(op.other) if op.other is not None else None
    when_true = param(op.when_true) if op.when_true is not None else None
    when_false = param(op.when_false) if op.when_false is not None else None

    def where(a: Sequence[torch.Tensor]) -> torch.Tensor:
        rest = list(a[k:])
        x = when_true if when_true is not None else rest.pop(0)
        y = when_false if when_false is not None else rest.pop(0)
        if not op.test:
            assert mask is not None
            c = torch.as_tensor(mask, device=x.device)
        elif op.test in O.NONFINITE_TESTS:
            c = tests[op.test](a[0])
        else:
            c = tests[op.test](a[0], other if other is not None else a[1])
        if op.negate:
            c = torch.logical_not(c)
        return torch.where(c, x, y)

    return where


def _reduce_kernel(op: O.Reduce) -> Kernel:
    """A reduction over ``op.axes``; no axis: each entry is its own group (torch would reduce all)."""
    import torch

    axes, keep = op.axes, op.keepdims
    if not axes:
        if isinstance(op, O.ReduceL2 | O.ReduceL1):
            return lambda a: a[0].abs()
        if isinstance(op, O.ReduceSumSquare):
            return lambda a: a[0] * a[0]
        return lambda a: a[0]
    match op:
        case O.ReduceSum():
            return lambda a: a[0].sum(dim=axes, keepdim=keep)
        case O.ReduceMean():
            return lambda a: a[0].mean(dim=axes, keepdim=keep)
        case O.ReduceL2():
            # torch's norm has a zero subgradient at 0 (sqrt of a sum of squares would give NaN)
            return lambda a: torch.linalg.vector_norm(a[0], 2, dim=axes, keepdim=keep)
        case O.ReduceMax():
            return lambda a: a[0].amax(dim=axes, keepdim=keep)
        case O.ReduceMin():
            return lambda a: a[0].amin(dim=axes, keepdim=keep)
        case O.ReduceL1():
            return lambda a: a[0].abs().sum(dim=axes, keepdim=keep)
        case O.ReduceSumSquare():
            return lambda a: (a[0] * a[0]).sum(dim=axes, keepdim=keep)
        case O.ReduceLogSumExp():
            return lambda a: torch.logsumexp(a[0], dim=axes, keepdim=keep)
    raise ModelLoadError(f"the executor has no kernel for {type(op).__name__}")


def _slice_kernel(op: O.Slice) -> Kernel:
    """Basic slicing on axes with positive steps, an index_select on axes walking backwards."""
    import torch

    def slice_(a: Sequence[torch.Tensor]) -> torch.Tensor:
        y = a[0]
        for axis, (b, e, s) in enumerate(zip(op.starts, op.ends, op.steps, strict=True)):
            if s > 0:
                index: list[slice] = [slice(None)] * y.dim()
                index[axis] = slice(b, e, s)
                y = y[tuple(index)]
            else:
                keep = torch.arange(b, e, s, device=y.device)
                y = y.index_select(axis, keep)
        return y

    return slice_


def _resize_kernel(op: O.Resize, param: Callable[[np.ndarray], torch.Tensor]) -> Kernel:
    """One matrix product per resized axis (ir.resize), then the extrapolation value on the
    positions outside the input (tf_crop_and_resize): the composition is the separable map."""
    import torch

    from stabaudit.ir.resize import axis_matrix, validate

    try:
        validate(op)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    steps = []
    for k, axis in enumerate(op.axes):
        matrix, outside = axis_matrix(op, k)
        fill = None if outside is None else param(outside.astype(np.float64) * op.extrapolation_value)
        steps.append((axis, param(matrix), fill))

    def resize(a: Sequence[torch.Tensor]) -> torch.Tensor:
        y = a[0]
        for axis, m, fill in steps:
            if y.shape[axis] != m.shape[1]:
                raise ValueError(f"Resize expects {m.shape[1]} entries on axis {axis}, got {y.shape[axis]}")
            y = torch.movedim(torch.tensordot(m.to(y.dtype), y, dims=([1], [axis])), 0, axis)
            if fill is not None:
                shape = [1] * y.dim()
                shape[axis] = -1
                y = y + fill.to(y.dtype).reshape(shape)
        return y

    return resize
def _gather_kernel(axis: int, indices: np.ndarray) -> Kernel:
    """numpy ``take`` along ``axis`` by resolved (non-negative) constant indices."""
    import torch

    flat = np.array(indices, dtype=np.int64).reshape(-1)  # a writable copy for torch
    index_shape = tuple(int(d) for d in np.shape(indices))
    steps = np.diff(flat)
    if axis >= 0 and flat.size and (flat.size == 1 or (steps[0] > 0 and np.all(steps == steps[0]))):
        # an evenly spaced run of indices (a scalar index: one) is a strided view, no copy
        start, step = int(flat[0]), int(steps[0]) if flat.size > 1 else 1
        stop = start + step * (flat.size - 1) + 1

        def strided(a: Sequence[torch.Tensor]) -> torch.Tensor:
            y = a[0]
            picked = y[(slice(None),) * axis + (slice(start, stop, step),)]
            return picked.reshape(*y.shape[:axis], *index_shape, *y.shape[axis + 1:])

        return strided

    def gather(a: Sequence[torch.Tensor]) -> torch.Tensor:
        y = a[0]
        idx = torch.as_tensor(flat, device=y.device)
        picked = y.index_select(axis, idx)
        return picked.reshape(*y.shape[:axis], *index_shape, *y.shape[axis + 1:])

    return gather


def _avg_pool_kernel(op: O.AvgPool) -> Kernel:
    """Average pooling as (window sum) / (window count): exact for asymmetric pads and ceil mode."""
    import torch
    import torch.nn.functional as F

    n = len(op.kernel)
    tp = _torch_pads(op.pads)
    if any(d != 1 for d in op.dilations):
        raise ModelLoadError("AveragePool with dilations is not supported")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]

    def sum_pool(x: torch.Tensor) -> torch.Tensor:
        if n == 1:  # avg_pool1d has no divisor_override
            return pool(x, op.kernel, op.strides, 0, op.ceil_mode, True) * op.kernel[0]
        return pool(x, op.kernel, op.strides, 0, op.ceil_mode, True, 1)  # type: ignore[call-arg]

    def avg_pool(a: Sequence[torch.Tensor]) -> torch.Tensor:
        x = a[0]
        spatial = x.shape[-n:]
        if op.count_include_pad:
            mask = F.pad(torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device), tp, value=1.0)
        else:
            mask = F.pad(torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device), tp, value=0.0)
        xs = F.pad(x, tp) if any(tp) else x
        return sum_pool(xs) / sum_pool(mask)

    return avg_pool


ParameterKey = tuple[str, str]  # (node name, field of its op), e.g. ("fc1", "weight")


def parameter_arrays(graph: Graph) -> dict[ParameterKey, np.ndarray]:
    """Every floating-point parameter array of the graph's ops, keyed (node name, field), in node
    order and field order: the parameters theta that training updates."""
    out: dict[ParameterKey, np.ndarray] = {}
    for node in graph.nodes:
        for field, value in vars(node.op).items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                out[(node.name, field)] = value
    return out


def released_after(nodes: Sequence[Node], kept: frozenset[str]) -> list[tuple[str, ...]]:
    """Per node, the values it is the last reader of (other than ``kept``): what a run without
    ``keep`` releases once that node has run."""
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            last[name] = i
    return [tuple(sorted({name for name in node.inputs if last[name] == i and name not in kept}))
            for i, node in enumerate(nodes)]


class Executor:
    """Runs a graph in torch; parameters are converted once to ``dtype`` on ``device``.

    ``parameters`` substitutes tensors for some of the ops' arrays (keys as in
    ``parameter_arrays``): they are used as given, so autograd differentiates with respect to them.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        dtype: Any = None,
        device: str = "cpu",
        parameters: Mapping[ParameterKey, torch.Tensor] | None = None,
    ):
        import torch

        self.graph = graph
        self.dtype = dtype if dtype is not None else torch.float32
        self.device = device
        self._kernels: list[tuple[Node, Kernel]] = []
        # a run without ``keep`` holds only the live values
        self._dead = released_after(graph.nodes, frozenset(graph.outputs))
        for node in graph.nodes:
            try:
                param = self._param if not parameters else self._substituting(node, parameters)
                self._kernels.append((node, _kernel(node.op, param)))
            except ModelLoadError as exc:
                raise ModelLoadError(f"node {node.name!r} ({node.op.type.value}): {exc}") from exc

    def _param(self, array: np.ndarray) -> torch.Tensor:
        import torch

        if self.dtype == torch.float32:  # its own copy, made directly (no float64 one on the way)
            with np.errstate(over="ignore"):  # float64 values beyond float32's range become inf, as in torch
                return torch.from_numpy(np.array(array, dtype=np.float32)).to(self.device)
        if self.device != "cpu":  # a device copy: the host copy is transient, not shared
            return torch.from_numpy(np.array(array, dtype=np.float64)).to(self.dtype).to(self.device)
        return torch.from_numpy(float64_copy(array)).to(self.dtype)

    def _substituting(
        self, node: Node, parameters: Mapping[ParameterKey, torch.Tensor]
    ) -> Callable[[np.ndarray], torch.Tensor]:
        """The parameter conversion of one node: a given tensor where ``parameters`` has the
        array's (node, field) key, else the usual conversion. Arrays are matched by identity:
        the kernel receives the op's own array objects."""
        fields = {id(v): f for f, v in vars(node.op).items() if isinstance(v, np.ndarray)}

        def param(array: np.ndarray) -> torch.Tensor:
            key = (node.name, fields.get(id(array), ""))
            return parameters[key] if key in parameters else self._param(array)

        return param

    def run(self, inputs: Mapping[str, torch.Tensor], *, keep: bool = False) -> dict[str, torch.Tensor]:
        """Evaluate the graph; returns the outputs (every value when ``keep``; without it, each value
        is released after its last reader has run)."""
        env: dict[str, torch.Tensor] = dict(inputs)
        for (node, kernel), dead in zip(self._kernels, self._dead, strict=True):
            try:
                env[node.output] = kernel([env[name] for name in node.inputs])
            except Exception as exc:  # re-raised with the node's context (STYLE convention 4)
                raise RuntimeError(f"node {node.name!r} ({node.op.type.value}): {exc}") from exc
            if not keep:
                for name in dead:
                    del env[name]
        if keep:
            return env
        return {name: env[name] for name in self.graph.outputs}

    def rerun(self, env: Mapping[str, torch.Tensor], name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs with the value ``name`` replaced by ``value``, every other value as in ``env``
        (a ``run(keep=True)``): only the nodes downstream of ``name`` are evaluated again."""
        new: dict[str, torch.Tensor] = dict(env)
        new[name] = value
        dirty = {name}
        for node, kernel in self._kernels:
            if node.output != name and any(i in dirty for i in node.inputs):
                new[node.output] = kernel([new[i] for i in node.inputs])
                dirty.add(node.output)
        return {out: new[out] for out in self.graph.outputs}

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.run(dict(zip(self.graph.input_names, args, strict=True)))
        return tuple(out[name] for name in self.graph.outputs)

    def flat(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """f(x) with x the concatenation of all flattened inputs and the result likewise.

        Works on one example (shape [n]); batch it with torch.func.vmap.
        """
        import torch

        specs = self.graph.inputs
        sizes = [int(np.prod(s.shape)) for s in specs]

        def f(x: torch.Tensor) -> torch.Tensor:
            parts = torch.split(x, sizes)
            args = [p.reshape(s.shape) for p, s in zip(parts, specs, strict=True)]
            return torch.cat([y.reshape(-1) for y in self(*args)])

        return f


# elementwise ops of one input: the output has the input's shape
_SAME_SHAPE = (O.Relu, O.LeakyRelu, O.Sigmoid, O.Tanh, O.Softplus, O.Elu, O.Gelu, O.HardSigmoid, O.HardSwish,
               O.Silu, O.Mish, O.Clip, O.Erf, O.Sin, O.Cos, O.Exp, O.Log, O.Sqrt, O.Reciprocal, O.Abs)


def _window_out(n: int, kernel: int, stride: int, pad: int, dilation: int) -> int | None:
    """Positions of a window on an axis of n entries padded by pad in all (floor mode); None when
    there is none (the executor then gives its own error)."""
    out = (n + pad - dilation * (kernel - 1) - 1) // stride + 1
    return out if n + pad - dilation * (kernel - 1) >= 1 and out >= 1 else None


def _windowed(x: tuple[int, ...], kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
              dilations: Sequence[int], channels: int) -> tuple[int, ...] | None:
    """The shape [N, channels, outputs...] of windows of ``kernel`` sliding over x [N, C, spatial...]
    (pads as for Conv, floor mode), None where x is not of that rank or an axis has no window."""
    n = len(kernel)
    if len(x) != n + 2 or min(x, default=1) < 1:
        return None
    outs = [_window_out(x[2 + i], int(kernel[i]), strides[i], pads[i] + pads[i + n], dilations[i]) for i in range(n)]
    return None if None in outs else (x[0], int(channels), *(int(o) for o in outs if o is not None))


def _formula_shape(op: O.Op, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The output shape of ``op`` on inputs of ``shapes`` where the op's rule is plain arithmetic
    and the inputs are valid for it; None otherwise (the meta device decides, or gives the error).
    These are the ops of most networks: a model made of them never pays torch's one-time set-up of
    meta kernels (about a second of CPU)."""
    x = tuple(shapes[0]) if shapes else ()
    try:
        match op:
            case _ if isinstance(op, _SAME_SHAPE) and len(shapes) == 1:
                return x
            case O.Add() | O.Sub() | O.Mul() | O.Div() if len(shapes) == 2:
                return tuple(int(d) for d in np.broadcast_shapes(x, tuple(shapes[1])))
            case O.Affine(scale=sc, shift=sh) if len(shapes) == 1:
                out = x
                for p in (sc, sh):
                    if p is not None:
                        out = tuple(int(d) for d in np.broadcast_shapes(out, np.shape(p)))
                return out
            case O.Linear(weight=w, bias=b) if len(shapes) == 1 and len(x) >= 1 and x[-1] == w.shape[1] and (
                    b is None or b.shape == (w.shape[0],)):
                return (*x[:-1], int(w.shape[0]))
            case O.Conv(weight=w, bias=b, strides=st, pads=pd, dilations=dl, groups=g) if len(shapes) == 1:
                if (w.ndim != len(st) + 2 or g < 1 or len(x) < 2 or x[1] != w.shape[1] * g or w.shape[0] % g
                        or (b is not None and b.shape != (w.shape[0],))):
                    return None
                return _windowed(x, w.shape[2:], st, pd, dl, w.shape[0])
            case O.MaxPool(kernel=k, strides=st, pads=pd, dilations=dl, ceil_mode=False) if len(shapes) == 1:
                return _windowed(x, k, st, pd, dl, x[1]) if len(x) >= 2 else None
            case O.AvgPool(kernel=k, strides=st, pads=pd, dilations=dl, ceil_mode=False) if len(shapes) == 1 and all(
                    d == 1 for d in dl):  # the executor refuses dilated average pooling
                return _windowed(x, k, st, pd, dl, x[1]) if len(x) >= 2 else None
            case O.Pad(pads=pd) if len(shapes) == 1 and len(pd) % 2 == 0 and len(pd) // 2 <= len(x):
                n = len(pd) // 2
                lead = len(x) - n
                out = (*x[:lead], *(x[lead + i] + pd[i] + pd[i + n] for i in range(n)))
                return out if min(out, default=0) >= 0 else None
            case O.Concat(axis=axis) if shapes and len({len(t) for t in shapes}) == 1 and -len(x) <= axis < len(x):
                a = axis % len(x)
                if any(tuple(t[:a]) + tuple(t[a + 1:]) != x[:a] + x[a + 1:] for t in shapes):
                    return None
                return (*x[:a], sum(int(t[a]) for t in shapes), *x[a + 1:])
            case O.GlobalAvgPool() | O.GlobalMaxPool() if len(shapes) == 1 and len(x) >= 3 and min(x[2:]) >= 1:
                return (*x[:2], *(1,) * (len(x) - 2))
            case O.Softmax(axis=axis) if len(shapes) == 1 and -len(x) <= axis < len(x):
                return x
            case O.Reshape(shape=shape) if len(shapes) == 1 and all(d >= 0 for d in shape) and (
                    math.prod(shape) == math.prod(x)):
                return tuple(int(d) for d in shape)
            case O.Transpose(perm=perm) if len(shapes) == 1 and sorted(perm) == list(range(len(x))):
                return tuple(x[i] for i in perm)
            case O.LayerNorm() | O.Pow() if len(shapes) == 1:
                return x
            case O.PRelu(slope=sl) if len(shapes) == 1 and np.broadcast_shapes(x, np.shape(sl)) == x:
                return x
            case O.ConvTranspose(weight=w, bias=b, strides=st, pads=pd, dilations=dl, groups=g, output_padding=op_) if (
                    len(shapes) == 1 and w.ndim == len(st) + 2 and len(x) == w.ndim and g >= 1 and x[1] == w.shape[0]
                    and w.shape[0] % g == 0 and (b is None or b.shape == (w.shape[1] * g,))):
                n = len(st)
                outs = tuple((x[2 + i] - 1) * st[i] - pd[i] - pd[i + n] + dl[i] * (w.shape[2 + i] - 1) + op_[i] + 1
                             for i in range(n))
                return (x[0], int(w.shape[1] * g), *outs) if min(outs) >= 1 and all(
                    0 <= op_[i] < max(st[i], dl[i]) for i in range(n)) else None
            case O.Reduce(axes=axes, keepdims=keep) if len(shapes) == 1 and all(0 <= a < len(x) for a in axes):
                return tuple(1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes)
            case O.Slice(starts=st, ends=en, steps=sp) if len(shapes) == 1 and len(st) == len(en) == len(sp) == len(x) and (
                    0 not in sp):
                return tuple(len(range(a, b, c)) for a, b, c in zip(st, en, sp, strict=True))
            case O.Gather(axis=axis, indices=idx) if len(shapes) == 1 and 0 <= axis < len(x) and (
                    idx.size == 0 or (int(np.min(idx)) >= 0 and int(np.max(idx)) < x[axis])):
                return (*x[:axis], *(int(d) for d in np.shape(idx)), *x[axis + 1:])
            case O.Tile(repeats=rep) if len(shapes) == 1 and len(rep) == len(x) and min(rep, default=0) >= 0:
                return tuple(d * int(r) for d, r in zip(x, rep, strict=True))
            case O.Where(mask=mask, other=other, when_true=a, when_false=b) if shapes:
                parts = [tuple(t) for t in shapes] + [np.shape(v) for v in (mask, other, a, b) if v is not None]
                return tuple(int(d) for d in np.broadcast_shapes(*parts))
            case O.Max(constant=c) | O.Min(constant=c) if shapes:
                parts = [tuple(t) for t in shapes] + ([np.shape(c)] if c is not None else [])
                return tuple(int(d) for d in np.broadcast_shapes(*parts))
            case O.MatMul() if len(shapes) == 2 and len(x) >= 2 and len(shapes[1]) >= 2 and x[-1] == shapes[1][-2]:
                y = tuple(shapes[1])
                batch = np.broadcast_shapes(x[:-2], y[:-2])
                return (*(int(d) for d in batch), x[-2], y[-1])
            case O.Resize(axes=axes, in_sizes=ins, sizes=outs) if len(shapes) == 1 and all(
                    0 <= a < len(x) and x[a] == n for a, n in zip(axes, ins, strict=True)):
                out_list = list(x)
                for a, n in zip(axes, outs, strict=True):
                    out_list[a] = int(n)
                return tuple(out_list)
    except ValueError:  # shapes that do not broadcast: the executor's own error
        return None
    return None


def infer_shapes(inputs: Sequence[tuple[str, tuple[int, ...]]], nodes: Sequence[Node]) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value: by ``_formula_shape`` where a node has one, else by running
    that node alone on torch's meta device (no data is allocated)."""
    import torch

    from stabaudit.ir.graph import Graph, TensorSpec

    known = {n: tuple(int(d) for d in s) for n, s in inputs}
    for node in nodes:
        if not all(name in known for name in node.inputs):
            break  # a value read before it is made: the executor's own error, on the meta device
        found = _formula_shape(node.op, [known[name] for name in node.inputs])
        if found is None:  # this node alone on the meta device
            specs = tuple(TensorSpec(name=name, shape=known[name]) for name in dict.fromkeys(node.inputs))
            one = Graph(inputs=specs, outputs=(node.output,), nodes=(node,))
            (out,) = Executor(one, dtype=torch.float32, device="meta")(
                *(torch.empty(spec.shape, device="meta") for spec in specs))
            found = tuple(int(d) for d in out.shape)
        known[node.output] = found
    else:
        return known

    specs = tuple(TensorSpec(name=n, shape=tuple(s)) for n, s in inputs)
    outputs = tuple(node.output for node in nodes[-1:]) or tuple(n for n, _ in inputs)
    graph = Graph(inputs=specs, outputs=outputs, nodes=tuple(nodes))
    ex = Executor(graph, dtype=torch.float32, device="meta")
    env = ex.run({s.name: torch.empty(s.shape, device="meta") for s in specs}, keep=True)
    return {name: tuple(int(d) for d in t.shape) for name, t in env.items()}


def with_shapes(graph: Graph) -> Graph:
    """The same graph with ``shapes`` filled in for every value."""
    shapes = infer_shapes([(s.name, s.shape) for s in graph.inputs], graph.nodes)
    return Graph(inputs=graph.inputs, outputs=graph.outputs, nodes=graph.nodes, shapes=shapes)
