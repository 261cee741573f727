"""What a gateway step answers when it refuses a request: a :class:`Denial`.

Every step of the decision pipeline returns either nothing (allow) or a ``Denial`` carrying the
HTTP status and an OpenAI-style error ``code``; the ASGI app turns it into a response with
:meth:`Denial.body` and :meth:`Denial.headers`. Denials are values, not exceptions: refusing a
request is the gateway's normal work, and a value keeps every step a pure function.

=====  =========================  ==============================================================
HTTP   code                       meaning
=====  =========================  ==============================================================
400    ``invalid_request``        the body is not a request the gateway can screen
401    ``invalid_api_key``        no, a malformed, an unknown, a revoked or an expired API token
403    ``forbidden``              the principal's roles do not grant the action or purpose
403    ``purpose_not_permitted``  the declared purpose cannot be served by this enclave
403    ``prohibited_use``         the prompt or the output matched a prohibited use
403    ``approval_denied``        an approver refused the request
404    ``model_not_found``        the enclave serves no model of that name
404    ``not_found``              no such approval (or it expired, or it is someone else's)
409    ``conflict``               the approval was already decided
413    ``request_too_large``      the body exceeds ``gateway.maxRequestBody``
429    ``rate_limited``           over the principal's rate; ``retry_after`` says when to retry
202    ``approval_required``      held for a human approver; ``approval_id`` names the approval
503    ``enclave_shutdown``       killed, or the shutdown controller's heartbeat lease lapsed
503    ``auth_unavailable``       the API-token cache is stale (fail closed)
=====  =========================  ==============================================================

Messages are safe to show the client: they never contain a token, a secret or prompt text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class DenialCode(StrEnum):
    """The ``code`` of an OpenAI-style error body."""

    INVALID_REQUEST = "invalid_request"
    INVALID_API_KEY = "invalid_api_key"
    FORBIDDEN = "forbidden"
    PURPOSE_NOT_PERMITTED = "purpose_not_permitted"
    PROHIBITED_USE = "prohibited_use"
    APPROVAL_DENIED = "approval_denied"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limited"
    APPROVAL_REQUIRED = "approval_required"
    ENCLAVE_SHUTDOWN = "enclave_shutdown"
    AUTH_UNAVAILABLE = "auth_unavailable"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def error_type(self) -> str:
        """The OpenAI error ``type`` for this code."""
        return _TYPE[self]


_STATUS: dict[DenialCode, int] = {
    DenialCode.INVALID_REQUEST: 400,
    DenialCode.INVALID_API_KEY: 401,
    DenialCode.FORBIDDEN: 403,
    DenialCode.PURPOSE_NOT_PERMITTED: 403,
    DenialCode.PROHIBITED_USE: 403,
    DenialCode.APPROVAL_DENIED: 403,
    DenialCode.MODEL_NOT_FOUND: 404,
    DenialCode.NOT_FOUND: 404,
    DenialCode.CONFLICT: 409,
    DenialCode.REQUEST_TOO_LARGE: 413,
    DenialCode.RATE_LIMITED: 429,
    DenialCode.APPROVAL_REQUIRED: 202,
    DenialCode.ENCLAVE_SHUTDOWN: 503,
    DenialCode.AUTH_UNAVAILABLE: 503,
}

_TYPE: dict[DenialCode, str] = {
    DenialCode.INVALID_REQUEST: "invalid_request_error",
    DenialCode.INVALID_API_KEY: "authentication_error",
    DenialCode.FORBIDDEN: "permission_error",
    DenialCode.PURPOSE_NOT_PERMITTED: "permission_error",
    DenialCode.PROHIBITED_USE: "permission_error",
    DenialCode.APPROVAL_DENIED: "permission_error",
    DenialCode.MODEL_NOT_FOUND: "invalid_request_error",
    DenialCode.NOT_FOUND: "invalid_request_error",
    DenialCode.CONFLICT: "invalid_request_error",
    DenialCode.REQUEST_TOO_LARGE: "invalid_request_error",
    DenialCode.RATE_LIMITED: "rate_limit_error",
    DenialCode.APPROVAL_REQUIRED: "approval_pending",
    DenialCode.ENCLAVE_SHUTDOWN: "service_unavailable",
    DenialCode.AUTH_UNAVAILABLE: "service_unavailable",
}


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused (or held) request: the code, a client-safe message and what goes with it.

    ``retry_after`` (seconds) comes with ``rate_limited``; ``approval_id`` with
    ``approval_required`` (and the approval denials); ``use`` and ``rule`` name the prohibited
    use and the screening rule that matched a ``prohibited_use``.
    """

    code: DenialCode
    message: str
    retry_after: float | None = None
    approval_id: str | None = None
    use: str | None = None
    rule: str | None = None

    @property
    def status(self) -> int:
        return self.code.status

    @property
    def violation(self) -> bool:
        """Whether this denial counts as a policy violation (the kill trigger counts these)."""
        return self.code is DenialCode.PROHIBITED_USE or (
            self.code is DenialCode.PURPOSE_NOT_PERMITTED and self.use is not None
        )

    def body(self) -> dict[str, Any]:
        """The OpenAI-style JSON error body."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.code.error_type,
            "code": self.code.value,
            "param": None,
        }
        if self.approval_id is not None:
            error["approval_id"] = self.approval_id
        if self.retry_after is not None:
            error["retry_after"] = round(self.retry_after, 3)
        if self.use is not None:
            error["prohibited_use"] = self.use
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """Response headers that go with the denial (``Retry-After``, ``WWW-Authenticate``)."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        if self.code is DenialCode.INVALID_API_KEY:
            headers["www-authenticate"] = 'Bearer realm="enclave"'
        return headers

    def audit_details(self) -> dict[str, Any]:
        """What an audit record keeps about the denial (no prompt text, no secret)."""
        details: dict[str, Any] = {"status": self.status, "message": self.message}
        for name in ("retry_after", "approval_id", "use", "rule"):
            value = getattr(self, name)
            if value is not None:
                details[name] = round(value, 3) if isinstance(value, float) else value
        return details
