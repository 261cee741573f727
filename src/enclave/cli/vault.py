"""``enclave vault``: the embedded OpenBao default (start, stop, status)."""

from __future__ import annotations

from typing import Annotated

import typer

from enclave.cli import vault_enclave
from enclave.cli.console import err, out, print_json
from enclave.cli.context import state_dir
from enclave.errors import VaultError
from enclave.vault.embedded import EmbeddedStatus, EmbeddedVault, EnclaveInventory

app = typer.Typer(
    help="Vault: the embedded OpenBao default (start, stop, status) and each enclave's "
    "identities (provision, teardown).",
    no_args_is_help=True,
)
app.command("provision")(vault_enclave.provision_command)
app.command("teardown")(vault_enclave.teardown_command)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _print_status(status: EmbeddedStatus) -> None:
    console = out()
    running = f"running (pid {status.pid})" if status.running else "not running"
    console.print(f"embedded vault: {running}", markup=False)
    console.print(f"address:        {status.address or '-'}", markup=False)
    console.print(f"socket:         {status.socket or '-'}", markup=False)
    console.print(f"ca:             {status.ca_cert}", markup=False)
    if status.running:
        console.print(f"initialized:    {_yes(status.initialized)}", markup=False)
        console.print(f"sealed:         {_yes(status.sealed)}", markup=False)
        console.print(f"version:        {status.version or 'unknown'}", markup=False)


def _enclaves(
    vault: EmbeddedVault, status: EmbeddedStatus
) -> tuple[dict[str, EnclaveInventory] | None, str]:
    """The provisioned enclaves, or None and why they could not be listed."""
    if not status.running or status.sealed is not False:
        return None, "the server is not running and unsealed"
    try:
        return vault.inventory(), ""
    except VaultError as exc:
        return None, str(exc)


@app.command("start")
def start() -> None:
    """Start the embedded Vault (initialise it on first use) and unseal it. Idempotent."""
    vault = EmbeddedVault(state_dir())
    status = vault.start()
    if status.bootstrapped:
        err().print(
            f"warning: initialised a new embedded Vault; its unseal keys are stored in "
            f"{vault.init_file} on this host. This is a single-host default: see "
            f"{vault.readme}",
            style="yellow",
            markup=False,
        )
    _print_status(status)


@app.command("stop")
def stop() -> None:
    """Stop the embedded Vault, if enclave started it. Idempotent."""
    pid = EmbeddedVault(state_dir()).stop()
    message = f"stopped the embedded vault (pid {pid})" if pid else "embedded vault: not running"
    out().print(message, markup=False)


@app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """Show whether the embedded Vault runs, is sealed, and which enclaves it holds."""
    vault = EmbeddedVault(state_dir())
    current = vault.status()
    enclaves, why = _enclaves(vault, current)
    if as_json:
        data = current.as_dict()
        data["enclaves"] = (
            None if enclaves is None else {n: e.as_dict() for n, e in enclaves.items()}
        )
        if enclaves is None:
            data["enclaves_unavailable"] = why
        print_json(data)
        return
    _print_status(current)
    console = out()
    if enclaves is None:
        console.print(f"enclaves:       unknown ({why})", markup=False)
        return
    if not enclaves:
        console.print("enclaves:       none", markup=False)
    for name, found in enclaves.items():
        console.print(f"enclave {name}:", markup=False)
        for label, items in (
            ("policies", found.policies),
            ("auth", found.auth_mounts),
            ("secrets", found.secret_mounts),
        ):
            if items:
                console.print(f"  {label + ':':<10} {', '.join(items)}", markup=False)
