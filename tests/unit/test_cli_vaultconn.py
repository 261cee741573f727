"""How a component's command reads its bootstrap material and picks its Vault connection."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from enclave.cli.context import CONTEXT
from enclave.cli.vaultconn import component_connection, load_material
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
