"""SARIF 2.1.0: a rules catalogue from the check docstrings, one result per check, layers as
logical locations, the model file as the artifact."""

from __future__ import annotations

import json
from typing import Any

from stabaudit.renderers.base import RENDERERS, OutputFormat
from stabaudit.report.model import Finding, Report, Severity, Status
from stabaudit.report.serialize import plain, report_to_dict

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# SARIF result kinds: a proved violation is a "fail", an undecided bracket needs "review".
_KIND = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.INCONCLUSIVE: "review",
    Status.SKIPPED: "notApplicable",
}


def _result(f: Finding, index: dict[str, int], uri: str) -> dict[str, Any]:
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}},
    }
    if f.locations:
        location["logicalLocations"] = [{"name": name, "kind": "member"} for name in f.locations]
    return {
        "ruleId": f.id,
        "ruleIndex": index[f.id],
        "kind": _KIND[f.status],
        "level": _LEVEL[f.severity] if f.status is Status.FAIL else "none",
        "message": {"text": f"{f.name}: {f.status.value}: {f.message}"},
        "locations": [location],
        "properties": {"status": f.status.value, "value": plain(f.value), "threshold": plain(f.threshold)},
    }


@RENDERERS.register(OutputFormat.SARIF)
def render_sarif(report: Report) -> str:
    rules = [
        {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.doc},
            "help": {"text": f"{r.doc}\n\nRun `stabaudit explain {r.id}` for the same text."},
            "defaultConfiguration": {"level": _LEVEL[r.severity]},
            "properties": {"defaultThreshold": r.default_threshold},
        }
        for r in report.rules
    ]
    index = {r.id: i for i, r in enumerate(report.rules)}
    data = report_to_dict(report)
    run = {
        "tool": {
            "driver": {
                "name": report.tool.name,
                "version": report.tool.version,
                "semanticVersion": report.tool.version,
                "rules": rules,
            }
        },
        "artifacts": [
            {
                "location": {"uri": report.model.path},
                "hashes": {"sha-256": report.model.sha256},
                "properties": {"format": report.model.format},
            }
        ],
        "results": [_result(f, index, report.model.path) for f in report.checks if f.id in index],
        "properties": {
            "verdict": report.verdict,
            "exitCode": report.exit_code,
            "lipschitz": data["lipschitz"] | {"witness": None},
            "created": report.created,
        },
    }
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
