"""The shutdown controller with fakes: the kill's order, retries and timeline, the API's
authorisation matrix, the resume quorum, restarts, the automatic triggers, concurrency.

The gateways are the real :class:`~enclave.gateway.control.ControlChannel` and
:class:`~enclave.gateway.state.ShutdownState` behind mock transports; the audit log is a real
one under ``tmp_path``; the kill's engine and Vault steps are fakes that record their calls.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.audit import AuditEvent, AuditLog, Decision, Ed25519Signer, verify_log
from enclave.audit.incidents import IncidentStatus, load_incident
from enclave.audit.reader import iter_records
from enclave.audit.record import AuditRecord
from enclave.cli.main import main
from enclave.errors import AuditError, DockerError, NotFoundError, ServiceError
from enclave.gateway.control import ControlChannel
from enclave.gateway.state import Mode as GatewayMode
from enclave.gateway.state import ShutdownState
from enclave.shutdown.actions import KillSettings, Step, StepResult, run_kill
from enclave.shutdown.api import ControllerClient, bind, create_api, serve
from enclave.shutdown.authority import Authenticator
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind
from enclave.shutdown.controller import Controller, ControllerSettings
from enclave.shutdown.heartbeat import HeartbeatSettings
from enclave.shutdown.journal import Journal
from enclave.shutdown.state import Mode, StateMachine, Trigger, TriggerKind
from enclave.shutdown.triggers import AuditTail, ViolationWindow, is_violation
from enclave.spec.model import Role
from enclave.vault.tokens import TokenRecord, new_token, token_hash
from support.kill_effects import KillEffects

KEY = secrets.token_bytes(32)
TOKEN_KEY = secrets.token_bytes(32)
BEAT = HeartbeatSettings(interval=0.05, lease=0.5, timeout=0.2)
ROLES = {
    "analyst": Role.model_validate({"actions": ["query"], "purposes": ["translation"]}),
    "safety-officer": Role.model_validate({"actions": ["kill", "resume", "audit-read"]}),
    "killer": Role.model_validate({"actions": ["kill"]}),
}
PRINCIPALS = {
    "alice": ["analyst"],
    "bob": ["safety-officer"],
    "carol": ["safety-officer"],
    "dan": ["safety-officer"],
    "erin": ["safety-officer"],
    "kim": ["killer"],
}
Json = dict[str, Any]


# -- fakes ----------------------------------------------------------------------------------------


class Gateway:
    """One gateway's control and health endpoints: the real channel and state."""

    def __init__(self) -> None:
        self.state = ShutdownState(5.0)
        self.channel = ControlChannel(self.state, KEY)
        self.accepted: list[ControlCommand] = []
        self.fail = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.fail:
            return httpx.Response(500, json={"error": {"code": "boom"}})
        if request.url.path == "/healthz":
            return httpx.Response(200 if self.state.check() is None else 503, json={})
        result = self.channel.handle(request.content, request.headers.get(SIGNATURE_HEADER))
        if isinstance(result, ControlCommand):
            self.accepted.append(result)
            return httpx.Response(200, json={"mode": self.state.mode.value})
        return httpx.Response(result.status, json=result.body())

    def kinds(self) -> list[ControlKind]:
        return [c.kind for c in self.accepted]


class Workload:
    """A backend whose restart can be held (``hold``) or made to fail (``fail``)."""

    def __init__(self) -> None:
        self.restarts = 0
        self.warmed = False
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail = False

    def warm(self) -> None:
        self.warmed = True

    def stop_models(self) -> str:
        return "stopped"

    def detach_gateways(self) -> str:
        return "detached"

    def restart(self) -> str:
        self.entered.set()
        self.hold.wait(10)
        self.restarts += 1
        if self.fail:
            raise DockerError("create container: no space left on device")
        return "2 action(s)"


