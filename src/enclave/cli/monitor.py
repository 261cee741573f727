"""``enclave monitor``: the compliance baseline on a schedule, drift reported to the controller.

The work is :mod:`enclave.compliance.monitor`'s; this module parses the options, takes the
enclave's monitor lock, serves the metrics, owns SIGTERM/SIGINT and prints one line per run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave import lifecycle
from enclave.cli import args
from enclave.cli.check import BaselineOption, SpecOption
from enclave.cli.context import CONTEXT
from enclave.compliance.drift import load_accepted
from enclave.compliance.metrics import MonitorMetrics, serve_metrics
from enclave.compliance.monitor import (
    Monitor,
    MonitorSettings,
    RunOutcome,
    hold_monitor_lock,
    monitor_dir,
)
from enclave.compliance.runner import CheckSettings, bundled_spec
from enclave.errors import (
    AuditError,
    EnclaveError,
    InputError,
    NotFoundError,
    ServiceError,
)
from enclave.spec import load_spec
from enclave.spec.units import format_duration, parse_duration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

EXIT_DRIFT = EnclaveError.exit_code
"""--once: drift was found and reported to the controller (1)."""
EXIT_NOT_REPORTED = ServiceError.exit_code
"""--once: drift was found but the controller could not be told (5)."""
DEFAULT_METRICS_HOST = "127.0.0.1"


def _interval(text: str | None, spec: Path | None, state: Path, name: str) -> timedelta:
    """--interval, else the spec's ``compliance.interval`` (the one under review), else 60s."""
    if text is not None:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise InputError(f"--interval: {exc}") from None
    path = spec
    if path is None:
        try:
            path = bundled_spec(state, name)
        except InputError:
            return timedelta(seconds=60)
    try:
        return load_spec(path).spec.compliance.interval
    except EnclaveError:
        if spec is not None:
            raise  # the user's file: a bad one is their input error
        return timedelta(seconds=60)  # the run reports a broken bundle as errors


def _address(text: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1), ``IP:PORT`` or ``[IPv6]:PORT``; port 0 takes a free one."""
    hint = "use PORT, IP:PORT or [IPv6]:PORT, e.g. 127.0.0.1:9464"
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
    elif ":" in raw:
        host, sep, port = raw.rpartition(":")
    else:
        host, sep, port = DEFAULT_METRICS_HOST, ":", raw
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InputError(f"--metrics-address: invalid address {text!r} ({hint})")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InputError(f"--metrics-address: {host!r} is not an IP address ({hint})") from None
    return host, int(port)


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the run under way finishes first)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _print(outcome: RunOutcome, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"summary": outcome.summary(), **outcome.as_dict()}))
    else:
        typer.echo(outcome.summary())


def _exit_code(outcome: RunOutcome) -> int:
    if outcome.error:
        return outcome.error_code or EnclaveError.exit_code
    if outcome.controller_error:
        return EXIT_NOT_REPORTED
    if outcome.audit_error:
        return AuditError.exit_code
    return EXIT_DRIFT if outcome.outcome == "drift" else 0


def monitor(
    name: Annotated[
        str,
        typer.Argument(help="The enclave's name (metadata.name).", callback=args.enclave_name),
    ],
    interval: Annotated[
        str | None,
        typer.Option(
            "--interval",
            help="Time from one run's start to the next (30s, 5m, 1h). Default: the spec's "
            "compliance.interval (60s).",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run once and exit (for cron and scripts).")
    ] = False,
    accept: Annotated[
        bool,
        typer.Option(
            "--accept",
            help="Run once and make the result the accepted one that later runs are compared "
            "with (after a deliberate change, a fix or a waiver). Works while a scheduled "
            "monitor runs.",
        ),
    ] = False,
    spec: SpecOption = None,
    baseline: BaselineOption = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            help="Serve Prometheus metrics on http://ADDRESS/metrics: PORT (on 127.0.0.1), "
            "IP:PORT or [IPv6]:PORT.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each run as a JSON line.")] = False,
) -> None:
    """Re-run the compliance baseline on a schedule and report drift from the accepted result.

    Each run collects and judges like 'enclave check', compares every result with the last
    accepted one (the first run's, or the one accepted with --accept), writes a
    compliance.run record to <state>/enclaves/NAME/compliance/audit, and prints one line.
    A result that passed (or was waived, or is new) and now fails or cannot be judged is
    drift: it is reported to the shutdown controller, which records it and, when the spec
    says onDrift: kill, kills the enclave. Runs until SIGTERM or SIGINT (exit 0); a failing
    run is reported and the next one runs.

    Exit codes with --once: 0 no drift (or the first result accepted); 1 drift found and
    reported; 5 drift found but the controller could not be told; 2 a bad spec, baseline or
    flag; 3 another monitor of the enclave runs; 6 the accepted result is damaged.
    """
    if once and accept:
        raise InputError("give --once or --accept, not both (--accept runs once)")
    single = once or accept
    if single and interval is not None:
        raise InputError("--interval is for a scheduled monitor, not with --once or --accept")
    if single and metrics_address is not None:
        raise InputError("--metrics-address is for a scheduled monitor, not with --once/--accept")
    # the flags and files given first, then the enclave; finding out creates nothing
    state = CONTEXT.state_dir
    address = _address(metrics_address) if metrics_address is not None else None
    every = _interval(interval, spec, state, name)
    if spec is not None and interval is not None:
        load_spec(spec)  # _interval read it only without --interval
    if baseline is not None and not (baseline.exists() or baseline.is_symlink()):
        raise InputError(f"--baseline {baseline}: no such file or directory")
    home = lifecycle.enclave_dir(state, name)
    if not home.is_dir():
        raise NotFoundError(f"enclave {name}: nothing under {home} (is it up?)")
    check = CheckSettings(name, state, spec=spec, baseline=baseline)
    settings = MonitorSettings(check, interval=every.total_seconds())
    if accept:
        outcome = Monitor(settings).run_once(accept=True)
        _print(outcome, as_json)
        if code := _exit_code(outcome):
            raise typer.Exit(code)
        return
    with hold_monitor_lock(state, name):
        if once:
            outcome = Monitor(settings).run_once()
            _print(outcome, as_json)
            if code := _exit_code(outcome):
                raise typer.Exit(code)
            return
        _scheduled(settings, address, as_json)


def _scheduled(settings: MonitorSettings, address: tuple[str, int] | None, as_json: bool) -> None:
    name, state = settings.check.name, settings.check.state_dir
    metrics = MonitorMetrics(name)
    server = serve_metrics(metrics, *address) if address is not None else None
    try:
        accepted = load_accepted(monitor_dir(state, name) / "accepted.json")
        against = (
            f"comparing with the result accepted {accepted.accepted_at}"
            if accepted is not None
            else "the first run's result becomes the accepted one"
        )
        where = f"; metrics on {server.url}" if server is not None else ""
        every = format_duration(timedelta(seconds=settings.interval))
        typer.echo(f"monitoring enclave {name} every {every} ({against}){where}")
        stop = threading.Event()
        with _signals(stop):
            Monitor(settings, metrics=metrics).run(
                stop, on_run=lambda outcome: _print(outcome, as_json)
            )
    finally:
        if server is not None:
            server.close()
