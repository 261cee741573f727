"""Who may tell the controller to kill or resume, and the controller's own Vault.

People call the controller's API with their own enclave API token (``Authorization: Bearer``),
the same token they use at the gateway. The controller checks it itself, against Vault, with
its own identity: :class:`ControllerVault` reads the token's record by id and the enclave's
API-token HMAC key (the controller's policy allows exactly that, and no listing), and
:func:`~enclave.vault.tokens.verify_parts` compares them in constant time. The principal's
effective roles are those the token was issued for *and* the spec grants it now, exactly as at
the gateway, so editing the spec narrows every outstanding token; the actions are the union of
those roles' ``actions``.

:class:`Authenticator` returns a :class:`Caller` or a :class:`Refusal` (a value with the HTTP
status the API answers), never raising for a bad token. When Vault cannot be asked (sealed,
unreachable) the answer is ``503``: nobody is let in unverified.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from enclave.errors import EnclaveError, InputError, NotFoundError, VaultError
from enclave.vault.revoke import revoke_all
from enclave.vault.revoke import seal as seal_vault
from enclave.vault.tokens import parse_bearer, read_key, read_record, token_hash, verify_parts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from enclave.spec.model import Action, EnclaveSpec, Role
    from enclave.vault.names import EnclavePaths
    from enclave.vault.tokens import TokenRecord

log = logging.getLogger(__name__)

__all__ = ["Authenticator", "Caller", "ControllerVault", "Refusal", "TokenSource"]

_DUMMY_HASH = "0" * 64


class TokenSource(Protocol):
    """Where token records and their HMAC key come from (Vault; a dict in unit tests)."""

    def token_record(self, token_id: str) -> TokenRecord:
        """The record; :class:`~enclave.errors.NotFoundError` when there is none."""
        ...

    def token_key(self) -> bytes: ...


class ControllerVault:
    """The controller's own Vault client, used one call at a time (hvac clients are not
    thread-safe, and the controller calls Vault from worker threads)."""

    def __init__(self, client: Any, paths: EnclavePaths) -> None:
        self._client = client
        self.paths = paths
        self._lock = threading.Lock()
        self._key: bytes | None = None

    def revoke_workloads(self) -> str:
        """Revoke every workload token of the enclave (never the controller's own)."""
        with self._lock:
            report = revoke_all(self._client, self.paths)
        return f"{report.tokens} workload token(s) revoked in {report.seconds * 1000:.1f} ms"

    def seal(self) -> str:
        with self._lock:
            report = seal_vault(self._client)
        return f"Vault sealed in {report.seconds * 1000:.1f} ms"

    def token_record(self, token_id: str) -> TokenRecord:
        with self._lock:
            return read_record(self._client, self.paths, token_id)

    def token_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = read_key(self._client, self.paths)
            return self._key


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated person and what their effective roles let them do."""

    principal: str
    token_id: str
    actions: frozenset[Action]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused, with the HTTP status the API answers."""

    status: int
    code: str
    message: str
    principal: str | None = None
    """Who asked, when that much is known (an authenticated caller without the role)."""
    token_id: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _invalid(message: str, token_id: str | None = None) -> Refusal:
    return Refusal(401, "invalid_api_key", message, token_id=token_id)


class Authenticator:
    """Checks API tokens against a :class:`TokenSource` and the spec's RBAC. Blocking: call it
    from a worker thread."""

    def __init__(
        self,
        source: TokenSource,
        roles: Mapping[str, Role],
        principals: Mapping[str, Iterable[str]],
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source = source
        self._roles = {name: frozenset(role.actions) for name, role in roles.items()}
        self._principals = {name: frozenset(held) for name, held in principals.items()}
        self._now = wall_clock

    @classmethod
    def from_spec(cls, source: TokenSource, spec: EnclaveSpec) -> Authenticator:
        return cls(source, spec.rbac.roles, {p.name: p.roles for p in spec.rbac.principals})

    def warm(self) -> None:
        """Fetch the HMAC key now, so that the first kill waits for one Vault read, not two
        (a failure is only logged: :meth:`authenticate` tries again)."""
        try:
            self.source.token_key()
        except EnclaveError as exc:
            log.warning("cannot read the API-token key yet: %s", exc)

    def authenticate(self, header: str | None) -> Caller | Refusal:  # noqa: PLR0911 - one per failure
        """The caller behind ``Authorization: Bearer <token>``, or why not. Messages never
        repeat the token."""
        try:
            token_id, secret = parse_bearer(header)
        except InputError as exc:
            return _invalid(str(exc))
        try:
            key = self.source.token_key()
            try:
                record = self.source.token_record(token_id)
            except NotFoundError:
                # as much work as a known id, so that timing does not tell ids apart
                digest = token_hash(key, secret, token_id=token_id, principal="-", expires=None)
                hmac.compare_digest(digest, _DUMMY_HASH)
                return _invalid("invalid API key", token_id)
        except VaultError as exc:
            log.warning("cannot check an API token: %s", exc)
            return Refusal(
                503, "auth_unavailable", f"cannot check API tokens now ({exc}); refusing"
            )
        except EnclaveError as exc:
            log.warning("cannot check an API token: %s", exc)
            return Refusal(503, "auth_unavailable", "cannot check API tokens now; refusing")
        if not verify_parts(record, key, token_id, secret, now=self._now()):
            return _invalid("invalid or expired API key", token_id)
        held = self._principals.get(record.principal)
        if held is None:
            return _invalid("the API key's principal is not in this enclave's spec", token_id)
        effective = held & frozenset(record.roles)
        actions = frozenset(a for role in effective for a in self._roles.get(role, ()))
        return Caller(record.principal, token_id, actions)

    @staticmethod
    def authorize(caller: Caller, action: Action) -> Refusal | None:
        """``403 forbidden`` unless the caller's roles grant ``action``."""
        if action in caller.actions:
            return None
        return Refusal(
            403,
            "forbidden",
            f"principal {caller.principal!r} is not granted the {action.value!r} action",
            principal=caller.principal,
            token_id=caller.token_id,
        )
