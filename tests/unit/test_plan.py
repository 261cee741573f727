"""Planning and executing an enclave's objects against a fake backend (no engine)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from enclave.backends.base import (
    Component,
    ContainerSpec,
    Desired,
    NetworkSpec,
    Observed,
    ObservedContainer,
    ObservedNetwork,
)
from enclave.backends.desired import HostPaths, desired_state
from enclave.backends.runtimes import BuiltinWeights
from enclave.errors import ConflictError, DockerError, InputError
from enclave.plan import Action, Created, Step, execute, plan_down, plan_up, roll_back
from enclave.spec import load_spec
from support.workspace import make_workspace

if TYPE_CHECKING:
    from collections.abc import Sequence

    from enclave.spec import LoadedSpec

DIGEST = "cd" * 32
IMAGES = {"runtime": "enclave/runtime:aaa", "gateway": "enclave/gateway:bbb"}
PATHS = HostPaths("/state/enclaves/demo/spec", "enclave.yaml", "/state/gw", "/state/vault/run")


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedSpec:
    workspace = make_workspace(tmp_path)
    return load_spec(workspace.example())


@pytest.fixture
def desired(loaded: LoadedSpec) -> Desired:
    return desired_state(
        loaded, images=IMAGES, paths=PATHS, builtin=BuiltinWeights("/cache/w.json", DIGEST)
    )


class FakeBackend:
    """Records calls; holds objects in memory; fails on cue."""

    def __init__(self, observed: Observed, *, fail_on: str | None = None) -> None:
        self.networks = dict(observed.networks)
        self.containers = dict(observed.containers)
        self.firewall = observed.firewall_present
        self.calls: list[str] = []
        self.fail_on = fail_on
        self.bootstraps: dict[str, bytes | None] = {}

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_on is not None and what.startswith(self.fail_on):
            raise DockerError(f"{what}: refused")

    def observe(self, enclave: str) -> Observed:
        return Observed(enclave, self.networks, self.containers, frozenset(), self.firewall)

    def create_network(self, enclave: str, network: NetworkSpec) -> ObservedNetwork:
        self._call(f"create network {network.name}")
        made = ObservedNetwork(
            network.name, f"id-{network.name}", f"br-{network.role}", network.internal
        )
        self.networks[network.name] = made
        return made

    def remove_network(self, network: ObservedNetwork) -> None:
        self._call(f"remove network {network.name}")
        self.networks.pop(network.name, None)

    def isolate(self, enclave: str, bridges: Sequence[str]) -> None:
        self._call(f"isolate {','.join(bridges)}")
        self.firewall = True

    def unisolate(self, enclave: str) -> None:
        self._call("unisolate")
        self.firewall = False

    def run_container(
        self, enclave: str, container: ContainerSpec, bootstrap: bytes | None
    ) -> ObservedContainer:
        self._call(f"run {container.name}")
        self.bootstraps[container.name] = bootstrap
        made = ObservedContainer(
            container.name, f"id-{container.name}", container.component.value, "running",
            container.config_digest(),
        )  # fmt: skip
        self.containers[container.name] = made
        return made

    def remove_container(self, container: ObservedContainer) -> None:
        self._call(f"remove {container.name}")
        self.containers.pop(container.name, None)

    def wait_healthy(self, container: ContainerSpec, timeout: float) -> None:
        self._call(f"wait {container.name}")


def steps(actions: list[Action]) -> list[tuple[Step, str]]:
    return [(a.step, a.target) for a in actions]


def test_the_desired_objects_of_a_spec(desired: Desired) -> None:
    assert [n.name for n in desired.networks] == ["enclave-demo-internal", "enclave-demo-ingress"]
    assert [n.internal for n in desired.networks] == [True, False]
    model, gateway = desired.containers
    assert model.name == "enclave-demo-model-assistant"
    assert model.networks == (("enclave-demo-internal", ("assistant",)),)
    assert model.image == IMAGES["runtime"] and model.port is None and not model.bootstrap
    assert [(m.source, m.target, m.read_only) for m in model.mounts] == [
        ("/cache/w.json", "/weights/w.json", True)
    ]
    assert model.user == gateway.user == "10001:10001"
    assert gateway.component is Component.GATEWAY and gateway.bootstrap
    assert [n for n, _ in gateway.networks] == ["enclave-demo-internal", "enclave-demo-ingress"]
    assert gateway.port is not None and (gateway.port.host_ip, gateway.port.host_port) == (
        "127.0.0.1",
        8443,
    )
    assert "assistant=http://assistant:8000" in gateway.command
    assert gateway.command[gateway.command.index("--bootstrap") :][:2] == ("--bootstrap", "-")
    writable = [m.target for m in gateway.mounts if not m.read_only]
    assert writable == ["/var/lib/enclave"]


def test_config_digest_changes_with_the_configuration(desired: Desired) -> None:
    model = desired.containers[0]
    assert model.config_digest() == replace(model).config_digest()
    assert model.config_digest() != replace(model, memory=model.memory * 2).config_digest()


def test_missing_images_and_bad_bundle_paths_are_refused(loaded: LoadedSpec) -> None:
    builtin = BuiltinWeights("/cache/w.json", DIGEST)
    with pytest.raises(InputError, match="no gateway image"):
        desired_state(loaded, images={"runtime": "r"}, paths=PATHS, builtin=builtin)
    with pytest.raises(InputError, match="must be relative"):
        desired_state(
            loaded, images=IMAGES, paths=replace(PATHS, spec_file="../x.yaml"), builtin=builtin
        )


def test_up_from_nothing_in_dependency_order(desired: Desired) -> None:
    actions = plan_up(desired, Observed("demo"))
    assert steps(actions) == [
        (Step.CREATE_NETWORK, "enclave-demo-internal"),
        (Step.CREATE_NETWORK, "enclave-demo-ingress"),
        (Step.ISOLATE, "demo"),
        (Step.RUN, "enclave-demo-model-assistant"),
        (Step.WAIT_HEALTHY, "enclave-demo-model-assistant"),
        (Step.RUN, "enclave-demo-gateway"),
        (Step.WAIT_HEALTHY, "enclave-demo-gateway"),
    ]


def test_execute_then_plan_again_is_empty(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"))
    execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
            bootstrap=lambda c: b"material")  # fmt: skip
    assert backend.bootstraps == {
        "enclave-demo-model-assistant": None,
        "enclave-demo-gateway": b"material",
    }
    assert backend.calls.index("isolate br-ingress,br-internal") < backend.calls.index(
        "run enclave-demo-model-assistant"
    )
    observed = Observed(
        "demo", backend.networks, backend.containers, frozenset({"br-internal", "br-ingress"}), True
    )
    assert plan_up(desired, observed) == []


def test_changed_or_stopped_containers_are_replaced_and_strays_removed(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"))
    execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
            bootstrap=lambda c: b"m")  # fmt: skip
    containers = dict(backend.containers)
    gateway = containers["enclave-demo-gateway"]
    containers["enclave-demo-gateway"] = replace(gateway, status="exited")
    containers["enclave-demo-model-old"] = ObservedContainer(
        "enclave-demo-model-old", "id-old", "model", "running", "x"
    )
    model = containers["enclave-demo-model-assistant"]
    containers["enclave-demo-model-assistant"] = replace(model, config="stale")
    observed = Observed(
        "demo", backend.networks, containers, frozenset({"br-internal", "br-ingress"}), True
    )
    actions = plan_up(desired, observed)
    assert steps(actions) == [
        (Step.REMOVE_CONTAINER, "enclave-demo-model-old"),
        (Step.REPLACE, "enclave-demo-model-assistant"),
        (Step.WAIT_HEALTHY, "enclave-demo-model-assistant"),
        (Step.REPLACE, "enclave-demo-gateway"),
        (Step.WAIT_HEALTHY, "enclave-demo-gateway"),
    ]
    assert actions[1].why == "configuration changed" and actions[3].why == "exited"


def test_a_network_with_other_settings_is_a_conflict(desired: Desired) -> None:
    observed = Observed(
        "demo",
        {"enclave-demo-internal": ObservedNetwork("enclave-demo-internal", "i", "br-x", False)},
    )
    with pytest.raises(ConflictError, match="enclave down demo"):
        plan_up(desired, observed)


@pytest.mark.parametrize(
    "fail_on",
    ["isolate", "run enclave-demo-model", "wait enclave-demo-gateway", "run enclave-demo-gateway"],
)
def test_a_failed_up_removes_what_it_created(desired: Desired, fail_on: str) -> None:
    backend = FakeBackend(Observed("demo"), fail_on=fail_on)
    with pytest.raises(DockerError, match="refused"):
        execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
                bootstrap=lambda c: b"m")  # fmt: skip
    assert backend.networks == {} and backend.containers == {}
    assert backend.firewall is False


def test_a_failed_re_up_keeps_what_was_there_before(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"))
    execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
            bootstrap=lambda c: b"m")  # fmt: skip
    networks, firewall_before = dict(backend.networks), backend.firewall
    containers = dict(backend.containers)
    containers.pop("enclave-demo-gateway")
    observed = Observed(
        "demo", networks, containers, frozenset({"br-internal", "br-ingress"}), True
    )
    backend.containers = dict(containers)
    backend.fail_on = "wait enclave-demo-gateway"
    with pytest.raises(DockerError):
        execute(backend, desired, observed, plan_up(desired, observed), bootstrap=lambda c: b"m")
    assert backend.networks == networks and backend.firewall == firewall_before
    assert set(backend.containers) == {"enclave-demo-model-assistant"}


def test_down_removes_gateway_first_then_firewall_then_networks(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"))
    execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
            bootstrap=lambda c: b"m")  # fmt: skip
    observed = backend.observe("demo")
    actions = plan_down(observed)
    assert steps(actions) == [
        (Step.REMOVE_CONTAINER, "enclave-demo-gateway"),
        (Step.REMOVE_CONTAINER, "enclave-demo-model-assistant"),
        (Step.UNISOLATE, "demo"),
        (Step.REMOVE_NETWORK, "enclave-demo-ingress"),
        (Step.REMOVE_NETWORK, "enclave-demo-internal"),
    ]
    execute(backend, None, observed, actions)
    assert backend.networks == {} and backend.containers == {} and not backend.firewall
    assert plan_down(backend.observe("demo")) == []


def test_a_later_failure_rolls_back_what_execute_created(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"))
    created = Created()
    execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
            bootstrap=lambda c: b"m", created=created)  # fmt: skip
    assert [c.name for c in created.containers] == [
        "enclave-demo-model-assistant",
        "enclave-demo-gateway",
    ]
    assert created.isolated and len(created.networks) == 2
    roll_back(backend, "demo", created)
    assert backend.networks == {} and backend.containers == {} and not backend.firewall
    assert backend.calls[-5:] == [
        "remove enclave-demo-gateway",
        "remove enclave-demo-model-assistant",
        "unisolate",
        "remove network enclave-demo-ingress",
        "remove network enclave-demo-internal",
    ]
    calls = len(backend.calls)
    roll_back(backend, "demo", created)  # emptied: nothing more to remove
    assert len(backend.calls) == calls


def test_a_failed_execute_leaves_nothing_to_roll_back(desired: Desired) -> None:
    backend = FakeBackend(Observed("demo"), fail_on="wait enclave-demo-gateway")
    created = Created()
    with pytest.raises(DockerError):
        execute(backend, desired, Observed("demo"), plan_up(desired, Observed("demo")),
                bootstrap=lambda c: b"m", created=created)  # fmt: skip
    assert created == Created()
