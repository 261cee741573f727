"""The gateway's ASGI app: the OpenAI endpoints behind the policy pipeline, and its own API.

Per request (:meth:`_Gateway.api`): shed load when too many requests are in flight
(``503 overloaded`` + ``Retry-After``) → read the body, never past
``gateway.maxRequestBody`` → :meth:`Pipeline.decide <enclave.gateway.pipeline.Pipeline.decide>`
(authenticate → shutdown state → RBAC → purpose → size → prohibited-use screening → approval
gate → rate limit) → the decision record is appended to the audit log and is durable before
anything is forwarded → a client that has gone away is not forwarded to → forward over the
model server's pooled connection → screen the output (whole, or event by event while
streaming: :class:`~enclave.gateway.proxy.ScreenedStream`) → release → a completion record
(output digest, token usage, latency).

If the audit log cannot record, the gateway serves nothing (``503 audit_unavailable``).

Routes::

    POST /v1/chat/completions  /v1/completions  /v1/embeddings     GET /v1/models
    GET  /v1/approvals                     pending approvals        (action: approve)
    POST /v1/approvals/{id}/approve        approve and execute it   (action: approve)
    POST /v1/approvals/{id}/deny           refuse it                (action: approve)
    GET  /v1/approvals/{id}                the requester's result, exactly once
    POST /control                          signed controller commands (heartbeat/kill/resume)
    GET  /healthz   /metrics   /openapi.json
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclave.audit.record import ActorKind, AuditEvent, Decision
from enclave.errors import AuditError
from enclave.gateway.approvals import ApprovalStatus, approval_event
from enclave.gateway.control import ControlChannel
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.door import ADMITTED
from enclave.gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from enclave.gateway.openapi import openapi_document
from enclave.gateway.proxy import (
    Failure,
    Outcome,
    ScreenedStream,
    StreamResult,
    Upstreams,
    screen_whole,
    upstream_failure,
)
from enclave.gateway.request import Endpoint
from enclave.gateway.upstream import UpstreamError
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind
from enclave.spec.model import Action

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from starlette.requests import Request

    from enclave.audit.writer import AuditReceipt
    from enclave.gateway.approvals import Approval
    from enclave.gateway.pipeline import GatewayDecision, Pipeline
    from enclave.gateway.policy import Principal
    from enclave.gateway.upstream import Upstream, UpstreamResponse
    from enclave.spec.model import EnclaveSpec

log = logging.getLogger(__name__)

_AUDIT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What the audit log accepts as a request id; anything else is recorded without one."""

_JSON = {"content-type": "application/json"}
_REQUEST_ID = "x-request-id"
_MAX_DENY_REASON = 4096


class AuditSink(Protocol):
    """Where the gateway's records go: :class:`enclave.audit.AuditLog` in production."""

    async def append_async(self, event: AuditEvent) -> AuditReceipt: ...


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway forwards and sheds load."""

    request_timeout: float = 120.0
    """Seconds a model server may take to answer (and between two events of a stream)."""
    connect_timeout: float = 5.0
    max_in_flight: int = 64
    """Requests served at once; more are refused ``503 overloaded`` at once, never queued.
    Small on purpose: admitted requests keep a bounded latency instead of queueing for seconds."""
    max_loop_lag: float | None = None
    """Seconds the event loop may run late before new requests are shed at the door (None:
    never on lag). Under overload the backlog is in the loop (every accepted request is a
    task), and admitting more while it is late only makes every admitted request slower;
    ``enclave gateway serve`` sets 0.05."""
    retry_after: float = 1.0
    """``Retry-After`` (seconds) sent with ``503 overloaded``."""
    max_connections: int = 32
    """Keep-alive connections per model server (:class:`~enclave.gateway.upstream.Http1Pool`)."""
    control_key: bytes | None = field(default=None, repr=False)
    """The key the shutdown controller signs its commands with; None: no ``/control``."""
    control_identity: str = "controller"
    shed_record_interval: float = 1.0
    """Seconds between two ``gateway.shed`` audit records (written only when requests were
    shed)."""
    background: bool = True
    """Run the token-cache refresher and the lease watchdog in the app's lifespan."""

    @classmethod
    def from_spec(cls, spec: EnclaveSpec, *, control_key: bytes | None = None) -> GatewaySettings:
        return cls(
            request_timeout=spec.gateway.request_timeout.total_seconds(),
            control_key=control_key,
        )


