"""The kill switch, measured: 20 drills under load on a real enclave, and the dead-man switch.

Targets (issue "Emergency shutdown controller"; p99 over the drills): trigger to every new
request denied <= 100 ms; in-flight streams cut <= 250 ms; model containers stopped <= 2 s;
all Vault tokens revoked <= 1 s; controller lost to gateway denying <= 2 heartbeat intervals.

One enclave is brought up with ``enclave up`` in a throwaway state directory (the images are
the repository's, built once); ``enclave drill --load-token-file`` then runs DRILLS times: each
kills the enclave under synthetic load (streams, requests and probes from a client process),
measures from the controller's side (each kill step's offset from the trigger) and from the
client's (first request refused, last stream in flight cut), and resumes. For the dead-man
switch the controller process is stopped (SIGSTOP) and the time until the gateway's
``/healthz`` says 503 is taken, then it is continued (SIGCONT). Traffic goes only to loopback.

The spec is the example one (``enclave init``) with three changes. The model generates at
TOKEN_DELAY_S per token (``args: [--token-delay, ...]``, the reference runtime's own option), so
that a stream of the drill's 24 tokens lasts longer than the second the drill lets its load run
before the kill: streams are in flight when the kill lands, and the cut is measured. The rate
limit is raised so the load's streams are not refused ``429`` before the kill (the example's
60 a minute is spent in the first drill). The lease is set to LEASE_S: the dead-man target of
2 intervals needs a lease of at most 2 heartbeats (the example's 3 s on a 1 s heartbeat is 3),
and a little under 2 leaves room for the client's polling. Run alone with
``PYTHONPATH=tests python -m bench.shutdown``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path

import httpx

from bench.enclave_up import (
    UP_TIMEOUT,
    BenchError,
    _enclave,
    _free_port,
    _ok,
    _state_dir,
    _sweep,
    _write_spec,
)
from enclave import controlproc

DRILLS = 20
HEARTBEAT_S = 1.0
LEASE_S = 1.9
TOKEN_DELAY_S = 0.05
"""Seconds per generated token: a 24-token stream of the drill's load lasts about 1.2 s."""
REQUESTS_PER_MINUTE = 100_000
SPEC_EDITS = (
    ("lease: 2s", f"lease: {LEASE_S:g}s"),
    (
        "rateLimit: {requestsPerMinute: 60}",
        f"rateLimit: {{requestsPerMinute: {REQUESTS_PER_MINUTE}}}",
    ),
    (
        "      resources: {cpus: 1, memory: 1Gi, pids: 256}\n",
        "      resources: {cpus: 1, memory: 1Gi, pids: 256}\n"
        f'      args: [--token-delay, "{TOKEN_DELAY_S:g}"]\n',
    ),
)
TARGETS_MS = {
    "gateways_denying": 100.0,
    "client_deny": 100.0,
    "client_stream_cut": 250.0,
    "models_stopped": 2000.0,
    "vault_revoked": 1000.0,
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def _token(state: Path, spec: Path, who: str, root: Path) -> Path:
    done, _ = _enclave(state, "token", "issue", str(spec), "--principal", who)
    path = root / f"{who}.token"
    path.write_text(_ok(done, "enclave token issue").strip().splitlines()[-1].split()[-1])
    path.chmod(0o600)
    return path


def _deadman(state: Path, name: str, url: str) -> float:
    """Seconds from stopping the controller to the gateway denying (it is continued after)."""
    pid = controlproc.running(state, name)
    if pid is None:
        raise BenchError("no controller runs")
    os.kill(pid, signal.SIGSTOP)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < 10 * LEASE_S:
            if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 503:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise BenchError("the gateway kept serving without its controller")
    finally:
        os.kill(pid, signal.SIGCONT)


def main() -> None:
    name = f"sd{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="enclave-bench-sd-") as tmp:
        root = Path(tmp)
        state = _state_dir(root)
        spec = _write_spec(root, state, name, _free_port())
        text = spec.read_text(encoding="utf-8")
        for old, new in SPEC_EDITS:
            if old not in text:
                raise BenchError(f"the example spec no longer has {old.strip()!r}")
            text = text.replace(old, new, 1)
        spec.write_text(text, encoding="utf-8")
        try:
            done, seconds = _enclave(state, "up", str(spec), "--json", timeout=UP_TIMEOUT)
            url = json.loads(_ok(done, "enclave up"))["url"]
            bob, alice = _token(state, spec, "bob", root), _token(state, spec, "alice", root)
            time.sleep(1.0)  # the gateway's token cache
            seen: dict[str, list[float]] = {key: [] for key in (*TARGETS_MS, "resume")}
            passed = served_after = 0
            for _ in range(DRILLS):
                drill = ["drill", name, "--token-file", str(bob), "--load-token-file", str(alice)]
                done, _ = _enclave(state, *drill, "--json", timeout=300)
                if done.returncode not in (0, 1):
                    raise BenchError(f"enclave drill exited {done.returncode}: {done.stderr}")
                result = json.loads(done.stdout)
                passed += bool(result["passed"])
                served_after += int(result.get("load", {}).get("served_after_kill", 0))
                for key, values in seen.items():
                    value = result["latencies_ms"].get(key)
                    if value is not None:
                        values.append(float(value))
            deadman = [_deadman(state, name, url) for _ in range(3)]
        finally:
            _enclave(state, "down", name, timeout=120)
            _enclave(state, "vault", "stop", timeout=60)
            left = _sweep(state, name)
    print(
        f"kill switch: {DRILLS} drills under load (up took {seconds:.1f} s; model "
        f"{TOKEN_DELAY_S * 1000:g} ms per token); {passed} passed; {served_after} request(s) "
        "sent after a kill were served"
    )
    print("| measure (ms from the trigger) | p50 | p99 | n | target | verdict |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, values in seen.items():
        target = TARGETS_MS.get(key)
        p99 = _pct(values, 0.99)
        verdict = "" if target is None else ("pass" if p99 <= target else "**fail**")
        print(f"| {key} | {_pct(values, 0.5):.1f} | {p99:.1f} | {len(values)} | "
              f"{'' if target is None else f'<= {target:g}'} | {verdict} |")  # fmt: skip
    limit = 2 * HEARTBEAT_S
    worst = max(deadman)
    print(f"| controller stopped -> gateway denying (s; heartbeat {HEARTBEAT_S:g} s, lease "
          f"{LEASE_S:g} s) | {_pct(deadman, 0.5):.2f} | {worst:.2f} | {len(deadman)} | "
          f"<= {limit:g} | {'pass' if worst <= limit else '**fail**'} |")  # fmt: skip
    if left:
        print(f"left behind and removed: {left}")


if __name__ == "__main__":
    main()
