"""Baselines: a previous JSON report (single or batch) read back for the SA001 comparison."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stabaudit.errors import UsageError


def read_report_json(path: Path) -> dict[str, Any]:
    """A previous stabaudit JSON report (single or batch), checked for its schema version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--baseline {path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != "1":
        raise UsageError(f"--baseline {path}: not a stabaudit JSON report (schema_version 1)")
    return data


def load_baseline(path: Path, model_path: str) -> Mapping[str, Any]:
    """The baseline report for ``model_path`` from a single or a batch JSON report."""
    data = read_report_json(path)
    if "models" in data:
        for entry in data["models"]:
            if isinstance(entry, dict) and entry.get("model", {}).get("path") == model_path:
                return entry
        raise UsageError(f"--baseline {path}: the batch report has no entry for {model_path}")
    if not isinstance(data.get("lipschitz"), dict):
        raise UsageError(f"--baseline {path}: the report has no 'lipschitz' section")
    return data
