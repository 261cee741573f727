"""Emergency revocation and break-glass sealing against a real OpenBao.

Each test makes its own enclave's two AppRole mounts (workload and control, as provisioning
does) and logs in with service tokens; sealing uses a throwaway server of its own, never the
shared one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from enclave.errors import (
    InputError,
    VaultForbiddenError,
    VaultSealedError,
)
from enclave.vault.client import VaultConnection, anonymous, connect, translate
from enclave.vault.names import CONTROLLER, GATEWAY, EnclavePaths
from enclave.vault.policies import controller_rules, render
from enclave.vault.revoke import (
    count_leases,
    login_prefix,
    revoke_accessor,
    revoke_all,
    revoke_prefix,
    seal,
)
from support import service_missing
from support.openbao import (
    OpenBaoServer,
    OpenBaoStartError,
    bao_binary,
    hvac_client,
    running_openbao,
    write_kv2_when_ready,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.vault

WORKLOAD_TOKENS = 5


@dataclass
class Login:
    token: str
    accessor: str


@dataclass
class Mounts:
    """An enclave's AppRole mounts on the shared server, with helpers to log in."""

    client: Any
    address: str
    paths: EnclavePaths

    def login(self, mount: str, role: str) -> Login:
        role_id = self.client.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        secret_id = self.client.auth.approle.generate_secret_id(role, mount_point=mount)["data"][
            "secret_id"
        ]
        auth = self.client.auth.approle.login(
            role_id, secret_id, mount_point=mount, use_token=False
        )["auth"]
        return Login(token=auth["client_token"], accessor=auth["accessor"])

    def workload(self) -> Login:
        return self.login(self.paths.workload_auth, GATEWAY)

    def controller(self) -> Login:
        return self.login(self.paths.control_auth, CONTROLLER)

    def connect(self, token: str) -> Any:
        return connect(VaultConnection(self.address), token)


def add_role(client: Any, mount: str, role: str, policies: list[str]) -> None:
    client.auth.approle.create_or_update_approle(
        role,
        mount_point=mount,
        token_type="service",
        token_policies=policies,
        token_ttl="1h",
        secret_id_num_uses=1,
    )


@pytest.fixture
def mounts(openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Mounts]:
    paths = EnclavePaths(f"t{secrets.token_hex(5)}")
    policy = paths.policy(CONTROLLER)
    openbao_client.sys.create_or_update_policy(policy, render(controller_rules(paths, seal=False)))
    created: list[str] = []
    try:
        for mount in (paths.workload_auth, paths.control_auth):
            openbao_client.sys.enable_auth_method("approle", path=mount)
            created.append(mount)
        add_role(openbao_client, paths.workload_auth, GATEWAY, ["default"])
        add_role(openbao_client, paths.control_auth, CONTROLLER, [policy])
        yield Mounts(openbao_client, openbao.address, paths)
    finally:
        for mount in created:  # disabling a mount revokes whatever it issued
            openbao_client.sys.disable_auth_method(path=mount)
        openbao_client.sys.delete_policy(policy)


def test_revoke_all_revokes_every_workload_token_at_once(mounts: Mounts) -> None:
    workloads = [mounts.workload() for _ in range(WORKLOAD_TOKENS)]
    controller = mounts.controller()
    for login in workloads:
        mounts.connect(login.token).adapter.close()

    # The controller revokes with its own least-privilege token, not the root token.
    controller_client = mounts.connect(controller.token)
    try:
        assert count_leases(controller_client, login_prefix(mounts.paths)) == WORKLOAD_TOKENS
        report = revoke_all(controller_client, mounts.paths)
        assert report.tokens == WORKLOAD_TOKENS
        assert 0 < report.seconds < 60

        for login in workloads:  # refused immediately after the call returned
            with pytest.raises(VaultForbiddenError):
                mounts.connect(login.token)
        with translate("controller lookup-self"):  # the controller's own token survived
            assert controller_client.auth.token.lookup_self()["data"]["accessor"] == (
                controller.accessor
            )

        assert count_leases(controller_client, login_prefix(mounts.paths)) == 0
        assert revoke_all(controller_client, mounts.paths).tokens == 0
    finally:
        controller_client.adapter.close()


def test_revoke_all_on_an_unused_mount_is_zero(mounts: Mounts, openbao_client: Any) -> None:
    assert revoke_all(openbao_client, mounts.paths).tokens == 0
    other = EnclavePaths(f"t{secrets.token_hex(5)}")  # nothing mounted at all
    assert revoke_all(openbao_client, other).tokens == 0


def test_revoke_all_leaves_other_enclaves_alone(mounts: Mounts, openbao_client: Any) -> None:
    mine = mounts.workload()
    other = EnclavePaths(mounts.paths.enclave + "x")  # a name that extends ours
    openbao_client.sys.enable_auth_method("approle", path=other.workload_auth)
    try:
        add_role(openbao_client, other.workload_auth, GATEWAY, ["default"])
        theirs = mounts.login(other.workload_auth, GATEWAY)
        assert revoke_all(openbao_client, mounts.paths).tokens == 1
        with pytest.raises(VaultForbiddenError):
            mounts.connect(mine.token)
        mounts.connect(theirs.token).adapter.close()
    finally:
        openbao_client.sys.disable_auth_method(path=other.workload_auth)


def test_revoke_accessor_revokes_one_token(mounts: Mounts, openbao_client: Any) -> None:
    target, bystander = mounts.workload(), mounts.workload()
    seconds = revoke_accessor(openbao_client, target.accessor)
    assert seconds > 0
    with pytest.raises(VaultForbiddenError):
        mounts.connect(target.token)
    mounts.connect(bystander.token).adapter.close()
    revoke_accessor(openbao_client, target.accessor)  # already gone: idempotent in OpenBao 2
    mounts.connect(bystander.token).adapter.close()
    for bad in ("", "a/../b"):
        with pytest.raises(InputError):
            revoke_accessor(openbao_client, bad)


def test_an_empty_prefix_is_refused(openbao_client: Any) -> None:
    for prefix in ("", "/", "//"):
        with pytest.raises(InputError):
            revoke_prefix(openbao_client, prefix)


@pytest.fixture
def throwaway_openbao() -> Iterator[OpenBaoServer]:
    """A server of this test's own: sealing the shared one would break every other test."""
    bao = bao_binary()
    if not bao.is_file():
        service_missing(f"OpenBao binary not found at {bao}")
    try:
        with running_openbao(bao) as server:
            yield server
    except OpenBaoStartError as exc:
        pytest.fail(f"throwaway OpenBao did not start: {exc}")


def test_seal_stops_every_read(throwaway_openbao: OpenBaoServer) -> None:
    server = throwaway_openbao
    connection = VaultConnection(server.address)
    with hvac_client(server.address, server.root_token) as client:
        client.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
        write_kv2_when_ready(client, "kv", "a", {"b": "c"})

        report = seal(client)
        assert 0 < report.seconds < 60

        with pytest.raises(VaultSealedError), translate("read after seal"):
            client.secrets.kv.v2.read_secret_version(
                path="a", mount_point="kv", raise_on_deleted_version=True
            )
        with pytest.raises(VaultSealedError):
            connect(connection, server.root_token)
        seal_status = anonymous(connection)
        try:
            with translate("seal status"):
                assert seal_status.sys.read_seal_status()["sealed"] is True
        finally:
            seal_status.adapter.close()
