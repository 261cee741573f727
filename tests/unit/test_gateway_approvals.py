"""Approvals: the two-person rule, expiry, fetch-once, bounds; and the rate limiter."""

from __future__ import annotations

import pytest

from enclave.audit import Decision
from enclave.errors import InputError
from enclave.gateway.approvals import (
    Approval,
    ApprovalSettings,
    ApprovalStatus,
    ApprovalStore,
    approval_event,
)
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.policy import Policy, Principal
from enclave.gateway.ratelimit import RateLimiter
from enclave.spec import LoadedSpec
from enclave.spec.model import Gateway
from support.gateway import Clock, write_spec
from support.workspace import Workspace

DIGEST = "ab" * 32


@pytest.fixture
def loaded(workspace: Workspace) -> LoadedSpec:
    return write_spec(workspace)


@pytest.fixture
def people(loaded: LoadedSpec) -> dict[str, Principal]:
    policy = Policy.from_spec(loaded)
    found = {}
    for principal in loaded.spec.rbac.principals:
        resolved = policy.principal(principal.name)
        assert resolved is not None
        found[principal.name] = resolved
    return found


def held(store: ApprovalStore, requester: Principal, body: bytes = b"{}") -> Approval:
    result = store.create(requester, "threat-triage", DIGEST, body, endpoint="chat")
    assert isinstance(result, Approval)
    return result


def code(result: Approval | Denial) -> DenialCode | None:
    return result.code if isinstance(result, Denial) else None


def test_two_person_rule(people: dict[str, Principal]) -> None:
    store = ApprovalStore(clock=Clock())
    # carol holds both analyst and approver: she still cannot approve her own request
    own = held(store, people["carol"])
    assert code(store.approve(own.id, people["carol"])) is DenialCode.FORBIDDEN
    assert code(store.deny(own.id, people["carol"])) is DenialCode.FORBIDDEN
    # principals without 'approve' cannot approve anyone's
    request = held(store, people["alice"])
    for name in ("alice", "bob", "erin", "frank", "grace"):
        assert code(store.approve(request.id, people[name])) is DenialCode.FORBIDDEN, name
    pending = store.get(request.id)
    assert pending is not None and pending.status is ApprovalStatus.PENDING
    # a different principal holding 'approve' can
    approved = store.approve(request.id, people["dave"])
    assert isinstance(approved, Approval) and approved.approver == "dave"
    assert approved.status is ApprovalStatus.APPROVED
    assert code(store.approve(request.id, people["carol"])) is DenialCode.CONFLICT
    assert code(store.approve("apr-nope", people["dave"])) is DenialCode.NOT_FOUND


def test_the_result_is_fetched_once_by_its_requester_only(people: dict[str, Principal]) -> None:
    store = ApprovalStore(clock=Clock())
    request = held(store, people["alice"], b'{"model":"assistant"}')
    waiting = store.fetch(request.id, people["alice"])
    assert isinstance(waiting, Denial) and waiting.status == 202
    assert waiting.approval_id == request.id
    assert code(store.complete(request.id, b"too early")) is DenialCode.CONFLICT
    approved = store.approve(request.id, people["dave"])
    assert isinstance(approved, Approval) and approved.body == b'{"model":"assistant"}'
    assert code(store.fetch(request.id, people["alice"])) is DenialCode.APPROVAL_REQUIRED
    done = store.complete(request.id, b'{"choices":[]}', status=200)
    assert isinstance(done, Approval) and done.body == b""  # the request is not kept
    # someone else cannot fetch it, nor even learn it exists
    assert code(store.fetch(request.id, people["grace"])) is DenialCode.NOT_FOUND
    result = store.fetch(request.id, people["alice"])
    assert isinstance(result, Approval) and result.result == b'{"choices":[]}'
    assert result.result_status == 200
    assert code(store.fetch(request.id, people["alice"])) is DenialCode.NOT_FOUND
    assert len(store) == 0


def test_a_denied_request_is_reported_once(people: dict[str, Principal]) -> None:
    store = ApprovalStore(clock=Clock())
    request = held(store, people["alice"])
    denied = store.deny(request.id, people["dave"], "not a triage request")
    assert isinstance(denied, Approval) and denied.status is ApprovalStatus.DENIED
    assert code(store.complete(request.id, b"x")) is DenialCode.CONFLICT
    refusal = store.fetch(request.id, people["alice"])
    assert isinstance(refusal, Denial) and refusal.code is DenialCode.APPROVAL_DENIED
    assert "dave" in refusal.message and "not a triage request" in refusal.message
    assert code(store.fetch(request.id, people["alice"])) is DenialCode.NOT_FOUND


