"""Detect a model file's format from its content, not only its suffix."""

from __future__ import annotations

import zipfile
from pathlib import Path

from stabaudit.errors import ModelLoadError
from stabaudit.loaders.base import ModelFormat

ZIP_MAGIC = b"PK\x03\x04"
NOT_TORCHSCRIPT = (
    "export with torch.jit.script/trace and torch.jit.save, e.g. "
    "torch.jit.save(torch.jit.script(model.eval()), 'model.pt') (a state dict holds only weights: load it into "
    "its model with model.load_state_dict first)"
)


def check_file(path: str | Path) -> Path:
    """The path of a readable, non-empty regular file, or a ModelLoadError saying what it is."""
    from stabaudit.paths import check_path_text

    check_path_text(path, error=ModelLoadError)  # before the file system sees it (NUL: ValueError)
    p = Path(path)
    try:
        if not p.exists():
            raise ModelLoadError("no such file", path=str(path))
        if p.is_dir():
            raise ModelLoadError("is a directory, not a model file", path=str(path))
        if not p.is_file():
            raise ModelLoadError("not a regular file", path=str(path))
        if p.stat().st_size == 0:
            raise ModelLoadError("empty file", path=str(path))
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror or exc})", path=str(path)) from exc
    return p


def _is_torchscript_entry(name: str) -> bool:
    """TorchScript archives hold ``<root>/code/...`` sources and ``<root>/constants.pkl``."""
    parts = name.split("/")
    return (len(parts) >= 3 and parts[1] == "code") or parts[-1] == "constants.pkl"


def detect_format(path: str | Path) -> ModelFormat:
    """ONNX or TorchScript from the file's first bytes; other formats are refused by name.

    A zip is a TorchScript archive when it has a ``code/`` folder or ``constants.pkl``; a zip
    with only ``data.pkl`` is a torch.save pickle. Pickles are never unpickled. Anything else
    is left to the ONNX parser, which says when it is not ONNX either.
    """
    p = check_file(path)
    with p.open("rb") as fh:
        head = fh.read(4)
    if head == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(p) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError) as exc:
            raise ModelLoadError(f"a damaged zip archive ({exc})", path=str(path)) from exc
        if any(_is_torchscript_entry(name) for name in names):
            return ModelFormat.TORCHSCRIPT
        if any(name.split("/")[-1] == "data.pkl" for name in names):
            raise ModelLoadError(f"a torch.save pickle, not a TorchScript archive: {NOT_TORCHSCRIPT}", path=str(path))
        raise ModelLoadError("a zip archive that is neither a TorchScript archive nor an ONNX model", path=str(path))
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5 header
        raise ModelLoadError(f"a Python pickle (as written by torch.save), not a TorchScript archive: {NOT_TORCHSCRIPT}", path=str(path))
    return ModelFormat.ONNX
