"""Desired enclave + observed objects -> ordered actions (pure); :func:`execute` runs them.

:func:`plan_up` makes an enclave as the spec says with as few changes as possible: an object
that exists with the configuration wanted is left alone, so a second ``enclave up`` plans
nothing. The order is fixed by what depends on what::

    remove containers the spec no longer has
    create networks  ->  isolate (host firewall, before any container starts)
    model servers (run, wait healthy)  ->  gateway (run, wait healthy)
    remove networks the spec no longer has

:func:`plan_down` removes everything observed: gateway first (no request reaches a model
server that is going away), then model servers, the firewall rules, the networks.

:func:`execute` applies actions through a :class:`~enclave.backends.base.Backend`. When one
fails it undoes, newest first, what *this run* created (a network, a container, firewall rules
that were not there before) and raises the original error: a failed ``up`` leaves nothing
half-built behind. A container replaced because its configuration changed cannot be put back;
the error says the enclave must be brought up again. A caller whose own later step fails (the
gateway never answers) passes a :class:`Created` to :func:`execute` and hands it to
:func:`roll_back`, which undoes the same objects.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from enclave.backends.base import Component
from enclave.errors import ConflictError, EnclaveError

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.backends.base import (
        Backend,
        ContainerSpec,
        Desired,
        Observed,
        ObservedContainer,
        ObservedNetwork,
    )

log = logging.getLogger(__name__)

__all__ = ["Action", "Created", "Done", "Step", "execute", "plan_down", "plan_up", "roll_back"]


class Step(StrEnum):
    CREATE_NETWORK = "create network"
    ISOLATE = "isolate"
    RUN = "run"
    REPLACE = "replace"
    WAIT_HEALTHY = "wait healthy"
    REMOVE_CONTAINER = "remove container"
    UNISOLATE = "unisolate"
    REMOVE_NETWORK = "remove network"


@dataclass(frozen=True, slots=True)
class Action:
    step: Step
    target: str
    why: str = ""

    def __str__(self) -> str:
        text = f"{self.step} {self.target}"
        return f"{text} ({self.why})" if self.why else text


@dataclass(slots=True)
class Done:
    """One action applied, and how long it took."""

    action: Action
    seconds: float


@dataclass(slots=True)
class Created:
    """What one :func:`execute` call created (what :func:`roll_back` removes), oldest first."""

    networks: list[ObservedNetwork] = field(default_factory=list)
    containers: list[ObservedContainer] = field(default_factory=list)
    isolated: bool = False
    """True when that call installed the enclave's firewall rules (none were there before)."""


def plan_up(desired: Desired, observed: Observed) -> list[Action]:
    """The actions that turn ``observed`` into ``desired`` (none when they already match)."""
    actions: list[Action] = []
    wanted_containers = {c.name for c in desired.containers}
    stray = sorted(
        (c for c in observed.containers.values() if c.name not in wanted_containers),
        key=lambda c: c.component != Component.GATEWAY,  # the gateway goes first
    )
    actions += [Action(Step.REMOVE_CONTAINER, c.name, "not in the spec") for c in stray]
    created = False
    for network in desired.networks:
        have = observed.networks.get(network.name)
        if have is None:
            actions.append(Action(Step.CREATE_NETWORK, network.name, network.role))
            created = True
        elif have.internal != network.internal:
            raise ConflictError(
                f"network {network.name} exists with internal={have.internal}; "
                f"run 'enclave down {desired.enclave}' first"
            )
    bridges = {n.bridge for n in observed.networks.values()}
    if created or not bridges <= observed.firewall_bridges or not observed.firewall_present:
        actions.append(Action(Step.ISOLATE, desired.enclave, "host firewall"))
    for container in desired.containers:
        have_container = observed.containers.get(container.name)
        if have_container is None:
            actions.append(Action(Step.RUN, container.name))
        elif have_container.config != container.config_digest():
            actions.append(Action(Step.REPLACE, container.name, "configuration changed"))
        elif have_container.status != "running":
            actions.append(Action(Step.REPLACE, container.name, have_container.status))
        else:
            continue
        actions.append(Action(Step.WAIT_HEALTHY, container.name))
    wanted_networks = {n.name for n in desired.networks}
    actions += [
        Action(Step.REMOVE_NETWORK, name, "not in the spec")
        for name in sorted(observed.networks)
        if name not in wanted_networks
    ]
    return actions


