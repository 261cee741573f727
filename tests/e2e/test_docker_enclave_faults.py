"""``enclave up`` when something is wrong, on the real Docker engine: a clear error, nothing left.

Each failure is provoked for real -- a weights file whose digest is not the spec's, the
gateway's port held by a socket this module binds, the embedded Vault sealed, an image the
engine does not have -- and ``enclave up`` must then exit with one line on stderr (no trace)
and the documented code, and leave no trace of the enclave on the host: no container or network
labelled ``enclave.dev/name=<name>``, no firewall rule with that comment, no shutdown
controller, no Vault object (:func:`support.enclave_up.leftovers`). What a test's own run
created and the code under test did not remove is removed by id and name when the test ends
(:func:`support.enclave_up.remove_everything`), and the test fails.

Two changes that are not failures: a re-``up`` after the spec changed replaces the model server
and keeps serving; and ``dockerd`` restarted under a running enclave (``--live-restore``) leaves
it running and isolated. The last test restarts the daemon, which disturbs every user of this
engine: it runs last, and only against a daemon ``scripts/ensure-docker.sh`` started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from enclave import controlproc
from enclave.lifecycle import enclave_dir
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.revoke import seal
from support import STATE_DIR, service_missing
from support.docker_engine import ENSURE_SCRIPT, connect_engine
from support.egress import (
    container_pid,
    host_listener,
    interface_address,
    missing_network_tools,
    probe,
)
from support.enclave_up import (
    UP_TIMEOUT,
    containers,
    error_line,
    free_port,
    issue,
    leftovers,
    remove_everything,
    run_enclave,
    state_dir,
    wait_token_known,
    write_spec,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.vault, pytest.mark.slow]

TEST_TIMEOUT = UP_TIMEOUT + 300
WRONG_DIGEST = "0" * 64
ABSENT_IMAGE = "enclave-test/absent:1"
DOCKERD_PID_FILE = STATE_DIR / "dockerd.pid"
DOCKERD_LOG = STATE_DIR / "dockerd.log"
"""Where scripts/ensure-docker.sh records the daemon it starts, and where that daemon logs."""


def _model(
    *,
    runtime: str = "reference",
    image: str = "",
    weights: Path | None = None,
    sha256: str = "",
    memory: str = "1Gi",
) -> str:
    """One ``spec.models[]`` entry named ``assistant`` (indented as the example spec's)."""
    lines = ["    - name: assistant", f"      runtime: {runtime}"]
    if image:
        lines.append(f"      image: {image}")
    if weights is not None:
        lines.append(f'      weights: {{path: "{weights}", sha256: "{sha256}"}}')
    lines.append(f"      resources: {{cpus: 1, memory: {memory}, pids: 256}}")
    return "\n".join(lines) + "\n"


@dataclass
class Site:
    """One enclave name, its own state directory (own embedded Vault) and listen port."""

    name: str
    root: Path
    state: Path
    port: int
    client: DockerClient

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_enclave(self.state, *args, timeout=timeout)

    def spec(self, models: str = "") -> Path:
        return write_spec(self.root, self.name, self.port, models=models)

    def up(self, spec: Path) -> subprocess.CompletedProcess[str]:
        return self.run("up", str(spec), "--json", timeout=UP_TIMEOUT)

    def start_vault(self) -> EmbeddedVault:
        started = self.run("vault", "start", timeout=120)
        assert started.returncode == 0, started.stderr
        return EmbeddedVault(self.state)

    def weights(self) -> tuple[Path, str]:
        """The reference model's weights, written by ``enclave runtime train``; and sha256."""
        path = self.root / "weights" / "assistant.json"
        path.parent.mkdir(mode=0o755, exist_ok=True)
        done = self.run("runtime", "train", "--output", str(path))
        assert done.returncode == 0, done.stderr
        return path, done.stdout.strip().splitlines()[-1]

    def leftovers(self) -> list[str]:
        return leftovers(self.client, self.state, self.name)

    def down(self) -> None:
        done = self.run("down", self.name, "--json")
        assert done.returncode == 0, done.stderr
        assert self.leftovers() == []


@pytest.fixture
def site(tmp_path: Path, docker_client: DockerClient, base_image: str) -> Iterator[Site]:
    """An enclave to bring up; whatever of it is left when the test ends is removed by id."""
    del base_image  # built (or found) once; `up` reuses it through the shared cache
    if os.geteuid() != 0:
        service_missing("enclave up needs root (host firewall rules, network namespaces)")
    name = f"ef{secrets.token_hex(3)}"
    found = Site(name, tmp_path, state_dir(tmp_path), free_port(), docker_client)
    try:
        yield found
    finally:
        problems = remove_everything(found.client, found.state, name)
        if found.client is not docker_client:
            found.client.close()
        if problems:
            pytest.fail(f"could not remove what enclave {name} left: {problems}")


def _failed_up(site: Site, spec: Path, code: int) -> str:
    """``enclave up`` must exit ``code`` with one line on stderr; returns that line."""
    done = site.up(spec)
    assert done.returncode == code, (
        f"enclave up exited {done.returncode}, not {code}: {done.stderr[-3000:]}"
    )
    assert done.stdout == "", done.stdout
    return error_line(done.stderr)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_bad_weights_digest_exits_6_before_anything_exists(site: Site) -> None:
    weights, digest = site.weights()
    assert digest != WRONG_DIGEST
    spec = site.spec(_model(weights=weights, sha256=WRONG_DIGEST))
    line = _failed_up(site, spec, 6)
    assert "spec.models[0].weights.sha256" in line and digest in line, line
    assert WRONG_DIGEST in line, line
    # checked first: the Vault was not even started, no host directory was prepared
    assert not EmbeddedVault(site.state).state_file.exists()
    assert not enclave_dir(site.state, site.name).exists()
    assert site.leftovers() == []


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_taken_gateway_port_exits_5_and_rolls_everything_back(site: Site) -> None:
    spec = site.spec()
    vault = site.start_vault()
    assert site.name not in vault.inventory()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", site.port))
        holder.listen(1)
        line = _failed_up(site, spec, 5)
    assert f"enclave-{site.name}-gateway" in line, line
    assert str(site.port) in line, line
    # the model server ran, networks and firewall rules existed, the enclave was provisioned
    # in Vault: all of it is gone again
    assert site.leftovers() == []


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_missing_image_is_named_and_nothing_is_left(site: Site) -> None:
    weights, digest = site.weights()
    spec = site.spec(_model(runtime="vllm", image=ABSENT_IMAGE, weights=weights, sha256=digest))
    site.start_vault()
    with pytest.raises(Exception, match="absent"):  # the engine must not have it
        site.client.images.get(ABSENT_IMAGE)
    started = time.time()
    done = site.up(spec)
    assert done.returncode == 4, done.stderr[-3000:]  # NotFoundError: the image named
    line = error_line(done.stderr)
    assert ABSENT_IMAGE in line, line
    assert "pull" not in line.lower() and "registry" not in line.lower(), line
    pulls = site.client.api.events(
        since=int(started) - 1,
        until=int(time.time()) + 1,
        filters={"type": "image", "event": "pull"},
        decode=True,
    )
    assert list(pulls) == []
    assert site.leftovers() == []


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_sealed_embedded_vault_is_unsealed_by_up(site: Site) -> None:
    """The embedded Vault keeps its unseal keys on this host and ``up`` unseals it (by design)."""
    spec = site.spec()
    vault = site.start_vault()
    admin = vault.admin_client()
    try:
        seal(admin)
    finally:
        admin.adapter.close()
    status = json.loads(site.run("vault", "status", "--json").stdout)
    assert status["running"] is True and status["sealed"] is True
    done = site.up(spec)
    assert done.returncode == 0, done.stderr[-3000:]
    url = json.loads(done.stdout)["url"]
    assert httpx.get(f"{url}/healthz", timeout=10, trust_env=False).status_code == 200
    assert vault.status().sealed is False
    site.down()


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_sealed_vault_without_its_keys_exits_5_before_anything_exists(site: Site) -> None:
    """Sealed, with the unseal keys held elsewhere (moved aside here): nothing is created."""
    spec = site.spec()
    vault = site.start_vault()
    admin = vault.admin_client()
    try:
        seal(admin)
    finally:
        admin.adapter.close()
    aside = site.root / "init.json.aside"
    shutil.move(vault.init_file, aside)
    try:
        line = _failed_up(site, spec, 5)
    finally:
        shutil.move(aside, vault.init_file)
    assert "sealed" in line and str(vault.init_file) in line, line
    assert not enclave_dir(site.state, site.name).exists()
    assert vault.status().sealed is True
    vault.start()  # unsealed again with the keys back: only now can its objects be listed
    assert site.leftovers() == []


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_gateway_that_never_serves_rolls_back_its_containers_too(site: Site) -> None:
    """A failure after the containers run (here: no controller, so no lease) undoes them too.

    A process that looks like the enclave's controller holds ``controller.pid``, so ``up``
    starts none; the gateway never gets its lease and never answers ``/healthz`` with 200.
    """
    spec = site.spec()
    site.start_vault()
    pid_file = controlproc.pid_file(site.state, site.name)
    pid_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid_file.write_text("{}")
    argv = [sys.executable, "-c", "import time; time.sleep(600)", "controller", "run"]
    with subprocess.Popen([*argv, str(spec), "--state-dir", str(site.state)]) as decoy:
        try:
            pid_file.write_text(json.dumps({"pid": decoy.pid}) + "\n")
            assert controlproc.running(site.state, site.name) == decoy.pid
            line = _failed_up(site, spec, 1)
        finally:
            decoy.kill()
            decoy.wait()
    assert "is not serving after" in line, line
    assert site.leftovers() == []


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_changed_spec_replaces_the_model_server_and_keeps_serving(site: Site) -> None:
    spec = site.spec(_model(memory="1Gi"))
    first = site.up(spec)
    assert first.returncode == 0, first.stderr[-3000:]
    url = json.loads(first.stdout)["url"]
    model, gateway = f"enclave-{site.name}-model-assistant", f"enclave-{site.name}-gateway"
    before = {n: c.id for n, c in containers(site.client, site.name).items()}
    site.spec(_model(memory="768Mi"))
    again = site.up(spec)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads(again.stdout)
    assert result["url"] == url
    assert result["changed"] == [
        f"replace {model} (configuration changed)",
        f"wait healthy {model}",
    ]
    after = containers(site.client, site.name)
    assert after[gateway].id == before[gateway]
    assert after[model].id != before[model]
    assert after[model].attrs["HostConfig"]["Memory"] == 768 * 1024**2
    token = issue(site.state, spec, "alice")
    wait_token_known(url, token)
    answer = _chat(url, token)
    assert answer.status_code == 200, answer.text
    status = json.loads(site.run("status", site.name, "--json").stdout)
    assert status["firewall"] is True and status["gateway"]["status"] == "ok"
    site.down()


def _chat(url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "assistant",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Translate into French: good morning."}],
        },
        headers={"authorization": f"Bearer {token}", "x-enclave-purpose": "translation"},
        timeout=30,
        trust_env=False,
    )


