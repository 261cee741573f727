"""Keeping a component's own Vault token alive: :class:`TokenRenewer`.

Component tokens are periodic (:data:`enclave.vault.provision.TOKEN_PERIOD`): each lives one
period after its login or its last renewal, for as long as its holder keeps renewing it. A
:class:`TokenRenewer` is a daemon thread that renews the token it was given (``renew-self``,
which every component policy allows) when a third of its current TTL has passed, so two
renewals in a row may fail before the token is in danger.

A renewal that fails because Vault is unreachable, sealed or erring is retried with exponential
backoff (``min_backoff`` doubling up to ``max_backoff``, never sleeping past half of the time
the token has left); the first failure is logged as a warning, every tenth after it again, and
the recovery once. A refusal (403: the token was revoked, e.g. by the kill switch, or expired)
is final: the renewer logs it as an error and ends; the component then fails closed by itself,
as each of its Vault calls is refused. A token that cannot be renewed (not renewable, no TTL,
or at its maximum TTL) is left alone.

The renewer uses an HTTP session of its own (hvac clients are not meant to be shared between
threads) and never logs the token. :meth:`TokenRenewer.stop` ends it promptly and joins it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from enclave.errors import VaultError, VaultForbiddenError
from enclave.vault.client import anonymous, translate

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from enclave.vault.client import VaultConnection

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0
"""Renew no more often than this (seconds) unless the TTL itself is shorter; a renewal that
leaves less TTL than this (a token at its maximum TTL) ends the renewals."""
_REPORT_EVERY = 10


@dataclass(frozen=True, slots=True)
class RenewerStatus:
    """What the renewer has done so far."""

    running: bool
    renewals: int
    """Successful renewals."""
    failures: int
    """Consecutive failed renewals (0 after a success)."""
    ttl: float | None
    """The token's TTL after the last renewal (or at start), seconds."""
    last_error: str | None
    gave_up: bool
    """True once Vault refused a renewal (the token is revoked or expired)."""


class TokenRenewer:
    """Renews one token from a background thread until :meth:`stop` (or Vault refuses it)."""

    def __init__(
        self,
        connection: VaultConnection,
        token: str,
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        name: str = "enclave-vault-renewer",
    ) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        self._connection = connection
        self._token = token
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.min_interval = min_interval
        self._clock = clock
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._renewals = 0
        self._failures = 0
        self._ttl: float | None = None
        self._last_error: str | None = None
        self._gave_up = False

    @classmethod
    def for_client(cls, connection: VaultConnection, client: Any, **options: Any) -> TokenRenewer:
        """A renewer for the token ``client`` (an hvac client) holds."""
        token = getattr(client, "token", None)
        if not isinstance(token, str) or not token:
            raise VaultForbiddenError("vault: renew: the client holds no token")
        return cls(connection, token, **options)

    # -- one renewal ------------------------------------------------------------------------

    def _vault(self) -> Any:
        if self._client is None:
            client = anonymous(self._connection)
            client.token = self._token
            self._client = client
        return self._client

    def lookup(self) -> tuple[float, bool]:
        """``(ttl seconds, renewable)`` of the token now."""
        with translate("look up the token"):
            data = self._vault().auth.token.lookup_self()["data"]
        return float(data.get("ttl") or 0), bool(data.get("renewable"))

    def renew_once(self) -> float:
        """Renew the token now; its new TTL in seconds. Raises :class:`VaultError`."""
        with translate("renew the token"):
            response = self._vault().auth.token.renew_self()
        auth = (response or {}).get("auth") or {}
        return float(auth.get("lease_duration") or 0)

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> Self:
        """Look the token up (raises if that fails) and renew it from a thread from then on.

        A token without a TTL (root) or that is not renewable needs no renewer: none starts.
        """
        if self._thread is not None:
            return self
        try:
            ttl, renewable = self.lookup()
        except BaseException:
            self._close()
            raise
        self._ttl = ttl
        if ttl <= 0 or not renewable:
            log.info("vault: the token has no TTL or is not renewable; nothing to renew")
            self._close()
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(ttl,), name=self._name)
        self._thread.daemon = True
        self._thread.start()
        log.info("vault: renewing the token every %.0f s (TTL %.0f s)", self._interval(ttl), ttl)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (it is waiting, or in one bounded HTTP call) and join it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("vault: the token renewer did not stop within %.0f s", timeout)

    def status(self) -> RenewerStatus:
        thread = self._thread
        return RenewerStatus(
            running=thread is not None and thread.is_alive(),
            renewals=self._renewals,
            failures=self._failures,
            ttl=self._ttl,
            last_error=self._last_error,
            gave_up=self._gave_up,
        )

    def _run(self, ttl: float) -> None:
        try:
            self._loop(ttl)
        finally:
            self._close()

    def _interval(self, ttl: float) -> float:
        """When to renew a token with ``ttl`` left: at a third of it, not more often than
        ``min_interval`` unless the TTL itself is that short."""
        return max(ttl / 3, min(self.min_interval, ttl / 2))

    def _loop(self, ttl: float) -> None:
        expires = self._clock() + ttl
        wait = self._interval(ttl)
        while not self._stop.wait(wait):
            try:
                ttl = self.renew_once()
            except VaultForbiddenError as exc:
                self._gave_up, self._last_error = True, str(exc)
                log.error(  # noqa: TRY400 - one line, no traceback: the message says it all
                    "vault: token renewal refused; the token was revoked or has expired, so it "
                    "is no longer renewed (%s)",
                    exc,
                )
                return
            except VaultError as exc:
                wait = self._failed(str(exc), expires - self._clock())
                continue
            if self._failures:
                log.info("vault: token renewed again after %d failed attempt(s)", self._failures)
            self._renewals += 1
            self._failures, self._last_error, self._ttl = 0, None, ttl
            if ttl < self.min_interval:
                log.warning("vault: the token can no longer be extended (TTL %.1f s left)", ttl)
                return
            expires = self._clock() + ttl
            wait = self._interval(ttl)

    def _failed(self, why: str, left: float) -> float:
        """Count a failed renewal; how long to wait before the next attempt."""
        self._failures += 1
        self._last_error = why
        if self._failures == 1 or self._failures % _REPORT_EVERY == 0:
            log.warning(
                "vault: token renewal failed (%d in a row, %.0f s of TTL left): %s",
                self._failures,
                max(left, 0.0),
                why,
            )
        backoff = min(self.max_backoff, self.min_backoff * 2.0 ** (self._failures - 1))
        if left > 0:
            backoff = min(backoff, max(left / 2, 0.05))
        return backoff

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.adapter.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
