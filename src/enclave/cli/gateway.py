"""``enclave gateway serve``, and the approval commands that talk to a running gateway.

``enclave gateway serve --spec FILE`` builds the policy pipeline from the spec, loads the API
tokens from Vault with the gateway's own identity (``--bootstrap FILE``, or ``--bootstrap -``
to read the material from stdin, as a container gets it; its token is then renewed for as long
as the gateway runs) or, for local runs, an admin token (``--vault-token-file``), opens the
enclave's audit log under the state directory and serves until SIGINT/SIGTERM. The log's
checkpoints are signed in Vault, with the enclave's transit key (its public key is recorded in
the log's ``audit.pub``, so ``enclave audit verify`` works offline). The gateway
serves only while the shutdown controller keeps its lease alive; the key the controller signs
with is read from Vault (``<kv>/control/key``) after login, or from ``--control-key-file``.

``enclave approve ID``, ``enclave deny ID`` and ``enclave approvals list`` call the gateway's
approval API with the caller's own API token, read from ``--token-file`` (mode 0600): never an
argument or an environment variable.
"""

from __future__ import annotations

import gc
import logging
import re
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
import uvicorn

from enclave.audit import AuditLog, AuditSettings
from enclave.cli import args
from enclave.cli.context import state_dir
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
    NotFoundError,
    ServiceError,
)
from enclave.gateway.app import GatewaySettings, create_app
from enclave.gateway.auth import vault_token_loader
from enclave.gateway.door import door_protocol
from enclave.gateway.pipeline import Pipeline
from enclave.runtime.server import bind, url_of
from enclave.spec import load_spec
from enclave.vault.controlkey import read_control_key as read_vault_control_key
from enclave.vault.names import GATEWAY, EnclavePaths
from enclave.vault.transit import audit_signer

if TYPE_CHECKING:
    from enclave.audit import Signer
    from enclave.spec import LoadedSpec

log = logging.getLogger(__name__)

MAX_LOOP_LAG = 0.05
"""Seconds the event loop may run late before requests are shed at the door."""
GIL_SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits (CPython's default is 0.005)."""

app = typer.Typer(help="The policy gateway: serve it.", no_args_is_help=True)
approvals_app = typer.Typer(help="Requests held for a human approval.", no_args_is_help=True)

DEFAULT_GATEWAY = "http://127.0.0.1:8443"

GatewayOpt = Annotated[
    str, typer.Option("--gateway", help="The gateway's base URL.", show_default=True)
]
ApiTokenOpt = Annotated[
    Path,
    typer.Option("--token-file", help="File (mode 0600) holding your enclave API token."),
]


def read_control_key(path: Path) -> bytes:
    """The controller's key: hex in an owner-only file."""
    text = read_secret_file(path, "--control-key-file")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(f"--control-key-file {path}: expected the key in hex") from None


def _upstreams(values: list[str], models: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        try:
            args.http_url(url, "--upstream")
        except InputError:
            raise InputError(f"--upstream {value!r}: expected MODEL=http://HOST:PORT") from None
        if not sep or not name:
            raise InputError(f"--upstream {value!r}: expected MODEL=http://HOST:PORT")
        if name not in models:
            raise InputError(f"--upstream {value!r}: the spec serves no model {name!r}")
        if name in out:
            raise InputError(f"--upstream: model {name!r} is given twice")
        out[name] = url
    missing = [name for name in models if name not in out]
    if missing:
        raise InputError(f"no --upstream for model(s) {', '.join(missing)}")
    return out


@app.command("serve")
def serve(
    spec: Annotated[Path, typer.Option("--spec", help="The enclave spec.")],
    upstream: Annotated[
        list[str],
        typer.Option("--upstream", help="MODEL=URL of a model server (once per model)."),
    ],
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: spec.gateway.listen).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: spec.gateway.listen; 0: any).")
    ] = None,
    bootstrap: BootstrapOpt = None,
    vault_token_file: TokenFileOpt = None,
    vault_address: VaultAddressOpt = None,
    control_key_file: Annotated[
        Path | None,
        typer.Option(
            "--control-key-file",
            help="Hex key (0600) the shutdown controller signs heartbeats with, instead of the "
            "enclave's control key in Vault.",
        ),
    ] = None,
    max_in_flight: Annotated[
        int, typer.Option("--max-in-flight", min=1, help="Requests served at once; more: 503.")
    ] = 64,
) -> None:
    """Serve the gateway until interrupted; prints its URL once it listens."""
    args.port(port)
    loaded = load_spec(spec)
    upstreams = _upstreams(upstream, [model.name for model in loaded.spec.models])
    file_key = read_control_key(control_key_file) if control_key_file else None
    with component_session(
        loaded,
        GATEWAY,
        bootstrap=bootstrap,
        token_file=vault_token_file,
        vault_address=vault_address,
    ) as session:
        paths = EnclavePaths(loaded.name)
        control_key = file_key or read_vault_control_key(session.client, paths)
        with audit_signer(session.connection, session.token, paths) as signer:
            _serve(
                loaded, session.client, signer, upstreams, control_key, host, port, max_in_flight
            )


