"""API tokens against a real OpenBao: issued once, stored as keyed hashes, listed, revoked.

Each test makes its own enclave's KV v2 mount (what provisioning creates) and removes it.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hvac.exceptions
import pytest

import enclave.vault.tokens as tokens_module
from enclave.cli.main import main
from enclave.errors import InputError, NotFoundError, VaultNotFoundError, VaultUnavailableError
from enclave.vault.names import API_TOKEN_KEY, API_TOKENS, EnclavePaths
from enclave.vault.tokens import (
    KEY_FIELD,
    TokenInfo,
    ensure_key,
    issue,
    list_tokens,
    load_records,
    parse_token,
    read_key,
    read_record,
    revoke_principal,
    revoke_token,
    token_hash,
    verify_token,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.openbao import OpenBaoServer
    from support.workspace import Workspace

pytestmark = pytest.mark.vault

Output = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _restore_enclave_logger() -> Iterator[None]:
    """``main()`` configures the ``enclave`` logger (stderr handler, WARNING, no propagation),
    and that outlives the test that called it: start each test from the library default and
    put back what was there, so ``caplog`` sees enclave's records here and in later tests."""
    logger = logging.getLogger("enclave")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def new_enclave_name() -> str:
    return f"t{secrets.token_hex(5)}"


def mount_kv(client: Any, paths: EnclavePaths) -> None:
    """Enable the enclave's KV v2 mount and wait until it serves: a fresh KV v2 mount answers
    400 "Upgrading from non-versioned to versioned data" for a moment (provisioning waits too).
    """
    client.sys.enable_secrets_engine("kv", path=paths.kv, options={"version": "2"})
    deadline = time.monotonic() + 10
    while True:
        try:
            client.secrets.kv.v2.read_secret_metadata(path="ready-probe", mount_point=paths.kv)
        except hvac.exceptions.InvalidPath:
            return
        except hvac.exceptions.InvalidRequest as exc:
            if "Upgrading" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def paths(openbao_client: Any) -> Iterator[EnclavePaths]:
    """A fresh enclave with its KV v2 mount (no API-token key yet); removed afterwards."""
    enclave_paths = EnclavePaths(new_enclave_name())
    mount_kv(openbao_client, enclave_paths)
    try:
        yield enclave_paths
    finally:
        openbao_client.sys.disable_secrets_engine(path=enclave_paths.kv)


def provision_key(client: Any, paths: EnclavePaths) -> bytes:
    """What provisioning does: 32 random bytes, base64, at <kv>/data/api-token-key."""
    key = secrets.token_bytes(32)
    client.secrets.kv.v2.create_or_update_secret(
        path=API_TOKEN_KEY,
        secret={KEY_FIELD: base64.b64encode(key).decode()},
        cas=0,
        mount_point=paths.kv,
    )
    return key


def raw_record(client: Any, paths: EnclavePaths, token_id: str) -> dict[str, Any]:
    response = client.secrets.kv.v2.read_secret_version(
        path=f"{API_TOKENS}/{token_id}", mount_point=paths.kv, raise_on_deleted_version=True
    )
    return dict(response["data"]["data"])


def key_version(client: Any, paths: EnclavePaths) -> int:
    meta = client.secrets.kv.v2.read_secret_metadata(path=API_TOKEN_KEY, mount_point=paths.kv)
    return int(meta["data"]["current_version"])


def test_issue_stores_only_a_keyed_hash(openbao_client: Any, paths: EnclavePaths) -> None:
    key = provision_key(openbao_client, paths)
    issued = issue(openbao_client, paths, "alice", ["analyst"], ttl=timedelta(days=30))
    token_id, secret = parse_token(issued.token)
    assert issued.info.id == token_id
    assert issued.info.principal == "alice" and issued.info.roles == ("analyst",)
    assert issued.info.expires == issued.info.created + timedelta(days=30)
    assert issued.token not in repr(issued)

    stored = raw_record(openbao_client, paths, token_id)
    assert set(stored) == {"principal", "roles", "created", "expires", "hash"}
    assert stored["hash"] == token_hash(
        key, secret, token_id=token_id, principal="alice", expires=issued.info.expires
    )
    assert secret not in json.dumps(stored)
    assert stored["principal"] == "alice" and stored["roles"] == ["analyst"]


