"""The engine on hand-made facts: statuses, evidence, errors, applicability and waivers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.compliance import Facts, Status, evaluate, load_baseline
from enclave.compliance.model import Severity, Waiver
from enclave.compliance.rules import compile_rule, fact_paths
from enclave.compliance.scan import SecretScanner
from enclave.compliance.waivers import WaiverEntry, judge, load_waivers, sign_file, signature
from enclave.errors import SpecError

BASELINE = """\
apiVersion: enclave.dev/v1alpha1
kind: ComplianceBaseline
checks:
  - id: TST-01
    title: not privileged
    severity: critical
    target: docker-container
    rationale: r
    rule: '!container.privileged'
    remediation: m
    mappings: {nist-800-53: [AC-6]}
  - id: TST-02
    title: models only
    severity: low
    target: docker-container
    rationale: r
    applies: container.component == "model"
    rule: container.memory > 0
    remediation: m
    mappings: {nist-800-53: [SC-6]}
  - id: TST-03
    title: icc
    severity: medium
    target: docker-daemon
    rationale: r
    rule: '!daemon.icc'
    evidence: {icc: daemon.icc, version: daemon.version}
    remediation: m
    mappings: {nist-800-53: [SC-7]}
  - id: TST-04
    title: not a bool
    severity: high
    target: host
    rationale: r
    rule: host.sysctl.x
    remediation: m
    mappings: {nist-800-53: [CM-6]}
  - id: TST-05
    title: missing field
    severity: high
    target: host
    rationale: r
    rule: host.nope == 1
    remediation: m
    mappings: {nist-800-53: [CM-6]}
  - id: TST-06
    title: reads the vault
    severity: high
    target: spec
    rationale: r
    rule: spec.ok && vault.ok
    remediation: m
    mappings: {nist-800-53: [AC-6]}
