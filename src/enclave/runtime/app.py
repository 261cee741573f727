"""The reference model server: an ASGI (Starlette) app speaking the OpenAI API.

Endpoints::

    GET  /health                {"status": "ok", "model": NAME, "weights_sha256": HEX}
    GET  /v1/models             {"object": "list", "data": [model]}
    GET  /v1/models/{name}      the model object, or 404
    POST /v1/chat/completions   chat.completion, or chat.completion.chunk events
    POST /v1/completions        text_completion (streamed: text_completion chunks)
    POST /v1/embeddings         {"object": "list", "data": [embedding, ...]}

With ``"stream": true`` the reply is ``text/event-stream``: one ``data: {json}\\n\\n`` event per
generated token (chat starts with a role event), then a chunk carrying ``finish_reason``, then a
usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]\\n\\n``. Each
event is handed to the server as soon as it is made. A disconnecting client stops generation
at once: a task watches the connection and cancels the stream when the client goes away.

Every error is an OpenAI error object (see :mod:`enclave.runtime.protocol`): 400 for a body
that is not JSON or has a wrong field, 404 for an unknown model or URL, 405 for a wrong
method, 413 for a body over ``max_body_bytes``, 500 for a bug.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclave.runtime.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    error_body,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json_object,
)

if TYPE_CHECKING:
    from collections.abc import Generator

    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from enclave.runtime.model import Generation, NgramModel

__all__ = ["DEFAULT_MAX_BODY_BYTES", "RuntimeStats", "create_app"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024**2
_PIECE = "@@enclave-piece@@"
_DONE = b"data: [DONE]\n\n"
_YIELD_EVERY = 0.001
"""Seconds a fast stream runs before it lets the event loop (and a disconnect) in."""


@dataclass
class RuntimeStats:
    """Counters of one app (``app.state.stats``), for tests and diagnostics."""

    requests: int = 0
    completion_tokens: int = 0
    streams_started: int = 0
    streams_finished: int = 0
    streams_cancelled: int = 0


def create_app(
    model: NgramModel,
    *,
    model_name: str,
    token_delay: float = 0.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The OpenAI-compatible app serving ``model`` as ``model_name``.

    ``token_delay`` (seconds, default 0) makes every generated token take at least that long,
    to stand in for a slower model (long-lived streams for shutdown and screening tests).
    """
    if token_delay < 0:
        raise ValueError("token_delay must not be negative")
    api = _Api(model, model_name, token_delay, max_body_bytes)
    app = Starlette(
        routes=[
            Route("/health", api.health, methods=["GET"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/models/{name:path}", api.model, methods=["GET"]),
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.stats = api.stats
    return app


async def _api_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for ApiError only
        raise exc
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
        code = "unknown_url"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}"
        code = "method_not_allowed"
    else:
        message, code = exc.detail, None
    return JSONResponse(
        error_body(message, code=code), status_code=exc.status_code, headers=exc.headers
    )


async def _internal_error(_request: Request, exc: Exception) -> Response:
    logger.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    message = "The server had an error while processing your request."
    body = error_body(message, type_="server_error")
    return JSONResponse(body, status_code=500)


class _Api:
    def __init__(
        self, model: NgramModel, name: str, token_delay: float, max_body_bytes: int
    ) -> None:
        self.engine = model
        self.name = name
        self.delay = token_delay
        self.max_body = max_body_bytes
        self.stats = RuntimeStats()
        self.created = int(time.time())
        self.fingerprint = f"fp_{model.sha256[:12]}"
        self.card = {"id": name, "object": "model", "created": self.created, "owned_by": "enclave"}

    async def health(self, _request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "model": self.name, "weights_sha256": self.engine.sha256}
        )

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.card]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["name"])
        return JSONResponse(self.card)

    async def chat(self, request: Request) -> Response:
        req = parse_chat(await self._body(request))
        self._check_model(req.model)
        prompt = "\n".join(text for _role, text in req.messages)
        generation = self.engine.generate(prompt, req.params, chat=True)
        head = self._head("chatcmpl", "chat.completion.chunk")
        if req.stream:
            return _EventStream(self._chat_events(head, req, generation), generation, self)
        text = await self._collect(generation)
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                    }
                ],
                "usage": _usage(generation),
            }
        )

    async def completions(self, request: Request) -> Response:
        req = parse_completion(await self._body(request))
        self._check_model(req.model)
        generation = self.engine.generate(req.prompt, req.params)
        head = self._head("cmpl", "text_completion")
        if req.stream:
            return _EventStream(self._completion_events(head, req, generation), generation, self)
        text = await self._collect(generation)
        return JSONResponse(
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                    }
                ],
                "usage": _usage(generation),
            }
        )

    async def embeddings(self, request: Request) -> Response:
        req = parse_embedding(await self._body(request))
        self._check_model(req.model)
        self.stats.requests += 1
        data: list[dict[str, object]] = []
        tokens = 0
        for index, text in enumerate(req.inputs):
            vector = self.engine.embed(text, req.dimensions)
            tokens += self.engine.count_tokens(text)
            encoded: object = vector
            if req.encoding_format == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                encoded = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _body(self, request: Request) -> dict[str, object]:
        self.stats.requests += 1
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks))

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"The request body is larger than {self.max_body} bytes.",
            code="request_too_large",
        )

    def _check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    def _head(self, prefix: str, object_: str) -> dict[str, object]:
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": object_,
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": self.fingerprint,
        }

    async def _collect(self, generation: Generation) -> str:
        if not self.delay:
            text = generation.text()
        else:
            parts = []
            for piece in generation:
                parts.append(piece)
                await anyio.sleep(self.delay)
            text = "".join(parts)
        self.stats.completion_tokens += generation.completion_tokens
        return text

    def _chat_events(
        self, head: dict[str, object], req: ChatRequest, generation: Generation
    ) -> Generator[bytes]:
        usage = {"usage": None} if req.include_usage else {}

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice], **usage}

        yield _event(chunk({"role": "assistant", "content": ""}, None))
        before, after = _template(chunk({"content": _PIECE}, None))
        for piece in generation:
            if piece:
                yield before + json.dumps(piece).encode() + after
        yield _event(chunk({}, generation.finish_reason))
        if req.include_usage:
            yield _event({**head, "choices": [], "usage": _usage(generation)})
        yield _DONE

    def _completion_events(
        self, head: dict[str, object], req: CompletionRequest, generation: Generation
    ) -> Generator[bytes]:
        usage = {"usage": None} if req.include_usage else {}

        def chunk(text: str, finish: str | None) -> dict[str, object]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice], **usage}

        before, after = _template(chunk(_PIECE, None))
        for piece in generation:
            if piece:
                yield before + json.dumps(piece).encode() + after
        yield _event(chunk("", generation.finish_reason))
        if req.include_usage:
            yield _event({**head, "choices": [], "usage": _usage(generation)})
        yield _DONE


