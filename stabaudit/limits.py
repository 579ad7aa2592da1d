"""Resource limits of one audit: a memory budget checked before allocating, and a per-model timeout.

Memory: ``check_model_memory`` refuses a model whose declared tensors (initializer dims x dtype
size, read from the ONNX protobuf before any external data is read, or from the entry sizes of a
TorchScript zip) times the copies the engine makes would exceed the budget; ``check_analysis_memory``
does the same for the analyses' large allocations (``estimate_analysis_memory``). Both raise
``ResourceError`` naming the budget and ``--max-memory``. The estimates are deliberately coarse
(they count every copy at its peak), so a model refused here would have been close to the limit.

Time: ``run_with_timeout(fn, seconds)`` stops ``fn`` with ``AuditTimeoutError`` (exit 2). In the
main thread it uses SIGALRM through ``signal.setitimer``: the handler raises inside whatever Python
code runs (a long torch or LAPACK call is interrupted when it returns to Python, not inside it), the
timer repeats every ``RETRY_INTERVAL_S`` so an alarm swallowed by a broad ``except Exception`` fires
again, an error raised after the alarm fired is reported as the timeout, and an alarm that arrives
while a module is being imported is deferred to the next one (an import interrupted by an exception
leaves a half-initialised module behind). Outside the main thread
signals are unavailable, so the deadline is cooperative: the iterative loops call ``check_deadline``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stabaudit.errors import ResourceError, UsageError
from stabaudit.interrupts import importing

if TYPE_CHECKING:
    from stabaudit.ir.graph import Graph

T = TypeVar("T")

DEFAULT_MEMORY_FRACTION = 0.5  # of physical RAM
MEMORY_ENV = "STABAUDIT_MAX_MEMORY"  # overrides the default budget (same syntax as --max-memory)
_FALLBACK_RAM = 8 * 2**30  # when the platform does not tell its physical memory

# Copies of the model's tensors the engine holds at its peak (see ``estimate_model_memory``):
RAW_COPIES = 2  # the parsed protobuf (or TorchScript module) and the reference runtime's session
F64_COPIES = 4  # float64 numpy arrays of the IR, the folded IR, the lower search's two float64 executors
F32_COPIES = 1  # the float32 executor of the equivalence check
RETRY_INTERVAL_S = 0.25


# ---- the allocator ---------------------------------------------------------------------------------
# glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a fresh
# mapping and unmaps it on free: each new array of a large layer's certificate or of a forward pass
# is page-faulted and zeroed by the kernel again. On a ResNet-18 at 224x224 that was 6 s of system
# time in a 25 s audit. From this threshold up only: smaller blocks are kept and reused.
ALLOCATOR_THRESHOLD = 1 << 30


def tune_allocator() -> bool:
    """Keep freed blocks below ALLOCATOR_THRESHOLD in the process for reuse (glibc's
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). The peak resident size may grow where a freed block
    cannot be reused for a larger one (ResNet-18 at 224x224: 1.69 GB against 1.25 GB); the memory
    cap's address-space limit counts the heap as it counts mappings. Called once by the command
    line before the heavy imports; True when applied (False where the C library has no mallopt)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: no search for it
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, ALLOCATOR_THRESHOLD)) and bool(mallopt(m_trim_threshold, ALLOCATOR_THRESHOLD))


