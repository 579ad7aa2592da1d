"""The distributions: the wheel's and the sdist's contents and metadata, the single version, the
vendored SARIF schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

import stabaudit
from stabaudit.cli import app
from tests.sarif_schema import SARIF_SCHEMA, validate_sarif

ROOT = Path(__file__).resolve().parents[1]
# What MANIFEST.in and pyproject.toml read: the sdist is built from a copy of these alone.
SOURCES = (
    "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "Makefile",
    "constraints.txt", ".pre-commit-hooks.yaml", "stabaudit", "tests", "sample_models", "examples",
    "docs", "scripts",
)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "golden_update*")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The wheel and the sdist, built by setuptools' PEP 517 backend from a copy of the sources
    (what `python -m build --no-isolation` calls; no index is needed), and the build's log."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_IGNORE)
        else:
            shutil.copy2(path, src / name)
    script = (
        "import sys; from setuptools import build_meta as b; "
        "out = sys.argv[1]; s = b.build_sdist(out); w = b.build_wheel(out); print('built:', s, w)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script, str(out)],
        cwd=src, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("built: ")]
    sdist_name, wheel_name = line.split()[1:]
    return out / wheel_name, out / sdist_name, done.stdout + done.stderr


def test_version_lives_in_stabaudit_init_only():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "stabaudit.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", stabaudit.__version__)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"stabaudit {stabaudit.__version__}\n"


def test_wheel_metadata_and_contents(built):
    wheel, _, log = built
    # the licence is an SPDX expression (PEP 639): setuptools no longer warns about the table
    assert "SetuptoolsDeprecationWarning" not in log and "project.license" not in log, log
    version = stabaudit.__version__
    assert wheel.name == f"stabaudit-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"stabaudit-{version}.dist-info"
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert meta["Name"] == "stabaudit" and meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0" and f"{info}/licenses/LICENSE" in names
    requires = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]: r for r in meta.get_all("Requires-Dist")}
    # a range, so that installing stabaudit never replaces the torch of a training environment
    assert requires["torch"] == "torch>=2.2"
    assert not any("==" in r.split(";")[0] for r in requires.values()), requires
    assert "stabaudit = stabaudit.entry:main" in entry_points  # signal handlers before the imports
    # every module of the package is in the wheel (a subpackage without __init__.py would not be)
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "stabaudit").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules and modules <= names, sorted(modules - names)
    assert not any(n.startswith("tests/") for n in names)


def test_sdist_holds_what_its_tests_need(built):
    _, sdist, _ = built
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "pyproject.toml", "LICENSE", "constraints.txt", "stabaudit/cli.py", "tests/conftest.py",
        "tests/schemas/sarif-schema-2.1.0.json", "sample_models/cnn.onnx",
        "examples/github-actions.yml",
    ):
        assert needed in names, needed
    assert not any("__pycache__" in n for n in names)


def test_the_vendored_sarif_schema_is_the_oasis_2_1_0_schema():
    schema = json.loads(SARIF_SCHEMA.read_text())
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert schema["properties"]["version"]["enum"] == ["2.1.0"]
    tool = {"driver": {"name": "stabaudit"}}
    validate_sarif({"version": "2.1.0", "runs": [{"tool": tool, "results": []}]})
    # what it rejects: a wrong version, a run without its tool, a result level SARIF does not know
    for bad in (
        {"version": "2.0.0", "runs": []},
        {"version": "2.1.0", "runs": [{"results": []}]},
        {"version": "2.1.0", "runs": [{"tool": tool, "results": [{"message": {"text": "x"}, "level": "fatal"}]}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_sarif(bad)
