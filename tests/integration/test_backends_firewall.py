"""The host firewall rules, against the real engine and the host's real iptables.

The enclave's shape is built by hand, the way the Docker backend will build it: an internal
network joining a "gateway" and a "model" container, and an ingress network only the gateway
joins, its port published on 127.0.0.1 and on the host's end of the outside-world veth. Three
canaries stand outside: (a) a network namespace routed from the host (198.18.0.0/15), (b) a
container on another Docker network, (c) listeners on each enclave bridge's host-side address.

Probes run from the containers' network namespaces (``nsenter``), so what they show is the
network path, not the containers' dropped capabilities. The gateway's DNS server is the world
canary's address, so Docker's embedded resolver, which forwards unknown names from the
container's namespace, is probed too. Traffic goes only to what this module creates;
everything is removed by id or name at the end.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest

from enclave.backends import firewall
from support import service_missing
from support.docker_engine import (
    HTTP_GET_PROBE,
    NOBODY,
    DockerResources,
    container_ip,
    wait_for_http,
)
from support.egress import (
    DNS_PORT,
    Canary,
    OutsideWorld,
    ProbeReport,
    Target,
    host_listener,
    interface_address,
    missing_network_tools,
    network_canary,
    outside_world,
    probe_container,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.networks import Network

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

GATEWAY_PORT = 8080
MODEL_PORT = 8000
PROTOCOLS = frozenset({"tcp", "udp", "icmp"})


@dataclass(frozen=True)
class Shape:
    """One hand-built enclave and the canaries around it."""

    name: str
    internal: Network
    ingress: Network
    bridges: list[str]
    gateway: Container
    model: Container
    control: Container
    world: OutsideWorld
    other_network: Canary
    host_internal: Canary
    host_ingress: Canary
    loopback_port: int
    world_port: int

    @property
    def canaries(self) -> list[Canary]:
        return [self.world.canary, self.other_network, self.host_internal, self.host_ingress]

    @property
    def host_veth_target(self) -> Target:
        """The host's own end of the world's veth: any host address, by ICMP."""
        return Target("host-veth", self.world.host_address)

    @property
    def model_target(self) -> Target:
        return Target("model", container_ip(self.model, self.internal), MODEL_PORT)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway(
    resources: DockerResources,
    image: str,
    *,
    ingress: Network,
    internal: Network,
    ports: list[tuple[str, int]],
    dns: str,
) -> Container:
    """Like DockerResources.container, plus a published port, a second network and a DNS
    server for the embedded resolver to forward to (the outside world's canary)."""
    container = resources.client.containers.create(
        image,
        ["python3", "-m", "http.server", str(GATEWAY_PORT), "--bind", "0.0.0.0"],
        name=resources.name("gateway"),
        labels=resources.labels,
        network=ingress.name,
        # docker-py binds a list of (address, port) pairs; its type stubs allow only one
        ports=cast("dict[str, Any]", {f"{GATEWAY_PORT}/tcp": ports}),
        dns=[dns],
        dns_opt=["timeout:1", "attempts:1"],
        user=NOBODY,
        working_dir="/tmp",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        pids_limit=64,
        mem_limit="256m",
        detach=True,
    )
    if container.id:
        resources.container_ids.append(container.id)
    internal.connect(container)
    container.start()
    return container


@pytest.fixture(scope="module")
def shape(docker_client: DockerClient, base_image: str, test_run_id: str) -> Iterator[Shape]:
    why = missing_network_tools()
    if why:
        service_missing(why)
    resources = DockerResources(docker_client, test_run_id)
    name = f"fw-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        world = stack.enter_context(outside_world(test_run_id))

        def cleanup() -> None:
            problems = resources.cleanup()
            if problems:
                pytest.fail(f"could not remove test docker objects: {problems}")

        stack.callback(cleanup)
        stack.callback(firewall.remove, name)
        other = stack.enter_context(network_canary(resources, base_image, label="other-net"))

        internal = resources.network("internal", internal=True)
        ingress = resources.network("ingress")
        bridges = [firewall.bridge_name(net.id or "") for net in (internal, ingress)]
        model = resources.container(
            base_image,
            ["python3", "-m", "http.server", str(MODEL_PORT), "--bind", "0.0.0.0"],
            role="model",
            network=internal.name,
        )
        loopback_port, world_port = _free_port(), _free_port()
        gateway = _gateway(
            resources,
            base_image,
            ingress=ingress,
            internal=internal,
            ports=[("127.0.0.1", loopback_port), (world.host_address, world_port)],
            dns=world.address,
        )
        control = resources.container(
            base_image, ["sleep", "600"], role="control", network="bridge"
        )
        host_internal = stack.enter_context(
            host_listener(interface_address(bridges[0]), "host-internal")
        )
        host_ingress = stack.enter_context(
            host_listener(interface_address(bridges[1]), "host-ingress")
        )
        wait_for_http(model, MODEL_PORT)
        wait_for_http(gateway, GATEWAY_PORT)
        yield Shape(
            name,
            internal,
            ingress,
            bridges,
            gateway,
            model,
            control,
            world,
            other,
            host_internal,
            host_ingress,
            loopback_port,
            world_port,
        )


@pytest.fixture
def firewalled(shape: Shape) -> Iterator[list[firewall.Rule]]:
    """The enclave's rules, installed for one test and removed after it."""
    added = firewall.ensure(shape.name, shape.bridges)
    try:
        yield added
    finally:
        firewall.remove(shape.name)
    assert not firewall.observe(shape.name).present


def _describe(reports: dict[str, ProbeReport]) -> str:
    return "; ".join(str(r) for r in reports.values())


def _resolve(container: Container, host: str) -> tuple[int, str]:
    script = "import socket, sys; print(socket.getaddrinfo(sys.argv[1], 80)[0][4][0])"
    result = container.exec_run(["python3", "-c", script, host])
    output = result.output if isinstance(result.output, bytes) else b""
    return int(result.exit_code or 0), output.decode(errors="replace").strip()


def _dns_queries(canary: Canary) -> list[dict[str, object]]:
    return [e for e in canary.seen() if e.get("seen") == "udp" and e.get("port") == DNS_PORT]


def test_without_rules_the_enclave_reaches_the_host_and_the_world(shape: Shape) -> None:
    """The negative control: Docker alone leaves these paths open, so the rules must close
    them (and a failed probe later means the rules did it)."""
    assert not firewall.observe(shape.name).present

    # Docker gives a container on an internal network a default route via the bridge's
    # host-side address: it cannot be forwarded anywhere, but reaches every host address
    from_model = probe_container(
        shape.model,
        [shape.host_internal.target, shape.host_ingress.target, shape.host_veth_target],
    )
    assert from_model["host-internal"].reached == PROTOCOLS, _describe(from_model)
    assert from_model["host-ingress"].reached == PROTOCOLS, _describe(from_model)
    assert from_model["host-veth"].reached == {"icmp"}, _describe(from_model)

    from_gateway = probe_container(shape.gateway, [shape.world.canary.target])
    assert from_gateway["world"].reached == PROTOCOLS, _describe(from_gateway)

    from_control = probe_container(shape.control, [shape.world.canary.target])
    assert from_control["world"].reached == PROTOCOLS, _describe(from_control)
    # through NAT: the world sees the host's end of the veth, not the container
    assert from_control["world"].attempts["tcp"].banner()["peer"] == shape.world.host_address

    # Docker's embedded DNS forwards the gateway's lookups from its namespace, out the ingress
    # network: the world's canary receives the query (its answer is no DNS, so resolving fails)
    before = len(_dns_queries(shape.world.canary))
    _resolve(shape.gateway, "egress-canary.invalid")
    assert len(_dns_queries(shape.world.canary)) > before


def test_with_rules_nothing_leaves_the_enclave(shape: Shape, firewalled: list[object]) -> None:
    assert firewalled
    seen_before = {c.label: len(c.seen()) for c in shape.canaries}
    targets = [c.target for c in shape.canaries] + [shape.host_veth_target]

    leaks: list[str] = []
    for container in (shape.gateway, shape.model):
        reports = probe_container(container, targets)
        leaks += [f"{container.name}: {r}" for r in reports.values() if r.reached]
    assert not leaks, leaks

    # the canaries agree: nothing arrived from the enclave
    arrived = {c.label: c.seen()[seen_before[c.label] :] for c in shape.canaries}
    assert not any(arrived.values()), arrived

    # the same world is still reachable from outside the enclave: the probes mean something
    from_control = probe_container(shape.control, [shape.world.canary.target])
    assert from_control["world"].reached == PROTOCOLS, _describe(from_control)


def test_with_rules_embedded_dns_does_not_forward_out(
    shape: Shape, firewalled: list[object]
) -> None:
    before = len(_dns_queries(shape.world.canary))
    code, _ = _resolve(shape.gateway, "egress-canary.invalid")
    assert code != 0
    assert len(_dns_queries(shape.world.canary)) == before
    # names inside the enclave still resolve (the resolver answers from within the namespace)
    code, address = _resolve(shape.gateway, shape.model.name or "")
    assert (code, address) == (0, shape.model_target.address)


def test_with_rules_the_gateway_reaches_the_model(shape: Shape, firewalled: list[object]) -> None:
    model = shape.model_target
    reports = probe_container(shape.gateway, [model])
    assert reports["model"].reached == {"tcp", "icmp"}, _describe(reports)

    url = f"http://{shape.model.name}:{MODEL_PORT}/"
    result = shape.gateway.exec_run(["python3", "-c", HTTP_GET_PROBE, url, "5"])
    output = result.output if isinstance(result.output, bytes) else b""
    assert result.exit_code == 0, output.decode(errors="replace")
    assert b'"status": 200' in output


def test_with_rules_the_published_port_answers(shape: Shape, firewalled: list[object]) -> None:
    # on loopback, through docker-proxy on the host: the reply enters the host from the bridge
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        response = client.get(f"http://127.0.0.1:{shape.loopback_port}/")
    assert response.status_code == 200

    # from the world, through Docker's DNAT: the reply is forwarded out of the bridge
    url = f"http://{shape.world.host_address}:{shape.world_port}/"
    result = shape.world.run([sys.executable, "-c", HTTP_GET_PROBE, url, "5"])
    assert result.returncode == 0, result.stderr[-500:]
    assert '"status": 200' in result.stdout


def test_ensure_is_idempotent_and_remove_takes_exactly_its_rules(shape: Shape) -> None:
    sibling = f"{shape.name}-sibling"
    families = firewall.default_families()
    try:
        added = firewall.ensure(shape.name, shape.bridges)
        assert len(added) == len(families) * (2 + 2 * len(shape.bridges))
        assert firewall.ensure(shape.name, shape.bridges) == []
        firewall.ensure(sibling, shape.bridges[:1])

        state = firewall.observe(shape.name)
        assert state.isolates(shape.bridges), state.missing(shape.bridges)
        assert state.chains == frozenset(families)
        assert state.bridges() == frozenset(shape.bridges)
        assert sorted(map(str, state.rules)) == sorted(map(str, added))
        note = f"enclave.dev/name={shape.name}"
        assert len(_listed(note)) == len(added)

        removed = firewall.remove(shape.name)
        assert sorted(map(str, removed)) == sorted(map(str, added))
        assert not firewall.observe(shape.name).present
        assert _listed(note) == []
        assert firewall.remove(shape.name) == []
        # the other enclave's rules are untouched
        assert firewall.observe(sibling).isolates(shape.bridges[:1])
    finally:
        firewall.remove(shape.name)
        firewall.remove(sibling)
    assert _listed(f"enclave.dev/name={sibling}") == []


def _listed(needle: str) -> list[str]:
    """Lines of ``iptables -S`` (and ``ip6tables -S``) naming ``needle`` exactly as a comment."""
    found: list[str] = []
    for family in firewall.default_families():
        text = subprocess.run(
            [family.binary, "-w", "-S"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        found += [
            line for line in text.splitlines() if f'"{needle}"' in line or f" {needle} " in line
        ]
    return found
