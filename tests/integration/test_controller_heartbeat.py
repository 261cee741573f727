"""The real shutdown controller keeps a real gateway serving, and its death stops it.

Both processes log in with their own Vault identities (bootstrap material on stdin, as the
Docker backend hands it over), over the harness OpenBao's unix socket, read the control key
from Vault and renew their tokens; nobody passes either of them a key. The enclave's heartbeat
is 200 ms and its lease 1 s, so the dead-man switch is measured in a second, not in minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.cli.main import main
from enclave.spec import load_spec
from enclave.vault.client import VaultConnection, anonymous
from enclave.vault.names import CONTROLLER, GATEWAY
from enclave.vault.provision import bootstrap, write_bootstrap
from support.gateway_procs import (
    Enclave,
    Process,
    bootstrapped_gateway,
    provisioned_enclave,
    running_controller,
    running_runtime,
)
from support.openbao import OpenBaoServer

pytestmark = [pytest.mark.vault, pytest.mark.slow]

LEASE = 1.0
SLACK = 0.5
"""Scheduling and polling allowance on top of the lease (seconds)."""
HEADERS = {"x-enclave-purpose": "translation"}
CHAT = {"model": "assistant", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Process]:
    with running_runtime(tmp_path) as server:
        yield server


@pytest.fixture
def enclave(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Enclave]:
    with provisioned_enclave(
        tmp_path, openbao.address, openbao_client, heartbeat="200ms", lease="1s"
    ) as provisioned:
        yield provisioned


def _material(
    openbao: OpenBaoServer, client: Any, enclave: Enclave, component: str, **kw: Any
) -> Any:
    return bootstrap(
        client, load_spec(enclave.spec), component, VaultConnection(openbao.address), **kw
    )


def _wait_healthy(client: httpx.Client, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (answer := client.get("/healthz")).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)


def test_the_controller_keeps_the_gateway_serving_and_its_death_stops_it(
    tmp_path: Path,
    openbao: OpenBaoServer,
    openbao_client: Any,
    runtime: Process,
    enclave: Enclave,
) -> None:
    # the gateway's material names Vault as a container would see it: the socket
    gateway_material = _material(
        openbao, openbao_client, enclave, GATEWAY, address=openbao.socket_address
    )
    controller_material = _material(openbao, openbao_client, enclave, CONTROLLER)
    auth = {**HEADERS, "authorization": f"Bearer {enclave.token}"}
    with (
        bootstrapped_gateway(tmp_path, enclave, runtime, gateway_material) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10.0, trust_env=False) as client,
    ):
        never = client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert never.status_code == 503  # no controller yet: never leased
        assert never.json()["error"]["code"] == "enclave_shutdown"

        with running_controller(
            tmp_path,
            enclave,
            [gateway.url],
            controller_material,
            vault_address=openbao.socket_address,  # its material says TCP; it is told the socket
        ) as controller:
            _wait_healthy(client)
            until = time.monotonic() + 3 * LEASE  # served well past any single lease
            while time.monotonic() < until:
                health = client.get("/healthz")
                assert health.status_code == 200, health.text
                time.sleep(0.05)
            served = client.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert served.status_code == 200, served.text

            controller.process.kill()  # SIGKILL, by its own pid: no goodbye
            killed = time.monotonic()
            controller.process.wait(timeout=10)
            while (health := client.get("/healthz")).status_code == 200:
                assert time.monotonic() - killed < LEASE + SLACK, "still serving"
                time.sleep(0.02)
            denied_after = time.monotonic() - killed
            assert health.status_code == 503
            assert denied_after <= LEASE + SLACK
            answer = client.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "enclave_shutdown"
            assert "lease lapsed" in answer.json()["error"]["message"]

    assert gateway.process.returncode == 0, gateway.log_text()
    logs = gateway.log_text() + controller.log_text()
    assert "lease lapsed" in gateway.log_text()
    for material in (gateway_material, controller_material):
        assert material.wrapping_token not in logs
        assert material.role_id not in logs
    assert "vault: renewing the token every" in gateway.log_text()
    assert "vault: renewing the token every" in controller.log_text()


def test_sigterm_stops_the_controller_cleanly(
    tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any, enclave: Enclave
) -> None:
    material = _material(openbao, openbao_client, enclave, CONTROLLER)
    # no gateway listens there: every heartbeat is a miss, logged, and the controller goes on
    with running_controller(tmp_path, enclave, ["http://127.0.0.1:9"], material) as controller:
        time.sleep(1.0)
    assert controller.process.returncode == 0, controller.log_text()
    text = controller.log_text()
    assert "heartbeat to http://127.0.0.1:9 missed (ConnectError; 1 in a row)" in text
    assert "controller of enclave" in text and "stopped" in text


def test_material_for_another_component_is_refused_unspent(
    tmp_path: Path,
    openbao: OpenBaoServer,
    openbao_client: Any,
    enclave: Enclave,
    capsys: pytest.CaptureFixture[str],
) -> None:
    material = _material(openbao, openbao_client, enclave, GATEWAY)
    path = write_bootstrap(material, tmp_path / "boot" / "gateway.json")
    argv = ["--state-dir", str(enclave.state), "controller", "run", "--spec", str(enclave.spec)]
    code = main([*argv, "--gateway", "http://127.0.0.1:9", "--bootstrap", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"the material is for {enclave.name}/gateway, not {enclave.name}/controller" in err
    lookup = anonymous(VaultConnection(openbao.address))
    try:  # the wrapping token was never touched: still valid
        info = lookup.adapter.post(
            "/v1/sys/wrapping/lookup", json={"token": material.wrapping_token}
        )
        assert info["data"]["creation_path"].endswith(f"/role/{GATEWAY}/secret-id")
    finally:
        lookup.adapter.close()

    code = main([*argv, "--gateway", "http://127.0.0.1:9", "--vault-address", "unix:///x.sock"])
    assert code == 2
    assert "--vault-address is only used with --bootstrap" in capsys.readouterr().err
    assert json.loads(path.read_text())["component"] == GATEWAY
