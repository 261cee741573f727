"""``enclave controller run|status``, ``enclave kill`` and ``enclave resume``.

``enclave controller run --spec FILE --gateway URL [--gateway URL ...]`` is the shutdown
controller (:mod:`enclave.shutdown.controller`), a host process that ``enclave up`` starts. It
logs into Vault as the enclave's controller (``--bootstrap FILE|-``; for local runs an admin
token, as the other commands take it), reads the control key, opens its own audit log and state
under ``<state>/enclaves/<name>/controller/`` (the log's checkpoints signed in Vault with the
enclave's transit key, whose public key the log records for offline verification), serves its
API on ``api.sock`` there, and runs until SIGTERM or SIGINT (finishing a kill under way first).

``enclave kill``, ``enclave resume`` and ``enclave controller status`` are thin clients of that
API. The caller's own enclave API token comes from ``--token-file`` (mode 0600), never an
argument or the environment; the controller checks it against Vault and its role in the spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enclave import lifecycle
from enclave.audit import AuditLog, AuditSettings
from enclave.cli import args
from enclave.cli.console import out, print_json
from enclave.cli.context import CONTEXT, state_dir
from enclave.cli.secretfile import read_secret_file
from enclave.cli.vaultconn import (
    BootstrapOpt,
    TokenFileOpt,
    VaultAddressOpt,
    component_session,
)
from enclave.errors import (
    ConflictError,
    EnclaveError,
    InputError,
    ServiceError,
)
from enclave.shutdown.api import (
    ControllerClient,
    bind,
    controller_dir,
    create_api,
    serve,
    socket_path,
)
from enclave.shutdown.authority import Authenticator, ControllerVault
from enclave.shutdown.controller import Controller, ControllerSettings
from enclave.shutdown.drill import DrillLoad
from enclave.shutdown.journal import Journal
from enclave.shutdown.state import Mode, StateMachine
from enclave.shutdown.workload import DockerWorkload
from enclave.spec import load_spec
from enclave.vault.controlkey import read_control_key
from enclave.vault.names import CONTROLLER, EnclavePaths
from enclave.vault.transit import audit_signer

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

app = typer.Typer(help="The emergency shutdown controller.", no_args_is_help=True)

NameArg = Annotated[
    str, typer.Argument(help="The enclave's name (metadata.name).", callback=args.enclave_name)
]
ApiTokenOpt = Annotated[
    Path,
    typer.Option("--token-file", help="File (mode 0600) holding your enclave API token."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class Backend(StrEnum):
    DOCKER = "docker"
    NONE = "none"


class OnLostHeartbeat(StrEnum):
    RECORD = "record"
    KILL = "kill"


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
    gateway_audit: Annotated[
        list[Path] | None,
        typer.Option(
            "--gateway-audit",
            help="A gateway's audit log directory, watched (read-only) for policy violations; "
            "once per log. Default: where 'enclave up' puts the gateway's.",
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            help="What runs the model containers the kill stops: the local Docker engine, or "
            "none (gateways run as plain processes: the kill tells them and revokes Vault "
            "tokens only).",
        ),
    ] = Backend.DOCKER,
    on_lost_heartbeat: Annotated[
        OnLostHeartbeat,
        typer.Option(
            "--on-lost-heartbeat",
            help="When a gateway misses two heartbeats in a row: record it (the gateway fails "
            "closed by itself when its lease lapses), or kill the enclave.",
        ),
    ] = OnLostHeartbeat.RECORD,
) -> None:
    """Run the shutdown controller until SIGTERM/SIGINT; prints one line once its API is up."""
    loaded = load_spec(spec)
    if not gateway:
        raise InputError("give at least one --gateway URL")
    for url in gateway:
        args.http_url(url, "--gateway")
    if len(set(gateway)) != len(gateway):
        raise InputError("--gateway: the same URL is given twice")
    settings = ControllerSettings.from_spec(
        loaded.spec, lost_heartbeat_kills=on_lost_heartbeat is OnLostHeartbeat.KILL
    )
    state = CONTEXT.state_dir
    name = loaded.name
    home = controller_dir(state, name)
    shutdown = loaded.spec.shutdown
    audits = gateway_audit or [lifecycle.audit_dir(state, name)]
    paths = EnclavePaths(name)
    with (
        component_session(
            loaded,
            CONTROLLER,
            bootstrap=bootstrap,
            token_file=vault_token_file,
            vault_address=vault_address,
        ) as session,
        _home(home) as home,  # once logged in: a refused start leaves nothing behind
        audit_signer(session.connection, session.token, paths) as signer,
        AuditLog.open(  # one writer per log: a second controller of this enclave stops here
            home / "audit",
            enclave=name,
            signer=signer,
            settings=AuditSettings.from_spec(loaded.spec.audit),
            allow_key_change=True,  # a re-provisioned enclave has a new transit key
        ) as audit_log,
    ):
        machine = StateMachine(
            home / "state.json",
            required=shutdown.resume_approvals,
            exclude_trigger=shutdown.resume_excludes_trigger,
        )
        key = read_control_key(session.client, paths)
        vault = ControllerVault(session.client, paths)
        controller = Controller(
            name,
            gateway,
            key,
            settings,
            machine=machine,
            journal=Journal(audit_log),
            authenticator=Authenticator.from_spec(vault, loaded.spec),
            workload=DockerWorkload(loaded, state) if backend is Backend.DOCKER else None,
            vault=vault,
            gateway_audit=audits,
        )
        where = socket_path(state, name)
        sock = bind(where)
        try:
            asyncio.run(_run(controller, sock))
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                where.unlink()


@contextlib.contextmanager
def _home(home: Path) -> Iterator[Path]:
    """The controller's directory, created owner-only (the state directory first, so that it is
    owner-only too: ``mkdir(parents=True)`` gives the parents it makes the default mode)."""
    state_dir()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    yield home


async def _run(controller: Controller, sock: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)

    def announce() -> None:
        count = len(controller.links)
        if controller.mode is Mode.SERVING:
            line = (
                f"controller of enclave {controller.enclave} heartbeating {count} gateway(s) "
                f"every {controller.settings.heartbeat.interval:g}s"
            )
        else:
            line = (
                f"controller of enclave {controller.enclave} is {controller.mode.value}: "
                f"{count} gateway(s) told to deny, no heartbeats"
            )
        typer.echo(line)

    try:
        await controller.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(controller.run(stop))
            tasks.create_task(serve(create_api(controller), sock, stop, started=announce))
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("controller stopped by signal")


# -- the clients --------------------------------------------------------------------------------


def _client(name: str, timeout: float = 900.0) -> ControllerClient:
    # the state directory as it is: asking a controller creates nothing there
    return ControllerClient(socket_path(CONTEXT.state_dir, name), timeout=timeout)


def _raise_for(status: int, data: dict[str, Any]) -> None:
    if 200 <= status < 300:
        return
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    message = str(error.get("message") or f"HTTP {status}")
    text = f"controller: {message} ({error.get('code') or 'error'}, HTTP {status})"
    if status in (400, 401, 403):
        raise InputError(text)
    if status == 409:
        raise ConflictError(text)
    if status == 503:
        raise ServiceError(text)
    raise EnclaveError(text)


def kill(
    name: NameArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the incident).")],
    token_file: ApiTokenOpt,
    as_json: JsonOpt = False,
) -> None:
    """Kill the enclave now: its gateways deny everything and cut their streams, its model
    containers are stopped and detached, its Vault tokens revoked, an incident opened.

    Needs a role with the 'kill' action. Prints each step with its timing. Exit codes: 0
    killed; 2 refused (a bad or expired token, a role without 'kill', no reason); 3 the
    enclave is already killed; 5 the controller does not answer or cannot check tokens.
    """
    if not reason.strip():
        raise InputError("--reason: give the reason for the kill (it is recorded in the incident)")
    token = read_secret_file(token_file, "--token-file")
    status, data = _client(name).call("POST", "/kill", token=token, body={"reason": reason})
    _raise_for(status, data)
    if as_json:
        print_json(data)
        return
    console = out()
    console.print(f"enclave {name} killed (incident {data.get('incident')})", markup=False)
    for step in data.get("steps") or []:
        state = "ok" if step.get("ok") else "FAILED"
        console.print(
            f"  {step['step']:<36} {state:<6} {step['seconds'] * 1000:8.1f} ms  "
            f"(trigger+{step['offset'] * 1000:.1f} ms)  {step['detail']}",
            markup=False,
        )


def resume(name: NameArg, token_file: ApiTokenOpt, as_json: JsonOpt = False) -> None:
    """Approve resuming a killed enclave. It resumes once enough distinct principals holding
    'resume' have approved (the spec's resumeApprovals; not the one who killed it, when
    resumeExcludesTrigger); the approval that completes the quorum waits for the resume.
    Exit codes: 0 approval counted, or resumed; 2 refused (a bad or expired token, a role
    without 'resume', you killed it); 3 refused (not killed, or you already approved); 1 the
    resume failed and the enclave stays killed; 5 the controller does not answer or cannot
    check tokens.
    """
    token = read_secret_file(token_file, "--token-file")
    status, data = _client(name).call("POST", "/resume", token=token)
    _raise_for(status, data)
    if as_json:
        print_json(data)
        return
    approvers = ", ".join(data.get("approvals") or []) or "none"
    console = out()
    for who in data.get("expired") or []:
        console.print(f"the approval of {who} had expired and no longer counts", markup=False)
    if data.get("resumed"):
        console.print(
            f"enclave {name} resumed (approved by {approvers}; {data.get('seconds') or 0:.1f} s)",
            markup=False,
        )
        return
    have, need = len(data.get("approvals") or []), int(data.get("required") or 0)
    console.print(
        f"approval recorded: {have} of {need} ({approvers}); {need - have} more needed",
        markup=False,
    )


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@app.command("status")
def status(name: NameArg, as_json: JsonOpt = False) -> None:
    """The controller's state: mode, since when, the trigger, the incident, the approvals."""
    code, data = _client(name, timeout=10.0).call("GET", "/status")
    _raise_for(code, data)
    if as_json:
        print_json(data)
        return
    console = out()
    console.print(f"enclave {name}: {data['mode']} since {_when(data['since'])}", markup=False)
    trigger = data.get("trigger")
    if trigger:
        by = trigger.get("principal") or "the controller"
        console.print(f"  trigger    {trigger['kind']} by {by}: {trigger['reason']}", markup=False)
    if data.get("incident"):
        console.print(f"  incident   {data['incident']}", markup=False)
    if data["mode"] != Mode.SERVING.value:
        names = ", ".join(a["principal"] for a in data.get("approvals") or []) or "none"
        console.print(
            f"  approvals  {len(data.get('approvals') or [])} of {data['required']} ({names})",
            markup=False,
        )
    console.print(f"  kills      {data['kills']}", markup=False)
    for gw in data.get("gateways") or []:
        health = "lost" if gw.get("lost") else "ok"
        console.print(
            f"  gateway    {gw['url']}  heartbeats {gw['sent']} sent, {gw['missed']} missed "
            f"({health})",
            markup=False,
        )


