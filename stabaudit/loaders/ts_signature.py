"""A TorchScript forward's signature at a static input: the shapes of its tensor inputs (given,
from the archive, or fixed by the first layer on the input) and the values of its other arguments."""

from __future__ import annotations

import io
import json
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stabaudit.errors import ModelLoadError

EXTRA_FILE = "stabaudit.json"  # optional extra file of the archive: {"input_shape": [...]}
TRACED_INPUTS = "traced_inputs.pkl"  # torch.jit.trace (torch >= 2.1) keeps its example inputs' sizes here
MAX_TRACED_INPUTS_BYTES = 1024**2  # a larger record is not read
INPUT_SHAPE_HINT = (
    "pass --input-shape (e.g. --input-shape 1,3,32,32) or save the archive with "
    f'_extra_files={{"{EXTRA_FILE}": \'{{"input_shape": [...]}}\'}}'
)
ARGUMENT_HINT = "--arg NAME=VALUE or the config's arguments: {NAME: VALUE}"
_SCOPE_PART = re.compile(r"(\w+)\([^()]*\)")

# What a forward argument's value may be, as the command line (str) or a config (YAML) gives it
ArgumentValue = str | int | float | bool | None | list[Any]


@dataclass(frozen=True, kw_only=True)
class Signature:
    """The forward at one static input: its tensor inputs with their shapes, its other arguments
    bound to values, how to call it (per argument: the index of a tensor input, or a value), and
    where the shapes and values came from."""

    tensors: tuple[Any, ...]  # the graph inputs that are tensors (torch._C.Value), in order
    shapes: tuple[tuple[int, ...], ...]
    bound: Mapping[int, Any]  # the other graph inputs (Value.unique()) -> their values
    call: tuple[tuple[str, Any], ...]  # ("tensor", index into tensors) or ("value", value), per argument
    notes: tuple[str, ...]
    # each tensor input's element type ("Long", "Float") where the graph's types or the traced record
    # give it, else None
    dtypes: tuple[str | None, ...] = ()


def module_path(node: Any) -> str:
    """The module path of the forward a graph node came from ("features.0"; "" at the top)."""
    return ".".join(p for p in _SCOPE_PART.findall(node.getModuleHierarchy()) if p not in ("SELF", "UNKNOWN_INSTANCE"))


