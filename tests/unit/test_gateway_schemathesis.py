"""The gateway's own OpenAPI document, fuzzed with schemathesis against the app in-process.

The schema is loaded from the app's ``/openapi.json`` (``schemathesis.openapi.from_asgi``) and
every documented operation gets positive and negative cases (schemathesis's generator), each
sent with a valid API token, with none, with the header schemathesis made up, or with a forged
one (a real token id, a wrong secret). Upstream is the real reference runtime (one per model of
the spec, mounted with ``httpx.ASGITransport``); the enclave keeps its lease (a clock that never
moves) and the rate limit is out of reach, so the gateway serves throughout. Whatever arrives:

- the gateway never answers 5xx (serving, with its audit log and model servers up, it has no
  reason to; a 503 is allowed only for ``enclave_shutdown``/``overloaded``/``audit_unavailable``,
  none of which this arrangement should produce), and every error body is OpenAI's shape;
- a request without a valid token is never served: it gets ``401 invalid_api_key``, except on
  the operations documented as open (``/healthz``; ``/openapi.json`` is what the
  schema was loaded from).

One app per operation: the app's lifespan runs on schemathesis's own event-loop thread (loading
the schema starts it) and schemathesis's pytest plugin ends it as each test tears down (the
gateway's lifespan closes its upstream pools, so it is not started twice); the fixture then
closes the audit log and verifies it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.python.asgi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.schemas import BaseSchema
from starlette.applications import Starlette

from enclave.audit import AuditLog, Ed25519Signer, verify_log
from enclave.audit.reader import iter_records
from enclave.gateway.app import create_app
from enclave.gateway.openapi import openapi_document
from enclave.gateway.ratelimit import RateLimiter
from enclave.runtime import NgramModel, builtin_weights
from enclave.runtime import create_app as create_runtime
from support.gateway import Clock, Tokens, build_pipeline, issue_for_spec, load_screen
from support.gateway import write_spec as write_gateway_spec
from support.gateway_app import BannedWordScreen
from support.upstream import HttpxUpstream
from support.workspace import make_workspace

EXAMPLES = 120
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
ALLOWED_503 = frozenset({"enclave_shutdown", "overloaded", "audit_unavailable"})
PURPOSES = (
    "translation",
    "threat-triage",
    "logistics-planning",
    "software-assurance",
    "training-simulation",
)
GeneratedCase = Case[Any]
OPERATIONS = sorted(
    (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
)


@dataclass
class Gateway:
    app: Starlette
    schema: BaseSchema
    tokens: Tokens
    log: AuditLog
    audit_dir: Path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    root = tmp_path
    loaded = write_gateway_spec(make_workspace(root))
    tokens = issue_for_spec(loaded)
    clock = Clock()  # never moves: the heartbeat build_pipeline gave holds the lease throughout
    screen = BannedWordScreen(load_screen(loaded))
    pipeline = build_pipeline(loaded, tokens, clock, screen=screen)  # type: ignore[arg-type]
    pipeline.limiter = RateLimiter(10**9, clock=clock)
    audit_dir = root / "audit"
    log = AuditLog.open(audit_dir, enclave="gw", signer=Ed25519Signer.generate())
    weights = NgramModel(builtin_weights())
    models = [model.name for model in loaded.spec.models]
    app = create_app(
        pipeline,
        upstreams={name: f"http://{name}" for name in models},
        audit_log=log,
        overrides={
            name: HttpxUpstream.asgi(create_runtime(weights, model_name=name)) for name in models
        },
    )
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
        yield Gateway(app, schema, tokens, log, audit_dir)
    finally:
        # schemathesis's pytest plugin ends every ASGI lifespan as a test tears down; this
        # fixture's app is the only one, and ending it again is a no-op
        schemathesis.python.asgi.shutdown_lifespans()
        log.close()
    report = verify_log(audit_dir)
    assert report.intact, report.summary()


def forge(token: str) -> str:
    """The same token id with a different secret."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


# (principal, purpose) pairs the spec grants, so that some authorized cases get past RBAC
GRANTED = (
    ("alice", "translation"),
    ("alice", "logistics-planning"),
    ("alice", "threat-triage"),  # held for approval
    ("bob", "software-assurance"),
    ("carol", "translation"),
    ("grace", "software-assurance"),
)


@dataclass(frozen=True)
class Credentials:
    kind: str
    """``valid``, ``none``, ``generated`` (what schemathesis made up) or ``forged``."""
    authorization: str | None
    purpose: str | None


