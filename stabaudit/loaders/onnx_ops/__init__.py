"""ONNX operator translators, one module per op family, registered by explicit imports."""

from stabaudit.loaders.onnx_ops import (  # noqa: F401  (imported to register their translators)
    activations,
    arithmetic,
    attention,
    contrib,
    conv,
    linear,
    ml,
    normalization,
    pooling,
    qlinear,
    quantization,
    recurrent,
    reduction,
    resize,
    selection,
    spectral,
    structure,
)
from stabaudit.loaders.onnx_ops.common import TRANSLATORS, Context, OnnxNode, Unsupported, wrap_node
from stabaudit.loaders.onnx_ops.folding import FOLDERS, fold, foldable
from stabaudit.loaders.onnx_ops.patterns import ANCHORS, fuse_patterns

__all__ = [
    "ANCHORS", "FOLDERS", "TRANSLATORS", "Context", "OnnxNode", "Unsupported", "fold", "foldable",
    "fuse_patterns", "wrap_node",
]
