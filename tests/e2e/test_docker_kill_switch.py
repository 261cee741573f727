"""The kill switch on the real Docker engine: ``enclave up``, ``enclave kill``, two resumes.

One enclave is brought up with the real CLI (the example spec: alice an analyst, bob, carol and
dan safety officers; the embedded OpenBao under the test's own state directory; its model slowed
to TOKEN_DELAY a token with the reference runtime's ``--token-delay``, so that a drill's streams
are still flowing when its kill lands, and the rate limit raised for the drill's load), and the
people act through the CLI with their own API tokens, the way they would:

- ``enclave kill`` by bob: the gateway denies at once, the model container is SIGKILLed (and
  stays down, whatever its restart policy) and taken off every network, the gateway is taken
  off the internal network, the gateway's Vault token is revoked; the incident is open;
- ``enclave resume`` by bob (who killed it) is refused; carol's counts; dan's completes the
  quorum, and the controller restarts the workload (fresh containers and credentials) and gives
  the gateway its lease back: the enclave serves again, the incident is closed.

Everything the enclave created is removed when the test ends (``enclave down``, then by id).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave import controlproc
from enclave.audit import verify_log
from enclave.audit.incidents import IncidentStatus, load_incident
from enclave.lifecycle import audit_dir
from enclave.shutdown.api import controller_dir
from support import service_missing
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

pytestmark = [pytest.mark.docker, pytest.mark.vault, pytest.mark.slow]

TEST_TIMEOUT = UP_TIMEOUT + 600
TOKEN_DELAY = 0.05
"""Seconds per generated token: a drill's 24-token streams last over a second."""
SPEC_EDITS = (
    ("requestsPerMinute: 60}", "requestsPerMinute: 100000}"),
    (
        "      resources: {cpus: 1, memory: 1Gi, pids: 256}\n",
        "      resources: {cpus: 1, memory: 1Gi, pids: 256}\n"
        f'      args: [--token-delay, "{TOKEN_DELAY:g}"]\n',
    ),
)
Json = dict[str, Any]


@dataclass
class Site:
    name: str
    root: Path
    state: Path
    spec: Path
    url: str
    tokens: dict[str, Path]

    def run(self, *args: str, timeout: float = 300) -> Any:
        return run_enclave(self.state, *args, timeout=timeout)


@pytest.fixture
def site(tmp_path: Path, docker_client: Any, base_image: str) -> Iterator[Site]:
    del base_image  # built (or found) once; `up` reuses it through the shared cache
    if os.geteuid() != 0:
        service_missing("enclave up needs root (host firewall rules, network namespaces)")
    name = f"ks{secrets.token_hex(3)}"
    state = state_dir(tmp_path)
    spec = write_spec(tmp_path, name, free_port())
    text = spec.read_text()
    for old, new in SPEC_EDITS:
        assert old in text, f"the example spec no longer has {old.strip()!r}"
        text = text.replace(old, new, 1)
    spec.write_text(text)
    try:
        done = run_enclave(state, "up", str(spec), "--json", timeout=UP_TIMEOUT)
        assert done.returncode == 0, f"enclave up exited {done.returncode}: {done.stderr[-3000:]}"
        tokens = {}
        for who in ("alice", "bob", "carol", "dan"):
            path = tmp_path / f"{who}.token"
            path.write_text(issue(state, spec, who))
            path.chmod(0o600)
            tokens[who] = path
        url = json.loads(done.stdout)["url"]
        wait_token_known(url, tokens["alice"].read_text())  # the gateway's cache: ~0.5 s
        yield Site(name, tmp_path, state, spec, url, tokens)
    finally:
        down = run_enclave(state, "down", name, "--json", timeout=300)
        problems = remove_everything(docker_client, state, name)
        assert down.returncode == 0, down.stderr
        assert not problems, problems


