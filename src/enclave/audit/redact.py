"""Keep secrets out of the audit log.

Records are read by assessors and exported off the host, so a value that looks like a credential
is replaced by ``[REDACTED:<kind>]`` before the record is written, and the record lists the
fields that were redacted. Identifiers (actor, action, ids, digests) are validated by
:class:`~enclave.audit.record.AuditEvent` and cannot carry one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

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
        return {str(k): _walk(v, f"{path}.{k}", hits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, f"{path}[{i}]", hits) for i, v in enumerate(value)]
    return value


def redact(event: AuditEvent) -> tuple[AuditEvent, tuple[str, ...]]:
    """The event with secret-looking values redacted, and the redacted field paths."""
    hits: list[str] = []
    reason = _walk(event.reason, "reason", hits)
    content = _walk(event.content, "content", hits) if event.content else event.content
    details = _walk(event.details, "details", hits) if event.details else event.details
    if not hits:
        return event, ()
    return replace(event, reason=reason, content=content, details=details), tuple(hits)
