"""The audit log writer: append-only, hash-chained, group-committed, checkpoint-signed.

``append()`` returns only when its record is on disk (written and ``fdatasync``-ed). Appenders
that arrive while a write is in flight are batched into the next write, so N concurrent callers
cost one write and one fsync, not N (group commit). One writer thread owns the files; callers on
any thread, or in asyncio (:meth:`AuditLog.append_async`), only hand it events.

On open, a torn tail (bytes after the last complete line, left by a crash mid-write) is cut off,
kept under ``quarantine/`` and reported, both in the log (an ``audit.recovered`` record) and in
:attr:`AuditLog.recovered`. It is never treated as a valid record. A record that was
acknowledged is never in a torn tail, because acknowledgement follows the fsync.

If a write fails, the log fails closed: that batch and every later ``append`` raise
:class:`~enclave.errors.AuditError`, so nothing that needs a record proceeds without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, Self

from enclave.audit.checkpoint import Checkpoint, make_checkpoint
from enclave.audit.layout import Layout, LogMeta, fsync_dir, iter_lines, write_file
from enclave.audit.record import (
    ActorKind,
    AuditEvent,
    Decision,
    check_enclave_name,
    encode,
    genesis_hash,
    split_line,
)
from enclave.audit.redact import redact
from enclave.errors import AuditError, ConflictError, IntegrityError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from enclave.audit.signing import Signer

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.0002
"""Longest a commit waits for the appenders a batch usually has (seconds)."""


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How the log rotates, checkpoints and what it keeps (from the spec's ``audit``)."""

    segment_size: int = 64 * 1024 * 1024
    checkpoint_records: int = 1000
    checkpoint_interval: float = 1.0
    store_content: bool = False


