"""``enclave check`` against a whole enclave brought up with ``enclave up``.

The enclave passes every check it controls (container runtime, networks, firewall, secrets,
Vault, usage policy, weights, audit log); the host's and the Docker engine's settings are
reported as they are on this machine, with their evidence. Then it is broken for real, one way
at a time: a foreign container attached to its internal network, the model container's memory
limit raised with ``docker update`` (the "break it" walk-through of ``docs/compliance.md``), a
tampered copy of its audit log, Docker unreachable, Vault stopped; a signed waiver turns a
failure into "waived"; ``make demo``'s compliance step (a kill drill, then the baseline with
this machine's own failures waived) passes; and the live OSCAL report validates against the
OSCAL schema.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from trestle.oscal.assessment_results import Model

from enclave import lifecycle
from enclave.compliance import Status, default_baseline, evaluate, load_baseline
from enclave.compliance.collectors import audit_facts
from enclave.compliance.waivers import load_waivers
from support import REPO_ROOT, service_missing
from support.compliance import compliant_facts
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
    from docker import DockerClient

    from support.docker_engine import DockerResources

pytestmark = [
    pytest.mark.docker,
    pytest.mark.vault,
    pytest.mark.slow,
    # the module's enclave comes up in the first test's setup (images may be built then)
    pytest.mark.timeout(UP_TIMEOUT + 300),
]

CHECK_BUDGET_S = 2.0
"""The whole baseline against one enclave, collection included (issue 8)."""
HOST_AREAS = ("HST", "DKR")
"""Checks of this machine's own settings: reported as they are, pass or fail."""
DRILL_CHECKS = ("AIS-10", "AIS-11")
DEMO_SCRIPT = REPO_ROOT / "scripts" / "demo_requests.py"


