"""Which Vault an enclave's commands talk to, and with which admin credential.

``vault.address: embedded`` means the OpenBao enclave runs on this host; its admin client comes
from the state directory. Any other address is an external Vault: the admin token is read from a
file named by ``--vault-token-file`` (owner-only), never from an argument or the environment, so
it never shows up in ``ps`` or a shell history.
"""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave.cli.context import state_dir
from enclave.errors import InputError
from enclave.vault.client import VaultConnection, connect
from enclave.vault.embedded import EmbeddedVault

if TYPE_CHECKING:
    from collections.abc import Iterator

    import hvac

    from enclave.spec import LoadedSpec

EMBEDDED = "embedded"
MAX_TOKEN_FILE = 64 * 1024

TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--vault-token-file",
        help="File (mode 0600) holding the admin token of an external Vault. "
        "Not used with the embedded Vault.",
        show_default=False,
    ),
]


def read_token_file(path: Path) -> str:
    """The token in ``path``; refuses a file others can read, or an empty one."""
    what = f"--vault-token-file {path}"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what}: not a regular file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise InputError(f"{what}: readable by others (run: chmod 600 {path})")
        if info.st_size > MAX_TOKEN_FILE:
            raise InputError(f"{what}: too large for a token file")
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"{what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what}: not a text file") from None
    if not token or any(c.isspace() for c in token):
        raise InputError(f"{what}: expected exactly one token")
    return token


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
    return connect(VaultConnection(vault.address, ca_bundle), read_token_file(token_file))


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
