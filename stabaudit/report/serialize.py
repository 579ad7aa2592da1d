"""The report as plain JSON data (CONTRACT.md, schema_version "1"): the one place field names live."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from stabaudit.report.model import SCHEMA_VERSION, BatchReport, ModelError, Report, TrajectoryReport

_T = TypeVar("_T")


def plain(value: Any) -> Any:
    """Plain JSON values: enums by value, tuples as lists, non-finite floats as null."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (_omitted_when_none(f) and getattr(value, f.name) is None)
            and not (_omitted_when_empty(f) and getattr(value, f.name) == ())
            and not (_omitted_when_default(f) and getattr(value, f.name) == f.default)
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _omitted_when_none(f: dataclasses.Field[Any]) -> bool:
    """A field whose key the JSON leaves out while its value is None (model.OMIT_WHEN_NONE)."""
    return bool(f.metadata.get("omit_when_none"))


def _omitted_when_empty(f: dataclasses.Field[Any]) -> bool:
    """A tuple field whose key the JSON leaves out while it is empty."""
    return bool(f.metadata.get("omit_when_empty"))


def _omitted_when_default(f: dataclasses.Field[Any]) -> bool:
    """A field whose key the JSON leaves out while it holds its default (model.OMIT_WHEN_DEFAULT)."""
    return bool(f.metadata.get("omit_when_default"))


def report_to_dict(report: Report) -> dict[str, Any]:
    data = plain(report)
    assert isinstance(data, dict)
    data["tool"] = {"name": report.tool.name, "version": report.tool.version}
    del data["rules"]  # the check catalogue: `stabaudit explain`, SARIF's rules
    return data


def batch_to_dict(batch: BatchReport) -> dict[str, Any]:
    """{"schema_version", "tool", "config", "created", "timings", "models": [report | {"path",
    "error", "exit_code"}], "verdict", "exit_code"} (CONTRACT.md batch report)."""
    data = {f.name: plain(getattr(batch, f.name)) for f in dataclasses.fields(batch) if f.name != "models"}
    data["models"] = [
        plain(m) if isinstance(m, ModelError) else report_to_dict(m) for m in batch.models
    ]
    return data


# Fields that report_to_dict leaves out: they come back with their defaults.
_NOT_SERIALIZED: dict[type, frozenset[str]] = {Report: frozenset({"rules"})}


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """The inverse of report_to_dict: ``report_to_dict(report_from_dict(d)) == d`` for every ``d``
    it produced. Nulls in float fields (non-finite floats) come back as None, ``rules`` as (),
    Finding.value/threshold as loaded. Anything else that does not fit the model (a missing or
    unknown key, a wrong type, an unknown enum value, another schema_version) raises ValueError
    naming the key path."""
    # Checked first: another schema's layout would otherwise fail on some inner key.
    if isinstance(data, Mapping) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ValueError(
            f"report.schema_version: {data['schema_version']!r} is not supported "
            f"(expected {SCHEMA_VERSION!r})"
        )
    return _decode_dataclass(Report, data, "report")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # model.py uses postponed annotations: resolve the strings once per class, not per instance.
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _decode_dataclass(cls: type[_T], data: Any, path: str) -> _T:
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected an object, got {_type_name(data)}")
    skipped = _NOT_SERIALIZED.get(cls, frozenset())
    fields = [f for f in dataclasses.fields(cls) if f.name not in skipped]  # type: ignore[arg-type]
    names = {f.name for f in fields}
    # Unknown keys would be dropped silently and break the exact round trip: refuse them.
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name not in data and _omitted_when_none(f):
            kwargs[f.name] = None
            continue
        if f.name not in data and _omitted_when_empty(f):
            kwargs[f.name] = ()
            continue
        if f.name not in data and _omitted_when_default(f):
            kwargs[f.name] = f.default
            continue
        if f.name not in data:
            raise ValueError(f"{path}.{f.name}: missing")
        kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{path}.{f.name}")
    return cls(**kwargs)


def _decode(tp: Any, value: Any, path: str) -> Any:
    """``value`` (plain JSON data) as an instance of the type annotation ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{path}: expected a value, got null")
        members = [a for a in args if a is not type(None)]
        if len(members) != 1:  # the report model only uses ``X | None``
            raise TypeError(f"{path}: unsupported annotation {tp!r}")
        return _decode(members[0], value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {_type_name(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        raise TypeError(f"{path}: unsupported annotation {tp!r}")
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected an object, got {_type_name(value)}")
        if key_type is not str:
            raise TypeError(f"{path}: unsupported annotation {tp!r}")
        return {str(k): _decode(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            known = ", ".join(repr(m.value) for m in tp)
            raise ValueError(f"{path}: {value!r} is not one of {known}") from None
    if tp is float:
        # plain() writes non-finite floats as null; JSON may also spell an integral float as an
        # int, kept as is so that the JSON text round-trips too. bool is an int but no number here.
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        raise ValueError(f"{path}: expected a number, got {_type_name(value)}")
    if tp is int or tp is str or tp is bool:
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ValueError(f"{path}: expected {tp.__name__}, got {_type_name(value)}")
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def trajectory_to_dict(trajectory: TrajectoryReport) -> dict[str, Any]:
    """{"schema_version", "tool", "config", "points": [{"step", "path", "verdict", "exit_code",
    "sha256", "channels", "error"}], "channels", "growth_upper", "growth_lower", "checks",
    "verdict", "exit_code", "fail_on", "created", "timings"}: every checkpoint in step order."""
    data = plain(trajectory)
    assert isinstance(data, dict)
    return data


def trajectory_from_dict(data: Mapping[str, Any]) -> TrajectoryReport:
    """The inverse of trajectory_to_dict (errors as in report_from_dict)."""
    if isinstance(data, Mapping) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ValueError(
            f"trajectory.schema_version: {data['schema_version']!r} is not supported "
            f"(expected {SCHEMA_VERSION!r})"
        )
    return _decode_dataclass(TrajectoryReport, data, "trajectory")
