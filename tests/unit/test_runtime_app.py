"""The reference server's OpenAI API, in-process with Starlette's TestClient (and raw ASGI)."""

from __future__ import annotations

import base64
import json
import struct
import time
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.types import Message

from enclave.runtime import (
    NgramModel,
    RuntimeStats,
    SamplingParams,
    builtin_weights,
    create_app,
    embed,
)

with warnings.catch_warnings():
    # Starlette 1.10 asks for the httpx2 package and warns when it finds httpx instead
    warnings.filterwarnings("ignore", "Using `httpx`", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NAME = "assistant"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def model() -> NgramModel:
    return NgramModel(builtin_weights())


@pytest.fixture
def app(model: NgramModel) -> Starlette:
    return create_app(model, model_name=NAME)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def chat_body(**extra: object) -> Json:
    return {
        "model": NAME,
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What does the gateway do?"},
        ],
        **extra,
    }


def events(raw: str) -> list[str]:
    """The data of each SSE event, checking the framing on the way."""
    assert raw.endswith("\n\n")
    blocks = raw.split("\n\n")[:-1]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
    return [block.removeprefix("data: ") for block in blocks]


def stats(app: Starlette) -> RuntimeStats:
    result = app.state.stats
    assert isinstance(result, RuntimeStats)
    return result


# --- the endpoints ----------------------------------------------------------------------------


def test_health_names_the_model_and_the_weights(client: TestClient, model: NgramModel) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": NAME, "weights_sha256": model.sha256}


def test_models_lists_the_one_model(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert card["id"] == NAME and card["object"] == "model" and card["owned_by"] == "enclave"
    assert client.get(f"/v1/models/{NAME}").json() == card
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_chat_completion(client: TestClient, model: NgramModel) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(max_tokens=12))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == NAME
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    prompt = "You answer briefly.\nWhat does the gateway do?"
    expected = model.generate(prompt, SamplingParams(max_tokens=12), chat=True).text()
    assert choice["message"]["content"] == expected
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}


def test_identical_requests_give_identical_output(client: TestClient) -> None:
    def content(**extra: object) -> str:
        body = client.post("/v1/chat/completions", json=chat_body(**extra)).json()
        return str(body["choices"][0]["message"]["content"])

    assert content() == content()
    assert content(seed=3, temperature=0.9) == content(seed=3, temperature=0.9)
    assert len({content(seed=seed) for seed in range(6)}) > 1
    assert content(temperature=0, seed=1) == content(temperature=0, seed=2)


def test_chat_takes_text_content_parts_and_max_completion_tokens(client: TestClient) -> None:
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Plan a convoy."}]}],
        "max_completion_tokens": 5,
    }
    result = client.post("/v1/chat/completions", json=body).json()
    assert result["usage"]["completion_tokens"] == 5
    assert result["usage"]["prompt_tokens"] == 4


def test_text_completion(client: TestClient, model: NgramModel) -> None:
    response = client.post("/v1/completions", json={"model": NAME, "prompt": "The gateway"})
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["text"] == model.generate("The gateway", SamplingParams()).text()
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18}
    as_list = client.post("/v1/completions", json={"model": NAME, "prompt": ["The gateway"]})
    assert as_list.json()["choices"] == body["choices"]


def test_stop_sequences_over_the_api(client: TestClient) -> None:
    full = client.post(
        "/v1/completions", json={"model": NAME, "prompt": "The gateway", "max_tokens": 40}
    ).json()["choices"][0]["text"]
    stop = full.split()[3]
    body = {"model": NAME, "prompt": "The gateway", "max_tokens": 40, "stop": stop}
    [choice] = client.post("/v1/completions", json=body).json()["choices"]
    assert choice == {**choice, "text": full[: full.index(stop)], "finish_reason": "stop"}


