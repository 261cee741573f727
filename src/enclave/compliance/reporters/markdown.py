"""A Markdown summary an assessor can read: counts, then what did not pass, then waivers.

Sections: a header (enclave, when, baseline digest), counts by status and by severity x status,
**Failures and errors** (most severe first, each with its evidence, remediation and control
mappings), **Waived** (each waived result with its waiver), **Ignored waivers** (and why), then
every result in one table so nothing is left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave.compliance.model import Severity, Status
from enclave.compliance.reporters._text import short

if TYPE_CHECKING:
    from enclave.compliance.model import CheckResult, Report

__all__ = ["to_markdown"]

_EVIDENCE_LIMIT = 500


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(value: object) -> str:
    """A value inside inline code: no backticks (they would end it), one line."""
    return _cell(short(value, _EVIDENCE_LIMIT)).replace("`", "'")


def _mappings(result: CheckResult) -> list[str]:
    return [
        f"  - {family}: {', '.join(ids)}"
        for family, ids in result.check.mappings.as_dict().items()
        if ids
    ]


def _detail(result: CheckResult) -> list[str]:
    check = result.check
    lines = [
        f"### {check.id} {result.status.value.upper()}: {check.title}",
        "",
        f"- severity: **{check.severity.value}**",
        f"- target: `{result.target}`",
    ]
    if result.message:
        lines.append(f"- why: {result.message}")
    if result.evidence:
        lines.append("- evidence:")
        lines.extend(f"  - `{name}` = `{_code(value)}`" for name, value in result.evidence.items())
    if result.waiver is not None:
        w = result.waiver
        lines.append(f"- waived until {w.expires} by {w.approver}: {w.reason}")
    lines.append(f"- remediation: {' '.join(check.remediation.split())}")
    lines.append("- controls:")
    lines.extend(_mappings(result))
    lines.append("")
    return lines


def to_markdown(report: Report) -> str:
    counts = report.counts()
    severities = sorted(Severity, key=lambda s: -s.rank)
    lines = [
        f"# Compliance report: enclave `{report.enclave}`",
        "",
        f"- started: {report.started} ({report.seconds:.2f} s)",
        f"- baseline: `{report.baseline}` (sha256 `{report.baseline_sha256}`)",
        f"- results: {len(report.results)}",
        "",
        "## Summary",
        "",
        "| status | results |",
        "| --- | ---: |",
        *(f"| {s.value} | {counts[s.value]} |" for s in Status),
        "",
        "| severity | " + " | ".join(s.value for s in Status) + " |",
        "| --- |" + " ---: |" * len(Status),
    ]
    for severity in severities:
        row = [
            sum(1 for r in report.results if r.check.severity is severity and r.status is s)
            for s in Status
        ]
        lines.append(f"| {severity.value} | " + " | ".join(str(n) for n in row) + " |")
    lines.append("")

    bad = [r for r in report.results if r.status in (Status.FAIL, Status.ERROR)]
    bad.sort(key=lambda r: (r.status is not Status.FAIL, -r.check.severity.rank, r.check.id))
    lines += ["## Failures and errors", ""]
    if not bad:
        lines += ["None.", ""]
    for result in bad:
        lines += _detail(result)

    waived = [r for r in report.results if r.status is Status.WAIVED]
    lines += ["## Waived", ""]
    if not waived:
        lines += ["None.", ""]
    for result in waived:
        lines += _detail(result)

    ignored = [w for w in report.waivers if not w.valid]
    if ignored:
        lines += ["## Ignored waivers", "", "| check | target | problem |", "| --- | --- | --- |"]
        lines += [f"| {w.check} | {_cell(w.target or '*')} | {_cell(w.problem)} |" for w in ignored]
        lines.append("")

    lines += ["## All results", "", "| check | severity | status | target | title |"]
    lines.append("| --- | --- | --- | --- | --- |")
    lines += [
        f"| {r.check.id} | {r.check.severity.value} | {r.status.value} | {_cell(r.target)} "
        f"| {_cell(r.check.title)} |"
        for r in report.results
    ]
    return "\n".join(lines) + "\n"
