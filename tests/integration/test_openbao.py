"""The harness's OpenBao is a real server: health, KV v2 round trip, and a real audit trail."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from support.openbao import write_kv2_when_ready

if TYPE_CHECKING:
    from support.openbao import OpenBaoServer

pytestmark = pytest.mark.vault


def _audit_entries(server: OpenBaoServer) -> list[dict[str, Any]]:
    entries = []
    for line in server.audit_log.read_text().splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return entries


def test_health_reports_initialised_unsealed_openbao_2(openbao_client: Any) -> None:
    health = openbao_client.sys.read_health_status(method="GET")
    assert health["initialized"] is True
    assert health["sealed"] is False
    assert health["standby"] is False
    assert str(health["version"]).startswith("2.")


def test_kv_v2_round_trip_is_audited_without_plaintext(
    openbao: OpenBaoServer, openbao_client: Any
) -> None:
    mount = f"kv-{secrets.token_hex(4)}"
    key = "app/config"
    plaintext = f"plaintext-{secrets.token_hex(16)}"
    openbao_client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    try:
        write_kv2_when_ready(openbao_client, mount, key, {"password": plaintext})
        read = openbao_client.secrets.kv.v2.read_secret_version(
            path=key, mount_point=mount, raise_on_deleted_version=True
        )
        assert read["data"]["data"] == {"password": plaintext}
    finally:
        openbao_client.sys.disable_secrets_engine(path=mount)

    entries = _audit_entries(openbao)
    data_path = f"{mount}/data/{key}"
    requests = [e for e in entries if e["type"] == "request"]
    operations = {e["request"]["operation"] for e in requests if e["request"]["path"] == data_path}
    assert {"create", "read"} <= operations or {"update", "read"} <= operations, operations
    responses = [e for e in entries if e["type"] == "response"]
    assert any(e["request"]["path"] == data_path for e in responses)

    audit_text = openbao.audit_log.read_text()
    assert plaintext not in audit_text
    assert openbao.root_token not in audit_text
