"""The audit log writer: durable group-committed appends, rotation, checkpoints, failing closed."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from enclave.audit import (
    AuditEvent,
    AuditLog,
    AuditReceipt,
    AuditSettings,
    Decision,
    Ed25519Signer,
    verify_log,
)
from enclave.audit.checkpoint import Checkpoint
from enclave.audit.record import genesis_hash
from enclave.audit.signing import load_public_key, verify_signature
from enclave.errors import AuditError, ConflictError, InputError, IntegrityError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# no checkpoint unless a test asks for one
QUIET = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=3600.0)


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so file modes come from the code, not from the environment."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def event(number: int = 0, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "actor": "tester",
        "action": "test.append",
        "reason": f"event {number}",
    }
    fields.update(changes)
    return AuditEvent(**fields)


def open_log(root: Path, signer: Ed25519Signer, settings: AuditSettings = QUIET) -> AuditLog:
    return AuditLog.open(root, enclave="demo", signer=signer, settings=settings)


def segments(root: Path) -> list[Path]:
    return sorted(root.glob("seg-*.jsonl"))


def stored(root: Path) -> list[dict[str, Any]]:
    """Every record on disk, in file order, parsed here without the package's reader."""
    return [json.loads(line) for path in segments(root) for line in path.read_bytes().splitlines()]


