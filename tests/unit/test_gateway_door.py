"""Shedding at the door: the HTTP protocol answers 503 itself while the gateway is overloaded."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from enclave.gateway.door import door_protocol
from enclave.gateway.request import Endpoint

SHED = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nretry-after: 1\r\n\r\nshed"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b"app %s %d" % (scope["path"].encode(), len(body))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer})


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head.split(b"\r\n")[0] + b" " + await reader.readexactly(length)


def test_overloaded_requests_are_answered_by_the_protocol_and_the_connection_lives() -> None:
    overloaded = {"now": True}
    shed: list[Endpoint] = []

    def refuse(endpoint: Endpoint) -> bytes:
        shed.append(endpoint)
        return SHED

    async def scenario() -> list[bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        config = uvicorn.Config(
            app, http=door_protocol(lambda: overloaded["now"], refuse), log_config=None,
            lifespan="off",
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        body = b'{"model":"m"}'
        post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (
            len(body),
            body,
        )
        answers = []
        writer.write(post)  # shed: its body is discarded, the connection stays usable
        answers.append(await read_answer(reader))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # not a door path
        answers.append(await read_answer(reader))
        overloaded["now"] = False
        writer.write(post)
        answers.append(await read_answer(reader))
        writer.close()
        server.should_exit = True
        await task
        return answers

    answers = asyncio.run(scenario())
    assert answers == [
        b"HTTP/1.1 503 Service Unavailable shed",
        b"HTTP/1.1 200 OK app /healthz 0",
        b"HTTP/1.1 200 OK app /v1/chat/completions 13",
    ]
    assert shed == [Endpoint.CHAT]
