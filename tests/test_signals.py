"""Interrupts: SIGINT exits 130 and SIGTERM 143, leaving no report and no partial file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "stabaudit"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_file(tmp_path, sig, code):
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [str(EXE), "check", str(ROOT / "sample_models" / "cnn.onnx"), "--budget", "60", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a job started in the background inherits SIGINT ignored (shell job control): the child
        # gets the default disposition, as an interactive Ctrl-C would find it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(6.0)  # imports and loading done: inside the analyses
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().startswith("error: ") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
