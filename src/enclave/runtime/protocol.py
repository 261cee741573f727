"""The OpenAI wire format the reference server speaks: request checks and response objects.

Request bodies are checked by hand, field by field, so an error names the field and says what
was expected the way the OpenAI API does (``Invalid type for 'max_tokens': expected an integer,
but got a string instead.``). Unknown fields are ignored, as OpenAI-compatible servers do;
fields that would change the shape of a response and are not supported (``n`` > 1,
``logprobs``, ``echo``, ``best_of`` > 1, non-text content parts) are refused rather than
silently ignored.

Errors have OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens",
               "code": "invalid_type"}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from enclave.runtime.model import EMBEDDING_DIMENSIONS, MAX_STOP_SEQUENCES, SamplingParams

__all__ = [
    "CHAT_ROLES",
    "DEFAULT_CHAT_MAX_TOKENS",
    "DEFAULT_COMPLETION_MAX_TOKENS",
    "MAX_EMBEDDING_INPUTS",
    "MAX_TOKENS",
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "error_body",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "parse_json_object",
]

MAX_TOKENS = 4096
"""The most tokens one request may ask for (the model's context length)."""
DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default for ``/v1/completions``."""
DEFAULT_CHAT_MAX_TOKENS = 64
"""The reference model never ends a reply by itself, so chat needs a finite default."""
MAX_EMBEDDING_INPUTS = 2048
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

ErrorType = Literal["invalid_request_error", "server_error"]


class ApiError(Exception):
    """A request the server answers with an OpenAI error object (never raised to callers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: ErrorType = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_

    def body(self) -> dict[str, object]:
        return error_body(self.message, type_=self.type, code=self.code, param=self.param)


def error_body(
    message: str,
    *,
    type_: ErrorType = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, object]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True, slots=True)
class _Generate:
    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class ChatRequest(_Generate):
    """A checked ``/v1/chat/completions`` body."""

    messages: tuple[tuple[str, str], ...]
    """(role, text) pairs; content parts are joined."""


@dataclass(frozen=True, slots=True)
class CompletionRequest(_Generate):
    """A checked ``/v1/completions`` body."""

    prompt: str


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A checked ``/v1/embeddings`` body."""

    model: str
    inputs: tuple[str, ...]
    encoding_format: Literal["float", "base64"]
    dimensions: int


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, object]:
    """Decode a request body that must be one JSON object (NaN and Infinity refused)."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. The API expects a JSON object; "
            "what was sent was not valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_error(param: str, expected: str, value: object) -> ApiError:
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_type",
        param=param,
    )


def _value_error(param: str, message: str) -> ApiError:
    return ApiError(
        400, f"Invalid value for '{param}': {message}", code="invalid_value", param=param
    )


