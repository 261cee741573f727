"""The controller's API: HTTP on a unix socket only its owner (root) can reach.

::

    POST /kill     {"reason": "..."}   kill the enclave (needs the ``kill`` action)
    POST /resume                       one approval to resume it (needs ``resume``)
    GET  /status                       mode, since, trigger, incident, approvals, kills, ...
    POST /drill    {"phase": "kill"}   a drill's kill (needs ``kill``); then
                   {"phase": "finish", "client_ms": {...}}  its resume and ``drill.result``
    POST /drift    {"reason": "..."}   compliance drift found (``enclave monitor``): record it
                                       and, with ``spec.compliance.onDrift: kill``, kill

``/kill`` and ``/resume`` take the caller's enclave API token (``Authorization: Bearer``), which
the controller checks itself against Vault (:mod:`enclave.shutdown.authority`); every call,
refused ones too, is written to the controller's audit log.

``/drift`` and ``/status`` take no token: the socket's file mode is their only gate. A drift
report can only make the enclave safer (a ``shutdown.drift`` record, plus the kill that the spec
itself asks for; never a resume, which still needs the quorum); whoever can reach the socket is
root on the host and could stop the containers directly; and a token would have to be a
person's kill-capable token left on disk for a daemon. The drift record and the kill's trigger
name no principal: they are the controller's own.

Answers are JSON; a refusal is ``{"error": {"code", "message"}}`` with:

=====  ======================  ================================================================
HTTP   code                    meaning
=====  ======================  ================================================================
200                            killed (the body lists every step), or resumed
200                            drift recorded: ``{"on_drift": "alert"|"kill", "mode", ...}``;
                               with ``kill``, also the kill's outcome (``accepted`` is false
                               when the enclave was already killed)
202                            the approval was counted; more are needed
400    ``invalid_request``     no reason given for a kill or a drift report
401    ``invalid_api_key``     no, a malformed, an unknown, a revoked or an expired token
403    ``forbidden``           the caller's roles do not grant ``kill`` / ``resume``
403    ``self_approval``       the caller killed the enclave and may not approve its resume
409    ``conflict``            a kill while the enclave is already killing or killed
409    ``replayed_approval``   the caller has already approved this resume (once a quorum's
                               resume has failed, its approvers asking again retry it)
409    ``not_killed``          a resume approval while the enclave is not killed
500    ``resume_failed``       the quorum was met but the resume failed: still killed
503    ``auth_unavailable``    the token could not be checked (Vault sealed or unreachable)
=====  ======================  ================================================================

The socket is ``<state>/enclaves/<name>/controller/api.sock``, mode 0600 in a 0700 directory;
the file system is the first gate, the token the second. :class:`ControllerClient` is the
CLI's side. Unix socket paths are limited to 107 bytes; a longer one is reached through
``/proc/self/fd/<directory fd>/api.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from enclave.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from pathlib import Path

    from starlette.requests import Request

    from enclave.shutdown.controller import Controller

log = logging.getLogger(__name__)

__all__ = [
    "ControllerClient",
    "bind",
    "controller_dir",
    "create_api",
    "serve",
    "socket_path",
]

SOCKET_NAME = "api.sock"
MAX_BODY = 4096
_SUN_PATH_MAX = 107
"""Bytes a unix socket path may have (``sun_path`` is 108 with its NUL)."""


def controller_dir(state_dir: Path, name: str) -> Path:
    """Where one enclave's controller keeps its state, audit log and socket."""
    return state_dir / "enclaves" / name / "controller"


def socket_path(state_dir: Path, name: str) -> Path:
    return controller_dir(state_dir, name) / SOCKET_NAME


