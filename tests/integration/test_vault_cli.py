"""``enclave vault provision|teardown`` against a real OpenBao used as an external Vault."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from enclave.cli.main import main
from enclave.vault.names import EnclavePaths
from support.openbao import OpenBaoServer
from support.workspace import Workspace

pytestmark = pytest.mark.vault
Output = pytest.CaptureFixture[str]


def run(capsys: Output, *argv: str, state: Path) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), *argv])  # its rollback journals stay in the test's
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_provision_is_idempotent_and_teardown_removes_everything(
    capsys: Output,
    openbao: OpenBaoServer,
    openbao_client: Any,
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    name = f"cli{secrets.token_hex(3)}"
    spec = str(
        workspace.example(
            ("name: demo", f"name: {name}"), ("address: embedded", f"address: {openbao.address}")
        )
    )
    token_file = tmp_path / "vault-token"
    token_file.write_text(openbao.root_token)
    token_file.chmod(0o600)
    vtf = ("--vault-token-file", str(token_file))
    paths = EnclavePaths(name)
    try:
        code, out, _ = run(capsys, "vault", "provision", spec, *vtf, "--json", state=tmp_path)
        first = json.loads(out)
        assert code == 0
        assert first["components"] == ["gateway", "model-assistant", "controller"]
        assert first["created"]
        mounts = openbao_client.sys.list_mounted_secrets_engines()["data"]
        assert {f"{paths.kv}/", f"{paths.transit}/"} <= set(mounts)

        code, out, _ = run(capsys, "vault", "provision", spec, *vtf, state=tmp_path)
        assert code == 0 and "already up to date" in out
    finally:
        code, out, _ = run(capsys, "vault", "teardown", spec, *vtf, state=tmp_path)
    assert code == 0 and out.startswith(f"enclave {name}: removed ")
    mounts = openbao_client.sys.list_mounted_secrets_engines()["data"]
    assert not any(m.startswith(paths.prefix) for m in mounts)
    policies = openbao_client.sys.list_acl_policies()["data"]["keys"]
    assert not any(p.startswith(paths.prefix) for p in policies)
    code, out, _ = run(capsys, "vault", "teardown", spec, *vtf, state=tmp_path)
    assert (code, out.strip()) == (0, f"enclave {name}: removed 0 object(s)")


def test_an_unreachable_vault_is_exit_5(
    capsys: Output, workspace: Workspace, tmp_path: Path
) -> None:
    spec = str(workspace.example(("address: embedded", "address: http://127.0.0.1:9")))
    token_file = tmp_path / "vault-token"
    token_file.write_text("s.whatever")
    token_file.chmod(0o600)
    code, _, err = run(
        capsys, "vault", "provision", spec, "--vault-token-file", str(token_file), state=tmp_path
    )
    assert code == 5
    assert err.strip() == (
        "enclave: error: vault: connect: unreachable (Vault at http://127.0.0.1:9)"
    )
