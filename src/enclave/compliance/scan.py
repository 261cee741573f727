"""Finding secrets in configuration text, without ever keeping them.

The container collector runs every environment value, argument, label and image-history line
through :class:`SecretScanner` and keeps only *what kind* of secret was found *where* (an
environment variable's name, an argument's position), never the value: facts, evidence and
reports stay free of secrets even when a container's configuration is not.

It knows the shapes of the secrets enclave handles (Vault/OpenBao tokens, enclave API tokens,
private keys) and a few common ones (JWTs, cloud and forge access keys), a variable name that
says "secret" holding a value, and -- exactly -- the secrets it is told about (the embedded
Vault's unseal keys, root and admin tokens).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SecretScanner"]

_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("vault-token", re.compile(r"(?<![A-Za-z0-9])(?:hv[sbr]|s|b|r)\.[A-Za-z0-9_-]{24,}")),
    ("enclave-api-token", re.compile(r"\benc_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43}\b")),
    ("private-key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("forge-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|glpat-[A-Za-z0-9_-]{20})\b")),
    ("wrapping-token", re.compile(r"wrapping_token|secret_id\b")),
)
_SECRET_NAME = re.compile(
    r"(?i)(password|passwd|secret|token|api_?key|private_?key|credential|unseal|role_?id)"
)
_HARMLESS = re.compile(r"(?i)^(|true|false|yes|no|on|off|0|1|none|null|/[\w./-]*|\d+)$")


class SecretScanner:
    """Says whether a text holds a secret, and of what kind; keeps no value it is given."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known = tuple(sorted({k for k in known if len(k) >= 16}, key=len, reverse=True))

    def kind(self, text: str, *, name: str = "") -> str | None:
        """The kind of secret in ``text`` (``name`` is a variable or label name), or None."""
        for secret in self._known:
            if secret in text:
                return "known-secret"
        for kind, shape in _SHAPES:
            if shape.search(text):
                return kind
        if name and _SECRET_NAME.search(name) and not _HARMLESS.match(text.strip()):
            return "secret-named-variable"
        return None
