"""The Docker backend: an enclave as labelled networks and hardened containers on one host.

The only module that imports the Docker SDK for enclaves (the image builder has its own). Every
Docker error is translated into :class:`~enclave.errors.DockerError` with one line naming what
failed. What every container gets, whatever the spec says:

- read-only root file system, a private ``tmpfs`` for scratch (``noexec,nosuid``);
- every Linux capability dropped, ``no-new-privileges``, Docker's default seccomp profile;
- a non-root ``uid:gid``, no host namespace (network, PID, IPC, UTS), never privileged, no
  device, no Docker socket; memory, CPU and PID limits from the spec; ``unless-stopped``;
- bind mounts only of what it needs, read-only unless it writes there (the gateway's audit log);
- networks: model servers on the enclave's ``internal`` network only; the gateway also on its
  ``ingress`` network, the only one with a published port, which does no NAT for traffic
  leaving it (``enable_ip_masquerade=false``); the host firewall
  (:mod:`enclave.backends.firewall`) drops every new connection out of both bridges.

Vault bootstrap material is written to the container's stdin once, through an attach made
before the container starts, and the stream is then closed (``StdinOnce``): it never appears in
the container's configuration, environment, arguments, image or logs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

import docker
import docker.errors
import docker.types
import requests.exceptions

from enclave.backends import firewall
from enclave.backends.base import (
    LABEL_COMPONENT,
    LABEL_CONFIG,
    LABEL_MANAGED,
    LABEL_NAME,
    MANAGED_BY,
    ContainerSpec,
    NetworkSpec,
    Observed,
    ObservedContainer,
    ObservedNetwork,
)
from enclave.errors import ConflictError, DockerError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from docker import DockerClient
    from docker.models.containers import Container

log = logging.getLogger(__name__)

__all__ = ["DockerBackend", "connect", "http_json"]

TMPFS_OPTIONS = "rw,noexec,nosuid,nodev,size=64m"
STOP_TIMEOUT = 5
"""Seconds a container gets between SIGTERM and SIGKILL when removed."""


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFoundError(f"{what}: {_explain(exc)}") from None
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise ConflictError(f"{what}: {_explain(exc)}") from None
        raise DockerError(f"{what}: {_explain(exc)}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"{what}: the Docker engine is unavailable ({_explain(exc)})") from None


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def connect(timeout: float = 30.0) -> DockerClient:
    """A client for the local engine (``DOCKER_HOST`` or the default socket)."""
    with _translated("connect to the Docker engine"):
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    return client


class DockerBackend:
    """:class:`~enclave.backends.base.Backend` on a Docker engine."""

    def __init__(self, client: DockerClient, *, runner: firewall.Runner | None = None) -> None:
        self.client = client
        self._runner = runner or firewall.run_command

    # -- observe ----------------------------------------------------------------------------

    def observe(self, enclave: str) -> Observed:
        label = f"{LABEL_NAME}={enclave}"
        with _translated(f"list the objects of enclave {enclave}"):
            networks = self.client.networks.list(filters={"label": label})
            containers = self.client.containers.list(all=True, filters={"label": label})
            found_networks = {n.name: _network(n.attrs) for n in networks if n.name is not None}
            found_containers = {c.name: _container(c.attrs) for c in containers if c.name}
        state = firewall.observe(enclave, runner=self._runner)
        return Observed(
            enclave=enclave,
            networks=found_networks,
            containers=found_containers,
            firewall_bridges=state.bridges(),
            firewall_present=state.present,
        )

    def list_enclaves(self) -> list[str]:
        """Names of every enclave with an object on this engine."""
        with _translated("list enclaves"):
            found = {
                c.labels.get(LABEL_NAME, "")
                for c in self.client.containers.list(all=True, filters={"label": LABEL_NAME})
            } | {
                (n.attrs.get("Labels") or {}).get(LABEL_NAME, "")
                for n in self.client.networks.list(filters={"label": LABEL_NAME})
            }
        return sorted(name for name in found if name)

    # -- networks and firewall --------------------------------------------------------------

    def create_network(self, enclave: str, network: NetworkSpec) -> ObservedNetwork:
        options = {"com.docker.network.bridge.enable_icc": "true"}
        if not network.internal:  # nothing leaves the ingress network through NAT either
            options["com.docker.network.bridge.enable_ip_masquerade"] = "false"
        with _translated(f"create network {network.name}"):
            made = self.client.networks.create(
                network.name,
                driver="bridge",
                internal=network.internal,
                enable_ipv6=False,
                options=options,
                labels={
                    LABEL_NAME: enclave,
                    LABEL_COMPONENT: f"network-{network.role}",
                    LABEL_MANAGED: MANAGED_BY,
                },
                check_duplicate=True,
            )
            made.reload()
        return _network(made.attrs)

    def remove_network(self, network: ObservedNetwork) -> None:
        with _translated(f"remove network {network.name}"):
            try:
                self.client.networks.get(network.id).remove()
            except docker.errors.NotFound:
                return

    def isolate(self, enclave: str, bridges: Sequence[str]) -> None:
        firewall.ensure(enclave, bridges, runner=self._runner)

    def unisolate(self, enclave: str) -> None:
        firewall.remove(enclave, runner=self._runner)

    # -- containers -------------------------------------------------------------------------

    def run_container(
        self, enclave: str, container: ContainerSpec, bootstrap: bytes | None
    ) -> ObservedContainer:
        if container.bootstrap and bootstrap is None:
            raise ConflictError(f"container {container.name} needs bootstrap material")
        with _translated(f"create container {container.name}"):
            made = self.client.containers.create(**_create_args(enclave, container))
        try:
            with _translated(f"start container {container.name}"):
                for network, aliases in container.networks[1:]:
                    self.client.networks.get(network).connect(made, aliases=list(aliases))
                if bootstrap is not None:
                    _start_with_stdin(made, bootstrap)
                else:
                    made.start()
                made.reload()
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException):
                made.remove(force=True)
            raise
        return _container(made.attrs)

    def remove_container(self, container: ObservedContainer) -> None:
        with _translated(f"remove container {container.name}"):
            try:
                found = self.client.containers.get(container.id)
            except docker.errors.NotFound:
                return
            if found.status in ("running", "restarting"):
                with contextlib.suppress(docker.errors.APIError):
                    found.stop(timeout=STOP_TIMEOUT)
            found.remove(force=True, v=True)

    def wait_healthy(self, container: ContainerSpec, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            with _translated(f"inspect container {container.name}"):
                found = self.client.containers.get(container.name)
            state = found.attrs.get("State") or {}
            if state.get("Status") not in ("running", "created"):
                raise DockerError(
                    f"container {container.name} stopped ({state.get('Status')}, exit "
                    f"{state.get('ExitCode')}): {_last_log_line(found)}"
                )
            address = _address(found.attrs, container.networks[0][0])
            if address and container.health_port:
                status = _http_status(address, container.health_port, container.health_path)
                if status in container_health_ok(container):
                    return
                last = f"HTTP {status}" if status else "no answer"
            if time.monotonic() >= deadline:
                raise DockerError(
                    f"container {container.name} not healthy after {timeout:.0f} s ({last})"
                )
            time.sleep(0.1)

    def images_present(self, tags: Sequence[str]) -> bool:
        """Whether every one of ``tags`` is on the engine (never pulls)."""
        with _translated("look up images"):
            for tag in tags:
                try:
                    self.client.images.get(tag)
                except docker.errors.ImageNotFound:
                    return False
        return True

    def logs(self, name: str, lines: int = 20) -> str:
        with _translated(f"read the logs of {name}"):
            found = self.client.containers.get(name)
            data: bytes = found.logs(tail=lines)
        return data.decode("utf-8", "replace")

    # -- raw, read-only inspection (compliance facts) ---------------------------------------

    def inspect_all(self, enclave: str) -> list[dict[str, Any]]:
        """``docker inspect`` of every container carrying the enclave's label, in one pass.

        The engine has no multi-container inspect: this lists once and inspects each container
        once (what ``docker inspect a b c`` does), so a caller pays one round per container,
        not one per question it asks of it. A container removed in between is left out.
        """
        label = f"{LABEL_NAME}={enclave}"
        found: list[dict[str, Any]] = []
        with _translated(f"inspect the containers of enclave {enclave}"):
            for summary in self.client.api.containers(all=True, filters={"label": label}):
                try:
                    found.append(self.client.api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    continue
        return sorted(found, key=lambda attrs: str(attrs.get("Name", "")))

    def inspect_networks(self, enclave: str) -> list[dict[str, Any]]:
        """``docker network inspect`` of every network carrying the enclave's label."""
        label = f"{LABEL_NAME}={enclave}"
        found: list[dict[str, Any]] = []
        with _translated(f"inspect the networks of enclave {enclave}"):
            for summary in self.client.api.networks(filters={"label": label}):
                try:
                    found.append(self.client.api.inspect_network(summary["Id"]))
                except docker.errors.NotFound:
                    continue
        return sorted(found, key=lambda attrs: str(attrs.get("Name", "")))

    def inspect_images(self, images: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``docker image inspect`` of each image (by id or reference), with its ``History``
        (``docker history``) added; an image that no longer exists is left out."""
        found: dict[str, dict[str, Any]] = {}
        for image in dict.fromkeys(images):
            with _translated(f"inspect image {image}"):
                try:
                    api: Any = self.client.api  # the stubs leave these two calls untyped
                    attrs = dict(api.inspect_image(image))
                    attrs["History"] = list(api.history(image))
                except docker.errors.ImageNotFound:
                    continue
            found[image] = attrs
        return found

    def engine_info(self) -> dict[str, Any]:
        """``docker info``, with the default bridge network's inspect under ``DefaultBridge``
        (empty when the engine has none): its options say whether inter-container traffic is
        allowed there (``icc``); ``Local`` says whether the engine is reached through a unix
        socket on this host (so that its own process and files can be read too)."""
        with _translated("read the Docker engine's settings"):
            info = dict(self.client.api.info())
            info["Local"] = str(self.client.api.base_url).startswith("http+docker://")
            try:
                info["DefaultBridge"] = self.client.api.inspect_network("bridge")
            except docker.errors.NotFound:
                info["DefaultBridge"] = {}
        return info

    # -- the kill switch --------------------------------------------------------------------

    def inventory(self, enclave: str) -> Observed:
        """The enclave's containers and networks, without the firewall (:meth:`observe` asks
        iptables too; the kill switch needs only the engine, and needs it fast)."""
        label = f"{LABEL_NAME}={enclave}"
        with _translated(f"list the objects of enclave {enclave}"):
            networks = self.client.networks.list(filters={"label": label})
            containers = self.client.containers.list(all=True, filters={"label": label})
            return Observed(
                enclave=enclave,
                networks={n.name: _network(n.attrs) for n in networks if n.name is not None},
                containers={c.name: _container(c.attrs) for c in containers if c.name},
            )

    def kill_container(self, container: ObservedContainer) -> bool:
        """SIGKILL ``container`` now (no grace period); False when it was not running.

        Docker does not restart a container it was told to kill, whatever its restart policy.
        """
        with _translated(f"kill container {container.name}"):
            try:
                self.client.api.kill(container.id, signal="SIGKILL")
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # "is not running"
                    return False
                raise
        return True

    def disconnect(self, container: ObservedContainer, network: str) -> bool:
        """Take ``container`` off ``network`` (running or not); False when it was not on it."""
        with _translated(f"disconnect {container.name} from network {network}"):
            try:
                self.client.api.disconnect_container_from_network(container.id, network, force=True)
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if "is not connected" in _explain(exc):  # Docker answers 500 for it
                    return False
                raise
        return True


def container_health_ok(container: ContainerSpec) -> tuple[int, ...]:
    """The HTTP statuses that mean "up": a gateway without a lease yet answers 503."""
    from enclave.backends.base import Component  # noqa: PLC0415 - tiny, avoids a cycle

    return (200, 503) if container.component is Component.GATEWAY else (200,)


def _create_args(enclave: str, container: ContainerSpec) -> dict[str, Any]:
    first, aliases = container.networks[0]
    args: dict[str, Any] = {
        "image": container.image,
        "name": container.name,
        "command": list(container.command),
        "user": container.user,
        "environment": dict(container.env),
        "labels": {
            LABEL_NAME: enclave,
            LABEL_COMPONENT: container.component.value,
            LABEL_CONFIG: container.config_digest(),
            LABEL_MANAGED: MANAGED_BY,
        },
        "network": first,
        "networking_config": {first: docker.types.EndpointConfig("1.41", aliases=list(aliases))},
        "read_only": True,
        "tmpfs": dict.fromkeys(container.tmpfs, TMPFS_OPTIONS),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "ipc_mode": "private",
        "mem_limit": container.memory,
        "memswap_limit": container.memory,
        "nano_cpus": int(container.cpus * 1e9),
        "pids_limit": container.pids,
        "restart_policy": {"Name": "unless-stopped"},
        "mounts": [
            docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
            for m in container.mounts
        ],
        "stop_signal": "SIGTERM",
        "log_config": docker.types.LogConfig(
            type="json-file", config={"max-size": "10m", "max-file": "3"}
        ),
    }
    if container.entrypoint is not None:
        args["entrypoint"] = list(container.entrypoint)
    if container.port is not None:
        port = container.port
        args["ports"] = {f"{port.container_port}/tcp": (port.host_ip, port.host_port)}
    if container.model is not None:
        args["labels"]["enclave.dev/model"] = container.model
    if container.bootstrap:
        args["stdin_open"] = True  # with StdinOnce: the stream closes after the first attach
    return args


def _start_with_stdin(container: Container, data: bytes) -> None:
    """Start ``container`` and write ``data`` to its stdin, then close it (EOF)."""
    attached = container.attach_socket(params={"stdin": 1, "stream": 1})
    raw = cast("socket.socket", getattr(attached, "_sock", attached))
    try:
        container.start()
        raw.sendall(data)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
    finally:
        with contextlib.suppress(OSError):
            attached.close()


def _network(attrs: dict[str, Any]) -> ObservedNetwork:
    network_id = str(attrs.get("Id", ""))
    options = attrs.get("Options") or {}
    return ObservedNetwork(
        name=str(attrs.get("Name", "")),
        id=network_id,
        bridge=firewall.bridge_name(network_id, options),
        internal=bool(attrs.get("Internal")),
    )


def _container(attrs: dict[str, Any]) -> ObservedContainer:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    addresses = {
        name: str(net.get("IPAddress") or "")
        for name, net in (settings.get("Networks") or {}).items()
    }
    published = ""
    for bindings in (settings.get("Ports") or {}).values():
        for binding in bindings or ():
            published = f"{binding.get('HostIp')}:{binding.get('HostPort')}"
    return ObservedContainer(
        name=str(attrs.get("Name", "")).lstrip("/"),
        id=str(attrs.get("Id", "")),
        component=str(labels.get(LABEL_COMPONENT, "")),
        status=str(state.get("Status", "")),
        config=str(labels.get(LABEL_CONFIG, "")),
        health=str((state.get("Health") or {}).get("Status", "")),
        addresses=addresses,
        published=published,
    )


def _address(attrs: dict[str, Any], network: str) -> str:
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return str((networks.get(network) or {}).get("IPAddress") or "")


def _http_status(host: str, port: int, path: str) -> int:
    """The status of ``GET path`` (0 when nothing answers within a second)."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """``GET url`` (``http://host:port/path``): (status, parsed JSON body or None); (0, None)
    when nothing answers."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


def _last_log_line(container: Container) -> str:
    try:
        data: bytes = container.logs(tail=5)
    except docker.errors.DockerException:
        return "no logs"
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
