"""Gateway overhead: the same requests sent straight to the model server and through the gateway.

Targets (issue "Gateway"): added latency p50 <= 2 ms and p99 <= 10 ms at 300 req/s; >= 1,000
req/s non-streaming and >= 400 streams/s sustained; added time to first token <= 3 ms; offered
2x its capacity, the gateway's goodput stays >= 90% of that capacity.

Everything runs for real, as processes on loopback: a throwaway OpenBao holds the API token
(provisioned with :func:`~enclave.vault.provision.provision`, issued with
:func:`~enclave.vault.tokens.issue`), ``enclave runtime serve`` serves the reference model, and
``enclave gateway serve`` runs with every check on (token, lease, RBAC, purpose, size, prompt
screen, rate limit, output screen) and its durable audit log (each decision fsynced before
forwarding). This process plays the shutdown controller and signs a heartbeat every second.
The rate limit is set to its maximum (1,000,000/min) so that it is checked on every request but
never binds: the benchmark measures cost, not the policy.

On a machine with two or more CPUs the gateway is pinned to CPU 0 and everything else (this
process, OpenBao, the model server and the load generator) to CPU 1. The load generator is a
separate process running enclave's own lean HTTP/1.1 client (the gateway's upstream pool, so
the generator costs far less per request than the servers): open loop at a fixed rate
(latency measured from each request's scheduled send time, so a stalled server cannot hide its
queue), or closed loop with N concurrent workers (throughput). Added latency is the difference
of the two percentiles (gateway minus direct), each from its own run in the same session.

Run alone with ``PYTHONPATH=tests python -m bench.gateway``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import httpx

from enclave.audit import verify_log
from enclave.gateway.upstream import Http1Pool, UpstreamError, UpstreamResponse
from enclave.runtime.weights import reference_corpus, train, write_weights
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind, sign_control
from enclave.spec import load_spec
from enclave.vault.names import EnclavePaths
from enclave.vault.provision import provision
from enclave.vault.tokens import issue
from support import REPO_ROOT
from support.openbao import bao_binary, hvac_client, running_openbao
from support.workspace import make_workspace

GATEWAY_CPU = 0
LOAD_CPU = 1
MAX_TOKENS = 16
RATE = 300.0
LATENCY_SECONDS = 6.0
WARMUP_SECONDS = 1.0
CONCURRENCY = (4, 16, 64)
STREAM_CONCURRENCY = (16, 64)
STEP_SECONDS = 2.5
TTFT_RATE = 50.0
TTFT_SECONDS = 4.0
OVERLOAD_SECONDS = 3.0
OVERLOAD_ROUNDS = 3
"""Overload: rounds of (capacity, closed loop at the best concurrency; then twice that, open
loop). Each round's capacity is measured right before its overload, so that the ratio compares
windows seconds apart, not a minute apart on a shared machine."""
START_TIMEOUT = 30.0
OPEN_CONNECTIONS = 512
"""Open loop: connections the generator may hold (no request waits for one: many clients)."""
CHAT = "/v1/chat/completions"
PROMPTS = (
    "Translate into French: the convoy leaves at dawn.",
    "Translate into German: the meeting moved to Thursday.",
    "Translate into Spanish: the report is ready for review.",
    "Translate into Italian: please confirm the delivery schedule.",
)


# -- the load generator (runs in its own process) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One load run: open loop at ``rate`` or closed loop with ``concurrency`` workers."""

    url: str
    headers: dict[str, str]
    stream: bool
    seconds: float
    warmup: float
    rate: float = 0.0
    concurrency: int = 0


@dataclass(slots=True)
class Result:
    """What one load run saw, counting only requests inside the measured window."""

    seconds: float = 0.0
    sent: int = 0
    ok: list[float] = field(default_factory=list)
    """Seconds from (scheduled) send to the whole answer, 2xx only."""
    first_event: list[float] = field(default_factory=list)
    first_content: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0
    """429/503 answers carrying Retry-After."""
    errors: int = 0
    """Transport errors, and streams cut by an error event or ending without [DONE]."""
    last_end: float = 0.0
    """Seconds from the window's start to the last answer counted."""
    max_lag: float = 0.0
    """Open loop: the most the generator fell behind its schedule."""
    cpu: float = 0.0
    """CPU seconds the generator process used."""

    @property
    def rate(self) -> float:
        return len(self.ok) / self.seconds if self.seconds else 0.0


