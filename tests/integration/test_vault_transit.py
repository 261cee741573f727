"""The audit log signed by a Vault transit key: checkpoints verify offline with its public key,
an outage or a revoked token loses no record, and a new key (a re-provisioned enclave) continues
the log."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer, verify_log
from enclave.audit.reader import iter_records
from enclave.audit.signing import Signer, fingerprint, load_public_key
from enclave.errors import VaultError, VaultForbiddenError, VaultNotFoundError
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.client import VaultConnection, translate
from enclave.vault.names import AUDIT_SIGNER_KEY, GATEWAY, EnclavePaths, model_component
from enclave.vault.provision import bootstrap, provision, redeem, teardown
from enclave.vault.transit import TransitSigner, audit_signer
from support.openbao import hvac_client

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.openbao import OpenBaoServer
    from support.workspace import Workspace

pytestmark = pytest.mark.vault


@pytest.fixture
def enclave(workspace: Workspace, openbao_client: Any) -> Iterator[LoadedSpec]:
    name = f"signed-{secrets.token_hex(4)}"
    loaded = load_spec(workspace.example(("name: demo", f"name: {name}")))
    provision(openbao_client, loaded)
    try:
        yield loaded
    finally:
        teardown(openbao_client, name)


@pytest.fixture
def login(openbao: OpenBaoServer, openbao_client: Any, enclave: LoadedSpec) -> Iterator[Any]:
    """Logs in as a component of ``enclave`` (bootstrap + redeem); closes the clients after."""
    connection = VaultConnection(openbao.address)
    clients: list[Any] = []

    def as_component(component: str) -> Any:
        client = redeem(connection, bootstrap(openbao_client, enclave, component, connection))
        clients.append(client)
        return client

    try:
        yield as_component
    finally:
        for client in clients:
            client.adapter.close()


def test_transit_signer_is_a_signer_and_signs_verifiably(
    login: Any, enclave: LoadedSpec, openbao_client: Any
) -> None:
    paths = EnclavePaths(enclave.name)
    signer: Signer = TransitSigner(login(GATEWAY), paths.transit, AUDIT_SIGNER_KEY)
    raw = openbao_client.secrets.transit.read_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)
    public = Ed25519PublicKey.from_public_bytes(
        base64.b64decode(raw["data"]["keys"]["1"]["public_key"])
    )
    assert signer.key_id == fingerprint(public)
    assert load_public_key(signer.public_key_pem(), "transit") == public
    message = b"log-id 7 size 12 head abc"
    signature = signer.sign(message)
    public.verify(signature, message)  # a plain ed25519 signature, no Vault framing
    assert signature != signer.sign(b"another message")
    assert "TransitSigner(" in repr(signer)


def test_audit_log_signed_in_vault_verifies_with_the_pinned_public_key(
    login: Any, enclave: LoadedSpec, tmp_path: Path
) -> None:
    paths = EnclavePaths(enclave.name)
    signer = TransitSigner(login(GATEWAY), paths.transit, AUDIT_SIGNER_KEY)
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=3, checkpoint_interval=3600.0)
    with AuditLog.open(root, enclave=enclave.name, signer=signer, settings=settings) as log:
        for number in range(10):
            log.append(AuditEvent(actor="tester", action="test.append", reason=f"event {number}"))

    report = verify_log(root, public_key_pem=signer.public_key_pem())
    assert report.intact, report.summary()
    assert report.records == 10
    assert report.checkpoints >= 2
    assert report.key_id == signer.key_id
    assert report.last_checkpoint is not None
    assert report.last_checkpoint.key_id == signer.key_id
    assert report.unsigned == 0

    # pinned to another key, the same log does not verify
    stranger = Ed25519Signer.generate().public_key_pem()
    assert not verify_log(root, public_key_pem=stranger).intact


def test_the_private_key_never_leaves_vault(enclave: LoadedSpec, openbao_client: Any) -> None:
    paths = EnclavePaths(enclave.name)
    transit = openbao_client.secrets.transit
    with pytest.raises(VaultError), translate("export the signing key"):
        transit.export_key(name=AUDIT_SIGNER_KEY, key_type="signing-key", mount_point=paths.transit)
    with pytest.raises(VaultError), translate("back up the signing key"):
        transit.backup_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)


def test_model_servers_cannot_sign_and_a_missing_key_is_not_found(
    login: Any, enclave: LoadedSpec, openbao_client: Any
) -> None:
    paths = EnclavePaths(enclave.name)
    with pytest.raises(VaultForbiddenError):
        TransitSigner(login(model_component("assistant")), paths.transit, AUDIT_SIGNER_KEY)
    with pytest.raises(VaultNotFoundError):
        TransitSigner(openbao_client, paths.transit, "no-such-key")


def test_a_key_that_is_not_ed25519_is_refused(enclave: LoadedSpec, openbao_client: Any) -> None:
    paths = EnclavePaths(enclave.name)
    openbao_client.secrets.transit.create_key(
        name="aes", key_type="aes256-gcm96", mount_point=paths.transit
    )
    with pytest.raises(VaultError, match="not an ed25519 key"):
        TransitSigner(openbao_client, paths.transit, "aes")


# -- the signer the gateway and the controller use: audit_signer() ------------------------------


def event(number: int) -> AuditEvent:
    return AuditEvent(actor="tester", action="test.append", reason=f"event {number}")


def vault_public_key(client: Any, paths: EnclavePaths, version: int = 1) -> Ed25519PublicKey:
    """The transit key's public key as Vault describes it (what an assessor can read)."""
    raw = client.secrets.transit.read_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)
    data = raw["data"]["keys"][str(version)]["public_key"]
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data))


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_the_components_signer_signs_a_log_that_verifies_offline(
    over: str, login: Any, enclave: LoadedSpec, openbao: OpenBaoServer, tmp_path: Path
) -> None:
    """What the gateway does in its container (over the unix socket) and the controller on the
    host: its own token, a client of the signer's own, the public key recorded beside the log."""
    address = openbao.socket_address if over == "unix" else openbao.address
    connection = VaultConnection(address)
    gateway = login(GATEWAY)
    paths = EnclavePaths(enclave.name)
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=4, checkpoint_interval=3600.0)
    with (
        audit_signer(connection, gateway.token, paths) as signer,
        AuditLog.open(root, enclave=enclave.name, signer=signer, settings=settings) as log,
    ):
        for number in range(9):
            log.append(event(number))
    public = vault_public_key(gateway, paths)  # its policy may read the key's description
    assert load_public_key((root / "audit.pub").read_bytes(), "audit.pub") == public
    report = verify_log(root)  # offline: the files only
    assert report.intact, report.summary()
    assert (report.records, report.unsigned, report.key_id) == (9, 0, fingerprint(public))
    assert report.checkpoints == 3  # at 4, 8 and the final one at 9, in order
    pinned = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verify_log(root, public_key_pem=pinned).intact


