"""Audit records and their canonical encoding.

A caller describes what happened with an :class:`AuditEvent`; the log turns it into an
:class:`AuditRecord` by adding the sequence number, time, enclave and the hash link. On disk a
record is one line of JSON in a fixed, canonical form (schema v1)::

    {"v":1,"seq":7,"prev":"<64 hex>","time":"...Z","enclave":"demo",...,"hash":"<64 hex>"}

* top-level keys appear in the order of :data:`FIELD_ORDER`; absent optional fields are omitted;
  nested objects have sorted keys; separators are compact; output is ASCII (``\\uXXXX``);
* ``hash`` is the sha256 of the line's *body*: the line up to (not including) ``,"hash":``,
  closed with ``}``. ``prev`` is the previous record's ``hash`` (for the first record, the
  log's genesis hash, derived from its id). The hash therefore covers the exact bytes stored,
  and a verifier never needs to re-encode a record.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from enclave.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

SCHEMA_VERSION = 1
HASH_SUFFIX_LEN = len(',"hash":"') + 64 + len('"}\n')
"""Bytes after the body in a stored line: ``,"hash":"<64 hex>"}`` and the newline."""
LINE_PREFIX = b'{"v":1,"seq":'
MAX_RECORD_BYTES = 64 * 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ACTOR = re.compile(r"^[a-z0-9][a-z0-9._:@-]{0,127}$")
_ACTION = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*){0,4}$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Decision(StrEnum):
    """The outcome a record states."""

    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    INFO = "info"


class ActorKind(StrEnum):
    PRINCIPAL = "principal"
    COMPONENT = "component"


def genesis_hash(log_id: str) -> str:
    """The ``prev`` of a log's first record: binds the chain to that log."""
    return hashlib.sha256(f"enclave-audit-genesis/v1:{log_id}".encode()).hexdigest()


