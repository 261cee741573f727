from __future__ import annotations

from datetime import timedelta

import pytest

from enclave.spec.units import (
    check_image,
    check_name,
    check_sha256,
    format_duration,
    format_size,
    parse_duration,
    parse_host_port,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("1s", timedelta(seconds=1)),
        ("1m30s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1.5s", timedelta(milliseconds=1500)),
    ],
)
def test_durations_parse_and_round_trip(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "1", "1x", "s", "-1s", "0s", "1s2", "1 s", "400d", "1s-"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="as a string, got int"):
        parse_duration(5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("512Mi", 512 * 2**20), ("1Gi", 2**30), ("2G", 2 * 10**9), ("4k", 4000)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected
    assert parse_size(format_size(expected)) == expected


@pytest.mark.parametrize("text", ["", "1.5Gi", "Gi", "1gb", "0", "-1Mi", "99999Ti"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_addresses() -> None:
    assert str(parse_host_port("127.0.0.1:8443")) == "127.0.0.1:8443"
    v6 = parse_host_port("[::1]:9000")
    assert (str(v6), v6.port, v6.is_loopback) == ("[::1]:9000", 9000, True)
    assert not parse_host_port("0.0.0.0:80").is_loopback


@pytest.mark.parametrize(
    "text", ["localhost:8443", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "[::1]8443", ":80"]
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_host_port(text)


@pytest.mark.parametrize("name", ["a", "demo", "model-1", "x" * 63])
def test_dns_labels(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a_b", "a.b", "x" * 64, "é"])
def test_bad_dns_labels(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        check_name(name)


def test_sha256_accepts_prefixed_and_plain() -> None:
    digest = "ab" * 32
    assert check_sha256(digest) == digest
    assert check_sha256("sha256:" + digest) == digest
    with pytest.raises(ValueError, match="sha256"):
        check_sha256("AB" * 32)


@pytest.mark.parametrize(
    "ref",
    ["enclave/runtime:0.1", "localhost:5000/a/b:tag", "vllm/vllm-openai@sha256:" + "0" * 64, "x"],
)
def test_image_references(ref: str) -> None:
    assert check_image(ref) == ref


@pytest.mark.parametrize("ref", ["", "UPPER/case", "a b", "a:", "a@sha256:xyz"])
def test_bad_image_references(ref: str) -> None:
    with pytest.raises(ValueError, match="image reference"):
        check_image(ref)
