"""The kill switch when its own parts fail during a drill, on the real Docker engine.

One enclave (``enclave up``, the example spec with the rate limit raised) serves the module; a
*witness* thread sends a chat through its gateway every few milliseconds for the whole of each
test and remembers every answer. Each test starts a drill's kill (``POST /drill {"phase":
"kill"}``, as ``enclave drill`` does) and breaks something while the drill is under way:

- the controller is SIGKILLed a moment after the drill's kill reached it;
- the model container the drill's resume has just started is SIGKILLed before it is healthy;
- ``dockerd`` is stopped while the drill's kill runs, and restarted (the controller cannot
  reach the engine at all, and stops the models once it is back); then, with a drill's kill
  complete, restarted once more.

Each time: no request sent while the enclave is killed is served (``503 enclave_shutdown``,
``503 auth_unavailable`` from a gateway whose Vault token the kill revoked, or no answer while a
port is down; never 200); the enclave stays killed across the fault, and serves again only once
the resume quorum (two officers other than the one who killed it) or the drill's own finish has
resumed it; the controller's and the gateway's audit logs verify intact, without gaps.

The tests share the enclave (one ``enclave up`` for the module), and each one leaves it serving.
The last one restarts the Docker daemon, which disturbs every user of this engine: it runs last,
only against a daemon ``scripts/ensure-docker.sh`` started with ``--live-restore``, and always
starts the daemon again before it ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from enclave import controlproc
from enclave.audit import verify_log
from enclave.audit.reader import iter_records
from enclave.errors import ServiceError
from enclave.lifecycle import audit_dir
from enclave.shutdown.api import ControllerClient, controller_dir, socket_path
from support import STATE_DIR, service_missing
from support.docker_engine import ENSURE_SCRIPT, connect_engine
from support.enclave_up import (
    UP_TIMEOUT,
    containers,
    free_port,
    issue,
    remove_everything,
    run_enclave,
    state_dir,
    wait_token_known,
    write_spec,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from docker import DockerClient
    from docker.models.containers import Container

pytestmark = [pytest.mark.docker, pytest.mark.vault, pytest.mark.slow]

TEST_TIMEOUT = 600
LEASE = 3.0
"""The example spec's lease (seconds): a gateway no controller heartbeats denies within it."""
DOCKERD_PID_FILE = STATE_DIR / "dockerd.pid"
DOCKERD_LOG = STATE_DIR / "dockerd.log"
"""Where scripts/ensure-docker.sh records the daemon it starts, and where that daemon logs."""
Json = dict[str, Any]
REFUSED = {(503, "enclave_shutdown"), (503, "auth_unavailable"), (0, None)}
"""What a request may get while the enclave is killed: refused as killed; refused because the
gateway cannot check tokens (the kill revoked its Vault token, and authentication comes first);
or no answer at all (the port is down)."""


@dataclass(frozen=True)
class Seen:
    """One chat the witness sent: when (monotonic), and the answer's status and error code
    (status 0: no answer, the connection failed)."""

    sent: float
    status: int
    code: str | None


