"""Requests that wait for a human: the two-person rule for sensitive purposes.

A request whose purpose requires approval is not forwarded. The gateway keeps it here and
answers ``202 approval_required`` with the approval's id. A *different* principal holding the
``approve`` action approves (or denies) it; the app then executes the stored request and
records the result with :meth:`ApprovalStore.complete`; the requester fetches it exactly once.

Lifecycle::

    create -> pending --approve--> approved --complete--> completed --fetch--> (gone)
                      \\--deny----> denied ------------------------fetch--> (gone)

Everything expires: an approval not decided within ``ttl``, and a result (or a refusal) not
fetched within ``result_ttl``, is dropped. The store is in memory, bounded in total and per
requester (so that one principal cannot crowd out the others), and lives as long as the gateway
process: a gateway restart forgets pending approvals (the requester asks again). Not
thread-safe: use it from the event loop's thread.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from enclave.audit.record import AuditEvent, Decision
from enclave.gateway.denial import Denial, DenialCode
from enclave.spec.model import Action

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.gateway.policy import Principal

log = logging.getLogger(__name__)


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    ttl: float = 900.0
    """Seconds an approval may stay undecided."""
    result_ttl: float = 900.0
    """Seconds a decided approval (its result or its refusal) waits to be fetched."""
    capacity: int = 1024
    """Approvals kept at most, in every state."""
    per_requester: int = 16
    """Undecided approvals one principal may have at a time."""


@dataclass(slots=True)
class Approval:
    """One held request. ``body`` is the exact request to execute once approved."""

    id: str
    requester: str
    purpose: str
    endpoint: str
    payload_sha256: str
    body: bytes = field(repr=False)
    model: str | None
    created: float
    expires: float
    status: ApprovalStatus = ApprovalStatus.PENDING
    approver: str | None = None
    reason: str = ""
    result: bytes | None = field(default=None, repr=False)
    result_status: int | None = None

    def summary(self) -> dict[str, object]:
        """What a listing shows (no body, no result)."""
        return {
            "id": self.id,
            "requester": self.requester,
            "purpose": self.purpose,
            "endpoint": self.endpoint,
            "model": self.model,
            "payload_sha256": self.payload_sha256,
            "status": self.status.value,
            "approver": self.approver,
        }


def _new_id() -> str:
    return "apr-" + secrets.token_hex(12)


class ApprovalStore:
    """Held requests, by id."""

    def __init__(
        self,
        settings: ApprovalSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.settings = settings or ApprovalSettings()
        self._clock = clock
        self._new_id = new_id
        self._items: dict[str, Approval] = {}

    def __len__(self) -> int:
        self.expire()
        return len(self._items)

    def expire(self) -> int:
        """Drop what expired; returns how many."""
        now = self._clock()
        gone = [key for key, item in self._items.items() if item.expires <= now]
        for key in gone:
            item = self._items.pop(key)
            log.info("approval %s (%s) expired while %s", key, item.purpose, item.status.value)
        return len(gone)

    def _live(self, approval_id: str) -> Approval | None:
        item = self._items.get(approval_id)
        if item is not None and item.expires <= self._clock():
            del self._items[approval_id]
            return None
        return item

    def create(
        self,
        requester: Principal,
        purpose: str,
        payload_sha256: str,
        body: bytes,
        *,
        endpoint: str,
        model: str | None = None,
    ) -> Approval | Denial:
        """Hold a request; ``429 rate_limited`` when the store (or the requester) is full."""
        self.expire()
        now = self._clock()
        waiting = [
            item
            for item in self._items.values()
            if item.requester == requester.name and item.status is ApprovalStatus.PENDING
        ]
        if len(waiting) >= self.settings.per_requester:
            retry = min(item.expires for item in waiting) - now
            return Denial(
                DenialCode.RATE_LIMITED,
                f"{len(waiting)} requests are already waiting for approval",
                retry_after=max(retry, 1.0),
            )
        if len(self._items) >= self.settings.capacity:
            retry = min(item.expires for item in self._items.values()) - now
            return Denial(
                DenialCode.RATE_LIMITED,
                "too many requests are waiting for approval",
                retry_after=max(retry, 1.0),
            )
        approval = Approval(
            id=self._new_id(),
            requester=requester.name,
            purpose=purpose,
            endpoint=endpoint,
            payload_sha256=payload_sha256,
            body=body,
            model=model,
            created=now,
            expires=now + self.settings.ttl,
        )
        self._items[approval.id] = approval
        return approval

    def get(self, approval_id: str) -> Approval | None:
        return self._live(approval_id)

    def list(
        self, *, status: ApprovalStatus | None = None, requester: str | None = None
    ) -> list[Approval]:
        """Live approvals, oldest first (optionally one status's or one requester's)."""
        self.expire()
        return [
            item
            for item in sorted(self._items.values(), key=lambda i: i.created)
            if (status is None or item.status is status)
            and (requester is None or item.requester == requester)
        ]

    def _decidable(self, approval_id: str, approver: Principal) -> Approval | Denial:
        if not approver.can(Action.APPROVE):
            return Denial(
                DenialCode.FORBIDDEN,
                f"principal {approver.name!r} is not granted the 'approve' action",
            )
        item = self._live(approval_id)
        if item is None:
            return Denial(DenialCode.NOT_FOUND, "no such approval (it may have expired)")
        if item.requester == approver.name:
            return Denial(
                DenialCode.FORBIDDEN,
                "a request must be approved by someone other than its requester",
                approval_id=item.id,
            )
        if item.status is not ApprovalStatus.PENDING:
            return Denial(
                DenialCode.CONFLICT,
                f"the approval was already decided ({item.status.value})",
                approval_id=item.id,
            )
        return item

    def approve(self, approval_id: str, approver: Principal) -> Approval | Denial:
        """Approve: the app then executes ``approval.body`` and calls :meth:`complete`."""
        item = self._decidable(approval_id, approver)
        if isinstance(item, Denial):
            return item
        item.status = ApprovalStatus.APPROVED
        item.approver = approver.name
        item.expires = self._clock() + self.settings.result_ttl
        return item

    def deny(self, approval_id: str, approver: Principal, reason: str = "") -> Approval | Denial:
        item = self._decidable(approval_id, approver)
        if isinstance(item, Denial):
            return item
        item.status = ApprovalStatus.DENIED
        item.approver = approver.name
        item.reason = reason[:500]
        item.body = b""
        item.expires = self._clock() + self.settings.result_ttl
        return item

    def complete(self, approval_id: str, result: bytes, *, status: int = 200) -> Approval | Denial:
        """Store the executed request's response for its requester to fetch."""
        item = self._live(approval_id)
        if item is None:
            return Denial(DenialCode.NOT_FOUND, "no such approval (it may have expired)")
        if item.status is not ApprovalStatus.APPROVED:
            return Denial(
                DenialCode.CONFLICT,
                f"only an approved request can be completed ({item.status.value})",
                approval_id=item.id,
            )
        item.status = ApprovalStatus.COMPLETED
        item.result = result
        item.result_status = status
        item.body = b""
        item.expires = self._clock() + self.settings.result_ttl
        return item

    def fetch(self, approval_id: str, requester: Principal) -> Approval | Denial:
        """The requester's result, once: a completed approval is removed when fetched.

        Someone else's approval reads as ``404 not_found`` (ids are not confirmed to
        strangers); an undecided or running one as ``202 approval_required``; a refused one as
        ``403 approval_denied`` (once, too).
        """
        item = self._live(approval_id)
        if item is None or item.requester != requester.name:
            return Denial(DenialCode.NOT_FOUND, "no such approval (it may have expired)")
        if item.status is ApprovalStatus.PENDING:
            return Denial(
                DenialCode.APPROVAL_REQUIRED, "still waiting for an approver", approval_id=item.id
            )
        if item.status is ApprovalStatus.APPROVED:
            return Denial(
                DenialCode.APPROVAL_REQUIRED,
                "approved; the request is running",
                approval_id=item.id,
            )
        del self._items[item.id]
        if item.status is ApprovalStatus.DENIED:
            why = f": {item.reason}" if item.reason else ""
            return Denial(
                DenialCode.APPROVAL_DENIED,
                f"approver {item.approver} refused the request{why}",
                approval_id=item.id,
            )
        return item


def approval_event(approval: Approval, action: str, actor: Principal) -> AuditEvent:
    """The audit record of an approval step.

    ``action`` is ``approval.grant``, ``approval.deny``, ``approval.fetch``, ...
    """
    decision = {
        "approval.grant": Decision.ALLOW,
        "approval.deny": Decision.DENY,
    }.get(action, Decision.INFO)
    return AuditEvent(
        actor=actor.name,
        action=action,
        decision=decision,
        reason=approval.status.value,
        purpose=approval.purpose,
        model=approval.model,
        request_id=approval.id,
        prompt_sha256=approval.payload_sha256,
        details={
            "requester": approval.requester,
            "approver": approval.approver,
            "endpoint": approval.endpoint,
        },
    )