def plan_down(observed: Observed) -> list[Action]:
    """The actions that remove every object of the enclave ``observed`` holds."""
    containers = sorted(
        observed.containers.values(), key=lambda c: (c.component != Component.GATEWAY, c.name)
    )
    actions = [Action(Step.REMOVE_CONTAINER, c.name) for c in containers]
    if observed.firewall_present:
        actions.append(Action(Step.UNISOLATE, observed.enclave, "host firewall"))
    actions += [Action(Step.REMOVE_NETWORK, name) for name in sorted(observed.networks)]
    return actions


def execute(
    backend: Backend,
    desired: Desired | None,
    observed: Observed,
    actions: list[Action],
    *,
    bootstrap: Callable[[ContainerSpec], bytes | None] | None = None,
    on_step: Callable[[Action], None] | None = None,
    on_done: Callable[[Done], None] | None = None,
    health_timeout: float = 60.0,
    created: Created | None = None,
) -> list[Done]:
    """Apply ``actions`` in order; on failure undo what this run created, then re-raise.

    ``bootstrap(container)`` gives the Vault bootstrap material a container reads on its
    stdin (called just before it starts, so a wrapped secret-id lives only seconds).
    ``created``, when given, records what this call creates, for :func:`roll_back` should a
    later step of the caller fail (it is empty again after a failed call, which undid it).
    """
    run = _Run(
        backend,
        desired,
        observed,
        bootstrap,
        health_timeout,
        undo=created if created is not None else Created(),
    )
    done: list[Done] = []
    for action in actions:
        if on_step is not None:
            on_step(action)
        started = time.monotonic()
        try:
            run.apply(action)
        except BaseException:
            roll_back(backend, run.enclave, run.undo)
            if any(d.action.step is Step.REPLACE for d in done):
                log.warning("%s: containers were replaced before the failure", run.enclave)
            raise
        record = Done(action, time.monotonic() - started)
        done.append(record)
        if on_done is not None:
            on_done(record)
    return done


class _Run:
    """The objects one :func:`execute` call knows of, and what it created."""

    def __init__(
        self,
        backend: Backend,
        desired: Desired | None,
        observed: Observed,
        bootstrap: Callable[[ContainerSpec], bytes | None] | None,
        health_timeout: float,
        *,
        undo: Created,
    ) -> None:
        self.backend = backend
        self.desired = desired
        self.enclave = desired.enclave if desired is not None else observed.enclave
        self.networks = dict(observed.networks)
        self.containers = dict(observed.containers)
        self.undo = undo
        self.bootstrap = bootstrap
        self.health_timeout = health_timeout

    def _desired(self) -> Desired:
        if self.desired is None:
            raise ConflictError("this plan needs the enclave's spec")
        return self.desired

    def apply(self, action: Action) -> None:
        step, target, backend = action.step, action.target, self.backend
        if step is Step.CREATE_NETWORK:
            spec = next(n for n in self._desired().networks if n.name == target)
            made = backend.create_network(self.enclave, spec)
            self.networks[target] = made
            self.undo.networks.append(made)
        elif step is Step.ISOLATE:
            self.undo.isolated = not backend.observe(self.enclave).firewall_present
            backend.isolate(self.enclave, sorted(n.bridge for n in self.networks.values()))
        elif step in (Step.RUN, Step.REPLACE):
            container = self._desired().container(target)
            old = self.containers.pop(target, None)
            if old is not None:
                backend.remove_container(old)
            material = (
                self.bootstrap(container)
                if self.bootstrap is not None and container.bootstrap
                else None
            )
            running = backend.run_container(self.enclave, container, material)
            self.containers[target] = running
            self.undo.containers.append(running)
        elif step is Step.WAIT_HEALTHY:
            backend.wait_healthy(self._desired().container(target), self.health_timeout)
        elif step is Step.REMOVE_CONTAINER:
            backend.remove_container(self.containers.pop(target))
        elif step is Step.UNISOLATE:
            backend.unisolate(self.enclave)
        elif step is Step.REMOVE_NETWORK:
            backend.remove_network(self.networks.pop(target))


def roll_back(backend: Backend, enclave: str, created: Created) -> None:
    """Remove what a run created, newest first; report but survive failures to remove.

    ``created`` is emptied: a second call removes nothing.
    """
    for container in reversed(created.containers):
        _quietly(f"remove container {container.name}", backend.remove_container, container)
    if created.isolated:
        _quietly("remove firewall rules", backend.unisolate, enclave)
    for network in reversed(created.networks):
        _quietly(f"remove network {network.name}", backend.remove_network, network)
    created.containers.clear()
    created.networks.clear()
    created.isolated = False


def _quietly(what: str, call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except EnclaveError as exc:
        log.error("rollback: cannot %s: %s", what, exc)  # noqa: TRY400 - one line, no trace
