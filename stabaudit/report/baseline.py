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


def same_model_path(a: str, b: str) -> bool:
    """Whether two model paths name the same file: as written, or once resolved against the
    working directory (`models/a.onnx`, `./models/a.onnx` and its absolute path are one model)."""
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def load_baseline(path: Path, model_path: str) -> Mapping[str, Any]:
    """The baseline report for ``model_path`` from a single or a batch JSON report (a batch
    entry is matched by its model path)."""
    data = read_report_json(path)
    if "models" in data:
        for entry in data["models"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), dict):
                continue
            if same_model_path(str(entry["model"].get("path", "")), model_path):
                return entry
        raise UsageError(f"--baseline {path}: the batch report has no entry for {model_path}")
    if not isinstance(data.get("lipschitz"), dict):
        raise UsageError(f"--baseline {path}: the report has no 'lipschitz' section")
    return data


def other_model(baseline: Mapping[str, Any], sha256: str, input_shape: tuple[int, ...]) -> str | None:
    """Why ``baseline`` is a report of another model, or None: its sha256 AND its input shape both
    differ from this model's (a retrained model keeps its shape, a reshaped one its bytes; a model
    that changed both is not the one the baseline measured, and SA001 would compare unrelated
    bounds). A baseline without those fields cannot be told apart: None."""
    model = baseline.get("model")
    if not isinstance(model, dict):
        return None
    old_sha, old_shape = model.get("sha256"), model.get("input_shape")
    if not isinstance(old_sha, str) or not isinstance(old_shape, list):
        return None
    if old_sha == sha256 or [int(d) for d in old_shape if isinstance(d, int)] == list(input_shape):
        return None
    return (
        f"the baseline is a report of another model ({model.get('path', '?')}: sha256 {old_sha[:12]}, "
        f"input shape {old_shape}; this model: sha256 {sha256[:12]}, input shape {list(input_shape)}); "
        "pass --baseline-any-model to compare them anyway"
    )
