"""The isolated TorchScript load (loaders.ts_child): hostile archives that the user trusts
(--trust-torchscript) run their code in a child process with a memory cap, a deadline, no shared
stdout and a working directory of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabaudit.errors import (
    InternalError,
    ModelLoadError,
    ResourceError,
    UnsupportedOperatorError,
    UntrustedModelError,
)
from stabaudit.limits import use_limits
from stabaudit.loaders import load_model, ts_child
from stabaudit.loaders.base import EQUIVALENCE_SAMPLES, seeded_feeds
from stabaudit.loaders.torchscript import load_torchscript

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"


# ---- hostile modules: each __setstate__ runs inside torch.jit.load --------------------------------
class _State(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)


class Prints(_State):
    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        print("pwned by __setstate__")


class Loops(_State):
    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        i = 0
        while i >= 0:
            i = (i + 1) % 1000


class Allocates(_State):
    def __init__(self) -> None:
        super().__init__()
        self.big = torch.zeros(1)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        self.big = torch.ones([805306368])  # 3 GiB of float32, every page written


class WritesRelative(_State):
    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        torch.save(self.weight, "written_by_setstate.pt")


def _script(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path), _extra_files={"stabaudit.json": '{"input_shape": [1, 4]}'})
    return path


def _cli(model: Path, *extra: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``stabaudit check MODEL --format json -q --trust-torchscript ...`` in a subprocess (the
    archive's print writes to the process's own stdout); this checkout's package first."""
    env = {**os.environ, "STABAUDIT_NO_CACHE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "stabaudit", "check", str(model), "--format", "json", "-q", "--budget", "0.3",
         "--trust-torchscript", *extra],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---- (1) a print in the archive does not reach the report -------------------------------------------
def test_a_printing_setstate_leaves_the_json_report_intact(tmp_path: Path) -> None:
    model = _script(Prints(), tmp_path / "prints.pt")
    proc = _cli(model)
    assert proc.returncode == 0, proc.stderr
    assert "pwned" not in proc.stdout + proc.stderr
    report = json.loads(proc.stdout)  # the whole of stdout is the report
    assert report["model"]["format"] == "torchscript" and report["lipschitz"]["certified"]
    # the same module without the isolation prints (the threat is real)
    code = f"from stabaudit.loaders.torchscript import load_torchscript; load_torchscript({str(model)!r}, trust_code=True)"
    direct = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert "pwned by __setstate__" in direct.stdout


# ---- (2) the deadline kills the child --------------------------------------------------------------
def test_a_looping_setstate_is_killed_at_the_timeout(tmp_path: Path) -> None:
    model = _script(Loops(), tmp_path / "loops.pt")
    start = time.monotonic()
    proc = _cli(model, "--timeout", "5", timeout=60)
    elapsed = time.monotonic() - start
    line = _one_error(proc)
    assert "timed out after 5 s (--timeout)" in line and "loops.pt" in line
    assert elapsed < 15, elapsed  # 5 s, plus the CLI's start-up (imports) and the child's kill


def test_the_timeout_applies_in_process_too(tmp_path: Path) -> None:
    """Through load_model under limits.run_with_timeout (the SIGALRM path of engine.audit)."""
    from stabaudit.limits import AuditTimeoutError, run_with_timeout

    model = _script(Loops(), tmp_path / "loops.pt")
    start = time.monotonic()
    with pytest.raises(AuditTimeoutError):
        run_with_timeout(lambda: load_model(model, trust_torchscript=True), 3.0, path=str(model))
    assert time.monotonic() - start < 8


# ---- (3) the memory cap -----------------------------------------------------------------------------
_PEAK_PROBE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(p.returncode)\n"
)


def test_an_allocating_setstate_hits_the_memory_limit(tmp_path: Path) -> None:
    model = _script(Allocates(), tmp_path / "alloc.pt")
    # the CLI runs under a probe process whose only children are the CLI and, reaped by it, its
    # loading process: their peak resident size, whatever else this test process ran before
    env = {**os.environ, "STABAUDIT_NO_CACHE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, sys.executable, "-m", "stabaudit", "check", str(model), "--format", "json",
         "-q", "--budget", "0.3", "--trust-torchscript", "--max-memory", "1G"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=180,
    )
    line = _one_error(proc)
    assert "loading needed more than the memory limit of 1 GiB (--max-memory)" in line and "alloc.pt" in line
    # the 3 GiB were never resident
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert 0 < peak < 2 * 2**30, peak


def test_the_memory_limit_through_load_model(tmp_path: Path) -> None:
    model = _script(Allocates(), tmp_path / "alloc.pt")
    with use_limits(max_memory=2**30), pytest.raises(ResourceError, match=r"^loading needed more than the memory limit"):
        load_model(model, trust_torchscript=True)


# ---- (4) a working directory of its own ----------------------------------------------------------
def test_a_relative_write_does_not_land_in_the_callers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _script(WritesRelative(), tmp_path / "writes.pt")
    caller = tmp_path / "caller"
    caller.mkdir()
    proc = _cli(model, cwd=caller)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(caller)) == []
    monkeypatch.chdir(caller)
    load_model(model, trust_torchscript=True)
    assert sorted(os.listdir(caller)) == []
    # in process, the same archive writes there
    load_torchscript(model, trust_code=True)
    assert sorted(os.listdir(caller)) == ["written_by_setstate.pt"]