class _Fields:
    """Typed access to the fields of one JSON object, raising OpenAI-style errors."""

    def __init__(self, data: dict[str, object], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def required(self, key: str) -> object:
        if key not in self.data:
            raise ApiError(
                400,
                f"Missing required parameter: '{self.name(key)}'.",
                code="missing_required_parameter",
                param=self.name(key),
            )
        return self.data[key]

    def string(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str):
            raise _type_error(self.name(key), "a string", value)
        return value

    def optional_int(self, key: str, low: int, high: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if type(value) is not int:
            raise _type_error(self.name(key), "an integer", value)
        if not low <= value <= high:
            raise _value_error(self.name(key), f"expected a value between {low} and {high}.")
        return value

    def optional_number(
        self, key: str, low: float, high: float, *, low_open: bool = False
    ) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if type(value) not in (int, float):
            raise _type_error(self.name(key), "a number", value)
        number = float(value)  # type: ignore[arg-type]  # int or float, checked above
        below = number <= low if low_open else number < low
        if not math.isfinite(number) or below or number > high:
            bound = "greater than" if low_open else "at least"
            raise _value_error(self.name(key), f"expected {bound} {low} and at most {high}.")
        return number

    def optional_bool(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise _type_error(self.name(key), "a boolean", value)
        return value

    def optional_object(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _type_error(self.name(key), "an object", value)
        return _Fields(value, f"{self.name(key)}.")

    def strings(self, key: str, *, most: int) -> list[str]:
        """A required string, or array of 1 to ``most`` strings."""
        return self._strings(key, self.required(key), most)

    def optional_strings(self, key: str, *, most: int) -> list[str] | None:
        value = self.data.get(key)
        return None if value is None else self._strings(key, value, most)

    def _strings(self, key: str, value: object, most: int) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _type_error(self.name(key), "a string or an array of strings", value)
        if not 1 <= len(value) <= most:
            raise _value_error(self.name(key), f"expected between 1 and {most} strings.")
        return value

    def unsupported(self, key: str, allowed: object = None) -> None:
        value = self.data.get(key)
        if value is not None and value != allowed and value is not False:
            raise ApiError(
                400,
                f"Unsupported parameter: '{self.name(key)}' is not supported by this model "
                f"(only {json.dumps(allowed)}).",
                code="unsupported_parameter",
                param=self.name(key),
            )


def _generate_fields(fields: _Fields, default_max_tokens: int) -> _Generate:
    model = fields.string("model")
    fields.unsupported("n", 1)
    fields.unsupported("logprobs")
    fields.unsupported("top_logprobs")
    max_tokens = fields.optional_int("max_tokens", 1, MAX_TOKENS)
    newer = fields.optional_int("max_completion_tokens", 1, MAX_TOKENS)
    stop = fields.optional_strings("stop", most=MAX_STOP_SEQUENCES) or []
    if not all(stop):
        raise _value_error("stop", "stop sequences must not be empty.")
    temperature = fields.optional_number("temperature", 0.0, 2.0)
    top_p = fields.optional_number("top_p", 0.0, 1.0, low_open=True)
    seed = fields.optional_int("seed", -(2**63), 2**64 - 1)
    stream = bool(fields.optional_bool("stream"))
    options = fields.optional_object("stream_options")
    include_usage = bool(options.optional_bool("include_usage")) if options else False
    if options is not None and not stream:
        raise _value_error("stream_options", "only allowed when 'stream' is true.")
    params = SamplingParams(
        max_tokens=newer or max_tokens or default_max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        seed=0 if seed is None else seed,
        stop=tuple(stop),
    )
    return _Generate(model=model, params=params, stream=stream, include_usage=include_usage)


def parse_chat(data: dict[str, object]) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body."""
    fields = _Fields(data)
    common = _generate_fields(fields, DEFAULT_CHAT_MAX_TOKENS)
    raw = fields.required("messages")
    if not isinstance(raw, list):
        raise _type_error("messages", "an array", raw)
    if not raw:
        raise _value_error("messages", "expected at least one message.")
    messages = tuple(_message(item, f"messages[{i}]") for i, item in enumerate(raw))
    return ChatRequest(
        model=common.model,
        params=common.params,
        stream=common.stream,
        include_usage=common.include_usage,
        messages=messages,
    )


def _message(item: object, where: str) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise _type_error(where, "an object", item)
    fields = _Fields(item, f"{where}.")
    role = fields.string("role")
    if role not in CHAT_ROLES:
        raise _value_error(fields.name("role"), f"expected one of {', '.join(sorted(CHAT_ROLES))}.")
    content = item.get("content")
    if content is None or isinstance(content, str):
        return role, content or ""
    if not isinstance(content, list):
        raise _type_error(fields.name("content"), "a string or an array of parts", content)
    texts = []
    for j, part in enumerate(content):
        part_name = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _type_error(part_name, "an object", part)
        part_fields = _Fields(part, f"{part_name}.")
        kind = part_fields.string("type")
        if kind != "text":
            raise ApiError(
                400,
                f"Unsupported content part type {kind!r} in '{part_name}': this model reads "
                "text only.",
                code="unsupported_content",
                param=part_name,
            )
        texts.append(part_fields.string("text"))
    return role, "\n".join(texts)


def parse_completion(data: dict[str, object]) -> CompletionRequest:
    """Check a ``/v1/completions`` body (one prompt string, or an array of one)."""
    fields = _Fields(data)
    common = _generate_fields(fields, DEFAULT_COMPLETION_MAX_TOKENS)
    fields.unsupported("echo")
    fields.unsupported("best_of", 1)
    fields.unsupported("suffix")
    prompts = fields.strings("prompt", most=1)
    return CompletionRequest(
        model=common.model,
        params=common.params,
        stream=common.stream,
        include_usage=common.include_usage,
        prompt=prompts[0],
    )


def parse_embedding(data: dict[str, object]) -> EmbeddingRequest:
    """Check a ``/v1/embeddings`` body."""
    fields = _Fields(data)
    model = fields.string("model")
    inputs = fields.strings("input", most=MAX_EMBEDDING_INPUTS)
    encoding = data.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise _value_error("encoding_format", "expected 'float' or 'base64'.")
    dimensions = fields.optional_int("dimensions", 1, EMBEDDING_DIMENSIONS)
    return EmbeddingRequest(
        model=model,
        inputs=tuple(inputs),
        encoding_format="float" if encoding == "float" else "base64",
        dimensions=dimensions or EMBEDDING_DIMENSIONS,
    )
