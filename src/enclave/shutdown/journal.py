"""The controller's own audit log and the incidents it writes there.

The controller keeps a log of its own (``<state>/enclaves/<name>/controller/audit``, signed
with its own Ed25519 key beside it), separate from the gateways': a gateway's log records
requests, the controller's records who asked it to kill or resume, what it decided, and each
kill's incident with its timeline. Its records (actor ``shutdown-controller`` unless a person
asked)::

    shutdown.start              the controller started (details: mode)
    shutdown.kill               a kill: allow (it ran; details: trigger, token id, evidence) or
                                deny (refused: bad token, wrong role, no reason, already killed)
    shutdown.resume             a resume approval: allow (counted, quorum) or deny (bad token,
                                wrong role, self-approval, replayed, not killed)
    shutdown.approval-expired   approvals that no longer count (older than the approval ttl)
    shutdown.resumed            the enclave serves again (details: approvers, seconds)
    shutdown.resume-failed      the resume failed and the enclave stays killed (reason)
    shutdown.heartbeat-lost     a gateway missed two heartbeats in a row; -restored when back
    shutdown.drift              the compliance engine reported drift (and what was done)
    incident.*                  the kill's incident: opened with the trigger, one action
                                record per kill step (its result and duration), the approvals
                                as events, closed by the resume

Every method blocks until its record is durable (call the ``*_sync`` ones from a worker
thread); an :class:`~enclave.errors.AuditError` is for the caller to weigh: a kill goes on
without its record (stopping is always safe), a resume does not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from enclave.audit.incidents import (
    ActionResult,
    IncidentRecorder,
    IncidentSeverity,
    IncidentStatus,
)
from enclave.audit.incidents import Trigger as IncidentTrigger
from enclave.audit.incidents import TriggerKind as IncidentTriggerKind
from enclave.audit.record import ActorKind, AuditEvent, Decision
from enclave.errors import EnclaveError
from enclave.shutdown.state import TriggerKind

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from enclave.audit.writer import AuditLog
    from enclave.shutdown.actions import StepResult
    from enclave.shutdown.state import Trigger

log = logging.getLogger(__name__)

__all__ = ["ACTOR", "ANONYMOUS", "Journal"]

ACTOR = "shutdown-controller"
"""The controller's own name in its records (and as the author of automatic kills)."""
ANONYMOUS = "anonymous"
"""The actor of a call whose token could not be checked."""

_INCIDENT_KIND = {
    TriggerKind.MANUAL: IncidentTriggerKind.KILL,
    TriggerKind.VIOLATION_RATE: IncidentTriggerKind.VIOLATION_RATE,
    TriggerKind.LOST_HEARTBEAT: IncidentTriggerKind.HEARTBEAT_LOST,
    TriggerKind.DRIFT: IncidentTriggerKind.COMPLIANCE_DRIFT,
    TriggerKind.DRILL: IncidentTriggerKind.MANUAL,
}
_SEVERITY = {
    TriggerKind.MANUAL: IncidentSeverity.HIGH,
    TriggerKind.VIOLATION_RATE: IncidentSeverity.CRITICAL,
    TriggerKind.LOST_HEARTBEAT: IncidentSeverity.MEDIUM,
    TriggerKind.DRIFT: IncidentSeverity.HIGH,
    TriggerKind.DRILL: IncidentSeverity.LOW,
}


def _actor(principal: str | None) -> tuple[str, ActorKind]:
    if principal is None:
        return ACTOR, ActorKind.COMPONENT
    return principal, ActorKind.PRINCIPAL