def _usage(generation: Generation) -> dict[str, int]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _encode(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _event(obj: object) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def _template(obj: object) -> tuple[bytes, bytes]:
    """Split an event around the JSON string of the placeholder piece (built once a stream)."""
    before, after = _event(obj).split(json.dumps(_PIECE).encode(), 1)
    return before, after


class _EventStream(Response):
    """``text/event-stream`` from a generator of events, stopped when the client leaves."""

    media_type = "text/event-stream"
    charset = "utf-8"

    def __init__(self, events: Generator[bytes], generation: Generation, api: _Api) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.events = events
        self.generation = generation
        self.api = api
        self.done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.api.stats
        stats.streams_started += 1
        finished = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                try:
                    await self._send_events(send)
                    finished = True
                except OSError:  # ASGI 2.4 servers report a closed connection this way
                    pass
                group.cancel_scope.cancel()
        finally:
            self.events.close()
            stats.completion_tokens += self.generation.completion_tokens
            if finished:
                stats.streams_finished += 1
            else:
                stats.streams_cancelled += 1
                logger.info(
                    "stream stopped: client disconnected after %d of at most %d tokens",
                    self.generation.completion_tokens,
                    self.generation.params.max_tokens,
                )

    async def _send_events(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        delay = self.api.delay
        yielded = time.monotonic()
        for event in self.events:
            # each send goes to the socket at once; yielding to the event loop as well lets
            # the disconnect watcher (and other requests) run: after every event when tokens
            # are paced, otherwise once a millisecond, since a loop round trip per token would
            # double the cost of a fast stream
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if delay:
                await anyio.sleep(delay)
            elif (now := time.monotonic()) - yielded >= _YIELD_EVERY:
                await anyio.lowlevel.checkpoint()
                yielded = now
        self.done = True  # from here on a disconnect is the normal end of the response
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    scope.cancel()
                return
