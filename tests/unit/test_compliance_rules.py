"""Every check of the shipped baseline, both ways, on facts (no service needed).

The compliant facts were recorded from a real enclave (``support.compliance``); each entry of
:data:`BREAKS` changes them the way a real fault would and the check must then fail, with
evidence that shows the change. A test makes sure no check is left without its break.
The container, Vault and audit breaks are also made for real in the integration and e2e tests
(``test_compliance_*``); the privileged container only here, since none can start on CI hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from enclave.compliance import Baseline, Facts, Status, default_baseline, evaluate, load_baseline
from enclave.compliance.model import CheckResult
from support.compliance import compliant_facts, instance

BASELINE: Baseline = load_baseline(default_baseline())


def gw(f: Facts) -> dict[str, Any]:
    return instance(f, "container", "gateway")


def model(f: Facts) -> dict[str, Any]:
    return instance(f, "container", "model")


def net(f: Facts, role: str) -> dict[str, Any]:
    return instance(f, "network", role)


def mount(source: str, destination: str, *, rw: bool = False) -> dict[str, Any]:
    return {
        "type": "bind",
        "source": source,
        "destination": destination,
        "rw": rw,
        "propagation": "rprivate",
    }


def _vault_policy(f: Facts, component: str) -> dict[str, Any]:
    (found,) = [p for p in f.values["vault"]["policies"] if component in p["components"]]
    policy: dict[str, Any] = found
    return policy


def _set(target: dict[str, Any], **values: Any) -> None:
    target.update(values)


BREAKS: dict[str, tuple[str, Callable[[Facts], None]]] = {
    # container runtime
    "CTR-01": ("model", lambda f: _set(model(f), privileged=True)),
    "CTR-02": ("model", lambda f: _set(model(f), cap_drop=[])),
    "CTR-03": ("gateway", lambda f: _set(gw(f), cap_add=["NET_ADMIN"])),
    "CTR-04": ("gateway", lambda f: _set(gw(f), no_new_privileges=False)),
    "CTR-05": ("model", lambda f: _set(model(f), seccomp="unconfined")),
    "CTR-06": ("model", lambda f: _set(model(f), user="", uid=0, runs_as_root=True)),
    "CTR-07": ("model", lambda f: _set(model(f), read_only_rootfs=False)),
    "CTR-08": ("model", lambda f: _set(model(f), network_mode="host")),
    "CTR-09": ("model", lambda f: _set(model(f), pid_mode="host")),
    "CTR-10": ("model", lambda f: _set(model(f), ipc_mode="host")),
    "CTR-11": ("model", lambda f: _set(model(f), uts_mode="host")),
    "CTR-12": ("model", lambda f: _set(model(f), memory=0, memory_swap=0)),
    "CTR-13": ("model", lambda f: _set(model(f), nano_cpus=0, cpu_quota=0)),
    "CTR-14": ("model", lambda f: _set(model(f), pids_limit=-1)),
    "CTR-15": (
        "gateway",
        lambda f: gw(f)["mounts"].append(
            mount("/var/run/docker.sock", "/var/run/docker.sock", rw=True)
        ),
    ),
    "CTR-16": ("model", lambda f: model(f)["mounts"].append(mount("/etc", "/host-etc"))),
    "CTR-17": (
        "model",
        lambda f: _set(model(f), mounts=[{**m, "rw": True} for m in model(f)["mounts"]]),
    ),
    "CTR-18": ("model", lambda f: _set(model(f), devices=["/dev/kmsg:/dev/kmsg"])),
    "CTR-19": (
        "model",
        lambda f: _set(
            model(f), mounts=[{**m, "propagation": "rshared"} for m in model(f)["mounts"]]
        ),
    ),
    "CTR-20": (
        "gateway",
        lambda f: _set(
            gw(f), ports=[{"container_port": "8443/tcp", "host_ip": "0.0.0.0", "host_port": 8443}]
        ),
    ),
    "CTR-21": ("model", lambda f: _set(model(f), networks=[*model(f)["networks"], "bridge"])),
    "CTR-22": ("gateway", lambda f: gw(f)["image"].update(tag_current=False)),
    "CTR-23": ("model", lambda f: f.values["host"].update(apparmor=True)),
    "CTR-24": ("model", lambda f: _set(model(f), log_max_size="")),
    # networks and firewall
    "NET-01": ("internal", lambda f: _set(net(f, "internal"), internal=False)),
    "NET-02": ("ingress", lambda f: _set(net(f, "ingress"), ip_masquerade=True)),
    "NET-03": ("internal", lambda f: _set(net(f, "internal"), ipv6=True)),
    "NET-04": (
        "internal",
        lambda f: net(f, "internal")["members"].append({"name": "intruder", "ours": False}),
    ),
    "NET-05": ("internal", lambda f: f.values["firewall"].update(isolated_bridges=[])),
    "NET-06": (
        "host",
        lambda f: f.values["firewall"].update(
            problems=["ipv4: rule missing: -A INPUT -i br-x -j ENCLAVE-demo"]
        ),
    ),
    "NET-07": (
        "model",
        lambda f: _set(model(f), networks=[*model(f)["networks"], "enclave-other-internal"]),
    ),
    "NET-08": ("model", lambda f: _set(model(f), networks=["enclave-demo-ingress"])),
    "NET-09": ("spec", lambda f: f.values["spec"]["gateway"].update(listen_host="0.0.0.0")),
    # secrets
    "SEC-01": ("gateway", lambda f: _set(gw(f), env_secrets=["VAULT_TOKEN: vault-token"])),
    "SEC-02": ("model", lambda f: _set(model(f), arg_secrets=["argv[7]: enclave-api-token"])),
    "SEC-03": ("model", lambda f: _set(model(f), label_secrets=["db-password: secret-named"])),
    "SEC-04": ("gateway", lambda f: gw(f)["image"].update(secrets=["history[3]: private-key"])),
    # Vault
    "VLT-01": ("vault", lambda f: f.values["vault"].update(sealed=True)),
    "VLT-02": ("vault", lambda f: f.values["vault"].update(root_token_live=True)),
    "VLT-03": (
        "vault",
        lambda f: _vault_policy(f, "gateway")["rules"].append(
            {"path": "enclave-demo-kv/data/x", "capabilities": ["read", "sudo"]}
        ),
    ),
    "VLT-04": (
        "vault",
        lambda f: _vault_policy(f, "model-assistant")["rules"].append(
            {"path": "*", "capabilities": ["read"]}
        ),
    ),
    "VLT-05": (
        "vault",
        lambda f: f.values["vault"]["roles"][0].update(
            token_policies=["enclave-demo-gateway", "enclave-demo-controller"]
        ),
    ),
    "VLT-06": (
        "vault",
        lambda f: f.values["vault"]["roles"][1].update(token_no_default_policy=False),
    ),
    "VLT-07": ("vault", lambda f: f.values["vault"]["auth_mounts"][0].update(max_lease_ttl=0)),
    "VLT-08": ("vault", lambda f: f.values["vault"]["roles"][2].update(secret_id_num_uses=0)),
    "VLT-09": ("vault", lambda f: f.values["vault"].update(audit_devices=[])),
    "VLT-10": ("vault", lambda f: f.values["vault"]["audit_signer"].update(exportable=True)),
    "VLT-11": ("vault", lambda f: f.values["vault"].update(control_key_present=False)),
    # host
    "HST-01": ("host", lambda f: f.values["host"]["auditd"].update(running=False)),
    "HST-02": ("host", lambda f: f.values["host"]["auditd"].update(watches=["/etc/docker"])),
    "HST-03": ("host", lambda f: f.values["host"]["sysctl"].update(kernel_randomize_va_space=1)),
    "HST-04": ("host", lambda f: f.values["host"]["sysctl"].update(kernel_kptr_restrict=0)),
    "HST-05": ("host", lambda f: f.values["host"]["sysctl"].update(fs_protected_symlinks=0)),
    "HST-06": ("host", lambda f: f.values["host"]["sysctl"].update(fs_suid_dumpable=2)),
    "HST-07": (
        "host",
        lambda f: f.values["host"]["sysctl"].update(net_ipv4_conf_all_send_redirects=1),
    ),
    "HST-08": ("host", lambda f: f.values["host"]["sysctl"].update(net_ipv4_conf_all_rp_filter=0)),
    "HST-09": (
        "host",
        lambda f: f.values["host"]["sysctl"].update(kernel_unprivileged_bpf_disabled=None),
    ),
    "HST-10": (
        "host",
        lambda f: f.values["host"]["docker_socket"].update(mode="0666", world_accessible=True),
    ),
    "HST-11": (
        "host",
        lambda f: f.values["host"]["state_files"].update(
            loose=["/var/lib/enclave/vault/init.json 0644"]
        ),
    ),
    # the Docker daemon
    "DKR-01": ("docker-daemon", lambda f: f.values["daemon"].update(icc=True)),
    "DKR-02": ("docker-daemon", lambda f: f.values["daemon"].update(live_restore=False)),
    "DKR-03": ("docker-daemon", lambda f: f.values["daemon"].update(no_new_privileges=False)),
    "DKR-04": ("docker-daemon", lambda f: f.values["daemon"].update(userns_remap=False)),
    "DKR-05": (
        "docker-daemon",
        lambda f: f.values["daemon"].update(
            seccomp_profile="unconfined", security_options=["name=seccomp,profile=unconfined"]
        ),
    ),
    "DKR-06": (
        "docker-daemon",
        lambda f: f.values["daemon"].update(insecure_registries=["127.0.0.0/8", "10.0.0.0/8"]),
    ),
    "DKR-07": ("docker-daemon", lambda f: f.values["daemon"].update(experimental=True)),
    # AI safeguards
    "AIS-01": (
        "gateway",
        lambda f: f.values["gateway"]["bundle"].update(
            screened=["domestic-mass-surveillance", "kinetic-control"]
        ),
    ),
    "AIS-02": (
        "spec",
        lambda f: f.values["spec"].update(
            prohibited=["domestic-mass-surveillance", "kinetic-control"]
        ),
    ),
    "AIS-03": ("gateway", lambda f: f.values["gateway"]["bundle"].update(spec_sha256="0" * 64)),
    "AIS-04": (
        "spec",
        lambda f: f.values["spec"].update(
            classification="secret",
            classification_rank=3,
            permitted=[*f.values["spec"]["permitted"], "training-simulation"],
        ),
    ),
    "AIS-05": (
        "spec",
        lambda f: f.values["spec"].update(
            principals=[
                {**p, "actions": [a for a in p["actions"] if a != "approve"]}
                for p in f.values["spec"]["principals"]
            ]
        ),
    ),
    "AIS-06": ("spec", lambda f: f.values["spec"]["principals"][0]["actions"].append("approve")),
    "AIS-07": ("spec", lambda f: f.values["spec"]["shutdown"].update(resume_approvals=1)),
    "AIS-08": ("spec", lambda f: f.values["spec"]["shutdown"].update(lease_s=60.0)),
    "AIS-09": ("gateway", lambda f: f.values["gateway"].update(controller_running=False)),
    "AIS-10": ("audit", lambda f: f.values["drill"].update(age_s=90 * 86400.0)),
    "AIS-11": (
        "audit",
        lambda f: f.values["drill"].update(latencies_ms={"stop": 5200.0}, max_latency_ms=5200.0),
    ),
    "AIS-12": ("model", lambda f: model(f)["weights"].update(actual_sha256="0" * 64)),
    "AIS-13": ("spec", lambda f: f.values["spec"].update(owner="")),
    "AIS-14": ("spec", lambda f: f.values["spec"]["audit"].update(store_content=True)),
    "AIS-15": ("spec", lambda f: f.values["spec"]["compliance"].update(interval_s=86400.0)),
    # audit logs
    "AUD-01": (
        "audit",
        lambda f: f.values["audit"].update(
            intact=False, finding="edit at seg-0000000000000001.jsonl:3: record hash mismatch"
        ),
    ),
    "AUD-02": (
        "audit",
        lambda f: f.values["audit"].update(unsigned_records=7, checkpoint_age_s=3600.0),
    ),
    "AUD-03": ("audit", lambda f: f.values["audit"].update(key_id="ffffffffffffffff")),
    "AUD-04": (
        "audit",
        lambda f: f.values["audit"].update(
            private=False, loose=["seg-0000000000000001.jsonl 0644"]
        ),
    ),
    "AUD-05": ("audit", lambda f: f.values["drill"].update(log_intact=False)),
}


def judged(facts: Facts) -> dict[tuple[str, str], CheckResult]:
    report = evaluate(BASELINE, facts, enclave="demo")
    return {(r.check.id, r.target): r for r in report.results}


def target_of(results: dict[tuple[str, str], CheckResult], check: str, part: str) -> CheckResult:
    (found,) = [r for (c, t), r in results.items() if c == check and part in t]
    return found


def test_every_check_has_a_break() -> None:
    assert sorted(BREAKS) == sorted(BASELINE.ids)


def test_the_compliant_facts_pass_every_check() -> None:
    results = judged(compliant_facts())
    bad = {
        k: (r.status.value, r.message, r.evidence)
        for k, r in results.items()
        if r.status not in (Status.PASS, Status.NOT_APPLICABLE)
    }
    assert not bad
    # each check judged every target it should: 2 containers, 2 networks, else one
    assert len(results) == sum(
        2
        if c.check.target.value.startswith("docker-") and c.check.target.value != "docker-daemon"
        else 1
        for c in BASELINE.checks
    )


@pytest.mark.parametrize("check", sorted(BREAKS))
def test_each_check_fails_on_its_break_with_evidence(check: str) -> None:
    part, breaker = BREAKS[check]
    good = target_of(judged(compliant_facts()), check, part)
    facts = compliant_facts()
    breaker(facts)
    bad = target_of(judged(facts), check, part)
    assert bad.status is Status.FAIL, (bad.status, bad.message, bad.evidence)
    assert bad.evidence != good.evidence, "the evidence must show what changed"
    assert bad.check.remediation and bad.check.mappings.nist_800_53


def test_a_missing_drill_fails_never_passes() -> None:
    facts = compliant_facts()
    facts.values["drill"] = {
        "log": "/var/lib/enclave/enclaves/demo/controller/audit",
        "log_exists": False,
        "log_intact": False,
        "log_finding": "",
        "recorded": False,
        "summary": "no drill recorded",
        "time": "",
        "age_s": None,
        "passed": False,
        "latencies_ms": {},
        "max_latency_ms": None,
    }
    results = judged(facts)
    for check in ("AIS-10", "AIS-11"):
        result = results[check, "audit"]
        assert result.status is Status.FAIL
        assert result.evidence["drill"] == "no drill recorded"
    assert results["AUD-05", "audit"].status is Status.NOT_APPLICABLE


def test_an_unreachable_source_is_an_error_for_every_check_reading_it() -> None:
    facts = compliant_facts()
    del facts.values["vault"]
    facts.errors["vault"] = "vault: vault: the embedded Vault is not running"
    results = judged(facts)
    vault_checks = [c.check.id for c in BASELINE.checks if c.check.id.startswith("VLT-")]
    for check in vault_checks:
        assert results[check, "vault"].status is Status.ERROR
        assert results[check, "vault"].message == "vault: vault: the embedded Vault is not running"
    # AUD-03 compares the gateway's audit log with Vault's transit key: it reads Vault too
    assert results["AUD-03", "audit"].status is Status.ERROR
    assert all(
        r.status is not Status.ERROR
        for (c, _), r in results.items()
        if c[:3] != "VLT" and c != "AUD-03"
    )
