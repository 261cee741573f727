"""The real Docker engine for tests: connect to it, and track what each test creates.

Every object a test creates carries the label ``enclave.dev/test=<run id>`` and is removed by
id when the test ends. Nothing is ever pruned or killed by name pattern.
"""

from __future__ import annotations

import gc
import json
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import docker
import docker.errors
import requests.exceptions

from support import REPO_ROOT, service_missing

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.networks import Network

TEST_LABEL = "enclave.dev/test"
ENSURE_SCRIPT = REPO_ROOT / "scripts" / "ensure-docker.sh"
NOBODY = "65534:65534"

_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def new_run_id() -> str:
    """A short unique id for one test session; it names and labels what the session makes."""
    return uuid.uuid4().hex[:12]


def _try_connect() -> tuple[DockerClient | None, str]:
    # docker-py does not close the socket of a failed unix-socket connect
    # (UnixHTTPConnection.connect); collect it here, quietly, rather than have it surface as
    # a ResourceWarning (an error under filterwarnings=error) in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = _connect_once()
        gc.collect()
    return result


def _connect_once() -> tuple[DockerClient | None, str]:
    try:
        client = docker.from_env()
    except _ENGINE_ERRORS as exc:
        return None, str(exc)
    try:
        client.ping()
    except _ENGINE_ERRORS as exc:
        client.close()
        return None, str(exc)
    return client, ""


