"""The collectors on real inputs they can get without a service: audit logs written by the real
writer (intact, tampered, re-keyed), drill records, a host laid out in a directory, and the
``docker info`` / ``docker inspect`` shapes the engine returns."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer
from enclave.compliance import Status, default_baseline, evaluate, load_baseline
from enclave.compliance.collectors import (
    audit_facts,
    container_facts,
    daemon_facts,
    drill_facts,
    host_facts,
    local_daemon_settings,
    network_facts,
)
from enclave.compliance.scan import SecretScanner
from support.compliance import compliant_facts

BASELINE = load_baseline(default_baseline())
NOW = datetime.now(UTC)


def write_log(root: Path, events: list[AuditEvent], *, key: Path | None = None) -> Path:
    signer = Ed25519Signer.from_file(key or root.parent / "audit.key", create=True)
    with AuditLog.open(
        root, enclave="demo", signer=signer, settings=AuditSettings(checkpoint_interval=0.05)
    ) as log:
        for event in events:
            log.append(event)
    return root


def judge(*, signer: str | None = None, **values: Any) -> dict[str, Any]:
    """The audit, host and daemon results over the compliant facts with ``values`` replaced
    (``signer``: the key id of the enclave's Vault transit key)."""
    facts = compliant_facts()
    facts.values |= values
    if signer is not None:
        facts.values["vault"]["audit_signer"]["key_id"] = signer
    report = evaluate(BASELINE, facts, enclave="demo")
    return {r.check.id: r for r in report.results if r.target in ("audit", "host", "docker-daemon")}


def test_an_intact_log_passes_and_a_tampered_copy_fails(tmp_path: Path) -> None:
    events = [AuditEvent(actor="alice", action="request.chat", reason=f"r{i}") for i in range(5)]
    log = write_log(tmp_path / "gateway" / "audit", events)
    facts = audit_facts(log, NOW)
    assert facts["intact"] and facts["records"] == 5 and facts["checkpoints"] >= 1
    key_id = Ed25519Signer.from_file(log.parent / "audit.key").key_id
    assert facts["key_id"] == key_id
    assert facts["checkpoint_age_s"] is not None and facts["checkpoint_age_s"] < 60
    results = judge(audit=facts, signer=key_id)
    for check in ("AUD-01", "AUD-02", "AUD-03", "AUD-04"):
        assert results[check].status is Status.PASS, (check, results[check].evidence)

    copy = tmp_path / "copy" / "audit"
    shutil.copytree(log, copy)
    shutil.copy(log.parent / "audit.key", copy.parent / "audit.key")
    segment = sorted(copy.glob("seg-*.jsonl"))[0]
    segment.write_bytes(segment.read_bytes().replace(b'"r2"', b'"r9"'))
    tampered = audit_facts(copy, NOW)
    result = judge(audit=tampered, signer=key_id)["AUD-01"]
    assert result.status is Status.FAIL
    assert result.evidence["finding"] == (
        f"edit at {copy}/seg-0000000000000001.jsonl:3: record does not match its hash"
    )


def test_a_log_signed_with_another_key_than_vaults_fails_the_key_check(tmp_path: Path) -> None:
    log = write_log(tmp_path / "gateway" / "audit", [AuditEvent(actor="a", action="x.y")])
    vaults = Ed25519Signer.from_file(tmp_path / "other.key", create=True).key_id
    facts = audit_facts(log, NOW)
    assert facts["intact"]  # the log itself is consistent ...
    result = judge(audit=facts, signer=vaults)["AUD-03"]
    assert result.status is Status.FAIL  # ... but not signed by the enclave's transit key
    assert result.evidence == {"log_key_id": facts["key_id"], "vault_key_id": vaults}


def test_a_missing_log_fails_and_loose_permissions_fail(tmp_path: Path) -> None:
    missing = audit_facts(tmp_path / "nope", NOW)
    assert judge(audit=missing)["AUD-01"].evidence["finding"] == "no audit log"
    log = write_log(tmp_path / "gateway" / "audit", [AuditEvent(actor="a", action="x.y")])
    log.chmod(0o755)
    facts = audit_facts(log, NOW)
    result = judge(audit=facts)["AUD-04"]
    assert result.status is Status.FAIL and result.evidence["loose"] == ["audit 0755"]


def test_drills_are_read_from_the_controllers_log(tmp_path: Path) -> None:
    log = tmp_path / "controller" / "audit"
    assert drill_facts(log, NOW)["summary"] == "no drill recorded"
    passed = {"passed": True, "latencies_ms": {"deny": 3, "stop": 412.5, "revoke": 20.0}}
    write_log(
        log,
        [
            AuditEvent(actor="controller", action="shutdown.heartbeat"),
            AuditEvent(actor="controller", action="drill.result", details={"passed": False}),
            AuditEvent(actor="controller", action="drill.result", details=passed),
        ],
    )
    facts = drill_facts(log, datetime.now(UTC))
    assert facts["recorded"] and facts["passed"] and facts["log_intact"]
    assert facts["latencies_ms"] == {"deny": 3.0, "stop": 412.5, "revoke": 20.0}
    assert facts["max_latency_ms"] == 412.5 and 0 <= facts["age_s"] < 60
    results = judge(drill=facts)
    assert results["AIS-10"].status is Status.PASS and results["AIS-11"].status is Status.PASS
    assert results["AUD-05"].status is Status.PASS
    stale = judge(drill={**facts, "age_s": (timedelta(days=31)).total_seconds()})["AIS-10"]
    assert stale.status is Status.FAIL

    failed = tmp_path / "failed" / "audit"
    write_log(
        failed,
        [
            AuditEvent(
                actor="controller",
                action="drill.result",
                details={"passed": False, "latencies_ms": {"stop": 1500}},
            )
        ],
    )
    results = judge(drill=drill_facts(failed, NOW))
    assert results["AIS-10"].status is Status.FAIL and results["AIS-11"].status is Status.FAIL
    assert "FAILED" in results["AIS-10"].evidence["drill"]


def _host(root: Path, values: dict[str, str], *, auditd: bool) -> Path:
    for key, value in values.items():
        path = root / "proc" / "sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    if auditd:
        (root / "sbin").mkdir(parents=True)
        (root / "sbin" / "auditd").write_text("")
        (root / "proc" / "77").mkdir(parents=True)
        (root / "proc" / "77" / "comm").write_text("auditd\n")
        rules = root / "etc" / "audit" / "rules.d"
        rules.mkdir(parents=True)
        (rules / "docker.rules").write_text(
            "-w /usr/bin/dockerd -k docker\n-w /var/lib/docker -k docker\n"
            "-a always,exit -F dir=/etc/docker -k docker\n"
        )
    return root


HARDENED = {
    "kernel.randomize_va_space": "2",
    "kernel.kptr_restrict": "1",
    "kernel.dmesg_restrict": "1",
    "kernel.unprivileged_bpf_disabled": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_hardlinks": "1",
    "fs.suid_dumpable": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.rp_filter": "1",
}


@pytest.mark.parametrize("hardened", [True, False])
def test_host_facts_from_a_host_tree(tmp_path: Path, hardened: bool) -> None:
    values = (
        HARDENED
        if hardened
        else {**HARDENED, "kernel.randomize_va_space": "0", "fs.protected_symlinks": "0"}
    )
    root = _host(tmp_path / "root", values, auditd=hardened)
    state = tmp_path / "state"
    (state / "vault").mkdir(parents=True, mode=0o700)
    state.chmod(0o700 if hardened else 0o755)
    socket = tmp_path / "docker.sock"
    socket.write_text("")
    socket.chmod(0o660 if hardened else 0o666)
    facts = host_facts(root=root, docker_socket=socket, state_dir=state, enclave="demo")
    assert facts["sysctl"]["kernel_yama_ptrace_scope"] is None
    results = judge(host=facts)
    for check in ("HST-01", "HST-02", "HST-03", "HST-05", "HST-10", "HST-11"):
        expected = Status.PASS if hardened else Status.FAIL
        assert results[check].status is expected, (check, results[check].evidence)
    if not hardened:
        assert results["HST-03"].evidence == {"host.sysctl.kernel_randomize_va_space": 0}
        assert results["HST-11"].evidence == {"loose": [f"{state} 0755"]}


DOCKER_INFO: dict[str, Any] = {
    "ServerVersion": "20.10.24+dfsg1",
    "LiveRestoreEnabled": False,
    "SecurityOptions": ["name=seccomp,profile=default"],
    "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"]},
    "ExperimentalBuild": False,
    "LoggingDriver": "json-file",
    "DefaultBridge": {"Options": {"com.docker.network.bridge.enable_icc": "true"}},
}


