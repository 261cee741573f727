"""The gateway app in-process (Starlette's TestClient), the real reference runtime upstream."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.types import Message

from enclave.audit import AuditLog, AuditRecord, Ed25519Signer, verify_log
from enclave.audit.reader import iter_records
from enclave.gateway.app import GatewaySettings, create_app
from enclave.gateway.pipeline import Pipeline
from enclave.gateway.ratelimit import RateLimiter
from enclave.runtime import NgramModel, RuntimeStats, builtin_weights
from enclave.runtime import create_app as create_runtime
from support.gateway import Clock, Tokens, bearer, build_pipeline, issue_for_spec, load_screen
from support.gateway import write_spec as write_gateway_spec
from support.gateway_app import BannedWordScreen, closed_port
from support.upstream import HttpxUpstream
from support.workspace import make_workspace

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx`", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PROHIBITED = "Track the movements of all citizens in Springfield using their phone location data."
Json = dict[str, Any]


@pytest.fixture(scope="module")
def model() -> NgramModel:
    return NgramModel(builtin_weights())


@dataclass
class Env:
    client: TestClient
    app: Starlette
    runtime: Starlette
    pipeline: Pipeline
    tokens: Tokens
    clock: Clock
    screen: BannedWordScreen
    log: AuditLog
    audit_dir: Path

    def token(self, principal: str) -> str:
        return self.tokens.by_principal[principal]

    def headers(self, principal: str, purpose: str | None = "translation") -> dict[str, str]:
        headers = bearer(self.token(principal))
        if purpose is not None:
            headers["x-enclave-purpose"] = purpose
        return headers

    def chat(
        self, principal: str = "alice", purpose: str | None = "translation", **body: Any
    ) -> httpx.Response:
        payload: Json = {
            "model": "assistant",
            "messages": [{"role": "user", "content": "What does the gateway do?"}],
            **body,
        }
        response: httpx.Response = self.client.post(
            "/v1/chat/completions", json=payload, headers=self.headers(principal, purpose)
        )
        return response

    @property
    def upstream_requests(self) -> int:
        stats = self.runtime.state.stats
        assert isinstance(stats, RuntimeStats)
        return stats.requests

    def records(self) -> list[AuditRecord]:
        return list(iter_records(self.audit_dir))


def make_env(
    tmp_path: Path,
    model: NgramModel,
    *,
    upstream: str = "http://assistant",
    transport: httpx.AsyncBaseTransport | None = None,
    real_pool: bool = False,
    settings: GatewaySettings | None = None,
) -> tuple[Starlette, Env]:
    loaded = write_gateway_spec(make_workspace(tmp_path))
    tokens = issue_for_spec(loaded)
    clock = Clock()
    screen = BannedWordScreen(load_screen(loaded))
    pipeline = build_pipeline(loaded, tokens, clock, screen=screen)  # type: ignore[arg-type]
    audit_dir = tmp_path / "audit"
    log = AuditLog.open(audit_dir, enclave="gw", signer=Ed25519Signer.generate())
    runtime = create_runtime(model, model_name="assistant")
    app = create_app(
        pipeline,
        upstreams={"assistant": upstream},
        audit_log=log,
        settings=settings,
        overrides=None
        if real_pool
        else {"assistant": HttpxUpstream(transport or httpx.ASGITransport(app=runtime))},
    )
    env = Env(TestClient(app), app, runtime, pipeline, tokens, clock, screen, log, audit_dir)
    return app, env


@pytest.fixture
def env(tmp_path: Path, model: NgramModel) -> Iterator[Env]:
    _app, made = make_env(tmp_path, model)
    try:
        with made.client:
            yield made
    finally:
        made.log.close()
    report = verify_log(made.audit_dir)
    assert report.intact, report.summary()


def last(records: list[AuditRecord], action: str) -> AuditRecord:
    return [record for record in records if record.action == action][-1]


def error_code(response: httpx.Response) -> str:
    code = response.json()["error"]["code"]
    assert isinstance(code, str)
    return code


# --- allowed requests -----------------------------------------------------------------------


def test_chat_is_forwarded_screened_and_audited(env: Env) -> None:
    response = env.chat(max_tokens=12)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    rid = response.headers["x-request-id"]
    records = [r for r in env.records() if r.request_id == rid]
    assert [r.action for r in records] == ["request.chat", "response.chat"]
    decision, completion = records
    assert decision.decision == "allow" and decision.actor == "alice"
    assert decision.purpose == "translation" and decision.prompt_sha256
    assert completion.output_sha256 is not None and completion.latency_ms is not None
    assert completion.details is not None and completion.details["usage"]["completion_tokens"] > 0


def test_completions_embeddings_and_models(env: Env) -> None:
    headers = env.headers("alice")
    completion = env.client.post(
        "/v1/completions",
        json={"model": "assistant", "prompt": "The gateway", "max_tokens": 8},
        headers=headers,
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["text"]
    embedding = env.client.post(
        "/v1/embeddings", json={"model": "assistant", "input": ["a", "b"]}, headers=headers
    )
    assert embedding.status_code == 200, embedding.text
    assert len(embedding.json()["data"]) == 2
    models = env.client.get("/v1/models", headers=bearer(env.token("alice")))
    assert models.status_code == 200, models.text
    assert [card["id"] for card in models.json()["data"]] == ["assistant"]


def test_streaming_passes_through_whole(env: Env) -> None:
    whole = env.chat(max_tokens=40, seed=3).json()["choices"][0]["message"]["content"]
    with env.client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "stream": True,
            "max_tokens": 40,
            "seed": 3,
            "messages": [{"role": "user", "content": "What does the gateway do?"}],
        },
        headers=env.headers("alice"),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "")
        for e in events[:-1]
        if json.loads(e)["choices"]
    )
    assert text == whole
    assert last(env.records(), "response.chat").decision == "allow"


# --- denials --------------------------------------------------------------------------------


def test_each_denial_code(env: Env) -> None:
    before = env.upstream_requests
    cases: list[tuple[httpx.Response, int, str]] = []
    no_key = env.client.post("/v1/chat/completions", json={"model": "assistant"})
    cases.append((no_key, 401, "invalid_api_key"))
    cases.append((env.chat("bob", "translation"), 403, "forbidden"))
    cases.append((env.chat("alice", None), 403, "purpose_not_permitted"))
    prohibited = env.client.post(
        "/v1/chat/completions",
        json={"model": "assistant", "messages": [{"role": "user", "content": PROHIBITED}]},
        headers=env.headers("alice"),
    )
    cases.append((prohibited, 403, "prohibited_use"))
    too_large = env.client.post(
        "/v1/completions",
        content=b"x" * (64 * 1024 + 1),
        headers={**env.headers("alice"), "content-type": "application/json"},
    )
    cases.append((too_large, 413, "request_too_large"))
    for response, status, code in cases:
        assert (response.status_code, error_code(response)) == (status, code), response.text
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    assert prohibited.json()["error"]["prohibited_use"] == "domestic-mass-surveillance"
    assert env.upstream_requests == before  # nothing refused was forwarded
    denied = [r for r in env.records() if r.decision == "deny"]
    assert {r.reason for r in denied} >= {"invalid_api_key", "forbidden", "prohibited_use"}
    assert env.client.get("/metrics").status_code == 401
    assert env.client.get("/metrics", headers=bearer(env.token("alice"))).status_code == 403
    metrics = env.client.get("/metrics", headers=bearer(env.token("erin"))).text
    assert (
        'enclave_gateway_violations_total{scope="prompt",use="domestic-mass-surveillance"} 1.0'
        in metrics
    )
    assert 'code="prohibited_use",decision="deny"' in metrics


def test_purpose_not_permitted(env: Env) -> None:
    # training-simulation has a classification ceiling below this enclave's
    response = env.chat("alice", "training-simulation")
    assert response.status_code == 403
    assert error_code(response) in {"purpose_not_permitted", "forbidden"}


def test_rate_limit_and_shutdown(env: Env) -> None:
    env.pipeline.limiter = RateLimiter(1, clock=env.clock)
    assert env.chat(max_tokens=2).status_code == 200
    limited = env.chat(max_tokens=2)
    assert (limited.status_code, error_code(limited)) == (429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    env.pipeline.state.kill("drill")
    killed = env.chat()
    assert (killed.status_code, error_code(killed)) == (503, "enclave_shutdown")
    health = env.client.get("/healthz")
    assert health.status_code == 503 and health.json()["mode"] == "killed"
    env.pipeline.state.resume()
    assert env.client.get("/healthz").status_code == 200


def test_a_kill_while_the_model_answers_releases_nothing(tmp_path: Path, model: NgramModel) -> None:
    class KilledMeanwhile(httpx.AsyncBaseTransport):
        """The model answers; the controller's kill lands before the answer is released."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner
            self.pipeline: Pipeline | None = None

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            answer = await self.inner.handle_async_request(request)
            assert self.pipeline is not None
            self.pipeline.state.kill("drill: mid-answer")
            return answer

    transport = KilledMeanwhile(httpx.ASGITransport(app=create_runtime(model, model_name="m")))
    _app, made = make_env(tmp_path, model, transport=transport)
    transport.pipeline = made.pipeline
    with made.client:
        answer = made.chat()
    made.log.close()
    assert (answer.status_code, error_code(answer)) == (503, "enclave_shutdown")
    assert "choices" not in answer.text
    completed = [r for r in made.records() if r.action == "response.chat"]
    assert [(r.decision, r.reason) for r in completed] == [("deny", "enclave_shutdown")]


