"""RBAC and the declared purpose: an exhaustive matrix against an independent oracle."""

from __future__ import annotations

import itertools

import pytest

from enclave.gateway.denial import DenialCode
from enclave.gateway.pipeline import Pipeline
from enclave.gateway.policy import Policy, Principal
from enclave.gateway.request import PURPOSE_HEADER, Endpoint
from enclave.spec import Action, LoadedSpec
from enclave.spec.model import Role
from enclave.vault.tokens import parse_token
from support.gateway import Clock, bearer, build_pipeline, chat, issue_for_spec, write_spec
from support.workspace import Workspace

UNKNOWN_PURPOSES = ["weather-forecast", "Translation", "translation ", "../etc", ""]


@pytest.fixture
def loaded(workspace: Workspace) -> LoadedSpec:
    return write_spec(workspace)


def oracle_actions(loaded: LoadedSpec, name: str) -> set[Action]:
    """What the spec grants ``name``, worked out without the gateway's code."""
    spec = loaded.spec
    roles = next(p.roles for p in spec.rbac.principals if p.name == name)
    return {action for role in roles for action in spec.rbac.roles[role].actions}


def oracle_may_query(loaded: LoadedSpec, name: str, purpose: str | None) -> bool:
    spec = loaded.spec
    if purpose is None or Action.QUERY not in oracle_actions(loaded, name):
        return False
    roles = next(p.roles for p in spec.rbac.principals if p.name == name)
    granted = {
        p
        for role in roles
        if Action.QUERY in spec.rbac.roles[role].actions
        for p in spec.rbac.roles[role].purposes
    }
    entry = next((p for p in loaded.catalog.purposes if p.id == purpose), None)
    return (
        purpose in granted
        and entry is not None
        and entry.classification_ceiling.rank >= spec.classification.rank
        and purpose not in loaded.prohibited
    )


def all_purposes(loaded: LoadedSpec) -> list[str | None]:
    return [
        *loaded.catalog.purpose_ids,
        *loaded.catalog.prohibited_ids,
        *UNKNOWN_PURPOSES,
        None,
    ]


def test_rbac_matrix_has_no_unauthorized_success_and_no_wrongful_denial(
    loaded: LoadedSpec,
) -> None:
    policy = Policy.from_spec(loaded)
    checked = 0
    for principal_spec, action, purpose in itertools.product(
        loaded.spec.rbac.principals, list(Action), all_purposes(loaded)
    ):
        principal = policy.principal(principal_spec.name)
        assert principal is not None
        if action is Action.QUERY:
            allowed = policy.check_purpose(principal, purpose) is None
            expected = oracle_may_query(loaded, principal.name, purpose)
        else:
            allowed = policy.check_action(principal, action) is None
            expected = action in oracle_actions(loaded, principal.name)
        assert allowed == expected, (principal.name, action.value, purpose)
        checked += 1
    assert checked == len(loaded.spec.rbac.principals) * len(Action) * len(all_purposes(loaded))


def test_rbac_matrix_end_to_end_through_the_pipeline(loaded: LoadedSpec) -> None:
    """Every principal x action x purpose, with real tokens, through decide() and authorize()."""
    tokens = issue_for_spec(loaded)
    pipeline = build_pipeline(loaded, tokens, Clock())
    unauthorized: list[tuple[object, ...]] = []
    wrongly_denied: list[tuple[object, ...]] = []
    for principal_spec, action, purpose in itertools.product(
        loaded.spec.rbac.principals, list(Action), all_purposes(loaded)
    ):
        name = principal_spec.name
        headers = bearer(tokens.by_principal[name])
        if action is Action.QUERY:
            if purpose is not None:
                headers[PURPOSE_HEADER] = purpose
            decision = pipeline.decide(Endpoint.CHAT, headers, chat("Translate 'good morning'."))
            passed = decision.allowed or decision.status == 202
            # HTTP strips a header value's surrounding whitespace, and so does the gateway
            stripped = purpose.strip() if purpose is not None else None
            expected = oracle_may_query(loaded, name, stripped)
            if not passed and expected:
                wrongly_denied.append((name, purpose, decision.denial))
            if passed and not expected:
                unauthorized.append((name, purpose))
            if not passed:
                assert decision.status == 403, (name, purpose, decision.denial)
        else:
            result = pipeline.authorize(headers, action)
            passed = isinstance(result, Principal)
            expected = action in oracle_actions(loaded, name)
            if passed != expected:
                (unauthorized if passed else wrongly_denied).append((name, action.value))
    assert unauthorized == []
    assert wrongly_denied == []


