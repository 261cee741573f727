"""A lean HTTP/1.1 client for the gateway's one hop to its model servers.

The gateway forwards every request over loopback or an internal network to a model server it
was configured with, and nothing else: no redirects, no cookies, no proxies, no content
negotiation, no HTTP/2. A general-purpose client pays for all of those on every request (httpx
cost the gateway more CPU per request than its whole policy pipeline), so the hop is this
module instead: :class:`Http1Pool` keeps keep-alive connections (an asyncio protocol each, with
``httptools`` parsing the responses) and hands out :class:`UpstreamResponse` objects.

Errors are enclave's own, never a socket or parser exception: :class:`UpstreamError` (the
server cannot be reached, or broke off, or sent something that is not HTTP) and its subclass
:class:`UpstreamTimeoutError` (no connection, or no bytes, within the time allowed). A request is
never retried: a model server may already have acted on it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

import httptools

from enclave.errors import InputError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

__all__ = [
    "Http1Pool",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
]

_HIGH_WATER = 256 * 1024
"""Buffered response bytes at which the connection stops reading (a slow client)."""
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The model server cannot be reached, broke off, or did not speak HTTP/1.1."""


class UpstreamTimeoutError(UpstreamError):
    """No connection, or no next bytes, within the time allowed."""


class UpstreamResponse(Protocol):
    """An answer whose status has arrived; its body is read once, whole or line by line."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> dict[str, str]:
        """The response's headers, names in lower case (a repeated one: its last value)."""
        ...

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        ...

    def lines(self) -> AsyncIterator[str]:
        """The body as text lines without their line ends (server-sent events)."""
        ...

    async def aclose(self) -> None:
        """Release the connection (closed, not reused, when the body was not read to the end)."""
        ...


