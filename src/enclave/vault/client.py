"""The hvac adapter: connecting, logging in, and translating every hvac/requests error.

A :class:`VaultConnection`'s address is ``https://host:port`` (or ``http://``), or
``unix:///abs/path/bao.sock`` for a ``listener "unix"`` (plain HTTP over the socket, reached
through :mod:`enclave.vault.unixhttp`; file permissions guard it, not TLS).

Use :func:`connect` (token) or :func:`login_approle`; wrap any further hvac call in
``with translate("what we were doing"):`` so that no ``hvac.exceptions`` or ``requests``
exception reaches a caller. Retries happen only for idempotent reads (:func:`read_with_retry`);
a write is never repeated behind the caller's back.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hvac
import hvac.exceptions
import requests

from enclave.errors import (
    InputError,
    VaultError,
    VaultForbiddenError,
    VaultNotFoundError,
    VaultSealedError,
    VaultUnavailableError,
)
from enclave.vault.unixhttp import base_url, socket_path_of, unix_session

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VaultConnection:
    """Where Vault is and how to trust it. ``ca_bundle`` None means the system trust store."""

    address: str
    ca_bundle: Path | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        path = socket_path_of(self.address)
        if path is not None and not path.startswith("/"):
            raise InputError(
                f"vault address {self.address!r}: a unix socket is written unix:///absolute/path"
            )

    @property
    def socket_path(self) -> str | None:
        """The unix socket this connection uses; None for a TCP address."""
        return socket_path_of(self.address)


@contextlib.contextmanager
def translate(doing: str) -> Iterator[None]:
    """Turn hvac/requests errors raised inside the block into enclave's Vault errors.

    The foreign error stays reachable as the new one's ``__context__``, and its traceback's
    finished frames hold the HTTP response (and so the socket) in their locals: those frames
    are cleared, so the connection closes with its client instead of at a later, random
    garbage collection.
    """
    try:
        yield
    except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
        traceback.clear_frames(exc.__traceback__)
        raise _translated(doing, exc) from None


def _translated(doing: str, exc: Exception) -> VaultError:  # noqa: PLR0911 - one per kind
    """Enclave's error for the hvac/requests error ``exc`` (the first matching kind wins)."""
    if isinstance(exc, hvac.exceptions.Forbidden):
        return VaultForbiddenError(f"vault: {doing}: permission denied{_detail(exc)}")
    if isinstance(exc, hvac.exceptions.Unauthorized):
        return VaultForbiddenError(f"vault: {doing}: not authenticated{_detail(exc)}")
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return VaultNotFoundError(f"vault: {doing}: not found{_detail(exc)}")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return VaultSealedError(f"vault: {doing}: Vault is sealed{_detail(exc)}")
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return VaultSealedError(f"vault: {doing}: Vault is not initialised")
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return VaultError(f"vault: {doing}: invalid request{_detail(exc)}")
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultError(f"vault: {doing}: {type(exc).__name__}{_detail(exc)}")
    if isinstance(exc, requests.exceptions.SSLError):
        return VaultUnavailableError(f"vault: {doing}: TLS verification failed")
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return VaultUnavailableError(f"vault: {doing}: unreachable")
    return VaultUnavailableError(f"vault: {doing}: {type(exc).__name__}")


def _detail(exc: hvac.exceptions.VaultError) -> str:
    errors = [str(e) for e in (getattr(exc, "errors", None) or []) if e]
    text = "; ".join(errors)[:200]
    return f" ({text})" if text else ""


def _client(connection: VaultConnection, token: str | None) -> hvac.Client:
    path = connection.socket_path
    if path is not None:
        return hvac.Client(
            url=base_url(path), token=token, timeout=connection.timeout, session=unix_session()
        )
    verify: bool | str = str(connection.ca_bundle) if connection.ca_bundle else True
    return hvac.Client(
        url=connection.address, token=token, verify=verify, timeout=connection.timeout
    )


def connect(connection: VaultConnection, token: str) -> hvac.Client:
    """A client using ``token``; checks that Vault answers, is unsealed and the token is valid."""
    client = _client(connection, token)
    try:
        with translate("connect"):
            sealed = bool(client.sys.read_seal_status().get("sealed"))
            if not sealed:
                client.auth.token.lookup_self()
    except BaseException:
        client.adapter.close()  # its pooled connection must not outlive the failure
        raise
    if sealed:
        client.adapter.close()
        raise VaultSealedError(f"vault: {connection.address} is sealed")
    return client


def anonymous(connection: VaultConnection) -> hvac.Client:
    """A client without a token (health, seal status, unwrap with a wrapping token)."""
    return _client(connection, None)


def login_approle(connection: VaultConnection, role_id: str, secret_id: str, mount: str) -> Any:
    """Log in with AppRole; returns the hvac client holding the new token."""
    client = _client(connection, None)
    try:
        with translate("approle login"):
            client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=mount)
    except BaseException:
        client.adapter.close()
        raise
    return client


def read_with_retry(read: Callable[[], Any], doing: str, *, attempts: int = 3) -> Any:
    """Run an idempotent read, retrying only when Vault was unreachable."""
    for attempt in range(1, attempts + 1):
        try:
            with translate(doing):
                return read()
        except VaultUnavailableError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * 2**attempt)
            log.info("vault: %s: unreachable, retrying (%d/%d)", doing, attempt, attempts)
    raise AssertionError("unreachable")  # pragma: no cover
