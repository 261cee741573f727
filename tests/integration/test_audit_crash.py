"""Crash safety of the audit log: a writer killed at any moment loses no acknowledged record.

A real child process appends from several threads and is SIGKILLed at a random moment, again
and again on the same log. In two runs of three the child's ``os.write`` hands records to the
file 128 bytes at a time (a slow disk), so most kills land mid-record and leave a torn tail; a
fast write is rarely interrupted. And, deterministically, a log is cut at every byte of its
tail, the way a crash mid-write leaves it. Before recovery a torn log never verifies as
intact; reopening recovers it (quarantining the torn bytes and recording that it did) to a log
that verifies.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from enclave.audit import (
    AuditEvent,
    AuditLog,
    AuditSettings,
    Ed25519Signer,
    Tamper,
    TornTail,
    verify_log,
)
from enclave.audit.reader import iter_records

if TYPE_CHECKING:
    from pathlib import Path

    from enclave.audit import Report

ITERATIONS = 15
QUIET = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=3600.0)

CHILD = """
import sys
import threading
from pathlib import Path

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer

root, key, run, disk = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = AuditSettings(segment_size=16384, checkpoint_records=25, checkpoint_interval=0.02)
log = AuditLog.open(root, enclave="crash", signer=Ed25519Signer.from_file(key), settings=settings)
out = threading.Lock()

if disk == "slow":  # records reach the file in pieces, so a kill often lands mid-record
    import os
    import time

    real_write = os.write

    def slow_write(fd, data):
        time.sleep(0.0001)
        return real_write(fd, bytes(data[:128]))

    os.write = slow_write


def work(thread):
    number = 0
    while True:
        number += 1
        padding = "x" * (number * 37 % 900)  # records of many sizes
        event = AuditEvent(
            actor="crash-test",
            action="crash.append",
            reason=f"{run} thread {thread} event {number} {padding}",
        )
        receipt = log.append(event)
        with out:  # acknowledged: append() returned, so the record is durable
            sys.stdout.write(f"{receipt.seq}\\n")
            sys.stdout.flush()


print("ready", flush=True)
for thread in range(4):
    threading.Thread(target=work, args=(thread,), daemon=True).start()
threading.Event().wait()
"""


def segments(root: Path) -> list[Path]:
    return sorted(root.glob("seg-*.jsonl"))


def torn_segment(root: Path) -> tuple[Path, int, bytes] | None:
    """The last segment's torn tail: (segment, offset, bytes), if it ends mid-record."""
    paths = segments(root)
    if not paths:
        return None
    data = paths[-1].read_bytes()
    end = data.rfind(b"\n") + 1
    return (paths[-1], end, data[end:]) if end < len(data) else None


def torn_checkpoint(root: Path) -> bool:
    path = root / "checkpoints.jsonl"
    return path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")


def assert_intact(report: Report, records: int) -> None:
    assert report.intact, report.summary()
    assert report.records == records
    assert report.summary().startswith(f"intact: {records} records")


