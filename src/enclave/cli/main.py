"""The ``enclave`` Typer app and its process entry point.

``run()`` is the console script. It turns every :class:`~enclave.errors.EnclaveError` into one
line on stderr and the error's documented exit code; an unexpected exception is reported in one
line too (exit 70), with the traceback only under ``--debug``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from enclave._version import __version__
from enclave.cli.context import CONTEXT, default_state_dir
from enclave.cli.logs import LogFormat, LogLevel, configure
from enclave.errors import EXIT_CODES, EXIT_INTERNAL, EnclaveError, InputError, SpecError

log = logging.getLogger(__name__)

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


class _State:
    debug = False


_COMMANDS: tuple[tuple[str, str, str, bool], ...] = (
    # name, module under enclave.cli, attribute, whether it is a group of commands
    ("init", "init", "init", False),
    ("validate", "validate", "validate", False),
    ("schema", "schema", "schema", False),
    ("plan", "enclaves", "plan", False),
    ("up", "enclaves", "up", False),
    ("down", "enclaves", "down", False),
    ("status", "enclaves", "status", False),
    ("list", "enclaves", "list_enclaves", False),
    ("check", "check", "check", False),
    ("monitor", "monitor", "monitor", False),
    ("audit", "audit", "app", True),
    ("incident", "incident", "app", True),
    ("vault", "vault", "app", True),
    ("token", "token", "app", True),
    ("runtime", "runtime", "app", True),
    ("gateway", "gateway", "app", True),
    ("controller", "controller", "app", True),
    ("images", "images", "app", True),
    ("approvals", "gateway", "approvals_app", True),
    ("approve", "gateway", "approve", False),
    ("deny", "gateway", "deny", False),
    ("kill", "controller", "kill", False),
    ("resume", "controller", "resume", False),
    ("drill", "controller", "drill", False),
)
"""Every command, in the order ``enclave --help`` lists them. A module is imported only when a
command of it is registered: ``enclave check`` does not pay for importing the gateway's server,
the controller or the image builder (most of a cold start)."""

_NAMES = frozenset(name for name, *_ in _COMMANDS)
_VALUED_OPTIONS = frozenset({"--log-format", "--log-level", "--state-dir"})


def build_app(only: str | None = None) -> typer.Typer:
    """The ``enclave`` app with every command, or only the command ``only``."""
    app = typer.Typer(
        name="enclave",
        help="Provision sandboxed, air-gapped model-serving enclaves and keep them honest.",
        epilog=_EPILOG,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_global)
    for name, module, attribute, group in _COMMANDS:
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(f"enclave.cli.{module}"), attribute)
        if group:
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def command_of(args: list[str]) -> str | None:
    """The command ``args`` run (past the global options), or None: every command is needed
    (no command, ``--help``/``--version`` first, or an unknown one, to list them all)."""
    rest = iter(args)
    for arg in rest:
        if arg in _VALUED_OPTIONS:
            next(rest, None)
        elif arg in ("--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg if arg in _NAMES else None
    return None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"enclave {__version__}")
        raise typer.Exit(0)


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
        app = build_app(command_of(args))
        result = app(args=args, prog_name="enclave", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("enclave: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument, ...
        return _usage_error(exc)
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


def _usage_error(exc: typer.TyperException) -> int:
    """One line for a usage error (bad option, missing argument, bad value), with where to look.

    A group run without its command (``enclave audit``) still prints the group's help.
    """
    code = int(getattr(exc, "exit_code", InputError.exit_code))
    show = getattr(exc, "show", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and callable(show):
        show()
        return code
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    hint = f" (see '{command} --help')" if command else ""
    typer.echo(f"enclave: error: {message}{hint}", err=True)
    return code


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # ``python -m enclave.cli.main``, where the console script is absent
    run()
