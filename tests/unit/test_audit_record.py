"""Audit records: the canonical line, its hash, and the validation that keeps lines well formed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from enclave.audit.record import (
    FIELD_ORDER,
    MAX_RECORD_BYTES,
    ActorKind,
    AuditEvent,
    Decision,
    decode,
    encode,
    genesis_hash,
    sha256_text,
    split_line,
)
from enclave.errors import InputError

TIME = "2026-11-27T10:00:00.000000Z"
PREV = "ab" * 32

GOLDEN_BODY = (
    b'{"v":1,"seq":7,"prev":"' + PREV.encode() + b'","time":"2026-11-27T10:00:00.000000Z"'
    b',"enclave":"demo","actor":"alice@example.org","actor_kind":"principal"'
    b',"action":"request.chat","decision":"deny"'
    b',"reason":"quota exceeded: \\"\\u00fcber\\" limit\\n"'
    b',"purpose":"triage","model":"llama-3.1-8b","request_id":"req-42"'
    b',"prompt_sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"'
    b',"output_sha256":"486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"'
    b',"latency_ms":12.346'
    b',"content":{"output":"world","prompt":"hello"}'
    b',"details":{"alpha":{"b":true,"y":[1,2.5,null]},"zeta":1}'
    b',"redacted":["details.alpha"]}'
)
GOLDEN_HASH = "0fdd0383cab221b233ac6be50c81a07f14514c1d661fa3f4f6dd190d432eaf21"


def full_event(**changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "actor": "alice@example.org",
        "action": "request.chat",
        "decision": Decision.DENY,
        "reason": 'quota exceeded: "über" limit\n',
        "purpose": "triage",
        "model": "llama-3.1-8b",
        "request_id": "req-42",
        "prompt_sha256": sha256_text("hello"),
        "output_sha256": sha256_text("world"),
        "latency_ms": 12.34567,
        "content": {"prompt": "hello", "output": "world"},
        "details": {"zeta": 1, "alpha": {"y": [1, 2.5, None], "b": True}},
    }
    fields.update(changes)
    return AuditEvent(**fields)


def encode_at(event: AuditEvent, seq: int = 7, redacted: tuple[str, ...] = ()) -> bytes:
    line, _ = encode(event, seq=seq, prev=PREV, time=TIME, enclave="demo", redacted=redacted)
    return line


def body_of(line: bytes) -> bytes:
    """The hashed body, computed here independently of ``split_line``."""
    return line[: line.rindex(b',"hash":"')] + b"}"


def test_a_full_event_encodes_to_the_golden_line() -> None:
    line, digest = encode(
        full_event(), seq=7, prev=PREV, time=TIME, enclave="demo", redacted=("details.alpha",)
    )
    assert line == GOLDEN_BODY[:-1] + f',"hash":"{GOLDEN_HASH}"}}\n'.encode()
    assert digest == GOLDEN_HASH
    assert hashlib.sha256(GOLDEN_BODY).hexdigest() == GOLDEN_HASH


def test_a_minimal_event_omits_every_absent_field() -> None:
    line = encode_at(AuditEvent(actor="bob", action="audit.test"), seq=1)
    assert body_of(line) == (
        b'{"v":1,"seq":1,"prev":"' + PREV.encode() + b'","time":"' + TIME.encode() + b'"'
        b',"enclave":"demo","actor":"bob","actor_kind":"principal","action":"audit.test"'
        b',"decision":"info"}'
    )


def test_the_hash_is_the_sha256_of_the_body_and_split_line_returns_both() -> None:
    line, digest = encode(full_event(), seq=3, prev=PREV, time=TIME, enclave="demo")
    assert digest == hashlib.sha256(body_of(line)).hexdigest()
    assert json.loads(line)["hash"] == digest
    assert split_line(line) == (body_of(line), digest)


def test_encoding_is_stable_under_mapping_order_and_repetition() -> None:
    one = full_event(details={"a": 1, "b": {"d": 2, "c": 3}}, content={"x": "1", "y": "2"})
    two = full_event(details={"b": {"c": 3, "d": 2}, "a": 1}, content={"y": "2", "x": "1"})
    assert encode_at(one) == encode_at(one) == encode_at(two)
    assert b'"details":{"a":1,"b":{"c":3,"d":2}}' in encode_at(one)


def test_any_changed_field_changes_the_hash() -> None:
    base = encode(full_event(), seq=7, prev=PREV, time=TIME, enclave="demo")[1]
    variants = [
        encode(full_event(reason="other"), seq=7, prev=PREV, time=TIME, enclave="demo"),
        encode(full_event(), seq=8, prev=PREV, time=TIME, enclave="demo"),
        encode(full_event(), seq=7, prev="cd" * 32, time=TIME, enclave="demo"),
        encode(full_event(), seq=7, prev=PREV, time=TIME, enclave="other"),
        encode(
            full_event(actor_kind=ActorKind.COMPONENT), seq=7, prev=PREV, time=TIME, enclave="demo"
        ),
    ]
    digests = {digest for _, digest in variants}
    assert base not in digests
    assert len(digests) == len(variants)


def test_lines_are_single_line_ascii_with_keys_in_schema_order() -> None:
    line = encode_at(full_event(reason="naïve\u2028line\nbreak\r\x00"), redacted=("reason",))
    assert line.isascii()
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    keys = list(json.loads(line))
    assert keys == [name for name in FIELD_ORDER if name in keys] + ["hash"]
    assert keys[-1] == "hash"


def test_decode_round_trips_and_as_dict_is_the_stored_form() -> None:
    line = encode_at(full_event(), redacted=("details.alpha",))
    record = decode(line)
    assert record.seq == 7
    assert record.prev == PREV
    assert record.enclave == "demo"
    assert record.decision is Decision.DENY
    assert record.reason == 'quota exceeded: "über" limit\n'
    assert record.latency_ms == 12.346
    assert record.redacted == ("details.alpha",)
    stored = json.loads(line)
    assert record.as_dict() == stored
    assert list(record.as_dict()) == list(stored)


def test_genesis_binds_the_chain_to_its_log() -> None:
    assert genesis_hash("log-a") == genesis_hash("log-a")
    assert genesis_hash("log-a") != genesis_hash("log-b")
    assert len(genesis_hash("log-a")) == 64


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json\n",
        encode_at(full_event())[:-1],  # no newline: torn
        encode_at(full_event()).replace(b'{"v":1,', b'{"v":2,'),
        encode_at(full_event()).replace(b',"hash":"', b',"hash" :"'),
    ],
)
def test_split_line_refuses_lines_not_in_the_v1_form(line: bytes) -> None:
    assert split_line(line) is None


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("actor", "", "actor"),
        ("actor", "Alice", "actor"),
        ("actor", "al ice", "actor"),
        ("actor", 'al"ice', "actor"),
        ("actor", "al\\ice", "actor"),
        ("actor", "alice\n", "actor"),
        ("actor", "-alice", "actor"),
        ("actor", "a" * 129, "actor"),
        ("action", "Request.chat", "action"),
        ("action", "request..chat", "action"),
        ("action", "request.chat.", "action"),
        ("action", "a.b.c.d.e.f", "action"),
        ("action", "request.chat\n", "action"),
        ("action", "request chat", "action"),
        ("purpose", "", "purpose"),
        ("purpose", "two words", "purpose"),
        ("model", 'llama"3', "model"),
        ("model", "x" * 129, "model"),
        ("request_id", "req/42", "request id"),
        ("request_id", "req-42\n", "request id"),
        ("prompt_sha256", "A" * 64, "prompt sha256"),
        ("prompt_sha256", "a" * 63, "prompt sha256"),
        ("prompt_sha256", "g" * 64, "prompt sha256"),
        ("output_sha256", "a" * 64 + "\n", "output sha256"),
        ("latency_ms", -1.0, "latency"),
        ("latency_ms", float("nan"), "latency"),
        ("latency_ms", float("inf"), "latency"),
        ("latency_ms", 1e9, "latency"),
    ],
)
def test_invalid_fields_are_refused(field: str, value: object, what: str) -> None:
    with pytest.raises(InputError, match=f"invalid {what}"):
        full_event(**{field: value})


def test_field_limits_are_inclusive() -> None:
    event = full_event(actor="a" * 128, action="a.b.c.d.e", request_id="r" * 128, latency_ms=0.0)
    line = encode_at(event)
    assert json.loads(line)["actor"] == "a" * 128


@pytest.mark.parametrize(
    "details",
    [
        {"x": object()},
        {"x": b"bytes"},
        {"x": {1, 2}},
        {"x": float("nan")},
        {"x": float("inf")},
        {1: "a", "b": "c"},
    ],
)
def test_non_json_details_are_refused(details: dict[Any, Any]) -> None:
    with pytest.raises(InputError, match="not plain JSON"):
        encode_at(full_event(details=details))


def test_records_are_refused_above_the_size_limit_exactly() -> None:
    empty = len(body_of(encode_at(full_event(reason="x"))))
    fitting = MAX_RECORD_BYTES - empty + 1  # the one-character reason already counts
    line = encode_at(full_event(reason="x" * fitting))
    assert len(body_of(line)) == MAX_RECORD_BYTES
    with pytest.raises(InputError, match=f"larger than {MAX_RECORD_BYTES} bytes"):
        encode_at(full_event(reason="x" * (fitting + 1)))


def test_escaping_counts_towards_the_size_limit() -> None:
    # each "\u00fc" takes six bytes on disk, so 11,000 of them exceed 64 KiB
    with pytest.raises(InputError, match="larger than"):
        encode_at(full_event(details={"text": "ü" * 11_000}))
