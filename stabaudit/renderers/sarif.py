"""SARIF 2.1.0 for code scanning: the non-passing findings (all with all_results) with stable
fingerprints and repository-relative URIs, a rules catalogue from the check docstrings."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    OutputFormat,
    fingerprint,
    repo_path,
    shown_in_ci,
)
from stabaudit.report.gate import gates
from stabaudit.report.model import (
    BatchReport,
    Finding,
    ModelError,
    Report,
    RuleInfo,
    Severity,
    Status,
    ToolInfo,
    stopped_line,
)
from stabaudit.report.serialize import plain, report_to_dict

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# Artifact URIs are relative to this base (SARIF 2.1.0 §3.4.4, §3.14.14): the directory stabaudit
# ran in, the repository root in CI. GitHub code scanning resolves %SRCROOT% to the checkout.
URI_BASE = "%SRCROOT%"
FINGERPRINT_KEY = "stabaudit/v1"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# SARIF result kinds: a proved violation is a "fail", an undecided bracket needs "review".
_KIND = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.INCONCLUSIVE: "review",
    Status.SKIPPED: "notApplicable",
}


def _uri(path: str) -> str:
    """The repository-relative path, percent-encoded (code scanning validates uri-reference)."""
    return quote(repo_path(path), safe="/")


def _physical(path: str, index: int) -> dict[str, Any]:
    return {
        "physicalLocation": {"artifactLocation": {"uri": _uri(path), "uriBaseId": URI_BASE, "index": index}}
    }


def _level(f: Finding, fail_on: str) -> str:
    """The gate decides: a finding that fails the gate is an error, a failure below --fail-on a
    warning (a note at severity info), anything else informational."""
    if gates(f, fail_on):
        return "error"
    if f.status is Status.FAIL:
        return "note" if f.severity is Severity.INFO else "warning"
    return "note" if f.status is Status.INCONCLUSIVE else "none"


def _result(f: Finding, index: dict[str, int], path: str, artifact: int, fail_on: str) -> dict[str, Any]:
    location = _physical(path, artifact)
    if f.locations:
        location["logicalLocations"] = [{"name": name, "kind": "member"} for name in f.locations]
    gating = gates(f, fail_on)
    result: dict[str, Any] = {
        "ruleId": f.id,
        "ruleIndex": index[f.id],
        "kind": _KIND[f.status],
        "level": _level(f, fail_on),
        "message": {"text": f"{f.name}: {f.status.value}: {f.message}"},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(f.id, path, f.locations)},
        "properties": {
            "status": f.status.value,
            "gating": gating,
            "value": plain(f.value),
            "threshold": plain(f.threshold),
        },
    }
    if f.waiver is not None:
        # SARIF 2.1.0 §3.27.23 / §3.35: a waiver in the audit config is a suppression kept outside
        # the analysed file ("external"); viewers hide the result but keep it, and the reason.
        result["suppressions"] = [{"kind": "external", "justification": f.waiver.reason}]
        result["properties"]["waiver"] = plain(f.waiver)
    return result


def _rules(rules: list[RuleInfo], docs_url: str | None) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        anchor = r.id.lower()
        markdown = (
            f"**{r.id} {r.name}**\n\n{r.doc}\n\n"
            f"`stabaudit explain {r.id}` prints this text; it is also the section `{r.id}` of "
            f"docs/theory.md in the stabaudit source tree."
        )
        rule: dict[str, Any] = {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.doc},
            "help": {"text": f"{r.doc}\n\nRun `stabaudit explain {r.id}` for the same text.", "markdown": markdown},
            "defaultConfiguration": {"level": _LEVEL[r.severity]},
            "properties": {"defaultThreshold": r.default_threshold},
        }
        # helpUri must be an absolute URI (code scanning validates it); stabaudit has no website,
        # so it is written only when the docs are published somewhere (STABAUDIT_DOCS_URL).
        if docs_url:
            rule["helpUri"] = f"{docs_url}#{anchor}"
        out.append(rule)
    return out


def _artifact(report: Report) -> dict[str, Any]:
    artifact: dict[str, Any] = {
        "location": {"uri": _uri(report.model.path), "uriBaseId": URI_BASE},
        "properties": {"format": report.model.format},
    }
    if report.model.sha256:  # a refused model that could not be read has none
        artifact["hashes"] = {"sha-256": report.model.sha256}
    return artifact


def _driver(tool: ToolInfo, rules: list[RuleInfo], docs_url: str | None) -> dict[str, Any]:
    return {
        "driver": {
            "name": tool.name,
            "version": tool.version,
            "semanticVersion": tool.version,
            "rules": _rules(rules, docs_url),
        }
    }


def _run_frame(automation_id: str) -> dict[str, Any]:
    return {
        # category/ (trailing slash: the category alone): code scanning keeps one alert set per
        # category, so the audits of different models or configs do not close each other's alerts
        "automationDetails": {"id": f"stabaudit/{automation_id}/"},
        "originalUriBaseIds": {
            URI_BASE: {"description": {"text": "The working directory of the run (the repository root in CI)."}}
        },
        "columnKind": "unicodeCodePoints",
    }


def _document(run: dict[str, Any]) -> str:
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _lipschitz(report: Report) -> Any:
    return report_to_dict(report)["lipschitz"] | {"witness": None}


def _listed(report: Report, all_results: bool) -> list[Finding]:
    ids = {r.id for r in report.rules}
    return [f for f in report.checks if f.id in ids and (all_results or shown_in_ci(f))]


def render_sarif(report: Report, *, all_results: bool = False, docs_url: str | None = None) -> str:
    """One run over one model file; only findings that are not pass or skipped unless
    ``all_results`` (--sarif-all)."""
    index = {r.id: i for i, r in enumerate(report.rules)}
    run = _run_frame(repo_path(report.model.path)) | {
        "tool": _driver(report.tool, list(report.rules), docs_url),
        "artifacts": [_artifact(report)],
        "results": [_result(f, index, report.model.path, 0, report.fail_on) for f in _listed(report, all_results)],
        "properties": {
            "verdict": report.verdict,
            "exitCode": report.exit_code,
            "lipschitz": _lipschitz(report),
            "created": report.created,
        },
    }
    if report.stopped is not None:  # the audit stopped early: the run says it did not finish
        line = stopped_line(report.stopped)
        run["invocations"] = [{
            "executionSuccessful": False,
            "exitCode": report.exit_code,
            "toolExecutionNotifications": [{"level": "error", "message": {"text": line}}],
        }]
        run["properties"] |= {"complete": False, "stopped": plain(report.stopped)}
    return _document(run)


def render_batch_sarif(batch: BatchReport, *, all_results: bool = False, docs_url: str | None = None) -> str:
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
            artifacts.append(
                _artifact(entry)
                if isinstance(entry, Report)
                else {"location": {"uri": _uri(path), "uriBaseId": URI_BASE}}
            )
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
                if entry.stopped is not None:  # an incomplete audit: its results stay, and it says so
                    notifications.append({
                        "level": "error",
                        "message": {"text": stopped_line(entry.stopped)},
                        "locations": [_physical(model.path, where[model.path])],
                        "properties": {"exitCode": entry.exit_code},
                    })
                results += [
                    _result(f, index, model.path, where[model.path], entry.fail_on)
                    for f in entry.checks
                    if f.id in index and (all_results or shown_in_ci(f))
                ]
                models.append(
                    {
                        "path": model.path,
                        "verdict": entry.verdict,
                        "exitCode": entry.exit_code,
                        "lipschitz": _lipschitz(entry),
                    }
                )
    run = _run_frame(f"batch/{repo_path(batch.config)}") | {
        "tool": _driver(batch.tool, rules, docs_url),
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


RENDERERS.register(OutputFormat.SARIF)(render_sarif)
BATCH_RENDERERS.register(OutputFormat.SARIF)(render_batch_sarif)
