"""Waivers: a failed check accepted for a while, for a reason, by someone -- signed.

They live in ``<state>/enclaves/<name>/waivers.yaml`` (the enclave's private state)::

    apiVersion: enclave.dev/v1alpha1
    kind: Waivers
    waivers:
      - check: DKR-04                      # the check id
        target: docker-daemon              # optional: one target only (as reports name it)
        reason: userns-remap breaks the vendor's driver; tracked in TICKET-123
        approver: carol
        expires: "2026-12-31T00:00:00Z"    # ISO 8601 with a zone
        signature: v1=3f9a...              # written by `enclave check NAME --sign-waivers`

A waiver counts only while it is signed and unexpired. The signature is an HMAC-SHA256 with the
enclave's control key (in Vault; only the gateway, the shutdown controller and the Vault admin
can read it) over ``enclave-waiver/v1`` and the waiver's canonical JSON, enclave name
included: editing any field, or copying a waiver to another enclave, voids it. An expired,
unsigned or badly signed waiver is ignored, and every report lists it with the reason; a
waived check is reported as ``waived``, never hidden.

What the signature proves is that someone holding Vault admin (or the control key) accepted
the waiver as written; ``approver`` is what they wrote. Issuing waivers is not yet recorded in
an audit log (the gateway's log has one writer, the gateway).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enclave.compliance.model import CHECK_ID, Waiver
from enclave.errors import InputError, SpecError
from enclave.spec.load import _problems_from
from enclave.spec.yamlsrc import parse_yaml

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["WaiverEntry", "judge", "load_waivers", "sign_file", "signature", "waivers_file"]

_DOMAIN = b"enclave-waiver/v1\n"
_PREFIX = "v1="


class WaiverEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    check: Annotated[str, Field(pattern=CHECK_ID)]
    target: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    approver: Annotated[str, Field(min_length=1, max_length=200)]
    expires: Annotated[str, Field(min_length=1, max_length=64)]
    signature: Annotated[str, Field(max_length=200)] = ""

    def message(self, enclave: str) -> bytes:
        body = {
            "enclave": enclave,
            "check": self.check,
            "target": self.target,
            "reason": self.reason,
            "approver": self.approver,
            "expires": self.expires,
        }
        return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class WaiversFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion", pattern="^enclave.dev/v1alpha1$")
    kind: Annotated[str, Field(pattern="^Waivers$")]
    waivers: list[WaiverEntry] = Field(default_factory=list, max_length=1000)


def waivers_file(state_dir: Path, name: str) -> Path:
    return state_dir / "enclaves" / name / "waivers.yaml"


def load_waivers(path: Path) -> list[WaiverEntry]:
    """The waivers in ``path`` (none when it does not exist); located errors when malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    doc = parse_yaml(raw, str(path))
    try:
        return list(WaiversFile.model_validate(doc.data).waivers)
    except ValidationError as exc:
        raise SpecError(_problems_from(exc, doc, WaiversFile)) from None


def signature(entry: WaiverEntry, key: bytes, enclave: str) -> str:
    return _PREFIX + hmac.new(key, entry.message(enclave), hashlib.sha256).hexdigest()


def _expiry(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def judge(
    entries: Iterable[WaiverEntry],
    *,
    enclave: str,
    key: bytes | None,
    key_problem: str,
    now: datetime,
    known: Iterable[str],
) -> list[Waiver]:
    """Each waiver with whether it counts, and why not when it does not."""
    ids = set(known)
    found = []
    for entry in entries:
        problem = ""
        when = _expiry(entry.expires)
        if entry.check not in ids:
            problem = f"no check {entry.check} in the baseline"
        elif when is None:
            problem = f"expires {entry.expires!r} is not an ISO 8601 time with a zone"
        elif when <= now:
            problem = f"expired at {entry.expires}"
        elif not entry.signature:
            problem = "unsigned"
        elif key is None:
            problem = f"signature not verifiable: {key_problem}"
        elif not hmac.compare_digest(entry.signature, signature(entry, key, enclave)):
            problem = "bad signature (edited, or signed for another enclave or key)"
        found.append(
            Waiver(
                check=entry.check,
                target=entry.target,
                reason=entry.reason,
                approver=entry.approver,
                expires=entry.expires,
                valid=not problem,
                problem=problem,
            )
        )
    return found


def sign_file(path: Path, key: bytes, enclave: str) -> list[str]:
    """Sign every unsigned waiver in ``path`` (rewritten owner-only); the checks signed."""
    entries = load_waivers(path)
    signed: list[str] = []
    out: list[dict[str, Any]] = []
    for entry in entries:
        data = entry.model_dump(exclude_none=True)
        if not entry.signature:
            data["signature"] = signature(entry, key, enclave)
            signed.append(entry.check)
        out.append(data)
    if signed:
        text = yaml.safe_dump(
            {"apiVersion": "enclave.dev/v1alpha1", "kind": "Waivers", "waivers": out},
            sort_keys=False,
            allow_unicode=True,
        )
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(path)
    return signed
