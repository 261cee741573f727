"""Bringing whole enclaves up with the real ``enclave`` CLI, and finding what they left behind.

Shared by the e2e modules that run ``enclave up`` against the real Docker engine: each test
gets a state directory of its own (its own embedded Vault) that shares the repository's image
cache, writes a spec with ``enclave init``, and runs the CLI as a separate process, the way a
person would.

:func:`leftovers` lists every trace an enclave can leave on the host -- containers and networks
carrying its label, host firewall rules carrying its comment, its shutdown controller, its
Vault objects -- and :func:`remove_everything` removes them by name and id, without the code
under test, for a test to clean up after a failure it detected.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import docker.errors
import httpx

from enclave import controlproc
from enclave.backends import firewall
from enclave.backends.base import LABEL_NAME
from enclave.errors import EnclaveError
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.provision import teardown
from support import REPO_ROOT, private_dir
from support.gateway_procs import enclave_argv

if TYPE_CHECKING:
    from pathlib import Path

    from docker import DockerClient
    from docker.models.containers import Container

UP_TIMEOUT = 900
"""Seconds an ``enclave up`` may take: the first one in a checkout builds the images."""

MODEL_BLOCK = "      resources: {cpus: 1, memory: 1Gi, pids: 256}\n"
"""The example spec's only model's resources line (its model block ends with it)."""


def run_enclave(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``enclave --state-dir STATE ARGS...`` as a process; its output captured."""
    return subprocess.run(
        [*enclave_argv(), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_spec(root: Path, name: str, port: int, *, extra: str = "", models: str = "") -> Path:
    """The example spec (``enclave init``) under ``root/ws``, listening on 127.0.0.1:``port``.

    ``models`` replaces the example's ``models:`` entries (YAML indented as they are there);
    ``extra`` is appended to the file.
    """
    init = run_enclave(root / "state", "init", str(root / "ws"), "--name", name, "--force")
    assert init.returncode == 0, init.stderr
    spec = root / "ws" / "enclave.yaml"
    text = spec.read_text().replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    if models:
        head, marker, rest = text.partition("  models:\n")
        assert marker, "the example spec has no models: section"
        _, end, tail = rest.partition(MODEL_BLOCK)
        assert end, "the example spec's model block changed; update MODEL_BLOCK"
        text = head + marker + models + tail
    spec.write_text(text + extra)
    return spec


def state_dir(root: Path) -> Path:
    """A fresh state directory sharing the repository's image cache (wheels, base rootfs)."""
    state = root / "state"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    cache = private_dir(private_dir(REPO_ROOT / ".state") / "cache")
    if not (state / "cache").exists():
        (state / "cache").symlink_to(cache)
    return state


def issue(state: Path, spec: Path, principal: str) -> str:
    """A fresh API token for ``principal`` (``enclave token issue``)."""
    done = run_enclave(state, "token", "issue", str(spec), "--principal", principal)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1].split()[-1]


def wait_token_known(url: str, token: str, timeout: float = 30.0) -> None:
    """Until the gateway at ``url`` accepts ``token`` (it refreshes its token cache from Vault,
    so a token issued a moment ago is unknown to it for about half a second)."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(
                f"{url}/v1/approvals",
                headers={"authorization": f"Bearer {token}"},
                timeout=5,
                trust_env=False,
            ).status_code
            if status != 401:
                return
        time.sleep(0.1)
    raise AssertionError(f"the gateway at {url} did not accept a new token in {timeout:.0f} s")


def containers(client: DockerClient, name: str) -> dict[str, Container]:
    """The containers carrying enclave ``name``'s label, by container name."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_NAME}={name}"})
    return {c.name or "": c for c in found}


def error_line(stderr: str) -> str:
    """The one line a failed command wrote on stderr (fails when it wrote more, or a trace)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr}"
    assert lines[0].startswith("enclave: error: "), lines[0]
    return lines[0]


def leftovers(client: DockerClient, state: Path, name: str) -> list[str]:
    """Every trace of enclave ``name`` on this host, one line each; empty when none.

    The Vault is asked only when it runs unsealed (its objects cannot be listed otherwise);
    when it has never been started under ``state`` it holds nothing.
    """
    label: dict[str, str | list[str] | bool] = {"label": f"{LABEL_NAME}={name}"}
    found = [f"container {c.name} {c.id}" for c in client.containers.list(all=True, filters=label)]
    found += [f"network {n.name} {n.id}" for n in client.networks.list(filters=label)]
    wall = firewall.observe(name)
    found += [f"firewall rule {rule}" for rule in wall.rules]
    found += [f"firewall chain {wall.chain} ({family})" for family in sorted(wall.chains)]
    pid = controlproc.running(state, name)
    if pid is not None:
        found.append(f"controller pid {pid}")
    vault = EmbeddedVault(state)
    current = vault.status()
    if current.running and current.sealed is False:
        inventory = vault.inventory()
        if name in inventory:
            found.append(f"vault objects {inventory[name].as_dict()}")
    elif vault.state_file.exists():
        found.append(
            f"vault objects unknown: the embedded Vault is not running unsealed ({current})"
        )
    return found


def remove_everything(client: DockerClient, state: Path, name: str) -> list[str]:
    """Remove every trace of enclave ``name`` by id and name, without ``enclave down``.

    Returns what could not be removed. Stops the state directory's embedded Vault last.
    """
    problems: list[str] = []
    label: dict[str, str | list[str] | bool] = {"label": f"{LABEL_NAME}={name}"}
    if (pid := controlproc.running(state, name)) is not None:
        controlproc.stop(state, name)
        if controlproc.running(state, name) is not None:
            problems.append(f"controller pid {pid} still runs")
    for container in client.containers.list(all=True, filters=label):
        try:
            client.api.remove_container(container.id or "", force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            problems.append(f"container {container.id}: {exc}")
    try:
        firewall.remove(name)
    except EnclaveError as exc:
        problems.append(f"firewall: {exc}")
    for network in client.networks.list(filters=label):
        try:
            client.api.remove_network(network.id or "")
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            problems.append(f"network {network.id}: {exc}")
    vault = EmbeddedVault(state)
    if vault.state_file.exists():
        try:
            vault_teardown(state, name)
        except EnclaveError as exc:
            problems.append(f"vault: {exc}")
        try:
            vault.stop()
        except EnclaveError as exc:
            problems.append(f"vault stop: {exc}")
    return problems


def vault_teardown(state: Path, name: str) -> None:
    """Tear enclave ``name`` out of the embedded Vault under ``state`` (when it is there)."""
    vault = EmbeddedVault(state)
    admin = vault.admin_client()
    try:
        if name in vault.inventory():
            teardown(admin, name)
    finally:
        with contextlib.suppress(Exception):
            admin.adapter.close()