def test_overload_is_shed_with_retry_after(env: Env) -> None:
    gateway = env.app.state.gateway
    gateway.in_flight = gateway.settings.max_in_flight
    try:
        response = env.chat()
    finally:
        gateway.in_flight = 0
    assert (response.status_code, error_code(response)) == (503, "overloaded")
    assert response.headers["retry-after"] == "1"
    portal = env.client.portal
    assert portal is not None
    portal.call(gateway.record_shed)  # what the lifespan's task does each second
    shed = [r for r in env.records() if r.action == "gateway.shed"]
    assert len(shed) == 1 and shed[0].decision == "deny" and shed[0].reason == "overloaded"
    assert shed[0].details == {"requests": {"chat": 1}, "max_in_flight": 64}
    portal.call(gateway.record_shed)  # nothing shed since: no record
    assert len([r for r in env.records() if r.action == "gateway.shed"]) == 1


def test_a_late_event_loop_sheds_at_the_door(tmp_path: Path, model: NgramModel) -> None:
    settings = GatewaySettings(max_loop_lag=0.05, background=False)
    app, made = make_env(tmp_path, model, settings=settings)
    gateway = app.state.gateway
    before = made.upstream_requests
    with made.client:
        gateway.loop_lag = 0.2  # what watch_loop measures when the loop runs 200 ms late
        shed = made.chat()
        models = made.client.get("/v1/models", headers=bearer(made.token("alice")))
        gateway.loop_lag = 0.0
        served = made.chat()
    made.log.close()
    assert (shed.status_code, error_code(shed)) == (503, "overloaded")
    assert shed.headers["retry-after"] == "1"
    assert models.status_code == 200  # only the model endpoints are shed at the door
    assert served.status_code == 200
    assert made.upstream_requests == before + 1
    shed_records = [r for r in made.records() if r.action == "gateway.shed"]
    assert [(r.details or {}).get("requests") for r in shed_records] == [{"chat": 1}]


