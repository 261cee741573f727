"""Cutting streams in flight: a signed kill, and the dead-man switch when heartbeats stop.

Real processes on loopback: ``enclave runtime serve --token-delay`` (a streamed completion
takes about ten seconds) behind ``enclave gateway serve``, whose API tokens come from the
harness's OpenBao. The test is the shutdown controller: it keeps the gateway's lease alive from
a thread (the spec's lease is 1 s, a heartbeat every 200 ms), opens a streaming chat request,
and once text is flowing either signs a kill or stops heartbeating. Either way the stream must
end with a terminal SSE error event (``enclave_shutdown``), new requests must be refused
``503 enclave_shutdown``, and the audit log must verify intact and record the cut.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.audit import AuditRecord, verify_log
from enclave.audit.reader import iter_records
from enclave.gateway.state import LEASE_LAPSED
from support.gateway_procs import (
    Controller,
    Enclave,
    Process,
    audit_dir,
    provisioned_enclave,
    running_gateway,
    running_runtime,
)
from support.openbao import OpenBaoServer

pytestmark = [pytest.mark.vault, pytest.mark.slow]

LEASE = 1.0
BEAT_EVERY = 0.2
TOKEN_DELAY = 0.05
MAX_TOKENS = 200  # about 10 s of streaming at TOKEN_DELAY
KILL_CUT_WITHIN = 0.5
"""Seconds from sending the kill to the stream's end ("well under 1 s")."""
LAPSE_SLACK = 0.5
"""Seconds past the lease's end by which the dead-man switch must have cut the stream."""
Json = dict[str, Any]


@dataclass
class Stack:
    runtime: Process
    enclave: Enclave
    root_token: str
    tmp_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.enclave.token}",
            "x-enclave-purpose": "translation",
        }


@pytest.fixture
def stack(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Stack]:
    with (
        running_runtime(tmp_path, token_delay=TOKEN_DELAY) as runtime,
        provisioned_enclave(
            tmp_path, openbao.address, openbao_client, heartbeat="500ms", lease=f"{LEASE:g}s"
        ) as enclave,
    ):
        yield Stack(runtime, enclave, openbao.root_token, tmp_path)


def chat_body(*, stream: bool) -> Json:
    return {
        "model": "assistant",
        "stream": stream,
        "max_tokens": MAX_TOKENS if stream else 8,
        "messages": [{"role": "user", "content": "Translate: what does the gateway do?"}],
    }


def events(lines: Iterator[str], *, until: int | None = None) -> list[Json | str]:
    """SSE data payloads from ``lines`` (decoded JSON, or ``[DONE]``), ``until`` that many."""
    out: list[Json | str] = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
        if until is not None and len(out) >= until:
            break
    return out


def error_of(payloads: list[Json | str]) -> Json:
    """The terminal error event: the last payload other than ``[DONE]``."""
    last = [p for p in payloads if p != "[DONE]"][-1]
    assert isinstance(last, dict) and "error" in last, payloads[-3:]
    error: Json = last["error"]
    return error


@contextlib.contextmanager
def streaming_chat(url: str, headers: dict[str, str]) -> Iterator[Iterator[str]]:
    """A streaming chat request on its own connection; yields its lines as they arrive."""
    with (
        httpx.Client(base_url=url, timeout=30.0, trust_env=False) as streamer,
        streamer.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True), headers=headers
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        yield response.iter_lines()


def wait_serving(client: httpx.Client) -> None:
    deadline = time.monotonic() + 30.0
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/healthz").text
        time.sleep(0.05)


def refused_503(client: httpx.Client, stack: Stack) -> Json:
    response = client.post(
        "/v1/chat/completions", json=chat_body(stream=False), headers=stack.headers
    )
    assert response.status_code == 503, response.text
    error: Json = response.json()["error"]
    assert error["code"] == "enclave_shutdown"
    return error


def audited(enclave: Enclave, gateway: Process) -> list[AuditRecord]:
    audit = audit_dir(enclave)
    assert gateway.process.returncode == 0, gateway.log_text()
    report = verify_log(audit)
    assert report.intact, report.summary()
    assert report.unsigned == 0  # the final checkpoint was signed on shutdown
    assert enclave.token not in gateway.log_text()
    return list(iter_records(audit))


def cut_record(records: list[AuditRecord]) -> AuditRecord:
    """The completion record of the one streamed request."""
    (record,) = [
        r
        for r in records
        if r.action == "response.chat" and r.details is not None and r.details.get("stream")
    ]
    return record


