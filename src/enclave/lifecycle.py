"""Bringing an enclave up and down on the Docker backend, and reporting on it.

:func:`up` runs, in order, stopping at the first failure and undoing what *this run* did
(the containers, networks and firewall rules it created, the controller it started, the
enclave's Vault objects when it provisioned them):

1. check the spec is one this backend can run (Docker, embedded Vault) and every model's
   weights against their ``sha256`` -- before anything is created;
2. provision the enclave in Vault (idempotent; torn down again on failure if this run made it);
3. build or find the service images (nothing is pulled);
4. prepare the host directories the gateway mounts (spec bundle, state, Vault socket);
5. plan against what the engine holds and apply (:mod:`enclave.plan`): networks, firewall,
   model servers, the gateway with its bootstrap material on stdin;
6. start the shutdown controller (a host process, see :mod:`enclave.controlproc`) and wait
   for the gateway's first successful answer (it holds the controller's lease).

:func:`down` removes the containers, networks and firewall rules, stops the controller and
tears the enclave out of Vault; the gateway's audit log stays where it is (its path is
returned). :func:`status` observes without changing anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from enclave import controlproc
from enclave.backends.base import Component
from enclave.backends.desired import (
    SERVICE_USER,
    VAULT_SOCKET,
    HostPaths,
    container_name,
    desired_state,
)
from enclave.backends.docker import DockerBackend, http_json
from enclave.backends.runtimes import BuiltinWeights
from enclave.errors import ConflictError, EnclaveError, InputError, IntegrityError
from enclave.images.service import ensure_service_images
from enclave.plan import Action, Created, Done, execute, plan_down, plan_up, roll_back
from enclave.vault.client import VaultConnection
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.provision import bootstrap, provision, teardown

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from docker import DockerClient

    from enclave.backends.base import ContainerSpec, Observed
    from enclave.spec import LoadedSpec

log = logging.getLogger(__name__)

__all__ = ["EnclaveStatus", "UpResult", "down", "enclave_dir", "plan", "status", "up"]

EMBEDDED = "embedded"
FIRST_ANSWER_TIMEOUT = 30.0


@dataclass(slots=True)
class UpResult:
    enclave: str
    actions: list[Done] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    url: str = ""
    audit_dir: str = ""
    seconds: float = 0.0
    steps: list[tuple[str, float]] = field(default_factory=list)
    """(step, seconds) of the whole run, for the progress display and the benchmark."""


@dataclass(slots=True)
class EnclaveStatus:
    enclave: str
    components: list[dict[str, Any]]
    networks: list[dict[str, Any]]
    firewall: bool
    gateway: dict[str, Any]
    controller: dict[str, Any]
    audit_dir: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "enclave": self.enclave,
            "components": self.components,
            "networks": self.networks,
            "firewall": self.firewall,
            "gateway": self.gateway,
            "controller": self.controller,
            "audit_dir": self.audit_dir,
        }


def enclave_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "enclaves" / name


def audit_dir(state_dir: Path, name: str) -> Path:
    """Where the gateway container's audit log lands on the host."""
    return enclave_dir(state_dir, name) / "gateway" / "enclaves" / name / "audit"


def check_supported(loaded: LoadedSpec) -> None:
    spec = loaded.spec
    if spec.backend.value != "docker":
        raise InputError(f"enclave {loaded.name}: backend {spec.backend.value!r} is not docker")
    if spec.vault.address != EMBEDDED:
        raise InputError(
            f"enclave {loaded.name}: the Docker backend runs with the embedded Vault only "
            f"(spec.vault.address is {spec.vault.address!r}); its containers reach Vault "
            "through a unix socket and have no network path to any other"
        )
    if spec.gateway.replicas != 1:
        raise InputError(
            f"enclave {loaded.name}: the Docker backend runs one gateway "
            f"(spec.gateway.replicas is {spec.gateway.replicas})"
        )


def refuse_if_killed(name: str, state_dir: Path) -> None:
    """``up`` never brings back a killed enclave: only the resume quorum does.

    ``down`` keeps the controller's state, so ``down`` + ``up`` cannot bypass the two-person
    resume; a kill's record is read as killed even when the file is damaged.
    """
    path = enclave_dir(state_dir, name) / "controller" / "state.json"
    try:
        mode = json.loads(path.read_text(encoding="utf-8")).get("mode")
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError):
        mode = "unreadable"
    if mode != "serving":
        raise ConflictError(
            f"enclave {name} is {mode} by its kill switch ({path}); it serves again only "
            f"through 'enclave resume {name}' with the required approvals"
        )