def test_approvals_and_results_expire(people: dict[str, Principal]) -> None:
    clock = Clock()
    store = ApprovalStore(ApprovalSettings(ttl=60, result_ttl=30), clock=clock)
    stale = held(store, people["alice"])
    clock.advance(60)
    assert code(store.approve(stale.id, people["dave"])) is DenialCode.NOT_FOUND
    assert store.get(stale.id) is None
    fresh = held(store, people["alice"])
    clock.advance(59)
    assert isinstance(store.approve(fresh.id, people["dave"]), Approval)
    clock.advance(29)  # the result window starts at the decision
    assert isinstance(store.complete(fresh.id, b"ok"), Approval)
    clock.advance(29)
    assert store.list(status=ApprovalStatus.COMPLETED)[0].id == fresh.id
    clock.advance(1)
    assert code(store.fetch(fresh.id, people["alice"])) is DenialCode.NOT_FOUND
    assert store.list() == []


def test_the_store_is_bounded_in_total_and_per_requester(people: dict[str, Principal]) -> None:
    clock = Clock()
    store = ApprovalStore(ApprovalSettings(ttl=100, capacity=5, per_requester=3), clock=clock)
    for _ in range(3):
        held(store, people["alice"])
    full = store.create(people["alice"], "threat-triage", DIGEST, b"{}", endpoint="chat")
    assert isinstance(full, Denial) and full.code is DenialCode.RATE_LIMITED
    assert full.retry_after is not None and full.retry_after > 0
    held(store, people["carol"])
    held(store, people["grace"])
    crowded = store.create(people["bob"], "threat-triage", DIGEST, b"{}", endpoint="chat")
    assert code(crowded) is DenialCode.RATE_LIMITED
    clock.advance(100)
    assert isinstance(
        store.create(people["bob"], "threat-triage", DIGEST, b"{}", endpoint="chat"), Approval
    )
    assert len(store) == 1


def test_listing_and_audit_events_hold_no_body(people: dict[str, Principal]) -> None:
    store = ApprovalStore(clock=Clock(), new_id=iter(["apr-1", "apr-2"]).__next__)
    first = held(store, people["alice"], b"secret prompt")
    held(store, people["grace"])
    assert [a.id for a in store.list(requester="alice")] == ["apr-1"]
    assert "secret prompt" not in repr(first) and "secret" not in str(first.summary())
    approved = store.approve("apr-1", people["dave"])
    assert isinstance(approved, Approval)
    event = approval_event(approved, "approval.grant", people["dave"])
    assert event.decision is Decision.ALLOW and event.actor == "dave"
    assert event.request_id == "apr-1" and event.prompt_sha256 == DIGEST
    assert event.details is not None and event.details["requester"] == "alice"
    assert approval_event(approved, "approval.fetch", people["alice"]).decision is Decision.INFO


# -- rate limit ----------------------------------------------------------------------------


def test_a_token_bucket_per_principal() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=3, clock=clock)
    assert [limiter.check("alice") for _ in range(3)] == [None, None, None]
    denied = limiter.check("alice")
    assert denied is not None and denied.code is DenialCode.RATE_LIMITED and denied.status == 429
    assert denied.retry_after == pytest.approx(1.0)
    assert denied.headers()["retry-after"] == "1"
    assert limiter.check("bob") is None  # buckets are per principal
    clock.advance(0.5)
    again = limiter.check("alice")
    assert again is not None and again.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.check("alice") is None
    clock.advance(3600)  # a long idle refills only up to the burst
    assert [limiter.check("alice") for _ in range(4)][-1] is not None


def test_the_spec_rate_is_shared_between_replicas() -> None:
    clock = Clock()
    gateway = Gateway.model_validate({"rateLimit": {"requestsPerMinute": 120}, "replicas": 4})
    limiter = RateLimiter.from_spec(gateway, clock=clock)
    assert limiter.rate == pytest.approx(0.5) and limiter.burst == 30
    for _ in range(30):
        assert limiter.check("alice") is None
    assert limiter.check("alice") is not None
    clock.advance(2)
    assert limiter.check("alice") is None
    with pytest.raises(InputError):
        RateLimiter(0)
    with pytest.raises(InputError):
        RateLimiter(60, burst=0.5)
