"""The gateway's shutdown state: serving or killed, and the controller's heartbeat lease.

The gateway serves only while it holds a lease from the shutdown controller: each heartbeat
extends the lease by ``spec.shutdown.lease`` (never more), and a gateway that stops hearing
from the controller denies everything once the lease runs out (a dead-man switch). A gateway
starts *without* a lease: it serves from the controller's first heartbeat on. ``kill`` denies
everything until ``resume``, whatever the lease says; the controller decides when to resume
(it counts the approvals), the gateway obeys.

Streams in flight are registered with :meth:`ShutdownState.open_stream`; a kill, or the lease
running out, cancels every one of them at once: each :class:`StreamGuard`'s event is set (a
streaming loop checks :meth:`StreamGuard.check` between chunks or waits on the event) and the
task it was opened with, if any, is cancelled. The lease is noticed on the next
:meth:`ShutdownState.check` or by :meth:`ShutdownState.watch`, a background task that wakes
exactly when the lease would run out.

This object is not thread-safe: use it from the event loop's thread. The clock is injectable
(monotonic seconds) so that tests need not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Self

from enclave.errors import InputError
from enclave.gateway.denial import Denial, DenialCode

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from enclave.spec.model import Shutdown

log = logging.getLogger(__name__)

LEASE_LAPSED = "no heartbeat from the shutdown controller: the lease lapsed (dead-man switch)"
NEVER_LEASED = "waiting for the shutdown controller's first heartbeat"


class Mode(StrEnum):
    SERVING = "serving"
    KILLED = "killed"


class StreamGuard:
    """One in-flight stream's cancellation handle; a context manager that unregisters it."""

    __slots__ = ("_event", "_state", "reason", "task")

    def __init__(self, state: ShutdownState, task: asyncio.Task[object] | None) -> None:
        self._state = state
        self._event = asyncio.Event()
        self.task = task
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def check(self) -> Denial | None:
        """``503 enclave_shutdown`` once the stream was cut; None while it may go on."""
        if self.reason is None:
            return None
        return Denial(DenialCode.ENCLAVE_SHUTDOWN, self.reason)

    async def wait(self) -> str:
        """Wait until the stream is cut; returns why."""
        await self._event.wait()
        return self.reason or ""

    def cancel(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._event.set()
        if self.task is not None and not self.task.done():
            self.task.cancel(reason)
        self._state.close_stream(self)

    def close(self) -> None:
        """The stream ended on its own: stop tracking it."""
        self._state.close_stream(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ShutdownState:
    """Whether the gateway may serve, and the streams to cut when it may not."""

    def __init__(
        self, lease: float | timedelta, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        seconds = lease.total_seconds() if isinstance(lease, timedelta) else float(lease)
        if not seconds > 0:
            raise InputError("shutdown state: the lease must be positive")
        self.max_lease = seconds
        self._clock = clock
        self._mode = Mode.SERVING
        self._kill_reason = ""
        self._expires = float("-inf")
        self._leased = False
        self._lapsed_logged = False
        self._streams: dict[int, StreamGuard] = {}
        self._changed: asyncio.Event | None = None

    @classmethod
    def from_spec(
        cls, shutdown: Shutdown, *, clock: Callable[[], float] = time.monotonic
    ) -> ShutdownState:
        return cls(shutdown.lease, clock=clock)

    # -- what the controller tells the gateway ----------------------------------------------

    def heartbeat(self, lease_seconds: float | None = None) -> None:
        """Extend the lease to now + ``lease_seconds`` (at most the spec's lease)."""
        lease = self.max_lease if lease_seconds is None else min(lease_seconds, self.max_lease)
        if not lease > 0:
            raise InputError("heartbeat: the lease must be positive")
        if not self._leased or self._lapsed_logged:
            log.info("shutdown controller heartbeat: lease held (%.3gs)", lease)
        self._leased = True
        self._lapsed_logged = False
        self._expires = max(self._expires, self._clock() + lease)
        self._notify()

    def kill(self, reason: str) -> int:
        """Deny everything from now on and cut every stream; returns how many were cut."""
        why = f"enclave killed: {reason}" if reason else "enclave killed"
        self._mode = Mode.KILLED
        self._kill_reason = why
        cut = self._cancel_streams(why)
        log.warning("gateway killed (%s); %d stream(s) cut", reason or "no reason given", cut)
        self._notify()
        return cut

    def resume(self) -> None:
        """Serve again (still only while the lease holds)."""
        if self._mode is Mode.KILLED:
            log.warning("gateway resumed by the shutdown controller")
        self._mode = Mode.SERVING
        self._kill_reason = ""
        self._notify()

    # -- what requests ask ------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def lease_remaining(self) -> float:
        """Seconds of lease left (0 when lapsed or never held)."""
        return max(0.0, self._expires - self._clock())

    @property
    def streams(self) -> int:
        return len(self._streams)

    def check(self) -> Denial | None:
        """``503 enclave_shutdown`` while killed or without a lease; None while serving."""
        if self._mode is Mode.KILLED:
            return Denial(DenialCode.ENCLAVE_SHUTDOWN, self._kill_reason)
        if self._clock() < self._expires:
            return None
        self._lapse()
        return Denial(DenialCode.ENCLAVE_SHUTDOWN, LEASE_LAPSED if self._leased else NEVER_LEASED)

    def _lapse(self) -> None:
        if self._streams:
            self._cancel_streams(LEASE_LAPSED)
        if self._leased and not self._lapsed_logged:
            self._lapsed_logged = True
            log.warning("shutdown controller lease lapsed: denying every request")

    # -- streams ----------------------------------------------------------------------------

    def open_stream(self, *, task: asyncio.Task[object] | None = None) -> StreamGuard:
        """Register a stream; cancel ``task`` too when the gateway stops serving.

        Call :meth:`check` first; a stream opened while not serving is returned already cut
        (and ``task`` cancelled).
        """
        guard = StreamGuard(self, task)
        denied = self.check()
        if denied is not None:
            guard.cancel(denied.message)
            return guard
        self._streams[id(guard)] = guard
        return guard

    def close_stream(self, guard: StreamGuard) -> None:
        self._streams.pop(id(guard), None)

    def _cancel_streams(self, reason: str) -> int:
        guards = list(self._streams.values())
        self._streams.clear()
        for guard in guards:
            guard.cancel(reason)
        return len(guards)

    # -- the lease watchdog -----------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def watch(self) -> None:
        """Cut every stream the moment the lease runs out, until cancelled (a background task).

        Sleeps until the lease's end by the injected clock, woken early by heartbeats and
        state changes.
        """
        changed = self._changed = asyncio.Event()
        try:
            while True:
                changed.clear()
                remaining = self._expires - self._clock()
                if remaining <= 0 or self._mode is Mode.KILLED:
                    self.check()
                    await changed.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._changed = None
