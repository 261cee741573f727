"""API-token authentication against the refreshed cache: revocation, expiry, failing closed."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from enclave.errors import InputError, VaultUnavailableError
from enclave.gateway.auth import (
    TokenCache,
    TokenCacheSettings,
    TokenSnapshot,
    vault_token_loader,
)
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.policy import Policy, Principal
from enclave.spec import LoadedSpec
from enclave.vault.names import EnclavePaths
from enclave.vault.tokens import parse_token
from support.gateway import Clock, Tokens, issue_for_spec, write_spec
from support.workspace import Workspace


@pytest.fixture
def loaded(workspace: Workspace) -> LoadedSpec:
    return write_spec(workspace)


@pytest.fixture
def policy(loaded: LoadedSpec) -> Policy:
    return Policy.from_spec(loaded)


def code_of(result: Principal | Denial) -> DenialCode | None:
    return result.code if isinstance(result, Denial) else None


def test_a_valid_token_authenticates_its_principal(loaded: LoadedSpec, policy: Policy) -> None:
    tokens = issue_for_spec(loaded)
    cache = TokenCache(tokens.snapshot, policy.resolve_token, clock=Clock())
    cache.install(tokens.snapshot())
    alice = cache.authenticate(f"Bearer {tokens.by_principal['alice']}")
    assert isinstance(alice, Principal) and alice.name == "alice"
    lower = cache.authenticate(f"bearer   {tokens.by_principal['bob']}  ")
    assert isinstance(lower, Principal) and lower.name == "bob"
    assert cache.status().tokens == len(loaded.spec.rbac.principals)


def test_everything_else_is_401_and_never_echoes_the_token(
    loaded: LoadedSpec, policy: Policy
) -> None:
    tokens = issue_for_spec(loaded)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    expired = tokens.issue("alice", ("analyst",), expires=now - timedelta(seconds=1))
    ghost = tokens.issue("mallory", ("analyst",))  # not a principal of the spec
    cache = TokenCache(tokens.snapshot, policy.resolve_token, clock=Clock(), wall_clock=lambda: now)
    cache.install(tokens.snapshot())
    good = tokens.by_principal["alice"]
    token_id, secret = parse_token(good)
    other_secret = parse_token(tokens.by_principal["bob"])[1]
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    unknown = f"enc_{'Z' * 12}_{secret}"
    swapped = f"enc_{token_id}_{other_secret}"
    headers = [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {good}",
        good,
        f"Bearer {good}x",
        f"Bearer {tampered}",
        f"Bearer {unknown}",
        f"Bearer {swapped}",
        f"Bearer {expired}",
        f"Bearer {ghost}",
        "Bearer enc_short_secret",
    ]
    for value in headers:
        result = cache.authenticate(value)
        assert isinstance(result, Denial), value
        assert result.code is DenialCode.INVALID_API_KEY and result.status == 401
        assert secret not in result.message and "enc_" not in result.message
        assert result.headers()["www-authenticate"].startswith("Bearer")


def test_nothing_is_served_before_the_first_load(policy: Policy) -> None:
    cache = TokenCache(Tokens().snapshot, policy.resolve_token, clock=Clock())
    result = cache.authenticate("Bearer whatever")
    assert isinstance(result, Denial) and result.code is DenialCode.AUTH_UNAVAILABLE
    assert result.status == 503
    assert cache.status().age is None and not cache.status().fresh


def test_a_stale_copy_fails_closed_and_recovers_on_the_next_load(
    loaded: LoadedSpec, policy: Policy
) -> None:
    tokens = issue_for_spec(loaded)
    clock = Clock()
    cache = TokenCache(tokens.snapshot, policy.resolve_token, clock=clock)
    cache.install(tokens.snapshot())
    header = f"Bearer {tokens.by_principal['alice']}"
    clock.advance(cache.settings.max_staleness)
    assert isinstance(cache.authenticate(header), Principal)
    clock.advance(0.001)
    denied = cache.authenticate(header)
    assert isinstance(denied, Denial) and denied.code is DenialCode.AUTH_UNAVAILABLE
    assert "could not be refreshed" in denied.message
    cache.install(tokens.snapshot())
    assert isinstance(cache.authenticate(header), Principal)


def test_the_age_counts_from_when_the_load_started(loaded: LoadedSpec, policy: Policy) -> None:
    tokens = issue_for_spec(loaded)
    clock = Clock()
    cache = TokenCache(tokens.snapshot, policy.resolve_token, clock=clock)
    started = clock()
    clock.advance(0.9)  # a slow load
    cache.install(tokens.snapshot(), started=started)
    clock.advance(0.2)
    assert code_of(cache.authenticate(f"Bearer {tokens.by_principal['alice']}")) is (
        DenialCode.AUTH_UNAVAILABLE
    )


def test_settings_are_checked() -> None:
    with pytest.raises(InputError):
        TokenCacheSettings(refresh_interval=1.0, max_staleness=1.0)
    with pytest.raises(InputError):
        TokenCacheSettings(refresh_interval=0, max_staleness=1.0)


def test_a_revoked_token_stops_working_within_the_refresh_interval(
    loaded: LoadedSpec, policy: Policy
) -> None:
    """With the default settings, on a real clock: well within the promised second."""
    tokens = issue_for_spec(loaded)
    cache = TokenCache(tokens.snapshot, policy.resolve_token)
    interval = cache.settings.refresh_interval
    assert interval == 0.5
    header = f"Bearer {tokens.by_principal['alice']}"

    async def scenario() -> float:
        async with cache:
            assert isinstance(cache.authenticate(header), Principal)
            await asyncio.sleep(0.1)
            tokens.revoke(tokens.by_principal["alice"])
            revoked_at = time.monotonic()
            while isinstance(cache.authenticate(header), Principal):
                await asyncio.sleep(0.005)
                assert time.monotonic() - revoked_at < 2.0, "revoked token still accepted"
            elapsed = time.monotonic() - revoked_at
            # the others still work, and the cache stayed fresh throughout
            assert isinstance(cache.authenticate(f"Bearer {tokens.by_principal['bob']}"), Principal)
            assert cache.status().fresh
            return elapsed

    elapsed = asyncio.run(scenario())
    assert elapsed <= interval + 0.3  # one interval, one load, polling jitter: well under 1 s


def test_a_loader_that_keeps_failing_fails_closed_then_recovers(
    loaded: LoadedSpec, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = issue_for_spec(loaded)
    failing = threading.Event()
    calls = {"n": 0}

    def loader() -> TokenSnapshot:
        calls["n"] += 1
        if failing.is_set():
            if calls["n"] % 2:
                raise VaultUnavailableError("vault: read api-tokens: unreachable")
            raise KeyError("a bug in a loader")
        return tokens.snapshot()

    settings = TokenCacheSettings(refresh_interval=0.02, max_staleness=0.15)
    cache = TokenCache(loader, policy.resolve_token, settings=settings)
    header = f"Bearer {tokens.by_principal['alice']}"

    async def scenario() -> None:
        async with cache:
            assert isinstance(cache.authenticate(header), Principal)
            failing.set()
            began = time.monotonic()
            while isinstance(cache.authenticate(header), Principal):
                await asyncio.sleep(0.005)
            assert time.monotonic() - began <= settings.max_staleness + 0.25
            denied = cache.authenticate(header)
            assert isinstance(denied, Denial) and denied.code is DenialCode.AUTH_UNAVAILABLE
            status = cache.status()
            assert status.failures >= 2 and not status.fresh and status.last_error
            failing.clear()
            while not isinstance(cache.authenticate(header), Principal):
                await asyncio.sleep(0.005)
            assert cache.status().failures == 0

    with caplog.at_level(logging.INFO, logger="enclave.gateway.auth"):
        asyncio.run(scenario())
    text = caplog.text
    assert "load failed" in text and "refreshed again" in text
    assert tokens.by_principal["alice"] not in text
    assert base64.b64encode(tokens.key).decode() not in text


def test_a_hung_loader_cannot_keep_a_stale_copy_alive(loaded: LoadedSpec, policy: Policy) -> None:
    tokens = issue_for_spec(loaded)
    release = threading.Event()
    first = {"done": False}

    def loader() -> TokenSnapshot:
        if first["done"]:
            release.wait(5)
        first["done"] = True
        return tokens.snapshot()

    settings = TokenCacheSettings(refresh_interval=0.02, max_staleness=0.1)
    cache = TokenCache(loader, policy.resolve_token, settings=settings)
    header = f"Bearer {tokens.by_principal['alice']}"

    async def scenario() -> None:
        try:
            async with cache:
                await asyncio.sleep(0.2)
                assert code_of(cache.authenticate(header)) is DenialCode.AUTH_UNAVAILABLE
        finally:
            release.set()

    asyncio.run(scenario())


def test_unchanged_records_keep_their_principal_and_reresolve_applies_policy(
    loaded: LoadedSpec, policy: Policy
) -> None:
    tokens = issue_for_spec(loaded)
    resolved: list[str] = []

    def resolve(record: Any) -> Principal | None:
        resolved.append(record.id)
        return policy.resolve_token(record)

    cache = TokenCache(tokens.snapshot, resolve, clock=Clock())
    cache.install(tokens.snapshot())
    first = len(tokens.records)
    assert len(resolved) == first
    tokens.issue("alice", ("analyst",))
    cache.install(tokens.snapshot())
    assert len(resolved) == first + 1  # only the new record
    cache.reresolve()
    assert len(resolved) == first + 1 + len(tokens.records)


class FakeKV:
    """The slice of hvac's KV v2 API that enclave.vault.tokens reads."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def list_secrets(self, path: str, mount_point: str) -> dict[str, Any]:
        assert path == "api-tokens" and mount_point == "enclave-gw-kv"
        return {"data": {"keys": sorted(self.tokens.records)}}

    def read_secret_version(
        self, path: str, mount_point: str, raise_on_deleted_version: bool
    ) -> dict[str, Any]:
        del mount_point, raise_on_deleted_version
        if path == "api-token-key":
            return {"data": {"data": {"key": base64.b64encode(self.tokens.key).decode()}}}
        token_id = path.removeprefix("api-tokens/")
        return {"data": {"data": self.tokens.records[token_id].to_data()}}


def test_the_vault_loader_reads_records_and_key(loaded: LoadedSpec, policy: Policy) -> None:
    tokens = issue_for_spec(loaded)
    client = SimpleNamespace(secrets=SimpleNamespace(kv=SimpleNamespace(v2=FakeKV(tokens))))
    load = vault_token_loader(client, EnclavePaths("gw"))
    snapshot = load()
    assert snapshot.key == tokens.key
    assert snapshot.records == tokens.records
    assert repr(tokens.key) not in repr(snapshot)
    cache = TokenCache(load, policy.resolve_token, clock=Clock())
    assert asyncio.run(cache.refresh())
    assert isinstance(cache.authenticate(f"Bearer {tokens.by_principal['carol']}"), Principal)
