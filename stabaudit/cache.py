"""A disk cache of analysis evidence, authenticated (HMAC-SHA256) and bounded (LRU by size)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import json
import os
import pickle
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stabaudit
from stabaudit.errors import UsageError

CACHE_FORMAT = 2
# entry file: MAGIC, then the 32-byte MAC, then the payload (a pickle of the engine's Analysis)
MAGIC = b"stabaudit-cache-2\n"
SUFFIX = ".entry"
DEFAULT_MAX_BYTES = 256 * 1024**2
_KEY = re.compile(r"[0-9a-f]{64}")
_MAC_BYTES = 32
_SECRET_BYTES = 32


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of stabaudit's own source files (paths and bytes): a development install changes its
    code without changing its version, and a cached analysis must never outlive the code that
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


def default_secret_path() -> Path:
    """Where the cache's MAC key lives: $STABAUDIT_CACHE_KEY_FILE, else
    $XDG_CONFIG_HOME/stabaudit/cache.key, else ~/.config/stabaudit/cache.key. Never inside the
    cache directory: whoever can write the cache must not be able to read the key."""
    explicit = os.environ.get("STABAUDIT_CACHE_KEY_FILE", "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "stabaudit" / "cache.key"
    return Path.home() / ".config" / "stabaudit" / "cache.key"


def default_max_bytes() -> int:
    """$STABAUDIT_CACHE_MAX_BYTES (a size: 256M, 1G, 1048576), else 256 MiB."""
    from stabaudit.limits import parse_size

    raw = os.environ.get("STABAUDIT_CACHE_MAX_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(raw)
    except UsageError:
        raise UsageError(
            f"STABAUDIT_CACHE_MAX_BYTES={raw!r}: expected a size such as 256M, 1G or 1048576"
        ) from None


def load_secret(path: Path) -> bytes:
    """The MAC key at ``path``, created (32 random bytes, mode 0600) on first use.

    UsageError for a key file that is not a regular file of ours, is readable by others, or has
    the wrong length: an entry authenticated with a key others can read proves nothing. OSError
    when it can neither be read nor created (a read-only home: the caller runs without cache)."""
    if not path.exists():
        _create_secret(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        problem = ""
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            problem = "owned by another user"
        elif os.name == "posix" and st.st_mode & 0o077:
            problem = f"readable or writable by others (mode {st.st_mode & 0o777:o}; chmod 600 it)"
        secret = _secret_bytes(fh.read(4 * _SECRET_BYTES))
    if not problem and secret is None:
        problem = f"expected {_SECRET_BYTES} bytes or {2 * _SECRET_BYTES} hex digits (delete it to make a new key)"
    if problem or secret is None:
        raise UsageError(f"cache key file {path}: {problem}")
    return secret


def _secret_bytes(data: bytes) -> bytes | None:
    """The key from a key file's bytes: 32 raw bytes (as created here), or 64 hex digits and
    optional whitespace (as a CI secret is easily written, e.g. `openssl rand -hex 32`)."""
    if len(data) == _SECRET_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * _SECRET_BYTES and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return bytes.fromhex(text.decode("ascii"))
    return None


def _create_secret(path: Path) -> None:
    """Write a new key whole, then link it into place: a concurrent first use (a process pool)
    either creates the key or finds the complete one, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".cache.key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_SECRET_BYTES))
        try:
            os.link(tmp, path)  # fails if the key exists: the first writer wins
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: the last writer wins (then misses)
            os.replace(tmp, path)
    finally:
        _remove(Path(tmp))


def _check_key(key: str) -> None:
    # The key becomes a file name: anything but a sha256 hex digest could leave the directory.
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"cache key: expected 64 lowercase hex digits, got {key!r}")


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


# What an entry's pickle may name: stabaudit's own classes (never its functions), numpy arrays and
# scalars, and a few plain containers. Checked only after the MAC verified, as a second wall.
_NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_BUILTINS = {"set", "frozenset", "complex", "slice", "range", "bytearray"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _BUILTINS)
            or (module in ("collections",) and name == "OrderedDict")
            or (module in ("pathlib",) and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath"))
            or (module.split(".")[0] == "numpy" and (name in _NUMPY or name.endswith("DType")))
        )
        if allowed:
            return super().find_class(module, name)
        if module == "stabaudit" or module.startswith("stabaudit."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"cache entry names {module}.{name}: not allowed")


def mac(secret: bytes, key: str, payload: bytes) -> bytes:
    """HMAC-SHA256 over the format, the entry's key and its payload (binding an entry to its key,
    so a valid entry copied under another key's name is refused too)."""
    return hmac.new(secret, MAGIC + key.encode("ascii") + b"\0" + payload, hashlib.sha256).digest()


