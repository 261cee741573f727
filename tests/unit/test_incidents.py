from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.audit import ActorKind, AuditEvent, AuditLog, Decision, Ed25519Signer, verify_log
from enclave.audit.export import export_bundle
from enclave.audit.incidents import (
    INCIDENT_FORMAT,
    ActionResult,
    EntryKind,
    Incident,
    IncidentRecorder,
    IncidentSeverity,
    IncidentStatus,
    Trigger,
    TriggerKind,
    index_path,
    list_incidents,
    load_incident,
    rebuild_index,
    to_json,
    to_markdown,
)
from enclave.audit.reader import iter_records
from enclave.errors import AuditError, ConflictError, InputError, IntegrityError, NotFoundError

KILL = Trigger(TriggerKind.KILL, "alice", "kill switch pulled from the CLI")
CONTROLLER = "shutdown-controller"
COMPONENT = ActorKind.COMPONENT


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def audit_log(log_path: Path) -> Iterator[AuditLog]:
    with AuditLog.open(log_path, enclave="demo", signer=Ed25519Signer.generate()) as log:
        yield log


def request(log: AuditLog, actor: str = "bob") -> int:
    """Append an ordinary gateway record; its seq."""
    return log.append(AuditEvent(actor=actor, action="request.chat", decision=Decision.DENY)).seq


def kill_incident(log: AuditLog) -> Incident:
    """A kill as the shutdown controller records it: open, timed steps, mitigate, close."""
    recorder = IncidentRecorder.for_log(log)
    violation = request(log)
    incident = recorder.open(
        IncidentSeverity.HIGH, KILL, "emergency stop of enclave demo", actor="alice",
        evidence=[violation],
    )  # fmt: skip
    recorder.record_action(
        incident.id,
        "gateway denies all",
        ActionResult.OK,
        duration_ms=2.5,
        actor=CONTROLLER,
        actor_kind=COMPONENT,
    )
    recorder.record_action(
        incident.id,
        "stop model workloads",
        ActionResult.FAILED,
        duration_ms=130.25,
        actor=CONTROLLER,
        actor_kind=COMPONENT,
    )
    denied = request(log)
    recorder.add_event(
        incident.id, "request denied while stopped", actor="alice", evidence=[denied]
    )
    recorder.set_status(incident.id, IncidentStatus.MITIGATED, actor="alice", note="all stopped")
    return recorder.close(incident.id, "model retrained; resumed with 2 approvals", actor="carol")


def test_an_incident_is_a_sequence_of_audit_records(audit_log: AuditLog, log_path: Path) -> None:
    incident = kill_incident(audit_log)
    audit_log.close()

    assert incident.id.startswith("inc-") and len(incident.id) == len("inc-20261127-abcdef")
    assert (incident.enclave, incident.log_id) == ("demo", audit_log.meta.log_id)
    assert incident.status is IncidentStatus.RESOLVED
    assert incident.resolution == "model retrained; resumed with 2 approvals"
    assert incident.closed == incident.timeline[-1].time

    records = list(iter_records(log_path))
    assert [r.action for r in records] == [
        "request.chat",
        "incident.open",
        "incident.action",
        "incident.action",
        "request.chat",
        "incident.event",
        "incident.status",
        "incident.close",
    ]
    own = [r for r in records if r.action.startswith("incident.")]
    assert all(r.details and r.details["incident"] == incident.id for r in own)
    assert [r.seq for r in own] == list(incident.records) == [2, 3, 4, 6, 7, 8]
    assert [r.actor for r in own] == [e.actor for e in incident.timeline]
    assert own[1].actor_kind is ActorKind.COMPONENT
    assert [r.decision for r in own[1:3]] == [Decision.INFO, Decision.ERROR]  # failed step
    assert own[3].reason == "request denied while stopped"

    assert [e.kind for e in incident.timeline] == [
        EntryKind.STATUS,
        EntryKind.ACTION,
        EntryKind.ACTION,
        EntryKind.EVENT,
        EntryKind.STATUS,
        EntryKind.STATUS,
    ]
    opened, deny, stop, event, mitigated, closed = incident.timeline
    # each entry cites its own record, plus what its author gave
    assert opened.evidence == (1, 2)
    assert (deny.evidence, deny.result, deny.duration_ms) == ((3,), ActionResult.OK, 2.5)
    assert (stop.evidence, stop.result, stop.duration_ms) == ((4,), ActionResult.FAILED, 130.25)
    assert event.evidence == (5, 6)
    assert (mitigated.text, closed.text) == (
        "mitigated: all stopped",
        "resolved: model retrained; resumed with 2 approvals",
    )
    assert incident.evidence == (1, 2, 3, 4, 5, 6, 7, 8)
    assert [a.text for a in incident.actions] == ["gateway denies all", "stop model workloads"]

    # the records are the source of truth: reading them back gives the same incident
    assert load_incident(log_path, incident.id) == incident
    report = verify_log(log_path)
    assert report.intact, report.summary()
    assert report.records == 8