def test_streamed_chat(client: TestClient) -> None:
    plain = client.post("/v1/chat/completions", json=chat_body(max_tokens=10)).json()
    with client.stream(
        "POST", "/v1/chat/completions", json=chat_body(max_tokens=10, stream=True)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        raw = response.read().decode()
    data = events(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 10  # one event per token
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in tokens)
    content = "".join(chunk["choices"][0]["delta"]["content"] for chunk in tokens)
    assert content == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert all("usage" not in chunk for chunk in chunks)


def test_streamed_completion_with_usage(client: TestClient, model: NgramModel) -> None:
    body = {
        "model": NAME,
        "prompt": "Logistics planning",
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/completions", json=body) as response:
        data = events(response.read().decode())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    tokens, final, usage = chunks[:-2], chunks[-2], chunks[-1]
    assert [chunk["usage"] for chunk in [*tokens, final]] == [None] * 7
    text = "".join(chunk["choices"][0]["text"] for chunk in tokens)
    assert text == model.generate("Logistics planning", SamplingParams(max_tokens=6)).text()
    assert final["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}


def test_embeddings(client: TestClient) -> None:
    inputs = ["The enclave", "logistics planning"]
    body = client.post("/v1/embeddings", json={"model": NAME, "input": inputs}).json()
    assert body["object"] == "list"
    assert body["model"] == NAME
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert [item["embedding"] for item in body["data"]] == [embed(text) for text in inputs]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}

    encoded = client.post(
        "/v1/embeddings",
        json={"model": NAME, "input": "The enclave", "encoding_format": "base64", "dimensions": 8},
    ).json()
    packed = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack("<8f", packed)
    assert decoded == pytest.approx(embed("The enclave", 8))


# --- errors -----------------------------------------------------------------------------------


def assert_error(response: Any, status: int, code: str | None, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b'{"a": NaN}'])
def test_bodies_that_are_not_a_json_object(client: TestClient, body: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert_error(client.post(path, content=body), 400, "invalid_json")


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"max_tokens": "5"}, "invalid_type", "max_tokens"),
        ({"max_tokens": True}, "invalid_type", "max_tokens"),
        ({"max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"max_tokens": 100_000}, "invalid_value", "max_tokens"),
        ({"temperature": "hot"}, "invalid_type", "temperature"),
        ({"temperature": 3}, "invalid_value", "temperature"),
        ({"top_p": 0}, "invalid_value", "top_p"),
        ({"seed": 1.5}, "invalid_type", "seed"),
        ({"stop": 5}, "invalid_type", "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({"stop": ""}, "invalid_value", "stop"),
        ({"stream": "yes"}, "invalid_type", "stream"),
        ({"stream_options": {"include_usage": True}}, "invalid_value", "stream_options"),
        ({"n": 2}, "unsupported_parameter", "n"),
        ({"logprobs": True}, "unsupported_parameter", "logprobs"),
        ({"messages": "hi"}, "invalid_type", "messages"),
        ({"messages": []}, "invalid_value", "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "missing_required_parameter", "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_type", "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "unsupported_content",
            "messages[0].content[0]",
        ),
        ({"model": 7}, "invalid_type", "model"),
    ],
)
def test_chat_bodies_with_wrong_fields(
    client: TestClient, extra: Json, code: str, param: str
) -> None:
    assert_error(client.post("/v1/chat/completions", json=chat_body(**extra)), 400, code, param)


def test_type_errors_read_like_openai(client: TestClient) -> None:
    message = assert_error(
        client.post("/v1/chat/completions", json=chat_body(max_tokens="5")),
        400,
        "invalid_type",
        "max_tokens",
    )
    assert message == (
        "Invalid type for 'max_tokens': expected an integer, but got a string instead."
    )


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        ("/v1/chat/completions", {"messages": []}, "missing_required_parameter", "model"),
        ("/v1/completions", {"model": NAME}, "missing_required_parameter", "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": [1, 2]}, "invalid_type", "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, "invalid_value", "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": "a", "echo": True}, None, "echo"),
        ("/v1/embeddings", {"model": NAME}, "missing_required_parameter", "input"),
        ("/v1/embeddings", {"model": NAME, "input": []}, "invalid_value", "input"),
        (
            "/v1/embeddings",
            {"model": NAME, "input": "x", "encoding_format": "int8"},
            "invalid_value",
            "encoding_format",
        ),
        (
            "/v1/embeddings",
            {"model": NAME, "input": "x", "dimensions": 999},
            "invalid_value",
            "dimensions",
        ),
    ],
)
def test_other_bodies_with_wrong_fields(
    client: TestClient, path: str, body: Json, code: str | None, param: str
) -> None:
    assert_error(client.post(path, json=body), 400, code or "unsupported_parameter", param)


