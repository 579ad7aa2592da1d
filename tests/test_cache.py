"""The report cache: stable keys, atomic entries, and bad entries or failing disks read as misses."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

import stabaudit
import stabaudit.cache as cache_module
from stabaudit.cache import ReportCache, cache_key, default_cache_dir
from stabaudit.report.serialize import report_to_dict
from tests.report_factory import make_report

SHA = "ab" * 32
CONFIG = {"method": "auto", "seed": 0, "thresholds": {"lipschitz.global": 1.0}, "input_shape": [1, 4]}


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


def test_put_then_get_round_trips_the_report(tmp_path: Path):
    report = make_report()
    cache = ReportCache(tmp_path / "cache")
    key = cache_key(report.model.sha256, CONFIG)
    assert cache.get(key) is None  # a miss, and the directory need not exist
    cache.put(key, report)
    entry_path = tmp_path / "cache" / key[:2] / f"{key}.json"
    assert entry_path.is_file()
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    assert entry == {"cache_format": 1, "key": key, "report": report_to_dict(report)}
    back = cache.get(key)
    assert back is not None
    assert report_to_dict(back) == report_to_dict(report)
    assert back.rules == ()  # the catalogue is not cached
    assert sorted(p.name for p in entry_path.parent.iterdir()) == [f"{key}.json"]  # no temp files


def _write_entry(cache: ReportCache, key: str, text: str) -> Path:
    path = cache.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _valid_entry(key: str) -> dict:
    return {"cache_format": 1, "key": key, "report": report_to_dict(make_report())}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{ not json",
        "[]",
        json.dumps({**_valid_entry("0" * 64), "cache_format": 2}),
        json.dumps({**_valid_entry("0" * 64), "key": "1" * 64}),
        json.dumps({"cache_format": 1, "key": "0" * 64}),
        json.dumps({**_valid_entry("0" * 64), "report": {"schema_version": "1"}}),
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["empty", "not-json", "list", "other-format", "other-key", "no-report", "bad-report", "deep"],
)
def test_a_corrupt_entry_is_a_miss_and_is_removed(tmp_path: Path, text: str):
    cache = ReportCache(tmp_path)
    key = "0" * 64
    path = _write_entry(cache, key, text)
    assert cache.get(key) is None
    assert not path.exists()


def test_an_entry_of_another_version_is_a_miss_and_is_removed(tmp_path: Path):
    cache = ReportCache(tmp_path)
    key = "0" * 64
    entry = _valid_entry(key)
    entry["report"]["tool"]["version"] = "0.0.1"
    path = _write_entry(cache, key, json.dumps(entry))
    assert cache.get(key) is None
    assert not path.exists()


def test_a_non_utf8_entry_is_a_miss_and_is_removed(tmp_path: Path):
    cache = ReportCache(tmp_path)
    key = "0" * 64
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe{")
    assert cache.get(key) is None
    assert not path.exists()


@pytest.mark.parametrize("key", ["", "../" + "0" * 61, "A" * 64, "0" * 63])
def test_keys_that_are_not_sha256_hex_are_refused(tmp_path: Path, key: str):
    cache = ReportCache(tmp_path)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.get(key)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.put(key, make_report())


def test_put_under_a_regular_file_does_nothing(tmp_path: Path):
    # mkdir below a regular file fails even for root, unlike a chmod'ed directory.
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    cache = ReportCache(blocker / "cache")
    key = cache_key(SHA, CONFIG)
    cache.put(key, make_report())  # no exception
    assert cache.get(key) is None
    assert blocker.read_text(encoding="utf-8") == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_put_into_a_read_only_directory_does_nothing(tmp_path: Path):
    cache = ReportCache(tmp_path / "cache")
    key = cache_key(SHA, CONFIG)
    shard = tmp_path / "cache" / key[:2]
    shard.mkdir(parents=True)
    shard.chmod(0o555)
    try:
        cache.put(key, make_report())
        assert list(shard.iterdir()) == []  # neither the entry nor a temp file
    finally:
        shard.chmod(0o755)


def test_a_failing_replace_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    cache = ReportCache(tmp_path)
    key = cache_key(SHA, CONFIG)
    monkeypatch.setattr(os, "replace", full_disk)
    cache.put(key, make_report())
    assert list(cache.path(key).parent.iterdir()) == []


def test_concurrent_puts_of_one_key_leave_a_valid_entry(tmp_path: Path):
    cache = ReportCache(tmp_path)
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
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.json"]
