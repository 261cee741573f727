"""The wire format of the shutdown controller's commands to the gateways, both directions.

The controller sends a small JSON command, signed with a key it shares with the gateways (the
enclave's control key in Vault, :mod:`enclave.vault.controlkey`)::

    POST <control endpoint>
    X-Enclave-Signature: v1=<hex HMAC-SHA256(key, "enclave-control/v1\\n" + body)>

    {"identity":"controller","issued":1767225600123456789,"kind":"heartbeat","lease":3.0,
     "reason":"","v":1}

:func:`sign_control` is the controller's side; :func:`signature_of` and :func:`parse_command`
are what the gateway's :class:`~enclave.gateway.control.ControlChannel` checks a command with
(it also decides what a command does to the gateway's state; that stays in the gateway).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from enclave.errors import InputError

SIGNATURE_HEADER = "x-enclave-signature"
CONTROL_PATH = "/control"
"""The gateway's endpoint for commands."""
VERSION = 1
MIN_KEY_BYTES = 32
MAX_BODY = 4096
MAX_REASON = 500
_DOMAIN = b"enclave-control/v1\n"
_PREFIX = "v1="


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
    """Wall-clock nanoseconds when it was signed (the gateway refuses stale and replayed ones)."""
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


def check_key(key: bytes) -> bytes:
    """``key`` if it is long enough to sign with; :class:`InputError` otherwise."""
    if len(key) < MIN_KEY_BYTES:
        raise InputError(f"control key: need at least {MIN_KEY_BYTES} bytes")
    return key


def signature_of(key: bytes, body: bytes) -> str:
    """The signature header value for ``body`` (compare it in constant time)."""
    return _PREFIX + hmac.new(key, _DOMAIN + body, hashlib.sha256).hexdigest()


def sign_control(key: bytes, command: ControlCommand) -> tuple[bytes, str]:
    """``(body, signature header value)`` for ``command`` (the controller's side)."""
    body = command.encode()
    return body, signature_of(check_key(key), body)


def parse_command(body: bytes) -> ControlCommand | None:
    """The command in a (signature-checked) body, or None when it is malformed."""
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
        kind, identity, issued, None if lease is None else float(lease), reason[:MAX_REASON]
    )