class Witness:
    """A chat through the gateway every few milliseconds, from a thread, until stopped."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {token}", "x-enclave-purpose": "translation"}
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="witness", daemon=True)

    def __enter__(self) -> Witness:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        body = {
            "model": "assistant",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "Translate: hello"}],
        }
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    answer = client.post("/v1/chat/completions", json=body, headers=self.headers)
                except httpx.HTTPError:
                    self.seen.append(Seen(sent, 0, None))
                    time.sleep(0.05)
                    continue
                self.seen.append(Seen(sent, answer.status_code, _code(answer)))
                time.sleep(0.01)

    def between(self, start: float, end: float) -> list[Seen]:
        """What was sent from ``start`` to ``end``."""
        return [s for s in list(self.seen) if start <= s.sent <= end]

    def nothing_served(self, start: float, end: float) -> int:
        """Assert no chat sent from ``start`` to ``end`` was served; returns how many were sent."""
        window = self.between(start, end)
        wrong = [s for s in window if (s.status, s.code) not in REFUSED]
        assert not wrong, f"answered while killed: {wrong[:5]} ({len(wrong)} of {len(window)})"
        return len(window)


def _code(answer: httpx.Response) -> str | None:
    try:
        error = answer.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


@dataclass
class Site:
    name: str
    state: Path
    spec: Path
    url: str
    tokens: dict[str, str] = field(default_factory=dict)
    client: DockerClient | None = None

    @property
    def model(self) -> str:
        return f"enclave-{self.name}-model-assistant"

    @property
    def gateway(self) -> str:
        return f"enclave-{self.name}-gateway"

    @property
    def internal(self) -> str:
        return f"enclave-{self.name}-internal"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_enclave(self.state, *args, timeout=timeout)

    def api(
        self, method: str, route: str, who: str | None = None, body: Any = None
    ) -> tuple[int, Json]:
        client = ControllerClient(socket_path(self.state, self.name), timeout=300)
        return client.call(method, route, token=self.tokens[who] if who else None, body=body)

    def status(self) -> Json:
        code, body = self.api("GET", "/status")
        assert code == 200, body
        return body

    def mode(self) -> str | None:
        """The controller's mode; None while its API does not answer (it is starting)."""
        try:
            return str(self.status()["mode"])
        except ServiceError:
            return None

    def witness(self) -> Witness:
        return Witness(self.url, self.tokens["alice"])

    def health(self) -> int:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5, trust_env=False).status_code
        except httpx.HTTPError:
            return 0

    def chat(self) -> int:
        try:
            return httpx.post(
                f"{self.url}/v1/chat/completions",
                json={"model": "assistant", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "Translate: hi"}]},
                headers={"authorization": f"Bearer {self.tokens['alice']}",
                         "x-enclave-purpose": "translation"},
                timeout=30,
                trust_env=False,
            ).status_code  # fmt: skip
        except httpx.HTTPError:
            return 0

    def container(self, name: str) -> Container:
        assert self.client is not None
        return containers(self.client, self.name)[name]

    def quorum_resume(self) -> Json:
        """Carol's approval (still killed), then dan's (resumed): the two-person resume."""
        code, first = self.api("POST", "/resume", "carol")
        assert code == 202, first
        assert self.health() in (0, 503) and self.status()["mode"] == "killed"
        code, second = self.api("POST", "/resume", "dan")
        assert code == 200 and second["resumed"] is True, second
        self.serving()
        return second

    def serving(self) -> None:
        """Until alice is served again (the new gateway loads its tokens first)."""
        wait_token_known(self.url, self.tokens["alice"])
        wait_for("the enclave serves alice", lambda: self.chat() == 200, 30)

    def audit_intact(self) -> None:
        for root in (
            controller_dir(self.state, self.name) / "audit",
            audit_dir(self.state, self.name),
        ):
            report = verify_log(root)
            assert report.intact, f"{root}: {report.summary()}"

    def records(self, action: str) -> list[Any]:
        root = controller_dir(self.state, self.name) / "audit"
        return [r for r in iter_records(root) if r.action == action]


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[Site]:
    del base_image  # built (or found) once; `up` reuses it through the shared cache
    if os.geteuid() != 0:
        service_missing("enclave up needs root (host firewall rules, network namespaces)")
    root = tmp_path_factory.mktemp("ksf")
    name = f"kf{secrets.token_hex(3)}"
    state = state_dir(root)
    spec = write_spec(root, name, free_port())
    text = spec.read_text()
    assert "rateLimit: {requestsPerMinute: 60}" in text, "the example spec's rate limit changed"
    # the witness asks every few ms: a minute's worth of the example's 60 would not last
    spec.write_text(text.replace("requestsPerMinute: 60}", "requestsPerMinute: 100000}"))
    found = Site(name, state, spec, "")
    try:
        done = run_enclave(state, "up", str(spec), "--json", timeout=UP_TIMEOUT)
        assert done.returncode == 0, f"enclave up exited {done.returncode}: {done.stderr[-3000:]}"
        found.url = json.loads(done.stdout)["url"]
        found.tokens = {who: issue(state, spec, who) for who in ("alice", "bob", "carol", "dan")}
        wait_token_known(found.url, found.tokens["alice"])
        yield found
    finally:
        # the dockerd test replaces the engine under the session's client: a fresh one
        client = connect_engine()
        try:
            down = run_enclave(state, "down", name, "--json", timeout=300)
            problems = remove_everything(client, state, name)
        finally:
            client.close()
        assert down.returncode == 0, down.stderr
        assert not problems, problems


@pytest.fixture
def serving_site(site: Site) -> Iterator[Site]:
    """The module's enclave, serving (a test that failed half-way may have left it killed),
    with an engine client of this test's own."""
    site.client = connect_engine()
    try:
        if site.status()["mode"] == "killed":
            site.quorum_resume()
        assert site.chat() == 200
        yield site
    finally:
        site.client.close()
        site.client = None