class Tokens:
    """Token records the way Vault keeps them."""

    def __init__(self) -> None:
        self.records: dict[str, TokenRecord] = {}
        self.reads = 0

    def issue(self, principal: str, roles: list[str], *, expires: datetime | None = None) -> str:
        token, token_id, secret = new_token()
        digest = token_hash(
            TOKEN_KEY, secret, token_id=token_id, principal=principal, expires=expires
        )
        created = datetime.now(UTC) - timedelta(hours=2)
        self.records[token_id] = TokenRecord(
            token_id, principal, tuple(roles), created, expires, digest
        )
        return token

    def token_record(self, token_id: str) -> TokenRecord:
        self.reads += 1
        try:
            return self.records[token_id]
        except KeyError:
            raise NotFoundError(f"no API token {token_id!r}") from None

    def token_key(self) -> bytes:
        return TOKEN_KEY


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A controller over fakes, with its API as an in-process client."""

    tmp: Path
    gateway: Gateway = field(default_factory=Gateway)
    effects: KillEffects = field(default_factory=KillEffects)
    tokens: Tokens = field(default_factory=Tokens)
    clock: Clock = field(default_factory=Clock)
    workload: Workload | None = None
    required: int = 2
    settings: ControllerSettings = field(
        default_factory=lambda: ControllerSettings(heartbeat=BEAT, health_timeout=2.0)
    )
    gateway_audit: list[Path] = field(default_factory=list)
    controller: Controller = field(init=False)
    log: AuditLog = field(init=False)
    tok: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.tok = {name: self.tokens.issue(name, roles) for name, roles in PRINCIPALS.items()}
        self.build()

    def build(self) -> Controller:
        home = self.tmp / "controller"
        machine = StateMachine(
            home / "state.json", required=self.required, exclude_trigger=True, clock=self.clock
        )
        signer = Ed25519Signer.from_file(home / "audit.key", create=True)
        self.log = AuditLog.open(home / "audit", enclave="demo", signer=signer)
        self.controller = Controller(
            "demo",
            ["http://gw-a"],
            KEY,
            self.settings,
            machine=machine,
            journal=Journal(self.log),
            authenticator=Authenticator(self.tokens, ROLES, PRINCIPALS),
            workload=self.workload,
            effects=self.effects,
            gateway_audit=self.gateway_audit,
            transport=httpx.MockTransport(self.gateway.handle),
        )
        self.effects.inner = _LinkDeny(self.controller)
        return self.controller

    def close(self) -> None:
        self.log.close()

    def records(self, prefix: str = "shutdown.") -> list[AuditRecord]:
        return [
            r
            for r in iter_records(self.tmp / "controller" / "audit")
            if r.action.startswith(prefix)
        ]


class _LinkDeny:
    """The real deny step (KILL over the controller's links)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def deny(self, reason: str) -> str:
        results = await asyncio.gather(
            *(link.send(ControlKind.KILL, reason=reason) for link in self.controller.links)
        )
        assert all(r.ok for r in results), results
        return f"{len(results)} gateway(s) confirmed"


def scenario(rig: Rig, body: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run the controller (started, heartbeating) and ``body`` against its API."""

    async def main() -> None:
        stop = asyncio.Event()
        await rig.controller.start()
        running = asyncio.create_task(rig.controller.run(stop))
        transport = httpx.ASGITransport(app=create_api(rig.controller))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                await body(api)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)

    try:
        asyncio.run(main())
    finally:
        rig.close()


def mode_of(rig: Rig) -> Mode:
    """The controller's mode now (a call: mypy does not narrow it across awaits)."""
    return rig.controller.mode


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


# -- the actions -----------------------------------------------------------------------------------


def test_the_kill_runs_every_step_in_order_retries_and_goes_on_after_a_failure() -> None:
    effects = KillEffects(failures={"stop_models": 2, "detach": 5})
    effects.inner = _Confirm()
    seen: list[StepResult] = []
    settings = KillSettings(seal=False, attempts=3, backoff=0.001)
    results = asyncio.run(run_kill(effects, "test", settings, on_step=seen.append))

    assert [r.step for r in results] == [Step.DENY, Step.STOP_MODELS, Step.DETACH, Step.REVOKE]
    assert seen == results
    assert effects.calls == ["deny", *["stop_models"] * 3, *["detach"] * 3, "revoke"]
    assert [(r.ok, r.attempts) for r in results] == [(True, 1), (True, 3), (False, 3), (True, 1)]
    assert results[2].detail == "failed: detach: the engine said no"
    offsets = [r.offset for r in results]
    assert offsets == sorted(offsets) and all(r.seconds >= 0 for r in results)
    assert "(done at trigger+" in results[1].text and "3 tries" in results[1].text

    sealing = KillEffects()
    sealing.inner = _Confirm()
    steps = asyncio.run(run_kill(sealing, "x", KillSettings(seal=True)))
    assert [r.step for r in steps][-1] is Step.SEAL and sealing.calls[-1] == "seal"


class _Confirm:
    async def deny(self, reason: str) -> str:
        return f"denied: {reason}"


# -- the API's authorisation matrix ----------------------------------------------------------------


def test_only_a_valid_token_with_the_kill_role_kills_and_every_attempt_is_recorded(
    rig: Rig,
) -> None:
    unknown, _, _ = new_token()
    expired = rig.tokens.issue("dan", ["safety-officer"], expires=datetime.now(UTC) - timedelta(1))
    stranger = rig.tokens.issue("mallory", ["safety-officer"])  # not in the spec
    narrowed = rig.tokens.issue("erin", ["analyst"])  # erin's token grants only analyst
    wrong_secret = rig.tok["carol"][:-4] + (
        "AAAA" if not rig.tok["carol"].endswith("AAAA") else "BBBB"
    )
    answers: dict[str, tuple[int, str]] = {}

    async def body(api: httpx.AsyncClient) -> None:
        async def kill(name: str, headers: dict[str, str], reason: object = "leak") -> None:
            answer = await api.post("/kill", json={"reason": reason}, headers=headers)
            code = answer.json().get("error", {}).get("code", "ok")
            answers[name] = (answer.status_code, code)

        await kill("no header", {})
        await kill("not bearer", {"authorization": f"Basic {rig.tok['bob']}"})
        await kill("malformed", bearer("enc_nope"))
        await kill("unknown", bearer(unknown))
        await kill("wrong secret", bearer(wrong_secret))
        await kill("expired", bearer(expired))
        await kill("not in spec", bearer(stranger))
        await kill("narrowed", bearer(narrowed))
        await kill("analyst", bearer(rig.tok["alice"]))
        await kill("no reason", bearer(rig.tok["bob"]), reason="  ")
        await kill("bad reason", bearer(rig.tok["bob"]), reason=["x"])
        assert mode_of(rig) is Mode.SERVING and rig.effects.calls == []
        assert rig.gateway.state.mode is GatewayMode.SERVING
        await kill("kim", bearer(rig.tok["kim"]))
        await kill("bob after", bearer(rig.tok["bob"]))

    scenario(rig, body)
    assert answers == {
        "no header": (401, "invalid_api_key"),
        "not bearer": (401, "invalid_api_key"),
        "malformed": (401, "invalid_api_key"),
        "unknown": (401, "invalid_api_key"),
        "wrong secret": (401, "invalid_api_key"),
        "expired": (401, "invalid_api_key"),
        "not in spec": (401, "invalid_api_key"),
        "narrowed": (403, "forbidden"),
        "analyst": (403, "forbidden"),
        "no reason": (400, "invalid_request"),
        "bad reason": (400, "invalid_request"),
        "kim": (200, "ok"),
        "bob after": (409, "conflict"),
    }
    kills = [(r.actor, r.decision) for r in rig.records("shutdown.kill")]
    assert kills == [
        *[("anonymous", Decision.DENY)] * 7,
        ("erin", Decision.DENY),
        ("alice", Decision.DENY),
        ("bob", Decision.DENY),
        ("bob", Decision.DENY),
        ("kim", Decision.ALLOW),
        ("bob", Decision.DENY),
    ]
    text = json.dumps([r.as_dict() for r in rig.records()])
    for token in rig.tok.values():
        assert token not in text
    assert verify_log(rig.tmp / "controller" / "audit").intact


def test_a_kill_denies_at_the_gateway_stops_heartbeats_and_writes_the_incident(rig: Rig) -> None:
    killed: Json = {}

    async def body(api: httpx.AsyncClient) -> None:
        await wait_for(lambda: rig.gateway.state.check() is None)  # leased: serving
        answer = await api.post(
            "/kill", json={"reason": "leak suspected"}, headers=bearer(rig.tok["bob"])
        )
        assert answer.status_code == 200, answer.text
        killed.update(answer.json())
        assert rig.gateway.state.mode is GatewayMode.KILLED
        beats = rig.gateway.kinds().count(ControlKind.HEARTBEAT)
        await asyncio.sleep(BEAT.interval * 5)
        assert rig.gateway.kinds().count(ControlKind.HEARTBEAT) == beats  # no more heartbeats
        status = (await api.get("/status")).json()
        assert status["mode"] == "killed" and status["heartbeating"] is False
        assert status["trigger"]["principal"] == "bob" and status["incident"] == killed["incident"]

    scenario(rig, body)
    assert killed["mode"] == "killed"
    assert [s["step"] for s in killed["steps"]] == [s.value for s in Step if s is not Step.SEAL]
    assert all(s["ok"] for s in killed["steps"])
    assert rig.effects.calls == ["deny", "stop_models", "detach", "revoke"]
    assert rig.gateway.kinds()[-1] is ControlKind.KILL
    assert "leak suspected" in rig.gateway.accepted[-1].reason
    incident = load_incident(rig.tmp / "controller" / "audit", killed["incident"])
    assert incident.trigger.by == "bob" and incident.status is IncidentStatus.MITIGATED
    actions = [e.text.split(":")[0] for e in incident.actions]
    assert actions == [s["step"] for s in killed["steps"]]
    kill_record = rig.records("shutdown.kill")[0]
    assert kill_record.seq in incident.evidence  # the incident cites the kill's record
    assert kill_record.details is not None and kill_record.details["trigger"] == "manual"


def test_the_resume_needs_two_others_and_refuses_and_records_every_bad_approval(
    rig: Rig,
) -> None:
    answers: list[tuple[str, int, str]] = []

    async def body(api: httpx.AsyncClient) -> None:
        async def resume(who: str, token: str | None = None) -> Json:
            answer = await api.post("/resume", headers=bearer(token or rig.tok[who]))
            data: Json = answer.json()
            answers.append((who, answer.status_code, data.get("error", {}).get("code", "ok")))
            return data

        await resume("carol")  # serving: nothing to resume
        await api.post("/kill", json={"reason": "drill"}, headers=bearer(rig.tok["bob"]))
        await resume("bob")  # the triggerer
        await resume("alice")  # no resume role
        await resume("kim")  # kill but not resume
        await resume("anon", "enc_garbage")
        counted = await resume("carol")
        assert counted["approvals"] == ["carol"] and counted["required"] == 2
        await resume("carol")  # replayed
        rig.clock.now += rig.controller.machine.approval_ttl + 1  # carol's approval expires
        late = await resume("dan")
        assert late["expired"] == ["carol"] and late["approvals"] == ["dan"]
        assert mode_of(rig) is Mode.KILLED and rig.gateway.state.mode is GatewayMode.KILLED
        done = await resume("erin")
        assert done["resumed"] is True and done["approvals"] == ["dan", "erin"]
        assert mode_of(rig) is Mode.SERVING
        assert rig.gateway.state.check() is None  # resumed and leased
        await wait_for(rig.controller.beating.is_set)
        await resume("carol")  # serving again

    scenario(rig, body)
    assert answers == [
        ("carol", 409, "not_killed"),
        ("bob", 403, "self_approval"),
        ("alice", 403, "forbidden"),
        ("kim", 403, "forbidden"),
        ("anon", 401, "invalid_api_key"),
        ("carol", 202, "ok"),
        ("carol", 409, "replayed_approval"),
        ("dan", 202, "ok"),
        ("erin", 200, "ok"),
        ("carol", 409, "not_killed"),
    ]
    resumes = [(r.actor, r.decision, r.reason) for r in rig.records("shutdown.resume")]
    assert resumes[0] == ("carol", Decision.DENY, "not-killed")
    assert ("bob", Decision.DENY, "triggerer") in resumes
    assert ("carol", Decision.DENY, "replayed") in resumes
    assert ("erin", Decision.ALLOW, "quorum") in resumes
    assert [r.action for r in rig.records("shutdown.approval-expired")] == [
        "shutdown.approval-expired"
    ]
    resumed = rig.records("shutdown.resumed")
    assert len(resumed) == 1 and resumed[0].details is not None
    assert resumed[0].details["approvers"] == ["dan", "erin"]
    incident = load_incident(rig.tmp / "controller" / "audit", resumed[0].details["incident"])
    assert incident.status is IncidentStatus.RESOLVED
    assert "dan, erin" in (incident.resolution or "")
    kinds = rig.gateway.kinds()
    last_kill = len(kinds) - 1 - kinds[::-1].index(ControlKind.KILL)
    assert kinds[last_kill + 1 : last_kill + 3] == [ControlKind.HEARTBEAT, ControlKind.RESUME]


def test_a_failed_resume_leaves_the_enclave_killed_with_the_reason(tmp_path: Path) -> None:
    workload = Workload()
    workload.fail = True
    rig = Rig(tmp_path, workload=workload)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        await api.post("/resume", headers=bearer(rig.tok["carol"]))
        failed = await api.post("/resume", headers=bearer(rig.tok["dan"]))
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "resume_failed"
        assert "no space left on device" in failed.json()["error"]["message"]
        assert mode_of(rig) is Mode.KILLED and rig.gateway.state.mode is GatewayMode.KILLED
        assert not rig.controller.beating.is_set()
        # the approvals are kept: the next one tries again, and this time it works
        workload.fail = False
        again = await api.post("/resume", headers=bearer(rig.tok["erin"]))
        assert again.status_code == 200, again.text
        assert workload.restarts == 2 and mode_of(rig) is Mode.SERVING

    scenario(rig, body)
    failed = rig.records("shutdown.resume-failed")
    assert len(failed) == 1 and "no space left" in failed[0].reason


def test_an_approver_asking_again_retries_a_failed_resume(tmp_path: Path) -> None:
    workload = Workload()
    workload.fail = True
    rig = Rig(tmp_path, workload=workload)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        await api.post("/resume", headers=bearer(rig.tok["carol"]))
        failed = await api.post("/resume", headers=bearer(rig.tok["dan"]))
        assert failed.status_code == 500 and mode_of(rig) is Mode.KILLED
        workload.fail = False
        again = await api.post("/resume", headers=bearer(rig.tok["carol"]))
        assert again.status_code == 200, again.text
        assert again.json()["outcome"] == "quorum" and again.json()["resumed"] is True
        assert workload.restarts == 2 and mode_of(rig) is Mode.SERVING

    scenario(rig, body)
    approvals = [
        (r.actor, r.decision, r.reason)
        for r in rig.records("shutdown.resume")
        if r.action == "shutdown.resume"
    ]
    assert approvals == [
        ("carol", Decision.ALLOW, "counted"),
        ("dan", Decision.ALLOW, "quorum"),
        ("carol", Decision.ALLOW, "retry"),
    ]


def test_a_kill_step_that_failed_is_done_later_while_the_enclave_stays_killed(
    tmp_path: Path,
) -> None:
    """The engine is down during the kill (3 tries fail) and for one more try; the next one,
    while killed, stops the models and the incident becomes mitigated."""
    settings = ControllerSettings(heartbeat=BEAT, health_timeout=2.0, retry_every=0.05)
    rig = Rig(tmp_path, effects=KillEffects(failures={"stop_models": 4}), settings=settings)
    killed: Json = {}

    async def body(api: httpx.AsyncClient) -> None:
        answer = await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        killed.update(answer.json())
        assert [s["ok"] for s in killed["steps"]] == [True, False, True, True]
        await wait_for(lambda: not rig.controller.undone)
        assert mode_of(rig) is Mode.KILLED and not rig.controller.beating.is_set()

    scenario(rig, body)
    assert rig.effects.calls.count("stop_models") == 5
    assert rig.effects.calls.count("detach") == 1  # only what failed is tried again
    incident = load_incident(rig.tmp / "controller" / "audit", killed["incident"])
    assert incident.status is IncidentStatus.MITIGATED
    stops = [e for e in incident.actions if e.text.startswith("model containers stopped")]
    assert [e.result.value for e in stops if e.result] == ["failed", "ok"]


def test_undone_kill_steps_are_dropped_by_a_resume_and_never_run_while_serving(
    tmp_path: Path,
) -> None:
    settings = ControllerSettings(heartbeat=BEAT, health_timeout=2.0, retry_every=0.02)
    rig = Rig(tmp_path, effects=KillEffects(failures={"detach": 1000}), settings=settings)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        await wait_for(lambda: rig.effects.calls.count("detach") >= 5)  # tried, and tried
        await api.post("/resume", headers=bearer(rig.tok["carol"]))
        resumed = await api.post("/resume", headers=bearer(rig.tok["dan"]))
        assert resumed.status_code == 200, resumed.text
        assert rig.controller.undone == set()
        tries = rig.effects.calls.count("detach")
        await asyncio.sleep(0.2)
        assert rig.effects.calls.count("detach") == tries

    scenario(rig, body)


def test_a_failed_resume_makes_sure_of_the_engine_and_vault_steps_again(tmp_path: Path) -> None:
    """The restart may have started containers and issued credentials before it failed."""
    workload = Workload()
    workload.fail = True
    settings = ControllerSettings(heartbeat=BEAT, health_timeout=2.0, retry_every=0.05)
    rig = Rig(tmp_path, workload=workload, settings=settings)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        await api.post("/resume", headers=bearer(rig.tok["carol"]))
        calls = len(rig.effects.calls)
        failed = await api.post("/resume", headers=bearer(rig.tok["dan"]))
        assert failed.status_code == 500
        await wait_for(lambda: rig.effects.calls[calls:].count("revoke") >= 1)
        assert rig.effects.calls[calls:] == ["deny", "stop_models", "detach", "revoke"]
        assert rig.controller.undone == set() and mode_of(rig) is Mode.KILLED

    scenario(rig, body)


def test_a_kill_during_a_resume_aborts_it(tmp_path: Path) -> None:
    workload = Workload()
    workload.hold.clear()
    rig = Rig(tmp_path, workload=workload)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "first"}, headers=bearer(rig.tok["bob"]))
        await api.post("/resume", headers=bearer(rig.tok["carol"]))
        resuming = asyncio.create_task(api.post("/resume", headers=bearer(rig.tok["dan"])))
        await asyncio.to_thread(workload.entered.wait, 5)
        assert mode_of(rig) is Mode.RESUMING
        killed = await api.post("/kill", json={"reason": "second"}, headers=bearer(rig.tok["erin"]))
        assert killed.status_code == 200, killed.text
        assert mode_of(rig) is Mode.KILLED
        workload.hold.set()  # the restart finishes after the kill
        answer = await resuming
        assert answer.status_code == 500 and "aborted by a kill" in answer.text
        assert mode_of(rig) is Mode.KILLED and rig.gateway.state.mode is GatewayMode.KILLED
        assert not rig.controller.beating.is_set()
        status = (await api.get("/status")).json()
        assert status["trigger"]["principal"] == "erin" and status["approvals"] == []
        assert status["kills"] == 2

    scenario(rig, body)
    # each kill stopped the containers, and the aborted resume again once its restart ended
    assert rig.effects.calls.count("stop_models") == 3
    assert rig.effects.calls[-3:] == ["deny", "stop_models", "detach"]
    assert rig.effects.calls.count("deny") >= 3


