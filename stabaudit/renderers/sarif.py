"""SARIF 2.1.0: a rules catalogue from the check docstrings, one result per check, layers as
logical locations, the model files as artifacts; a batch is one run over every model file."""

from __future__ import annotations

import json
from typing import Any

from stabaudit.renderers.base import BATCH_RENDERERS, RENDERERS, OutputFormat
from stabaudit.report.model import (
    BatchReport,
    Finding,
    ModelError,
    Report,
    RuleInfo,
    Severity,
    Status,
    ToolInfo,
)
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


def _physical(uri: str, index: int) -> dict[str, Any]:
    return {"physicalLocation": {"artifactLocation": {"uri": uri, "index": index}}}


def _result(f: Finding, index: dict[str, int], uri: str, artifact: int) -> dict[str, Any]:
    location = _physical(uri, artifact)
    if f.locations:
        location["logicalLocations"] = [{"name": name, "kind": "member"} for name in f.locations]
    result: dict[str, Any] = {
        "ruleId": f.id,
        "ruleIndex": index[f.id],
        "kind": _KIND[f.status],
        "level": _LEVEL[f.severity] if f.status is Status.FAIL else "none",
        "message": {"text": f"{f.name}: {f.status.value}: {f.message}"},
        "locations": [location],
        "properties": {"status": f.status.value, "value": plain(f.value), "threshold": plain(f.threshold)},
    }
    if f.waiver is not None:
        # SARIF 2.1.0 §3.27.23 / §3.35: a waiver in the audit config is a suppression kept outside
        # the analysed file ("external"); viewers hide the result but keep it, and the reason.
        result["suppressions"] = [{"kind": "external", "justification": f.waiver.reason}]
        result["properties"]["waiver"] = plain(f.waiver)
    return result


def _rules(rules: list[RuleInfo]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.doc},
            "help": {"text": f"{r.doc}\n\nRun `stabaudit explain {r.id}` for the same text."},
            "defaultConfiguration": {"level": _LEVEL[r.severity]},
            "properties": {"defaultThreshold": r.default_threshold},
        }
        for r in rules
    ]


def _artifact(report: Report) -> dict[str, Any]:
    return {
        "location": {"uri": report.model.path},
        "hashes": {"sha-256": report.model.sha256},
        "properties": {"format": report.model.format},
    }


def _driver(tool: ToolInfo, rules: list[RuleInfo]) -> dict[str, Any]:
    return {
        "driver": {
            "name": tool.name,
            "version": tool.version,
            "semanticVersion": tool.version,
            "rules": _rules(rules),
        }
    }


def _document(run: dict[str, Any]) -> str:
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _lipschitz(report: Report) -> Any:
    return report_to_dict(report)["lipschitz"] | {"witness": None}


@RENDERERS.register(OutputFormat.SARIF)
def render_sarif(report: Report) -> str:
    index = {r.id: i for i, r in enumerate(report.rules)}
    run = {
        "tool": _driver(report.tool, list(report.rules)),
        "artifacts": [_artifact(report)],
        "results": [_result(f, index, report.model.path, 0) for f in report.checks if f.id in index],
        "properties": {
            "verdict": report.verdict,
            "exitCode": report.exit_code,
            "lipschitz": _lipschitz(report),
            "created": report.created,
        },
    }
    return _document(run)


@BATCH_RENDERERS.register(OutputFormat.SARIF)
def render_batch_sarif(batch: BatchReport) -> str:
    # One catalogue for the run: every rule any report carries, first description wins, by id.
    catalogue: dict[str, RuleInfo] = {}
    for entry in batch.models:
        if isinstance(entry, Report):
            for rule in entry.rules:
                catalogue.setdefault(rule.id, rule)
    rules = [catalogue[k] for k in sorted(catalogue)]
    index = {r.id: i for i, r in enumerate(rules)}
    # One artifact per model file, also those that could not be audited (notifications point at them).
    artifacts: list[dict[str, Any]] = []
    where: dict[str, int] = {}
    for entry in batch.models:
        path = entry.path if isinstance(entry, ModelError) else entry.model.path
        if path not in where:
            where[path] = len(artifacts)
            artifacts.append(_artifact(entry) if isinstance(entry, Report) else {"location": {"uri": path}})
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for entry in batch.models:
        match entry:
            case ModelError(path=path, error=error):
                notifications.append(
                    {
                        "level": "error",
                        "message": {"text": error},
                        "locations": [_physical(path, where[path])],
                        "properties": {"exitCode": entry.exit_code},
                    }
                )
                models.append({"path": path, "verdict": "error", "exitCode": entry.exit_code})
            case Report(model=model):
                results += [
                    _result(f, index, model.path, where[model.path]) for f in entry.checks if f.id in index
                ]
                models.append(
                    {
                        "path": model.path,
                        "verdict": entry.verdict,
                        "exitCode": entry.exit_code,
                        "lipschitz": _lipschitz(entry),
                    }
                )
    run = {
        "tool": _driver(batch.tool, rules),
        "invocations": [
            {
                "executionSuccessful": not notifications,
                "exitCode": batch.exit_code,
                "toolExecutionNotifications": notifications,
            }
        ],
        "artifacts": artifacts,
        "results": results,
        "properties": {
            "verdict": batch.verdict,
            "exitCode": batch.exit_code,
            "config": batch.config,
            "created": batch.created,
            "models": models,
        },
    }
    return _document(run)
