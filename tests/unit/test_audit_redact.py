"""Secrets never reach the audit log: free text is redacted, identifiers and keys are refused."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer, verify_log
from enclave.audit.reader import iter_records
from enclave.audit.redact import redact, redact_text
from enclave.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pem() -> str:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key.decode().strip()


PEM = _pem()
PEM_BODY = PEM.splitlines()[1]
JWT = ".".join(
    [
        _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64url(json.dumps({"sub": "alice", "exp": 1893456000}).encode()),
        _b64url(b"\x13" * 32),
    ]
)

# (kind, secret): every form the redactor promises to catch
SECRETS = [
    ("vault-token", "hvs.CAESIJ7n2xXoQ0b8Zl3mS1o2p3q4r5s6t7u8v9w0GiEKHGh2cy5BYjBOa1JXWkdhRWxx"),
    ("vault-token", "hvb.AAAAAQJ7n2xXoQ0b8Zl3mS1o2p3q4r5s6t7u8v9w0x1y2z3"),
    ("vault-token", "s.Ab3dEf6hIj9kLm2nOp5qRs8t"),  # legacy Vault / OpenBao service token
    ("vault-token", "b.AAAAAQLx4u9Qq0k2Zr7Tn3Yw5Vb8"),  # OpenBao batch token
    ("vault-token", "r.Zr7Tn3Yw5Vb8AAAAAQLx4u9Qq0k2"),  # OpenBao recovery token
    ("private-key", PEM),
    ("private-key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMx"),
    ("private-key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUA"),
    ("enclave-token", "enc_7Hq2Lr9Xw4Pz8Ks1Vb6Nm3Tc0Jd5Yf"),
    ("aws-access-key", "AKIAIOSFODNN7EXAMPLE"),
    ("aws-access-key", "ASIAY34FZKBOKMUTVV7A"),
    ("github-token", "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
    ("jwt", JWT),
    ("bearer", "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
]
SECRET_IDS = [f"{kind}-{number}" for number, (kind, _) in enumerate(SECRETS)]

ORDINARY = [
    "Requests. Also things. Ends with s.",
    "forwarded to alerts.prod-cluster-eu-west-1-primary and jobs.nightly-backup-retention-policy",
    "prompt sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "the bearer of this note is allowed in",
    "signed by user s. smith at 10:00; see section b. paragraph r.",
    "model llama-3.1-8b-instruct answered in 1.5s",
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n",
    "ASIAN market report, AKIA is not a key without sixteen more characters",
    "encode_and_decode is a function name, enc_x is short",
]


@pytest.mark.parametrize(("kind", "secret"), SECRETS, ids=SECRET_IDS)
def test_each_secret_form_is_redacted_in_text(kind: str, secret: str) -> None:
    text, changed = redact_text(f"before {secret} after")
    assert changed
    assert f"[REDACTED:{kind}]" in text
    assert text.startswith("before [REDACTED:")
    assert secret not in text
    assert secret.strip().splitlines()[-1] not in text  # nothing of a key block survives


@pytest.mark.parametrize(("kind", "secret"), SECRETS, ids=SECRET_IDS)
def test_secrets_are_redacted_in_reason_details_and_content(kind: str, secret: str) -> None:
    event = AuditEvent(
        actor="alice",
        action="request.chat",
        reason=f"denied: {secret}",
        content={"prompt": f"my key is {secret}", "output": "no"},
        details={"request": {"headers": ["accept: */*", secret]}, "count": 3, "ok": None},
    )
    cleaned, hits = redact(event)
    assert hits == ("reason", "content.prompt", "details.request.headers[1]")
    assert cleaned.reason == f"denied: [REDACTED:{kind}]"
    assert cleaned.content == {"prompt": f"my key is [REDACTED:{kind}]", "output": "no"}
    assert cleaned.details == {
        "request": {"headers": ["accept: */*", f"[REDACTED:{kind}]"]},
        "count": 3,
        "ok": None,
    }


def test_a_key_block_without_an_end_line_is_redacted_to_the_end() -> None:
    torn = "key:\n" + PEM.split("-----END")[0]
    text, changed = redact_text(torn)
    assert changed
    assert text == "key:\n[REDACTED:private-key]"


def test_several_secrets_in_one_value_are_all_redacted() -> None:
    aws = "AKIAIOSFODNN7EXAMPLE"
    token = "hvs.CAESIJ7n2xXoQ0b8Zl3mS1o2p3q4r5s6t7u8v9w0"
    text, changed = redact_text(f"{aws} then {token} then {aws}")
    assert changed
    assert text == (
        "[REDACTED:aws-access-key] then [REDACTED:vault-token] then [REDACTED:aws-access-key]"
    )


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == (text, False)
    event = AuditEvent(actor="alice", action="request.chat", reason=text, details={"t": text})
    cleaned, hits = redact(event)
    assert hits == ()
    assert cleaned is event


@pytest.mark.parametrize(
    "field", ["actor", "action", "purpose", "model", "request_id"], ids=lambda name: name
)
def test_an_identifier_that_looks_like_a_secret_is_refused(field: str) -> None:
    secret = {
        "actor": "s.ab3def6hij9klm2nop5qrs8t",
        "action": "s.abcdefghijklmnopqrstuvwxyz",
        "purpose": "s.Ab3dEf6hIj9kLm2nOp5qRs8t",
        "model": "AKIAIOSFODNN7EXAMPLE",
        "request_id": "hvs.CAESIJ7n2xXoQ0b8Zl3mS1o2p3q4r5s6t7u8v9w0",
    }[field]
    fields: dict[str, Any] = {"actor": "alice", "action": "request.chat", field: secret}
    event = AuditEvent(**fields)  # a valid identifier by its pattern...
    with pytest.raises(InputError, match=field.replace("_", " ")) as caught:
        redact(event)  # ...but never written
    assert secret not in str(caught.value)


def test_a_mapping_key_that_looks_like_a_secret_is_refused() -> None:
    token = "hvs.CAESIJ7n2xXoQ0b8Zl3mS1o2p3q4r5s6t7u8v9w0"
    event = AuditEvent(actor="alice", action="request.chat", details={"tokens": {token: "root"}})
    with pytest.raises(InputError, match=r"details\.tokens") as caught:
        redact(event)
    assert token not in str(caught.value)


def _leaks(root: Path, secret: str) -> list[str]:
    """Files under ``root`` holding ``secret``, raw, JSON-escaped, or its distinctive middle."""
    escaped = json.dumps(secret)[1:-1]
    middle = secret.strip().splitlines()[len(secret.strip().splitlines()) // 2]
    middle = middle[len(middle) // 4 : len(middle) // 4 + 16]
    needles = {secret.encode(), escaped.encode(), middle.encode()}
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {needle!r}" for needle in needles if needle in data]
    return found


def test_secrets_never_reach_any_file_of_a_real_log(tmp_path: Path) -> None:
    root = tmp_path / "audit"
    settings = AuditSettings(store_content=True, checkpoint_records=2)
    with AuditLog.open(
        root, enclave="demo", signer=Ed25519Signer.generate(), settings=settings
    ) as log:
        for number, (_, secret) in enumerate(SECRETS):
            log.append(
                AuditEvent(
                    actor="alice",
                    action="request.chat",
                    reason=f"marker-{number}-reason {secret}",
                    content={"prompt": f"marker-{number}-content {secret}"},
                    details={"header": f"marker-{number}-details {secret}", "n": [secret]},
                )
            )
        with pytest.raises(InputError):
            log.append(AuditEvent(actor="alice", action="request.chat", model=SECRETS[9][1]))
        log.append(AuditEvent(actor="alice", action="request.after"))

    files = b"".join(path.read_bytes() for path in root.rglob("*") if path.is_file())
    for number, (kind, secret) in enumerate(SECRETS):
        assert _leaks(root, secret) == [], kind
        # the text around each secret did reach the log, so the scan above looks in the right place
        for where in ("reason", "content", "details"):
            assert f"marker-{number}-{where} [REDACTED:{kind}]".encode() in files
    records = list(iter_records(root))
    assert [record.seq for record in records] == list(range(1, len(SECRETS) + 2))
    assert records[0].redacted == ("reason", "content.prompt", "details.header", "details.n[0]")
    assert records[-1].action == "request.after"
    assert verify_log(root).intact
