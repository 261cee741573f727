"""Emergency revocation and break-glass seal against a real OpenBao (``bao`` from the dev extras).

Target (issue "Revoke and seal"): revoking all of an enclave's tokens with 100 live tokens takes
<= 1 s. Measured as the shutdown controller does it: with the controller's own least-privilege
token (from the separate control AppRole mount), one ``revoke_all`` call (count the leases, then
one synchronous ``revoke-prefix``). The baseline revokes the same number of tokens one by one by
accessor. ``seal`` is timed once per throwaway server (sealing cannot be repeated without the
unseal key), on SEAL_SERVERS servers, with a probe showing when Vault stopped serving.

Run alone with ``PYTHONPATH=tests python -m bench.vault_revoke``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from enclave.errors import VaultError, VaultForbiddenError
from enclave.vault.client import VaultConnection, connect, translate
from enclave.vault.names import CONTROLLER, GATEWAY, EnclavePaths
from enclave.vault.policies import controller_rules, render
from enclave.vault.revoke import login_prefix, revoke_accessor, revoke_all, seal
from support.openbao import bao_binary, hvac_client, running_openbao

TOKENS = 100
ROUNDS = 5
SEAL_SERVERS = 3
PARALLEL = 16
PATHS = EnclavePaths("bench")


def _login(client: Any, mount: str, role: str) -> tuple[str, str]:
    role_id = client.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
    auth = client.auth.approle.login(role_id, secret_id, mount_point=mount, use_token=False)
    return str(auth["auth"]["client_token"]), str(auth["auth"]["accessor"])


def _setup(root: Any) -> None:
    policy = PATHS.policy(CONTROLLER)
    root.sys.create_or_update_policy(policy, render(controller_rules(PATHS, seal=False)))
    for mount, role, policies in (
        (PATHS.workload_auth, GATEWAY, ["default"]),
        (PATHS.control_auth, CONTROLLER, [policy]),
    ):
        root.sys.enable_auth_method("approle", path=mount)
        root.auth.approle.create_or_update_approle(
            role,
            mount_point=mount,
            token_type="service",  # noqa: S106 - a token type, not a password
            token_policies=policies,
            token_ttl="1h",  # noqa: S106
        )


def _all_refused(connection: VaultConnection, tokens: list[str]) -> bool:
    for token in tokens:
        try:
            connect(connection, token).adapter.close()
        except VaultForbiddenError:
            continue
        return False
    return True


def _parallel_revoke(clients: list[Any], prefix: str) -> float:
    """The option a wider controller policy would allow: each listed lease revoked exactly
    (``revoke-prefix/<lease id>``) by PARALLEL concurrent requests, then one prefix sweep for
    logins that raced in. Needs ``sys/leases/revoke-prefix/<prefix>/*`` in the policy."""
    start = time.perf_counter()
    with translate("list"):
        ids = clients[0].adapter.list(f"/v1/sys/leases/lookup/{prefix}/")["data"]["keys"]

    def one(index: int) -> None:
        with translate("revoke one lease"):
            clients[index % len(clients)].adapter.put(
                f"/v1/sys/leases/revoke-prefix/{prefix}/{ids[index]}", json={"sync": True}
            )

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one, range(len(ids))))
    with translate("sweep"):
        clients[0].adapter.put(f"/v1/sys/leases/revoke-prefix/{prefix}", json={"sync": True})
    return time.perf_counter() - start


def revocation() -> dict[str, list[float]]:
    """Seconds per round to revoke TOKENS live tokens: revoke_all, one by one, in parallel."""
    times: dict[str, list[float]] = {"bulk": [], "single": [], "parallel": []}
    with (
        running_openbao(bao_binary()) as server,
        hvac_client(server.address, server.root_token) as root,
        contextlib.ExitStack() as stack,
    ):
        connection = VaultConnection(server.address)
        _setup(root)
        controller = connect(connection, _login(root, PATHS.control_auth, CONTROLLER)[0])
        stack.callback(controller.adapter.close)
        workers = [
            stack.enter_context(hvac_client(server.address, server.root_token))
            for _ in range(PARALLEL)
        ]
        for _ in range(ROUNDS):
            logins = [_login(root, PATHS.workload_auth, GATEWAY) for _ in range(TOKENS)]
            report = revoke_all(controller, PATHS)
            assert report.tokens == TOKENS, report
            times["bulk"].append(report.seconds)
            assert _all_refused(connection, [token for token, _ in logins])

            logins = [_login(root, PATHS.workload_auth, GATEWAY) for _ in range(TOKENS)]
            start = time.perf_counter()
            for _, accessor in logins:
                revoke_accessor(root, accessor)
            times["single"].append(time.perf_counter() - start)
            assert _all_refused(connection, [token for token, _ in logins])

            logins = [_login(root, PATHS.workload_auth, GATEWAY) for _ in range(TOKENS)]
            times["parallel"].append(_parallel_revoke(workers, login_prefix(PATHS)))
            assert _all_refused(connection, [token for token, _ in logins])
    return times


def sealing() -> tuple[list[float], list[float | None]]:
    """(seal call seconds, per server: when the last probe Vault answered was sent, or None).

    A second client keeps calling ``lookup-self`` while the seal runs. OpenBao marks itself
    sealed within milliseconds, then tears down for most of a second before the seal call
    returns; requests arriving meanwhile are held and then refused (503, or a 400 "context
    canceled" for one caught mid-teardown).
    """
    calls: list[float] = []
    served: list[float | None] = []
    for _ in range(SEAL_SERVERS):
        with (
            running_openbao(bao_binary()) as server,
            hvac_client(server.address, server.root_token) as root,
            hvac_client(server.address, server.root_token) as probe,
        ):
            last_served: float | None = None
            start = time.perf_counter()
            sealer = threading.Thread(target=lambda: calls.append(seal(root).seconds))
            sealer.start()
            while sealer.is_alive():
                sent = time.perf_counter() - start
                try:
                    with translate("probe"):
                        probe.auth.token.lookup_self()
                except VaultError:  # sealed (503), or 400 "context canceled" mid-teardown
                    continue
                last_served = sent
            sealer.join()
            assert len(calls) == len(served) + 1, "the seal call failed"
            with translate("seal status"):
                assert probe.sys.read_seal_status()["sealed"] is True
            served.append(last_served)
    return calls, served


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms (max {max(values) * 1000:.1f} ms)"


def main() -> None:
    times = revocation()
    bulk, single, parallel = times["bulk"], times["single"], times["parallel"]
    seals, served = sealing()
    print(f"vault revocation ({os.cpu_count()} cpus, OpenBao on loopback, raft storage)")
    print("| measure | median (max) | target |")
    print("| --- | --- | --- |")
    print(f"| revoke_all, {TOKENS} live tokens, {ROUNDS} rounds | {_ms(bulk)} | <= 1 s |")
    print(f"| baseline: {TOKENS} x revoke_accessor | {_ms(single)} | |")
    ratio = statistics.median(single) / statistics.median(bulk)
    print(f"| one-by-one / revoke_all | {ratio:.1f}x | |")
    print(f"| option: {PARALLEL} parallel exact revokes + sweep | {_ms(parallel)} | |")
    print(f"| seal: the call returns, {SEAL_SERVERS} servers | {_ms(seals)} | |")
    answered = ", ".join("none" if t is None else f"{t * 1000:.1f} ms" for t in served)
    print(f"| seal: last probe answered, sent after the seal started | {answered} | |")


if __name__ == "__main__":
    main()