def chat(site: Site) -> httpx.Response:
    return httpx.post(
        f"{site.url}/v1/chat/completions",
        json={
            "model": "assistant",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        headers={
            "authorization": f"Bearer {site.tokens['alice'].read_text().strip()}",
            "x-enclave-purpose": "translation",
        },
        timeout=30,
        trust_env=False,
    )


def health(site: Site) -> int:
    return httpx.get(f"{site.url}/healthz", timeout=10, trust_env=False).status_code


def networks_of(container: Any) -> set[str]:
    container.reload()
    return set((container.attrs["NetworkSettings"]["Networks"] or {}).keys())


@pytest.mark.timeout(TEST_TIMEOUT)
def test_kill_and_two_person_resume_on_the_docker_engine(site: Site, docker_client: Any) -> None:
    assert chat(site).status_code == 200
    gateway_name = f"enclave-{site.name}-gateway"
    model_name = f"enclave-{site.name}-model-assistant"
    internal = f"enclave-{site.name}-internal"
    found = containers(docker_client, site.name)
    assert internal in networks_of(found[gateway_name])
    assert internal in networks_of(found[model_name])

    killed = site.run(
        "kill", site.name, "--reason", "e2e drill", "--token-file", str(site.tokens["bob"]),
        "--json",
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    report: Json = json.loads(killed.stdout)
    steps = {s["step"]: s for s in report["steps"]}
    assert all(s["ok"] for s in report["steps"]), report
    assert (
        "1 of 1 model container(s) killed (SIGKILL)" in steps["model containers stopped"]["detail"]
    )
    assert steps["model containers stopped"]["offset"] < 2.0
    assert steps["vault tokens revoked"]["offset"] < 2.0

    assert health(site) == 503
    refused = chat(site)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "enclave_shutdown"
    time.sleep(2)  # a restart policy would have brought it back by now
    found = containers(docker_client, site.name)
    model = found[model_name]
    model.reload()
    assert model.status == "exited" and model.attrs["RestartCount"] == 0
    assert networks_of(model) == set()
    gateway = found[gateway_name]
    assert internal not in networks_of(gateway)
    assert gateway.status == "running"  # it answers 503 to everyone

    status = site.run("controller", "status", site.name, "--json")
    assert status.returncode == 0, status.stderr
    state: Json = json.loads(status.stdout)
    assert state["mode"] == "killed" and state["trigger"]["principal"] == "bob"

    refused_resume = site.run("resume", site.name, "--token-file", str(site.tokens["bob"]))
    assert refused_resume.returncode == 2 and "self_approval" in refused_resume.stderr
    first = site.run("resume", site.name, "--token-file", str(site.tokens["carol"]))
    assert first.returncode == 0 and "1 of 2 (carol)" in first.stdout, first.stderr
    assert health(site) == 503
    begun = time.monotonic()
    second = site.run("resume", site.name, "--token-file", str(site.tokens["dan"]), timeout=600)
    resumed_after = time.monotonic() - begun
    assert second.returncode == 0, second.stderr
    assert "resumed (approved by carol, dan" in second.stdout
    print(f"\nkill steps: {[(s['step'], round(s['offset'] * 1000, 1)) for s in report['steps']]}")
    print(f"resume (restart + lease + healthy): {resumed_after:.1f} s")

    assert health(site) == 200
    assert chat(site).status_code == 200
    found = containers(docker_client, site.name)
    assert {c.status for c in found.values()} == {"running"}
    assert internal in networks_of(found[gateway_name])
    assert internal in networks_of(found[model_name])

    audit = controller_dir(site.state, site.name) / "audit"
    assert verify_log(audit).intact
    incident = load_incident(audit, report["incident"])
    assert incident.status is IncidentStatus.RESOLVED
    assert [e.result.value for e in incident.actions if e.result] == ["ok"] * 4


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_drill_under_load_measures_and_records_the_kill(site: Site) -> None:
    done = site.run(
        "drill", site.name,
        "--token-file", str(site.tokens["bob"]),
        "--load-token-file", str(site.tokens["alice"]),
        "--json",
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    assert result["resumed"] is True
    assert done.returncode == (0 if result["passed"] else 1)
    latencies = result["latencies_ms"]
    for key in ("gateways_denying", "models_stopped", "vault_revoked", "resume", "client_deny"):
        assert latencies[key] > 0, key
    # the slowed model's streams were in flight at the kill: their cut is measured
    assert latencies["client_stream_cut"] > 0, latencies
    print(f"\ndrill latencies (ms): {latencies}")
    assert result["load"]["requests"] > 0
    assert result["load"]["served_after_kill"] == 0  # nothing served once killed
    assert health(site) == 200 and chat(site).status_code == 200  # serving again
    log = controller_dir(site.state, site.name) / "audit"
    assert verify_log(log).intact
    records = [
        json.loads(line)
        for path in sorted(log.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    drills = [r for r in records if r.get("action") == "drill.result"]
    assert len(drills) == 1 and drills[0]["details"]["passed"] is result["passed"]
    # a drill's finish never resumes a real kill
    kill = site.run("kill", site.name, "--reason", "real", "--token-file", str(site.tokens["bob"]))
    assert kill.returncode == 0, kill.stderr
    refused = site.run("drill", site.name, "--token-file", str(site.tokens["bob"]), "--json")
    assert refused.returncode == 3 and "already killed" in refused.stderr


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_killed_enclave_stays_killed_when_its_parts_crash(site: Site, docker_client: Any) -> None:
    """SIGKILL of the controller and of the gateway container while killed: nothing is served,
    `up` does not bring it back (it only restarts the controller, still killed), and only the
    two-person resume does; no audit record is lost."""
    assert chat(site).status_code == 200
    kill = site.run("kill", site.name, "--reason", "crash drill", "--token-file",
                    str(site.tokens["bob"]))  # fmt: skip
    assert kill.returncode == 0, kill.stderr
    pid = controlproc.running(site.state, site.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while controlproc.running(site.state, site.name) is not None:
        assert time.monotonic() < deadline, "the controller did not die"
        time.sleep(0.05)
    gateway = containers(docker_client, site.name)[f"enclave-{site.name}-gateway"]
    gateway.kill()  # its restart cannot log in again: the bootstrap was single-use
    for _ in range(20):
        with contextlib.suppress(httpx.HTTPError):
            assert chat(site).status_code != 200, "served while killed"
        time.sleep(0.1)
    up = site.run("up", str(site.spec))
    assert up.returncode == 3 and "enclave resume" in up.stderr, up.stderr
    assert controlproc.running(site.state, site.name) is not None  # back, and still killed
    status = json.loads(site.run("controller", "status", site.name, "--json").stdout)
    assert status["mode"] == "killed"
    with contextlib.suppress(httpx.HTTPError):
        assert chat(site).status_code != 200, "served while killed"
    first = site.run("resume", site.name, "--token-file", str(site.tokens["carol"]))
    assert first.returncode == 0 and "1 more needed" in first.stdout, first.stdout + first.stderr
    second = site.run("resume", site.name, "--token-file", str(site.tokens["dan"]))
    assert second.returncode == 0 and "resumed" in second.stdout, second.stdout + second.stderr
    wait_token_known(site.url, site.tokens["alice"].read_text())
    assert chat(site).status_code == 200
    assert verify_log(controller_dir(site.state, site.name) / "audit").intact
    assert verify_log(audit_dir(site.state, site.name)).intact