def _check(pattern: re.Pattern[str], value: str | None, what: str) -> None:
    # fullmatch: ``$`` alone also matches before a trailing newline, which would then be
    # written raw into the line and split the record in two
    if value is not None and not pattern.fullmatch(value):
        raise InputError(f"audit event: invalid {what} {value[:80]!r}")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, as a caller states it. The log adds sequence, time, enclave and hashes.

    ``action`` is a dotted name (``request.chat``, ``shutdown.kill``, ``approval.grant``,
    ``compliance.result``, ``incident.open``...). Prompts and outputs are recorded as sha256
    digests; ``content`` carries raw text only when the spec opts in (``audit.storeContent``).
    """

    actor: str
    action: str
    decision: Decision = Decision.INFO
    reason: str = ""
    actor_kind: ActorKind = ActorKind.PRINCIPAL
    purpose: str | None = None
    model: str | None = None
    request_id: str | None = None
    prompt_sha256: str | None = None
    output_sha256: str | None = None
    latency_ms: float | None = None
    content: Mapping[str, str] | None = None
    details: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(_ACTOR, self.actor, "actor")
        _check(_ACTION, self.action, "action")
        _check(_ID, self.purpose, "purpose")
        _check(_ID, self.model, "model")
        _check(_ID, self.request_id, "request id")
        _check(_HEX64, self.prompt_sha256, "prompt sha256")
        _check(_HEX64, self.output_sha256, "output sha256")
        if self.latency_ms is not None and not 0 <= self.latency_ms < 1e9:
            raise InputError(f"audit event: invalid latency {self.latency_ms!r}")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored record: an event with its place in the chain."""

    seq: int
    prev: str
    time: str
    enclave: str
    actor: str
    action: str
    decision: Decision
    hash: str
    reason: str = ""
    actor_kind: ActorKind = ActorKind.PRINCIPAL
    purpose: str | None = None
    model: str | None = None
    request_id: str | None = None
    prompt_sha256: str | None = None
    output_sha256: str | None = None
    latency_ms: float | None = None
    content: Mapping[str, str] | None = None
    details: Mapping[str, Any] | None = None
    redacted: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The record as stored (schema order, absent fields omitted, ``hash`` last)."""
        data: dict[str, Any] = {"v": SCHEMA_VERSION}
        for name in FIELD_ORDER[1:]:
            value = getattr(self, name)
            if value is None or (name in _OMIT_EMPTY and not value):
                continue
            data[name] = list(value) if name == "redacted" else value
        data["hash"] = self.hash
        return data


FIELD_ORDER = (
    "v",
    "seq",
    "prev",
    "time",
    "enclave",
    "actor",
    "actor_kind",
    "action",
    "decision",
    "reason",
    "purpose",
    "model",
    "request_id",
    "prompt_sha256",
    "output_sha256",
    "latency_ms",
    "content",
    "details",
    "redacted",
)
_OMIT_EMPTY = frozenset({"reason", "content", "details", "redacted"})


def _dump(value: Any) -> str:
    try:
        return json.dumps(
            value, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"audit event: value is not plain JSON: {exc}") from None


def check_enclave_name(name: str) -> str:
    _check(_ACTOR, name, "enclave name")
    return name


def encode(
    event: AuditEvent,
    *,
    seq: int,
    prev: str,
    time: str,
    enclave: str,
    redacted: tuple[str, ...] = (),
) -> tuple[bytes, str]:
    """The canonical line (with newline) for ``event`` at ``seq``, and its hash."""
    # actor, action, enclave and the ids are validated to plain ASCII without quotes or
    # backslashes, so they are written as they are; free text goes through json.dumps.
    parts = [
        f'{{"v":{SCHEMA_VERSION},"seq":{seq},"prev":"{prev}","time":"{time}"'
        f',"enclave":"{enclave}","actor":"{event.actor}","actor_kind":"{event.actor_kind.value}"'
        f',"action":"{event.action}","decision":"{event.decision.value}"'
    ]
    if event.reason:
        parts.append(f',"reason":{_dump(event.reason)}')
    for name in ("purpose", "model", "request_id", "prompt_sha256", "output_sha256"):
        value = getattr(event, name)
        if value is not None:
            parts.append(f',"{name}":"{value}"')
    if event.latency_ms is not None:
        parts.append(f',"latency_ms":{round(float(event.latency_ms), 3)!r}')
    if event.content:
        parts.append(f',"content":{_dump(dict(event.content))}')
    if event.details:
        parts.append(f',"details":{_dump(dict(event.details))}')
    if redacted:
        parts.append(f',"redacted":{_dump(list(redacted))}')
    body = "".join(parts).encode("ascii") + b"}"
    if len(body) > MAX_RECORD_BYTES:
        raise InputError(f"audit event: record is larger than {MAX_RECORD_BYTES} bytes")
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + f',"hash":"{digest}"}}\n'.encode("ascii"), digest


def split_line(line: bytes) -> tuple[bytes, str] | None:
    """``(body, stored hash)`` of a stored line, or ``None`` when it is not in the v1 form."""
    if (
        len(line) < HASH_SUFFIX_LEN + len(LINE_PREFIX)
        or not line.startswith(LINE_PREFIX)
        or line[-HASH_SUFFIX_LEN:-67] != b',"hash":"'
        or not line.endswith(b'"}\n')
    ):
        return None
    return line[:-HASH_SUFFIX_LEN] + b"}", line[-67:-3].decode("ascii", "replace")


def decode(line: bytes) -> AuditRecord:
    """Parse a stored line into a record (no integrity check: see ``verify``)."""
    data = json.loads(line)
    return AuditRecord(
        seq=data["seq"],
        prev=data["prev"],
        time=data["time"],
        enclave=data["enclave"],
        actor=data["actor"],
        action=data["action"],
        decision=Decision(data["decision"]),
        hash=data["hash"],
        reason=data.get("reason", ""),
        actor_kind=ActorKind(data.get("actor_kind", "principal")),
        purpose=data.get("purpose"),
        model=data.get("model"),
        request_id=data.get("request_id"),
        prompt_sha256=data.get("prompt_sha256"),
        output_sha256=data.get("output_sha256"),
        latency_ms=data.get("latency_ms"),
        content=data.get("content"),
        details=data.get("details"),
        redacted=tuple(data.get("redacted", ())),
    )


def sha256_text(text: str) -> str:
    """The digest recorded for a prompt or an output."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
