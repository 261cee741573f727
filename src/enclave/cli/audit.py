"""``enclave audit``: verify, read and export a tamper-evident audit log."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from enclave.audit.export import export_bundle, verify_path
from enclave.audit.reader import (
    Filters,
    parse_seq_range,
    parse_when,
    search,
    tail,
    to_json_line,
)
from enclave.audit.record import AuditRecord, Decision
from enclave.cli.console import out, print_json
from enclave.errors import InputError, IntegrityError

app = typer.Typer(help="Verify, read and export an audit log.", no_args_is_help=True)

LogArg = Annotated[Path, typer.Argument(help="The audit log directory (or an evidence bundle).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


MAX_KEY_FILE = 64 * 1024
"""A PEM public key is a few hundred bytes; a file larger than this is not one."""


def _read_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        with path.open("rb") as handle:  # bounded: a device or a pipe may never end
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"--key {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise InputError(f"--key {path}: larger than {MAX_KEY_FILE} bytes; not a PEM public key")
    return data


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_when(text)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


@app.command("verify")
def verify(
    log: LogArg,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Pin the checkpoint signer's public key (PEM)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every hash link, sequence, segment, checkpoint signature and the tail.

    Exit 0 only when the log is intact; 6 when it was tampered with or is damaged.
    """
    report = verify_path(log, public_key_pem=_read_key(key))
    if as_json:
        print_json(report.as_dict())
    else:
        console = out()
        console.print(report.summary(), markup=False)
        for note in report.notes:
            console.print(f"note: {note}", markup=False)
    if not report.intact:
        raise typer.Exit(IntegrityError.exit_code)


def _line(record: AuditRecord) -> str:
    fields = [f"{record.seq:>8}", record.time, record.actor, record.action, record.decision.value]
    fields += [f"{k}={v}" for k in ("purpose", "model") if (v := getattr(record, k))]
    if record.reason:
        fields.append(repr(record.reason))
    return "  ".join(fields)


def _print(records: list[AuditRecord], as_json: bool) -> None:
    if as_json:
        for record in records:
            typer.echo(to_json_line(record))
        return
    console = out()
    for record in records:
        console.print(_line(record), markup=False)


@app.command("tail")
def tail_command(
    log: LogArg,
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="How many.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Print the last records (JSON lines with --json)."""
    _print(tail(log, count), as_json)


@app.command("search")
def search_command(
    log: LogArg,
    actor: Annotated[str | None, typer.Option(help="Exact actor.")] = None,
    action: Annotated[
        str | None,
        typer.Option(help="Exact action, or a prefix ending in '*' (e.g. 'shutdown.*')."),
    ] = None,
    decision: Annotated[Decision | None, typer.Option(help="Decision.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="ISO-8601 time or an age like 2h."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="ISO-8601 time or an age like 10m."),
    ] = None,
    seq: Annotated[
        str | None,
        typer.Option(help="Sequence number or range: 42, 40-50 or 40- (evidence lookup)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Print records matching every filter given, oldest first."""
    try:
        first_seq, last_seq = parse_seq_range(seq) if seq is not None else (1, None)
    except InputError as exc:
        raise InputError(f"--seq: {exc}") from None
    start, end = _when(since, "--since"), _when(until, "--until")
    if start is not None and end is not None and start > end:
        raise InputError(f"--since {since} is later than --until {until}: nothing can match")
    filters = Filters(
        first_seq=first_seq,
        last_seq=last_seq,
        actor=actor,
        action=action,
        decision=decision,
        since=start,
        until=end,
    )
    _print(search(log, filters, limit=limit), as_json)


@app.command("export")
def export_command(
    log: LogArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="New bundle directory.")],
) -> None:
    """Write a self-contained evidence bundle that verifies offline (`enclave audit verify`)."""
    info = export_bundle(log, output)
    out().print(
        f"exported {info.records} records ({info.files} files, {info.bytes} bytes) to "
        f"{info.path}; verify with: enclave audit verify {info.path} --key <public key>",
        markup=False,
    )
