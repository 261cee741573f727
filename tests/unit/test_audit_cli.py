"""``enclave audit verify|tail|search|export`` over a real log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Decision, Ed25519Signer
from enclave.cli.main import main
from enclave.spec import load_spec
from support.workspace import Workspace

Output = pytest.CaptureFixture[str]


def run(capsys: Output, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    signer = Ed25519Signer.generate()
    (tmp_path / "audit.pub").write_bytes(signer.public_key_pem())
    root = tmp_path / "log"
    settings = AuditSettings(segment_size=4096, checkpoint_records=10)
    with AuditLog.open(root, enclave="demo", signer=signer, settings=settings) as log:
        for i in range(40):
            log.append(
                AuditEvent(
                    actor="alice" if i % 2 else "bob",
                    action="shutdown.kill" if i % 10 == 0 else "request.chat",
                    decision=Decision.DENY if i % 4 == 0 else Decision.ALLOW,
                    reason=f"step {i}",
                    purpose="translation",
                )
            )
    return root


def test_verify_intact_and_json(capsys: Output, log_dir: Path) -> None:
    key = log_dir.parent / "audit.pub"
    code, out, _ = run(capsys, "audit", "verify", str(log_dir), "--key", str(key))
    assert code == 0
    assert out.startswith("intact: 40 records in ")
    assert "last checkpoint at seq 40" in out
    code, out, _ = run(capsys, "audit", "verify", str(log_dir), "--json")
    report = json.loads(out)
    assert (code, report["intact"], report["records"], report["key_source"]) == (
        0,
        True,
        40,
        "log",
    )


def test_verify_tampered_exits_6_and_names_the_record(capsys: Output, log_dir: Path) -> None:
    segment = sorted(log_dir.glob("seg-*.jsonl"))[1]
    lines = segment.read_bytes().splitlines(keepends=True)
    edited = lines[2].replace(b'"reason":"step', b'"reason":"stop')
    assert edited != lines[2]
    lines[2] = edited
    segment.write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "audit", "verify", str(log_dir))
    assert code == 6
    assert out.startswith(f"TAMPERED: edit at {segment}:3: record does not match its hash")


def test_verify_with_a_wrong_pinned_key(capsys: Output, log_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519Signer.generate().public_key_pem())
    code, out, _ = run(capsys, "audit", "verify", str(log_dir), "--key", str(other))
    assert code == 6
    assert "bad-signature" in out


def test_verify_input_errors(capsys: Output, tmp_path: Path) -> None:
    code, _, err = run(capsys, "audit", "verify", str(tmp_path / "none"))
    assert (code, err.strip()) == (
        2,
        f"enclave: error: {tmp_path / 'none'}: no such file or directory",
    )
    code, _, err = run(capsys, "audit", "verify", str(tmp_path))
    assert code == 2 and "not an audit log" in err


def test_tail_and_search(capsys: Output, log_dir: Path) -> None:
    code, out, _ = run(capsys, "audit", "tail", str(log_dir), "-n", "3")
    lines = out.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == ["38", "39", "40"]

    code, out, _ = run(
        capsys,
        "audit",
        "search",
        str(log_dir),
        "--action",
        "shutdown.*",
        "--decision",
        "deny",
        "--json",
    )
    found = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["seq"] for r in found] == [1, 21]
    assert {r["action"] for r in found} == {"shutdown.kill"}

    code, out, _ = run(capsys, "audit", "search", str(log_dir), "--actor", "alice", "--limit", "2")
    assert [line.split()[0] for line in out.splitlines()] == ["2", "4"]

    code, out, _ = run(capsys, "audit", "search", str(log_dir), "--seq", "12-14")
    assert [line.split()[0] for line in out.splitlines()] == ["12", "13", "14"]
    code, out, _ = run(capsys, "audit", "search", str(log_dir), "--seq", "39-")
    assert [line.split()[0] for line in out.splitlines()] == ["39", "40"]
    code, out, _ = run(capsys, "audit", "search", str(log_dir), "--seq", "8", "--actor", "bob")
    assert (code, out) == (0, "")  # seq 8 is alice's
    code, _, err = run(capsys, "audit", "search", str(log_dir), "--seq", "9-3")
    assert code == 2 and "invalid sequence range '9-3'" in err

    code, out, _ = run(capsys, "audit", "search", str(log_dir), "--since", "1h", "--until", "1h")
    assert (code, out) == (0, "")
    code, _, err = run(capsys, "audit", "search", str(log_dir), "--since", "yesterday")
    assert code == 2 and "invalid time 'yesterday'" in err


def test_export_verifies_offline_and_detects_changes(
    capsys: Output, log_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    code, out, _ = run(capsys, "audit", "export", str(log_dir), "-o", str(bundle))
    assert code == 0 and out.startswith("exported 40 records")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["records"] == 40
    assert set(manifest["files"]) >= {"log.json", "audit.pub", "checkpoints.jsonl", "README.txt"}

    moved = tmp_path / "elsewhere"  # "another machine": a copy with no link to the live log
    bundle.rename(moved)
    key = log_dir.parent / "audit.pub"
    code, out, _ = run(capsys, "audit", "verify", str(moved), "--key", str(key))
    assert code == 0 and out.startswith("intact: 40 records")
    assert "bundle manifest checked" in out

    code, _, err = run(capsys, "audit", "export", str(log_dir), "-o", str(moved))
    assert code == 3 and "already exists" in err

    (moved / "notes.txt").write_text("added later")
    code, out, _ = run(capsys, "audit", "verify", str(moved))
    assert code == 6 and out.startswith(f"TAMPERED: insertion at {moved / 'notes.txt'}")


def test_settings_follow_the_spec(workspace: Workspace) -> None:
    spec = load_spec(workspace.example(("checkpointEvery: 1s ", "checkpointEvery: 250ms ")))
    settings = AuditSettings.from_spec(spec.spec.audit)
    assert settings.checkpoint_interval == 0.25
    assert settings.store_content is False
    assert settings.segment_size == 64 * 1024 * 1024
