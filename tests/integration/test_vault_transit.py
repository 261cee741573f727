"""The audit log signed by a Vault transit key: checkpoints verify offline with its public key."""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer, verify_log
from enclave.audit.signing import Signer, fingerprint, load_public_key
from enclave.errors import VaultError, VaultForbiddenError, VaultNotFoundError
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.client import VaultConnection, translate
from enclave.vault.names import AUDIT_SIGNER_KEY, GATEWAY, EnclavePaths, model_component
from enclave.vault.provision import bootstrap, provision, redeem, teardown
from enclave.vault.transit import TransitSigner

if TYPE_CHECKING:
    from collections.abc import Iterator
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
