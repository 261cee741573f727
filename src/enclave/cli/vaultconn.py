"""Which Vault an enclave's commands talk to, and with which admin credential.

``vault.address: embedded`` means the OpenBao enclave runs on this host; its admin client comes
from the state directory. Any other address is an external Vault: the admin token is read from a
file named by ``--vault-token-file`` (owner-only), never from an argument or the environment, so
it never shows up in ``ps`` or a shell history.

A long-running component (gateway, controller) logs in with its own identity instead:
:func:`component_session` redeems its bootstrap material (``--bootstrap FILE``, or ``-`` for
stdin, which is how a backend hands it to a container), and keeps the token renewed. The
material names where Vault is as the component sees it; ``--vault-address`` overrides that.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enclave.cli.context import CONTEXT, state_dir
from enclave.cli.secretfile import read_secret_file
from enclave.errors import InputError, SpecError, VaultError
from enclave.vault.client import VaultConnection, connect
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.pending import PendingRollbacks
from enclave.vault.provision import BootstrapMaterial, parse_bootstrap, read_bootstrap, redeem
from enclave.vault.renew import TokenRenewer

if TYPE_CHECKING:
    from collections.abc import Iterator

    import hvac

    from enclave.spec import LoadedSpec

EMBEDDED = "embedded"
STDIN = "-"
MAX_BOOTSTRAP = 64 * 1024

TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--vault-token-file",
        help="File (mode 0600) holding the admin token of an external Vault. "
        "Not used with the embedded Vault.",
        show_default=False,
    ),
]


def admin_client_for(loaded: LoadedSpec, token_file: Path | None) -> hvac.Client:
    """An admin client for the spec's Vault (checked: reachable, unsealed, token valid).

    Before it is handed out, the rollback of any provisioning that failed against this Vault
    while it was sealed or unreachable is finished (:mod:`enclave.vault.pending`).
    """
    vault = loaded.spec.vault
    if vault.address == EMBEDDED:
        if token_file is not None:
            raise InputError(
                "--vault-token-file is only for an external Vault; "
                f"enclave {loaded.name} uses the embedded one"
            )
        return EmbeddedVault(state_dir()).admin_client()  # it finishes its own rollbacks
    if token_file is None:
        raise InputError(
            f"enclave {loaded.name} uses the external Vault {vault.address}: "
            "pass its admin token with --vault-token-file FILE"
        )
    connection = external_connection(loaded)
    token = read_secret_file(token_file, "--vault-token-file")
    with naming(connection):
        client = connect(connection, token)
    try:  # the state dir as it is (no mkdir): an admin command on its own creates nothing there
        PendingRollbacks.external(CONTEXT.state_dir, connection.address).finish(client)
    except BaseException:
        client.adapter.close()
        raise
    return client


@contextlib.contextmanager
def naming(connection: VaultConnection) -> Iterator[None]:
    """Vault errors raised in the block name the Vault they came from (its address)."""
    try:
        yield
    except VaultError as exc:
        raise type(exc)(f"{exc} (Vault at {connection.address})") from None


def _ca_bundle(loaded: LoadedSpec) -> Path | None:
    """The spec's ``vault.caBundle`` file; a missing one is a located spec error."""
    vault = loaded.spec.vault
    ca_bundle = loaded.resolve(vault.ca_bundle) if vault.ca_bundle else None
    if ca_bundle is not None and not ca_bundle.is_file():
        where = ("spec", "vault", "caBundle")
        raise SpecError([loaded.problem(where, f"{ca_bundle}: no such file")])
    return ca_bundle


def external_connection(loaded: LoadedSpec) -> VaultConnection:
    """How the orchestrator reaches the spec's external Vault (its address, its CA bundle)."""
    return VaultConnection(loaded.spec.vault.address, _ca_bundle(loaded))


def pending_rollbacks(loaded: LoadedSpec) -> PendingRollbacks:
    """Where provisioning the spec's enclave journals what it creates, until it succeeds."""
    if loaded.spec.vault.address == EMBEDDED:
        return EmbeddedVault(state_dir()).pending_rollbacks()
    return PendingRollbacks.external(CONTEXT.state_dir, loaded.spec.vault.address)


