"""The controller's heartbeat: the live side of every gateway's dead-man switch.

A gateway serves only while it holds a lease from the controller (:mod:`enclave.gateway.state`):
each accepted heartbeat extends it to at most ``spec.shutdown.lease`` past the moment the
heartbeat was *signed*. :class:`Heartbeater` signs a fresh heartbeat to every gateway every
``spec.shutdown.heartbeat``; as soon as the controller stops (killed, crashed, cut off), no
gateway's lease is renewed and each denies everything once it runs out.

Each gateway has its own :class:`GatewayLink` (one HTTP connection, short timeouts) and its own
task, ticking at a fixed rate: a gateway that hangs or refuses delays nobody else. Misses are
logged (the first, then every tenth in a row, and the recovery); they never stop the heartbeat.
A link's ``issued`` timestamps strictly increase, as the gateway requires.

:meth:`GatewayLink.send` takes any :class:`~enclave.shutdown.control.ControlKind`: the kill and
resume commands of the controller's state machine go over the same links. A
:class:`Heartbeater` given a ``gate`` beats only while the gate is set: the controller closes it
the moment it starts a kill (so the gateways' leases lapse as well), and opens it again on
resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from enclave.errors import InputError
from enclave.shutdown.control import (
    CONTROL_PATH,
    SIGNATURE_HEADER,
    ControlCommand,
    ControlKind,
    check_key,
    sign_control,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from enclave.spec.model import Shutdown

log = logging.getLogger(__name__)

CONTROLLER_IDENTITY = "controller"
MAX_TIMEOUT = 1.0
"""Longest a heartbeat request may take (seconds), whatever the interval."""
_REPORT_EVERY = 10


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    """How often to beat and what lease each beat grants (seconds)."""

    interval: float
    lease: float
    timeout: float = 0.0
    """Per request; 0 means ``min(interval, 1 s)``."""
    identity: str = CONTROLLER_IDENTITY

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise InputError("heartbeat: the interval must be positive")
        if not self.interval < self.lease:
            raise InputError("heartbeat: the lease must be longer than the interval")
        if self.timeout < 0:
            raise InputError("heartbeat: the timeout must not be negative")

    @property
    def request_timeout(self) -> float:
        return self.timeout or min(self.interval, MAX_TIMEOUT)

    @classmethod
    def from_spec(cls, shutdown: Shutdown) -> HeartbeatSettings:
        return cls(
            interval=shutdown.heartbeat.total_seconds(), lease=shutdown.lease.total_seconds()
        )


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one command to one gateway went."""

    url: str
    kind: ControlKind
    ok: bool
    status: int | None = None
    """The HTTP status, None when no answer came."""
    error: str = ""
    seconds: float = 0.0


def _refusal(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        code = None
    return f"HTTP {response.status_code}" + (f" ({code})" if code else "")


class GatewayLink:
    """Signs and sends commands to one gateway's ``/control``; never raises for the network."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        identity: str = CONTROLLER_IDENTITY,
        timeout: float = MAX_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"gateway {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.url = url.rstrip("/")
        self._key = check_key(key)
        self.identity = identity
        self._now_ns = wall_clock_ns
        self._last_ns = 0
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, trust_env=False, transport=transport
        )

    async def send(
        self, kind: ControlKind, *, lease: float | None = None, reason: str = ""
    ) -> SendResult:
        """Sign and send one command (``issued`` later than any before on this link)."""
        self._last_ns = max(self._now_ns(), self._last_ns + 1)
        command = ControlCommand(kind, self.identity, self._last_ns, lease, reason)
        body, signature = sign_control(self._key, command)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):  # the whole exchange, not each phase
                response = await self._client.post(
                    CONTROL_PATH,
                    content=body,
                    headers={SIGNATURE_HEADER: signature, "content-type": "application/json"},
                )
        except (TimeoutError, httpx.TimeoutException):
            return SendResult(self.url, kind, ok=False, error="timed out", seconds=_since(started))
        except httpx.HTTPError as exc:
            return SendResult(
                self.url, kind, ok=False, error=type(exc).__name__, seconds=_since(started)
            )
        ok = response.status_code == 200
        return SendResult(
            self.url,
            kind,
            ok=ok,
            status=response.status_code,
            error="" if ok else _refusal(response),
            seconds=_since(started),
        )

    async def healthz(self) -> int:
        """The status of the gateway's ``GET /healthz`` (0 when nothing answers in time)."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.get("/healthz")
        except (TimeoutError, httpx.HTTPError):
            return 0
        return response.status_code

    async def aclose(self) -> None:
        await self._client.aclose()


def _since(started: float) -> float:
    return time.perf_counter() - started


@dataclass(slots=True)
class LinkStats:
    """One gateway's heartbeat record."""

    url: str
    sent: int = 0
    missed: int = 0
    consecutive_misses: int = 0
    last_ok: float | None = None
    """``time.monotonic()`` when the last accepted heartbeat was sent."""
    last_error: str = ""


class Heartbeater:
    """Heartbeats every link at ``settings.interval`` until stopped; one task per gateway.

    With a ``gate``, it beats only while the gate is set (the controller clears it when it
    kills the enclave, so the gateways' leases lapse too, and sets it again on resume).
    """

    def __init__(
        self,
        links: Sequence[GatewayLink],
        settings: HeartbeatSettings,
        *,
        gate: asyncio.Event | None = None,
    ) -> None:
        if not links:
            raise InputError("heartbeat: no gateway to send heartbeats to")
        self.links = tuple(links)
        self.settings = settings
        self.gate = gate
        self.stats = {link.url: LinkStats(link.url) for link in self.links}

    async def beat(self, link: GatewayLink) -> SendResult:
        """One heartbeat to one gateway, recorded and (when it was missed) logged."""
        sent = time.monotonic()
        result = await link.send(ControlKind.HEARTBEAT, lease=self.settings.lease)
        stats = self.stats[link.url]
        stats.sent += 1
        if result.ok:
            if stats.consecutive_misses:
                log.info(
                    "heartbeat to %s accepted again after %d miss(es)",
                    link.url,
                    stats.consecutive_misses,
                )
            stats.consecutive_misses = 0
            stats.last_ok = sent
            return result
        stats.missed += 1
        stats.consecutive_misses += 1
        stats.last_error = result.error
        if stats.consecutive_misses == 1 or stats.consecutive_misses % _REPORT_EVERY == 0:
            log.warning(
                "heartbeat to %s missed (%s; %d in a row)",
                link.url,
                result.error,
                stats.consecutive_misses,
            )
        return result

    async def _run_link(self, link: GatewayLink, stop: asyncio.Event) -> None:
        interval = self.settings.interval
        next_beat = time.monotonic()
        while not stop.is_set():
            if self.gate is not None and not self.gate.is_set():
                await _first(self.gate, stop)
                next_beat = time.monotonic()
                continue
            await self.beat(link)
            next_beat += interval
            now = time.monotonic()
            next_beat = max(next_beat, now)  # a beat slower than the interval: go on now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_beat - now)

    def reset(self) -> None:
        """Forget the misses so far (a resume starts the record afresh)."""
        for stats in self.stats.values():
            stats.consecutive_misses = 0
            stats.last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat every gateway until ``stop`` is set."""
        log.info(
            "heartbeating %d gateway(s) every %gs (lease %gs)",
            len(self.links),
            self.settings.interval,
            self.settings.lease,
        )
        async with asyncio.TaskGroup() as tasks:
            for link in self.links:
                tasks.create_task(self._run_link(link, stop), name=f"heartbeat {link.url}")


async def _first(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