def _pin(cpu: int) -> None:
    """The pool worker's initializer: pin it, allow many sockets."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


def _body(index: int, *, stream: bool) -> bytes:
    data = {
        "model": "assistant",
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
    }
    return json.dumps(data).encode()


def _has_content(payload: str) -> bool:
    try:
        obj = json.loads(payload)
    except ValueError:
        return False
    return any((choice.get("delta") or {}).get("content") for choice in obj.get("choices") or ())


async def _read_stream(
    answer: UpstreamResponse, start: float
) -> tuple[float | None, float | None, bool]:
    """(seconds to the first event, to the first content, whether the stream broke)."""
    first_event: float | None = None
    first_content: float | None = None
    done = broken = False
    async for line in answer.lines():
        if not line.startswith("data:"):
            continue
        now = time.perf_counter()
        payload = line[5:].strip()
        first_event = first_event if first_event is not None else now - start
        if payload == "[DONE]":
            done = True
        elif '"error"' in payload:
            broken = True
        elif first_content is None and _has_content(payload):
            first_content = now - start
    return first_event, first_content, broken or (answer.status == 200 and not done)


class _Recorder:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.result = Result(seconds=job.seconds)
        self.window = 0.0  # perf_counter at the measured window's start

    async def one(self, client: Http1Pool, index: int, start: float, *, open_: bool) -> None:
        """Send request ``index``; record it if it falls in the window (open loop: by its
        scheduled start, closed loop: by when it ends)."""
        result = self.result
        status, headers, first_event, first_content, broken = 0, {}, None, None, False
        try:
            answer = await client.request("POST", CHAT, _body(index, stream=self.job.stream))
            status, headers = answer.status, answer.headers
            if self.job.stream:
                first_event, first_content, broken = await _read_stream(answer, start)
            else:
                await answer.read()
        except UpstreamError:
            broken = True
        end = time.perf_counter()
        window_end = self.window + self.job.seconds
        inside = self.window <= start < window_end if open_ else self.window <= end <= window_end
        if not inside:
            return
        result.sent += 1
        result.last_end = max(result.last_end, end - self.window)
        if broken:
            result.errors += 1
            return
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status in (429, 503) and "retry-after" in headers:
            result.retry_after += 1
        if 200 <= status < 300:
            result.ok.append(end - start)
            if first_event is not None:
                result.first_event.append(first_event)
            if first_content is not None:
                result.first_content.append(first_content)


async def _open_loop(clients: list[Http1Pool], recorder: _Recorder) -> None:
    job = recorder.job
    t0 = time.perf_counter() + 0.05
    recorder.window = t0 + job.warmup
    tasks: set[asyncio.Task[None]] = set()
    for index in range(int(job.rate * (job.warmup + job.seconds))):
        due = t0 + index / job.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif due >= recorder.window:
            recorder.result.max_lag = max(recorder.result.max_lag, -delay)
        task = asyncio.create_task(
            recorder.one(clients[index % len(clients)], index, due, open_=True)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def _closed_loop(clients: list[Http1Pool], recorder: _Recorder) -> None:
    job = recorder.job
    recorder.window = time.perf_counter() + job.warmup
    stop = recorder.window + job.seconds
    counter = iter(range(sys.maxsize))

    async def worker(client: Http1Pool) -> None:
        while time.perf_counter() < stop:
            await recorder.one(client, next(counter), time.perf_counter(), open_=False)

    await asyncio.gather(*(worker(client) for client in clients))


def _client(job: Job, connections: int) -> Http1Pool:
    return Http1Pool(
        job.url,
        timeout=30.0,
        connect_timeout=30.0,
        max_connections=connections,
        headers=job.headers,
    )


async def _run(job: Job) -> Result:
    """Closed loop: one connection per worker. Open loop: one pool of OPEN_CONNECTIONS."""
    recorder = _Recorder(job)
    clients = (
        [_client(job, 1) for _ in range(job.concurrency)]
        if job.concurrency
        else [_client(job, OPEN_CONNECTIONS)]
    )
    try:
        if job.rate:
            await _open_loop(clients, recorder)
        else:
            await _closed_loop(clients, recorder)
    finally:
        for client in clients:
            await client.aclose()
    return recorder.result


def load(job: Job) -> Result:
    """Run ``job`` in this process (the pool's worker) and return what it saw."""
    cpu = time.process_time()
    result = asyncio.run(_run(job))
    result.cpu = time.process_time() - cpu
    return result


# -- the servers ---------------------------------------------------------------------------------


def _enclave_argv() -> list[str]:
    script = Path(sys.executable).with_name("enclave")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from enclave.cli.main import run; run()"]


def _on_cpu(cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset and _pinning() else []


def _pinning() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


@dataclass
class Server:
    """A server process started here; stopped by its handle."""

    process: subprocess.Popen[str]
    log: Path
    url: str = ""

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far (Linux ``/proc``)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def _start(argv: list[str], log: Path, ready: str) -> Server:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no test helpers
    with log.open("w", encoding="utf-8") as err:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL, env=env
        )
    server = Server(process, log)
    try:
        assert process.stdout is not None
        got, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if got else ""
        match = re.fullmatch(ready + r" (http://127\.0\.0\.1:\d+)\n", line)
    except BaseException:
        server.stop()
        raise
    if match is None:
        server.stop()
        raise RuntimeError(f"no ready line ({line!r}); log: {log.read_text(encoding='utf-8')}")
    server.url = match.group(1)
    return server


def _private(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


class Controller:
    """Signs a heartbeat to the gateway every second, in a thread, until stopped."""

    def __init__(self, url: str, key: bytes) -> None:
        self._client = httpx.Client(base_url=url, timeout=5.0, trust_env=False)
        self._key = key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-controller", daemon=True)
        self.failures = 0

    def beat(self) -> bool:
        command = ControlCommand(ControlKind.HEARTBEAT, "controller", time.time_ns(), 30.0)
        body, signature = sign_control(self._key, command)
        try:
            answer = self._client.post(
                "/control", content=body, headers={SIGNATURE_HEADER: signature}
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if not self.beat():
                self.failures += 1

    def __enter__(self) -> Controller:
        if not self.beat():
            raise RuntimeError("the gateway refused the first heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()


def _spec(root: Path, name: str, vault: str) -> Path:
    workspace = make_workspace(root)
    shutil.copy(
        REPO_ROOT / "policies" / "usage" / "screens.yaml",
        workspace.root / "policies" / "usage" / "screens.yaml",
    )
    return workspace.write(
        f"""\
apiVersion: enclave.dev/v1alpha1
kind: Enclave
metadata: {{name: {name}}}
spec:
  classification: cui
  models: [{{name: assistant}}]
  vault: {{address: "{vault}"}}
  gateway:
    rateLimit: {{requestsPerMinute: 1000000}}
  rbac:
    roles:
      analyst: {{actions: [query], purposes: [translation]}}
    principals: [{{name: alice, roles: [analyst]}}]
  shutdown: {{heartbeat: 1s, lease: 30s}}
"""
    )


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=url, timeout=5.0, trust_env=False) as client:
        while (answer := client.get("/healthz")).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway never became healthy: {answer.text}")
            time.sleep(0.05)


def _check(url: str, headers: dict[str, str]) -> int:
    """One request through ``url``; the completion tokens of its answer."""
    with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as client:
        answer = client.post(CHAT, content=_body(0, stream=False), headers=headers)
    answer.raise_for_status()
    data = answer.json()
    if not data["choices"][0]["message"]["content"]:
        raise RuntimeError(f"an empty answer: {data}")
    return int(data["usage"]["completion_tokens"])


# -- the measurements ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    """One overload round: the capacity just measured, and twice it offered."""

    capacity: float
    capacity_cpu: float
    """The gateway's CPU share (of one core) during the capacity window."""
    offered: float
    overload: Result
    overload_cpu: float

    @property
    def goodput(self) -> float:
        span = max(self.overload.seconds, self.overload.last_end)
        return len(self.overload.ok) / span if span else 0.0


@dataclass
class Measured:
    latency: dict[str, Result] = field(default_factory=dict)
    throughput: dict[str, dict[int, Result]] = field(default_factory=dict)
    ttft: dict[str, Result] = field(default_factory=dict)
    streams: dict[str, dict[int, Result]] = field(default_factory=dict)
    overload: Result = field(default_factory=Result)
    rounds: list[Round] = field(default_factory=list)
    capacity: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per process over the gateway's non-streaming throughput steps."""
    tokens: int = 0
    audit: str = ""
    heartbeat_failures: int = 0


def _best(steps: dict[int, Result]) -> float:
    return max(result.rate for result in steps.values())


def _measure(pool: ProcessPoolExecutor, urls: dict[str, str], headers: dict[str, str], *,
             gateway: Server, runtime: Server, out: Measured) -> None:  # fmt: skip
    def run(job: Job) -> Result:
        return pool.submit(load, job).result(timeout=120)

    for target, url in urls.items():
        out.latency[target] = run(
            Job(url, headers, False, LATENCY_SECONDS, WARMUP_SECONDS, rate=RATE)
        )
    for target, url in urls.items():
        before = {"gateway": gateway.cpu_seconds(), "runtime": runtime.cpu_seconds()}
        steps: dict[int, Result] = {}
        for concurrency in CONCURRENCY:
            steps[concurrency] = run(
                Job(url, headers, False, STEP_SECONDS, WARMUP_SECONDS, concurrency=concurrency)
            )
        out.throughput[target] = steps
        if target == "gateway":
            span = sum(WARMUP_SECONDS + STEP_SECONDS for _ in CONCURRENCY)
            out.cpu = {
                "gateway": (gateway.cpu_seconds() - before["gateway"]) / span,
                "runtime": (runtime.cpu_seconds() - before["runtime"]) / span,
                "generator": sum(step.cpu for step in steps.values()) / span,
            }
    for target, url in urls.items():
        out.ttft[target] = run(Job(url, headers, True, TTFT_SECONDS, WARMUP_SECONDS, TTFT_RATE))
    for target, url in urls.items():
        out.streams[target] = {
            concurrency: run(
                Job(url, headers, True, STEP_SECONDS, WARMUP_SECONDS, concurrency=concurrency)
            )
            for concurrency in STREAM_CONCURRENCY
        }
    out.capacity = _best(out.throughput["gateway"])
    best = max(out.throughput["gateway"].items(), key=lambda item: item[1].rate)[0]
    url = urls["gateway"]
    for _ in range(OVERLOAD_ROUNDS):
        cpu = gateway.cpu_seconds()
        capacity = run(Job(url, headers, False, STEP_SECONDS, WARMUP_SECONDS, concurrency=best))
        capacity_cpu = (gateway.cpu_seconds() - cpu) / (STEP_SECONDS + WARMUP_SECONDS)
        cpu = gateway.cpu_seconds()
        offered = 2 * capacity.rate
        overload = run(Job(url, headers, False, OVERLOAD_SECONDS, WARMUP_SECONDS, rate=offered))
        overload_cpu = (gateway.cpu_seconds() - cpu) / (OVERLOAD_SECONDS + WARMUP_SECONDS)
        out.rounds.append(Round(capacity.rate, capacity_cpu, offered, overload, overload_cpu))
        _merge(out.overload, overload)


def _merge(into: Result, result: Result) -> None:
    into.seconds += result.seconds
    into.sent += result.sent
    into.ok += result.ok
    for status, count in result.statuses.items():
        into.statuses[status] = into.statuses.get(status, 0) + count
    into.retry_after += result.retry_after
    into.errors += result.errors
    into.max_lag = max(into.max_lag, result.max_lag)


def measure() -> Measured:
    out = Measured()
    previous = os.sched_getaffinity(0) if _pinning() else None
    if previous is not None:
        os.sched_setaffinity(0, {LOAD_CPU})  # inherited by OpenBao, the runtime and the pool
    try:
        with (
            tempfile.TemporaryDirectory(prefix="enclave-bench-gw-") as tmp,
            running_openbao(bao_binary()) as bao,
            hvac_client(bao.address, bao.root_token) as root,
        ):
            work = Path(tmp)
            name = f"b{secrets.token_hex(4)}"
            spec = _spec(work / "ws", name, bao.address)
            provision(root, load_spec(spec))
            token = issue(root, EnclavePaths(name), "alice", ["analyst"]).token
            headers = {"authorization": f"Bearer {token}", "x-enclave-purpose": "translation"}
            weights = work / "weights.json"
            digest = write_weights(train(reference_corpus()), weights)
            state = work / "state"
            state.mkdir(mode=0o700)
            key = secrets.token_bytes(32)
            runtime = _start(
                [*_on_cpu(LOAD_CPU), *_enclave_argv(), "runtime", "serve", "--weights",
                 str(weights), "--sha256", digest, "--port", "0"],
                work / "runtime.log",
                "serving model assistant on",
            )  # fmt: skip
            try:
                gateway = _start(
                    [*_on_cpu(GATEWAY_CPU), *_enclave_argv(), "--state-dir", str(state),
                     "gateway", "serve", "--spec", str(spec), "--port", "0",
                     "--upstream", f"assistant={runtime.url}",
                     "--vault-token-file", str(_private(work / "root.token", bao.root_token)),
                     "--control-key-file", str(_private(work / "control.key", key.hex()))],
                    work / "gateway.log",
                    rf"gateway of enclave {name} serving on",
                )  # fmt: skip
                try:
                    with (
                        Controller(gateway.url, key) as controller,
                        ProcessPoolExecutor(
                            1, mp_context=get_context("spawn"), initializer=_pin,
                            initargs=(LOAD_CPU,),
                        ) as pool,
                    ):  # fmt: skip
                        _wait_healthy(gateway.url)
                        out.tokens = _check(gateway.url, headers)
                        _check(runtime.url, headers)
                        urls = {"direct": runtime.url, "gateway": gateway.url}
                        _measure(pool, urls, headers, gateway=gateway, runtime=runtime, out=out)
                    out.heartbeat_failures = controller.failures
                finally:
                    code = gateway.stop()
                if code != 0:
                    raise RuntimeError(f"gateway exited {code}: {gateway.log.read_text()}")
            finally:
                runtime.stop()
            report = verify_log(state / "enclaves" / name / "audit")
            out.audit = f"{report.records} records, {'intact' if report.intact else 'BROKEN'}"
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
    return out


# -- the report ----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**fail**"


def _row(measure: str, result: str, target: str = "", verdict: str = "") -> None:
    print(f"| {measure} | {result} | {target} | {verdict} |")


def report(m: Measured) -> None:
    pinned = "gateway on CPU 0; generator, runtime, OpenBao on CPU 1" if _pinning() else "unpinned"
    print(f"gateway vs direct ({os.cpu_count()} cpus, {pinned}, loopback, {m.tokens}-token chat)")
    print("| measure | result | target | verdict |")
    print("| --- | --- | --- | --- |")
    direct, via = m.latency["direct"], m.latency["gateway"]
    for name, result in (("direct", direct), ("gateway", via)):
        got = f"{_ms(_pct(result.ok, 0.5))} / {_ms(_pct(result.ok, 0.99))}"
        other = [f"{n} x {s}" for s, n in sorted(result.statuses.items()) if not 200 <= s < 300]
        other += [f"{result.errors} x error"] if result.errors else []
        lost = f", not: {', '.join(other)}" if other else ""
        _row(f"{name}: p50 / p99 at {RATE:.0f} req/s ({len(result.ok)} ok{lost})", got)
    added50 = _pct(via.ok, 0.5) - _pct(direct.ok, 0.5)
    added99 = _pct(via.ok, 0.99) - _pct(direct.ok, 0.99)
    _row("added latency p50", _ms(added50), "<= 2 ms", _verdict(added50 <= 0.002))
    _row("added latency p99", _ms(added99), "<= 10 ms", _verdict(added99 <= 0.010))
    for name in ("direct", "gateway"):
        steps = m.throughput[name]
        each = ", ".join(f"c={c}: {r.rate:,.0f}" for c, r in steps.items())
        best = _best(steps)
        target, verdict = ("", "") if name == "direct" else (">= 1,000", _verdict(best >= 1000))
        _row(f"{name}: non-streaming req/s, closed loop ({each})", f"{best:,.0f}", target, verdict)
    cpu = ", ".join(f"{k} {v:.0%}" for k, v in m.cpu.items())
    _row("CPU busy during the gateway's throughput steps", cpu)
    for name in ("direct", "gateway"):
        steps = m.streams[name]
        each = ", ".join(f"c={c}: {r.rate:,.0f}" for c, r in steps.items())
        best = _best(steps)
        target, verdict = ("", "") if name == "direct" else (">= 400", _verdict(best >= 400))
        _row(f"{name}: {MAX_TOKENS}-token streams/s ({each})", f"{best:,.0f}", target, verdict)
    for name in ("direct", "gateway"):
        result = m.ttft[name]
        got = f"{_ms(_pct(result.first_event, 0.5))} / {_ms(_pct(result.first_content, 0.5))}"
        _row(f"{name}: p50 first event / first token, {TTFT_RATE:.0f} streams/s", got)
    d, g = m.ttft["direct"], m.ttft["gateway"]
    event = _pct(g.first_event, 0.5) - _pct(d.first_event, 0.5)
    token = _pct(g.first_content, 0.5) - _pct(d.first_content, 0.5)
    _row("added time to first event (role chunk), p50", _ms(event))
    _row(
        "added time to first token (content), p50", _ms(token), "<= 3 ms", _verdict(token <= 0.003)
    )
    o = m.overload
    rounds = m.rounds
    for number, r in enumerate(rounds, 1):
        _row(
            f"overload round {number}: capacity {r.capacity:,.0f} req/s (gateway CPU "
            f"{r.capacity_cpu:.0%}), then {r.offered:,.0f} req/s offered for "
            f"{OVERLOAD_SECONDS:.0f} s (gateway CPU {r.overload_cpu:.0%})",
            f"goodput {r.goodput:,.0f}/s = {r.goodput / r.capacity:.0%}" if r.capacity else "n/a",
        )
    capacity = sum(r.capacity for r in rounds) / len(rounds)
    goodput = sum(r.goodput for r in rounds) / len(rounds)
    _row(
        f"overload: goodput at 2x capacity / capacity, over {len(rounds)} rounds "
        f"(generator lag max {o.max_lag * 1000:.0f} ms)",
        f"{goodput:,.0f} / {capacity:,.0f} = {goodput / capacity:.0%}" if capacity else "n/a",
        ">= 90%",
        _verdict(goodput >= 0.9 * capacity),
    )
    per_cpu = [
        (r.goodput / r.overload_cpu) / (r.capacity / r.capacity_cpu)
        for r in rounds
        if r.overload_cpu and r.capacity and r.capacity_cpu
    ]
    if per_cpu:
        _row(
            "overload: the same per gateway CPU-second (what refusals cost, whatever else "
            "ran on its core)",
            f"{sum(per_cpu) / len(per_cpu):.0%}",
        )
    answered = sum(o.statuses.values())
    shed = sum(n for status, n in o.statuses.items() if status in (429, 503))
    _row(
        "overload: 429/503 with Retry-After / all answers; transport errors",
        f"{o.retry_after / answered if answered else 0:.1%} ({o.retry_after} of {answered}, "
        f"{shed} 429/503); {o.errors}",
    )
    _row("overload: p99 latency of admitted requests", _ms(_pct(o.ok, 0.99)))
    _row("audit log after the run; missed heartbeats", f"{m.audit}; {m.heartbeat_failures}")


def main() -> None:
    report(measure())


if __name__ == "__main__":
    main()
