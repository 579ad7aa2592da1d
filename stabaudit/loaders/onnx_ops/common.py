"""Shared pieces of the ONNX translators: the node view, attribute defaults, the translation state."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from stabaudit.errors import ModelLoadError, ResourceError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Node
from stabaudit.ir.parameters import BindingRecorder, Origin, Term
from stabaudit.loaders.base import MAX_ELEMENTS
from stabaudit.registry import Registry

DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = {1: "FLOAT", 10: "FLOAT16", 11: "DOUBLE", 16: "BFLOAT16"}  # TensorProto element types


class Unsupported(Exception):
    """A valid ONNX node outside what the IR expresses; ``label`` is what SA901 lists."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


_SCHEMA = object()  # sentinel: "take the default from the ONNX operator schema"


@dataclass(frozen=True, kw_only=True, eq=False)
class OnnxNode:
    """A read-only view of one ONNX node with decoded attributes.

    ``inputs`` keeps "" for omitted optional inputs, as in ONNX. ``source_op`` is the op type, or
    the joined op types of a fused pattern ("Div+Erf+Add+Mul+Mul").
    """

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    opset: int
    domain: str = ""
    source_op: str = ""
    proto: Any = None  # the NodeProto, kept for constant folding by the ONNX reference evaluator

    @property
    def key(self) -> str:
        """Registry key: the op type, prefixed by its domain outside the default one."""
        return self.op_type if self.domain in DEFAULT_DOMAINS else f"{self.domain}.{self.op_type}"

    @property
    def present_inputs(self) -> tuple[str, ...]:
        return tuple(name for name in self.inputs if name)

    def input(self, index: int) -> str | None:
        """The name of input ``index``, or None when it is absent or omitted."""
        return self.inputs[index] if index < len(self.inputs) and self.inputs[index] else None

    def attr(self, key: str, default: Any = _SCHEMA) -> Any:
        """The attribute's value; when absent, ``default`` or else the ONNX schema's default.

        This is the one place attribute defaults are resolved: the operator schema of the
        model's opset says what an absent attribute means (Softmax's axis is 1 before opset 13
        and -1 after). Attributes whose default depends on the input (strides, pads) give None.
        """
        if key in self.attrs:
            return self.attrs[key]
        if default is not _SCHEMA:
            return default
        return schema_default(self.op_type, self.opset, key)


def decode_attribute(attribute: Any) -> Any:
    """An AttributeProto as a Python value: tensors as numpy arrays, strings as str."""
    from onnx import AttributeProto, helper, numpy_helper

    value = helper.get_attribute_value(attribute)
    if attribute.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attribute.type == AttributeProto.STRING:
        return value.decode("utf-8", "replace")
    if attribute.type == AttributeProto.STRINGS:
        return [v.decode("utf-8", "replace") for v in value]
    if attribute.type in (AttributeProto.INTS, AttributeProto.FLOATS):
        return list(value)
    return value


@cache
def schema_default(op_type: str, opset: int, key: str) -> Any:
    """The default of attribute ``key`` of ``op_type`` at ``opset`` (None when it has none)."""
    from onnx import defs

    try:
        schema = defs.get_schema(op_type, opset, "")
    except Exception:  # no schema at this opset (a fused node, or an op newer than the model)
        return None
    spec = schema.attributes.get(key)
    if spec is None or spec.default_value.type == 0:  # 0: AttributeProto.UNDEFINED
        return None
    return decode_attribute(spec.default_value)


def wrap_node(proto: Any, index: int, opset: int) -> OnnxNode:
    """An OnnxNode for NodeProto ``proto``; unnamed nodes get the stable name ``<op>_<index>``."""
    return OnnxNode(
        op_type=proto.op_type,
        name=proto.name or f"{proto.op_type}_{index}",
        inputs=tuple(proto.input),
        outputs=tuple(proto.output),
        attrs={a.name: decode_attribute(a) for a in proto.attribute},
        opset=opset,
        domain=proto.domain,
        # domain-prefixed outside the default domain, as `stabaudit ops` lists it (com.microsoft.QGemm)
        source_op=proto.op_type if proto.domain in DEFAULT_DOMAINS else f"{proto.domain}.{proto.op_type}",
        proto=proto,
    )


