"""The fuzzing property, shared by the hypothesis tests, the regressions and the atheris targets:
a hostile file ends in a result or a one-line StabauditError (exit 0, 1 or 2), never a traceback,
an internal error (exit 3) or a hang."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stabaudit.errors import InternalError, StabauditError

CASE_LIMIT_S = 60.0  # one case: a hang is a failure, not a stuck suite


class CaseTimeout(Exception):
    """A fuzz case ran past CASE_LIMIT_S."""


@contextlib.contextmanager
def time_limit(seconds: float = CASE_LIMIT_S) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after ``seconds`` (and check the elapsed time anyway:
    a hang inside native code is only interrupted when it returns to Python)."""
    start = time.monotonic()
    use_alarm = threading.current_thread() is threading.main_thread()

    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    if elapsed > seconds:
        raise CaseTimeout(f"case took {elapsed:.1f} s (limit {seconds} s)")


def check_error(exc: StabauditError) -> None:
    """A refusal is a StabauditError with exit code 2 and one short line per problem."""
    assert not isinstance(exc, InternalError), exc
    assert exc.exit_code == 2, exc
    for problem in exc.problems:
        assert problem.strip() and "\n" not in problem.strip(), repr(problem)
        assert "Traceback" not in problem, problem


def load_cleanly(path: Path, *, input_shape: tuple[int, ...] | None = None) -> StabauditError | None:
    """Load ``path`` (and run its reference once when it loads); None when it loaded, else the
    refusal. Any other exception propagates: that is a crasher.

    A TorchScript archive is loaded in this process (load_torchscript, what load_model runs in its
    isolated child, loaders.ts_child): a child per case would cost an interpreter start and a
    torch import each; the cases through the CLI cover the isolated path."""
    from stabaudit.loaders import ModelFormat, detect_format, load_model
    from stabaudit.loaders.torchscript import load_torchscript

    with time_limit():
        try:
            if detect_format(path) is ModelFormat.TORCHSCRIPT:
                loaded = load_torchscript(path, input_shape=input_shape)
            else:
                loaded = load_model(path, input_shape=input_shape)
            loaded.reference({s.name: np.zeros(s.shape, np.float32) for s in loaded.graph.inputs})
        except StabauditError as exc:
            check_error(exc)
            return exc
    return None


def check_cli(path: Path, *extra: str) -> tuple[int, str]:
    """``stabaudit check path --budget 0.2``: exit 0, 1 or 2, and on 2 only ``error:`` lines, then
    the summary line of the refusal (returned without it)."""
    from typer.testing import CliRunner

    from stabaudit.cli import app

    start = time.monotonic()
    result = CliRunner().invoke(app, ["check", str(path), "--budget", "0.2", *extra])
    elapsed = time.monotonic() - start
    err = result.stderr
    assert result.exit_code in (0, 1, 2), (result.exit_code, err[-2000:])
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    if result.exit_code == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("stabaudit: FAIL (exit code 2) "), err[-2000:]
        lines = lines[:-1]
        assert lines and all(line.startswith("error: ") for line in lines), err[-2000:]
        err = "\n".join(lines) + "\n"
    assert elapsed < 2 * CASE_LIMIT_S, f"check took {elapsed:.1f} s"
    return result.exit_code, err
