"""Writing incidents: the :class:`IncidentRecorder` of an open audit log."""

from __future__ import annotations

import json
import math
import secrets
import threading
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from enclave.audit.incidents.index import (
    _current_index,
    _Index,
    _sorted,
    _try_save_index,
    load_incident,
)
from enclave.audit.incidents.model import (
    MAX_EVIDENCE,
    MAX_TEXT,
    ActionResult,
    EntryKind,
    Incident,
    IncidentSeverity,
    IncidentStatus,
    IncidentSummary,
    Trigger,
)
from enclave.audit.incidents.replay import _PREFIX, _advance, _parse
from enclave.audit.record import ActorKind, AuditEvent, AuditRecord, Decision
from enclave.audit.redact import redact
from enclave.errors import ConflictError, InputError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from enclave.audit.writer import AuditLog, AuditReceipt


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
