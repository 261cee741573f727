from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.audit import ActorKind, AuditEvent, AuditLog, Decision, Ed25519Signer
from enclave.audit.incidents import (
    ActionResult,
    Incident,
    IncidentRecorder,
    IncidentSeverity,
    IncidentStatus,
    Trigger,
    TriggerKind,
    to_json,
    to_markdown,
)
from enclave.cli.main import main

Output = pytest.CaptureFixture[str]


def run(capsys: Output, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@dataclass
class Recorded:
    log: Path
    resolved: Incident
    open: Incident


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    """A log with a resolved kill incident and an open compliance-drift incident."""
    log_path = tmp_path / "audit"
    with AuditLog.open(log_path, enclave="demo", signer=Ed25519Signer.generate()) as log:
        recorder = IncidentRecorder.for_log(log)
        seq = log.append(AuditEvent(actor="bob", action="request.chat", decision=Decision.DENY))
        kill = recorder.open(
            IncidentSeverity.CRITICAL,
            Trigger(TriggerKind.VIOLATION_RATE, "shutdown-controller", "7 violations in 60s"),
            "violation rate above 5/min",
            actor="shutdown-controller",
            actor_kind=ActorKind.COMPONENT,
            evidence=[seq.seq],
        )
        recorder.record_action(
            kill.id,
            "revoke vault tokens",
            ActionResult.OK,
            duration_ms=41.5,
            actor="shutdown-controller",
            actor_kind=ActorKind.COMPONENT,
        )
        resolved = recorder.close(kill.id, "abusive principal removed", actor="alice")
        drift = recorder.open(
            IncidentSeverity.MEDIUM,
            Trigger(TriggerKind.COMPLIANCE_DRIFT, "compliance-monitor"),
            "model container runs as root",
            actor="compliance-monitor",
            actor_kind=ActorKind.COMPONENT,
        )
    return Recorded(log_path, resolved, drift)


def test_list(capsys: Output, recorded: Recorded) -> None:
    code, out, err = run(capsys, "incident", "list", str(recorded.log))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SEVERITY", "STATUS", "OPENED", "TRIGGER", "SUMMARY"]
    assert lines[1].startswith(f"{recorded.resolved.id}  critical  resolved")
    assert "violation-rate by shutdown-controller" in lines[1]
    assert lines[1].endswith("violation rate above 5/min")
    assert lines[2].startswith(f"{recorded.open.id}  medium    open")
    assert len(lines) == 3

    code, out, _ = run(capsys, "incident", "list", str(recorded.log), "--status", "open")
    assert code == 0
    assert recorded.open.id in out and recorded.resolved.id not in out

    code, out, _ = run(capsys, "incident", "list", str(recorded.log), "--status", "mitigated")
    assert (code, out) == (0, f"no mitigated incidents in {recorded.log}\n")


def test_list_json(capsys: Output, recorded: Recorded) -> None:
    code, out, _ = run(capsys, "incident", "list", str(recorded.log), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["log"] == str(recorded.log)
    assert [(i["id"], i["status"], i["entries"]) for i in data["incidents"]] == [
        (recorded.resolved.id, "resolved", 3),
        (recorded.open.id, "open", 1),
    ]
    assert data["incidents"][0]["trigger"] == {
        "kind": "violation-rate",
        "by": "shutdown-controller",
        "detail": "7 violations in 60s",
    }


def test_list_errors(capsys: Output, tmp_path: Path) -> None:
    code, _, err = run(capsys, "incident", "list", str(tmp_path))
    assert code == 2
    assert err == f"enclave: error: {tmp_path}: not an audit log (no log.json)\n"

    code, _, _ = run(capsys, "incident", "list", str(tmp_path), "--status", "closed")
    assert code == 2  # not a status

    with AuditLog.open(tmp_path / "empty", enclave="demo", signer=Ed25519Signer.generate()):
        pass
    code, out, _ = run(capsys, "incident", "list", str(tmp_path / "empty"))
    assert (code, out) == (0, f"no incidents in {tmp_path / 'empty'}\n")


def test_show(capsys: Output, recorded: Recorded) -> None:
    incident = recorded.resolved
    code, out, err = run(capsys, "incident", "show", str(recorded.log), incident.id)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{incident.id}  critical  resolved  (enclave demo)"
    assert "trigger     violation-rate by shutdown-controller: 7 violations in 60s" in out
    timeline = [line for line in lines if line.startswith("    +")]
    assert len(timeline) == 3
    assert "shutdown-controller: opened: violation rate above 5/min" in timeline[0]
    assert timeline[0].endswith("evidence: 1, 2")
    assert "revoke vault tokens [ok] (41.5 ms)  evidence: 3" in timeline[1]
    assert "alice: resolved: abusive principal removed" in timeline[2]
    assert "resolution  abusive principal removed" in out

    code, out, _ = run(capsys, "incident", "show", str(recorded.log), incident.id, "--json")
    assert code == 0
    assert json.loads(out) == to_json(incident)


def test_show_unknown_incident(capsys: Output, recorded: Recorded) -> None:
    code, out, err = run(capsys, "incident", "show", str(recorded.log), "inc-20000101-000000")
    assert (code, out) == (4, "")
    assert err.startswith("enclave: error: no incident 'inc-20000101-000000'")


def test_export_to_stdout(capsys: Output, recorded: Recorded) -> None:
    incident = recorded.resolved
    code, out, _ = run(capsys, "incident", "export", str(recorded.log), incident.id)
    assert code == 0
    assert out == to_markdown(incident)
    code, out, _ = run(
        capsys, "incident", "export", str(recorded.log), incident.id, "--format", "json"
    )
    assert code == 0
    assert json.loads(out) == to_json(incident)


def test_export_to_a_file_refuses_to_overwrite(
    capsys: Output, recorded: Recorded, tmp_path: Path
) -> None:
    incident = recorded.resolved
    target = tmp_path / "report.md"
    export = ["incident", "export", str(recorded.log), incident.id, "--output", str(target)]

    code, out, err = run(capsys, *export)
    assert (code, out, err) == (0, f"wrote {target}\n", "")
    assert target.read_text(encoding="utf-8") == to_markdown(incident)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    target.write_text("edited", encoding="utf-8")
    code, out, err = run(capsys, *export, "--format", "json")
    assert (code, out) == (3, "")
    assert err == f"enclave: error: {target} already exists (use --force to overwrite)\n"
    assert target.read_text(encoding="utf-8") == "edited"

    code, _, _ = run(capsys, *export, "--format", "json", "--force")
    assert code == 0
    assert json.loads(target.read_text(encoding="utf-8")) == to_json(incident)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit", "report.md"]  # no temp files


def test_export_errors(capsys: Output, recorded: Recorded, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "report.md"
    code, _, err = run(
        capsys, "incident", "export", str(recorded.log), recorded.open.id, "-o", str(missing)
    )
    assert code == 2
    assert "no such directory" in err
    code, _, _ = run(capsys, "incident", "export", str(recorded.log), "inc-20000101-000000")
    assert code == 4
    code, _, _ = run(
        capsys, "incident", "export", str(recorded.log), recorded.open.id, "--format", "pdf"
    )
    assert code == 2


def test_incident_help_lists_the_commands(capsys: Output) -> None:
    code, out, _ = run(capsys, "incident", "--help")
    assert code == 0
    for command in ("list", "show", "export"):
        assert command in out
    assert IncidentStatus.MITIGATED.value not in out  # sanity: this is the group's help
