"""The Vault policies enclave writes, generated from the spec (least privilege, reviewed here).

Workload policies (gateway, model servers) have no ``sudo`` and no path wider than their own
enclave's subtree; every path is exact or a glob under ``enclave-<name>-kv/data/<area>/``. Only
the gateway and the controller may read the control key (``<kv>/data/control/key``) and the
API-token records with their HMAC key (the controller reads one record by id, to check who asks
it for a kill or a resume; it cannot list them). The shutdown controller holds ``sudo`` on
exactly the two lease paths it needs to revoke every workload token at once (Vault protects
those endpoints with ``sudo``), and on ``sys/seal`` only when the spec asks for break-glass
sealing.

The orchestrator policy is what the embedded default's admin token carries: it manages objects
named ``enclave-*`` and nothing else. Its own name does not match ``enclave-*``, so it cannot
rewrite itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave.vault.names import (
    API_TOKEN_KEY,
    API_TOKENS,
    AUDIT_SIGNER_KEY,
    CONTROL_KEY,
    CONTROLLER,
    GATEWAY,
    EnclavePaths,
    model_component,
)

ADMIN_POLICY = "enclave_orchestrator"


@dataclass(frozen=True, slots=True)
class Rule:
    path: str
    capabilities: tuple[str, ...]


def render(rules: list[Rule]) -> str:
    """HCL for ``rules``."""
    blocks = []
    for rule in rules:
        caps = ", ".join(f'"{c}"' for c in rule.capabilities)
        blocks.append(f'path "{rule.path}" {{\n  capabilities = [{caps}]\n}}\n')
    return "\n".join(blocks)


SELF = [
    Rule("auth/token/lookup-self", ("read",)),
    Rule("auth/token/renew-self", ("update",)),
]


def admin_rules() -> list[Rule]:
    manage = ("create", "read", "update", "delete", "list")
    return [
        Rule("sys/mounts", ("read",)),
        Rule("sys/mounts/enclave-*", manage),
        Rule("sys/auth", ("read",)),
        Rule("sys/auth/enclave-*", (*manage, "sudo")),
        Rule("sys/policies/acl", ("list",)),
        Rule("sys/policies/acl/enclave-*", manage),
        Rule("auth/enclave-*", manage),
        Rule("enclave-*", manage),
        Rule("sys/leases/lookup/auth/enclave-*", ("list", "sudo")),
        Rule("sys/leases/revoke-prefix/auth/enclave-*", ("update", "sudo")),
        Rule("sys/leases/revoke-prefix/enclave-*", ("update", "sudo")),
        Rule("sys/wrapping/lookup", ("update",)),
        Rule("sys/wrapping/unwrap", ("update",)),
        Rule("auth/token/lookup-accessor", ("update",)),
        Rule("auth/token/revoke-accessor", ("update",)),
        Rule("sys/audit", ("read", "sudo")),
        Rule("sys/seal", ("update", "sudo")),
        *SELF,
    ]


def gateway_rules(paths: EnclavePaths) -> list[Rule]:
    return [
        Rule(f"{paths.kv}/data/{API_TOKENS}/*", ("read",)),
        Rule(f"{paths.kv}/metadata/{API_TOKENS}/", ("list",)),
        Rule(f"{paths.kv}/data/{API_TOKEN_KEY}", ("read",)),
        Rule(f"{paths.kv}/data/{CONTROL_KEY}", ("read",)),
        Rule(f"{paths.transit}/sign/{AUDIT_SIGNER_KEY}", ("update",)),
        Rule(f"{paths.transit}/keys/{AUDIT_SIGNER_KEY}", ("read",)),
        *SELF,
    ]


def model_rules(paths: EnclavePaths, model: str) -> list[Rule]:
    return [Rule(f"{paths.kv}/data/models/{model}/*", ("read",)), *SELF]


def controller_rules(paths: EnclavePaths, *, seal: bool) -> list[Rule]:
    login = f"auth/{paths.workload_auth}/login"
    rules = [
        Rule(f"sys/leases/lookup/{login}/", ("list", "sudo")),
        Rule(f"sys/leases/revoke-prefix/{login}", ("update", "sudo")),
        Rule(f"{paths.kv}/data/{CONTROL_KEY}", ("read",)),
        # people's API tokens, to check who asks for a kill or a resume (by id: no list)
        Rule(f"{paths.kv}/data/{API_TOKENS}/*", ("read",)),
        Rule(f"{paths.kv}/data/{API_TOKEN_KEY}", ("read",)),
        Rule(f"{paths.transit}/sign/{AUDIT_SIGNER_KEY}", ("update",)),
        Rule(f"{paths.transit}/keys/{AUDIT_SIGNER_KEY}", ("read",)),
        *SELF,
    ]
    if seal:
        rules.append(Rule("sys/seal", ("update", "sudo")))
    return rules


def component_rules(paths: EnclavePaths, component: str, *, seal: bool = False) -> list[Rule]:
    """The rules of ``component`` (``gateway``, ``controller`` or ``model-<name>``)."""
    if component == GATEWAY:
        return gateway_rules(paths)
    if component == CONTROLLER:
        return controller_rules(paths, seal=seal)
    prefix = model_component("")
    if component.startswith(prefix):
        return model_rules(paths, component.removeprefix(prefix))
    raise ValueError(f"unknown component {component!r}")