@contextlib.contextmanager
def admin_session(loaded: LoadedSpec, token_file: Path | None) -> Iterator[hvac.Client]:
    """:func:`admin_client_for`, with the client's HTTP session closed afterwards."""
    client = admin_client_for(loaded, token_file)
    try:
        yield client
    finally:
        adapter = getattr(client, "adapter", None)
        if adapter is not None:
            adapter.close()


BootstrapOpt = Annotated[
    Path | None,
    typer.Option(
        "--bootstrap",
        help="This component's Vault bootstrap material: a file (mode 0600), or - to read it "
        "from stdin until EOF.",
        show_default=False,
    ),
]
VaultAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--vault-address",
        help="Where this process reaches Vault (e.g. unix:///run/enclave/vault/bao.sock), "
        "instead of the address in the bootstrap material. Only with --bootstrap.",
        show_default=False,
    ),
]


def load_material(bootstrap: Path) -> BootstrapMaterial:
    """Bootstrap material from a file, or from stdin when ``bootstrap`` is ``-``."""
    if str(bootstrap) != STDIN:
        try:
            return read_bootstrap(bootstrap)
        except InputError as exc:
            raise InputError(f"--bootstrap {exc}") from None
    body = sys.stdin.buffer.read(MAX_BOOTSTRAP + 1)
    if len(body) > MAX_BOOTSTRAP:
        raise InputError("--bootstrap -: more than 64 KiB on stdin; not bootstrap material")
    if not body.strip():
        raise InputError("--bootstrap -: nothing on stdin")
    return parse_bootstrap(body, "--bootstrap -")


def component_connection(loaded: LoadedSpec, address: str) -> VaultConnection:
    """How a component reaches the spec's Vault at ``address``: which CA it trusts there."""
    connection = VaultConnection(address)  # refuses a malformed unix:// address
    if connection.socket_path is not None or address.startswith("http://"):
        return connection
    vault = loaded.spec.vault
    if vault.address == EMBEDDED:
        ca = EmbeddedVault(state_dir()).tls.ca_cert
        if not ca.is_file():
            raise InputError(
                f"vault {address}: the embedded Vault's CA {ca} is not on this host "
                "(in a container, pass --vault-address unix:///run/enclave/vault/bao.sock)"
            )
        return VaultConnection(address, ca)
    return VaultConnection(address, _ca_bundle(loaded))


@dataclass(slots=True)
class ComponentSession:
    """A Vault client for a component, how it reaches Vault, and the renewer keeping its
    token alive (if any)."""

    client: Any
    connection: VaultConnection
    renewer: TokenRenewer | None = None

    @property
    def token(self) -> str:
        """The component's Vault token (for a client of its own on another thread)."""
        return str(self.client.token)


@contextlib.contextmanager
def component_session(
    loaded: LoadedSpec,
    component: str,
    *,
    bootstrap: Path | None,
    token_file: Path | None,
    vault_address: str | None,
) -> Iterator[ComponentSession]:
    """Log in as ``component`` (bootstrap material) or, for local runs, with an admin token.

    With material, the token is renewed from a background thread until the block exits; the
    client's HTTP session is closed afterwards either way.
    """
    if bootstrap is None:
        if vault_address is not None:
            raise InputError("--vault-address is only used with --bootstrap")
        with admin_session(loaded, token_file) as admin:
            if loaded.spec.vault.address == EMBEDDED:
                connection = EmbeddedVault(state_dir()).connection()
            else:
                connection = external_connection(loaded)
            yield ComponentSession(admin, connection)
        return
    if token_file is not None:
        raise InputError("give --bootstrap or --vault-token-file, not both")
    material = load_material(bootstrap)
    if (material.enclave, material.component) != (loaded.name, component):
        raise InputError(
            f"--bootstrap: the material is for {material.enclave}/{material.component}, "
            f"not {loaded.name}/{component}"
        )
    connection = component_connection(loaded, vault_address or material.address)
    with naming(connection):
        client = redeem(connection, material)
    try:
        renewer = TokenRenewer.for_client(connection, client).start()
        try:
            yield ComponentSession(client, connection, renewer)
        finally:
            renewer.stop()
    finally:
        client.adapter.close()
