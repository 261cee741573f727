"""Synthetic load for a kill drill, and what it saw of the kill.

The load runs ``streams`` streaming chats, one loop of short requests and one loop of probes
through a gateway, each on its own connection, from threads. Once the drill's kill is sent it
notes, from the client's side, how long until a new request was refused ``503
enclave_shutdown`` (``deny``) and until every stream that was in flight got its terminal error
event (``stream_cut``), and counts requests sent after the kill that were served (there must be
none). Traffic goes only to the gateway URL it is given.

The probes keep ``deny`` independent of the model's speed: a real request sent just before the
kill is answered only when its model has finished (or died), so the next real request, the first
that can be refused, may leave long after the kill. A probe is a chat request for a model no
enclave serves (:data:`PROBE_MODEL`): the gateway answers it at once, ``404 model_not_found``
while serving and ``503 enclave_shutdown`` from the moment it denies (the shutdown state is
checked before the model is looked up, for every request). A probe reaches no model, uses no
share of the principal's rate limit and is never served.

Streams are in flight at the kill only if the model is slow enough: a fast model has finished
every stream before the kill lands, and ``stream_cut`` is then not measured (``enclave runtime
serve --token-delay``, given through ``spec.models[].args``, slows the reference model).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import httpx

__all__ = ["DrillLoad", "LoadSeen"]

PURPOSE = "x-enclave-purpose"
PROBE_MODEL = "enclave-drill-probe/no-such-model"
"""The model a probe asks for: not a valid model name, so no enclave serves it."""
PROBE_EVERY = 0.005
"""Seconds between two probes."""
STREAM_TOKENS = 24
"""Short streams, looping: some are always in flight, and little generated text means little
for the output screen to trip on (a tripped screen counts towards the violation-rate kill)."""


@dataclass(slots=True)
class LoadSeen:
    """What the load saw; times in seconds from :meth:`DrillLoad.mark` (the kill sent)."""

    requests: int = 0
    ok: int = 0
    denied_at: float | None = None
    cut_at: list[float] = field(default_factory=list)
    """When each stream that was in flight at the kill ended (cut)."""
    served_after: int = 0
    """Requests answered 200 that were *sent* after the kill was complete (must be 0)."""

    def client_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.denied_at is not None:
            out["deny"] = self.denied_at * 1000
        if self.cut_at:
            out["stream_cut"] = max(self.cut_at) * 1000
        return out


class DrillLoad:
    """Streams and requests through ``url`` with ``token`` for ``purpose`` until stopped."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        purpose: str,
        model: str,
        streams: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Bearer {token}", PURPOSE: purpose}
        self.model = model
        self.streams = streams
        self._transport = transport
        self.seen = LoadSeen()
        self._t0: float | None = None
        self._killed_at: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> DrillLoad:
        for index in range(self.streams):
            self._start(self._stream_loop, f"drill-stream-{index}")
        self._start(self._request_loop, "drill-requests")
        self._start(self._probe_loop, "drill-probes")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _start(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def mark(self) -> None:
        """The kill is being sent now."""
        self._t0 = time.perf_counter()

    def killed(self) -> None:
        """The kill has completed (the controller answered)."""
        self._killed_at = time.perf_counter()

    def _since(self) -> float | None:
        return None if self._t0 is None else time.perf_counter() - self._t0

    def _body(self, *, stream: bool, max_tokens: int, model: str = "") -> dict[str, object]:
        return {
            "model": model or self.model,
            "stream": stream,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Translate into French: a long report."}],
        }

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=30.0, trust_env=False, transport=self._transport
        )

    def _request_loop(self) -> None:
        with self._client() as client:
            while not self._stop.is_set():
                sent = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    answer = client.post(
                        "/v1/chat/completions",
                        json=self._body(stream=False, max_tokens=4),
                        headers=self.headers,
                    )
                    self._note_answer(answer, sent)
                time.sleep(0.002)

    def _probe_loop(self) -> None:
        body = self._body(stream=False, max_tokens=1, model=PROBE_MODEL)
        with self._client() as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    answer = client.post("/v1/chat/completions", json=body, headers=self.headers)
                    with self._lock:
                        self._note_denial(answer, self._since())
                time.sleep(PROBE_EVERY)

    def _note_answer(self, answer: httpx.Response, sent: float) -> None:
        since = self._since()
        with self._lock:
            self.seen.requests += 1
            if answer.status_code == 200:
                self.seen.ok += 1
                if self._killed_at is not None and sent > self._killed_at:
                    self.seen.served_after += 1
            else:
                self._note_denial(answer, since)

    def _note_denial(self, answer: httpx.Response, since: float | None) -> None:
        """The first ``503 enclave_shutdown`` after the kill was sent (call under the lock)."""
        if (
            answer.status_code == 503
            and since is not None
            and self.seen.denied_at is None
            and b"enclave_shutdown" in answer.content
        ):
            self.seen.denied_at = since

    def _stream_loop(self) -> None:
        with self._client() as client:
            while not self._stop.is_set():
                began_before_kill = self._t0 is None
                with (
                    contextlib.suppress(httpx.HTTPError),
                    client.stream(
                        "POST",
                        "/v1/chat/completions",
                        json=self._body(stream=True, max_tokens=STREAM_TOKENS),
                        headers=self.headers,
                    ) as answer,
                ):
                    if answer.status_code != 200:
                        time.sleep(0.01)
                        continue
                    cut = False
                    for line in answer.iter_lines():
                        if '"error"' in line:
                            cut = True
                        if self._stop.is_set():
                            break
                    since = self._since()
                    if began_before_kill and since is not None and cut:
                        with self._lock:
                            self.seen.cut_at.append(since)
