"""Serving the reference model over HTTP with uvicorn (what ``enclave runtime serve`` runs).

The listening socket is bound here, before uvicorn starts, so a port that is taken or an
address that cannot be used is an :class:`~enclave.errors.InputError` with one clear message,
and ``port=0`` picks a free port whose URL is handed to ``on_ready``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING

import uvicorn

from enclave.errors import InputError
from enclave.runtime.app import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.runtime.model import NgramModel

__all__ = ["bind", "serve", "url_of"]

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port).

    The socket is made with ``IPPROTO_TCP`` explicitly: asyncio sets ``TCP_NODELAY`` only on
    connections whose protocol says TCP, and without it every small response waits out the
    client's delayed ACK (about 40 ms on Linux).
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: must be between 0 and 65535")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by the socket layer (IPv4)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):  # its errno is a resolver code, not an OS one
            reason = f"not an address of this host ({exc.strerror})"
        else:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InputError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    model: NgramModel,
    *,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_delay: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``model`` until SIGINT or SIGTERM, then shut down gracefully.

    ``on_ready`` gets the server's URL once the socket listens (connections made from then on
    are queued until uvicorn accepts them).
    """
    app = create_app(model, model_name=model_name, token_delay=token_delay)
    sock = bind(host, port)
    url = url_of(sock)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    logger.info("serving model %s (weights sha256 %s) on %s", model_name, model.sha256, url)
    if on_ready is not None:
        on_ready(url)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
