"""Report files written whole or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from stabaudit import interrupts

# .<target name>.<pid>.<random>.stabaudit-tmp: the writer's pid in the name tells a later run
# whether the writer still lives; the suffix is ours alone, so nothing else is ever removed.
SUFFIX = ".stabaudit-tmp"
_LEFTOVER = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}" + re.escape(SUFFIX) + "$")
# A leftover younger than this is left alone even when its pid is not a process here: the writer
# may be another machine writing to the same shared directory (its writes take milliseconds).
STALE_AFTER_S = 60.0


def target_of(path: Path) -> Path:
    """The file to replace: through a symlink, the file it points to (the link is kept)."""
    return Path(os.path.realpath(path))


def write_temporary(path: Path, text: str | bytes) -> Path:
    """``text`` in a new temporary file beside ``path``'s target (tracked: a signal that ends the
    process removes it). Its mode is 0666 less the umask, as for any file the user creates."""
    target = target_of(path)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}{SUFFIX}"
    interrupts.track(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        if isinstance(text, bytes):  # a sidecar .npz beside a JSON report
            with os.fdopen(fd, "wb") as out:
                out.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
    except BaseException:
        discard(tmp)
        raise
    return tmp


def discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    interrupts.untrack(tmp)


def commit(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename every (temporary, path) pair over its target, signals held back meanwhile so that a
    signal leaves all the files in place or none of them (renames take microseconds)."""
    with interrupts.deferred():
        for tmp, path in pairs:
            os.replace(tmp, target_of(path))
            interrupts.untrack(tmp)
        interrupts.mark_committed()


def write_files(files: Sequence[tuple[str | bytes, Path]]) -> None:
    """Every file written to its temporary first, then all renamed together; on any error or
    signal before the renames, no temporary is left and no target changed. Leftovers of earlier
    runs that were killed (SIGKILL cannot be handled) are removed from each target's directory."""
    for folder in sorted({target_of(path).parent for _, path in files}):
        remove_leftovers(folder)
    written: list[tuple[Path, Path]] = []
    try:
        for text, path in files:
            written.append((write_temporary(path, text), path))
        commit(written)
    except BaseException:
        for tmp, _ in written:
            discard(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a process of another user
        return True
    return True


def remove_leftovers(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files that killed runs left in ``folder``: ours by name, older than
    STALE_AFTER_S and whose writer is no longer a process here. Returns what was removed."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _LEFTOVER.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        path = folder / name
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue
        if pid == os.getpid() or age < STALE_AFTER_S or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed
