"""Authenticating people's API tokens against a local cache that follows Vault closely.

Vault holds each token's record (a keyed hash, never the token) and the HMAC key
(:mod:`enclave.vault.tokens`). :class:`TokenCache` keeps a copy of both in memory, so that
checking a token costs one dict lookup and one HMAC, and reloads the copy every
``refresh_interval`` (0.5 s by default) from a background task; a token revoked in Vault stops
working on every replica within about ``refresh_interval`` plus one load.

The cache fails closed: when its copy is older than ``max_staleness`` (the loader keeps failing,
or hangs), every request is answered ``503 auth_unavailable`` until a load succeeds again. The
age is counted from the moment the last successful load *started*, so a revocation written just
before a load began can never survive longer than ``max_staleness``.

The loader is a plain blocking callable (Vault clients block); it runs in a worker thread, one
load at a time. :func:`vault_token_loader` builds the one that reads Vault with the gateway's own
Vault identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from enclave.errors import EnclaveError, InputError
from enclave.gateway.denial import Denial, DenialCode
from enclave.vault.tokens import (
    TokenRecord,
    load_records,
    parse_bearer,
    read_key,
    token_hash,
    verify_parts,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from enclave.gateway.policy import Principal
    from enclave.vault.names import EnclavePaths

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Checked when the presented id is unknown, so that an unknown id costs what a known one does.
_DUMMY = TokenRecord("000000000000", "-", (), _EPOCH, None, "0" * 64)


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    """Every token record of the enclave, by id, and the HMAC key: what one load returns."""

    records: Mapping[str, TokenRecord]
    key: bytes = field(repr=False)


TokenLoader = Callable[[], TokenSnapshot]
"""Returns a fresh :class:`TokenSnapshot`; blocking is fine (it runs in a worker thread)."""


@dataclass(frozen=True, slots=True)
class TokenCacheSettings:
    """How closely the cache follows Vault."""

    refresh_interval: float = 0.5
    """Seconds between the starts of two loads (a slow load delays the next, never overlaps)."""
    max_staleness: float = 1.0
    """Oldest copy the cache authenticates with (seconds since its load started); older: 503.

    This bounds how long a revoked token can keep working when Vault stops answering the
    gateway. Raise it to ride out longer Vault hiccups, at the cost of that bound.
    """

    def __post_init__(self) -> None:
        if not 0 < self.refresh_interval < self.max_staleness:
            raise InputError("token cache: need 0 < refresh_interval < max_staleness")


@dataclass(frozen=True, slots=True)
class CacheStatus:
    """The cache's health, for metrics and readiness probes."""

    tokens: int
    age: float | None
    """Seconds since the current copy's load started; None before the first load."""
    fresh: bool
    failures: int
    """Consecutive failed loads."""
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Entry:
    record: TokenRecord
    principal: Principal | None


class TokenCache:
    """API tokens by id, refreshed in the background; :meth:`authenticate` is the hot path.

    ``resolve`` turns a record into the principal it stands for now (normally
    :meth:`enclave.gateway.policy.Policy.resolve_token`), or None when the spec no longer has
    that principal. It runs once per changed record per load, not per request.
    """

    def __init__(
        self,
        loader: TokenLoader,
        resolve: Callable[[TokenRecord], Principal | None],
        *,
        settings: TokenCacheSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._loader = loader
        self._resolve = resolve
        self.settings = settings or TokenCacheSettings()
        self._clock = clock
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))
        self._entries: dict[str, _Entry] = {}
        self._key = b""
        self._loaded_at: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    # -- loading ----------------------------------------------------------------------------

    def install(self, snapshot: TokenSnapshot, *, started: float | None = None) -> None:
        """Make ``snapshot`` the current copy; ``started`` is when its load began (default now).

        Principals are resolved again only for records that changed since the last copy.
        """
        old = self._entries
        entries: dict[str, _Entry] = {}
        for token_id, record in snapshot.records.items():
            previous = old.get(token_id)
            if previous is not None and previous.record == record:
                entries[token_id] = previous
            else:
                entries[token_id] = _Entry(record, self._resolve(record))
        self._entries = entries
        self._key = snapshot.key
        self._loaded_at = self._clock() if started is None else started
        if self._failures:
            log.info("API-token cache: refreshed again after %d failed load(s)", self._failures)
        self._failures = 0
        self._last_error = None

    def reresolve(self) -> None:
        """Resolve every cached record's principal again (call after the policy changes)."""
        self._entries = {
            token_id: _Entry(entry.record, self._resolve(entry.record))
            for token_id, entry in self._entries.items()
        }

    async def refresh(self) -> bool:
        """Load once (in a worker thread) and install the result; False when the load failed."""
        started = self._clock()
        try:
            snapshot = await asyncio.to_thread(self._loader)
        except EnclaveError as exc:
            self._load_failed(str(exc))
            return False
        except Exception as exc:  # a loader bug must not stop the refresher: fail closed
            self._load_failed(f"{type(exc).__name__} in the token loader")
            return False
        self.install(snapshot, started=started)
        return True

    def _load_failed(self, why: str) -> None:
        self._failures += 1
        self._last_error = why
        if self._failures == 1:
            log.warning("API-token cache: load failed: %s", why)
        elif self._failures % 20 == 0:
            log.warning(
                "API-token cache: %d consecutive loads failed (latest: %s)", self._failures, why
            )

    async def run(self) -> None:
        """Refresh at a fixed rate until cancelled."""
        interval = self.settings.refresh_interval
        next_start = self._clock()
        while True:
            await self.refresh()
            next_start += interval
            now = self._clock()
            next_start = max(next_start, now)  # a load slower than the interval: go on now
            await asyncio.sleep(next_start - now)

    def start(self) -> asyncio.Task[None]:
        """Start :meth:`run` as a background task of the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="enclave-token-cache"
            )
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        """Load once, then keep refreshing in the background until the block exits."""
        await self.refresh()
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the hot path -----------------------------------------------------------------------

    def status(self) -> CacheStatus:
        age = None if self._loaded_at is None else max(0.0, self._clock() - self._loaded_at)
        return CacheStatus(
            tokens=len(self._entries),
            age=age,
            fresh=age is not None and age <= self.settings.max_staleness,
            failures=self._failures,
            last_error=self._last_error,
        )

    def check_fresh(self) -> Denial | None:
        """``503 auth_unavailable`` when the copy is too old to trust; None when it is fresh."""
        loaded_at = self._loaded_at
        if loaded_at is None:
            return Denial(
                DenialCode.AUTH_UNAVAILABLE,
                "API tokens have not been loaded from Vault yet; denying every request",
            )
        age = self._clock() - loaded_at
        if age > self.settings.max_staleness:
            return Denial(
                DenialCode.AUTH_UNAVAILABLE,
                f"API tokens could not be refreshed from Vault for {age:.1f}s (limit "
                f"{self.settings.max_staleness:g}s); denying every request",
            )
        return None

    def authenticate(self, header: str | None) -> Principal | Denial:
        """The principal behind an ``Authorization: Bearer <token>`` header, or a denial.

        ``401 invalid_api_key`` for a missing, malformed, unknown, revoked or expired token;
        ``503 auth_unavailable`` when the cache is stale. Constant-time in the secret; an
        unknown id costs one HMAC like a known one. Messages never repeat the token.
        """
        stale = self.check_fresh()
        if stale is not None:
            return stale
        try:
            token_id, secret = parse_bearer(header)
        except InputError as exc:
            return _invalid(str(exc))
        entry = self._entries.get(token_id)
        if entry is None:
            digest = token_hash(self._key, secret, token_id=token_id, principal="-", expires=None)
            hmac.compare_digest(digest, _DUMMY.hash)
            return _invalid("invalid API key")
        if not verify_parts(entry.record, self._key, token_id, secret, now=self._wall_clock()):
            return _invalid("invalid or expired API key")
        if entry.principal is None:
            return _invalid("the API key's principal is not in this enclave's spec")
        return entry.principal


def _invalid(message: str) -> Denial:
    return Denial(DenialCode.INVALID_API_KEY, message)


def vault_token_loader(client: Any, paths: EnclavePaths) -> TokenLoader:
    """A loader reading the enclave's token records and HMAC key with ``client``.

    ``client`` is an authenticated hvac client of the gateway's own Vault identity (its policy
    may read ``<kv>/api-tokens/*`` and ``<kv>/api-token-key``, nothing else). Errors arrive as
    :class:`~enclave.errors.VaultError`.
    """

    def load() -> TokenSnapshot:
        key = read_key(client, paths)
        return TokenSnapshot(load_records(client, paths), key)

    return load