def forward_signature(
    module: Any, graph: Any, *, input_shape: tuple[int, ...] | None, extra: str | bytes, traced: bytes | None,
    arguments: Mapping[str, ArgumentValue], where: str,
) -> Signature:
    """The signature of ``module.forward`` whose inlined graph is ``graph``. Shapes: ``input_shape``
    (one tensor input), else the archive's extra file ``extra``, else complete sizes in the graph
    inputs' types, else the sizes torch.jit.trace recorded (``traced``: the archive's
    traced_inputs.pkl), else what the first layer on the single
    tensor input fixes (a Linear's in_features; a convolution's channels when the spatial size is
    known from nowhere else is refused, naming the known part). Non-tensor arguments take their
    value from ``arguments`` (by name), else their default; anything else is a ModelLoadError."""
    import torch

    inputs = list(graph.inputs())[1:]  # the first input is the module itself
    try:
        schema = list(module.forward.schema.arguments)[1:]
    except (AttributeError, RuntimeError):  # no schema to read: the graph's names, no defaults
        schema = []
    names = [a.name for a in schema] if len(schema) == len(inputs) else [_plain(v.debugName()) for v in inputs]
    tensors = [v for v in inputs if isinstance(v.type(), torch._C.TensorType)]
    unknown = sorted(set(arguments) - set(names))
    if unknown:
        raise ModelLoadError(f"forward has no argument {unknown[0]!r} (its arguments: {', '.join(names) or 'none'})",
                             path=where)
    bound: dict[int, Any] = {}
    call: list[tuple[str, Any]] = []
    notes: list[str] = []
    for i, (value, name) in enumerate(zip(inputs, names, strict=True)):
        kind = value.type()
        if isinstance(kind, torch._C.TensorType):
            if name in arguments:
                raise ModelLoadError(f"forward argument {name!r} is a tensor input: give its shape with --input-shape, "
                                     "not a value", path=where)
            call.append(("tensor", tensors.index(value)))
            continue
        argument = schema[i] if len(schema) == len(inputs) else None
        if name in arguments:
            bound_value = _convert(arguments[name], kind, name, where)
            notes.append(f"{name}={bound_value!r} ({kind}, given)")
        elif argument is not None and argument.has_default_value():
            bound_value = argument.default_value
            notes.append(f"{name}={bound_value!r} ({kind}, its default)")
        elif not _givable(kind):
            raise ModelLoadError(f"forward argument {name!r} is a {kind} without a default: {_GIVABLE}", path=where)
        else:
            raise ModelLoadError(f"forward argument {name!r} ({kind}) has no value: give it with --arg {name}=VALUE "
                                 f"or the config's arguments: {{{name}: VALUE}}", path=where)
        bound[value.unique()] = bound_value
        call.append(("value", bound_value))
    if not tensors:
        raise ModelLoadError("forward takes no tensor input", path=where)
    shapes, note = _shapes(module, graph, tensors, input_shape, extra, traced, where)
    if notes:
        notes = ["forward's non-tensor arguments, translated at these values: " + ", ".join(notes)]
    recorded = traced_dtypes(traced)
    if recorded is None or len(recorded) != len(tensors):
        recorded = [None] * len(tensors)
    dtypes = tuple(_scalar_type(v) or d for v, d in zip(tensors, recorded, strict=True))
    return Signature(tensors=tuple(tensors), shapes=tuple(shapes), bound=bound, call=tuple(call),
                     notes=((note,) if note else ()) + tuple(notes), dtypes=dtypes)


def _scalar_type(value: Any) -> str | None:
    """The element type the graph's type of ``value`` records ("Long"), None when it has none."""
    try:
        kind = value.type().scalarType()
    except (AttributeError, RuntimeError):
        return None
    return str(kind) if kind is not None else None


def _plain(debug_name: str) -> str:
    return re.sub(r"\.\d+$", "", debug_name)