# ---- shapes shared by translators and constant folding ----------------------------------------
def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ModelLoadError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def reshape_target(shape: Sequence[int], target: Iterable[int], *, allowzero: bool = False) -> tuple[int, ...]:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = [int(d) for d in target]
    size = math.prod(shape)
    out = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ModelLoadError(f"bad Reshape target {dims}")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or size % known:
            raise ModelLoadError(f"cannot reshape {list(shape)} to {dims}")
        out[out.index(-1)] = size // known
    if math.prod(out) != size:
        raise ModelLoadError(f"cannot reshape {list(shape)} to {dims}")
    return tuple(out)


def flatten_target(shape: Sequence[int], axis: int) -> tuple[int, int]:
    axis = axis + len(shape) if axis < 0 else axis
    return (math.prod(shape[:axis]), math.prod(shape[axis:]))


def unsqueeze_target(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    rank = len(shape) + len(axes)
    positions = sorted(normalize_axis(int(a), rank) for a in axes)
    out = list(shape)
    for axis in positions:
        out.insert(axis, 1)
    return tuple(out)


def squeeze_target(shape: Sequence[int], axes: Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(d for d in shape if d != 1)
    drop = {normalize_axis(int(a), len(shape)) for a in axes}
    if any(shape[a] != 1 for a in drop):
        raise ModelLoadError(f"Squeeze of a dim that is not 1 (shape {list(shape)}, axes {sorted(drop)})")
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def int_list(value: Any) -> list[int] | None:
    """An attribute or constant input as a list of ints (None stays None)."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


@dataclass(frozen=True, kw_only=True)
class Window:
    """Resolved sliding-window attributes of Conv and pooling nodes; pads as in ops.Conv."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]


def resolve_window(node: OnnxNode, spatial: Sequence[int], kernel: Sequence[int] | None = None,
                   *, auto_pad: bool = True) -> Window:
    """kernel_shape, strides, dilations and pads of a Conv/pool node with defaults and auto_pad.

    Absent strides and dilations are 1 on every spatial axis; auto_pad SAME_UPPER/SAME_LOWER
    become the explicit pads that give ceil(in / stride) outputs (the extra pad at the end for
    SAME_UPPER, at the beginning for SAME_LOWER); VALID is no padding. ``auto_pad=False``
    leaves auto_pad to the caller (ConvTranspose) and reads the pads attribute.
    """
    n = len(spatial)
    k = tuple(int_list(node.attr("kernel_shape")) or int_list(kernel) or ())
    if len(k) != n:
        raise ModelLoadError(f"kernel {list(k)} does not match {n} spatial dims")
    strides = tuple(int_list(node.attr("strides")) or [1] * n)
    dilations = tuple(int_list(node.attr("dilations")) or [1] * n)
    mode = (node.attr("auto_pad") or "NOTSET") if auto_pad else "NOTSET"
    if mode == "NOTSET":
        pads = tuple(int_list(node.attr("pads")) or [0] * (2 * n))
    elif mode == "VALID":
        pads = (0,) * (2 * n)
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        if any(d != 1 for d in dilations):  # onnxruntime refuses (Conv) or disagrees with the spec (pools)
            raise Unsupported(f"{node.op_type}(auto_pad={mode} with dilations)")
        begin, end = [], []
        for size, kk, s, d in zip(spatial, k, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (kk - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        pads = (*begin, *end)
    else:
        raise ModelLoadError(f"unknown auto_pad {mode!r}")
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise ModelLoadError("strides, dilations or pads do not match the spatial rank")
    return Window(kernel=k, strides=strides, dilations=dilations, pads=pads)


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A bool tensor computed from variables (IsNaN, IsInf, a comparison, Not of one): it has no IR
    value of its own; the Where that reads it as its condition carries the test (ops.Where)."""

    test: str
    tested: tuple[str, ...]  # the variable(s) the test reads
    other: np.ndarray | None = None  # the constant a comparison compares with
    negate: bool = False


# ---- translation state -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Dropped:
    """A value computed from variables that is not a real-valued tensor (a class label, ZipMap's
    sequence of maps): it has no IR value. A graph output of it is left out of the audit and of the
    equivalence check; ``real`` is the ONNX name of the real-valued tensor that stands for it there
    (the probabilities ZipMap reads), None when none does. ``kind`` says what it is in the labels
    SA901 lists ("a class label"), ``what`` names it in the notes."""

    kind: str
    what: str
    real: str | None = None


@dataclass(frozen=True, kw_only=True)
class Quantized:
    """What an integer IR value q stands for: q = clamp(round(x / scale) + zero_point) of a real x, and
    ``var`` is the IR value of its dequantized scale (q - zero_point). Static quantization: scale
    and zero_point are constants (per tensor, or per index of ``axis``); dynamic: they are the IR
    values of the step and zero point computed from the data (DynamicQuantizeLinear)."""

    var: str
    scale: np.ndarray | str
    zero_point: np.ndarray | str
    axis: int | None = None


@dataclass(frozen=True, kw_only=True)
class Rescaled:
    """An integer IR value that equals ``var`` / ``step``, ``step`` the IR value of a data-dependent
    quantization step (MatMulInteger or ConvInteger of dynamically quantized values): a product by
    the step times a constant, the usual dequantization, is ``var`` times that constant."""

    var: str
    step: str


class Context:
    """What the translators read and write while the graph is walked in topological order.

    Values are either constants (numpy arrays, folded at load time) or variables (IR values with
    static shapes). ONNX names that were removed by aliasing (Identity, Dropout, Cast) resolve
    to the IR value they stand for.
    """

    def __init__(self, *, inputs: Mapping[str, tuple[int, ...]], constants: Mapping[str, np.ndarray],
                 uses: Mapping[str, int], float_dtype: np.dtype[Any]):
        self.shapes: dict[str, tuple[int, ...]] = dict(inputs)
        self.constants: dict[str, np.ndarray] = dict(constants)
        self.aliases: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.uses = uses
        self.float_dtype = float_dtype
        self.removed: Counter[str] = Counter()  # op types removed by aliasing
        self._names: set[str] = set()
        self.stored: set[str] = set(constants)  # initializers and Constant outputs, as the file stores them
        self.recorder = BindingRecorder()  # the training parameters and the IR arrays bound to them
        # quantization (onnx_ops.quantization), keyed by IR value: the integer values and what they
        # stand for, values divided by a data-dependent step, and (step, constant) products
        self.quantized: dict[str, Quantized] = {}
        self.rescaled: dict[str, Rescaled] = {}
        self.step_products: dict[str, tuple[str, np.ndarray]] = {}
        self.conditions: dict[str, Condition] = {}  # bool values computed from variables, read by Where
        self.dropped: dict[str, Dropped] = {}  # non-real values computed from variables, by ONNX name

    # reading
    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def const(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.constants.get(self.resolve(name))

    def is_const(self, name: str | None) -> bool:
        return name is not None and self.resolve(name) in self.constants

    def is_var(self, name: str | None) -> bool:
        return name is not None and self.resolve(name) in self.shapes

    def var(self, name: str) -> str:
        target = self.resolve(name)
        if target not in self.shapes:
            raise ModelLoadError(f"value {name!r} is read before it is defined")
        return target

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.var(name)]

    def is_used(self, name: str | None) -> bool:
        return bool(name) and self.uses.get(name or "", 0) > 0

    def param(self, node: OnnxNode, index: int, what: str, *, optional: bool = False) -> np.ndarray | None:
        """Constant input ``index``; a variable there is unsupported ("Conv(variable weight)")."""
        name = node.input(index)
        if name is None:
            if optional:
                return None
            raise ModelLoadError(f"{node.op_type} needs its {what} input")
        value = self.const(name)
        if value is None:
            raise Unsupported(f"{node.op_type}(variable {what})")
        return value

    def term(self, node: OnnxNode, index: int, role: str, *, default: bool = True,
             coefficient: np.ndarray | float = 1.0, transpose: bool = False) -> Term | None:
        """Constant input ``index`` as a training parameter (None unless it is a float constant).

        ``default``: whether training updates it when the config lists no parameters; a scalar
        never does (a constant such as a `Mul` by 3.0 is not a weight).
        """
        name = node.input(index)
        value = self.const(name)
        if name is None or value is None or value.dtype.kind != "f":
            return None
        resolved = self.resolve(name)
        origin = Origin.INITIALIZER if resolved in self.stored else Origin.FOLDED
        self.recorder.parameter(resolved, value, origin, f"{node.op_type} {node.name!r} {role}",
                                default and value.size > 1)
        return Term(parameter=resolved, coefficient=coefficient, transpose=transpose)

    def bind(self, output: str, field: str, terms: Sequence[Term | None]) -> None:
        """Record that the IR array ``field`` of the node writing ``output`` is the sum of
        ``terms``; nothing is recorded when a term is not a float constant."""
        if not terms or any(t is None for t in terms):
            return
        node = next(n for n in reversed(self.nodes) if n.output == output)
        self.recorder.bind(node.name, field, [t for t in terms if t is not None])

    def producer_op(self, name: str) -> O.OpType | None:
        """The IR op type that writes the variable ``name`` (None for a graph input)."""
        target = self.resolve(name)
        return next((n.op.type for n in reversed(self.nodes) if n.output == target), None)

    # writing
    def alias(self, node: OnnxNode, target: str, *, removed: bool = True, output_index: int = 0) -> None:
        """Remove ``node``: its output number ``output_index`` (the first by default) is the value
        ``target``; ``removed``: the node did nothing (counted in the notes), else ``target`` is a
        value of its translation."""
        self.aliases[node.outputs[output_index]] = self.resolve(target)
        if removed:
            self.removed[node.op_type] += 1

    def emit(self, node: OnnxNode, op: O.Op, inputs: Sequence[str], *, tag: str | None = None,
             output_index: int = 0) -> str:
        """Append an IR node for ``node``; ``tag`` names an intermediate value of a multi-node
        translation (its output is ``<output>/<tag>``), otherwise it writes the node's output
        number ``output_index`` (the first by default).
        """
        from stabaudit.ir.executor import infer_shapes

        output = node.outputs[output_index] if tag is None else f"{node.outputs[0]}/{tag}"
        name = node.name if tag is None else f"{node.name}/{tag}"
        while name in self._names:  # ONNX node names need not be unique; IR layer names are
            name += "_"
        self._names.add(name)
        ir_inputs = tuple(self.var(i) for i in inputs)
        ir_node = Node(name=name, op=op, inputs=ir_inputs, output=output, source_op=node.source_op)
        try:
            shapes = infer_shapes([(i, self.shapes[i]) for i in dict.fromkeys(ir_inputs)], [ir_node])
        except Exception as exc:  # the executor's message, without its node prefix
            cause = str(exc.__cause__ or exc).strip().splitlines()[0]
            shapes_in = [list(self.shapes[i]) for i in ir_inputs]
            raise ModelLoadError(f"{type(op).__name__} cannot take inputs of shapes {shapes_in}: {cause}") from exc
        if math.prod(shapes[output]) > MAX_ELEMENTS:  # refused before any translator reads the value
            raise ResourceError(f"{type(op).__name__} output of shape {list(shapes[output])} is above the limit "
                                f"of {MAX_ELEMENTS} elements")
        self.shapes[output] = shapes[output]
        self.nodes.append(ir_node)
        return output


def broadcast_var(node: OnnxNode, ctx: Context, var: str, out: Sequence[int], *, tag: str | None) -> str:
    """``var`` copied to the shape ``out`` it broadcasts to (numpy rules): a Reshape adding leading
    1s, then a Tile of the size-1 axes that grow (each entry copied prod(repeats) times, norm
    sqrt(copies), exact). The last node emitted is tagged ``tag`` (None: it writes the node's own
    output); ``var`` itself when nothing is to be done."""
    shape = tuple(ctx.shape(var))
    full = (1,) * (len(out) - len(shape)) + shape
    repeats = tuple(o // s if s == 1 else 1 for o, s in zip(out, full, strict=True))
    steps: list[O.Op] = []
    if full != shape:
        steps.append(O.Reshape(shape=full))
    if any(r != 1 for r in repeats):
        steps.append(O.Tile(repeats=repeats))
    for i, op in enumerate(steps):
        var = ctx.emit(node, op, [var], tag=tag if i == len(steps) - 1 else "rank")
    return var


Translator = Callable[[OnnxNode, Context], None]
# ONNX op type (domain-prefixed outside the default domain) -> translator into IR nodes.
TRANSLATORS: Registry[str, Translator] = Registry("ONNX operators")


def register(*op_types: str) -> Callable[[Translator], Translator]:
    """Register one translator for several ONNX op types."""

    def decorate(fn: Translator) -> Translator:
        for op_type in op_types:
            TRANSLATORS.add(op_type, fn)
        return fn

    return decorate


def fits(constant: np.ndarray, shape: Sequence[int]) -> bool:
    """Whether ``constant`` broadcasts to ``shape`` without enlarging it (numpy rules)."""
    if constant.ndim > len(shape):
        return False
    try:
        return tuple(np.broadcast_shapes(constant.shape, tuple(shape))) == tuple(shape)
    except ValueError:
        return False


__all__ = [
    "Condition", "Context", "Dropped", "OnnxNode", "Quantized", "Rescaled", "TRANSLATORS", "Translator", "Unsupported",
    "Window",
    "broadcast_var", "fits", "flatten_target", "int_list", "normalize_axis", "register", "reshape_target",
    "resolve_window", "squeeze_target", "unsqueeze_target", "wrap_node",
]
