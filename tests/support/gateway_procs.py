"""Real ``enclave runtime serve`` and ``enclave gateway serve`` processes on loopback.

Each server is started with ``--port 0`` and announces its URL on one stdout line; the
:class:`Process` handle stops it (SIGTERM, then SIGKILL after a grace period). The enclave's
API tokens come from a real OpenBao (the harness's): :func:`provisioned_enclave` provisions
the enclave there, issues one token and tears the enclave down afterwards. :class:`Controller`
plays the shutdown controller: it signs heartbeats and kills with the gateway's control key,
and can keep a lease alive from a background thread that it stops and joins.
:func:`running_controller` starts the real one (``enclave controller run``) instead, and
:func:`bootstrapped_gateway` a gateway that logs in with its own identity, its bootstrap
material written to its stdin.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind, sign_control
from enclave.spec import load_spec
from enclave.vault.names import EnclavePaths
from enclave.vault.provision import BootstrapMaterial, provision, teardown
from enclave.vault.tokens import issue
from support import REPO_ROOT
from support.workspace import make_workspace

if TYPE_CHECKING:
    from collections.abc import Iterator

START_TIMEOUT = 30.0


def enclave_argv() -> list[str]:
    script = Path(sys.executable).with_name("enclave")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from enclave.cli.main import run; run()"]


@dataclass
class Process:
    """A server process a test started; stopped by its handle."""

    process: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8")


def start(argv: list[str], log: Path, ready: str, *, stdin: bytes | None = None) -> Process:
    """Start ``argv``; wait for its ready line (which names the URL it serves on).

    ``stdin``, if given, is written to the process's stdin, which is then closed.
    """
    return launch(argv, log, ready + r" (?P<url>http://127\.0\.0\.1:\d+)", stdin=stdin)


def launch(argv: list[str], log: Path, ready: str, *, stdin: bytes | None = None) -> Process:
    """Start ``argv``; wait for its first stdout line to match ``ready`` (group ``url``, if
    the pattern has one, is the URL it serves on)."""
    with log.open("w", encoding="utf-8") as err:
        process = subprocess.Popen(  # stopped by Process.stop
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        )
    running = Process(process, "", log)
    try:
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin.decode())
            process.stdin.close()
        assert process.stdout is not None
        got, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if got else ""
        match = re.fullmatch(ready + r"\n", line)
        assert match, f"no ready line (got {line!r}); log: {log.read_text(encoding='utf-8')}"
        running.url = match.groupdict().get("url") or ""
    except BaseException:
        running.stop()
        raise
    return running


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def running_runtime(tmp_path: Path, *, token_delay: float = 0.0) -> Iterator[Process]:
    """The reference runtime (freshly trained weights), each token taking ``token_delay`` s."""
    weights = tmp_path / "weights.json"
    trained = subprocess.run(
        [*enclave_argv(), "runtime", "train", "--output", str(weights)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    argv = [
        *enclave_argv(),
        "runtime",
        "serve",
        "--weights",
        str(weights),
        "--sha256",
        trained.stdout.strip(),
        "--port",
        "0",
        "--token-delay",
        str(token_delay),
    ]
    server = start(argv, tmp_path / "runtime.log", r"serving model assistant on")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Enclave:
    name: str
    spec: Path
    state: Path
    token: str
    """alice's API token (role analyst: query for translation)."""


ENCLAVE_SPEC = """\
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
    principals: [{{name: alice, roles: [analyst]}}]
  shutdown: {{heartbeat: {heartbeat}, lease: {lease}}}
"""


@contextlib.contextmanager
def provisioned_enclave(
    tmp_path: Path,
    vault_address: str,
    vault_client: Any,
    *,
    heartbeat: str = "1s",
    lease: str = "30s",
    template: str = ENCLAVE_SPEC,
) -> Iterator[Enclave]:
    """An enclave provisioned in the harness's OpenBao, with one token for alice.

    ``template`` is the spec (a ``str.format`` template with ``name``, ``vault``,
    ``heartbeat`` and ``lease``); it must give alice the analyst role.
    """
    workspace = make_workspace(tmp_path / "ws")
    shutil.copy(
        REPO_ROOT / "policies" / "usage" / "screens.yaml",
        workspace.root / "policies" / "usage" / "screens.yaml",
    )
    name = f"g{secrets.token_hex(4)}"
    spec = workspace.write(
        template.format(name=name, vault=vault_address, heartbeat=heartbeat, lease=lease)
    )
    loaded = load_spec(spec)
    provision(vault_client, loaded)
    try:
        issued = issue(vault_client, EnclavePaths(name), "alice", ["analyst"])
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        yield Enclave(name, spec, state, issued.token)
    finally:
        teardown(vault_client, name)


