"""The shutdown controller: heartbeats, triggers, the ordered kill and the two-person resume.

It runs as a *host* process (``enclave controller run``, started by ``enclave up``), outside the
enclave's data plane: the kill needs the Docker API (SIGKILL the model containers, detach
networks), and a Docker socket inside a container would hand that container the whole host. It
has its own Vault identity (AppRole ``controller`` on the enclave's control mount, so revoking
every workload token never revokes its own), its own audit log and its own state file::

    <state>/enclaves/<name>/controller/state.json   the state machine (enclave.shutdown.state)
    <state>/enclaves/<name>/controller/audit/       its audit log (enclave.shutdown.journal)
    <state>/enclaves/<name>/controller/audit/audit.pub  the public keys of the enclave's Vault
                                                    transit key that signs its checkpoints
    <state>/enclaves/<name>/controller/api.sock     its API (enclave.shutdown.api), 0600

**States.** ``serving -> killing -> killed -> resuming -> serving``, persisted before anything
is done about them. While serving it heartbeats every gateway (the lease of their dead-man
switch); from the first moment of a kill it stops, so every gateway also stops serving when its
lease lapses, whatever happens to the rest of the kill. A restarted controller comes back in
the state it left: killed stays killed (it re-sends KILL to the gateways and never heartbeats),
one that died while killing redoes the whole kill, one that died while resuming is killed again
(its approvals kept).

**Triggers.** :meth:`Controller.kill` with a :class:`~enclave.shutdown.state.Trigger`: a person
holding ``kill`` (the API), the policy-violation rate (the gateways' audit logs, tailed
read-only: more than ``spec.shutdown.violationsPerMinute`` violations in a sliding minute),
compliance drift (:meth:`Controller.drift`, which kills when ``spec.compliance.onDrift`` is
``kill``) and, only when configured (``lost_heartbeat_kills``), a lost heartbeat.

*Lost heartbeats do not kill by default.* A gateway that misses two heartbeats in a row is
recorded (``shutdown.heartbeat-lost``, and ``-restored`` when it answers again), and that is
all: the gateway already fails closed on its own (it serves only while its lease holds, so a
gateway the controller cannot reach stops serving within one lease), and killing the whole
enclave because one link hiccupped would turn every network blip or gateway restart into an
incident needing a two-person resume. An operator who wants that stricter reading runs the
controller with ``--on-lost-heartbeat kill``.

**The kill** (:mod:`enclave.shutdown.actions`, in order, each timed and retried): signed KILL to
every gateway (deny everything, cut in-flight streams) -> model containers SIGKILLed and
detached -> gateways off the internal network -> every workload Vault token revoked (-> Vault
sealed when the spec says so). The KILL goes out at once; the ``shutdown.kill`` record and the
incident are written while it is in flight, and each step's result joins the incident's
timeline as it ends. The incident stays open (``mitigated`` once every step succeeded) until a
resume closes it. A step that failed (the Docker engine down, a gateway unreachable) is tried
again every ``retry_every`` seconds for as long as the enclave stays killed, until it succeeds;
so are the engine and Vault steps after a restart while killed, and after a failed resume
(which may have started containers and issued credentials).

**The resume** needs ``spec.shutdown.resumeApprovals`` approvals from distinct principals
holding ``resume`` (not the one who killed, with ``resumeExcludesTrigger``; an approval counts
for :data:`~enclave.shutdown.state.APPROVAL_TTL`). The approval that completes the quorum runs
it: the workload restarted through the backend (fresh credentials, in a worker thread), then a
heartbeat and RESUME to every gateway, then every gateway's ``/healthz`` must answer 200; only
then is the enclave ``serving`` and the incident closed. If any of it fails the gateways are
told KILL again and the enclave stays ``killed`` with the reason recorded (and its approvals
kept: any of its approvers approving again runs the resume again). A kill that arrives
mid-resume aborts it (the kill runs at once; the resume notices and stops).

Every transition happens under one :class:`asyncio.Lock`, so any number of concurrent kill and
resume calls leave the state machine consistent; the kill's actions and the resume's restart
run outside it (their state, ``killing`` or ``resuming``, refuses what must not overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar

from enclave.audit.record import Decision
from enclave.errors import EnclaveError, InputError
from enclave.shutdown.actions import (
    EnclaveEffects,
    KillSettings,
    Step,
    StepResult,
    attempt,
    run_kill,
)
from enclave.shutdown.authority import Authenticator, Caller, Refusal
from enclave.shutdown.control import MAX_REASON, ControlKind
from enclave.shutdown.heartbeat import GatewayLink, Heartbeater, HeartbeatSettings, LinkStats
from enclave.shutdown.journal import ANONYMOUS
from enclave.shutdown.state import ApprovalOutcome, Mode, Trigger, TriggerKind
from enclave.shutdown.triggers import AuditTail, ViolationWindow
from enclave.spec.model import Action, DriftAction

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence
    from pathlib import Path

    import httpx

    from enclave.shutdown.actions import KillEffects
    from enclave.shutdown.authority import ControllerVault
    from enclave.shutdown.journal import Journal
    from enclave.shutdown.state import StateMachine
    from enclave.shutdown.workload import Workload
    from enclave.spec.model import EnclaveSpec

log = logging.getLogger(__name__)

__all__ = ["Controller", "ControllerSettings", "KillOutcome", "ResumeOutcome"]

LOST_AFTER = 2
"""Consecutive missed heartbeats after which a gateway counts as lost."""
_REPLY_TIMEOUT = 5.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    heartbeat: HeartbeatSettings
    violations_per_minute: int = 5
    seal: bool = False
    """Seal Vault as the kill's last step (``spec.shutdown.sealVault``)."""
    drift_kills: bool = False
    """``spec.compliance.onDrift: kill``."""
    lost_heartbeat_kills: bool = False
    """Kill when a gateway misses :data:`LOST_AFTER` heartbeats in a row (off: record only)."""
    health_timeout: float = 60.0
    """Seconds a resume waits for every gateway's ``/healthz`` to answer 200."""
    attempts: int = 3
    """Tries per kill step (and per RESUME)."""
    backoff: float = 0.05
    poll_interval: float = 0.2
    """Seconds between two reads of the gateways' audit logs."""
    retry_every: float = 5.0
    """Seconds between two tries, while killed, of the kill steps still undone."""

    @classmethod
    def from_spec(cls, spec: EnclaveSpec, *, lost_heartbeat_kills: bool = False) -> Self:
        return cls(
            heartbeat=HeartbeatSettings.from_spec(spec.shutdown),
            violations_per_minute=spec.shutdown.violations_per_minute,
            seal=spec.shutdown.seal_vault,
            drift_kills=spec.compliance.on_drift is DriftAction.KILL,
            lost_heartbeat_kills=lost_heartbeat_kills,
        )


