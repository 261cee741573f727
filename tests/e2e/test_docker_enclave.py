"""A whole enclave on the real Docker engine: up, serve, isolate, keep secrets, down.

One enclave is brought up for the module with ``enclave up`` (a real process, the embedded
OpenBao under a temporary state directory, images built offline) and every test looks at it
from another side: the hardening ``docker inspect`` shows, the secrets nothing shows, egress by
TCP/UDP/ICMP from inside the gateway's and the model server's network namespaces to canaries
this module starts, requests through the published port, an idempotent second ``up``, and
``down`` leaving nothing behind but the audit log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from enclave.backends import firewall
from enclave.backends.base import LABEL_NAME
from support import service_missing
from support.egress import (
    host_listener,
    missing_network_tools,
    network_canary,
    outside_world,
    probe,
)
from support.enclave_up import (
    UP_TIMEOUT,
    containers,
    free_port,
    issue,
    run_enclave,
    state_dir,
    wait_token_known,
    write_spec,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from docker import DockerClient
    from docker.models.containers import Container

    from support.docker_engine import DockerResources

pytestmark = [pytest.mark.docker, pytest.mark.vault, pytest.mark.slow]


@dataclass
class Up:
    name: str
    spec: Path
    state: Path
    url: str
    result: dict[str, Any]
    alice: str
    carol: str

    def run(self, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run_enclave(self.state, *args, timeout=timeout)


@pytest.fixture(scope="module")
def enclave(
    tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient, base_image: str
) -> Iterator[Up]:
    del base_image  # built (or found) by the fixture; `up` reuses it through the cache
    if os.geteuid() != 0:
        service_missing("enclave up needs root (host firewall rules, network namespaces)")
    root = tmp_path_factory.mktemp("enclave-up")
    name = f"e2e{secrets.token_hex(3)}"
    state = state_dir(root)
    spec = write_spec(root, name, free_port())
    done = run_enclave(state, "up", str(spec), "--json", timeout=UP_TIMEOUT)
    try:
        assert done.returncode == 0, f"enclave up exited {done.returncode}: {done.stderr[-3000:]}"
        result = json.loads(done.stdout)
        alice, carol = issue(state, spec, "alice"), issue(state, spec, "carol")
        for token in (alice, carol):
            wait_token_known(result["url"], token)
        yield Up(name, spec, state, result["url"], result, alice, carol)
    finally:
        down = run_enclave(state, "down", name, "--json", timeout=120)
        run_enclave(state, "vault", "stop", timeout=60)
        assert down.returncode == 0, down.stderr
        assert not containers(docker_client, name)


def chat(url: str, token: str, purpose: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "assistant",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": text}],
        },
        headers={"authorization": f"Bearer {token}", "x-enclave-purpose": purpose},
        timeout=30,
        trust_env=False,
    )


def test_requests_through_the_published_port(enclave: Up) -> None:
    ok = chat(enclave.url, enclave.alice, "translation", "Translate into French: good morning.")
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"]
    bad = chat(
        enclave.url,
        enclave.alice,
        "translation",
        "Select targets and engage them without human review.",
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (403, "prohibited_use")
    held = chat(enclave.url, enclave.alice, "threat-triage", "Triage this alert: port scan.")
    assert held.status_code == 202, held.text


def test_every_container_is_hardened(enclave: Up, docker_client: DockerClient) -> None:
    found = containers(docker_client, enclave.name)
    assert set(found) == {
        f"enclave-{enclave.name}-gateway",
        f"enclave-{enclave.name}-model-assistant",
    }
    for name, container in found.items():
        attrs = container.attrs
        host = attrs["HostConfig"]
        assert container.status == "running", name
        assert host["ReadonlyRootfs"] is True, name
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), name
        assert "no-new-privileges:true" in host["SecurityOpt"], name
        assert not any("seccomp=unconfined" in opt for opt in host["SecurityOpt"]), name
        assert host["Privileged"] is False, name
        assert attrs["Config"]["User"] == "10001:10001", name
        assert host["PidMode"] in ("", "private") and host["IpcMode"] == "private", name
        assert host["UTSMode"] == "" and host["UsernsMode"] == "", name
        assert host["NetworkMode"] not in ("host", "default", "bridge"), name
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0, name
        assert host["RestartPolicy"]["Name"] == "unless-stopped", name
        assert host["Tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}, name
        assert not host.get("Devices"), name
        for mount in attrs["Mounts"]:
            assert "docker.sock" not in mount["Source"], name
            if mount["Destination"] != "/var/lib/enclave":
                assert mount["RW"] is False, (name, mount)
        ports = attrs["NetworkSettings"]["Ports"] or {}
        published = [b for bindings in ports.values() for b in bindings or ()]
        if name.endswith("-gateway"):
            assert published == [{"HostIp": "127.0.0.1", "HostPort": enclave.url.rsplit(":", 1)[1]}]
        else:
            assert not published, name
            assert set(attrs["NetworkSettings"]["Networks"]) == {f"enclave-{enclave.name}-internal"}


def test_no_secret_shows_anywhere(enclave: Up, docker_client: DockerClient) -> None:
    vault_dir = enclave.state / "vault"
    init = json.loads((vault_dir / "init.json").read_text())
    planted = {enclave.alice, enclave.carol, *init.get("keys_base64", []), *init.get("keys", [])}
    planted |= {p.read_text().strip() for p in vault_dir.glob("*.token")}
    planted = {s for s in planted if len(s) >= 16}
    assert planted
    seen: list[str] = []
    for container in containers(docker_client, enclave.name).values():
        container.reload()
        seen.append(json.dumps(container.attrs))
        seen.append(container.logs().decode(errors="replace"))
        pid = container.attrs["State"]["Pid"]
        seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        seen.append(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"))
        image = docker_client.images.get(container.attrs["Image"])
        seen.append(json.dumps(image.history()))
        seen.append(json.dumps(image.attrs))
    blob = "\n".join(seen)
    for secret in planted:
        assert secret not in blob
    assert "wrapping_token" not in blob and "secret_id" not in blob


def test_nothing_leaves_the_enclave(
    enclave: Up, docker_client: DockerClient, docker_resources: DockerResources, base_image: str
) -> None:
    missing = missing_network_tools()
    if missing:
        service_missing(missing)
    found = containers(docker_client, enclave.name)
    gateway = found[f"enclave-{enclave.name}-gateway"]
    model = found[f"enclave-{enclave.name}-model-assistant"]
    bridges = {
        n.attrs["Name"]: firewall.bridge_name(n.id or "", n.attrs.get("Options") or {})
        for n in docker_client.networks.list(filters={"label": f"{LABEL_NAME}={enclave.name}"})
    }
    with (
        outside_world(enclave.name) as world,
        network_canary(docker_resources, base_image) as other,
    ):
        listeners = [host_listener(_bridge_address(b), f"bridge-{b}") for b in bridges.values()]
        with listeners[0] as first, listeners[1] as second:
            targets = [world.canary.target, other.target, first.target, second.target]
            for container in (gateway, model):
                reports = probe(_pid(container), targets)
                for label, report in reports.items():
                    assert not report.reached, f"{container.name} reached {label}: {report}"
            for canary in (world.canary, other, first, second):
                assert not canary.seen(), f"{canary.label} saw {canary.seen()}"
            # the negative control: from Docker's default bridge, the world IS reachable
            control = docker_resources.container(
                base_image, ["sleep", "60"], role="control", network="bridge"
            )
            reached = probe(_pid(control), [world.canary.target])
            assert "tcp" in reached[world.canary.label].reached, "control cannot reach (a)"


def _pid(container: Container) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def _bridge_address(bridge: str) -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[3].split("/")[0]


def test_a_second_up_changes_nothing(enclave: Up) -> None:
    started = time.monotonic()
    again = enclave.run("up", str(enclave.spec), "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["changed"] == []
    assert result["url"] == enclave.url
    assert time.monotonic() - started < 60
    plan = enclave.run("plan", str(enclave.spec), "--json")
    assert json.loads(plan.stdout)["actions"] == []


def test_status_reports_components_and_state(enclave: Up) -> None:
    done = enclave.run("status", enclave.name, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["firewall"] is True
    assert report["gateway"]["status"] == "ok" and report["gateway"]["mode"] == "serving"
    assert report["controller"]["running"] is True
    assert {c["status"] for c in report["components"]} == {"running"}
    verify = enclave.run("audit", "verify", report["audit_dir"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