# -- dockerd restarted under a running enclave: runs LAST (it disturbs every engine user) ------


def _ours(pid: int) -> bool:
    """Whether ``pid`` is a dockerd that scripts/ensure-docker.sh started (it logs there)."""
    proc = Path(f"/proc/{pid}")
    try:
        exe = (proc / "exe").readlink()
        stdout = (proc / "fd" / "1").readlink()
    except OSError:
        return False
    return exe.name == "dockerd" and stdout == DOCKERD_LOG.resolve()


def _script_dockerd() -> tuple[int | None, str]:
    """The pid of the running dockerd if ensure-docker.sh started it; else None and why."""
    try:
        pid = int(DOCKERD_PID_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return (
            None,
            f"no {DOCKERD_PID_FILE}: the running dockerd was not started by ensure-docker.sh",
        )
    if not _ours(pid):
        return None, f"{DOCKERD_PID_FILE} names pid {pid}, which is not the dockerd it started"
    return pid, ""


def _restart_dockerd(pid: int) -> None:
    """SIGTERM the script's dockerd, wait until it is gone, start it again with the script."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), f"dockerd (pid {pid}) did not exit in 60 s"
    started = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert started.returncode == 0, started.stderr


def _wait(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(0.25)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_z_dockerd_restarted_the_enclave_comes_back_isolated(site: Site) -> None:
    """Runs last in this module: it restarts the Docker daemon (only one the script started)."""
    pid, why = _script_dockerd()
    if pid is None:  # even in CI: a daemon this project did not start is never restarted
        pytest.skip(f"will not restart dockerd: {why} (a foreign daemon is left alone)")
    if site.client.info().get("LiveRestoreEnabled") is not True:
        service_missing(
            f"dockerd (pid {pid}) runs without --live-restore (an older ensure-docker.sh "
            "started it): restarting it would stop every container; stop it and run "
            "scripts/ensure-docker.sh"
        )
    missing = missing_network_tools()
    if missing:
        service_missing(missing)
    spec = site.spec()
    done = site.up(spec)
    assert done.returncode == 0, done.stderr[-3000:]
    url = json.loads(done.stdout)["url"]
    token = issue(site.state, spec, "alice")
    wait_token_known(url, token)
    assert _chat(url, token).status_code == 200
    before = {n: c.id for n, c in containers(site.client, site.name).items()}
    assert len(before) == 2

    _restart_dockerd(pid)
    # the session's client holds connections to the old daemon: use a new one from here on
    site.client = client = connect_engine()
    assert client.info().get("LiveRestoreEnabled") is True
    after = containers(client, site.name)
    assert {n: c.id for n, c in after.items()} == before
    assert {c.status for c in after.values()} == {"running"}
    _wait("the gateway answers through its published port", lambda: _serving(url, token))
    status = json.loads(site.run("status", site.name, "--json").stdout)
    assert status["firewall"] is True, status
    assert status["controller"]["running"] is True, status
    assert status["gateway"]["status"] == "ok", status
    # still isolated: neither container reaches a listener on either bridge's host address
    # (the gateway is on both networks; the model server on the internal one only)
    for network in status["networks"]:
        with host_listener(interface_address(network["bridge"]), "bridge") as canary:
            for container in after.values():
                report = probe(container_pid(container), [canary.target])["bridge"]
                assert not report.reached, f"{container.name} reached {network['name']}: {report}"
            assert not canary.seen(), canary.seen()
    site.down()


def _serving(url: str, token: str) -> bool:
    try:
        return _chat(url, token).status_code == 200
    except httpx.HTTPError:
        return False
