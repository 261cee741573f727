"""Where an enclave's objects live in Vault. One place, so that provisioning, revocation,
teardown and the compliance checks always agree.

Per enclave ``demo``::

    enclave-demo-kv/               KV v2: api-tokens/<id> (keyed hashes), api-token-key,
                                   control/key (the shutdown controller's signing key, shared
                                   with the gateways), models/<model>/... (model servers' own
                                   secrets)
    enclave-demo-transit/          transit key "audit-signer" (ed25519) for audit checkpoints
    auth/enclave-demo-approle/     AppRole for the workloads: gateway, model-<model>
    auth/enclave-demo-control/     AppRole for the shutdown controller (kept apart, so that
                                   revoking every workload token never revokes the controller's)
    policies enclave-demo-<component>
"""

from __future__ import annotations

from dataclasses import dataclass

AUDIT_SIGNER_KEY = "audit-signer"
API_TOKENS = "api-tokens"
API_TOKEN_KEY = "api-token-key"  # noqa: S105 - a KV path, not a secret
CONTROL_KEY = "control/key"
GATEWAY = "gateway"
CONTROLLER = "controller"


def model_component(model: str) -> str:
    return f"model-{model}"


@dataclass(frozen=True, slots=True)
class EnclavePaths:
    """The Vault paths of one enclave."""

    enclave: str

    @property
    def prefix(self) -> str:
        return f"enclave-{self.enclave}"

    @property
    def kv(self) -> str:
        return f"{self.prefix}-kv"

    @property
    def transit(self) -> str:
        return f"{self.prefix}-transit"

    @property
    def workload_auth(self) -> str:
        return f"{self.prefix}-approle"

    @property
    def control_auth(self) -> str:
        return f"{self.prefix}-control"

    def auth_mount(self, component: str) -> str:
        return self.control_auth if component == CONTROLLER else self.workload_auth

    def policy(self, component: str) -> str:
        return f"{self.prefix}-{component}"
