"""Replaying ``incident.*`` audit records: each record parsed into a change, and the changes
folded into an :class:`Incident` (or the :class:`IncidentSummary` the index keeps)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from enclave.audit.incidents.fields import _expect, _mapping, _number, _seqs, _str
from enclave.audit.incidents.model import (
    ActionResult,
    EntryKind,
    Incident,
    IncidentSeverity,
    IncidentStatus,
    IncidentSummary,
    TimelineEntry,
    Trigger,
    TriggerKind,
    _incident_id,
)
from enclave.audit.layout import Layout, iter_lines
from enclave.audit.record import LINE_PREFIX, AuditRecord, decode, split_line
from enclave.errors import InputError, IntegrityError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

_MARK = b',"action":"incident.'
_PREFIX = "incident."


@dataclass(frozen=True, slots=True)
class _Change:
    """One ``incident.*`` record, parsed."""

    op: str
    incident: str
    entry: TimelineEntry
    severity: IncidentSeverity | None = None
    trigger: Trigger | None = None
    summary: str = ""
    status: IncidentStatus | None = None
    resolution: str | None = None


_OPS: dict[str, frozenset[EntryKind]] = {
    "open": frozenset({EntryKind.STATUS}),
    "event": frozenset({EntryKind.EVENT, EntryKind.NOTE}),
    "action": frozenset({EntryKind.ACTION}),
    "status": frozenset({EntryKind.STATUS}),
    "close": frozenset({EntryKind.STATUS}),
}


def _parse(record: AuditRecord) -> _Change | None:
    """The change ``record`` makes to an incident; ``None`` when it is not an incident record."""
    if not record.action.startswith(_PREFIX):
        return None
    op = record.action[len(_PREFIX) :]
    if op not in _OPS:
        log.warning("audit record %d: unknown incident action %r ignored", record.seq, op)
        return None
    try:
        details = record.details or {}
        raw = _mapping(details, "entry")
        kind = EntryKind(_str(raw, "kind"))
        _expect(kind in _OPS[op], f"entry kind {kind.value} in {record.action}")
        result = raw.get("result")
        entry = TimelineEntry(
            seq=record.seq,
            time=record.time,
            kind=kind,
            text=_str(raw, "text"),
            actor=record.actor,
            evidence=tuple(sorted({*_seqs(raw.get("evidence", [])), record.seq})),
            result=None if result is None else ActionResult(result),
            duration_ms=_number(raw, "duration_ms"),
        )
        change = _Change(op=op, incident=_incident_id(_str(details, "incident")), entry=entry)
        if op == "open":
            trigger = _mapping(details, "trigger")
            return replace(
                change,
                severity=IncidentSeverity(_str(details, "severity")),
                trigger=Trigger(
                    TriggerKind(_str(trigger, "kind")),
                    _str(trigger, "by"),
                    str(trigger.get("detail", "")),
                ),
                summary=_str(details, "summary"),
            )
        if op in {"status", "close"}:
            status = IncidentStatus(_str(details, "status"))
            closing = op == "close"
            _expect(closing == (status is IncidentStatus.RESOLVED), f"status {status.value}")
            resolution = _str(details, "resolution") if op == "close" else None
            return replace(change, status=status, resolution=resolution)
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise IntegrityError(
            f"audit record {record.seq}: not a valid {record.action} record "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return change


def _advance(current: Incident | None, change: _Change, *, log_id: str, enclave: str) -> Incident:
    """``current`` after ``change`` (``None`` before the incident is opened)."""
    seq = change.entry.seq
    if change.op == "open":
        if current is not None:
            raise IntegrityError(f"audit record {seq}: incident {change.incident} opened twice")
        if change.severity is None or change.trigger is None:  # _parse sets both for "open"
            raise IntegrityError(f"audit record {seq}: incomplete incident.open")
        return Incident(
            id=change.incident,
            enclave=enclave,
            log_id=log_id,
            severity=change.severity,
            trigger=change.trigger,
            summary=change.summary,
            opened=change.entry.time,
            status=IncidentStatus.OPEN,
            timeline=(change.entry,),
        )
    if current is None:
        raise IntegrityError(f"audit record {seq}: incident {change.incident} was never opened")
    if current.status is IncidentStatus.RESOLVED:
        raise IntegrityError(f"audit record {seq}: incident {change.incident} was already closed")
    closing = change.op == "close"
    return replace(
        current,
        status=change.status or current.status,
        timeline=(*current.timeline, change.entry),
        closed=change.entry.time if closing else None,
        resolution=change.resolution if closing else None,
    )


def _advance_summary(current: IncidentSummary | None, change: _Change) -> IncidentSummary:
    """Like :func:`_advance`, for a summary (all the index holds)."""
    seq = change.entry.seq
    if change.op == "open":
        if current is not None:
            raise IntegrityError(f"audit record {seq}: incident {change.incident} opened twice")
        if change.severity is None or change.trigger is None:  # _parse sets both for "open"
            raise IntegrityError(f"audit record {seq}: incomplete incident.open")
        return IncidentSummary(
            id=change.incident,
            severity=change.severity,
            status=IncidentStatus.OPEN,
            trigger=change.trigger,
            summary=change.summary,
            opened=change.entry.time,
            closed=None,
            entries=1,
            first_seq=seq,
            last_seq=seq,
        )
    if current is None:
        raise IntegrityError(f"audit record {seq}: incident {change.incident} was never opened")
    if current.status is IncidentStatus.RESOLVED:
        raise IntegrityError(f"audit record {seq}: incident {change.incident} was already closed")
    return replace(
        current,
        status=change.status or current.status,
        closed=change.entry.time if change.op == "close" else None,
        entries=current.entries + 1,
        last_seq=seq,
    )


def _seq_of(line: bytes) -> int | None:
    comma = line.find(b",", len(LINE_PREFIX))
    digits = line[len(LINE_PREFIX) : comma]
    if not line.startswith(LINE_PREFIX) or comma < 0 or not digits.isdigit():
        return None
    return int(digits)


def _lines(layout: Layout, start: int) -> Iterator[tuple[int, bytes, Path, int]]:
    """``(seq, line, segment, offset)`` of every complete record with ``seq >= start``."""
    segments = layout.segments()
    for index, (_, path) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= start:
            continue
        for offset, line in iter_lines(path):
            if not line.endswith(b"\n"):
                return  # a torn tail is not a record
            seq = _seq_of(line)
            if seq is None:
                raise _unreadable(path, offset)
            if seq >= start:
                yield seq, line, path, offset


def _unreadable(path: Path, offset: int) -> IntegrityError:
    return IntegrityError(f"{path}: unreadable record at byte {offset}; run `enclave audit verify`")


def _stored_hash(line: bytes) -> str:
    parts = split_line(line)
    if parts is None:
        raise IntegrityError("unreadable record line; run `enclave audit verify`")
    return parts[1]


def _incident_changes(layout: Layout, start: int) -> Iterator[tuple[int, bytes, _Change | None]]:
    """``(seq, line, change)`` of every record from ``start``; ``change`` for incident ones."""
    for seq, line, path, offset in _lines(layout, start):
        change = None
        if _MARK in line:  # cheap filter: only incident records are decoded
            try:
                record = decode(line)
            except (ValueError, KeyError, TypeError):
                raise _unreadable(path, offset) from None
            change = _parse(record)
        yield seq, line, change


def _load(layout: Layout, incident_id: str, start: int) -> Incident | None:
    meta = layout.read_meta()
    incident: Incident | None = None
    for _, _, change in _incident_changes(layout, start):
        if change is not None and change.incident == incident_id:
            incident = _advance(incident, change, log_id=meta.log_id, enclave=meta.enclave)
    return incident
