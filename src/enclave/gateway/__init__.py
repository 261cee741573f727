"""The policy gateway's decision core: pure, fast steps the ASGI app composes.

Per request, in order (:class:`Pipeline`): authenticate the API token (:class:`TokenCache`) →
shutdown state (:class:`ShutdownState`, updated only by the controller through
:class:`ControlChannel`) → RBAC and the declared purpose (:class:`Policy`) → prohibited-use
screening (:class:`Screen`, :class:`RuleScreen`) → approval gate (:class:`ApprovalStore`) →
rate limit (:class:`RateLimiter`) → (forward) → output screening while streaming
(:class:`OutputScreen`). Every step answers allow or a :class:`Denial` (HTTP status +
OpenAI-style error code).

Typical wiring::

    loaded = load_spec("enclave.yaml")
    pipeline = Pipeline.from_spec(loaded, vault_token_loader(vault_client, EnclavePaths(name)))
    async with pipeline.tokens:                       # load, then refresh every 0.5 s
        watchdog = asyncio.create_task(pipeline.state.watch())
        decision = pipeline.decide(Endpoint.CHAT, request.headers, await request.body())
        if not decision.allowed:
            return JSONResponse(decision.denial.body(), decision.status, decision.denial.headers())
        await audit_log.append_async(decision.audit_event())
        ...
"""

from __future__ import annotations

from enclave.gateway.approvals import (
    Approval,
    ApprovalSettings,
    ApprovalStatus,
    ApprovalStore,
    approval_event,
)
from enclave.gateway.auth import (
    CacheStatus,
    TokenCache,
    TokenCacheSettings,
    TokenLoader,
    TokenSnapshot,
    vault_token_loader,
)
from enclave.gateway.control import ControlChannel
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.pipeline import GatewayDecision, Pipeline, default_screens_path
from enclave.gateway.policy import Policy, Principal
from enclave.gateway.ratelimit import RateLimiter
from enclave.gateway.request import PURPOSE_HEADER, Endpoint, ParsedRequest, parse_request
from enclave.gateway.rules import RuleScreen
from enclave.gateway.screen import (
    CompositeScreen,
    HoldbackStream,
    OutputScreen,
    Scope,
    Screen,
    ScreenResult,
    Violation,
)
from enclave.gateway.state import Mode, ShutdownState, StreamGuard
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind, sign_control

__all__ = [
    "PURPOSE_HEADER",
    "SIGNATURE_HEADER",
    "Approval",
    "ApprovalSettings",
    "ApprovalStatus",
    "ApprovalStore",
    "CacheStatus",
    "CompositeScreen",
    "ControlChannel",
    "ControlCommand",
    "ControlKind",
    "Denial",
    "DenialCode",
    "Endpoint",
    "GatewayDecision",
    "HoldbackStream",
    "Mode",
    "OutputScreen",
    "ParsedRequest",
    "Pipeline",
    "Policy",
    "Principal",
    "RateLimiter",
    "RuleScreen",
    "Scope",
    "Screen",
    "ScreenResult",
    "ShutdownState",
    "StreamGuard",
    "TokenCache",
    "TokenCacheSettings",
    "TokenLoader",
    "TokenSnapshot",
    "Violation",
    "approval_event",
    "default_screens_path",
    "parse_request",
    "sign_control",
    "vault_token_loader",
]
