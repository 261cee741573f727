"""Collecting an enclave's facts once per run: the only part of the engine that does I/O.

:func:`collect` asks each source once -- one ``docker inspect`` pass over the enclave's
containers (through :class:`~enclave.backends.docker.DockerBackend`), its networks, the
images they run, ``docker info``, the host firewall, the host's files, Vault, the spec, the
gateway, and the two audit logs -- concurrently, and returns :class:`Facts`: plain data under
these roots, the variables a rule sees (:mod:`enclave.compliance.rules`):

=============  =================================================================================
root           what (see :mod:`enclave.compliance.collectors` for every field)
=============  =================================================================================
``enclave``    ``name``, ``state_dir``, ``network_names``, ``container_names``
``spec``       classification, catalog, prohibited uses, approvals, principals, shutdown,
               audit and compliance settings, models, owner, the spec file's sha256
``container``  one container (per-instance): hardening, limits, mounts, ports, networks,
               secrets found (where, not what), image, weights digest
``network``    one network (per-instance): internal, IPv6, NAT, bridge, members
``containers``, ``networks``  every container's / network's facts, as lists
``firewall``   the enclave's iptables chain: isolated bridges, problems
``daemon``     ``docker info``: live-restore, icc, no-new-privileges, userns, seccomp...
``host``       sysctls, auditd, Docker socket and state-file permissions, AppArmor/SELinux
``vault``      policies and their rules, AppRole settings, auth mounts, audit devices,
               audit-signer key, control key present, root token live
``gateway``    health answer, lease, controller running, the policy bundle it enforces
``audit``      the gateway's audit log verified: intact, checkpoints, key, age, permissions
``drill``      the latest kill drill in the controller's audit log
=============  =================================================================================

A source that cannot be reached leaves its roots out and records why in
:attr:`Facts.errors`; every check reading such a root is then an ``error``, never a pass.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave import lifecycle
from enclave.backends import firewall
from enclave.compliance import collectors
from enclave.compliance.model import Collected
from enclave.compliance.scan import SecretScanner
from enclave.errors import EnclaveError, VaultSealedError, VaultUnavailableError
from enclave.vault.client import connect
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.facts import embedded_root_token, embedded_secrets, enclave_facts, token_live

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from enclave.backends.docker import DockerBackend
    from enclave.spec import LoadedSpec
    from enclave.vault.client import VaultConnection

__all__ = ["Facts", "Sources", "VaultAccess", "collect", "embedded_access"]

CONTAINER_ROOTS = ("container", "containers", "enclave")
NETWORK_ROOTS = ("network", "networks")
WORKERS = 4


@dataclass(frozen=True, slots=True)
class VaultAccess:
    """How to read an enclave's Vault objects."""

    admin: Callable[[], Any]
    """Returns a client allowed to read them (the caller closes it)."""
    connection: VaultConnection | None = None
    root_token: str | None = None
    """The initial root token to prove revoked (None: nothing to check, reported as such)."""
    known_secrets: frozenset[str] = frozenset()
    """Secrets the container scanner looks for verbatim (never written anywhere)."""


def embedded_access(state_dir: Path) -> VaultAccess:
    """Access to the embedded Vault under ``state_dir``; never starts or unseals it."""
    vault = EmbeddedVault(state_dir)

    def admin() -> Any:
        status = vault.status()
        if not status.running:
            raise VaultUnavailableError("vault: the embedded Vault is not running")
        if status.sealed is not False:
            raise VaultSealedError("vault: the embedded Vault is sealed or not answering")
        try:
            token = vault.admin_token_file.read_text().strip()
        except OSError:
            raise VaultUnavailableError(
                f"vault: no admin token at {vault.admin_token_file}"
            ) from None
        return connect(vault.connection(), token)

    connection = None
    with contextlib.suppress(EnclaveError):
        connection = vault.connection()
    return VaultAccess(
        admin=admin,
        connection=connection,
        root_token=embedded_root_token(vault),
        known_secrets=embedded_secrets(vault),
    )


@dataclass(frozen=True, slots=True)
class Sources:
    """What to look at. Defaults are the real host; tests point them elsewhere."""

    name: str
    state_dir: Path
    loaded: LoadedSpec | None
    spec_problem: str = ""
    """Why the spec could not be loaded (then ``loaded`` is None)."""
    root: Path = Path("/")
    docker_socket: Path = Path("/var/run/docker.sock")
    gateway_timeout: float = 2.0