def test_the_index_is_a_cache_rebuilt_from_the_records(audit_log: AuditLog, log_path: Path) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    first = kill_incident(audit_log)
    second = recorder.open(
        IncidentSeverity.MEDIUM,
        Trigger(TriggerKind.COMPLIANCE_DRIFT, "compliance-monitor"),
        "seccomp profile missing on model container",
        actor="compliance-monitor",
        actor_kind=ActorKind.COMPONENT,
    )
    index = index_path(log_path)
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert stat.S_IMODE(index.parent.stat().st_mode) == 0o700

    # entries after the last index write are folded in by readers
    recorder.add_note(second.id, "owner notified", actor="alice")
    listed = list_incidents(log_path)
    assert [(s.id, s.status, s.entries) for s in listed] == [
        (first.id, IncidentStatus.RESOLVED, 6),
        (second.id, IncidentStatus.OPEN, 2),
    ]
    assert [s.id for s in list_incidents(log_path, status=IncidentStatus.OPEN)] == [second.id]
    assert json.loads(index.read_text())["through"] == audit_log.size

    index.unlink()
    assert list_incidents(log_path) == listed
    assert index.exists()

    index.write_text("{not json")
    assert list_incidents(log_path) == listed

    # an index that does not match the log (another head) is thrown away, not trusted
    data = json.loads(index.read_text())
    data["head"] = "0" * 64
    data["incidents"] = []
    index.write_text(json.dumps(data))
    assert list_incidents(log_path) == listed

    index.unlink()
    assert rebuild_index(log_path) == listed
    assert stat.S_IMODE(index.stat().st_mode) == 0o600


def test_a_new_recorder_continues_incidents_from_an_earlier_run(log_path: Path) -> None:
    signer = Ed25519Signer.generate()
    with AuditLog.open(log_path, enclave="demo", signer=signer) as log:
        recorder = IncidentRecorder.for_log(log)
        assert IncidentRecorder.for_log(log) is recorder
        with pytest.raises(ConflictError, match="already has an incident recorder"):
            IncidentRecorder(log)
        incident = recorder.open(
            IncidentSeverity.CRITICAL,
            Trigger(TriggerKind.HEARTBEAT_LOST, "shutdown-controller", "no heartbeat for 3s"),
            "gateway lost the controller heartbeat",
            actor=CONTROLLER,
            actor_kind=COMPONENT,
        )
        recorder.add_event(
            incident.id, "gateway denied all requests", actor=CONTROLLER, actor_kind=COMPONENT
        )
    index_path(log_path).unlink()

    with AuditLog.open(log_path, enclave="demo", signer=signer) as log:
        recorder = IncidentRecorder.for_log(log)
        assert [s.id for s in recorder.incidents(status=IncidentStatus.OPEN)] == [incident.id]
        assert len(recorder.get(incident.id).timeline) == 2
        closed = recorder.close(incident.id, "controller restarted", actor="alice")
    assert [e.seq for e in closed.timeline] == [1, 2, 3]
    assert load_incident(log_path, incident.id) == closed
    assert verify_log(log_path).intact


