"""``enclave incident``: list, show and export the incidents recorded in an audit log.

Incidents are read from the log's records (the index under ``<log>/incidents/`` only speeds
that up), so what these commands print is what the hash-chained, signed log says.
"""

from __future__ import annotations

import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from enclave.audit.incidents import (
    ActionResult,
    Incident,
    IncidentStatus,
    format_duration,
    format_seqs,
    list_incidents,
    load_incident,
    offset,
    short_time,
    to_json,
    to_markdown,
)
from enclave.cli.console import out, print_json
from enclave.errors import ConflictError, InputError

LogArg = Annotated[
    Path, typer.Argument(metavar="LOG", help="The audit log directory (or an evidence bundle).")
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The incident id (inc-YYYYMMDD-xxxxxx).")]


class ExportFormat(StrEnum):
    JSON = "json"
    MARKDOWN = "markdown"


def list_(
    log: LogArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    status: Annotated[
        IncidentStatus | None, typer.Option("--status", help="Only incidents with this status.")
    ] = None,
) -> None:
    """List the incidents of the audit log LOG, oldest first."""
    summaries = list_incidents(log, status=status)
    if as_json:
        print_json({"log": str(log), "incidents": [s.as_dict() for s in summaries]})
        return
    console = out()
    if not summaries:
        which = f"{status.value} " if status is not None else ""
        console.print(f"no {which}incidents in {log}", markup=False)
        return
    rows = [("ID", "SEVERITY", "STATUS", "OPENED", "TRIGGER", "SUMMARY")]
    rows += [
        (
            s.id,
            s.severity.value,
            s.status.value,
            short_time(s.opened),
            str(s.trigger),
            _one_line(s.summary),
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        console.print("  ".join([*cells, row[-1]]), markup=False)


def _one_line(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _print_incident(incident: Incident) -> None:
    console = out()
    lines = [
        f"{incident.id}  {incident.severity.value}  {incident.status.value}  "
        f"(enclave {incident.enclave})",
        f"  trigger     {incident.trigger}"
        + (f": {_one_line(incident.trigger.detail)}" if incident.trigger.detail else ""),
        f"  summary     {_one_line(incident.summary, 200)}",
        f"  opened      {short_time(incident.opened)}",
        f"  closed      {short_time(incident.closed) if incident.closed else '-'}",
        "  timeline",
    ]
    for entry in incident.timeline:
        result = ""
        if entry.result is not None:
            result = " [FAILED]" if entry.result is ActionResult.FAILED else " [ok]"
        took = f" ({format_duration(entry.duration_ms)})" if entry.duration_ms is not None else ""
        lines.append(
            f"    {offset(incident, entry):<11}  {short_time(entry.time)}  {entry.kind.value:<6}  "
            f"{entry.actor}: {_one_line(entry.text, 200)}{result}{took}  "
            f"evidence: {format_seqs(entry.evidence)}"
        )
    if incident.resolution:
        lines.append(f"  resolution  {_one_line(incident.resolution, 200)}")
    lines.append(
        f"  evidence    audit records {format_seqs(incident.evidence)} of log {incident.log_id}"
    )
    for line in lines:
        console.print(line, markup=False)


def show(
    log: LogArg,
    incident_id: IdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one incident of the audit log LOG: trigger, timeline with evidence, resolution."""
    incident = load_incident(log, incident_id)
    if as_json:
        print_json(to_json(incident))
    else:
        _print_incident(incident)


def _write_new(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``path`` atomically (owner-only); an existing file only with ``force``."""
    if path.is_dir():
        raise InputError(f"--output {path}: is a directory")
    if not path.parent.is_dir():
        raise InputError(f"--output {path}: {path.parent}: no such directory")
    exists = path.exists() or path.is_symlink()
    if exists and (path.is_symlink() or not path.is_file()):  # a device, a pipe, a link
        raise InputError(f"--output {path}: not a regular file; it is never replaced")
    if exists and not force:
        raise ConflictError(f"{path} already exists (use --force to overwrite)")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"--output {path}: cannot write it: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(
    log: LogArg,
    incident_id: IdArg,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="Report format.")
    ] = ExportFormat.MARKDOWN,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (0600) instead of stdout."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Export one incident as an assessor's report (Markdown) or as JSON.

    Refuses (exit 3) to overwrite an existing file unless --force is given.
    """
    incident = load_incident(log, incident_id)
    if fmt is ExportFormat.JSON:
        text = json.dumps(to_json(incident), indent=2) + "\n"
    else:
        text = to_markdown(incident)
    if output is None:
        typer.echo(text, nl=False)
        return
    _write_new(output, text.encode("utf-8"), force=force)
    out().print(f"wrote {output}", markup=False)


app = typer.Typer(
    name="incident",
    help="List, show and export the incidents recorded in an audit log.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("list")(list_)
app.command("show")(show)
app.command("export")(export)
