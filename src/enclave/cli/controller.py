"""``enclave controller run``: the shutdown controller, as a host process.

``enclave controller run --spec FILE --gateway URL [--gateway URL ...]`` logs into Vault as the
enclave's controller (``--bootstrap FILE|-``; for local runs an admin token, as the other
commands take it), reads the control key, keeps its token renewed and heartbeats every gateway
until SIGTERM or SIGINT. What the controller does and does not do yet: :mod:`enclave.shutdown.
controller`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from enclave.cli.vaultconn import (
    BootstrapOpt,
    TokenFileOpt,
    VaultAddressOpt,
    component_session,
)
from enclave.errors import InputError
from enclave.shutdown.controller import Controller
from enclave.shutdown.heartbeat import HeartbeatSettings
from enclave.spec import load_spec
from enclave.vault.controlkey import read_control_key
from enclave.vault.names import CONTROLLER, EnclavePaths

log = logging.getLogger(__name__)

app = typer.Typer(help="The emergency shutdown controller.", no_args_is_help=True)


@app.command("run")
def run(
    spec: Annotated[Path, typer.Option("--spec", help="The enclave spec.")],
    gateway: Annotated[
        list[str],
        typer.Option("--gateway", help="Base URL of a gateway to keep alive (once per gateway)."),
    ],
    bootstrap: BootstrapOpt = None,
    vault_token_file: TokenFileOpt = None,
    vault_address: VaultAddressOpt = None,
) -> None:
    """Heartbeat the enclave's gateways until SIGTERM/SIGINT; prints one line once running."""
    loaded = load_spec(spec)
    if not gateway:
        raise InputError("give at least one --gateway URL")
    settings = HeartbeatSettings.from_spec(loaded.spec.shutdown)
    with component_session(
        loaded,
        CONTROLLER,
        bootstrap=bootstrap,
        token_file=vault_token_file,
        vault_address=vault_address,
    ) as session:
        key = read_control_key(session.client, EnclavePaths(loaded.name))
        controller = Controller(loaded.name, gateway, key, settings)
        asyncio.run(_run(controller))


async def _run(controller: Controller) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        typer.echo(
            f"controller of enclave {controller.enclave} heartbeating "
            f"{len(controller.links)} gateway(s) every {controller.settings.interval:g}s",
        )
        await controller.run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("controller stopped by signal")