# -- concurrency --------------------------------------------------------------------------------


def test_many_concurrent_kills_and_resumes_keep_the_state_consistent(rig: Rig) -> None:
    async def body(api: httpx.AsyncClient) -> None:
        killers = ["bob", "carol", "dan", "erin", "kim"] * 8
        answers = await asyncio.gather(
            *(
                api.post("/kill", json={"reason": f"k{i}"}, headers=bearer(rig.tok[who]))
                for i, who in enumerate(killers)
            )
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] + [409] * (len(killers) - 1)
        assert rig.effects.calls == ["deny", "stop_models", "detach", "revoke"]
        trigger = rig.controller.machine.state.trigger
        assert trigger is not None
        approvers = [p for p in ["bob", "carol", "dan", "erin"] if p != trigger.principal]
        mixed = [
            *(api.post("/resume", headers=bearer(rig.tok[p])) for p in approvers * 6),
            *(
                api.post("/kill", json={"reason": "again"}, headers=bearer(rig.tok["kim"]))
                for _ in range(10)
            ),
        ]
        results = await asyncio.gather(*mixed)
        resume_codes = [r.status_code for r in results[: len(approvers) * 6]]
        kill_codes = [r.status_code for r in results[len(approvers) * 6 :]]
        machine = rig.controller.machine
        # whatever the interleaving: at most one resume ran, and the final state is a state
        # the machine can be in, with the gateway agreeing
        assert resume_codes.count(200) <= 1
        assert set(resume_codes) <= {200, 202, 409, 500}
        assert kill_codes.count(200) <= 1
        assert machine.mode in (Mode.SERVING, Mode.KILLED)
        if machine.mode is Mode.SERVING:
            assert rig.gateway.state.check() is None
            assert kill_codes.count(200) == 0
        else:
            assert rig.gateway.state.mode is GatewayMode.KILLED
        on_disk = json.loads((rig.tmp / "controller" / "state.json").read_text())
        assert on_disk["mode"] == machine.mode.value
        assert on_disk["kills"] == 1 + kill_codes.count(200)

    scenario(rig, body)
    assert verify_log(rig.tmp / "controller" / "audit").intact