def test_daemon_facts_both_ways() -> None:
    weak = daemon_facts(DOCKER_INFO)
    results = judge(daemon=weak)
    for check in ("DKR-01", "DKR-02", "DKR-03", "DKR-04"):
        assert results[check].status is Status.FAIL, check
    assert results["DKR-05"].status is Status.PASS
    hardened = daemon_facts(
        {
            **DOCKER_INFO,
            "LiveRestoreEnabled": True,
            "SecurityOptions": [
                "name=seccomp,profile=default",
                "name=userns",
                "name=no-new-privileges",
            ],
            "DefaultBridge": {"Options": {"com.docker.network.bridge.enable_icc": "false"}},
        }
    )
    results = judge(daemon=hardened)
    assert all(results[f"DKR-0{i}"].status is Status.PASS for i in range(1, 8))


def test_a_local_engine_s_own_flags_and_config_count_where_docker_info_is_silent(
    tmp_path: Path,
) -> None:
    (tmp_path / "var/run").mkdir(parents=True)
    (tmp_path / "var/run/docker.pid").write_text("4242\n")
    (tmp_path / "proc/4242").mkdir(parents=True)
    cmdline = b"/usr/sbin/dockerd\0--live-restore\0--icc=false\0--no-new-privileges\0"
    (tmp_path / "proc/4242/cmdline").write_bytes(cmdline)
    local = local_daemon_settings(tmp_path)
    assert local["flags"][-1] == "--no-new-privileges"
    assert daemon_facts(DOCKER_INFO, local)["no_new_privileges"] is True
    assert judge(daemon=daemon_facts(DOCKER_INFO, local))["DKR-03"].status is Status.PASS

    (tmp_path / "proc/4242/cmdline").write_bytes(b"/usr/sbin/dockerd\0--live-restore\0")
    assert daemon_facts(DOCKER_INFO, local_daemon_settings(tmp_path))["no_new_privileges"] is False
    (tmp_path / "etc/docker").mkdir(parents=True)
    (tmp_path / "etc/docker/daemon.json").write_text('{"no-new-privileges": true}')
    assert daemon_facts(DOCKER_INFO, local_daemon_settings(tmp_path))["no_new_privileges"] is True
    (tmp_path / "etc/docker/daemon.json").write_text("not json")
    assert local_daemon_settings(tmp_path)["config"] == {}
    assert local_daemon_settings(tmp_path / "nothing") == {"flags": [], "config": {}}


