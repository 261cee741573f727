"""A whole audit flow: requests and an incident are recorded, exported and verified offline."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Decision, Ed25519Signer
from enclave.audit.incidents import (
    ActionResult,
    IncidentRecorder,
    IncidentSeverity,
    Trigger,
    TriggerKind,
)
from enclave.audit.record import sha256_text
from enclave.cli.main import main

Output = pytest.CaptureFixture[str]


async def _requests(log: AuditLog, count: int) -> list[int]:
    async def one(i: int) -> int:
        receipt = await log.append_async(
            AuditEvent(
                actor="alice",
                action="request.chat",
                decision=Decision.DENY if i % 7 == 0 else Decision.ALLOW,
                purpose="translation",
                model="assistant",
                request_id=f"req-{i}",
                prompt_sha256=sha256_text(f"prompt {i}"),
                output_sha256=sha256_text(f"output {i}"),
                latency_ms=3.5,
            )
        )
        return receipt.seq

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_record_incident_export_and_verify_offline(tmp_path: Path, capsys: Output) -> None:
    signer = Ed25519Signer.from_file(tmp_path / "keys" / "audit.key", create=True)
    pinned = tmp_path / "audit.pub"
    pinned.write_bytes(signer.public_key_pem())
    root = tmp_path / "state" / "audit"
    settings = AuditSettings(segment_size=16 * 1024, checkpoint_records=25)
    with AuditLog.open(root, enclave="demo", signer=signer, settings=settings) as log:
        seqs = asyncio.run(_requests(log, 120))
        assert sorted(seqs) == list(range(1, 121))
        recorder = IncidentRecorder.for_log(log)
        incident = recorder.open(
            IncidentSeverity.HIGH,
            Trigger(TriggerKind.VIOLATION_RATE, "gateway"),
            "prohibited-use screen tripped 6 times in a minute",
            actor="shutdown-controller",
            evidence=[7, 14, 21],
        )
        recorder.record_action(
            incident.id,
            "gateways deny all",
            ActionResult.OK,
            actor="shutdown-controller",
            duration_ms=12.0,
        )
        closed = recorder.close(incident.id, "false positive; rule tuned", actor="carol")
    assert closed.evidence[:3] == (7, 14, 21)

    code = main(["audit", "verify", str(root), "--key", str(pinned)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"intact: {log.size} records in ")
    assert f"last checkpoint at seq {log.size} " in out

    assert main(["incident", "export", str(root), incident.id, "--format", "markdown"]) == 0
    report = capsys.readouterr().out
    assert "gateways deny all" in report and "false positive; rule tuned" in report

    bundle = tmp_path / "evidence"
    assert main(["audit", "export", str(root), "-o", str(bundle)]) == 0
    capsys.readouterr()
    offline = tmp_path / "assessor" / "evidence"  # as if carried to another machine
    offline.parent.mkdir()
    shutil.move(bundle, offline)
    shutil.rmtree(tmp_path / "state")  # the live log is gone; the bundle stands alone
    assert main(["audit", "verify", str(offline), "--key", str(pinned), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["intact"] is True and verdict["records"] == log.size
    assert main(["incident", "show", str(offline), incident.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "resolved"