def test_verify_accepts_the_issued_token_only(openbao_client: Any, paths: EnclavePaths) -> None:
    provision_key(openbao_client, paths)
    first = issue(openbao_client, paths, "alice", ["analyst"])
    second = issue(openbao_client, paths, "bob", ["safety-officer"])
    key = read_key(openbao_client, paths)
    records = load_records(openbao_client, paths)
    one, two = records[first.info.id], records[second.info.id]
    assert one.expires is None

    assert verify_token(one, key, first.token)
    assert verify_token(two, key, second.token)
    assert not verify_token(one, key, second.token)  # another principal's token
    first_id, _ = parse_token(first.token)
    _, second_secret = parse_token(second.token)
    assert not verify_token(one, key, f"enc_{first_id}_{second_secret}")  # wrong secret
    assert not verify_token(two, key, f"enc_{first_id}_{second_secret}")  # other id
    assert not verify_token(one, secrets.token_bytes(32), first.token)  # another key


def test_issue_creates_a_missing_key_once(openbao_client: Any, paths: EnclavePaths) -> None:
    with pytest.raises(VaultNotFoundError):
        read_key(openbao_client, paths)
    first = issue(openbao_client, paths, "alice", ["analyst"])
    key = read_key(openbao_client, paths)
    assert len(key) == 32
    second = issue(openbao_client, paths, "alice", ["analyst"])
    assert read_key(openbao_client, paths) == key
    assert key_version(openbao_client, paths) == 1  # written once, never again
    for issued in (first, second):
        assert verify_token(read_record(openbao_client, paths, issued.info.id), key, issued.token)


def test_an_existing_key_is_never_overwritten(openbao_client: Any, paths: EnclavePaths) -> None:
    key = provision_key(openbao_client, paths)
    assert ensure_key(openbao_client, paths) == key
    issue(openbao_client, paths, "alice", ["analyst"])
    assert read_key(openbao_client, paths) == key
    assert key_version(openbao_client, paths) == 1


