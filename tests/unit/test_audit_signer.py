"""Checkpoint signers that fail, stall or change: the log stays durable, verifiable, honest.

The writer signs on a thread of its own, so a signer held by a service (a Vault transit key)
can be slow or gone without holding up an append; a checkpoint that cannot be signed is
reported once and tried again when the next one falls due. A log whose signer legitimately
changed (a re-provisioned enclave's new transit key) lists both keys, and verification checks
each checkpoint with the key it names.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import pytest

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer, verify_log
from enclave.audit.checkpoint import Checkpoint
from enclave.audit.signing import fingerprint, load_public_keys
from enclave.audit.verify import Tamper
from enclave.errors import ConflictError, InputError, VaultSealedError, VaultUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FAST = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=0.05)
QUIET = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=3600.0)


class FlakySigner:
    """An Ed25519 signer standing in for Vault: it can be taken down and brought back, or
    made to hang until released. Counts every attempt."""

    def __init__(self) -> None:
        self._key = Ed25519Signer.generate()
        self.down: Exception | None = None
        self.hang = threading.Event()
        self.release = threading.Event()
        self.attempts = 0

    @property
    def key_id(self) -> str:
        return self._key.key_id

    def sign(self, message: bytes) -> bytes:
        self.attempts += 1
        if self.hang.is_set():
            self.release.wait(10)
        if self.down is not None:
            raise self.down
        return self._key.sign(message)

    def public_key_pem(self) -> bytes:
        return self._key.public_key_pem()


def event(number: int) -> AuditEvent:
    return AuditEvent(actor="tester", action="test.append", reason=f"event {number}")


def checkpoints(root: Path) -> list[Checkpoint]:
    path = root / "checkpoints.jsonl"
    if not path.exists():
        return []
    return [Checkpoint.from_line(line) for line in path.read_bytes().splitlines(keepends=True)]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "enclave.audit.writer" and r.levelno >= logging.WARNING
    ]


def test_a_signer_outage_loses_and_blocks_no_record_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="enclave.audit")
    signer = FlakySigner()
    root = tmp_path / "audit"
    with AuditLog.open(root, enclave="demo", signer=signer, settings=FAST) as log:
        log.append(event(0))
        wait_until(lambda: [cp.size for cp in checkpoints(root)] == [1])

        signer.down = VaultSealedError("vault: sign with transit key t/k: Vault is sealed")
        started = time.monotonic()
        receipts = [log.append(event(n)) for n in range(1, 21)]
        assert time.monotonic() - started < 2.0  # appends never wait for the signer
        assert [r.seq for r in receipts] == list(range(2, 22))
        wait_until(lambda: log.checkpoint_failures >= 3)  # retried at each checkpoint due
        assert [cp.size for cp in checkpoints(root)] == [1]  # nothing unsigned was claimed

        report = verify_log(root)  # mid-outage: intact, the tail protected by the chain
        assert report.intact, report.summary()
        assert (report.records, report.unsigned) == (21, 20)

        signer.down = None
        wait_until(lambda: log.checkpoint_failures == 0 and checkpoints(root)[-1].size == 21)
    problems = warnings_of(caplog)
    assert len([m for m in problems if "could not be signed" in m]) == 1, problems  # once
    assert "Vault is sealed" in problems[0] and "the records are durable" in problems[0]
    assert any("signed again (seq 21), after" in m for m in problems), problems
    report = verify_log(root)
    assert report.intact and report.records == 21 and report.unsigned == 0


def test_a_hung_signer_does_not_hold_up_appends(tmp_path: Path) -> None:
    signer = FlakySigner()
    signer.hang.set()
    root = tmp_path / "audit"
    log = AuditLog.open(root, enclave="demo", signer=signer, settings=FAST)
    try:
        log.append(event(0))
        wait_until(lambda: signer.attempts == 1)  # the checkpointer is stuck in sign()
        started = time.monotonic()
        for number in range(1, 51):
            log.append(event(number))
        assert time.monotonic() - started < 2.0
        assert log.size == 51
    finally:
        signer.hang.clear()
        signer.release.set()
        log.close()
    report = verify_log(root)
    assert report.intact and report.records == 51 and report.unsigned == 0


def test_a_final_checkpoint_that_cannot_be_signed_is_signed_on_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = FlakySigner()
    root = tmp_path / "audit"
    with AuditLog.open(root, enclave="demo", signer=signer, settings=QUIET) as log:
        for number in range(3):
            log.append(event(number))
        signer.down = VaultUnavailableError("vault: sign: unreachable")
    assert checkpoints(root) == []
    assert any("final checkpoint could not be signed" in m for m in warnings_of(caplog))
    report = verify_log(root)
    assert report.intact and report.unsigned == 3

    signer.down = None
    with AuditLog.open(root, enclave="demo", signer=signer, settings=QUIET) as log:
        log.append(event(3))
    assert [cp.size for cp in checkpoints(root)] == [4]
    assert verify_log(root).unsigned == 0


def test_a_changed_signer_is_listed_recorded_and_verified_checkpoint_by_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = Ed25519Signer.generate(), Ed25519Signer.generate()
    root = tmp_path / "audit"
    with AuditLog.open(root, enclave="demo", signer=old, settings=QUIET) as log:
        log.append(event(0))
    with pytest.raises(ConflictError, match="another key"):  # only when asked for
        AuditLog.open(root, enclave="demo", signer=new)
    with AuditLog.open(
        root, enclave="demo", signer=new, settings=QUIET, allow_key_change=True
    ) as log:
        log.append(event(1))
    listed = load_public_keys((root / "audit.pub").read_bytes(), "audit.pub")
    assert [fingerprint(k) for k in listed] == [old.key_id, new.key_id]
    assert [cp.key_id for cp in checkpoints(root)] == [old.key_id, new.key_id]
    changed = [json.loads(line) for line in sorted(root.glob("seg-*"))[0].read_bytes().splitlines()]
    assert changed[1]["action"] == "audit.signer-changed"
    assert changed[1]["details"] == {"key_id": new.key_id, "previous_key_ids": [old.key_id]}
    assert any(new.key_id in m and "new key" in m for m in warnings_of(caplog))

    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.key_id == new.key_id and report.records == 3
    assert any("signed with 2 keys" in note for note in report.notes)
    both = old.public_key_pem() + new.public_key_pem()
    assert verify_log(root, public_key_pem=both).intact
    only_new = verify_log(root, public_key_pem=new.public_key_pem())
    assert only_new.finding is not None and only_new.finding.kind is Tamper.BAD_SIGNATURE

    with AuditLog.open(root, enclave="demo", signer=old, settings=QUIET) as log:  # listed
        log.append(event(2))
    assert (root / "audit.pub").read_bytes().count(b"BEGIN PUBLIC KEY") == 2
    assert verify_log(root).intact


def test_a_key_file_without_a_key_is_input_error() -> None:
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_keys(b"nothing here", "audit.pub")
