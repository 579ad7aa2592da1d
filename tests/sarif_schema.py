"""Validation of SARIF documents against the vendored OASIS SARIF 2.1.0 schema (tests/schemas)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SARIF_SCHEMA = Path(__file__).resolve().parent / "schemas" / "sarif-schema-2.1.0.json"


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))


def validate_sarif(doc: Any) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` is valid SARIF 2.1.0 (validated with the
    draft the schema declares, draft-04)."""
    import jsonschema

    jsonschema.validate(doc, _schema(), cls=jsonschema.Draft4Validator)
