"""Checks that need code (named from the baseline as ``python: enclave.compliance.pychecks:f``).

Each takes the facts (a mapping of fact roots) and returns ``(passed, evidence)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["vault_policies_confined"]

SELF_PATHS = frozenset({"auth/token/lookup-self", "auth/token/renew-self"})


def _within(path: str, prefixes: list[str]) -> bool:
    """Whether every path a Vault ACL path pattern can match lies under one of ``prefixes``.

    Vault patterns have two wildcards: a trailing ``*`` (any suffix) and ``+`` (one segment).
    A pattern is confined when the part before its first wildcard already starts with an
    allowed prefix (so no expansion can leave it).
    """
    fixed = path
    for wildcard in ("*", "+"):
        if wildcard in fixed:
            fixed = fixed[: fixed.index(wildcard)]
    return any(fixed.startswith(prefix) for prefix in prefixes)


def vault_policies_confined(facts: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Every rule of every policy the enclave's roles hand out stays inside the enclave.

    Workloads: the enclave's KV and transit mounts and their own token's self endpoints. The
    controller: those, plus the lease endpoints of the workloads' AppRole mount, and
    ``sys/seal`` only when the spec asks for sealing on kill. Globs are judged by what they can
    match (Vault's ``*`` and ``+``), not by how they look.
    """
    vault = facts["vault"]
    paths = vault["paths"]
    seal = bool(facts.get("spec", {}).get("shutdown", {}).get("seal_vault"))
    own = [f"{paths['kv']}/", f"{paths['transit']}/"]
    login = f"auth/{paths['workload_auth']}/login"
    controller = [f"sys/leases/lookup/{login}/", f"sys/leases/revoke-prefix/{login}"]
    offending: list[str] = []
    unreadable: list[str] = []
    for policy in vault["policies"]:
        if not policy["parsed"]:
            unreadable.append(policy["name"])
        allowed = list(own)
        if not policy["workload"]:
            allowed += controller
        for rule in policy["rules"]:
            path = rule["path"]
            if path in SELF_PATHS or (not policy["workload"] and seal and path == "sys/seal"):
                continue
            if not _within(path, allowed):
                offending.append(f"{policy['name']}: {path} {rule['capabilities']}")
    evidence = {
        "policies": [p["name"] for p in vault["policies"]],
        "outside_the_enclave": offending,
        "unreadable_policies": unreadable,
    }
    return not offending and not unreadable, evidence
