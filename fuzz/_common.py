"""Shared set-up of the atheris targets: repo on sys.path, corpus seeding, the one-input property."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def corpus_dir(target: str, seeds: Iterable[tuple[str, bytes]]) -> str:
    """A corpus folder ($FUZZ_CORPUS/<target>, default under the temp dir) holding the seeds."""
    base = Path(os.environ.get("FUZZ_CORPUS", Path(tempfile.gettempdir()) / "stabaudit-fuzz"))
    folder = base / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds:
        (folder / name).write_bytes(data)
    return str(folder)


def scratch_file(suffix: str) -> Path:
    """The per-process file each input is written to (loaders read paths, not bytes)."""
    folder = Path(tempfile.gettempdir()) / f"stabaudit-fuzz-work-{os.getpid()}" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "w.bin").write_bytes(bytes(64))  # an outside file for external-data inputs
    return folder / f"input{suffix}"


def run(target: str, seeds: Iterable[tuple[str, bytes]], test_one_input: Callable[[bytes], None]) -> None:
    """atheris.Setup with the seed corpus appended (unless a corpus or input is given), then Fuzz."""
    import atheris

    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(corpus_dir(target, seeds))
    if not any(a.startswith("-artifact_prefix=") for a in argv):  # findings outside the work tree
        artifacts = Path(os.environ.get("FUZZ_CORPUS", Path(tempfile.gettempdir()) / "stabaudit-fuzz")) / "findings"
        artifacts.mkdir(parents=True, exist_ok=True)
        argv.append(f"-artifact_prefix={artifacts}/{target}-")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def exercise(payload: bytes, path: Path) -> bool:
    """Write one input where the loaders read it, load it and run its reference once: only a
    StabauditError may escape the loader, and its message must be one clear line. Returns
    whether it loaded."""
    if not payload:
        return False
    import numpy as np

    from stabaudit.errors import StabauditError
    from stabaudit.loaders import load_model
    from tests.fuzz.harness import check_error

    path.write_bytes(payload)
    try:
        loaded = load_model(path)
        loaded.reference({s.name: np.zeros(s.shape, np.float32) for s in loaded.graph.inputs})
    except StabauditError as exc:
        check_error(exc)
        return False
    return True
