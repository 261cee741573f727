"""Forwarding to the model servers: pooled clients, failures, and screened streaming.

:class:`Upstreams` keeps one :class:`~enclave.gateway.upstream.Http1Pool` per model server. A
failure to reach one becomes a :class:`Failure` (``502 upstream_unavailable``, ``504
upstream_timeout``).

:class:`ScreenedStream` relays a model server's server-sent events to the client through the
output screen: each event's text is fed to the screen and only what the screen released is
sent, so text reaches the client only once it has been screened. A violation cuts the stream
with a terminal error event (``data: {"error": {... "code": "prohibited_use"}}``) and
``data: [DONE]``; so does a kill of the enclave (``enclave_shutdown``) and a model server that
fails mid-stream. A client that goes away stops the relay, and the upstream request with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import Response

from enclave.errors import InputError
from enclave.gateway.denial import Denial
from enclave.gateway.request import Endpoint
from enclave.gateway.screen import Violation
from enclave.gateway.upstream import Http1Pool, UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from starlette.types import Receive, Scope, Send

    from enclave.gateway.screen import OutputScreen, Screen
    from enclave.gateway.state import StreamGuard
    from enclave.gateway.upstream import Upstream, UpstreamResponse

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Failure:
    """The gateway could not serve a request for a reason of its own (not a policy denial).

    ======  =========================  ========================================================
    HTTP    code                       meaning
    ======  =========================  ========================================================
    502     ``upstream_unavailable``   the model server cannot be reached, or broke off
    502     ``upstream_error``         the model server answered with a server error
    504     ``upstream_timeout``       the model server did not answer in time
    503     ``audit_unavailable``      the audit log cannot record: nothing is served (fail
                                       closed)
    503     ``overloaded``             too many requests in flight; ``Retry-After`` says when
    499     ``client_closed``          the client went away before the request was forwarded
                                       (recorded only; nothing can be sent)
    ======  =========================  ========================================================
    """

    status: int
    code: str
    message: str
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        kind = "upstream_error" if self.status in (502, 504) else "service_unavailable"
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": None}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}

    def audit_details(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


Outcome = Denial | Failure | None
"""How a forwarded request ended: None when the output was released in full."""


def upstream_failure(exc: UpstreamError, model: str) -> Failure:
    """The failure an upstream error stands for."""
    if isinstance(exc, UpstreamTimeoutError):
        return Failure(504, "upstream_timeout", f"the model server for {model!r} timed out")
    return Failure(502, "upstream_unavailable", f"the model server for {model!r}: {exc}")


class Upstreams:
    """One pooled connection set per model server, by model name (:class:`Http1Pool`)."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        timeout: float,
        connect_timeout: float = 5.0,
        max_connections: int = 32,
        overrides: Mapping[str, Upstream] | None = None,
    ) -> None:
        self.urls = dict(urls)
        self._upstreams: dict[str, Upstream] = {}
        for model, url in self.urls.items():
            override = (overrides or {}).get(model)
            self._upstreams[model] = override or Http1Pool(
                url,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_connections=max_connections,
            )

    def __contains__(self, model: object) -> bool:
        return model in self._upstreams

    def __iter__(self) -> Iterator[str]:
        return iter(self._upstreams)

    def get(self, model: str) -> Upstream:
        return self._upstreams[model]

    async def aclose(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.aclose()


# -- reading outputs ------------------------------------------------------------------------


def output_texts(endpoint: Endpoint, data: object) -> list[str]:
    """Every generated text of a whole (non-streamed) response, one per choice."""
    if endpoint not in (Endpoint.CHAT, Endpoint.COMPLETIONS) or not isinstance(data, dict):
        return []
    texts: list[str] = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint is Endpoint.CHAT:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


def screen_whole(screen: Screen, endpoint: Endpoint, data: object) -> Violation | None:
    """Screen a whole response's outputs, choice by choice."""
    for text in output_texts(endpoint, data):
        found = screen.check_output(text)
        if found is not None:
            return found
    return None


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def error_event(body: Mapping[str, Any]) -> bytes:
    """A terminal SSE error event, then ``[DONE]``."""
    return _event(body) + DONE


class _CutError(Exception):
    def __init__(self, outcome: Denial | Failure) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass(slots=True)
class StreamResult:
    """What the relay did, for the completion record."""

    outcome: Outcome = None
    output_sha256: str = ""
    usage: dict[str, Any] | None = None
    events: int = 0
    client_gone: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ScreenedStream(Response):
    """A ``text/event-stream`` response relaying a model server's stream through the screen.

    ``on_end`` is awaited exactly once when the relay ends however it ends (shielded from
    cancellation: the completion record is always written).
    """

    media_type = "text/event-stream"
    charset = "utf-8"

    def __init__(
        self,
        upstream: UpstreamResponse,
        *,
        endpoint: Endpoint,
        model: str,
        new_screen: Callable[[], OutputScreen],
        guard: StreamGuard,
        on_end: Callable[[StreamResult], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        )
        self._upstream = upstream
        self._endpoint = endpoint
        self._model = model
        self._new_screen = new_screen
        self._guard = guard
        self._on_end = on_end
        self._screens: dict[int, OutputScreen] = {}
        self._template: dict[str, Any] | None = None
        self._digest = hashlib.sha256()
        self.result = StreamResult()
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            started = True
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_client, receive, group.cancel_scope)
                group.start_soon(self._watch_guard, group.cancel_scope)
                try:
                    await self._pump(send)
                except OSError:  # the connection closed under us
                    self.result.client_gone = True
                group.cancel_scope.cancel()
            if not self.result.client_gone and not self._ended:
                cut = self._guard.check()
                if cut is not None and self.result.outcome is None:
                    self.result.outcome = cut
                    await self._send(send, error_event(cut.body()))
            if not self.result.client_gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.result.client_gone = True
        finally:
            with anyio.CancelScope(shield=True):
                self._guard.close()
                await self._upstream.aclose()
                if not started:
                    self.result.client_gone = True
                self.result.output_sha256 = self._digest.hexdigest()
                await self._on_end(self.result)

    async def _watch_client(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.result.client_gone = True
                scope.cancel()
                return

    async def _watch_guard(self, scope: anyio.CancelScope) -> None:
        reason = await self._guard.wait()
        log.info("stream cut: %s", reason)
        scope.cancel()

    async def _send(self, send: Send, chunk: bytes) -> None:
        self._digest.update(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _pump(self, send: Send) -> None:
        data: list[str] = []
        try:
            async for line in self._upstream.lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                    continue
                if line or not data:
                    continue  # comments, other fields, stray blank lines
                payload, data = "\n".join(data), []
                for chunk in self._relay(payload):
                    await self._send(send, chunk)
                if self._ended:
                    return
            for chunk in self._finish_all():
                await self._send(send, chunk)
            early = Failure(502, "upstream_unavailable", "the model server ended the stream early")
            for chunk in self._cut(early):
                await self._send(send, chunk)
        except UpstreamError as exc:
            failure = upstream_failure(exc, self._model)
            for chunk in self._cut(failure):
                await self._send(send, chunk)
        except _CutError as exc:
            for chunk in self._cut(exc.outcome):
                await self._send(send, chunk)

    def _cut(self, outcome: Denial | Failure) -> list[bytes]:
        self.result.outcome = outcome
        self._ended = True
        return [error_event(outcome.body())]

    def _released(self, index: int, text: str, *, last: bool) -> str:
        screen = self._screens.get(index)
        if screen is None:
            screen = self._screens[index] = self._new_screen()
        try:
            out = screen.feed(text) if text else ""
        except InputError:  # text after the choice finished
            raise _CutError(
                Failure(502, "upstream_error", "the model server sent text after finishing")
            ) from None
        if isinstance(out, Violation):
            raise _CutError(out.denial())
        if last:
            rest = screen.finish()
            if isinstance(rest, Violation):
                raise _CutError(rest.denial())
            out += rest
        return out

    def _finish_all(self) -> list[bytes]:
        """The text still held back, in one last event per choice (when there is any)."""
        out: list[bytes] = []
        for index in list(self._screens):
            rest = self._released(index, "", last=True)
            if rest and self._template is not None:
                out.append(_event(self._with_text(self._template, index, rest)))
        return out

    def _with_text(self, template: dict[str, Any], index: int, text: str) -> dict[str, Any]:
        if self._endpoint is Endpoint.CHAT:
            choice: dict[str, Any] = {"index": index, "delta": {"content": text}}
        else:
            choice = {"index": index, "text": text}
        choice.update({"logprobs": None, "finish_reason": None})
        return {**template, "choices": [choice]}

    def _relay(self, payload: str) -> list[bytes]:
        if payload == "[DONE]":
            self._ended = True
            return [*self._finish_all(), DONE]
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise _CutError(
                Failure(502, "upstream_unavailable", "the model server sent a malformed event")
            )
        if "error" in obj:
            raise _CutError(Failure(502, "upstream_error", "the model server failed mid-stream"))
        self.result.events += 1
        if isinstance(obj.get("usage"), dict):
            self.result.usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise _CutError(
                Failure(502, "upstream_unavailable", "the model server sent a malformed event")
            )
        self._template = {key: value for key, value in obj.items() if key != "choices"}
        keep = bool(obj.get("usage")) or not choices
        for choice in choices:
            keep = self._screen_choice(choice) or keep
        return [_event(obj)] if keep else []

    def _screen_choice(self, choice: object) -> bool:
        """Replace the choice's text with what the screen releases; whether to send it now."""
        if not isinstance(choice, dict):
            raise _CutError(
                Failure(502, "upstream_unavailable", "the model server sent a malformed event")
            )
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        last = choice.get("finish_reason") is not None
        if self._endpoint is Endpoint.CHAT:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            unscreenable = set(delta) - {"role", "content", "refusal"}
            if unscreenable or delta.get("refusal"):
                raise _CutError(
                    Failure(
                        502,
                        "upstream_error",
                        "the model server sent output that cannot be screened",
                    )
                )
            text = delta.get("content")
            released = self._released(index, text if isinstance(text, str) else "", last=last)
            if released or "content" in delta:
                delta["content"] = released
            return bool(released) or last or "role" in delta
        text = choice.get("text")
        released = self._released(index, text if isinstance(text, str) else "", last=last)
        choice["text"] = released
        return bool(released) or last
