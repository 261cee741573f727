"""API tokens for people: issued once, stored only as a keyed hash, bound to spec roles.

A token reads ``enc_<id>_<secret>``: ``id`` is 12 letters and digits (it names the record and
is safe to show, log and pass on a command line), ``secret`` is 32 random bytes in unpadded
url-safe base64 (43 characters). The whole token matches the audit redactor's
``enc_[A-Za-z0-9_-]{20,}``, so one pasted into a prompt or a log line is redacted.

Vault holds, per token, ``<kv>/data/api-tokens/<id>`` = ``{principal, roles, created, expires,
hash}`` where ``hash`` is HMAC-SHA256(the enclave's API-token key, secret) in hex. The key lives
at ``<kv>/data/api-token-key`` (field ``key``, base64 of 32 random bytes); provisioning creates
it, and :func:`issue` creates it too if it is missing (check-and-set, never overwriting).
Neither the token nor its secret is ever sent to Vault, logged or stored; it is returned once.

The gateway loads the records and the key (:func:`load_records`, :func:`read_key`) and checks a
presented token with :func:`verify_token`, a pure, constant-time function.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enclave.errors import (
    InputError,
    NotFoundError,
    VaultError,
    VaultNotFoundError,
)
from enclave.vault.client import translate
from enclave.vault.names import API_TOKEN_KEY, API_TOKENS, EnclavePaths

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

PREFIX = "enc_"
ID_LENGTH = 12
SECRET_BYTES = 32
SECRET_LENGTH = 43  # unpadded url-safe base64 of 32 bytes
KEY_BYTES = 32
KEY_FIELD = "key"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID = re.compile(rf"[A-Za-z0-9]{{{ID_LENGTH}}}")
_TOKEN = re.compile(
    rf"{PREFIX}(?P<id>[A-Za-z0-9]{{{ID_LENGTH}}})_(?P<secret>[A-Za-z0-9_-]{{{SECRET_LENGTH}}})"
)
_ISSUE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: never its secret or hash."""

    id: str
    principal: str
    roles: tuple[str, ...]
    created: datetime
    expires: datetime | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal": self.principal,
            "roles": list(self.roles),
            "created": _format_time(self.created),
            "expires": _format_time(self.expires) if self.expires else None,
        }


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as Vault stores it (the id comes from the record's path)."""

    id: str
    principal: str
    roles: tuple[str, ...]
    created: datetime
    expires: datetime | None
    hash: str = field(repr=False)

    @property
    def info(self) -> TokenInfo:
        return TokenInfo(self.id, self.principal, self.roles, self.created, self.expires)

    def to_data(self) -> dict[str, Any]:
        """The KV document (no id: that is the path)."""
        return {
            "principal": self.principal,
            "roles": list(self.roles),
            "created": _format_time(self.created),
            "expires": _format_time(self.expires) if self.expires else None,
            "hash": self.hash,
        }

    @classmethod
    def from_data(cls, token_id: str, data: Mapping[str, Any]) -> TokenRecord:
        """Parse a KV document; :class:`VaultError` when it is not a token record."""
        try:
            roles = data["roles"]
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise TypeError("roles")  # noqa: TRY301 - one message for every bad field
            expires = data.get("expires")
            digest = str(data["hash"])
            if len(digest) != hashlib.sha256().digest_size * 2:
                raise ValueError("hash")  # noqa: TRY301
            return cls(
                id=token_id,
                principal=str(data["principal"]),
                roles=tuple(roles),
                created=_parse_time(str(data["created"])),
                expires=_parse_time(str(expires)) if expires else None,
                hash=digest,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VaultError(f"vault: API token record {token_id!r} is malformed ({exc})") from None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token. ``token`` is the only copy: show it once, then drop it."""

    token: str = field(repr=False)
    info: TokenInfo


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return value


def check_token_id(token_id: str) -> str:
    """``token_id`` if it is a well-formed id; :class:`InputError` otherwise.

    Ids name KV paths, so nothing else (``..``, ``/``) may ever get through.
    """
    if not _ID.fullmatch(token_id):
        # Echo only what cannot be a whole token: someone may paste one by mistake.
        shown = "" if PREFIX in token_id or len(token_id) > 2 * ID_LENGTH else f" {token_id!r}"
        raise InputError(f"malformed API token id{shown} (expected {ID_LENGTH} letters and digits)")
    return token_id


def parse_token(text: str) -> tuple[str, str]:
    """``(id, secret)`` of a presented token; :class:`InputError` when it is malformed.

    The message never repeats the token.
    """
    match = _TOKEN.fullmatch(text.strip())
    if match is None:
        raise InputError(
            f"malformed API token (expected {PREFIX}<{ID_LENGTH}-char id>_<{SECRET_LENGTH}-char "
            "secret>)"
        )
    return match.group("id"), match.group("secret")


def parse_bearer(header: str | None) -> tuple[str, str]:
    """``(id, secret)`` of the token in an ``Authorization: Bearer <token>`` header;
    :class:`InputError` (whose message never repeats the token) when it is missing or malformed.
    The one parser the gateway and the shutdown controller share."""
    if not header:
        raise InputError("missing API key: send 'Authorization: Bearer <token>'")
    scheme, _, presented = header.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise InputError("malformed Authorization header: expected 'Bearer <token>'")
    try:
        return parse_token(presented)
    except InputError:
        raise InputError("malformed API key") from None


def token_hash(
    key: bytes, secret: str, *, token_id: str, principal: str, expires: datetime | None
) -> str:
    """HMAC-SHA256 over the secret *and its bindings*, hex: what Vault stores, never the secret.

    The id, the principal and the expiry are inside the MAC, so someone who can write the KV
    record still cannot move a token to another principal or extend its life.
    """
    bound = "\n".join(
        [
            "enclave-api-token/v1",
            token_id,
            principal,
            _format_time(expires) if expires else "",
            secret,
        ]
    )
    return hmac.new(key, bound.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_token(
    record: TokenRecord, key: bytes, presented: str, *, now: datetime | None = None
) -> bool:
    """Whether ``presented`` is the token ``record`` describes and has not expired.

    Pure and constant-time in the secret (the gateway calls it with its cached records).
    A malformed token is simply not valid here.
    """
    try:
        token_id, secret = parse_token(presented)
    except InputError:
        return False
    return verify_parts(record, key, token_id, secret, now=now)


def verify_parts(
    record: TokenRecord, key: bytes, token_id: str, secret: str, *, now: datetime | None = None
) -> bool:
    """:func:`verify_token` for a token already parsed (:func:`parse_bearer`)."""
    same_id = hmac.compare_digest(token_id.encode(), record.id.encode())
    expected = token_hash(
        key, secret, token_id=record.id, principal=record.principal, expires=record.expires
    )
    same_secret = hmac.compare_digest(expected, record.hash)
    return same_id and same_secret and not record.info.expired(now)


def new_token() -> tuple[str, str, str]:
    """``(token, id, secret)`` from the system's CSPRNG."""
    token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return f"{PREFIX}{token_id}_{secret}", token_id, secret


def _record_path(token_id: str) -> str:
    return f"{API_TOKENS}/{check_token_id(token_id)}"


def _decode_key(paths: EnclavePaths, value: object) -> bytes:
    if isinstance(value, str):
        try:
            text = value.strip().replace("+", "-").replace("/", "_")
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            key = b""
        if len(key) >= KEY_BYTES:
            return key
    raise VaultError(
        f"vault: {paths.kv}/{API_TOKEN_KEY} has no usable '{KEY_FIELD}' (base64, >= 32 bytes)"
    )


def _read_data(client: Any, paths: EnclavePaths, path: str, doing: str) -> dict[str, Any]:
    with translate(doing):
        response = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=paths.kv, raise_on_deleted_version=True
        )
    data = (response or {}).get("data") or {}
    return dict(data.get("data") or {})


def read_key(client: Any, paths: EnclavePaths) -> bytes:
    """The enclave's API-token HMAC key; :class:`VaultNotFoundError` when it does not exist."""
    data = _read_data(client, paths, API_TOKEN_KEY, f"read {paths.kv}/{API_TOKEN_KEY}")
    return _decode_key(paths, data.get(KEY_FIELD))


def ensure_key(client: Any, paths: EnclavePaths) -> bytes:
    """The HMAC key, created (32 random bytes, check-and-set 0) if it does not exist yet.

    An existing key is never overwritten: if another writer wins the race, its key is used.
    """
    try:
        return read_key(client, paths)
    except VaultNotFoundError:
        pass
    key = secrets.token_bytes(KEY_BYTES)
    encoded = base64.b64encode(key).decode("ascii")
    try:
        _write_new(client, paths, API_TOKEN_KEY, {KEY_FIELD: encoded}, "create API-token key")
    except _CasConflictError:
        log.info("vault: %s/%s was created concurrently; using it", paths.kv, API_TOKEN_KEY)
        return read_key(client, paths)
    log.info("vault: created the API-token key at %s/%s", paths.kv, API_TOKEN_KEY)
    return key


class _CasConflictError(Exception):
    """A check-and-set write found the path already written."""


def _write_new(
    client: Any, paths: EnclavePaths, path: str, data: dict[str, Any], doing: str
) -> None:
    """Write version 1 of ``path`` (cas=0): :class:`_CasConflictError` if it already exists."""
    try:
        with translate(doing):
            client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, cas=0, mount_point=paths.kv
            )
    except VaultNotFoundError:
        raise VaultNotFoundError(
            f"vault: {doing}: no KV v2 mount {paths.kv!r} (is enclave {paths.enclave!r} "
            "provisioned?)"
        ) from None
    except VaultError as exc:
        if "check-and-set" in str(exc):
            raise _CasConflictError(path) from None
        raise


