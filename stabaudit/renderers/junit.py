"""JUnit XML: one test suite per model, one test case per check (CI test-report widgets); a model
that could not be audited is a suite whose one test case "audit" is an error. Only findings that
fail the gate are <failure>s; a failed check below --fail-on is a warning (system-out)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from stabaudit.renderers.base import (
    BATCH_RENDERERS,
    RENDERERS,
    OutputFormat,
    gate_counts,
    is_failing,
    waiver_note,
)
from stabaudit.report.gate import why_not_gating
from stabaudit.report.model import BatchReport, ModelError, Report, Status, stopped_line

_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _counts(report: Report) -> tuple[int, int]:
    """(failures, skipped) as the gate sees them: failures are the findings that fail the gate at
    the report's --fail-on; a waived failure is skipped, a warning is neither."""
    failures = sum(is_failing(f, report.fail_on) for f in report.checks)
    skipped = sum(
        not is_failing(f, report.fail_on)
        and (f.waiver is not None or f.status in (Status.SKIPPED, Status.INCONCLUSIVE))
        for f in report.checks
    )
    return failures, skipped


def _suite(parent: ET.Element, report: Report) -> None:
    failures, skipped = _counts(report)
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=report.model.path,
        tests=str(len(report.checks)),
        failures=str(failures),
        skipped=str(skipped),
        errors="0" if report.stopped is None else "1",
        timestamp=report.created.removesuffix("Z"),
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    if report.stopped is not None:  # the audit stopped early: one error case says so
        ET.SubElement(props, "property", name="complete", value="false")
        line = stopped_line(report.stopped)
        case = ET.SubElement(suite, "testcase", classname=report.model.path, name="audit")
        ET.SubElement(case, "error", message=line, type=f"exit code {report.exit_code}").text = line
    ET.SubElement(props, "property", name="fail_on", value=report.fail_on)
    ET.SubElement(props, "property", name="warnings", value=str(gate_counts(report.checks, report.fail_on)[1]))
    for f in report.checks:
        case = ET.SubElement(suite, "testcase", classname=report.model.path, name=f"{f.id} {f.name}")
        text = f"[{f.severity.value}] {f.message}"
        if f.waiver is not None:
            ET.SubElement(case, "skipped", message=waiver_note(f.waiver))
        elif is_failing(f, report.fail_on):
            ET.SubElement(case, "failure", message=f.message, type=f.severity.value).text = text
        elif f.status is Status.FAIL:  # below --fail-on: a warning, which does not gate
            ET.SubElement(ET.SubElement(case, "properties"), "property", name="status", value="warn")
            ET.SubElement(case, "system-out").text = (
                f"[{f.severity.value}] warning, failed below --fail-on {report.fail_on} "
                f"({why_not_gating([f], report.fail_on)}): {f.message}"
            )
        elif f.status is Status.INCONCLUSIVE:
            ET.SubElement(case, "skipped", message=f"inconclusive: {f.message}")
        elif f.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=f.message)
        else:
            ET.SubElement(case, "system-out").text = text


def _error_suite(parent: ET.Element, entry: ModelError, created: str) -> None:
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=entry.path,
        tests="1",
        failures="0",
        skipped="0",
        errors="1",
        timestamp=created.removesuffix("Z"),
    )
    case = ET.SubElement(suite, "testcase", classname=entry.path, name="audit")
    ET.SubElement(case, "error", message=entry.error, type=f"exit code {entry.exit_code}").text = entry.error


def _document(suites: ET.Element) -> str:
    ET.indent(suites)
    return _HEADER + ET.tostring(suites, encoding="unicode") + "\n"


@RENDERERS.register(OutputFormat.JUNIT)
def render_junit(report: Report) -> str:
    failures, _ = _counts(report)
    suites = ET.Element("testsuites", name="stabaudit", tests=str(len(report.checks)), failures=str(failures))
    if report.stopped is not None:
        suites.set("errors", "1")
    _suite(suites, report)
    return _document(suites)


@BATCH_RENDERERS.register(OutputFormat.JUNIT)
def render_batch_junit(batch: BatchReport) -> str:
    tests = failures = errors = 0
    for entry in batch.models:
        match entry:
            case ModelError():
                tests, errors = tests + 1, errors + 1
            case Report():
                tests, failures = tests + len(entry.checks), failures + _counts(entry)[0]
                errors += entry.stopped is not None
    suites = ET.Element(
        "testsuites", name="stabaudit", tests=str(tests), failures=str(failures), errors=str(errors)
    )
    for entry in batch.models:
        match entry:
            case ModelError():
                _error_suite(suites, entry, batch.created)
            case Report():
                _suite(suites, entry)
    return _document(suites)
