"""What an incident is: its enums, timeline entries, the incident itself and its summary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from enclave.audit.incidents.fields import _int, _mapping, _str
from enclave.audit.redact import redact_text
from enclave.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

INCIDENT_FORMAT = "enclave-incident/v1"
"""``format`` of an exported incident (:func:`to_json`)."""
INDEX_FORMAT = "enclave-incident-index/v1"
MAX_TEXT = 2000
"""Longest summary, timeline text or resolution (characters)."""
MAX_EVIDENCE = 256
"""Most audit sequence numbers one timeline entry may cite."""

_ID = re.compile(r"^inc-\d{8}-[0-9a-f]{6}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._:@-]{0,127}$")


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


def _incident_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(f"invalid incident id {value[:40]!r}")
    return value
