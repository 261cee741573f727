"""The ``enclave`` Typer app and its process entry point.

``run()`` is the console script. It turns every :class:`~enclave.errors.EnclaveError` into one
line on stderr and the error's documented exit code; an unexpected exception is reported in one
line too (exit 70), with the traceback only under ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from enclave._version import __version__
from enclave.cli import check as check_cmd
from enclave.cli import controller as controller_cmd
from enclave.cli import enclaves as enclaves_cmd
from enclave.cli import gateway as gateway_cmd
from enclave.cli import init as init_cmd
from enclave.cli import monitor as monitor_cmd
from enclave.cli import schema as schema_cmd
from enclave.cli import validate as validate_cmd
from enclave.cli.audit import app as audit_app
from enclave.cli.context import CONTEXT, default_state_dir
from enclave.cli.images import app as images_app
from enclave.cli.incident import app as incident_app
from enclave.cli.logs import LogFormat, LogLevel, configure
from enclave.cli.runtime import app as runtime_app
from enclave.cli.token import app as token_app
from enclave.cli.vault import app as vault_app
from enclave.errors import EXIT_CODES, EXIT_INTERNAL, EnclaveError, InputError, SpecError

log = logging.getLogger(__name__)

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


class _State:
    debug = False


app = typer.Typer(
    name="enclave",
    help="Provision sandboxed, air-gapped model-serving enclaves and keep them honest.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("init")(init_cmd.init)
app.command("validate")(validate_cmd.validate)
app.command("schema")(schema_cmd.schema)
app.command("plan")(enclaves_cmd.plan)
app.command("up")(enclaves_cmd.up)
app.command("down")(enclaves_cmd.down)
app.command("status")(enclaves_cmd.status)
app.command("list")(enclaves_cmd.list_enclaves)
app.command("check")(check_cmd.check)
app.command("monitor")(monitor_cmd.monitor)
app.add_typer(audit_app, name="audit")
app.add_typer(incident_app, name="incident")
app.add_typer(vault_app, name="vault")
app.add_typer(token_app, name="token")
app.add_typer(runtime_app, name="runtime")
app.add_typer(gateway_cmd.app, name="gateway")
app.add_typer(controller_cmd.app, name="controller")
app.add_typer(images_app, name="images")
app.add_typer(gateway_cmd.approvals_app, name="approvals")
app.command("approve")(gateway_cmd.approve)
app.command("deny")(gateway_cmd.deny)
app.command("kill")(controller_cmd.kill)
app.command("resume")(controller_cmd.resume)
app.command("drill")(controller_cmd.drill)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"enclave {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="Log line format on stderr.")
    ] = LogFormat.TEXT,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Least severe level logged.")
    ] = LogLevel.WARNING,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of internal errors.")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="ENCLAVE_STATE_DIR",
            help="enclave's private state (embedded Vault, keys, audit logs). "
            "Default: /var/lib/enclave as root, else ~/.local/state/enclave.",
        ),
    ] = None,
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    configure(log_format, log_level)
    _State.debug = debug
    CONTEXT.state_dir = (state if state is not None else default_state_dir()).absolute()


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per error kind
    """Run the CLI with ``argv`` and return its exit code (never raises, never prints a trace)."""
    args = sys.argv[1:] if argv is None else argv
    _State.debug = "--debug" in args
    try:
        result = app(args=args, prog_name="enclave", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("enclave: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument, ...
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"enclave: error: {exc}", err=True)
        return int(getattr(exc, "exit_code", InputError.exit_code))
    except SpecError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        return exc.exit_code
    except EnclaveError as exc:
        typer.echo(f"enclave: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # the one place that turns bugs into exit 70
        log.debug("internal error", exc_info=True)
        if _State.debug:
            traceback.print_exc()
        typer.echo(f"enclave: internal error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_INTERNAL
    return result if isinstance(result, int) else 0


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
