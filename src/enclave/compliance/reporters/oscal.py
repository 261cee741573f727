"""OSCAL assessment-results (JSON, OSCAL 1.2.1): one result per run of the baseline.

Layout::

    assessment-results
      uuid, metadata {title, last-modified, version, oscal-version}
      import-ap {href}                  the baseline stands in for the assessment plan
      results[0]
        uuid, title, description, start, end
        reviewed-controls               every NIST SP 800-53 control the checks map to
        observations[]                  one per check result: methods TEST, the evidence
        findings[]                      one per check result: target objective-id
                                        ``<control>_obj`` with status satisfied /
                                        not-satisfied, related-observations -> its observation

Status: ``pass`` is satisfied; ``fail`` and ``waived`` are not-satisfied (reason ``fail``; a
waiver is a recorded acceptance, not a fix: it is in the finding's remarks); ``error`` is
not-satisfied with reason ``other`` (could not be judged, never satisfied);
``not-applicable`` is satisfied with reason ``other`` and says so in its remarks. The enclave
status and the check's other mappings are ``props`` in the ``https://enclave.dev/ns/oscal``
namespace. Control ids are OSCAL's form of the NIST ids (``AC-6(9)`` -> ``ac-6.9``).

UUIDs are version 5, derived from the enclave, the run's start and the baseline digest: the
same report always gives the same document.

The tests validate the document against NIST's OSCAL schema, offline, through the pydantic
models that ``compliance-trestle`` generates from the OSCAL JSON schema (a development
dependency; the reporter itself needs nothing): required fields, no unknown ones, UUID,
token, date-time and URI formats, enumerated values. :data:`OSCAL_VERSION` is the version of
the schema those models were generated from, and a test keeps the two in step.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave._version import __version__
from enclave.compliance.model import Status
from enclave.compliance.reporters._text import short

if TYPE_CHECKING:
    from enclave.compliance.model import CheckResult, Report

__all__ = ["NS", "OSCAL_VERSION", "control_id", "to_oscal"]

OSCAL_VERSION = "1.2.1"
NS = "https://enclave.dev/ns/oscal"
_NIST = re.compile(r"^([A-Za-z]{2})-(\d+)(?:\((\d+)\))?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STATES: dict[Status, tuple[str, str]] = {
    Status.PASS: ("satisfied", "pass"),
    Status.FAIL: ("not-satisfied", "fail"),
    Status.WAIVED: ("not-satisfied", "fail"),
    Status.ERROR: ("not-satisfied", "other"),
    Status.NOT_APPLICABLE: ("satisfied", "other"),
}


def control_id(nist: str) -> str:
    """``AC-6(9)`` -> ``ac-6.9``; anything else lowercased with non-token characters dotted."""
    found = _NIST.match(nist.strip())
    if found:
        family, number, enhancement = found.groups()
        base = f"{family.lower()}-{int(number)}"
        return f"{base}.{int(enhancement)}" if enhancement else base
    return re.sub(r"[^a-z0-9._-]", ".", nist.strip().lower())


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _line(text: str) -> str:
    """``text`` as OSCAL's one-line strings need it (titles, prop values): control characters
    and runs of white space become one space, no space at either end, never empty. A target's
    name is text the inspected system chose."""
    return " ".join(_CONTROL.sub(" ", text).split()) or "-"


def _prop(name: str, value: str) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": _line(value)}


def _observation(result: CheckResult, ident: str, collected: str) -> dict[str, Any]:
    check = result.check
    evidence = [
        {"description": f"{name} = {short(value)}"} for name, value in result.evidence.items()
    ]
    if result.message:
        evidence.insert(0, {"description": f"why: {result.message}"})
    found: dict[str, Any] = {
        "uuid": ident,
        "title": _line(f"{check.id} on {result.target}"),
        "description": f"{check.title}: {result.status.value} ({result.target}).",
        "props": [
            _prop("check-id", check.id),
            _prop("target", result.target),
            _prop("result-status", result.status.value),
        ],
        "methods": ["TEST"],
        "types": ["finding"],
        "collected": collected,
    }
    if evidence:
        found["relevant-evidence"] = evidence
    return found


def _finding(result: CheckResult, ident: str, observation: str) -> dict[str, Any]:
    check = result.check
    state, reason = _STATES[result.status]
    controls = [control_id(c) for c in check.mappings.nist_800_53]
    props = [
        _prop("check-id", check.id),
        _prop("severity", check.severity.value),
        _prop("result-status", result.status.value),
    ]
    for family, ids in check.mappings.as_dict().items():
        props.extend(_prop(f"mapping-{family.replace('.', '-')}", i) for i in ids)
    remarks = {
        Status.ERROR: f"Could not be judged: {result.message or 'no reason given'}.",
        Status.NOT_APPLICABLE: "Not applicable to this target.",
    }.get(result.status, "")
    if result.waiver is not None:
        w = result.waiver
        remarks = f"Waived until {w.expires} by {w.approver}: {w.reason}"
    status: dict[str, Any] = {"state": state, "reason": reason}
    if remarks:
        status["remarks"] = remarks
    return {
        "uuid": ident,
        "title": _line(f"{check.id} {check.title} ({result.target})"),
        "description": f"{' '.join(check.rationale.split())} "
        f"Remediation: {' '.join(check.remediation.split())}",
        "props": props,
        "target": {
            "type": "objective-id",
            "target-id": f"{controls[0]}_obj",
            "status": status,
        },
        "related-observations": [{"observation-uuid": observation}],
    }


def to_oscal(report: Report, *, assessment_plan: str | None = None) -> str:
    """The report as an OSCAL assessment-results document (JSON text).

    ``assessment_plan`` is the ``import-ap`` href; the default is the baseline's file URI.
    """
    root = uuid.uuid5(
        uuid.NAMESPACE_URL, f"{NS}/{report.enclave}/{report.started}/{report.baseline_sha256}"
    )

    def ident(*parts: str) -> str:
        return str(uuid.uuid5(root, "/".join(parts)))

    start = _time(report.started)
    end = _stamp(start + timedelta(seconds=max(report.seconds, 0.0)))
    observations: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    controls: dict[str, None] = {}
    for n, result in enumerate(report.results):
        key = (str(n), result.check.id, result.target)
        obs = ident("observation", *key)
        observations.append(_observation(result, obs, report.started))
        findings.append(_finding(result, ident("finding", *key), obs))
        controls.update(dict.fromkeys(control_id(c) for c in result.check.mappings.nist_800_53))
    counts = report.counts()
    summary = ", ".join(f"{counts[s.value]} {s.value}" for s in Status)
    href = assessment_plan or Path(report.baseline).absolute().as_uri()
    document = {
        "assessment-results": {
            "uuid": str(root),
            "metadata": {
                "title": f"Enclave {report.enclave}: compliance assessment results",
                "last-modified": end,
                "version": __version__,
                "oscal-version": OSCAL_VERSION,
                "props": [_prop("baseline-sha256", report.baseline_sha256)],
            },
            "import-ap": {"href": href},
            "results": [
                {
                    "uuid": ident("result"),
                    "title": f"Baseline run on enclave {report.enclave}",
                    "description": f"{len(report.results)} results: {summary}.",
                    "start": report.started,
                    "end": end,
                    "reviewed-controls": {
                        "control-selections": [
                            {"include-controls": [{"control-id": c} for c in controls]}
                        ]
                    },
                    "observations": observations,
                    "findings": findings,
                }
            ],
        }
    }
    return json.dumps(document, indent=2, default=str) + "\n"