def drill(
    name: NameArg,
    token_file: ApiTokenOpt,
    load_token_file: Annotated[
        Path | None,
        typer.Option(
            "--load-token-file",
            help="Token (0600) of a principal that may query: the drill then runs synthetic "
            "load (streams and requests) through the gateway and measures the kill from the "
            "client's side too.",
        ),
    ] = None,
    purpose: Annotated[str, typer.Option("--purpose", help="Purpose of the load.")] = (
        "translation"
    ),
    model: Annotated[str, typer.Option("--model", help="Model of the load.")] = "assistant",
    as_json: JsonOpt = False,
) -> None:
    """Run a kill drill: kill the enclave under load, measure every latency, resume it.

    Needs a role with 'kill'. The drill's own kill is resumed without the resume quorum (a
    real kill during the drill still needs it); if the drill stops half-way the enclave stays
    killed. The result is written to the controller's audit log as a 'drill.result' record
    (the compliance checks cite it). Exit codes: 0 passed; 1 the drill ran but missed a
    target or did not resume; 2/3/5 as for 'enclave kill'.
    """
    args.name(purpose, "--purpose")
    args.name(model, "--model")
    token = read_secret_file(token_file, "--token-file")
    load_token = read_secret_file(load_token_file, "--load-token-file") if load_token_file else None
    client = _client(name)
    status, info = client.call("GET", "/status")
    _raise_for(status, info)
    gateways = [g["url"] for g in info.get("gateways") or [] if isinstance(g, dict)]
    load: DrillLoad | None = None
    if load_token is not None and gateways:
        load = DrillLoad(gateways[0], load_token, purpose=purpose, model=model)
    with load if load is not None else contextlib.nullcontext():
        if load is not None:
            time.sleep(1.0)  # streams in flight before the kill
            load.mark()
        status, killed = client.call("POST", "/drill", token=token, body={"phase": "kill"})
        if load is not None:
            load.killed()
            time.sleep(0.5)  # a request sent after the kill must be refused
    _raise_for(status, killed)
    client_ms = load.seen.client_ms() if load is not None else {}
    status, result = client.call(
        "POST", "/drill", token=token, body={"phase": "finish", "client_ms": client_ms}
    )
    _raise_for(status, result)
    if load is not None:
        result["load"] = {
            "requests": load.seen.requests,
            "ok": load.seen.ok,
            "served_after_kill": load.seen.served_after,
        }
        if load.seen.served_after:
            result["passed"] = False
    if as_json:
        print_json(result)
    else:
        _print_drill(name, result)
    if not result.get("passed"):
        raise typer.Exit(1)


def _print_drill(name: str, result: dict[str, Any]) -> None:
    console = out()
    verdict = "PASSED" if result.get("passed") else "FAILED"
    console.print(f"drill of enclave {name}: {verdict} (audit seq {result.get('audit_seq')})",
                  markup=False)  # fmt: skip
    targets = result.get("targets_ms") or {}
    for key, value in (result.get("latencies_ms") or {}).items():
        target = targets.get(key)
        mark = "" if target is None else (" ok" if value <= target else " MISSED")
        limit = "" if target is None else f"  (target <= {target:g} ms)"
        console.print(f"  {key:<22} {value:10.1f} ms{limit}{mark}", markup=False)
    load = result.get("load")
    if isinstance(load, dict):
        console.print(
            f"  load: {load['requests']} requests, {load['ok']} served, "
            f"{load['served_after_kill']} served after the kill",
            markup=False,
        )
