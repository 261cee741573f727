"""The kill switch end to end, with real processes: controller, gateway, runtime, OpenBao.

``enclave runtime serve`` (a streamed completion takes seconds), ``enclave gateway serve`` in
front of it, and the real ``enclave controller run`` heartbeating the gateway, its API on its
unix socket, its Vault identity from bootstrap material (``--backend none``: no containers, so
the kill tells the gateway and revokes Vault tokens; the container steps are the Docker e2e
test's). People act through the real CLI (``enclave kill|resume|controller status``) with
their own API tokens, issued in the harness's OpenBao.

Proven here: a kill by a principal holding ``kill`` denies every new request and cuts a live
stream at once, revokes the enclave's workload Vault tokens and opens an incident; kills and
resumes by anyone else are refused and recorded; the resume needs two approvers other than the
one who killed; a controller restarted while killed stays killed (and says so to the gateway);
a policy-violation rate over the spec's limit kills; many concurrent calls leave one state.
The measured latencies are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.audit import verify_log
from enclave.audit.incidents import IncidentStatus, load_incident
from enclave.audit.reader import iter_records
from enclave.audit.record import AuditRecord, Decision
from enclave.cli.main import main
from enclave.errors import VaultForbiddenError
from enclave.shutdown.api import ControllerClient, controller_dir, socket_path
from enclave.spec import load_spec
from enclave.vault.client import VaultConnection, translate
from enclave.vault.controlkey import read_control_key
from enclave.vault.names import CONTROLLER, GATEWAY, EnclavePaths
from enclave.vault.provision import bootstrap, redeem
from enclave.vault.tokens import issue
from support.gateway_procs import (
    Enclave,
    Process,
    audit_dir,
    private_file,
    provisioned_enclave,
    running_controller,
    running_gateway,
    running_runtime,
)
from support.openbao import OpenBaoServer

pytestmark = [pytest.mark.vault, pytest.mark.slow]

SPEC = """\
apiVersion: enclave.dev/v1alpha1
kind: Enclave
metadata: {{name: {name}}}
spec:
  classification: cui
  models: [{{name: assistant}}]
  vault: {{address: "{vault}"}}
  rbac:
    roles:
      analyst: {{actions: [query], purposes: [translation]}}
      safety-officer: {{actions: [kill, resume]}}
    principals:
      - {{name: alice, roles: [analyst]}}
      - {{name: bob, roles: [safety-officer]}}
      - {{name: carol, roles: [safety-officer]}}
      - {{name: dan, roles: [safety-officer]}}
  shutdown:
    heartbeat: {heartbeat}
    lease: {lease}
    violationsPerMinute: 3
    resumeApprovals: 2
    resumeExcludesTrigger: true
"""
QUORUM_SPEC = SPEC.replace(
    "      - {{name: dan, roles: [safety-officer]}}\n",
    "      - {{name: dan, roles: [safety-officer]}}\n"
    "      - {{name: erin, roles: [safety-officer]}}\n",
).replace("resumeApprovals: 2", "resumeApprovals: 3")
"""Four safety officers and a quorum of three: whoever kills, the other three are needed."""
OFFICERS = ("bob", "carol", "dan")
TOKEN_DELAY = 0.05
PROHIBITED = "Select targets and engage them without human review."
DENY_WITHIN = 0.1
"""Seconds from the kill request to every new request denied (the issue's p99 target)."""
CUT_WITHIN = 0.25
Json = dict[str, Any]


@dataclass
class Stack:
    tmp_path: Path
    openbao: OpenBaoServer
    vault: Any
    enclave: Enclave
    runtime: Process
    gateway: Process
    key: bytes = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.enclave.token}",
            "x-enclave-purpose": "translation",
        }

    def controller(self, log_name: str = "controller.log", *, killed: bool = False) -> Any:
        material = bootstrap(
            self.vault,
            load_spec(self.enclave.spec),
            CONTROLLER,
            VaultConnection(self.openbao.address),
        )
        name = self.enclave.name
        ready = (
            rf"controller of enclave {name} is killed: 1 gateway\(s\) told to deny, no heartbeats"
            if killed
            else None
        )
        return running_controller(
            self.tmp_path,
            self.enclave,
            [self.gateway.url],
            material,
            extra=("--backend", "none", "--gateway-audit", str(audit_dir(self.enclave))),
            ready=ready,
            log_name=log_name,
        )

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--state-dir", str(self.enclave.state), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def kill(
        self, capsys: pytest.CaptureFixture[str], who: str, reason: str
    ) -> tuple[int, str, str]:
        name = self.enclave.name
        return self.cli(
            capsys, "kill", name, "--reason", reason, "--token-file", str(self.files[who])
        )

    def resume(self, capsys: pytest.CaptureFixture[str], who: str) -> tuple[int, str, str]:
        return self.cli(capsys, "resume", self.enclave.name, "--token-file", str(self.files[who]))

    def status(self, capsys: pytest.CaptureFixture[str]) -> Json:
        code, out, err = self.cli(capsys, "controller", "status", self.enclave.name, "--json")
        assert code == 0, err
        data: Json = json.loads(out)
        return data

    def records(self, action: str) -> list[AuditRecord]:
        """The controller's records of ``action``."""
        root = controller_dir(self.enclave.state, self.enclave.name) / "audit"
        return [r for r in iter_records(root) if r.action == action]