def _serve(
    loaded: LoadedSpec,
    client: Any,
    signer: Signer,
    upstreams: dict[str, str],
    control_key: bytes,
    host: str | None,
    port: int | None,
    max_in_flight: int,
) -> None:
    pipeline = Pipeline.from_spec(loaded, vault_token_loader(client, EnclavePaths(loaded.name)))
    root = state_dir() / "enclaves" / loaded.name
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    listen = loaded.spec.gateway.listen
    sock = bind(
        host if host is not None else str(listen.host), listen.port if port is None else port
    )
    try:
        with AuditLog.open(
            root / "audit",
            enclave=loaded.name,
            signer=signer,
            settings=AuditSettings.from_spec(loaded.spec.audit),
            allow_key_change=True,  # a re-provisioned enclave has a new transit key
        ) as audit_log:
            settings = GatewaySettings(
                request_timeout=loaded.spec.gateway.request_timeout.total_seconds(),
                max_in_flight=max_in_flight,
                max_loop_lag=MAX_LOOP_LAG,
                control_key=control_key,
            )
            gateway = create_app(
                pipeline, upstreams=upstreams, audit_log=audit_log, settings=settings
            )
            door = gateway.state.gateway
            config = uvicorn.Config(
                gateway,
                http=door_protocol(door),
                log_config=None,
                access_log=False,
                lifespan="on",
                server_header=False,
                timeout_graceful_shutdown=5,
            )
            url = url_of(sock)
            # The audit log's writer and syncer threads must get the GIL within a fraction of a
            # millisecond even while the event loop is busy: every forwarded request waits for
            # its record to be durable. At CPython's default (5 ms) a busy loop starves them
            # and requests wait for the switch, not for the disk.
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
            # Everything built so far (spec, policies, screens, the app) lives as long as the
            # process: move it out of the collector's way. Without this a full collection
            # walks it all, a pause of about 60 ms measured here, paid by whichever requests
            # are in flight.
            gc.collect()
            gc.freeze()
            log.info("gateway of enclave %s serving on %s", loaded.name, url)
            typer.echo(f"gateway of enclave {loaded.name} serving on {url}")
            _run_until_signalled(uvicorn.Server(config), sock)
    finally:
        sock.close()


class _SignalledError(BaseException):
    """SIGTERM/SIGINT, re-raised by uvicorn after its graceful shutdown."""


def _raise_signalled(signum: int, _frame: object) -> None:
    raise _SignalledError(signum)


def _run_until_signalled(server: uvicorn.Server, sock: socket.socket) -> None:
    """Run until SIGTERM/SIGINT; return normally after the graceful shutdown.

    uvicorn re-raises the signal it caught once it has shut down; with the default handler
    that would kill the process before the audit log is closed (and its checkpoint signed).
    """
    previous = {
        sig: signal.signal(sig, _raise_signalled) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run(sockets=[sock])
    except _SignalledError as exc:
        log.info("gateway stopped by signal %s", exc.args[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the approval commands ------------------------------------------------------------------


_APPROVAL_ID = re.compile(r"apr-[A-Za-z0-9]{1,64}")


def _approval_id(value: str) -> str:
    if not _APPROVAL_ID.fullmatch(value):
        raise InputError(f"APPROVAL_ID: {value!r} is not an approval id (apr-..., as listed)")
    return value


def _call(method: str, gateway: str, path: str, token_file: Path, json: Any = None) -> Any:
    args.http_url(gateway, "--gateway")
    token = read_secret_file(token_file, "--token-file")
    try:
        with httpx.Client(base_url=gateway, timeout=150.0, trust_env=False) as client:
            answer = client.request(
                method, path, json=json, headers={"authorization": f"Bearer {token}"}
            )
    except httpx.TimeoutException:
        raise ServiceError(f"gateway {gateway}: no answer in time") from None
    except httpx.TransportError as exc:
        raise ServiceError(
            f"gateway {gateway}: cannot connect ({type(exc).__name__}; is it running?)"
        ) from None
    except httpx.HTTPError as exc:
        raise ServiceError(f"gateway {gateway}: {type(exc).__name__}") from None
    try:
        data = answer.json()
    except ValueError:
        data = {}
    if answer.is_success:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else answer.reason_phrase
    code = error.get("code") if isinstance(error, dict) else answer.status_code
    text = f"gateway: {message} ({code}, HTTP {answer.status_code})"
    if answer.status_code == 404:
        raise NotFoundError(text)
    if answer.status_code == 409:
        raise ConflictError(text)
    if answer.status_code in (400, 401, 403):
        raise InputError(text)
    raise EnclaveError(text)


def approve(
    approval_id: Annotated[
        str, typer.Argument(help="The approval id (apr-...).", callback=_approval_id)
    ],
    token_file: ApiTokenOpt,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
) -> None:
    """Approve a held request (not your own); the gateway runs it for its requester."""
    data = _call("POST", gateway, f"/v1/approvals/{approval_id}/approve", token_file)
    typer.echo(f"approved {approval_id} (result: HTTP {data.get('result_status')})")


def deny(
    approval_id: Annotated[
        str, typer.Argument(help="The approval id (apr-...).", callback=_approval_id)
    ],
    token_file: ApiTokenOpt,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the requester).")] = "",
    gateway: GatewayOpt = DEFAULT_GATEWAY,
) -> None:
    """Refuse a held request."""
    _call("POST", gateway, f"/v1/approvals/{approval_id}/deny", token_file, {"reason": reason})
    typer.echo(f"denied {approval_id}")


@approvals_app.command("list")
def list_approvals(token_file: ApiTokenOpt, gateway: GatewayOpt = DEFAULT_GATEWAY) -> None:
    """Requests waiting for an approver."""
    data = _call("GET", gateway, "/v1/approvals", token_file)
    items = data.get("data") or []
    if not items:
        typer.echo("no pending approvals")
    for item in items:
        typer.echo(
            f"{item['id']}  {item['requester']}  {item['purpose']}  {item['endpoint']}  "
            f"{item.get('model') or '-'}"
        )