# ---- argument values -----------------------------------------------------------------------------
def _convert(value: ArgumentValue, kind: Any, name: str, where: str) -> Any:
    """``value`` (a string from the command line, or a YAML value) as the TorchScript type ``kind``."""
    import torch

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"forward argument {name!r} ({kind}): {value!r} {why}", path=where)

    if isinstance(kind, torch._C.OptionalType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _convert(value, kind.getElementType(), name, where)
    if value is None:
        raise bad("is not allowed: the argument is not Optional")
    if isinstance(kind, torch._C.BoolType):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise bad("is not a bool (true or false)")
    if isinstance(kind, torch._C.IntType):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise bad("is not an int")
    if isinstance(kind, torch._C.FloatType):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise bad("is not a float") from None
            if not math.isnan(number):
                return number
        raise bad("is not a float")
    if isinstance(kind, torch._C.StringType):
        if isinstance(value, str):
            return value
        raise bad("is not a string")
    if isinstance(kind, torch._C.ListType):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise bad("is not a list")
        converted = []
        for item in items:
            try:
                converted.append(_convert(item.strip() if isinstance(item, str) else item, kind.getElementType(),
                                          name, where))
            except ModelLoadError as exc:
                raise bad(f"is not a {kind} ({str(exc).split('): ', 1)[-1]})") from None
        return converted
    raise ModelLoadError(f"forward argument {name!r} is a {kind}: {_GIVABLE}", path=where)


_GIVABLE = "stabaudit gives values to int, float, bool, str, their lists and Optionals only"


def _givable(kind: Any) -> bool:
    """Whether _convert reads a value of the TorchScript type ``kind``."""
    import torch

    if isinstance(kind, torch._C.OptionalType | torch._C.ListType):
        return _givable(kind.getElementType())
    return isinstance(kind, torch._C.BoolType | torch._C.IntType | torch._C.FloatType | torch._C.StringType)


# ---- input shapes --------------------------------------------------------------------------------
def _shape(value: Any, where: str, what: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ModelLoadError(f"{what} must be a non-empty list of positive integers", path=where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise ModelLoadError(f"{what} must be a list of positive integers, got {list(value)}", path=where)
    return tuple(value)


def _shapes(
    module: Any, graph: Any, tensors: Sequence[Any], input_shape: tuple[int, ...] | None, extra: str | bytes,
    traced: bytes | None, where: str,
) -> tuple[list[tuple[int, ...]], str]:
    """The static shape of every tensor input, and a note on where it came from ("" when given)."""
    if input_shape is not None:
        if len(tensors) != 1:
            raise ModelLoadError(
                f"forward takes {len(tensors)} inputs; give their shapes as \"input_shapes\" in {EXTRA_FILE}",
                path=where,
            )
        return [_shape(list(input_shape), where, "input shape")], ""
    text = extra.decode("utf-8", "replace") if isinstance(extra, bytes) else extra
    if text.strip():
        return _extra_shapes(text, len(tensors), where), f"input shape from the archive's {EXTRA_FILE}"
    typed = [_typed_sizes(v) for v in tensors]
    if all(t is not None for t in typed):  # a graph that kept its trace's complete tensor types
        sizes = [t for t in typed if t is not None]
        shown = ", ".join(str(list(s)) for s in sizes)
        return sizes, f"input shape {shown} from the complete tensor types of forward's graph"
    recorded = traced_shapes(traced)
    if recorded is not None and len(recorded) == len(tensors):
        shown = ", ".join(str(list(s)) for s in recorded)
        return list(recorded), f"input shape {shown} from the example input torch.jit.trace recorded in the archive"
    if len(tensors) == 1:
        known = first_layer_shape(module, graph, tensors[0])
        if known is not None:
            shape, layer = known
            if all(d is not None for d in shape):
                full = tuple(int(d) for d in shape if d is not None)
                return [full], (f"input shape {list(full)} inferred from the first layer on the input, {layer}; the "
                                "batch size 1 is a choice (--input-shape sets another)")
            spatial = iter({1: "L", 2: "HW", 3: "DHW"}.get(sum(d is None for d in shape), "?" * len(shape)))
            dims = [str(d) if d is not None else next(spatial) for d in shape]
            raise ModelLoadError(f"the input shape is unknown: the first layer on the input, {layer}, makes it "
                                 f"({', '.join(dims)}): give --input-shape {','.join(dims)}", path=where)
    raise ModelLoadError(f"the input shape is unknown: {INPUT_SHAPE_HINT}", path=where)


def _typed_sizes(value: Any) -> tuple[int, ...] | None:
    """The sizes in a graph input's tensor type when all are known and positive (a traced graph in
    memory has them; torch.jit.load compiles forward from its code, whose types carry none)."""
    try:
        sizes = value.type().sizes()
    except RuntimeError:  # sizes of an incomplete type
        return None
    if not isinstance(sizes, list) or not sizes or not all(isinstance(d, int) and d > 0 for d in sizes):
        return None
    return tuple(sizes)


def _extra_shapes(text: str, count: int, where: str) -> list[tuple[int, ...]]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{EXTRA_FILE} in the archive is not valid JSON ({exc.msg})", path=where) from exc
    if isinstance(meta, dict) and "input_shapes" in meta and isinstance(meta["input_shapes"], list):
        shapes = [_shape(s, where, f"{EXTRA_FILE} input_shapes[{i}]") for i, s in enumerate(meta["input_shapes"])]
    elif isinstance(meta, dict) and "input_shape" in meta:
        shapes = [_shape(meta["input_shape"], where, f"{EXTRA_FILE} input_shape")]
    else:
        raise ModelLoadError(f"{EXTRA_FILE} names no input_shape: {INPUT_SHAPE_HINT}", path=where)
    if len(shapes) != count:
        raise ModelLoadError(f"{EXTRA_FILE} gives {len(shapes)} input shapes for {count} forward inputs", path=where)
    return shapes


# ---- the sizes torch.jit.trace recorded ------------------------------------------------------------
@dataclass(frozen=True)
class _Sizes:
    """A recorded tensor: its sizes and its storage's element type ("Long", "Float"; no data is read)."""

    shape: tuple[int, ...]
    dtype: str | None = None


@dataclass(frozen=True)
class _Storage:
    """Stands for a torch storage class named in the record (never built): its element type."""

    dtype: str


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> _Sizes:
    if not isinstance(size, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in size):
        raise pickle.UnpicklingError("tensor sizes are not integers")
    return _Sizes(size, storage.dtype if isinstance(storage, _Storage) else None)


class _SizesUnpickler(pickle.Unpickler):
    """Reads traced_inputs.pkl as data: tensors become their sizes, storages are not loaded, and
    any other callable is refused (the archive is untrusted)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, _tag: value
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return _Storage(name.removesuffix("Storage"))
        raise pickle.UnpicklingError(f"{module}.{name} is not read from a traced-inputs record")

    def persistent_load(self, pid: Any) -> Any:
        """('storage', storage type, key, location, size): the type only."""
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[1], _Storage) else None


def traced_shapes(record: bytes | None) -> list[tuple[int, ...]] | None:
    """The sizes of forward's example inputs that torch.jit.trace kept in the archive
    (traced_inputs.pkl: {"forward": [tensor, ...]}), or None when there are none or the record
    holds anything but tensors of positive sizes."""
    example = _traced_example(record)
    return None if example is None else [t.shape for t in example]


def traced_dtypes(record: bytes | None) -> list[str | None] | None:
    """The element types ("Long", "Float", ...) of forward's example inputs in the same record."""
    example = _traced_example(record)
    return None if example is None else [t.dtype for t in example]


def _traced_example(record: bytes | None) -> list[_Sizes] | None:
    if not record or len(record) > MAX_TRACED_INPUTS_BYTES:
        return None
    try:
        data = _SizesUnpickler(io.BytesIO(record)).load()
    except Exception:  # a record we do not understand is no source of shapes
        return None
    example = data.get("forward") if isinstance(data, dict) else None
    if not isinstance(example, list) or not example:
        return None
    if not all(isinstance(t, _Sizes) and t.shape and all(d > 0 for d in t.shape) for t in example):
        return None
    return list(example)


# ---- the first layer on the input ------------------------------------------------------------------
# Operators whose output has their first argument's shape (the other arguments scalars), and
# queries of the shape that do not act on the input: the search goes through the first, past the second.
_SAME_SHAPE = frozenset(
    f"aten::{op}" for base in ("relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leaky_relu", "hardtanh", "relu6",
                               "hardswish", "hardsigmoid", "softplus", "dropout", "feature_dropout", "alpha_dropout",
                               "contiguous", "clone", "detach", "to", "add", "sub", "mul", "div", "neg", "clamp",
                               "batch_norm", "instance_norm", "layer_norm", "group_norm")
    for op in (base, base + "_")
)
_QUERIES = frozenset({"aten::size", "aten::dim", "aten::numel", "aten::len", "prim::shape", "prim::device",
                      "prim::dtype", "aten::__isnot__", "aten::__is__", "prim::is_cuda"})
_CONVOLUTIONS = {"aten::conv1d": 1, "aten::conv2d": 2, "aten::conv3d": 3}
_TRANSPOSED = {"aten::conv_transpose1d": 1, "aten::conv_transpose2d": 2, "aten::conv_transpose3d": 3}


def first_layer_shape(module: Any, graph: Any, value: Any) -> tuple[tuple[int | None, ...], str] | None:
    """The input's shape as far as the layers that first act on ``value`` fix it (through
    activations, dropout, normalization, scalar arithmetic and the results of branches), and
    those layers' description:
    a Linear (aten::linear, matmul by a stored matrix) fixes (1, in_features); a convolution
    fixes (1, in_channels, None...) with one None per spatial dim. None when no such layer is
    found, the path passes anything else, or two layers disagree."""
    import torch

    found: dict[tuple[int | None, ...], str] = {}
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if current.unique() in seen:
            continue
        seen.add(current.unique())
        for use in current.uses():
            node, kind = use.user, use.user.kind()
            if kind in _QUERIES:
                continue
            if kind == "prim::Return":  # a branch's result: on to what the prim::If gives
                owner = node.owningBlock().owningNode()
                if owner is None:
                    continue  # a graph output
                if owner.kind() != "prim::If":
                    return None
                frontier.append(list(owner.outputs())[use.offset])
                continue
            if use.offset != 0:
                return None
            if kind in _SAME_SHAPE:
                others = list(node.inputs())[1:]
                if kind.startswith(("aten::add", "aten::sub", "aten::mul", "aten::div", "aten::clamp")) and any(
                    isinstance(v.type(), torch._C.TensorType) for v in others
                ):
                    return None  # a tensor operand may broadcast the shape
                frontier.extend(node.outputs())
                continue
            fixed = _layer_shape(module, node, kind)
            if fixed is None:
                return None
            shape, detail = fixed
            path = module_path(node)
            found.setdefault(shape, (f"{path!r} " if path else "") + f"({kind}, {detail})")
    if len(found) != 1:
        return None
    ((shape, layer),) = found.items()
    return shape, layer


def _layer_shape(module: Any, node: Any, kind: str) -> tuple[tuple[int | None, ...], str] | None:
    """The input shape the layer ``node`` fixes (see first_layer_shape) and what fixes it, or None."""
    import torch

    args = list(node.inputs())
    weight = _resolve(module, args[1]) if len(args) > 1 else None
    if not isinstance(weight, torch.Tensor):
        return None
    dims = tuple(int(d) for d in weight.shape)
    if kind == "aten::linear" and len(dims) == 2:
        return (1, dims[1]), f"in_features {dims[1]}"
    if kind in ("aten::matmul", "aten::mm") and len(dims) == 2:
        return (1, dims[0]), f"a {dims[0]}x{dims[1]} matrix"
    channels: int | None = None
    if kind in _CONVOLUTIONS and len(args) > 6 and len(dims) == _CONVOLUTIONS[kind] + 2:
        groups = _resolve(module, args[6])
        channels = dims[1] * groups if isinstance(groups, int) and not isinstance(groups, bool) else None
    elif kind in _TRANSPOSED and len(dims) == _TRANSPOSED[kind] + 2:
        channels = dims[0]
    elif kind in ("aten::_convolution", "aten::convolution") and len(args) > 8 and len(dims) >= 3:
        transposed, groups = _resolve(module, args[6]), _resolve(module, args[8])
        if isinstance(transposed, bool) and isinstance(groups, int) and not isinstance(groups, bool):
            channels = dims[0] if transposed else dims[1] * groups
    if channels is None:
        return None
    return (1, channels, *[None] * (len(dims) - 2)), f"in_channels {channels}"


def _resolve(module: Any, value: Any) -> Any:
    """A graph value that is a constant or an attribute path from the module (the layer's weight,
    its groups), else None."""
    node = value.node()
    try:
        if node.kind() == "prim::Constant":
            return value.toIValue()
        if node.kind() == "prim::GetAttr":
            owner = _resolve(module, node.input())
            return None if owner is None else getattr(owner, node.s("name"))
        if node.kind() == "prim::Param" and value.offset() == 0:
            return module
    except Exception:  # not a value torch can give us: unknown
        return None
    return None
