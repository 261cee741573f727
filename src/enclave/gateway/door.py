"""Shedding load at the door: ``503 overloaded`` written by the HTTP protocol itself.

Under overload most of a gateway's CPU would go to *refusing* requests if each refusal paid
for an ASGI task, a request object and a response object. :func:`door_protocol` makes a
uvicorn ``httptools`` protocol that, while the gateway is overloaded
(:meth:`enclave.gateway.app` ``overloaded()``: too many requests in flight, or an event loop
running late), answers a request for a model endpoint with a pre-built ``503 overloaded``
(``Retry-After``, OpenAI's error shape) as soon as its headers are parsed: no task is created,
its body is discarded as it arrives, the connection stays open. Everything else goes to the
app as usual. The refusals are counted and accounted for in the audit log like every shed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from enclave.gateway.request import Endpoint

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DOOR_PATHS", "door_protocol"]

DOOR_PATHS = {e.path.encode(): e for e in Endpoint if e is not Endpoint.MODELS}
"""The request paths shed at the door (the model endpoints that cost the most)."""


class _Event:
    def set(self) -> None:
        return None


class _Shed:
    """Stands in for the request/response cycle of a request already answered."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = _Event()


_SHED = _Shed()


def door_protocol(
    overloaded: Callable[[], bool],
    shed: Callable[[Endpoint], bytes],
) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)``.

    ``overloaded()`` is asked once per request; ``shed(endpoint)`` counts one refusal and
    returns the whole HTTP response to write.
    """

    class DoorProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            cycle: Any = self.cycle
            if (
                overloaded()
                and (cycle is None or cycle.response_complete)
                and not self.parser.should_upgrade()
                and self.parser.get_http_version() == "1.1"
                and self.parser.should_keep_alive()
            ):
                endpoint = DOOR_PATHS.get(httptools.parse_url(self.url).path)
                if endpoint is not None:
                    self.transport.write(shed(endpoint))
                    self.cycle = _SHED  # type: ignore[assignment]
                    self.on_response_complete()
                    return
            super().on_headers_complete()

    return DoorProtocol
