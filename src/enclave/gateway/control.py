"""Authenticated state updates from the shutdown controller: heartbeat, kill, resume.

Only the controller's identity may change the gateway's :class:`~enclave.gateway.state.
ShutdownState`. It sends a small JSON command signed with the enclave's control key (the wire
format, and the controller's signing side, live in :mod:`enclave.shutdown.control`).

:class:`ControlChannel` checks, in order: the signature (constant-time), the identity, and
freshness: ``issued`` (wall-clock nanoseconds) must be later than every command accepted before
and within ``max_skew`` of the gateway's clock, so that a captured heartbeat cannot be replayed
to keep a gateway alive after its controller died. A heartbeat's lease counts from when it was
issued, not when it arrived. A validly signed ``kill`` is obeyed even when stale or replayed:
stopping is always the safe direction.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

from enclave.gateway.denial import Denial, DenialCode
from enclave.shutdown.control import (
    MAX_BODY,
    ControlCommand,
    ControlKind,
    check_key,
    parse_command,
    signature_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.gateway.state import ShutdownState

log = logging.getLogger(__name__)


class ControlChannel:
    """Verifies the controller's commands and applies them to the shutdown state."""

    def __init__(
        self,
        state: ShutdownState,
        key: bytes,
        *,
        identity: str = "controller",
        max_skew: float = 2.0,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._state = state
        self._key = check_key(key)
        self.identity = identity
        self._max_skew_ns = int(max_skew * 1e9)
        self._now_ns = wall_clock_ns
        self._last_ns = 0

    def handle(self, body: bytes, signature: str | None) -> ControlCommand | Denial:
        """Verify one command and apply it; the command, or why it was refused."""
        if len(body) > MAX_BODY:
            return Denial(DenialCode.REQUEST_TOO_LARGE, "control message too large")
        expected = signature_of(self._key, body)
        if not signature or not hmac.compare_digest(signature.strip(), expected):
            return Denial(DenialCode.INVALID_API_KEY, "control message signature is invalid")
        command = parse_command(body)
        if command is None:
            return Denial(DenialCode.INVALID_REQUEST, "malformed control message")
        if command.identity != self.identity:
            return Denial(
                DenialCode.FORBIDDEN, "only the shutdown controller may change the gateway state"
            )
        now = self._now_ns()
        fresh = command.issued_ns > self._last_ns and abs(now - command.issued_ns) <= (
            self._max_skew_ns
        )
        if not fresh and command.kind is not ControlKind.KILL:
            return Denial(DenialCode.INVALID_API_KEY, "stale or replayed control message")
        if fresh:
            self._last_ns = command.issued_ns
        self._apply(command, age=max(0.0, (now - command.issued_ns) / 1e9))
        return command

    def _apply(self, command: ControlCommand, *, age: float) -> None:
        if command.kind is ControlKind.KILL:
            self._state.kill(command.reason or "by the shutdown controller")
        elif command.kind is ControlKind.RESUME:
            self._state.resume()
        else:
            lease = self._state.max_lease if command.lease is None else command.lease
            remaining = min(lease, self._state.max_lease) - age
            if remaining > 0:
                self._state.heartbeat(remaining)
            else:
                log.warning("controller heartbeat arrived after its lease ended; ignored")
