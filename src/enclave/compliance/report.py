"""Reporters: the terminal table and JSON (JUnit, SARIF, OSCAL and Markdown, in
:mod:`enclave.compliance.reporters`, read the same :class:`~enclave.compliance.model.Report`).

The table lists every result (waived and not-applicable ones included), then, for each result
that did not pass, its evidence, remediation and control mappings, then the waivers that were
ignored and why, and a summary line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from enclave.compliance.model import Status

if TYPE_CHECKING:
    from rich.console import Console

    from enclave.compliance.model import CheckResult, Report

__all__ = ["render_table", "to_json"]

STYLES = {
    Status.PASS: "green",
    Status.FAIL: "bold red",
    Status.ERROR: "bold magenta",
    Status.NOT_APPLICABLE: "dim",
    Status.WAIVED: "yellow",
}
_MAX_EVIDENCE = 300


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=False) + "\n"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_EVIDENCE else text[: _MAX_EVIDENCE - 3] + "..."


def _mappings(result: CheckResult) -> str:
    parts = []
    for family, ids in result.check.mappings.as_dict().items():
        if ids:
            parts.append(f"{family} {', '.join(ids)}")
    return "; ".join(parts)


def render_table(report: Report, console: Console, *, details: bool = True) -> None:
    table = Table(title=f"enclave {report.enclave}: compliance", title_justify="left")
    for column in ("check", "severity", "status", "target", "title"):
        table.add_column(column, overflow="fold")
    for result in report.results:
        table.add_row(
            result.check.id,
            result.check.severity.value,
            Text(result.status.value, style=STYLES[result.status]),
            result.target,
            result.check.title,
        )
    console.print(table)
    if details:
        for result in report.results:
            if result.status in (Status.PASS, Status.NOT_APPLICABLE):
                continue
            head = Text(f"{result.check.id} {result.status.value}: ", style=STYLES[result.status])
            head.append(f"{result.check.title} ({result.target})")
            console.print(head)
            if result.message:
                console.print(f"  why: {result.message}", markup=False)
            for name, value in result.evidence.items():
                console.print(f"  evidence {name} = {_short(value)}", markup=False)
            if result.waiver is not None:
                w = result.waiver
                console.print(
                    f"  waived until {w.expires} by {w.approver}: {w.reason}", markup=False
                )
            else:
                console.print(f"  fix: {result.check.remediation.strip()}", markup=False)
            console.print(f"  controls: {_mappings(result)}", markup=False)
    for waiver in report.waivers:
        if not waiver.valid:
            console.print(
                f"waiver for {waiver.check} ignored: {waiver.problem}", style="yellow", markup=False
            )
    counts = report.counts()
    summary = ", ".join(f"{counts[s.value]} {s.value}" for s in Status)
    console.print(
        f"{len(report.results)} results in {report.seconds:.2f} s: {summary} "
        f"(baseline {report.baseline_sha256[:12]})",
        markup=False,
    )
