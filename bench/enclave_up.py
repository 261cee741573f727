"""``enclave up``, an idempotent re-``up`` and ``enclave down``, as a person runs them.

Targets (issue 6, "Performance"), with the images already built: ``enclave up`` to the first
successful gateway answer <= 20 s; ``enclave down`` <= 10 s; idempotent re-``up`` <= 3 s; the
base image built from nothing <= 90 s.

Everything is a real ``enclave`` process (``enclave --state-dir S up SPEC --json``, ``down
NAME --json``), so the CLI's own start-up (Python, imports) is in every figure. The images are
built or found first, untimed, with ``enclave images build``, and every ``up`` is given a copy
of the wheels they were built from (``--wheelhouse``, the transfer-bundle path): an edit to
``src/`` in this checkout during the run would otherwise rebuild the images inside a timed
``up``. A round whose ``up`` built an image anyway is flagged INVALID. Each round runs on its
own throwaway state directory (sharing the repository's image cache, like the e2e tests), a
unique enclave name and a free loopback port:

* ``up`` from nothing: the command returns only after the gateway's ``/healthz`` says ok, so
  "up returned" is the first successful gateway answer. Every round is a Vault cold start
  (fresh state directory: certificates, init, unseal). The per-step seconds ``up`` reports
  (``steps`` in its JSON) break it down; what is left is the process around them.
* first authorised chat: ``up`` provisions the enclave in Vault, so an API token can only be
  issued (``enclave token issue``) after it returns. "First chat 200" is the time from ``up``'s
  start to the first 200 from ``/v1/chat/completions`` through the published port, *not*
  counting the ``token issue`` run in between (reported on its own row).
* an idempotent re-``up`` of the same spec (it must change nothing);
* ``down`` (containers, networks, firewall rules, controller, Vault objects).

With ``ENCLAVE_BENCH_BASE_FROM_NOTHING=1`` it also builds the base image from nothing, with
:func:`bench.images.base_from_nothing` (needs root and a Debian mirror: the one measure whose
traffic leaves loopback). Everything else talks to 127.0.0.1 only.

Whatever happens, each round ends with ``enclave down NAME`` and ``enclave vault stop`` on its
state directory, then a sweep by name (controller, labelled containers and networks, firewall
chain) that reports anything ``down`` left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.images import FROM_NOTHING, base_from_nothing
from enclave import controlproc
from enclave.backends import firewall
from enclave.backends.base import LABEL_NAME
from enclave.images.service import connect_engine
from enclave.vault.embedded import EmbeddedVault
from support import STATE_DIR, private_dir
from support.gateway_procs import enclave_argv

ROUNDS = 3
UP_TIMEOUT = 300.0
CHAT_TIMEOUT = 30.0
TARGET_UP = 20.0
TARGET_REUP = 3.0
TARGET_DOWN = 10.0
TARGET_BASE = 90.0
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A command the benchmark runs failed; the round is not measured."""


@dataclass(frozen=True)
class Images:
    tags: dict[str, str]
    """Component -> tag, as ``enclave images build`` left them."""
    wheelhouse: Path
    """A copy of the wheels they were built from, passed to every ``up`` (``--wheelhouse``)."""


@dataclass
class Round:
    name: str
    up: float = 0.0
    """``up`` from the command's start to its exit (the gateway's /healthz was ok)."""
    up_reported: float = 0.0
    """The ``seconds`` ``up`` reports itself (from inside the process)."""
    steps: dict[str, float] = field(default_factory=dict)
    token: float = 0.0
    """``enclave token issue``, run after ``up`` returned; not in ``first_chat``."""
    first_chat: float = 0.0
    """``up``'s start to the first authorised chat 200, less the ``token issue`` run."""
    before_chat: list[str] = field(default_factory=list)
    """The answers before the first chat 200 (status and error code)."""
    reup: float = 0.0
    reup_changed: list[str] = field(default_factory=list)
    down: float = 0.0
    rebuilt: list[str] = field(default_factory=list)
    """Images ``up`` built although they were built beforehand (the sources changed)."""