def test_container_facts_normalise_an_inspect() -> None:
    attrs = {
        "Id": "c" * 64,
        "Name": "/weak",
        "Image": "sha256:" + "a" * 64,
        "Config": {
            "Image": "debian:12",
            "User": "",
            "Env": ["PATH=/usr/bin", "VAULT_TOKEN=hvs.CAESIJ4wBZ8Qy1y0ydrU9NBrG8y9rY1K3"],
            "Cmd": ["sleep", "60"],
            "Labels": {"db-password": "hunter2hunter2"},
        },
        "HostConfig": {"CapAdd": ["NET_ADMIN"], "PidMode": "host", "SecurityOpt": None},
        "Mounts": [{"Type": "bind", "Source": "/etc", "Destination": "/e", "RW": False}],
        "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3000"}]}},
        "State": {"Status": "running", "Running": True},
    }
    facts = container_facts(attrs, {}, SecretScanner())
    assert facts["runs_as_root"] and facts["uid"] == 0 and facts["seccomp"] == "default"
    assert facts["env_secrets"] == ["VAULT_TOKEN: vault-token"]
    assert facts["label_secrets"] == ["db-password: secret-named-variable"]
    assert "hvs." not in str(facts)  # where and what kind, never the value
    assert facts["ports"] == [{"container_port": "80/tcp", "host_ip": "0.0.0.0", "host_port": 3000}]
    assert facts["image"]["found"] is False and not facts["has_weights"]
    network = network_facts(
        {
            "Id": "d" * 64,
            "Name": "n",
            "Options": {},
            "Containers": {"c" * 64: {"Name": "weak"}, "e" * 64: {"Name": "x"}},
        },
        ["c" * 64],
    )
    assert network["bridge"] == "br-dddddddddddd" and network["ip_masquerade"] is True
    assert network["members"] == [{"name": "weak", "ours": True}, {"name": "x", "ours": False}]