def encode_entry(secret: bytes, key: str, value: object) -> bytes:
    """The bytes of an entry holding ``value`` under ``key``."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + mac(secret, key, payload) + payload


def decode_entry(secret: bytes, key: str, data: bytes) -> object:
    """The value of an entry; ValueError unless its MAC verifies under ``secret`` and ``key``."""
    head = len(MAGIC) + _MAC_BYTES
    if len(data) < head or not data.startswith(MAGIC):
        raise ValueError("not a cache entry of this format")
    tag, payload = data[len(MAGIC) : head], data[head:]
    if not hmac.compare_digest(tag, mac(secret, key, payload)):
        raise ValueError("bad MAC: tampered, or written with another key")
    try:
        return _Unpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # an authenticated payload that still does not load: not trusted
        raise ValueError(f"unreadable payload ({type(exc).__name__})") from None


@dataclass(frozen=True, kw_only=True)
class CacheInfo:
    directory: Path
    entries: int
    bytes: int
    max_bytes: int
    key_file: Path


class AnalysisCache:
    """Analyses stored as <directory>/<key[:2]>/<key>.entry (``encode_entry``).

    A cache must never fail an audit: a bad entry (unreadable, tampered, of another format or
    key, written by another user) reads as a miss and is removed, and a write that fails is
    dropped. Writes are atomic (a temporary file in the same directory, then os.replace). A hit
    refreshes the entry's mtime (its last use); after each write the least recently used entries
    are removed until the directory holds at most ``max_bytes``.
    """

    def __init__(
        self, directory: Path, *, secret_path: Path | None = None, max_bytes: int | None = None
    ) -> None:
        self.directory = Path(directory)
        self.secret_path = secret_path if secret_path is not None else default_secret_path()
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes()
        if _inside(self.secret_path, self.directory):
            raise UsageError(
                f"cache key file {self.secret_path}: must live outside the cache directory "
                f"{self.directory} (STABAUDIT_CACHE_KEY_FILE)"
            )
        self._secret: bytes | None = None
        self._unusable = False

    def secret(self) -> bytes | None:
        """The MAC key (``load_secret``), or None when it can neither be read nor created: then
        the cache is off for this run, since an entry that cannot be authenticated is never
        read or written."""
        if self._secret is None and not self._unusable:
            try:
                self._secret = load_secret(self.secret_path)
            except OSError:
                self._unusable = True
        return self._secret

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives (ValueError for a key that is not a sha256 hex)."""
        _check_key(key)
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str) -> object | None:
        """The value cached under ``key``, or None for a miss or an entry that cannot be trusted
        (then deleted, best effort)."""
        path = self.path(key)
        secret = self.secret()
        if secret is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError:  # a symlink (ELOOP), a directory, unreadable
            _remove(path)
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            # another user's file is never trusted, whatever its MAC
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                _remove(path)
                return None
            try:
                data = fh.read()
            except OSError:
                data = b""
        try:
            value = decode_entry(secret, key, data)
        except ValueError:
            _remove(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for the LRU eviction
        return value

    def put(self, key: str, value: object) -> None:
        """Store ``value`` under ``key``, atomically, then evict down to ``max_bytes``; failures
        (read-only or full disk, a value pickle cannot write) leave the cache as it was."""
        if getattr(value, "stopped", None) is not None:
            return  # an incomplete analysis (a timeout, the memory budget) is never stored
        path = self.path(key)
        secret = self.secret()
        if secret is None:
            return
        try:
            data = encode_entry(secret, key, value)
        except (pickle.PicklingError, TypeError, AttributeError):
            return  # simply not cached
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            # No fsync: after a crash a truncated entry fails its MAC and reads as a miss.
            os.replace(tmp, path)
            tmp = None
        except OSError:
            return  # read-only directory, full disk, ...: the audit goes on without the cache
        finally:
            if tmp is not None:
                _remove(Path(tmp))
        self.evict()

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Every entry file with its stat, least recently used first."""
        found = []
        for path in self.directory.glob(f"??/*{SUFFIX}"):
            with contextlib.suppress(OSError):
                found.append((path, path.stat()))
        found.sort(key=lambda e: (e[1].st_mtime_ns, e[0].name))
        return found

    def evict(self) -> None:
        """Remove the least recently used entries until the total size is at most max_bytes."""
        found = self.entries()
        total = sum(st.st_size for _, st in found)
        for path, st in found:
            if total <= self.max_bytes:
                break
            _remove(path)
            total -= st.st_size

    def info(self) -> CacheInfo:
        found = self.entries()
        return CacheInfo(
            directory=self.directory,
            entries=len(found),
            bytes=sum(st.st_size for _, st in found),
            max_bytes=self.max_bytes,
            key_file=self.secret_path,
        )

    def clear(self) -> int:
        """Remove every entry (and leftover temporary files); the number of entries removed."""
        found = self.entries()
        for path, _ in found:
            _remove(path)
        for tmp in self.directory.glob("??/.*.tmp"):
            _remove(tmp)
        for shard in self.directory.glob("??"):
            with contextlib.suppress(OSError):
                shard.rmdir()  # only when empty
        return len(found)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