class Upstream(Protocol):
    """One model server."""

    async def request(self, method: str, path: str, body: bytes = b"") -> UpstreamResponse:
        """Send a request (a JSON body when there is one); return once the status arrived."""
        ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.status = 0
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self._delimited = False  # a Content-Length or chunked body (else: until EOF)
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.error: UpstreamError | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection cannot be trusted
            self.error = UpstreamError("the model server sent data without a request")
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error = UpstreamError("the model server tried to switch protocols")
            self.close()
        except httptools.HttpParserError:
            self.error = UpstreamError("the model server sent a malformed response")
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self.done and self.error is None:
            if self.headers_done and not self._delimited:
                self.done = True  # a body delimited by the end of the connection
            else:
                self.error = UpstreamError("the model server closed the connection")
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # noqa: S101 - callbacks come from the parser
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.raw_headers = []
            self._delimited = False
            return
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(bytes(body))
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        assert self._parser is not None  # noqa: S101 - callbacks come from the parser
        if not self.headers_done:
            return  # the end of a 1xx answer: the real one follows on the same parser
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()

    # -- used by the pool and the response --------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.error is None and self.transport is not None

    def send(self, data: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - connected before use
        self._parser = httptools.HttpResponseParser(self)
        self._chunks.clear()
        self._buffered = 0
        self.status = 0
        self.raw_headers = []
        self.headers_done = self.done = self.keep_alive = self._delimited = False
        self.transport.write(data)

    def take(self) -> bytes:
        """Everything buffered so far."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    def has_data(self) -> bool:
        return bool(self._chunks)

    async def until_headers(self, timeout: float) -> None:
        """Until the response's status and headers have arrived."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise UpstreamError("the model server closed the connection")
            await self.wait(timeout)

    async def wait(self, timeout: float) -> None:
        """Until something arrives (bytes, the end, an error) or ``timeout`` passes."""
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeoutError("the model server did not answer in time"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class _Response:
    """The answer on one pooled connection."""

    __slots__ = ("_conn", "_pool", "_released", "_timeout")

    def __init__(self, pool: Http1Pool, conn: _Connection, timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._released = False

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def headers(self) -> dict[str, str]:
        return {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self._conn.raw_headers
        }

    async def _next(self) -> bytes | None:
        """The next bytes of the body; None at its end."""
        conn = self._conn
        while True:
            if conn.has_data():
                return conn.take()
            if conn.done:
                return None
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout)

    async def read(self) -> bytes:
        parts: list[bytes] = []
        try:
            while (chunk := await self._next()) is not None:
                parts.append(chunk)
        finally:
            await self.aclose()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def lines(self) -> AsyncIterator[str]:
        pending = b""
        try:
            while (chunk := await self._next()) is not None:
                pending += chunk
                if b"\n" not in chunk:
                    continue
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.removesuffix(b"\r").decode("utf-8", "replace")
            if pending:
                yield pending.removesuffix(b"\r").decode("utf-8", "replace")
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        self._pool.release(conn, reuse=conn.done and conn.keep_alive and conn.usable())


class Http1Pool:
    """Keep-alive connections to one model server (``http://`` or ``https://`` base URL).

    At most ``max_connections`` are open; a request that finds none free waits for one up to
    ``connect_timeout`` and then fails with :class:`UpstreamTimeoutError`. Idle connections are
    reused most-recently-used first, so a quiet period lets the others be closed by the server
    without a request ever landing on one (one the server closed is noticed and dropped).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float = 5.0,
        max_connections: int = 32,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"model server URL {url!r}: expected http://HOST:PORT or https://")
        if max_connections < 1:
            raise InputError("an upstream pool needs at least one connection")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self._host_header = netloc.encode("ascii")
        extra = dict(headers or {})
        if any(c in text for item in extra.items() for text in item for c in "\r\n\0"):
            raise InputError("an upstream request header holds a line break")
        self._extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in extra.items())
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._heads: dict[tuple[str, str], bytes] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def _head(self, method: str, path: str) -> bytes:
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            if not path.startswith("/") or any(c in path for c in " \r\n"):
                raise InputError(f"upstream path {path!r} is not an absolute path")
            head = self._heads[key] = (
                f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("ascii")
                + b"Host: "
                + self._host_header
                + b"\r\nAccept: application/json, text/event-stream\r\nUser-Agent: enclave-gateway"
                + b"\r\n"
                + self._extra
            )
        return head

    async def request(self, method: str, path: str, body: bytes = b"") -> UpstreamResponse:
        head = self._head(method, path)
        if body:
            data = b"%bContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
                head,
                len(body),
                body,
            )
        else:
            data = head + (b"Content-Length: 0\r\n\r\n" if method == "POST" else b"\r\n")
        conn = await self._acquire()
        try:
            conn.send(data)
            await conn.until_headers(self._timeout)
        except BaseException:
            self.release(conn, reuse=False)
            raise
        return _Response(self, conn, self._timeout)

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            self._open -= 1
        if self._open < self.max_connections:
            return await self._connect()
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._connect_timeout):
                got = await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # handed a connection (or a slot) just as this request gave up: pass it on
                handed = waiter.result()
                if handed is None:
                    self._slot_freed(count=False)
                else:
                    self.release(handed, reuse=True)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(
                    "no connection to the model server became free"
                ) from None
            raise
        if got is None:  # a slot was freed, not a connection
            return await self._connect()
        return got

    async def _connect(self) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError:
            self._slot_freed()
            raise UpstreamTimeoutError("connecting to the model server timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._slot_freed()
            raise UpstreamError(
                f"cannot connect to the model server ({type(exc).__name__})"
            ) from None
        except BaseException:
            self._slot_freed()
            raise
        # uvloop may call connection_made only after create_connection has returned (and its
        # transports are not asyncio.Transport subclasses, though they behave as one)
        conn.transport = transport
        return conn

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        """Give ``conn`` back: to a waiting request, to the idle list, or closed."""
        if reuse and not self._closed:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self._idle.append(conn)
            return
        conn.close()
        self._slot_freed()

    def _slot_freed(self, *, count: bool = True) -> None:
        """A connection closed (``count``), or a freed slot was not taken: wake one waiter."""
        if count:
            self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            self._open -= 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamError("the upstream pool is closed"))
        self._waiters.clear()
