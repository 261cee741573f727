"""``enclave runtime serve`` as a real process on a loopback port, spoken to with httpx."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave.runtime import NgramModel, SamplingParams, builtin_weights
from support.gateway_procs import Process as Server
from support.gateway_procs import enclave_argv
from support.gateway_procs import launch as launch_process

NAME = "assistant"
START_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("weights") / "reference.json"
    result = subprocess.run(
        [*enclave_argv(), "runtime", "train", "--output", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    return path, digest


def start(weights: tuple[Path, str], log_dir: Path, *extra: str) -> Server:
    """Start the server on a free port (``--port 0``) and wait until /health answers."""
    path, digest = weights
    stderr = log_dir / f"serve-{time.monotonic_ns()}.log"
    argv = [
        *enclave_argv(),
        "--log-level",
        "info",
        "runtime",
        "serve",
        "--weights",
        str(path),
        "--sha256",
        digest,
        "--port",
        "0",
        *extra,
    ]
    server = launch_process(argv, stderr, r"serving model \S+ on (?P<url>http://127\.0\.0\.1:\d+)")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=1.0).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"/health never answered; {server.log_text()}"
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def server(weights: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(weights, tmp_path_factory.mktemp("logs"))
    try:
        yield running
    finally:
        code = running.stop()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit 143 in Docker)
    assert code in {0, -signal.SIGTERM}, running.log_text()
    assert "Traceback" not in running.log_text()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        yield http


def test_health_and_models(client: httpx.Client, weights: tuple[Path, str]) -> None:
    assert client.get("/health").json() == {
        "status": "ok",
        "model": NAME,
        "weights_sha256": weights[1],
    }
    assert [card["id"] for card in client.get("/v1/models").json()["data"]] == [NAME]


def test_completions_match_the_in_process_model(client: httpx.Client) -> None:
    model = NgramModel(builtin_weights())
    body = {"model": NAME, "prompt": "The gateway", "max_tokens": 24, "seed": 11}
    result = client.post("/v1/completions", json=body).json()
    expected = model.generate("The gateway", SamplingParams(max_tokens=24, seed=11)).text()
    assert result["choices"][0]["text"] == expected
    assert result["usage"]["completion_tokens"] == 24

    chat = {
        "model": NAME,
        "messages": [{"role": "user", "content": "How is a plan checked?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    first = client.post("/v1/chat/completions", json=chat).json()
    second = client.post("/v1/chat/completions", json=chat).json()
    assert first["object"] == "chat.completion"
    assert first["choices"] == second["choices"]


def test_requests_take_about_a_millisecond(client: httpx.Client) -> None:
    # a regression guard: without TCP_NODELAY each response waits ~40 ms for a delayed ACK
    body = {"model": NAME, "prompt": "The gateway", "max_tokens": 64}
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        assert client.post("/v1/completions", json=body).status_code == 200
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.02


def test_embeddings_over_http(client: httpx.Client) -> None:
    body = client.post("/v1/embeddings", json={"model": NAME, "input": ["a", "b c"]}).json()
    assert [len(item["embedding"]) for item in body["data"]] == [256, 256]


def test_errors_over_http(client: httpx.Client) -> None:
    bad = client.post(
        "/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"
    unknown = client.post("/v1/completions", json={"model": "other", "prompt": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_a_streamed_completion_arrives_event_by_event(client: httpx.Client) -> None:
    body = {"model": NAME, "prompt": "Translation", "max_tokens": 20, "stream": True}
    data: list[str] = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("transfer-encoding") == "chunked"
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                assert event.startswith("data: ")
                data.append(event.removeprefix("data: "))
        assert buffer == ""
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert len(chunks) == 21  # one per token, then the finish chunk
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
    model = NgramModel(builtin_weights())
    assert text == model.generate("Translation", SamplingParams(max_tokens=20)).text()
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.fixture(scope="module")
def slow_server(
    weights: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start(weights, tmp_path_factory.mktemp("slow-logs"), "--token-delay", "0.02")
    try:
        yield running
    finally:
        running.stop()


def test_events_are_flushed_as_they_are_made(slow_server: Server) -> None:
    body = {"model": NAME, "prompt": "Safety", "max_tokens": 15, "stream": True}
    arrivals: list[float] = []
    with (
        httpx.Client(base_url=slow_server.url, timeout=10.0) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        start_time = time.perf_counter()
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - start_time)
    assert len(arrivals) == 17  # 15 tokens, the finish chunk, [DONE]
    assert arrivals[0] < arrivals[-1] - 0.2  # the first token came long before the last


def test_a_client_that_disconnects_stops_generation(slow_server: Server) -> None:
    body = {"model": NAME, "prompt": "Safety", "max_tokens": 4000, "stream": True}
    with httpx.Client(base_url=slow_server.url, timeout=10.0) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            for seen, _line in enumerate(response.iter_lines()):
                if seen >= 6:  # three events (each is a line and a blank line)
                    break
        # the connection is closed here; the server notices within one token's delay
        deadline = time.monotonic() + 5
        while "client disconnected" not in slow_server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/health").status_code == 200
    match = re.search(
        r"client disconnected after (\d+) of at most 4000 tokens", slow_server.log_text()
    )
    assert match, slow_server.log_text()
    assert int(match.group(1)) < 100  # 4000 tokens would take 80 s


def test_a_wrong_digest_refuses_to_start(weights: tuple[Path, str]) -> None:
    path, digest = weights
    wrong = digest[::-1]
    result = subprocess.run(
        [*enclave_argv(), "runtime", "serve", "--weights", str(path), "--sha256", wrong],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 6
    assert result.stdout == ""
    assert result.stderr == (
        f"enclave: error: weights {path}: sha256 is {digest}, expected {wrong}; "
        "refusing to load them\n"
    )


def test_a_taken_port_is_one_clear_error(server: Server, weights: tuple[Path, str]) -> None:
    path, digest = weights
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [
            *enclave_argv(),
            "runtime",
            "serve",
            "--weights",
            str(path),
            "--sha256",
            digest,
            "--port",
            port,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"enclave: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
