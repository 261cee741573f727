"""Helpers for the gateway's unit tests: a test spec, API tokens, a settable clock."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from enclave.gateway.approvals import ApprovalStore
from enclave.gateway.auth import TokenCache, TokenSnapshot
from enclave.gateway.pipeline import Pipeline
from enclave.gateway.policy import Policy
from enclave.gateway.ratelimit import RateLimiter
from enclave.gateway.rules import RuleScreen
from enclave.gateway.state import ShutdownState
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.tokens import TokenRecord, new_token, parse_token, token_hash
from support import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path

    from support.workspace import Workspace

SCREENS = REPO_ROOT / "policies" / "usage" / "screens.yaml"

# Purposes: translation, threat-triage (needs approval), logistics-planning, software-assurance
# (ceiling secret) and training-simulation (ceiling cui). The enclave is "confidential", so
# training-simulation can never be served here.
SPEC = """\
apiVersion: enclave.dev/v1alpha1
kind: Enclave
metadata: {name: gw}
spec:
  classification: confidential
  models: [{name: assistant}, {name: coder}]
  gateway:
    rateLimit: {requestsPerMinute: 600}
    maxRequestBody: 64Ki
  rbac:
    roles:
      analyst: {actions: [query], purposes: [translation, logistics-planning, threat-triage]}
      coder: {actions: [query], purposes: [software-assurance]}
      approver: {actions: [approve]}
      watcher: {actions: [audit-read]}
      officer: {actions: [kill, resume, audit-read]}
      admin: {actions: [token-admin]}
    principals:
      - {name: alice, roles: [analyst]}
      - {name: bob, roles: [coder]}
      - {name: carol, roles: [approver, analyst]}
      - {name: dave, roles: [approver]}
      - {name: erin, roles: [watcher, officer]}
      - {name: frank, roles: [admin]}
      - {name: grace, roles: [analyst, coder]}
  usage:
    requireApproval: [threat-triage]
  shutdown: {heartbeat: 1s, lease: 2s, resumeApprovals: 1}
"""


def write_spec(workspace: Workspace, text: str = SPEC) -> LoadedSpec:
    return load_spec(workspace.write(text))


def load_screen(loaded: LoadedSpec, path: Path = SCREENS) -> RuleScreen:
    return RuleScreen.from_file(path, loaded.catalog)


@dataclass
class Clock:
    """A monotonic clock that moves only when told."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Tokens:
    """API tokens issued the way enclave.vault.tokens issues them, without Vault."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    records: dict[str, TokenRecord] = field(default_factory=dict)
    by_principal: dict[str, str] = field(default_factory=dict, repr=False)

    def issue(
        self, principal: str, roles: tuple[str, ...], *, expires: datetime | None = None
    ) -> str:
        token, token_id, secret = new_token()
        digest = token_hash(
            self.key, secret, token_id=token_id, principal=principal, expires=expires
        )
        created = datetime(2026, 1, 1, tzinfo=UTC)
        self.records[token_id] = TokenRecord(token_id, principal, roles, created, expires, digest)
        self.by_principal.setdefault(principal, token)
        return token

    def revoke(self, token: str) -> None:
        token_id = parse_token(token)[0]
        del self.records[token_id]

    def snapshot(self) -> TokenSnapshot:
        return TokenSnapshot(dict(self.records), self.key)


def issue_for_spec(loaded: LoadedSpec) -> Tokens:
    """One token per principal of the spec, bound to all its roles."""
    tokens = Tokens()
    for principal in loaded.spec.rbac.principals:
        tokens.issue(principal.name, tuple(principal.roles))
    return tokens


def cache_for(tokens: Tokens, policy: Policy, clock: Clock) -> TokenCache:
    cache = TokenCache(tokens.snapshot, policy.resolve_token, clock=clock)
    cache.install(tokens.snapshot())
    return cache


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def build_pipeline(
    loaded: LoadedSpec, tokens: Tokens, clock: Clock, *, screen: RuleScreen | None = None
) -> Pipeline:
    """A pipeline over ``tokens`` (installed), serving (the lease just renewed)."""
    policy = Policy.from_spec(loaded)
    pipeline = Pipeline(
        policy=policy,
        tokens=cache_for(tokens, policy, clock),
        state=ShutdownState.from_spec(loaded.spec.shutdown, clock=clock),
        screen=screen or load_screen(loaded),
        approvals=ApprovalStore(clock=clock),
        limiter=RateLimiter.from_spec(loaded.spec.gateway, clock=clock),
        max_request_body=loaded.spec.gateway.max_request_body,
        store_content=loaded.spec.audit.store_content,
        clock=clock,
    )
    pipeline.state.heartbeat()
    return pipeline


def chat(text: str, *, model: str = "assistant", stream: bool = False) -> bytes:
    return json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    ).encode()