def test_a_revoked_token_leaves_the_tail_unsigned_until_the_next_identity_signs_it(
    login: Any,
    enclave: LoadedSpec,
    openbao: OpenBaoServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The kill switch revokes the gateway's token: its log goes on recording (durably), says
    once that checkpoints cannot be signed, and a restarted gateway (new identity) signs it all.
    """
    caplog.set_level(logging.WARNING, logger="enclave.audit")
    connection = VaultConnection(openbao.address)
    paths = EnclavePaths(enclave.name)
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=0.05)
    first = login(GATEWAY)
    with (
        audit_signer(connection, first.token, paths) as signer,
        AuditLog.open(root, enclave=enclave.name, signer=signer, settings=settings) as log,
    ):
        log.append(event(0))
        until(lambda: verify_log(root).unsigned == 0)
        accessor = first.auth.token.lookup_self()["data"]["accessor"]
        with hvac_client(openbao.address, openbao.root_token) as root_client:
            root_client.auth.token.revoke_accessor(accessor)
        for number in range(1, 6):
            log.append(event(number))
        until(lambda: log.checkpoint_failures >= 2)
    report = verify_log(root)
    assert report.intact and (report.records, report.unsigned) == (6, 5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not be signed" in m and "permission denied" in m for m in messages)
    assert any("final checkpoint could not be signed" in m for m in messages)

    second = login(GATEWAY)
    with (
        audit_signer(connection, second.token, paths) as signer,
        AuditLog.open(root, enclave=enclave.name, signer=signer, settings=settings) as log,
    ):
        log.append(event(6))
    report = verify_log(root)
    assert report.intact and (report.records, report.unsigned) == (7, 0)


def test_a_re_provisioned_enclave_continues_its_log_with_the_new_key(
    login: Any, enclave: LoadedSpec, openbao: OpenBaoServer, openbao_client: Any, tmp_path: Path
) -> None:
    """``enclave down`` tears the transit key out of Vault; the next ``up`` makes a new one. The
    gateway's log (kept on the host) goes on: both keys are listed, the change is a record,
    and every checkpoint verifies with the key it names."""
    connection = VaultConnection(openbao.address)
    paths = EnclavePaths(enclave.name)
    root = tmp_path / "audit"
    with (
        audit_signer(connection, login(GATEWAY).token, paths) as signer,
        AuditLog.open(root, enclave=enclave.name, signer=signer) as log,
    ):
        log.append(event(0))
    old = vault_public_key(openbao_client, paths)
    teardown(openbao_client, enclave.name)
    provision(openbao_client, enclave)
    new = vault_public_key(openbao_client, paths)
    assert fingerprint(new) != fingerprint(old)
    with (
        audit_signer(connection, login(GATEWAY).token, paths) as signer,
        AuditLog.open(root, enclave=enclave.name, signer=signer, allow_key_change=True) as log,
    ):
        log.append(event(1))
    report = verify_log(root)
    assert report.intact, report.summary()
    assert report.key_id == fingerprint(new) and report.records == 3 and report.unsigned == 0
    changed = [r for r in iter_records(root) if r.action == "audit.signer-changed"]
    assert [r.details for r in changed] == [
        {"key_id": fingerprint(new), "previous_key_ids": [fingerprint(old)]}
    ]


def test_an_enclave_without_a_signer_key_says_how_to_get_one(
    openbao: OpenBaoServer, openbao_client: Any
) -> None:
    paths = EnclavePaths(f"none-{secrets.token_hex(4)}")
    connection = VaultConnection(openbao.address)
    openbao_client.sys.enable_secrets_engine("transit", path=paths.transit)
    try:
        with (
            pytest.raises(VaultNotFoundError, match=r"no audit signer key .* vault provision"),
            audit_signer(connection, openbao.root_token, paths),
        ):
            pass
    finally:
        openbao_client.sys.disable_secrets_engine(paths.transit)
