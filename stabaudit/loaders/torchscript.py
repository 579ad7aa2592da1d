"""TorchScript archive -> IR graph: torch.jit.load only, calls inlined, every operator translated."""

from __future__ import annotations

import itertools
import math
import operator
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stabaudit.errors import ModelLoadError, ResourceError, UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import infer_shapes, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.parameters import ModuleParameters, Origin, SourceParameter
from stabaudit.loaders.base import MAX_ELEMENTS, LoadedModel, ModelFormat, check_value_sizes
from stabaudit.loaders.ts_held import Held, held_inputs
from stabaudit.loaders.ts_signature import (
    EXTRA_FILE,
    TRACED_INPUTS,
    ArgumentValue,
    Signature,
    forward_signature,
    module_path,
)

if TYPE_CHECKING:
    from stabaudit.loaders.ts_ops.base import Var

MAX_ARCHIVE_BYTES = 2 * 1024**3  # archives above this are refused before torch.jit.load reads them
# Zip-bomb guards, read from the central directory before torch.jit.load (nothing is extracted):
MAX_UNCOMPRESSED_BYTES = 4 * 1024**3  # the declared sizes of all entries together
MAX_COMPRESSION_RATIO = 200  # declared / stored size of one entry (torch.jit.save stores, ratio 1)
MAX_ENTRIES = 100_000
MAX_LOOP_ITERATIONS = 100_000  # prim::Loop unrolling guard

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def supported_operators() -> list[str]:
    """The TorchScript operators the loader translates (in-place "op_" variants included)."""
    from stabaudit.loaders.ts_ops import TRANSLATORS

    return sorted(TRANSLATORS)


def load_torchscript(
    path: str | os.PathLike[str], *, input_shape: tuple[int, ...] | None = None, trust_code: bool = False,
    where: str | None = None, arguments: Mapping[str, ArgumentValue] | None = None,
) -> LoadedModel:
    """Load a torch.jit.save archive and translate ``forward`` at a static input shape.

    The shape comes from ``input_shape``, else from the archive's ``stabaudit.json`` extra file,
    else from the example input torch.jit.trace recorded, else from the first layer on the input
    (loaders.ts_signature). ``arguments`` gives forward's non-tensor arguments by name (those
    not given take their defaults).
    Before torch.jit.load compiles or unpickles anything, the static gate (ts_gate) reads the
    archive's code and pickles and refuses calls outside its allowlist; ``trust_code`` skips it
    for an archive the user vouches for (--trust-torchscript). ``where`` names the file in errors
    (default: ``path``). This runs the archive's code in the calling process: loaders.load_model
    runs it in an isolated child process (loaders.ts_child).
    """
    import torch

    where = str(path) if where is None else where
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError("file not found", path=where)
    extra = {EXTRA_FILE: ""}
    module, traced = _load_checked(file, where, trust_code, extra)
    module.eval()
    _check_storages(module, where)
    try:
        graph = module.forward.graph.copy()
    except (AttributeError, RuntimeError) as exc:
        raise ModelLoadError("the archive's module has no forward method", path=where) from exc
    # Inline every call and walk the result ourselves rather than torch.jit.freeze it: freezing
    # folds BatchNorm into convolutions in float32 and merges equal constants, so the graph would
    # neither hold the stored weights nor keep each layer's module path (used for layer names).
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_dce(graph)  # results the forward computes and discards are never walked
    notes = ["calls inlined (torch._C._jit_pass_inline); translated at a static input shape"]
    if trust_code:  # the report says that the archive's code ran unchecked, on the user's word
        notes.append("the static gate of TorchScript code was skipped (--trust-torchscript): the archive's "
                     "code was loaded and run as the user vouched for it")
    signature = forward_signature(module, graph, input_shape=input_shape, extra=extra[EXTRA_FILE], traced=traced,
                                  arguments=arguments or {}, where=where)
    notes.extend(signature.notes)
    for shape in signature.shapes:  # before the walk: translators may broadcast constants to these shapes
        if math.prod(shape) > MAX_ELEMENTS:
            raise ResourceError(f"input shape {list(shape)} is above the limit of {MAX_ELEMENTS} elements", path=where)

    walker = _Walker(module, where)
    with torch.no_grad():
        ir_graph = walker.translate(graph, signature)
    check_value_sizes(ir_graph)
    notes.extend(walker.notes)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    held = {name: h.value for name, h in walker.held.items()}
    reference = _reference(module, tuple(walker.tensor_names), signature, dtype, where, held, walker.kept_outputs)
    for name, h in walker.held.items():
        notes.append(f"input {name!r} {list(h.value.shape)} held at {h.why}: it is a constant of the audit")
    for name, (_, why) in walker.starts.items():
        notes.append(f"the audit starts from tensor {name!r} {list(ir_graph.shapes[name])}: {why}")
    return LoadedModel(
        graph=ir_graph,
        parameterisation=_module_parameters(module),
        format=ModelFormat.TORCHSCRIPT,
        reference_name="torchscript",
        reference=reference,
        parameters=_parameter_count(module),
        source_ops=dict(sorted(walker.source_ops.items())),
        notes=tuple(notes),
        precision=_precision(module),
        start={name: why for name, (_, why) in walker.starts.items()},
        held={name: h.why for name, h in walker.held.items()},
        reference_at=_reference_at(reference, ir_graph, walker.starts) if walker.starts else None,
    )