@dataclass(slots=True)
class KillOutcome:
    """What a kill call did: ran the kill (``accepted``), or found the enclave not serving."""

    accepted: bool
    mode: Mode
    incident: str | None = None
    steps: list[StepResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "mode": self.mode.value,
            "incident": self.incident,
            "steps": [s.as_dict() for s in self.steps],
        }


@dataclass(slots=True)
class ResumeOutcome:
    """What one approval led to."""

    outcome: ApprovalOutcome
    mode: Mode
    approvals: list[str]
    required: int
    expired: list[str] = field(default_factory=list)
    resumed: bool = False
    error: str = ""
    incident: str | None = None
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "mode": self.mode.value,
            "approvals": self.approvals,
            "required": self.required,
            "expired": self.expired,
            "resumed": self.resumed,
            "failure": self.error or None,
            "incident": self.incident,
            "seconds": self.seconds,
        }


DRILL_TARGETS_MS: dict[str, float] = {
    "gateways_denying": 100.0,
    "client_deny": 100.0,
    "client_stream_cut": 250.0,
    "models_stopped": 2000.0,
    "vault_revoked": 1000.0,
}
"""The issue's targets for a drill's latencies (ms from the trigger); a drill passes when
every one it measured is met (the client's only when the drill ran load)."""

_DRILL_STEPS = {
    Step.DENY: "gateways_denying",
    Step.STOP_MODELS: "models_stopped",
    Step.DETACH: "networks_detached",
    Step.REVOKE: "vault_revoked",
    Step.SEAL: "vault_sealed",
}


class _ResumeError(EnclaveError):
    """A resume step failed (the message says which)."""


_RESUMES = frozenset({ApprovalOutcome.QUORUM, ApprovalOutcome.RETRY})
"""The approval outcomes that start the resume."""

# the answers refused approvals get: (HTTP status, error code)
_APPROVAL_REFUSALS = {
    ApprovalOutcome.TRIGGERER: (403, "self_approval"),
    ApprovalOutcome.REPLAYED: (409, "replayed_approval"),
    ApprovalOutcome.NOT_KILLED: (409, "not_killed"),
}


