"""Progress on stderr for the command line: one line redrawn in place, only on a terminal."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from stabaudit.report.model import ModelError, Report


class Progress:
    """The engine's phases (``phase``) or a batch's finished models (``step``) as one status line.
    Off when disabled (--quiet) or when the stream is not a terminal, so logs and pipes stay clean."""

    def __init__(
        self, *, enabled: bool, label: str, total: int = 0, stream: TextIO | None = None,
        verbose: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        # -v: one line per phase with the seconds since the start, on any stream (logs included)
        self.verbose = verbose
        self._text = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self.errors = 0
        self.failed = 0
        self._width = 0

    def __enter__(self) -> Progress:
        if self.enabled:  # the clock keeps moving through a long phase
            self._ticker = threading.Thread(target=self._tick, name="stabaudit-progress", daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            if self._text:
                self._draw(self._text)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def _draw(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._text = text
            line = f"{text}  {time.monotonic() - self.start:5.1f}s"
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._width = len(line)

    def phase(self, name: str) -> None:
        """An audit's current phase (the engine's observer)."""
        if self.verbose:
            with self._lock:
                clear = "\r" + " " * self._width + "\r" if self.enabled and self._width else ""
                self.stream.write(f"{clear}stabaudit: {time.monotonic() - self.start:7.2f}s {self.label}: {name}\n")
                self.stream.flush()
                self._width = 0
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
        elapsed = time.monotonic() - self.start
        eta = f", about {elapsed / done * (total - done):.0f}s left" if 0 < done < total else ""
        self._draw(
            f"[{bar}] {done}/{total} models, {self.failed} failed, {self.errors} errors{eta}"
        )