def verify_weights(loaded: LoadedSpec) -> None:
    """Check every model's weights against the spec's ``sha256`` before anything starts."""
    for index, model in enumerate(loaded.spec.models):
        if model.weights is None:
            continue
        path = loaded.resolve(model.weights.path)
        where = f"spec.models[{index}].weights"
        if not path.exists():
            raise InputError(f"{loaded.source}: {where}.path: {path} does not exist")
        actual = weights_digest(path)
        if actual != model.weights.sha256:
            raise IntegrityError(
                f"{loaded.source}: {where}.sha256: {path} has sha256 {actual}, "
                f"the spec says {model.weights.sha256}"
            )


def weights_digest(path: Path) -> str:
    """sha256 of a weights file; of a directory, sha256 over ``<sha256>  <relative path>``
    lines of every file in it, sorted by path (what ``sha256sum`` prints, sorted)."""
    if path.is_file():
        return _file_sha256(path)
    lines = sorted(
        f"{_file_sha256(p)}  {p.relative_to(path).as_posix()}\n"
        for p in path.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_host(loaded: LoadedSpec, state_dir: Path, vault: EmbeddedVault) -> HostPaths:
    """The spec bundle, the gateway's state directory; their paths and the Vault socket's."""
    root = enclave_dir(state_dir, loaded.name)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    bundle = root / "spec"
    source_dir = loaded.source.parent.resolve()
    catalog = loaded.resolve(loaded.spec.usage.catalog)
    try:
        relative_catalog = catalog.relative_to(source_dir)
    except ValueError:
        raise InputError(
            f"{loaded.source}: spec.usage.catalog: {catalog} must be inside the spec's "
            "directory (the gateway container mounts that policy, nothing else)"
        ) from None
    fresh = root / ".spec.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o755)
    _copy(loaded.source, fresh / loaded.source.name)
    _copy(catalog, fresh / relative_catalog)
    screens = catalog.with_name("screens.yaml")
    if screens.is_file():
        _copy(screens, fresh / relative_catalog.with_name("screens.yaml"))
    shutil.rmtree(bundle, ignore_errors=True)
    fresh.rename(bundle)
    uid, gid = (int(part) for part in SERVICE_USER.split(":"))
    gateway_state = root / "gateway"
    gateway_state.mkdir(mode=0o700, exist_ok=True)
    os.chown(gateway_state, uid, gid)
    for path in gateway_state.rglob("*"):
        os.chown(path, uid, gid, follow_symlinks=False)
    return HostPaths(
        spec_bundle=str(bundle),
        spec_file=loaded.source.name,
        gateway_state=str(gateway_state),
        vault_socket_dir=str(vault.socket_dir),
    )


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o644)


def plan(loaded: LoadedSpec, client: DockerClient, state_dir: Path, images: dict[str, str],
         builtin: BuiltinWeights | None) -> list[Action]:  # fmt: skip
    """What ``up`` would do now (needs the images' tags; creates nothing)."""
    backend = DockerBackend(client)
    vault = EmbeddedVault(state_dir)
    paths = HostPaths(
        spec_bundle=str(enclave_dir(state_dir, loaded.name) / "spec"),
        spec_file=loaded.source.name,
        gateway_state=str(enclave_dir(state_dir, loaded.name) / "gateway"),
        vault_socket_dir=str(vault.socket_dir),
    )
    desired = desired_state(loaded, images=images, paths=paths, builtin=builtin)
    return plan_up(desired, backend.observe(loaded.name))


