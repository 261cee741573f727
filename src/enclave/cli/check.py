"""``enclave check``: run the compliance baseline against a running enclave."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave.cli import args
from enclave.cli.console import err, out
from enclave.cli.context import state_dir
from enclave.compliance.model import Severity
from enclave.compliance.report import render_table, to_json
from enclave.compliance.reporters import to_html, to_junit, to_markdown, to_oscal, to_sarif
from enclave.compliance.runner import CheckSettings, check_enclave, sign_waivers
from enclave.errors import EnclaveError, InputError, ServiceError

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.compliance.model import Report

EXIT_FAILED = EnclaveError.exit_code
"""A check at or above --fail-on failed (1)."""
EXIT_UNVERIFIED = ServiceError.exit_code
"""A check at or above --fail-on could not be judged (5): Docker, Vault or a log unreachable."""


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    JUNIT = "junit"
    SARIF = "sarif"
    MARKDOWN = "markdown"
    OSCAL = "oscal"
    HTML = "html"


_WRITERS: dict[Format, Callable[[Report], str]] = {
    Format.JSON: to_json,
    Format.JUNIT: to_junit,
    Format.SARIF: to_sarif,
    Format.MARKDOWN: to_markdown,
    Format.OSCAL: to_oscal,
    Format.HTML: to_html,
}


class FailOn(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"
    NEVER = "never"


SpecOption = Annotated[
    Path | None,
    typer.Option("--spec", help="The spec under review (default: the one the gateway runs)."),
]
BaselineOption = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        help="Baseline directory or file (default: spec.compliance.baseline if it exists, "
        "else the baseline shipped with enclave).",
    ),
]


def check(
    name: Annotated[
        str,
        typer.Argument(help="The enclave's name (metadata.name).", callback=args.enclave_name),
    ],
    spec: SpecOption = None,
    baseline: BaselineOption = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="Output format: a terminal table, JSON, JUnit XML, SARIF 2.1.0, Markdown, "
            "OSCAL assessment-results JSON, or one self-contained HTML page.",
        ),
    ] = Format.TABLE,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the report to FILE instead of standard output (not with --format table).",
        ),
    ] = None,
    fail_on: Annotated[
        FailOn,
        typer.Option("--fail-on", help="Lowest severity whose failure makes the exit non-zero."),
    ] = FailOn.LOW,
    sign: Annotated[
        bool,
        typer.Option(
            "--sign-waivers",
            help="First sign the unsigned waivers in <state>/enclaves/NAME/waivers.yaml with "
            "the enclave's control key (needs the Vault admin).",
        ),
    ] = False,
) -> None:
    """Check the enclave against the hardening baseline; every result carries its evidence.

    Collects facts once (Docker, host firewall, host, Vault, spec, gateway, audit logs) and
    judges every check: pass, fail, error (could not be judged: never a pass), not-applicable,
    or waived (a failure under a valid signed waiver; always shown). Exit 0 when nothing at or
    above --fail-on failed; 1 when a check failed; 5 when a check could not be judged (takes
    precedence over 1); 2 for a bad spec, baseline or waivers file.
    """
    if output is not None and fmt is Format.TABLE:
        raise InputError("--output needs a file format (json, junit, sarif, markdown, oscal, html)")
    if output is not None:
        args.output_file(output, "--output")  # before the run, not after it
    settings = CheckSettings(name, state_dir(), spec=spec, baseline=baseline)
    if sign:
        signed = sign_waivers(settings)
        err().print(f"signed {len(signed)} waiver(s): {', '.join(signed) or '-'}", markup=False)
    report = check_enclave(settings)
    writer = _WRITERS.get(fmt)
    if writer is None:
        render_table(report, out())
    elif output is None:
        sys.stdout.write(writer(report))
    else:
        try:
            output.write_text(writer(report), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--output {output}: cannot write it: {exc.strerror or exc}") from None
        err().print(f"wrote the {fmt.value} report to {output}", markup=False)
    if fail_on is FailOn.NEVER:
        return
    threshold = Severity(fail_on.value)
    if report.erroring(threshold):
        raise typer.Exit(EXIT_UNVERIFIED)
    if report.failing(threshold):
        raise typer.Exit(EXIT_FAILED)
