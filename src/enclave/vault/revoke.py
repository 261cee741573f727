"""Emergency revocation: every workload token of an enclave at once, one token, or a seal.

The shutdown controller calls these. :func:`revoke_all` revokes, in one synchronous request,
every token issued by the enclave's workload AppRole mount (gateway and model servers, and with
them every child token and lease they created). The controller's own token comes from the
separate control mount, so it survives and the controller can go on working. Batch tokens have no
lease and cannot be revoked: provisioning issues service tokens for that reason.

:func:`seal` is break-glass: it stops *everything* using that Vault until someone unseals it.

Each returns how long the Vault call took (``time.perf_counter``), for the incident timeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enclave.errors import InputError, VaultNotFoundError
from enclave.vault.client import translate

if TYPE_CHECKING:
    from enclave.vault.names import EnclavePaths

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RevokeReport:
    """How many tokens (leases) were revoked, and how long the whole call took."""

    tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class SealReport:
    seconds: float


def login_prefix(paths: EnclavePaths) -> str:
    """The lease prefix of every token the enclave's workload AppRole mount issued."""
    return f"auth/{paths.workload_auth}/login"


def count_leases(client: Any, prefix: str) -> int:
    """Live leases under ``prefix`` (0 when there are none: Vault answers 404 then)."""
    try:
        with translate(f"list leases under {prefix}"):
            response = client.adapter.list(f"/v1/sys/leases/lookup/{prefix}/")
    except VaultNotFoundError:
        return 0
    keys = ((response or {}).get("data") or {}).get("keys") or []
    return len(keys)


def revoke_prefix(client: Any, prefix: str) -> RevokeReport:
    """Revoke every lease (and token) under ``prefix`` synchronously; count them first.

    When this returns, each of those tokens is already refused. The count is taken just before
    the revocation; a login racing with it is revoked but may be missing from the count.
    """
    prefix = prefix.strip("/")
    if not prefix:
        raise InputError("refusing to revoke an empty lease prefix (that is every lease)")
    start = time.perf_counter()
    count = count_leases(client, prefix)
    if count:
        with translate(f"revoke leases under {prefix}"):
            client.adapter.put(f"/v1/sys/leases/revoke-prefix/{prefix}", json={"sync": True})
    seconds = time.perf_counter() - start
    log.info("vault: revoked %d lease(s) under %s in %.3f s", count, prefix, seconds)
    return RevokeReport(tokens=count, seconds=seconds)


def revoke_all(client: Any, paths: EnclavePaths) -> RevokeReport:
    """Revoke every token the enclave's workloads hold, in one call; never the controller's."""
    return revoke_prefix(client, login_prefix(paths))


def revoke_accessor(client: Any, accessor: str) -> float:
    """Revoke one token (and its children) by accessor; returns the seconds it took.

    Revoking an accessor that is already revoked (or unknown) succeeds: OpenBao 2 answers 204.
    """
    if not accessor or "/" in accessor:
        raise InputError("a token accessor is a non-empty string without '/'")
    start = time.perf_counter()
    with translate("revoke token by accessor"):
        client.auth.token.revoke_accessor(accessor)
    seconds = time.perf_counter() - start
    log.info("vault: revoked a token by accessor in %.3f s", seconds)
    return seconds


def seal(client: Any) -> SealReport:
    """Seal Vault (break-glass): every client of that Vault fails until it is unsealed."""
    start = time.perf_counter()
    with translate("seal"):
        client.sys.seal()
    seconds = time.perf_counter() - start
    log.warning("vault: sealed in %.3f s (break-glass)", seconds)
    return SealReport(seconds=seconds)
