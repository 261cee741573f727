"""The controller's persisted state machine: ``serving -> killing -> killed -> resuming``.

:class:`StateMachine` holds one enclave's :class:`ControllerState` and writes it to a file
(owner-only, fsynced, renamed into place) on every transition, so a restarted controller comes
back in the state it left: a killed enclave stays killed, and a controller that died while
``killing`` finishes the kill (the only safe reading of a half-done kill), while one that died
while ``resuming`` is back in ``killed`` with its approvals kept (the resume is redone).

Resume needs approvals from ``required`` distinct principals holding ``resume``; with
``exclude_trigger`` the principal who killed cannot approve. An approval older than
``approval_ttl`` no longer counts; the same principal approving twice counts once (a replay).
A resume that failed (or was cut short by a controller restart) leaves the enclave killed with
its quorum's approvals kept: any of those approvers asking again tries the resume again
(:attr:`ApprovalOutcome.RETRY`), so a technical failure never locks out the very people who
approved until their approvals expire.
Every method is synchronous and quick: the controller calls them under its own lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from enclave.errors import ConflictError, InputError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "APPROVAL_TTL",
    "Approval",
    "ApprovalOutcome",
    "ControllerState",
    "Mode",
    "StateMachine",
    "Trigger",
    "TriggerKind",
]

APPROVAL_TTL = 15 * 60.0
"""Seconds a resume approval counts for."""


class Mode(StrEnum):
    SERVING = "serving"
    KILLING = "killing"
    KILLED = "killed"
    RESUMING = "resuming"


class TriggerKind(StrEnum):
    MANUAL = "manual"
    VIOLATION_RATE = "violation-rate"
    LOST_HEARTBEAT = "lost-heartbeat"
    DRIFT = "compliance-drift"
    DRILL = "drill"


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    reason: str
    principal: str | None = None
    """Who asked (a manual kill, a drill); None for automatic triggers."""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Approval:
    principal: str
    at: float
    id: str


class ApprovalOutcome(StrEnum):
    COUNTED = "counted"
    QUORUM = "quorum"
    """This approval completed the quorum: the caller resumes now."""
    RETRY = "retry"
    """The quorum stands (its resume failed): this approver asks again, the caller resumes."""
    REPLAYED = "replayed"
    TRIGGERER = "triggerer"
    NOT_KILLED = "not-killed"


@dataclass(slots=True)
class ControllerState:
    mode: Mode = Mode.SERVING
    since: float = field(default_factory=time.time)
    trigger: Trigger | None = None
    incident: str | None = None
    approvals: list[Approval] = field(default_factory=list)
    kills: int = 0
    """How many kills this enclave has seen (each one's generation)."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = self.mode.value
        if self.trigger is not None:
            data["trigger"]["kind"] = self.trigger.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControllerState:
        trigger = data.get("trigger")
        return cls(
            mode=Mode(data["mode"]),
            since=float(data["since"]),
            trigger=(
                Trigger(
                    TriggerKind(trigger["kind"]),
                    str(trigger["reason"]),
                    trigger.get("principal"),
                    float(trigger["at"]),
                )
                if trigger
                else None
            ),
            incident=data.get("incident"),
            approvals=[
                Approval(str(a["principal"]), float(a["at"]), str(a["id"]))
                for a in data.get("approvals") or ()
            ],
            kills=int(data.get("kills", 0)),
        )


class StateMachine:
    """One enclave's controller state, kept in ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        required: int,
        exclude_trigger: bool,
        approval_ttl: float = APPROVAL_TTL,
        clock: Any = time.time,
    ) -> None:
        if required < 1:
            raise InputError("resume needs at least one approval")
        self.path = path
        self.required = required
        self.exclude_trigger = exclude_trigger
        self.approval_ttl = approval_ttl
        self._clock = clock
        self.state = self._load()

    # -- persistence --------------------------------------------------------------------------

    def _load(self) -> ControllerState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ControllerState(since=self._clock())
        except (OSError, ValueError) as exc:
            # never start serving because the record of a kill could not be read
            raise ConflictError(f"controller state {self.path} is unreadable ({exc})") from None
        state = ControllerState.from_dict(data)
        if state.mode is Mode.RESUMING:  # died mid-resume: redo it from killed
            state.mode = Mode.KILLED
        return state

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps(self.state.as_dict(), indent=2, sort_keys=True).encode() + b"\n"
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            temp.replace(self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _enter(self, mode: Mode) -> None:
        self.state.mode = mode
        self.state.since = self._clock()
        self._save()

    # -- transitions ----------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self.state.mode

    def begin_kill(self, trigger: Trigger, incident: str | None = None) -> bool:
        """Enter ``killing`` for ``trigger``; False (nothing changes) unless ``serving``.

        ``incident`` may be named later (:meth:`set_incident`): the controller persists the
        kill first and opens the incident while the gateways are already denying.
        """
        if self.state.mode is not Mode.SERVING:
            return False
        self.state.trigger = trigger
        self.state.incident = incident
        self.state.approvals = []
        self.state.kills += 1
        self._enter(Mode.KILLING)
        return True

    def abort_resume(self, trigger: Trigger) -> bool:
        """A kill that arrives mid-resume: ``resuming -> killing`` for ``trigger``.

        The incident stays open (it is the same one); the approvals are void, and ``trigger``
        is now the kill a resume must be approved for. False (nothing changes) unless
        ``resuming``.
        """
        if self.state.mode is not Mode.RESUMING:
            return False
        self.state.trigger = trigger
        self.state.approvals = []
        self.state.kills += 1
        self._enter(Mode.KILLING)
        return True

    def set_incident(self, incident: str) -> None:
        """Name the incident of the current kill (once it is open)."""
        if self.state.mode is Mode.SERVING:
            raise ConflictError("no kill to attach an incident to")
        self.state.incident = incident
        self._save()

    def killed(self) -> None:
        if self.state.mode is not Mode.KILLING:
            raise ConflictError(f"cannot finish a kill from {self.state.mode}")
        self._enter(Mode.KILLED)

    def approve(self, principal: str) -> ApprovalOutcome:
        """Record ``principal``'s approval to resume; :attr:`ApprovalOutcome.QUORUM` when it
        completes the quorum, :attr:`ApprovalOutcome.RETRY` when ``principal`` is one of a
        quorum whose resume failed (the caller then calls :meth:`begin_resume`)."""
        state = self.state
        if state.mode is not Mode.KILLED:
            return ApprovalOutcome.NOT_KILLED
        now = self._clock()
        state.approvals = [a for a in state.approvals if now - a.at <= self.approval_ttl]
        trigger = state.trigger
        if self.exclude_trigger and trigger is not None and trigger.principal == principal:
            return ApprovalOutcome.TRIGGERER
        if any(a.principal == principal for a in state.approvals):
            if len(state.approvals) >= self.required:
                return ApprovalOutcome.RETRY
            return ApprovalOutcome.REPLAYED
        state.approvals.append(Approval(principal, now, f"res-{secrets.token_hex(6)}"))
        self._save()
        if len(state.approvals) >= self.required:
            return ApprovalOutcome.QUORUM
        return ApprovalOutcome.COUNTED

    def expire(self) -> list[Approval]:
        """Drop the approvals older than ``approval_ttl`` and return them (oldest first)."""
        now = self._clock()
        expired = [a for a in self.state.approvals if now - a.at > self.approval_ttl]
        if expired:
            self.state.approvals = [a for a in self.state.approvals if a not in expired]
            self._save()
        return expired

    def withdraw(self, principal: str) -> bool:
        """Take back ``principal``'s approval (one that could not be recorded must not count);
        False when there was none."""
        kept = [a for a in self.state.approvals if a.principal != principal]
        if len(kept) == len(self.state.approvals):
            return False
        self.state.approvals = kept
        self._save()
        return True

    def quorum(self) -> bool:
        now = self._clock()
        live = [a for a in self.state.approvals if now - a.at <= self.approval_ttl]
        return self.state.mode is Mode.KILLED and len(live) >= self.required

    def begin_resume(self, *, forced: bool = False) -> None:
        """Enter ``resuming``: only from ``killed`` with the quorum (``forced``: a drill's own
        resume of the kill it made)."""
        if self.state.mode is not Mode.KILLED:
            raise ConflictError(f"cannot resume from {self.state.mode}")
        if not forced and not self.quorum():
            raise ConflictError(
                f"resume needs {self.required} approval(s); it has {len(self.state.approvals)}"
            )
        self._enter(Mode.RESUMING)

    def resume_failed(self) -> None:
        """Back to ``killed`` (approvals kept): the enclave never serves half-resumed."""
        if self.state.mode is Mode.RESUMING:
            self._enter(Mode.KILLED)

    def resumed(self) -> None:
        if self.state.mode is not Mode.RESUMING:
            raise ConflictError(f"cannot finish a resume from {self.state.mode}")
        self.state.trigger = None
        self.state.incident = None
        self.state.approvals = []
        self._enter(Mode.SERVING)
