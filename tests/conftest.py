"""Shared pytest fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The result cache is on by default for users; in the suite it would let one test's audit answer
# another's (timeouts, signals, timings). Cache tests name --cache-dir explicitly.
os.environ["STABAUDIT_NO_CACHE"] = "1"
# The cache's MAC key lives in the user's config directory: the suite (and its subprocesses) use
# one of their own, never the developer's.
_KEY_DIR = tempfile.mkdtemp(prefix="stabaudit-key-")
atexit.register(shutil.rmtree, _KEY_DIR, True)
os.environ["STABAUDIT_CACHE_KEY_FILE"] = str(Path(_KEY_DIR) / "cache.key")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_MODELS = REPO_ROOT / ".." / "shared" / "models" / "external"


@pytest.fixture(scope="session")
def external_dir() -> Path:
    """The real networks under repo_root/../shared/models/external (skips when absent)."""
    if not EXTERNAL_MODELS.is_dir():
        pytest.skip("no external networks at ../shared/models/external")
    return EXTERNAL_MODELS.resolve()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False, help="rewrite the golden files of renderer tests"
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
