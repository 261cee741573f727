"""Admission at the door: the HTTP protocol counts model requests in and refuses the excess.

Under overload most of a gateway's CPU would go to *refusing* requests if each refusal paid
for an ASGI task, a request object and a response object. :func:`door_protocol` makes a uvicorn
``httptools`` protocol that decides, as soon as a request's headers are parsed, whether a
request for a model endpoint may come in:

- while the :class:`Keeper` says the door is closed (too many admitted requests, or an event
  loop running late) it answers with a pre-built ``503 overloaded`` (``Retry-After``, OpenAI's
  error shape): no task is created, the body is discarded as it arrives, the connection stays
  open; the refusal is counted and accounted for in the audit log like every shed;
- otherwise it admits the request and counts it in (:meth:`Keeper.enter`) *before* the next
  request's headers are judged, and out (:meth:`Keeper.leave`) when the app has answered it.

Counting at the door, not when the app starts a request, matters: a loop iteration may parse
dozens of requests before any of their tasks runs, and a count kept by the app would let them
all in, only for the app to refuse the excess at many times the cost. Admitted requests carry
:data:`ADMITTED` in their ASGI scope, so the app does not judge them a second time. Everything
else (pipelined requests, other paths) goes to the app as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from enclave.gateway.request import Endpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["ADMITTED", "DOOR_PATHS", "Keeper", "door_protocol"]

DOOR_PATHS = {e.path.encode(): e for e in Endpoint if e is not Endpoint.MODELS}
"""The request paths judged at the door (the model endpoints that cost the most)."""

ADMITTED = "enclave.admitted"
"""ASGI scope key set on the requests the door admitted (and counted)."""


class Keeper(Protocol):
    """What the door asks; the gateway answers."""

    def closed(self) -> bool:
        """Whether a new model request must be refused now."""

    def shed_response(self, endpoint: Endpoint) -> bytes:
        """Count one refusal; the whole HTTP response to write."""

    def enter(self) -> None:
        """One more admitted request."""

    def leave(self) -> None:
        """An admitted request has been answered (or its client went away)."""


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


def door_protocol(keeper: Keeper) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)``, admitting through ``keeper``."""

    class DoorProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._plain_app: Callable[..., Awaitable[None]] = self.app

        async def _counted_app(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await self._plain_app(scope, receive, send)
            finally:
                keeper.leave()

        def on_headers_complete(self) -> None:
            cycle: Any = self.cycle
            endpoint = DOOR_PATHS.get(httptools.parse_url(self.url).path)
            if (
                endpoint is None
                or not (cycle is None or cycle.response_complete)  # pipelined: the app judges
                or self.parser.should_upgrade()
                or self.limit_concurrency is not None
            ):
                super().on_headers_complete()
                return
            if keeper.closed():
                if self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive():
                    self.transport.write(keeper.shed_response(endpoint))
                    self.cycle = _SHED  # type: ignore[assignment]
                    self.on_response_complete()
                    return
                super().on_headers_complete()  # the app refuses it (and closes the connection)
                return
            keeper.enter()
            self.scope[ADMITTED] = True  # type: ignore[literal-required]
            self.app = self._counted_app
            try:
                super().on_headers_complete()  # starts the app's task with _counted_app
            except BaseException:
                keeper.leave()
                raise
            finally:
                self.app = self._plain_app

    return DoorProtocol
