"""The token renewer's schedule, retries and give-up, with Vault's answers scripted."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from enclave.errors import VaultForbiddenError, VaultUnavailableError
from enclave.vault.client import VaultConnection
from enclave.vault.renew import TokenRenewer

CONNECTION = VaultConnection("http://127.0.0.1:1")


class Scripted(TokenRenewer):
    """A renewer whose Vault is a script: each renewal returns ``answer()``'s TTL or raises."""

    def __init__(self, ttl: float, answer: Callable[[int], float], **options: Any) -> None:
        super().__init__(CONNECTION, "s.token", **options)
        self.first_ttl = ttl
        self.answer = answer
        self.calls: list[float] = []
        self.called = threading.Event()

    def lookup(self) -> tuple[float, bool]:
        return self.first_ttl, True

    def renew_once(self) -> float:
        self.calls.append(time.monotonic())
        self.called.set()
        return self.answer(len(self.calls))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_it_renews_at_a_third_of_the_ttl_until_stopped() -> None:
    renewer = Scripted(0.3, lambda _: 0.3, min_interval=0.01).start()
    started = time.monotonic()
    try:
        wait_for(lambda: len(renewer.calls) >= 3)
        assert renewer.status().running
    finally:
        renewer.stop()
    gaps = [b - a for a, b in zip([started, *renewer.calls], renewer.calls, strict=False)]
    assert all(0.08 <= gap <= 0.5 for gap in gaps), gaps  # about 0.1 s each
    status = renewer.status()
    assert not status.running
    assert status.renewals == len(renewer.calls)
    assert (status.failures, status.gave_up, status.ttl) == (0, False, 0.3)


def test_vault_outages_are_retried_with_backoff_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "enclave.vault.renew")

    def flaky(call: int) -> float:
        if call <= 3:
            raise VaultUnavailableError("vault: renew the token: unreachable")
        return 60.0

    renewer = Scripted(0.6, flaky, min_interval=0.01, min_backoff=0.02, max_backoff=1.0)
    with renewer:
        wait_for(lambda: renewer.status().renewals == 1)
    calls = renewer.calls
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.02
    assert gaps[2] > gaps[0] * 2  # 0.02 s, 0.04 s, then 0.08 s: it backs off
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first failure; the next ones are counted, not repeated
    assert "token renewal failed (1 in a row" in warnings[0].getMessage()
    assert "token renewed again after 3 failed attempt(s)" in caplog.text
    assert "s.token" not in caplog.text


def test_backoff_never_sleeps_past_half_the_ttl_left() -> None:
    renewer = Scripted(10, lambda _: 10, min_backoff=1, max_backoff=30)
    assert renewer._failed("x", 100) == 1
    assert renewer._failed("x", 100) == 2
    assert renewer._failed("x", 3) == 1.5
    assert renewer._failed("x", -1) == 8  # expired already: Vault's refusal will end it


def test_a_refusal_is_final(caplog: pytest.LogCaptureFixture) -> None:
    def revoked(_: int) -> float:
        raise VaultForbiddenError("vault: renew the token: permission denied")

    renewer = Scripted(0.1, revoked, min_interval=0.01).start()
    wait_for(lambda: renewer.status().gave_up)
    wait_for(lambda: not renewer.status().running)
    renewer.stop()
    assert len(renewer.calls) == 1
    assert "no longer renewed" in caplog.text
    assert renewer.status().last_error == "vault: renew the token: permission denied"


def test_a_token_at_its_maximum_ttl_is_left_alone() -> None:
    renewer = Scripted(0.3, lambda _: 0.005, min_interval=0.01).start()
    wait_for(lambda: not renewer.status().running)
    renewer.stop()
    assert len(renewer.calls) == 1


def test_tokens_without_a_ttl_need_no_renewer() -> None:
    renewer = Scripted(0, lambda _: 0)
    with renewer:
        assert not renewer.status().running
    assert renewer.calls == []
    with pytest.raises(VaultForbiddenError, match="holds no token"):
        TokenRenewer.for_client(CONNECTION, SimpleNamespace(token=None))