@contextlib.contextmanager
def running_gateway(
    tmp_path: Path,
    enclave: Enclave,
    runtime: Process,
    root_token: str,
    control_key: bytes,
    *,
    options: tuple[str, ...] = (),
) -> Iterator[Process]:
    """``enclave gateway serve`` in front of ``runtime``, taking commands signed with the key
    (``options``: more of its command-line options)."""
    token_file = private_file(tmp_path / "root.token", root_token)
    key_file = private_file(tmp_path / "control.key", control_key.hex())
    argv = [
        *gateway_argv(enclave, runtime),
        "--vault-token-file",
        str(token_file),
        "--control-key-file",
        str(key_file),
        *options,
    ]
    gateway = start(
        argv, tmp_path / "gateway.log", rf"gateway of enclave {enclave.name} serving on"
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def audit_dir(enclave: Enclave) -> Path:
    return enclave.state / "enclaves" / enclave.name / "audit"


@dataclass
class Controller:
    """The shutdown controller's side of ``POST /control``."""

    url: str
    key: bytes = field(repr=False)
    identity: str = "controller"
    last_heartbeat: float = 0.0
    """``time.monotonic()`` when the last accepted heartbeat was signed."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)
    """Heartbeats the thread could not deliver (checked by the test)."""

    def send(
        self,
        client: httpx.Client,
        kind: ControlKind,
        *,
        lease: float | None = None,
        reason: str = "",
    ) -> httpx.Response:
        signed = time.monotonic()
        command = ControlCommand(kind, self.identity, time.time_ns(), lease, reason)
        body, signature = sign_control(self.key, command)
        response = client.post("/control", content=body, headers={SIGNATURE_HEADER: signature})
        if kind is ControlKind.HEARTBEAT and response.status_code == 200:
            self.last_heartbeat = signed
        return response

    def heartbeat(self, client: httpx.Client, lease: float) -> None:
        response = self.send(client, ControlKind.HEARTBEAT, lease=lease)
        assert response.status_code == 200, response.text

    def kill(self, client: httpx.Client, reason: str) -> httpx.Response:
        return self.send(client, ControlKind.KILL, reason=reason)

    def keep_alive(self, every: float, lease: float) -> None:
        """Heartbeat every ``every`` seconds from a thread until :meth:`stop_heartbeats`."""
        assert self._thread is None

        def beat() -> None:
            with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
                while not self._stop.is_set():
                    try:
                        response = self.send(client, ControlKind.HEARTBEAT, lease=lease)
                    except httpx.HTTPError as exc:
                        self.errors.append(repr(exc))
                    else:
                        if response.status_code != 200:
                            self.errors.append(response.text)
                    self._stop.wait(every)

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="test-controller", daemon=True)
        self._thread.start()

    def stop_heartbeats(self) -> float:
        """Stop the heartbeat thread (joined); ``time.monotonic()`` of the last heartbeat."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            assert not self._thread.is_alive()
            self._thread = None
        return self.last_heartbeat


def material_json(material: BootstrapMaterial) -> bytes:
    return json.dumps(material.as_dict()).encode()


def gateway_argv(enclave: Enclave, runtime: Process) -> list[str]:
    """``enclave gateway serve`` of ``enclave`` in front of ``runtime``, before its credentials."""
    return [
        *enclave_argv(),
        "--log-level",
        "info",
        "--state-dir",
        str(enclave.state),
        "gateway",
        "serve",
        "--spec",
        str(enclave.spec),
        "--port",
        "0",
        "--upstream",
        f"assistant={runtime.url}",
    ]


@contextlib.contextmanager
def bootstrapped_gateway(
    tmp_path: Path, enclave: Enclave, runtime: Process, material: BootstrapMaterial
) -> Iterator[Process]:
    """``enclave gateway serve --bootstrap -``: the material on stdin, the key from Vault."""
    argv = [
        *gateway_argv(enclave, runtime),
        "--bootstrap",
        "-",
    ]
    gateway = start(
        argv,
        tmp_path / "gateway.log",
        rf"gateway of enclave {enclave.name} serving on",
        stdin=material_json(material),
    )
    try:
        yield gateway
    finally:
        gateway.stop()


@contextlib.contextmanager
def running_controller(
    tmp_path: Path,
    enclave: Enclave,
    gateways: list[str],
    material: BootstrapMaterial,
    *,
    vault_address: str | None = None,
    extra: tuple[str, ...] = (),
    ready: str | None = None,
    log_name: str = "controller.log",
) -> Iterator[Process]:
    """``enclave controller run --bootstrap -`` heartbeating ``gateways``; stopped after.

    ``extra`` is appended to its arguments; ``ready`` replaces the pattern of the line it
    prints once running (a controller that starts killed says so instead of heartbeating).
    """
    argv = [
        *enclave_argv(),
        "--log-level",
        "info",
        "--state-dir",
        str(enclave.state),
        "controller",
        "run",
        "--spec",
        str(enclave.spec),
        "--bootstrap",
        "-",
    ]
    for url in gateways:
        argv += ["--gateway", url]
    if vault_address is not None:
        argv += ["--vault-address", vault_address]
    argv += extra
    controller = launch(
        argv,
        tmp_path / log_name,
        ready
        or (
            rf"controller of enclave {enclave.name} heartbeating {len(gateways)} gateway\(s\) "
            r"every \S+"
        ),
        stdin=material_json(material),
    )
    try:
        yield controller
    finally:
        controller.stop()