def _module_parameters(module: Any) -> ModuleParameters:
    """The module's own floating-point parameters (nn.Parameter: BatchNorm's gamma and beta
    included, buffers such as running statistics and constants excluded)."""
    params = tuple(
        SourceParameter(name=name, shape=tuple(int(d) for d in p.shape), origin=Origin.MODULE,
                        role="module parameter")
        for name, p in module.named_parameters()
        if p.is_floating_point()
    )
    return ModuleParameters(module=module, parameters=params)


def _precision(module: Any) -> str:
    """The least precise float type of the stored parameters and buffers ("float32" if none)."""
    import torch

    order = [torch.bfloat16, torch.float16, torch.float32, torch.float64]  # unit roundoff 2^-8 ... 2^-53
    kinds = {t.dtype for t in itertools.chain(module.parameters(), module.buffers()) if t.dtype in order}
    least = min(kinds, key=order.index) if kinds else torch.float32
    return str(least).removeprefix("torch.")


def _load_checked(file: Path, where: str, trust_code: bool, extra: dict[str, str]) -> tuple[Any, bytes | None]:
    """torch.jit.load of the very bytes the checks read, and the archive's record of the example
    inputs torch.jit.trace kept (None if there is none). The file is opened once, and the size
    check, the zip-bomb guard, the static gate and torch all read that open file (through
    /proc/self/fd where there is one), so the archive cannot be swapped between the gate and
    the load."""
    import torch

    try:
        handle = file.open("rb")
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror or exc})", path=where) from exc
    with handle:
        pinned = Path(f"/proc/self/fd/{handle.fileno()}")
        if not pinned.exists():
            pinned = file  # no procfs: the path itself, read again by each check
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_ARCHIVE_BYTES:
            raise ResourceError(
                f"archive of {size} bytes exceeds the limit of {MAX_ARCHIVE_BYTES} bytes", path=where
            )
        _check_archive(pinned, where)
        if not trust_code:
            from stabaudit.loaders.ts_gate import check_archive_code

            check_archive_code(pinned, where)
        traced = _traced_record(pinned)
        try:
            return torch.jit.load(str(pinned), map_location="cpu", _extra_files=extra), traced
        except Exception as exc:  # any failure of torch's reader means: not a loadable archive
            raise ModelLoadError(
                f"not a loadable TorchScript archive (torch.jit.load: {_first_line(exc)})", path=where
            ) from exc


def _traced_record(file: Path) -> bytes | None:
    """The bytes of ``<root>/traced_inputs.pkl`` (read, never unpickled here), if the archive has
    one of a modest size (ts_signature.MAX_TRACED_INPUTS_BYTES; the zip-bomb guard has run)."""
    from stabaudit.loaders.ts_signature import MAX_TRACED_INPUTS_BYTES

    try:
        with zipfile.ZipFile(file) as archive:
            for entry in archive.infolist():
                parts = entry.filename.split("/")
                if len(parts) == 2 and parts[1] == TRACED_INPUTS and entry.file_size <= MAX_TRACED_INPUTS_BYTES:
                    return archive.read(entry)
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError, RuntimeError):
        return None  # torch.jit.load says what is wrong with the archive
    return None


