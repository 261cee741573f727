"""Authenticated state updates from the shutdown controller: heartbeat, kill, resume.

Only the controller's identity may change the gateway's :class:`~enclave.gateway.state.
ShutdownState`. It sends a small JSON command, signed with a key it shares with the gateways::

    POST <control endpoint>
    X-Enclave-Signature: v1=<hex HMAC-SHA256(key, "enclave-control/v1\\n" + body)>

    {"identity":"controller","issued":1767225600123456789,"kind":"heartbeat","lease":3.0,
     "reason":"","v":1}

:class:`ControlChannel` checks, in order: the signature (constant-time), the identity, and
freshness: ``issued`` (wall-clock nanoseconds) must be later than every command accepted before
and within ``max_skew`` of the gateway's clock, so that a captured heartbeat cannot be replayed
to keep a gateway alive after its controller died. A heartbeat's lease counts from when it was
issued, not when it arrived. A validly signed ``kill`` is obeyed even when stale or replayed:
stopping is always the safe direction.

:func:`sign_control` is the controller's side of the same format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from enclave.errors import InputError
from enclave.gateway.denial import Denial, DenialCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.gateway.state import ShutdownState

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-enclave-signature"
VERSION = 1
MIN_KEY_BYTES = 32
MAX_BODY = 4096
_DOMAIN = b"enclave-control/v1\n"
_PREFIX = "v1="
_MAX_REASON = 500


class ControlKind(StrEnum):
    HEARTBEAT = "heartbeat"
    KILL = "kill"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One command from the controller."""

    kind: ControlKind
    identity: str
    issued_ns: int
    lease: float | None = None
    """Heartbeats: the lease it grants in seconds (the gateway caps it at the spec's lease)."""
    reason: str = ""

    def encode(self) -> bytes:
        """The canonical body (sorted keys, compact)."""
        data: dict[str, Any] = {
            "v": VERSION,
            "kind": self.kind.value,
            "identity": self.identity,
            "issued": self.issued_ns,
            "reason": self.reason,
        }
        if self.lease is not None:
            data["lease"] = self.lease
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, _DOMAIN + body, hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise InputError(f"control key: need at least {MIN_KEY_BYTES} bytes")
    return key


def sign_control(key: bytes, command: ControlCommand) -> tuple[bytes, str]:
    """``(body, signature header value)`` for ``command`` (the controller's side)."""
    body = command.encode()
    return body, _PREFIX + _mac(_check_key(key), body)


def _parse(body: bytes) -> ControlCommand | None:
    try:
        data = json.loads(body)
        kind = ControlKind(data["kind"])
        identity = data["identity"]
        issued = data["issued"]
        lease = data.get("lease")
        reason = data.get("reason", "")
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("v") != VERSION
        or not isinstance(identity, str)
        or not isinstance(issued, int)
        or isinstance(issued, bool)
        or not isinstance(reason, str)
        or not (lease is None or (isinstance(lease, int | float) and not isinstance(lease, bool)))
    ):
        return None
    return ControlCommand(
        kind, identity, issued, None if lease is None else float(lease), reason[:_MAX_REASON]
    )


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
        self._key = _check_key(key)
        self.identity = identity
        self._max_skew_ns = int(max_skew * 1e9)
        self._now_ns = wall_clock_ns
        self._last_ns = 0

    def handle(self, body: bytes, signature: str | None) -> ControlCommand | Denial:
        """Verify one command and apply it; the command, or why it was refused."""
        if len(body) > MAX_BODY:
            return Denial(DenialCode.REQUEST_TOO_LARGE, "control message too large")
        expected = _PREFIX + _mac(self._key, body)
        if not signature or not hmac.compare_digest(signature.strip(), expected):
            return Denial(DenialCode.INVALID_API_KEY, "control message signature is invalid")
        command = _parse(body)
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
