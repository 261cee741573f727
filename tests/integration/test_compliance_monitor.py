"""``enclave monitor`` against real processes: the shutdown controller, a gateway, the reference
runtime and OpenBao, as in tests/integration/test_controller_kill.py.

The monitor runs the real ``check_enclave`` (Docker, host, Vault and spec collectors) with a
two-check baseline over the spec under review, so what drifts is exactly what the test changes:
the spec's lease, raised from 1 s to 30 s, fails ``MON-01``. The controller is the real
``enclave controller run`` (``--backend none``), and drift reaches it over its unix socket.

Proven here: the first run's result is accepted; drift with ``onDrift: alert`` is recorded by the
controller and the enclave keeps serving; a scheduled monitor (a real process, SIGTERM to stop
it) with ``onDrift: kill`` kills the enclave through ``POST /drift`` (its gateway denies), reports
the drift again on the next run, and serves the counts as Prometheus metrics on loopback; with no
controller, drift is reported as not reported (exit 5); ``--accept`` ends the drift; the
monitor's own audit log verifies.
"""

from __future__ import annotations

import json
import re
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enclave.audit import verify_log
from enclave.audit.reader import iter_records
from enclave.audit.record import AuditRecord, Decision
from enclave.cli.main import main
from enclave.compliance.monitor import monitor_dir
from enclave.shutdown.api import ControllerClient, controller_dir, socket_path
from enclave.spec import load_spec
from enclave.vault.client import VaultConnection
from enclave.vault.controlkey import read_control_key
from enclave.vault.names import CONTROLLER, EnclavePaths
from enclave.vault.provision import bootstrap
from support.gateway_procs import (
    ENCLAVE_SPEC,
    Enclave,
    Process,
    audit_dir,
    enclave_argv,
    launch,
    provisioned_enclave,
    running_controller,
    running_gateway,
    running_runtime,
)
from support.openbao import OpenBaoServer

pytestmark = [pytest.mark.vault, pytest.mark.slow]

SPEC = ENCLAVE_SPEC + "  compliance: {{onDrift: kill}}\n"
BASELINE = """\
apiVersion: enclave.dev/v1alpha1
kind: ComplianceBaseline
checks:
  - id: MON-01
    title: The dead-man switch reacts within seconds
    severity: high
    target: spec
    rationale: A gateway that loses the controller's heartbeat must deny everything quickly.
    rule: spec.shutdown.lease_s <= 10.0
    remediation: Keep spec.shutdown.lease at most 10s.
    mappings: {nist-800-53: [SI-4]}
  - id: MON-02
    title: The contract's prohibitions are in force
    severity: critical
    target: spec
    rationale: These uses are prohibited by the contract.
    rule: '["kinetic-control"].all(p, p in spec.prohibited)'
    remediation: Restore the prohibited uses in the usage catalog.
    mappings: {nist-800-53: [AC-3]}
"""
MON_01 = "MON-01 (spec: pass -> fail)"
Json = dict[str, Any]


@dataclass
class Stack:
    tmp_path: Path
    openbao: OpenBaoServer
    vault: Any
    enclave: Enclave
    gateway: Process
    review: Path
    """The spec the monitor reviews (``--spec``): a copy the test edits."""
    baseline: Path

    def spec_with(self, on_drift: str) -> Path:
        """The enclave's spec with ``onDrift: <on_drift>`` (beside it, for its catalog)."""
        path = self.enclave.spec.with_name(f"{on_drift}.yaml")
        text = self.enclave.spec.read_text(encoding="utf-8")
        path.write_text(text.replace("onDrift: kill", f"onDrift: {on_drift}"), encoding="utf-8")
        return path

    def controller(self, on_drift: str) -> Any:
        spec = self.spec_with(on_drift)
        material = bootstrap(
            self.vault, load_spec(spec), CONTROLLER, VaultConnection(self.openbao.address)
        )
        return running_controller(
            self.tmp_path,
            replace(self.enclave, spec=spec),
            [self.gateway.url],
            material,
            extra=("--backend", "none", "--gateway-audit", str(audit_dir(self.enclave))),
            log_name=f"controller-{on_drift}.log",
        )

    def monitor_args(self) -> list[str]:
        return [self.enclave.name, "--spec", str(self.review), "--baseline", str(self.baseline)]

    def once(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Json, str]:
        capsys.readouterr()
        args = ["--state-dir", str(self.enclave.state), "monitor", *self.monitor_args()]
        code = main([*args, *extra, "--json"])
        captured = capsys.readouterr()
        return code, json.loads(captured.out), captured.err

    def drift_the_spec(self, lease: str) -> None:
        text = self.review.read_text(encoding="utf-8")
        self.review.write_text(re.sub(r"lease: \w+", f"lease: {lease}", text), encoding="utf-8")

    def controller_records(self, action: str) -> list[AuditRecord]:
        root = controller_dir(self.enclave.state, self.enclave.name) / "audit"
        return [r for r in iter_records(root) if r.action == action]

    def monitor_records(self) -> list[AuditRecord]:
        return list(iter_records(monitor_dir(self.enclave.state, self.enclave.name) / "audit"))

    def status(self) -> Json:
        client = ControllerClient(socket_path(self.enclave.state, self.enclave.name), timeout=10)
        code, data = client.call("GET", "/status")
        assert code == 200, data
        return data


@pytest.fixture
def stack(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Stack]:
    with (
        running_runtime(tmp_path) as runtime,
        provisioned_enclave(
            tmp_path, openbao.address, openbao_client, heartbeat="200ms", lease="1s", template=SPEC
        ) as enclave,
    ):
        key = read_control_key(openbao_client, EnclavePaths(enclave.name))
        with running_gateway(tmp_path, enclave, runtime, openbao.root_token, key) as gateway:
            review = enclave.spec.with_name("review.yaml")
            review.write_text(enclave.spec.read_text(encoding="utf-8"), encoding="utf-8")
            baseline = tmp_path / "baseline.yaml"
            baseline.write_text(BASELINE, encoding="utf-8")
            yield Stack(tmp_path, openbao, openbao_client, enclave, gateway, review, baseline)


