"""Vault over a unix socket, against the harness's real OpenBao (its ``listener "unix"``).

Every way enclave reaches Vault takes a ``unix://`` address: connect, anonymous, AppRole login,
bootstrap material naming the socket and redeemed over it, the control key, token renewal, and
provisioning itself. Each enclave is torn down after its test.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from enclave.errors import InputError, VaultForbiddenError
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.client import VaultConnection, anonymous, connect, login_approle, translate
from enclave.vault.controlkey import CONTROL_KEY_BYTES, read_control_key
from enclave.vault.names import CONTROLLER, GATEWAY, EnclavePaths
from enclave.vault.provision import TOKEN_PERIOD, bootstrap, provision, redeem, teardown
from enclave.vault.renew import TokenRenewer
from support.openbao import OpenBaoServer
from support.workspace import Workspace

pytestmark = pytest.mark.vault


@pytest.fixture
def unix(openbao: OpenBaoServer) -> VaultConnection:
    return VaultConnection(openbao.socket_address)


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    made: list[Any] = []
    try:
        yield made
    finally:
        for client in made:
            client.adapter.close()


@pytest.fixture
def enclave(
    workspace: Workspace, unix: VaultConnection, openbao: OpenBaoServer, clients: list[Any]
) -> Iterator[LoadedSpec]:
    """An enclave provisioned over the socket with the root token; torn down after."""
    name = f"u{secrets.token_hex(4)}"
    loaded = load_spec(workspace.example(("name: demo", f"name: {name}"), name=f"{name}.yaml"))
    root = connect(unix, openbao.root_token)
    clients.append(root)
    provision(root, loaded)
    try:
        yield loaded
    finally:
        teardown(root, loaded.name)


def test_health_and_tokens_over_the_socket(
    unix: VaultConnection, openbao: OpenBaoServer, clients: list[Any]
) -> None:
    health = anonymous(unix)
    clients.append(health)
    with translate("health"):
        assert health.sys.read_health_status(method="GET")["sealed"] is False
    root = connect(unix, openbao.root_token)
    clients.append(root)
    assert root.auth.token.lookup_self()["data"]["policies"] == ["root"]
    with pytest.raises(VaultForbiddenError, match="vault: connect: "):
        connect(unix, "s.not-a-token")


def test_a_component_bootstraps_logs_in_and_renews_over_the_socket(
    enclave: LoadedSpec, unix: VaultConnection, openbao: OpenBaoServer, clients: list[Any]
) -> None:
    """What a gateway container does: the material names the socket, not the host's TCP."""
    tcp = VaultConnection(openbao.address)
    root = connect(tcp, openbao.root_token)
    clients.append(root)
    material = bootstrap(root, enclave, GATEWAY, tcp, address=unix.address)
    assert material.address == unix.address

    gateway = redeem(VaultConnection(material.address), material)
    clients.append(gateway)
    me = gateway.auth.token.lookup_self()["data"]
    assert me["period"] == TOKEN_PERIOD
    assert me["explicit_max_ttl"] == 0
    key = read_control_key(gateway, EnclavePaths(enclave.name))
    assert len(key) == CONTROL_KEY_BYTES

    with TokenRenewer.for_client(unix, gateway) as renewer:
        assert renewer.renew_once() == TOKEN_PERIOD
    assert not renewer.status().running

    # the controller logs in over the socket with its role-id and an unwrapped secret-id
    material = bootstrap(root, enclave, CONTROLLER, tcp)
    unwrapper = anonymous(unix)
    clients.append(unwrapper)
    unwrapper.token = material.wrapping_token
    secret_id = unwrapper.sys.unwrap()["data"]["secret_id"]
    controller = login_approle(unix, material.role_id, secret_id, material.auth_mount)
    clients.append(controller)
    assert read_control_key(controller, EnclavePaths(enclave.name)) == key


def test_bootstrap_refuses_a_relative_socket_address(
    enclave: LoadedSpec, openbao: OpenBaoServer, clients: list[Any]
) -> None:
    tcp = VaultConnection(openbao.address)
    root = connect(tcp, openbao.root_token)
    clients.append(root)
    with pytest.raises(InputError, match="absolute"):
        bootstrap(root, enclave, GATEWAY, tcp, address="unix://bao.sock")


def test_a_periodic_token_outlives_its_period_while_renewed(
    enclave: LoadedSpec, unix: VaultConnection, openbao: OpenBaoServer, clients: list[Any]
) -> None:
    """The real thing, with a 2 s period: renewed, it lives on; left alone, it expires."""
    root = connect(unix, openbao.root_token)
    clients.append(root)
    policy = EnclavePaths(enclave.name).policy(GATEWAY)
    created = root.auth.token.create_orphan(
        policies=[policy], no_default_policy=True, period="2s", renewable=True
    )
    token = str(created["auth"]["client_token"])
    holder = connect(unix, token)
    clients.append(holder)

    with TokenRenewer(unix, token, min_interval=0.2) as renewer:
        time.sleep(4.5)
        assert holder.auth.token.lookup_self()["data"]["ttl"] > 0
        assert renewer.status().renewals >= 3
    time.sleep(2.5)
    with pytest.raises(VaultForbiddenError), translate("lookup after the period"):
        holder.auth.token.lookup_self()