def test_unknown_and_closed_incidents_are_refused(audit_log: AuditLog, log_path: Path) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    incident = kill_incident(audit_log)
    size = audit_log.size

    with pytest.raises(NotFoundError, match="no incident 'inc-20000101-000000'"):
        recorder.close("inc-20000101-000000", "nothing", actor="alice")
    with pytest.raises(NotFoundError):
        recorder.add_event("nope", "x", actor="alice")
    with pytest.raises(NotFoundError):
        load_incident(log_path, "inc-20000101-000000")
    with pytest.raises(ConflictError, match="already resolved"):
        recorder.close(incident.id, "again", actor="alice")
    with pytest.raises(ConflictError):
        recorder.record_action(incident.id, "late step", ActionResult.OK, actor="alice")

    other = recorder.open(IncidentSeverity.LOW, KILL, "second", actor="alice")
    with pytest.raises(ConflictError, match="already open"):
        recorder.set_status(other.id, IncidentStatus.OPEN, actor="alice")
    with pytest.raises(InputError, match="use close"):
        recorder.set_status(other.id, IncidentStatus.RESOLVED, actor="alice")
    assert audit_log.size == size + 1  # only the second open was recorded


def test_bad_input_is_refused_before_anything_is_recorded(audit_log: AuditLog) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    incident = recorder.open(IncidentSeverity.LOW, KILL, "test", actor="alice")
    size = audit_log.size
    with pytest.raises(InputError, match="evidence 99 is not the seq"):
        recorder.add_event(incident.id, "cites the future", actor="alice", evidence=[99])
    with pytest.raises(InputError, match="empty"):
        recorder.add_event(incident.id, "  ", actor="alice")
    with pytest.raises(InputError, match="duration"):
        recorder.record_action(incident.id, "x", ActionResult.OK, actor="a", duration_ms=-1)
    with pytest.raises(InputError, match="invalid actor"):
        recorder.add_event(incident.id, "x", actor="Not An Actor")
    with pytest.raises(InputError, match="invalid 'by'"):
        Trigger(TriggerKind.MANUAL, "alice\n")
    with pytest.raises(InputError, match="invalid 'by'"):
        Trigger(TriggerKind.MANUAL, "s." + "a" * 24)  # looks like a Vault token
    assert audit_log.size == size
    assert len(recorder.get(incident.id).timeline) == 1


def test_a_log_that_cannot_record_changes_nothing(audit_log: AuditLog) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    incident = recorder.open(IncidentSeverity.LOW, KILL, "test", actor="alice")
    audit_log.close()
    with pytest.raises(AuditError):
        recorder.close(incident.id, "done", actor="alice")
    assert recorder.get(incident.id) == incident


def test_secrets_are_redacted_alike_in_memory_and_on_disk(
    audit_log: AuditLog, log_path: Path
) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    token = "hvs." + "A" * 24
    incident = recorder.open(IncidentSeverity.HIGH, KILL, f"token {token} leaked", actor="alice")
    assert token not in incident.summary
    assert "[REDACTED:vault-token]" in incident.summary
    assert load_incident(log_path, incident.id) == incident
    record = list(iter_records(log_path))[-1]
    assert record.redacted  # the log marks what it redacted


