"""Renderers: one module per output format, registered by explicit import."""

from stabaudit.renderers import github, gitlab, html, json, junit, markdown, sarif, table  # noqa: F401  (registration)
from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    TRAJECTORY_RENDERERS,
    BatchRenderer,
    OutputFormat,
    Renderer,
)

__all__ = ["BATCH_RENDERERS", "RENDERERS", "TRAJECTORY_RENDERERS", "BatchRenderer", "OutputFormat", "Renderer"]