def precheck_archive(file: Path, where: str) -> None:
    """The archive's size and zip-bomb checks, in the calling process before a child loads it (the
    child repeats them on the bytes it loads): a bomb is refused without starting a process."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror or exc})", path=where) from exc
    if size > MAX_ARCHIVE_BYTES:
        raise ResourceError(f"archive of {size} bytes exceeds the limit of {MAX_ARCHIVE_BYTES} bytes", path=where)
    _check_archive(file, where)


# ---- archive metadata --------------------------------------------------------------------------
def _check_archive(file: Path, where: str) -> None:
    """Refuse a zip bomb from the archive's central directory, before torch.jit.load inflates it:
    too many entries, declared sizes above MAX_UNCOMPRESSED_BYTES, or an extreme compression ratio."""
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"not a loadable TorchScript archive (a damaged zip: {_first_line(exc)})", path=where) from exc
    if len(entries) > MAX_ENTRIES:
        raise ResourceError(f"zip bomb guard: the archive has {len(entries)} entries, above the limit of {MAX_ENTRIES}",
                            path=where)
    total = sum(e.file_size for e in entries)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ResourceError(f"zip bomb guard: the archive's entries declare {total} bytes uncompressed, above the "
                            f"limit of {MAX_UNCOMPRESSED_BYTES} bytes", path=where)
    for e in entries:
        if e.file_size > 1024**2 and e.file_size > MAX_COMPRESSION_RATIO * max(e.compress_size, 1):
            raise ResourceError(f"zip bomb guard: entry {e.filename!r} inflates {e.compress_size} bytes to "
                                f"{e.file_size} (ratio above {MAX_COMPRESSION_RATIO})", path=where)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_storages(module: Any, where: str) -> None:
    """Every stored tensor's data is there: torch.jit.load accepts a truncated data record and
    leaves the tensor without memory, which fails only when the tensor is first read."""
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.numel() == 0:
            continue
        last = tensor.storage_offset() + sum((n - 1) * st for n, st in zip(tensor.shape, tensor.stride(), strict=True))
        try:
            storage = tensor.untyped_storage()
            missing = storage.data_ptr() == 0 or storage.nbytes() < (last + 1) * tensor.element_size()
        except RuntimeError:  # "an invalid python storage": no data was read for it
            missing = True
        if missing:
            raise ModelLoadError(f"the data of tensor {name!r} is missing or truncated in the archive", path=where)


def _parameter_count(module: Any) -> int:
    """Parameters plus floating buffers (running statistics), each stored tensor counted once."""
    seen: set[int] = set()
    total = 0
    tensors = itertools.chain(module.parameters(), (b for b in module.buffers() if b.is_floating_point()))
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += int(tensor.numel())
    return total


def _flatten_outputs(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten_outputs(item)
    else:
        yield value


def _reference(
    module: Any, names: tuple[str, ...], signature: Signature, dtype: Any, where: str,
    held: Mapping[str, Any] | None = None, kept: tuple[int, ...] | None = None,
) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """The module's forward on named float32 inputs (``names``: every tensor argument in order),
    the held ones at their values, its other arguments at their bound values; ``kept``: the
    indices of the (flattened) outputs that the audit covers (None: all)."""
    held = dict(held or {})

    def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import copy

        import torch

        tensors = [held[name].clone() if name in held else torch.from_numpy(np.array(inputs[name], dtype=np.float32)).to(dtype)
                   for name in names]
        # a fresh copy of each bound value: forward may mutate a list argument
        args = [tensors[x] if how == "tensor" else copy.deepcopy(x) for how, x in signature.call]
        try:
            with torch.no_grad():
                out = module(*args)
        except Exception as exc:  # the archive's own forward fails on a valid input
            raise ModelLoadError(f"the TorchScript forward fails: {_first_line(exc)}", path=where) from exc
        flat = [t for t in _flatten_outputs(out) if isinstance(t, torch.Tensor)]
        if kept is not None:
            flat = [flat[i] for i in kept if i < len(flat)]
        return [t.detach().to(torch.float32).cpu().numpy() for t in flat]

    return run


def _reference_at(reference: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]], graph: Graph,
                  starts: Mapping[str, tuple[np.ndarray, str]]) -> Callable[[np.random.Generator], tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    """(rng) -> (feeds of the IR graph: seeded standard-normal values of its real inputs and the
    start tensors' values at the held inputs; the module's outputs there)."""

    def at(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        feeds = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in graph.inputs if s.name not in starts}
        outputs = reference(feeds)
        feeds.update((name, np.asarray(value, dtype=np.float32)) for name, (value, _) in starts.items())
        return feeds, outputs

    return at


# ---- Python semantics of TorchScript's scalar and list operators --------------------------------
def _slice(seq: Sequence[Any], start: int | None = None, end: int | None = None, step: int = 1) -> list[Any]:
    return list(seq[start:end:step])


def _append(seq: list[Any], item: Any) -> list[Any]:
    seq.append(item)
    return seq


_PY_OPS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": operator.floordiv, "remainder": operator.mod, "pow": operator.pow,
    "neg": operator.neg, "abs": abs, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge, "__and__": operator.and_,
    "__or__": operator.or_, "__xor__": operator.xor, "__not__": operator.not_,
    "__is__": operator.is_, "__isnot__": operator.is_not, "__contains__": lambda a, b: b in a,
    "__getitem__": lambda a, i: a[i], "len": len, "min": lambda *a: min(*a), "max": lambda *a: max(*a),
    "Int": int, "Float": float, "Bool": bool, "str": str, "list": list, "floor": math.floor,
    "ceil": math.ceil, "sqrt": math.sqrt, "slice": _slice, "append": _append,
    "format": lambda fmt, *args: fmt.format(*args), "warn": lambda *a: None,
    "__range_length": lambda lo, hi, step: len(range(lo, hi, step)),
    "__derive_index": lambda index, start, step: start + index * step,
}
_ALWAYS_PY = frozenset({"__is__", "__isnot__"})


def _set_item(container: Any, key: Any, value: Any) -> Any:
    container[key] = value
    return container


# TorchScript's list and dict methods, run in Python whatever the items (tensors computed from
# the input included): they move values around and compute nothing. TorchScript lists and dicts
# are reference types, so the in-place ones mutate the container every other reader sees.
_CONTAINER_OPS: dict[str, Callable[..., Any]] = {
    "append": _append, "_set_item": _set_item, "extend": lambda seq, more: seq.extend(more),
    "insert": lambda seq, i, item: seq.insert(i, item), "pop": lambda c, *key: c.pop(*key),
    "__getitem__": lambda c, i: c[i], "len": len, "copy": lambda c: c.copy(), "clear": lambda c: c.clear(),
    "keys": lambda d: list(d.keys()), "values": lambda d: list(d.values()), "items": lambda d: list(d.items()),
    "get": lambda d, *key: d.get(*key), "reverse": lambda seq: seq.reverse(), "add": operator.add,
}


# ---- the walk ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class _Pending:
    """An emitted IR node before the layer names are chosen."""

    op: O.Op
    inputs: tuple[str, ...]
    output: str
    scope: str  # module path of the forward it came from ("" at the top level)
    base: str  # source op without namespace, e.g. "conv2d"
    role: str  # "" for the node that carries the source op's result; else a helper's role
    call: int  # which source node emitted it
    source: str  # the source op, e.g. "aten::conv2d"


class _Walker:
    """Interprets the inlined graph: constants are evaluated, tensors from the input become IR."""

    def __init__(self, module: Any, where: str):
        self.module = module
        self.where = where
        self.env: dict[int, Any] = {}
        self.pending: list[_Pending] = []
        self.unsupported: Counter[str] = Counter()
        self.source_ops: Counter[str] = Counter()
        self.notes: list[str] = []
        self._ids = itertools.count()
        self._calls = itertools.count()
        self._current: tuple[str, str, int, str] = ("", "", 0, "")  # scope, base, call, kind
        self._schemas: dict[str, Any] = {}
        self.tensor_names: list[str] = []  # the forward's tensor inputs, named, in order
        self.held: dict[str, Held] = {}  # integer inputs held at values (loaders.ts_held)
        self.starts: dict[str, tuple[np.ndarray, str]] = {}  # start tensor -> (its value at the held inputs, why)
        self.kept_outputs: tuple[int, ...] | None = None  # the forward outputs audited (None: all)
        self._start_shapes: dict[str, tuple[int, ...]] = {}
        self._tainted: dict[int, Any] = {}  # id -> tensor computed from the held inputs (kept alive)

    # -- the Context protocol used by translators --
    def emit(self, op: O.Op, inputs: Sequence[Var], *, role: str = "") -> Var:
        from stabaudit.loaders.ts_ops.base import Unsupported, Var

        out = f"%{next(self._ids)}"
        specs = list({v.id: (v.id, v.shape) for v in inputs}.values())
        node = Node(name=out, op=op, inputs=tuple(v.id for v in inputs), output=out)
        try:
            shape = infer_shapes(specs, [node])[out]
        except Exception as exc:  # the IR rejects what the translator built: say so, per op
            raise Unsupported(f"IR shape inference failed: {_first_line(exc)}") from exc
        scope, base, call, kind = self._current
        self.pending.append(
            _Pending(op=op, inputs=node.inputs, output=out, scope=scope, base=base, role=role, call=call, source=kind)
        )
        return Var(id=out, shape=shape)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- driver --
    def translate(self, graph: Any, signature: Signature) -> Graph:
        import copy

        from stabaudit.loaders.ts_ops.base import POISON, Complex, Opaque, Var

        self.env[next(iter(graph.inputs())).unique()] = self.module
        for unique, value in signature.bound.items():  # a copy: the walk may mutate a list argument
            self.env[unique] = copy.deepcopy(value)
        specs: list[TensorSpec] = []
        used: set[str] = set()
        for i, value in enumerate(signature.tensors):
            name = re.sub(r"\.\d+$", "", value.debugName())
            if not _NAME.fullmatch(name) or name in used:
                name = f"input{i}"
            used.add(name)
            self.tensor_names.append(name)
        held = held_inputs(self.module, signature.tensors, self.tensor_names, signature.shapes, signature.dtypes)
        for i, (value, shape, name) in enumerate(zip(signature.tensors, signature.shapes, self.tensor_names, strict=True)):
            if i in held:  # an integer input: a constant of the audit
                self.held[name] = held[i]
                self.env[value.unique()] = held[i].value
                self._tainted[id(held[i].value)] = held[i].value
                continue
            specs.append(TensorSpec(name=name, shape=shape))
            self.env[value.unique()] = Var(id=name, shape=shape)
        self._block(graph.nodes())
        outputs = list(_flatten_outputs([self.env[v.unique()] for v in graph.outputs()]))
        labels = [i for i, value in enumerate(outputs) if isinstance(value, Opaque) and value.label]
        if labels and len(labels) < len(outputs) and not self.unsupported:
            # class indices beside the scores: left out of the audit and of the equivalence check
            self.note(f"forward output(s) {', '.join(map(str, labels))} are class indices (argmax, argmin: "
                      "piecewise constant, no Lipschitz constant): left out of the audited graph and of the "
                      "equivalence check")
            self.kept_outputs = tuple(i for i in range(len(outputs)) if i not in labels)
            outputs = [outputs[i] for i in self.kept_outputs]
        for value in outputs:
            if isinstance(value, Opaque):
                self._refuse(value.kind, value.detail)
            elif isinstance(value, Complex):
                self._refuse("forward", "a complex output (return its abs or view_as_real)")
        if self.unsupported:
            raise UnsupportedOperatorError(dict(self.unsupported), path=self.where)
        for i, value in enumerate(outputs):
            if self.held and not isinstance(value, Var) and value is not POISON:
                raise ModelLoadError(
                    f"forward output {i} is a constant once the integer input(s) {', '.join(map(repr, self.held))} "
                    "are held at values: no embedding of them (aten::embedding of a float table) to start the audit "
                    "from was found", path=self.where)
            if value is POISON or not isinstance(value, Var):
                raise ModelLoadError(
                    f"forward output {i} is a {type(value).__name__}, not a tensor computed from the input",
                    path=self.where,
                )
        self._prune({v.id for v in outputs})
        read = {i for p in self.pending for i in p.inputs} | {v.id for v in outputs}
        self.starts = {name: start for name, start in self.starts.items() if name in read}
        specs += [TensorSpec(name=name, shape=self._start_shapes[name]) for name in self.starts]
        used |= set(self.starts)
        names = self._layer_names(used)
        nodes = tuple(
            Node(
                name=names[p.output], op=p.op, inputs=tuple(names.get(i, i) for i in p.inputs),
                output=names[p.output], source_op=p.source,
            )
            for p in self.pending
        )
        ir = Graph(inputs=tuple(specs), outputs=tuple(names.get(v.id, v.id) for v in outputs), nodes=nodes)
        from stabaudit.ir.passes import fuse_masked_softmax, fuse_rms_norm

        return fuse_rms_norm(fuse_masked_softmax(with_shapes(ir.validate())))

    def _prune(self, live: set[str]) -> None:
        """Drop IR nodes that no output depends on (results the forward computes and discards)."""
        kept: list[_Pending] = []
        for p in reversed(self.pending):
            if p.output in live:
                kept.append(p)
                live.update(p.inputs)
        if len(kept) < len(self.pending):
            self.note(f"{len(self.pending) - len(kept)} unused node(s) removed")
        self.pending = kept[::-1]

    def _layer_names(self, used: set[str]) -> dict[str, str]:
        """Readable, unique names: the module path ("features.0"), else "<op>_<index>"."""
        by_call: dict[int, list[_Pending]] = {}
        for p in self.pending:
            by_call.setdefault(p.call, []).append(p)
        primary = {
            call: next((p for p in group if not p.role), group[-1]) for call, group in by_call.items()
        }
        per_scope = Counter(p.scope for p in primary.values() if p.scope)
        bases: dict[str, set[str]] = {}
        for p in primary.values():
            bases.setdefault(p.scope, set()).add(p.base)
        index = {p.output: i for i, p in enumerate(self.pending)}
        names: dict[str, str] = {}

        def claim(name: str) -> str:
            candidate, k = name, 1
            while candidate in used:
                candidate, k = f"{name}_{k}", k + 1
            used.add(candidate)
            return candidate

        for call in sorted(primary, key=lambda c: index[primary[c].output]):
            main = primary[call]
            if not main.scope:
                base = f"{main.base}_{index[main.output]}"
            elif per_scope[main.scope] == 1 or len(bases[main.scope]) == 1:
                base = main.scope  # one op, or one module called several times ("relu", "relu_1")
            else:
                base = f"{main.scope}.{main.base}"
            names[main.output] = claim(base)
            for p in by_call[call]:
                if p is not main:
                    names[p.output] = claim(f"{names[main.output]}/{p.role or p.base}")
        return names

    def _block(self, nodes: Any) -> None:
        for node in nodes:
            self._node(node)

    def _node(self, node: Any) -> None:
        from stabaudit.loaders.ts_ops.base import POISON

        kind = node.kind()
        values = [self.env[v.unique()] for v in node.inputs()]
        handler = _PRIM.get(kind)
        outs = handler(self, node, values) if handler else self._op(node, kind, values)
        outputs = list(node.outputs())
        if len(outs) != len(outputs):
            if self.unsupported:  # an earlier failure left this node without usable inputs
                outs = [POISON] * len(outputs)
            else:
                raise ModelLoadError(f"{kind} produced {len(outs)} values for {len(outputs)} outputs", path=self.where)
        for value, out in zip(outputs, outs, strict=True):
            self.env[value.unique()] = out

    def _refuse(self, kind: str, detail: str = "") -> None:
        self.unsupported[f"{kind} ({detail})" if detail else kind] += 1

    def _schema(self, node: Any) -> Any:
        import torch

        text = node.schema()
        if text == "(no schema)":
            return None
        if text not in self._schemas:
            self._schemas[text] = torch._C.parse_schema(text)
        return self._schemas[text]

    def _call(self, node: Any, schema: Any, values: Sequence[Any], convert: Callable[[Any], Any]) -> list[Any]:
        """Run the node's own ATen overload on converted arguments (real or meta tensors)."""
        import torch

        namespace, name = schema.name.split("::", 1)
        packet = getattr(getattr(torch.ops, namespace), name)
        overload = getattr(packet, schema.overload_name or "default")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for argument, value in zip(schema.arguments, values, strict=False):
            if argument.kwarg_only:
                kwargs[argument.name] = convert(value)
            else:
                args.append(convert(value))
        result = overload(*args, **kwargs)
        if not schema.returns:
            return []
        return list(result) if len(schema.returns) > 1 else [result]

    def _op(self, node: Any, kind: str, values: list[Any]) -> list[Any]:
        import torch

        from stabaudit.loaders.ts_ops import TRANSLATORS, SourceNode, Unsupported, Var
        from stabaudit.loaders.ts_ops.base import COMPLEX_READERS, POISON, Complex, Opaque

        n_out = node.outputsSize()
        if _contains(values, lambda v: v is POISON):
            return [POISON] * n_out
        opaque = _find(values, lambda v: isinstance(v, Opaque))
        if opaque is not None:
            self._refuse(opaque.kind, opaque.detail)
            return [POISON] * n_out
        if kind not in COMPLEX_READERS and _contains(values, lambda v: isinstance(v, Complex)):
            self._refuse(kind, "a complex input")
            return [POISON] * n_out
        short = kind.split("::", 1)[-1]
        top_level_tensor = any(isinstance(v, Var | torch.Tensor) for v in values)
        container = short in _CONTAINER_OPS and bool(values) and isinstance(values[0], list | dict)
        if container or (short in _PY_OPS and (short in _ALWAYS_PY or not top_level_tensor)):
            try:
                result = (_CONTAINER_OPS if container else _PY_OPS)[short](*values)
                return [result] if n_out else []
            except Exception as exc:
                raise ModelLoadError(f"{kind} failed on constants: {_first_line(exc)}", path=self.where) from exc
        schema = self._schema(node)
        inplace = short.endswith("_") and not short.endswith("__")
        if not _contains(values, lambda v: isinstance(v, Var)):
            return self._fold(node, kind, schema, values, inplace)

        meta = self._meta(node, schema, values)
        tensor_outputs = [_holds_tensors(v.type()) for v in node.outputs()]
        if not any(tensor_outputs):  # shape queries (size, dim, numel, ...): constants
            if meta is None:
                self._refuse(kind, "depends on the input's values")
                return [POISON] * n_out
            return meta
        self.source_ops[kind] += 1  # an operator on tensors computed from the input
        out_shapes = tuple(
            tuple(int(d) for d in m.shape) if isinstance(m, torch.Tensor) else None
            for m in (meta if meta is not None else [None] * n_out)
        )
        translator = TRANSLATORS.get(kind) if kind in TRANSLATORS else None
        if translator is None and inplace and kind[:-1] in TRANSLATORS:
            translator = TRANSLATORS.get(kind[:-1])
        if translator is None:
            self._refuse(kind)
            return self._placeholders(out_shapes)
        arg_names = (
            tuple(a.name for a in schema.arguments) if schema is not None else tuple(str(i) for i in range(len(values)))
        )
        source = SourceNode(
            kind=kind, args=tuple(values), arg_names=arg_names, out_shapes=out_shapes,
        )
        scope = module_path(node)
        self._current = (scope, source.base, next(self._calls), kind)
        try:
            outs = list(translator(self, source))
        except Unsupported as exc:
            self._refuse(kind, exc.detail)
            return self._placeholders(out_shapes)
        for i, (out, shape) in enumerate(zip(outs, out_shapes, strict=False)):
            if isinstance(out, Var) and shape is not None and out.shape != shape:
                self._refuse(kind, f"output {i} has shape {list(out.shape)}, torch gives {list(shape)}")
                return self._placeholders(out_shapes)
        if inplace and outs and isinstance(values[0], Var):
            self.env[node.inputsAt(0).unique()] = outs[0]  # later readers of the input see the result
        return outs

    def _placeholders(self, shapes: Sequence[tuple[int, ...] | None]) -> list[Any]:
        """Stand-ins after an unsupported op, so that the walk goes on and finds every other one."""
        from stabaudit.loaders.ts_ops.base import POISON, Var

        return [POISON if s is None else Var(id=f"<unsupported {next(self._ids)}>", shape=s) for s in shapes]

    def _meta(self, node: Any, schema: Any, values: Sequence[Any]) -> list[Any] | None:
        """The node evaluated by torch on the meta device: torch's own static output shapes."""
        import torch

        from stabaudit.loaders.ts_ops import Var

        if schema is None:
            return None

        def convert(value: Any) -> Any:
            if isinstance(value, Var):
                return value.meta()
            if isinstance(value, torch.Tensor):
                return value.to("meta")
            if isinstance(value, list | tuple):
                return type(value)(convert(v) for v in value)
            return value

        try:
            return self._call(node, schema, values, convert)
        except Exception:  # no meta kernel, or a data-dependent result
            return None

    def _fold(self, node: Any, kind: str, schema: Any, values: list[Any], inplace: bool) -> list[Any]:
        """A node whose inputs are all constants: evaluate it now (never mutating the module)."""
        import torch

        from stabaudit.loaders.ts_ops.base import POISON

        n_out = node.outputsSize()
        if schema is None or node.isNondeterministic():
            self._refuse(kind, "random" if schema is not None else "")
            return [POISON] * n_out

        def convert(value: Any) -> Any:
            if inplace and isinstance(value, torch.Tensor):
                return value.clone()
            return value

        # Sizes first, on the meta device (factories too: their device argument becomes meta), so
        # that a huge constant is refused before it is built.
        on_meta = [torch.device("meta") if i < len(schema.arguments) and schema.arguments[i].name == "device" else v
                   for i, v in enumerate(values)]
        for planned in self._meta(node, schema, on_meta) or []:
            if isinstance(planned, torch.Tensor) and planned.numel() > MAX_ELEMENTS:
                raise ResourceError(f"{kind} would build a constant of shape {list(planned.shape)}, above the limit "
                                    f"of {MAX_ELEMENTS} elements", path=self.where)
        try:
            outs = self._call(node, schema, values, convert)
        except MemoryError:
            raise ResourceError(f"{kind} needs more memory than is available", path=self.where) from None
        except Exception:
            self._refuse(kind)
            return [POISON] * n_out
        if self._tainted and _contains(values, self._is_tainted):
            if (kind == "aten::embedding" and self._is_tainted(values[1]) and isinstance(values[0], torch.Tensor)
                    and values[0].is_floating_point() and not self._is_tainted(values[0])):
                return [self._start(node, outs[0])]
            for out in _flatten_outputs(outs):
                if isinstance(out, torch.Tensor):
                    self._tainted[id(out)] = out
        if inplace and outs and isinstance(values[0], torch.Tensor):
            self.env[node.inputsAt(0).unique()] = outs[0]
        return outs

    def _is_tainted(self, value: Any) -> bool:
        """Whether ``value`` is a tensor computed from the held inputs."""
        return id(value) in self._tainted and self._tainted[id(value)] is value

    def _start(self, node: Any, value: Any) -> Var:
        """An embedding of the held ids: a start tensor of the audit (an input of the IR graph)."""
        from stabaudit.loaders.ts_ops.base import Var

        base = re.sub(r"\.\d+$", "", node.outputsAt(0).debugName())
        name = base if _NAME.fullmatch(base) else "embedding"
        while name in self.starts or name in self.tensor_names:
            name += "_"
        scope = module_path(node)
        where = f" of {scope!r}" if scope else ""
        self.starts[name] = (value.detach().to(dtype=value.dtype).cpu().numpy(),
                             f"the rows an embedding{where} (aten::embedding) reads at the held ids")
        self._start_shapes[name] = tuple(int(d) for d in value.shape)
        return Var(id=name, shape=self._start_shapes[name])


