"""--help lists choices and metavars a user can type, and shell completion offers the same choices."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from stabaudit import cli
from stabaudit.config import METHODS
from stabaudit.renderers.base import OutputFormat
from stabaudit.report.gate import FailOn


def test_choices_are_the_values_the_options_accept() -> None:
    assert tuple(f.value for f in OutputFormat) == cli.FORMATS
    assert tuple(f.value for f in FailOn) == cli.FAIL_ON
    assert tuple(METHODS) == cli.METHOD_CHOICES


@pytest.mark.parametrize("command", ["check", "batch", "trajectory"])
def test_help_shows_no_python_types(command: str) -> None:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "160", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    own = [line for line in result.output.splitlines()  # our options (typer's own flags aside)
           if re.match(r"\W*--", line) and not re.search(r"--(help|install-completion|show-completion)\b", line)]
    assert own
    assert [line for line in own if re.search(r"<(bool|list\[\w+\])>", line)] == []


def test_help_lists_the_fail_on_levels_and_devices() -> None:
    text = CliRunner().invoke(cli.app, ["check", "--help"], env={"COLUMNS": "160", "NO_COLOR": "1"}).output
    assert "error|warning|inconclusive" in text and "cpu|cuda" in text and "NAME=VALUE" in text


def test_shell_completion_is_offered() -> None:
    text = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "160", "NO_COLOR": "1"}).output
    assert "--install-completion" in text and "--show-completion" in text