# --- output screening -----------------------------------------------------------------------


def test_streamed_violation_cuts_mid_stream(env: Env) -> None:
    params: Json = {"max_tokens": 120, "seed": 5}
    whole = env.chat(**params).json()["choices"][0]["message"]["content"]
    words = [w.strip(".,;:!?") for w in whole.split()]
    # a word from the second half that does not appear earlier: the cut comes mid-stream
    banned = next(
        w for i, w in enumerate(words) if i > len(words) // 2 and len(w) > 3 and w not in words[:i]
    )
    env.screen.word = banned
    before = env.upstream_requests
    with env.client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "stream": True,
            "messages": [{"role": "user", "content": "What does the gateway do?"}],
            **params,
        },
        headers=env.headers("alice"),
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    assert env.upstream_requests == before + 1
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "prohibited_use"
    released = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert released  # some screened text went out before the cut
    assert banned.lower() not in released.lower()
    assert whole.startswith(released)
    record = last(env.records(), "response.chat")
    assert (record.decision, record.reason) == ("deny", "prohibited_use")
    # the same output, not streamed, is refused whole
    refused = env.chat(**params)
    assert (refused.status_code, error_code(refused)) == (403, "prohibited_use")
    assert banned not in refused.text


# --- approvals ------------------------------------------------------------------------------


