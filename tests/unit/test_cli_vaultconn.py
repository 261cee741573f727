"""How a component's command reads its bootstrap material and picks its Vault connection."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from enclave.cli.context import CONTEXT
from enclave.cli.vaultconn import (
    component_connection,
    external_connection,
    load_material,
    pending_rollbacks,
)
from enclave.errors import InputError
from enclave.spec import LoadedSpec, load_spec
from support.workspace import Workspace

MATERIAL = {
    "format": 1,
    "enclave": "demo",
    "component": "gateway",
    "address": "unix:///run/enclave/vault/bao.sock",
    "auth_mount": "enclave-demo-approle",
    "role_id": "role-id-value",
    "wrapping_token": "s.wrapping-token-value",
    "wrap_ttl": 60,
    "created": "2026-01-01T00:00:00Z",
}


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))


def test_material_is_read_from_stdin_until_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, json.dumps(MATERIAL).encode() + b"\n")
    material = load_material(Path("-"))
    assert (material.component, material.address) == ("gateway", MATERIAL["address"])
    assert material.wrapping_token == MATERIAL["wrapping_token"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "nothing on stdin"),
        (b"s.wrapping-token-value", "not JSON"),
        (b"[1]", "not enclave bootstrap material"),
        (json.dumps({**MATERIAL, "role_id": ""}).encode(), "incomplete"),
        (b" " * (64 * 1024 + 1), "more than 64 KiB"),
    ],
)
def test_bad_stdin_is_an_input_error_that_repeats_nothing(
    monkeypatch: pytest.MonkeyPatch, data: bytes, words: str
) -> None:
    _stdin(monkeypatch, data)
    with pytest.raises(InputError, match=words) as caught:
        load_material(Path("-"))
    assert "wrapping-token-value" not in str(caught.value)
    assert str(caught.value).startswith("--bootstrap -")


def _spec(workspace: Workspace, vault: str) -> LoadedSpec:
    return load_spec(workspace.example(("address: embedded", f"address: {vault}")))


def test_the_connection_trusts_what_the_spec_says(workspace: Workspace) -> None:
    external = _spec(workspace, "https://vault.example:8200")
    assert component_connection(external, "unix:///run/x/bao.sock").ca_bundle is None
    assert component_connection(external, "https://vault.example:8200").ca_bundle is None
    with pytest.raises(InputError, match="absolute"):
        component_connection(external, "unix://bao.sock")


def test_the_embedded_vaults_tls_address_needs_its_ca_on_this_host(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CONTEXT, "state_dir", tmp_path / "state")
    embedded = _spec(workspace, "embedded")
    with pytest.raises(InputError, match=r"CA .* is not on this host .*--vault-address unix://"):
        component_connection(embedded, "https://127.0.0.1:8200")
    ca = tmp_path / "state" / "vault" / "tls" / "ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_text("a CA")
    assert component_connection(embedded, "https://127.0.0.1:8200").ca_bundle == ca


def test_provisioning_journals_are_kept_per_vault_under_the_state_dir(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setattr(CONTEXT, "state_dir", state)
    embedded = pending_rollbacks(_spec(workspace, "embedded"))
    one = pending_rollbacks(_spec(workspace, "https://one.example:8200"))
    two = pending_rollbacks(_spec(workspace, "https://two.example:8200"))
    assert embedded.directory == state / "vault" / "rollbacks"
    assert one.directory == two.directory == state / "vault-rollbacks"
    assert len({embedded.path("demo"), one.path("demo"), two.path("demo")}) == 3
    assert one.path("demo").name.startswith("demo@")
    assert embedded.pending() == one.pending() == []
    assert sorted(p.name for p in state.iterdir()) == []  # finding out creates nothing


def test_an_external_vaults_connection_needs_its_ca_bundle(workspace: Workspace) -> None:
    spec = workspace.example(
        ("address: embedded", "address: https://vault.example:8200\n    caBundle: ca.pem")
    )
    with pytest.raises(InputError, match=r"caBundle: .*ca\.pem: no such file"):
        external_connection(load_spec(spec))
    (workspace.root / "ca.pem").write_text("a CA")
    assert external_connection(load_spec(spec)).ca_bundle == workspace.root / "ca.pem"
