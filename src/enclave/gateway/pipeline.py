"""The gateway's decision for one request, composed of every policy step in order.

:meth:`Pipeline.decide` runs, stopping at the first refusal:

1. authenticate the API token (``401``; ``503 auth_unavailable`` when the token cache is stale)
2. shutdown state: killed, or the controller's lease lapsed (``503 enclave_shutdown``)
3. RBAC and the declared purpose (``X-Enclave-Purpose``): the ``query`` action and the purpose
   granted to the principal, the purpose servable here (``403 forbidden`` /
   ``403 purpose_not_permitted``)
4. request size (``413``), then the body is parsed (``400``) and the model looked up (``404``)
5. prohibited-use screening of every text in the request (``403 prohibited_use``)
6. approval gate: a purpose requiring approval is held (``202 approval_required``)
7. the principal's rate limit (``429``)

Steps 1-3 need only the headers, so an oversized body from someone who may not send it is
refused before the gateway reads it; the size is checked before the body is parsed, since
parsing is what an oversized body attacks. The app should also stop reading a body past
:attr:`Pipeline.max_request_body`.

An allowed decision carries the canonical request to forward
(:attr:`GatewayDecision.request`). The app then streams the output through
:meth:`Pipeline.output_screen`, registers the stream with :meth:`Pipeline.open_stream`, and
appends :meth:`GatewayDecision.audit_event` to the audit log before releasing the response.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from enclave.audit.record import AuditEvent, Decision
from enclave.gateway.approvals import ApprovalSettings, ApprovalStore
from enclave.gateway.auth import TokenCache, TokenCacheSettings
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.policy import Policy
from enclave.gateway.ratelimit import RateLimiter
from enclave.gateway.request import (
    AUTHORIZATION,
    PURPOSE_HEADER,
    Endpoint,
    ParsedRequest,
    header,
    parse_request,
)
from enclave.gateway.rules import RuleScreen
from enclave.gateway.state import ShutdownState
from enclave.spec.model import Action

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from enclave.gateway.approvals import Approval
    from enclave.gateway.auth import TokenLoader
    from enclave.gateway.policy import Principal
    from enclave.gateway.screen import OutputScreen, Screen
    from enclave.gateway.state import StreamGuard
    from enclave.spec.load import LoadedSpec

ANONYMOUS = "anonymous"
_AUDIT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SCREENS_FILE = "screens.yaml"


def default_screens_path(loaded: LoadedSpec) -> Path:
    """The screens policy file: ``screens.yaml`` beside the spec's usage catalog."""
    return loaded.catalog_source.with_name(SCREENS_FILE)


def _audit_id(value: str | None) -> str | None:
    return value if value is not None and _AUDIT_ID.fullmatch(value) else None


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class GatewayDecision:
    """What the gateway decided about one request, and what to record about it."""

    request_id: str
    endpoint: Endpoint
    denial: Denial | None
    principal: Principal | None = None
    purpose: str | None = None
    request: ParsedRequest | None = field(default=None, repr=False)
    approval: Approval | None = field(default=None, repr=False)
    payload_sha256: str | None = None
    """sha256 of the canonical request forwarded (the audit record's ``prompt_sha256``)."""
    store_content: bool = False
    started: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.denial is None

    @property
    def status(self) -> int:
        return 200 if self.denial is None else self.denial.status

    @property
    def model(self) -> str | None:
        return None if self.request is None else self.request.model

    @property
    def stream(self) -> bool:
        return self.request is not None and self.request.stream

    def audit_event(
        self,
        *,
        outcome: Denial | None = None,
        output_sha256: str | None = None,
        output_text: str | None = None,
        latency_ms: float | None = None,
    ) -> AuditEvent:
        """The audit record of this request.

        Without arguments it records the decision. After forwarding, pass what happened:
        ``outcome`` (e.g. the output screen's violation as a denial), the output's digest and
        the latency. The token, the prompt and the output are never in the record unless the
        spec's ``audit.storeContent`` is on (then the log redacts secrets in them).
        """
        denial = outcome or self.denial
        details: dict[str, Any] = {"endpoint": self.endpoint.path}
        if self.principal is not None and self.principal.token_id is not None:
            details["token_id"] = self.principal.token_id
        if denial is None:
            decision, reason = Decision.ALLOW, "allowed"
        elif denial.code is DenialCode.APPROVAL_REQUIRED:
            decision, reason = Decision.INFO, denial.code.value
            details.update(denial.audit_details())
        else:
            decision, reason = Decision.DENY, denial.code.value
            details.update(denial.audit_details())
        if self.request is not None:
            details["stream"] = self.request.stream
        content: dict[str, str] | None = None
        if self.store_content and self.request is not None:
            content = {"prompt": self.request.prompt}
            if output_text is not None:
                content["output"] = output_text
        return AuditEvent(
            actor=self.principal.name if self.principal is not None else ANONYMOUS,
            action=self.endpoint.audit_action,
            decision=decision,
            reason=reason,
            purpose=_audit_id(self.purpose),
            model=_audit_id(self.model),
            request_id=self.request_id,
            prompt_sha256=self.payload_sha256,
            output_sha256=output_sha256,
            latency_ms=latency_ms,
            content=content,
            details=details,
        )


