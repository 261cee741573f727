"""Egress canaries, and a probe that runs inside a container's network namespace.

A canary is a tiny server a test starts itself: it accepts TCP connections (answering with a
JSON line naming its token and the peer address it saw), echoes UDP datagrams, and reports
every contact as a ``{"seen": ...}`` line, so a test can also ask the canary whether anything
arrived. ICMP echo is answered by the kernel of whichever namespace holds the canary's address.

- :func:`outside_world` -- canary (a): a network namespace routed from the host over a veth
  pair with addresses from the benchmark range 198.18.0.0/15 (a free /30: host ``.1``,
  namespace ``.2``). A container on Docker's default bridge reaches it through NAT.
- :func:`network_canary` -- canary (b): a container on a Docker network of its own.
- :func:`host_listener` -- canary (c): a process on the host bound to one address, e.g. an
  enclave bridge's host-side address.

:func:`probe` runs the host's Python inside a container's network namespace
(``nsenter -t <pid> -n``) and tries TCP connect, UDP request/reply and ICMP echo (a raw socket:
the probe runs as root, not with the container's dropped capabilities) against each target,
all at once, each within about a second. It tests the network path, not the container.

Everything is removed by name or handle when its context manager exits. Traffic goes only to
the namespaces, containers and addresses created here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import docker.errors

from support.docker_engine import container_ip

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from docker.models.containers import Container

    from support.docker_engine import DockerResources

PROBE_TIMEOUT_S = 1.0
START_TIMEOUT_S = 15.0
BENCHMARK_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DNS_PORT = 53

CANARY_SERVER = """\
import json, selectors, socket, sys
address, token = sys.argv[1], sys.argv[2]
extra_udp = [int(port) for port in sys.argv[3:]]

def say(**fields):
    print(json.dumps(fields), flush=True)

tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, 0))
tcp.listen(16)
udp = []
for port in [0, *extra_udp]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    udp.append(sock)
selector = selectors.DefaultSelector()
for sock in [tcp, *udp]:
    selector.register(sock, selectors.EVENT_READ)
say(ready=True, tcp=tcp.getsockname()[1], udp=udp[0].getsockname()[1])
while True:
    for key, _ in selector.select():
        sock = key.fileobj
        if sock is tcp:
            conn, peer = tcp.accept()
            say(seen="tcp", port=tcp.getsockname()[1], peer=peer[0])
            try:
                conn.sendall((json.dumps({"token": token, "peer": peer[0]}) + "\\n").encode())
            except OSError:
                pass
            conn.close()
        else:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            say(seen="udp", port=sock.getsockname()[1], peer=peer[0])
            try:
                sock.sendto(token.encode() + b" " + data, peer)
            except OSError:
                pass
"""
"""argv: ADDRESS TOKEN [EXTRA_UDP_PORT...]; prints ``{"ready": true, "tcp": P, "udp": P}``."""

PROBE = """\
import errno, json, os, random, socket, struct, sys, threading, time

def failed(exc):
    if isinstance(exc, socket.timeout):
        return {"ok": False, "reason": "timeout"}
    name = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
    return {"ok": False, "reason": name, "detail": str(exc)}