def test_an_unknown_model_is_404(client: TestClient) -> None:
    for path, body in (
        ("/v1/chat/completions", chat_body(model="gpt-4")),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}),
        ("/v1/embeddings", {"model": "gpt-4", "input": "x"}),
    ):
        message = assert_error(client.post(path, json=body), 404, "model_not_found", "model")
        assert message == "The model `gpt-4` does not exist or you do not have access to it."


def test_unknown_urls_and_methods(client: TestClient) -> None:
    message = assert_error(client.post("/v1/nope", json={}), 404, "unknown_url")
    assert message == "Invalid URL (POST /v1/nope)"
    response = client.get("/v1/chat/completions")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_oversized_bodies_are_413(model: NgramModel) -> None:
    with TestClient(create_app(model, model_name=NAME, max_body_bytes=256)) as small:
        body = chat_body(messages=[{"role": "user", "content": "word " * 100}])
        assert_error(small.post("/v1/chat/completions", json=body), 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no content-length: counted while reading
            yield b'{"model": "assistant", "input": "'
            yield b"x" * 400
            yield b'"}'

        assert_error(small.post("/v1/embeddings", content=chunks()), 413, "request_too_large")


def test_internal_errors_have_the_openai_shape(model: NgramModel) -> None:
    class Broken(NgramModel):
        def embed(self, text: str, dimensions: int = 256) -> list[float]:
            raise RuntimeError("boom")

    app = create_app(Broken(model.weights), model_name=NAME)
    with TestClient(app, raise_server_exceptions=False) as broken_client:
        response = broken_client.post("/v1/embeddings", json={"model": NAME, "input": "x"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "boom" not in response.text


# --- streaming mechanics ----------------------------------------------------------------------


def http_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
    }


def stream_over_asgi(
    app: Starlette, *, leave_after: int, send_yields: bool = True, raise_on_send: bool = False
) -> int:
    """Stream a long completion and have the client vanish after ``leave_after`` events.

    ``send_yields``: the server's send() lets the event loop run (as it does when the
    socket's buffer is full); otherwise only the app's own periodic yields do.
    """
    body = json.dumps(
        {"model": NAME, "prompt": "The gateway", "max_tokens": 4096, "stream": True}
    ).encode()
    bodies = 0

    async def main() -> None:
        gone = anyio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal bodies
            if message["type"] == "http.response.body":
                if gone.is_set() and raise_on_send:
                    raise OSError("connection closed")
                bodies += 1
                if bodies >= leave_after:
                    gone.set()
            if send_yields:
                await anyio.lowlevel.checkpoint()

        await app(http_scope("/v1/completions"), receive, send)

    anyio.run(main)
    return bodies


def test_a_disconnecting_client_stops_generation(app: Starlette) -> None:
    sent = stream_over_asgi(app, leave_after=3)
    assert sent < 10
    counters = stats(app)
    assert counters.streams_cancelled == 1
    assert counters.streams_finished == 0
    assert counters.completion_tokens < 10  # not 4096


def test_a_stream_that_never_waits_still_notices_a_disconnect(app: Starlette) -> None:
    # send() never suspends: the app's own yield (once a millisecond) lets the watcher run
    sent = stream_over_asgi(app, leave_after=3, send_yields=False)
    assert sent < 2048  # the whole stream takes tens of milliseconds
    assert stats(app).streams_cancelled == 1


def test_a_send_that_fails_stops_generation(app: Starlette) -> None:
    # ASGI 2.4 servers raise OSError from send() once the client is gone
    sent = stream_over_asgi(app, leave_after=3, send_yields=False, raise_on_send=True)
    assert sent == 3
    assert stats(app).streams_cancelled == 1


def test_a_finished_stream_is_counted_as_finished(app: Starlette, client: TestClient) -> None:
    body = {"model": NAME, "prompt": "x", "max_tokens": 3, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.read()
    counters = stats(app)
    assert (counters.streams_finished, counters.streams_cancelled) == (1, 0)
    assert counters.completion_tokens == 3


def test_token_delay_paces_generation(model: NgramModel) -> None:
    with TestClient(create_app(model, model_name=NAME, token_delay=0.02)) as slow:
        start = time.perf_counter()
        slow.post("/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": 5})
        assert time.perf_counter() - start >= 0.1
    with pytest.raises(ValueError, match="negative"):
        create_app(model, model_name=NAME, token_delay=-1)