class Pipeline:
    """Every policy step of the gateway, in order, over shared state."""

    def __init__(
        self,
        *,
        policy: Policy,
        tokens: TokenCache,
        state: ShutdownState,
        screen: Screen,
        approvals: ApprovalStore,
        limiter: RateLimiter,
        max_request_body: int,
        store_content: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.tokens = tokens
        self.state = state
        self.screen = screen
        self.approvals = approvals
        self.limiter = limiter
        self.max_request_body = max_request_body
        self.store_content = store_content
        self._clock = clock

    @classmethod
    def from_spec(
        cls,
        loaded: LoadedSpec,
        loader: TokenLoader,
        *,
        screen: Screen | None = None,
        token_settings: TokenCacheSettings | None = None,
        approval_settings: ApprovalSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Pipeline:
        """Everything wired from the spec; the screen defaults to :func:`default_screens_path`.

        Start the token cache (``async with pipeline.tokens``) and the lease watchdog
        (``pipeline.state.watch()``) in the app's lifespan.
        """
        spec = loaded.spec
        policy = Policy.from_spec(loaded)
        return cls(
            policy=policy,
            tokens=TokenCache(loader, policy.resolve_token, settings=token_settings, clock=clock),
            state=ShutdownState.from_spec(spec.shutdown, clock=clock),
            screen=screen or RuleScreen.from_file(default_screens_path(loaded), loaded.catalog),
            approvals=ApprovalStore(approval_settings, clock=clock),
            limiter=RateLimiter.from_spec(spec.gateway, clock=clock),
            max_request_body=spec.gateway.max_request_body,
            store_content=spec.audit.store_content,
            clock=clock,
        )

    # -- the decision -----------------------------------------------------------------------

    def decide(  # noqa: PLR0911 - one return per step, in the pipeline's order
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        request_id: str | None = None,
    ) -> GatewayDecision:
        """Decide one request. Pure but for the approval store and the rate limiter."""
        started = self._clock()
        rid = _audit_id(request_id) or new_request_id()

        def done(
            denial: Denial | None,
            principal: Principal | None = None,
            *,
            purpose: str | None = None,
            request: ParsedRequest | None = None,
            digest: str | None = None,
            approval: Approval | None = None,
        ) -> GatewayDecision:
            return GatewayDecision(
                rid,
                endpoint,
                denial,
                principal,
                purpose,
                request,
                approval,
                digest,
                self.store_content,
                started,
            )

        principal = self.tokens.authenticate(header(headers, AUTHORIZATION))
        if isinstance(principal, Denial):
            return done(principal)
        denied = self.state.check()
        if denied is not None:
            return done(denied, principal)
        if endpoint is Endpoint.MODELS:
            denied = self.policy.check_action(principal, Action.QUERY) or self.limiter.check(
                principal.name
            )
            return done(denied, principal)
        purpose = header(headers, PURPOSE_HEADER)
        purpose = purpose.strip() if purpose is not None else None
        denied = self.policy.check_purpose(principal, purpose)
        if denied is not None:
            return done(denied, principal, purpose=purpose)
        assert purpose is not None  # noqa: S101 - a granted purpose is a string
        if len(body) > self.max_request_body:
            return done(
                Denial(
                    DenialCode.REQUEST_TOO_LARGE,
                    f"the request body exceeds {self.max_request_body} bytes",
                ),
                principal,
                purpose=purpose,
            )
        request = parse_request(endpoint, body)
        if isinstance(request, Denial):
            return done(request, principal, purpose=purpose)
        digest = hashlib.sha256(request.body).hexdigest()
        if not self.policy.has_model(request.model):
            return done(
                Denial(DenialCode.MODEL_NOT_FOUND, "this enclave serves no such model"),
                principal,
                purpose=purpose,
                digest=digest,
            )
        violation = self.screen.check_prompt(request.prompt)
        if violation is not None:
            return done(
                violation.denial(), principal, purpose=purpose, request=request, digest=digest
            )
        if self.policy.requires_approval(purpose):
            held = self.approvals.create(
                principal,
                purpose,
                digest,
                request.body,
                endpoint=endpoint.value,
                model=request.model,
            )
            if isinstance(held, Denial):
                return done(held, principal, purpose=purpose, request=request, digest=digest)
            denial = Denial(
                DenialCode.APPROVAL_REQUIRED,
                f"purpose {purpose!r} needs a human approval; fetch the result with the "
                "approval id once a different principal holding 'approve' approves it",
                approval_id=held.id,
            )
            return done(
                denial, principal, purpose=purpose, request=request, digest=digest, approval=held
            )
        denied = self.limiter.check(principal.name)
        return done(denied, principal, purpose=purpose, request=request, digest=digest)

    def authorize(self, headers: Mapping[str, str], action: Action) -> Principal | Denial:
        """For the gateway's own endpoints (approve, deny, fetch, audit): token, state, action."""
        principal = self.tokens.authenticate(header(headers, AUTHORIZATION))
        if isinstance(principal, Denial):
            return principal
        denied = self.state.check() or self.policy.check_action(principal, action)
        return denied if denied is not None else principal

    # -- after the decision -----------------------------------------------------------------

    def output_screen(self) -> OutputScreen:
        """A fresh streaming output screen for one response."""
        return self.screen.output_screen()

    def open_stream(self, *, task: asyncio.Task[object] | None = None) -> StreamGuard:
        """Register an in-flight stream, cut on kill or lease loss."""
        return self.state.open_stream(task=task)