def read_json_line(process: Process, timeout: float = 30.0) -> Json:
    stdout = process.process.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], timeout)
    assert ready, f"no run reported in {timeout} s; log: {process.log_text()}"
    line = stdout.readline()
    assert line, f"the monitor exited; log: {process.log_text()}"
    data: Json = json.loads(line)
    return data


def healthz(stack: Stack) -> int:
    with httpx.Client(base_url=stack.gateway.url, timeout=5.0, trust_env=False) as client:
        return client.get("/healthz").status_code


def wait_for_healthz(stack: Stack, code: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := healthz(stack)) != code:
        assert time.monotonic() < deadline, f"/healthz answers {got}, not {code}"
        time.sleep(0.05)


def test_drift_alerts_then_kills_through_the_real_controller(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    name = stack.enclave.name

    # onDrift: alert -- recorded by the controller, the enclave keeps serving
    with stack.controller("alert"):
        wait_for_healthz(stack, 200)
        code, first, _ = stack.once(capsys, "--once")
        assert code == 0 and first["accepted_now"] == "first-run"
        assert first["counts"]["pass"] == 2
        code, clean, _ = stack.once(capsys, "--once")
        assert code == 0 and clean["outcome"] == "ok" and clean["drift_total"] == 0

        stack.drift_the_spec("30s")
        code, drifted, err = stack.once(capsys, "--once")
        assert code == 1, err
        assert drifted["outcome"] == "drift"
        assert drifted["drift"] == [
            {"check": "MON-01", "target": "spec", "severity": "high", "was": "pass", "now": "fail"}
        ]
        assert drifted["controller"] == {"on_drift": "alert", "mode": "serving"}
        assert MON_01 in err  # the alert's log line
        (alert,) = stack.controller_records("shutdown.drift")
        assert alert.reason == f"compliance drift in enclave {name}: 1 result(s): {MON_01}"
        assert alert.details is not None and alert.details["on_drift"] == "alert"
        assert stack.status()["mode"] == "serving"
        assert healthz(stack) == 200

    # onDrift: kill -- a scheduled monitor process kills the enclave through POST /drift
    with stack.controller("kill"):
        argv = [
            *enclave_argv(),
            "--state-dir",
            str(stack.enclave.state),
            "monitor",
            *stack.monitor_args(),
            "--interval",
            "1s",
            "--metrics-address",
            "127.0.0.1:0",
            "--json",
        ]
        ready = (
            rf"monitoring enclave {name} every 1s \(comparing with the result accepted \S+\); "
            r"metrics on (?P<url>http://127\.0\.0\.1:\d+/metrics)"
        )
        monitor = launch(argv, stack.tmp_path / "monitor.log", ready)
        try:
            killed = read_json_line(monitor)
            assert killed["outcome"] == "drift", killed
            answer = killed["controller"]
            assert answer["on_drift"] == "kill" and answer["accepted"] is True, answer
            assert answer["mode"] == "killed" and answer["steps_failed"] == []
            wait_for_healthz(stack, 503)
            status = stack.status()
            assert status["mode"] == "killed"
            assert status["trigger"]["kind"] == "compliance-drift"
            assert MON_01 in status["trigger"]["reason"]
            assert status["trigger"]["principal"] is None
            assert status["incident"] == answer["incident"]

            again = read_json_line(monitor)  # the drift is still there: reported again
            assert again["outcome"] == "drift"
            assert again["controller"]["accepted"] is False
            assert "already killed" in again["summary"]

            scrape = httpx.get(monitor.url, timeout=5.0, trust_env=False)
            assert scrape.status_code == 200
            samples = {
                (s.name, s.labels.get("outcome") or s.labels.get("status")): s.value
                for family in text_string_to_metric_families(scrape.text)
                for s in family.samples
                if s.labels.get("enclave") == name
            }
            assert samples[("enclave_monitor_runs_total", "drift")] >= 2
            assert samples[("enclave_monitor_drifted_results", None)] == 1
            assert samples[("enclave_monitor_results", "fail")] == 1
            assert samples[("enclave_monitor_results", "pass")] == 1
            assert samples[("enclave_monitor_controller_errors_total", None)] == 0
        finally:
            assert monitor.stop() == 0, monitor.log_text()
        kills = stack.controller_records("shutdown.drift")
        assert [r.details["on_drift"] if r.details else None for r in kills][:3] == [
            "alert",
            "kill",
            "kill",
        ]

    # no controller: the drift cannot be reported, and that is the answer
    code, unreported, err = stack.once(capsys, "--once")
    assert code == 5
    assert unreported["controller"]["error"].startswith("no shutdown controller answers at ")
    assert "NOT reported" in err

    # accepting ends the drift
    code, accepted, _ = stack.once(capsys, "--accept")
    assert code == 0 and accepted["accepted_now"] == "accept"
    code, after, _ = stack.once(capsys, "--once")
    assert code == 0 and after["outcome"] == "ok"

    records = stack.monitor_records()
    assert [r.action for r in records if r.action == "compliance.accept"] == [
        "compliance.accept"
    ] * 2
    decisions = [r.decision for r in records if r.action == "compliance.run"]
    assert decisions[:3] == [Decision.INFO, Decision.INFO, Decision.DENY]
    assert decisions[-1] is Decision.INFO and decisions.count(Decision.DENY) >= 4
    assert verify_log(monitor_dir(stack.enclave.state, name) / "audit").intact