"""


@pytest.fixture
def baseline(tmp_path: Path) -> Any:
    (tmp_path / "b.yaml").write_text(BASELINE)
    return load_baseline(tmp_path)


def facts(**overrides: Any) -> Facts:
    gateway = {"name": "gw", "privileged": False, "component": "gateway", "memory": 0}
    model = {"name": "m", "privileged": True, "component": "model", "memory": 5}
    found = Facts(
        values={
            "daemon": {"icc": True, "version": "20.10"},
            "host": {"sysctl": {"x": 2}},
            "spec": {"ok": True},
        },
        errors={"vault": "vault: unreachable"},
        instances={"container": [("container gw", gateway), ("container m", model)]},
    )
    found.values |= overrides
    return found


def results(report: Any) -> dict[tuple[str, str], Any]:
    return {(r.check.id, r.target): r for r in report.results}


def test_statuses_and_evidence(baseline: Any) -> None:
    report = evaluate(baseline, facts(), enclave="demo")
    found = results(report)
    assert found["TST-01", "container gw"].status is Status.PASS
    model = found["TST-01", "container m"]
    assert model.status is Status.FAIL
    assert model.evidence == {"container.privileged": True}
    assert found["TST-02", "container gw"].status is Status.NOT_APPLICABLE
    assert found["TST-02", "container m"].status is Status.PASS
    daemon = found["TST-03", "docker-daemon"]
    assert (daemon.status, daemon.evidence) == (Status.FAIL, {"icc": True, "version": "20.10"})
    odd = found["TST-04", "host"]
    assert odd.status is Status.ERROR and odd.message == "the rule gave 2, not a bool"
    missing = found["TST-05", "host"]
    assert missing.status is Status.ERROR and "no such fact" in missing.message
    assert missing.evidence == {"host.nope": "<missing>"}
    unreachable = found["TST-06", "spec"]
    assert (unreachable.status, unreachable.message) == (Status.ERROR, "vault: unreachable")
    assert report.counts() == {
        "pass": 2,
        "fail": 2,
        "error": 3,
        "not-applicable": 1,
        "waived": 0,
    }
    assert [r.check.id for r in report.failing(Severity.HIGH)] == ["TST-01"]
    assert {r.check.id for r in report.erroring(Severity.CRITICAL)} == set()
    data = report.as_dict()
    assert data["results"][0]["mappings"]["nist-800-53"] == ["AC-6"]
    assert data["summary"]["error"] == 3


def test_a_collector_error_makes_every_check_reading_it_an_error(baseline: Any) -> None:
    broken = facts()
    del broken.instances["container"]
    broken.errors["container"] = "docker: the Docker engine is unavailable"
    found = results(evaluate(baseline, broken, enclave="demo"))
    for check in ("TST-01", "TST-02"):
        result = found[check, "containers"]
        assert result.status is Status.ERROR, check
        assert result.message == "docker: the Docker engine is unavailable"


def test_a_valid_waiver_turns_a_failure_into_waived_and_is_shown(baseline: Any) -> None:
    valid = Waiver("TST-01", "container m", "vendor driver", "carol", "2099-01-01T00:00:00Z", True)
    ignored = Waiver("TST-03", None, "later", "dan", "2000-01-01T00:00:00Z", False, "expired")
    report = evaluate(baseline, facts(), enclave="demo", waivers=[valid, ignored])
    found = results(report)
    waived = found["TST-01", "container m"]
    assert waived.status is Status.WAIVED and waived.waiver == valid
    assert waived.evidence == {"container.privileged": True}
    assert found["TST-03", "docker-daemon"].status is Status.FAIL
    assert [w["problem"] for w in report.as_dict()["waivers"]] == ["", "expired"]
    # a waiver for another target does not apply
    other = Waiver("TST-01", "container gw", "x", "carol", "2099-01-01T00:00:00Z", True)
    again = results(evaluate(baseline, facts(), enclave="demo", waivers=[other]))
    assert again["TST-01", "container m"].status is Status.FAIL


def test_waivers_are_judged_by_signature_expiry_and_check() -> None:
    key = b"k" * 32
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = (now + timedelta(days=30)).isoformat()
    good = WaiverEntry(check="TST-01", reason="r", approver="carol", expires=later)
    signed = good.model_copy(update={"signature": signature(good, key, "demo")})
    entries = [
        signed,
        good,
        signed.model_copy(update={"reason": "edited"}),
        signed.model_copy(update={"expires": "2025-01-01T00:00:00Z"}),
        signed.model_copy(update={"expires": "tomorrow"}),
        signed.model_copy(update={"check": "TST-99"}),
    ]
    judged = judge(entries, enclave="demo", key=key, key_problem="", now=now, known=["TST-01"])
    assert [(w.valid, w.problem) for w in judged] == [
        (True, ""),
        (False, "unsigned"),
        (False, "bad signature (edited, or signed for another enclave or key)"),
        (False, "expired at 2025-01-01T00:00:00Z"),
        (False, "expires 'tomorrow' is not an ISO 8601 time with a zone"),
        (False, "no check TST-99 in the baseline"),
    ]
    elsewhere = judge([signed], enclave="other", key=key, key_problem="", now=now, known=["TST-01"])
    assert not elsewhere[0].valid
    no_key = judge(
        [signed],
        enclave="demo",
        key=None,
        key_problem="vault: unreachable",
        now=now,
        known=["TST-01"],
    )
    assert no_key[0].problem == "signature not verifiable: vault: unreachable"


def test_signing_a_waivers_file(tmp_path: Path) -> None:
    path = tmp_path / "waivers.yaml"
    path.write_text(
        "apiVersion: enclave.dev/v1alpha1\nkind: Waivers\nwaivers:\n"
        "  - {check: DKR-04, reason: driver, approver: carol, expires: '2099-01-01T00:00:00Z'}\n"
    )
    assert sign_file(path, b"k" * 32, "demo") == ["DKR-04"]
    assert path.stat().st_mode & 0o777 == 0o600
    (entry,) = load_waivers(path)
    assert entry.signature == signature(entry, b"k" * 32, "demo")
    assert sign_file(path, b"k" * 32, "demo") == []  # already signed
    path.write_text("apiVersion: enclave.dev/v1alpha1\nkind: Waivers\nwaivers: [{check: x}]\n")
    with pytest.raises(SpecError) as caught:
        load_waivers(path)
    assert str(caught.value.problems[0]).startswith(f"{path}:3:")
    assert load_waivers(tmp_path / "none.yaml") == []


def test_fact_paths_skip_methods_and_strings() -> None:
    roots = {"container", "spec"}
    assert fact_paths('container.env.exists(e, e == "container.x")', roots) == ("container.env",)
    assert fact_paths("size(container.cap_add) == 0 && spec.a.b > 1", roots) == (
        "container.cap_add",
        "spec.a.b",
    )
    rule = compile_rule("container.ports.all(p, p.host_ip == spec.gateway.listen_host)")
    assert rule.roots == {"container", "spec"}


def test_the_secret_scanner_names_kinds_never_values() -> None:
    scanner = SecretScanner(known=["an-unseal-key-0123456789"])
    assert scanner.kind("hvs.CAESIJ4wBZ8Qy1y0ydrU9NBrG8y9rY1K3") == "vault-token"
    token = "enc_abcdefghijkl_" + "A" * 43
    assert scanner.kind(f"--token={token}") == "enclave-api-token"
    assert scanner.kind("-----BEGIN PRIVATE KEY-----") == "private-key"
    assert scanner.kind("x an-unseal-key-0123456789 y") == "known-secret"
    assert scanner.kind("hunter2hunter2", name="DB_PASSWORD") == "secret-named-variable"
    assert scanner.kind("/run/secrets/db", name="DB_PASSWORD_FILE") is None
    assert scanner.kind("1", name="HF_HUB_DISABLE_TELEMETRY") is None
    assert scanner.kind("/var/lib/enclave", name="ENCLAVE_STATE_DIR") is None
