"""The audit YAML: loaded and validated, errors name the file, the line and the key path."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabaudit.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    thresholds: dict[str, float] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    seed: int | None = None
    fail_on: str | None = None


_KEYS = {"thresholds", "severity", "input_shape", "seed", "fail_on"}
_SEVERITIES = {"error", "warning", "info"}
_FAIL_ON = {"error", "warning", "inconclusive"}
MAX_SEED = 2**32 - 1  # every random generator the engine seeds accepts this range


def _one_line(exc: BaseException) -> str:
    """The first line of an error's text (YAML errors span several lines with a caret)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _fail(path: Path, node: Any, key_path: str, message: str) -> ConfigError:
    line = getattr(getattr(node, "start_mark", None), "line", None)
    where = f"{path}:{line + 1}" if line is not None else str(path)
    return ConfigError(f"{where}: {key_path}: {message}", path=str(path))


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def _items(path: Path, node: Any, prefix: str) -> list[tuple[str, Any, Any, Any]]:
    """(key, key node, plain value, value node) of a YAML mapping; duplicate keys are errors."""
    import yaml

    seen: set[str] = set()
    items = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _fail(path, key_node, prefix + "(key)", "expected a plain name as key, not a list or mapping")
        key = str(key_node.value)
        if key in seen:
            raise _fail(path, key_node, prefix + key, "duplicate key")
        seen.add(key)
        try:
            value = yaml.safe_load(yaml.serialize(value_node))
        except RecursionError:
            raise _fail(path, value_node, prefix + key, "invalid value: nested too deeply") from None
        except Exception as exc:  # SafeLoader's constructors fail in many ways: "!!int x", "!!int" empty
            raise _fail(path, value_node, prefix + key, f"invalid value: {_one_line(exc)}") from None
        items.append((key, key_node, value, value_node))
    return items


def load_config(path: str | Path) -> AuditConfig:
    """Parse and validate an audit config; every error is a ConfigError (exit code 2)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config: {exc}", path=str(p)) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML: {_one_line(getattr(exc, 'problem', None) or exc)}", path=str(p)) from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply", path=str(p)) from None
    if root is None:
        return AuditConfig()
    if not isinstance(root, yaml.MappingNode):
        raise _fail(p, root, "(top level)", "expected a mapping of settings")
    out: dict[str, Any] = {}
    for key, key_node, value, value_node in _items(p, root, ""):
        if key not in _KEYS:
            raise _fail(p, key_node, key, "unknown key" + _suggest(key, _KEYS))
        if key == "thresholds":
            if not isinstance(value_node, yaml.MappingNode):
                raise _fail(p, value_node, key, "expected a mapping NAME: number")
            thresholds = {}
            for name, _, number, number_node in _items(p, value_node, "thresholds."):
                if isinstance(number, bool) or not isinstance(number, int | float) or math.isnan(number):
                    raise _fail(p, number_node, f"thresholds.{name}", "expected a number")
                thresholds[name] = float(number)
            out[key] = thresholds
        elif key == "severity":
            if not isinstance(value_node, yaml.MappingNode):
                raise _fail(p, value_node, key, "expected a mapping CHECK_ID: error|warning|info")
            severities = {}
            for name, _, level, level_node in _items(p, value_node, "severity."):
                if not isinstance(level, str) or level not in _SEVERITIES:
                    raise _fail(p, level_node, f"severity.{name}", "expected one of error, warning, info")
                severities[name] = str(level)
            out[key] = severities
        elif key == "input_shape":
            if not isinstance(value, list) or not value or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
            ):
                raise _fail(p, value_node, key, "expected a list of positive integers")
            out[key] = tuple(value)
        elif key == "seed":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
                raise _fail(p, value_node, key, f"expected a non-negative integer (at most {MAX_SEED})")
            out[key] = value
        elif key == "fail_on":
            if not isinstance(value, str) or value not in _FAIL_ON:
                raise _fail(p, value_node, key, "expected one of error, warning, inconclusive")
            out[key] = value
    return AuditConfig(**out)
