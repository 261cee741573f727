"""Reading an OpenAI-style request: the endpoint, the model, and every text a model would see.

The gateway screens what it forwards, so it forwards what it screened: :func:`parse_request`
re-encodes the parsed JSON canonically (:attr:`ParsedRequest.body`) and the proxy sends *that*,
never the client's bytes. Anything two JSON parsers could read differently is refused instead:
duplicate keys, ``NaN``/``Infinity``, unpaired surrogates, invalid UTF-8, absurd nesting.
Content the screen cannot read (images, audio, files, token-id arrays) is refused too: the
screen fails closed.

The purpose of a request is declared in the ``X-Enclave-Purpose`` header (an OpenAI client
sets it once with ``default_headers``), so the body stays a plain OpenAI request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from enclave.gateway.denial import Denial, DenialCode

if TYPE_CHECKING:
    from collections.abc import Mapping

AUTHORIZATION = "authorization"
PURPOSE_HEADER = "x-enclave-purpose"
MAX_DEPTH = 32
_TEXT_PARTS = frozenset({"text", "refusal"})


class Endpoint(StrEnum):
    """The OpenAI-compatible endpoints the gateway serves."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODELS = "models"

    @property
    def path(self) -> str:
        return _PATHS[self]

    @property
    def audit_action(self) -> str:
        """The audit record's action: ``request.chat``, ``request.models``..."""
        return f"request.{self.value}"

    @classmethod
    def from_path(cls, path: str) -> Endpoint | None:
        return _BY_PATH.get(path.rstrip("/"))


_PATHS = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.MODELS: "/v1/models",
}
_BY_PATH = {path: endpoint for endpoint, path in _PATHS.items()}


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request the gateway can screen and forward."""

    endpoint: Endpoint
    model: str
    stream: bool
    prompt: str = field(repr=False)
    """Every text in the request, one per line: what the screen reads."""
    body: bytes = field(repr=False)
    """The canonical JSON re-encoding: forward exactly this."""
    data: Mapping[str, Any] = field(repr=False)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by lowercase ``name`` (Starlette's ``Headers`` or a plain dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


class _RefusedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _RefusedError("duplicate keys in a JSON object")
    return data


def _no_constants(name: str) -> Any:
    raise _RefusedError(f"{name} is not a JSON number")


def _invalid(message: str) -> Denial:
    return Denial(DenialCode.INVALID_REQUEST, message)


def parse_request(endpoint: Endpoint, raw: bytes) -> ParsedRequest | Denial:  # noqa: PLR0911
    """Parse a request body for ``endpoint``; ``400 invalid_request`` when it cannot be screened.

    Not for ``/v1/models``, which has no body.
    """
    try:
        data = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except _RefusedError as exc:
        return _invalid(f"invalid JSON body: {exc.message}")
    except UnicodeDecodeError:
        return _invalid("the body is not UTF-8")
    except (ValueError, RecursionError):
        return _invalid("the body is not valid JSON")
    if not isinstance(data, dict):
        return _invalid("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("'model' is required")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        return _invalid("'stream' must be true or false")
    try:
        _check_content(endpoint, data)
        texts: list[str] = []
        _collect(data, texts, 0)
        prompt = "\n".join(texts)
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except _RefusedError as exc:
        return _invalid(exc.message)
    except UnicodeEncodeError:
        return _invalid("the body holds an unpaired surrogate escape")
    return ParsedRequest(endpoint, model, stream, prompt, body, data)


def _check_content(endpoint: Endpoint, data: dict[str, Any]) -> None:
    if endpoint is Endpoint.CHAT:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RefusedError("'messages' must be a non-empty list")
        for message in messages:
            if not isinstance(message, dict):
                raise _RefusedError("each message must be an object")
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind not in _TEXT_PARTS:
                        raise _RefusedError(
                            "only text content can be screened: content parts of type "
                            f"{_safe(kind)} are refused"
                        )
            elif content is not None and not isinstance(content, str):
                raise _RefusedError("message content must be a string or a list of parts")
    elif endpoint is Endpoint.COMPLETIONS:
        _texts_only(data.get("prompt"), "prompt")
    elif endpoint is Endpoint.EMBEDDINGS:
        _texts_only(data.get("input"), "input")
    else:
        raise _RefusedError(f"{endpoint.path} takes no request body")


def _texts_only(value: object, name: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return
    raise _RefusedError(
        f"'{name}' must be a string or a list of strings (token ids cannot be screened)"
    )


def _safe(kind: object) -> str:
    if isinstance(kind, str) and kind.replace("_", "").isalnum() and len(kind) <= 32:
        return repr(kind)
    return "other than text"


def _collect(value: object, out: list[str], depth: int) -> None:
    """Every string (and object key) in ``value``: anything a model might read."""
    if depth > MAX_DEPTH:
        raise _RefusedError(f"the body is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if value:
            out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if depth > 0:
                out.append(key)
            _collect(item, out, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out, depth + 1)
