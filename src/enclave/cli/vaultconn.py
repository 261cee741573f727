"""Which Vault an enclave's commands talk to, and with which admin credential.

``vault.address: embedded`` means the OpenBao enclave runs on this host; its admin client comes
from the state directory. Any other address is an external Vault: the admin token is read from a
file named by ``--vault-token-file`` (owner-only), never from an argument or the environment, so
it never shows up in ``ps`` or a shell history.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave.cli.context import state_dir
from enclave.cli.secretfile import read_secret_file
from enclave.errors import InputError
from enclave.vault.client import VaultConnection, connect
from enclave.vault.embedded import EmbeddedVault

if TYPE_CHECKING:
    from collections.abc import Iterator

    import hvac

    from enclave.spec import LoadedSpec

EMBEDDED = "embedded"

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
    """An admin client for the spec's Vault (checked: reachable, unsealed, token valid)."""
    vault = loaded.spec.vault
    if vault.address == EMBEDDED:
        if token_file is not None:
            raise InputError(
                "--vault-token-file is only for an external Vault; "
                f"enclave {loaded.name} uses the embedded one"
            )
        return EmbeddedVault(state_dir()).admin_client()
    if token_file is None:
        raise InputError(
            f"enclave {loaded.name} uses the external Vault {vault.address}: "
            "pass its admin token with --vault-token-file FILE"
        )
    ca_bundle = loaded.resolve(vault.ca_bundle) if vault.ca_bundle else None
    if ca_bundle is not None and not ca_bundle.is_file():
        raise InputError(f"spec.vault.caBundle: {ca_bundle}: no such file")
    return connect(
        VaultConnection(vault.address, ca_bundle),
        read_secret_file(token_file, "--vault-token-file"),
    )


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