def test_a_key_created_concurrently_wins_over_ours(
    openbao_client: Any, paths: EnclavePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read misses; another writer creates the key before our check-and-set write."""
    real_read = tokens_module.read_key
    calls = 0

    def racing_read(client: Any, enclave_paths: EnclavePaths) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            provision_key(openbao_client, enclave_paths)  # the other writer
            raise VaultNotFoundError("vault: not found")
        return real_read(client, enclave_paths)

    monkeypatch.setattr(tokens_module, "read_key", racing_read)
    theirs = ensure_key(openbao_client, paths)
    assert theirs == real_read(openbao_client, paths)
    assert key_version(openbao_client, paths) == 1


def test_list_shows_bindings_but_never_hashes(openbao_client: Any, paths: EnclavePaths) -> None:
    assert list_tokens(openbao_client, paths) == []  # nothing issued yet: not an error
    a1 = issue(openbao_client, paths, "alice", ["analyst"])
    b1 = issue(openbao_client, paths, "bob", ["safety-officer"])
    a2 = issue(openbao_client, paths, "alice", ["analyst"], ttl=timedelta(hours=1))

    everyone = list_tokens(openbao_client, paths)
    assert {t.id for t in everyone} == {a1.info.id, b1.info.id, a2.info.id}
    assert all(isinstance(t, TokenInfo) for t in everyone)
    assert {t.id for t in list_tokens(openbao_client, paths, "alice")} == {a1.info.id, a2.info.id}
    assert list_tokens(openbao_client, paths, "nobody") == []
    shown = json.dumps([t.as_dict() for t in everyone]) + repr(everyone)
    assert "hash" not in shown
    for issued in (a1, b1, a2):
        assert parse_token(issued.token)[1] not in shown


def test_revoke_deletes_every_version(openbao_client: Any, paths: EnclavePaths) -> None:
    keep = issue(openbao_client, paths, "alice", ["analyst"])
    gone = issue(openbao_client, paths, "alice", ["analyst"])
    key = read_key(openbao_client, paths)
    record = read_record(openbao_client, paths, gone.info.id)
    assert verify_token(record, key, gone.token)

    info = revoke_token(openbao_client, paths, gone.info.id)
    assert info == gone.info
    records = load_records(openbao_client, paths)
    assert set(records) == {keep.info.id}  # the gateway's refreshed cache cannot verify it
    assert not any(verify_token(r, key, gone.token) for r in records.values())
    with pytest.raises(NotFoundError):
        read_record(openbao_client, paths, gone.info.id)
    with pytest.raises(hvac.exceptions.InvalidPath):  # the metadata is gone too
        openbao_client.secrets.kv.v2.read_secret_metadata(
            path=f"{API_TOKENS}/{gone.info.id}", mount_point=paths.kv
        )
    with pytest.raises(NotFoundError, match="no API token"):
        revoke_token(openbao_client, paths, gone.info.id)


def test_revoke_principal_revokes_every_token_of_that_principal_only(
    openbao_client: Any, paths: EnclavePaths
) -> None:
    alices = [issue(openbao_client, paths, "alice", ["analyst"]) for _ in range(3)]
    bobs = issue(openbao_client, paths, "bob", ["safety-officer"])
    key = read_key(openbao_client, paths)

    done = revoke_principal(openbao_client, paths, "alice")
    assert (done.enclave, done.principal, done.count) == (paths.enclave, "alice", 3)
    assert {t.id for t in done.revoked} == {t.info.id for t in alices}
    records = load_records(openbao_client, paths)
    assert set(records) == {bobs.info.id}
    assert not any(verify_token(r, key, t.token) for r in records.values() for t in alices)
    assert revoke_principal(openbao_client, paths, "alice").count == 0  # idempotent
    with pytest.raises(InputError):
        revoke_principal(openbao_client, paths, "")


def test_revoke_principal_says_how_far_it_got_when_vault_fails(
    openbao_client: Any, paths: EnclavePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = [issue(openbao_client, paths, "alice", ["analyst"]) for _ in range(3)]
    real = tokens_module.revoke_token
    calls: list[str] = []

    def flaky(client: Any, where: EnclavePaths, token_id: str) -> TokenInfo:
        calls.append(token_id)
        if len(calls) == 2:
            raise VaultUnavailableError("vault: revoke API token: unreachable")
        return real(client, where, token_id)

    monkeypatch.setattr(tokens_module, "revoke_token", flaky)
    with pytest.raises(VaultUnavailableError) as failed:
        revoke_principal(openbao_client, paths, "alice")
    message = str(failed.value)
    assert message.startswith("vault: revoke API token: unreachable; 1 API token(s) of alice")
    assert f"were revoked before this ({calls[0]}); run the revocation again" in message
    monkeypatch.undo()
    assert revoke_principal(openbao_client, paths, "alice").count == 2  # the rest
    assert list_tokens(openbao_client, paths) == []
    assert calls[0] in {i.info.id for i in issued}


def test_unknown_and_malformed_ids(openbao_client: Any, paths: EnclavePaths) -> None:
    with pytest.raises(NotFoundError):
        revoke_token(openbao_client, paths, "AAAAAAAAAAAA")
    with pytest.raises(NotFoundError):
        read_record(openbao_client, paths, "AAAAAAAAAAAA")
    provision_key(openbao_client, paths)
    for bad in ("../" + API_TOKEN_KEY, "short", "AAAAAAAAAAAA/x"):
        with pytest.raises(InputError):
            revoke_token(openbao_client, paths, bad)
    assert len(read_key(openbao_client, paths)) == 32  # the key survived the traversal attempt


def test_a_missing_kv_mount_says_so(openbao_client: Any) -> None:
    with pytest.raises(VaultNotFoundError, match="provisioned"):
        issue(openbao_client, EnclavePaths(new_enclave_name()), "alice", ["analyst"])


def test_the_token_reaches_neither_vault_audit_nor_logs(
    openbao: OpenBaoServer,
    openbao_client: Any,
    paths: EnclavePaths,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = issue(openbao_client, paths, "alice", ["analyst"])
    list_tokens(openbao_client, paths)
    load_records(openbao_client, paths)
    revoke_token(openbao_client, paths, issued.info.id)
    _, secret = parse_token(issued.token)
    audit = openbao.audit_log.read_text()
    assert issued.info.id in caplog.text  # the id is not a secret, and is logged
    for text in (audit, caplog.text):
        assert issued.token not in text
        assert secret not in text


# --- the CLI against the harness OpenBao as an external Vault ---------------------------------


@dataclass
class CliEnclave:
    spec: Path
    token_file: Path
    paths: EnclavePaths


@pytest.fixture
def cli_enclave(
    openbao: OpenBaoServer, openbao_client: Any, workspace: Workspace, tmp_path: Path
) -> Iterator[CliEnclave]:
    name = new_enclave_name()
    spec = workspace.example(
        ("name: demo", f"name: {name}"), ("address: embedded", f"address: {openbao.address}")
    )
    token_file = tmp_path / "vault-token"
    token_file.write_text(openbao.root_token + "\n")
    token_file.chmod(0o600)
    enclave_paths = EnclavePaths(name)
    mount_kv(openbao_client, enclave_paths)
    try:
        yield CliEnclave(spec, token_file, enclave_paths)
    finally:
        openbao_client.sys.disable_secrets_engine(path=enclave_paths.kv)


def run(capsys: Output, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_issue_list_revoke(
    capsys: Output, cli_enclave: CliEnclave, openbao: OpenBaoServer, openbao_client: Any
) -> None:
    spec, vtf = str(cli_enclave.spec), ("--vault-token-file", str(cli_enclave.token_file))

    code, out, err = run(
        capsys, "token", "issue", spec, "--principal", "alice", "--ttl", "30d", *vtf
    )
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n"  # stdout holds the token and nothing else
    token_id, secret = parse_token(token)
    assert "will not be shown again" in err and token_id in err and "30d" in err
    assert token not in err and secret not in err

    key = read_key(openbao_client, cli_enclave.paths)
    assert verify_token(read_record(openbao_client, cli_enclave.paths, token_id), key, token)

    code, out, err = run(capsys, "token", "list", spec, *vtf)
    assert code == 0, err
    assert token_id in out and "alice" in out and "analyst" in out
    assert token not in out and secret not in out

    code, out, _ = run(capsys, "token", "list", spec, "--principal", "bob", "--json", *vtf)
    assert code == 0
    assert json.loads(out)["tokens"] == []
    code, out, _ = run(capsys, "token", "list", spec, "--json", *vtf)
    listed = json.loads(out)["tokens"]
    assert [t["id"] for t in listed] == [token_id]
    assert listed[0]["principalInSpec"] is True and listed[0]["expired"] is False
    created = datetime.fromisoformat(listed[0]["created"])
    assert datetime.fromisoformat(listed[0]["expires"]) - created == timedelta(days=30)
    assert created <= datetime.now(UTC)
    assert "hash" not in out

    code, out, err = run(capsys, "token", "revoke", spec, token_id, *vtf)
    assert code == 0, err
    assert f"revoked API token {token_id} of alice" in out
    code, out, _ = run(capsys, "token", "list", spec, *vtf)
    assert code == 0 and "no API tokens in enclave" in out

    code, _, err = run(capsys, "token", "revoke", spec, token_id, *vtf)
    assert code == 4 and "no API token" in err

    assert token not in openbao.audit_log.read_text()


def test_cli_revokes_every_token_of_a_principal(
    capsys: Output, cli_enclave: CliEnclave, openbao_client: Any
) -> None:
    spec, vtf = str(cli_enclave.spec), ("--vault-token-file", str(cli_enclave.token_file))
    paths = cli_enclave.paths
    alices = [issue(openbao_client, paths, "alice", ["analyst"]) for _ in range(2)]
    bob = issue(openbao_client, paths, "bob", ["safety-officer"])
    gone = issue(openbao_client, paths, "zed", ["analyst"])  # no longer in the spec

    code, out, err = run(capsys, "token", "revoke", spec, "--principal", "alice", *vtf)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for token, line in zip(sorted(alices, key=lambda t: t.info.id), sorted(lines[:2]), strict=True):
        assert line.startswith(f"revoked API token {token.info.id} of alice (roles analyst, ")
    assert lines[2] == f"revoked 2 API token(s) of alice in enclave {paths.enclave}"
    assert {t.id for t in list_tokens(openbao_client, paths)} == {bob.info.id, gone.info.id}

    code, out, err = run(capsys, "token", "revoke", spec, "-p", "zed", "--json", *vtf)
    assert code == 0, err
    data = json.loads(out)
    assert (data["enclave"], data["principal"], data["count"]) == (paths.enclave, "zed", 1)
    assert [t["id"] for t in data["revoked"]] == [gone.info.id]
    assert "hash" not in out

    code, out, err = run(capsys, "token", "revoke", spec, "--principal", "alice", *vtf)
    assert (code, out.strip()) == (
        0,
        f"revoked 0 API token(s) of alice in enclave {paths.enclave}: none held",
    )
    code, out, err = run(capsys, "token", "revoke", spec, "--principal", "mallory", *vtf)
    assert code == 4 and out == ""
    assert "'mallory' holds no API tokens" in err and "not a principal of its spec" in err
    assert err.count("\n") == 1

    code, out, err = run(capsys, "token", "revoke", spec, bob.info.id, "-p", "bob", *vtf)
    assert code == 2 and "not both" in err
    code, out, err = run(capsys, "token", "revoke", spec, *vtf)
    assert code == 2 and "give a TOKEN_ID, or --principal NAME" in err
    assert [t.id for t in list_tokens(openbao_client, paths)] == [bob.info.id]


def test_cli_refuses_unknown_principals(capsys: Output, cli_enclave: CliEnclave) -> None:
    vtf = ("--vault-token-file", str(cli_enclave.token_file))
    code, out, err = run(
        capsys, "token", "issue", str(cli_enclave.spec), "--principal", "mallory", *vtf
    )
    assert code == 2 and out == ""
    assert "'mallory' is not a principal" in err
    assert "known: alice, bob, carol, dan" in err
    assert err.count("\n") == 1


def test_cli_refuses_a_bad_ttl(capsys: Output, cli_enclave: CliEnclave) -> None:
    vtf = ("--vault-token-file", str(cli_enclave.token_file))
    argv = ("token", "issue", str(cli_enclave.spec), "-p", "alice", "--ttl", "forever", *vtf)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "--ttl" in err


def test_cli_external_vault_needs_a_private_token_file(
    capsys: Output, cli_enclave: CliEnclave
) -> None:
    spec = str(cli_enclave.spec)
    code, _, err = run(capsys, "token", "list", spec)
    assert code == 2 and "--vault-token-file" in err

    cli_enclave.token_file.chmod(0o644)
    code, _, err = run(
        capsys, "token", "list", spec, "--vault-token-file", str(cli_enclave.token_file)
    )
    assert code == 2 and "readable by others" in err

    missing = cli_enclave.token_file.with_name("nope")
    code, _, err = run(capsys, "token", "list", spec, "--vault-token-file", str(missing))
    assert code == 2 and "nope" in err


def test_cli_bad_admin_token_is_a_vault_error(
    capsys: Output, cli_enclave: CliEnclave, openbao: OpenBaoServer
) -> None:
    cli_enclave.token_file.write_text("s." + "x" * 24)
    code, _, err = run(
        capsys,
        "token",
        "list",
        str(cli_enclave.spec),
        "--vault-token-file",
        str(cli_enclave.token_file),
    )
    assert code == 5 and "vault" in err
    assert openbao.root_token not in err


def test_cli_revoke_refuses_a_whole_token_without_echoing_it(
    capsys: Output, cli_enclave: CliEnclave
) -> None:
    token = tokens_module.new_token()[0]
    vtf = ("--vault-token-file", str(cli_enclave.token_file))
    code, out, err = run(capsys, "token", "revoke", str(cli_enclave.spec), token, *vtf)
    assert code == 2 and out == ""
    assert token not in err and "only its id" in err


def test_cli_embedded_vault_takes_no_token_file(
    capsys: Output, workspace: Workspace, tmp_path: Path
) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text("whatever")
    token_file.chmod(0o600)
    argv = ("token", "list", str(workspace.example()), "--vault-token-file", str(token_file))
    code, out, err = run(capsys, "--state-dir", str(tmp_path / "state"), *argv)
    assert code == 2 and out == ""
    assert "only for an external Vault" in err
    assert not (tmp_path / "state" / "vault").exists()  # nothing was started