class Journal:
    """Audit records and incidents of one controller, in its own open :class:`AuditLog`."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.log = audit_log
        self.incidents = IncidentRecorder.for_log(audit_log)

    # -- plain records ----------------------------------------------------------------------

    async def record(
        self,
        action: str,
        *,
        decision: Decision = Decision.INFO,
        reason: str = "",
        principal: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one record; its seq."""
        return (
            await self.log.append_async(self.event(action, decision, reason, principal, details))
        ).seq

    def record_sync(
        self,
        action: str,
        *,
        decision: Decision = Decision.INFO,
        reason: str = "",
        principal: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        return self.log.append(self.event(action, decision, reason, principal, details)).seq

    @staticmethod
    def event(
        action: str,
        decision: Decision,
        reason: str,
        principal: str | None,
        details: Mapping[str, Any] | None,
    ) -> AuditEvent:
        actor, kind = _actor(principal)
        return AuditEvent(
            actor=actor,
            actor_kind=kind,
            action=action,
            decision=decision,
            reason=reason,
            details=dict(details) if details else None,
        )

    # -- incidents (blocking: call from a worker thread) -------------------------------------

    def open_kill(
        self, trigger: Trigger, incident: str | None, details: Mapping[str, Any]
    ) -> str | None:
        """Record the kill (``shutdown.kill``, allow) and open its incident citing that record;
        with ``incident`` already open (a kill redone after a restart, or one that aborted a
        resume) add it to that incident's timeline instead. The incident's id, or None when
        the log could not record it."""
        try:
            seq = self.record_sync(
                "shutdown.kill",
                decision=Decision.ALLOW,
                reason=trigger.reason,
                principal=trigger.principal,
                details={"trigger": trigger.kind.value, **details},
            )
            by, kind = _actor(trigger.principal)
            if incident is not None:
                self.incidents.add_event(
                    incident,
                    f"kill again ({trigger.kind.value} by {by}): {trigger.reason}",
                    actor=by,
                    actor_kind=kind,
                    evidence=[seq],
                )
                return incident
            opened = self.incidents.open(
                _SEVERITY[trigger.kind],
                IncidentTrigger(_INCIDENT_KIND[trigger.kind], by, trigger.reason[:2000]),
                f"enclave killed ({trigger.kind.value}): {trigger.reason}"[:2000],
                actor=by,
                actor_kind=kind,
                evidence=[seq],
            )
        except EnclaveError as exc:
            log.error("kill: cannot record the kill or open its incident: %s", exc)  # noqa: TRY400
            return incident
        return opened.id

    def action(self, incident: str, result: StepResult) -> None:
        """One kill step in the incident's timeline (its result and duration)."""
        self.incidents.record_action(
            incident,
            result.text[:2000],
            ActionResult.OK if result.ok else ActionResult.FAILED,
            actor=ACTOR,
            actor_kind=ActorKind.COMPONENT,
            duration_ms=result.seconds * 1000,
        )

    def note(
        self,
        incident: str,
        text: str,
        *,
        principal: str | None = None,
        evidence: Iterable[int] = (),
    ) -> None:
        actor, kind = _actor(principal)
        self.incidents.add_event(
            incident, text[:2000], actor=actor, actor_kind=kind, evidence=evidence
        )

    def mitigated(self, incident: str, note: str) -> None:
        current = self.incidents.get(incident)
        if current.status is IncidentStatus.MITIGATED:
            self.note(incident, note)
            return
        self.incidents.set_status(
            incident,
            IncidentStatus.MITIGATED,
            actor=ACTOR,
            actor_kind=ActorKind.COMPONENT,
            note=note[:2000],
        )

    def close(self, incident: str, resolution: str, evidence: Iterable[int]) -> None:
        self.incidents.close(
            incident,
            resolution[:2000],
            actor=ACTOR,
            actor_kind=ActorKind.COMPONENT,
            evidence=evidence,
        )

    async def quietly(self, what: str, call: Any, *args: Any, **kwargs: Any) -> bool:
        """Run a blocking journal call in a worker thread; log (never raise) a failure."""
        try:
            await asyncio.to_thread(call, *args, **kwargs)
        except EnclaveError as exc:
            log.error("cannot record %s: %s", what, exc)  # noqa: TRY400 - one line, no trace
            return False
        return True