# ---- sizes -----------------------------------------------------------------------------------------
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def physical_memory() -> int:
    """Physical RAM in bytes (os.sysconf), or 8 GiB where the platform does not say."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_RAM
    return int(pages) * int(page) if pages > 0 and page > 0 else _FALLBACK_RAM


def parse_size(text: str | int | float) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5GiB``, ``2TB``, ``1048576`` or ``25%`` (of physical RAM).

    K, M, G, T (optionally followed by ``i`` and/or ``B``, any case) are powers of 1024; a bare
    number is bytes. UsageError on anything else, on zero and on negative sizes.
    """
    if isinstance(text, bool):
        raise UsageError(f"--max-memory {text!r}: expected a size such as 4G, 512M or 1.5GiB")
    if isinstance(text, int | float):
        value = float(text)
        if not (math.isfinite(value) and value >= 1):
            raise UsageError(f"--max-memory {text!r}: expected a positive size in bytes")
        return int(value)
    raw = str(text).strip()
    if raw.endswith("%"):
        try:
            share = float(raw[:-1])
        except ValueError:
            share = math.nan
        if not (math.isfinite(share) and 0 < share <= 100):
            raise UsageError(f"--max-memory {text!r}: a percentage must be in (0, 100]")
        return max(1, int(physical_memory() * share / 100))
    match = _SIZE.match(raw)
    if not match:
        raise UsageError(f"--max-memory {text!r}: expected a size such as 4G, 512M, 1.5GiB or 25%")
    number, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
    size = number * unit
    if not (math.isfinite(size) and size >= 1):
        raise UsageError(f"--max-memory {text!r}: expected a positive size")
    return int(size)


