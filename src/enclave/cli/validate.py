"""``enclave validate``: check spec files and summarise each valid one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from enclave.cli.console import err, out, print_json, print_problems
from enclave.errors import Problem, SpecError
from enclave.spec import load_spec
from enclave.spec.summary import summarize


def _human_summary(file: str, summary: dict[str, Any], warnings: int) -> None:
    console = out()
    models = ", ".join(
        f"{m['name']} ({m['runtime']}, {m['cpus']:g} cpu, {m['memory']})" for m in summary["models"]
    )
    gated = set(summary["approvalRequired"])
    purposes = ", ".join(p + ("*" if p in gated else "") for p in summary["permittedPurposes"])
    people = ", ".join(f"{n} ({'/'.join(a)})" for n, a in summary["principals"].items())
    kill = summary["shutdown"]
    note = f", {warnings} warning(s)" if warnings else ""
    console.print(
        f"[green]valid[/green] {escape(file)}: enclave [bold]{summary['name']}[/bold] "
        f"({summary['classification']}, {summary['backend']} backend{note})"
    )
    rows = [
        ("models", models),
        ("gateway", f"{summary['gateway']['listen']} x{summary['gateway']['replicas']}"),
        ("vault", summary["vault"]),
        ("purposes", (purposes or "none (nobody may query)") + ("  (* approval)" if gated else "")),
        ("prohibited", ", ".join(summary["prohibited"])),
        ("principals", people or "none (deny all)"),
        (
            "kill switch",
            f"heartbeat {kill['heartbeat']}, lease {kill['lease']}, auto-kill above "
            f"{kill['violationsPerMinute']} violations/min, {kill['resumeApprovals']} "
            "approvals to resume",
        ),
    ]
    for label, value in rows:
        console.print(f"  {label:<12} {value}", markup=False)


def validate(
    files: Annotated[list[Path], typer.Argument(help="enclave.yaml files to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems.")] = False,
) -> None:
    """Check spec files and every file they reference; report all problems with locations.

    Exit 0 when every file is valid (warnings allowed), 2 when any is invalid.
    """
    reports: list[dict[str, Any]] = []
    for file in files:
        problems: list[Problem]
        try:
            loaded = load_spec(file)
        except SpecError as exc:
            problems, summary = exc.problems, None
        else:
            problems, summary = loaded.warnings, summarize(loaded)
        reports.append(
            {
                "file": str(file),
                "valid": summary is not None,
                "problems": [p.as_dict() for p in problems],
                "summary": summary,
            }
        )
        if as_json:
            continue
        print_problems(problems)
        if summary is None:
            errors = sum(1 for p in problems if p.severity == "error")
            err().print(f"[red]invalid[/red] {escape(str(file))}: {errors} error(s)")
        elif not quiet:
            _human_summary(str(file), summary, len(problems))
    if as_json:
        print_json({"valid": all(r["valid"] for r in reports), "files": reports})
    if not all(r["valid"] for r in reports):
        raise typer.Exit(SpecError.exit_code)
