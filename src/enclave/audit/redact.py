"""Keep secrets out of the audit log.

Records are read by assessors and exported off the host, so a value that looks like a credential
is replaced by ``[REDACTED:<kind>]`` before the record is written, and the record lists the
fields that were redacted. Identifiers (actor, action, ids) and mapping keys are written as
they are, so one that looks like a credential is refused with an
:class:`~enclave.errors.InputError` instead (their patterns admit ``s.<token>`` or ``AKIA...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from enclave.errors import InputError

if TYPE_CHECKING:
    from enclave.audit.record import AuditEvent

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "private-key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
            re.DOTALL,
        ),
    ),
    ("vault-token", re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}")),
    ("enclave-token", re.compile(r"\benc_[A-Za-z0-9_-]{20,}")),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}")),
)
_QUICK = re.compile(
    r"PRIVATE KEY|\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20}|\benc_|AKIA|ASIA|\bgh[pousr]_|eyJ"
    r"|(?i:bearer)"
)


_IDENTIFIERS = ("actor", "action", "purpose", "model", "request_id")


def _may_hold_secret(identifiers: str) -> bool:
    """A cheap pre-check: identifiers admit no spaces or underscores, so only the vault-token,
    aws-access-key and jwt patterns can match one, and each needs one of these substrings."""
    return (
        "s." in identifiers
        or "b." in identifiers
        or "r." in identifiers
        or "AKIA" in identifiers
        or "ASIA" in identifiers
        or "eyJ" in identifiers
    )


def redact_text(text: str) -> tuple[str, bool]:
    """``text`` with every secret-looking value replaced, and whether anything was."""
    if not _QUICK.search(text):
        return text, False
    changed = False
    for kind, pattern in PATTERNS:
        text, count = pattern.subn(f"[REDACTED:{kind}]", text)
        changed = changed or count > 0
    return text, changed


def _walk(value: Any, path: str, hits: list[str]) -> Any:
    if isinstance(value, str):
        cleaned, changed = redact_text(value)
        if changed:
            hits.append(path)
        return cleaned
    if isinstance(value, Mapping):
        for key in value:
            if redact_text(str(key))[1]:
                raise InputError(f"audit event: a key in {path} looks like a secret")
        return {str(k): _walk(v, f"{path}.{k}", hits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, f"{path}[{i}]", hits) for i, v in enumerate(value)]
    return value


def redact(event: AuditEvent) -> tuple[AuditEvent, tuple[str, ...]]:
    """The event with secret-looking values redacted, and the redacted field paths.

    Raises :class:`InputError` when an identifier or a mapping key looks like a secret.
    """
    if _may_hold_secret(
        f"{event.actor} {event.action} {event.purpose} {event.model} {event.request_id}"
    ):
        for name in _IDENTIFIERS:
            value = getattr(event, name)
            if value is not None and redact_text(value)[1]:
                raise InputError(f"audit event: the {name.replace('_', ' ')} looks like a secret")
    hits: list[str] = []
    reason = _walk(event.reason, "reason", hits)
    content = _walk(event.content, "content", hits) if event.content else event.content
    details = _walk(event.details, "details", hits) if event.details else event.details
    if not hits:
        return event, ()
    return replace(event, reason=reason, content=content, details=details), tuple(hits)