@st.composite
def credentials(draw: st.DrawFn, tokens: Tokens) -> Credentials:
    kind = draw(st.sampled_from(["valid", "valid", "none", "generated", "forged"]))
    principal = draw(st.sampled_from(sorted(tokens.by_principal)))
    purpose = draw(st.none() | st.sampled_from(PURPOSES))
    if kind == "valid" and draw(st.booleans()):
        principal, purpose = draw(st.sampled_from(GRANTED))
    token = tokens.by_principal[principal]
    if kind == "valid":
        return Credentials(kind, f"Bearer {token}", purpose)
    if kind == "forged":
        return Credentials(kind, f"Bearer {forge(token)}", purpose)
    return Credentials(kind, None, purpose)


@st.composite
def model_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Fields that steer a generated body towards one the model server accepts."""
    fields: dict[str, Any] = {"model": draw(st.sampled_from(["assistant", "coder"]))}
    if draw(st.booleans()):
        fields["max_tokens"] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        fields["stream"] = draw(st.booleans())
    return fields


def shape(case: GeneratedCase, who: Credentials, steer: dict[str, Any] | None) -> None:
    """Put the credentials on ``case``; steer a generated object body towards the model."""
    if who.kind != "generated":
        case.headers.pop("Authorization", None)
    if who.authorization is not None:
        case.headers["Authorization"] = who.authorization
    if who.purpose is not None:
        case.headers["X-Enclave-Purpose"] = who.purpose
    if steer is not None and isinstance(case.body, dict):
        case.body.update(steer)
        case.body.setdefault("messages", [{"role": "user", "content": "What is the gateway?"}])
        case.body.setdefault("prompt", "The gateway")
        case.body.setdefault("input", "the gateway")


def describe(case: GeneratedCase, response: Response) -> str:
    headers = {k: v for k, v in response.request.headers.items() if k.lower() != "authorization"}
    body = response.request.body
    return (
        f"{case.method} {response.request.url} headers={headers} "
        f"body={body[:300] if body else body!r} -> {response.status_code} "
        f"{response.content[:400]!r}"
    )


def error_code(response: Response) -> str | None:
    try:
        data: Any = json.loads(response.content)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def check(case: GeneratedCase, authenticated: bool, response: Response) -> None:
    status = response.status_code
    code = error_code(response)
    if status >= 500:
        assert status == 503 and code in ALLOWED_503, describe(case, response)
    if status >= 400:
        assert code is not None, f"not OpenAI's error shape: {describe(case, response)}"
    if not authenticated and case.operation.path not in OPEN_PATHS:
        assert (status, code) == (401, "invalid_api_key"), describe(case, response)
        assert response.headers["www-authenticate"][0].startswith("Bearer")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_fuzzed(gateway: Gateway, method: str, path: str) -> None:
    operation = gateway.schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    valid = {f"Bearer {token}" for token in gateway.tokens.by_principal.values()}
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases, who=credentials(gateway.tokens), steer=st.none() | model_fields())
    def fuzz(case: GeneratedCase, who: Credentials, steer: dict[str, Any] | None) -> None:
        shape(case, who, steer)
        response = case.call()
        # what went out decides: a negative case may have had its Authorization header removed
        sent = response.request.headers.get("Authorization")
        authenticated = sent in valid
        seen["authenticated" if authenticated else "anonymous"] += 1
        seen[f"{response.status_code} {error_code(response)}"] += 1
        check(case, authenticated, response)

    fuzz()
    assert seen["authenticated"] and seen["anonymous"], seen


@pytest.mark.parametrize(("action", "step"), [("approve", "grant"), ("deny", "deny")])
@pytest.mark.parametrize("approval_id", ["no-such-id", ";", "a b", "50%", "\u00e9t\u00e9"])
def test_approval_step_on_an_odd_id_is_refused_not_crashed(
    gateway: Gateway, action: str, step: str, approval_id: str
) -> None:
    """What the fuzzer found first: an approver naming an id that is no audit request id.

    The refusal (``404 not_found``) is audited as any other refused step; the id must not
    reach the audit record as a request id it is not.
    """
    operation = gateway.schema[f"/v1/approvals/{{approval_id}}/{action}"]["POST"]
    case = operation.Case(
        path_parameters={"approval_id": approval_id},
        headers={"Authorization": f"Bearer {gateway.tokens.by_principal['dave']}"},
    )
    response = case.call()
    assert (response.status_code, error_code(response)) == (404, "not_found"), describe(
        case, response
    )
    refused = [r for r in iter_records(gateway.audit_dir) if r.action == f"approval.{step}"]
    assert [(r.actor, r.decision, r.reason) for r in refused] == [("dave", "deny", "not_found")]
