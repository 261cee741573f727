"""Continuous compliance monitoring: the baseline re-run on a schedule, each run diffed against
the last *accepted* result, recorded in an audit log, counted in Prometheus metrics, and drift
reported to the shutdown controller, which alerts or kills as ``spec.compliance.onDrift`` says.

What ``enclave monitor`` runs. Its files, under ``<state>/enclaves/<name>/compliance/`` (0700)::

    accepted.json   the accepted result: every (check, target) and its status, when and how it
                    was accepted, the baseline's sha256 (0600)
    audit/          the monitor's audit log (enclave.audit), signed with audit.key beside it
    audit.key       its Ed25519 checkpoint key (0600)
    monitor.lock    held (flock) by the one scheduled monitor of the enclave
    journal.lock    taken for each record: the processes writing the log take turns

The log is the monitor's own because the gateway's and the controller's logs each have one
writer (their process). It is opened for each record and closed after it, so ``enclave monitor
NAME --accept`` can record an acceptance while a scheduled monitor runs.

**The accepted result and drift** are :mod:`.drift`'s: the first run's result is accepted (or
``enclave monitor NAME --accept`` makes a run's result the accepted one), and every later run's
results are compared with it.

**Each run** writes one ``compliance.run`` record (actor ``compliance-monitor``): decision
``info`` (no drift), ``deny`` (drift) or ``error`` (the run itself failed: a bad spec or
baseline, a damaged ``accepted.json``); the reason is the run's one-line summary; the details
hold the counts by status, the run's duration, the baseline's sha256, the accepted result's
sha256 and time, the drifted results (check, target, severity, status then and now; at most
:data:`MAX_DRIFT_DETAILS`), and what the controller answered, or why it could not be told.
Never evidence values: only check ids, targets and statuses.

**On drift** the monitor calls the controller's ``POST /drift`` (:mod:`enclave.shutdown.api`).
The controller writes ``shutdown.drift`` in its own log and, with ``onDrift: kill``, kills;
with ``alert`` the alert is that record, the monitor's ``deny`` record, a warning log line and
the metrics. A controller that does not answer or refuses is itself reported: a log line, the
run's record, the ``enclave_monitor_controller_errors_total`` metric, and exit 5 for a single
run.

**Metrics** are :mod:`.metrics`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from enclave import lifecycle
from enclave.audit.record import ActorKind, AuditEvent, Decision
from enclave.audit.signing import Ed25519Signer
from enclave.audit.writer import AuditLog
from enclave.compliance.drift import (
    ACCEPT,
    FIRST_RUN,
    Accepted,
    Diff,
    Drifted,
    diff,
    drift_reason,
    load_accepted,
    now_utc,
    save_accepted,
)
from enclave.compliance.runner import check_enclave
from enclave.errors import (
    ConflictError,
    EnclaveError,
    IntegrityError,
    ServiceError,
)
from enclave.shutdown.api import ControllerClient, socket_path

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    from enclave.compliance.metrics import MonitorMetrics
    from enclave.compliance.model import Report
    from enclave.compliance.runner import CheckSettings

log = logging.getLogger(__name__)

__all__ = [
    "ACTOR",
    "ControllerDrift",
    "DriftReporter",
    "Monitor",
    "MonitorJournal",
    "MonitorSettings",
    "RunOutcome",
    "hold_monitor_lock",
    "monitor_dir",
]

ACTOR = "compliance-monitor"
"""The monitor's name in its audit records."""
MAX_DRIFT_DETAILS = 100
"""Drifted results listed in one record (all of them are counted)."""


def monitor_dir(state_dir: Path, name: str) -> Path:
    """Where one enclave's monitor keeps its accepted result and audit log."""
    return lifecycle.enclave_dir(state_dir, name) / "compliance"


