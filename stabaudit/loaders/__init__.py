"""Model loaders: a file (ONNX or TorchScript, detected from its content) -> LoadedModel."""

from __future__ import annotations

from pathlib import Path

from stabaudit.loaders.base import LoadedModel, ModelFormat
from stabaudit.loaders.detect import detect_format


def load_model(
    path: str | Path, *, input_shape: tuple[int, ...] | None = None, trust_torchscript: bool = False
) -> LoadedModel:
    """Load ``path`` into the IR with its reference runtime; ``input_shape`` fixes the first
    input's dynamic dims; ``trust_torchscript`` skips the static gate of TorchScript code
    (loaders.ts_gate). Every failure is a ModelLoadError carrying ``path``."""
    if detect_format(path) is ModelFormat.TORCHSCRIPT:
        from stabaudit.loaders.torchscript import load_torchscript

        return load_torchscript(path, input_shape=input_shape, trust_code=trust_torchscript)
    from stabaudit.loaders.onnx import load_onnx

    return load_onnx(path, input_shape=input_shape)


def supported_operators() -> dict[str, list[str]]:
    """The source operators each loader translates, keyed by format name."""
    from stabaudit.loaders.onnx import supported_operators as onnx_operators
    from stabaudit.loaders.torchscript import supported_operators as torchscript_operators

    return {ModelFormat.ONNX.value: onnx_operators(), ModelFormat.TORCHSCRIPT.value: torchscript_operators()}


__all__ = ["LoadedModel", "ModelFormat", "detect_format", "load_model", "supported_operators"]
