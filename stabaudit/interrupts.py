"""SIGINT and SIGTERM in the command line: one line, exit 130 or 143, no traceback, no temporary file left."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

# 128 + the signal's number, as a shell reports a command that a signal ended
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
# After the exception of a signal was raised, the command has this long to unwind (finally blocks,
# workers stopped) before it is ended at once: an exception swallowed by a library, or a clean-up
# that hangs, must not keep an interrupted command alive.
GRACE_S = 10.0


class Terminated(BaseException):
    """SIGTERM, raised as an exception so that clean-up runs (exit code 143 = 128 + 15)."""


class _State:
    raising = False  # inside a command's body: signals raise (KeyboardInterrupt, Terminated)
    announced = False  # the one line of the interrupt is on stderr
    committed = False  # the command's report files are in place (renamed over their targets)
    deferring = False  # inside ``deferred()``: a signal is recorded, handled when the block ends
    pending: int | None = None  # the signal recorded while deferring


_STATE = _State()
_TEMPORARY: set[str] = set()  # files that a signal ending the process at once removes first
# reentrant: the handler runs in the main thread, possibly while that thread holds it
_LOCK = threading.RLock()


def install() -> None:
    """Handle SIGINT and SIGTERM from now on (the command line's first act, before the heavy imports).
    Outside ``raising()`` a signal ends the process at once: one line, temporary files removed,
    exit 130 or 143."""
    for signum in EXIT_CODES:
        signal.signal(signum, _handler)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Inside: a signal raises KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) in the main
    thread, so that finally blocks run; the caller maps them to the exit code (``exit_code``)."""
    previous = _STATE.raising
    if not previous:  # a new command: its own interrupt line, nothing committed yet
        _STATE.announced = _STATE.committed = False
    _STATE.raising = True
    try:
        yield
    finally:
        _STATE.raising = previous


def message(signum: int) -> str:
    name = NAMES.get(signal.Signals(signum), f"signal {signum}")
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    if _STATE.committed:
        return f"error: {what} ({name}) after the report files were written"
    return f"error: {what} ({name}); no report written"


def announce(signum: int, echo: Callable[[str], None] | None = None) -> None:
    """The interrupt's one line on stderr (through ``echo`` when given), once whatever path
    reports it."""
    with _LOCK:
        if _STATE.announced:
            return
        _STATE.announced = True
    line = message(signum)
    with contextlib.suppress(OSError, ValueError):  # stderr closed: the exit code still tells
        if echo is not None:
            echo(line)
        else:
            os.write(2, (line + "\n").encode())


def exit_code(signum: int) -> int:
    return EXIT_CODES.get(signal.Signals(signum), 128 + signum)


def exit_now(signum: int) -> None:
    """End the process at once: temporary files removed, the one line, 128 + the signal's number.
    os._exit: no Python code of the interrupted program runs any more (no traceback, no atexit
    hook that could raise, no finally that could hang)."""
    remove_temporary()
    announce(signum)
    os._exit(exit_code(signum))


def importing(frame: FrameType | None) -> bool:
    """Whether the interrupted code runs inside the import machinery: an exception there leaves a
    half-initialised module whose own error handling may print before the command's line."""
    depth = 0
    while frame is not None and depth < 1000:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if _STATE.deferring:
        # another thread took the process-directed signal (the main thread's mask only holds it
        # for the main thread): Python still runs this handler in the main thread, mid-block
        if _STATE.pending is None:
            _STATE.pending = signum
        return
    if not _STATE.raising or importing(frame):
        exit_now(signum)
    _STATE.raising = False  # a second signal, while the first unwinds, ends the process at once
    watchdog = threading.Timer(GRACE_S, exit_now, args=(signum,))
    watchdog.daemon = True
    watchdog.start()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    raise Terminated()


def track(path: str | os.PathLike[str]) -> None:
    """A temporary file that a signal ending the process at once removes."""
    with _LOCK:
        _TEMPORARY.add(os.fspath(path))


def untrack(path: str | os.PathLike[str]) -> None:
    with _LOCK:
        _TEMPORARY.discard(os.fspath(path))


def remove_temporary() -> None:
    with _LOCK:
        paths = list(_TEMPORARY)
        _TEMPORARY.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def mark_committed() -> None:
    _STATE.committed = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals held back for the block (the renames that put several report files in place: all
    or none), delivered when it ends. Only in the main thread, where the handlers run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold back with
        yield
        return
    held = set(EXIT_CODES)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    _STATE.deferring, _STATE.pending = True, None
    try:
        yield
    finally:
        _STATE.deferring = False
        pending, _STATE.pending = _STATE.pending, None
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held by the mask runs here
        if pending is not None:
            _handler(pending, None)  # one that another thread took, handled as it would have been
