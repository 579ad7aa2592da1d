"""The root error type of stabaudit; each subclass carries the exit code the CLI maps it to."""

from __future__ import annotations

from typing import Any


class StabauditError(Exception):
    """Base of every error stabaudit raises on purpose.

    ``exit_code`` follows CONTRACT.md: 2 for anything wrong with what the audit was given,
    3 for an internal error. ``problems`` holds one line per problem (the CLI prints each as
    ``error: <path>: <reason>``).
    """

    exit_code: int = 2
    # a resource limit that stopped the audit (report.model.Stopped), set by the engine; a class
    # default, so that an error rebuilt without __init__ (unpickled from a child process) has it
    stopped: Any = None

    def __init__(self, message: str, *, path: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.path = path
        self.problems: list[str] = problems if problems else [message]


class UsageError(StabauditError):
    """Bad command-line usage or option values."""


class ConfigError(StabauditError):
    """A configuration file or value that cannot be used."""


class ModelLoadError(StabauditError):
    """A model file that is missing, unreadable, malformed or of an unknown format."""


class UnsupportedOperatorError(ModelLoadError):
    """Operators the engine does not understand (check SA901); lists every one at once."""

    def __init__(self, counts: dict[str, int], *, path: str | None = None):
        self.counts = dict(sorted(counts.items()))
        listing = ", ".join(f"{op} (x{n})" for op, n in self.counts.items())
        super().__init__(f"unsupported operators: {listing} [SA901]", path=path)


class UntrustedModelError(ModelLoadError):
    """A TorchScript archive whose code or pickles reach outside the operators the static gate
    allows (stabaudit.loaders.ts_gate): refused before any of it runs."""


class EquivalenceError(StabauditError):
    """The engine's forward pass does not reproduce the reference runtime (check SA902)."""


class ResourceError(StabauditError):
    """A model or analysis that would exceed a resource budget."""


class InternalError(StabauditError):
    """A bug in stabaudit."""

    exit_code = 3