# -- one run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class RunOutcome:
    """What one run found and did."""

    enclave: str
    started: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    diff: Diff = field(default_factory=Diff)
    accepted: Accepted | None = None
    """The result this run was compared with (or that it became)."""
    accepted_now: str = ""
    """``first-run`` or ``accept`` when this run's result became the accepted one."""
    controller: dict[str, Any] | None = None
    """The controller's answer to the drift report."""
    controller_error: str = ""
    error: str = ""
    """Why the run itself failed (then nothing was compared)."""
    error_code: int = 0
    """The exit code of that failure."""
    audit_seq: int | None = None
    audit_error: str = ""

    @property
    def drifted(self) -> tuple[Drifted, ...]:
        return self.diff.drifted

    @property
    def outcome(self) -> str:
        """``ok``, ``drift`` or ``error`` (the metrics' label)."""
        if self.error:
            return "error"
        return "drift" if self.drifted and not self.accepted_now else "ok"

    def decision(self) -> Decision:
        return {"ok": Decision.INFO, "drift": Decision.DENY, "error": Decision.ERROR}[self.outcome]

    def _controller_text(self) -> str:
        if self.controller_error:
            return f"drift NOT reported to the controller: {self.controller_error}"
        answer = self.controller or {}
        if answer.get("on_drift") == "kill":
            if answer.get("accepted"):
                return f"the controller killed the enclave (incident {answer.get('incident')})"
            return f"the controller did not kill: the enclave is already {answer.get('mode')}"
        return "the controller recorded it (onDrift: alert)"

    def summary(self) -> str:
        """One line: what was found and what was done."""
        if self.error:
            return f"enclave {self.enclave}: the compliance run failed: {self.error}"
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items() if n)
        total = sum(self.counts.values())
        line = (
            f"enclave {self.enclave}: {total} results ({counts or 'none'}) in {self.seconds:.2f} s"
        )
        if self.accepted_now == FIRST_RUN:
            worse = self.counts.get("fail", 0) + self.counts.get("error", 0)
            return f"{line}; first run: accepted as the baseline ({worse} fail/error accepted)"
        if self.accepted_now == ACCEPT:
            return f"{line}; accepted as the baseline ({len(self.drifted)} drifted accepted)"
        when = self.accepted.accepted_at if self.accepted else "?"
        if not self.drifted:
            return f"{line}; no drift from the result accepted {when}"
        shown = drift_reason(self.enclave, self.drifted, 400).partition(": ")[2]
        return f"{line}; DRIFT from the result accepted {when}: {shown}; {self._controller_text()}"

    def as_dict(self) -> dict[str, Any]:
        """The run as JSON (``--json``) and, less the summary, as its record's details."""
        accepted = self.accepted
        data: dict[str, Any] = {
            "enclave": self.enclave,
            "started": self.started,
            "seconds": round(self.seconds, 4),
            "outcome": self.outcome,
            "counts": self.counts,
            "accepted": None
            if accepted is None
            else {"at": accepted.accepted_at, "how": accepted.how, "sha256": accepted.sha256},
            "accepted_now": self.accepted_now or None,
            "drift_total": len(self.drifted),
            "drift": [d.as_dict() for d in self.drifted[:MAX_DRIFT_DETAILS]],
            "resolved": self.diff.resolved,
            "gone": self.diff.gone,
            "baseline_changed": self.diff.baseline_changed,
        }
        if self.drifted and not self.accepted_now:
            data["controller"] = (
                {"error": self.controller_error}
                if self.controller_error
                else _controller_brief(self.controller or {})
            )
        if self.error:
            data["error"] = self.error
        if self.audit_seq is not None:
            data["audit_seq"] = self.audit_seq
        if self.audit_error:
            data["audit_error"] = self.audit_error
        return data


