"""Constant folding at load time: numpy for shape arithmetic, onnx.reference for the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from stabaudit.errors import ResourceError
from stabaudit.loaders.base import MAX_ELEMENTS
from stabaudit.loaders.onnx_ops.common import (
    DEFAULT_DOMAINS,
    Context,
    OnnxNode,
    Unsupported,
    flatten_target,
    int_list,
    normalize_axis,
    reshape_target,
    squeeze_target,
    unsqueeze_target,
)
from stabaudit.registry import Registry

Values = Sequence[np.ndarray | None]  # one entry per ONNX input, None where omitted
Folder = Callable[[OnnxNode, Values], list[np.ndarray]]
FOLDERS: Registry[str, Folder] = Registry("ONNX constant folders")

# Inputs that may be variables because only their static shape or type is read.
SHAPE_OR_TYPE_INPUTS: dict[str, tuple[int, ...]] = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
# Control flow whose run time the file chooses (a Loop's trip count): never evaluated at load time.
NOT_FOLDED = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # If: onnx_ops.control inlines its branch
_SMALL_INPUT = 4096  # int inputs up to this size are shown to shape inference as data (shapes, repeats)


def foldable(node: OnnxNode, ctx: Context) -> bool:
    """Whether every input the node reads by value is a constant."""
    if (node.domain not in DEFAULT_DOMAINS or node.op_type in NONDETERMINISTIC or node.op_type in NOT_FOLDED
            or not node.present_inputs):
        return False
    free = SHAPE_OR_TYPE_INPUTS.get(node.op_type, ())
    return all(ctx.is_const(name) or (i in free and ctx.is_var(name))
               for i, name in enumerate(node.inputs) if name)


def fold(node: OnnxNode, ctx: Context) -> list[np.ndarray]:
    """The node's outputs; a variable input stands in as a zero-stride array of its shape."""
    values: list[np.ndarray | None] = []
    for name in node.inputs:
        if not name:
            values.append(None)
        elif ctx.is_const(name):
            values.append(ctx.const(name))
        else:
            values.append(np.broadcast_to(np.zeros((), ctx.float_dtype), ctx.shape(name)))
    _check_planned_size(node, values)
    if node.op_type in FOLDERS:
        results = FOLDERS.get(node.op_type)(node, values)
    else:
        results = _reference(node, values)
    for result in results:
        if result.size > MAX_ELEMENTS:
            raise ResourceError(f"a folded constant of shape {list(result.shape)} is above the limit of {MAX_ELEMENTS} elements")
    return results


def _refuse_size(shape: Sequence[int]) -> None:
    size = math.prod(int(d) for d in shape)
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"negative output dim in {list(shape)}")
    if size > MAX_ELEMENTS:
        raise ResourceError(f"folding would build a constant of shape {list(shape)} ({size} elements), "
                            f"above the limit of {MAX_ELEMENTS}")