# -- the controller ------------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_the_controller_sigkilled_during_a_drills_kill(serving_site: Site) -> None:
    """It dies a moment into the drill's kill; ``up`` starts it again, and it comes back killed
    (having finished or redone the kill); only the quorum resumes the enclave."""
    site = serving_site
    pid = controlproc.running(site.state, site.name)
    assert pid is not None
    answered: list[tuple[int, Json] | ServiceError] = []

    def drill_kill() -> None:
        try:
            answered.append(site.api("POST", "/drill", "bob", {"phase": "kill"}))
        except ServiceError as exc:  # the controller died before it answered
            answered.append(exc)

    with site.witness() as witness:
        time.sleep(0.5)
        begun = time.monotonic()
        caller = threading.Thread(target=drill_kill)
        caller.start()
        time.sleep(0.05)  # the KILL is out to the gateway; the containers are being stopped
        os.kill(pid, signal.SIGKILL)
        caller.join(60)
        wait_for(
            "the controller gone", lambda: controlproc.running(site.state, site.name) is None, 10
        )
        # whether or not the KILL got out, nobody heartbeats the gateway: it denies within a lease
        wait_for("the gateway denying", lambda: site.health() == 503, LEASE + 2)
        denying = time.monotonic()
        up = site.run("up", str(site.spec))
        assert up.returncode == 3 and "enclave resume" in up.stderr, up.stderr
        assert controlproc.running(site.state, site.name) not in (None, pid)
        wait_for("the kill finished", lambda: site.mode() == "killed", 30)
        status = site.status()
        assert status["trigger"]["kind"] == "drill" and status["trigger"]["principal"] == "bob"
        wait_for("the model stopped", lambda: site.container(site.model).status == "exited", 30)
        time.sleep(LEASE)  # well past a lease: the restarted controller does not heartbeat
        assert site.health() == 503
        resumed_at = time.monotonic()
        site.quorum_resume()
    sent = witness.nothing_served(denying, resumed_at)
    assert sent > 20, f"the witness sent only {sent} chats while the enclave was killed"
    print(
        f"\ncontroller SIGKILLed 50 ms into the drill's kill ({answered}); the gateway denying "
        f"{(denying - begun) * 1000:.0f} ms after the kill was sent"
    )
    site.audit_intact()
    assert len(site.records("shutdown.start")) >= 2  # it wrote its restart down


# -- a model container ---------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_model_container_sigkilled_during_a_drills_resume(serving_site: Site) -> None:
    """The drill's finish restarts the workload; its new model container is SIGKILLed before it
    is healthy: the resume fails, the enclave stays killed (the gateway told KILL again), and
    serves only after the quorum's resume."""
    site = serving_site
    assert site.client is not None
    old = site.container(site.model).id
    killed_ids: list[str] = []
    stop = threading.Event()

    def kill_the_new_model() -> None:
        assert site.client is not None
        while not stop.is_set():
            with contextlib.suppress(Exception):  # replaced under us: look again
                found = site.client.containers.get(site.model)
                if found.id != old and found.status == "running":
                    found.kill()  # SIGKILL
                    killed_ids.append(found.id or "")
                    return
            time.sleep(0.02)

    with site.witness() as witness:
        time.sleep(0.5)
        code, kill = site.api("POST", "/drill", "bob", {"phase": "kill"})
        assert code == 200 and all(s["ok"] for s in kill["steps"]), kill
        killed_at = time.monotonic()
        assert site.health() == 503
        assassin = threading.Thread(target=kill_the_new_model)
        assassin.start()
        try:
            code, result = site.api("POST", "/drill", "bob", {"phase": "finish", "client_ms": {}})
        finally:
            stop.set()
            assassin.join(30)
        assert killed_ids, "the resume never started a new model container"
        assert code == 200, result
        assert result["resumed"] is False and result["passed"] is False, result
        status = site.status()
        assert status["mode"] == "killed" and status["trigger"]["kind"] == "drill"
        assert site.health() == 503
        time.sleep(LEASE)  # nothing heartbeats the gateway after the failed resume
        assert site.health() == 503
        # the quorum resumes it (a second finish by the drill's principal could too: it is
        # still the drill's own kill, the one kind a drill may resume without the quorum)
        resumed_at = time.monotonic()
        site.quorum_resume()
    sent = witness.nothing_served(killed_at, resumed_at)
    assert sent > 20, f"the witness sent only {sent} chats while the enclave was killed"
    failed = site.records("shutdown.resume-failed")
    assert failed, "the failed resume was not recorded"
    print(f"\nthe drill's resume failed: {failed[-1].reason}")
    (drill,) = [r for r in site.records("drill.result") if r.details and not r.details["resumed"]]
    assert drill.details is not None and drill.details["passed"] is False
    assert site.container(site.model).id not in (old, killed_ids[0])
    site.audit_intact()


# -- dockerd, LAST: it disturbs every user of this engine --------------------------------------


def _ours(pid: int) -> bool:
    """Whether ``pid`` is a dockerd that scripts/ensure-docker.sh started (it logs there)."""
    proc = Path(f"/proc/{pid}")
    try:
        exe = (proc / "exe").readlink()
        stdout = (proc / "fd" / "1").readlink()
    except OSError:
        return False
    return exe.name == "dockerd" and stdout == DOCKERD_LOG.resolve()