def connect_engine() -> DockerClient:
    """A client for an engine that answers; starts dockerd (ensure-docker.sh) at most once.

    Calls :func:`support.service_missing` (skip, or fail in CI) when no engine can be had.
    """
    client, why = _try_connect()
    if client is not None:
        return client
    if not ENSURE_SCRIPT.is_file():
        service_missing(f"Docker engine unreachable ({why}) and {ENSURE_SCRIPT} is missing")
    try:
        proc = subprocess.run(
            ["bash", str(ENSURE_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired:
        service_missing("Docker engine unreachable: ensure-docker.sh did not finish in 90 s")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        service_missing(f"Docker engine unreachable: {lines[-1]}")
    client, why = _try_connect()
    if client is None:
        service_missing(f"Docker engine unreachable after ensure-docker.sh: {why}")
    return client


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How a one-shot container ended: its exit code and its combined output."""

    exit_code: int
    output: str

    def last_json(self) -> dict[str, object]:
        """The last output line that is a JSON object (probes report that way)."""
        for line in reversed(self.output.splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        raise AssertionError(f"probe printed no JSON object; output was: {self.output!r}")


class DockerResources:
    """Creates labelled containers and networks for one test and removes them by id.

    Containers run hardened by default (non-root, no capabilities, no-new-privileges,
    read-only root, pids and memory limits), like the enclave's own workloads.
    """

    def __init__(self, client: DockerClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.container_ids: list[str] = []
        self.network_ids: list[str] = []

    @property
    def labels(self) -> dict[str, str]:
        return {TEST_LABEL: self.run_id}

    def name(self, role: str) -> str:
        """A unique object name: ``enclave-test-<run id>-<role>-<random>``."""
        return f"enclave-test-{self.run_id}-{role}-{uuid.uuid4().hex[:6]}"

    def network(self, role: str, *, internal: bool = False) -> Network:
        """A new bridge network; ``internal=True`` gives it no route out of the host."""
        network = self.client.networks.create(
            self.name(role),
            driver="bridge",
            internal=internal,
            labels=self.labels,
            check_duplicate=True,
        )
        if network.id:
            self.network_ids.append(network.id)
        return network

    def container(
        self,
        image: str,
        command: list[str],
        *,
        role: str,
        network: str | None = None,
        user: str = NOBODY,
        working_dir: str = "/tmp",
        start: bool = True,
    ) -> Container:
        """Create (recorded before anything else can fail) and, by default, start."""
        container = self.client.containers.create(
            image,
            command,
            name=self.name(role),
            labels=self.labels,
            network=network,
            network_disabled=network is None,
            user=user,
            working_dir=working_dir,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            pids_limit=64,
            mem_limit="256m",
            detach=True,
        )
        if container.id:
            self.container_ids.append(container.id)
        if start:
            container.start()
        return container

    def run(
        self,
        image: str,
        command: list[str],
        *,
        role: str,
        network: str | None = None,
        timeout_s: float = 30.0,
    ) -> ProbeResult:
        """Run a one-shot container to its end (bounded) and return its exit code and output."""
        container = self.container(image, command, role=role, network=network)
        status = container.wait(timeout=timeout_s)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return ProbeResult(exit_code=int(status["StatusCode"]), output=output)

    def cleanup(self) -> list[str]:
        """Remove every recorded object by id: containers (forced) first, then networks.

        Returns one message per object that could not be removed (already gone is fine).
        """
        problems: list[str] = []
        for container_id in reversed(self.container_ids):
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except _ENGINE_ERRORS as exc:
                problems.append(f"container {container_id[:12]}: {exc}")
        for network_id in reversed(self.network_ids):
            try:
                self.client.api.remove_network(network_id)
            except docker.errors.NotFound:
                pass
            except _ENGINE_ERRORS as exc:
                problems.append(f"network {network_id[:12]}: {exc}")
        self.container_ids.clear()
        self.network_ids.clear()
        return problems


def labelled_leftovers(client: DockerClient, run_id: str) -> list[str]:
    """Containers and networks still carrying this run's label, as ``kind id`` strings."""
    selector: dict[str, str | list[str] | bool] = {"label": f"{TEST_LABEL}={run_id}"}
    found = [f"container {c.id}" for c in client.containers.list(all=True, filters=selector)]
    found += [f"network {n.id}" for n in client.networks.list(filters=selector)]
    return found


def remove_leftovers(client: DockerClient, run_id: str) -> list[str]:
    """Remove, by id, whatever still carries this run's label; returns what was found."""
    found = labelled_leftovers(client, run_id)
    tracker = DockerResources(client, run_id)
    for item in found:
        kind, object_id = item.split(" ", 1)
        (tracker.container_ids if kind == "container" else tracker.network_ids).append(object_id)
    tracker.cleanup()
    return found


def container_ip(container: Container, network: Network) -> str:
    """The container's IPv4 address on ``network``."""
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    address = str(networks[network.name]["IPAddress"])
    if not address:
        raise AssertionError(f"container {container.name} has no address on {network.name}")
    return address


def wait_for_http(container: Container, port: int, *, timeout_s: float = 20.0) -> None:
    """Wait until an HTTP server inside ``container`` answers on its own loopback."""
    script = (
        "import urllib.request\n"
        f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1).read()\n"
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        result = container.exec_run(["python3", "-c", script])
        if result.exit_code == 0:
            return
        raw = result.output if isinstance(result.output, bytes) else b""
        lines = raw.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else f"exit {result.exit_code}"
        container.reload()
        if container.status != "running":
            logs = container.logs().decode(errors="replace")
            raise AssertionError(f"{container.name} exited before serving: {logs[-500:]}")
        time.sleep(0.2)
    raise AssertionError(f"{container.name} did not serve on :{port} in {timeout_s} s: {last}")


TCP_CONNECT_PROBE = """\
import errno, json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(timeout)
try:
    sock.connect((host, port))
except socket.timeout:
    print(json.dumps({"connected": False, "reason": "timeout"}))
except OSError as exc:
    name = errno.errorcode.get(exc.errno or 0, "unknown")
    print(json.dumps({"connected": False, "reason": name, "detail": str(exc)}))
else:
    print(json.dumps({"connected": True, "reason": "connected"}))
finally:
    sock.close()
"""
"""Reports ``{"connected": bool, "reason": ...}``; exits 0 unless Python itself fails."""

HTTP_GET_PROBE = """\
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:
    print(json.dumps({"status": response.status, "length": len(response.read())}))
"""
"""Prints ``{"status": ..., "length": ...}``; a failed fetch exits non-zero."""

UNREACHABLE_REASONS = frozenset({"timeout", "ENETUNREACH", "EHOSTUNREACH"})
"""Connect failures that mean "no route", as opposed to a refusal or a probe bug."""
