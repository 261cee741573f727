"""Incidents: what went wrong, what was done about it, and the audit records that prove it.

An incident lives *in the audit log*: every step is one hash-chained record, so its history is as
tamper-evident as everything else the log holds, and ``enclave audit verify`` covers it::

    incident.open    details: {incident, severity, trigger, summary, entry}
    incident.event   details: {incident, entry}          (entry kind "event" or "note")
    incident.action  details: {incident, entry}          (decision "error" when it failed)
    incident.status  details: {incident, status, entry}
    incident.close   details: {incident, status: "resolved", resolution, entry}

``entry`` is the timeline entry as its author stated it (``kind``, ``text``, ``evidence``, and
for actions ``result`` and ``duration_ms``); the record's ``reason`` repeats the text so that an
audit search reads well. An entry's time, actor and sequence number are the record's own, and its
evidence always includes the record's own ``seq``: every number in a timeline is a record an
assessor can look up (``enclave audit search``) and that ``enclave audit verify`` vouches for.

Writing goes through an :class:`IncidentRecorder` bound to the open :class:`AuditLog` (one per
log: use :meth:`IncidentRecorder.for_log`). Reading (:func:`list_incidents`,
:func:`load_incident`) works from the records. ``<log>/incidents/index.json`` is only a cache of
:class:`IncidentSummary` objects and of how far the log has been read (``through`` and the hash
of that record): readers fold in the records written since, and rebuild it from scratch
(:func:`rebuild_index`) when it is missing, unreadable or no longer matches the log. A reader
that may not write the log directory still works; it just reads every record each time.

Free text (summaries, timeline text, resolutions, trigger details) is redacted the way the log
redacts every record, so an :class:`Incident` in memory says exactly what its records say.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from enclave.audit.export import is_bundle
from enclave.audit.layout import Layout, iter_lines
from enclave.audit.record import (
    LINE_PREFIX,
    ActorKind,
    AuditEvent,
    AuditRecord,
    Decision,
    decode,
    split_line,
)
from enclave.audit.redact import redact, redact_text
from enclave.errors import ConflictError, EnclaveError, InputError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from enclave.audit.writer import AuditLog, AuditReceipt

log = logging.getLogger(__name__)

INCIDENT_FORMAT = "enclave-incident/v1"
"""``format`` of an exported incident (:func:`to_json`)."""
INDEX_FORMAT = "enclave-incident-index/v1"
MAX_TEXT = 2000
"""Longest summary, timeline text or resolution (characters)."""
MAX_EVIDENCE = 256
"""Most audit sequence numbers one timeline entry may cite."""

_ID = re.compile(r"^inc-\d{8}-[0-9a-f]{6}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._:@-]{0,127}$")
_MARK = b',"action":"incident.'
_PREFIX = "incident."


class IncidentSeverity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class IncidentStatus(StrEnum):
    """``open`` -> ``mitigated`` (the harm is stopped) -> ``resolved`` (closed, final)."""

    OPEN = "open"
    MITIGATED = "mitigated"
    RESOLVED = "resolved"


class TriggerKind(StrEnum):
    """What opened the incident."""

    KILL = "kill"
    VIOLATION_RATE = "violation-rate"
    HEARTBEAT_LOST = "heartbeat-lost"
    COMPLIANCE_DRIFT = "compliance-drift"
    MANUAL = "manual"


class EntryKind(StrEnum):
    """``event``: something observed; ``action``: something done (with a result);
    ``status``: the incident's status changed; ``note``: a remark."""

    EVENT = "event"
    ACTION = "action"
    STATUS = "status"
    NOTE = "note"


