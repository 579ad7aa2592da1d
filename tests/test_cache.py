"""The analysis cache: stable keys, authenticated atomic entries, LRU eviction; bad entries read as misses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import threading
from pathlib import Path

import pytest

import stabaudit
import stabaudit.cache as cache_module
import stabaudit.errors
from stabaudit.cache import AnalysisCache, cache_key, decode_entry, default_cache_dir, encode_entry
from stabaudit.report.serialize import report_to_dict
from tests.report_factory import make_report

SHA = "ab" * 32
CONFIG = {"method": "auto", "seed": 0, "thresholds": {"lipschitz.global": 1.0}, "input_shape": [1, 4]}


@pytest.fixture
def cache(tmp_path: Path) -> AnalysisCache:
    return AnalysisCache(tmp_path / "cache", secret_path=tmp_path / "config" / "cache.key")


@pytest.fixture
def pinned_version(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(stabaudit, "__version__", "9.9.9")
    monkeypatch.setattr(cache_module, "code_digest", lambda: "c0de")
    return "9.9.9"


def test_key_is_the_sha256_of_the_canonical_payload(pinned_version):
    import hashlib

    text = json.dumps(
        {"model": SHA, "config": CONFIG, "version": "9.9.9", "code": "c0de"},
        sort_keys=True, separators=(",", ":"),
    )
    assert cache_key(SHA, CONFIG) == hashlib.sha256(text.encode()).hexdigest()


def test_code_digest_covers_the_package_sources():
    from stabaudit.cache import code_digest

    d = code_digest()
    assert len(d) == 64 and d == code_digest()


def test_key_is_a_fixed_sha256_of_the_canonical_json(pinned_version):
    # Hard-coded: the key must not depend on the process (hash seeds, dict order).
    expected = "ea97f758bc094f4f440638c2711f1ba253b8fd7c0dcdf6fedc734379a700f999"
    assert cache_key(SHA, CONFIG) == expected
    reordered = dict(reversed(list(CONFIG.items())))
    assert cache_key(SHA, reordered) == expected
    assert cache_key(SHA, {**CONFIG, "input_shape": (1, 4)}) == expected  # tuples are JSON lists


def test_key_changes_with_each_input(monkeypatch: pytest.MonkeyPatch, pinned_version):
    key = cache_key(SHA, CONFIG)
    assert cache_key("cd" * 32, CONFIG) != key
    assert cache_key(SHA, {**CONFIG, "seed": 1}) != key
    assert cache_key(SHA, {**CONFIG, "thresholds": {"lipschitz.global": 1.5}}) != key
    monkeypatch.setattr(stabaudit, "__version__", "9.9.10")
    assert cache_key(SHA, CONFIG) != key


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_key_rejects_non_finite_floats(bad):
    with pytest.raises(ValueError, match="non-finite"):
        cache_key(SHA, {"eps": bad})


def test_key_rejects_values_without_json_form():
    with pytest.raises(ValueError, match="not JSON data"):
        cache_key(SHA, {"path": Path("m.onnx")})


def test_default_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STABAUDIT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("STABAUDIT_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "stabaudit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per the XDG spec: ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "stabaudit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "stabaudit"


def test_put_then_get_round_trips_the_value(cache: AnalysisCache):
    report = make_report()
    key = cache_key(report.model.sha256, CONFIG)
    assert cache.get(key) is None  # a miss, and the directory need not exist
    cache.put(key, report)
    entry_path = cache.directory / key[:2] / f"{key}.entry"
    assert entry_path.is_file()
    back = cache.get(key)
    assert back is not None and back is not report
    assert report_to_dict(back) == report_to_dict(report)
    assert sorted(p.name for p in entry_path.parent.iterdir()) == [f"{key}.entry"]  # no temp files


def test_the_mac_key_is_created_0600_outside_the_cache(cache: AnalysisCache):
    key = cache_key(SHA, CONFIG)
    cache.put(key, make_report())
    secret_file = cache.secret_path
    assert secret_file.is_file() and len(secret_file.read_bytes()) == 32
    assert not secret_file.resolve().is_relative_to(cache.directory.resolve())
    if os.name == "posix":
        assert secret_file.stat().st_mode & 0o777 == 0o600
    # the same key next time: entries written before stay valid
    again = AnalysisCache(cache.directory, secret_path=secret_file)
    assert again.get(key) is not None


def test_concurrent_first_uses_agree_on_one_complete_key(tmp_path: Path):
    from stabaudit.cache import load_secret

    path = tmp_path / "config" / "cache.key"
    barrier = threading.Barrier(8)
    got: list[bytes | BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            got.append(load_secret(path))
        except BaseException as exc:  # surfaced by the assertion below
            got.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1 and got[0] == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["cache.key"]  # no temporary file left


def test_a_key_file_may_hold_hex_digits(tmp_path: Path):
    from stabaudit.cache import load_secret

    path = tmp_path / "k"
    path.write_text("00ff" * 16 + "\n", encoding="ascii")
    path.chmod(0o600)
    assert load_secret(path) == bytes.fromhex("00ff" * 16)
    path.write_text("00ff" * 15, encoding="ascii")
    with pytest.raises(stabaudit.errors.UsageError, match="64 hex digits"):
        load_secret(path)


def test_a_key_file_inside_the_cache_directory_is_refused(tmp_path: Path):
    with pytest.raises(stabaudit.errors.UsageError, match="outside the cache directory"):
        AnalysisCache(tmp_path / "c", secret_path=tmp_path / "c" / "k")


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_key_file_others_can_read_is_refused(cache: AnalysisCache):
    cache.secret_path.parent.mkdir(parents=True)
    cache.secret_path.write_bytes(b"k" * 32)
    cache.secret_path.chmod(0o644)
    with pytest.raises(stabaudit.errors.UsageError, match="by others"):
        cache.get("0" * 64)


def test_an_unwritable_key_location_turns_the_cache_off(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    cache = AnalysisCache(tmp_path / "c", secret_path=blocker / "cache.key")  # mkdir fails
    key = cache_key(SHA, CONFIG)
    cache.put(key, make_report())  # no exception, nothing written
    assert cache.get(key) is None and not (tmp_path / "c").exists()


def _genuine(cache: AnalysisCache) -> tuple[str, bytes]:
    key = cache_key(SHA, CONFIG)
    cache.put(key, make_report())
    return key, cache.path(key).read_bytes()


def test_a_tampered_payload_fails_its_mac_and_is_removed(cache: AnalysisCache):
    key, data = _genuine(cache)
    head = len(cache_module.MAGIC) + 32
    value = pickle.loads(data[head:])
    forged = dataclasses.replace(value, lipschitz=dataclasses.replace(value.lipschitz, upper=0.5))
    payload = pickle.dumps(forged, protocol=pickle.HIGHEST_PROTOCOL)
    assert payload != data[head:]
    cache.path(key).write_bytes(data[:head] + payload)  # the old MAC kept
    assert cache.get(key) is None
    assert not cache.path(key).exists()


def test_an_entry_of_another_key_or_secret_is_a_miss(cache: AnalysisCache, tmp_path: Path):
    key, data = _genuine(cache)
    other = "1" * 64
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).write_bytes(data)  # a valid entry copied under another key's name
    assert cache.get(other) is None
    foreign = encode_entry(b"f" * 32, key, make_report())  # written with someone else's secret
    cache.path(key).write_bytes(foreign)
    assert cache.get(key) is None and not cache.path(key).exists()


def test_an_entry_owned_by_another_user_is_never_trusted(cache: AnalysisCache, monkeypatch: pytest.MonkeyPatch):
    key, _ = _genuine(cache)
    real = os.geteuid()
    assert cache.get(key) is not None
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)  # the file's owner is now "another user"
    monkeypatch.setattr(cache, "_secret", cache.secret())  # the key file was read as ours
    assert cache.get(key) is None


def test_an_authenticated_entry_still_cannot_name_arbitrary_callables(cache: AnalysisCache):
    # a second wall behind the MAC: the unpickler resolves stabaudit classes, numpy and plain data only
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("true",))

    secret = cache.secret()
    assert secret is not None
    with pytest.raises(ValueError, match="unreadable payload"):
        decode_entry(secret, "0" * 64, encode_entry(secret, "0" * 64, Evil()))
    import numpy as np

    arr = np.arange(6.0).reshape(2, 3)
    back = decode_entry(secret, "0" * 64, encode_entry(secret, "0" * 64, {"a": arr, "s": frozenset({1})}))
    assert isinstance(back, dict) and np.array_equal(back["a"], arr) and back["s"] == frozenset({1})


def _write_entry(cache: AnalysisCache, key: str, data: bytes) -> Path:
    path = cache.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{ not json",
        json.dumps({"cache_format": 1, "key": "0" * 64, "report": report_to_dict(make_report())}).encode(),
        cache_module.MAGIC + b"short",
        b"\xff\xfe{",
    ],
    ids=["empty", "not-json", "old-json-format", "truncated", "not-utf8"],
)
def test_a_corrupt_entry_is_a_miss_and_is_removed(cache: AnalysisCache, data: bytes):
    key = "0" * 64
    path = _write_entry(cache, key, data)
    assert cache.get(key) is None
    assert not path.exists()


@pytest.mark.parametrize("key", ["", "../" + "0" * 61, "A" * 64, "0" * 63])
def test_keys_that_are_not_sha256_hex_are_refused(cache: AnalysisCache, key: str):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.get(key)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.put(key, make_report())


def test_put_under_a_regular_file_does_nothing(tmp_path: Path):
    # mkdir below a regular file fails even for root, unlike a chmod'ed directory.
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    cache = AnalysisCache(blocker / "cache", secret_path=tmp_path / "key")
    key = cache_key(SHA, CONFIG)
    cache.put(key, make_report())  # no exception
    assert cache.get(key) is None
    assert blocker.read_text(encoding="utf-8") == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_put_into_a_read_only_directory_does_nothing(cache: AnalysisCache):
    key = cache_key(SHA, CONFIG)
    shard = cache.directory / key[:2]
    shard.mkdir(parents=True)
    shard.chmod(0o555)
    try:
        cache.put(key, make_report())
        assert list(shard.iterdir()) == []  # neither the entry nor a temp file
    finally:
        shard.chmod(0o755)


def test_a_failing_replace_leaves_no_temp_file(cache: AnalysisCache, monkeypatch: pytest.MonkeyPatch):
    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    key = cache_key(SHA, CONFIG)
    monkeypatch.setattr(os, "replace", full_disk)
    cache.put(key, make_report())
    assert list(cache.path(key).parent.iterdir()) == []


def test_concurrent_puts_of_one_key_leave_a_valid_entry(cache: AnalysisCache):
    report = make_report()
    key = cache_key(report.model.sha256, CONFIG)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                cache.put(key, report)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    back = cache.get(key)
    assert back is not None and report_to_dict(back) == report_to_dict(report)
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.entry"]


# ---- size cap: least recently used entries go first ---------------------------------------------------
def _keys(n: int) -> list[str]:
    return [cache_key(SHA, {**CONFIG, "seed": i}) for i in range(n)]


def test_lru_eviction_under_a_tiny_cap(tmp_path: Path):
    report = make_report()
    probe = AnalysisCache(tmp_path / "probe", secret_path=tmp_path / "key")
    probe.put(_keys(1)[0], report)
    size = probe.info().bytes  # one entry's size (all entries below are the same size)
    cache = AnalysisCache(tmp_path / "c", secret_path=tmp_path / "key", max_bytes=3 * size)
    a, b, c, d = _keys(4)
    for i, key in enumerate((a, b, c)):
        cache.put(key, report)
        os.utime(cache.path(key), ns=(10**18 + i, 10**18 + i))  # distinct, ordered last uses
    assert cache.info().entries == 3 and cache.info().bytes == 3 * size
    assert cache.get(a) is not None  # a hit: a is now the most recently used
    cache.put(d, report)  # over the cap by one entry: the least recently used (b) goes
    assert [cache.get(k) is not None for k in (a, b, c, d)] == [True, False, True, True]
    assert cache.info().bytes == 3 * size
    tiny = AnalysisCache(tmp_path / "t", secret_path=tmp_path / "key", max_bytes=size - 1)
    tiny.put(a, report)  # a single entry above the cap is not kept
    assert tiny.info().entries == 0


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("STABAUDIT_CACHE_MAX_BYTES", "1M")
    assert AnalysisCache(tmp_path / "c", secret_path=tmp_path / "k").max_bytes == 1024**2
    monkeypatch.delenv("STABAUDIT_CACHE_MAX_BYTES")
    assert AnalysisCache(tmp_path / "c", secret_path=tmp_path / "k").max_bytes == 256 * 1024**2
    monkeypatch.setenv("STABAUDIT_CACHE_MAX_BYTES", "lots")
    with pytest.raises(stabaudit.errors.UsageError, match="STABAUDIT_CACHE_MAX_BYTES"):
        AnalysisCache(tmp_path / "c", secret_path=tmp_path / "k")


def test_clear_removes_every_entry_and_keeps_the_key(cache: AnalysisCache):
    for key in _keys(3):
        cache.put(key, make_report())
    (cache.directory / "00").mkdir(exist_ok=True)  # an entry may already live under 00
    (cache.directory / "00" / ".x.tmp").write_bytes(b"")
    assert cache.clear() == 3
    assert cache.info().entries == 0 and list(cache.directory.iterdir()) == []
    assert cache.secret_path.is_file()
