"""The progress line: only on a terminal, ticking through a long phase; -v logs every phase anywhere."""

from __future__ import annotations

import io
import re
import time

from stabaudit.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_verbose_writes_one_line_per_phase_on_any_stream() -> None:
    out = io.StringIO()
    with Progress(enabled=True, label="m.onnx", stream=out, verbose=True) as progress:
        progress.phase("loading")
        progress.phase("equivalence")
    lines = out.getvalue().splitlines()
    assert [re.sub(r"\s+\d+\.\d+s", "", line) for line in lines] == [
        "stabaudit: m.onnx: loading", "stabaudit: m.onnx: equivalence"]


def test_no_progress_in_a_pipe_or_when_quiet() -> None:
    for stream, enabled in ((io.StringIO(), True), (_Tty(), False)):
        with Progress(enabled=enabled, label="m", stream=stream) as progress:
            progress.phase("loading")
        assert stream.getvalue() == ""


def test_the_line_keeps_ticking_through_a_long_phase_and_is_cleared() -> None:
    out = _Tty()
    with Progress(enabled=True, label="m", stream=out) as progress:
        progress.phase("lower bound search")
        time.sleep(1.3)
    text = out.getvalue()
    assert text.count("\rstabaudit m: lower bound search") >= 3  # redrawn by the ticker
    assert text.endswith("\r")  # cleared at the end


def test_a_batch_shows_work_done_and_an_estimate_of_what_is_left() -> None:
    from stabaudit.report.model import ModelError

    out = _Tty()
    with Progress(enabled=True, label="batch", stream=out, total=4) as progress:
        progress.step(1, 4, ModelError(path="a.onnx", error="boom", exit_code=2))
    text = out.getvalue()
    assert "1/4 models, 0 failed, 1 errors, about" in text and "s left" in text