class ActionResult(StrEnum):
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Trigger:
    """What opened an incident and who (a principal or a component) it came from."""

    kind: TriggerKind
    by: str
    detail: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.by) or redact_text(self.by)[1]:
            # a name the log would redact could not be read back as a name
            raise InputError(f"incident trigger: invalid 'by' {self.by[:80]!r}")
        if len(self.detail) > MAX_TEXT:
            raise InputError(f"incident trigger: detail is longer than {MAX_TEXT} characters")

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "by": self.by, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.kind.value} by {self.by}"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One step of an incident; ``seq`` is the audit record that states it."""

    seq: int
    time: str
    kind: EntryKind
    text: str
    actor: str
    evidence: tuple[int, ...]
    result: ActionResult | None = None
    duration_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind.value,
            "text": self.text,
            "actor": self.actor,
            "result": self.result.value if self.result is not None else None,
            "duration_ms": self.duration_ms,
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident as its audit records tell it. ``log_id`` names the log its seqs refer to."""

    id: str
    enclave: str
    log_id: str
    severity: IncidentSeverity
    trigger: Trigger
    summary: str
    opened: str
    status: IncidentStatus
    timeline: tuple[TimelineEntry, ...]
    closed: str | None = None
    resolution: str | None = None

    @property
    def evidence(self) -> tuple[int, ...]:
        """Every audit seq the incident cites (its own records included), ascending."""
        return tuple(sorted({seq for entry in self.timeline for seq in entry.evidence}))

    @property
    def actions(self) -> tuple[TimelineEntry, ...]:
        return tuple(e for e in self.timeline if e.kind is EntryKind.ACTION)

    @property
    def records(self) -> tuple[int, ...]:
        """The seqs of the incident's own ``incident.*`` records."""
        return tuple(entry.seq for entry in self.timeline)


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """What ``enclave incident list`` shows; the index caches these."""

    id: str
    severity: IncidentSeverity
    status: IncidentStatus
    trigger: Trigger
    summary: str
    opened: str
    closed: str | None
    entries: int
    first_seq: int
    last_seq: int

    @classmethod
    def of(cls, incident: Incident) -> IncidentSummary:
        return cls(
            id=incident.id,
            severity=incident.severity,
            status=incident.status,
            trigger=incident.trigger,
            summary=incident.summary,
            opened=incident.opened,
            closed=incident.closed,
            entries=len(incident.timeline),
            first_seq=incident.timeline[0].seq,
            last_seq=incident.timeline[-1].seq,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "status": self.status.value,
            "trigger": self.trigger.as_dict(),
            "summary": self.summary,
            "opened": self.opened,
            "closed": self.closed,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IncidentSummary:
        """Parse an index entry; ``ValueError``/``KeyError``/``TypeError`` when malformed."""
        trigger = _mapping(data, "trigger")
        closed = data.get("closed")
        return cls(
            id=_incident_id(_str(data, "id")),
            severity=IncidentSeverity(_str(data, "severity")),
            status=IncidentStatus(_str(data, "status")),
            trigger=Trigger(
                TriggerKind(_str(trigger, "kind")), _str(trigger, "by"), _str(trigger, "detail")
            ),
            summary=_str(data, "summary"),
            opened=_str(data, "opened"),
            closed=None if closed is None else _str(data, "closed"),
            entries=_int(data, "entries"),
            first_seq=_int(data, "first_seq"),
            last_seq=_int(data, "last_seq"),
        )


# -- reading records ---------------------------------------------------------------------------


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(key)
    return value


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data[key]
    if not isinstance(value, Mapping):
        raise TypeError(key)
    return value


def _incident_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(f"invalid incident id {value[:40]!r}")
    return value


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(key)
    return float(value)


def _seqs(value: object) -> list[int]:
    if not isinstance(value, list | tuple):
        raise TypeError("evidence")
    for seq in value:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise TypeError("evidence")
    return list(value)


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


# -- the index -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Index:
    log_id: str
    through: int = 0
    head: str = ""
    summaries: dict[str, IncidentSummary] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = {
            "format": INDEX_FORMAT,
            "log_id": self.log_id,
            "through": self.through,
            "head": self.head,
            "incidents": [s.as_dict() for s in self.summaries.values()],
        }
        return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def index_path(log_path: Path) -> Path:
    """Where the incident index of the log at ``log_path`` is kept."""
    return log_path / "incidents" / "index.json"


def _read_index(log_path: Path, log_id: str) -> _Index | None:
    path = index_path(log_path)
    try:
        data = json.loads(path.read_bytes())
        _expect(data.get("format") == INDEX_FORMAT, "another format")
        _expect(data.get("log_id") == log_id, "the index of another log")
        index = _Index(log_id, _int(data, "through"), _str(data, "head"))
        for item in data["incidents"]:
            summary = IncidentSummary.from_dict(item)
            index.summaries[summary.id] = summary
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError) as exc:
        log.info("incident index %s is unusable (%s); rebuilding it", path, exc)
        return None
    return index


