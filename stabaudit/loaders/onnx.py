"""ONNX file -> IR graph, with onnxruntime on the original model as the reference runtime."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from stabaudit.errors import ModelLoadError, ResourceError, StabauditError, UnsupportedOperatorError
from stabaudit.ir.graph import Graph, TensorSpec
from stabaudit.ir.parameters import GraphParameters
from stabaudit.limits import check_model_memory
from stabaudit.loaders.base import MAX_ELEMENTS, LoadedModel, ModelFormat, check_value_sizes
from stabaudit.loaders.detect import check_file
from stabaudit.paths import control_problem

LIFT_BELOW = 11  # opsets older than this are lifted to it with onnx.version_converter
MAX_OPSET = 1000  # a default-domain opset outside [1, MAX_OPSET] is not a real one
_PROTOBUF_LIMIT = 2**31 - 1


def supported_operators() -> list[str]:
    """The ONNX operators translated on variables; any operator on constants is folded, and
    Erf inside x*0.5*(1+Erf(x/sqrt 2)) is fused into Gelu."""
    from stabaudit.loaders.onnx_ops import TRANSLATORS

    return sorted(set(TRANSLATORS) | {"Constant"})


def load_onnx(path: str | Path, *, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Load an ONNX model; dynamic dims come from ``input_shape`` (first input) or batch 1.

    Raises ModelLoadError (with ``path``) for unreadable, malformed or unsafe files, and
    UnsupportedOperatorError listing every operator outside the IR at once.
    """
    try:
        return _load(Path(path), input_shape)
    except StabauditError as exc:
        if exc.path is None:
            exc.path = str(path)
        raise
    except MemoryError:  # a last resort: sizes are checked before allocating wherever they are known
        raise ResourceError("loading the model needs more memory than is available", path=str(path)) from None
    except RecursionError:
        raise ModelLoadError("the model's graph is nested too deeply", path=str(path)) from None


