"""The Vault checks against a real OpenBao: a freshly provisioned enclave passes them, a policy
widened by hand, a long token TTL and a live root token make them fail with evidence."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave.compliance import (
    Sources,
    Status,
    VaultAccess,
    collect,
    default_baseline,
    evaluate,
    load_baseline,
)
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.client import VaultConnection, connect
from enclave.vault.provision import provision, teardown
from support.openbao import OpenBaoServer, orchestrator_token
from support.workspace import Workspace

pytestmark = pytest.mark.vault

BASELINE = load_baseline(default_baseline())


@pytest.fixture
def admin_token(openbao_client: Any) -> Iterator[str]:
    """A token holding only the orchestrator policy (what the embedded default hands out)."""
    with orchestrator_token(openbao_client) as token:
        yield token


@pytest.fixture
def enclave(
    workspace: Workspace, openbao: OpenBaoServer, admin_token: str, openbao_client: Any
) -> Iterator[LoadedSpec]:
    name = f"cc{uuid.uuid4().hex[:6]}"
    loaded = load_spec(workspace.example(("name: demo", f"name: {name}")))
    admin = connect(VaultConnection(openbao.address), admin_token)
    try:
        provision(admin, loaded)
        yield loaded
    finally:
        teardown(openbao_client, name)
        admin.adapter.close()


def vault_results(
    loaded: LoadedSpec, openbao: OpenBaoServer, token: str, root_token: str, tmp_path: Path
) -> dict[str, Any]:
    connection = VaultConnection(openbao.address)
    access = VaultAccess(
        admin=lambda: connect(connection, token), connection=connection, root_token=root_token
    )
    facts = collect(
        Sources(loaded.name, tmp_path, loaded),
        backend=None,
        backend_error="not needed",
        vault=access,
    )
    assert "vault" not in facts.errors, facts.errors
    report = evaluate(BASELINE, facts, enclave=loaded.name)
    return {r.check.id: r for r in report.results if r.check.id.startswith("VLT-")}


def revoked_token(openbao_client: Any) -> str:
    created = openbao_client.auth.token.create(policies=["default"], ttl="5m")["auth"]
    openbao_client.auth.token.revoke(created["client_token"])
    return str(created["client_token"])


def test_a_provisioned_enclave_passes_the_vault_checks(
    enclave: LoadedSpec,
    openbao: OpenBaoServer,
    admin_token: str,
    openbao_client: Any,
    tmp_path: Path,
) -> None:
    results = vault_results(enclave, openbao, admin_token, revoked_token(openbao_client), tmp_path)
    failed = {
        k: (r.status.value, r.message, r.evidence)
        for k, r in results.items()
        if r.status is not Status.PASS
    }
    assert not failed
    assert len(results) == 11


def test_a_live_root_token_fails(
    enclave: LoadedSpec, openbao: OpenBaoServer, admin_token: str, tmp_path: Path
) -> None:
    live = vault_results(enclave, openbao, admin_token, openbao.root_token, tmp_path)["VLT-02"]
    assert live.status is Status.FAIL
    assert live.evidence["initial_root_token_live"] is True
    as_root = vault_results(enclave, openbao, openbao.root_token, "", tmp_path)["VLT-02"]
    assert as_root.status is Status.FAIL
    assert as_root.evidence["checking_token_policies"] == ["root"]


def test_a_widened_policy_and_long_ttls_fail_with_evidence(
    enclave: LoadedSpec,
    openbao: OpenBaoServer,
    admin_token: str,
    openbao_client: Any,
    tmp_path: Path,
) -> None:
    name = enclave.name
    gateway_policy = f"enclave-{name}-gateway"
    openbao_client.sys.create_or_update_acl_policy(
        gateway_policy, 'path "*" {\n  capabilities = ["read", "sudo"]\n}\n'
    )
    openbao_client.auth.approle.create_or_update_approle(
        "model-assistant",
        mount_point=f"enclave-{name}-approle",
        token_ttl="48h",
        token_max_ttl="48h",
        token_no_default_policy=False,
    )
    results = vault_results(enclave, openbao, admin_token, revoked_token(openbao_client), tmp_path)
    sudo = results["VLT-03"]
    assert sudo.status is Status.FAIL
    assert sudo.evidence == {"sudo_rules": [[], [f"{gateway_policy}: *"], []]}
    confined = results["VLT-04"]
    assert confined.status is Status.FAIL
    assert f"{gateway_policy}: * ['read', 'sudo']" in confined.evidence["outside_the_enclave"]
    assert results["VLT-06"].status is Status.FAIL
    assert results["VLT-06"].evidence == {"with_default": ["model-assistant"]}
    ttl = results["VLT-07"]
    assert ttl.status is Status.FAIL
    assert "model-assistant ttl=172800 period=900" in ttl.evidence["roles"]
    assert results["VLT-01"].status is Status.PASS
