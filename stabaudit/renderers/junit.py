"""JUnit XML: one test suite per model, one test case per check (CI test-report widgets)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from stabaudit.renderers.base import RENDERERS, OutputFormat
from stabaudit.report.model import Report, Status


@RENDERERS.register(OutputFormat.JUNIT)
def render_junit(report: Report) -> str:
    failures = sum(f.status is Status.FAIL for f in report.checks)
    skipped = sum(f.status in (Status.SKIPPED, Status.INCONCLUSIVE) for f in report.checks)
    suites = ET.Element("testsuites", name="stabaudit", tests=str(len(report.checks)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=report.model.path,
        tests=str(len(report.checks)),
        failures=str(failures),
        skipped=str(skipped),
        errors="0",
        timestamp=report.created.removesuffix("Z"),
    )
    for f in report.checks:
        case = ET.SubElement(suite, "testcase", classname=report.model.path, name=f"{f.id} {f.name}")
        text = f"[{f.severity.value}] {f.message}"
        if f.status is Status.FAIL:
            ET.SubElement(case, "failure", message=f.message, type=f.severity.value).text = text
        elif f.status is Status.INCONCLUSIVE:
            ET.SubElement(case, "skipped", message=f"inconclusive: {f.message}")
        elif f.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=f.message)
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
