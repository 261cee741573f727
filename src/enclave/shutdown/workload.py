"""What the controller stops, detaches and restarts: the enclave's containers.

:class:`Workload` is the small interface the kill and the resume need from a backend;
:class:`DockerWorkload` is it on the local Docker engine. Its calls block (run them in a worker
thread) and are serialised (one Docker client, used one call at a time). The client is made on
first use and made again after an engine error, so a controller outlives a ``dockerd`` restart.

- :meth:`~Workload.stop_models`: every model container gets SIGKILL (no grace period: a kill
  switch does not wait for a model to finish its sentence) and is then taken off every network.
  Docker does not restart a container it was told to kill, whatever its restart policy.
- :meth:`~Workload.detach_gateways`: the gateways are taken off the enclave's internal network,
  so that nothing, even a gateway bug, can reach a model server. They keep their published port
  and answer ``503 enclave_shutdown`` to every request.
- :meth:`~Workload.restart`: what a resume does after its quorum
  (:func:`enclave.lifecycle.restart_workload`: the gateway replaced with fresh credentials, the
  stopped model servers replaced, all of them healthy before it returns).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from enclave.backends.base import Component
from enclave.backends.docker import DockerBackend
from enclave.backends.docker import connect as connect_docker
from enclave.errors import DockerError
from enclave.lifecycle import restart_workload

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from docker import DockerClient

    from enclave.spec import LoadedSpec

log = logging.getLogger(__name__)

__all__ = ["DockerWorkload", "Workload"]

CONNECT_TIMEOUT = 5.0


class Workload(Protocol):
    """The enclave's containers, as the kill switch and the resume see them. Blocking calls;
    each returns a one-line summary or raises :class:`~enclave.errors.EnclaveError`."""

    def warm(self) -> None:
        """Get ready to act fast (connect now); never raises."""
        ...

    def stop_models(self) -> str: ...

    def detach_gateways(self) -> str: ...

    def restart(self) -> str: ...


class DockerWorkload:
    """:class:`Workload` on the local Docker engine."""

    def __init__(
        self,
        loaded: LoadedSpec,
        state_dir: Path,
        *,
        connect: Callable[[], DockerClient] = lambda: connect_docker(CONNECT_TIMEOUT),
    ) -> None:
        self.loaded = loaded
        self.state_dir = state_dir
        self._connect = connect
        self._client: DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def enclave(self) -> str:
        return self.loaded.name

    def _backend(self) -> DockerBackend:
        if self._client is None:
            self._client = self._connect()
        return DockerBackend(self._client)

    def _forget_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the Docker client failed", exc_info=True)

    def warm(self) -> None:
        with self._lock:
            try:
                self._backend()
            except DockerError as exc:
                log.warning("the Docker engine is not reachable yet: %s", exc)

    def stop_models(self) -> str:
        with self._lock:
            try:
                backend = self._backend()
                found = backend.inventory(self.enclave)
                models = [c for c in found.containers.values() if c.component == Component.MODEL]
                killed = [c.name for c in models if backend.kill_container(c)]
                detached = sum(
                    backend.disconnect(c, network) for c in models for network in c.addresses
                )
            except DockerError:
                self._forget_client()
                raise
        return (
            f"{len(killed)} of {len(models)} model container(s) killed (SIGKILL), "
            f"{detached} network attachment(s) removed"
        )

    def detach_gateways(self) -> str:
        with self._lock:
            try:
                backend = self._backend()
                found = backend.inventory(self.enclave)
                internal = sorted(n.name for n in found.networks.values() if n.internal)
                gateways = [
                    c for c in found.containers.values() if c.component == Component.GATEWAY
                ]
                detached = sum(
                    backend.disconnect(g, network)
                    for g in gateways
                    for network in internal
                    if network in g.addresses
                )
            except DockerError:
                self._forget_client()
                raise
        names = ", ".join(internal) or "none"
        return (
            f"{len(gateways)} gateway(s) off the internal network(s) {names} "
            f"({detached} attachment(s) removed)"
        )

    def restart(self) -> str:
        with self._lock:
            try:
                client = self._backend().client
                done = restart_workload(self.loaded, client, self.state_dir)
            except DockerError:
                self._forget_client()
                raise
        steps = ", ".join(str(d.action) for d in done) or "nothing to do"
        return f"{len(done)} action(s): {steps}"
