"""The YAML configuration: schema, loading and validation."""

from stabaudit.config.inputs import load_samples
from stabaudit.config.loader import (
    ResolvedModel,
    find_default_config,
    load_config,
    resolve_models,
    resolve_one,
)
from stabaudit.config.schema import METHODS, ConfigFile, ModelEntry, Settings, WaiverEntry

__all__ = [
    "METHODS",
    "ConfigFile",
    "ModelEntry",
    "ResolvedModel",
    "Settings",
    "WaiverEntry",
    "find_default_config",
    "load_config",
    "load_samples",
    "resolve_models",
    "resolve_one",
]
