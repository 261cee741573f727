"""Forwarding pools: each request to the least busy shard, freed when its response closes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from enclave.gateway.proxy import ShardedTransport, Upstreams

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _Body(httpx.AsyncByteStream):
    """An unread body, as a real transport returns it (``content=`` would be read at once)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'


def _shard(seen: list[int], index: int) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(index)
        return httpx.Response(200, stream=_Body())

    return httpx.MockTransport(handle)


def test_least_busy_shard_and_release_on_close() -> None:
    seen: list[int] = []
    transport = ShardedTransport([_shard(seen, 0), _shard(seen, 1), _shard(seen, 2)])

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
            held = [
                await client.send(client.build_request("POST", "/v1/x"), stream=True)
                for _ in range(3)
            ]
            assert seen == [0, 1, 2]
            assert transport.busy == (1, 1, 1)
            await held[1].aclose()
            assert transport.busy == (1, 0, 1)
            answer = await client.post("/v1/x")  # read whole: closed at once
            assert answer.json() == {"ok": True}
            assert seen[-1] == 1
            assert transport.busy == (1, 0, 1)
            for response in held:
                await response.aclose()  # closing twice frees once
            assert transport.busy == (0, 0, 0)

    asyncio.run(scenario())


def test_a_failed_request_frees_its_shard() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = ShardedTransport([httpx.MockTransport(refuse)])

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://model/v1/x")
        assert transport.busy == (0,)

    asyncio.run(scenario())


def test_pooled_splits_the_connections() -> None:
    assert len(ShardedTransport.pooled(max_connections=32, per_shard=2).busy) == 16
    assert len(ShardedTransport.pooled(max_connections=5, per_shard=2).busy) == 3
    assert len(ShardedTransport.pooled(max_connections=2, per_shard=8).busy) == 1
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedTransport([])


def test_upstream_urls_are_the_clients_own() -> None:
    upstreams = Upstreams(
        {"a": "http://127.0.0.1:9/prefix/", "b": "http://127.0.0.1:9"}, timeout=5.0
    )

    async def scenario() -> None:
        for model in upstreams:
            client = upstreams.client(model)
            path = "/v1/chat/completions"
            assert upstreams.url(model, path) == client.build_request("POST", path).url
            assert upstreams.url(model, path) is upstreams.url(model, path)  # parsed once
        await upstreams.aclose()

    asyncio.run(scenario())
    assert str(upstreams.url("a", "/v1/models")) == "http://127.0.0.1:9/prefix/v1/models"


def test_upstream_clients_keep_no_cookies() -> None:
    """One client serves every principal: a cookie set by a model server is never kept."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        cookie = dict(scope["headers"]).get(b"cookie", b"none")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"set-cookie", b"sid=abc; Path=/")],
            }
        )
        await send({"type": "http.response.body", "body": cookie})

    async def scenario() -> bytes:
        upstreams = Upstreams(
            {"assistant": "http://upstream"},
            timeout=5,
            transports={"assistant": httpx.ASGITransport(app=app)},
        )
        try:
            client = upstreams.client("assistant")
            await client.get("/first")
            second = await client.get("/second")
            assert not list(client.cookies.jar)
            return second.content
        finally:
            await upstreams.aclose()

    assert asyncio.run(scenario()) == b"none"