# -- the server ---------------------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object; ``{}`` when it is empty, larger than
    :data:`MAX_BODY`, not JSON or not an object (the controller then refuses what is missing)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        return {}
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def create_api(controller: Controller) -> Starlette:
    """The ASGI app of ``controller``'s API (thin: the controller decides and records)."""

    async def kill(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        reason = (await _json_object(request)).get("reason")
        status, answer = await controller.request_kill(
            request.headers.get("authorization"), reason, t0=t0
        )
        return JSONResponse(answer, status)

    async def resume(request: Request) -> JSONResponse:
        status, answer = await controller.request_resume(request.headers.get("authorization"))
        return JSONResponse(answer, status)

    async def status(_request: Request) -> JSONResponse:
        return JSONResponse(controller.status())

    async def drill(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        data = await _json_object(request)
        status, answer = await controller.request_drill(
            request.headers.get("authorization"), data, t0=t0
        )
        return JSONResponse(answer, status)

    async def drift(request: Request) -> JSONResponse:
        reason = (await _json_object(request)).get("reason")
        if not isinstance(reason, str) or not reason.strip():
            message = "give a reason: a non-empty string (the drifted checks)"
            return JSONResponse({"error": {"code": "invalid_request", "message": message}}, 400)
        on_drift = "kill" if controller.settings.drift_kills else "alert"
        outcome = await controller.drift(reason.strip())
        answer = {"on_drift": on_drift, "mode": controller.mode.value}
        if outcome is not None:
            answer.update(outcome.as_dict())
        return JSONResponse(answer)

    return Starlette(
        routes=[
            Route("/kill", kill, methods=["POST"]),
            Route("/resume", resume, methods=["POST"]),
            Route("/status", status, methods=["GET"]),
            Route("/drill", drill, methods=["POST"]),
            Route("/drift", drift, methods=["POST"]),
        ]
    )


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for ``sun_path`` (valid inside the block)."""
    raw = str(path)
    if len(os.fsencode(raw)) <= _SUN_PATH_MAX:
        yield raw
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, 0600, in a 0700 directory.

    A socket file left by a controller that died is replaced; the caller makes sure no other
    controller of the enclave runs (it holds the controller's audit log, which one process at a
    time may open).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _reachable(path) as name:
            sock.bind(name)
        path.chmod(0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the controller's entry point owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    app: Starlette,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set; ``started`` once it accepts calls."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await task  # it failed to start: say why
        if started is not None:
            started()
        await stop.wait()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the client ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _listening(name: str, path: Path, timeout: float) -> Iterator[None]:
    """Raise :class:`ServiceError` unless something accepts connections at ``name``.

    httpx's unix-socket transport leaves the socket of a refused connect open (a
    ResourceWarning, and a file descriptor lost per call in a long-running caller), so a
    controller that is down is found here first, on a socket that is always closed.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(name)
        except OSError as exc:
            raise ServiceError(
                f"the shutdown controller at {path} did not answer ({type(exc).__name__})"
            ) from None
    yield


class ControllerClient:
    """Calls one controller's API over its socket (what ``enclave kill|resume`` use)."""

    def __init__(self, path: Path, *, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(
        self, method: str, route: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body); :class:`ServiceError` when nothing answers."""
        if not self.path.exists():
            raise ServiceError(
                f"no shutdown controller answers at {self.path} (is the enclave up?)"
            )
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        try:
            with (
                _reachable(self.path) as name,
                _listening(name, self.path, min(self.timeout, 5.0)),
                httpx.Client(
                    # plain HTTP on a unix socket: no TLS context (and its CA bundle) to load
                    transport=httpx.HTTPTransport(uds=name, verify=False),
                    base_url="http://controller",
                    timeout=self.timeout,
                    trust_env=False,
                ) as client,
            ):
                answer = client.request(method, route, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"the shutdown controller at {self.path} did not answer ({type(exc).__name__})"
            ) from None
        try:
            data = answer.json()
        except ValueError:
            data = {}
        return answer.status_code, data if isinstance(data, dict) else {}

    def drift(self, reason: str) -> tuple[int, dict[str, Any]]:
        """``POST /drift``: report compliance drift (what ``enclave monitor`` calls)."""
        return self.call("POST", "/drift", body={"reason": reason})