class AuditReceipt(NamedTuple):
    """Proof of a durable append: where the record sits in the chain."""

    seq: int
    hash: str
    time: str


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes cut off the end of a segment on open (a crash interrupted a write)."""

    segment: str
    offset: int
    length: int
    quarantined: str


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Batch:
    __slots__ = ("error", "events", "futures", "receipts", "waiters")

    def __init__(self) -> None:
        self.events: list[tuple[AuditEvent, tuple[str, ...]]] = []
        self.receipts: list[AuditReceipt] = []
        self.error: AuditError | None = None
        # one held lock per blocked appender: releasing it wakes exactly that thread, with no
        # shared lock for 32 woken threads to queue on (an Event would make them contend)
        self.waiters: list[threading.Lock] = []
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[AuditReceipt], int]] = []


class AuditLog:
    """An open audit log. Use :meth:`open`; close it (or use ``with``) to flush a checkpoint."""

    def __init__(
        self, layout: Layout, meta: LogMeta, signer: Signer, settings: AuditSettings
    ) -> None:
        self.layout = layout
        self.meta = meta
        self.settings = settings
        self.recovered: TornTail | None = None
        self._signer = signer
        self._cond = threading.Condition()
        self._pending = _Batch()
        self._closing = False
        self._failed: AuditError | None = None
        self._seq = 0
        self._head = genesis_hash(meta.log_id)
        self._fd = -1
        self._segment_bytes = 0
        self._signed_size = 0
        self._signed_at = time.monotonic()
        self._recent: deque[int] = deque(maxlen=16)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        enclave: str,
        signer: Signer,
        settings: AuditSettings | None = None,
    ) -> AuditLog:
        """Open (creating if needed) the log at ``root`` and start its writer."""
        check_enclave_name(enclave)
        layout = Layout(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        if layout.meta.exists():
            meta = layout.read_meta()
            if meta.enclave != enclave:
                raise ConflictError(
                    f"{root}: audit log of enclave {meta.enclave!r}, not {enclave!r}"
                )
        else:
            meta = LogMeta(uuid.uuid4().hex, enclave, utc_now())
            layout.write_meta(meta)
        _check_public_key(layout, signer)
        self = cls(layout, meta, signer, settings or AuditSettings())
        self._recover()
        self._thread.start()
        if self.recovered is not None:
            torn = self.recovered
            self.append(
                AuditEvent(
                    actor="audit-log",
                    actor_kind=ActorKind.COMPONENT,
                    action="audit.recovered",
                    decision=Decision.ERROR,
                    reason="torn tail after a crash was cut off and quarantined",
                    details={
                        "segment": torn.segment,
                        "offset": torn.offset,
                        "bytes": torn.length,
                        "quarantined": torn.quarantined,
                    },
                )
            )
        return self

    def _recover(self) -> None:
        segments = self.layout.segments()
        while segments:
            first_seq, path = segments[-1]
            last = self._scan_tail(path)
            if last is not None:
                self._seq, self._head = last
                self._open_segment(path)
                break
            if len(segments) == 1 and first_seq == 1:
                self._open_segment(path)  # created but never written: reuse it
                break
            path.unlink()  # an empty segment after a crash: the previous one is the tail
            fsync_dir(self.layout.root)
            segments.pop()
        self._signed_size = self._last_checkpoint_size()

    def _scan_tail(self, path: Path) -> tuple[int, str] | None:
        """The last record's ``(seq, hash)``, after cutting off a torn tail."""
        last_line: bytes | None = None
        end = 0
        for offset, line in iter_lines(path):
            if not line.endswith(b"\n"):
                self._quarantine(path, offset, line)
                break
            last_line, end = line, offset + len(line)
        if last_line is None:
            return None
        parts = split_line(last_line)
        if parts is None or _hash(parts[0]) != parts[1]:
            raise IntegrityError(
                f"{path}: the last record (at byte {end - len(last_line)}) fails its hash; "
                "run `enclave audit verify` before writing to this log"
            )
        seq = int(parts[0][len(b'{"v":1,"seq":') : parts[0].index(b",", 13)])
        return seq, parts[1]

    def _quarantine(self, path: Path, offset: int, tail: bytes) -> None:
        self.layout.quarantine.mkdir(mode=0o700, exist_ok=True)
        target = self.layout.quarantine / f"{path.name}.{offset}.torn"
        write_file(target, tail, mode=0o600)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.recovered = TornTail(path.name, offset, len(tail), str(target))
        log.warning(
            "audit log %s: cut a torn tail of %d bytes at %s:%d (kept in %s)",
            self.layout.root,
            len(tail),
            path.name,
            offset,
            target,
        )

    def _last_checkpoint_size(self) -> int:
        path = self.layout.checkpoints
        if not path.exists():
            return 0
        size, good_end = 0, 0
        for offset, line in iter_lines(path):
            try:
                size = Checkpoint.from_line(line).size
                good_end = offset + len(line)
            except (ValueError, KeyError):
                if line.endswith(b"\n"):
                    raise IntegrityError(f"{path}: malformed checkpoint at byte {offset}") from None
                fd = os.open(path, os.O_WRONLY)  # torn checkpoint line: it was never complete
                try:
                    os.ftruncate(fd, good_end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return size

    def _open_segment(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segment_bytes = os.fstat(fd).st_size
        fsync_dir(self.layout.root)

    # -- appending -------------------------------------------------------------------------

    def _prepare(self, event: AuditEvent) -> tuple[AuditEvent, tuple[str, ...]]:
        if event.content and not self.settings.store_content:
            event = _without_content(event)
        return redact(event)

    def _enqueue(self, prepared: tuple[AuditEvent, tuple[str, ...]]) -> tuple[_Batch, int]:
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._closing:
                raise AuditError(f"audit log {self.layout.root} is closed")
            batch = self._pending
            index = len(batch.events)
            batch.events.append(prepared)
            if index == 0 or index + 1 >= self._recent_max():
                self._cond.notify()
            return batch, index

    def append(self, event: AuditEvent) -> AuditReceipt:
        """Record ``event``; return once it is durable. Raises :class:`AuditError` if not."""
        prepared = self._prepare(event)
        waiter = threading.Lock()
        waiter.acquire()
        with self._cond:
            batch, index = self._enqueue(prepared)
            batch.waiters.append(waiter)
        waiter.acquire()
        if batch.error is not None:
            raise batch.error
        return batch.receipts[index]

    async def append_async(self, event: AuditEvent) -> AuditReceipt:
        """:meth:`append` for asyncio: the loop keeps running while the batch commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditReceipt] = loop.create_future()
        prepared = self._prepare(event)
        with self._cond:
            batch, index = self._enqueue(prepared)
            batch.futures.append((loop, future, index))
        return await future

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending.events and not self._closing:
                    wait = self._checkpoint_wait()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                self._gather()
                batch, self._pending = self._pending, _Batch()
                self._recent.append(len(batch.events))
                closing = self._closing
            if batch.events:
                self._commit(batch)
            if self._failed is None and self._checkpoint_wait() == 0:
                self._guarded_checkpoint()
            if closing:
                if self._failed is None and self._seq > self._signed_size:
                    self._guarded_checkpoint()
                return

    def _gather(self) -> None:
        """Wait briefly for the appenders a batch usually has (called with the lock held).

        Appenders woken by the previous commit re-enqueue a moment later; committing at the
        first arrival would split them into small batches, each paying a full fsync.
        """
        target = self._recent_max()
        if len(self._pending.events) >= target or self._closing:
            return
        deadline = time.monotonic() + COMMIT_DELAY
        while len(self._pending.events) < target and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _recent_max(self) -> int:
        return max(self._recent, default=1)

    def _checkpoint_wait(self) -> float | None:
        """Seconds until a checkpoint is due; 0 when due now, None when nothing is unsigned."""
        unsigned = self._seq - self._signed_size
        if unsigned <= 0:
            return None
        if unsigned >= self.settings.checkpoint_records:
            return 0
        return max(0.0, self.settings.checkpoint_interval - (time.monotonic() - self._signed_at))

    def _commit(self, batch: _Batch) -> None:
        if self._failed is not None:
            self._finish(batch, self._failed)
            return
        stamp = utc_now()
        seq, head = self._seq, self._head
        lines: list[bytes] = []
        try:
            for event, hits in batch.events:
                seq += 1
                line, head = encode(
                    event,
                    seq=seq,
                    prev=head,
                    time=stamp,
                    enclave=self.meta.enclave,
                    redacted=hits,
                )
                lines.append(line)
                batch.receipts.append(AuditReceipt(seq, head, stamp))
            self._write(b"".join(lines), first_seq=self._seq + 1)
        except Exception as exc:  # any failure to persist fails the log closed
            error = AuditError(f"audit log {self.layout.root}: write failed: {exc}")
            self._failed = error
            log.exception("audit log %s failed closed", self.layout.root)
            self._finish(batch, error)
            return
        self._seq, self._head = seq, head
        self._finish(batch, None)

    def _write(self, data: bytes, *, first_seq: int) -> None:
        if self._fd < 0 or self._segment_bytes >= self.settings.segment_size:
            self._open_segment(self.layout.segment(first_seq))
        start = self._segment_bytes
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # leave no partial records behind
                os.ftruncate(self._fd, start)
            raise
        self._segment_bytes = start + len(data)

    def _finish(self, batch: _Batch, error: AuditError | None) -> None:
        batch.error = error
        for waiter in batch.waiters:
            waiter.release()
        for loop, future, index in batch.futures:
            if error is not None:
                loop.call_soon_threadsafe(_fail, future, error)
            else:
                loop.call_soon_threadsafe(_resolve, future, batch.receipts[index])

    def _guarded_checkpoint(self) -> None:
        try:
            self._write_checkpoint()
        except Exception as exc:  # a lost checkpoint fails the log closed as well
            self._failed = AuditError(f"audit log {self.layout.root}: checkpoint failed: {exc}")
            log.exception("audit log %s failed closed", self.layout.root)

    def _write_checkpoint(self) -> Checkpoint:
        checkpoint = make_checkpoint(
            self._signer, self.meta.log_id, self._seq, self._head, utc_now()
        )
        fd = os.open(self.layout.checkpoints, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, checkpoint.to_line())
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._signed_size = checkpoint.size
        self._signed_at = time.monotonic()
        return checkpoint

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Records durably in the log."""
        return self._seq

    def close(self) -> None:
        """Commit what is pending, sign a final checkpoint, stop the writer. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _without_content(event: AuditEvent) -> AuditEvent:
    return replace(event, content=None)


def _resolve(future: asyncio.Future[AuditReceipt], receipt: AuditReceipt) -> None:
    if not future.done():
        future.set_result(receipt)


def _fail(future: asyncio.Future[AuditReceipt], error: AuditError) -> None:
    if not future.done():
        future.set_exception(error)


def _check_public_key(layout: Layout, signer: Signer) -> None:
    pem = signer.public_key_pem()
    if layout.public_key.exists():
        if layout.public_key.read_bytes() != pem:
            raise ConflictError(
                f"{layout.public_key}: the log is signed with another key; "
                "open it with the key that created it"
            )
        return
    write_file(layout.public_key, pem, mode=0o644)
