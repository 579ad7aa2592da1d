"""--max-memory is enforced for the whole process: an allocation beyond the cap stops the audit
with exit code 2 and an incomplete report, and the process's peak resident memory stays under it
(measured in a child process: resource.getrusage(RUSAGE_CHILDREN))."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stabaudit.limits import memory_cap, process_memory

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "sample_models" / "mlp.onnx"
MIB = 2**20

# The child: stabaudit's CLI on the sample MLP, its layer_bounds stage replaced by one that touches
# 64 MiB blocks until 4 GiB (far beyond the cap); the cap is the child's resident memory once torch
# and stabaudit are imported plus HEADROOM. It prints the cap it asked for.
CHILD = textwrap.dedent("""
    import dataclasses, sys
    import numpy as np
    import torch  # noqa: F401  (imported before the cap is measured, as the CLI does)
    import stabaudit.stages as S
    from stabaudit.limits import process_memory

    def layer_bounds(request, ev):
        blocks = []
        for _ in range(64):
            blocks.append(np.ones(8 * 2**20))  # 64 MiB, every page touched

    S.STAGES = tuple(dataclasses.replace(s, run=layer_bounds) if s.name == "layer_bounds" else s for s in S.STAGES)
    cap = process_memory()[0] + int(sys.argv[1])
    print(cap, flush=True)
    sys.argv = ["stabaudit", "check", sys.argv[2], "--method", "product", "--max-memory", str(cap),
                "-o", sys.argv[3], "-q"]
    from stabaudit.entry import main
    main()
""")
HEADROOM = 384 * MIB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_an_allocation_beyond_the_cap_ends_in_exit_2_under_the_cap(tmp_path):
    out = tmp_path / "r.json"
    # a wrapper process runs only the child, so that its RUSAGE_CHILDREN is the child's own peak
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-c", CHILD, str(HEADROOM), str(MLP), str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT), "STABAUDIT_NO_CACHE": "1"},
    )
    cap, peak_kib = (int(x) for x in proc.stdout.split()[-2:])
    peak = peak_kib * 1024  # ru_maxrss is in KiB on Linux
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error: " in proc.stderr and "(--max-memory)" in proc.stderr
    assert peak <= cap, (peak / MIB, cap / MIB)  # 4 GiB asked for, the cap held
    assert peak >= cap - HEADROOM // 2  # the blocks were allocated up to the cap (not refused early)
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["exit_code"] == 2
    assert data["stopped"]["reason"] == "memory" and data["stopped"]["stage"] == "layer_bounds"
    assert data["layers"] == [] and data["equivalence"]["passed"] is True


def test_a_cap_below_what_the_process_holds_is_refused_at_once():
    from stabaudit.limits import MemoryLimitError

    now = process_memory()
    if now is None:
        pytest.skip("no /proc/self/statm here")
    with pytest.raises(MemoryLimitError, match=r"the process holds ~.* above the memory budget of 1 KiB"), memory_cap(1024):
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)
    with memory_cap(now[0] + 512 * MIB) as enforced:
        assert enforced and resource.getrlimit(resource.RLIMIT_AS)[0] <= now[1] + 512 * MIB
        with memory_cap(2**40) as nested:  # one cap at a time: the inner one is not enforced
            assert not nested
    assert resource.getrlimit(resource.RLIMIT_AS) == soft  # restored
    with memory_cap(None) as none:
        assert not none


def test_failed_allocations_are_recognised_through_their_chain():
    import errno

    from stabaudit.errors import InternalError
    from stabaudit.limits import is_allocation_failure, raise_allocation_failure

    torch_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 1342177280 bytes. Error code 12 (Cannot allocate memory)")
    assert is_allocation_failure(MemoryError()) and is_allocation_failure(torch_oom)
    assert is_allocation_failure(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert is_allocation_failure(ImportError("libfoo.so: failed to map segment from shared object"))
    try:
        try:
            raise torch_oom
        except RuntimeError as exc:
            raise InternalError("lower bound: node 'fc' (Linear): failed") from exc
    except InternalError as wrapped:
        assert is_allocation_failure(wrapped)
    for other in (RuntimeError("vmap: no batching rule for aten::foo"), ValueError("bad"), OSError(errno.ENOENT, "x")):
        assert not is_allocation_failure(other)
        raise_allocation_failure(other)  # a fallback stays a fallback
    with pytest.raises(MemoryError):
        raise_allocation_failure(MemoryError())
