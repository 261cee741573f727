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

from enclave.audit.incidents.index import index_path, list_incidents, load_incident, rebuild_index
from enclave.audit.incidents.model import (
    INCIDENT_FORMAT,
    INDEX_FORMAT,
    MAX_EVIDENCE,
    MAX_TEXT,
    ActionResult,
    EntryKind,
    Incident,
    IncidentSeverity,
    IncidentStatus,
    IncidentSummary,
    TimelineEntry,
    Trigger,
    TriggerKind,
)
from enclave.audit.incidents.recorder import IncidentRecorder
from enclave.audit.incidents.report import (
    format_duration,
    format_seqs,
    offset,
    parse_time,
    short_time,
    to_json,
    to_markdown,
)

__all__ = [
    "INCIDENT_FORMAT",
    "INDEX_FORMAT",
    "MAX_EVIDENCE",
    "MAX_TEXT",
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
    "format_duration",
    "format_seqs",
    "index_path",
    "list_incidents",
    "load_incident",
    "offset",
    "parse_time",
    "rebuild_index",
    "short_time",
    "to_json",
    "to_markdown",
]