# ---- (5) the normal path: the same model as an in-process load ----------------------------------------
@pytest.mark.parametrize("name", ["mlp.pt", "resnet.pt"])
def test_the_isolated_load_gives_the_in_process_model(name: str) -> None:
    isolated, direct = load_model(SAMPLES / name, seed=7), load_torchscript(SAMPLES / name)
    assert isolated.graph.inputs == direct.graph.inputs and isolated.graph.outputs == direct.graph.outputs
    assert dict(isolated.graph.shapes) == dict(direct.graph.shapes)
    assert [n.name for n in isolated.graph.nodes] == [n.name for n in direct.graph.nodes]
    for a, b in zip(isolated.graph.nodes, direct.graph.nodes, strict=True):
        for field, value in vars(b.op).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(a.op, field), value)  # bit for bit
            else:
                assert getattr(a.op, field) == value, field
    assert (isolated.parameters, isolated.precision, isolated.notes, dict(isolated.source_ops)) == (
        direct.parameters, direct.precision, direct.notes, dict(direct.source_ops))
    assert isolated.parameterisation is not None and direct.parameterisation is not None
    assert isolated.parameterisation.parameters == direct.parameterisation.parameters
    # the recorded reference: the module's outputs at the seeded equivalence inputs, exactly
    rng = np.random.default_rng(7)
    for _ in range(EQUIVALENCE_SAMPLES):
        feeds = seeded_feeds(isolated.graph.inputs, isolated.precision, rng)
        for got, want in zip(isolated.reference(feeds), direct.reference(feeds), strict=True):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(InternalError, match="seeded inputs of the equivalence check only"):
        isolated.reference({s.name: np.zeros(s.shape, np.float32) for s in isolated.graph.inputs})


# ---- errors keep their class, message and fields ----------------------------------------------------
def test_a_loader_error_in_the_child_is_the_same_error(tmp_path: Path) -> None:
    class Sign(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sign(x)

    model = _script(Sign(), tmp_path / "sign.pt")
    with pytest.raises(UnsupportedOperatorError) as isolated:
        load_model(model)
    with pytest.raises(UnsupportedOperatorError) as direct:
        load_torchscript(model)
    assert str(isolated.value) == str(direct.value) and isolated.value.counts == direct.value.counts
    assert isolated.value.path == str(model) and isolated.value.problems == direct.value.problems
    bad = tmp_path / "bad.pt"  # a TorchScript zip whose pickle torch cannot read
    with zipfile.ZipFile(SAMPLES / "mlp.pt") as source, zipfile.ZipFile(bad, "w") as target:
        for info in source.infolist():
            target.writestr(info, b"junk" if info.filename.endswith("/data.pkl") else source.read(info))
    with pytest.raises(UntrustedModelError, match="data.pkl is a pickle the gate cannot read"):
        load_model(bad)  # the gate's refusal, from the child
    with pytest.raises(ModelLoadError) as isolated_bad:
        load_model(bad, trust_torchscript=True)
    with pytest.raises(ModelLoadError) as direct_bad:
        load_torchscript(bad, trust_code=True)
    assert type(isolated_bad.value) is type(direct_bad.value) is ModelLoadError
    assert str(isolated_bad.value) == str(direct_bad.value) and "not a loadable TorchScript archive" in str(direct_bad.value)


def test_a_child_killed_by_a_signal_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"killed by SIGSEGV \(the memory limit of 1 GiB may have been hit"):
        ts_child._outcome(-11, tmp_path / "none", "m.pt", 2**30)
    with pytest.raises(ModelLoadError, match=r"exited with status 3 without a result"):
        ts_child._outcome(3, tmp_path / "none", "m.pt", 2**30)


def test_the_result_reader_builds_data_only(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    result = tmp_path / "result.pkl"
    result.write_bytes(pickle.dumps(("ok", Evil())))
    with pytest.raises(ModelLoadError, match="unreadable result .*is not allowed"):
        ts_child._outcome(0, result, "m.pt", 2**30)


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed by SIGKILL (no cleanup runs) takes its loading process with it."""
    model = _script(Loops(), tmp_path / "loops.pt")
    code = ("import sys; from stabaudit.loaders import load_model; "
            f"load_model({str(model)!r}, trust_torchscript=True)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    children: list[int] = []
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline:
        time.sleep(0.2)
        with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as handle:
            children = [int(p) for p in handle.read().split()]
    assert children, "no loading process started"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(children[0])


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.mark.parametrize("name", ["cnn.pt", "resnet.pt"])
def test_the_report_is_the_in_process_loads_byte_for_byte(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole JSON report of an isolated load equals the one of an in-process load (the
    recorded reference answers SA902 with the very outputs the module gives in process)."""
    from stabaudit.engine import AuditRequest, audit
    from stabaudit.renderers import RENDERERS, OutputFormat

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    request = AuditRequest(path=SAMPLES / name, seed=3, lower_budget_s=0.3, budget_s=0.3)
    isolated = RENDERERS.get(OutputFormat.JSON)(audit(request))

    def in_process(path, *, input_shape=None, trust_code=False, seed=0, jobs=None, cuda=False, arguments=None):  # type: ignore[no-untyped-def]
        return load_torchscript(path, input_shape=input_shape, trust_code=trust_code, arguments=arguments)

    monkeypatch.setattr(ts_child, "load_isolated", in_process)
    direct = RENDERERS.get(OutputFormat.JSON)(audit(request))
    assert isolated == direct
    assert '"reference": "torchscript"' in isolated
