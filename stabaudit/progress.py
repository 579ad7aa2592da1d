"""Progress on stderr for the command line: one line redrawn in place, only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from stabaudit.report.model import ModelError, Report


class Progress:
    """The engine's phases (``phase``) or a batch's finished models (``step``) as one status line.
    Off when disabled (--quiet) or when the stream is not a terminal, so logs and pipes stay clean."""

    def __init__(
        self, *, enabled: bool, label: str, total: int = 0, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self.errors = 0
        self.failed = 0
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def _draw(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"{text}  {time.monotonic() - self.start:5.1f}s"
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def phase(self, name: str) -> None:
        """An audit's current phase (the engine's observer)."""
        self._draw(f"stabaudit {self.label}: {name}")

    def step(self, done: int, total: int, outcome: Report | ModelError) -> None:
        """A batch model finished."""
        if isinstance(outcome, ModelError):
            self.errors += 1
        elif outcome.exit_code:
            self.failed += 1
        width = 24
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self._draw(
            f"[{bar}] {done}/{total} models, {self.failed} failed, {self.errors} errors"
        )
