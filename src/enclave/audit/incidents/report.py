"""Rendering an incident: as JSON (:func:`to_json`) and as a Markdown report (:func:`to_markdown`),
with the time, duration and seq formatting the CLI shares."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from enclave.audit.incidents.model import INCIDENT_FORMAT, ActionResult, Incident, TimelineEntry

if TYPE_CHECKING:
    from collections.abc import Iterable


def to_json(incident: Incident) -> dict[str, Any]:
    """The incident as plain JSON (``format`` ``enclave-incident/v1``)."""
    return {
        "format": INCIDENT_FORMAT,
        "id": incident.id,
        "enclave": incident.enclave,
        "audit_log": incident.log_id,
        "severity": incident.severity.value,
        "status": incident.status.value,
        "trigger": incident.trigger.as_dict(),
        "summary": incident.summary,
        "opened": incident.opened,
        "closed": incident.closed,
        "resolution": incident.resolution,
        "timeline": [entry.as_dict() for entry in incident.timeline],
        "evidence": list(incident.evidence),
    }


def parse_time(text: str) -> datetime:
    """A record time (``2026-11-27T10:00:00.123456Z``) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def short_time(text: str) -> str:
    """A record time to the millisecond: ``2026-11-27 10:00:00.123Z``."""
    try:
        moment = parse_time(text)
    except ValueError:
        return text
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def offset(incident: Incident, entry: TimelineEntry) -> str:
    """When ``entry`` happened, relative to the incident's opening: ``+1.234 s``."""
    try:
        seconds = (parse_time(entry.time) - parse_time(incident.opened)).total_seconds()
    except ValueError:
        return ""
    return f"+{seconds:.3f} s"


def format_duration(duration_ms: float | None) -> str:
    if duration_ms is None:
        return ""
    return f"{duration_ms:.1f} ms" if duration_ms < 10_000 else f"{duration_ms / 1000:.2f} s"


def format_seqs(seqs: Iterable[int]) -> str:
    return ", ".join(str(seq) for seq in seqs)


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (and inert as HTML)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return "<br>".join(text.splitlines()) or " "


def _block(text: str) -> str:
    """Free text as a Markdown block quote (so it cannot turn into headings or lists)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines() or [""])


def to_markdown(incident: Incident) -> str:
    """A readable incident report: overview, trigger, timeline, actions, resolution, evidence."""
    lines = [f"# Incident {incident.id}", ""]
    duration = ""
    if incident.closed is not None:
        try:
            seconds = (parse_time(incident.closed) - parse_time(incident.opened)).total_seconds()
            duration = f"{seconds:.3f} s"
        except ValueError:
            duration = ""
    rows = [
        ("Enclave", incident.enclave),
        ("Severity", incident.severity.value),
        ("Status", incident.status.value),
        ("Opened", short_time(incident.opened)),
        ("Closed", short_time(incident.closed) if incident.closed else "not yet"),
        ("Duration", duration or "-"),
        ("Trigger", str(incident.trigger)),
        ("Audit log", f"id {incident.log_id}, records {format_seqs(incident.records)}"),
    ]
    lines += ["| Field | Value |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    lines += ["", "## Summary", "", _block(incident.summary), ""]
    lines += ["## Trigger", "", f"- Kind: `{incident.trigger.kind.value}`"]
    lines += [f"- By: `{incident.trigger.by}`"]
    if incident.trigger.detail:
        lines += ["- Detail:", "", _block(incident.trigger.detail)]
    lines += ["", "## Timeline", ""]
    lines += [
        "| Time (UTC) | T+ | Kind | Actor | What | Result | Duration | Evidence (audit seq) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in incident.timeline:
        result = entry.result.value if entry.result is not None else ""
        cells = [
            short_time(entry.time),
            offset(incident, entry),
            entry.kind.value,
            entry.actor,
            entry.text,
            result.upper() if entry.result is ActionResult.FAILED else result,
            format_duration(entry.duration_ms),
            format_seqs(entry.evidence),
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += ["", "## Actions taken", ""]
    actions = incident.actions
    if actions:
        failed = sum(1 for a in actions if a.result is ActionResult.FAILED)
        total = sum(a.duration_ms or 0.0 for a in actions)
        lines += [
            f"{len(actions)} action(s), {failed} failed, {format_duration(total)} in total.",
            "",
            "| # | Action | Result | Duration | By | Evidence (audit seq) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for number, action in enumerate(actions, 1):
            result = action.result.value if action.result is not None else ""
            cells = [
                str(number),
                action.text,
                result.upper() if action.result is ActionResult.FAILED else result,
                format_duration(action.duration_ms),
                action.actor,
                format_seqs(action.evidence),
            ]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    else:
        lines.append("No actions were recorded.")
    lines += ["", "## Resolution", ""]
    lines.append(_block(incident.resolution) if incident.resolution else "Not resolved yet.")
    lines += [
        "",
        "## Evidence",
        "",
        f"This report cites audit records {format_seqs(incident.evidence)} of audit log "
        f"`{incident.log_id}` (enclave `{incident.enclave}`). Each number is a record's `seq`: "
        "look it up with `enclave audit search`, and check that the log is intact (every record "
        "hash-chained and covered by signed checkpoints) with `enclave audit verify`.",
        "`enclave audit search LOG --action 'incident.*'` lists the incident records themselves "
        "(the first column is the `seq`).",
        "",
    ]
    return "\n".join(lines)