def up(
    loaded: LoadedSpec,
    client: DockerClient,
    state_dir: Path,
    *,
    builtin: BuiltinWeights | None,
    wheelhouse: Path | None = None,
    project_root: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> UpResult:
    """Bring ``loaded`` up (idempotent); roll back what this run did when a step fails."""
    started = time.monotonic()
    result = UpResult(enclave=loaded.name)
    say = on_step or (lambda _text: None)

    def timed(step: str, call: Callable[[], Any]) -> Any:
        say(step)
        begin = time.monotonic()
        value = call()
        result.steps.append((step, time.monotonic() - begin))
        return value

    check_supported(loaded)
    _refuse_if_killed_keep_controller(loaded, client, state_dir)
    timed("verify weights", lambda: verify_weights(loaded))
    vault = EmbeddedVault(state_dir)
    admin = timed("start Vault", vault.admin_client)
    try:
        inventory_before = vault.inventory()
        provisioned = timed(
            "provision Vault",
            lambda: provision(admin, loaded, pending=vault.pending_rollbacks()),
        )
        made_in_vault = loaded.name not in inventory_before and provisioned.changed
        controller_started = False
        backend = DockerBackend(client)
        created = Created()
        try:
            images = timed(
                "images",
                lambda: ensure_service_images(
                    client,
                    cache_dir=state_dir / "cache",
                    wheelhouse=wheelhouse,
                    project_root=project_root,
                ),
            )
            result.images = dict(images)
            _write_images(state_dir, loaded.name, images)
            paths = timed("host directories", lambda: prepare_host(loaded, state_dir, vault))
            desired = desired_state(loaded, images=images, paths=paths, builtin=builtin)
            observed = backend.observe(loaded.name)
            actions = plan_up(desired, observed)

            def material(container: ContainerSpec) -> bytes:
                return _gateway_material(admin, loaded, container)

            result.actions = timed(
                "containers",
                lambda: execute(
                    backend, desired, observed, actions, bootstrap=material,
                    on_step=lambda action: say(str(action)), created=created,
                ),
            )  # fmt: skip
            gateway = backend.observe(loaded.name).containers[
                container_name(loaded.name, Component.GATEWAY)
            ]
            result.url = f"http://{gateway.published}"
            controller_started = timed(
                "controller",
                lambda: controlproc.ensure(
                    loaded, state_dir, result.url, lambda: _controller_material(admin, loaded,
                                                                                vault),
                ),
            )  # fmt: skip
            timed("first answer", lambda: _wait_serving(result.url, FIRST_ANSWER_TIMEOUT))
        except BaseException:
            if controller_started:
                controlproc.stop(state_dir, loaded.name)
            roll_back(backend, loaded.name, created)  # empty when execute failed (it undid)
            if made_in_vault:
                _quietly(f"tear {loaded.name} out of Vault", lambda: teardown(admin, loaded.name))
            raise
    finally:
        _close(admin)
    result.audit_dir = str(audit_dir(state_dir, loaded.name))
    result.seconds = time.monotonic() - started
    return result


def _gateway_material(admin: Any, loaded: LoadedSpec, container: ContainerSpec) -> bytes:
    """The gateway's bootstrap material, naming Vault as the container sees it."""
    if container.component is not Component.GATEWAY:  # model servers hold no credential
        raise InputError(f"{container.name} takes no Vault bootstrap material")
    found = bootstrap(admin, loaded, "gateway", VaultConnection(VAULT_SOCKET))
    return json.dumps(found.as_dict()).encode() + b"\n"


def _refuse_if_killed_keep_controller(
    loaded: LoadedSpec, client: DockerClient, state_dir: Path
) -> None:
    try:
        refuse_if_killed(loaded.name, state_dir)
    except ConflictError:
        # the kill stands; but a killed enclave needs its controller to take the approvals
        # that resume it, so one that died (or was killed) is started again, killed
        ensure_controller(loaded, client, state_dir)
        raise


def ensure_controller(loaded: LoadedSpec, client: DockerClient, state_dir: Path) -> bool:
    """Start the enclave's controller unless it runs; True when this call started it.

    It comes back in the state it left (a killed enclave stays killed, without heartbeats).
    """
    if controlproc.running(state_dir, loaded.name) is not None:
        return False
    observed = DockerBackend(client).observe(loaded.name)
    if container_name(loaded.name, Component.GATEWAY) not in observed.containers:
        return False  # nothing of the enclave to control
    vault = EmbeddedVault(state_dir)
    admin = vault.admin_client()
    try:
        return controlproc.ensure(
            loaded,
            state_dir,
            f"http://{loaded.spec.gateway.listen}",  # where it is published, even while down
            lambda: _controller_material(admin, loaded, vault),
        )
    finally:
        _close(admin)


def _write_images(state_dir: Path, name: str, images: dict[str, str]) -> None:
    """The image tags this enclave runs, so a resume reuses them instead of rebuilding."""
    path = enclave_dir(state_dir, name) / "images.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(images, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_images(client: DockerClient, state_dir: Path, name: str) -> dict[str, str] | None:
    """The tags ``up`` recorded, when every one of them is still on the engine."""
    try:
        images = json.loads((enclave_dir(state_dir, name) / "images.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(images, dict) or not all(isinstance(v, str) for v in images.values()):
        return None
    found = DockerBackend(client).images_present(list(images.values()))
    return {str(k): str(v) for k, v in images.items()} if found else None


def _controller_material(admin: Any, loaded: LoadedSpec, vault: EmbeddedVault) -> bytes:
    found = bootstrap(admin, loaded, "controller", vault.connection())
    return json.dumps(found.as_dict()).encode() + b"\n"


def _wait_serving(url: str, timeout: float) -> None:
    """Until the gateway's /healthz says ok (it holds the controller's lease)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, body = http_json(url + "/healthz")
        if status == 200:
            return
        last = body.get("problems") if isinstance(body, dict) else status
        time.sleep(0.1)
    raise EnclaveError(f"the gateway at {url} is not serving after {timeout:.0f} s: {last}")


def down(
    name: str, client: DockerClient, state_dir: Path, *, keep_vault: bool = False
) -> tuple[list[Done], Path]:
    """Remove everything of enclave ``name``; returns what was done and the audit log's path."""
    backend = DockerBackend(client)
    observed = backend.observe(name)
    controlproc.stop(state_dir, name)
    done = execute(backend, None, observed, plan_down(observed))
    if not keep_vault:
        vault = EmbeddedVault(state_dir)
        if name in _inventory(vault):
            admin = vault.admin_client()
            try:
                teardown(admin, name)
            finally:
                _close(admin)
    shutil.rmtree(enclave_dir(state_dir, name) / "spec", ignore_errors=True)
    return done, audit_dir(state_dir, name)


def _inventory(vault: EmbeddedVault) -> set[str]:
    if not vault.status().running:
        vault.start()
    return set(vault.inventory())


def status(name: str, client: DockerClient, state_dir: Path) -> EnclaveStatus:
    backend = DockerBackend(client)
    observed = backend.observe(name)
    return _status(name, observed, state_dir)


def _status(name: str, observed: Observed, state_dir: Path) -> EnclaveStatus:
    components = [
        {
            "name": c.name,
            "component": c.component,
            "status": c.status,
            "addresses": dict(c.addresses),
            "published": c.published,
        }
        for c in sorted(observed.containers.values(), key=lambda c: c.name)
    ]
    networks = [
        {"name": n.name, "bridge": n.bridge, "internal": n.internal}
        for n in sorted(observed.networks.values(), key=lambda n: n.name)
    ]
    bridges = {n.bridge for n in observed.networks.values()}
    gateway: dict[str, Any] = {}
    found = observed.containers.get(container_name(name, Component.GATEWAY))
    if found is not None and found.published:
        url = f"http://{found.published}"
        code, body = http_json(url + "/healthz")
        gateway = {"url": url, "http": code}
        if isinstance(body, dict):
            gateway.update(
                {k: body.get(k) for k in ("status", "mode", "problems", "lease_remaining")}
            )
    return EnclaveStatus(
        enclave=name,
        components=components,
        networks=networks,
        firewall=bool(bridges) and bridges <= observed.firewall_bridges,
        gateway=gateway,
        controller=controlproc.describe(state_dir, name),
        audit_dir=str(audit_dir(state_dir, name)),
    )


def _close(client: Any) -> None:
    adapter = getattr(client, "adapter", None)
    if adapter is not None:
        adapter.close()


def _quietly(what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except EnclaveError as exc:
        log.error("rollback: cannot %s: %s", what, exc)  # noqa: TRY400 - one line, no trace


def restart_workload(
    loaded: LoadedSpec,
    client: DockerClient,
    state_dir: Path,
    *,
    health_timeout: float = 60.0,
) -> list[Done]:
    """What a resume does once its quorum is met: fresh credentials, the workload running.

    A kill revoked the gateway's Vault token and stopped the model servers, so the gateway is
    always replaced (with new single-use bootstrap material) and every container that is not
    running is replaced; networks and firewall rules are made whole. It reuses the images and
    the reference weights ``up`` left behind. Returns when every container is healthy; the
    caller (the controller) then gives the gateway its lease back.
    """
    check_supported(loaded)
    verify_weights(loaded)
    vault = EmbeddedVault(state_dir)
    admin = vault.admin_client()
    try:
        # idempotent: recreates anything a kill's seal-and-restore lost
        provision(admin, loaded, pending=vault.pending_rollbacks())
        images = _read_images(client, state_dir, loaded.name) or ensure_service_images(
            client, cache_dir=state_dir / "cache"
        )
        reference = state_dir / "cache" / "reference-weights.json"
        builtin = (
            BuiltinWeights(str(reference), weights_digest(reference))
            if reference.is_file()
            else None
        )
        paths = prepare_host(loaded, state_dir, vault)
        desired = desired_state(loaded, images=images, paths=paths, builtin=builtin)
        backend = DockerBackend(client)
        observed = backend.observe(loaded.name)
        gateway = container_name(loaded.name, Component.GATEWAY)
        if gateway in observed.containers:  # its token is revoked: it must be replaced
            containers = dict(observed.containers)
            containers[gateway] = dataclasses.replace(containers[gateway], status="revoked")
            observed = dataclasses.replace(observed, containers=containers)

        def material(container: ContainerSpec) -> bytes:
            return _gateway_material(admin, loaded, container)

        return execute(
            backend,
            desired,
            observed,
            plan_up(desired, observed),
            bootstrap=material,
            health_timeout=health_timeout,
        )
    finally:
        _close(admin)
