"""TorchScript operator translators, one module per op family, registered by explicit import."""

from stabaudit.loaders.ts_ops import (  # noqa: F401  (imported for their registrations)
    activations,
    arithmetic,
    attention,
    linear,
    normalization,
    pooling,
    recurrent,
    reduction,
    resize,
    spectral,
    structural,
)
from stabaudit.loaders.ts_ops.base import POISON, TRANSLATORS, SourceNode, Unsupported, Var

__all__ = ["POISON", "TRANSLATORS", "SourceNode", "Unsupported", "Var"]