@dataclass
class Up:
    name: str
    spec: Path
    state: Path
    url: str

    def check(
        self,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        done = subprocess.run(
            [*_argv(), "--state-dir", str(self.state), "check", self.name, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **(env or {})},
        )
        return done, time.monotonic() - started

    def report(self, *args: str) -> dict[str, Any]:
        done, _ = self.check("--format", "json", "--fail-on", "never", *args)
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data


def _argv() -> list[str]:
    from support.gateway_procs import enclave_argv

    return enclave_argv()


def by_id(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for result in report["results"]:
        found.setdefault(result["id"], []).append(result)
    return found


@pytest.fixture(scope="module")
def enclave(
    tmp_path_factory: pytest.TempPathFactory, docker_client: DockerClient, base_image: str
) -> Iterator[Up]:
    del base_image  # built (or found) by the fixture; `up` reuses it through the cache
    if os.geteuid() != 0:
        service_missing("enclave up needs root (host firewall rules, network namespaces)")
    root = tmp_path_factory.mktemp("compliance")
    name = f"cc{secrets.token_hex(3)}"
    state = state_dir(root)
    spec = write_spec(root, name, free_port())  # the example names an owner (AIS-13)
    try:
        done = run_enclave(state, "up", str(spec), "--json", timeout=UP_TIMEOUT)
        assert done.returncode == 0, f"enclave up exited {done.returncode}: {done.stderr[-3000:]}"
        up = Up(name, spec, state, json.loads(done.stdout)["url"])
        token = issue(state, spec, "alice")
        wait_token_known(up.url, token)
        for text in ("Translate into French: good morning.", "Translate: thank you."):
            answer = httpx.post(
                f"{up.url}/v1/chat/completions",
                json={
                    "model": "assistant",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": text}],
                },
                headers={"authorization": f"Bearer {token}", "x-enclave-purpose": "translation"},
                timeout=30,
                trust_env=False,
            )
            assert answer.status_code == 200, answer.text
        yield up
    finally:
        run_enclave(state, "vault", "start", timeout=60)  # a test may have stopped it
        down = run_enclave(state, "down", name, "--json", timeout=120)
        run_enclave(state, "vault", "stop", timeout=60)
        assert down.returncode == 0, down.stderr
        assert not containers(docker_client, name)


def test_the_enclave_passes_every_check_it_controls_within_budget(enclave: Up) -> None:
    done, wall = enclave.check("--format", "json", "--fail-on", "never")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["seconds"] <= CHECK_BUDGET_S, report["collectors"]
    print(
        f"\nenclave check: {report['seconds']:.3f} s in-process, {wall:.3f} s as a process; "
        f"collectors {[(c['name'], c['seconds']) for c in report['collectors']]}"
    )
    assert all(not c["error"] for c in report["collectors"]), report["collectors"]
    results = report["results"]
    assert len({r["id"] for r in results}) == len(load_baseline(default_baseline()).ids)
    assert not [r for r in results if r["status"] == "error"]
    enclave_side = [
        r for r in results if r["id"][:3] not in HOST_AREAS and r["id"] not in DRILL_CHECKS
    ]
    not_passing = [
        (r["id"], r["target"], r["status"], r["evidence"])
        for r in enclave_side
        if r["status"] not in ("pass", "not-applicable")
    ]
    assert not not_passing
    found = by_id(report)
    assert {r["target"] for r in found["CTR-01"]} == {
        f"container enclave-{enclave.name}-gateway",
        f"container enclave-{enclave.name}-model-assistant",
    }
    weights = next(r for r in found["AIS-12"] if r["status"] == "pass")["evidence"]["weights"]
    assert weights["actual_sha256"] == weights["expected_sha256"] and weights["read_only"]
    # no drill has run: the drill checks fail on absence, they never pass
    drill = found["AIS-10"][0]
    if drill["evidence"]["drill"] == "no drill recorded":
        assert drill["status"] == "fail"
    # this machine's settings are reported as they are
    info = subprocess.run(
        ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, check=True
    ).stdout
    live_restore = json.loads(info)["LiveRestoreEnabled"]
    (restore,) = found["DKR-02"]
    assert restore["evidence"] == {"daemon.live_restore": live_restore}
    assert restore["status"] == ("pass" if live_restore else "fail")
    aslr = int(Path("/proc/sys/kernel/randomize_va_space").read_text())
    assert found["HST-03"][0]["evidence"] == {"host.sysctl.kernel_randomize_va_space": aslr}


def test_exit_codes_follow_the_threshold(enclave: Up) -> None:
    critical, _ = enclave.check("--fail-on", "critical")
    assert critical.returncode == 0, critical.stdout[-3000:]
    assert "results in" in critical.stdout and "fail" in critical.stdout
    low, _ = enclave.check("--fail-on", "low")  # the drill has never run: AIS-10 fails
    assert low.returncode == 1
    assert "AIS-10 fail" in low.stdout and "controls: nist-800-53 IR-3" in low.stdout


def test_a_foreign_container_on_the_internal_network_fails(
    enclave: Up, docker_client: DockerClient, docker_resources: DockerResources, base_image: str
) -> None:
    intruder = docker_resources.container(base_image, ["sleep", "60"], role="intruder")
    network = docker_client.networks.get(f"enclave-{enclave.name}-internal")
    network.connect(intruder)
    try:
        found = by_id(enclave.report())
    finally:
        network.disconnect(intruder, force=True)
    (internal,) = [r for r in found["NET-04"] if r["target"].endswith("-internal")]
    assert internal["status"] == "fail"
    assert internal["evidence"]["foreign"] == [intruder.name]
    assert internal["mappings"]["nist-800-53"] == ["SC-7", "AC-4", "SC-4"]
    assert {r["status"] for r in by_id(enclave.report())["NET-04"]} == {"pass"}


def test_a_tampered_copy_of_the_audit_log_fails(enclave: Up, tmp_path: Path) -> None:
    log = lifecycle.audit_dir(enclave.state, enclave.name)
    copy = tmp_path / "audit"
    shutil.copytree(log, copy, ignore=shutil.ignore_patterns("lock"))
    facts = audit_facts(copy, datetime.now(UTC))
    assert facts["intact"] and facts["records"] > 0, facts
    segment = sorted(copy.glob("seg-*.jsonl"))[-1]
    data = bytearray(segment.read_bytes())
    data[data.index(b'"actor":"') + 9] ^= 0x01  # one bit of one record's actor
    segment.write_bytes(bytes(data))
    tampered = compliant_facts()
    tampered.values["audit"] = audit_facts(copy, datetime.now(UTC))
    report = evaluate(load_baseline(default_baseline()), tampered, enclave=enclave.name)
    (result,) = [r for r in report.results if r.check.id == "AUD-01"]
    assert result.status is Status.FAIL
    assert str(result.evidence["finding"]).startswith(f"edit at {segment}:")


def test_a_signed_waiver_is_reported_as_waived_and_a_bad_one_as_ignored(enclave: Up) -> None:
    waivers = lifecycle.enclave_dir(enclave.state, enclave.name) / "waivers.yaml"
    waivers.write_text(
        "apiVersion: enclave.dev/v1alpha1\nkind: Waivers\nwaivers:\n"
        "  - {check: AIS-10, reason: first drill scheduled for Monday, approver: carol,"
        " expires: '2099-01-01T00:00:00Z'}\n"
    )
    try:
        unsigned = by_id(enclave.report())
        assert unsigned["AIS-10"][0]["status"] == "fail"
        done, _ = enclave.check("--sign-waivers", "--format", "json", "--fail-on", "never")
        assert done.returncode == 0, done.stderr
        assert "signed 1 waiver(s): AIS-10" in done.stderr
        report = json.loads(done.stdout)
        (waived,) = by_id(report)["AIS-10"]
        assert waived["status"] == "waived"
        assert waived["waiver"]["approver"] == "carol" and waived["evidence"]["drill"]
        text = waivers.read_text().replace("Monday", "Tuesday")  # edited after signing
        waivers.write_text(text)
        report = enclave.report()
        assert by_id(report)["AIS-10"][0]["status"] == "fail"
        (ignored,) = report["waivers"]
        assert ignored["problem"] == "bad signature (edited, or signed for another enclave or key)"
    finally:
        waivers.unlink()


def test_raising_the_model_memory_limit_fails_ctr_12_with_evidence_and_controls(
    enclave: Up, docker_client: DockerClient
) -> None:
    """docs/compliance.md's "break it" walk-through, step by step."""
    model = docker_client.containers.get(f"enclave-{enclave.name}-model-assistant")
    host = model.attrs["HostConfig"]
    memory, swap = int(host["Memory"]), int(host["MemorySwap"])
    assert memory > 0 and swap == memory
    before, _ = enclave.check("--fail-on", "high")
    model.update(mem_limit="2g", memswap_limit="4g")
    try:
        table, _ = enclave.check()
        report = enclave.report()
        high, _ = enclave.check("--fail-on", "high")
    finally:
        model.update(mem_limit=memory, memswap_limit=swap)
    assert table.returncode == 1  # a medium check failed, and --fail-on is low by default
    target = f"container enclave-{enclave.name}-model-assistant"
    details = table.stdout[table.stdout.index("CTR-12 fail:") :]
    assert details.startswith(f"CTR-12 fail: Memory is limited, with no extra swap ({target})")
    for line in (
        "  evidence container.memory = 2147483648",
        "  evidence container.memory_swap = 4294967296",
        "  controls: nist-800-53 SC-5, SC-6; cis-docker 5.10",
    ):
        assert line in details.splitlines()[:5], details[:600]
    (failed,) = [r for r in by_id(report)["CTR-12"] if r["status"] == "fail"]
    assert failed["target"] == target and failed["severity"] == "medium"
    assert failed["evidence"] == {
        "container.memory": 2 * 1024**3,
        "container.memory_swap": 4 * 1024**3,
    }
    assert failed["mappings"]["nist-800-53"] == ["SC-5", "SC-6"]
    # a medium failure is reported, but does not change the exit status under --fail-on high
    assert high.returncode == before.returncode, high.stdout[-2000:]
    # restored: the check passes again
    assert {r["status"] for r in by_id(enclave.report())["CTR-12"]} == {"pass"}


def test_the_oscal_report_of_the_live_enclave_validates(enclave: Up, tmp_path: Path) -> None:
    out = tmp_path / "ar.json"
    done, _ = enclave.check("--format", "oscal", "--fail-on", "never", "--output", str(out))
    assert done.returncode == 0, done.stderr
    parsed = Model.model_validate(json.loads(out.read_text()))
    (result,) = parsed.assessment_results.results
    assert len(result.findings or []) == len(enclave.report()["results"])


def test_the_demo_compliance_step_waives_only_this_machines_own_settings(enclave: Up) -> None:
    """``make demo``'s last step: a kill drill, then the baseline; whatever fails must be a
    setting of this machine (Docker daemon, kernel, auditd), waived, signed and shown."""
    waivers = lifecycle.enclave_dir(enclave.state, enclave.name) / "waivers.yaml"
    argv = [sys.executable, str(DEMO_SCRIPT), "--spec", str(enclave.spec)]
    try:
        done = subprocess.run(
            [*argv, "--state-dir", str(enclave.state), "--compliance"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        lines = done.stdout.splitlines()
        assert f"drill of enclave {enclave.name}: PASSED" in done.stdout
        summary = re.fullmatch(
            r"compliance: (\d+) pass, 0 fail, 0 error, (\d+) waived"
            r"( \(host: development VM\))?, (\d+) not-applicable",
            lines[-1],
        )
        assert summary, lines[-3:]
        entries = load_waivers(waivers) if waivers.exists() else []
        report = enclave.report()
        counts = report["summary"]
        assert [int(summary.group(n)) for n in (1, 2, 4)] == [
            counts["pass"], counts["waived"], counts["not-applicable"]
        ]  # fmt: skip
        assert counts["fail"] == counts["error"] == 0
        waived = [r for r in report["results"] if r["status"] == "waived"]
        assert {(r["id"], r["target"]) for r in waived} == {(w.check, w.target) for w in entries}
        for entry in entries:
            assert entry.check[:4] in ("DKR-", "HST-") and entry.check != "HST-11"
            assert entry.approver == "make demo" and entry.signature.startswith("v1=")
            assert entry.reason.startswith("host: development VM")
        assert all(w["valid"] for w in report["waivers"])
        for result in waived:  # shown with its evidence and its waiver, never hidden
            assert result["evidence"] and result["waiver"]["approver"] == "make demo"
        assert {r["status"] for r in report["results"] if r["id"] in DRILL_CHECKS} == {"pass"}
        if waived:
            assert f"{waived[0]['id']} waived:" in done.stdout
    finally:
        waivers.unlink(missing_ok=True)


def test_unreachable_docker_is_an_error_exit_5(enclave: Up) -> None:
    done, _ = enclave.check("--format", "json", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.returncode == 5, done.stderr
    report = json.loads(done.stdout)
    errors = [r for r in report["results"] if r["status"] == "error"]
    assert {r["id"][:3] for r in errors} >= {"CTR", "NET", "SEC", "DKR"}
    assert all("Docker engine is unavailable" in r["message"] for r in errors)
    assert not [r for r in report["results"] if r["id"] == "CTR-01" and r["status"] == "pass"]


def test_a_stopped_vault_is_an_error_exit_5(enclave: Up) -> None:
    """Last: stopping Vault disturbs the enclave (the fixture starts it again for down)."""
    stop = run_enclave(enclave.state, "vault", "stop", timeout=60)
    assert stop.returncode == 0, stop.stderr
    done, _ = enclave.check("--fail-on", "critical")
    assert done.returncode == 5, done.stdout[-2000:]
    report = enclave.report()
    vault = [r for r in report["results"] if r["id"].startswith("VLT-")]
    assert {r["status"] for r in vault} == {"error"}
    assert vault[0]["message"] == "vault: vault: the embedded Vault is not running"
    assert Status.ERROR.value in report["summary"]
