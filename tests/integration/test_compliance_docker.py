"""The container checks on a real ``docker inspect`` of a deliberately weak container.

The test starts the container itself (an added capability, writable root, no limits, the host's
PID/IPC/UTS namespaces, /etc and the Docker socket mounted, a port on every interface, secrets
in its environment, arguments and labels, on Docker's default bridge), labels it as a member
of a made-up enclave, and collects its facts the way ``enclave check`` does -- through
:meth:`DockerBackend.inspect_all` -- then judges the baseline's container checks. A privileged
container cannot start on CI hosts: that check is proven on facts in the unit tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from enclave.backends.base import LABEL_COMPONENT, LABEL_NAME
from enclave.backends.docker import DockerBackend
from enclave.compliance import Status, default_baseline, evaluate, load_baseline
from enclave.compliance.collectors import container_facts, daemon_facts
from enclave.compliance.scan import SecretScanner
from support.compliance import compliant_facts
from support.docker_engine import TEST_LABEL

if TYPE_CHECKING:
    from docker import DockerClient

    from support.docker_engine import DockerResources

pytestmark = pytest.mark.docker

BASELINE = load_baseline(default_baseline())
VAULT_TOKEN = "hvs.CAESIJ4wBZ8Qy1y0ydrU9NBrG8y9rY1K3x"
API_TOKEN = "enc_abcdefghijkl_" + "Q" * 43


def test_a_weak_container_fails_the_container_checks_with_evidence(
    docker_client: DockerClient,
    docker_resources: DockerResources,
    base_image: str,
    tmp_path: Path,
) -> None:
    enclave = f"weak{uuid.uuid4().hex[:6]}"
    writable = tmp_path / "rw"
    writable.mkdir()
    container = docker_client.containers.create(
        base_image,
        ["-c", "sleep 60", API_TOKEN],
        entrypoint=["/bin/sh"],
        name=docker_resources.name("weak"),
        labels={
            TEST_LABEL: docker_resources.run_id,
            LABEL_NAME: enclave,
            LABEL_COMPONENT: "model",
            "db-password": "hunter2hunter2",
        },
        environment={"VAULT_TOKEN": VAULT_TOKEN},
        cap_add=["NET_ADMIN"],
        security_opt=["seccomp=unconfined"],
        pid_mode="host",
        ipc_mode="host",
        uts_mode="host",
        devices=["/dev/zero:/dev/xzero:r"],
        ports={"8080/tcp": None},
        volumes={
            "/etc": {"bind": "/host-etc", "mode": "ro"},
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"},
            str(writable): {"bind": "/data", "mode": "rw"},
        },
        detach=True,
    )
    assert container.id
    docker_resources.container_ids.append(container.id)
    container.start()

    backend = DockerBackend(docker_client)
    (attrs,) = backend.inspect_all(enclave)
    images = backend.inspect_images([attrs["Image"], attrs["Config"]["Image"]])
    weak = container_facts(attrs, images, SecretScanner())
    facts = compliant_facts()
    facts.instances["container"] = [(f"container {weak['name']}", weak)]
    facts.values["containers"] = [weak]
    report = evaluate(BASELINE, facts, enclave=enclave)
    results: dict[str, Any] = {
        r.check.id: r for r in report.results if r.target == f"container {weak['name']}"
    }

    failing = {
        "CTR-02": {"container.cap_drop": []},
        "CTR-03": {"container.cap_add": ["NET_ADMIN"]},
        "CTR-04": {"container.no_new_privileges": False},
        "CTR-05": {"container.seccomp": "unconfined"},
        "CTR-06": {"container.runs_as_root": True},
        "CTR-07": {"container.read_only_rootfs": False},
        "CTR-09": {"container.pid_mode": "host"},
        "CTR-10": {"container.ipc_mode": "host"},
        "CTR-11": {"container.uts_mode": "host", "container.userns_mode": ""},
        "CTR-12": {"container.memory": 0, "container.memory_swap": 0},
        "CTR-13": {"container.nano_cpus": 0, "container.cpu_quota": 0},
        "CTR-14": {"container.pids_limit": 0},
        "CTR-18": {"container.devices": ["/dev/zero:/dev/xzero"]},
        "CTR-24": {"container.log_driver": "json-file", "container.log_max_size": ""},
        "SEC-01": {"container.env_secrets": ["VAULT_TOKEN: vault-token"]},
        "SEC-02": {"container.arg_secrets": ["argv[3]: enclave-api-token"]},
        "SEC-03": {"container.label_secrets": ["db-password: secret-named-variable"]},
    }
    for check, evidence in failing.items():
        assert results[check].status is Status.FAIL, (check, results[check].evidence)
        assert results[check].evidence == evidence, check
    assert "hvs." not in str(report.as_dict()) and API_TOKEN not in str(report.as_dict())

    socket = results["CTR-15"]
    assert socket.status is Status.FAIL
    assert [m["source"] for m in socket.evidence["sockets"]] == ["/var/run/docker.sock"]
    sensitive = results["CTR-16"]
    assert sensitive.status is Status.FAIL
    assert [m["source"] for m in sensitive.evidence["sensitive_mounts"]] == ["/etc"]
    writable_mounts = results["CTR-17"]
    assert writable_mounts.status is Status.FAIL
    assert writable_mounts.evidence["writable"] == [f"{writable} -> /data"]
    published = results["CTR-20"]
    assert published.status is Status.FAIL
    ports = published.evidence["ports"]  # on every interface (0.0.0.0, and :: where IPv6 is)
    assert {p["container_port"] for p in ports} == {"8080/tcp"}
    assert "0.0.0.0" in {p["host_ip"] for p in ports}
    assert results["CTR-21"].status is Status.FAIL
    assert results["CTR-21"].evidence["container.networks"] == ["bridge"]
    assert results["NET-07"].status is Status.FAIL
    assert results["NET-07"].evidence["networks"] == ["bridge"]
    # what it does not do wrong, it is not blamed for
    assert results["CTR-01"].status is Status.PASS
    assert results["CTR-08"].status is Status.PASS
    assert results["AIS-12"].status is Status.FAIL  # a model without weights
    assert results["AIS-12"].evidence == {"weights": {}}


def test_the_engines_settings_are_read_as_they_are(docker_client: DockerClient) -> None:
    info = DockerBackend(docker_client).engine_info()
    facts = daemon_facts(info)
    assert facts["version"] == docker_client.version()["Version"]
    assert facts["live_restore"] is bool(info.get("LiveRestoreEnabled"))
    bridge = docker_client.api.inspect_network("bridge")
    assert facts["icc"] is (
        bridge["Options"].get("com.docker.network.bridge.enable_icc") != "false"
    )
    report = evaluate(BASELINE, _with(daemon=facts), enclave="x")
    icc = next(r for r in report.results if r.check.id == "DKR-01")
    assert icc.status is (Status.FAIL if facts["icc"] else Status.PASS)


def _with(**values: Any) -> Any:
    facts = compliant_facts()
    facts.values |= values
    return facts
