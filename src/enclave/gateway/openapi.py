"""The gateway's OpenAPI document (served at ``/openapi.json``).

Hand-written and small: the request and response bodies are OpenAI's, and are described by
reference to it rather than copied; what the gateway adds (the purpose header, its error codes,
the approval API) is described here.
"""

from __future__ import annotations

from typing import Any

from enclave._version import __version__
from enclave.gateway.denial import DenialCode

_EXTRA_CODES = (
    "upstream_unavailable",
    "upstream_error",
    "upstream_timeout",
    "audit_unavailable",
    "overloaded",
)


def _error_schema() -> dict[str, Any]:
    codes = [code.value for code in DenialCode] + list(_EXTRA_CODES)
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "string", "enum": codes},
                    "param": {"type": ["string", "null"]},
                    "approval_id": {"type": "string"},
                    "retry_after": {"type": "number"},
                    "prohibited_use": {"type": "string"},
                },
            }
        },
    }


def _responses(*extra: tuple[str, str]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    out: dict[str, Any] = {"200": {"description": "OK (OpenAI's response body)"}}
    for status, text in (
        ("401", "invalid_api_key"),
        ("403", "forbidden, purpose_not_permitted, prohibited_use"),
        ("429", "rate_limited (Retry-After)"),
        ("502", "upstream_unavailable, upstream_error"),
        ("503", "enclave_shutdown, auth_unavailable, audit_unavailable, overloaded"),
        ("504", "upstream_timeout"),
        *extra,
    ):
        out[status] = {"description": text, **error}
    return out


def _model_call(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [{"$ref": "#/components/parameters/Purpose"}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": _responses(
                ("202", "approval_required: held for a human approver (approval_id)"),
                ("400", "invalid_request"),
                ("404", "model_not_found"),
                ("413", "request_too_large"),
            ),
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    approval = {"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "enclave gateway",
            "version": __version__,
            "description": "OpenAI-compatible API behind enclave's policy gateway. Every "
            "request declares its purpose in X-Enclave-Purpose; every decision is audited.",
        },
        "paths": {
            "/v1/chat/completions": _model_call("Chat completion (streaming with stream=true)"),
            "/v1/completions": _model_call("Text completion (streaming with stream=true)"),
            "/v1/embeddings": _model_call("Embeddings"),
            "/v1/models": {
                "get": {
                    "summary": "Models served",
                    "security": [{"bearer": []}],
                    "responses": _responses(),
                }
            },
            "/v1/approvals": {
                "get": {
                    "summary": "Pending approvals (action: approve)",
                    "security": [{"bearer": []}],
                    "responses": _responses(),
                }
            },
            "/v1/approvals/{approval_id}": {
                "get": {
                    "summary": "The requester's result, exactly once (then 404)",
                    "security": [{"bearer": []}],
                    "parameters": [approval],
                    "responses": _responses(("202", "still pending"), ("404", "not_found")),
                }
            },
            "/v1/approvals/{approval_id}/approve": {
                "post": {
                    "summary": "Approve and execute (a principal other than the requester)",
                    "security": [{"bearer": []}],
                    "parameters": [approval],
                    "responses": _responses(("404", "not_found"), ("409", "conflict")),
                }
            },
            "/v1/approvals/{approval_id}/deny": {
                "post": {
                    "summary": 'Refuse; body {"reason": "..."}',
                    "security": [{"bearer": []}],
                    "parameters": [approval],
                    "responses": _responses(("404", "not_found"), ("409", "conflict")),
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Health",
                    "responses": {
                        "200": {"description": "ok"},
                        "503": {"description": "not serving"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (a principal whose role grants audit-read)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "text exposition"},
                        "401": {"description": "no valid API token"},
                        "403": {"description": "the principal may not read metrics"},
                    },
                }
            },
        },
        "components": {
            "schemas": {"Error": _error_schema()},
            "parameters": {
                "Purpose": {
                    "name": "X-Enclave-Purpose",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The declared purpose (a catalog id granted to the caller)",
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
