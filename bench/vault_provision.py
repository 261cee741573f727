"""Embedded Vault cold start, and provisioning one enclave's Vault objects.

Targets (issue "Vault-managed secrets"): embedded Vault cold start to unsealed <= 5 s;
provisioning one enclave's Vault objects <= 2 s. Cold start is a fresh state directory each
round: generate the CA and server certificate, start OpenBao, initialise (Shamir 3/2), unseal,
write the orchestrator policy, issue the admin token and revoke the root token. Provisioning
runs with the orchestrator's admin token (not root) against that server, for a new enclave each
round; the re-run of an up-to-date enclave is timed too.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from enclave.spec import load_spec
from enclave.vault.embedded import EmbeddedVault
from enclave.vault.provision import provision, teardown
from support.workspace import make_workspace

COLD_ROUNDS = 3
PROVISION_ROUNDS = 5


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms (max {max(values) * 1000:.0f} ms)"


def main() -> None:
    cold: list[float] = []
    fresh: list[float] = []
    rerun: list[float] = []
    with tempfile.TemporaryDirectory(prefix="enclave-bench-vault-") as tmp:
        root = Path(tmp)
        for round_ in range(COLD_ROUNDS):
            vault = EmbeddedVault(root / f"state-{round_}")
            start = time.perf_counter()
            status = vault.start()
            cold.append(time.perf_counter() - start)
            assert status.running and status.initialized and not status.sealed
            if round_ < COLD_ROUNDS - 1:
                vault.stop()
        workspace = make_workspace(root / "specs")
        client = vault.admin_client()
        try:
            for i in range(PROVISION_ROUNDS):
                spec = workspace.example(("name: demo", f"name: bench{i}"), name=f"e{i}.yaml")
                loaded = load_spec(spec)
                fresh.append(provision(client, loaded).seconds)
                rerun.append(provision(client, loaded).seconds)
                teardown(client, loaded.name)
        finally:
            client.adapter.close()
            vault.stop()
    print("embedded vault and provisioning (OpenBao on loopback, TLS, raft storage)")
    print("| measure | median (max) | target |")
    print("| --- | --- | --- |")
    print(f"| embedded cold start to unsealed, {COLD_ROUNDS} rounds | {_ms(cold)} | <= 5 s |")
    print(f"| provision one enclave, {PROVISION_ROUNDS} rounds | {_ms(fresh)} | <= 2 s |")
    print(f"| re-provision an up-to-date enclave | {_ms(rerun)} | |")