def test_concurrent_steps_are_all_recorded(audit_log: AuditLog, log_path: Path) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    incident = recorder.open(IncidentSeverity.HIGH, KILL, "parallel kill", actor="alice")

    def step(number: int) -> None:
        recorder.record_action(
            incident.id,
            f"step {number}",
            ActionResult.OK,
            duration_ms=number,
            actor=CONTROLLER,
            actor_kind=COMPONENT,
        )

    threads = [threading.Thread(target=step, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = load_incident(log_path, incident.id)
    assert sorted(a.text for a in loaded.actions) == sorted(f"step {n}" for n in range(8))
    assert loaded == recorder.get(incident.id)


@pytest.mark.parametrize(
    ("details", "message"),
    [
        (
            {
                "incident": "inc-20000101-abcdef",
                "status": "resolved",
                "resolution": "x",
                "entry": {"kind": "status", "text": "resolved: x", "evidence": []},
            },
            "incident inc-20000101-abcdef was never opened",
        ),
        ({"incident": "inc-20000101-abcdef"}, "not a valid incident.close record"),
    ],
)
def test_incident_records_that_make_no_sense_are_integrity_errors(
    audit_log: AuditLog, log_path: Path, details: dict[str, object], message: str
) -> None:
    audit_log.append(AuditEvent(actor="mallory", action="incident.close", details=details))
    with pytest.raises(IntegrityError, match=message):
        list_incidents(log_path)


def test_reports(audit_log: AuditLog) -> None:
    incident = kill_incident(audit_log)
    data = to_json(incident)
    assert data["format"] == INCIDENT_FORMAT
    assert json.loads(json.dumps(data)) == data
    assert data["timeline"][2] == {
        "seq": 4,
        "time": incident.timeline[2].time,
        "kind": "action",
        "text": "stop model workloads",
        "actor": "shutdown-controller",
        "result": "failed",
        "duration_ms": 130.25,
        "evidence": [4],
    }

    report = to_markdown(incident)
    assert report.startswith(f"# Incident {incident.id}\n")
    assert "| Severity | high |" in report
    assert "| Trigger | kill by alice |" in report
    rows = [line for line in report.splitlines() if line.startswith("| 20")]
    assert len(rows) == len(incident.timeline)
    assert "| status | alice | opened: emergency stop of enclave demo |" in rows[0]
    assert rows[0].endswith("| 1, 2 |")
    assert "| action | shutdown-controller | gateway denies all | ok | 2.5 ms | 3 |" in rows[1]
    assert "| stop model workloads | FAILED | 130.2 ms | 4 |" in rows[2]
    assert rows[3].endswith("| 5, 6 |")
    assert "2 action(s), 1 failed" in report
    assert "> model retrained; resumed with 2 approvals" in report
    assert "cites audit records 1, 2, 3, 4, 5, 6, 7, 8 of audit log" in report
    assert "enclave audit search" in report


def test_markdown_keeps_free_text_inside_its_cell(audit_log: AuditLog) -> None:
    recorder = IncidentRecorder.for_log(audit_log)
    incident = recorder.open(IncidentSeverity.LOW, KILL, "# heading\n| a | b |", actor="alice")
    incident = recorder.add_event(incident.id, "<script>x</script>\nline two", actor="alice")
    report = to_markdown(incident)
    assert "<script>" not in report
    assert "&lt;script&gt;x&lt;/script&gt;<br>line two" in report
    assert "opened: # heading<br>\\| a \\| b \\|" in report
    assert "> # heading\n> | a | b |" in report  # quoted, so not a heading or a table
    assert "No actions were recorded." in report
    assert "Not resolved yet." in report


def test_an_evidence_bundle_is_read_but_never_written(audit_log: AuditLog, tmp_path: Path) -> None:
    incident = kill_incident(audit_log)
    bundle = tmp_path / "bundle"
    export_bundle(audit_log.layout.root, bundle)
    before = sorted(p.name for p in bundle.iterdir())
    assert [s.id for s in list_incidents(bundle)] == [incident.id]
    assert load_incident(bundle, incident.id) == incident
    assert sorted(p.name for p in bundle.iterdir()) == before
    with pytest.raises(InputError, match="read-only"):
        rebuild_index(bundle)
