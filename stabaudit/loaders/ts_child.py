"""Loading a TorchScript archive in a child process of its own.

torch.jit.load runs code of the archive (its ``__setstate__`` methods, and the module's code that
the loader runs while it folds constants and as the reference of SA902). The static gate
(loaders.ts_gate) refuses code outside its allowlist before any of it runs; ``--trust-torchscript``
skips the gate. Whichever mode, the load runs in a child process (``load_isolated``):

- memory: the kernel caps the child's address space (``RLIMIT_AS``) at what it had mapped once
  torch and stabaudit were imported plus the memory budget (``--max-memory``, else the default
  budget of limits.default_memory_budget); an allocation above it fails inside the child, which
  reports "loading needed more than the memory limit";
- time: the child is killed (SIGKILL) when the audit's deadline (``--timeout``) passes;
- output: its standard input, output and error are not the caller's (stdout and stderr go to
  /dev/null), so a ``print`` in the archive cannot reach a report written to stdout;
- files: it runs in a fresh temporary directory, removed afterwards, so relative paths the code
  writes do not land in the caller's working directory;
- lifetime: it dies with its parent (PR_SET_PDEATHSIG on Linux, and everywhere a pipe whose end
  of file ends it).

The child runs as the same user: this isolates resources, output and the working directory, it is
no sandbox against what the code may do to files by absolute path (the gate is the defence
there). What crosses back is data only: the IR graph with numpy weights, the reference's outputs
at the seeded inputs of SA902 (``RecordedReference``, recorded in the child with
``seeded_feeds``), and the results of the caller's ``module_jobs`` (work on the module itself,
such as the loss Hessian over its parameters, SA501-SA503). The parent reads them with an
unpickler that builds only stabaudit's own classes, numpy arrays and plain containers. Errors
cross as their stabaudit.errors class, message and fields, so they keep their exit codes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stabaudit.errors import InternalError, ModelLoadError, ResourceError, StabauditError
from stabaudit.loaders.base import EQUIVALENCE_SAMPLES, LoadedModel, seeded_feeds
from stabaudit.loaders.ts_signature import ArgumentValue

ModuleJob = Callable[[LoadedModel], Any]  # picklable (a module-level function or a partial of one)

_PR_SET_PDEATHSIG = 1
_KILL_WAIT_S = 5.0
# What a failed allocation says on its way up (torch's CPU allocator, the C++ runtime, Python)
_NO_MEMORY = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory")
# The child's sys.path: this stabaudit first, and not its working directory (files the archive's
# code writes there must not become modules that a later import runs)
_BOOT = ("import sys; sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p not in ('', '.')]; "
         "from stabaudit.loaders.ts_child import main; main(sys.argv[2:])")


@dataclass(frozen=True, kw_only=True)
class LoadRequest:
    """What the child loads and computes (written by the parent, read by the child)."""

    path: str  # as the user gave it (errors name it)
    file: str  # its absolute path (the child runs in a directory of its own)
    input_shape: tuple[int, ...] | None
    trust_code: bool
    seed: int
    samples: int
    memory_limit: int | None  # bytes above the child's address space once its imports are done
    cuda: bool = False  # the jobs use CUDA: its context is created before the cap (it maps far more than it uses)
    jobs: Mapping[str, ModuleJob] = field(default_factory=dict)
    arguments: Mapping[str, ArgumentValue] = field(default_factory=dict)  # forward's non-tensor arguments


@dataclass(frozen=True, kw_only=True, eq=False)
class RecordedReference:
    """The reference runtime of an isolated TorchScript load: the module's outputs at the seeded
    inputs of SA902, computed in the child. Called with one of those inputs it returns the
    outputs recorded for it; the error the module's forward raised there is raised again."""

    feeds: tuple[Mapping[str, np.ndarray], ...]
    outputs: tuple[tuple[np.ndarray, ...], ...]
    error: StabauditError | None = None  # the forward failed on the first input that errs
    path: str = ""
    starts: bool = False  # the feeds are reference_at's: the start tensors' values at the held inputs
    _next: list[int] = field(default_factory=lambda: [0])

    def at_held(self, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The recorded (feeds, outputs) of reference_at, one sample per call in the order recorded
        (SA902 draws them in that order); ``rng`` is not read: the child drew with the same seed."""
        del rng
        if not self.outputs:
            if self.error is not None:
                raise self.error
            raise InternalError("no reference values were recorded", path=self.path)
        i = self._next[0] % len(self.outputs)
        self._next[0] += 1
        return {k: v.copy() for k, v in self.feeds[i].items()}, [o.copy() for o in self.outputs[i]]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for feeds, outputs in zip(self.feeds, self.outputs, strict=False):
            if feeds.keys() == inputs.keys() and all(np.array_equal(feeds[k], inputs[k]) for k in feeds):
                return [o.copy() for o in outputs]
        if self.error is not None and len(self.outputs) < len(self.feeds):
            raise self.error
        raise InternalError(
            "the TorchScript module ran in its isolated loading process on the seeded inputs of the "
            "equivalence check only; these inputs are not among them", path=self.path
        )


# ---- the parent ----------------------------------------------------------------------------------
def load_isolated(
    path: str | os.PathLike[str], *, input_shape: tuple[int, ...] | None = None, trust_code: bool = False,
    seed: int = 0, samples: int = EQUIVALENCE_SAMPLES, jobs: Mapping[str, ModuleJob] | None = None,
    cuda: bool = False, arguments: Mapping[str, ArgumentValue] | None = None,
) -> LoadedModel:
    """loaders.torchscript.load_torchscript in a child process (see the module docstring), under
    the active memory budget and deadline (limits.use_limits, limits.run_with_timeout); ``cuda``:
    the ``jobs`` run on CUDA; ``arguments``: forward's non-tensor arguments by name."""
    from stabaudit.limits import AuditTimeoutError, active_memory_budget, current_deadline

    where = str(path)
    deadline = current_deadline()
    budget = active_memory_budget()
    request = LoadRequest(path=where, file=os.path.abspath(where), input_shape=input_shape, trust_code=trust_code, seed=seed,
                          samples=samples, memory_limit=budget, jobs=dict(jobs or {}), cuda=cuda,
                          arguments=dict(arguments or {}))
    root = str(Path(__file__).resolve().parents[2])  # the directory holding this stabaudit package
    with tempfile.TemporaryDirectory(prefix="stabaudit-ts-", ignore_cleanup_errors=True) as tmp:
        work, request_file, result_file = Path(tmp, "cwd"), Path(tmp, "request.pkl"), Path(tmp, "result.pkl")
        work.mkdir()
        request_file.write_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, root, str(request_file), str(result_file), str(os.getpid())],
            cwd=work, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        try:
            remaining = None if deadline is None else max(deadline.remaining(), 0.0)
            try:
                code = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                assert deadline is not None
                raise AuditTimeoutError(deadline.seconds, path=deadline.path or where) from None
        finally:
            _end(proc)
        return _outcome(code, result_file, where, budget)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child if it still runs and reap it (an alarm of limits.run_with_timeout may
    interrupt the wait: retried a few times, the kill has been sent in any case)."""
    for _ in range(3):
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=_KILL_WAIT_S)
            break
        except subprocess.TimeoutExpired:
            break
        except StabauditError:  # the timeout's alarm firing again while we clean up
            continue
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _outcome(code: int, result_file: Path, where: str, budget: int) -> LoadedModel:
    """The child's result, or the error its failure maps to."""
    from stabaudit.limits import format_size

    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        fatal = {getattr(signal, n, None) for n in ("SIGKILL", "SIGABRT", "SIGSEGV", "SIGBUS")}
        hint = f" (the memory limit of {format_size(budget)} may have been hit: --max-memory)" if -code in fatal else ""
        raise ModelLoadError(f"the process loading the TorchScript archive was killed by {name}{hint}", path=where)
    try:
        handle = result_file.open("rb")
    except OSError:
        raise ModelLoadError(
            f"the process loading the TorchScript archive exited with status {code} without a result", path=where
        ) from None
    try:
        with handle:
            outcome = _DataUnpickler(handle).load()
    except Exception as exc:
        raise ModelLoadError(
            f"the process loading the TorchScript archive sent back an unreadable result ({exc})", path=where
        ) from None
    match outcome:
        case ("ok", LoadedModel() as loaded):
            if isinstance(loaded.reference, RecordedReference) and loaded.reference.starts:
                # the audit starts inside the module: the recorded start values (a bound method
                # does not cross the process boundary, which sends data only)
                return replace(loaded, reference_at=loaded.reference.at_held)
            return loaded
        case ("error", str(kind), str(message), dict(state)):
            raise _rebuild_error(kind, message, state, where)
    raise ModelLoadError("the process loading the TorchScript archive sent back an unexpected result", path=where)


