"""HTTP to Vault over a unix socket: a requests transport adapter on urllib3.

A Vault address ``unix:///run/enclave/vault/bao.sock`` names the socket file of a ``listener
"unix"``. hvac builds every URL as ``<base>/v1/...``, which would make the socket path and the
request path one ambiguous string, so the client is given ``http+unix://<quoted socket path>``
(:func:`base_url`) and a session on which :class:`UnixSocketAdapter` is mounted for that
scheme (:func:`unix_session`). The adapter opens a plain HTTP connection to the socket named
by the URL's host; the request line carries only the path, and ``Host`` is ``localhost``.

Connection failures surface as urllib3's (and so requests') ordinary exceptions, which
:func:`enclave.vault.client.translate` turns into :class:`~enclave.errors.VaultUnavailableError`.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from requests import PreparedRequest

SCHEME = "unix://"
"""How a Vault address names a unix socket: ``unix://`` + an absolute path."""
TRANSPORT_SCHEME = "http+unix://"
"""The scheme of the URLs handed to hvac and requests (the socket path quoted as the host)."""


def socket_path_of(address: str) -> str | None:
    """The socket path of a ``unix:///abs/path`` address; None for any other address."""
    if not address.startswith(SCHEME):
        return None
    return address.removeprefix(SCHEME)


def base_url(path: str) -> str:
    """The URL hvac is given for the socket at ``path``."""
    return TRANSPORT_SCHEME + quote(path, safe="")


class _UnixConnection(HTTPConnection):
    """An HTTP/1.1 connection whose transport is a unix stream socket."""

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        sock.settimeout(timeout if isinstance(timeout, int | float) else None)
        try:
            sock.connect(self.socket_path)
        except TimeoutError:
            sock.close()
            raise ConnectTimeoutError(self, f"connect to {self.socket_path} timed out") from None
        except OSError as exc:
            sock.close()
            raise NewConnectionError(
                self, f"cannot connect to {self.socket_path}: {exc.strerror}"
            ) from None
        return sock


class _UnixConnectionPool(HTTPConnectionPool):
    """A keep-alive pool of :class:`_UnixConnection` to one socket."""

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        self.num_connections += 1
        return _UnixConnection(self.socket_path, timeout=self.timeout.connect_timeout)


class UnixSocketAdapter(HTTPAdapter):
    """Sends ``http+unix://<quoted path>/...`` requests to the unix socket at that path."""

    def __init__(self, pool_maxsize: int = 10) -> None:
        super().__init__(pool_maxsize=pool_maxsize)
        self._unix_pools: dict[str, _UnixConnectionPool] = {}
        self._unix_lock = threading.Lock()
        self._unix_maxsize = pool_maxsize

    def _pool_for(self, url: str) -> _UnixConnectionPool:
        path = unquote(urlsplit(url).netloc)
        with self._unix_lock:
            pool = self._unix_pools.get(path)
            if pool is None:
                pool = _UnixConnectionPool(path, maxsize=self._unix_maxsize)
                self._unix_pools[path] = pool
            return pool

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: tuple[str, str] | str | None = None,
    ) -> HTTPConnectionPool:
        return self._pool_for(str(request.url))

    def request_url(self, request: PreparedRequest, proxies: Mapping[str, str] | None) -> str:
        return str(request.path_url)  # never a proxy: the socket is the destination

    def close(self) -> None:
        with self._unix_lock:
            pools, self._unix_pools = list(self._unix_pools.values()), {}
        for pool in pools:
            pool.close()
        super().close()


def unix_session() -> requests.Session:
    """A session that reaches ``http+unix://`` URLs through :class:`UnixSocketAdapter`.

    It ignores proxy settings from the environment: a socket is reached directly or not at all.
    """
    session = requests.Session()
    session.trust_env = False
    session.mount(TRANSPORT_SCHEME, UnixSocketAdapter())
    return session