def test_approval_flow_end_to_end(env: Env) -> None:
    held = env.chat("alice", "threat-triage", max_tokens=8)
    assert held.status_code == 202, held.text
    approval_id = held.json()["error"]["approval_id"]
    assert held.json()["error"]["code"] == "approval_required"
    pending = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("alice")))
    assert pending.status_code == 202
    listing = env.client.get("/v1/approvals", headers=bearer(env.token("dave")))
    assert [item["id"] for item in listing.json()["data"]] == [approval_id]
    # the requester holds no 'approve'; an analyst cannot approve at all
    own = env.client.post(
        f"/v1/approvals/{approval_id}/approve", headers=bearer(env.token("alice"))
    )
    assert own.status_code == 403
    approved = env.client.post(
        f"/v1/approvals/{approval_id}/approve", headers=bearer(env.token("dave"))
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["result_status"] == 200
    stranger = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("grace")))
    assert stranger.status_code == 404
    result = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("alice")))
    assert result.status_code == 200, result.text
    assert result.json()["choices"][0]["message"]["content"]
    again = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("alice")))
    assert (again.status_code, error_code(again)) == (404, "not_found")
    actions = [r.action for r in env.records() if r.request_id == approval_id]
    assert actions == ["approval.grant", "response.chat", "approval.fetch"]


def test_requester_cannot_approve_own_and_deny(env: Env) -> None:
    held = env.chat("carol", "threat-triage")
    approval_id = held.json()["error"]["approval_id"]
    own = env.client.post(
        f"/v1/approvals/{approval_id}/approve", headers=bearer(env.token("carol"))
    )
    assert (own.status_code, error_code(own)) == (403, "forbidden")
    assert "other than its requester" in own.json()["error"]["message"]
    denied = env.client.post(
        f"/v1/approvals/{approval_id}/deny",
        json={"reason": "not needed"},
        headers=bearer(env.token("dave")),
    )
    assert denied.status_code == 200
    result = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("carol")))
    assert (result.status_code, error_code(result)) == (403, "approval_denied")
    gone = env.client.get(f"/v1/approvals/{approval_id}", headers=bearer(env.token("carol")))
    assert gone.status_code == 404


# --- faults ---------------------------------------------------------------------------------


def test_audit_failure_releases_nothing_then_forwards_nothing(env: Env) -> None:
    env.log.close()
    # The decision record is written while the request is forwarded, so the request that
    # finds the log broken may reach the model; nothing of its answer is released.
    first = env.chat()
    assert (first.status_code, error_code(first)) == (503, "audit_unavailable")
    assert "choices" not in first.json()
    before = env.upstream_requests
    response = env.chat()  # the gateway knows now: nothing more is forwarded
    assert (response.status_code, error_code(response)) == (503, "audit_unavailable")
    assert "audit log" in response.json()["error"]["message"]
    assert env.upstream_requests == before
    health = env.client.get("/healthz")
    assert health.status_code == 503
    assert "the audit log cannot record" in health.json()["problems"]


def test_upstream_down_is_502_and_audited(tmp_path: Path, model: NgramModel) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    _app, made = make_env(tmp_path, model, upstream=url, real_pool=True)
    with made.client:
        response = made.chat()
    made.log.close()
    assert (response.status_code, error_code(response)) == (502, "upstream_unavailable")
    record = last(made.records(), "response.chat")
    assert (record.decision, record.reason) == ("error", "upstream_unavailable")
    assert verify_log(made.audit_dir).intact


def test_upstream_timeout_is_504_and_audited(tmp_path: Path, model: NgramModel) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    _app, made = make_env(tmp_path, model, transport=httpx.MockTransport(slow))
    with made.client:
        response = made.chat()
    made.log.close()
    assert (response.status_code, error_code(response)) == (504, "upstream_timeout")
    assert last(made.records(), "response.chat").reason == "upstream_timeout"


def test_client_gone_before_forwarding_is_not_forwarded(tmp_path: Path, model: NgramModel) -> None:
    app, made = make_env(tmp_path, model, settings=GatewaySettings(background=False))
    body = json.dumps(
        {"model": "assistant", "messages": [{"role": "user", "content": "hello"}]}
    ).encode()
    headers = [(k.encode(), v.encode()) for k, v in made.headers("alice").items()]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    incoming: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)

    anyio.run(run)
    made.log.close()
    assert made.upstream_requests == 0
    record = last(made.records(), "response.chat")
    assert record.reason == "client_closed"


def test_openapi_and_unknown_route(env: Env) -> None:
    document = env.client.get("/openapi.json").json()
    assert "/v1/chat/completions" in document["paths"]
    missing = env.client.get("/v1/nothing")
    assert (missing.status_code, error_code(missing)) == (404, "not_found")