def _error_classes() -> dict[str, type[StabauditError]]:
    import stabaudit.errors as errors
    from stabaudit.limits import AuditTimeoutError

    found = {name: cls for name, cls in vars(errors).items()
             if isinstance(cls, type) and issubclass(cls, StabauditError)}
    found["AuditTimeoutError"] = AuditTimeoutError
    return found


def _rebuild_error(kind: str, message: str, state: dict[str, Any], where: str) -> StabauditError:
    """The child's StabauditError as the same class with the same message and fields."""
    cls = _error_classes().get(kind)
    if cls is None:
        return InternalError(f"{kind}: {message}", path=where)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.path = where
    error.problems = [message]
    for name, value in state.items():
        if name not in ("path", "__traceback__"):
            setattr(error, name, value)
    return error


class _DataUnpickler(pickle.Unpickler):
    """Builds stabaudit's classes, numpy arrays and dtypes, and plain containers; nothing else
    (the child ran the archive's code, so its result is data to check, not code to run)."""

    _BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int",
                           "float", "complex", "bool", "slice", "range"})
    _NUMPY_FUNCTIONS = frozenset({"_reconstruct", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        if module == "copyreg" and name == "_reconstructor":
            return super().find_class(module, name)
        root = module.split(".")[0]
        if root == "numpy":
            found = super().find_class(module, name)
            if name in self._NUMPY_FUNCTIONS and callable(found):
                return found
            if found is np.ndarray or (isinstance(found, type) and issubclass(found, np.dtype | np.generic)):
                return found
        if root == "stabaudit":
            found = super().find_class(module, name)
            if isinstance(found, type):  # frozen dataclasses, enums, error classes: no functions
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a loaded model")


# ---- the child -----------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """The child: ``main([request file, result file, parent pid])``."""
    request_file, result_file, parent = argv[0], argv[1], int(argv[2])
    _die_with_parent(parent)
    with open(request_file, "rb") as handle:
        request: LoadRequest = pickle.load(handle)
    outcome = _run(request)
    tmp = result_file + ".part"
    try:
        with open(tmp, "wb") as handle:  # streamed: no second copy of the weights in memory
            pickle.dump(outcome, handle, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # out of memory on the way out, or something that does not pickle (a bug)
        with open(tmp, "wb") as handle:
            pickle.dump(_error(exc, request) if _out_of_memory(exc) else
                        ("error", InternalError.__name__, f"the loaded model cannot be sent back ({exc})", {}), handle)
    os.replace(tmp, result_file)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: the archive's objects are not finalised on the way out


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies (Linux), and a thread that exits when the parent's end of
    stdin closes (everywhere)."""
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)

    def watch() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.buffer.read()
        os._exit(1)

    threading.Thread(target=watch, name="stabaudit-parent-watch", daemon=True).start()


def _run(request: LoadRequest) -> tuple[Any, ...]:
    """Load, record the reference, run the jobs: ("ok", LoadedModel) or ("error", class, message, fields)."""
    try:
        import torch  # imported before the memory cap: its libraries are mapped once

        from stabaudit.ir.parameters import ModuleParameters
        from stabaudit.limits import one_thread
        from stabaudit.loaders.torchscript import load_torchscript

        with one_thread():  # the same bits as an in-process load under engine.audit
            if request.cuda and torch.cuda.is_available():
                torch.cuda.init()
            _cap_memory(request.memory_limit)
            loaded = load_torchscript(request.file, input_shape=request.input_shape, trust_code=request.trust_code,
                                      where=request.path, arguments=request.arguments)
            reference = _record(loaded, request)
            results = {name: job(loaded) for name, job in request.jobs.items()}
        parameterisation = loaded.parameterisation
        if isinstance(parameterisation, ModuleParameters):
            parameterisation = replace(parameterisation, module=None)  # the module stays here
        return ("ok", replace(loaded, reference=reference, parameterisation=parameterisation,
                              module_results=results, reference_at=None))
    except BaseException as exc:  # noqa: BLE001  (everything is reported to the parent)
        return _error(exc, request)


def _cap_memory(limit: int | None) -> None:
    """RLIMIT_AS = the address space mapped now (torch and stabaudit imported) + ``limit``."""
    if limit is None:
        return
    try:
        import resource
    except ImportError:  # not on this platform: the parent's budget checks remain
        return
    mapped = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    if mapped <= 0:  # no procfs: what is mapped is unknown, and a cap of the budget alone could
        return  # refuse the model's first tensor (the parent's budget checks remain)
    cap = mapped + limit
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _record(loaded: LoadedModel, request: LoadRequest) -> RecordedReference:
    """The module's outputs at the seeded inputs of SA902 (analyses.equivalence draws the same);
    with start tensors, the feeds and outputs of ``reference_at`` at each sample."""
    rng = np.random.default_rng(request.seed)
    feeds, outputs = [], []
    error: StabauditError | None = None
    if loaded.reference_at is not None:
        for _ in range(request.samples):
            try:
                sample, out = loaded.reference_at(rng)
            except StabauditError as exc:
                error = exc
                break
            feeds.append(sample)
            outputs.append(tuple(out))
        if error is not None:
            error = _rebuild_error(type(error).__name__, str(error), _fields(error), str(request.path))
        return RecordedReference(feeds=tuple(feeds), outputs=tuple(outputs), error=error, path=request.path,
                                 starts=True)
    for _ in range(request.samples):
        feeds.append(seeded_feeds(loaded.graph.inputs, loaded.precision, rng))
    for sample in feeds:
        try:
            outputs.append(tuple(loaded.reference(sample)))
        except StabauditError as exc:
            error = exc
            break
    if error is not None:
        error = _rebuild_error(type(error).__name__, str(error), _fields(error), str(request.path))
    return RecordedReference(feeds=tuple(feeds), outputs=tuple(outputs), error=error, path=request.path)


def _fields(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in vars(exc).items() if k not in ("path", "__traceback__")}


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a failed allocation."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        if any(text in str(current).lower() for text in _NO_MEMORY):
            return True
        current = current.__cause__ or current.__context__
    return False


def _error(exc: BaseException, request: LoadRequest) -> tuple[Any, ...]:
    from stabaudit.limits import format_size

    if request.memory_limit is not None and _out_of_memory(exc):
        message = (f"loading needed more than the memory limit of {format_size(request.memory_limit)} "
                   "(--max-memory): an allocation failed inside torch.jit.load or the archive's code")
        return ("error", ResourceError.__name__, message, {})
    if isinstance(exc, StabauditError):
        with contextlib.suppress(Exception):
            fields = _fields(exc)
            pickle.dumps(fields)
            return ("error", type(exc).__name__, str(exc), fields)
        return ("error", type(exc).__name__, str(exc), {})
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return ("error", InternalError.__name__, f"loading the TorchScript archive failed: {type(exc).__name__}: {first}", {})


if __name__ == "__main__":  # pragma: no cover  (run through _BOOT, which fixes sys.path first)
    main(sys.argv[1:])
