"""SARIF 2.1.0: one rule per baseline check, one result per check result.

* a rule's ``help`` is the check's rationale and remediation; its ``properties`` carry the
  control mappings (``nist-800-53``, ``cis-docker``, ``cis-kubernetes``, ``nist-ai-rmf``,
  ``dodd-3000.09``), ``tags`` and a numeric ``security-severity`` (read by code-scanning UIs);
* a result's ``level`` comes from the check's severity (:data:`LEVELS`) for ``fail``,
  ``error`` and ``waived``; a ``pass`` or ``not-applicable`` result has ``kind`` ``pass`` /
  ``notApplicable`` and ``level`` ``none``, as the specification requires for those kinds;
* an ``error`` (could not be judged) is ``kind: fail`` with ``properties.status: error``: a
  tool that only reads levels never takes it for a pass;
* a ``waived`` result keeps its level and carries an accepted external ``suppression`` whose
  justification is the waiver (shown, not hidden);
* the location is logical: the target (``container enclave-demo-gateway``, ``host``...). No
  physical location exists, so tools that insist on a file (GitHub code scanning) will not
  place these results on a line.

Checked in the tests by hand against the 2.1.0 structure: the OASIS JSON schema is not
available offline here, and ``jsonschema`` is not a dependency.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from enclave._version import __version__
from enclave.compliance.model import Severity, Status
from enclave.compliance.reporters._text import evidence_lines, mapping_text

if TYPE_CHECKING:
    from collections.abc import Iterable

    from enclave.compliance.model import Check, CheckResult, Report

__all__ = ["LEVELS", "SCHEMA", "SECURITY_SEVERITY", "to_sarif"]

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS: dict[Severity, str] = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
}
SECURITY_SEVERITY: dict[Severity, str] = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
}
_KINDS = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.ERROR: "fail",
    Status.WAIVED: "fail",
    Status.NOT_APPLICABLE: "notApplicable",
}


def _rule(check: Check) -> dict[str, Any]:
    mappings = check.mappings.as_dict()
    tags = ["security", "compliance", check.target.value]
    tags += [f"{family}/{i}" for family, ids in mappings.items() for i in ids]
    help_text = f"{check.rationale.strip()}\n\nRemediation: {check.remediation.strip()}"
    help_md = f"{check.rationale.strip()}\n\n**Remediation:** {check.remediation.strip()}"
    return {
        "id": check.id,
        "name": check.id.replace("-", ""),
        "shortDescription": {"text": check.title},
        "fullDescription": {"text": check.rationale.strip()},
        "help": {"text": help_text, "markdown": help_md},
        "defaultConfiguration": {"level": LEVELS[check.severity]},
        "properties": {
            "severity": check.severity.value,
            "security-severity": SECURITY_SEVERITY[check.severity],
            "target-kind": check.target.value,
            "tags": tags,
            **mappings,
        },
    }


def _message(result: CheckResult) -> str:
    check = result.check
    head = f"{check.id} {result.status.value}: {check.title} ({result.target})"
    lines = [head, *evidence_lines(result)]
    if result.status in (Status.FAIL, Status.WAIVED):
        lines.append(f"fix: {check.remediation.strip()}")
    lines.append(f"controls: {mapping_text(result)}")
    return "\n".join(lines)


def _result(report: Report, result: CheckResult, index: int) -> dict[str, Any]:
    check = result.check
    kind = _KINDS[result.status]
    found: dict[str, Any] = {
        "ruleId": check.id,
        "ruleIndex": index,
        "kind": kind,
        "level": LEVELS[check.severity] if kind == "fail" else "none",
        "message": {"text": _message(result)},
        "locations": [
            {
                "logicalLocations": [
                    {
                        "name": result.target,
                        "fullyQualifiedName": f"enclave/{report.enclave}/{result.target}",
                        "kind": check.target.value,
                    }
                ]
            }
        ],
        "partialFingerprints": {"enclaveCheck/v1": f"{check.id}:{result.target}"},
        "properties": {
            "status": result.status.value,
            "severity": check.severity.value,
            "evidence": result.evidence,
        },
    }
    if result.waiver is not None:
        w = result.waiver
        found["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": f"{w.reason} (approved by {w.approver}, expires {w.expires})",
            }
        ]
    return found


def to_sarif(report: Report, checks: Iterable[Check] = ()) -> str:
    """The report as a SARIF 2.1.0 log (JSON text).

    ``checks`` adds rules for checks with no result (a per-container check when no container
    runs); the rules of every check that has a result are always there.
    """
    rules: dict[str, Check] = {c.id: c for c in checks}
    for result in report.results:
        rules.setdefault(result.check.id, result.check)
    index = {rule_id: i for i, rule_id in enumerate(rules)}
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "enclave",
                "version": __version__,
                "rules": [_rule(c) for c in rules.values()],
            }
        },
        "automationDetails": {"id": f"enclave/{report.enclave}/{report.started}"},
        "invocations": [
            {
                "executionSuccessful": True,
                "startTimeUtc": report.started,
                "properties": {
                    "baseline": report.baseline,
                    "baseline-sha256": report.baseline_sha256,
                    "seconds": round(report.seconds, 4),
                    "summary": report.counts(),
                    "ignored-waivers": [w.as_dict() for w in report.waivers if not w.valid],
                },
            }
        ],
        "results": [_result(report, r, index[r.check.id]) for r in report.results],
    }
    log = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, default=str) + "\n"
