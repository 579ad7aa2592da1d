"""ONNX file -> IR graph, with onnxruntime on the original model as the reference runtime."""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
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
    """The ONNX operators translated on variables (or written out as standard ones in the model:
    EmbedLayerNormalization); any operator on constants is folded, and Erf inside
    x*0.5*(1+Erf(x/sqrt 2)) is fused into Gelu."""
    from stabaudit.loaders.onnx_ops import TRANSLATORS

    return sorted(set(TRANSLATORS) | {"Constant", "com.microsoft.EmbedLayerNormalization"})


def load_onnx(path: str | Path, *, input_shape: tuple[int, ...] | None = None,
              input_shapes: Mapping[str, tuple[int, ...]] | None = None, start: str | None = None,
              perturb: Sequence[str] | None = None, end: Sequence[str] = (),
              arguments: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load an ONNX model; dynamic dims come from ``input_shape`` (first input), ``input_shapes``
    (by input name; a symbolic dim named in one fixes it in every input) or batch 1.

    Integer and bool inputs are held at values (stabaudit.loaders.onnx held values) and folded;
    the audit starts where the input becomes real (an embedding Gather, a Cast to float), or at
    ``start`` (a tensor name: the graph upstream of it is cut). With ``perturb``, the real inputs
    not named there are held at seeded standard-normal values too. ``end`` (tensor names): the
    audit ends there, they are the outputs and the nodes no one of them depends on are cut (a
    detector's post-processing: TopK, NonMaxSuppression), for the reference as well. ``arguments``
    (input name -> value: a number, a list, or their text "16000", "1,2,3"): the values the named
    integer or bool inputs are held at instead of the seeded ones (a sample rate, a flag), broadcast
    to the input's shape.

    Raises ModelLoadError (with ``path``) for unreadable, malformed or unsafe files, and
    UnsupportedOperatorError listing every operator outside the IR at once.
    """
    try:
        return _load(Path(path), input_shape, dict(input_shapes or {}), start, tuple(perturb or ()), tuple(end),
                     dict(arguments or {}))
    except StabauditError as exc:
        if exc.path is None:
            exc.path = str(path)
        raise
    except MemoryError:  # a last resort: sizes are checked before allocating wherever they are known
        raise ResourceError("loading the model needs more memory than is available", path=str(path)) from None
    except RecursionError:
        raise ModelLoadError("the model's graph is nested too deeply", path=str(path)) from None


def _load(path: Path, input_shape: tuple[int, ...] | None, named: dict[str, tuple[int, ...]],
          start: str | None, perturb: tuple[str, ...] = (), end: tuple[str, ...] = (),
          arguments: dict[str, Any] | None = None) -> LoadedModel:
    check_file(path)
    data: bytes | None = path.read_bytes()
    assert data is not None
    model = _parse(data)
    check_model_memory(model, path=str(path))  # declared tensor sizes, before external data is read
    external_files = _load_external_data(model, path)
    _check_tensor_sizes(model)
    notes: list[str] = []
    if end:
        model = _cut_after(model, end, notes)
        data = None  # the reference runs the cut model, not the file's bytes
    if external_files:
        notes.append(f"external data read from {external_files} file(s) in the model's directory")
    _check(model, notes)
    from stabaudit.loaders.onnx_ops.contrib import expand_embed_layer_norm

    original = model
    model, expanded = expand_embed_layer_norm(model)
    if expanded:
        data = None  # the reference runs the expanded model, checked against the file below
    work = _lift_opset(model, notes)
    all_inputs = _input_shapes(work.graph, input_shape, notes, named)
    constants = _initializers(work.graph)
    cut = replace(_held_values(work.graph, all_inputs, constants), start=start)
    if arguments:
        cut = _given_values(all_inputs, cut, arguments)
    if expanded:
        _check_expansion(original, model, all_inputs, cut.held, path)
        notes.append(f"com.microsoft.EmbedLayerNormalization x{expanded} written as the Gather, Add and "
                     "LayerNormalization it fuses (the expanded model matches the file on onnxruntime)")
    if perturb:
        cut = _perturb_only(all_inputs, cut, perturb)
    if start is not None:
        cut = _cut_at(work, all_inputs, constants, cut, model, None if external_files else data, path)
    inputs = [i for i in all_inputs if i.name not in cut.held]
    reasons: dict[str, str] = {}
    kept: list[str] = []
    extras: list[str] = []
    graph, params = _translate(work, inputs, notes, constants, cut, reasons, kept, extras)
    used = {s.name for s in graph.inputs}
    _prove_batch_independent(work, [i for i in all_inputs if i.name in used or i.name in cut.held], graph, notes,
                             constants, cut)
    starts = tuple(s.name for s in graph.inputs if s.name in reasons)
    for name in starts:
        notes.append(f"the audit starts from tensor {name!r} {list(graph.shapes[name])}: {reasons[name]}")
    held = {name: cut.why[name] for name in cut.held}
    for name, why in held.items():
        shape = list(np.shape(cut.held[name]))
        notes.append(f"input {name!r} {shape} held at {why}: it is a constant of the audit")
    if extras:  # tensors that stand for outputs that are not real-valued (ZipMap's input): read as outputs
        model = _with_outputs(model, extras)
    reference = OnnxRuntimeReference(model=model, data=None if external_files or extras else data, path=path,
                                     held=cut.held, starts=starts)
    return LoadedModel(
        graph=graph,
        parameterisation=params,
        format=ModelFormat.ONNX,
        reference_name="onnxruntime",
        reference=reference,
        parameters=_parameter_count(model.graph),
        # domain-prefixed outside the default domain, as `stabaudit ops` and SA901 name them
        source_ops=dict(sorted(Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                                       for n in model.graph.node).items())),
        notes=tuple(notes),
        precision=_precision(model.graph),
        start={name: reasons[name] for name in starts},
        held=held,
        reference_at=partial(reference.at_held, shapes={s.name: s.shape for s in graph.inputs}) if starts else None,
        reference_outputs=tuple(o.name for o in model.graph.output) if kept else (),
        output_names=tuple(kept),
    )


def _check_expansion(original: Any, expanded: Any, inputs: Sequence[_Input], held: Mapping[str, np.ndarray],
                     path: Path) -> None:
    """The expanded model's outputs against the file's on onnxruntime, at the held values and
    seeded standard-normal real inputs: a fused operator written out must compute the same map."""
    rng = np.random.default_rng(0)
    feeds = {i.name: held[i.name] if i.name in held else rng.standard_normal(i.shape).astype(i.dtype) for i in inputs}
    ours = OnnxRuntimeReference(model=expanded, data=None, path=path).session()
    theirs = OnnxRuntimeReference(model=original, data=None, path=path).session()
    run = {i.name: feeds[i.name] for i in theirs.get_inputs()}
    try:
        pairs = list(zip(ours.run(None, run), theirs.run(None, run), strict=True))
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-4 * (1.0 + float(np.max(np.abs(b), initial=0.0)))):
            raise ModelLoadError("the expansion of com.microsoft.EmbedLayerNormalization does not match onnxruntime's "
                                 "kernel on this model")


def _cut_after(model: Any, end: Sequence[str], notes: list[str]) -> Any:
    """A copy of ``model`` whose outputs are the tensors ``end`` (--to), without the nodes none of
    them depends on (a detector's post-processing after its heads): those are neither translated
    nor run by the reference."""
    import onnx

    from stabaudit.loaders.onnx_ops.control import subgraph_reads

    produced = {name: node for node in model.graph.node for name in node.output if name}
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input} - initializers
    for name in end:
        if name in initializers:
            raise ModelLoadError(f"--to {name!r} is a weight (an initializer), not a computed tensor")
        if name not in produced:
            raise ModelLoadError(f"--to {name!r}: no node of the model computes a tensor of that name"
                                 + (" (it is a graph input)" if name in graph_inputs else ""))
    needed: set[int] = set()
    stack = list(end)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = produced.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
        stack.extend(subgraph_reads(node))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [n for n in model.graph.node if id(n) in needed]
    cut = len(model.graph.node) - len(kept)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    typed = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
    del copy.graph.output[:]
    copy.graph.output.extend(typed[name] if name in typed else onnx.ValueInfoProto(name=name) for name in end)
    used = seen | {i for n in kept for i in n.input}
    kept_inputs = [i for i in model.graph.input if i.name in used or i.name in initializers]
    del copy.graph.input[:]
    copy.graph.input.extend(kept_inputs)
    ops = Counter(n.op_type for n in model.graph.node if id(n) not in needed)
    notes.append(f"the audit ends at tensor(s) {', '.join(repr(n) for n in end)} (--to): {cut} node(s) after "
                 f"them cut" + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))})" if ops else ""))
    return copy


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` with the tensors ``names`` added as graph outputs (after its own)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return copy


_PRECISIONS = {16: "bfloat16", 10: "float16", 1: "float32", 11: "float64"}  # least precise first


def _precision(graph: Any) -> str:
    """The least precise float type among the inputs, the initializers, Constant tensors and
    the targets of Cast nodes ("float32" when none is a float type); float32 where an ai.onnx.ml
    node is (their weights are float32 attributes, and onnxruntime computes them in float32)."""
    types = {vi.type.tensor_type.elem_type for vi in graph.input if vi.type.HasField("tensor_type")}
    types.update(t.data_type for t in graph.initializer)
    for node in graph.node:
        if node.domain == "ai.onnx.ml":
            types.add(1)
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
    real: bool = True  # a floating-point input (integer and bool inputs are held at values)


def _input_shapes(graph: Any, input_shape: Sequence[int] | None, notes: list[str],
                  named: Mapping[str, tuple[int, ...]] | None = None) -> list[_Input]:
    """Static shapes of the graph inputs that are not initializers.

    The first input takes ``input_shape`` when given, an input named in ``named`` its shape
    there (same rank; static dims must agree); a symbolic dim fixed by a given shape is fixed in
    every input that carries its name; otherwise an unknown dim 0 (batch) becomes 1 and any
    other unknown dim is an error.
    """
    from onnx import TensorProto, helper

    from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES

    named = dict(named or {})
    initialized = {t.name for t in graph.initializer}
    real = [vi for vi in graph.input if vi.name not in initialized]
    if not real:
        raise ModelLoadError("the model has no inputs (every graph input is an initializer)")
    unknown = sorted(set(named) - {vi.name for vi in real})
    if unknown:
        raise ModelLoadError(f"--input-shape names {', '.join(map(repr, unknown))}, which the model does not have as "
                             f"input(s); its inputs: {', '.join(repr(vi.name) for vi in real)}")
    parsed = []
    symbols: dict[str, int] = {}
    for index, vi in enumerate(real):
        if not vi.type.HasField("tensor_type"):
            raise ModelLoadError(f"input {vi.name!r} is not a tensor")
        tensor = vi.type.tensor_type
        if tensor.elem_type not in FLOAT_TYPES and tensor.elem_type not in _HELD_TYPES:
            type_name = _type_name(tensor.elem_type)
            raise ModelLoadError(f"input {vi.name!r} has element type {type_name}; only floating-point, integer and "
                                 "bool inputs are supported")
        dims: list[int | None] | None = None
        labels: list[str] = []
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
            labels = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                      for d in tensor.shape.dim]
        given = named.get(vi.name, tuple(input_shape) if index == 0 and input_shape is not None else None)
        if given is not None:
            shape = _given_shape(vi.name, dims, tuple(given))
            for label, d, g in zip(labels, dims or [], shape, strict=False):
                if d is None and label != "?":
                    symbols.setdefault(label, g)
        parsed.append((index, vi, tensor, dims, labels, given))
    result = []
    for index, vi, tensor, dims, labels, given in parsed:
        batch = None
        if given is not None:
            shape = _given_shape(vi.name, dims, tuple(given))
            if dims is None or None in dims:
                notes.append(f"input {vi.name!r} [{','.join(labels)}] fixed to {list(shape)} by --input-shape")
        else:
            if dims is not None and any(d is None and lab in symbols for d, lab in zip(dims, labels, strict=False)):
                dims = [symbols.get(lab, d) if d is None else d for d, lab in zip(dims, labels, strict=False)]
                notes.append(f"input {vi.name!r} [{','.join(labels)}] fixed to {dims} by the dims another input's "
                             "--input-shape gives")
            shape = _default_shape(vi.name, dims, labels, notes)
            batch = labels[0] if dims and dims[0] is None else None
        floating = tensor.elem_type in FLOAT_TYPES
        dtype = np.dtype(np.float32) if tensor.elem_type == TensorProto.BFLOAT16 else \
            np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        if math.prod(shape) > MAX_ELEMENTS:
            raise ResourceError(f"input {vi.name!r} of shape {list(shape)} is above the limit of {MAX_ELEMENTS} elements")
        result.append(_Input(name=vi.name, shape=shape, dtype=dtype, batch=batch, first=index == 0, real=floating))
    return result


_HELD_TYPES = frozenset({2, 3, 4, 5, 6, 7, 9, 12, 13})  # uint8 int8 uint16 int16 int32 int64 bool uint32 uint64
_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten", "Expand"})


@dataclass(frozen=True, kw_only=True)
class _Cut:
    """Where the audit starts: the held inputs (values that become constants) and a named start."""
    start: str | None = None  # --from
    start_shape: tuple[int, ...] | None = None
    held: dict[str, np.ndarray]
    why: dict[str, str]  # held input -> how its values were chosen
    sources: frozenset[str] = frozenset()  # held inputs whose values make a start (not masks)
    needed: frozenset[int] | None = None  # with --from: the indices of the nodes downstream of it


def _held_values(graph: Any, inputs: Sequence[_Input], constants: Mapping[str, np.ndarray],
                 seed: int = 0) -> _Cut:
    """Seeded valid values of the integer and bool inputs: token ids in [0, rows) where an input
    indexes a Gather table, masks all ones (true), lengths the sequence length, zeros otherwise."""
    rng = np.random.default_rng(seed)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    tables = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    producers = {o: n for n in graph.node for o in n.output}

    def table_shape(name: str, depth: int = 0) -> tuple[int, ...] | None:
        """The shape of a stored table, through a DequantizeLinear / Cast / Identity of it."""
        if name in constants:
            return tuple(constants[name].shape)
        if name in tables:
            attr = next((a for a in tables[name].attribute if a.name == "value"), None)
            return tuple(attr.t.dims) if attr is not None else None
        node = producers.get(name)
        if node is None or depth >= 4 or not node.input:
            return None
        if node.op_type in ("DequantizeLinear", "Cast", "Identity"):
            return table_shape(node.input[0], depth + 1)
        if node.op_type in ("Mul", "Add", "Sub") and len(node.input) == 2:  # a dequantization by hand
            a, b = table_shape(node.input[0], depth + 1), table_shape(node.input[1], depth + 1)
            try:
                return tuple(np.broadcast_shapes(a, b)) if a is not None and b is not None else None
            except ValueError:
                return None
        return None

    def table_rows(name: str) -> tuple[int, str] | None:
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            for node, k in consumers.get(current, []):
                if node.op_type == "Gather" and k == 1:
                    data = node.input[0]
                    shape = table_shape(data)
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if shape and -len(shape) <= axis < len(shape):
                        return int(shape[axis]), data
                elif node.op_type in _PASS_THROUGH and k == 0:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            todo.append(out)
        return None

    held: dict[str, np.ndarray] = {}
    why: dict[str, str] = {}
    sources = set()
    lengths = [i.shape[-1] for i in inputs if not i.real and len(i.shape) >= 2]
    for i in inputs:
        if i.real:
            continue
        lower = i.name.lower()
        if i.dtype == np.bool_ or "mask" in lower:
            held[i.name] = np.ones(i.shape, dtype=i.dtype)
            why[i.name] = "all true (a mask)" if i.dtype == np.bool_ else "all ones (a mask)"
            continue
        found = table_rows(i.name)
        if found is not None:
            rows, table = found
            held[i.name] = rng.integers(0, rows, size=i.shape).astype(i.dtype)
            why[i.name] = f"seeded ids in [0, {rows}) (it indexes the rows of {table!r})"
        elif "len" in lower and lengths:
            held[i.name] = np.full(i.shape, max(lengths), dtype=i.dtype)
            why[i.name] = f"the sequence length {max(lengths)}"
        else:
            held[i.name] = np.zeros(i.shape, dtype=i.dtype)
            why[i.name] = "zeros"
        sources.add(i.name)
    return _Cut(held=held, why=why, sources=frozenset(sources))


def _given_values(inputs: Sequence[_Input], cut: _Cut, arguments: Mapping[str, Any]) -> _Cut:
    """``cut`` with the integer and bool inputs named in ``arguments`` held at the given values
    (broadcast to the input's shape); they are constants of the audit, never a place it starts."""
    by_name = {i.name: i for i in inputs}
    held, why, sources = dict(cut.held), dict(cut.why), set(cut.sources)
    fixed = [i.name for i in inputs if not i.real]
    for name, given in arguments.items():
        i = by_name.get(name)
        if i is None or i.real:
            what = "a floating-point input (--perturb NAME holds the others)" if i is not None else "not an input"
            raise ModelLoadError(f"--arg {name}: {what}; --arg gives the values of the model's integer and bool "
                                 f"inputs: {', '.join(map(repr, fixed)) or 'it has none'}")
        value = _argument_array(name, given, i.dtype)
        try:
            held[name] = np.broadcast_to(value, i.shape).astype(i.dtype)
        except ValueError:
            raise ModelLoadError(f"--arg {name}: {value.size} value(s) do not fit the input's shape "
                                 f"{list(i.shape)}") from None
        shown = str(given) if isinstance(given, str) else ",".join(map(str, np.ravel(given)))
        why[name] = f"{shown} (given by --arg)"
        sources.discard(name)
    return replace(cut, held=held, why=why, sources=frozenset(sources))


def _argument_array(name: str, given: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """The numbers of an --arg value (text "16000" / "1,2,3" / "true", a number or a list) as
    ``dtype``; a value that is not one is a ModelLoadError."""
    items = [t.strip() for t in given.split(",")] if isinstance(given, str) else list(np.ravel(np.asarray(given)))
    out: list[int | bool] = []
    for item in items:
        text = str(item).strip().lower()
        if dtype == np.bool_ and text in ("true", "false"):
            out.append(text == "true")
            continue
        try:
            number = float(text)
        except ValueError:
            raise ModelLoadError(f"--arg {name}: {item!r} is not a number") from None
        if not (math.isfinite(number) and number == int(number)):
            raise ModelLoadError(f"--arg {name}: {item!r} is not an integer")
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and not info.min <= int(number) <= info.max:
            raise ModelLoadError(f"--arg {name}: {item!r} is outside the range of {dtype}")
        out.append(int(number))
    if not out:
        raise ModelLoadError(f"--arg {name}: no value given")
    return np.asarray(out if len(out) > 1 else out[0], dtype=dtype)


def _perturb_only(inputs: Sequence[_Input], cut: _Cut, perturb: Sequence[str]) -> _Cut:
    """The real inputs not in ``perturb`` held at seeded standard-normal values."""
    real = [i.name for i in inputs if i.real]
    unknown = [name for name in perturb if name not in real]
    if unknown:
        raise ModelLoadError(f"--perturb names {', '.join(map(repr, unknown))}, which is not a floating-point input "
                             f"of the model; its floating-point inputs: {', '.join(map(repr, real)) or 'none'}")
    rng = np.random.default_rng(1)
    held, why = dict(cut.held), dict(cut.why)
    for i in inputs:
        if i.real and i.name not in perturb:
            held[i.name] = rng.standard_normal(i.shape).astype(i.dtype)
            why[i.name] = "seeded standard-normal values (not in --perturb)"
    return replace(cut, held=held, why=why)


def _cut_at(model: Any, inputs: Sequence[_Input], constants: Mapping[str, np.ndarray], cut: _Cut,
            original: Any, data: bytes | None, path: Path) -> _Cut:
    """The cut at the tensor named by --from: the nodes downstream of it, its shape (from
    onnxruntime at the held values), and the float inputs upstream of it held at seeded
    standard-normal values."""
    from dataclasses import replace

    start = cut.start
    assert start is not None
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    if start not in produced:
        raise ModelLoadError(f"--from {start!r}: no node of the model computes a tensor of that name")
    outputs = {o.name for o in graph.output}
    if start in outputs:
        raise ModelLoadError(f"--from {start!r} is a graph output: name a tensor the outputs depend on")
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    needed: set[int] = set()
    todo = list(outputs)
    seen = set(todo)
    reads: set[str] = set()
    while todo:
        name = todo.pop()
        if name == start or name not in producer:
            reads.add(name)
            continue
        index = producer[name]
        if index in needed:
            continue
        needed.add(index)
        for inp in graph.node[index].input:
            if inp and inp not in seen:
                seen.add(inp)
                todo.append(inp)
    if start not in reads:
        raise ModelLoadError(f"--from {start!r}: no graph output depends on it")
    rng = np.random.default_rng(0)
    held, why = dict(cut.held), dict(cut.why)
    for i in inputs:
        if i.real and i.name not in reads:
            held[i.name] = rng.standard_normal(i.shape).astype(i.dtype)
            why[i.name] = f"seeded standard-normal values (upstream of --from {start!r} only)"
    probe = OnnxRuntimeReference(model=original, data=data, path=path, held=held, starts=(start,))
    shapes = {i.name: i.shape for i in inputs}
    feeds = {name: (held[name] if name in held else rng.standard_normal(shapes[name]).astype(np.float32))
             for name in shapes}
    value = probe.run_with_starts(feeds)[1][0]
    if np.asarray(value).dtype.kind != "f":
        raise ModelLoadError(f"--from {start!r} is a tensor of type {np.asarray(value).dtype}, not a real-valued one")
    return replace(cut, held=held, why=why, start_shape=tuple(np.asarray(value).shape), needed=frozenset(needed))


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
                             f"give its full shape with --input-shape {name}=...")
    return tuple(int(d) for d in dims if d is not None)


PROBE_BATCH = 2  # the second batch size the graph is translated at to follow its batch axis


def _prove_batch_independent(model: Any, inputs: Sequence[_Input], graph: Graph, notes: list[str],
                             constants: Mapping[str, np.ndarray], cut: _Cut | None = None) -> None:
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
    cut = cut if cut is not None else _Cut(held={}, why={})
    graph_inputs = {s.name for s in graph.inputs}
    for members in groups.values():
        names = {i.name for i in members}
        probe = [replace(i, shape=(PROBE_BATCH, *i.shape[1:])) if i.name in names else i
                 for i in inputs if i.name not in cut.held]
        # held members are repeated along the batch axis; the start tensors then carry it
        held = {k: np.repeat(v, PROBE_BATCH, axis=0) if k in names and v.ndim else v for k, v in cut.held.items()}
        probe_cut = replace(cut, held=held)
        axes = {name: 0 for name in names if name in graph_inputs}
        if any(name in cut.held for name in names):
            axes.update((s.name, 0) for s in graph.inputs if s.name not in {i.name for i in inputs})
            if cut.start_shape:
                probe_cut = replace(probe_cut, start_shape=(PROBE_BATCH, *cut.start_shape[1:]))
        culprit: str | None = None
        try:
            large, _ = _translate(model, probe, [], constants, probe_cut)  # the same initializer arrays: no second copy
        except StabauditError as exc:  # e.g. a Reshape to a fixed batch size: it does not translate
            culprit = f"the graph does not translate at batch {PROBE_BATCH} ({_first_line(exc, 120)})"
        else:
            found = batch_mixing(graph, large, axes, PROBE_BATCH)
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
    starts: dict[str, str]  # start tensor -> why the audit starts there
    inlined: Counter[str] = field(default_factory=Counter)  # If nodes inlined, by the branch taken
    fused_in_branches: Counter[str] = field(default_factory=Counter)  # patterns fused inside them


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
               constants: Mapping[str, np.ndarray], cut: _Cut | None = None,
               starts_out: dict[str, str] | None = None,
               outputs_out: list[str] | None = None,
               extras_out: list[str] | None = None) -> tuple[Graph, GraphParameters]:
    """Walk the graph (twice when activation patterns may be fused), then assemble the IR;
    ``outputs_out`` receives the source names of the audited outputs when some graph outputs are left
    out (constants, values that are not real-valued tensors) or stood in for, ``extras_out`` the
    tensors standing in for a graph output that the reference must add as outputs (ZipMap's input)."""
    from stabaudit.loaders.onnx_ops import ANCHORS, fuse_patterns, wrap_node

    graph = model.graph
    opset = _opset(model)
    cut = cut if cut is not None else _Cut(held={}, why={})
    wrapped = []
    for i, n in enumerate(graph.node):
        if cut.needed is not None and i not in cut.needed:
            continue
        try:
            wrapped.append(wrap_node(n, i, opset))
        except Exception as exc:  # an attribute that does not decode (a malformed tensor, a bad type)
            raise ModelLoadError(f"node {n.name or n.op_type!r} ({n.op_type}): an attribute cannot be read: "
                                 f"{_first_line(exc)}") from exc
    defined = {i.name for i in inputs} | set(constants) | set(cut.held) | ({cut.start} if cut.start else set())
    nodes = _topological(wrapped, defined)
    outputs = [o.name for o in graph.output]
    walk = _walk(nodes, constants, inputs, outputs, cut)
    if any(n.op_type in ANCHORS for n in nodes):
        fused, labels = fuse_patterns(nodes, walk.ctx.constants, set(outputs))
        if labels:
            walk = _walk(fused, constants, inputs, outputs, cut)
            notes.append("fused: " + ", ".join(f"{k} x{n}" for k, n in sorted(Counter(labels).items())))
    if walk.unsupported:
        raise UnsupportedOperatorError(dict(walk.unsupported))
    ctx = walk.ctx
    ir_outputs = []
    changed = False
    if any(name in ctx.dropped for name in outputs):
        outputs, extras = _real_outputs(outputs, ctx, notes)
        changed = True
        if extras_out is not None:
            extras_out.extend(extras)
    constant = [name for name in outputs if name not in ctx.conditions and ctx.is_const(name)]
    if constant and len(constant) < len(outputs):
        # outputs that do not depend on the audited inputs: Lipschitz constant 0, left out
        held = (f" once the input(s) {', '.join(repr(n) for n in cut.held)} are held at values" if cut.held else "")
        notes.append(f"graph output(s) {', '.join(repr(n) for n in constant)} are constant{held} (they do not "
                     "depend on the audited inputs, Lipschitz constant 0): left out of the audited graph and of "
                     "the equivalence check")
        outputs = [name for name in outputs if name not in constant]
        changed = True
    if changed and outputs_out is not None:
        outputs_out.extend(outputs)
    for name in outputs:
        if name in ctx.conditions:
            raise UnsupportedOperatorError({"bool output computed from variables": 1})
        if ctx.is_const(name):
            if cut.held:
                raise ModelLoadError(
                    f"graph output {name!r} is a constant once the integer input(s) "
                    f"{', '.join(repr(n) for n in cut.held)} are held at values: no real-valued tensor to start the "
                    "audit from was found (an embedding Gather of a float table by ids, a Cast of ids to float); "
                    "name the tensor to start from with --from TENSOR")
            raise ModelLoadError(f"graph output {name!r} is a constant (it does not depend on any input)")
        ir_outputs.append(ctx.var(name))
    nodes_needed = _live(ctx.nodes, ir_outputs)
    _notes(walk, len(ctx.nodes) - len(nodes_needed), notes)
    from stabaudit.ir.executor import with_shapes

    read = {name for n in nodes_needed for name in n.inputs} | set(ir_outputs)
    specs = tuple(TensorSpec(name=i.name, shape=i.shape) for i in inputs)
    specs += tuple(TensorSpec(name=name, shape=ctx.shapes[name]) for name in walk.starts if name in read)
    if starts_out is not None:
        starts_out.update((name, why) for name, why in walk.starts.items() if name in read)
    if not specs:
        raise ModelLoadError("no real-valued input reaches the outputs: name the tensor to start the audit from "
                             "with --from TENSOR")
    result = with_shapes(Graph(inputs=specs, outputs=tuple(ir_outputs), nodes=tuple(nodes_needed)).validate())
    check_value_sizes(result)
    params = ctx.recorder.finish({n.name for n in nodes_needed}, notes=_exporter_folding(model, nodes, ctx))
    return result, params


def _real_outputs(outputs: Sequence[str], ctx: Any, notes: list[str]) -> tuple[list[str], list[str]]:
    """The graph outputs with those that are not real-valued tensors (ctx.dropped: class labels,
    ZipMap's maps) left out, each ZipMap output replaced by the probabilities it reads; and the
    replacements that are not graph outputs themselves (the reference adds them as outputs)."""
    kept: list[str] = []
    extras: list[str] = []
    left: list[str] = []
    for name in outputs:
        dropped = ctx.dropped.get(name)
        if dropped is None:
            if name not in kept:
                kept.append(name)
            continue
        left.append(f"{name!r} ({dropped.what})")
        real = dropped.real
        if real is None:
            continue
        if real not in kept:
            kept.append(real)
        if real not in outputs and real not in extras:
            extras.append(real)
    note = (f"graph output(s) {', '.join(left)} are not real-valued tensors: left out of the audited graph and of "
            "the equivalence check")
    if extras:
        note += (f"; the audit covers {', '.join(repr(n) for n in extras)} in their place (the probabilities ZipMap "
                 "reads), compared with the reference's values of them")
    notes.append(note)
    if not kept:
        raise ModelLoadError("no graph output is a real-valued tensor (" + ", ".join(left) + "): nothing to audit")
    return kept, extras


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


def _start_reason(node: Any, ctx: Any, tainted: set[str]) -> str | None:
    """Why the node's output is where the input becomes real, or None: a Gather of a float
    table by held ids (an embedding), a Cast of held values to float, a MatMul/Gemm of held
    values (a one-hot) by a float matrix."""
    from onnx import helper

    from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES

    ins = node.present_inputs
    if not ins or not any(n in tainted for n in ins):
        return None
    if node.op_type == "Gather" and len(ins) == 2 and ins[0] not in tainted and ins[1] in tainted:
        table = ctx.const(ins[0])
        if table is not None and np.asarray(table).dtype.kind == "f":
            return f"embedding lookup: Gather {node.name!r} of the float table {ins[0]!r} {list(np.shape(table))} by held ids"
    if node.op_type == "Cast" and int(node.attrs.get("to", 0)) in FLOAT_TYPES:
        return (f"Cast {node.name!r} of held values to "
                f"{helper.tensor_dtype_to_np_dtype(int(node.attrs['to']))}")
    if node.op_type in ("MatMul", "Gemm") and len(ins) >= 2:
        other = ins[1] if ins[0] in tainted else ins[0]
        value = ctx.const(other)
        if other not in tainted and value is not None and np.asarray(value).dtype.kind == "f":
            return f"{node.op_type} {node.name!r} of held values (a one-hot) by the float matrix {other!r}"
    return None


def _walk(nodes: Sequence[Any], constants: Mapping[str, np.ndarray], inputs: Sequence[_Input],
          outputs: Sequence[str], cut: _Cut | None = None) -> _Walk:
    """Fold constants and translate every other node; unsupported nodes are counted, and the
    nodes that depend on them are skipped (counted only when their op is unknown too). An If on a
    constant condition is replaced by the nodes of the branch it takes (onnx_ops.control)."""
    from stabaudit.loaders.onnx_ops import (
        FOLDERS,
        TRANSLATORS,
        Context,
        Unsupported,
        fold,
        foldable,
    )
    from stabaudit.loaders.onnx_ops.control import (
        SUBGRAPH_OPS,
        Branch,
        bind_outputs,
        inline,
        subgraph_reads,
    )
    from stabaudit.loaders.onnx_ops.ml import carry_dropped, refusal
    from stabaudit.loaders.onnx_ops.quantization import carry_quantization

    cut = cut if cut is not None else _Cut(held={}, why={})
    uses = Counter(name for node in nodes for name in node.present_inputs) + Counter(outputs)
    # values read inside If / Loop / Scan bodies count as uses of the values around them
    uses += Counter(name for node in nodes if node.op_type in SUBGRAPH_OPS and node.proto is not None
                    for name in subgraph_reads(node.proto))
    fused_in_branches: Counter[str] = Counter()
    shapes = {i.name: i.shape for i in inputs}
    if cut.start is not None and cut.start_shape is not None:
        shapes[cut.start] = cut.start_shape
    ctx = Context(inputs=shapes, constants={**constants, **cut.held}, uses=uses,
                  float_dtype=inputs[0].dtype if inputs else np.dtype(np.float32))
    for name in cut.held:
        ctx.stored.discard(name)  # held inputs are not parameters
    tainted = set(cut.sources) if cut.start is None else set()
    starts: dict[str, str] = {}
    if cut.start is not None:
        starts[cut.start] = "named by --from (the graph upstream of it is cut)"
    unsupported: Counter[str] = Counter()
    folded: Counter[str] = Counter()
    poisoned: set[str] = set()
    constant_nodes = 0
    inlined: Counter[str] = Counter()
    queue: deque[Any] = deque(nodes)
    while queue:
        node = queue.popleft()
        if isinstance(node, Branch):  # the taken branch is translated: the If's outputs are its outputs
            bind_outputs(node, ctx, poisoned)
            continue
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and not any(n in poisoned for n in node.present_inputs):
            try:
                # the names defined so far and by the nodes still to come: a branch's own are renamed
                pending = {o for n in queue if not isinstance(n, Branch) for o in n.outputs if o}
                inner, branch, labels = inline(node, ctx, _known(ctx) | pending, _constant_value)
            except Unsupported as exc:
                unsupported[exc.label] += 1
                poisoned.update(node.outputs)
                continue
            fused_in_branches.update(labels)
            queue.extendleft(reversed([*inner, branch]))
            inlined["then" if branch.taken else "else"] += 1
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            ctx.constants[node.outputs[0]] = _constant_value(node)
            ctx.stored.add(node.outputs[0])
            constant_nodes += 1
            continue
        if any(name in poisoned for name in node.present_inputs):
            if node.key not in TRANSLATORS and node.key not in FOLDERS:
                unsupported[refusal(node.key)] += 1
            poisoned.update(node.outputs)
            continue
        try:
            if any(name in ctx.dropped for name in node.present_inputs):
                carry_dropped(node, ctx)  # a class label or ZipMap's maps passed on, or refused
            elif foldable(node, ctx):
                reason = _start_reason(node, ctx, tainted)
                values = fold(node, ctx)
                if reason is not None and len(node.outputs) == 1:
                    ctx.shapes[node.outputs[0]] = tuple(np.shape(values[0]))
                    starts[node.outputs[0]] = reason
                    continue
                for name, value in zip(node.outputs, values, strict=False):
                    if name:
                        ctx.constants[name] = value
                if node.op_type not in ("Shape", "Size") and any(n in tainted for n in node.present_inputs):
                    tainted.update(n for n in node.outputs if n)
                folded[node.op_type] += 1
            elif node.op_type not in _READS_CONDITIONS and any(n in ctx.conditions for n in node.present_inputs):
                raise Unsupported(f"{node.op_type}(of a bool condition computed from variables)")
            elif node.key in TRANSLATORS:
                start = len(ctx.nodes)
                TRANSLATORS.get(node.key)(node, ctx)
                carry_quantization(node, ctx, start)
            else:
                raise Unsupported(refusal(node.key))
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
                 constant_nodes=constant_nodes, folded=folded, starts=starts, inlined=inlined,
                 fused_in_branches=fused_in_branches)


def _known(ctx: Any) -> set[str]:
    """Every ONNX name the walk has defined so far (variables, constants, aliases, conditions)."""
    return set(ctx.shapes) | set(ctx.constants) | set(ctx.aliases) | set(ctx.conditions) | set(ctx.dropped)


_READS_CONDITIONS = frozenset({"Where", "Not"})  # the translators that take a Context.conditions entry


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
    if walk.inlined:
        taken = ", ".join(f"{k} branch x{n}" for k, n in sorted(walk.inlined.items()))
        notes.append(f"{sum(walk.inlined.values())} If node(s) whose condition is a constant of the audit "
                     f"inlined ({taken})")
    if walk.fused_in_branches:
        notes.append(f"fused inside If branches: {counts(walk.fused_in_branches)}")
    if dead:
        notes.append(f"{dead} IR node(s) that no output depends on dropped")


_ML_WEIGHTS = frozenset({"coefficients", "intercepts", "scale", "offset"})  # float attributes of ai.onnx.ml models


def _parameter_count(graph: Any) -> int:
    """Elements of float initializers and float Constant-node tensors (shape constants excluded), and
    the float attributes that hold the weights of ai.onnx.ml models (coefficients, intercepts, ...)."""
    from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES

    count = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in FLOAT_TYPES)
    for node in graph.node:
        if node.domain == "ai.onnx.ml":
            count += sum(len(a.floats) for a in node.attribute if a.name in _ML_WEIGHTS)
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

    def __init__(self, *, model: Any, data: bytes | None, path: Path, held: Mapping[str, np.ndarray] | None = None,
                 starts: Sequence[str] = ()):
        self._model = model
        self._data = data
        self._path = path
        self._session: Any = None
        self._held = dict(held or {})  # the values of the held inputs, fed on every run
        self._starts = tuple(starts)  # tensors the audit starts from, read as extra outputs
        self._start_session: Any = None
        self._outputs = 0

    def run_with_starts(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The model's outputs and the start tensors' values (added as extra graph outputs to a
        copy of the model) on ``feeds`` and the held values."""
        if self._start_session is None:
            import onnx

            model = self._model
            if model is None:
                raise ModelLoadError("the model is no longer in memory", path=str(self._path))
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            known = {o.name for o in copy.graph.output}
            self._outputs = len(copy.graph.output)
            for name in self._starts:
                if name not in known:
                    copy.graph.output.append(onnx.ValueInfoProto(name=name))
            keep_model, keep_data, keep_session = self._model, self._data, self._session
            self._model, self._data, self._session = copy, None, None
            try:
                self._start_session = self.session()
            finally:
                self._model, self._data, self._session = keep_model, keep_data, keep_session
        session = self._start_session
        names = [o.name for o in session.get_outputs()]
        run_feeds = {}
        for i in session.get_inputs():
            value = self._held[i.name] if i.name in self._held else feeds[i.name]
            run_feeds[i.name] = np.asarray(value) if i.name in self._held else \
                np.asarray(value, dtype=_ORT_TYPES.get(i.type, np.float32))
        try:
            results = session.run(None, run_feeds)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime failed to run the model: {_first_line(exc)}", path=str(self._path)) from exc
        by_name = dict(zip(names, results, strict=True))
        outputs = [_widened(np.asarray(r)) for r in results[:self._outputs]]
        return outputs, [_widened(np.asarray(by_name[n])) for n in self._starts]

    def at_held(self, rng: np.random.Generator, shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Feeds for the IR graph's inputs (``shapes``): seeded standard-normal values for the
        graph inputs, the reference's values of the start tensors at the held inputs; and the
        reference's outputs there."""
        feeds = {name: rng.standard_normal(shape).astype(np.float32)
                 for name, shape in shapes.items() if name not in self._starts}
        outputs, starts = self.run_with_starts(feeds)
        feeds.update((name, np.asarray(v, dtype=np.float32)) for name, v in zip(self._starts, starts, strict=True))
        return feeds, outputs

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
            if not self._starts:
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
        feeds = {i.name: np.asarray(self._held[i.name]) if i.name in self._held else
                 np.asarray(inputs[i.name], dtype=_ORT_TYPES.get(i.type, np.float32))
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
