"""The controller's persisted state machine: transitions, the resume quorum, restarts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from enclave.errors import ConflictError, InputError
from enclave.shutdown.state import (
    ApprovalOutcome,
    Mode,
    StateMachine,
    Trigger,
    TriggerKind,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def mode_of(sm: StateMachine) -> Mode:
    """The mode now (a call, so mypy does not narrow it across transitions)."""
    return sm.mode


def machine(path: Path, clock: Clock, *, required: int = 2, exclude: bool = True) -> StateMachine:
    return StateMachine(path, required=required, exclude_trigger=exclude, clock=clock)


def killed(path: Path, clock: Clock, **kwargs: object) -> StateMachine:
    sm = machine(path, clock, **kwargs)  # type: ignore[arg-type]
    assert sm.begin_kill(Trigger(TriggerKind.MANUAL, "drill", "bob", clock()), "inc-1")
    sm.killed()
    return sm


def test_a_fresh_enclave_serves_and_a_kill_is_idempotent(tmp_path: Path) -> None:
    clock = Clock()
    sm = machine(tmp_path / "state.json", clock)
    assert sm.mode is Mode.SERVING and not (tmp_path / "state.json").exists()
    trigger = Trigger(TriggerKind.MANUAL, "leak suspected", "bob", clock())
    assert sm.begin_kill(trigger, "inc-1") is True
    assert sm.begin_kill(Trigger(TriggerKind.VIOLATION_RATE, "again"), "inc-2") is False
    assert sm.state.incident == "inc-1" and sm.state.kills == 1
    sm.killed()
    assert mode_of(sm) is Mode.KILLED
    with pytest.raises(ConflictError):
        sm.killed()
    mode = json.loads((tmp_path / "state.json").read_text())["mode"]
    assert mode == "killed"
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_resume_needs_distinct_approvers_not_the_triggerer(tmp_path: Path) -> None:
    clock = Clock()
    sm = killed(tmp_path / "s.json", clock)
    with pytest.raises(ConflictError, match="needs 2 approval"):
        sm.begin_resume()
    assert sm.approve("bob") is ApprovalOutcome.TRIGGERER
    assert sm.approve("carol") is ApprovalOutcome.COUNTED
    assert sm.approve("carol") is ApprovalOutcome.REPLAYED
    assert sm.approve("dan") is ApprovalOutcome.QUORUM
    sm.begin_resume()
    assert sm.mode is Mode.RESUMING
    assert sm.approve("erin") is ApprovalOutcome.NOT_KILLED
    sm.resumed()
    assert mode_of(sm) is Mode.SERVING and sm.state.approvals == [] and sm.state.trigger is None


def test_the_triggerer_may_approve_when_the_spec_allows(tmp_path: Path) -> None:
    clock = Clock()
    sm = killed(tmp_path / "s.json", clock, required=1, exclude=False)
    assert sm.approve("bob") is ApprovalOutcome.QUORUM


def test_expired_approvals_no_longer_count(tmp_path: Path) -> None:
    clock = Clock()
    sm = killed(tmp_path / "s.json", clock)
    assert sm.approve("carol") is ApprovalOutcome.COUNTED
    clock.now += sm.approval_ttl + 1
    assert sm.approve("dan") is ApprovalOutcome.COUNTED  # carol's has expired
    assert not sm.quorum()
    assert sm.approve("carol") is ApprovalOutcome.QUORUM  # a fresh one counts again


def test_a_restart_keeps_the_state_and_redoes_a_half_done_resume(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = killed(path, clock)
    sm.approve("carol")
    assert machine(path, clock).mode is Mode.KILLED  # a killed enclave stays killed
    sm.approve("dan")
    sm.begin_resume()
    again = machine(path, clock)
    assert again.mode is Mode.KILLED and len(again.state.approvals) == 2
    again.begin_resume()
    again.resume_failed()
    assert again.mode is Mode.KILLED


def test_an_approver_of_a_failed_resume_retries_it_and_nobody_else_can(tmp_path: Path) -> None:
    """Three officers, bob killed: carol and dan are the only possible quorum. Their resume
    fails (or a restart cut it short): either of them asking again retries it, at once."""
    clock = Clock()
    path = tmp_path / "s.json"
    sm = killed(path, clock)
    assert sm.approve("carol") is ApprovalOutcome.COUNTED
    assert sm.approve("carol") is ApprovalOutcome.REPLAYED  # no quorum yet: a plain replay
    assert sm.approve("dan") is ApprovalOutcome.QUORUM
    sm.begin_resume()
    sm.resume_failed()
    assert sm.approve("dan") is ApprovalOutcome.RETRY
    assert sm.approve("bob") is ApprovalOutcome.TRIGGERER  # the killer never can
    sm.begin_resume()  # the quorum still stands: no force needed
    assert mode_of(sm) is Mode.RESUMING
    again = machine(path, clock)  # the controller died while resuming
    assert again.mode is Mode.KILLED
    assert again.approve("carol") is ApprovalOutcome.RETRY
    assert [a.principal for a in again.state.approvals] == ["carol", "dan"]  # counted once
    clock.now += again.approval_ttl + 1  # once expired, the quorum must be made again
    assert again.approve("carol") is ApprovalOutcome.COUNTED


def test_a_controller_that_died_while_killing_comes_back_killing(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = machine(path, clock)
    sm.begin_kill(Trigger(TriggerKind.VIOLATION_RATE, "6 violations in a minute"), "inc-9")
    again = machine(path, clock)
    assert again.mode is Mode.KILLING and again.state.trigger is not None
    assert (
        again.state.trigger.kind is TriggerKind.VIOLATION_RATE
        and again.state.trigger.principal is None
    )


def test_a_drill_resumes_its_own_kill_without_the_quorum(tmp_path: Path) -> None:
    clock = Clock()
    sm = killed(tmp_path / "s.json", clock)
    sm.begin_resume(forced=True)
    sm.resumed()
    assert sm.mode is Mode.SERVING


def test_unreadable_state_is_refused_never_read_as_serving(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(ConflictError, match="unreadable"):
        machine(path, Clock())
    with pytest.raises(InputError):
        StateMachine(tmp_path / "x.json", required=0, exclude_trigger=True)


def test_concurrent_kills_and_approvals_stay_consistent(tmp_path: Path) -> None:
    clock = Clock()
    sm = machine(tmp_path / "s.json", clock, required=3)
    lock = threading.Lock()
    started: list[bool] = []

    def kill(i: int) -> None:
        with lock:
            started.append(sm.begin_kill(Trigger(TriggerKind.MANUAL, f"k{i}", f"p{i}"), f"inc-{i}"))

    threads = [threading.Thread(target=kill, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert started.count(True) == 1 and sm.mode is Mode.KILLING
    sm.killed()
    outcomes: list[ApprovalOutcome] = []

    def approve(name: str) -> None:
        with lock:
            outcomes.append(sm.approve(name))

    threads = [threading.Thread(target=approve, args=(f"a{i % 5}",)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(ApprovalOutcome.QUORUM) + outcomes.count(ApprovalOutcome.COUNTED) == 5
    assert len({a.principal for a in sm.state.approvals}) == len(sm.state.approvals) == 5


def test_expire_drops_and_returns_only_the_stale_approvals(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = killed(path, clock, required=3)
    sm.approve("carol")
    clock.now += 60
    sm.approve("dan")
    assert sm.expire() == []
    clock.now += sm.approval_ttl - 30  # carol's is older than the ttl, dan's is not
    expired = sm.expire()
    assert [a.principal for a in expired] == ["carol"]
    assert [a.principal for a in sm.state.approvals] == ["dan"]
    assert [a.principal for a in machine(path, clock).state.approvals] == ["dan"]  # persisted


def test_a_kill_mid_resume_aborts_it_and_keeps_the_incident(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = killed(path, clock)
    first = Trigger(TriggerKind.MANUAL, "again", "carol", clock())
    assert sm.abort_resume(first) is False  # killed, not resuming: nothing changes
    sm.approve("carol")
    sm.approve("dan")
    sm.begin_resume()
    assert sm.abort_resume(first) is True
    assert mode_of(sm) is Mode.KILLING
    assert sm.state.incident == "inc-1" and sm.state.approvals == [] and sm.state.kills == 2
    assert sm.state.trigger == first
    sm.killed()
    assert sm.approve("carol") is ApprovalOutcome.TRIGGERER  # carol killed it this time


def test_the_incident_may_be_named_after_the_kill_began(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = machine(path, clock)
    with pytest.raises(ConflictError, match="no kill"):
        sm.set_incident("inc-0")
    assert sm.begin_kill(Trigger(TriggerKind.DRIFT, "baseline drift"))
    assert sm.state.incident is None
    sm.set_incident("inc-7")
    assert machine(path, clock).state.incident == "inc-7"


def test_an_approval_can_be_withdrawn(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    sm = killed(path, clock)
    assert sm.approve("carol") is ApprovalOutcome.COUNTED
    assert sm.withdraw("carol") is True
    assert sm.withdraw("carol") is False
    assert machine(path, clock).state.approvals == []
    assert sm.approve("carol") is ApprovalOutcome.COUNTED  # counts again, not a replay