class Child:
    """One writer process; its acknowledged seqs are read from its stdout as they come."""

    def __init__(self, root: Path, key: Path, run: str, disk: str, stderr: Path) -> None:
        self.acked: list[int] = []
        self.ready = threading.Event()
        self._stderr_path = stderr
        self._stderr = stderr.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(key), run, disk],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut by the kill was never a whole acknowledgement
            text = raw.strip()
            if text == b"ready":
                self.ready.set()
            else:
                self.acked.append(int(text))

    def kill(self) -> None:
        """SIGKILL this child (by its handle, nothing else) and collect what it printed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.close()

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")[-2000:]


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_loses_no_acknowledged_record(tmp_path: Path) -> None:
    root = tmp_path / "audit"
    key = tmp_path / "audit.key"
    signer = Ed25519Signer.from_file(key, create=True)
    rng = random.Random(20261127)  # noqa: S311 - kill timing, not cryptography
    acked: set[int] = set()
    torn_tails = 0
    for run in range(ITERATIONS):
        disk = "slow" if run % 3 else "fast"
        child = Child(root, key, f"run{run}", disk, tmp_path / f"child-{run}.err")
        try:
            assert child.ready.wait(60), f"the writer did not start: {child.stderr()}"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            child.kill()
        assert child.process.returncode == -9, child.stderr()
        acked.update(child.acked)

        # before recovery: a torn tail is never reported intact, anything else is
        torn = torn_segment(root)
        report = verify_log(root)
        if torn is not None or torn_checkpoint(root):
            torn_tails += 1
            assert not report.intact
            assert report.finding is not None
            assert report.finding.kind is Tamper.TRUNCATION, report.summary()
        else:
            assert report.intact, report.summary()

        with AuditLog.open(root, enclave="crash", signer=signer, settings=QUIET) as log:
            if torn is None:
                assert log.recovered is None
            else:
                path, offset, tail = torn
                recovered = log.recovered
                assert recovered is not None
                assert (recovered.segment, recovered.offset, recovered.length) == (
                    path.name,
                    offset,
                    len(tail),
                )
                assert (root / "quarantine" / f"{path.name}.{offset}.torn").read_bytes() == tail
            size = log.size
        records = list(iter_records(root))
        assert [record.seq for record in records] == list(range(1, size + 1))
        missing = acked - {record.seq for record in records}
        assert not missing, f"acknowledged records lost after run {run}: {sorted(missing)[:10]}"
        if torn is not None:
            assert records[-1].action == "audit.recovered"
            assert records[-1].details is not None
            assert records[-1].details["bytes"] == len(torn[2])
        assert_intact(verify_log(root), size)
    assert len(acked) >= ITERATIONS  # the children did get appends acknowledged,
    assert len(segments(root)) > 1  # rotated through several segments,
    assert torn_tails > 0  # and the kills did tear records (most "slow" runs do)


def build_crash_state(tmp_path: Path, signer: Ed25519Signer) -> Path:
    """A log as a crash leaves it: 6 signed records, then 3 durable ones not yet signed."""
    live = tmp_path / "live"
    with AuditLog.open(live, enclave="crash", signer=signer) as log:
        for number in range(6):
            log.append(AuditEvent(actor="crash-test", action="crash.append", reason=f"e{number}"))
    snapshot = tmp_path / "snapshot"
    with AuditLog.open(live, enclave="crash", signer=signer, settings=QUIET) as log:
        for number in range(6, 9):
            log.append(AuditEvent(actor="crash-test", action="crash.append", reason=f"e{number}"))
        shutil.copytree(live, snapshot)  # every append returned: this is what is on disk
    return snapshot


def fresh_copy(snapshot: Path, work: Path) -> Path:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(snapshot, work)
    return work


@pytest.mark.slow
def test_a_crash_at_every_byte_of_the_tail_is_detected_and_recovered(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    snapshot = build_crash_state(tmp_path, signer)
    (segment,) = segments(snapshot)
    data = segment.read_bytes()
    ends = [index + 1 for index, byte in enumerate(data) if byte == ord("\n")]
    assert len(ends) == 9
    for cut in range(ends[-3], len(data) + 1):  # every byte of the last two records
        work = fresh_copy(snapshot, tmp_path / "work")
        path = work / segment.name
        os.truncate(path, cut)
        complete = sum(1 for end in ends if end <= cut)
        boundary = ends[complete - 1]

        report = verify_log(work)
        if cut == boundary:  # whole records: only the checkpoint (at 6) can tell, and it holds
            assert_intact(report, complete)
            assert report.unsigned == complete - 6
        else:
            assert report.finding is not None, f"cut at {cut} verified intact"
            found = report.finding
            assert (found.kind, found.file, found.line) == (
                Tamper.TRUNCATION,
                str(path),
                complete + 1,
            ), f"cut at {cut}: {found}"

        with AuditLog.open(work, enclave="crash", signer=signer, settings=QUIET) as log:
            if cut == boundary:
                assert log.recovered is None
            else:
                quarantined = work / "quarantine" / f"{segment.name}.{boundary}.torn"
                assert log.recovered == TornTail(
                    segment.name, boundary, cut - boundary, str(quarantined)
                )
                assert quarantined.read_bytes() == data[boundary:cut]
                assert quarantined.stat().st_mode & 0o777 == 0o600
                assert quarantined.parent.stat().st_mode & 0o777 == 0o700
        kept = path.read_bytes()
        assert kept[:boundary] == data[:boundary]  # every record before the cut, unchanged
        added = 0 if cut == boundary else 1
        assert kept.count(b"\n") == complete + added
        if added:
            assert json.loads(kept.splitlines()[-1])["action"] == "audit.recovered"
        assert_intact(verify_log(work), complete + added)


@pytest.mark.slow
def test_a_crash_at_every_byte_of_a_checkpoint_is_detected_and_recovered(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    snapshot = tmp_path / "snapshot"
    settings = AuditSettings(checkpoint_records=3, checkpoint_interval=3600.0)
    with AuditLog.open(snapshot, enclave="crash", signer=signer, settings=settings) as log:
        for number in range(6):
            log.append(AuditEvent(actor="crash-test", action="crash.append", reason=f"e{number}"))
    data = (snapshot / "checkpoints.jsonl").read_bytes()
    first_end = data.index(b"\n") + 1
    assert data.count(b"\n") == 2
    for cut in range(first_end, len(data) + 1):
        work = fresh_copy(snapshot, tmp_path / "work")
        path = work / "checkpoints.jsonl"
        os.truncate(path, cut)

        report = verify_log(work)
        if cut in (first_end, len(data)):
            assert_intact(report, 6)
            assert report.unsigned == (3 if cut == first_end else 0)
        else:
            assert report.finding is not None, f"cut at {cut} verified intact"
            assert (report.finding.kind, report.finding.file, report.finding.line) == (
                Tamper.TRUNCATION,
                str(path),
                2,
            ), f"cut at {cut}: {report.finding}"

        with AuditLog.open(work, enclave="crash", signer=signer, settings=settings) as log:
            assert log.recovered is None  # no record was torn
            log.append(AuditEvent(actor="crash-test", action="crash.after", reason="after"))
        after = verify_log(work)
        assert_intact(after, 7)
        assert after.last_checkpoint is not None
        assert after.last_checkpoint.size == 7
        assert path.read_bytes().startswith(data[:first_end])
