"""The gateway's HTTP/1.1 upstream pool against real loopback servers that misbehave on cue."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
import uvloop

from enclave.errors import InputError
from enclave.gateway.upstream import Http1Pool, UpstreamError, UpstreamTimeoutError
from support.gateway_app import closed_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Runner = Callable[[Awaitable[None]], None]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head and body (Content-Length bodies only, as the pool sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


def answer(body: bytes, *, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b" % (
        status,
        len(body),
        extra,
        body,
    )


@contextlib.asynccontextmanager
async def server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler`` per connection; yields its URL and connection ids."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(id(writer))
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        srv.close()
        await srv.wait_closed()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        path = head.split(b" ")[1]
        writer.write(answer(b'{"path":"%b","body":%d}' % (path, len(body))))
        await writer.drain()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """Each scenario on both loops: the gateway serves on uvloop, tests default to asyncio."""
    return uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop


@pytest.fixture
def run(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> Callable[[Awaitable[None]], None]:
    def run_(coro: Awaitable[None]) -> None:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(asyncio.wait_for(coro, 10))

    return run_


def test_keep_alive_connections_are_reused_and_the_request_is_exact(run: Runner) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(answer(b'{"ok":true}'))
            await writer.drain()

    async def scenario() -> None:
        async with server(handler) as (url, connections):
            pool = Http1Pool(url + "/base/", timeout=5, headers={"Authorization": "Bearer t"})
            for _ in range(5):
                response = await pool.request("POST", "/v1/chat/completions", b'{"a":1}')
                assert response.status == 200
                assert response.headers["content-type"] == "application/json"
                assert await response.read() == b'{"ok":true}'
            await pool.aclose()
            assert len(connections) == 1
            assert pool.open_connections == 0
        first = seen[0].decode()
        assert first.startswith("POST /base/v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: {url.removeprefix('http://')}\r\n" in first
        assert "Authorization: Bearer t\r\n" in first
        assert "Content-Length: 7\r\n" in first and first.endswith('\r\n\r\n{"a":1}')
        assert "cookie" not in first.lower()

    run(scenario())


def test_concurrency_is_capped_and_waiters_get_freed_connections(run: Runner) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))
            await writer.drain()

    async def scenario() -> None:
        async with server(slow) as (url, connections):
            pool = Http1Pool(url, timeout=5, max_connections=3)

            async def one() -> int:
                response = await pool.request("GET", "/v1/models")
                await response.read()
                return response.status

            statuses = await asyncio.gather(*(one() for _ in range(12)))
            assert statuses == [200] * 12
            assert len(connections) == 3  # never more than the cap, all reused
            assert pool.idle_connections == 3
            await pool.aclose()

    run(scenario())


def test_a_full_pool_times_out_waiting_instead_of_queueing_forever(run: Runner) -> None:
    async def never(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with server(never) as (url, _):
            pool = Http1Pool(url, timeout=0.3, connect_timeout=0.2, max_connections=1)
            first = asyncio.create_task(pool.request("GET", "/a"))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTimeoutError, match="no connection"):
                await pool.request("GET", "/b")
            with pytest.raises(UpstreamTimeoutError, match="did not answer in time"):
                await first
            assert pool.open_connections == 0  # the timed-out connection was not kept
            await pool.aclose()

    run(scenario())


def test_chunked_streams_arrive_as_lines_and_the_connection_is_reused(run: Runner) -> None:
    events = [b'data: {"n":%d}\n\n' % n for n in range(20)] + [b"data: [DONE]\n\n"]

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for event in events:  # split lines across chunks, as servers do
                for part in (event[:5], event[5:]):
                    writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with server(sse) as (url, connections):
            pool = Http1Pool(url, timeout=5)
            for _ in range(2):
                response = await pool.request("POST", "/v1/completions", b"{}")
                lines = [line async for line in response.lines()]
                assert lines == [
                    line for event in events for line in event.decode().split("\n")[:2]
                ]
            assert len(connections) == 1
            await pool.aclose()

    run(scenario())


def test_closing_a_response_early_closes_its_connection(run: Runner) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"6\r\ndata:\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        async with server(endless) as (url, _):
            pool = Http1Pool(url, timeout=5)
            response = await pool.request("POST", "/x", b"{}")
            async for _line in response.lines():
                break
            await response.aclose()
            assert (pool.open_connections, pool.idle_connections) == (0, 0)
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", "closed the connection"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection"),
    ],
)
def test_broken_answers_are_upstream_errors(run: Runner, reply: bytes, message: str) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def scenario() -> None:
        async with server(broken) as (url, _):
            pool = Http1Pool(url, timeout=2)
            with pytest.raises(UpstreamError, match=message):
                response = await pool.request("POST", "/x", b"{}")
                await response.read()
            assert pool.open_connections == 0
            await pool.aclose()

    run(scenario())


def test_a_body_delimited_by_close_is_complete_and_not_reused(run: Runner) -> None:
    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async def scenario() -> None:
        async with server(old) as (url, _):
            pool = Http1Pool(url, timeout=2)
            response = await pool.request("GET", "/x")
            assert await response.read() == b"all of it"
            assert pool.open_connections == 0
            await pool.aclose()

    run(scenario())


def test_a_connection_the_server_closed_while_idle_is_not_used(run: Runner) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()  # then the handler returns and the server closes the connection

    async def scenario() -> None:
        async with server(once) as (url, connections):
            pool = Http1Pool(url, timeout=2)
            for _ in range(3):
                response = await pool.request("GET", "/x")
                assert await response.read() == b"{}"
                await asyncio.sleep(0.05)  # the close reaches the idle connection
            assert len(connections) == 3
            await pool.aclose()

    run(scenario())


def test_refused_and_interim_answers(run: Runner) -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}", status=201))
        await writer.drain()

    async def scenario() -> None:
        refused = Http1Pool(f"http://127.0.0.1:{closed_port()}", timeout=2)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await refused.request("GET", "/x")
        assert refused.open_connections == 0
        async with server(interim) as (url, _):
            pool = Http1Pool(url, timeout=2)
            response = await pool.request("POST", "/x", b"{}")
            assert (response.status, await response.read()) == (201, b"{}")
            await pool.aclose()

    run(scenario())


def test_a_slow_reader_pauses_the_connection_and_loses_nothing(run: Runner) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB, far past the high-water mark

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(blob))
            await writer.drain()

    async def scenario() -> None:
        async with server(big) as (url, _):
            pool = Http1Pool(url, timeout=5)
            response = await pool.request("GET", "/x")
            await asyncio.sleep(0.2)  # let the server fill the buffer
            assert await response.read() == blob
            again = await pool.request("GET", "/x")
            assert await again.read() == blob
            await pool.aclose()

    run(scenario())


def test_bad_urls_and_paths_are_refused(run: Runner) -> None:
    with pytest.raises(InputError, match="expected http"):
        Http1Pool("ftp://x", timeout=1)
    with pytest.raises(InputError, match="at least one"):
        Http1Pool("http://x", timeout=1, max_connections=0)
    with pytest.raises(InputError, match="line break"):
        Http1Pool("http://x", timeout=1, headers={"X": "a\r\nEvil: 1"})

    async def scenario() -> None:
        pool = Http1Pool("http://127.0.0.1:9", timeout=1)
        with pytest.raises(InputError, match="not an absolute path"):
            await pool.request("GET", "/a b\r\nX: y")
        await pool.aclose()
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request("GET", "/x")

    run(scenario())


def test_many_concurrent_requests_on_a_real_server(run: Runner) -> None:
    async def scenario() -> None:
        async with server(echo_forever) as (url, connections):
            pool = Http1Pool(url, timeout=5, max_connections=8)

            async def one(n: int) -> bytes:
                response = await pool.request("POST", f"/r{n}", b"x" * n)
                return await response.read()

            bodies = await asyncio.gather(*(one(n) for n in range(200)))
            assert bodies == [b'{"path":"/r%d","body":%d}' % (n, n) for n in range(200)]
            assert len(connections) <= 8
            await pool.aclose()

    run(scenario())