def _find(value: Any, test: Callable[[Any], bool]) -> Any:
    """The first item of a (nested) list/tuple passing ``test``; None when there is none."""
    if isinstance(value, list | tuple):
        for item in value:
            found = _find(item, test)
            if found is not None:
                return found
        return None
    return value if test(value) else None


def _contains(value: Any, test: Callable[[Any], bool]) -> bool:
    return _find(value, test) is not None


# ---- prim:: nodes ------------------------------------------------------------------------------
def _constant(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    try:
        return [node.output().toIValue()]
    except Exception:  # functions and other non-values: only ever called, and calls are inlined
        return [None]


def _get_attr(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    name = node.s("name")
    try:
        return [getattr(values[0], name)]
    except AttributeError as exc:
        raise ModelLoadError(f"the module has no attribute {name!r}", path=w.where) from exc


def _holds_tensors(kind: Any) -> bool:
    """A Tensor type, or a list of tensors (Tensor[]: aten::split, chunk, unbind)."""
    import torch

    if isinstance(kind, torch._C.TensorType):
        return True
    return isinstance(kind, torch._C.ListType) and isinstance(kind.getElementType(), torch._C.TensorType)


def _unpack(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    from stabaudit.loaders.ts_ops.base import POISON

    if values[0] is POISON:
        return [POISON] * node.outputsSize()
    return list(values[0])


def _if(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    import torch

    from stabaudit.loaders.ts_ops.base import POISON

    condition = values[0]
    if isinstance(condition, torch.Tensor) and condition.numel() == 1:
        condition = bool(condition)
    if not isinstance(condition, bool):
        if condition is not POISON:
            w._refuse("prim::If", "condition depends on the input's values")
        return [POISON] * node.outputsSize()
    block = list(node.blocks())[0 if condition else 1]
    w._block(block.nodes())
    return [w.env[v.unique()] for v in block.outputs()]


def _loop(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    from stabaudit.loaders.ts_ops.base import POISON

    trips, condition, carried = values[0], values[1], list(values[2:])
    block = next(iter(node.blocks()))
    block_inputs = list(block.inputs())
    i = 0
    while True:
        if not isinstance(trips, int) or not isinstance(condition, bool):
            w._refuse("prim::Loop", "trip count depends on the input's values")
            return [POISON] * node.outputsSize()
        if i >= trips or not condition:
            return carried
        if i >= MAX_LOOP_ITERATIONS:
            raise ResourceError(f"a loop runs more than {MAX_LOOP_ITERATIONS} iterations", path=w.where)
        for value, bound in zip(block_inputs, [i, *carried], strict=True):
            w.env[value.unique()] = bound
        w._block(block.nodes())
        outs = [w.env[v.unique()] for v in block.outputs()]
        condition, carried = outs[0], outs[1:]
        i += 1


def _raise(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    message = values[0] if values and isinstance(values[0], str) else "an exception"
    raise ModelLoadError(f"forward raises at this input shape: {message.splitlines()[0] if message else ''}", path=w.where)


def _refused(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    from stabaudit.loaders.ts_ops.base import POISON

    w.source_ops[node.kind()] += 1
    w._refuse(node.kind())
    return [POISON] * node.outputsSize()


def _num_to_tensor(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    import torch

    from stabaudit.loaders.ts_ops.base import POISON

    return [POISON if values[0] is POISON else torch.tensor(values[0])]


def _dtype(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    import torch

    value = values[0]
    return [value.dtype if isinstance(value, torch.Tensor) else torch.float32]


def _device(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    import torch

    return [torch.device("cpu")]


def _shape_of(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
    import torch

    from stabaudit.loaders.ts_ops.base import POISON, Var

    value = values[0]
    if isinstance(value, Var):
        return [list(value.shape)]
    return [list(value.shape) if isinstance(value, torch.Tensor) else POISON]


def _scalar(fn: Callable[..., Any]) -> Callable[[_Walker, Any, list[Any]], list[Any]]:
    def handle(w: _Walker, node: Any, values: list[Any]) -> list[Any]:
        return [fn(*values)]

    return handle


_PRIM: dict[str, Callable[[_Walker, Any, list[Any]], list[Any]]] = {
    "prim::Constant": _constant,
    "prim::GetAttr": _get_attr,
    "prim::ListConstruct": _scalar(lambda *a: list(a)),
    "prim::TupleConstruct": _scalar(lambda *a: tuple(a)),
    "prim::DictConstruct": _scalar(lambda *a: dict(zip(a[::2], a[1::2], strict=True))),
    "prim::ListUnpack": _unpack,
    "prim::TupleUnpack": _unpack,
    "prim::TupleIndex": _scalar(lambda t, i: t[i]),
    "prim::If": _if,
    "prim::Loop": _loop,
    "prim::unchecked_cast": _scalar(lambda v: v),
    "prim::Uninitialized": _scalar(lambda: None),
    "prim::RaiseException": _raise,
    "prim::NumToTensor": _num_to_tensor,
    "prim::dtype": _dtype,
    "prim::device": _device,
    "prim::shape": _shape_of,
    "prim::is_cuda": _scalar(lambda v: False),
    "prim::requires_grad": _scalar(lambda v: False),
    "prim::min": _scalar(lambda *a: min(*a)),
    "prim::max": _scalar(lambda *a: max(*a)),
    "prim::abs": _scalar(abs),
    "prim::CallMethod": _refused,
    "prim::CallFunction": _refused,
    "prim::PythonOp": _refused,
    "prim::SetAttr": _refused,
}