def _save_index(log_path: Path, index: _Index) -> None:
    """Write the index atomically (owner-only); a cache, so not fsync-ed."""
    path = index_path(log_path)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(index.to_bytes())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _try_save_index(log_path: Path, index: _Index) -> None:
    try:
        _save_index(log_path, index)
    except OSError as exc:
        log.info("could not write the incident index of %s: %s", log_path, exc)


def _catch_up(layout: Layout, index: _Index) -> bool:
    """Fold the records after ``index.through`` into ``index``.

    False (and ``index`` untouched) when the record at ``through`` is not the one the index
    was built from: the log is not the log the index describes.
    """
    check = index.through > 0
    last: bytes | None = None
    for seq, line, change in _incident_changes(layout, max(index.through, 1)):
        if check:
            if seq != index.through or _stored_hash(line) != index.head:
                return False
            check = False
            continue
        if change is not None:
            previous = index.summaries.get(change.incident)
            index.summaries[change.incident] = _advance_summary(previous, change)
        index.through, last = seq, line
    if last is not None:
        index.head = _stored_hash(last)
    return not check


def _refresh(log_path: Path, *, rebuild: bool = False) -> tuple[_Index, bool]:
    """The index, up to date with the log; and whether it changed (and should be saved)."""
    layout = Layout(log_path)
    meta = layout.read_meta()
    cached = None if rebuild else _read_index(log_path, meta.log_id)
    if cached is not None:
        through = cached.through
        try:
            if _catch_up(layout, cached):
                return cached, cached.through != through
        except IntegrityError:  # the cache contradicts the records: rebuild to know for sure
            log.info("incident index of %s disagrees with the log; rebuilding it", log_path)
        else:
            log.info("incident index of %s does not match the log; rebuilding it", log_path)
    index = _Index(meta.log_id)
    _catch_up(layout, index)
    return index, True


def _current_index(log_path: Path) -> _Index:
    index, changed = _refresh(log_path)
    if (changed or not index_path(log_path).exists()) and not is_bundle(log_path):
        _try_save_index(log_path, index)  # an evidence bundle is never written to
    return index


def rebuild_index(log_path: Path) -> list[IncidentSummary]:
    """Rebuild ``<log>/incidents/index.json`` from the records alone; return its summaries."""
    if is_bundle(log_path):
        raise InputError(f"{log_path}: an evidence bundle is read-only")
    index, _ = _refresh(log_path, rebuild=True)
    try:
        _save_index(log_path, index)
    except OSError as exc:
        raise EnclaveError(f"{index_path(log_path)}: cannot write: {exc.strerror}") from None
    return _sorted(index.summaries.values())


def _sorted(summaries: Iterable[IncidentSummary]) -> list[IncidentSummary]:
    return sorted(summaries, key=lambda s: s.first_seq)


def list_incidents(
    log_path: Path, *, status: IncidentStatus | None = None
) -> list[IncidentSummary]:
    """Every incident of the log at ``log_path`` (oldest first), or those with ``status``."""
    summaries = _sorted(_current_index(log_path).summaries.values())
    return [s for s in summaries if status is None or s.status is status]


def load_incident(log_path: Path, incident_id: str) -> Incident:
    """The incident ``incident_id``, read from its audit records. :class:`NotFoundError` if none."""
    summary = _current_index(log_path).summaries.get(incident_id)
    if summary is None:
        raise NotFoundError(f"no incident {incident_id!r} in the audit log {log_path}")
    layout = Layout(log_path)
    try:
        incident = _load(layout, incident_id, summary.first_seq)
    except IntegrityError:
        incident = None
    if incident is None or incident.timeline[0].seq != summary.first_seq:
        incident = _load(layout, incident_id, 1)  # the records, not the cache, have the last word
    if incident is None:
        raise NotFoundError(f"no incident {incident_id!r} in the audit log {log_path}")
    return incident


