"""API token format, parsing and verification: pure functions, no Vault."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from enclave.audit.redact import redact_text
from enclave.errors import InputError
from enclave.vault.tokens import (
    ID_LENGTH,
    TokenRecord,
    check_token_id,
    new_token,
    parse_token,
    token_hash,
    verify_token,
)

KEY = secrets.token_bytes(32)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def record_for(token: str, *, key: bytes = KEY, expires: datetime | None = None) -> TokenRecord:
    token_id, secret = parse_token(token)
    return TokenRecord(
        id=token_id,
        principal="alice",
        roles=("analyst",),
        created=CREATED,
        expires=expires,
        hash=token_hash(key, secret, token_id=token_id, principal="alice", expires=expires),
    )


def test_new_tokens_have_the_documented_shape_and_are_unique() -> None:
    seen = set()
    for _ in range(200):
        token, token_id, secret = new_token()
        assert token == f"enc_{token_id}_{secret}"
        assert len(token_id) == ID_LENGTH and token_id.isalnum()
        assert len(secret) == 43
        assert parse_token(token) == (token_id, secret)
        seen.add(token_id)
    assert len(seen) == 200


def test_every_token_is_redacted_by_the_audit_redactor() -> None:
    for _ in range(200):
        token, _, secret = new_token()
        text, changed = redact_text(f"please use Bearer-less {token} here")
        assert changed
        assert token not in text and secret not in text
        assert "[REDACTED:enclave-token]" in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "enc_",
        "enc_abc_def",
        "tok_AAAAAAAAAAAA_" + "A" * 43,
        "enc_AAAAAAAAAAA_" + "A" * 43,  # 11-char id
        "enc_AAAAAAAAAAAA_" + "A" * 42,  # short secret
        "enc_AAAAAAAAAAAA_" + "A" * 44,  # long secret
        "enc_AAAAAA-AAAAA_" + "A" * 43,  # '-' in the id
        "enc_AAAAAAAAAAAA-" + "A" * 43,  # wrong separator
        "enc_AAAAAAAAAAAA_" + "A" * 42 + "=",
        "enc_AAAAAAAAAAAA_" + "A" * 42 + "\n" + "x",
    ],
)
def test_malformed_tokens_are_input_errors_that_do_not_echo_them(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_token(text)
    with pytest.raises(InputError) as reference:
        parse_token("x")
    assert str(caught.value) == str(reference.value)  # the message never depends on the input


def test_surrounding_whitespace_is_tolerated() -> None:
    token, token_id, secret = new_token()
    assert parse_token(f"  {token}\n") == (token_id, secret)


def test_verify_accepts_the_token_and_rejects_everything_else() -> None:
    token, token_id, secret = new_token()
    record = record_for(token)
    assert verify_token(record, KEY, token)

    other, other_id, other_secret = new_token()
    assert not verify_token(record, KEY, other)  # another token entirely
    assert not verify_token(record, KEY, f"enc_{token_id}_{other_secret}")  # wrong secret
    assert not verify_token(record, KEY, f"enc_{other_id}_{secret}")  # right secret, other id
    assert not verify_token(record, secrets.token_bytes(32), token)  # another enclave's key
    assert not verify_token(record, KEY, "garbage")  # malformed: just invalid
    assert not verify_token(record, KEY, token[:-1])


def test_verify_honours_expiry() -> None:
    token, _, _ = new_token()
    expires = CREATED + timedelta(days=1)
    record = record_for(token, expires=expires)
    assert verify_token(record, KEY, token, now=expires - timedelta(seconds=1))
    assert not verify_token(record, KEY, token, now=expires)
    assert not verify_token(record, KEY, token)  # 2026-01-02 is in the past


def test_the_hash_is_keyed_hex_and_holds_no_secret() -> None:
    token, token_id, secret = new_token()
    digest = token_hash(KEY, secret, token_id=token_id, principal="alice", expires=None)
    assert len(digest) == 64 and int(digest, 16) >= 0
    other_key = secrets.token_bytes(32)
    assert digest != token_hash(
        other_key, secret, token_id=token_id, principal="alice", expires=None
    )
    data = record_for(token).to_data()
    assert set(data) == {"principal", "roles", "created", "expires", "hash"}
    assert secret not in repr(data) and secret not in repr(record_for(token))
    assert "hash" not in record_for(token).info.as_dict()


def test_records_round_trip_through_their_kv_document() -> None:
    token, token_id, _ = new_token()
    record = record_for(token, expires=CREATED + timedelta(days=30))
    assert TokenRecord.from_data(token_id, record.to_data()) == record


def test_token_ids_are_checked_before_they_name_a_path() -> None:
    assert check_token_id("AbCdEf123456") == "AbCdEf123456"
    for bad in ("../api-token-key", "AbCdEf12345", "AbCdEf1234567", "AbCdEf12345/", ""):
        with pytest.raises(InputError):
            check_token_id(bad)
    token, _, _ = new_token()
    with pytest.raises(InputError) as caught:
        check_token_id(token)
    assert token not in str(caught.value)


def test_bindings_are_inside_the_mac() -> None:
    """Rewriting the stored principal or expiry (KV write access) invalidates the token."""
    token, _, _ = new_token()
    record = record_for(token, expires=datetime(2099, 1, 1, tzinfo=UTC))
    assert verify_token(record, KEY, token)
    moved = dataclasses.replace(record, principal="mallory")
    extended = dataclasses.replace(record, expires=datetime(2199, 1, 1, tzinfo=UTC))
    assert not verify_token(moved, KEY, token)
    assert not verify_token(extended, KEY, token)
