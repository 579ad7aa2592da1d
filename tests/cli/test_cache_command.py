"""The cache from the command line: policy changes served from it, `stabaudit cache info|clear`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from stabaudit.cli import app

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "sample_models" / "mlp.onnx"
runner = CliRunner()
CACHED = "analysis evidence read from the cache"


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_a_threshold_change_is_served_from_the_cache(tmp_path: Path):
    cache = tmp_path / "cache"
    common = ["check", MLP, "--method", "product", "--budget", "0.2", "--cache-dir", cache, "--format", "json"]
    first = run(*common)
    assert first.exit_code == 0, first.stderr  # K <= 1 by default: the MLP fails SA101, informational
    one = json.loads(first.stdout)
    assert not any(CACHED in n for n in one["notes"]) and "lower_bound" in one["timings"]
    assert len(list(cache.rglob("*.entry"))) == 1
    upper = one["lipschitz"]["upper"]
    # only the policy changes: the analysis comes from the cache, the checks and gate are new
    second = run(*common, "--threshold", f"lipschitz.global={upper * 1.01}")
    assert second.exit_code == 0, second.stderr
    two = json.loads(second.stdout)
    assert any(CACHED in n for n in two["notes"])
    assert set(two["timings"]) == {"cache", "checks", "total"} and two["timings"]["total"] < 1.0
    assert two["lipschitz"] == one["lipschitz"] and two["layers"] == one["layers"]
    sa101 = [next(c for c in r["checks"] if c["id"] == "SA101") for r in (one, two)]
    assert [c["status"] for c in sa101] == ["fail", "pass"]
    assert sa101[1]["threshold"] == upper * 1.01
    # --fail-on changes the gate only: still a hit; the defaults are informational, so no level gates
    third = run(*common, "--fail-on", "warning")
    assert third.exit_code == 0 and any(CACHED in n for n in json.loads(third.stdout)["notes"])
    # a threshold set below the sound lower bound: SA101 is an error and fails, still a hit
    fourth = run(*common, "--threshold", f"lipschitz={one['lipschitz']['lower'] / 2}")
    assert fourth.exit_code == 1 and any(CACHED in n for n in json.loads(fourth.stdout)["notes"])
    # an analysis setting (the seed) and --no-cache: computed afresh
    other = run(*common, "--seed", "1")
    assert not any(CACHED in n for n in json.loads(other.stdout)["notes"])
    assert len(list(cache.rglob("*.entry"))) == 2
    fresh = run(*common, "--no-cache")
    assert not any(CACHED in n for n in json.loads(fresh.stdout)["notes"])


def test_cache_info_and_clear(tmp_path: Path):
    cache = tmp_path / "cache"
    empty = run("cache", "info", "--cache-dir", cache)
    assert empty.exit_code == 0, empty.stderr
    assert f"directory: {cache}" in empty.stdout and "entries: 0" in empty.stdout
    assert run("check", MLP, "--budget", "0.2", "--method", "product", "--cache-dir", cache, "-q").exit_code == 0
    (entry,) = cache.rglob("*.entry")
    info = run("cache", "info", "--cache-dir", cache)
    assert "entries: 1" in info.stdout
    assert f"size: {entry.stat().st_size} bytes" in info.stdout
    assert "max size: 268435456 bytes" in info.stdout and "key file: " in info.stdout
    cleared = run("cache", "clear", "--cache-dir", cache)
    assert cleared.exit_code == 0 and f"removed 1 entries from {cache}" in cleared.stdout
    assert list(cache.rglob("*.entry")) == []
    assert "entries: 0" in run("cache", "info", "--cache-dir", cache).stdout


def test_cache_without_a_subcommand_shows_its_help():
    r = run("cache")
    assert "info" in r.output and "clear" in r.output