def _check_planned_size(node: OnnxNode, values: Values) -> None:
    """Refuse a fold whose output would be huge, before evaluating it: ConstantOfShape and Range
    directly, other ops from ONNX shape inference with the small integer inputs shown as data."""
    from onnx import helper, numpy_helper, shape_inference

    if node.op_type == "ConstantOfShape":
        _refuse_size(int_list(_first(values)) or [])
        return
    if node.op_type == "Range":
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3] if v is not None)
        if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
            raise ValueError(f"Range({start}, {limit}, {delta}) is not a finite range")
        _refuse_size([max(math.ceil((limit - start) / delta), 0)])
        return
    if node.op_type in FOLDERS or node.proto is None:
        return  # the other numpy folders never produce more elements than they read
    inputs, initializers = [], []
    for name, v in zip(node.inputs, values, strict=False):
        if not name or v is None:
            continue
        if v.dtype.kind in "iu" and v.size <= _SMALL_INPUT:
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(v), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.outputs if name]
    graph = helper.make_graph([node.proto], "plan", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # no inference for this node: the size is checked after the fold instead
        return
    for out in inferred.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            _refuse_size([d.dim_value for d in dims])


def _reference(node: OnnxNode, values: Values) -> list[np.ndarray]:
    """Evaluate one node with onnx.reference (the executable ONNX specification)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    if node.proto is None:
        raise Unsupported(node.key)
    feeds = {name: v for name, v in zip(node.inputs, values, strict=False) if name and v is not None}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for name, v in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.outputs if name]
    graph = helper.make_graph([node.proto], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:
        raise Unsupported(f"{node.op_type}(on constants)") from exc
    return [np.asarray(r) for r in results]


def _register(*op_types: str) -> Callable[[Folder], Folder]:
    def decorate(fn: Folder) -> Folder:
        for op_type in op_types:
            FOLDERS.add(op_type, fn)
        return fn

    return decorate


def _first(values: Values) -> np.ndarray:
    assert values[0] is not None
    return values[0]


def _optional_ints(node: OnnxNode, values: Values, key: str, index: int) -> list[int] | None:
    """An int list that is an attribute in old opsets and an optional input in new ones."""
    if key in node.attrs:
        return int_list(node.attrs[key])
    return int_list(values[index]) if index < len(values) else None


@_register("Identity")
def _identity(node: OnnxNode, values: Values) -> list[np.ndarray]:
    return [_first(values)]


@_register("Cast")
def _cast(node: OnnxNode, values: Values) -> list[np.ndarray]:
    from onnx import helper

    return [_first(values).astype(helper.tensor_dtype_to_np_dtype(int(node.attr("to"))))]


@_register("CastLike")
def _cast_like(node: OnnxNode, values: Values) -> list[np.ndarray]:
    assert values[1] is not None
    return [_first(values).astype(values[1].dtype)]


@_register("Shape")
def _shape(node: OnnxNode, values: Values) -> list[np.ndarray]:
    shape = np.array(_first(values).shape, dtype=np.int64)
    return [shape[int(node.attr("start") or 0):node.attr("end")]]


@_register("Size")
def _size(node: OnnxNode, values: Values) -> list[np.ndarray]:
    return [np.array(_first(values).size, dtype=np.int64)]


@_register("Gather")
def _gather(node: OnnxNode, values: Values) -> list[np.ndarray]:
    data, indices = _first(values), values[1]
    assert indices is not None
    return [np.take(data, indices.astype(np.int64), axis=normalize_axis(int(node.attr("axis")), data.ndim))]


@_register("Unsqueeze")
def _unsqueeze(node: OnnxNode, values: Values) -> list[np.ndarray]:
    data = _first(values)
    return [data.reshape(unsqueeze_target(data.shape, _optional_ints(node, values, "axes", 1) or []))]


@_register("Squeeze")
def _squeeze(node: OnnxNode, values: Values) -> list[np.ndarray]:
    data = _first(values)
    return [data.reshape(squeeze_target(data.shape, _optional_ints(node, values, "axes", 1)))]


@_register("Flatten")
def _flatten(node: OnnxNode, values: Values) -> list[np.ndarray]:
    data = _first(values)
    return [data.reshape(flatten_target(data.shape, int(node.attr("axis"))))]


@_register("Reshape")
def _reshape(node: OnnxNode, values: Values) -> list[np.ndarray]:
    data = _first(values)
    target = _optional_ints(node, values, "shape", 1) or []
    return [data.reshape(reshape_target(data.shape, target, allowzero=bool(node.attr("allowzero", 0))))]


@_register("Transpose")
def _transpose(node: OnnxNode, values: Values) -> list[np.ndarray]:
    return [np.transpose(_first(values), int_list(node.attr("perm")))]


@_register("Concat")
def _concat(node: OnnxNode, values: Values) -> list[np.ndarray]:
    present = [v for v in values if v is not None]
    return [np.concatenate(present, axis=normalize_axis(int(node.attr("axis")), present[0].ndim))]


@_register("Slice")
def _slice(node: OnnxNode, values: Values) -> list[np.ndarray]:
    """Python slicing clamps starts and ends exactly as ONNX Slice does."""
    data = _first(values)
    starts = _optional_ints(node, values, "starts", 1) or []
    ends = _optional_ints(node, values, "ends", 2) or []
    axes = _optional_ints(node, values, "axes", 3) or list(range(len(starts)))
    steps = (int_list(values[4]) if len(values) > 4 else None) or [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[normalize_axis(axis, data.ndim)] = slice(start, end, step)
    return [data[tuple(index)]]


@_register("Add", "Sub", "Mul", "Div")
def _arithmetic(node: OnnxNode, values: Values) -> list[np.ndarray]:
    """Element-wise arithmetic in the operands' type; integer Div truncates toward zero."""
    a, b = _first(values), values[1]
    assert b is not None
    match node.op_type:
        case "Add":
            out = np.add(a, b)
        case "Sub":
            out = np.subtract(a, b)
        case "Mul":
            out = np.multiply(a, b)
        case _ if a.dtype.kind in "iu":
            out = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        case _:
            out = np.divide(a, b)
    return [np.asarray(out).astype(a.dtype)]


@_register("Neg")
def _neg(node: OnnxNode, values: Values) -> list[np.ndarray]:
    return [np.negative(_first(values))]


@_register("ConstantOfShape")
def _constant_of_shape(node: OnnxNode, values: Values) -> list[np.ndarray]:
    value = node.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(int_list(_first(values)) or [], fill[0], dtype=fill.dtype)]


@_register("Range")
def _range(node: OnnxNode, values: Values) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in values[:3])
    return [np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)]


def _quantization_axis(node: OnnxNode, data: np.ndarray, scale: np.ndarray) -> tuple[int, ...]:
    """The shape that broadcasts a per-tensor (one number) or per-axis (1-D) scale over ``data``."""
    if int(node.attr("block_size", 0) or 0):
        raise Unsupported(f"{node.op_type}(blocked quantization)")
    if scale.size == 1:
        return ()
    axis = normalize_axis(int(node.attr("axis", 1)), data.ndim)
    return tuple(scale.size if i == axis else 1 for i in range(data.ndim))


@_register("DequantizeLinear")
def _dequantize_linear(node: OnnxNode, values: Values) -> list[np.ndarray]:
    """(x - zero_point) scale in the scale's type, per tensor or per axis: computed in float64 (exact:
    an integer of at most 32 bits times a float32 step) and rounded once to the scale's type, which
    is the correctly rounded product a float32 runtime computes (opsets before 19 have no reference
    implementation in onnx.reference)."""
    data, scale = _first(values), values[1]
    assert scale is not None
    if data.dtype.kind not in "iu":  # 4-bit, 2-bit and float8 types: the reference evaluator (opset 21+)
        return _reference(node, values)
    shape = _quantization_axis(node, data, scale)
    zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros((), data.dtype)
    q = data.astype(np.float64) - np.asarray(zero, dtype=np.float64).reshape(shape or ())
    return [(q * np.asarray(scale, dtype=np.float64).reshape(shape or ())).astype(scale.dtype)]
