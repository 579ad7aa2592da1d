"""A disk cache of reports keyed by (model sha256, effective config, stabaudit version)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import stabaudit
from stabaudit.report.model import Report
from stabaudit.report.serialize import report_from_dict, report_to_dict

CACHE_FORMAT = 1
_KEY = re.compile(r"[0-9a-f]{64}")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of stabaudit's own source files (paths and bytes): a development install changes its
    code without changing its version, and a cached report must never outlive the code that
    computed it."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(model_sha256: str, config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, compact) of {"model", "config", "version",
    "code"} (``code_digest``: the package's own sources).

    ``config`` must be JSON data (str keys; str, int, float, bool, None, lists/tuples, mappings);
    non-finite floats and other values raise ValueError, since they have no canonical JSON form.
    """
    payload = {
        "model": model_sha256,
        "config": config,
        "version": stabaudit.__version__,
        "code": code_digest(),
    }
    try:
        text = json.dumps(
            payload, sort_keys=True, allow_nan=False, separators=(",", ":"), ensure_ascii=True
        )
    except TypeError as exc:  # a value json cannot write, or keys sort_keys cannot order
        raise ValueError(f"cache key: config is not JSON data ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"cache key: config holds a non-finite float ({exc})") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def default_cache_dir() -> Path:
    """$STABAUDIT_CACHE_DIR, else $XDG_CACHE_HOME/stabaudit, else ~/.cache/stabaudit."""
    explicit = os.environ.get("STABAUDIT_CACHE_DIR", "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG base directory spec says relative paths are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "stabaudit"
    return Path.home() / ".cache" / "stabaudit"


def _check_key(key: str) -> None:
    # The key becomes a file name: anything but a sha256 hex digest could leave the directory.
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"cache key: expected 64 lowercase hex digits, got {key!r}")


class ReportCache:
    """Reports stored as <directory>/<key[:2]>/<key>.json, each holding
    {"cache_format": 1, "key": key, "report": report_to_dict(report)}.

    A cache must never fail an audit: a bad entry reads as a miss (and is removed), and a write
    that fails is dropped. Writes are atomic (a temporary file in the same directory, then
    os.replace), so readers, including other processes, see a whole entry or none.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives (ValueError for a key that is not a sha256 hex)."""
        _check_key(key)
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Report | None:
        """The cached report for ``key``, or None for a miss or an unusable entry (then deleted,
        best effort)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable, or not UTF-8 (UnicodeDecodeError)
            _remove(path)
            return None
        try:
            entry = json.loads(text)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            if entry.get("cache_format") != CACHE_FORMAT or entry.get("key") != key:
                raise ValueError("another cache format, or the entry of another key")
            report = report_from_dict(entry["report"])
            if report.tool.version != stabaudit.__version__:
                raise ValueError("written by another stabaudit version")
        # KeyError: no "report"; RecursionError: absurdly nested JSON; TypeError: data the
        # report model has no place for. All mean the same here: not an entry we can trust.
        except (ValueError, KeyError, TypeError, RecursionError):
            _remove(path)
            return None
        return report

    def put(self, key: str, report: Report) -> None:
        """Store ``report`` under ``key``, atomically; failures (read-only or full disk, a report
        that has no JSON form) leave the cache as it was and are not raised."""
        path = self.path(key)
        try:
            text = json.dumps(
                {"cache_format": CACHE_FORMAT, "key": key, "report": report_to_dict(report)},
                sort_keys=True,
                allow_nan=False,
            )
        except (TypeError, ValueError):
            return  # e.g. a finding value json cannot write: simply not cached
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            # No fsync: after a crash a truncated entry only reads as a miss (get removes it).
            os.replace(tmp, path)
            tmp = None
        except OSError:
            pass  # read-only directory, full disk, ...: the audit goes on without the cache
        finally:
            if tmp is not None:
                _remove(Path(tmp))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
