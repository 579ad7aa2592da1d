"""The table on a terminal: fitted to its width, status in colour; NO_COLOR and FORCE_COLOR honoured;
files and pipes get the plain table whatever the terminal."""

from __future__ import annotations

import io
import re

import pytest

from stabaudit.renderers.table import WIDTH, colour_enabled, colourise, render_table
from tests.report_factory import make_report

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_width_folds_the_detail_column_only_on_request() -> None:
    report = make_report()
    plain = render_table(report)
    token = WIDTH.set(66)
    try:
        fitted = render_table(report)
    finally:
        WIDTH.reset(token)
    rows = [line for line in fitted.splitlines() if re.match(r"SA\d{3}\s", line)]
    assert rows and all(len(line) <= 66 for line in rows)
    assert len(fitted.splitlines()) > len(plain.splitlines())  # something was folded
    # the same words, folded: nothing is cut
    assert re.sub(r"\s+", " ", plain).count("K >= 1.5") == re.sub(r"\s+", " ", fitted).count("K >= 1.5")
    assert render_table(report) == plain  # no width once the terminal context is gone


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [({}, True, True), ({}, False, False), ({"NO_COLOR": "1"}, True, False), ({"FORCE_COLOR": "1"}, False, True),
     ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False)],
)
def test_colour_follows_the_terminal_and_the_environment(
    env: dict[str, str], tty: bool, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert colour_enabled(_Tty() if tty else io.StringIO()) is expected


def test_colour_marks_statuses_and_the_verdict_and_nothing_else() -> None:
    text = render_table(make_report())
    painted = colourise(text)
    assert ANSI.sub("", painted) == text
    verdict = next(line for line in painted.splitlines() if line.startswith("verdict:"))
    assert "\x1b[32mPASS\x1b[0m" in verdict
    assert all(not ANSI.search(line) for line in painted.splitlines() if not re.match(r"(SA\d{3}|verdict:)", line))


def test_a_missing_upper_end_reads_none_not_a_method() -> None:
    """A model without a global upper end (a Softmax with no domain): the line names no method, which
    would read as a bound; one with an upper end names its method and whether it is certified."""
    from dataclasses import replace

    base = make_report()
    line = next(x for x in render_table(base).splitlines() if x.startswith("Global Lipschitz bracket"))
    assert "upper: product (certified)" in line
    report = replace(base, lipschitz=replace(base.lipschitz, upper=None, certified=False))
    line = next(x for x in render_table(report).splitlines() if x.startswith("Global Lipschitz bracket"))
    assert "upper: none; lower: search" in line