def _controller_brief(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The controller's answer without the kill's step details (they are in its own log)."""
    keys = ("on_drift", "mode", "accepted", "incident")
    brief = {k: answer[k] for k in keys if k in answer}
    steps = answer.get("steps")
    if isinstance(steps, list):
        brief["steps_failed"] = [
            s.get("step") for s in steps if isinstance(s, dict) and not s.get("ok")
        ]
    return brief


# -- where runs go: the controller, the audit log, the metrics ---------------------------------


class DriftReporter(Protocol):
    """Where drift is reported; raises an :class:`EnclaveError` when it was not taken."""

    def report(self, reason: str) -> dict[str, Any]: ...


class ControllerDrift:
    """Drift to the enclave's shutdown controller (``POST /drift`` on its socket)."""

    def __init__(self, client: ControllerClient) -> None:
        self.client = client

    @classmethod
    def for_enclave(cls, state_dir: Path, name: str, *, timeout: float = 120.0) -> ControllerDrift:
        return cls(ControllerClient(socket_path(state_dir, name), timeout=timeout))

    def report(self, reason: str) -> dict[str, Any]:
        status, data = self.client.drift(reason)
        if status != 200:
            found = data.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            message = error.get("message") or "no reason given"
            raise ServiceError(
                f"the shutdown controller refused the drift report: {message} "
                f"({error.get('code') or 'error'}, HTTP {status})"
            )
        return data


@contextlib.contextmanager
def _flock(path: Path, *, wait: float, busy: str) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for up to ``wait`` s (:class:`ConflictError`)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConflictError(busy) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def hold_monitor_lock(state_dir: Path, name: str) -> Iterator[None]:
    """Held by a scheduled (or single-run) monitor: one per enclave at a time."""
    root = monitor_dir(state_dir, name)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    busy = f"another 'enclave monitor {name}' is running (it holds {root / 'monitor.lock'})"
    with _flock(root / "monitor.lock", wait=0.0, busy=busy):
        yield


class MonitorJournal:
    """The monitor's audit log, opened for each record (see the module docstring)."""

    def __init__(self, root: Path, enclave: str, *, wait: float = 10.0) -> None:
        self.root = root
        self.enclave = enclave
        self.wait = wait
        self._signer: Ed25519Signer | None = None

    @property
    def log_dir(self) -> Path:
        return self.root / "audit"

    def record(
        self,
        action: str,
        decision: Decision,
        reason: str,
        details: Mapping[str, Any],
    ) -> int:
        """Append one record, durably; its seq (:class:`EnclaveError` when it cannot)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._signer is None:
            self._signer = Ed25519Signer.from_file(self.root / "audit.key", create=True)
        event = AuditEvent(
            actor=ACTOR,
            actor_kind=ActorKind.COMPONENT,
            action=action,
            decision=decision,
            reason=reason[:2000],
            details=details,
        )
        busy = f"{self.log_dir}: still busy after {self.wait:g} s"
        with (
            _flock(self.root / "journal.lock", wait=self.wait, busy=busy),
            AuditLog.open(self.log_dir, enclave=self.enclave, signer=self._signer) as audit,
        ):
            return audit.append(event).seq


# -- the monitor ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    check: CheckSettings
    interval: float = 60.0
    """Seconds from the start of one run to the start of the next."""


class Monitor:
    """Runs the baseline against one enclave, once (:meth:`run_once`) or on a schedule
    (:meth:`run`); see the module docstring.

    ``check`` is what one run calls (default: :func:`~enclave.compliance.runner.check_enclave`),
    ``reporter`` where drift goes (default: the enclave's controller), ``journal`` the audit
    log (default: the monitor's own), ``metrics`` what counts the runs (default: none).
    """

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        check: Callable[[CheckSettings], Report] | None = None,
        reporter: DriftReporter | None = None,
        journal: MonitorJournal | None = None,
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self.settings = settings
        name, state = settings.check.name, settings.check.state_dir
        self.name = name
        self.root = monitor_dir(state, name)
        self._check = check
        self.reporter: DriftReporter = reporter or ControllerDrift.for_enclave(state, name)
        self.journal = journal or MonitorJournal(self.root, name)
        self.metrics = metrics

    @property
    def accepted_path(self) -> Path:
        return self.root / "accepted.json"

    def run_once(self, *, accept: bool = False) -> RunOutcome:
        """One run: check, compare, report drift, record, count. ``accept``: make this run's
        result the accepted one instead of comparing (no drift is reported then)."""
        begin = time.perf_counter()
        started = now_utc()
        try:
            report = (self._check or check_enclave)(self.settings.check)
            previous = self._previous(accept)
            accepting = ACCEPT if accept else FIRST_RUN if previous is None else ""
            stored = (
                save_accepted(self.accepted_path, Accepted.of(report, accepting))
                if accepting
                else None
            )
        except EnclaveError as exc:
            outcome = RunOutcome(
                self.name, started, time.perf_counter() - begin, error=str(exc),
                error_code=exc.exit_code,
            )  # fmt: skip
            log.error("%s", outcome.summary())  # noqa: TRY400 - one line, no trace
            self._finish(outcome, "compliance.run")
            return outcome
        outcome = RunOutcome(self.name, report.started, report.seconds, counts=report.counts())
        if previous is not None:
            outcome.accepted = previous
            outcome.diff = diff(previous, report)
        if stored is not None:
            outcome.accepted_now = accepting
            outcome.accepted = stored
            self._record_acceptance(outcome, previous)
            if accept:
                outcome.seconds = time.perf_counter() - begin
                return outcome
        elif outcome.drifted:
            self._report(outcome)
        outcome.seconds = time.perf_counter() - begin
        self._finish(outcome, "compliance.run")
        return outcome

    def _previous(self, accept: bool) -> Accepted | None:
        try:
            return load_accepted(self.accepted_path)
        except IntegrityError as exc:
            if not accept:
                raise
            log.warning("replacing a damaged accepted result: %s", exc)
            return None

    def _report(self, outcome: RunOutcome) -> None:
        reason = drift_reason(self.name, outcome.drifted)
        try:
            outcome.controller = self.reporter.report(reason)
        except EnclaveError as exc:
            outcome.controller_error = str(exc)
            log.error("%s", outcome.summary())  # noqa: TRY400 - one line, no trace
            return
        log.warning("%s", outcome.summary())

    def _record_acceptance(self, outcome: RunOutcome, previous: Accepted | None) -> None:
        accepted = outcome.accepted
        assert accepted is not None  # noqa: S101 - set by the caller; narrows for mypy
        details: dict[str, Any] = {
            "how": accepted.how,
            "counts": outcome.counts,
            "sha256": accepted.sha256,
            "report_started": accepted.report_started,
            "baseline_sha256": accepted.baseline_sha256,
            "previous": None
            if previous is None
            else {"at": previous.accepted_at, "how": previous.how, "sha256": previous.sha256},
            "drift_accepted_total": len(outcome.drifted),
            "drift_accepted": [d.as_dict() for d in outcome.drifted[:MAX_DRIFT_DETAILS]],
        }
        worse = outcome.counts.get("fail", 0) + outcome.counts.get("error", 0)
        reason = (
            f"accepted as the baseline ({accepted.how}): {len(accepted.statuses)} results, "
            f"{worse} fail/error, {len(outcome.drifted)} drifted from the previous one"
        )
        self._write(outcome, "compliance.accept", Decision.INFO, reason, details)
        if worse:
            log.warning(
                "enclave %s: the accepted result holds %d failing or unjudged result(s); "
                "they are not drift ('enclave check %s' lists them)",
                self.name,
                worse,
                self.name,
            )

    def _finish(self, outcome: RunOutcome, action: str) -> None:
        details = outcome.as_dict()
        self._write(outcome, action, outcome.decision(), outcome.summary(), details)
        if self.metrics is not None:
            self.metrics.observe(outcome)

    def _write(
        self,
        outcome: RunOutcome,
        action: str,
        decision: Decision,
        reason: str,
        details: Mapping[str, Any],
    ) -> None:
        try:
            outcome.audit_seq = self.journal.record(action, decision, reason, details)
        except EnclaveError as exc:
            outcome.audit_error = str(exc)
            log.error("cannot record %s: %s", action, exc)  # noqa: TRY400 - one line

    def run(
        self, stop: threading.Event, *, on_run: Callable[[RunOutcome], None] | None = None
    ) -> int:
        """Run every ``interval`` seconds until ``stop`` is set (checked between runs; a run
        under way finishes). A run longer than the interval is followed at once by the next.
        The number of runs."""
        interval = self.settings.interval
        runs = 0
        next_at = time.monotonic()
        while not stop.is_set():
            outcome = self.run_once()
            runs += 1
            if on_run is not None:
                on_run(outcome)
            next_at = max(next_at + interval, time.monotonic())
            stop.wait(max(0.0, next_at - time.monotonic()))
        return runs
