"""Interrupts: SIGINT exits 130 and SIGTERM 143 with one line, at any moment from start-up on,
leaving no report and no partial file; batch workers die with their parent, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "STABAUDIT_NO_CACHE": "1"}
LINES = {signal.SIGINT: "error: interrupted (SIGINT); no report written",
         signal.SIGTERM: "error: terminated (SIGTERM); no report written"}
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _default_sigint() -> None:
    # a job started in the background inherits SIGINT ignored (shell job control): the child gets
    # the default disposition, as an interactive Ctrl-C would find it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stabaudit", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def _handlers_installed(pid: int) -> bool:
    """stabaudit's handlers catch SIGTERM, which the interpreter alone leaves at its default: the
    SigCgt mask of /proc/PID/status tells when they are in place (SIGINT's is installed first)."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    except OSError:
        return False
    return bool(int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)))


def _assert_interrupted(proc: subprocess.Popen[str], sig: signal.Signals, folder: Path) -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == CODES[sig], (proc.returncode, err)
    assert err.splitlines() == [LINES[sig]], err  # one line, no traceback, no "Aborted!"
    assert out == ""
    assert list(folder.iterdir()) == []  # no report, no temporary file


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_file(tmp_path, sig, code):
    out = tmp_path / "report.json"
    proc = _start(["check", str(ROOT / "sample_models" / "cnn.onnx"), "--budget", "60", "-o", str(out)], tmp_path)
    time.sleep(6.0)  # imports and loading done: inside the analyses
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _assert_interrupted(proc, sig, tmp_path)


# From the handlers' installation on (stabaudit.entry, before typer, click, torch, onnx and
# onnxruntime are imported): every moment of start-up, import of the command line, option parsing,
# the lazy imports of torch and onnxruntime, loading. Before that, only the interpreter's own start
# (site, about 10 ms) runs, where Python's handler is in charge.
DELAYS = [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.0), (signal.SIGINT, 0.003), (signal.SIGINT, 0.01),
          (signal.SIGTERM, 0.02), (signal.SIGINT, 0.04), (signal.SIGINT, 0.08), (signal.SIGTERM, 0.15),
          (signal.SIGINT, 0.3), (signal.SIGINT, 0.6), (signal.SIGTERM, 1.0), (signal.SIGINT, 1.6)]


def test_a_signal_at_any_moment_of_start_up_gives_one_line(tmp_path):
    for i, (sig, delay) in enumerate(DELAYS):
        folder = tmp_path / str(i)
        folder.mkdir()
        proc = _start(["check", str(ROOT / "sample_models" / "cnn.onnx"), "--budget", "60", "-o",
                       str(folder / "r.json"), "-o", str(folder / "r.sarif")], folder)
        give_up = time.monotonic() + 30
        while not _handlers_installed(proc.pid):
            assert proc.poll() is None and time.monotonic() < give_up, proc.communicate()
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(sig)
        _assert_interrupted(proc, sig, folder)


