"""``enclave token``: issue, list and revoke the API tokens people use at the gateway.

A token is bound to a principal of the spec and to that principal's roles when it is issued.
It is printed once, on stdout; Vault keeps only a keyed hash of it. ``token revoke SPEC ID``
revokes one token, ``token revoke SPEC --principal NAME`` every token of a principal (one line
per token revoked, then the count; ``--json`` for records).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave.cli.console import err, out, print_json
from enclave.cli.vaultconn import TokenFileOpt, admin_session
from enclave.errors import InputError, NotFoundError
from enclave.spec import load_spec
from enclave.spec.units import format_duration, parse_duration
from enclave.vault.names import EnclavePaths
from enclave.vault.tokens import (
    PREFIX,
    check_token_id,
    issue,
    list_tokens,
    revoke_principal,
    revoke_token,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from enclave.spec import LoadedSpec, Principal
    from enclave.vault.tokens import TokenInfo

SpecArg = Annotated[Path, typer.Argument(metavar="SPEC", help="The enclave spec file.")]


def _principal(loaded: LoadedSpec, name: str) -> Principal:
    principals = loaded.spec.rbac.principals
    for principal in principals:
        if principal.name == name:
            return principal
    known = ", ".join(p.name for p in principals) or "none"
    raise InputError(
        f"--principal: {name!r} is not a principal of enclave {loaded.name} (known: {known})"
    )


def _ttl(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InputError(f"--ttl: {exc}") from None


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "never"


def issue_(
    spec: SpecArg,
    principal: Annotated[
        str, typer.Option("--principal", "-p", help="Who the token is for (a spec principal).")
    ],
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Lifetime, e.g. 12h or 30d (at most a year). Default: none."),
    ] = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Issue an API token for PRINCIPAL, bound to their roles in SPEC; print it once."""
    loaded = load_spec(spec)
    who = _principal(loaded, principal)
    lifetime = _ttl(ttl)
    with admin_session(loaded, token_file) as client:
        issued = issue(client, EnclavePaths(loaded.name), who.name, who.roles, ttl=lifetime)
    info = issued.info
    until = (
        f"expires {_when(info.expires)} ({format_duration(lifetime)})" if lifetime else "no expiry"
    )
    err().print(
        f"warning: this API token will not be shown again; store it now "
        f"(id {info.id}, principal {info.principal}, roles {','.join(info.roles)}, {until})",
        style="yellow",
        markup=False,
    )
    typer.echo(issued.token)


def list_(
    spec: SpecArg,
    principal: Annotated[
        str | None, typer.Option("--principal", "-p", help="Only this principal's tokens.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    token_file: TokenFileOpt = None,
) -> None:
    """List the API tokens of SPEC's enclave (ids and bindings; never the tokens)."""
    loaded = load_spec(spec)
    with admin_session(loaded, token_file) as client:
        tokens = list_tokens(client, EnclavePaths(loaded.name), principal)
    in_spec = {p.name for p in loaded.spec.rbac.principals}
    now = datetime.now(UTC)
    if as_json:
        print_json(
            {
                "enclave": loaded.name,
                "tokens": [
                    {
                        **t.as_dict(),
                        "expired": t.expired(now),
                        "principalInSpec": t.principal in in_spec,
                    }
                    for t in tokens
                ],
            }
        )
        return
    if not tokens:
        whose = f" for {principal}" if principal else ""
        out().print(f"no API tokens{whose} in enclave {loaded.name}", markup=False)
        return
    _print_table(tokens, in_spec, now)


def _print_table(tokens: list[TokenInfo], in_spec: set[str], now: datetime) -> None:
    rows = [("ID", "PRINCIPAL", "ROLES", "CREATED", "EXPIRES")]
    for t in tokens:
        who = t.principal if t.principal in in_spec else f"{t.principal} (not in spec)"
        expires = _when(t.expires) + (" (expired)" if t.expired(now) else "")
        rows.append((t.id, who, ",".join(t.roles), _when(t.created), expires))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    console = out()
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        console.print("  ".join([*cells, row[-1]]), markup=False)


def revoke(
    spec: SpecArg,
    token_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[TOKEN_ID]",
            help="The token's id (as `token list` shows). Or give --principal instead.",
            show_default=False,
        ),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            "-p",
            help="Revoke every API token of this principal (whether or not still in the spec).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    token_file: TokenFileOpt = None,
) -> None:
    """Revoke the API token TOKEN_ID, or every token of --principal, of SPEC's enclave.

    A revoked token's record is deleted from Vault; gateways refuse it within a second.
    """
    if token_id is not None and principal is not None:
        raise InputError("give a TOKEN_ID or --principal NAME, not both")
    if token_id is None and principal is None:
        raise InputError(
            "give a TOKEN_ID, or --principal NAME to revoke every token of that principal"
        )
    if token_id is not None and token_id.startswith(PREFIX):
        raise InputError(
            "TOKEN_ID: that is a whole API token; pass only its id (see `enclave token list`)"
        )
    if token_id is not None:
        try:
            check_token_id(token_id)
        except InputError as exc:
            raise InputError(f"TOKEN_ID: {exc}") from None
    loaded = load_spec(spec)
    paths = EnclavePaths(loaded.name)
    with admin_session(loaded, token_file) as client:
        if token_id is not None:
            info = revoke_token(client, paths, token_id)
            who, revoked = info.principal, [info]
        else:
            assert principal is not None  # noqa: S101 - checked above; for the type checker
            who, revoked = principal, list(revoke_principal(client, paths, principal).revoked)
    in_spec = {p.name for p in loaded.spec.rbac.principals}
    if not revoked and who not in in_spec:
        known = ", ".join(sorted(in_spec)) or "none"
        raise NotFoundError(
            f"--principal: {who!r} holds no API tokens in enclave {loaded.name} and is not a "
            f"principal of its spec (known: {known})"
        )
    if as_json:
        print_json(
            {
                "enclave": loaded.name,
                "principal": who,
                "count": len(revoked),
                "revoked": [t.as_dict() for t in revoked],
            }
        )
        return
    console = out()
    for t in revoked:
        console.print(
            f"revoked API token {t.id} of {t.principal} (roles {','.join(t.roles)}, "
            f"created {_when(t.created)})",
            markup=False,
        )
    if principal is not None:
        console.print(
            f"revoked {len(revoked)} API token(s) of {who} in enclave {loaded.name}"
            + ("" if revoked else ": none held"),
            markup=False,
        )


app = typer.Typer(
    name="token",
    help="Issue, list and revoke people's API tokens (shown once, stored as keyed hashes).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("issue")(issue_)
app.command("list")(list_)
app.command("revoke")(revoke)