def _error(body: Mapping[str, Any], status: int, headers: Mapping[str, str]) -> JSONResponse:
    return JSONResponse(dict(body), status, headers=dict(headers))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _usage(data: object) -> dict[str, int] | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


class _Gateway:
    def __init__(
        self,
        pipeline: Pipeline,
        upstreams: Upstreams,
        audit_log: AuditSink,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
    ) -> None:
        self.pipeline = pipeline
        self.upstreams = upstreams
        self.audit = audit_log
        self.settings = settings
        self.metrics = metrics
        self.in_flight = 0
        self.admitted = 0
        """Model requests the door let in and the app has not answered yet."""
        self.shed_counts: dict[str, int] = {}
        self.loop_lag = 0.0
        shed = Failure(
            503,
            "overloaded",
            f"the gateway is at capacity ({settings.max_in_flight} requests); retry shortly",
            retry_after=settings.retry_after,
        )
        self._shed_body = json.dumps(shed.body()).encode()
        self._shed_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._shed_body)).encode()),
            *((k.encode(), v.encode()) for k, v in shed.headers().items()),
        ]
        self._shed_http = (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            + b"".join(name + b": " + value + b"\r\n" for name, value in self._shed_headers)
            + b"\r\n"
            + self._shed_body
        )
        """Requests refused ``503 overloaded`` since the last ``gateway.shed`` record."""
        self.audit_error: str | None = None
        self.control = (
            ControlChannel(pipeline.state, settings.control_key, identity=settings.control_identity)
            if settings.control_key is not None
            else None
        )

    # -- audit ------------------------------------------------------------------------------

    async def record(self, event: AuditEvent) -> Failure | None:
        """Append ``event`` durably; the failure to answer with when the log cannot record."""
        try:
            await self.audit.append_async(event)
        except AuditError as exc:
            self.metrics.audit_failures.inc()
            if self.audit_error is None:
                log.error("audit log cannot record: refusing to serve (%s)", exc)  # noqa: TRY400
            self.audit_error = str(exc)
            return Failure(
                503,
                "audit_unavailable",
                "the audit log cannot record; the gateway refuses to serve until it can",
            )
        self.audit_error = None
        return None

    def completion_event(
        self,
        decision: GatewayDecision,
        outcome: Outcome,
        *,
        output_sha256: str | None = None,
        usage: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        latency = max(0.0, (time.monotonic() - decision.started) * 1000)
        event = decision.audit_event(
            outcome=outcome if isinstance(outcome, Denial) else None,
            output_sha256=output_sha256,
            latency_ms=round(latency, 3),
        )
        details = dict(event.details or {})
        details["record"] = "completion"
        if usage:
            details["usage"] = dict(usage)
        if extra:
            details.update(extra)
        if isinstance(outcome, Failure):
            details.update(outcome.audit_details())
            event = replace(event, decision=Decision.ERROR, reason=outcome.code)
        return replace(event, action=f"response.{decision.endpoint.value}", details=details)

    async def complete(
        self,
        decision: GatewayDecision,
        outcome: Outcome,
        *,
        output_sha256: str | None = None,
        usage: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append the completion record (the response may already be released)."""
        if isinstance(outcome, Denial) and outcome.code is DenialCode.PROHIBITED_USE:
            self.metrics.violations.labels(outcome.use or "-", "output").inc()
        code = "ok" if outcome is None else str(outcome.code)
        if outcome is not None:
            self.metrics.requests.labels(decision.endpoint.value, "error", code).inc()
        event = self.completion_event(
            decision, outcome, output_sha256=output_sha256, usage=usage, extra=extra
        )
        await self.record(event)

    # -- the OpenAI endpoints ---------------------------------------------------------------

    async def read_body(self, request: Request) -> bytes:
        """The body, but never more than one byte past the limit (the pipeline refuses it)."""
        limit = self.pipeline.max_request_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return b"\0" * (limit + 1)  # refused by size after authentication; never read
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        return b"".join(chunks)

    def late(self) -> bool:
        """Whether the event loop runs later than ``max_loop_lag``."""
        lag = self.settings.max_loop_lag
        return lag is not None and self.loop_lag > lag

    # -- the door's keeper (:class:`~enclave.gateway.door.Keeper`) -------------------------

    def closed(self) -> bool:
        """Whether the door refuses new model requests: full, or the event loop runs late."""
        return self.admitted >= self.settings.max_in_flight or self.late()

    def enter(self) -> None:
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def watch_loop(self, interval: float = 0.005) -> None:
        """Keep :attr:`loop_lag`: how late the event loop wakes a sleeper (decays quickly)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            late = loop.time() - before - interval
            self.loop_lag = max(late, self.loop_lag * 0.5)

    def shed_response(self, endpoint: Endpoint) -> bytes:
        """Count one refusal at the protocol's door; the whole HTTP response to write."""
        self.metrics.requests.labels(endpoint.value, "shed", "overloaded").inc()
        self.shed_counts[endpoint.value] = self.shed_counts.get(endpoint.value, 0) + 1
        return self._shed_http

    def shed(self, endpoint: Endpoint) -> Response:
        self.metrics.requests.labels(endpoint.value, "shed", "overloaded").inc()
        self.shed_counts[endpoint.value] = self.shed_counts.get(endpoint.value, 0) + 1
        failure = Failure(
            503,
            "overloaded",
            f"the gateway is serving {self.settings.max_in_flight} requests; retry shortly",
            retry_after=self.settings.retry_after,
        )
        return _error(failure.body(), failure.status, failure.headers())

    async def api(self, request: Request, endpoint: Endpoint) -> Response:
        if self.in_flight >= self.settings.max_in_flight or (
            endpoint is not Endpoint.MODELS and ADMITTED not in request.scope and self.closed()
        ):  # the door admitted (and counted) a request already: not judged twice
            return self.shed(endpoint)
        arrived = time.perf_counter()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        handed_over = False

        def release() -> None:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.latency.labels(endpoint.value).observe(time.perf_counter() - arrived)

        try:
            body = b"" if endpoint is Endpoint.MODELS else await self.read_body(request)
            decision = self.pipeline.decide(endpoint, request.headers, body)
            self.metrics.decision_latency.observe(time.perf_counter() - arrived)
            headers = {_REQUEST_ID: decision.request_id}
            if not decision.allowed:
                return await self.refuse(decision, headers)
            response = await self.serve(request, decision, headers, release)
            handed_over = isinstance(response, ScreenedStream)
            return response
        finally:
            if not handed_over:
                release()

    async def serve(
        self, request: Request, decision: GatewayDecision, headers: dict[str, str], release: Any
    ) -> Response:
        """An allowed request: recorded, then forwarded (or answered here, for ``/v1/models``).

        The decision record is written while the request is forwarded; nothing of the answer
        is released (nor a completion recorded) before it is durable.
        """
        recorded = asyncio.ensure_future(self.record(decision.audit_event()))
        if self.audit_error is not None:  # the log failed before: forward nothing until
            failed = await recorded  # this record proves it writes again
            if failed is not None:
                return _error(failed.body(), failed.status, {**failed.headers(), **headers})
        if await request.is_disconnected():
            refused = await self.unrecorded(decision, recorded, headers)
            if refused is not None:
                return refused
            gone = Failure(499, "client_closed", "the client went away before forwarding")
            await self.complete(decision, gone)
            return Response(status_code=499)
        if decision.endpoint is Endpoint.MODELS:
            refused = await self.unrecorded(decision, recorded, headers)
            return refused or await self.models(decision, headers)
        return await self.forward(decision, headers, release, recorded)

    async def unrecorded(
        self,
        decision: GatewayDecision,
        recorded: asyncio.Future[Failure | None],
        headers: dict[str, str],
    ) -> Response | None:
        """Wait for the decision record; the 503 to answer with when it could not be written."""
        failed = await recorded
        if failed is not None:
            return _error(failed.body(), failed.status, {**failed.headers(), **headers})
        self.metrics.requests.labels(decision.endpoint.value, "allow", "ok").inc()
        return None

    async def refuse(self, decision: GatewayDecision, headers: dict[str, str]) -> Response:
        denial = decision.denial
        assert denial is not None  # noqa: S101 - only refused decisions come here
        held = denial.code is DenialCode.APPROVAL_REQUIRED
        self.metrics.requests.labels(
            decision.endpoint.value, "held" if held else "deny", denial.code.value
        ).inc()
        if denial.code is DenialCode.PROHIBITED_USE:
            self.metrics.violations.labels(denial.use or "-", "prompt").inc()
        failed = await self.record(decision.audit_event())
        if failed is not None:
            if decision.approval is not None:  # never hold what could not be recorded
                self.pipeline.approvals.deny(decision.approval.id, _SYSTEM, "audit unavailable")
            return _error(failed.body(), failed.status, {**failed.headers(), **headers})
        return _error(denial.body(), denial.status, {**denial.headers(), **headers})

    async def models(self, decision: GatewayDecision, headers: dict[str, str]) -> Response:
        cards: list[Any] = []
        for model in self.upstreams:
            try:
                answer = await self.upstreams.get(model).request("GET", Endpoint.MODELS.path)
                content = await answer.read()
                data = json.loads(content) if answer.status == 200 else None
            except (UpstreamError, ValueError) as exc:
                failure = (
                    upstream_failure(exc, model)
                    if isinstance(exc, UpstreamError)
                    else Failure(502, "upstream_error", f"the model server for {model!r} failed")
                )
                await self.complete(decision, failure)
                return _error(failure.body(), failure.status, headers)
            for card in (data or {}).get("data") or ():
                if isinstance(card, dict) and card.get("id") == model:
                    cards.append(card)
        content = json.dumps({"object": "list", "data": cards}).encode()
        task = BackgroundTask(self.complete, decision, None, output_sha256=_sha256(content))
        return Response(content, 200, {**_JSON, **headers}, background=task)

    async def forward(
        self,
        decision: GatewayDecision,
        headers: dict[str, str],
        release: Any,
        recorded: asyncio.Future[Failure | None],
    ) -> Response:
        request = decision.request
        model = decision.model
        assert request is not None and model is not None  # noqa: S101 - allowed requests
        failure: Failure | None = None
        if model not in self.upstreams:
            failure = Failure(
                502, "upstream_unavailable", f"no model server is configured for {model!r}"
            )
        else:
            sent = time.perf_counter()
            try:
                upstream = await self.upstreams.get(model).request(
                    "POST", decision.endpoint.path, request.body
                )
            except UpstreamError as exc:
                failure = upstream_failure(exc, model)
                log.warning("request %s: %s", decision.request_id, failure.message)
            else:
                self.metrics.upstream_latency.labels(model).observe(time.perf_counter() - sent)
        try:
            refused = await self.unrecorded(decision, recorded, headers)
        except BaseException:
            if failure is None:
                await upstream.aclose()
            raise
        if refused is not None:
            if failure is None:
                await upstream.aclose()
            return refused
        if failure is not None:
            await self.complete(decision, failure)
            return _error(failure.body(), failure.status, headers)
        if decision.stream and upstream.status == 200:
            return self.stream(decision, upstream, headers, release)
        try:
            content = await upstream.read()
        except UpstreamError as exc:
            failure = upstream_failure(exc, model)
            await self.complete(decision, failure)
            return _error(failure.body(), failure.status, headers)
        finally:
            await upstream.aclose()
        return await self.release_whole(decision, upstream.status, content, headers)

    async def release_whole(
        self, decision: GatewayDecision, status: int, content: bytes, headers: dict[str, str]
    ) -> Response:
        """Screen a whole response and release it (or refuse it).

        A kill (or a lapsed lease) while the model was answering releases nothing: the answer
        is dropped with ``503 enclave_shutdown``, as a stream in flight is cut.
        """
        stopped = self.pipeline.state.check()
        if stopped is not None:
            task = BackgroundTask(self.complete, decision, stopped)
            return JSONResponse(
                stopped.body(), stopped.status, {**stopped.headers(), **headers}, background=task
            )
        if status >= 500:
            failure = Failure(502, "upstream_error", f"the model server failed (HTTP {status})")
            await self.complete(decision, failure)
            return _error(failure.body(), failure.status, headers)
        try:
            data = json.loads(content)
        except ValueError:
            failure = Failure(502, "upstream_error", "the model server sent a malformed answer")
            await self.complete(decision, failure)
            return _error(failure.body(), failure.status, headers)
        if status == 200:
            violation = screen_whole(self.pipeline.screen, decision.endpoint, data)
            if violation is not None:
                denial = violation.denial()
                task = BackgroundTask(self.complete, decision, denial)
                return JSONResponse(denial.body(), denial.status, headers=headers, background=task)
        extra = None if status == 200 else {"upstream_status": status}
        task = BackgroundTask(
            self.complete,
            decision,
            None,
            output_sha256=_sha256(content),
            usage=_usage(data),
            extra=extra,
        )
        return Response(content, status, {**_JSON, **headers}, background=task)

    def stream(
        self,
        decision: GatewayDecision,
        upstream: UpstreamResponse,
        headers: dict[str, str],
        release: Any,
    ) -> ScreenedStream:
        guard = self.pipeline.open_stream()

        async def on_end(result: StreamResult) -> None:
            try:
                outcome: Outcome = result.outcome
                if outcome is None and result.client_gone:
                    outcome = Failure(499, "client_closed", "the client went away mid-stream")
                await self.complete(
                    decision,
                    outcome,
                    output_sha256=result.output_sha256,
                    usage=result.usage,
                    extra={"events": result.events},
                )
            finally:
                release()

        assert decision.model is not None  # noqa: S101 - allowed requests name a model
        return ScreenedStream(
            upstream,
            endpoint=decision.endpoint,
            model=decision.model,
            new_screen=self.pipeline.output_screen,
            guard=guard,
            on_end=on_end,
            headers=headers,
        )

    # -- approvals --------------------------------------------------------------------------

    async def list_approvals(self, request: Request) -> Response:
        who = self.pipeline.authorize(request.headers, Action.APPROVE)
        if isinstance(who, Denial):
            return _error(who.body(), who.status, who.headers())
        items = self.pipeline.approvals.list(status=ApprovalStatus.PENDING)
        return JSONResponse({"object": "list", "data": [item.summary() for item in items]})

    async def _decider(self, request: Request) -> Principal | Response:
        who = self.pipeline.authorize(request.headers, Action.APPROVE)
        if isinstance(who, Denial):
            return _error(who.body(), who.status, who.headers())
        return who

    async def _record_step(
        self, approval: Approval, action: str, actor: Principal
    ) -> Failure | None:
        return await self.record(approval_event(approval, action, actor))

    async def _refused_step(
        self, approval_id: str, action: str, actor: Principal, denial: Denial
    ) -> Response:
        event = AuditEvent(
            actor=actor.name,
            action=action,
            decision=Decision.DENY,
            reason=denial.code.value,
            request_id=approval_id if _AUDIT_ID.fullmatch(approval_id) else None,
            details=denial.audit_details(),
        )
        failed = await self.record(event)
        if failed is not None:
            return _error(failed.body(), failed.status, failed.headers())
        return _error(denial.body(), denial.status, denial.headers())

    async def approve(self, request: Request) -> Response:
        who = await self._decider(request)
        if isinstance(who, Response):
            return who
        approval_id = request.path_params["approval_id"]
        approval = self.pipeline.approvals.approve(approval_id, who)
        if isinstance(approval, Denial):
            return await self._refused_step(approval_id, "approval.grant", who, approval)
        failed = await self._record_step(approval, "approval.grant", who)
        if failed is not None:
            self.pipeline.approvals.complete(
                approval.id, json.dumps(failed.body()).encode(), status=failed.status
            )
            return _error(failed.body(), failed.status, failed.headers())
        status, content, outcome = await self.execute(approval)
        self.pipeline.approvals.complete(approval.id, content, status=status)
        await self.record(self.approved_completion(approval, who, status, content, outcome))
        return JSONResponse({"approval": approval.summary(), "result_status": status})

    async def execute(self, approval: Approval) -> tuple[int, bytes, Outcome]:
        """Run an approved request (never streamed: the requester fetches the result)."""
        endpoint = Endpoint(approval.endpoint)
        model = approval.model or ""
        data = json.loads(approval.body)
        data["stream"] = False
        data.pop("stream_options", None)
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        if model not in self.upstreams:
            failure = Failure(502, "upstream_unavailable", f"no model server for {model!r}")
            return failure.status, json.dumps(failure.body()).encode(), failure
        try:
            answer = await self.upstreams.get(model).request("POST", endpoint.path, body)
            content = await answer.read()
        except UpstreamError as exc:
            failure = upstream_failure(exc, model)
            return failure.status, json.dumps(failure.body()).encode(), failure
        if answer.status >= 500:
            failure = Failure(502, "upstream_error", f"the model server failed ({answer.status})")
            return failure.status, json.dumps(failure.body()).encode(), failure
        if answer.status == 200:
            try:
                violation = screen_whole(self.pipeline.screen, endpoint, json.loads(content))
            except ValueError:
                failure = Failure(502, "upstream_error", "the model server sent a malformed answer")
                return failure.status, json.dumps(failure.body()).encode(), failure
            if violation is not None:
                denial = violation.denial()
                self.metrics.violations.labels(denial.use or "-", "output").inc()
                return denial.status, json.dumps(denial.body()).encode(), denial
        return answer.status, content, None

    def approved_completion(
        self, approval: Approval, approver: Principal, status: int, content: bytes, outcome: Outcome
    ) -> AuditEvent:
        details: dict[str, Any] = {
            "record": "completion",
            "endpoint": Endpoint(approval.endpoint).path,
            "approver": approver.name,
            "status": status,
        }
        decision, reason = Decision.ALLOW, "allowed"
        if isinstance(outcome, Denial):
            decision, reason = Decision.DENY, outcome.code.value
            details.update(outcome.audit_details())
        elif isinstance(outcome, Failure):
            decision, reason = Decision.ERROR, outcome.code
            details.update(outcome.audit_details())
        else:
            with contextlib.suppress(ValueError):
                usage = _usage(json.loads(content))
                if usage:
                    details["usage"] = usage
        return AuditEvent(
            actor=approval.requester,
            action=f"response.{approval.endpoint}",
            decision=decision,
            reason=reason,
            purpose=approval.purpose,
            model=approval.model,
            request_id=approval.id,
            prompt_sha256=approval.payload_sha256,
            output_sha256=_sha256(content) if outcome is None else None,
            details=details,
        )

    async def deny(self, request: Request) -> Response:
        who = await self._decider(request)
        if isinstance(who, Response):
            return who
        approval_id = request.path_params["approval_id"]
        reason = ""
        raw = await request.body()
        if raw:
            try:
                data = json.loads(raw[:_MAX_DENY_REASON])
                reason = str(data.get("reason", "")) if isinstance(data, dict) else ""
            except ValueError:
                reason = ""
        approval = self.pipeline.approvals.deny(approval_id, who, reason)
        if isinstance(approval, Denial):
            return await self._refused_step(approval_id, "approval.deny", who, approval)
        failed = await self._record_step(approval, "approval.deny", who)
        if failed is not None:
            return _error(failed.body(), failed.status, failed.headers())
        return JSONResponse({"approval": approval.summary()})

    async def fetch(self, request: Request) -> Response:
        who = self.pipeline.authorize(request.headers, Action.QUERY)
        if isinstance(who, Denial):
            return _error(who.body(), who.status, who.headers())
        approval_id = request.path_params["approval_id"]
        item = self.pipeline.approvals.get(approval_id)
        if (
            item is not None
            and item.requester == who.name
            and item.status
            in (
                ApprovalStatus.COMPLETED,
                ApprovalStatus.DENIED,
            )
        ):
            # record the hand-over before the result leaves (fail closed)
            failed = await self._record_step(item, "approval.fetch", who)
            if failed is not None:
                return _error(failed.body(), failed.status, failed.headers())
        result = self.pipeline.approvals.fetch(approval_id, who)
        if isinstance(result, Denial):
            return _error(result.body(), result.status, result.headers())
        return Response(result.result or b"", result.result_status or 200, _JSON)

    # -- the gateway's own endpoints --------------------------------------------------------

    async def control_command(self, request: Request) -> Response:
        if self.control is None:
            return _error(
                Denial(DenialCode.NOT_FOUND, "this gateway takes no control commands").body(),
                404,
                {},
            )
        body = await request.body()
        result = self.control.handle(body, request.headers.get(SIGNATURE_HEADER))
        if isinstance(result, Denial):
            return _error(result.body(), result.status, result.headers())
        if result.kind is not ControlKind.HEARTBEAT:
            await self.record(_control_event(result))
        state = self.pipeline.state
        return JSONResponse(
            {"mode": state.mode.value, "lease_remaining": round(state.lease_remaining, 3)}
        )

    async def healthz(self, _request: Request) -> Response:
        state = self.pipeline.state
        denied = state.check()
        tokens = self.pipeline.tokens.status()
        problems: list[str] = []
        if denied is not None:
            problems.append(denied.message)
        if not tokens.fresh:
            problems.append("API tokens are stale (Vault unreachable?)")
        if self.audit_error is not None:
            problems.append("the audit log cannot record")
        body = {
            "status": "ok" if not problems else "unavailable",
            "problems": problems,
            "mode": state.mode.value,
            "lease_remaining": round(state.lease_remaining, 3),
            "streams": state.streams,
            "in_flight": self.in_flight,
            "tokens": {"count": tokens.tokens, "fresh": tokens.fresh},
        }
        return JSONResponse(body, 200 if not problems else 503)

    async def record_shed(self) -> None:
        """One ``gateway.shed`` record for the requests shed since the last one (if any).

        Shed requests are refused before they are read or authenticated, when the gateway has
        no capacity to spare: they are accounted for in one record per interval, by endpoint,
        rather than one each.
        """
        if not self.shed_counts:
            return
        counts, self.shed_counts = self.shed_counts, {}
        await self.record(
            AuditEvent(
                actor=_SYSTEM.name,
                action="gateway.shed",
                decision=Decision.DENY,
                reason="overloaded",
                details={"requests": counts, "max_in_flight": self.settings.max_in_flight},
            )
        )

    async def account_shed(self, interval: float) -> None:
        """Write :meth:`record_shed` every ``interval`` seconds until cancelled (then once)."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.record_shed()
        finally:
            await asyncio.shield(self.record_shed())

    async def metrics_endpoint(self, request: Request) -> Response:
        who = self.pipeline.authorize(request.headers, Action.AUDIT_READ)
        if isinstance(who, Denial):
            return _error(who.body(), who.status, who.headers())
        return Response(self.metrics.render(), 200, {"content-type": CONTENT_TYPE_LATEST})

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(openapi_document())


def _control_event(command: ControlCommand) -> AuditEvent:
    return AuditEvent(
        actor=command.identity,
        actor_kind=ActorKind.COMPONENT,
        action=f"gateway.{command.kind.value}",
        decision=Decision.INFO,
        reason=command.reason[:200],
    )


class _System:
    """The gateway itself, as the "approver" that drops a hold it could not record."""

    name = "enclave-gateway"

    def can(self, _action: Action) -> bool:
        return True


_SYSTEM: Any = _System()


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in OpenAI's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    body = {
        "error": {
            "message": str(getattr(exc, "detail", "")),
            "type": "invalid_request_error",
            "code": code,
            "param": None,
        }
    }
    return JSONResponse(body, status)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    pipeline: Pipeline,
    *,
    upstreams: Mapping[str, str],
    audit_log: AuditSink,
    settings: GatewaySettings | None = None,
    metrics: GatewayMetrics | None = None,
    overrides: Mapping[str, Upstream] | None = None,
) -> Starlette:
    """The gateway app over ``pipeline``, forwarding model ``name`` to ``upstreams[name]``.

    The audit log is the caller's (open it before, close it after). ``overrides`` replaces the
    HTTP connection pool of some upstreams (tests mount a model server app in-process).
    With ``settings.background`` the app's lifespan loads the API tokens and keeps them fresh,
    and runs the lease watchdog; it always closes the upstream connections on shutdown.
    """
    settings = settings or GatewaySettings()
    pool = Upstreams(
        upstreams,
        timeout=settings.request_timeout,
        connect_timeout=settings.connect_timeout,
        max_connections=settings.max_connections,
        overrides=overrides,
    )
    gateway = _Gateway(pipeline, pool, audit_log, settings, metrics or GatewayMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.aclose)
            stack.push_async_callback(gateway.record_shed)  # the last interval's, at the end
            if settings.background:
                await stack.enter_async_context(pipeline.tokens)
                for job, name in (
                    (pipeline.state.watch(), "enclave-lease"),
                    *(
                        [(gateway.watch_loop(), "enclave-loop-lag")]
                        if settings.max_loop_lag is not None
                        else []
                    ),
                    (gateway.account_shed(settings.shed_record_interval), "enclave-shed"),
                ):
                    stack.push_async_callback(_stop, asyncio.create_task(job, name=name))
            yield

    def endpoint(kind: Endpoint) -> Any:
        async def handle(request: Request) -> Response:
            return await gateway.api(request, kind)

        return handle

    routes = [
        Route(Endpoint.CHAT.path, endpoint(Endpoint.CHAT), methods=["POST"]),
        Route(Endpoint.COMPLETIONS.path, endpoint(Endpoint.COMPLETIONS), methods=["POST"]),
        Route(Endpoint.EMBEDDINGS.path, endpoint(Endpoint.EMBEDDINGS), methods=["POST"]),
        Route(Endpoint.MODELS.path, endpoint(Endpoint.MODELS), methods=["GET"]),
        Route("/v1/approvals", gateway.list_approvals, methods=["GET"]),
        Route("/v1/approvals/{approval_id}", gateway.fetch, methods=["GET"]),
        Route("/v1/approvals/{approval_id}/approve", gateway.approve, methods=["POST"]),
        Route("/v1/approvals/{approval_id}/deny", gateway.deny, methods=["POST"]),
        Route("/control", gateway.control_command, methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/metrics", gateway.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", gateway.openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    app.state.metrics = gateway.metrics
    return app