def issue(
    client: Any,
    paths: EnclavePaths,
    principal: str,
    roles: Iterable[str],
    *,
    ttl: timedelta | None = None,
) -> IssuedToken:
    """Issue a token for ``principal`` holding ``roles``; returns it, once.

    The caller checks that the principal exists in the spec and passes its roles.
    ``ttl`` None means the token does not expire (revoke it to end it).
    """
    bound = tuple(roles)
    if not principal or not bound:
        raise InputError("an API token needs a principal and at least one role")
    if ttl is not None and ttl <= timedelta(0):
        raise InputError("an API token's ttl must be positive")
    key = ensure_key(client, paths)
    created = datetime.now(UTC).replace(microsecond=0)
    expires = created + ttl if ttl is not None else None
    for _ in range(_ISSUE_ATTEMPTS):
        token, token_id, secret = new_token()
        digest = token_hash(key, secret, token_id=token_id, principal=principal, expires=expires)
        record = TokenRecord(token_id, principal, bound, created, expires, digest)
        try:
            _write_new(
                client, paths, _record_path(token_id), record.to_data(), "store API token record"
            )
        except _CasConflictError:  # an id collision: astronomically unlikely, but never overwrite
            continue
        log.info(
            "issued API token %s for principal %s (roles %s) in enclave %s",
            token_id,
            principal,
            ",".join(bound),
            paths.enclave,
        )
        return IssuedToken(token=token, info=record.info)
    raise VaultError("vault: could not find a free API token id")  # pragma: no cover