@contextlib.contextmanager
def built_stack(
    tmp_path: Path,
    openbao: OpenBaoServer,
    openbao_client: Any,
    *,
    template: str = SPEC,
    officers: tuple[str, ...] = OFFICERS,
) -> Iterator[Stack]:
    with (
        running_runtime(tmp_path, token_delay=TOKEN_DELAY) as runtime,
        provisioned_enclave(
            tmp_path,
            openbao.address,
            openbao_client,
            heartbeat="200ms",
            lease="1s",
            template=template,
        ) as enclave,
    ):
        paths = EnclavePaths(enclave.name)
        key = read_control_key(openbao_client, paths)
        with running_gateway(tmp_path, enclave, runtime, openbao.root_token, key) as gateway:
            stack = Stack(tmp_path, openbao, openbao_client, enclave, runtime, gateway, key)
            for who in officers:
                token = issue(openbao_client, paths, who, ["safety-officer"]).token
                stack.files[who] = private_file(tmp_path / f"{who}.token", token)
            stack.files["alice"] = private_file(tmp_path / "alice.token", enclave.token)
            stack.files["garbage"] = private_file(tmp_path / "garbage.token", "enc_garbage")
            yield stack


@pytest.fixture
def stack(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Stack]:
    with built_stack(tmp_path, openbao, openbao_client) as built:
        yield built


@pytest.fixture
def quorum_stack(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Stack]:
    """Four officers (bob, carol, dan, erin), three approvals to resume."""
    with built_stack(
        tmp_path, openbao, openbao_client, template=QUORUM_SPEC, officers=(*OFFICERS, "erin")
    ) as built:
        yield built


def wait_healthy(client: httpx.Client, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (answer := client.get("/healthz")).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.02)


def chat(client: httpx.Client, stack: Stack, text: str = "Translate: hello") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": text}],
        },
        headers=stack.headers,
    )


class StreamWatcher:
    """A streaming chat read on its own thread; notes when its terminal error arrives."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.chunks = 0
        self.error: Json | None = None
        self.error_at: float | None = None
        self.flowing = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        body = {
            "model": "assistant",
            "stream": True,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": "Translate: what does the gateway do?"}],
        }
        with (
            httpx.Client(base_url=self.stack.gateway.url, timeout=30.0, trust_env=False) as c,
            c.stream("POST", "/v1/chat/completions", json=body, headers=self.stack.headers) as r,
        ):
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                payload = json.loads(line[5:])
                if "error" in payload:
                    self.error_at = time.monotonic()
                    self.error = payload["error"]
                    return
                self.chunks += 1
                if self.chunks >= 3:
                    self.flowing.set()


class DenyWatcher:
    """Polls ``/healthz`` from its own thread; notes when it first answers 503."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.denied_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while not self.stop.is_set():
                if client.get("/healthz").status_code == 503:
                    self.denied_at = time.monotonic()
                    return
                time.sleep(0.002)


