"""Model loaders: a file (ONNX or TorchScript, detected from its content) -> LoadedModel."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stabaudit.loaders.base import LoadedModel, ModelFormat
from stabaudit.loaders.detect import detect_format


def load_model(
    path: str | Path, *, input_shape: tuple[int, ...] | None = None, trust_torchscript: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None, start: str | None = None,
    perturb: tuple[str, ...] = (), end: tuple[str, ...] = (), seed: int = 0,
    module_jobs: Mapping[str, Callable[[LoadedModel], Any]] | None = None, cuda: bool = False,
    arguments: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load ``path`` into the IR with its reference runtime; ``input_shape`` fixes the first
    input's dynamic dims; ``trust_torchscript`` skips the static gate of TorchScript code
    (loaders.ts_gate). Every failure is a ModelLoadError carrying ``path``.

    A TorchScript archive is loaded in a child process (loaders.ts_child: memory cap, deadline,
    no shared stdout, a working directory of its own): its reference then answers the ``seed``ed
    inputs of the equivalence check (analyses.equivalence) only, and ``module_jobs`` (picklable
    functions of the loaded model that need the module itself) run there, their results in
    ``LoadedModel.module_results`` (``cuda``: they run on CUDA), and ``arguments`` gives the values
    of forward's non-tensor arguments by name (loaders.ts_signature). For ONNX, ``module_jobs`` are
    not run, and ``arguments`` give the values of integer and bool inputs, held constant."""
    if detect_format(path) is ModelFormat.TORCHSCRIPT:
        from stabaudit.loaders.ts_child import load_isolated

        if input_shapes or start is not None or perturb or end:
            from stabaudit.errors import ModelLoadError

            raise ModelLoadError("--input-shape NAME=..., --from, --to and --perturb apply to ONNX models only",
                                 path=str(path))
        from stabaudit.loaders.torchscript import precheck_archive

        precheck_archive(Path(path), str(path))
        return load_isolated(path, input_shape=input_shape, trust_code=trust_torchscript, seed=seed, jobs=module_jobs,
                             cuda=cuda, arguments=arguments)
    from stabaudit.loaders.onnx import load_onnx

    return load_onnx(path, input_shape=input_shape, input_shapes=input_shapes, start=start, perturb=perturb, end=end,
                     arguments=arguments)


def supported_operators() -> dict[str, list[str]]:
    """The source operators each loader translates, keyed by format name."""
    from stabaudit.loaders.onnx import supported_operators as onnx_operators
    from stabaudit.loaders.torchscript import supported_operators as torchscript_operators

    return {ModelFormat.ONNX.value: onnx_operators(), ModelFormat.TORCHSCRIPT.value: torchscript_operators()}


# Source operators whose IR operator has no global Lipschitz constant (bounds.domain: the global
# bound is none until a bounded input domain is given), with the variant that needs it.
DOMAIN_OPERATORS: dict[str, dict[str, str]] = {
    ModelFormat.ONNX.value: {
        "Mul": "of two variables", "Div": "of two variables", "MatMul": "of two variables",
        "Gemm": "with a variable B", "Pow": "exponent > 1", "Sqrt": "", "Reciprocal": "", "Exp": "", "Log": "",
        "ReduceSumSquare": "", "ai.onnx.ml.Normalizer": "a division by the row's norm",
        "Attention": "q k^T and the weighted values", "com.microsoft.Attention": "q k^T and the weighted values", "com.microsoft.MultiHeadAttention": "q k^T and the weighted values",
    },
    ModelFormat.TORCHSCRIPT.value: {},
}


def domain_operators() -> dict[str, dict[str, str]]:
    """The supported source operators (per format) that need a bounded input domain, with the
    variant that does ("" for every use)."""
    supported = supported_operators()
    return {fmt: {op: why for op, why in ops.items() if op in supported.get(fmt, [])}
            for fmt, ops in DOMAIN_OPERATORS.items()}


__all__ = ["DOMAIN_OPERATORS", "LoadedModel", "ModelFormat", "detect_format", "domain_operators", "load_model",
           "supported_operators"]
