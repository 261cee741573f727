"""Admission at the door: the HTTP protocol counts model requests in and refuses the excess."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

import uvicorn

from enclave.gateway.door import ADMITTED, door_protocol
from enclave.gateway.request import Endpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SHED = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nretry-after: 1\r\n\r\nshed"
BODY = b'{"model":"m"}'
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)


class Keeper:
    """The gateway's side, kept in lists: admits up to ``limit`` requests, or none when shut."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.shut = False
        self.admitted = 0
        self.shed: list[Endpoint] = []

    def closed(self) -> bool:
        return self.shut or self.admitted >= self.limit

    def shed_response(self, endpoint: Endpoint) -> bytes:
        self.shed.append(endpoint)
        return SHED

    def enter(self) -> None:
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


class App:
    """Answers ``app PATH BODY-LENGTH admitted?``; holds model requests until ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.started = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/healthz":
            await self.release.wait()
        answer = b"app %s %d %s" % (
            scope["path"].encode(),
            len(body),
            b"admitted" if scope.get(ADMITTED) else b"-",
        )
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head.split(b"\r\n")[0] + b" " + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def serving(app: App, keeper: Keeper) -> AsyncIterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, http=door_protocol(keeper), log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield sock.getsockname()
    finally:
        server.should_exit = True
        await task


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_closed_door_answers_503_itself_and_the_connection_lives() -> None:
    keeper = Keeper(limit=8)
    keeper.shut = True
    app = App()

    async def scenario() -> list[bytes]:
        async with serving(app, keeper) as address:
            reader, writer = await asyncio.open_connection(*address)
            answers = []
            writer.write(POST)  # shed: its body is discarded, the connection stays usable
            answers.append(await read_answer(reader))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # not a door path
            answers.append(await read_answer(reader))
            keeper.shut = False
            writer.write(POST)
            answers.append(await read_answer(reader))
            writer.close()
            await until(lambda: keeper.admitted == 0)
        return answers

    answers = asyncio.run(scenario())
    assert answers == [
        b"HTTP/1.1 503 Service Unavailable shed",
        b"HTTP/1.1 200 OK app /healthz 0 -",
        b"HTTP/1.1 200 OK app /v1/chat/completions 13 admitted",
    ]
    assert keeper.shed == [Endpoint.CHAT]
    assert app.started == 2  # the shed request never reached the app


def test_requests_are_counted_in_at_their_headers_so_a_burst_cannot_overrun_the_limit() -> None:
    keeper = Keeper(limit=3)
    app = App()
    app.release.clear()

    async def scenario() -> tuple[list[bytes], int, int]:
        async with serving(app, keeper) as address:
            connections = [await asyncio.open_connection(*address) for _ in range(10)]
            for _, writer in connections:  # one burst: parsed before any app task runs
                writer.write(POST)
            await until(lambda: len(keeper.shed) == 7)
            held = keeper.admitted
            app.release.set()
            answers = [await read_answer(reader) for reader, _ in connections]
            await until(lambda: keeper.admitted == 0)
            for _, writer in connections:
                writer.close()
        return answers, held, app.started

    answers, held, started = asyncio.run(scenario())
    assert held == 3
    assert started == 3  # the seven refused never cost an ASGI task
    assert sorted(answers).count(b"HTTP/1.1 503 Service Unavailable shed") == 7
    assert answers.count(b"HTTP/1.1 200 OK app /v1/chat/completions 13 admitted") == 3


def test_a_client_that_goes_away_is_counted_out() -> None:
    keeper = Keeper(limit=3)
    app = App()
    app.release.clear()

    async def scenario() -> list[int]:
        async with serving(app, keeper) as address:
            _, writer = await asyncio.open_connection(*address)
            writer.write(POST)
            await until(lambda: app.started == 1)
            seen = [keeper.admitted]
            writer.close()  # gone while its request is held
            await asyncio.sleep(0.05)
            app.release.set()
            await until(lambda: keeper.admitted == 0)
            seen.append(keeper.admitted)
        return seen

    assert asyncio.run(scenario()) == [1, 0]


def test_pipelined_requests_are_left_to_the_app() -> None:
    keeper = Keeper(limit=8)
    app = App()

    async def scenario() -> list[bytes]:
        async with serving(app, keeper) as address:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(POST + POST)  # the second arrives while the first is in flight
            answers = [await read_answer(reader), await read_answer(reader)]
            writer.close()
            await until(lambda: keeper.admitted == 0)
        return answers

    assert asyncio.run(scenario()) == [
        b"HTTP/1.1 200 OK app /v1/chat/completions 13 admitted",
        b"HTTP/1.1 200 OK app /v1/chat/completions 13 -",
    ]
