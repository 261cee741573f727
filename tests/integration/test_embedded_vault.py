"""The embedded OpenBao default against the real ``bao`` binary.

Each server lives in a temporary state directory of its own (one per test, or one per module
for the tests that leave it running and valid) and is stopped at teardown through
``EmbeddedVault.stop()``, which signals only the pid enclave recorded and verified; nothing is
ever killed by name or pattern.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

import enclave.vault.provision as provision_module
from enclave.cli.main import main
from enclave.errors import VaultError, VaultForbiddenError, VaultUnavailableError
from enclave.spec import load_spec
from enclave.vault.client import VaultConnection, anonymous, connect, translate
from enclave.vault.embedded import (
    SERVICE_GID,
    SERVICE_UID,
    SOCKET_DIR_MODE,
    SOCKET_MODE,
    EmbeddedVault,
)
from enclave.vault.policies import ADMIN_POLICY
from enclave.vault.provision import provision
from support.openbao import write_kv2_when_ready
from support.workspace import make_workspace

pytestmark = [pytest.mark.vault, pytest.mark.timeout(90)]

COLD_START_BUDGET_S = 5.0
TEST_KV = "enclave-test-kv"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _port(vault: EmbeddedVault) -> int:
    return int(json.loads(vault.state_file.read_text())["port"])


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[EmbeddedVault]:
    """An embedded Vault in its own state dir, not started; stopped at teardown."""
    vault = EmbeddedVault(tmp_path / "state")
    try:
        yield vault
    finally:
        vault.stop()


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedVault]:
    """One started embedded Vault, shared by the tests that leave it running and valid."""
    vault = EmbeddedVault(tmp_path_factory.mktemp("embedded") / "state")
    try:
        vault.start()
        yield vault
    finally:
        vault.stop()


@pytest.fixture
def admin(started: EmbeddedVault) -> Iterator[Any]:
    client = started.admin_client()
    try:
        yield client
    finally:
        client.adapter.close()


def test_cold_start_initialises_and_unseals_within_budget(fresh: EmbeddedVault) -> None:
    began = time.monotonic()
    status = fresh.start()
    took = time.monotonic() - began

    assert status.running
    assert status.bootstrapped
    assert status.initialized is True
    assert status.sealed is False
    assert str(status.version).startswith("2.")
    assert status.address == f"https://127.0.0.1:{_port(fresh)}"
    assert took <= COLD_START_BUDGET_S, f"cold start took {took:.2f} s"
    assert fresh.status() == dataclasses.replace(status, bootstrapped=False)


def test_files_are_private_and_the_keys_come_with_a_warning(started: EmbeddedVault) -> None:
    directory = started.directory
    for sub in ("", "data", "audit", "tls"):
        assert _mode(directory / sub) == 0o700, sub
    for name in (
        "init.json",
        "admin.token",
        "vault.json",
        "config.hcl",
        "server.log",
        "audit/audit.log",
        "tls/ca.key",
        "tls/server.key",
    ):
        assert _mode(directory / name) == 0o600, name
    assert _mode(directory / "tls/ca.pem") == 0o644

    init = json.loads(started.init_file.read_text())
    assert init["unseal_shares"] == 3
    assert init["unseal_threshold"] == 2
    assert len(init["unseal_keys_b64"]) == 3
    assert init["root_token_revoked"] is True

    readme = started.readme.read_text()
    assert "SINGLE-HOST DEFAULT" in readme
    assert "production" in readme.lower()
    assert "same disk" in readme.lower()


def test_the_listener_speaks_only_tls_trusting_our_ca(started: EmbeddedVault) -> None:
    port = _port(started)
    plain = requests.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=5)
    assert plain.status_code == 400  # Go's answer to plain HTTP on a TLS port
    assert "initialized" not in plain.text

    system_trust = anonymous(VaultConnection(f"https://127.0.0.1:{port}"))
    try:
        with pytest.raises(VaultUnavailableError, match="TLS"), translate("health"):
            system_trust.sys.read_health_status(method="GET")
    finally:
        system_trust.adapter.close()

    ours = anonymous(started.connection())
    try:
        with translate("health"):
            assert ours.sys.read_health_status(method="GET")["sealed"] is False
    finally:
        ours.adapter.close()

    context = ssl.create_default_context(cafile=str(started.tls.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_a_renewed_server_certificate_is_served_after_start(started: EmbeddedVault) -> None:
    """A certificate that is no longer acceptable is reissued and the server told to reload."""
    (started.tls.server_cert).write_bytes(b"not a certificate")  # forces a new one
    started.start()
    on_disk = x509.load_pem_x509_certificate(started.tls.server_cert.read_bytes())
    served = b""
    for _ in range(100):  # the reload is asynchronous (SIGHUP)
        served = ssl.get_server_certificate(("127.0.0.1", _port(started)), timeout=5).encode()
        if x509.load_pem_x509_certificate(served).serial_number == on_disk.serial_number:
            break
        time.sleep(0.05)
    assert x509.load_pem_x509_certificate(served).serial_number == on_disk.serial_number


def test_a_changed_config_restarts_the_server_with_ours(started: EmbeddedVault) -> None:
    """E.g. a crash during admin-token recovery left the generate-root endpoints open."""
    before = started.start()
    ours = started.config.read_text()
    started.config.write_text(
        ours.replace(
            "disable_unauthed_generate_root_endpoints = true",
            "disable_unauthed_generate_root_endpoints = false",
        )
    )
    after = started.start()
    assert after.pid != before.pid
    assert after.sealed is False
    assert started.config.read_text() == ours
    _assert_generate_root_closed(started)


def _assert_generate_root_closed(vault: EmbeddedVault) -> None:
    client = anonymous(vault.connection())
    try:
        with pytest.raises(VaultError, match="unsupported"), translate("generate-root"):
            client.sys.read_root_generation_progress()
    finally:
        client.adapter.close()


# A child that speaks HTTP to the socket in its working directory, with the standard library
# only (it runs as another user, who cannot read this interpreter's virtualenv). The magic link
# /proc/self/cwd reaches the directory without the search permission its parents would need,
# the way a bind mount does inside a container.
PROBE = """
import socket
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect("/proc/self/cwd/bao.sock")
except OSError as exc:
    print("refused", exc.errno)
