"""JUnit XML: one ``testcase`` per check result, in one ``testsuite`` for the enclave.

``fail`` becomes a ``failure`` and ``error`` an ``error`` element, each with the evidence as its
text; ``waived`` is ``skipped`` with the waiver (who, until when, why) as its message and
``not-applicable`` is ``skipped`` too, so a dashboard never counts either as a pass it did not
see. The test name is ``ID target`` and the class name ``enclave.NAME.ID``; the check's
severity and mappings are ``properties`` of the test case (the schema Jenkins and GitLab read
allows them there).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from enclave.compliance.model import Status
from enclave.compliance.reporters._text import evidence_lines, mapping_text

if TYPE_CHECKING:
    from enclave.compliance.model import CheckResult, Report

__all__ = ["to_junit"]


def _case(parent: ET.Element, report: Report, result: CheckResult) -> None:
    check = result.check
    case = ET.SubElement(
        parent,
        "testcase",
        name=f"{check.id} {result.target}",
        classname=f"enclave.{report.enclave}.{check.id}",
        time="0",
    )
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="severity", value=check.severity.value)
    ET.SubElement(props, "property", name="title", value=check.title)
    for family, ids in check.mappings.as_dict().items():
        if ids:
            ET.SubElement(props, "property", name=family, value=", ".join(ids))
    body = "\n".join([*evidence_lines(result), f"controls: {mapping_text(result)}"])
    if result.status is Status.FAIL:
        failure = ET.SubElement(
            case, "failure", message=f"{check.title} ({check.severity.value})", type="fail"
        )
        failure.text = f"{body}\nfix: {check.remediation.strip()}"
    elif result.status is Status.ERROR:
        error = ET.SubElement(case, "error", message=result.message or "could not be judged")
        error.text = body
    elif result.status is Status.WAIVED:
        waiver = result.waiver
        message = (
            f"waived until {waiver.expires} by {waiver.approver}: {waiver.reason}"
            if waiver is not None
            else "waived"
        )
        skipped = ET.SubElement(case, "skipped", message=message)
        skipped.text = body
    elif result.status is Status.NOT_APPLICABLE:
        ET.SubElement(case, "skipped", message="not applicable")


def to_junit(report: Report) -> str:
    counts = report.counts()
    suites = ET.Element("testsuites", name=f"enclave {report.enclave} compliance")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"enclave.{report.enclave}",
        tests=str(len(report.results)),
        failures=str(counts[Status.FAIL.value]),
        errors=str(counts[Status.ERROR.value]),
        skipped=str(counts[Status.WAIVED.value] + counts[Status.NOT_APPLICABLE.value]),
        time=f"{report.seconds:.3f}",
        timestamp=report.started,
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="baseline", value=report.baseline)
    ET.SubElement(props, "property", name="baseline-sha256", value=report.baseline_sha256)
    for result in report.results:
        _case(suite, report, result)
    for key in ("tests", "failures", "errors", "skipped", "time"):
        suites.set(key, suite.get(key, "0"))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