def _load(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    check_file(path)
    data = path.read_bytes()
    model = _parse(data)
    check_model_memory(model, path=str(path))  # declared tensor sizes, before external data is read
    external_files = _load_external_data(model, path)
    _check_tensor_sizes(model)
    notes: list[str] = []
    if external_files:
        notes.append(f"external data read from {external_files} file(s) in the model's directory")
    _check(model, notes)
    work = _lift_opset(model, notes)
    inputs = _input_shapes(work.graph, input_shape, notes)
    constants = _initializers(work.graph)
    graph, params = _translate(work, inputs, notes, constants)
    _prove_batch_independent(work, inputs, graph, notes, constants)
    reference = OnnxRuntimeReference(model=model, data=None if external_files else data, path=path)
    return LoadedModel(
        graph=graph,
        parameterisation=params,
        format=ModelFormat.ONNX,
        reference_name="onnxruntime",
        reference=reference,
        parameters=_parameter_count(model.graph),
        source_ops=dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        notes=tuple(notes),
        precision=_precision(model.graph),
    )


_PRECISIONS = {16: "bfloat16", 10: "float16", 1: "float32", 11: "float64"}  # least precise first


def _precision(graph: Any) -> str:
    """The least precise float type among the inputs, the initializers, Constant tensors and
    the targets of Cast nodes ("float32" when none is a float type)."""
    types = {vi.type.tensor_type.elem_type for vi in graph.input if vi.type.HasField("tensor_type")}
    types.update(t.data_type for t in graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value":
                types.add(a.t.data_type)
            elif node.op_type == "Cast" and a.name == "to":
                types.add(a.i)
    return next((name for code, name in _PRECISIONS.items() if code in types), "float32")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


# ---- reading -----------------------------------------------------------------------------------
def _parse(data: bytes) -> Any:
    import onnx

    try:
        model = onnx.load_model_from_string(data)  # never follows external data by itself
    except Exception as exc:  # google.protobuf DecodeError and friends
        raise ModelLoadError(
            f"not an ONNX model or TorchScript archive (the ONNX protobuf does not parse, truncated or corrupt: {_first_line(exc)})"
        ) from exc
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.output:
        raise ModelLoadError("not an ONNX model or TorchScript archive (no ONNX graph in the file)")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= MAX_OPSET:
            raise ModelLoadError(f"the model imports opset {entry.version} of the default domain, which does not exist")
    return model


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph (stabaudit.limits.onnx_tensors)."""
    from stabaudit.limits import onnx_tensors

    return onnx_tensors(graph)


def _load_external_data(model: Any, path: Path) -> int:
    """Read external tensor data into the model, only from files inside the model's directory.

    Absolute locations and locations that resolve elsewhere (``..``, symlinks followed) are
    refused. Returns the number of files read.
    """
    from onnx import TensorProto

    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    files: set[str] = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        what = f"external data {location!r} of tensor {tensor.name!r}"
        if not location:
            raise ModelLoadError(f"tensor {tensor.name!r} has external data without a location")
        problem = control_problem(location)
        if problem:  # a NUL would reach the file system as a ValueError (an internal error)
            raise ModelLoadError(f"{what}: {problem}")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or PureWindowsPath(location).drive:
            raise ModelLoadError(f"{what} is an absolute path; only files in the model's directory are read")
        target = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, target]) != base:
            raise ModelLoadError(f"{what} resolves outside the model's directory; refused")
        if not os.path.exists(target):
            raise ModelLoadError(f"{what} is missing")
        if not os.path.isfile(target):
            raise ModelLoadError(f"{what} is not a regular file; refused")
        if target == os.path.realpath(path):
            raise ModelLoadError(f"{what} is the model file itself; refused")
        size = os.path.getsize(target)
        offset = _byte_count(info.get("offset", "0"), f"{what}: offset")
        length = _byte_count(info["length"], f"{what}: length") if "length" in info else max(size - offset, 0)
        if offset + length > size:  # checked before reading: a declared length is never allocated blindly
            raise ModelLoadError(f"{what}: offset {offset} + length {length} is beyond the end of the file ({size} bytes)")
        with open(target, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(length)
        if len(raw) != length:
            raise ModelLoadError(f"{what} is truncated ({len(raw)} of {length} bytes)")
        tensor.raw_data = raw
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        files.add(target)
    return len(files)


def _byte_count(text: str, what: str) -> int:
    """An external-data offset or length: a non-negative decimal integer."""
    if not (text.isascii() and text.isdigit()):
        raise ModelLoadError(f"{what} {text!r} is not a non-negative integer")
    return int(text)


_PACKED_TYPES = frozenset({21, 22, 23, 25, 26})  # INT4, UINT4, FLOAT4E2M1, ...: two items per byte


def _check_tensor_sizes(model: Any) -> None:
    """Refuse stored tensors whose declared shape is negative, huge, or disagrees with their raw
    data, before any is converted to an array (the declared shape is the file's claim, not a fact)."""
    from onnx import helper

    for tensor in _tensors(model.graph):
        what = f"tensor {tensor.name!r}"
        dims = list(tensor.dims)
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{what} has a negative dim in its shape {dims}")
        size = math.prod(dims)
        if size > MAX_ELEMENTS:
            raise ResourceError(f"{what} declares {size} elements (shape {dims}), above the limit of {MAX_ELEMENTS}")
        if not tensor.HasField("raw_data") or tensor.data_type in _PACKED_TYPES:
            continue
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except Exception:  # an undefined or unknown element type: refused where the tensor is read
            continue
        if len(tensor.raw_data) != size * itemsize:
            raise ModelLoadError(f"{what} declares shape {dims} ({size * itemsize} bytes) but holds "
                                 f"{len(tensor.raw_data)} bytes of raw data")


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
    except ValueError:
        return f"unknown ({elem_type})"


def _check(model: Any, notes: list[str]) -> None:
    """onnx.checker as a diagnostic: real exports often fail it harmlessly, so only note it."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        notes.append(f"onnx.checker: {_first_line(exc)}")


def _opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else 1


def _lift_opset(model: Any, notes: list[str]) -> Any:
    """The model lifted to opset LIFT_BELOW when older (or itself when conversion fails)."""
    from onnx import version_converter

    version = _opset(model)
    if version >= LIFT_BELOW:
        return model
    try:
        lifted = version_converter.convert_version(model, LIFT_BELOW)
    except Exception as exc:
        notes.append(f"opset {version} kept: onnx.version_converter failed ({_first_line(exc)})")
        return model
    notes.append(f"opset lifted from {version} to {LIFT_BELOW} (onnx.version_converter)")
    _keep_legacy_resize(lifted)
    return lifted


def _keep_legacy_resize(model: Any) -> None:
    """The converter turns Upsample and Resize-10 into Resize-11 with its default half_pixel
    coordinates, another operator: every Resize of the lifted model came from one of those, so it
    gets back their asymmetric coordinates and onnxruntime's nearest rule of those versions,
    "simple" (a value only the Resize translator reads; the reference runs the original model)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.extend([helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                   helper.make_attribute("nearest_mode", "simple")])


# ---- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Input:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    batch: str | None = None  # the label of an unknown batch dim (dim 0) set to 1, else None
    first: bool = False  # the input --input-shape sets


def _input_shapes(graph: Any, input_shape: Sequence[int] | None, notes: list[str]) -> list[_Input]:
    """Static shapes of the real inputs (graph inputs that are not initializers).

    The first input takes ``input_shape`` when given (same rank; static dims must agree);
    otherwise an unknown dim 0 (batch) becomes 1 and any other unknown dim is an error.
    """
    from onnx import TensorProto, helper

    from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES

    initialized = {t.name for t in graph.initializer}
    real = [vi for vi in graph.input if vi.name not in initialized]
    if not real:
        raise ModelLoadError("the model has no inputs (every graph input is an initializer)")
    result = []
    for index, vi in enumerate(real):
        if not vi.type.HasField("tensor_type"):
            raise ModelLoadError(f"input {vi.name!r} is not a tensor")
        tensor = vi.type.tensor_type
        if tensor.elem_type not in FLOAT_TYPES:
            type_name = _type_name(tensor.elem_type)
            raise ModelLoadError(f"input {vi.name!r} has element type {type_name}; only floating-point inputs are supported")
        dims: list[int | None] | None = None
        labels: list[str] = []
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
            labels = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                      for d in tensor.shape.dim]
        batch = None
        if index == 0 and input_shape is not None:
            shape = _given_shape(vi.name, dims, tuple(input_shape))
            if dims is None or None in dims:
                notes.append(f"input {vi.name!r} [{','.join(labels)}] fixed to {list(shape)} by --input-shape")
        else:
            shape = _default_shape(vi.name, dims, labels, notes)
            batch = labels[0] if dims and dims[0] is None else None
        dtype = np.dtype(np.float32) if tensor.elem_type == TensorProto.BFLOAT16 else \
            np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        if math.prod(shape) > MAX_ELEMENTS:
            raise ResourceError(f"input {vi.name!r} of shape {list(shape)} is above the limit of {MAX_ELEMENTS} elements")
        result.append(_Input(name=vi.name, shape=shape, dtype=dtype, batch=batch, first=index == 0))
    return result


def _given_shape(name: str, dims: list[int | None] | None, given: tuple[int, ...]) -> tuple[int, ...]:
    text = ",".join(str(d) for d in given)
    if any(int(d) < 1 for d in given):
        raise ModelLoadError(f"--input-shape {text} has a dim below 1")
    if dims is not None and len(dims) != len(given):
        raise ModelLoadError(f"--input-shape {text} has rank {len(given)} but input {name!r} has rank {len(dims)}")
    for axis, (d, g) in enumerate(zip(dims or [], given, strict=False)):
        if d is not None and d != g:
            raise ModelLoadError(f"--input-shape {text} gives dim {axis} = {g} but input {name!r} has static size {d} there")
    return tuple(int(d) for d in given)


def _default_shape(name: str, dims: list[int | None] | None, labels: list[str], notes: list[str]) -> tuple[int, ...]:
    if dims is None:
        raise ModelLoadError(f"input {name!r} has no shape in the model; pass --input-shape")
    if dims and dims[0] is None:
        notes.append(f"input {name!r}: batch dim {labels[0]!r} set to 1")
        dims = [1, *dims[1:]]
    if None in dims:
        raise ModelLoadError(f"input {name!r} has shape [{','.join(labels)}] with unknown dims beyond the batch dim; "
                             "give its full shape with --input-shape")
    return tuple(int(d) for d in dims if d is not None)


PROBE_BATCH = 2  # the second batch size the graph is translated at to follow its batch axis


def _prove_batch_independent(model: Any, inputs: Sequence[_Input], graph: Graph, notes: list[str],
                             constants: Mapping[str, np.ndarray]) -> None:
    """Refuse a graph whose unknown batch dim was set to 1 unless stabaudit.ir.batch_axis proves that
    no operator mixes samples, so that the bounds at batch 1 hold at every batch size.

    Inputs whose batch dims carry the same name have the same size (ONNX symbolic dims); each
    group of them is probed on its own, the other inputs staying at batch 1, so that an input
    with an independent batch dim broadcast against another counts as shared by every sample.
    """
    from dataclasses import replace

    from stabaudit.ir.batch_axis import batch_mixing

    groups: dict[str, list[_Input]] = {}
    for i in inputs:
        if i.batch is not None:  # an unnamed dim ("?") is a group of its own
            groups.setdefault(i.batch if i.batch != "?" else f"?{i.name}", []).append(i)
    for members in groups.values():
        names = {i.name for i in members}
        probe = [replace(i, shape=(PROBE_BATCH, *i.shape[1:])) if i.name in names else i for i in inputs]
        culprit: str | None = None
        try:
            large, _ = _translate(model, probe, [], constants)  # the same initializer arrays: no second copy
        except StabauditError as exc:  # e.g. a Reshape to a fixed batch size: it does not translate
            culprit = f"the graph does not translate at batch {PROBE_BATCH} ({_first_line(exc, 120)})"
        else:
            found = batch_mixing(graph, large, {name: 0 for name in names}, PROBE_BATCH)
            culprit = found.describe() if found is not None else None
        first = members[0]
        label = "dim" if first.batch == "?" else f"dim {first.batch!r}"
        if culprit is not None:
            example = ",".join(["N", *(str(d) for d in first.shape[1:])])
            hint = (f"give the batch size with --input-shape (e.g. --input-shape {example})" if first.first else
                    f"--input-shape sets only the first input: give input {first.name!r} a fixed batch dim in the model")
            raise ModelLoadError(f"input {first.name!r} has an unknown batch {label} and {culprit}, so the bounds "
                                 f"depend on the batch size; {hint}")
        listed = ", ".join(repr(i.name) for i in members)
        notes.append(f"batch {label} of input(s) {listed}: no operator mixes samples (proved on the graph against "
                     f"its translation at batch {PROBE_BATCH}), so the bounds at batch 1 hold at every batch size")


# ---- translation -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Walk:
    ctx: Any  # onnx_ops.Context
    unsupported: Counter[str]
    poisoned: frozenset[str]
    constant_nodes: int
    folded: Counter[str]


def _initializers(graph: Any) -> dict[str, np.ndarray]:
    """The initializers as numpy arrays."""
    from onnx import numpy_helper

    if graph.sparse_initializer:
        raise ModelLoadError("sparse initializers are not supported")
    try:
        return {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    except Exception as exc:
        raise ModelLoadError(f"an initializer cannot be read: {_first_line(exc)}") from exc


def _translate(model: Any, inputs: Sequence[_Input], notes: list[str],
               constants: Mapping[str, np.ndarray]) -> tuple[Graph, GraphParameters]:
    """Walk the graph (twice when activation patterns may be fused), then assemble the IR."""
    from stabaudit.loaders.onnx_ops import ANCHORS, fuse_patterns, wrap_node

    graph = model.graph
    opset = _opset(model)
    wrapped = []
    for i, n in enumerate(graph.node):
        try:
            wrapped.append(wrap_node(n, i, opset))
        except Exception as exc:  # an attribute that does not decode (a malformed tensor, a bad type)
            raise ModelLoadError(f"node {n.name or n.op_type!r} ({n.op_type}): an attribute cannot be read: "
                                 f"{_first_line(exc)}") from exc
    nodes = _topological(wrapped, {i.name for i in inputs} | set(constants))
    outputs = [o.name for o in graph.output]
    walk = _walk(nodes, constants, inputs, outputs)
    if any(n.op_type in ANCHORS for n in nodes):
        fused, labels = fuse_patterns(nodes, walk.ctx.constants, set(outputs))
        if labels:
            walk = _walk(fused, constants, inputs, outputs)
            notes.append("fused: " + ", ".join(f"{k} x{n}" for k, n in sorted(Counter(labels).items())))
    if walk.unsupported:
        raise UnsupportedOperatorError(dict(walk.unsupported))
    ctx = walk.ctx
    ir_outputs = []
    for name in outputs:
        if ctx.is_const(name):
            raise ModelLoadError(f"graph output {name!r} is a constant (it does not depend on any input)")
        ir_outputs.append(ctx.var(name))
    nodes_needed = _live(ctx.nodes, ir_outputs)
    _notes(walk, len(ctx.nodes) - len(nodes_needed), notes)
    from stabaudit.ir.executor import with_shapes

    specs = tuple(TensorSpec(name=i.name, shape=i.shape) for i in inputs)
    result = with_shapes(Graph(inputs=specs, outputs=tuple(ir_outputs), nodes=tuple(nodes_needed)).validate())
    check_value_sizes(result)
    params = ctx.recorder.finish({n.name for n in nodes_needed}, notes=_exporter_folding(model, nodes, ctx))
    return result, params


def _exporter_folding(model: Any, nodes: Sequence[Any], ctx: Any) -> list[str]:
    """A note when the exporter folded BatchNormalization into a convolution: torch.onnx.export in
    eval mode replaces Conv + BatchNorm by one Conv whose weight and bias are new constants named
    'onnx::Conv_<n>' instead of the module's parameter names."""
    if not str(model.producer_name).lower().startswith("pytorch"):
        return []
    folded = []
    for node in nodes:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.present_inputs) > 1:
            weight = ctx.resolve(node.inputs[1])
            if weight.startswith("onnx::"):
                folded.append(node.name or node.outputs[0])
    if not folded:
        return []
    shown = ", ".join(repr(n) for n in folded[:5]) + (f" and {len(folded) - 5} more" if len(folded) > 5 else "")
    return [
        f"the exporter folded BatchNormalization into {len(folded)} layer(s) ({shown}: weights named "
        "'onnx::...'): the Hessian is over the folded parameterisation, not the module's (BatchNorm's "
        "gamma and beta are not parameters here); audit the TorchScript module, or export with "
        "training=torch.onnx.TrainingMode.PRESERVE to keep BatchNorm"
    ]


def _topological(nodes: Sequence[Any], defined: set[str]) -> list[Any]:
    """The nodes in a topological order, stable (one pass for graphs that are already sorted)."""
    known, order, pending = set(defined), [], list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.present_inputs):
                order.append(node)
                known.update(node.outputs)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = next(n for n in rest[0].present_inputs if n not in known)
            raise ModelLoadError(f"node {rest[0].name!r} ({rest[0].op_type}) reads {missing!r}, which nothing defines")
        pending = rest
    return order


def _constant_value(node: Any) -> np.ndarray:
    """The tensor of a Constant node (value, value_float(s), value_int(s))."""
    kinds = {"value": None, "value_float": np.float32, "value_floats": np.float32,
             "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in kinds.items():
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    raise ModelLoadError(f"Constant node {node.name!r} has no numeric value ({', '.join(node.attrs) or 'no attributes'})")


def _walk(nodes: Sequence[Any], constants: Mapping[str, np.ndarray], inputs: Sequence[_Input],
          outputs: Sequence[str]) -> _Walk:
    """Fold constants and translate every other node; unsupported nodes are counted, and the
    nodes that depend on them are skipped (counted only when their op is unknown too)."""
    from stabaudit.loaders.onnx_ops import (
        FOLDERS,
        TRANSLATORS,
        Context,
        Unsupported,
        fold,
        foldable,
    )

    uses = Counter(name for node in nodes for name in node.present_inputs) + Counter(outputs)
    ctx = Context(inputs={i.name: i.shape for i in inputs}, constants=constants, uses=uses,
                  float_dtype=inputs[0].dtype)
    unsupported: Counter[str] = Counter()
    folded: Counter[str] = Counter()
    poisoned: set[str] = set()
    constant_nodes = 0
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            ctx.constants[node.outputs[0]] = _constant_value(node)
            ctx.stored.add(node.outputs[0])
            constant_nodes += 1
            continue
        if any(name in poisoned for name in node.present_inputs):
            if node.key not in TRANSLATORS and node.key not in FOLDERS:
                unsupported[node.key] += 1
            poisoned.update(node.outputs)
            continue
        try:
            if foldable(node, ctx):
                for name, value in zip(node.outputs, fold(node, ctx), strict=False):
                    if name:
                        ctx.constants[name] = value
                folded[node.op_type] += 1
            elif node.key in TRANSLATORS:
                TRANSLATORS.get(node.key)(node, ctx)
            else:
                raise Unsupported(node.key)
        except Unsupported as exc:
            unsupported[exc.label] += 1
            poisoned.update(node.outputs)
        except ResourceError as exc:
            raise ResourceError(f"node {node.name!r} ({node.op_type}): {_first_line(exc)}") from exc
        except MemoryError:
            raise ResourceError(f"node {node.name!r} ({node.op_type}) needs more memory than is available") from None
        except (ModelLoadError, ValueError, IndexError, TypeError, KeyError, AttributeError, ArithmeticError,
                AssertionError) as exc:  # a malformed node: wrong arity, attribute types or shapes
            raise ModelLoadError(f"node {node.name!r} ({node.op_type}): {_first_line(exc)}") from exc
    return _Walk(ctx=ctx, unsupported=unsupported, poisoned=frozenset(poisoned),
                 constant_nodes=constant_nodes, folded=folded)


def _live(nodes: Sequence[Any], outputs: Sequence[str]) -> list[Any]:
    """The IR nodes that some output depends on, in order."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if node.output in needed:
            kept.append(node)
            needed.update(node.inputs)
    return kept[::-1]


def _notes(walk: _Walk, dead: int, notes: list[str]) -> None:
    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} x{n}" for k, n in sorted(c.items()))

    if walk.constant_nodes:
        notes.append(f"{walk.constant_nodes} Constant node(s) read as constants")
    if walk.folded:
        notes.append(f"{sum(walk.folded.values())} node(s) constant-folded ({counts(walk.folded)})")
    if walk.ctx.removed:
        notes.append(f"removed as no-ops at inference: {counts(walk.ctx.removed)}")
    if dead:
        notes.append(f"{dead} IR node(s) that no output depends on dropped")


def _parameter_count(graph: Any) -> int:
    """Elements of float initializers and float Constant-node tensors (shape constants excluded)."""
    from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES

    count = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in FLOAT_TYPES)
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                count += math.prod(a.t.dims)
            elif a.name == "value_float":
                count += 1
            elif a.name == "value_floats":
                count += len(a.floats)
    return int(count)


# ---- reference runtime -------------------------------------------------------------------------
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class OnnxRuntimeReference:
    """onnxruntime (CPU, one intra-op thread) on the original model, created on first call.

    ``data`` are the file's bytes; for a model with external data (already read, from inside
    its directory only) the in-memory model is serialized instead, or, beyond protobuf's 2 GiB,
    the session opens the checked path itself.
    """

    def __init__(self, *, model: Any, data: bytes | None, path: Path):
        self._model = model
        self._data = data
        self._path = path
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            ort.disable_telemetry_events()  # and ORT_DISABLE_TELEMETRY=1 (stabaudit/__init__)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: real exports draw many harmless warnings
            source: bytes | str
            if self._data is not None:
                source = self._data
            elif self._model.ByteSize() < _PROTOBUF_LIMIT:
                source = self._model.SerializeToString()
            else:
                source = str(self._path)
            try:
                self._session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
            except Exception as exc:
                hint = ""
                if "NOT_IMPLEMENTED" in str(exc) and self._model is not None and _precision(self._model.graph) == "bfloat16":
                    hint = " (onnxruntime's CPU provider has no bfloat16 kernel for this operator; the reference cannot run)"
                raise ModelLoadError(f"onnxruntime cannot run the model: {_first_line(exc)}{hint}",
                                     path=str(self._path)) from exc
            self._model = None  # the session holds what it needs
        return self._session

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session = self.session()
        for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
            for arg in args:
                if arg.type == "tensor(bfloat16)":  # onnxruntime 1.x: "Numpy_type 256 can't be converted"
                    raise ModelLoadError(f"{kind} {arg.name!r} is bfloat16, which onnxruntime's Python API cannot pass "
                                         "to or from numpy: the reference cannot run (a float32 or float16 export "
                                         "can be audited)", path=str(self._path))
        feeds = {i.name: np.asarray(inputs[i.name], dtype=_ORT_TYPES.get(i.type, np.float32))
                 for i in session.get_inputs()}
        try:
            results = session.run(None, feeds)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime failed to run the model: {_first_line(exc)}", path=str(self._path)) from exc
        # float16 / bfloat16 outputs as float32 (exact)
        return [_widened(np.asarray(out)) for out in results]


def _widened(array: np.ndarray) -> np.ndarray:
    """A float16 or bfloat16 array as float32 (exact); any other array as it is."""
    return array.astype(np.float32) if array.dtype == np.float16 or array.dtype.name == "bfloat16" else array