@dataclass(slots=True)
class Facts:
    """Everything collected in one run."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """Root -> why it could not be collected."""
    instances: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    """``container`` / ``network`` -> [(target label, facts)]."""
    collected: list[Collected] = field(default_factory=list)


def _timed(name: str, call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Collected]:
    started = time.perf_counter()
    try:
        values = call()
    except (EnclaveError, OSError) as exc:
        return {}, Collected(name, time.perf_counter() - started, str(exc) or type(exc).__name__)
    return values, Collected(name, time.perf_counter() - started)


def collect(
    sources: Sources,
    *,
    backend: DockerBackend | None,
    backend_error: str = "",
    vault: VaultAccess | None,
    vault_error: str = "",
    runner: firewall.Runner = firewall.run_command,
    now: datetime | None = None,
) -> Facts:
    """Collect every fact of enclave ``sources.name`` once (see the module docstring)."""
    now = now or collectors.utc_now()
    facts = Facts()
    name, state = sources.name, sources.state_dir
    scanner = SecretScanner(vault.known_secrets if vault else ())
    loaded = sources.loaded

    def spec() -> dict[str, Any]:
        if loaded is None:
            raise EnclaveError(sources.spec_problem or "no spec")
        return {"spec": collectors.spec_facts(loaded)}

    def docker() -> dict[str, Any]:
        if backend is None:
            raise EnclaveError(backend_error or "the Docker engine is unavailable")
        return _docker(
            backend,
            name,
            state=state,
            loaded=loaded,
            scanner=scanner,
            runner=runner,
            gateway_timeout=sources.gateway_timeout,
        )

    def daemon() -> dict[str, Any]:
        if backend is None:
            raise EnclaveError(backend_error or "the Docker engine is unavailable")
        info = backend.engine_info()
        local = collectors.local_daemon_settings(sources.root) if info.get("Local") else None
        return {"daemon": collectors.daemon_facts(info, local)}

    def host() -> dict[str, Any]:
        return {
            "host": collectors.host_facts(
                root=sources.root,
                docker_socket=sources.docker_socket,
                state_dir=state,
                enclave=name,
            )
        }

    def vault_facts() -> dict[str, Any]:
        if vault is None:
            raise EnclaveError(vault_error or "no access to Vault")
        return {"vault": _vault(vault, name)}

    def audit() -> dict[str, Any]:
        log = lifecycle.audit_dir(state, name)
        return {"audit": collectors.audit_facts(log, now)}

    def drill() -> dict[str, Any]:
        log = lifecycle.enclave_dir(state, name) / "controller" / "audit"
        return {"drill": collectors.drill_facts(log, now)}

    jobs: dict[str, tuple[Callable[[], dict[str, Any]], tuple[str, ...]]] = {
        "docker": (
            docker,
            (*CONTAINER_ROOTS, *NETWORK_ROOTS, "firewall", "gateway"),
        ),
        "vault": (vault_facts, ("vault",)),
        "daemon": (daemon, ("daemon",)),
        "host": (host, ("host",)),
        "audit": (audit, ("audit",)),
        "drill": (drill, ("drill",)),
        "spec": (spec, ("spec",)),
    }
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="compliance") as pool:
        futures = {job: pool.submit(_timed, job, call) for job, (call, _) in jobs.items()}
        for job, future in futures.items():
            values, collected = future.result()
            facts.collected.append(collected)
            roots = jobs[job][1]
            if collected.error:
                facts.errors |= dict.fromkeys(roots, f"{job}: {collected.error}")
                continue
            instances = values.pop("_instances", {})
            errors = values.pop("_errors", {})
            facts.values |= {k: v for k, v in values.items() if k not in errors}
            facts.instances |= {k: v for k, v in instances.items() if k not in errors}
            facts.errors |= errors
    facts.values.setdefault("enclave", {"name": name, "state_dir": str(state)})
    return facts


def _docker(
    backend: DockerBackend,
    name: str,
    *,
    state: Path,
    loaded: LoadedSpec | None,
    scanner: SecretScanner,
    runner: firewall.Runner,
    gateway_timeout: float,
) -> dict[str, Any]:
    inspected = backend.inspect_all(name)
    networks_raw = backend.inspect_networks(name)
    refs = [str((a.get("Config") or {}).get("Image") or "") for a in inspected]
    ids = [str(a.get("Image") or "") for a in inspected]
    images = backend.inspect_images([i for i in (*ids, *refs) if i])
    spec_weights = (
        {m.name: m.weights.sha256 for m in loaded.spec.models if m.weights} if loaded else {}
    )
    containers = [collectors.container_facts(a, images, scanner, spec_weights) for a in inspected]
    own_ids = {c["id"] for c in containers}
    networks = [collectors.network_facts(n, own_ids) for n in networks_raw]
    errors: dict[str, str] = {}
    if not containers:
        errors["container"] = f"docker: no container of enclave {name} on this engine (is it up?)"
    if not networks:
        errors["network"] = f"docker: no network of enclave {name} on this engine (is it up?)"
    values: dict[str, Any] = {
        "enclave": {
            "name": name,
            "state_dir": str(state),
            "container_names": [c["name"] for c in containers],
            "network_names": [n["name"] for n in networks],
        },
        "containers": containers,
        "networks": networks,
        "_instances": {
            "container": [(f"container {c['name']}", c) for c in containers],
            "network": [(f"network {n['name']}", n) for n in networks],
        },
        "_errors": errors,
    }
    bridges = [n["bridge"] for n in networks if n["bridge"]]
    try:
        values["firewall"] = collectors.firewall_facts(name, bridges, runner)
    except EnclaveError as exc:
        errors["firewall"] = f"firewall: {exc}"
    values["gateway"] = collectors.gateway_facts(state, name, containers, timeout=gateway_timeout)
    return values


def _vault(access: VaultAccess, name: str) -> dict[str, Any]:
    client = access.admin()
    try:
        found = enclave_facts(client, name)
    finally:
        adapter = getattr(client, "adapter", None)
        if adapter is not None:
            adapter.close()
    live: bool | None = None
    if access.root_token and access.connection is not None:
        live = token_live(access.connection, access.root_token)
    found["root_token_checked"] = live is not None
    found["root_token_live"] = bool(live)
    found["root_token_is_client"] = found["token_is_root"]
    return found