def _list_ids(client: Any, paths: EnclavePaths) -> list[str]:
    try:
        with translate(f"list {paths.kv}/{API_TOKENS}"):
            response = client.secrets.kv.v2.list_secrets(path=API_TOKENS, mount_point=paths.kv)
    except VaultNotFoundError:  # no token was ever issued
        return []
    keys = ((response or {}).get("data") or {}).get("keys") or []
    return sorted(k for k in keys if isinstance(k, str) and _ID.fullmatch(k))


def read_record(client: Any, paths: EnclavePaths, token_id: str) -> TokenRecord:
    """One token's record; :class:`NotFoundError` when there is no such token."""
    try:
        data = _read_data(client, paths, _record_path(token_id), "read API token record")
    except VaultNotFoundError:
        raise NotFoundError(f"no API token {token_id!r} in enclave {paths.enclave!r}") from None
    return TokenRecord.from_data(token_id, data)


def load_records(client: Any, paths: EnclavePaths) -> dict[str, TokenRecord]:
    """Every token record of the enclave, by id (what the gateway caches)."""
    records: dict[str, TokenRecord] = {}
    for token_id in _list_ids(client, paths):
        try:
            records[token_id] = read_record(client, paths, token_id)
        except NotFoundError:  # revoked between the list and the read
            continue
    return records


def list_tokens(client: Any, paths: EnclavePaths, principal: str | None = None) -> list[TokenInfo]:
    """The enclave's tokens (optionally one principal's), oldest first; no hashes, no secrets."""
    infos = [r.info for r in load_records(client, paths).values()]
    if principal is not None:
        infos = [i for i in infos if i.principal == principal]
    return sorted(infos, key=lambda i: (i.created, i.id))


def revoke_token(client: Any, paths: EnclavePaths, token_id: str) -> TokenInfo:
    """Delete a token's record, every version and its metadata; returns what it was.

    :class:`NotFoundError` when the enclave has no such token.
    """
    record = read_record(client, paths, token_id)
    with translate("revoke API token"):
        client.secrets.kv.v2.delete_metadata_and_all_versions(
            path=_record_path(token_id), mount_point=paths.kv
        )
    log.info(
        "revoked API token %s of principal %s in enclave %s",
        token_id,
        record.principal,
        paths.enclave,
    )
    return record.info


@dataclass(frozen=True, slots=True)
class PrincipalRevocation:
    """What :func:`revoke_principal` revoked: each token, in the order it was revoked."""

    enclave: str
    principal: str
    revoked: tuple[TokenInfo, ...]

    @property
    def count(self) -> int:
        return len(self.revoked)


def revoke_principal(client: Any, paths: EnclavePaths, principal: str) -> PrincipalRevocation:
    """Revoke every API token of ``principal`` in the enclave (oldest first); what was revoked.

    A principal without tokens revokes nothing (count 0). If Vault fails part-way, the error
    says how many were revoked before it and which; running it again revokes the rest. A token
    issued while this runs may be missed: run it again after removing the principal from the
    spec, which stops new tokens being issued for them.
    """
    if not principal:
        raise InputError("a principal is needed to revoke their API tokens")
    revoked: list[TokenInfo] = []
    for info in list_tokens(client, paths, principal):
        try:
            revoke_token(client, paths, info.id)
        except NotFoundError:  # revoked by someone else meanwhile: gone all the same
            continue
        except VaultError as exc:
            done = ", ".join(i.id for i in revoked) or "none"
            raise type(exc)(
                f"{exc}; {len(revoked)} API token(s) of {principal} were revoked before this "
                f"({done}); run the revocation again"
            ) from None
        revoked.append(info)
    log.info(
        "revoked %d API token(s) of principal %s in enclave %s",
        len(revoked),
        principal,
        paths.enclave,
    )
    return PrincipalRevocation(paths.enclave, principal, tuple(revoked))