# -- writing -------------------------------------------------------------------------------------


def _text(value: str, what: str) -> str:
    if not value.strip():
        raise InputError(f"incident: {what} is empty")
    if len(value) > MAX_TEXT:
        raise InputError(f"incident: {what} is longer than {MAX_TEXT} characters")
    return value


class IncidentRecorder:
    """Opens incidents and records their timelines in an open :class:`AuditLog`.

    Get one with :meth:`for_log`: there is one recorder per open log, because it keeps the
    incidents' state (to refuse acting on an unknown or closed incident) without re-reading the
    log. Creating it reads the log's incidents (incrementally, from the index), so create it when
    the component starts, not on the path of a kill. Every method blocks until its record is
    durable and raises :class:`~enclave.errors.AuditError` if it cannot be written; nothing is
    changed then. The methods are thread-safe; from asyncio, call them via ``asyncio.to_thread``.
    """

    audit_log: AuditLog
    """The log this recorder writes to."""

    _registry: ClassVar[weakref.WeakValueDictionary[Path, IncidentRecorder]] = (
        weakref.WeakValueDictionary()
    )
    _registry_lock: ClassVar[threading.RLock] = threading.RLock()

    def __init__(self, audit_log: AuditLog) -> None:
        """Prefer :meth:`for_log`; a second recorder for the same open log is refused."""
        root = audit_log.layout.root.resolve()
        with IncidentRecorder._registry_lock:
            existing = IncidentRecorder._registry.get(root)
            if existing is not None and existing.audit_log is audit_log:
                raise ConflictError(
                    f"{root}: this audit log already has an incident recorder "
                    "(use IncidentRecorder.for_log)"
                )
            self.audit_log = audit_log
            self._lock = threading.Lock()
            self._summaries = dict(_current_index(audit_log.layout.root).summaries)
            self._active: dict[str, Incident] = {}
            IncidentRecorder._registry[root] = self

    @classmethod
    def for_log(cls, audit_log: AuditLog) -> IncidentRecorder:
        """The recorder of ``audit_log``, created on first use."""
        with cls._registry_lock:
            existing = cls._registry.get(audit_log.layout.root.resolve())
            if existing is not None and existing.audit_log is audit_log:
                return existing
            return cls(audit_log)

    # -- the operations ------------------------------------------------------------------------

    def open(
        self,
        severity: IncidentSeverity,
        trigger: Trigger,
        summary: str,
        *,
        actor: str,
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Open an incident (status ``open``) and return it; its id is ``inc-<date>-<hex>``."""
        summary = _text(summary, "summary")
        cited = self._evidence(evidence)
        with self._lock:
            incident_id = self._new_id()
            details = {
                "incident": incident_id,
                "severity": IncidentSeverity(severity).value,
                "trigger": trigger.as_dict(),
                "summary": summary,
                "entry": {"kind": EntryKind.STATUS.value, "text": f"opened: {summary}"},
            }
            return self._record(
                None,
                "open",
                details=details,
                cited=cited,
                actor=actor,
                actor_kind=actor_kind,
            )

    def add_event(
        self,
        incident_id: str,
        text: str,
        *,
        actor: str,
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Add something observed (a violation, a lost heartbeat, a finding) to the timeline."""
        return self._entry(
            incident_id,
            kind=EntryKind.EVENT,
            text=text,
            actor=actor,
            evidence=evidence,
            actor_kind=actor_kind,
        )

    def add_note(
        self,
        incident_id: str,
        text: str,
        *,
        actor: str,
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Add a remark (an analysis, a hand-over) to the timeline."""
        return self._entry(
            incident_id,
            kind=EntryKind.NOTE,
            text=text,
            actor=actor,
            evidence=evidence,
            actor_kind=actor_kind,
        )

    def record_action(
        self,
        incident_id: str,
        action: str,
        result: ActionResult,
        *,
        actor: str,
        duration_ms: float | None = None,
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Record a step taken (``stop model workloads``) with its result and how long it took.

        A failed action is recorded with decision ``error``.
        """
        text = _text(action, "action")
        result = ActionResult(result)
        if duration_ms is not None and not (math.isfinite(duration_ms) and 0 <= duration_ms < 1e9):
            raise InputError(f"incident: invalid duration {duration_ms!r} ms")
        cited = self._evidence(evidence)
        with self._lock:
            current = self._current(incident_id)
            entry: dict[str, Any] = {
                "kind": EntryKind.ACTION.value,
                "text": text,
                "result": result.value,
            }
            if duration_ms is not None:
                entry["duration_ms"] = round(float(duration_ms), 3)
            details = {"incident": incident_id, "entry": entry}
            decision = Decision.ERROR if result is ActionResult.FAILED else Decision.INFO
            return self._record(
                current,
                "action",
                details=details,
                cited=cited,
                actor=actor,
                actor_kind=actor_kind,
                decision=decision,
            )

    def set_status(
        self,
        incident_id: str,
        status: IncidentStatus,
        *,
        actor: str,
        note: str = "",
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Move an incident to ``mitigated`` (or back to ``open``); :meth:`close` resolves it."""
        status = IncidentStatus(status)
        if status is IncidentStatus.RESOLVED:
            raise InputError("incident: use close() to resolve an incident")
        if note:
            _text(note, "note")
        cited = self._evidence(evidence)
        with self._lock:
            current = self._current(incident_id)
            if current.status is status:
                raise ConflictError(f"incident {incident_id} is already {status.value}")
            text = f"{status.value}: {note}" if note else status.value
            details = {
                "incident": incident_id,
                "status": status.value,
                "entry": {"kind": EntryKind.STATUS.value, "text": text},
            }
            return self._record(
                current,
                "status",
                details=details,
                cited=cited,
                actor=actor,
                actor_kind=actor_kind,
            )

    def close(
        self,
        incident_id: str,
        resolution: str,
        *,
        actor: str,
        evidence: Iterable[int] = (),
        actor_kind: ActorKind = ActorKind.PRINCIPAL,
    ) -> Incident:
        """Resolve the incident with ``resolution``; it accepts no further entries."""
        resolution = _text(resolution, "resolution")
        cited = self._evidence(evidence)
        with self._lock:
            current = self._current(incident_id)
            details = {
                "incident": incident_id,
                "status": IncidentStatus.RESOLVED.value,
                "resolution": resolution,
                "entry": {"kind": EntryKind.STATUS.value, "text": f"resolved: {resolution}"},
            }
            return self._record(
                current,
                "close",
                details=details,
                cited=cited,
                actor=actor,
                actor_kind=actor_kind,
            )

    def get(self, incident_id: str) -> Incident:
        """The incident as recorded so far (:class:`NotFoundError` if unknown)."""
        with self._lock:
            summary = self._summaries.get(incident_id)
            if summary is None:
                raise NotFoundError(f"no incident {incident_id!r}")
            if summary.status is not IncidentStatus.RESOLVED:
                return self._current(incident_id)
        return load_incident(self.audit_log.layout.root, incident_id)

    def incidents(self, *, status: IncidentStatus | None = None) -> list[IncidentSummary]:
        """Summaries of the log's incidents (oldest first), or those with ``status``."""
        with self._lock:
            summaries = _sorted(self._summaries.values())
        return [s for s in summaries if status is None or s.status is status]

    # -- internals -----------------------------------------------------------------------------

    def _entry(
        self,
        incident_id: str,
        *,
        kind: EntryKind,
        text: str,
        actor: str,
        evidence: Iterable[int],
        actor_kind: ActorKind,
    ) -> Incident:
        text = _text(text, "text")
        cited = self._evidence(evidence)
        with self._lock:
            current = self._current(incident_id)
            details = {"incident": incident_id, "entry": {"kind": kind.value, "text": text}}
            return self._record(
                current,
                "event",
                details=details,
                cited=cited,
                actor=actor,
                actor_kind=actor_kind,
            )

    def _evidence(self, evidence: Iterable[int]) -> list[int]:
        given = list(evidence)
        size = self.audit_log.size
        for seq in given:
            if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= size:
                raise InputError(
                    f"incident: evidence {seq!r} is not the seq of a record in the log (1..{size})"
                )
        cited = sorted(set(given))
        if len(cited) > MAX_EVIDENCE:
            raise InputError(f"incident: more than {MAX_EVIDENCE} evidence records")
        return cited

    def _new_id(self) -> str:
        day = datetime.now(UTC).strftime("%Y%m%d")
        while True:
            candidate = f"inc-{day}-{secrets.token_hex(3)}"
            if candidate not in self._summaries:
                return candidate

    def _current(self, incident_id: str) -> Incident:
        """The open incident ``incident_id`` (call with the lock held)."""
        summary = self._summaries.get(incident_id)
        if summary is None:
            raise NotFoundError(f"no incident {incident_id!r} in {self.audit_log.layout.root}")
        if summary.status is IncidentStatus.RESOLVED:
            raise ConflictError(f"incident {incident_id} is already resolved ({summary.closed})")
        incident = self._active.get(incident_id)
        if incident is None:
            incident = load_incident(self.audit_log.layout.root, incident_id)
            self._active[incident_id] = incident
        return incident

    def _record(
        self,
        current: Incident | None,
        op: str,
        *,
        details: dict[str, Any],
        cited: list[int],
        actor: str,
        actor_kind: ActorKind,
        decision: Decision = Decision.INFO,
    ) -> Incident:
        """Append the record, then update the state from what was recorded (lock held)."""
        details["entry"]["evidence"] = cited
        event = AuditEvent(
            actor=actor,
            actor_kind=actor_kind,
            action=_PREFIX + op,
            decision=decision,
            reason=details["entry"]["text"],
            details=details,
        )
        receipt = self.audit_log.append(event)
        incident = self._apply(current, event, receipt)
        summary = IncidentSummary.of(incident)
        self._summaries[incident.id] = summary
        if incident.status is IncidentStatus.RESOLVED:
            self._active.pop(incident.id, None)
        else:
            self._active[incident.id] = incident
        if op not in {"event", "action"}:  # readers fold in the rest; keep kills fast
            index = _Index(self.audit_log.meta.log_id, receipt.seq, receipt.hash, self._summaries)
            _try_save_index(self.audit_log.layout.root, index)
        return incident

    def _apply(
        self, current: Incident | None, event: AuditEvent, receipt: AuditReceipt
    ) -> Incident:
        # The log redacts the event it stores; parse that same redacted form, so that what this
        # returns is exactly what a reader of the records gets.
        stored, _ = redact(event)
        record = AuditRecord(
            seq=receipt.seq,
            prev="",
            time=receipt.time,
            enclave=self.audit_log.meta.enclave,
            actor=stored.actor,
            action=stored.action,
            decision=stored.decision,
            hash=receipt.hash,
            reason=stored.reason,
            actor_kind=stored.actor_kind,
            details=json.loads(json.dumps(stored.details)),
        )
        change = _parse(record)
        assert change is not None  # noqa: S101 - it is an incident.* record
        meta = self.audit_log.meta
        return _advance(current, change, log_id=meta.log_id, enclave=meta.enclave)


# -- rendering -----------------------------------------------------------------------------------


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


__all__ = [
    "INCIDENT_FORMAT",
    "ActionResult",
    "EntryKind",
    "Incident",
    "IncidentRecorder",
    "IncidentSeverity",
    "IncidentStatus",
    "IncidentSummary",
    "TimelineEntry",
    "Trigger",
    "TriggerKind",
    "index_path",
    "list_incidents",
    "load_incident",
    "rebuild_index",
    "to_json",
    "to_markdown",
]