else:
    sock.sendall(b"GET /v1/sys/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
    print(sock.recv(64).split(b"\\r\\n")[0].decode())
"""
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _probe_as(uid: int, gid: int, directory: Path) -> str:
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", PROBE],
        cwd=directory,  # entered as root, before the child drops to uid:gid
        user=uid,
        group=gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_the_unix_listener_admits_the_service_user_and_no_one_else(
    started: EmbeddedVault,
) -> None:
    assert stat.S_IMODE(started.socket_dir.stat().st_mode) == SOCKET_DIR_MODE == 0o750
    assert stat.S_IMODE(started.socket_path.stat().st_mode) == SOCKET_MODE == 0o660
    assert started.socket_path.is_socket()
    if os.geteuid() == 0:
        for path in (started.socket_dir, started.socket_path):
            assert (path.stat().st_uid, path.stat().st_gid) == (0, SERVICE_GID)
    config = started.config.read_text()
    assert 'socket_group = "10001"' in config
    assert "disable_unauthed_generate_root_endpoints = true" in config.partition('"unix"')[2]

    health = anonymous(started.socket_connection())
    try:
        with translate("health over the socket"):
            assert health.sys.read_health_status(method="GET")["sealed"] is False
    finally:
        health.adapter.close()

    if os.geteuid() != 0 or not SYSTEM_PYTHON.is_file():
        pytest.skip("trying other users needs root and /usr/bin/python3")
    assert _probe_as(SERVICE_UID, SERVICE_GID, started.socket_dir) == "HTTP/1.0 200 OK"
    assert _probe_as(SERVICE_UID + 1, SERVICE_GID + 1, started.socket_dir) == "refused 13"
    # the group is the boundary: any member gets in (on the host, gid 10001 must be kept for
    # enclave's service containers)
    assert _probe_as(SERVICE_UID + 1, SERVICE_GID, started.socket_dir) == "HTTP/1.0 200 OK"


def test_a_config_from_an_earlier_version_gets_the_unix_listener(started: EmbeddedVault) -> None:
    before = started.start()
    ours = started.config.read_text()
    head, _, rest = ours.partition('listener "unix" {')
    _, _, tail = rest.partition("}\n")
    started.config.write_text(head + tail.lstrip("\n"))  # what an earlier version wrote
    started.socket_path.unlink()  # and it never had a socket
    after = started.start()
    assert after.pid != before.pid
    assert started.config.read_text() == ours
    assert started.socket_path.is_socket()


def test_a_lost_socket_is_recreated_by_a_restart(started: EmbeddedVault) -> None:
    before = started.start()
    started.socket_path.unlink()
    after = started.start()
    assert after.pid != before.pid
    assert started.socket_path.is_socket()
    again = started.start()
    assert again.pid == after.pid


def test_a_socket_path_too_long_for_linux_is_a_clear_error(tmp_path: Path) -> None:
    vault = EmbeddedVault(tmp_path / ("d" * 120))
    with pytest.raises(VaultError, match="longer than 107 bytes"):
        vault.start()
    assert not vault.state_file.exists() or vault.status().pid is None


def test_the_initial_root_token_is_revoked(started: EmbeddedVault) -> None:
    root = json.loads(started.init_file.read_text())["root_token"]
    with pytest.raises(VaultForbiddenError):
        connect(started.connection(), root)


def test_the_admin_token_is_scoped_to_enclave_objects(started: EmbeddedVault, admin: Any) -> None:
    with translate("lookup"):
        info = admin.auth.token.lookup_self()["data"]
    assert info["policies"] == [ADMIN_POLICY]
    assert info["orphan"] is True
    assert info["renewable"] is True
    assert info["period"] > 0
    assert started.admin_token_file.read_text().strip() not in started.audit_log.read_text()

    name = f"enclave-scope-{secrets.token_hex(3)}"
    with translate("write an enclave policy"):
        admin.sys.create_or_update_acl_policy(name=f"{name}-gateway", policy='path "x" {}')
        admin.sys.delete_acl_policy(name=f"{name}-gateway")
    with pytest.raises(VaultForbiddenError), translate("write policy other"):
        admin.sys.create_or_update_acl_policy(
            name="other", policy='path "*" { capabilities = ["sudo"] }'
        )
    with pytest.raises(VaultForbiddenError), translate("rewrite its own policy"):
        admin.sys.create_or_update_acl_policy(name=ADMIN_POLICY, policy='path "*" {}')
    with pytest.raises(VaultForbiddenError), translate("mount outside enclave-*"):
        admin.sys.enable_secrets_engine("kv", path="other-kv", options={"version": "2"})
    with pytest.raises(VaultForbiddenError), translate("enable auth outside enclave-*"):
        admin.sys.enable_auth_method("approle", path="other-approle")
    with pytest.raises(VaultForbiddenError), translate("create a token"):
        admin.auth.token.create(policies=[ADMIN_POLICY])


def test_start_twice_reuses_the_running_server(started: EmbeddedVault) -> None:
    first = started.start()
    second = started.start()
    assert first.pid == second.pid
    assert first.address == second.address
    assert not first.bootstrapped
    assert not second.bootstrapped


def test_the_audit_device_records_requests(started: EmbeddedVault, admin: Any) -> None:
    with translate("read mounts"):
        admin.sys.list_mounted_secrets_engines()
    entries = [json.loads(line) for line in started.audit_log.read_text().splitlines() if line]
    paths = {e["request"]["path"] for e in entries if e.get("type") == "request"}
    assert "sys/mounts" in paths
    assert "auth/token/revoke-self" in paths  # the initial root token's revocation


def test_restart_unseals_itself_and_keeps_data(fresh: EmbeddedVault) -> None:
    first = fresh.start()
    client = fresh.admin_client()
    value = secrets.token_hex(16)
    try:
        with translate("write a secret"):
            client.sys.enable_secrets_engine("kv", path=TEST_KV, options={"version": "2"})
            write_kv2_when_ready(client, TEST_KV, "probe", {"value": value})
    finally:
        client.adapter.close()

    assert fresh.stop() == first.pid
    assert not fresh.status().running
    assert fresh.stop() is None  # idempotent

    began = time.monotonic()
    again = fresh.start()
    took = time.monotonic() - began
    assert again.running
    assert again.sealed is False
    assert again.pid != first.pid
    assert again.address == first.address
    assert not again.bootstrapped
    assert took <= COLD_START_BUDGET_S, f"restart took {took:.2f} s"

    client = fresh.admin_client()
    try:
        with translate("read the secret back"):
            read = client.secrets.kv.v2.read_secret_version(
                path="probe", mount_point=TEST_KV, raise_on_deleted_version=True
            )
    finally:
        client.adapter.close()
    assert read["data"]["data"] == {"value": value}


def test_a_lost_admin_token_is_reissued_from_the_keys(fresh: EmbeddedVault) -> None:
    fresh.start()
    old = fresh.admin_token_file.read_text().strip()
    fresh.admin_token_file.unlink()

    status = fresh.start()
    assert status.running
    assert status.sealed is False
    new = fresh.admin_token_file.read_text().strip()
    assert new != old
    assert _mode(fresh.admin_token_file) == 0o600
    client = fresh.admin_client()
    client.adapter.close()
    assert json.loads(fresh.init_file.read_text())["root_token_revoked"] is True
    _assert_generate_root_closed(fresh)  # opened only while re-issuing


def test_stop_never_signals_a_process_it_did_not_start(fresh: EmbeddedVault) -> None:
    assert fresh.stop() is None  # never started
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fresh.directory.mkdir(parents=True)
        fresh.state_file.write_text(json.dumps({"port": 1, "cluster_port": 2, "pid": stranger.pid}))
        assert not fresh.status().running
        assert fresh.stop() is None
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


def test_a_failed_start_explains_itself_and_leaves_nothing_running(fresh: EmbeddedVault) -> None:
    fresh.start()
    fresh.stop()
    port = _port(fresh)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(
            VaultUnavailableError, match=r"server\.log ends: .*address already in use"
        ):
            fresh.start()
    state = json.loads(fresh.state_file.read_text())
    assert state["pid"] is None
    assert not fresh.status().running


def test_a_missing_bao_binary_is_a_clear_error(tmp_path: Path) -> None:
    vault = EmbeddedVault(tmp_path, bao=tmp_path / "no-bao")
    with pytest.raises(VaultUnavailableError, match="enclave\\[embedded\\]"):
        vault.start()


def test_cli_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    base = ["--state-dir", str(state), "vault"]
    vault = EmbeddedVault(state)
    try:
        assert main([*base, "start"]) == 0
        captured = capsys.readouterr()
        assert "running (pid" in captured.out
        assert "single-host default" in captured.err

        client = vault.admin_client()
        try:
            with translate("provision a demo enclave"):
                client.sys.enable_secrets_engine("kv", path="enclave-demo-kv")
                client.sys.enable_auth_method("approle", path="enclave-demo-approle")
                client.sys.create_or_update_acl_policy(
                    name="enclave-demo-gateway", policy='path "x" {}'
                )
        finally:
            client.adapter.close()

        assert main([*base, "status", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["running"] is True
        assert data["sealed"] is False
        assert data["address"] == vault.connection().address
        assert data["socket"] == str(vault.socket_path)
        assert data["enclaves"] == {
            "demo": {
                "policies": ["enclave-demo-gateway"],
                "auth_mounts": ["enclave-demo-approle"],
                "secret_mounts": ["enclave-demo-kv"],
            }
        }

        assert main([*base, "status"]) == 0
        out = capsys.readouterr().out
        assert "sealed:         no" in out
        assert f"socket:         {vault.socket_path}" in out
        assert "enclave demo:" in out

        assert main([*base, "start"]) == 0  # idempotent, and no warning the second time
        assert "single-host default" not in capsys.readouterr().err

        assert main([*base, "stop"]) == 0
        assert "stopped the embedded vault" in capsys.readouterr().out
        assert main([*base, "stop"]) == 0
        assert "not running" in capsys.readouterr().out

        assert main([*base, "status", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["running"] is False
        assert data["enclaves"] is None
    finally:
        vault.stop()


def _enclave_objects(client: Any, enclave: str) -> dict[str, list[str]]:
    """Every mount, auth mount, policy and AppRole role of ``enclave`` the server still holds."""
    prefix = f"enclave-{enclave}-"
    with translate("list what is left"):
        mounts = [m for m in client.sys.list_mounted_secrets_engines()["data"] if prefix in m]
        auths = [m for m in client.sys.list_auth_methods()["data"] if prefix in m]
        policies = [p for p in client.sys.list_acl_policies()["data"]["keys"] if prefix in p]
        roles = [
            f"{mount}{role}"
            for mount in auths
            for role in client.auth.approle.list_roles(mount_point=mount.rstrip("/"))["data"][
                "keys"
            ]
        ]
    found = {"mounts": mounts, "auth": auths, "policies": policies, "roles": roles}
    return {kind: sorted(names) for kind, names in found.items() if names}


def test_a_server_killed_mid_provisioning_is_rolled_back_when_it_is_back(
    fresh: EmbeddedVault,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL the embedded server between two provisioning steps: the rollback cannot reach
    it, the error names what is left, and the next `enclave vault start` (which restarts the
    server on its raft storage and unseals it) finishes the rollback and says so in one line;
    listing mounts, auth mounts, policies and roles then finds nothing of the enclave."""
    loaded = load_spec(make_workspace(tmp_path / "ws").example(("name: demo", "name: killed")))
    first = fresh.start()
    pid = first.pid
    assert pid is not None
    real = provision_module._ensure_policy

    def kill_first(*args: Any, **kwargs: Any) -> None:
        os.kill(pid, signal.SIGKILL)  # the pid EmbeddedVault started and verified
        deadline = time.monotonic() + 10
        while fresh.status().running:
            assert time.monotonic() < deadline, "the killed server is still running"
            time.sleep(0.02)
        monkeypatch.setattr(provision_module, "_ensure_policy", real)
        real(*args, **kwargs)

    monkeypatch.setattr(provision_module, "_ensure_policy", kill_first)
    admin = fresh.admin_client()
    try:
        with pytest.raises(VaultUnavailableError) as failed:
            provision(admin, loaded, pending=fresh.pending_rollbacks())
    finally:
        admin.adapter.close()
    message = str(failed.value)
    assert "unreachable; rollback incomplete: 7 object(s) left (" in message
    assert "remove mount enclave-killed-kv" in message and "remove auth mount" in message
    assert message.endswith("removed at the next admin connection to this Vault once it is back")
    assert fresh.pending_rollbacks().pending() == ["killed"]
    assert not fresh.status().running

    assert main(["--state-dir", str(fresh.state_dir), "vault", "start"]) == 0
    err = capsys.readouterr().err
    (said,) = [line for line in err.splitlines() if "rollback" in line]
    assert "finished the rollback of enclave killed's failed provisioning" in said
    assert "(7 step(s) undone)" in said
    assert fresh.pending_rollbacks().pending() == []
    assert fresh.status().pid != pid
    client = fresh.admin_client()
    try:
        assert _enclave_objects(client, "killed") == {}
        assert "killed" not in fresh.inventory()
    finally:
        client.adapter.close()