class Controller:
    """One enclave's shutdown controller (see the module docstring)."""

    def __init__(
        self,
        enclave: str,
        gateways: Sequence[str],
        key: bytes,
        settings: ControllerSettings,
        *,
        machine: StateMachine,
        journal: Journal,
        authenticator: Authenticator | None = None,
        workload: Workload | None = None,
        vault: ControllerVault | None = None,
        gateway_audit: Sequence[Path] = (),
        effects: KillEffects | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.enclave = enclave
        self.settings = settings
        self.machine = machine
        self.journal = journal
        self.authenticator = authenticator
        self.workload = workload
        beat = settings.heartbeat
        self.links = [
            GatewayLink(
                url, key, identity=beat.identity, timeout=beat.request_timeout, transport=transport
            )
            for url in dict.fromkeys(gateways)  # each gateway once, in the order given
        ]
        self.beating = asyncio.Event()
        """Set while the gateways get heartbeats (serving, and a resume past its RESUME)."""
        self.heartbeater = Heartbeater(self.links, beat, gate=self.beating)
        self.effects: KillEffects = effects or EnclaveEffects(self.links, workload, vault)
        self.tails = [AuditTail(path) for path in gateway_audit]
        self.window = ViolationWindow(settings.violations_per_minute)
        self.lost: set[str] = set()
        self.last_kill: KillOutcome | None = None
        self.last_resume: ResumeOutcome | None = None
        self.undone: set[Step] = set()
        """Kill steps still to do while killed (:meth:`_finish_kill`)."""
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kill_settings = KillSettings(
            seal=settings.seal, attempts=settings.attempts, backoff=settings.backoff
        )

    @property
    def stats(self) -> dict[str, LinkStats]:
        return self.heartbeater.stats

    @property
    def mode(self) -> Mode:
        return self.machine.mode

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task that outlives the request that started it (a client hanging up never
        stops a kill or a resume half-way)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Act on the state this controller was left in; call once before :meth:`run`."""
        mode = self.machine.mode
        gateways = [link.url for link in self.links]
        await self._record_quietly(
            "shutdown.start",
            reason=f"started {mode.value}",
            details={"mode": mode.value, "gateways": gateways},
        )
        trigger = self.machine.state.trigger
        if mode is Mode.SERVING:
            self.beating.set()
        elif mode is Mode.KILLING:
            log.warning("the controller stopped during a kill: doing the whole kill again")
            self._spawn(
                self._execute_kill(
                    trigger or Trigger(TriggerKind.MANUAL, "unknown trigger"),
                    time.perf_counter(),
                    {"redone": "the controller restarted during the kill"},
                )
            )
        else:  # killed (a resume that was under way is redone from killed: enclave.shutdown.state)
            reason = trigger.reason if trigger else "killed"
            denied = await attempt(
                Step.DENY,
                lambda: self.effects.deny(f"killed (controller restarted): {reason}"[:MAX_REASON]),
                self._kill_settings,
            )
            answer = denied.detail
            # what the last kill left undone, or a resume half-started, is not known here: the
            # engine and Vault steps are made sure of again (each is a no-op when done)
            self.undone = {Step.STOP_MODELS, Step.DETACH, Step.REVOKE}
            if not denied.ok:
                self.undone.add(Step.DENY)
            log.warning("enclave %s is killed; KILL sent again: %s", self.enclave, answer)
            incident = self.machine.state.incident
            if incident is not None:
                await self.journal.quietly(
                    "restart note",
                    self.journal.note,
                    incident,
                    f"the controller restarted while killed; KILL sent again: {answer}",
                )
        # after the gateways heard what they must: connections a kill would otherwise wait for
        if self.authenticator is not None:
            await asyncio.to_thread(self.authenticator.warm)
        if self.workload is not None:
            await asyncio.to_thread(self.workload.warm)

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and watch the triggers until ``stop`` is set; then finish what is under way
        (a kill is never left half-done by a stop) and close the links."""
        log.info("controller of enclave %s running (%s)", self.enclave, self.mode.value)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.heartbeater.run(stop), name="heartbeat")
                tasks.create_task(self._watch_heartbeats(stop), name="heartbeat-watch")
                tasks.create_task(self._finish_kills(stop), name="kill-finisher")
                if self.tails:
                    tasks.create_task(self._watch_violations(stop), name="violation-watch")
        finally:
            pending = list(self._tasks)
            if pending:
                log.info("waiting for %d kill/resume task(s) to finish", len(pending))
                await asyncio.wait(pending, timeout=self.settings.health_timeout + 30)
            for link in self.links:
                await link.aclose()
            log.info("controller of enclave %s stopped", self.enclave)

    # -- kill -------------------------------------------------------------------------------

    async def kill(
        self,
        trigger: Trigger,
        *,
        t0: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> KillOutcome:
        """Kill the enclave for ``trigger``; returns when every step has run.

        Not ``accepted`` (nothing done) when the enclave is already killing or killed. A kill
        mid-resume aborts the resume. ``t0`` is when the trigger reached the controller
        (``time.perf_counter()``); the steps' offsets count from it.
        """
        start = time.perf_counter() if t0 is None else t0
        async with self._lock:
            mode = self.machine.mode
            if mode is Mode.RESUMING:
                self.machine.abort_resume(trigger)
                log.warning("kill during a resume: the resume is aborted")
            elif not self.machine.begin_kill(trigger):
                return KillOutcome(False, mode, self.machine.state.incident)
            self.beating.clear()
            task = self._spawn(self._execute_kill(trigger, start, dict(details or {})))
        return await asyncio.shield(task)

    async def _execute_kill(
        self, trigger: Trigger, t0: float, details: dict[str, Any]
    ) -> KillOutcome:
        log.warning(
            "killing enclave %s (%s by %s): %s",
            self.enclave,
            trigger.kind.value,
            trigger.principal or "the controller",
            trigger.reason,
        )
        existing = self.machine.state.incident
        opening = asyncio.ensure_future(
            asyncio.to_thread(self.journal.open_kill, trigger, existing, details)
        )
        steps: asyncio.Queue[StepResult | None] = asyncio.Queue()

        async def record_steps() -> None:
            incident = await opening
            while (result := await steps.get()) is not None:
                if incident is not None:
                    await self.journal.quietly("a kill step", self.journal.action, incident, result)

        recorder = asyncio.ensure_future(record_steps())
        reason = f"{trigger.kind.value}: {trigger.reason}"[:MAX_REASON]
        results = await run_kill(
            self.effects, reason, self._kill_settings, t0=t0, on_step=steps.put_nowait
        )
        steps.put_nowait(None)
        await recorder
        incident = await opening
        async with self._lock:
            if incident is not None and self.machine.state.incident != incident:
                self.machine.set_incident(incident)
            if self.machine.mode is Mode.KILLING:
                self.machine.killed()
                self.undone = {r.step for r in results if not r.ok}
            mode = self.machine.mode
        failed = [r.step.value for r in results if not r.ok]
        if incident is not None:
            if failed:
                note = f"killed; {len(failed)} step(s) failed: {', '.join(failed)}"
                await self.journal.quietly("the kill's end", self.journal.note, incident, note)
            else:
                note = f"every kill step succeeded in {results[-1].offset * 1000:.1f} ms"
                await self.journal.quietly("the kill's end", self.journal.mitigated, incident, note)
        outcome = KillOutcome(True, mode, incident, results)
        self.last_kill = outcome
        summary = "; ".join(
            f"{r.step.value} {'ok' if r.ok else 'FAILED'} +{r.offset * 1000:.1f}ms" for r in results
        )
        log.warning("enclave %s killed: %s", self.enclave, summary)
        return outcome

    async def _deny_all(self, reason: str) -> str:
        """KILL to every gateway (best effort, retried); a one-line summary."""
        text = reason[:MAX_REASON]
        result = await attempt(Step.DENY, lambda: self.effects.deny(text), self._kill_settings)
        return result.detail

    # -- resume ---------------------------------------------------------------------------------

    async def approve(self, caller: Caller) -> ResumeOutcome:
        """Count ``caller``'s approval (they hold ``resume``); the approval that completes the
        quorum resumes the enclave, and this returns when that resume has succeeded or failed.

        Raises :class:`~enclave.errors.AuditError` when the approval cannot be recorded (no
        resume starts unrecorded).
        """
        task: asyncio.Task[ResumeOutcome] | None = None
        async with self._lock:
            expired = [a.principal for a in self.machine.expire()]
            outcome = self.machine.approve(caller.principal)
            state = self.machine.state
            approvers = [a.principal for a in state.approvals]
            result = ResumeOutcome(
                outcome,
                state.mode,
                approvers,
                self.machine.required,
                expired,
                incident=state.incident,
            )
            if expired:
                await self.journal.record(
                    "shutdown.approval-expired",
                    reason=f"approval(s) older than {self.machine.approval_ttl:g}s no longer "
                    f"count: {', '.join(expired)}",
                    details={"principals": expired, "incident": state.incident},
                )
            refused = _APPROVAL_REFUSALS.get(outcome)
            try:
                seq = await self.journal.record(
                    "shutdown.resume",
                    decision=Decision.DENY if refused else Decision.ALLOW,
                    reason=outcome.value,
                    principal=caller.principal,
                    details={
                        "token_id": caller.token_id,
                        "mode": state.mode.value,
                        "approvals": approvers,
                        "required": self.machine.required,
                        "incident": state.incident,
                    },
                )
            except EnclaveError:
                if refused is None:  # an approval nobody can audit does not count
                    self.machine.withdraw(caller.principal)
                raise
            if refused is None and state.incident is not None:
                await self.journal.quietly(
                    "an approval",
                    self.journal.note,
                    state.incident,
                    f"resume {'retried' if outcome is ApprovalOutcome.RETRY else 'approved'} by "
                    f"{caller.principal} ({len(approvers)} of {self.machine.required})",
                    principal=caller.principal,
                    evidence=[seq],
                )
            if outcome in _RESUMES:
                self.machine.begin_resume()
                task = self._spawn(self._resume(approvers))
        if task is None:
            return result
        return await asyncio.shield(task)

    async def _resume(self, approvers: list[str]) -> ResumeOutcome:
        started = time.perf_counter()
        incident = self.machine.state.incident
        log.warning("resuming enclave %s (approved by %s)", self.enclave, ", ".join(approvers))
        try:
            if self.workload is not None:
                detail = await asyncio.to_thread(self.workload.restart)
                if incident is not None:
                    await self.journal.quietly(
                        "the restart", self.journal.note, incident, f"workload restarted: {detail}"
                    )
            async with self._lock:
                if self.machine.mode is not Mode.RESUMING:
                    return await self._resume_aborted(approvers)
                self.heartbeater.reset()
                self.lost.clear()
                await self._lift()
                self.beating.set()
            await self._wait_healthy(time.monotonic() + self.settings.health_timeout)
            async with self._lock:
                if self.machine.mode is not Mode.RESUMING:
                    return await self._resume_aborted(approvers)
                self.machine.resumed()
                self.undone.clear()
                self.window.reset(time.time())
        except Exception as exc:
            return await self._resume_failed(approvers, exc, started)
        seconds = time.perf_counter() - started
        outcome = ResumeOutcome(
            ApprovalOutcome.QUORUM,
            Mode.SERVING,
            approvers,
            self.machine.required,
            resumed=True,
            incident=incident,
            seconds=seconds,
        )
        self.last_resume = outcome
        seq = await self._record_quietly(
            "shutdown.resumed",
            reason=f"serving again, approved by {', '.join(approvers)}",
            details={"approvers": approvers, "incident": incident, "seconds": round(seconds, 3)},
        )
        if incident is not None:
            await self.journal.quietly(
                "the incident's close",
                self.journal.close,
                incident,
                f"resumed after approvals by {', '.join(approvers)} ({seconds:.1f} s)",
                [seq] if seq is not None else [],
            )
        log.warning("enclave %s serving again (%.2f s)", self.enclave, seconds)
        return outcome

    async def _lift(self) -> None:
        """A heartbeat, then RESUME, to every gateway (each retried); raises if any refuses."""
        for kind in (ControlKind.HEARTBEAT, ControlKind.RESUME):
            lease = self.settings.heartbeat.lease if kind is ControlKind.HEARTBEAT else None
            pending = list(self.links)
            errors: list[str] = []
            for tried in range(self.settings.attempts):
                if tried:
                    await asyncio.sleep(self.settings.backoff * 2 ** (tried - 1))
                results = await asyncio.gather(*(link.send(kind, lease=lease) for link in pending))
                errors = [f"{r.url}: {r.error}" for r in results if not r.ok]
                pending = [link for link, r in zip(pending, results, strict=True) if not r.ok]
                if not pending:
                    break
            if pending:
                raise _ResumeError(f"{kind.value} refused: " + "; ".join(errors))

    async def _wait_healthy(self, deadline: float) -> None:
        while True:
            if self.machine.mode is not Mode.RESUMING:
                return  # aborted: the caller sees it under the lock
            codes = await asyncio.gather(*(link.healthz() for link in self.links))
            if all(code == 200 for code in codes):
                return
            if time.monotonic() >= deadline:
                pairs = zip(self.links, codes, strict=True)
                bad = [f"{link.url}: HTTP {code}" for link, code in pairs if code != 200]
                raise _ResumeError(
                    f"gateway(s) not healthy after {self.settings.health_timeout:g} s: "
                    + "; ".join(bad)
                )
            await asyncio.sleep(0.05)

    async def _resume_aborted(self, approvers: list[str]) -> ResumeOutcome:
        """A kill came while resuming (the lock is held): make sure nothing restarted serves."""
        self.beating.clear()
        answer = await self._deny_all("killed during a resume")
        if self.workload is not None:
            # the restart may have started containers after the kill stopped the old ones
            await attempt(Step.STOP_MODELS, self.effects.stop_models, self._kill_settings)
            await attempt(Step.DETACH, self.effects.detach_networks, self._kill_settings)
        log.warning("resume aborted by a kill; KILL sent again: %s", answer)
        return ResumeOutcome(
            ApprovalOutcome.QUORUM,
            self.machine.mode,
            approvers,
            self.machine.required,
            error="aborted by a kill",
            incident=self.machine.state.incident,
        )

    async def _resume_failed(
        self, approvers: list[str], exc: Exception, started: float
    ) -> ResumeOutcome:
        why = str(exc) if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
        async with self._lock:
            if self.machine.mode is Mode.RESUMING:
                self.beating.clear()
                await self._deny_all(f"resume failed: {why}")
                self.machine.resume_failed()
                # the restart may have started containers and handed out credentials
                self.undone |= {Step.STOP_MODELS, Step.DETACH, Step.REVOKE}
            mode = self.machine.mode
            incident = self.machine.state.incident
        log.error("resume of enclave %s failed, it stays killed: %s", self.enclave, why)
        await self._record_quietly(
            "shutdown.resume-failed",
            decision=Decision.ERROR,
            reason=why[:2000],
            details={"approvers": approvers, "incident": incident},
        )
        if incident is not None:
            await self.journal.quietly(
                "the failed resume",
                self.journal.note,
                incident,
                f"resume failed, the enclave stays killed: {why}",
            )
        outcome = ResumeOutcome(
            ApprovalOutcome.QUORUM,
            mode,
            approvers,
            self.machine.required,
            error=why,
            incident=incident,
            seconds=time.perf_counter() - started,
        )
        self.last_resume = outcome
        return outcome

    async def _finish_kills(self, stop: asyncio.Event) -> None:
        """While killed, try the kill's undone steps again every ``retry_every`` seconds (at
        once when the controller starts killed)."""
        while not stop.is_set():
            if self.undone and self.machine.mode is Mode.KILLED:
                await self._finish_kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.retry_every)

    async def _finish_kill(self) -> None:
        """One try of each undone kill step (the engine down, a gateway unreachable, Vault
        sealed: whatever failed), in the kill's order; each success joins the incident.

        Under the lock, so no resume starts while a step runs (a model container must not be
        stopped under a resume that has just started it). One try per step and round keeps
        the lock short; the next round comes ``retry_every`` seconds later.
        """
        async with self._lock:
            if self.machine.mode is not Mode.KILLED:
                return
            trigger = self.machine.state.trigger
            reason = f"killed: {trigger.reason if trigger else 'killed'}"[:MAX_REASON]
            # offsets from the trigger, by the wall clock (this process may not have seen it)
            t0 = None if trigger is None else time.perf_counter() - (time.time() - trigger.at)
            calls = {
                Step.DENY: lambda: self.effects.deny(reason),
                Step.STOP_MODELS: self.effects.stop_models,
                Step.DETACH: self.effects.detach_networks,
                Step.REVOKE: self.effects.revoke,
                Step.SEAL: self.effects.seal,
            }
            once = KillSettings(seal=self.settings.seal, attempts=1)
            done: list[StepResult] = []
            for step in [s for s in Step if s in self.undone]:
                result = await attempt(step, calls[step], once, t0=t0)
                if result.ok:
                    self.undone.discard(step)
                    done.append(result)
            incident = self.machine.state.incident
            left = sorted(s.value for s in self.undone)
        for result in done:
            log.warning("kill step done on a later try: %s", result.text)
            if incident is not None:
                await self.journal.quietly("a kill step", self.journal.action, incident, result)
        if done and not left and incident is not None:
            note = "every kill step done (" + ", ".join(r.step.value for r in done) + " later)"
            await self.journal.quietly("the kill's end", self.journal.mitigated, incident, note)

    # -- the other triggers -----------------------------------------------------------------

    async def drift(self, reason: str) -> KillOutcome | None:
        """The compliance engine's hook: drift was found. Kills when ``onDrift: kill``."""
        if not reason.strip():
            raise InputError("drift: give a reason")
        action = "kill" if self.settings.drift_kills else "alert"
        await self._record_quietly(
            "shutdown.drift",
            decision=Decision.INFO,
            reason=reason[:2000],
            details={"on_drift": action, "mode": self.mode.value},
        )
        if not self.settings.drift_kills:
            log.warning("compliance drift (onDrift: alert): %s", reason)
            return None
        return await self.kill(Trigger(TriggerKind.DRIFT, reason[:MAX_REASON]))

    async def _watch_violations(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for tail in self.tails:
                for record in await asyncio.to_thread(tail.poll):
                    self.window.add(record)
            if self.machine.mode is Mode.SERVING:
                now = time.time()
                over = self.window.exceeded(now)
                if over is not None:
                    self.window.reset(now)
                    seqs = [v.seq for v in over]
                    uses = sorted({v.use for v in over})
                    reason = (
                        f"{len(over)} policy violations in the last minute (limit "
                        f"{self.settings.violations_per_minute}/min; {', '.join(uses)}); "
                        f"gateway audit seq {seqs[0]}..{seqs[-1]}"
                    )
                    details = {
                        "gateway_log": self.tails[0].log_id if len(self.tails) == 1 else None,
                        "violations": seqs[-256:],
                    }
                    self._spawn(
                        self.kill(Trigger(TriggerKind.VIOLATION_RATE, reason), details=details)
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval)

    async def _watch_heartbeats(self, stop: asyncio.Event) -> None:
        interval = self.settings.heartbeat.interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not self.beating.is_set():
                continue
            for url, stats in self.heartbeater.stats.items():
                await self._check_link(url, stats)

    async def _check_link(self, url: str, stats: LinkStats) -> None:
        if stats.consecutive_misses >= LOST_AFTER and url not in self.lost:
            self.lost.add(url)
            action = "kill" if self.settings.lost_heartbeat_kills else "record"
            reason = (
                f"gateway {url} missed {stats.consecutive_misses} heartbeats in a row "
                f"({stats.last_error})"
            )
            log.warning("%s (on lost heartbeat: %s)", reason, action)
            await self._record_quietly(
                "shutdown.heartbeat-lost",
                decision=Decision.ERROR,
                reason=reason[:2000],
                details={"gateway": url, "misses": stats.consecutive_misses, "then": action},
            )
            if self.settings.lost_heartbeat_kills and self.mode is Mode.SERVING:
                self._spawn(self.kill(Trigger(TriggerKind.LOST_HEARTBEAT, reason[:MAX_REASON])))
        elif stats.consecutive_misses == 0 and url in self.lost:
            self.lost.discard(url)
            await self._record_quietly(
                "shutdown.heartbeat-restored",
                reason=f"gateway {url} accepts heartbeats again",
                details={"gateway": url},
            )

    # -- the API's requests ---------------------------------------------------------------------

    async def authenticate(self, header: str | None) -> Caller | Refusal:
        if self.authenticator is None:
            return Refusal(503, "auth_unavailable", "this controller checks no API tokens")
        return await asyncio.to_thread(self.authenticator.authenticate, header)

    async def request_kill(
        self, header: str | None, reason: object, *, t0: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /kill``: authenticate, authorise (``kill``), kill; every attempt recorded."""
        caller = await self.authenticate(header)
        if isinstance(caller, Refusal):
            return await self._refuse("shutdown.kill", caller)
        refusal = Authenticator.authorize(caller, Action.KILL)
        if refusal is None and (
            not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON
        ):
            refusal = Refusal(
                400,
                "invalid_request",
                f"give a reason: a non-empty string of at most {MAX_REASON} characters",
                caller.principal,
                caller.token_id,
            )
        if refusal is not None:
            return await self._refuse("shutdown.kill", refusal)
        assert isinstance(reason, str)  # noqa: S101 - checked above; narrows for mypy
        trigger = Trigger(TriggerKind.MANUAL, reason.strip(), caller.principal)
        checked = {
            "token_id": caller.token_id,
            "authenticated_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
        outcome = await self.kill(trigger, t0=t0, details=checked)
        if not outcome.accepted:
            return await self._refuse(
                "shutdown.kill",
                Refusal(
                    409,
                    "conflict",
                    f"enclave {self.enclave} is already {outcome.mode.value}",
                    caller.principal,
                    caller.token_id,
                ),
                {"incident": outcome.incident},
            )
        return 200, outcome.as_dict()

    async def request_resume(self, header: str | None) -> tuple[int, dict[str, Any]]:
        """``POST /resume``: one approval; authenticate, authorise (``resume``), count it."""
        caller = await self.authenticate(header)
        if isinstance(caller, Refusal):
            return await self._refuse("shutdown.resume", caller)
        refusal = Authenticator.authorize(caller, Action.RESUME)
        if refusal is not None:
            return await self._refuse("shutdown.resume", refusal)
        try:
            result = await self.approve(caller)
        except EnclaveError as exc:  # the approval could not be recorded: nothing resumes
            log.error("resume approval by %s not recorded: %s", caller.principal, exc)  # noqa: TRY400
            return 503, Refusal(503, "audit_unavailable", str(exc)).body()
        body = result.as_dict()
        refused = _APPROVAL_REFUSALS.get(result.outcome)
        if refused is not None:
            status, code = refused
            body["error"] = {"code": code, "message": self._approval_message(caller, result)}
            return status, body
        if result.outcome in _RESUMES and not result.resumed:
            body["error"] = {"code": "resume_failed", "message": result.error}
            return 500, body
        return (200 if result.resumed else 202), body

    async def request_drill(
        self, header: str | None, body: Mapping[str, Any], *, t0: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /drill``: a kill drill in two phases, by a principal holding ``kill``.

        ``{"phase": "kill"}`` kills the enclave with a ``drill`` trigger (every step as in a
        real kill). ``{"phase": "finish", "client_ms": {...}}`` resumes *that* kill without
        the quorum (only a drill's own kill; a real kill during a drill still needs it), and
        writes one ``drill.result`` record: every latency, its target, and whether all were
        met. A client that never finishes leaves the enclave killed: fail safe.
        """
        caller = await self.authenticate(header)
        if isinstance(caller, Refusal):
            return await self._refuse("shutdown.drill", caller)
        refusal = Authenticator.authorize(caller, Action.KILL)
        if refusal is not None:
            return await self._refuse("shutdown.drill", refusal)
        phase = body.get("phase")
        if phase == "kill":
            return await self._drill_kill(caller, t0)
        if phase == "finish":
            client = body.get("client_ms")
            return await self._drill_finish(caller, client if isinstance(client, dict) else {})
        return await self._refuse(
            "shutdown.drill",
            Refusal(400, "invalid_request", 'phase must be "kill" or "finish"',
                    caller.principal, caller.token_id),
        )  # fmt: skip

    async def _drill_kill(self, caller: Caller, t0: float) -> tuple[int, dict[str, Any]]:
        trigger = Trigger(TriggerKind.DRILL, "kill switch drill", caller.principal)
        outcome = await self.kill(trigger, t0=t0, details={"token_id": caller.token_id})
        if not outcome.accepted:
            return await self._refuse(
                "shutdown.drill",
                Refusal(409, "conflict", f"enclave {self.enclave} is already "
                        f"{outcome.mode.value}", caller.principal, caller.token_id),
            )  # fmt: skip
        return 200, outcome.as_dict()

    async def _drill_finish(
        self, caller: Caller, client: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        async with self._lock:
            trigger = self.machine.state.trigger
            if (
                self.machine.mode is not Mode.KILLED
                or trigger is None
                or (trigger.kind is not TriggerKind.DRILL)
            ):
                return await self._refuse(
                    "shutdown.drill",
                    Refusal(409, "not_drill", "only a drill's own kill ends with its finish; "
                            "this one needs the resume quorum", caller.principal,
                            caller.token_id),
                )  # fmt: skip
            self.machine.begin_resume(forced=True)
            task = self._spawn(self._resume([f"drill:{caller.principal}"]))
        resumed = await asyncio.shield(task)
        return 200, await self._drill_result(caller, resumed, client)

    async def _drill_result(
        self, caller: Caller, resumed: ResumeOutcome, client: Mapping[str, Any]
    ) -> dict[str, Any]:
        latencies: dict[str, float] = {}
        kill = self.last_kill
        for step in kill.steps if kill is not None else ():
            if step.ok:
                latencies[_DRILL_STEPS.get(step.step, step.step.name.lower())] = round(
                    step.offset * 1000, 3
                )
        for name, value in client.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                latencies[f"client_{name}"] = round(float(value), 3)
        if resumed.seconds is not None:
            latencies["resume"] = round(resumed.seconds * 1000, 3)
        met = {
            name: latencies.get(name, math.inf) <= target
            for name, target in DRILL_TARGETS_MS.items()
            if name in latencies or not name.startswith("client_")
        }
        passed = resumed.resumed and all(met.values())
        details = {
            "passed": passed,
            "latencies_ms": latencies,
            "targets_ms": DRILL_TARGETS_MS,
            "met": met,
            "incident": resumed.incident,
            "resumed": resumed.resumed,
        }
        seq = await self._record_quietly(
            "drill.result",
            decision=Decision.ALLOW if passed else Decision.DENY,
            reason="passed" if passed else "failed",
            principal=caller.principal,
            details=details,
        )
        return {**details, "audit_seq": seq}

    def _approval_message(self, caller: Caller, result: ResumeOutcome) -> str:
        if result.outcome is ApprovalOutcome.TRIGGERER:
            return (
                f"{caller.principal} killed enclave {self.enclave} and may not approve its "
                "resume (spec.shutdown.resumeExcludesTrigger)"
            )
        if result.outcome is ApprovalOutcome.REPLAYED:
            return f"{caller.principal} has already approved this resume"
        return f"enclave {self.enclave} is {result.mode.value}: there is nothing to resume"

    async def _refuse(
        self, action: str, refusal: Refusal, extra: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Record a refused call (``deny``) and return its answer."""
        details: dict[str, Any] = {"status": refusal.status, "code": refusal.code}
        if refusal.token_id is not None:
            details["token_id"] = refusal.token_id
        details["mode"] = self.mode.value
        details.update(extra or {})
        await self._record_quietly(
            action,
            decision=Decision.DENY,
            reason=refusal.message[:2000],
            principal=refusal.principal or ANONYMOUS,
            details=details,
        )
        return refusal.status, refusal.body()

    async def _record_quietly(self, action: str, **kwargs: Any) -> int | None:
        try:
            return await asyncio.wait_for(self.journal.record(action, **kwargs), _REPLY_TIMEOUT)
        except (EnclaveError, TimeoutError) as exc:
            log.error("cannot record %s: %s", action, exc)  # noqa: TRY400 - one line, no trace
            return None

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = self.machine.state
        trigger = state.trigger
        return {
            "enclave": self.enclave,
            "mode": state.mode.value,
            "since": state.since,
            "trigger": None
            if trigger is None
            else {
                "kind": trigger.kind.value,
                "reason": trigger.reason,
                "principal": trigger.principal,
                "at": trigger.at,
            },
            "incident": state.incident,
            "approvals": [{"principal": a.principal, "at": a.at} for a in state.approvals],
            "required": self.machine.required,
            "excludes_trigger": self.machine.exclude_trigger,
            "kills": state.kills,
            "undone": [step.value for step in Step if step in self.undone],
            "heartbeating": self.beating.is_set(),
            "gateways": [
                {
                    "url": url,
                    "sent": s.sent,
                    "missed": s.missed,
                    "consecutive_misses": s.consecutive_misses,
                    "last_error": s.last_error,
                    "lost": url in self.lost,
                }
                for url, s in self.heartbeater.stats.items()
            ],
            "last_kill": None if self.last_kill is None else self.last_kill.as_dict(),
            "last_resume": None if self.last_resume is None else self.last_resume.as_dict(),
        }