def test_kill_denies_and_cuts_and_the_resume_needs_two_others(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_spec(stack.enclave.spec)
    # a workload's Vault token, as the gateway container would hold it: the kill revokes it
    workload = redeem(
        VaultConnection(stack.openbao.address),
        bootstrap(stack.vault, loaded, GATEWAY, VaultConnection(stack.openbao.address)),
    )
    name = stack.enclave.name
    timings: dict[str, float] = {}
    with (
        stack.controller() as controller,
        httpx.Client(base_url=stack.gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        wait_healthy(client)
        assert chat(client, stack).status_code == 200
        sock = socket_path(stack.enclave.state, name)
        assert sock.stat().st_mode & 0o777 == 0o600
        api = ControllerClient(sock, timeout=30)
        tokens = {who: path.read_text().strip() for who, path in stack.files.items()}

        # refused: an analyst, a malformed token; nothing changes
        code, _, err = stack.kill(capsys, "alice", "I want to")
        assert code == 2 and "is not granted the 'kill' action (forbidden, HTTP 403)" in err
        code, _, err = stack.kill(capsys, "garbage", "x")
        assert code == 2 and "(invalid_api_key, HTTP 401)" in err
        assert client.get("/healthz").status_code == 200

        stream = StreamWatcher(stack)
        assert stream.flowing.wait(15), "the stream never started"
        denied = DenyWatcher(stack.gateway.url)
        started = time.monotonic()
        code, killed = api.call(
            "POST", "/kill", token=tokens["bob"], body={"reason": "model leaking data"}
        )
        returned = time.monotonic()
        assert code == 200, killed
        denied.thread.join(5)
        stream.thread.join(5)
        assert denied.denied_at is not None and stream.error_at is not None
        timings["kill call, every step done (client)"] = returned - started
        timings["trigger -> /healthz 503 (client)"] = denied.denied_at - started
        timings["trigger -> stream cut (client)"] = stream.error_at - started
        steps = {s["step"]: s for s in killed["steps"]}
        (kill_record,) = [r for r in stack.records("shutdown.kill") if r.actor == "bob"]
        assert kill_record.details is not None
        timings["controller: token checked (trigger+)"] = (
            kill_record.details["authenticated_ms"] / 1000
        )
        for step, result in steps.items():
            timings[f"controller: {step} (trigger+)"] = result["offset"]
        assert all(s["ok"] for s in killed["steps"]), killed
        assert steps["gateways deny all and cut streams"]["offset"] < DENY_WITHIN
        assert stream.error is not None and stream.error["code"] == "enclave_shutdown"
        assert "model leaking data" in stream.error["message"]
        assert stream.error_at - started < CUT_WITHIN + 0.25  # + the CLI's own start-up

        refused = chat(client, stack)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "enclave_shutdown"
        with pytest.raises(VaultForbiddenError), translate("lookup-self"):
            workload.auth.token.lookup_self()  # revoked by the kill
        assert "workload token(s) revoked" in steps["vault tokens revoked"]["detail"]

        status = stack.status(capsys)
        assert status["mode"] == "killed" and status["trigger"]["principal"] == "bob"
        assert status["incident"] == killed["incident"]
        code, _, err = stack.kill(capsys, "carol", "again")
        assert code == 3 and "already killed" in err

        # the resume: not bob (he killed it), not alice; carol once; then a restart
        code, _, err = stack.resume(capsys, "bob")
        assert code == 2 and "self_approval" in err
        code, _, err = stack.resume(capsys, "alice")
        assert code == 2 and "forbidden" in err
        code, out, err = stack.resume(capsys, "carol")
        assert code == 0, err
        assert "approval recorded: 1 of 2 (carol); 1 more needed" in out
        code, _, err = stack.resume(capsys, "carol")
        assert code == 3 and "replayed_approval" in err
        assert client.get("/healthz").status_code == 503

        controller.process.kill()  # SIGKILL: no goodbye
        controller.process.wait(10)
        assert client.get("/healthz").status_code == 503
    with (
        stack.controller("controller2.log", killed=True),
        httpx.Client(base_url=stack.gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["mode"] == "killed"
        status = stack.status(capsys)
        assert status["mode"] == "killed" and status["heartbeating"] is False
        assert [a["principal"] for a in status["approvals"]] == ["carol"]
        time.sleep(1.5)  # past a lease: a killed controller never heartbeats
        assert client.get("/healthz").status_code == 503

        begun = time.monotonic()
        code, out, err = stack.resume(capsys, "dan")
        timings["resume (quorum -> serving)"] = time.monotonic() - begun
        assert code == 0, err
        assert f"enclave {name} resumed (approved by carol, dan" in out
        wait_healthy(client, timeout=5)
        assert chat(client, stack).status_code == 200
        status = stack.status(capsys)
        assert status["mode"] == "serving" and status["heartbeating"] is True

    print("\nkill switch timings (seconds):")
    for what, seconds in timings.items():
        print(f"  {what:<55} {seconds * 1000:8.1f} ms")

    root = controller_dir(stack.enclave.state, name) / "audit"
    report = verify_log(root)
    assert report.intact, report.summary()
    kills = [(r.actor, r.decision) for r in stack.records("shutdown.kill")]
    assert kills == [
        ("alice", Decision.DENY),
        ("anonymous", Decision.DENY),
        ("bob", Decision.ALLOW),
        ("carol", Decision.DENY),
    ]
    resumes = [(r.actor, r.decision, r.reason) for r in stack.records("shutdown.resume")]
    assert resumes == [
        ("bob", Decision.DENY, "triggerer"),
        ("alice", Decision.DENY, "principal 'alice' is not granted the 'resume' action"),
        ("carol", Decision.ALLOW, "counted"),
        ("carol", Decision.DENY, "replayed"),
        ("dan", Decision.ALLOW, "quorum"),
    ]
    incident = load_incident(root, killed["incident"])
    assert incident.status is IncidentStatus.RESOLVED and incident.trigger.by == "bob"
    # the kill's four steps; then, after the restart while killed, the engine and Vault steps
    # made sure of again
    done = [e.text.split(":")[0] for e in incident.actions]
    assert done[4:] == ["model containers stopped", "networks detached", "vault tokens revoked"]
    assert [e.result.value for e in incident.actions if e.result] == ["ok"] * 7
    texts = " | ".join(e.text for e in incident.timeline)
    assert "controller restarted while killed" in texts
    assert "resume approved by carol (1 of 2)" in texts
    logs = stack.tmp_path.joinpath("controller.log").read_text()
    for path in stack.files.values():
        assert path.read_text().strip() not in logs


def test_a_violation_rate_over_the_limit_kills(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        stack.controller(),
        httpx.Client(base_url=stack.gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        wait_healthy(client)
        for _ in range(3):  # the limit: still serving
            assert chat(client, stack, PROHIBITED).status_code == 403
        time.sleep(0.6)
        assert client.get("/healthz").status_code == 200
        fourth = time.monotonic()
        assert chat(client, stack, PROHIBITED).status_code == 403
        while client.get("/healthz").status_code == 200:
            assert time.monotonic() - fourth < 3.0, "no kill after the fourth violation"
            time.sleep(0.02)
        print(f"\nfourth violation -> /healthz 503: {(time.monotonic() - fourth) * 1000:.1f} ms")
        status = stack.status(capsys)
        assert status["mode"] == "killed"
        assert status["trigger"]["kind"] == "violation-rate"
        assert "4 policy violations in the last minute (limit 3/min" in status["trigger"]["reason"]

        # an automatic kill: anyone holding resume may approve (two of them)
        assert stack.resume(capsys, "bob")[0] == 0
        code, out, err = stack.resume(capsys, "carol")
        assert code == 0 and "resumed (approved by bob, carol" in out, err
        wait_healthy(client, timeout=5)
        assert chat(client, stack).status_code == 200  # the old violations count no more

        code, out, err = stack.kill(capsys, "dan", "by hand, through the CLI")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(f"enclave {stack.enclave.name} killed (incident inc-")
        assert [line.split()[0] for line in lines[1:]] == ["gateways", "model", "networks", "vault"]
        assert all(" ok " in line for line in lines[1:])
        assert client.get("/healthz").status_code == 503
        code, out, _ = stack.cli(capsys, "controller", "status", stack.enclave.name)
        assert code == 0
        assert "trigger    manual by dan: by hand, through the CLI" in out
        assert "approvals  0 of 2 (none)" in out
        assert "kills      2" in out
    automatic, manual = stack.records("shutdown.kill")
    assert automatic.actor == "shutdown-controller" and automatic.decision is Decision.ALLOW
    assert automatic.details is not None and len(automatic.details["violations"]) == 4
    assert (manual.actor, manual.decision) == ("dan", Decision.ALLOW)


@dataclass(frozen=True)
class Answer:
    route: str
    who: str
    status: int
    body: Json

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


def storm(stack: Stack, jobs: list[tuple[str, str]]) -> list[Answer]:
    """Every ``(route, principal)`` call at once over the controller's socket, one thread
    each, released together by a barrier; the answers in the order of ``jobs``."""
    sock = socket_path(stack.enclave.state, stack.enclave.name)
    tokens = {who: path.read_text().strip() for who, path in stack.files.items()}
    barrier = threading.Barrier(len(jobs), timeout=30)

    def call(job: tuple[str, str]) -> Answer:
        route, who = job
        client = ControllerClient(sock, timeout=60)
        body = {"reason": f"concurrent kill by {who}"} if route == "/kill" else None
        barrier.wait()
        status, answer = client.call("POST", route, token=tokens[who], body=body)
        return Answer(route, who, status, answer)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(call, jobs))


def persisted_matches(stack: Stack, status: Json) -> None:
    """The state file says what the running controller says."""
    path = controller_dir(stack.enclave.state, stack.enclave.name) / "state.json"
    state = json.loads(path.read_text())
    assert state["mode"] == status["mode"]
    assert state["kills"] == status["kills"]
    assert state["incident"] == status["incident"]
    assert [(a["principal"], a["at"]) for a in state["approvals"]] == [
        (a["principal"], a["at"]) for a in status["approvals"]
    ]
    trigger = state["trigger"]
    assert (trigger and trigger["principal"]) == (
        status["trigger"] and status["trigger"]["principal"]
    )


def test_fifty_concurrent_kills_and_approvals_leave_one_consistent_state(
    quorum_stack: Stack,
) -> None:
    """50 kills and resume approvals at once from three officers while serving, then 30
    approvals at once from all four: exactly one kill wins, each approval counts once, the
    quorum resumes exactly once, the state file always equals the controller's state, and
    every call is in the controller's audit log with the decision it was answered with."""
    stack = quorum_stack
    sock = socket_path(stack.enclave.state, stack.enclave.name)

    def status() -> Json:
        code, body = ControllerClient(sock, timeout=30).call("GET", "/status")
        assert code == 200, body
        return body

    with (
        stack.controller(),
        httpx.Client(base_url=stack.gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        wait_healthy(client)
        first = storm(
            stack,
            [("/kill", OFFICERS[i % 3]) for i in range(26)]
            + [("/resume", OFFICERS[i % 3]) for i in range(24)],
        )
        kills = [a for a in first if a.route == "/kill"]
        assert sorted(a.status for a in kills) == [200] + [409] * 25
        assert {a.code for a in kills if a.status == 409} == {"conflict"}
        (winner,) = [a.who for a in kills if a.status == 200]
        after_kill = status()
        assert after_kill["mode"] == "killed" and after_kill["kills"] == 1
        assert after_kill["trigger"]["principal"] == winner
        assert client.get("/healthz").status_code == 503
        approvals = [a for a in first if a.route == "/resume"]
        for answer in approvals:  # before the kill: not killed; after: once each, not the killer
            assert (answer.status, answer.code) in {
                (202, None),
                (409, "not_killed"),
                (409, "replayed_approval"),
                (403, "self_approval"),
            }, answer
            if answer.status == 403:
                assert answer.who == winner
        counted = [a.who for a in approvals if a.status == 202]
        assert winner not in counted and len(counted) == len(set(counted)) <= 2
        assert sorted(a["principal"] for a in after_kill["approvals"]) == sorted(counted)
        persisted_matches(stack, after_kill)

        second = storm(stack, [("/resume", who) for who in (*OFFICERS, "erin") * 7][:30])
        resumed = [a for a in second if a.status == 200]
        assert len(resumed) == 1 and resumed[0].body["resumed"] is True, resumed
        assert resumed[0].who != winner
        newly = [a.who for a in second if a.status == 202]
        assert len(newly) == len(set(newly)) and not set(newly) & set(counted)
        assert len(counted) + len(newly) + 1 == 3  # the quorum, each counted once
        assert sorted(resumed[0].body["approvals"]) == sorted([*counted, *newly, resumed[0].who])
        for answer in second:
            if answer.status not in (200, 202):
                assert (answer.status, answer.code) in {
                    (409, "not_killed"),  # resuming or serving again
                    (409, "replayed_approval"),
                    (403, "self_approval"),
                }, answer
        wait_healthy(client, timeout=5)
        final = status()
        assert final["mode"] == "serving" and final["kills"] == 1 and final["approvals"] == []
        persisted_matches(stack, final)

    root = controller_dir(stack.enclave.state, stack.enclave.name) / "audit"
    report = verify_log(root)
    assert report.intact, report.summary()
    for action, answers in (("shutdown.kill", kills), ("shutdown.resume", approvals + second)):
        records = stack.records(action)
        assert len(records) == len(answers)  # every call, accepted or refused, exactly once
        by_principal = sorted((r.actor, r.decision) for r in records)
        expected = sorted(
            (a.who, Decision.ALLOW if a.status in (200, 202) else Decision.DENY) for a in answers
        )
        assert by_principal == expected
    # in the log's order: the kill, then the approvals that counted, the last one the quorum
    allowed = [
        r
        for r in iter_records(root)
        if r.action in ("shutdown.kill", "shutdown.resume") and r.decision is Decision.ALLOW
    ]
    assert [r.action for r in allowed] == ["shutdown.kill"] + ["shutdown.resume"] * 3
    assert [r.reason for r in allowed[1:]] == ["counted", "counted", "quorum"]
    assert len(stack.records("shutdown.resumed")) == 1
