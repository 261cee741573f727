"""What a backend is given and what it reports: desired objects, observed objects, the protocol.

:class:`Desired` is an enclave as objects (networks, hardened containers, host firewall), built
from the spec by :mod:`enclave.backends.desired`; :class:`Observed` is what a backend found
carrying the enclave's ownership label. :func:`enclave.plan.plan_up` compares the two and
returns the ordered actions a :class:`Backend` applies. Nothing here talks to an engine.

Every object a backend creates carries ``enclave.dev/name=<enclave>`` (:data:`LABEL_NAME`), so
``observe`` and ``destroy`` never touch anything enclave did not create, and
``enclave.dev/config`` (:data:`LABEL_CONFIG`), the digest of the object's desired
configuration, so a changed spec is seen as a changed object (replaced), an unchanged one as
nothing to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "LABEL_COMPONENT",
    "LABEL_CONFIG",
    "LABEL_MANAGED",
    "LABEL_NAME",
    "Backend",
    "Component",
    "ContainerSpec",
    "Desired",
    "Mount",
    "NetworkSpec",
    "Observed",
    "ObservedContainer",
    "ObservedNetwork",
    "Port",
]

LABEL_NAME = "enclave.dev/name"
LABEL_COMPONENT = "enclave.dev/component"
LABEL_CONFIG = "enclave.dev/config"
LABEL_MANAGED = "enclave.dev/managed-by"
MANAGED_BY = "enclave"


class Component(StrEnum):
    GATEWAY = "gateway"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    role: str
    """``internal`` (gateway and model servers, no route out) or ``ingress`` (the gateway's
    published port; no connection out either, by the host firewall)."""
    internal: bool


@dataclass(frozen=True, slots=True)
class Mount:
    """A bind mount of a host path."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class Port:
    """A published port: ``host_ip:host_port`` on the host to ``container_port``."""

    host_ip: str
    host_port: int
    container_port: int


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One hardened container. Hardening that never varies is the backend's, not a field:
    read-only root, every capability dropped, no-new-privileges, default seccomp, no host
    namespaces, no privilege, no Docker socket."""

    name: str
    component: Component
    image: str
    command: tuple[str, ...]
    networks: tuple[tuple[str, tuple[str, ...]], ...]
    """(network name, aliases on it), the first one first."""
    user: str
    cpus: float
    memory: int
    pids: int
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    tmpfs: tuple[str, ...] = ("/tmp",)  # noqa: S108 - a private tmpfs in the container
    port: Port | None = None
    health_port: int = 0
    health_path: str = "/health"
    bootstrap: bool = False
    """The container reads Vault bootstrap material on its stdin once, at start."""
    model: str | None = None

    def config_digest(self) -> str:
        """sha256 over everything above: a container with another digest must be replaced."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Desired:
    """An enclave as the backend should make it."""

    enclave: str
    networks: tuple[NetworkSpec, ...]
    containers: tuple[ContainerSpec, ...]
    """In start order: model servers first, the gateway last."""

    def container(self, name: str) -> ContainerSpec:
        for spec in self.containers:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ObservedNetwork:
    name: str
    id: str
    bridge: str
    """The host interface of the network's bridge (``br-<id12>``, or the name Docker was told)."""
    internal: bool


@dataclass(frozen=True, slots=True)
class ObservedContainer:
    name: str
    id: str
    component: str
    status: str
    """Docker's state: ``running``, ``exited``, ``created``, ``restarting``, ..."""
    config: str
    """Its ``enclave.dev/config`` label."""
    health: str = ""
    """``healthy``, ``unhealthy``, ``starting`` or empty (no health check)."""
    addresses: Mapping[str, str] = field(default_factory=dict)
    """IP address per network name."""
    published: str = ""
    """``host_ip:host_port`` of a published port, when one is."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What a backend found carrying an enclave's ownership label."""

    enclave: str
    networks: Mapping[str, ObservedNetwork] = field(default_factory=dict)
    containers: Mapping[str, ObservedContainer] = field(default_factory=dict)
    firewall_bridges: frozenset[str] = frozenset()
    """Bridges the host firewall isolates now."""
    firewall_present: bool = False

    @property
    def empty(self) -> bool:
        return not (self.networks or self.containers or self.firewall_present)


class Backend(Protocol):
    """The small interface every backend implements (Docker today)."""

    def observe(self, enclave: str) -> Observed:
        """Everything carrying the enclave's label, and its firewall."""
        ...

    def create_network(self, enclave: str, network: NetworkSpec) -> ObservedNetwork: ...

    def remove_network(self, network: ObservedNetwork) -> None: ...

    def isolate(self, enclave: str, bridges: Sequence[str]) -> None:
        """Install the host firewall rules for ``bridges`` (idempotent)."""
        ...

    def unisolate(self, enclave: str) -> None:
        """Remove every host firewall rule of the enclave (idempotent)."""
        ...

    def run_container(
        self, enclave: str, container: ContainerSpec, bootstrap: bytes | None
    ) -> ObservedContainer:
        """Create and start ``container``; hand it ``bootstrap`` on its stdin when given."""
        ...

    def remove_container(self, container: ObservedContainer) -> None: ...

    def wait_healthy(self, container: ContainerSpec, timeout: float) -> None:
        """Until the container answers its health check; raises when it stops or times out."""
        ...