def _enclave(
    state: Path, *args: str, timeout: float = 120.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    done = subprocess.run(
        [*enclave_argv(), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done, time.perf_counter() - start


def _ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise BenchError(f"{what} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _state_dir(root: Path) -> Path:
    """A fresh state directory sharing the repository's image cache (wheels, base rootfs)."""
    state = private_dir(root / "state")
    (state / "cache").symlink_to(private_dir(private_dir(STATE_DIR) / "cache"))
    return state


def _write_spec(root: Path, state: Path, name: str, port: int) -> Path:
    done, _ = _enclave(state, "init", str(root / "ws"), "--name", name, "--force")
    _ok(done, "enclave init")
    spec = root / "ws" / "enclave.yaml"
    text = spec.read_text(encoding="utf-8")
    if "127.0.0.1:8443" not in text:
        raise BenchError("the example spec no longer listens on 127.0.0.1:8443")
    spec.write_text(text.replace("127.0.0.1:8443", f"{LOOPBACK}:{port}"), encoding="utf-8")
    return spec


def _prebuild(state: Path, wheelhouse: Path) -> dict[str, str]:
    """Build or find every image (untimed), and copy their wheelhouse to ``wheelhouse``.

    Returns component -> tag.
    """
    done, seconds = _enclave(state, "images", "build", "--json", timeout=900)
    result = json.loads(_ok(done, "enclave images build"))
    shutil.copytree(result["wheelhouse"]["directory"], wheelhouse)
    built = [i["component"] for i in result["images"] if i["built"]]
    print(
        f"images: {'built ' + ', '.join(built) if built else 'all up to date'} "
        f"in {seconds:.1f} s (untimed)",
        file=sys.stderr,
    )
    return {i["component"]: i["tag"] for i in result["images"]}


def _first_chat(url: str, token: str) -> list[str]:
    """Send one authorised chat until it answers 200; returns what came before the 200."""
    deadline = time.monotonic() + CHAT_TIMEOUT
    body = {
        "model": "assistant",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Translate into French: good morning."}],
    }
    headers = {"authorization": f"Bearer {token}", "x-enclave-purpose": "translation"}
    before: list[str] = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            except httpx.TransportError as exc:
                before.append(type(exc).__name__)
            else:
                if answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]:
                    return before
                before.append(f"{answer.status_code} {_error_code(answer)}")
            time.sleep(0.05)
    raise BenchError(f"no chat 200 from {url} within {CHAT_TIMEOUT:.0f} s: {before[-3:]}")


def _error_code(answer: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(answer.json()["error"]["code"])
    return answer.text[:80]


def _measure(state: Path, spec: Path, measured: Round, images: Images) -> None:
    up = ("up", str(spec), "--wheelhouse", str(images.wheelhouse), "--json")
    done, measured.up = _enclave(state, *up, timeout=UP_TIMEOUT)
    result: dict[str, Any] = json.loads(_ok(done, "enclave up"))
    measured.up_reported = float(result["seconds"])
    measured.steps = {str(k): float(v) for k, v in result["steps"].items()}
    measured.rebuilt = sorted(c for c, t in result["images"].items() if images.tags.get(c) != t)
    url = str(result["url"])
    if urlsplit(url).hostname != LOOPBACK:
        raise BenchError(f"the gateway is published at {url}, not on loopback")

    issued, measured.token = _enclave(state, "token", "issue", str(spec), "--principal", "alice")
    token = _ok(issued, "enclave token issue").strip().splitlines()[-1].split()[-1]
    asked = time.perf_counter()
    measured.before_chat = _first_chat(url, token)
    measured.first_chat = measured.up + (time.perf_counter() - asked)

    again, measured.reup = _enclave(state, *up, timeout=UP_TIMEOUT)
    measured.reup_changed = list(json.loads(_ok(again, "enclave up (again)"))["changed"])

    gone, seconds = _enclave(state, "down", measured.name, "--json")
    _ok(gone, "enclave down")
    measured.down = seconds


def _sweep(state: Path, name: str) -> list[str]:
    """Remove whatever of enclave ``name`` is left, by name; returns what was left."""
    left: list[str] = []
    if controlproc.stop(state, name):
        left.append("controller process")
    client = connect_engine()
    try:
        label: dict[str, str | list[str] | bool] = {"label": f"{LABEL_NAME}={name}"}
        for container in client.containers.list(all=True, filters=label):
            left.append(f"container {container.name}")
            container.remove(force=True)
        for network in client.networks.list(filters=label):
            left.append(f"network {network.name}")
            network.remove()
    finally:
        client.close()
    left += [f"firewall rule {rule}" for rule in firewall.remove(name)]
    return left


def _round(images: Images) -> Round:
    measured = Round(name=f"bench{secrets.token_hex(3)}")
    with tempfile.TemporaryDirectory(prefix="enclave-bench-up-") as tmp:
        root = Path(tmp)
        state = _state_dir(root)
        try:
            spec = _write_spec(root, state, measured.name, _free_port())
            _measure(state, spec, measured, images)
        finally:
            if not measured.down:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    _enclave(state, "down", measured.name, "--json")
            try:
                stopped = _enclave(state, "vault", "stop", timeout=60)[0].returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            if not stopped:
                EmbeddedVault(state).stop()
            left = _sweep(state, measured.name)
            if left:
                print(f"{measured.name}: down left {', '.join(left)} (removed)", file=sys.stderr)
    return measured


def _base_row(enabled: bool) -> list[str]:
    if not enabled:
        note = (
            "see the images table"
            if FROM_NOTHING
            else "not run: set ENCLAVE_BENCH_BASE_FROM_NOTHING=1"
        )
        return ["base image from nothing (debootstrap + import)", "-", "-", "<= 90 s", note]
    namespace = f"enclave-bench-{uuid.uuid4().hex[:8]}"
    created: list[str] = []
    client = connect_engine()
    try:
        debootstrap, seconds = base_from_nothing(client, namespace, created)
    finally:
        for tag in created:
            with contextlib.suppress(Exception):
                client.images.remove(tag)
        client.close()
    return [
        f"base image from nothing (debootstrap {debootstrap:.1f} s + import), 1 run",
        f"{seconds:.1f}",
        f"{seconds:.1f}",
        "<= 90 s",
        _verdict([seconds], TARGET_BASE),
    ]


def _verdict(values: list[float], target: float) -> str:
    return "pass" if max(values) <= target else "**fail**"


def _row(measure: str, values: list[float], target: float | None = None) -> list[str]:
    return [
        measure,
        f"{statistics.median(values):.2f}",
        f"{max(values):.2f}",
        f"<= {target:.0f} s" if target is not None else "",
        _verdict(values, target) if target is not None else "",
    ]


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(*, base_from_nothing_run: bool | None = None) -> None:
    """``base_from_nothing_run`` defaults to ``ENCLAVE_BENCH_BASE_FROM_NOTHING=1``."""
    if os.geteuid() != 0:
        raise SystemExit("bench.enclave_up needs root (enclave up installs firewall rules)")
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="enclave-bench-images-") as tmp:
        wheelhouse = Path(tmp) / "wheelhouse"
        images = Images(_prebuild(_state_dir(Path(tmp)), wheelhouse), wheelhouse)
        rounds = [_round(images) for _ in range(ROUNDS)]
    base = _base_row(FROM_NOTHING if base_from_nothing_run is None else base_from_nothing_run)
    load_after = _load()

    rows = [
        _row("`up` returned (gateway /healthz ok)", [r.up for r in rounds], TARGET_UP),
        _row(
            "`up` start to first authorised chat 200 (less `token issue`)",
            [r.first_chat for r in rounds],
            TARGET_UP,
        ),
        _row("idempotent re-`up`", [r.reup for r in rounds], TARGET_REUP),
        _row("`down`", [r.down for r in rounds], TARGET_DOWN),
        base,
        _row("`up` as it reports itself (`seconds`)", [r.up_reported for r in rounds]),
    ]
    steps = list(rounds[0].steps)
    rows += [_row(f"- step: {step}", [r.steps.get(step, 0.0) for r in rounds]) for step in steps]
    rows.append(
        _row(
            "- outside the steps (CLI start, spec, engine)",
            [r.up - sum(r.steps.values()) for r in rounds],
        )
    )
    rows.append(_row("`token issue` between `up` and the chat", [r.token for r in rounds]))
    print(
        f"enclave up / re-up / down ({ROUNDS} rounds, real `enclave` processes, images built; "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}; "
        f"load average before {load_before}, after {load_after})"
    )
    print("| measure | median s | max s | target | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    notes = [
        "answers before the first chat 200: "
        + "; ".join(", ".join(r.before_chat) or "none" for r in rounds),
    ]
    changed = [c for r in rounds for c in r.reup_changed]
    if changed:
        notes.append(f"INVALID re-`up`: it changed {', '.join(changed)}")
    rebuilt = [c for r in rounds for c in r.rebuilt]
    if rebuilt:
        notes.append(f"INVALID `up`: it rebuilt {', '.join(rebuilt)} (the sources changed)")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
