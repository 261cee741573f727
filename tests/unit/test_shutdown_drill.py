"""The drill's synthetic load, against a fake gateway with a slow model (mock transport).

What is pinned: the client-side latencies a drill reports are the gateway's, not the model's
(a kill that lands while every real request waits for a slow model is still seen at once,
through the probes), streams in flight at the kill are timed to their terminal error event,
and a request sent after the kill and served is counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx

from enclave.shutdown.drill import PROBE_MODEL, DrillLoad

MODEL = "assistant"
TOKEN_DELAY = 0.02
"""Seconds per generated token of the fake model."""
REQUEST_SECONDS = 1.0
"""How long the fake model takes to answer a whole (non-streamed) request."""
KILL_LANDS = 0.02
"""Seconds from the kill sent to the gateway denying."""


def _event(data: object) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class FakeGateway:
    """Answers like an enclave gateway: streams and requests from a slow model; denies once
    killed (unless ``broken``: then it keeps serving whole requests)."""

    def __init__(self, *, broken: bool = False, request_seconds: float = REQUEST_SECONDS) -> None:
        self.killed = threading.Event()
        self.broken = broken
        self.request_seconds = request_seconds
        self.probes = 0
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["model"] == PROBE_MODEL:
            with self.lock:
                self.probes += 1
        serves_anyway = self.broken and body["model"] == MODEL and not body["stream"]
        if self.killed.is_set() and not serves_anyway:
            return httpx.Response(503, json={"error": {"code": "enclave_shutdown"}})
        if body["model"] != MODEL:
            return httpx.Response(404, json={"error": {"code": "model_not_found"}})
        if body["stream"]:
            return httpx.Response(200, content=self._stream(int(body["max_tokens"]) * 100))
        time.sleep(self.request_seconds)
        return httpx.Response(200, json={"choices": [{"message": {"content": "bonjour"}}]})

    def _stream(self, tokens: int) -> Iterator[bytes]:
        for _ in range(tokens):
            if self.killed.is_set():
                yield _event({"error": {"code": "enclave_shutdown", "message": "killed"}})
                return
            yield _event({"choices": [{"delta": {"content": "mot "}}]})
            time.sleep(TOKEN_DELAY)
        yield b"data: [DONE]\n\n"


def _drill(gateway: FakeGateway) -> DrillLoad:
    load = DrillLoad(
        "http://gateway.test",
        "enc_token",
        purpose="translation",
        model=MODEL,
        streams=3,
        transport=httpx.MockTransport(gateway.handle),
    )
    with load:
        time.sleep(0.3)  # streams flowing, a slow request in flight
        load.mark()
        time.sleep(KILL_LANDS)
        gateway.killed.set()
        load.killed()
        time.sleep(0.3)
    return load


def test_the_deny_is_seen_at_once_though_every_real_request_waits_for_a_slow_model() -> None:
    gateway = FakeGateway()
    seen = _drill(gateway).seen
    assert gateway.probes > 10
    assert seen.denied_at is not None
    # the real request in flight at the kill is answered 0.7 s after it: the probes saw it
    assert KILL_LANDS <= seen.denied_at < 0.25, seen
    assert seen.served_after == 0
    client = seen.client_ms()
    assert set(client) == {"deny", "stream_cut"}


def test_every_stream_in_flight_is_timed_to_its_terminal_error() -> None:
    seen = _drill(FakeGateway()).seen
    assert len(seen.cut_at) == 3  # all three streams were in flight, and all were cut
    assert all(KILL_LANDS <= at < KILL_LANDS + 10 * TOKEN_DELAY for at in seen.cut_at), seen
    assert seen.client_ms()["stream_cut"] == max(seen.cut_at) * 1000


def test_a_request_sent_after_the_kill_and_served_is_counted() -> None:
    seen = _drill(FakeGateway(broken=True, request_seconds=0.05)).seen
    assert seen.served_after >= 1
    assert seen.denied_at is not None  # the probes were refused: only whole requests got out