def _script_dockerd(client: DockerClient) -> int:
    """The pid of the dockerd ensure-docker.sh started, with --live-restore; else skip."""
    try:
        pid = int(DOCKERD_PID_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pytest.skip(f"no {DOCKERD_PID_FILE}: this dockerd was not started by ensure-docker.sh")
    if not _ours(pid):  # even in CI: a daemon this project did not start is never stopped
        pytest.skip(f"{DOCKERD_PID_FILE} names pid {pid}, not the dockerd the script started")
    if client.info().get("LiveRestoreEnabled") is not True:
        service_missing(
            f"dockerd (pid {pid}) runs without --live-restore: stopping it would stop every "
            "container; stop it and run scripts/ensure-docker.sh"
        )
    return pid


def _stop_dockerd(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), f"dockerd (pid {pid}) did not exit in 60 s"


def _start_dockerd() -> None:
    started = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert started.returncode == 0, started.stderr


@contextlib.contextmanager
def dockerd_down(client: DockerClient) -> Iterator[None]:
    """``dockerd`` stopped (SIGTERM, waited for) inside the block; started again after it,
    whatever happened inside. Skips unless ensure-docker.sh started it, with live-restore."""
    pid = _script_dockerd(client)
    try:
        _stop_dockerd(pid)
        yield
    finally:
        _start_dockerd()


@pytest.mark.timeout(TEST_TIMEOUT)
def test_z_dockerd_restarted_during_drills(serving_site: Site) -> None:
    """``dockerd`` is down while a drill's kill runs (the engine steps fail; the gateway and
    Vault steps do not need it), then started again: still killed, the controller does the
    failed steps now, and only the quorum resumes. Then a drill's kill completes and
    ``dockerd`` is restarted under the killed enclave: the killed model container stays down,
    the gateway keeps denying, and the drill's own finish resumes it through the new
    daemon."""
    site = serving_site
    assert site.client is not None
    _script_dockerd(site.client)  # or skip, before anything is done
    with site.witness() as witness:
        time.sleep(0.5)
        with dockerd_down(site.client):
            code, kill = site.api("POST", "/drill", "bob", {"phase": "kill"})
            killed_at = time.monotonic()
            assert code == 200, kill
            steps = {s["step"]: s for s in kill["steps"]}
            assert steps["vault tokens revoked"]["ok"], steps
            assert not steps["model containers stopped"]["ok"], steps  # no engine to ask
            wait_for("the gateway denying", lambda: site.health() in (0, 503), LEASE + 2)
            assert site.status()["mode"] == "killed"
        site.client.close()
        site.client = connect_engine()  # the old one talked to the stopped daemon
        back_at = time.monotonic()
        wait_for("the gateway answering", lambda: site.health() != 0, 60)
        assert site.health() == 503 and site.status()["mode"] == "killed"
        # with the engine back, the controller does the kill's steps that failed
        wait_for("the kill's undone steps done", lambda: site.status()["undone"] == [], 30)
        model = site.container(site.model)
        assert model.status == "exited" and not model.attrs["NetworkSettings"]["Networks"]
        assert (
            site.internal not in site.container(site.gateway).attrs["NetworkSettings"]["Networks"]
        )
        assert site.health() == 503 and site.chat() == 503  # no heartbeat came back with it
        resumed_at = time.monotonic()
        site.quorum_resume()
        first = (killed_at, back_at, resumed_at)

        code, kill = site.api("POST", "/drill", "bob", {"phase": "kill"})
        assert code == 200 and all(s["ok"] for s in kill["steps"]), kill
        killed_again = time.monotonic()
        model = site.container(site.model)
        assert model.status == "exited"
        with dockerd_down(site.client):
            time.sleep(LEASE)  # killed, with no engine: still nothing served
            assert site.health() in (0, 503)
        site.client.close()
        site.client = connect_engine()
        wait_for("the gateway answering", lambda: site.health() != 0, 60)
        model = site.container(site.model)
        assert model.status == "exited", "the daemon's restart brought the killed model back"
        assert (model.attrs["NetworkSettings"]["Networks"] or {}) == {}
        assert site.health() == 503 and site.status()["mode"] == "killed"
        finished_at = time.monotonic()
        code, result = site.api("POST", "/drill", "bob", {"phase": "finish", "client_ms": {}})
        assert code == 200 and result["resumed"] is True, result
        site.serving()
    sent = witness.nothing_served(first[0], first[2])
    sent += witness.nothing_served(killed_again, finished_at)
    assert sent > 20, f"the witness sent only {sent} chats while the enclave was killed"
    print(
        f"\ndockerd down during the drill's kill: {[(s['step'], s['ok']) for s in steps.values()]}"
    )
    site.audit_intact()