def test_the_console_script_installs_the_handlers_before_the_command_line():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+)
    assert '\n[project.scripts]\nstabaudit = "stabaudit.entry:main"\n' in pyproject
    probe = ("import sys, stabaudit.entry; "
             "print(sorted(m for m in ('typer', 'click', 'torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=60)


def test_a_signal_outside_a_command_removes_the_temporary_files_at_once(tmp_path):
    done = _python("""
        import os, signal
        from pathlib import Path
        from stabaudit import atomic, interrupts
        interrupts.install()
        atomic.write_temporary(Path("r.json"), "{}")
        os.kill(os.getpid(), signal.SIGTERM)
        print("not reached")
    """, tmp_path)
    assert done.returncode == 143 and done.stdout == ""
    assert done.stderr.splitlines() == [LINES[signal.SIGTERM]]
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_swallowed_by_the_program_still_ends_it_after_the_grace(tmp_path):
    done = _python("""
        import os, signal, time
        from pathlib import Path
        from stabaudit import atomic, interrupts
        interrupts.GRACE_S = 0.5
        interrupts.install()
        with interrupts.raising():
            atomic.write_temporary(Path("r.json"), "{}")
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass  # a library that swallows it
            time.sleep(30)
        print("not reached")
    """, tmp_path)
    assert done.returncode == 130 and done.stdout == ""
    assert done.stderr.splitlines() == [LINES[signal.SIGINT]]
    assert list(tmp_path.iterdir()) == []


def test_signals_are_held_back_while_the_files_are_renamed():
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        from stabaudit import interrupts

        with interrupts.deferred():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # held like SIGINT/SIGTERM
            # directed at this thread: a process-directed one may go to any other thread of the
            # suite's process (a library's pool) that does not block it
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            time.sleep(0.01)
            assert seen == []
            assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        assert seen == [signal.SIGUSR1]
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_batch_workers_die_when_the_parent_is_killed(tmp_path):
    for name in ("a", "b", "c"):  # three models for two workers, each audit seconds long
        (tmp_path / f"{name}.onnx").write_bytes((ROOT / "sample_models" / "cnn.onnx").read_bytes())
    (tmp_path / "batch.yaml").write_text("defaults:\n  budget: 60\nmodels:\n  - path: '*.onnx'\n")
    proc = _start(["batch", "batch.yaml", "--jobs", "2", "-q", "-o", "out.json"], tmp_path)
    parent = psutil.Process(proc.pid)
    give_up = time.monotonic() + 60
    workers: list[psutil.Process] = []
    # both workers started, and busy (torch imported, audits running): over a second of CPU each
    while len(workers) < 2 or min(w.cpu_times().user for w in workers) < 1.0:
        assert proc.poll() is None and time.monotonic() < give_up, proc.communicate()
        time.sleep(0.2)
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
    children = parent.children()  # the workers and multiprocessing's resource tracker
    proc.kill()  # SIGKILL: no handler, no finally
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=5)
    # an orphan that died but that no init reaps (a container's pid 1) is a zombie: it is gone
    alive = [w for w in alive if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    for w in alive:
        w.kill()
    assert alive == [], "workers outlived their parent"
    assert not (tmp_path / "out.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "batch.yaml", "c.onnx"]


def test_without_the_parent_death_signal_a_worker_still_sees_its_parent_go(tmp_path):
    """The fallback where the kernel cannot be asked (not Linux): the worker polls its parent's pid."""
    worker = textwrap.dedent("""
        import os, sys, time
        sys.platform = "darwin"  # no prctl: only the polling thread watches
        from stabaudit import batching
        batching.PARENT_POLL_S = 0.05
        batching._die_with_parent(os.getppid())
        time.sleep(60)
    """)
    middle = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {worker!r}])
        print(child.pid, flush=True)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", middle], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    child = psutil.Process(int(done.stdout))
    try:
        child.wait(timeout=3)
    except psutil.TimeoutExpired:
        child.kill()
        raise AssertionError("the worker outlived its parent") from None
    except psutil.NoSuchProcess:
        pass


def test_ctrl_c_on_a_batch_gives_one_line_and_stops_the_workers(tmp_path):
    """Ctrl-C reaches the whole process group: the workers ignore it (no traceback of theirs), the
    parent answers with its one line and stops them."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.onnx").write_bytes((ROOT / "sample_models" / "cnn.onnx").read_bytes())
    (tmp_path / "batch.yaml").write_text("defaults:\n  budget: 60\nmodels:\n  - path: '*.onnx'\n")
    proc = subprocess.Popen([sys.executable, "-m", "stabaudit", "batch", "batch.yaml", "--jobs", "2", "-o", "out.json"],
                            cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    parent = psutil.Process(proc.pid)
    give_up = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while len(workers) < 2 or min(w.cpu_times().user for w in workers) < 1.0:
        assert proc.poll() is None and time.monotonic() < give_up, proc.communicate()
        time.sleep(0.2)
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.splitlines() == [LINES[signal.SIGINT]], err
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert [w for w in alive if w.is_running() and w.status() != psutil.STATUS_ZOMBIE] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "batch.yaml", "c.onnx"]


def test_a_signal_after_the_files_are_in_place_says_so(tmp_path):
    done = _python("""
        import os, signal
        from pathlib import Path
        from stabaudit import atomic, interrupts
        interrupts.install()
        atomic.write_files([("{}", Path("r.json")), ("# r", Path("r.md"))])
        os.kill(os.getpid(), signal.SIGTERM)
    """, tmp_path)
    assert done.returncode == 143
    assert done.stderr.splitlines() == ["error: terminated (SIGTERM) after the report files were written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_a_signal_another_thread_takes_during_the_renames_is_handled_after_them(monkeypatch):
    """A process-directed SIGTERM may be delivered to any thread that does not block it; Python
    then runs the handler in the main thread inside the block. It is recorded and handled after."""
    from stabaudit import interrupts

    calls: list[int] = []

    def exit_now(signum: int) -> None:  # os._exit in the command line: it never returns
        calls.append(signum)
        raise SystemExit(interrupts.exit_code(signum))

    monkeypatch.setattr(interrupts, "exit_now", exit_now)
    monkeypatch.setattr(interrupts._STATE, "raising", False)  # outside a command's body
    with pytest.raises(SystemExit) as ended, interrupts.deferred():
        interrupts._handler(signal.SIGTERM, None)  # as Python runs it when another thread took it
        assert calls == []
    assert calls == [signal.SIGTERM] and ended.value.code == 143  # ended after the block
