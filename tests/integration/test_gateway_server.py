"""``enclave gateway serve`` as a real process in front of ``enclave runtime serve``, over sockets.

Auth comes from a real OpenBao (the harness's): the enclave is provisioned there, an API token
is issued with ``enclave.vault.tokens.issue``, and the gateway reads the token records with the
root token from ``--vault-token-file``. The test plays the shutdown controller: it signs one
heartbeat with the key the gateway was given.
"""

from __future__ import annotations

import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.audit import verify_log
from enclave.audit.reader import iter_records
from enclave.gateway.control import SIGNATURE_HEADER, ControlCommand, ControlKind, sign_control
from enclave.spec import load_spec
from enclave.vault.names import EnclavePaths
from enclave.vault.provision import provision, teardown
from enclave.vault.tokens import issue
from support import REPO_ROOT
from support.openbao import OpenBaoServer
from support.workspace import make_workspace

pytestmark = pytest.mark.vault

START_TIMEOUT = 30.0
PROHIBITED = "Track the movements of all citizens in Springfield using their phone location data."


def enclave_argv() -> list[str]:
    script = Path(sys.executable).with_name("enclave")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from enclave.cli.main import run; run()"]


@dataclass
class Process:
    """A server process this test started; stopped by its handle."""

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


def start(argv: list[str], log: Path, ready: str) -> Process:
    """Start ``argv``; wait for its ready line (which names the URL it serves on)."""
    with log.open("w", encoding="utf-8") as err:
        process = subprocess.Popen(  # stopped by Process.stop in the fixtures
            argv, stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL
        )
    running = Process(process, "", log)
    try:
        assert process.stdout is not None
        got, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if got else ""
        match = re.fullmatch(ready + r" (http://127\.0\.0\.1:\d+)\n", line)
        assert match, f"no ready line (got {line!r}); log: {log.read_text(encoding='utf-8')}"
        running.url = match.group(1)
    except BaseException:
        running.stop()
        raise
    return running


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Process]:
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
    ]
    server = start(argv, tmp_path / "runtime.log", r"serving model assistant on")
    yield server
    server.stop()


@dataclass
class Enclave:
    name: str
    spec: Path
    state: Path
    token: str


@pytest.fixture
def enclave(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Enclave]:
    workspace = make_workspace(tmp_path / "ws")
    shutil.copy(
        REPO_ROOT / "policies" / "usage" / "screens.yaml",
        workspace.root / "policies" / "usage" / "screens.yaml",
    )
    name = f"g{secrets.token_hex(4)}"
    spec = workspace.write(
        f"""\
apiVersion: enclave.dev/v1alpha1
kind: Enclave
metadata: {{name: {name}}}
spec:
  classification: cui
  models: [{{name: assistant}}]
  vault: {{address: "{openbao.address}"}}
  rbac:
    roles:
      analyst: {{actions: [query], purposes: [translation]}}
    principals: [{{name: alice, roles: [analyst]}}]
  shutdown: {{heartbeat: 1s, lease: 30s}}
"""
    )
    loaded = load_spec(spec)
    provision(openbao_client, loaded)
    try:
        issued = issue(openbao_client, EnclavePaths(name), "alice", ["analyst"])
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        yield Enclave(name, spec, state, issued.token)
    finally:
        teardown(openbao_client, name)


def test_gateway_serves_denies_and_audits(
    tmp_path: Path, openbao: OpenBaoServer, runtime: Process, enclave: Enclave
) -> None:
    root_token = private_file(tmp_path / "root.token", openbao.root_token)
    key = secrets.token_bytes(32)
    key_file = private_file(tmp_path / "control.key", key.hex())
    argv = [
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
        "--vault-token-file",
        str(root_token),
        "--control-key-file",
        str(key_file),
    ]
    gateway = start(
        argv, tmp_path / "gateway.log", rf"gateway of enclave {enclave.name} serving on"
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False) as client:
            before = client.get("/healthz")
            assert before.status_code == 503  # no lease from the controller yet
            body, signature = sign_control(
                key, ControlCommand(ControlKind.HEARTBEAT, "controller", time.time_ns(), 30.0)
            )
            beat = client.post("/control", content=body, headers={SIGNATURE_HEADER: signature})
            assert beat.status_code == 200, beat.text
            deadline = time.monotonic() + START_TIMEOUT
            while client.get("/healthz").status_code != 200:
                assert time.monotonic() < deadline, client.get("/healthz").text
                time.sleep(0.05)
            headers = {
                "authorization": f"Bearer {enclave.token}",
                "x-enclave-purpose": "translation",
            }
            ok = client.post(
                "/v1/chat/completions",
                json={
                    "model": "assistant",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Translate: the gateway"}],
                },
                headers=headers,
            )
            assert ok.status_code == 200, ok.text
            assert ok.json()["choices"][0]["message"]["content"]
            bad = client.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": PROHIBITED}]},
                headers=headers,
            )
            assert bad.status_code == 403
            assert bad.json()["error"]["code"] == "prohibited_use"
            metrics = client.get("/metrics").text
            assert "enclave_gateway_requests_total" in metrics
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log.read_text(encoding="utf-8")
    assert enclave.token not in gateway.log.read_text(encoding="utf-8")
    audit = enclave.state / "enclaves" / enclave.name / "audit"
    report = verify_log(audit)
    assert report.intact, report.summary()
    actions = [(r.action, r.decision, r.reason) for r in iter_records(audit)]
    assert ("request.chat", "allow", "allowed") in actions
    assert ("response.chat", "allow", "allowed") in actions
    assert ("request.chat", "deny", "prohibited_use") in actions
    key_mode = (enclave.state / "enclaves" / enclave.name / "audit.key").stat().st_mode
    assert key_mode & 0o077 == 0
    assert report.unsigned == 0  # the final checkpoint was signed on shutdown
