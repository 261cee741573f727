"""The audit log writer: append-only, hash-chained, group-committed, checkpoint-signed.

``append()`` returns only when its record is on disk (written and ``fdatasync``-ed). Appenders
that arrive while a write is in flight are batched into the next write, so N concurrent callers
cost one write and one fsync, not N (group commit). One writer thread owns the files; callers on
any thread, or in asyncio (:meth:`AuditLog.append_async`), only hand it events. Threads blocked
on a commit are woken one after another, each by the one before (see ``_wait``).

On open, a torn tail (bytes after the last complete line, left by a crash mid-write) is cut off,
kept under ``quarantine/`` and reported, both in the log (an ``audit.recovered`` record) and in
:attr:`AuditLog.recovered`. It is never treated as a valid record. A record that was
acknowledged is never in a torn tail, because acknowledgement follows the fsync.

If a write fails, the log fails closed: that batch and every later ``append`` raise
:class:`~enclave.errors.AuditError`, so nothing that needs a record proceeds without one.

Checkpoints are signed on a thread of their own, so a slow signer (a Vault transit key) never
holds up an append. A signer that fails (Vault sealed, unreachable, the token revoked) does not
fail the log: the records stay durable and protected by the hash chain, the failure is logged
(once, then its recovery), and the checkpoint is tried again when the next one falls due
(:attr:`AuditLog.checkpoint_failures` counts the attempts). Only a checkpoint that was signed but
cannot be written to disk fails the log closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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
from enclave.audit.signing import fingerprint, load_public_key, load_public_keys
from enclave.errors import AuditError, ConflictError, InputError, IntegrityError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from enclave.audit.signing import Signer
    from enclave.spec.model import Audit

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.0002
"""Longest a commit waits for one more of the appenders a batch usually has (seconds)."""
COMMIT_WAIT_MAX = 0.002
"""Longest a commit waits for them in all (seconds)."""
RELAY_TIMEOUT = 0.05
"""How often a blocked thread checks whether its batch is done without having been woken: a
wake-up relay broken by a caller that stopped waiting goes on after this (seconds)."""
MAX_QUEUED_CHECKPOINTS = 4
"""Checkpoints waiting for the signer at most (see ``AuditLog._request_checkpoint``)."""
SIGN_RETRY_MAX = 30.0
"""Longest wait before a checkpoint whose signing failed is tried again (seconds); otherwise
the next one is tried when it falls due (``checkpoint_interval``)."""


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How the log rotates, checkpoints and what it keeps (from the spec's ``audit``)."""

    segment_size: int = 64 * 1024 * 1024
    checkpoint_records: int = 1000
    checkpoint_interval: float = 1.0
    store_content: bool = False

    @classmethod
    def from_spec(cls, audit: Audit) -> AuditSettings:
        return cls(
            segment_size=audit.segment_size,
            checkpoint_records=audit.checkpoint_records,
            checkpoint_interval=audit.checkpoint_every.total_seconds(),
            store_content=audit.store_content,
        )


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
    __slots__ = (
        "done",
        "end",
        "error",
        "events",
        "fd",
        "futures",
        "opened",
        "receipts",
        "refused",
        "start",
        "waiters",
    )

    def __init__(self) -> None:
        self.fd = -1
        self.start = 0
        self.end: tuple[int, str] = (0, "")
        self.opened: Path | None = None  # the segment this batch began, if it began one
        self.events: list[tuple[AuditEvent, tuple[str, ...]]] = []
        self.receipts: list[AuditReceipt] = []
        self.refused: dict[int, InputError] = {}  # events that cannot be encoded, by index
        self.error: AuditError | None = None
        self.done = False  # receipts or error are final; set before any appender is woken
        # one held lock per blocked appender, woken in a relay (see _wait)
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
        self._cond = threading.Condition(threading.Lock())
        self._pending = _Batch()
        self._closing = False
        self._failed: AuditError | None = None
        self._seq = 0
        self._head = genesis_hash(meta.log_id)
        self._fd = -1
        self._lock = -1
        self._segment_bytes = 0
        self._signed_size = 0
        # checkpoint scheduling, under _sync_cond: what was last handed to the checkpointer
        self._requested_size = 0
        self._requested_at = time.monotonic()
        self._retry_at = 0.0
        self._sign_failures = 0
        self._checkpoint_error: str | None = None  # a signed checkpoint the disk refused
        self._syncer_done = False
        # the checkpointer's inbox, under _checkpoint_cond (taken after _sync_cond, never before)
        self._checkpoint_cond = threading.Condition()
        self._checkpoint_due: deque[tuple[int, str]] = deque()
        self._checkpoint_closing = False
        self._recent: deque[int] = deque(maxlen=16)
        self._target = 1
        self._sync_cond = threading.Condition()
        # held while a batch is written, and while a failed sync cuts what is unsynced: no
        # write can land after that cut (taken before _cond or _sync_cond, never after)
        self._io_lock = threading.Lock()
        self._written: list[_Batch] = []
        self._retired: list[int] = []
        self._writer_done = False
        self._sync_error: AuditError | None = None
        self._durable: tuple[int, str] = (0, self._head)
        self._writer = threading.Thread(target=self._run_writer, name="audit-writer", daemon=True)
        self._syncer = threading.Thread(target=self._run_syncer, name="audit-sync", daemon=True)
        self._checkpointer = threading.Thread(
            target=self._run_checkpointer, name="audit-checkpoint", daemon=True
        )

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        enclave: str,
        signer: Signer,
        settings: AuditSettings | None = None,
        allow_key_change: bool = False,
    ) -> AuditLog:
        """Open (creating if needed) the log at ``root`` and start its writer.

        A log signed with another key is refused (:class:`ConflictError`) unless
        ``allow_key_change``: then the signer's public key is added to ``audit.pub`` (the log
        lists every key it was signed with) and an ``audit.signer-changed`` record says so. For
        a signer whose key is legitimately replaced, e.g. an enclave's Vault transit key after
        a teardown and a new provisioning.
        """
        check_enclave_name(enclave)
        layout = Layout(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        lock = _lock(layout)
        try:
            return cls._open_locked(
                layout,
                lock,
                enclave,
                signer,
                settings or AuditSettings(),
                allow_key_change=allow_key_change,
            )
        except BaseException:
            os.close(lock)  # closing the descriptor releases the lock
            raise

    @classmethod
    def _open_locked(
        cls,
        layout: Layout,
        lock: int,
        enclave: str,
        signer: Signer,
        settings: AuditSettings,
        *,
        allow_key_change: bool,
    ) -> AuditLog:
        root = layout.root
        if layout.meta.exists():
            meta = layout.read_meta()
            if meta.enclave != enclave:
                raise ConflictError(
                    f"{root}: audit log of enclave {meta.enclave!r}, not {enclave!r}"
                )
        else:
            meta = LogMeta(uuid.uuid4().hex, enclave, utc_now())
            layout.write_meta(meta)
        previous_keys = _check_public_key(layout, signer, allow_change=allow_key_change)
        self = cls(layout, meta, signer, settings)
        self._lock = lock
        self._recover()
        self._writer.start()
        self._syncer.start()
        self._checkpointer.start()
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
        if previous_keys:
            self.append(
                AuditEvent(
                    actor="audit-log",
                    actor_kind=ActorKind.COMPONENT,
                    action="audit.signer-changed",
                    decision=Decision.INFO,
                    reason="checkpoints are signed with a new key from here on",
                    details={"key_id": signer.key_id, "previous_key_ids": previous_keys},
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
        self._durable = (self._seq, self._head)
        self._signed_size = self._requested_size = self._last_checkpoint_size()

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
        size = 0
        for offset, line in iter_lines(path):
            if not line.endswith(b"\n"):
                # torn checkpoint line: it was never complete, even when it parses (a crash
                # before the newline); the next checkpoint would run into it
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                break
            try:
                size = Checkpoint.from_line(line).size
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(f"{path}: malformed checkpoint at byte {offset}") from None
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

    def _enqueue(
        self,
        prepared: tuple[AuditEvent, tuple[str, ...]],
        waiter: threading.Lock | None = None,
        future: tuple[asyncio.AbstractEventLoop, asyncio.Future[AuditReceipt]] | None = None,
    ) -> tuple[_Batch, int, int]:
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._closing:
                raise AuditError(f"audit log {self.layout.root} is closed")
            batch = self._pending
            index = len(batch.events)
            batch.events.append(prepared)
            slot = len(batch.waiters)
            if waiter is not None:
                batch.waiters.append(waiter)
            if future is not None:
                batch.futures.append((future[0], future[1], index))
            if index == 0 or index + 1 >= self._target:
                self._cond.notify()
            return batch, index, slot

    def append(self, event: AuditEvent) -> AuditReceipt:
        """Record ``event``; return once it is durable. Raises :class:`AuditError` if not."""
        prepared = self._prepare(event)
        waiter = threading.Lock()
        waiter.acquire()
        batch, index, slot = self._enqueue(prepared, waiter=waiter)
        _wait(batch, slot, waiter)
        if batch.error is not None:
            raise batch.error
        if index in batch.refused:
            raise batch.refused[index]
        return batch.receipts[index]

    async def append_async(self, event: AuditEvent) -> AuditReceipt:
        """:meth:`append` for asyncio: the loop keeps running while the batch commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditReceipt] = loop.create_future()
        self._enqueue(self._prepare(event), future=(loop, future))
        return await future

    # -- the writer and syncer threads ------------------------------------------------------
    #
    # A two-stage pipeline: the writer thread takes a batch, encodes it and writes it; the
    # syncer thread fdatasyncs what was written, acknowledges it and signs checkpoints. While
    # one batch is being synced, the next one is already being gathered and written, so the
    # disk's flush time overlaps the CPU work instead of adding to it. One fdatasync covers
    # every batch written before it (group commit across batches, too).

    def _run_writer(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending.events and not self._closing:
                        self._cond.wait()
                    self._gather()
                    batch, self._pending = self._pending, _Batch()
                    self._recent.append(len(batch.events))
                    self._target = max(self._recent)
                    closing = self._closing
                if batch.events:
                    self._write_batch(batch)
                if closing:
                    return
        finally:
            with self._sync_cond:
                self._writer_done = True
                self._sync_cond.notify()

    def _gather(self) -> None:
        """Wait briefly for the appenders a batch usually has (called with the lock held).

        Appenders woken by the previous commit re-enqueue a moment later; committing at the
        first arrival would split them into small batches, each paying a full fsync and a
        round of wake-ups. Tasks on an event loop arrive together; blocked threads arrive one
        after another, as the wake-up relay (``_wait``) reaches them, so while threads keep
        arriving the wait goes on, ``COMMIT_DELAY`` at a time, up to ``COMMIT_WAIT_MAX``.
        """
        target = self._target
        batch = self._pending
        if len(batch.events) >= target or self._closing:
            return
        now = time.monotonic()
        deadline, last = now + COMMIT_DELAY, now + COMMIT_WAIT_MAX
        threads = len(batch.waiters)
        while len(batch.events) < target and not self._closing:
            if now >= deadline:
                if len(batch.waiters) == threads or now >= last:  # no thread came: commit
                    return
                threads, deadline = len(batch.waiters), min(now + COMMIT_DELAY, last)
            self._cond.wait(deadline - now)
            now = time.monotonic()

    def _write_batch(self, batch: _Batch) -> None:
        with self._io_lock:
            self._write_batch_locked(batch)

    def _write_batch_locked(self, batch: _Batch) -> None:
        if self._failed is not None:
            self._finish(batch, self._failed)
            return
        stamp = utc_now()
        seq, head = self._seq, self._head
        lines: list[bytes] = []
        start = -1
        try:
            for index, (event, hits) in enumerate(batch.events):
                try:
                    line, digest = encode(
                        event,
                        seq=seq + 1,
                        prev=head,
                        time=stamp,
                        enclave=self.meta.enclave,
                        redacted=hits,
                    )
                except InputError as exc:  # too large, not JSON: refuse the event, not the log
                    batch.refused[index] = exc
                    batch.receipts.append(_REFUSED)
                    continue
                seq, head = seq + 1, digest
                lines.append(line)
                batch.receipts.append(AuditReceipt(seq, head, stamp))
            data = b"".join(lines)
            if self._fd < 0 or self._segment_bytes >= self.settings.segment_size:
                self._rotate(self._seq + 1)
                batch.opened = self.layout.segment(self._seq + 1)
            start = self._segment_bytes
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except Exception as exc:  # any failure to persist fails the log closed
            if start >= 0:
                with contextlib.suppress(OSError):  # leave no partial records behind
                    os.ftruncate(self._fd, start)
            self._fail_closed(batch, f"write failed: {exc}")
            return
        self._segment_bytes = start + len(data)
        self._seq, self._head = seq, head
        batch.fd, batch.start, batch.end = self._fd, start, (seq, head)
        with self._sync_cond:
            self._written.append(batch)
            self._sync_cond.notify()

    def _rotate(self, first_seq: int) -> None:
        old = self._fd
        self._fd = os.open(
            self.layout.segment(first_seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        self._segment_bytes = os.fstat(self._fd).st_size
        fsync_dir(self.layout.root)
        if old >= 0:
            with self._sync_cond:  # the syncer flushes and closes it after its last batch
                self._retired.append(old)
                self._sync_cond.notify()

    def _fail_closed(self, batch: _Batch | None, why: str) -> AuditError:
        error = AuditError(f"audit log {self.layout.root}: {why}")
        with self._cond:
            if self._failed is None:
                self._failed = error
        log.error("audit log %s failed closed: %s", self.layout.root, why)
        if batch is not None:
            self._finish(batch, error)
        return error

    def _run_syncer(self) -> None:
        try:
            while True:
                with self._sync_cond:
                    while (
                        not self._written
                        and not self._retired
                        and not self._writer_done
                        and self._checkpoint_error is None
                    ):
                        wait = self._checkpoint_wait()
                        if wait is not None and wait <= 0:
                            break
                        self._sync_cond.wait(wait)
                    batches, self._written = self._written, []
                    retired, self._retired = self._retired, []
                    done = self._writer_done
                    lost, self._checkpoint_error = self._checkpoint_error, None
                if lost is not None and self._sync_error is None:
                    self._fail_unsynced(batches, lost)
                if batches or retired:
                    self._sync(batches, retired)
                with self._sync_cond:
                    self._syncer_done = done
                    if self._sync_error is None and (
                        self._checkpoint_wait() == 0
                        or (done and self._durable[0] > self._requested_size)
                    ):
                        self._request_checkpoint()  # at the end: one last try, failed or not
                if done:
                    return
        finally:
            with self._sync_cond:
                self._syncer_done = True
            with self._checkpoint_cond:
                self._checkpoint_closing = True
                self._checkpoint_cond.notify()

    def _sync(self, batches: list[_Batch], retired: list[int]) -> None:
        error = self._sync_error
        if error is None:
            fds = list(dict.fromkeys([b.fd for b in batches] + retired))
            try:
                for fd in fds:
                    os.fdatasync(fd)
            except OSError as exc:
                error = self._fail_unsynced(batches, f"fdatasync failed: {exc}")
        for batch in batches:
            if error is None:
                self._durable = batch.end
            self._finish(batch, error)
        for fd in retired:
            os.close(fd)

    def _fail_unsynced(self, batches: list[_Batch], why: str) -> AuditError:
        """Fail closed and cut every written but unsynced batch (best effort), in any segment."""
        with self._io_lock:  # the writer is between batches and sees _failed from now on
            error = self._sync_error = self._fail_closed(None, why)
            with self._sync_cond:
                unsynced = batches + self._written
            for batch in reversed(unsynced):
                with contextlib.suppress(OSError):
                    os.ftruncate(batch.fd, batch.start)
                    if batch.opened is not None:  # no empty segment named by a lost record
                        batch.opened.unlink()
        return error

    def _checkpoint_wait(self) -> float | None:
        """Seconds until a checkpoint is due; 0 when due now, None when nothing is unsigned.

        Counted from the last checkpoint handed to the checkpointer (called with _sync_cond).
        """
        unsigned = self._durable[0] - self._requested_size
        if unsigned <= 0 or self._sync_error is not None:  # a failed log signs nothing more
            return None
        now = time.monotonic()
        if now < self._retry_at:  # the last signing failed: wait for the next checkpoint
            return self._retry_at - now
        if unsigned >= self.settings.checkpoint_records:
            return 0
        return max(0.0, self.settings.checkpoint_interval - (now - self._requested_at))

    def _request_checkpoint(self) -> None:
        """Hand the durable head to the checkpointer (called with _sync_cond held).

        Requests are signed in order; when the signer falls :data:`MAX_QUEUED_CHECKPOINTS`
        behind, the newest one waiting is replaced (a later checkpoint covers more).
        """
        self._requested_size = self._durable[0]
        self._requested_at = time.monotonic()
        with self._checkpoint_cond:
            if len(self._checkpoint_due) >= MAX_QUEUED_CHECKPOINTS:
                self._checkpoint_due[-1] = self._durable
            else:
                self._checkpoint_due.append(self._durable)
            self._checkpoint_cond.notify()

    @property
    def checkpoint_failures(self) -> int:
        """Checkpoints that could not be signed since the last one that was (0: all signed)."""
        return self._sign_failures

    def _finish(self, batch: _Batch, error: AuditError | None) -> None:
        batch.error = error
        batch.done = True
        if batch.waiters:  # the first blocked appender wakes the next, and so on (see _wait)
            batch.waiters[0].release()
        if batch.futures:  # one wake-up per event loop, not one per future
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditReceipt], int]]]
            by_loop = {}
            for loop, future, index in batch.futures:
                by_loop.setdefault(loop, []).append((future, index))
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, items, batch, error)

    # -- the checkpointer thread -------------------------------------------------------------

    def _run_checkpointer(self) -> None:
        while True:
            with self._checkpoint_cond:
                while not self._checkpoint_due and not self._checkpoint_closing:
                    self._checkpoint_cond.wait()
                due = self._checkpoint_due.popleft() if self._checkpoint_due else None
                closing = self._checkpoint_closing
            if due is not None:
                self._checkpoint(*due)
            elif closing:
                return

    def _checkpoint(self, size: int, head: str) -> None:
        """Sign and write a checkpoint of ``size`` records ending in ``head`` (both durable)."""
        try:
            checkpoint = make_checkpoint(self._signer, self.meta.log_id, size, head, utc_now())
        except Exception as exc:  # any signer failure: the records stay durable
            self._signing_failed(size, exc)
            return
        try:
            self._write_checkpoint(checkpoint)
        except Exception as exc:  # a lost checkpoint fails the log closed as well
            why = f"checkpoint failed: {exc}"
            with self._sync_cond:
                syncer_gone = self._syncer_done
                if not syncer_gone:  # the syncer fails the log, between two syncs
                    self._checkpoint_error = why
                    self._sync_cond.notify()
            if syncer_gone:
                self._fail_unsynced([], why)
            return
        with self._sync_cond:
            failures, self._sign_failures = self._sign_failures, 0
        if failures:
            log.warning(
                "audit log %s: checkpoints are signed again (seq %d), after %d failed attempt(s)",
                self.layout.root,
                size,
                failures,
            )

    def _signing_failed(self, size: int, exc: Exception) -> None:
        delay = min(max(self.settings.checkpoint_interval, 0.01), SIGN_RETRY_MAX)
        with self._sync_cond:
            self._sign_failures += 1
            failures = self._sign_failures
            self._requested_size = self._signed_size  # ask again once the retry is due
            self._retry_at = time.monotonic() + delay
            closing = self._syncer_done
            with self._checkpoint_cond:
                self._checkpoint_due.clear()  # queued requests would fail the same way
            self._sync_cond.notify()
        unsigned = size - self._signed_size
        if closing:
            log.warning(
                "audit log %s: the final checkpoint could not be signed (%s); %d record(s) "
                "stay unsigned until the log is next opened",
                self.layout.root,
                exc,
                unsigned,
            )
        elif failures == 1:
            log.warning(
                "audit log %s: a checkpoint could not be signed (%s); the records are durable "
                "and the next checkpoint tries again",
                self.layout.root,
                exc,
            )
        else:
            log.debug("audit log %s: checkpoint still not signed (%s)", self.layout.root, exc)

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        fd = os.open(self.layout.checkpoints, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(checkpoint.to_line())
            while view:  # finish a short write (a full disk) rather than leave half a line
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._signed_size = checkpoint.size

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Records durably in the log."""
        return self._durable[0]

    def close(self) -> None:
        """Commit what is pending, sign a final checkpoint, stop the threads. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        for thread in (self._writer, self._syncer, self._checkpointer):
            if thread.is_alive():
                thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_REFUSED = AuditReceipt(0, "", "")
"""The receipt slot of an event that was refused (see ``_Batch.refused``)."""


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _without_content(event: AuditEvent) -> AuditEvent:
    return replace(event, content=None)


def _settle(
    items: list[tuple[asyncio.Future[AuditReceipt], int]],
    batch: _Batch,
    error: AuditError | None,
) -> None:
    for future, index in items:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        elif index in batch.refused:
            future.set_exception(batch.refused[index])
        else:
            future.set_result(batch.receipts[index])


def _wait(batch: _Batch, slot: int, waiter: threading.Lock) -> None:
    """Block until ``batch`` is done, then wake the thread that blocked on it after this one.

    Threads blocked on a batch are woken in a relay, not all at once. Releasing 32 locks
    together makes 32 threads runnable at one moment: each wakes, finds the GIL held, sleeps
    on it and is woken again, and the releasing thread is preempted by them on the way. In a
    relay each thread is woken once, by the one before it, which then soon blocks again.
    A caller whose wait ends in an exception before the batch is done (a signal handler
    raised) cannot pass the relay on: the threads after it find the batch done when their
    ``RELAY_TIMEOUT`` runs out, and go on.
    """
    try:
        while not waiter.acquire(timeout=RELAY_TIMEOUT) and not batch.done:
            pass
    finally:
        if batch.done and slot + 1 < len(batch.waiters):  # never wake the next one early
            batch.waiters[slot + 1].release()


def _lock(layout: Layout) -> int:
    """An exclusive lock on the log: one writer at a time, across processes."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConflictError(f"{layout.root}: the audit log is open for writing elsewhere") from None
    return fd


def _check_public_key(layout: Layout, signer: Signer, *, allow_change: bool) -> list[str]:
    """Record the signer's public key in ``audit.pub``; the key ids listed before, if it was
    added to a log signed with other keys (empty otherwise)."""
    pem = signer.public_key_pem()
    if not layout.public_key.exists():
        write_file(layout.public_key, pem, mode=0o644)
        return []
    listed = layout.public_key.read_bytes()
    if listed == pem:
        return []
    source = str(layout.public_key)
    known = [fingerprint(key) for key in load_public_keys(listed, source)]
    if fingerprint(load_public_key(pem, "the signer")) in known:
        return []
    if not allow_change:
        raise ConflictError(
            f"{layout.public_key}: the log is signed with another key; "
            "open it with the key that created it"
        )
    write_file(layout.public_key, listed.rstrip(b"\n") + b"\n" + pem, mode=0o644)
    log.warning(
        "audit log %s: its checkpoints are signed with a new key %s from now on "
        "(previously %s); audit.pub lists them all",
        layout.root,
        signer.key_id,
        ", ".join(known),
    )
    return known
