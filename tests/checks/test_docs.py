"""docs/theory.md is generated from the checks' docstrings and kept in step with them."""

from __future__ import annotations

from pathlib import Path

from stabaudit.checks import CHECKS
from stabaudit.checks.docs import explain_text, theory_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_docs_theory_md_is_up_to_date():
    assert (ROOT / "docs" / "theory.md").read_text() == theory_markdown(), (
        "docs/theory.md is stale: run `make docs`"
    )


def test_every_check_explains_its_settings():
    for check_id in CHECKS:
        spec = CHECKS.get(check_id)
        text = explain_text(spec)
        assert text.startswith(f"{spec.id} {spec.name}\n")
        assert f"default severity {spec.severity.value}" in text
        assert f"severity: {{{spec.id}:" in text  # how to change it
        if spec.threshold_key:
            assert f"--threshold {spec.threshold_key}=VALUE" in text
        assert len(spec.doc.splitlines()) >= 3, f"{spec.id}: document what it proves and its inputs"