def test_signed_kill_cuts_the_stream_at_once(stack: Stack) -> None:
    key = secrets.token_bytes(32)
    with running_gateway(stack.tmp_path, stack.enclave, stack.runtime, stack.root_token, key) as gw:
        controller = Controller(gw.url, key)
        try:
            with httpx.Client(base_url=gw.url, timeout=30.0, trust_env=False) as client:
                controller.keep_alive(BEAT_EVERY, LEASE)
                wait_serving(client)
                with streaming_chat(gw.url, stack.headers) as lines:
                    before = events(lines, until=4)
                    assert len(before) == 4 and "[DONE]" not in before
                    assert all(isinstance(p, dict) and "error" not in p for p in before)
                    sent = time.monotonic()
                    killed = controller.kill(client, "drill: cut the stream")
                    assert killed.status_code == 200, killed.text
                    assert killed.json()["mode"] == "killed"
                    after = events(lines)
                    took = time.monotonic() - sent
                assert took < KILL_CUT_WITHIN, f"the stream ended {took:.3f}s after the kill"
                error = error_of(after)
                assert error["code"] == "enclave_shutdown", error
                assert "drill: cut the stream" in error["message"]
                # heartbeats go on, but a kill holds until a resume
                refused = refused_503(client, stack)
                assert "drill" in refused["message"]
                health = client.get("/healthz")
                assert health.status_code == 503 and health.json()["mode"] == "killed"
                assert health.json()["streams"] == 0
        finally:
            controller.stop_heartbeats()
    assert not controller.errors, controller.errors
    records = audited(stack.enclave, gw)
    kills = [r for r in records if r.action == "gateway.kill"]
    assert [(r.actor, r.decision, r.reason) for r in kills] == [
        ("controller", "info", "drill: cut the stream")
    ]
    cut = cut_record(records)
    assert (cut.actor, cut.decision, cut.reason) == ("alice", "deny", "enclave_shutdown")
    assert cut.details is not None and "drill" in cut.details["message"]
    assert kills[0].seq < cut.seq
    refusals = [r for r in records if r.action == "request.chat" and r.decision == "deny"]
    assert [r.reason for r in refusals] == ["enclave_shutdown"]


def test_silent_controller_lapses_the_lease_and_cuts_the_stream(stack: Stack) -> None:
    key = secrets.token_bytes(32)
    with running_gateway(stack.tmp_path, stack.enclave, stack.runtime, stack.root_token, key) as gw:
        controller = Controller(gw.url, key)
        try:
            with httpx.Client(base_url=gw.url, timeout=30.0, trust_env=False) as client:
                controller.keep_alive(BEAT_EVERY, LEASE)
                wait_serving(client)
                with streaming_chat(gw.url, stack.headers) as lines:
                    before = events(lines, until=4)
                    assert all(isinstance(p, dict) and "error" not in p for p in before)
                    # the stream outlives a lease while the controller keeps beating
                    time.sleep(2 * LEASE)
                    last_beat = controller.stop_heartbeats()
                    after = events(lines)
                    ended = time.monotonic()
                lapse_at = last_beat + LEASE
                # cut by the lapse, not before it (a stream cut early would end at once)
                assert ended >= lapse_at - 0.1, f"ended {lapse_at - ended:.3f}s before the lapse"
                assert ended <= lapse_at + LAPSE_SLACK, (
                    f"the stream ended {ended - lapse_at:.3f}s after the lease ran out"
                )
                error = error_of(after)
                assert error["code"] == "enclave_shutdown", error
                assert error["message"] == LEASE_LAPSED
                # no error before the controller fell silent: text flowed past the first lease
                streamed = [p for p in after if isinstance(p, dict) and "error" not in p]
                assert streamed, "no text streamed while the lease was being renewed"
                refused = refused_503(client, stack)
                assert refused["message"] == LEASE_LAPSED
                health = client.get("/healthz")
                assert health.status_code == 503
                assert LEASE_LAPSED in health.json()["problems"]
                assert health.json()["mode"] == "serving"  # not killed: only unleased
        finally:
            controller.stop_heartbeats()
    assert not controller.errors, controller.errors
    records = audited(stack.enclave, gw)
    cut = cut_record(records)
    assert (cut.actor, cut.decision, cut.reason) == ("alice", "deny", "enclave_shutdown")
    assert cut.details is not None and cut.details["message"] == LEASE_LAPSED
    refusals = [r for r in records if r.action == "request.chat" and r.decision == "deny"]
    assert [(r.reason, (r.details or {}).get("message")) for r in refusals] == [
        ("enclave_shutdown", LEASE_LAPSED)
    ]
    assert not [r for r in records if r.action == "gateway.kill"]