# -- restarts -----------------------------------------------------------------------------------


def test_a_restarted_controller_stays_killed_and_tells_the_gateways_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def kill(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        await api.post("/resume", headers=bearer(rig.tok["carol"]))

    scenario(rig, kill)
    # a new controller process, and a gateway that restarted too (it forgot the kill)
    rig.gateway = Gateway()
    rig.gateway.state.heartbeat(5.0)
    rig.effects = KillEffects()
    rig.build()

    async def after(api: httpx.AsyncClient) -> None:
        assert rig.gateway.state.mode is GatewayMode.KILLED  # told again at start
        await asyncio.sleep(BEAT.interval * 4)
        assert ControlKind.HEARTBEAT not in rig.gateway.kinds()
        status = (await api.get("/status")).json()
        assert status["mode"] == "killed" and [a["principal"] for a in status["approvals"]] == [
            "carol"
        ]
        done = await api.post("/resume", headers=bearer(rig.tok["dan"]))
        assert done.status_code == 200, done.text

    scenario(rig, after)
    # the kill was not redone (no new record): KILL re-sent, and the engine and Vault steps
    # made sure of again, which the fakes answer as done
    assert rig.effects.calls == ["deny", "stop_models", "detach", "revoke"]
    assert len(rig.records("shutdown.kill")) == 1
    starts = [r.details for r in rig.records("shutdown.start")]
    assert [d["mode"] for d in starts if d] == ["serving", "killed"]


def test_a_controller_that_died_mid_kill_does_the_whole_kill_again(tmp_path: Path) -> None:
    home = tmp_path / "controller"
    machine = StateMachine(home / "state.json", required=2, exclude_trigger=True)
    machine.begin_kill(Trigger(TriggerKind.MANUAL, "half done", "bob"))  # then "crashed"
    rig = Rig(tmp_path)

    async def body(api: httpx.AsyncClient) -> None:
        await wait_for(lambda: mode_of(rig) is Mode.KILLED)
        assert rig.gateway.state.mode is GatewayMode.KILLED
        assert not rig.controller.beating.is_set()
        status = (await api.get("/status")).json()
        assert status["incident"] is not None and status["trigger"]["reason"] == "half done"

    scenario(rig, body)
    assert rig.effects.calls == ["deny", "stop_models", "detach", "revoke"]
    kill = rig.records("shutdown.kill")[0]
    assert kill.decision is Decision.ALLOW and kill.actor == "bob"
    assert kill.details is not None and "redone" in kill.details


# -- the automatic triggers ------------------------------------------------------------------------


def _gateway_log(tmp_path: Path) -> AuditLog:
    signer = Ed25519Signer.from_file(tmp_path / "gw.key", create=True)
    return AuditLog.open(tmp_path / "gateway-audit", enclave="demo", signer=signer)


def _violation(use: str = "autonomous-target-selection") -> AuditEvent:
    return AuditEvent(
        actor="alice",
        action="request.chat",
        decision=Decision.DENY,
        reason="prohibited_use",
        details={"use": use, "status": 403},
    )


def test_more_violations_a_minute_than_the_spec_allows_kill_the_enclave(tmp_path: Path) -> None:
    settings = ControllerSettings(heartbeat=BEAT, violations_per_minute=3, poll_interval=0.02)
    gateway_log = _gateway_log(tmp_path)
    rig = Rig(tmp_path, settings=settings, gateway_audit=[tmp_path / "gateway-audit"])
    try:

        async def body(api: httpx.AsyncClient) -> None:
            for _ in range(3):
                gateway_log.append(_violation())
            gateway_log.append(AuditEvent(actor="alice", action="request.chat", reason="x"))
            gateway_log.append(
                AuditEvent(
                    actor="alice",
                    action="request.chat",
                    decision=Decision.DENY,
                    reason="forbidden",
                )
            )
            await asyncio.sleep(0.3)
            assert mode_of(rig) is Mode.SERVING  # three is the limit, not over it
            gateway_log.append(_violation("kinetic-control"))
            await wait_for(lambda: mode_of(rig) is Mode.KILLED)
            status = (await api.get("/status")).json()
            assert status["trigger"]["kind"] == "violation-rate"
            assert status["trigger"]["principal"] is None
            assert (
                "4 policy violations in the last minute (limit 3/min"
                in (status["trigger"]["reason"])
            )

        scenario(rig, body)
    finally:
        gateway_log.close()
    kill = rig.records("shutdown.kill")[0]
    assert kill.actor == "shutdown-controller"
    assert kill.details is not None and kill.details["violations"] == [1, 2, 3, 6]


def test_the_audit_tail_follows_rotation_and_skips_a_line_being_written(tmp_path: Path) -> None:
    tail = AuditTail(tmp_path / "gateway-audit")
    assert tail.poll() == []  # no log yet
    gateway_log = _gateway_log(tmp_path)
    try:
        gateway_log.append(_violation())
        assert [r.seq for r in tail.poll()] == [1]
        assert tail.poll() == []
        segment = sorted((tmp_path / "gateway-audit").glob("seg-*.jsonl"))[-1]
        with segment.open("ab") as handle:  # a torn line: not a record yet
            handle.write(b'{"v":1,"seq":2')
        assert tail.poll() == []
    finally:
        gateway_log.close()
    assert tail.log_id is not None
    window = ViolationWindow(1, window=60.0)
    records = list(iter_records(tmp_path / "gateway-audit"))
    assert window.add(records[0]) and is_violation(records[0])
    now = records[0].time
    assert now


def test_the_violation_window_slides_and_resets() -> None:
    window = ViolationWindow(2, window=60.0)
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def record(seq: int, seconds: float, reason: str = "prohibited_use", **details: Any) -> Any:
        stamp = (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return AuditRecord(
            seq=seq, prev="", time=stamp, enclave="demo", actor="alice", action="request.chat",
            decision=Decision.DENY, hash="", reason=reason, details=details or None,
        )  # fmt: skip

    t0 = base.timestamp()
    assert window.add(record(1, 0))
    assert window.add(record(2, 10, "purpose_not_permitted", use="kinetic-control"))
    assert not window.add(record(3, 11, "purpose_not_permitted"))  # unknown purpose: no use
    assert not window.add(record(4, 12, "forbidden"))
    assert window.exceeded(t0 + 20) is None
    assert window.add(record(5, 30))
    over = window.exceeded(t0 + 40)
    assert over is not None and [v.seq for v in over] == [1, 2, 5]
    assert window.exceeded(t0 + 61) is None  # seq 1 left the window
    window.reset(t0 + 100)
    assert not window.add(record(6, 90))  # older than the reset
    assert window.current(t0 + 100) == []


def test_a_lost_heartbeat_is_recorded_and_kills_only_when_configured(tmp_path: Path) -> None:
    for kills in (False, True):
        where = tmp_path / str(kills)
        settings = ControllerSettings(heartbeat=BEAT, lost_heartbeat_kills=kills)
        rig = Rig(where, settings=settings)

        async def body(api: httpx.AsyncClient, rig: Rig = rig, kills: bool = kills) -> None:
            await wait_for(lambda: rig.gateway.state.check() is None)
            rig.gateway.fail = True
            await wait_for(lambda: bool(rig.records("shutdown.heartbeat-lost")))
            if kills:
                await wait_for(lambda: mode_of(rig) is Mode.KILLED)
                return
            assert mode_of(rig) is Mode.SERVING
            assert (await api.get("/status")).json()["gateways"][0]["lost"] is True
            rig.gateway.fail = False
            await wait_for(lambda: bool(rig.records("shutdown.heartbeat-restored")))

        scenario(rig, body)
        lost = rig.records("shutdown.heartbeat-lost")[0]
        assert lost.details is not None
        assert lost.details["then"] == ("kill" if kills else "record")
        if kills:
            trigger = rig.controller.machine.state.trigger
            assert trigger is not None and trigger.kind is TriggerKind.LOST_HEARTBEAT


def test_drift_alerts_or_kills_as_the_spec_says(tmp_path: Path) -> None:
    for kills in (False, True):
        rig = Rig(
            tmp_path / str(kills), settings=ControllerSettings(heartbeat=BEAT, drift_kills=kills)
        )

        async def body(_api: httpx.AsyncClient, rig: Rig = rig, kills: bool = kills) -> None:
            outcome = await rig.controller.drift("CIS 5.2.1 failed: a container runs privileged")
            assert (outcome is not None) is kills
            assert mode_of(rig) is (Mode.KILLED if kills else Mode.SERVING)

        scenario(rig, body)
        drift = rig.records("shutdown.drift")[0]
        assert drift.details is not None and drift.details["on_drift"] == (
            "kill" if kills else "alert"
        )


# -- the API over its socket ----------------------------------------------------------------------


def test_the_api_answers_on_an_owner_only_socket_even_at_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "controller"
    where = deep / "api.sock"
    assert len(str(where)) > 107
    rig = Rig(tmp_path)
    sock = bind(where)
    assert where.stat().st_mode & 0o777 == 0o600
    assert deep.stat().st_mode & 0o777 == 0o700
    client = ControllerClient(where, timeout=10)

    async def main() -> None:
        stop = asyncio.Event()
        await rig.controller.start()
        ready = asyncio.Event()
        served = asyncio.create_task(
            serve(create_api(rig.controller), sock, stop, started=ready.set)
        )
        running = asyncio.create_task(rig.controller.run(stop))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            code, status = await asyncio.to_thread(client.call, "GET", "/status")
            assert (code, status["mode"]) == (200, "serving")
            code, answer = await asyncio.to_thread(
                client.call, "POST", "/kill", token=rig.tok["bob"], body={"reason": "socket"}
            )
            assert code == 200, answer
            assert answer["mode"] == "killed"
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(served, running), 15)

    try:
        asyncio.run(main())
    finally:
        sock.close()
        rig.close()
    assert rig.gateway.state.mode is GatewayMode.KILLED
    assert os.access(where, os.F_OK)


def test_the_cli_says_in_one_line_when_no_controller_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "bob.token"
    token.write_text(new_token()[0])
    token.chmod(0o600)
    state = ["--state-dir", str(tmp_path / "state")]
    for args in (
        ["kill", "demo", "--reason", "x", "--token-file", str(token)],
        ["resume", "demo", "--token-file", str(token)],
        ["controller", "status", "demo"],
    ):
        assert main([*state, *args]) == 5
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("enclave: error: no shutdown controller")
    token.chmod(0o644)
    assert main([*state, "kill", "demo", "--reason", "x", "--token-file", str(token)]) == 2
    assert "readable by others" in capsys.readouterr().err


def test_a_dead_controllers_socket_is_named_and_no_socket_is_left_open(tmp_path: Path) -> None:
    """The socket file of a controller that died: the client says so, and closes its socket
    (a long-running caller, ``enclave monitor``, must not lose a descriptor per try)."""
    path = tmp_path / "controller" / "api.sock"
    bind(path).close()  # the file stays, nothing listens
    client = ControllerClient(path, timeout=5)
    fds = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(20):
        with pytest.raises(ServiceError, match="did not answer \\(ConnectionRefusedError\\)"):
            client.call("GET", "/status")
    gc.collect()  # an unclosed socket would warn here (an error in this suite)
    assert len(list(Path("/proc/self/fd").iterdir())) == fds


def test_an_approval_the_log_cannot_record_does_not_count(rig: Rig) -> None:
    journal = rig.controller.journal
    real = journal.record

    async def failing(action: str, **kwargs: Any) -> int:
        if action == "shutdown.resume":
            raise AuditError("audit log: disk full")
        return await real(action, **kwargs)

    async def body(api: httpx.AsyncClient) -> None:
        await api.post("/kill", json={"reason": "x"}, headers=bearer(rig.tok["bob"]))
        journal.record = failing  # type: ignore[method-assign]
        answer = await api.post("/resume", headers=bearer(rig.tok["carol"]))
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "audit_unavailable"
        assert rig.controller.machine.state.approvals == []
        journal.record = real  # type: ignore[method-assign]
        again = await api.post("/resume", headers=bearer(rig.tok["carol"]))
        assert again.status_code == 202 and again.json()["approvals"] == ["carol"]

    scenario(rig, body)