def test_denials_say_why(loaded: LoadedSpec) -> None:
    policy = Policy.from_spec(loaded)
    alice = policy.principal("alice")
    dave = policy.principal("dave")
    assert alice is not None and dave is not None

    def code(principal: Principal, purpose: str | None) -> DenialCode | None:
        denial = policy.check_purpose(principal, purpose)
        return None if denial is None else denial.code

    assert code(alice, "translation") is None
    assert code(alice, "software-assurance") is DenialCode.FORBIDDEN  # servable, not granted
    assert code(dave, "translation") is DenialCode.FORBIDDEN  # no query action at all
    assert code(alice, "training-simulation") is DenialCode.PURPOSE_NOT_PERMITTED  # ceiling cui
    assert code(alice, "weather-forecast") is DenialCode.PURPOSE_NOT_PERMITTED
    assert code(alice, None) is DenialCode.PURPOSE_NOT_PERMITTED
    denial = policy.check_purpose(alice, "kinetic-control")
    assert denial is not None and denial.code is DenialCode.PURPOSE_NOT_PERMITTED
    assert denial.violation and denial.use == "kinetic-control"
    ceiling = policy.check_purpose(alice, "training-simulation")
    assert ceiling is not None and "'cui'" in ceiling.message
    weird = policy.check_purpose(alice, "../../etc/passwd")
    assert weird is not None and "passwd" not in weird.message


def test_a_token_is_narrowed_to_the_roles_the_spec_gives_now(loaded: LoadedSpec) -> None:
    policy = Policy.from_spec(loaded)
    # grace holds analyst and coder; a token issued for coder only cannot translate
    narrowed = policy.principal("grace", roles=["coder"], token_id="abcdefabcdef")
    assert narrowed is not None and narrowed.token_id == "abcdefabcdef"
    assert narrowed.purposes == {"software-assurance"}
    # a token listing a role the spec no longer gives its principal gains nothing from it
    stale = policy.principal("bob", roles=["coder", "analyst", "approver"])
    assert stale is not None and stale.roles == {"coder"}
    assert not stale.can(Action.APPROVE)
    assert policy.principal("mallory") is None


def test_defence_in_depth_when_a_spec_grants_what_it_must_not(loaded: LoadedSpec) -> None:
    """The loader refuses such specs; a spec built in code is still held to the catalog."""
    bad_role = Role(
        actions=[Action.QUERY],
        purposes=["kinetic-control", "training-simulation", "weather", "translation"],
    )
    rbac = loaded.spec.rbac.model_copy(
        update={"roles": {**loaded.spec.rbac.roles, "bad": bad_role}}
    )
    policy = Policy(
        classification=loaded.spec.classification,
        catalog=loaded.catalog,
        prohibited=loaded.prohibited,
        approval_required=loaded.approval_required,
        roles=rbac.roles,
        principals={"eve": ["bad"]},
        models=["assistant"],
    )
    eve = policy.principal("eve")
    assert eve is not None
    assert eve.purposes == {"translation"}
    for purpose in ("kinetic-control", "training-simulation", "weather"):
        denial = policy.check_purpose(eve, purpose)
        assert denial is not None and denial.code is DenialCode.PURPOSE_NOT_PERMITTED


def test_approval_purposes_come_from_catalog_and_spec(loaded: LoadedSpec) -> None:
    policy = Policy.from_spec(loaded)
    assert policy.requires_approval("threat-triage")
    assert not policy.requires_approval("translation")
    assert policy.has_model("coder") and not policy.has_model("gpt-4")


def test_every_pipeline_principal_resolves_from_its_token(loaded: LoadedSpec) -> None:
    tokens = issue_for_spec(loaded)
    pipeline: Pipeline = build_pipeline(loaded, tokens, Clock())
    for name, token in tokens.by_principal.items():
        principal = pipeline.tokens.authenticate(f"Bearer {token}")
        assert isinstance(principal, Principal) and principal.name == name
        assert principal.token_id == parse_token(token)[0]
