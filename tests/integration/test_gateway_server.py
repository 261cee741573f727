"""``enclave gateway serve`` as a real process in front of ``enclave runtime serve``, over sockets.

Auth comes from a real OpenBao (the harness's): the enclave is provisioned there, an API token
is issued with ``enclave.vault.tokens.issue``, and the gateway reads the token records with the
root token from ``--vault-token-file``. The test plays the shutdown controller: it signs one
heartbeat with the key the gateway was given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.audit import verify_log
from enclave.audit.reader import iter_records
from enclave.shutdown.control import SIGNATURE_HEADER, ControlCommand, ControlKind, sign_control
from enclave.vault.names import AUDIT_SIGNER_KEY, EnclavePaths
from enclave.vault.transit import TransitSigner
from support.gateway_procs import (
    Enclave,
    Process,
    audit_dir,
    provisioned_enclave,
    running_gateway,
    running_runtime,
)
from support.openbao import OpenBaoServer

pytestmark = pytest.mark.vault

START_TIMEOUT = 30.0
PROHIBITED = "Track the movements of all citizens in Springfield using their phone location data."


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Process]:
    with running_runtime(tmp_path) as server:
        yield server


@pytest.fixture
def enclave(tmp_path: Path, openbao: OpenBaoServer, openbao_client: Any) -> Iterator[Enclave]:
    with provisioned_enclave(tmp_path, openbao.address, openbao_client) as provisioned:
        yield provisioned


def test_gateway_serves_denies_and_audits(
    tmp_path: Path,
    openbao: OpenBaoServer,
    openbao_client: Any,
    runtime: Process,
    enclave: Enclave,
) -> None:
    key = secrets.token_bytes(32)
    with (
        running_gateway(tmp_path, enclave, runtime, openbao.root_token, key) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        before = client.get("/healthz")
        assert before.status_code == 503  # no lease from the controller yet
        body, signature = sign_control(
            key, ControlCommand(ControlKind.HEARTBEAT, "controller", time.time_ns(), 30.0)
        )
        beat = client.post("/control", content=body, headers={SIGNATURE_HEADER: signature})
        assert beat.status_code == 200, beat.text
        deadline = time.monotonic() + START_TIMEOUT
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/healthz").text
            time.sleep(0.05)
        headers = {
            "authorization": f"Bearer {enclave.token}",
            "x-enclave-purpose": "translation",
        }
        ok = client.post(
            "/v1/chat/completions",
            json={
                "model": "assistant",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Translate: the gateway"}],
            },
            headers=headers,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"]
        bad = client.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": PROHIBITED}]},
            headers=headers,
        )
        assert bad.status_code == 403
        assert bad.json()["error"]["code"] == "prohibited_use"
        assert client.get("/metrics").status_code == 401  # audit-read only
        assert client.get("/metrics", headers=headers).status_code == 403
    code = gateway.process.returncode
    assert code == 0, gateway.log.read_text(encoding="utf-8")
    assert enclave.token not in gateway.log.read_text(encoding="utf-8")
    audit = audit_dir(enclave)
    report = verify_log(audit)
    assert report.intact, report.summary()
    actions = [(r.action, r.decision, r.reason) for r in iter_records(audit)]
    assert ("request.chat", "allow", "allowed") in actions
    assert ("response.chat", "allow", "allowed") in actions
    assert ("request.chat", "deny", "prohibited_use") in actions
    # checkpoints are signed by the enclave's Vault transit key: no key file on the host
    assert not (enclave.state / "enclaves" / enclave.name / "audit.key").exists()
    transit = TransitSigner(openbao_client, EnclavePaths(enclave.name).transit, AUDIT_SIGNER_KEY)
    assert report.key_id == transit.key_id
    assert report.unsigned == 0  # the final checkpoint was signed on shutdown


def test_an_overloaded_gateway_admits_its_limit_and_refuses_the_rest_at_once(
    tmp_path: Path, openbao: OpenBaoServer, enclave: Enclave
) -> None:
    key = secrets.token_bytes(32)
    burst = 12
    with (
        running_runtime(tmp_path, token_delay=0.1) as slow,  # 8 tokens: about 0.8 s each
        running_gateway(
            tmp_path, enclave, slow, openbao.root_token, key, options=("--max-in-flight", "2")
        ) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False) as client,
    ):
        body, signature = sign_control(
            key, ControlCommand(ControlKind.HEARTBEAT, "controller", time.time_ns(), 60.0)
        )
        assert (
            client.post("/control", content=body, headers={SIGNATURE_HEADER: signature}).status_code
            == 200
        )
        headers = {"authorization": f"Bearer {enclave.token}", "x-enclave-purpose": "translation"}
        request = {
            "model": "assistant",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Translate: the gateway"}],
        }

        def one(_: int) -> tuple[int, str, str, float]:
            start = time.monotonic()
            with httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False) as own:
                answer = own.post("/v1/chat/completions", json=request, headers=headers)
            code = answer.json()["error"]["code"] if answer.status_code != 200 else ""
            return (
                answer.status_code,
                code,
                answer.headers.get("retry-after", ""),
                (time.monotonic() - start),
            )

        with ThreadPoolExecutor(burst) as pool:
            answers = list(pool.map(one, range(burst)))
    assert gateway.process.returncode == 0, gateway.log.read_text(encoding="utf-8")
    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(served) == 2, answers  # the limit, not more: counted in at the door
    assert {(status, code, retry) for status, code, retry, _ in refused} == {
        (503, "overloaded", "1")
    }
    assert max(seconds for *_, seconds in refused) < min(seconds for *_, seconds in served)
    audit = audit_dir(enclave)
    assert verify_log(audit).intact
    records = list(iter_records(audit))
    assert len([r for r in records if r.action == "request.chat"]) == 2  # refused: never decided
    shed = [r for r in records if r.action == "gateway.shed"]
    assert sum((r.details or {})["requests"]["chat"] for r in shed) == burst - 2
