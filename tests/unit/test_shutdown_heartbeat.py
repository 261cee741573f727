"""The controller's heartbeat, against the gateway's real ControlChannel over mock transports."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import httpx
import pytest

from enclave.audit import AuditLog, Ed25519Signer
from enclave.errors import InputError
from enclave.gateway.control import ControlChannel
from enclave.gateway.state import ShutdownState
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind
from enclave.shutdown.controller import Controller, ControllerSettings
from enclave.shutdown.heartbeat import GatewayLink, Heartbeater, HeartbeatSettings
from enclave.shutdown.journal import Journal
from enclave.shutdown.state import StateMachine
from enclave.spec.model import Shutdown

KEY = secrets.token_bytes(32)
SETTINGS = HeartbeatSettings(interval=0.05, lease=0.5, timeout=0.1)


class Gateway:
    """A gateway's control endpoint: the real ControlChannel, optionally hanging."""

    def __init__(self, *, hang: bool = False, key: bytes = KEY) -> None:
        self.state = ShutdownState(1.0)
        self.channel = ControlChannel(self.state, key)
        self.accepted: list[ControlCommand] = []
        self.hang = hang

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/control"
        if self.hang:
            await asyncio.sleep(30)
        result = self.channel.handle(request.content, request.headers.get(SIGNATURE_HEADER))
        if isinstance(result, ControlCommand):
            self.accepted.append(result)
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(result.status, json=result.body())

    def link(self, url: str, settings: HeartbeatSettings = SETTINGS) -> GatewayLink:
        return GatewayLink(
            url, KEY, timeout=settings.request_timeout, transport=httpx.MockTransport(self.handle)
        )


async def _beat_for(heartbeater: Heartbeater, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeater.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 5)
    for link in heartbeater.links:
        await link.aclose()


def test_heartbeats_are_accepted_by_the_gateway_and_hold_its_lease() -> None:
    gateway = Gateway()
    heartbeater = Heartbeater([gateway.link("http://gw-a")], SETTINGS)
    asyncio.run(_beat_for(heartbeater, 0.4))

    assert len(gateway.accepted) >= 4  # every one fresh: issued strictly increases
    assert all(c.kind is ControlKind.HEARTBEAT for c in gateway.accepted)
    assert all(c.lease == SETTINGS.lease for c in gateway.accepted)
    issued = [c.issued_ns for c in gateway.accepted]
    assert issued == sorted(set(issued))
    assert gateway.state.check() is None
    stats = heartbeater.stats["http://gw-a"]
    assert (stats.missed, stats.consecutive_misses) == (0, 0)
    assert stats.sent == len(gateway.accepted)


def test_a_hanging_gateway_delays_no_other(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "enclave.shutdown.heartbeat")
    healthy, hanging = Gateway(), Gateway(hang=True)
    heartbeater = Heartbeater(
        [hanging.link("http://gw-hung"), healthy.link("http://gw-ok")], SETTINGS
    )
    asyncio.run(_beat_for(heartbeater, 0.5))

    assert len(healthy.accepted) >= 7  # about every 50 ms, as if the other were not there
    assert hanging.accepted == []
    stats = heartbeater.stats["http://gw-hung"]
    assert stats.missed >= 2
    assert stats.last_error == "timed out"
    assert "heartbeat to http://gw-hung missed (timed out; 1 in a row)" in caplog.text
    assert "gw-ok" not in caplog.text


def test_a_refused_heartbeat_is_logged_and_the_recovery_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "enclave.shutdown.heartbeat")
    gateway = Gateway(key=secrets.token_bytes(32))  # not the controller's key
    link = gateway.link("http://gw-a")
    heartbeater = Heartbeater([link], SETTINGS)

    async def scenario() -> None:
        refused = await heartbeater.beat(link)
        assert (refused.ok, refused.status) == (False, 401)
        assert refused.error == "HTTP 401 (invalid_api_key)"
        gateway.channel = ControlChannel(gateway.state, KEY)
        assert (await heartbeater.beat(link)).ok
        await link.aclose()

    asyncio.run(scenario())
    assert "heartbeat to http://gw-a missed (HTTP 401 (invalid_api_key); 1 in a row)" in (
        caplog.text
    )
    assert "heartbeat to http://gw-a accepted again after 1 miss(es)" in caplog.text


def test_an_unreachable_gateway_is_a_miss_not_an_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    link = GatewayLink("http://gw-a", KEY, transport=httpx.MockTransport(refuse))

    async def scenario() -> None:
        result = await link.send(ControlKind.HEARTBEAT, lease=1.0)
        assert (result.ok, result.status, result.error) == (False, None, "ConnectError")
        await link.aclose()

    asyncio.run(scenario())


def test_settings_come_from_the_spec_and_are_checked() -> None:
    settings = HeartbeatSettings.from_spec(
        Shutdown.model_validate({"heartbeat": "250ms", "lease": "2s"})
    )
    assert (settings.interval, settings.lease, settings.request_timeout) == (0.25, 2.0, 0.25)
    assert HeartbeatSettings(interval=5, lease=15).request_timeout == 1.0
    with pytest.raises(InputError, match="longer than the interval"):
        HeartbeatSettings(interval=1, lease=1)
    with pytest.raises(InputError, match="positive"):
        HeartbeatSettings(interval=0, lease=1)
    with pytest.raises(InputError, match="expected http"):
        GatewayLink("gw:8443", KEY)
    with pytest.raises(InputError, match="at least 32 bytes"):
        GatewayLink("http://gw", b"short")


def test_the_controller_heartbeats_each_gateway_once(tmp_path: Path) -> None:
    machine = StateMachine(tmp_path / "state.json", required=2, exclude_trigger=True)
    signer = Ed25519Signer.from_file(tmp_path / "audit.key", create=True)
    settings = ControllerSettings(heartbeat=SETTINGS)
    with AuditLog.open(tmp_path / "audit", enclave="demo", signer=signer) as audit_log:
        journal = Journal(audit_log)
        controller = Controller(
            "demo", ["http://a", "http://b/", "http://a"], KEY, settings,
            machine=machine, journal=journal,
        )  # fmt: skip
        assert [link.url for link in controller.links] == ["http://a", "http://b"]
        with pytest.raises(InputError, match="no gateway"):
            Controller("demo", [], KEY, settings, machine=machine, journal=journal)

        async def close() -> None:
            for link in controller.links:
                await link.aclose()

        asyncio.run(close())


def test_the_heartbeat_pauses_while_its_gate_is_closed() -> None:
    gateway = Gateway()
    gate = asyncio.Event()
    heartbeater = Heartbeater([gateway.link("http://gw-a")], SETTINGS, gate=gate)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeater.run(stop))
        await asyncio.sleep(0.2)
        assert gateway.accepted == []  # closed: no heartbeat at all
        gate.set()
        await asyncio.sleep(0.2)
        beats = len(gateway.accepted)
        assert beats >= 2
        gate.clear()
        await asyncio.sleep(0.2)
        assert len(gateway.accepted) <= beats + 1  # at most the one already under way
        stop.set()
        await asyncio.wait_for(task, 5)  # a stop ends it even while the gate is closed
        for link in heartbeater.links:
            await link.aclose()

    asyncio.run(scenario())
