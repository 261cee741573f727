"""``enclave vault provision|teardown SPEC``: an enclave's Vault identities, from its spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from enclave.cli.console import out, print_json
from enclave.cli.vaultconn import TokenFileOpt, admin_session, pending_rollbacks
from enclave.spec import load_spec
from enclave.vault.provision import provision, teardown

SpecArg = Annotated[Path, typer.Argument(help="The enclave.yaml whose Vault objects to manage.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def provision_command(
    spec: SpecArg, vault_token_file: TokenFileOpt = None, as_json: JsonOpt = False
) -> None:
    """Create (or bring up to date) the enclave's mounts, policies and AppRoles. Idempotent.

    On failure, everything this run created is removed again; if Vault is sealed or gone by
    then, at the next command that connects to it once it is back.
    """
    loaded = load_spec(spec)
    with admin_session(loaded, vault_token_file) as client:
        result = provision(client, loaded, pending=pending_rollbacks(loaded))
    if as_json:
        print_json(
            {
                "enclave": result.enclave,
                "components": list(result.components),
                "created": list(result.created),
                "updated": list(result.updated),
                "seconds": round(result.seconds, 3),
            }
        )
        return
    console = out()
    change = (
        f"created {len(result.created)}, updated {len(result.updated)}"
        if result.changed
        else "already up to date"
    )
    console.print(
        f"enclave {result.enclave}: {change} in {result.seconds:.2f} s; identities: "
        + ", ".join(result.components),
        markup=False,
    )


def teardown_command(
    spec: SpecArg, vault_token_file: TokenFileOpt = None, as_json: JsonOpt = False
) -> None:
    """Remove the enclave's mounts, policies, AppRoles and with them its tokens. Idempotent."""
    loaded = load_spec(spec)
    with admin_session(loaded, vault_token_file) as client:
        report = teardown(client, loaded.name)
    if as_json:
        print_json(
            {
                "enclave": report.enclave,
                "policies": report.policies,
                "auth_mounts": report.auth_mounts,
                "mounts": report.mounts,
            }
        )
        return
    out().print(f"enclave {report.enclave}: removed {report.removed} object(s)", markup=False)
