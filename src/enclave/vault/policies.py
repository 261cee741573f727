"""The Vault policies enclave writes, generated from the spec (least privilege, reviewed here).

Workload policies (gateway, model servers) have no ``sudo`` and no path outside their own
enclave; every path is exact or a glob under ``enclave-<name>-kv/data/<area>/``. Only the
gateway and the controller may read the control key (``<kv>/data/control/key``) and the
API-token records with their HMAC key (the controller reads one record by id, to check who asks
it for a kill or a resume; it cannot list them); only they may sign with the enclave's transit
key (their audit logs' checkpoints). No policy has a bare ``*``, a ``+`` segment, or a glob
outside its own enclave's KV.

Two deliberate deviations from "no ``*`` paths, no ``sudo``", each as narrow as Vault allows
(``tests/integration/test_vault_provision.py`` asserts exactly this, and fails on anything
wider):

- **The controller holds ``sudo``** on exactly two paths, its enclave's own workload lease
  prefix: ``list`` on ``sys/leases/lookup/auth/enclave-<name>-approle/login/`` (to count what
  it revokes) and ``update`` on ``sys/leases/revoke-prefix/auth/enclave-<name>-approle/login``
  (to revoke every gateway and model-server token in one synchronous call, the kill switch's
  Vault step). Vault and OpenBao protect both endpoints with ``sudo`` and offer no sudo-free
  way to do this: revoking token by token needs their accessors, and listing accessors
  (``auth/token/accessors``) needs ``sudo`` as well, over every token of the server. The paths
  are exact (no glob): the controller cannot list or revoke another enclave's leases, nor the
  controller's own (they come from the separate ``-control`` mount). ``sys/seal`` (also
  ``sudo``) is granted only when the spec asks for break-glass sealing. Nothing else has sudo.
- **Trailing globs inside a component's own KV area**: ``<kv>/data/api-tokens/*`` (the gateway
  and the controller read people's token records) and ``<kv>/data/models/<model>/*`` (a model
  server's own secrets), ``read`` only. Token records are created after the policy, one per
  issued token under a random id, so their paths cannot be named in advance; exact paths would
  mean rewriting the policy at every ``enclave token issue``, which would give token issuing
  the right to write policies. The glob is the last segment only, one area deep.

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


def owned_policy(paths: EnclavePaths, text: str) -> bool:
    """Whether a policy's text is about this enclave's own paths.

    Policy names alone are ambiguous (enclave ``a``'s model ``x-gateway`` and enclave
    ``a-model-x``'s gateway are both ``enclave-a-model-x-gateway``); the paths inside are not.
    """
    own = (f'"{paths.kv}/', f'"{paths.transit}/', f"/auth/{paths.workload_auth}/")
    return any(marker in text for marker in own)


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