def default_memory_budget(fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
    """``STABAUDIT_MAX_MEMORY`` when set (parsed by ``parse_size``), else ``fraction`` of physical RAM."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        return parse_size(env)
    return max(1, int(physical_memory() * fraction))


def format_size(size: float) -> str:
    """Binary units, about 3 significant digits: ``1.5 GiB``, ``512 MiB``, ``1000 MiB``, ``12 B``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            text = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
            return f"{text} {unit}"
    return f"{int(size)} B"


def _refuse(what: str, needed: float, budget: int, path: str | None) -> ResourceError:
    return ResourceError(
        f"{what.format(size=format_size(needed))}, above the memory budget of {format_size(budget)} "
        "(--max-memory)",
        path=path,
    )


# ---- the model's tensors -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TensorFootprint:
    """Declared tensor storage of a model: bytes as stored and the number of elements."""

    stored_bytes: int
    elements: int

    @property
    def needed(self) -> int:
        """Bytes at the engine's peak: RAW_COPIES of the stored bytes, float64 and float32 copies."""
        return self.stored_bytes * RAW_COPIES + self.elements * (8 * F64_COPIES + 4 * F32_COPIES)


def onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers, sparse initializers' values and node
    attribute tensors, subgraphs included."""
    from onnx import AttributeProto

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == AttributeProto.GRAPH:
                yield from onnx_tensors(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from onnx_tensors(sub)


def _onnx_footprint(model: Any) -> TensorFootprint:
    """Sum of dims x dtype size over every TensorProto (initializers, attribute tensors, subgraphs),
    from the declared dims and data types only: nothing is decoded and no external file is read."""
    from onnx import TensorProto, helper

    stored = elements = 0
    for tensor in onnx_tensors(model.graph):
        count = 1
        for dim in tensor.dims:
            count *= max(int(dim), 0)
        try:
            itemsize = 1 if tensor.data_type == TensorProto.STRING else helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 8  # unknown or undefined type: the widest common one
        stored += count * itemsize
        elements += count
    return TensorFootprint(stored_bytes=stored, elements=elements)


def _zip_footprint(path: Path) -> TensorFootprint:
    """A TorchScript archive: the uncompressed sizes of its ``data/`` records (the tensor storages),
    counted as float32 elements (the common case; float64 storages only overestimate copies less)."""
    with zipfile.ZipFile(path) as archive:
        stored = sum(info.file_size for info in archive.infolist() if "/data/" in f"/{info.filename}")
    return TensorFootprint(stored_bytes=stored, elements=stored // 4)


def estimate_model_memory(source: str | Path | Any) -> int:
    """Bytes the engine needs for a model's tensors (see ``TensorFootprint.needed``).

    ``source``: an ONNX ModelProto (declared dims, before external data is read), or a path:
    a TorchScript zip (its record sizes) or an ONNX file (its size stands for its inline tensors;
    external data files are checked by the loader's hook once the protobuf is parsed).
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            return 0  # missing files are the loader's to report
        if zipfile.is_zipfile(path):
            try:
                return _zip_footprint(path).needed
            except (OSError, zipfile.BadZipFile, NotImplementedError, ValueError, EOFError):
                return 0  # a damaged archive: the loader refuses it with its own message
        size = path.stat().st_size
        return TensorFootprint(stored_bytes=size, elements=size // 4).needed
    return _onnx_footprint(source).needed


def check_model_memory(source: str | Path | Any, budget: int | None = None, *, path: str | None = None) -> None:
    """Raise ResourceError when the model's tensors would exceed ``budget`` bytes (default: the
    active budget of ``use_limits``, else ``default_memory_budget()``)."""
    budget = active_memory_budget() if budget is None else budget
    needed = estimate_model_memory(source)
    if needed > budget:
        name = path if path is not None else (str(source) if isinstance(source, str | Path) else None)
        raise _refuse("the model needs ~{size} for its tensors", needed, budget, name)


# ---- the analyses ------------------------------------------------------------------------------
def _size(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def analysis_memory_plan(graph: Graph) -> dict[str, int]:
    """Bytes each analysis stage with large allocations plans on a graph with static shapes (upper
    estimates), by stage name (``stabaudit.stages``): every stage holds the weights' float64
    copies; ``layer_bounds`` adds the convolution bounds (explicit dense matrices and circulant
    chunks, capped by ``bounds.numerics``, plus power-iteration buffers at the conv's input size);
    ``lower_bound_search`` adds the larger of the lower search's batched call (the full Jacobian
    inputs x outputs per point when min(inputs, outputs) <= 64, else power-iteration buffers; at
    least one point per call, batched up to 256 MB as ``analyses.lower`` plans it) with its
    candidate pool, and the float64 error model."""
    import numpy as np

    from stabaudit.bounds.numerics import CONV_PEAK_BYTES, DENSE_CHOLESKY_MAX_ENTRIES
    from stabaudit.ir import ops as O

    shapes = {name: tuple(shape) for name, shape in graph.shapes.items()}
    values = sum(_size(s) for s in shapes.values())
    n = sum(_size(tuple(s.shape)) for s in graph.inputs)
    m = sum(_size(shapes.get(name, ())) for name in graph.outputs)
    k = min(n, m)
    weights = 0
    conv = 0
    for node in graph.nodes:
        for value in vars(node.op).values():
            if isinstance(value, np.ndarray):
                weights += int(value.size)
        if isinstance(node.op, O.Conv | O.ConvTranspose):
            # the dense matrix, its Gram matrix and Cholesky factor, or the circulant chunks
            # (CONV_PEAK_BYTES), plus power iteration at the input (about 6 tensors of its size)
            inputs = _size(shapes.get(node.inputs[0], ()))
            conv = max(conv, 3 * DENSE_CHOLESKY_MAX_ENTRIES * 8, CONV_PEAK_BYTES, 6 * 8 * inputs)
    # analyses.lower._Search: per point, values x 8 bytes x (k + 2) (full Jacobian) or x 4
    per_point = values * 8 * ((k + 2) if k <= 64 else 4)
    chunk = int(max(1, min(4096, 256e6 // max(per_point, 1))))
    search = 2 * chunk * per_point  # autograd keeps about as much again
    pool = 2 * 8 * min(2**25, 32 * 1024 * max(n, 1))  # candidate points and their vectors
    error_model = 3 * 8 * values
    held = weights * 8 * F64_COPIES
    return {"layer_bounds": int(held + conv), "lower_bound_search": int(held + max(search + pool, error_model))}


def estimate_analysis_memory(graph: Graph) -> int:
    """Bytes of the analyses' largest allocations on a graph with static shapes (an upper estimate):
    phases run one after the other, so the largest stage of ``analysis_memory_plan``."""
    return max(analysis_memory_plan(graph).values())


def check_analysis_memory(graph: Graph, budget: int | None = None, *, path: str | None = None) -> None:
    """Raise ResourceError when ``estimate_analysis_memory(graph)`` exceeds ``budget`` bytes."""
    budget = active_memory_budget() if budget is None else budget
    needed = estimate_analysis_memory(graph)
    if needed > budget:
        raise _refuse("the analyses need ~{size} (Jacobians, explicit operators, search buffers)", needed, budget, path)


# ---- the cap, enforced -----------------------------------------------------------------------------
class MemoryLimitError(ResourceError):
    """The memory budget (``--max-memory``) stopped the audit: an allocation beyond the enforced
    cap failed, or a stage planned more than what remains of the budget; exit 2."""


_ALLOCATION_FAILURES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "bad_alloc",
                        "out of memory", "unable to allocate", "can't start new thread",
                        "failed to map segment")


def is_allocation_failure(exc: BaseException) -> bool:
    """``exc`` or an exception it was raised from or during is a failed allocation: MemoryError
    (numpy, Python), torch's RuntimeError "DefaultCPUAllocator: can't allocate memory", ENOMEM, a
    thread that cannot start or a shared library that cannot be mapped under the cap."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 16:
        seen.add(id(cur))
        if isinstance(cur, MemoryError | MemoryLimitError):
            return True
        if isinstance(cur, OSError) and cur.errno == errno.ENOMEM:
            return True
        # torch's allocator, a thread or a shared library (a lazy import) that cannot be mapped
        if isinstance(cur, RuntimeError | ImportError | OSError) and any(
            t in str(cur).lower() for t in _ALLOCATION_FAILURES
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def raise_allocation_failure(exc: BaseException) -> None:
    """Re-raise ``exc`` when it is a failed allocation (``is_allocation_failure``): for the broad
    handlers that fall back to a slower path on an error, never on the memory cap."""
    if is_allocation_failure(exc):
        raise exc


def process_memory() -> tuple[int, int] | None:
    """(resident, virtual) bytes of this process now (Linux /proc/self/statm), None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            fields = fh.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[0]) * page
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def remaining_memory(budget: int) -> int:
    """What is left of ``budget`` for new allocations: the budget less this process's resident
    memory now (the budget counts the whole process, imported libraries included)."""
    now = process_memory()
    return budget - now[0] if now is not None else budget


def check_stage_memory(stage: str, needed: int, budget: int, *, path: str | None = None) -> None:
    """MemoryLimitError when a stage's planned bytes exceed what remains of ``budget``: the stage is
    not started (its evidence, and that of the stages after it, is absent from the report)."""
    left = remaining_memory(budget)
    if needed > left:
        raise MemoryLimitError(
            f"the {stage} stage plans ~{format_size(needed)}, above the {format_size(max(left, 0))} that "
            f"remain of the memory budget of {format_size(budget)} (--max-memory)",
            path=path,
        )


_CAP_LOCK = threading.Lock()
_CAP_ACTIVE = False


@contextlib.contextmanager
def memory_cap(budget: int | None, *, path: str | None = None) -> Iterator[bool]:
    """Enforce ``budget`` bytes for the whole process inside the block (yields whether it is).

    The cap is on resident memory, imported libraries included; the kernel enforces it through
    the address-space limit: RLIMIT_AS = the address space mapped now + (budget - resident now),
    so that every new mapping (numpy, torch, malloc) counts in full, and an allocation beyond it
    fails (MemoryError, torch's "can't allocate memory") instead of the kernel's OOM killer ending
    the process. Raises MemoryLimitError when the process already holds the budget. Not enforced
    (yields False) with ``budget`` None, where the platform has no RLIMIT_AS or /proc, off the
    main thread (a thread of a process that serves other work), or while another cap is active. The soft limit is restored on exit.
    """
    try:
        import resource
    except ImportError:  # not on a POSIX system
        resource = None  # type: ignore[assignment]
    now = process_memory()
    if (budget is None or resource is None or now is None or not hasattr(resource, "RLIMIT_AS")
            or threading.current_thread() is not threading.main_thread()):
        yield False  # off the main thread the process may serve other work (a Dask worker)
        return
    global _CAP_ACTIVE
    with _CAP_LOCK:
        if _CAP_ACTIVE:
            owner = False
        else:
            _CAP_ACTIVE = owner = True
    if not owner:
        yield False
        return
    try:
        rss, vsz = now
        if rss >= budget:
            raise MemoryLimitError(
                f"the process holds ~{format_size(rss)} before the analysis (Python, torch and stabaudit "
                f"loaded), above the memory budget of {format_size(budget)} (--max-memory counts the "
                "whole process)",
                path=path,
            )
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = vsz + (budget - rss)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft != resource.RLIM_INFINITY:
            cap = min(cap, soft)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        try:
            yield True
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    finally:
        with _CAP_LOCK:
            _CAP_ACTIVE = False


# ---- time ------------------------------------------------------------------------------------------
class AuditTimeoutError(ResourceError):
    """The per-model timeout (``--timeout``) expired; exit 2 like every resource limit."""

    def __init__(self, seconds: float, *, path: str | None = None):
        super().__init__(f"timed out after {seconds:g} s (--timeout)", path=path)
        self.seconds = seconds


@dataclass(kw_only=True)
class Deadline:
    """A point in time (time.monotonic) after which ``check`` raises AuditTimeoutError."""

    seconds: float
    start: float = field(default_factory=time.monotonic)
    path: str | None = None

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def check(self) -> None:
        if self.expired():
            raise AuditTimeoutError(self.seconds, path=self.path)


_DEADLINE: ContextVar[Deadline | None] = ContextVar("stabaudit_deadline", default=None)
_BUDGET: ContextVar[int | None] = ContextVar("stabaudit_memory_budget", default=None)


def current_deadline() -> Deadline | None:
    return _DEADLINE.get()


def check_deadline() -> None:
    """The cooperative deadline: iterative loops call this once per round (cheap: one clock read)."""
    deadline = _DEADLINE.get()
    if deadline is not None:
        deadline.check()


def active_memory_budget() -> int:
    """The budget set by ``use_limits``, else ``default_memory_budget()``."""
    budget = _BUDGET.get()
    return default_memory_budget() if budget is None else budget


@contextlib.contextmanager
def use_limits(*, max_memory: int | None = None) -> Iterator[None]:
    """Make ``max_memory`` the budget of the hooks (the ONNX loader's pre-check) inside the block."""
    token = _BUDGET.set(max_memory)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def validate_timeout(seconds: float | None) -> float | None:
    """None (no timeout) or a positive finite number of seconds; UsageError otherwise."""
    if seconds is None:
        return None
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--timeout {seconds!r}: expected a positive number of seconds")
    return float(seconds)


def signals_available() -> bool:
    """SIGALRM timers exist on this platform and this is the main thread (where handlers run)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def run_with_timeout(fn: Callable[[], T], seconds: float | None, *, path: str | None = None) -> T:
    """``fn()``, stopped with AuditTimeoutError after ``seconds`` (None: no limit).

    Main thread: SIGALRM (see the module docstring). Elsewhere: a cooperative deadline that the
    loops of the analyses poll with ``check_deadline``. In both cases the exception propagates
    through ``fn``'s frames, so context managers (torch.no_grad, open files) are unwound normally.
    A result that ``fn`` returned is kept even if the alarm fires while the timer is disarmed.
    """
    limit = validate_timeout(seconds)
    if limit is None:
        return fn()
    deadline = Deadline(seconds=limit, path=path)
    token = _DEADLINE.set(deadline)
    try:
        if not signals_available():
            return fn()
        return _with_alarm(fn, deadline)
    finally:
        _DEADLINE.reset(token)


def _with_alarm(fn: Callable[[], T], deadline: Deadline) -> T:
    state = {"armed": True, "fired": False}

    def on_alarm(signum: int, frame: Any) -> None:
        # An exception inside an import leaves a half-initialised module in sys.modules (torch's
        # lazy imports would then fail for the rest of the process): defer to the next alarm.
        if state["armed"] and not importing(frame):
            state["fired"] = True
            raise AuditTimeoutError(deadline.seconds, path=deadline.path)

    import numpy as np

    # numpy keeps its error state in a context variable that its linalg functions set and reset
    # around each call; an alarm between the two would leave theirs in place (0 * inf raising
    # "SVD did not converge" in whatever runs next): restored below when the alarm fired
    saved_err, saved_call = np.geterr(), np.geterrcall()
    previous_timer = signal.getitimer(signal.ITIMER_REAL)
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, deadline.seconds, RETRY_INTERVAL_S)
    try:
        result = fn()
    except AuditTimeoutError:
        raise
    except BaseException as exc:
        if state["fired"]:  # the alarm's exception was caught and turned into another error
            raise AuditTimeoutError(deadline.seconds, path=deadline.path) from exc
        raise
    finally:
        # the handler may still fire between these statements: disarming first makes it a no-op,
        # and the bounded retry covers an alarm that raised before the flag was cleared
        for _ in range(3):
            try:
                state["armed"] = False
                signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
                signal.signal(signal.SIGALRM, previous_handler)
                break
            except AuditTimeoutError:
                continue
        if state["fired"]:
            np.seterr(**saved_err)
            np.seterrcall(saved_call)
        remaining, interval = previous_timer
        if remaining > 0.0:  # an enclosing timer: re-arm it with what is left of it
            left = max(remaining - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, interval)
    if state["fired"]:  # every alarm was swallowed, yet the deadline passed: still a timeout
        raise AuditTimeoutError(deadline.seconds, path=deadline.path)
    return result


# ---- one thread per audit --------------------------------------------------------------------------
_THREADS_LOCK = threading.Lock()
_THREAD_USERS = 0
_SAVED_TORCH_THREADS: int | None = None


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run an audit on one thread: torch's intra-op pool, OpenMP and BLAS. The order of a parallel
    sum depends on the number of threads, and the seeded searches amplify last-bit differences,
    so a report would depend on the machine's cores and on `--jobs`; on one thread it does not
    (and the small batched operations of an audit gain little from threads: parallelism comes
    from `--jobs`; the one exception, ``thread_map``, splits work into pieces that compute the
    same bits on any thread). torch's setting is process-wide: concurrent audits in threads share it, the
    first sets it and the last restores it; the BLAS/OpenMP limits are taken per thread."""
    global _THREAD_USERS, _SAVED_TORCH_THREADS
    import torch

    with _THREADS_LOCK:
        if _THREAD_USERS == 0:
            _SAVED_TORCH_THREADS = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREAD_USERS += 1
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: torch's own setting is the one that matters most
            yield
        else:
            with threadpool_limits(1):
                yield
    finally:
        with _THREADS_LOCK:
            _THREAD_USERS -= 1
            if _THREAD_USERS == 0 and _SAVED_TORCH_THREADS is not None:
                torch.set_num_threads(_SAVED_TORCH_THREADS)
                _SAVED_TORCH_THREADS = None


# ---- the worker threads of the batched numerical kernels --------------------------------------------
THREADS_ENV = "STABAUDIT_THREADS"  # worker threads of ``thread_map`` (default: min(2, usable cores))
_POOL_LOCK = threading.Lock()
_POOLS: dict[int, Any] = {}  # worker count -> its ThreadPoolExecutor (created on first use)
_POOL_PREFIX = "stabaudit-kernel"


def kernel_threads() -> int:
    """Worker threads for ``thread_map``: $STABAUDIT_THREADS, else min(2, usable cores)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise UsageError(f"{THREADS_ENV}={raw!r} is not a whole number of threads") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def thread_map(fn: Callable[[T], Any], items: list[T]) -> list[Any]:
    """[fn(item) for item in items], the items spread over ``kernel_threads()`` threads.

    For independent pieces of one batched computation (torch and LAPACK release the GIL): each
    piece must compute the same bits whichever thread runs it and whatever runs beside it, so the
    results never depend on the number of threads. Every call runs in a copy of the caller's
    context (its deadline included); the first exception is raised after all pieces finished.
    """
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    workers = kernel_threads()
    nested = threading.current_thread().name.startswith(_POOL_PREFIX)  # waiting on its own pool could deadlock
    if workers == 1 or len(items) <= 1 or nested:
        return [fn(item) for item in items]
    with _POOL_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_POOL_PREFIX)
    futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]
