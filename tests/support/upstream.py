"""An in-process model server for gateway tests: any httpx transport as a gateway upstream.

The gateway's own :class:`~enclave.gateway.upstream.Http1Pool` speaks to a real socket; tests
that mount the reference runtime in-process (``httpx.ASGITransport``) or fake a failure
(``httpx.MockTransport``) hand :func:`create_app` one of these instead, with httpx's errors
translated the way the pool reports its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from enclave.gateway.upstream import UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_JSON = {"content-type": "application/json"}


def _translated(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError("the model server did not answer in time")
    return UpstreamError(f"the model server failed ({type(exc).__name__})")


class HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise _translated(exc) from exc
        finally:
            await self._response.aclose()

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise _translated(exc) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """A gateway upstream served by ``transport`` (an ASGI app, a mock)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._client = httpx.AsyncClient(transport=transport, base_url="http://upstream")

    @classmethod
    def asgi(cls, app: object) -> HttpxUpstream:
        return cls(httpx.ASGITransport(app=app))  # type: ignore[arg-type]

    async def request(self, method: str, path: str, body: bytes = b"") -> HttpxResponse:
        request = self._client.build_request(method, path, content=body or None, headers=_JSON)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translated(exc) from exc
        return HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