def tcp(host, port, token, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError as exc:
        return failed(exc)
    banner = b""
    try:
        while not banner.endswith(b"\\n") and len(banner) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            banner += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return {"ok": True, "reason": "connected", "detail": banner.decode(errors="replace").strip()}

def udp(host, port, token, timeout):
    nonce = os.urandom(8).hex().encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        sock.send(nonce)
        reply = sock.recv(4096)
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()
    text = reply[:200].decode(errors="replace")
    if nonce not in reply:
        return {"ok": False, "reason": "wrong-reply", "detail": text}
    return {"ok": True, "reason": "echoed", "detail": text}

def checksum(data):
    if len(data) % 2:
        data += b"\\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF

def icmp(host, timeout):
    ident, payload = random.randrange(1, 0xFFFF), os.urandom(16)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, 1) + payload
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    deadline = time.monotonic() + timeout
    try:
        sock.sendto(packet, (host, 0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "reason": "timeout"}
            sock.settimeout(left)
            data, peer = sock.recvfrom(65535)
            body = data[(data[0] & 0x0F) * 4:]
            kind, code, _, rid, _ = struct.unpack("!BBHHH", body[:8])
            if kind == 0 and rid == ident and peer[0] == host and body[8:] == payload:
                return {"ok": True, "reason": "echo-reply"}
            inner = body[8:]
            if kind == 3 and len(inner) >= 28:
                inner_icmp = inner[(inner[0] & 0x0F) * 4:]
                if len(inner_icmp) >= 8 and struct.unpack("!H", inner_icmp[4:6])[0] == ident:
                    return {"ok": False, "reason": "unreachable", "detail": "code %d" % code}
    except OSError as exc:
        return failed(exc)
    finally:
        sock.close()

targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
results = {t["label"]: {} for t in targets}
jobs = []
for t in targets:
    row = results[t["label"]]
    if t.get("tcp"):
        jobs.append((row, "tcp", tcp, (t["address"], t["tcp"], t.get("token", ""), timeout)))
    if t.get("udp"):
        jobs.append((row, "udp", udp, (t["address"], t["udp"], t.get("token", ""), timeout)))
    if t.get("icmp", True):
        jobs.append((row, "icmp", icmp, (t["address"], timeout)))

def work(row, key, fn, args):
    try:
        row[key] = fn(*args)
    except Exception as exc:
        row[key] = {"ok": False, "reason": "probe-error", "detail": repr(exc)}

threads = [threading.Thread(target=work, args=job) for job in jobs]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""
"""argv: TARGETS_JSON TIMEOUT; prints one JSON object ``{label: {proto: attempt}}``."""


@dataclass(frozen=True, slots=True)
class Target:
    """Something to probe: an address, optionally a TCP and a UDP port, and ICMP echo."""

    label: str
    address: str
    tcp_port: int | None = None
    udp_port: int | None = None
    icmp: bool = True
    token: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "address": self.address,
            "tcp": self.tcp_port,
            "udp": self.udp_port,
            "icmp": self.icmp,
            "token": self.token,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """One protocol's outcome: ``ok``, and why (``connected``, ``timeout``, ``ENETUNREACH``...)."""

    ok: bool
    reason: str
    detail: str = ""

    def banner(self) -> dict[str, Any]:
        """A TCP canary's greeting (``{"token": ..., "peer": ...}``), or ``{}``."""
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What one probe found for one target, per protocol that was tried."""

    target: Target
    attempts: dict[str, Attempt]

    @property
    def reached(self) -> frozenset[str]:
        """The protocols that got through (``tcp``, ``udp``, ``icmp``)."""
        return frozenset(proto for proto, attempt in self.attempts.items() if attempt.ok)

    def __str__(self) -> str:
        parts = [f"{proto}={a.reason}" for proto, a in sorted(self.attempts.items())]
        return f"{self.target.label} ({self.target.address}): {', '.join(parts)}"


@dataclass
class Canary:
    """A running canary: where it listens and what it has seen so far."""

    label: str
    address: str
    tcp_port: int
    udp_port: int
    token: str
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _refresh: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def target(self) -> Target:
        return Target(self.label, self.address, self.tcp_port, self.udp_port, True, self.token)

    def seen(self) -> list[dict[str, Any]]:
        """Every contact so far: ``{"seen": "tcp"|"udp", "port": P, "peer": ADDRESS}``."""
        if self._refresh is not None:
            self._refresh()
        with self._lock:
            return list(self._events)

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)


@dataclass(frozen=True, slots=True)
class OutsideWorld:
    """Canary (a): a namespace standing in for the world outside the host."""

    namespace: str
    host_veth: str
    host_address: str
    """The host's end of the veth pair (what NAT rewrites sources to)."""
    canary: Canary
    """Listens on the namespace's address; also echoes UDP on port 53."""

    @property
    def address(self) -> str:
        return self.canary.address

    def run(
        self, argv: Sequence[str], *, timeout_s: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (a client out in the world)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


# -- probing ------------------------------------------------------------------------------------


def container_pid(container: Container) -> int:
    """The host pid of a running container's main process."""
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    if pid <= 0:
        raise AssertionError(f"container {container.name} is not running")
    return pid


def probe(
    pid: int, targets: Sequence[Target], *, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, ProbeReport]:
    """Try every target from the network namespace of process ``pid``; keyed by label."""
    payload = json.dumps([t.as_json() for t in targets])
    argv = ["nsenter", "-t", str(pid), "-n", "--", sys.executable, "-c", PROBE, payload]
    proc = subprocess.run(
        [*argv, str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=timeout_s * 4 + 15,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"probe failed (exit {proc.returncode}): {proc.stderr[-1000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        t.label: ProbeReport(t, {p: Attempt(**a) for p, a in raw[t.label].items()}) for t in targets
    }


def probe_container(
    container: Container, targets: Sequence[Target], *, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, ProbeReport]:
    return probe(container_pid(container), targets, timeout_s=timeout_s)


# -- canaries -----------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def interface_address(interface: str) -> str:
    """The first IPv4 address of a host interface (a bridge's host-side address)."""
    out = _run(["ip", "-4", "-o", "addr", "show", "dev", interface]).stdout.split()
    if "inet" not in out:
        raise AssertionError(f"interface {interface} has no IPv4 address")
    return str(ipaddress.IPv4Interface(out[out.index("inet") + 1]).ip)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in {"default", "local", "broadcast", "unreachable", "blackhole"}:
                used.append(ipaddress.IPv4Network(first, strict=False))
    return used


def free_benchmark_block() -> ipaddress.IPv4Network:
    """A /30 of 198.18.0.0/15 that no address or route on the host overlaps."""
    used = _networks_in_use()
    blocks = 1 << (30 - BENCHMARK_RANGE.prefixlen)
    for _ in range(64):
        start = int(BENCHMARK_RANGE.network_address) + 4 * secrets.randbelow(blocks)
        block = ipaddress.IPv4Network((start, 30))
        if not any(block.overlaps(net) for net in used):
            return block
    raise AssertionError("no free /30 in 198.18.0.0/15")


@contextlib.contextmanager
def _canary_process(
    prefix: Sequence[str], address: str, label: str, extra_udp: Sequence[int] = ()
) -> Iterator[Canary]:
    """Run :data:`CANARY_SERVER` (host Python) after ``prefix``; stopped by its handle."""
    token = secrets.token_hex(8)
    argv = [*prefix, sys.executable, "-c", CANARY_SERVER, address, token]
    argv += [str(port) for port in extra_udp]
    ready = threading.Event()
    info: dict[str, Any] = {}
    log: list[str] = []
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        canary_box: list[Canary] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    log.append(line.rstrip())
                    continue
                if event.get("ready"):
                    info.update(event)
                    ready.set()
                elif canary_box:
                    canary_box[0]._record(event)
            ready.set()

        reader = threading.Thread(target=read, name=f"canary-{label}", daemon=True)
        reader.start()
        try:
            if not ready.wait(START_TIMEOUT_S) or not info:
                raise AssertionError(f"canary {label} did not start: {' | '.join(log[-5:])}")
            canary = Canary(label, address, int(info["tcp"]), int(info["udp"]), token)
            canary_box.append(canary)
            yield canary
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(5)


@contextlib.contextmanager
def host_listener(address: str, label: str = "host") -> Iterator[Canary]:
    """Canary (c): a process on the host bound to ``address`` (TCP and UDP, ephemeral ports)."""
    with _canary_process([], address, label) as canary:
        yield canary


@contextlib.contextmanager
def outside_world(run_id: str) -> Iterator[OutsideWorld]:
    """Canary (a): a namespace behind a veth pair, at a free /30 of 198.18.0.0/15.

    The namespace has no default route: it answers what reaches it and can reach nothing but
    the host's end of the veth pair.
    """
    suffix = secrets.token_hex(4)
    namespace = f"enclave-test-{run_id}-world-{suffix}"
    host_veth, peer_veth = f"ew{suffix}h", f"ew{suffix}n"
    block = free_benchmark_block()
    host_ip, world_ip = (str(block.network_address + 1), str(block.network_address + 2))
    problems: list[str] = []
    try:
        _run(["ip", "netns", "add", namespace])
        _run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", peer_veth])
        _run(["ip", "link", "set", peer_veth, "netns", namespace])
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_veth])
        _run(["ip", "link", "set", host_veth, "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{world_ip}/30", "dev", peer_veth])
        _run(["ip", "-n", namespace, "link", "set", peer_veth, "up"])
        _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        prefix = ["ip", "netns", "exec", namespace]
        with _canary_process(prefix, world_ip, "world", [DNS_PORT]) as canary:
            yield OutsideWorld(namespace, host_veth, host_ip, canary)
    finally:
        # deleting one end of a veth pair deletes both
        if _run(["ip", "link", "show", host_veth], check=False).returncode == 0:
            proc = _run(["ip", "link", "del", host_veth], check=False)
            if proc.returncode != 0:
                problems.append(f"veth {host_veth}: {proc.stderr.strip()}")
        if namespace in _run(["ip", "netns", "list"]).stdout.split():
            proc = _run(["ip", "netns", "del", namespace], check=False)
            if proc.returncode != 0:
                problems.append(f"netns {namespace}: {proc.stderr.strip()}")
    if problems:
        raise AssertionError(f"could not remove canary (a): {problems}")


@contextlib.contextmanager
def network_canary(
    resources: DockerResources, image: str, *, label: str = "network"
) -> Iterator[Canary]:
    """Canary (b): a container listening on TCP and UDP, alone on a new Docker network."""
    network = resources.network(f"canary-{label}")
    token = secrets.token_hex(8)
    container = resources.container(
        image,
        ["python3", "-c", CANARY_SERVER, "0.0.0.0", token],
        role=f"canary-{label}",
        network=network.name,
    )
    try:
        info = _wait_for_ready(container)
        address = container_ip(container, network)
        canary = Canary(label, address, int(info["tcp"]), int(info["udp"]), token)
        canary._refresh = lambda: _refresh_from_logs(canary, container)
        yield canary
    finally:
        client = resources.client
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container.id or "", force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_network(network.id or "")


def _container_lines(container: Container) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in container.logs(stdout=True, stderr=False).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                events.append(value)
    return events


def _wait_for_ready(container: Container) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for event in _container_lines(container):
            if event.get("ready"):
                return event
        container.reload()
        if container.status not in {"created", "running"}:
            logs = container.logs().decode(errors="replace")
            raise AssertionError(f"canary {container.name} exited: {logs[-500:]}")
        time.sleep(0.1)
    raise AssertionError(f"canary {container.name} did not start in {START_TIMEOUT_S} s")


def _refresh_from_logs(canary: Canary, container: Container) -> None:
    events = [e for e in _container_lines(container) if "seen" in e]
    with canary._lock:
        canary._events[:] = events


def missing_network_tools() -> str | None:
    """Why canaries and probes cannot run here (not root, a tool missing), or ``None``."""
    if os.geteuid() != 0:
        return "egress canaries need root (network namespaces, nsenter, raw sockets, iptables)"
    for tool in ("ip", "nsenter", "iptables"):
        if shutil.which(tool) is None:
            return f"egress canaries need {tool!r}, which is not installed"
    return None