def checkpoints(root: Path) -> list[Checkpoint]:
    path = root / "checkpoints.jsonl"
    if not path.exists():
        return []
    return [Checkpoint.from_line(line) for line in path.read_bytes().splitlines(keepends=True)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_owner_only_whatever_the_umask(
    tmp_path: Path, signer: Ed25519Signer, open_umask: None
) -> None:
    root = tmp_path / "audit"
    root.mkdir(mode=0o755)
    settings = AuditSettings(segment_size=300, checkpoint_records=2, checkpoint_interval=3600.0)
    with open_log(root, signer, settings) as log:
        for number in range(4):
            log.append(event(number))
    assert mode(root) == 0o700
    assert mode(root / "log.json") == 0o600
    assert mode(root / "checkpoints.jsonl") == 0o600
    assert mode(root / "audit.pub") == 0o644
    assert len(segments(root)) > 1
    assert {mode(path) for path in segments(root)} == {0o600}
    assert not [path.name for path in root.iterdir() if path.name.endswith(".tmp")]


def test_append_returns_a_receipt_for_the_record_on_disk(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        receipts = [log.append(event(number)) for number in range(3)]
        assert log.size == 3
        on_disk = stored(root)  # durable before close
    assert [r.seq for r in receipts] == [1, 2, 3]
    assert [r.hash for r in receipts] == [record["hash"] for record in on_disk]
    assert [r.time for r in receipts] == [record["time"] for record in on_disk]
    meta = json.loads((root / "log.json").read_bytes())
    assert on_disk[0]["prev"] == genesis_hash(meta["log_id"])
    assert on_disk[0]["enclave"] == "demo"
    assert [record["reason"] for record in on_disk] == ["event 0", "event 1", "event 2"]


def test_reopening_continues_the_chain(tmp_path: Path, signer: Ed25519Signer) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        first = [log.append(event(number)) for number in range(3)]
    log_id = json.loads((root / "log.json").read_bytes())["log_id"]
    with open_log(root, signer) as log:
        assert log.size == 3
        assert log.recovered is None
        second = [log.append(event(number)) for number in range(3, 5)]
    assert [r.seq for r in second] == [4, 5]
    records = stored(root)
    assert records[3]["prev"] == first[-1].hash
    assert records[4]["prev"] == second[0].hash
    assert json.loads((root / "log.json").read_bytes())["log_id"] == log_id
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == 5
    assert [cp.size for cp in checkpoints(root)] == [3, 5]  # one final checkpoint per close


def test_rotation_by_size_names_segments_by_their_first_seq(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    size = 700
    with open_log(root, signer, AuditSettings(segment_size=size)) as log:
        receipts = [log.append(event(number)) for number in range(20)]
    paths = segments(root)
    assert len(paths) >= 5
    record_size = max(len(line) for path in paths for line in path.read_bytes().splitlines())
    for path in paths:
        lines = path.read_bytes().splitlines()
        first_seq = json.loads(lines[0])["seq"]
        assert path.name == f"seg-{first_seq:016d}.jsonl"
        assert path.stat().st_size < size + record_size + 1  # rotated once it was full
    for earlier in paths[:-1]:
        assert earlier.stat().st_size >= size
    assert [record["seq"] for record in stored(root)] == [r.seq for r in receipts]
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.segments == len(paths)


def test_32_threads_get_unique_contiguous_seqs_in_group_commits(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    threads_count, per_thread = 32, 25
    results: dict[int, list[AuditReceipt]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def work(number: int) -> None:
        try:
            start.wait()
            results[number] = [
                log.append(event(number * 1000 + index)) for index in range(per_thread)
            ]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    settings = AuditSettings(segment_size=16 * 1024, checkpoint_records=100)
    with open_log(root, signer, settings) as log:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    total = threads_count * per_thread
    seqs = [r.seq for receipts in results.values() for r in receipts]
    assert sorted(seqs) == list(range(1, total + 1))
    for receipts in results.values():  # each thread's own appends are ordered
        assert [r.seq for r in receipts] == sorted(r.seq for r in receipts)
    records = stored(root)
    assert [record["seq"] for record in records] == list(range(1, total + 1))
    by_seq = {r.seq: r.hash for receipts in results.values() for r in receipts}
    assert all(by_seq[record["seq"]] == record["hash"] for record in records)
    # every record of a commit shares its time stamp: fewer stamps than records means batches
    assert len({record["time"] for record in records}) < total
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == total


class _InterruptedError(Exception):
    pass


def test_a_caller_that_stops_waiting_does_not_strand_the_threads_after_it(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads blocked on one batch are woken in a relay, each waking the next one.

    A caller whose wait ends in an exception (a signal handler raised in the main thread)
    never wakes the next: the ones after it go on by themselves once the batch is done.
    """
    root = tmp_path / "audit"
    log = open_log(root, signer)
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        log.append(event(0))
        real_write = os.write
        writing, go = threading.Event(), threading.Event()

        def write(fd: int, data: Any) -> int:
            if _segment_fd(fd) and not go.is_set():  # hold the writer in batch 1's write
                writing.set()
                go.wait(10)
            return real_write(fd, data)

        monkeypatch.setattr("enclave.audit.writer.os.write", write)
        receipts: dict[int, AuditReceipt] = {}

        def append(number: int) -> None:
            receipts[number] = log.append(event(number))

        def waiting() -> int:
            return len(log._pending.waiters)

        def interrupt() -> None:  # once the main thread blocks first in batch 2, and 3 more
            try:
                until(lambda: waiting() == 1)
                for thread in followers:
                    thread.start()
                until(lambda: waiting() == 4)
            finally:  # whatever happened, the main thread must not stay blocked
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

        def raise_interrupted(signum: int, frame: object) -> None:
            raise _InterruptedError

        signal.signal(signal.SIGUSR1, raise_interrupted)
        held = threading.Thread(target=append, args=(1,))
        held.start()
        assert writing.wait(5)
        followers = [threading.Thread(target=append, args=(n,)) for n in (3, 4, 5)]
        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(_InterruptedError):
            log.append(event(2))
        go.set()
        for thread in [held, interrupter, *followers]:
            thread.join(5)
            assert not thread.is_alive()
        monkeypatch.undo()
        assert sorted(receipts) == [1, 3, 4, 5]
        assert [receipts[n].seq for n in (3, 4, 5)] == [4, 5, 6]
        assert log.size == 6  # the record of the caller that gave up is durable all the same
    finally:
        signal.signal(signal.SIGUSR1, previous)
        log.close()
    assert [record["reason"] for record in stored(root)] == [f"event {n}" for n in range(6)]


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_append_async_from_many_tasks(tmp_path: Path, signer: Ed25519Signer) -> None:
    root = tmp_path / "audit"
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main(log: AuditLog) -> list[AuditReceipt]:
        stop = asyncio.Event()
        background = asyncio.create_task(ticker(stop))
        receipts = await asyncio.gather(*(log.append_async(event(n)) for n in range(100)))
        stop.set()
        await background
        return list(receipts)

    with open_log(root, signer) as log:
        receipts = asyncio.run(main(log))
    assert sorted(r.seq for r in receipts) == list(range(1, 101))
    assert ticks > 0  # the loop kept running while batches committed
    reasons = {record["seq"]: record["reason"] for record in stored(root)}
    assert {reasons[r.seq] for r in receipts} == {f"event {n}" for n in range(100)}
    assert verify_log(root).intact


def test_checkpoints_every_n_records_are_signed_over_the_head(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=5, checkpoint_interval=3600.0)
    with open_log(root, signer, settings) as log:
        receipts = [log.append(event(number)) for number in range(12)]
    found = checkpoints(root)
    assert [cp.size for cp in found] == [5, 10, 12]  # 12: the final one on close
    key = load_public_key((root / "audit.pub").read_bytes(), "audit.pub")
    log_id = json.loads((root / "log.json").read_bytes())["log_id"]
    for cp in found:
        assert cp.head == receipts[cp.size - 1].hash
        assert cp.log_id == log_id
        assert cp.key_id == signer.key_id
        assert verify_signature(key, cp.message(), cp.signature)
    assert (root / "audit.pub").read_bytes() == signer.public_key_pem()


def test_checkpoints_after_an_interval_without_more_records(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=1000, checkpoint_interval=0.1)
    with open_log(root, signer, settings) as log:
        for number in range(3):
            log.append(event(number))
        deadline = time.monotonic() + 5
        while not checkpoints(root) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [cp.size for cp in checkpoints(root)] == [3]  # written while the log is open
    assert [cp.size for cp in checkpoints(root)] == [3]  # nothing new to sign on close


@pytest.mark.parametrize("store", [False, True])
def test_content_is_kept_only_when_the_spec_opts_in(
    tmp_path: Path, signer: Ed25519Signer, store: bool
) -> None:
    root = tmp_path / "audit"
    settings = AuditSettings(store_content=store)
    prompt = "what is the capital of atlantis-7f3e"
    with open_log(root, signer, settings) as log:
        log.append(event(content={"prompt": prompt}, details={"kept": "yes"}))
    (record,) = stored(root)
    assert record["details"] == {"kept": "yes"}
    found = any(prompt.encode() in path.read_bytes() for path in segments(root))
    assert found is store
    assert ("content" in record) is store


def test_close_is_idempotent_and_later_appends_are_refused(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    log = open_log(root, signer)
    log.append(event())
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append(event())
    with pytest.raises(AuditError, match="closed"):
        asyncio.run(log.append_async(event()))
    assert [record["seq"] for record in stored(root)] == [1]
    assert [cp.size for cp in checkpoints(root)] == [1]


def test_a_bad_event_is_refused_to_its_caller_and_the_log_goes_on(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        log.append(event(1))
        with pytest.raises(InputError, match="larger than"):
            log.append(event(2, details={"blob": "x" * 70_000}))
        with pytest.raises(InputError, match="not plain JSON"):
            log.append(event(3, details={"when": object()}))
        with pytest.raises(InputError, match="not plain JSON"):
            asyncio.run(log.append_async(event(4, details={"nan": float("nan")})))
        receipt = log.append(event(5))
    assert receipt.seq == 2
    assert [record["reason"] for record in stored(root)] == ["event 1", "event 5"]
    assert verify_log(root).intact


def _segment_fd(fd: int) -> bool:
    return Path(f"/proc/self/fd/{fd}").readlink().name.startswith("seg-")


@pytest.mark.parametrize("failing", ["write", "fdatasync"])
def test_a_failed_write_fails_the_log_closed_without_partial_records(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    root = tmp_path / "audit"
    log = open_log(root, signer)
    try:
        for number in range(3):
            log.append(event(number))
        (segment,) = segments(root)
        before = segment.read_bytes()
        real_write = os.write

        def half_write(fd: int, data: Any) -> int:
            if not _segment_fd(fd):
                return real_write(fd, data)
            if len(data) > 1:  # a short write first, as a full disk gives, then the error
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def failed_sync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        if failing == "write":
            monkeypatch.setattr("enclave.audit.writer.os.write", half_write)
        else:
            monkeypatch.setattr("enclave.audit.writer.os.fdatasync", failed_sync)
        with pytest.raises(AuditError, match=f"{failing} failed") as first:
            log.append(event(3, reason="x" * 500))
        monkeypatch.undo()
        assert segment.read_bytes() == before  # nothing partial stays behind
        with pytest.raises(AuditError) as later:
            log.append(event(4))  # the disk is fine again; the log stays closed
        assert later.value is first.value
        with pytest.raises(AuditError, match=f"{failing} failed"):
            asyncio.run(log.append_async(event(5)))
    finally:
        log.close()
    log.close()
    assert segment.read_bytes() == before
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == 3


@pytest.mark.parametrize("segment_size", [1 << 20, 1], ids=["same-segment", "rotated"])
def test_a_failed_sync_cuts_a_batch_written_while_it_ran(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch, segment_size: int
) -> None:
    """The writer writes the next batch while the syncer flushes the last one (a pipeline).

    When that flush fails, the next batch may already be on its way to the disk, in the same
    segment or a new one; none of it may stay behind.
    """
    root = tmp_path / "audit"
    settings = AuditSettings(
        segment_size=segment_size, checkpoint_records=1_000_000, checkpoint_interval=3600.0
    )
    log = open_log(root, signer, settings)
    try:
        for number in range(3):
            log.append(event(number))
        before = b"".join(path.read_bytes() for path in segments(root))
        real_write, real_truncate = os.write, os.ftruncate
        syncing, second_write, cut = threading.Event(), threading.Event(), threading.Event()
        writes = 0

        def write(fd: int, data: Any) -> int:
            nonlocal writes
            if _segment_fd(fd):
                writes += 1
                if writes == 2:  # the second batch: let the syncer's cut go first, if it can
                    second_write.set()
                    cut.wait(0.5)
            return real_write(fd, data)

        def fdatasync(fd: int) -> None:
            syncing.set()
            second_write.wait(5)
            raise OSError(errno.EIO, "Input/output error")

        def ftruncate(fd: int, length: int) -> None:
            real_truncate(fd, length)
            cut.set()

        monkeypatch.setattr("enclave.audit.writer.os.write", write)
        monkeypatch.setattr("enclave.audit.writer.os.fdatasync", fdatasync)
        monkeypatch.setattr("enclave.audit.writer.os.ftruncate", ftruncate)
        errors: list[BaseException] = []

        def append(number: int) -> None:
            try:
                log.append(event(number))
            except AuditError as exc:
                errors.append(exc)

        first = threading.Thread(target=append, args=(3,))
        first.start()
        assert syncing.wait(5)
        second = threading.Thread(target=append, args=(4,))
        second.start()
        first.join(10)
        second.join(10)
        monkeypatch.undo()
        assert len(errors) == 2
        assert all("fdatasync failed" in str(error) for error in errors)
        assert b"".join(path.read_bytes() for path in segments(root)) == before
        with pytest.raises(AuditError):
            log.append(event(5))
    finally:
        log.close()
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == 3
    with open_log(root, signer) as reopened:
        assert reopened.append(event(6)).seq == 4


def test_a_failed_log_does_not_spin_its_writer(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=1000, checkpoint_interval=0.05)
    log = open_log(root, signer, settings)
    try:
        log.append(event())  # unsigned: a checkpoint falls due 50 ms from now
        monkeypatch.setattr("enclave.audit.writer.os.fdatasync", lambda fd: _raise(errno.EIO))
        with pytest.raises(AuditError):
            log.append(event())
        monkeypatch.undo()
        time.sleep(0.1)
        cpu = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.1  # a busy loop would burn the whole half second
    finally:
        log.close()


def _raise(code: int) -> None:
    raise OSError(code, os.strerror(code))


def test_short_writes_are_finished_in_every_file(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "audit"
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: Any) -> int:  # a disk that takes 7 bytes at a time
        nonlocal calls
        if root not in Path(f"/proc/self/fd/{fd}").readlink().parents:
            return real_write(fd, data)
        calls += 1
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr("enclave.audit.writer.os.write", short_write)  # the same os everywhere
    settings = AuditSettings(checkpoint_records=2, checkpoint_interval=3600.0)
    with open_log(root, signer, settings) as log:
        for number in range(3):
            log.append(event(number))
    monkeypatch.undo()
    assert calls > 100
    assert json.loads((root / "log.json").read_bytes())["enclave"] == "demo"
    assert (root / "audit.pub").read_bytes() == signer.public_key_pem()
    assert [cp.size for cp in checkpoints(root)] == [2, 3]
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == 3


def test_a_log_whose_last_record_was_edited_is_not_reopened(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        for number in range(3):
            log.append(event(number))
    (segment,) = segments(root)
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b'"reason":"event 2"', b'"reason":"event 9"'))
    with pytest.raises(IntegrityError, match="fails its hash"):
        open_log(root, signer)
    assert len(segment.read_bytes()) == len(data)  # nothing written to it


def test_the_wrong_enclave_or_key_is_a_conflict(tmp_path: Path, signer: Ed25519Signer) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        log.append(event())
    before = {path.name: path.read_bytes() for path in root.iterdir() if path.is_file()}
    with pytest.raises(ConflictError, match="'demo', not 'other'"):
        AuditLog.open(root, enclave="other", signer=signer)
    with pytest.raises(ConflictError, match="another key"):
        AuditLog.open(root, enclave="demo", signer=Ed25519Signer.generate())
    after = {path.name: path.read_bytes() for path in root.iterdir() if path.is_file()}
    assert after == before
    with open_log(root, signer) as log:  # the right enclave and key still open it
        assert log.append(event(decision=Decision.ALLOW)).seq == 2


def test_an_empty_segment_left_by_a_crash_after_rotation_is_dropped(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    root = tmp_path / "audit"
    with open_log(root, signer) as log:
        for number in range(3):
            log.append(event(number))
    empty = root / f"seg-{4:016d}.jsonl"
    empty.touch(mode=0o600)
    with open_log(root, signer) as log:
        assert log.recovered is None
        assert log.append(event(3)).seq == 4
    assert [path.name for path in segments(root)] == [f"seg-{1:016d}.jsonl"]
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.records == 4


def test_one_writer_at_a_time(tmp_path: Path, signer: Ed25519Signer) -> None:
    root = tmp_path / "log"
    first = open_log(root, signer)
    try:
        with pytest.raises(ConflictError, match="open for writing elsewhere"):
            open_log(root, signer)
        first.append(event(1))
    finally:
        first.close()
    with open_log(root, signer) as second:  # released on close
        assert second.append(event(2)).seq == 2
