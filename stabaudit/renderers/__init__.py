"""Renderers: one module per output format, registered by explicit import."""

from stabaudit.renderers import json, junit, markdown, sarif, table  # noqa: F401  (registration)
from stabaudit.renderers.base import RENDERERS, OutputFormat

__all__ = ["RENDERERS", "OutputFormat"]
