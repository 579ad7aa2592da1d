"""Report files whole or not at all: several outputs renamed together, leftovers of killed runs removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stabaudit import atomic

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_several_files_are_all_written(tmp_path):
    (tmp_path / "b.md").write_text("old\n")
    atomic.write_files([("{}\n", tmp_path / "a.json"), ("# new\n", tmp_path / "b.md")])
    assert (tmp_path / "a.json").read_text() == "{}\n" and (tmp_path / "b.md").read_text() == "# new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.md"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_error_between_two_files_writes_none_and_leaves_no_temporary(tmp_path, monkeypatch, error):
    (tmp_path / "b.md").write_text("old\n")
    real = atomic.write_temporary
    calls: list[Path] = []

    def second_fails(path: Path, text: str) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise error("between the files")
        return real(path, text)

    monkeypatch.setattr(atomic, "write_temporary", second_fails)
    with pytest.raises(error):
        atomic.write_files([("{}\n", tmp_path / "a.json"), ("# new\n", tmp_path / "b.md")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.md"]
    assert (tmp_path / "b.md").read_text() == "old\n"


def test_the_leftover_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal; from pathlib import Path; from stabaudit import atomic; "
         "atomic.write_temporary(Path('r.json'), '{}'); os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".r.json.") and leftover.name.endswith(atomic.SUFFIX)
    atomic.write_files([("{}\n", tmp_path / "other.json")])
    assert leftover.exists()  # younger than STALE_AFTER_S: it may be another machine's live write
    old = time.time() - atomic.STALE_AFTER_S - 1
    os.utime(leftover, (old, old))
    atomic.write_files([("{}\n", tmp_path / "other.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_only_our_dead_writers_leftovers_are_removed(tmp_path):
    old = time.time() - atomic.STALE_AFTER_S - 1
    dead, live = _dead_pid(), os.getppid()
    names = {
        f".r.json.{dead}.0123456789ab{atomic.SUFFIX}": False,  # removed
        f".r.json.{live}.0123456789ab{atomic.SUFFIX}": True,  # its writer lives
        f".r.json.{dead}.0123456789ab.tmp": True,  # not ours
        f"r.json.{dead}.0123456789ab{atomic.SUFFIX}": True,  # not hidden: not ours either
        "r.json": True,
    }
    for name in names:
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (old, old))
    assert atomic.remove_leftovers(tmp_path) == [tmp_path / f".r.json.{dead}.0123456789ab{atomic.SUFFIX}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)
