"""The embedded Vault's TLS material: a real chain, loopback names, owner-only keys, reuse."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from enclave.vault.tls import TlsFiles, ensure_tls, write_private

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(files: TlsFiles, when: dt.datetime, name: x509.DNSName | x509.IPAddress) -> None:
    """Full path validation (chain, validity, EKU, SAN) as a TLS client would do it."""
    verifier = (
        PolicyBuilder().store(Store([_cert(files.ca_cert)])).time(when).build_server_verifier(name)
    )
    verifier.verify(_cert(files.server_cert), [])


def test_creates_a_ca_and_a_loopback_server_certificate(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls", now=NOW)

    ca, server = _cert(files.ca_cert), _cert(files.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    server.verify_directly_issued_by(ca)
    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP256R1)
    assert ca.not_valid_after_utc - NOW > dt.timedelta(days=3600)
    assert dt.timedelta(days=360) < server.not_valid_after_utc - NOW <= dt.timedelta(days=366)

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    _verify(files, NOW, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))
    _verify(files, NOW, x509.DNSName("localhost"))


def test_the_certificate_is_not_valid_for_other_names(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    with pytest.raises(x509.verification.VerificationError):
        _verify(files, NOW, x509.IPAddress(ipaddress.IPv4Address("10.0.0.1")))
    with pytest.raises(x509.verification.VerificationError):
        _verify(files, NOW, x509.DNSName("vault.example"))


def test_modes_keys_owner_only_certificates_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)  # even under a strict umask the CA certificate stays readable
    try:
        files = ensure_tls(tmp_path / "tls", now=NOW)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "tls") == 0o700
    assert _mode(files.ca_key) == 0o600
    assert _mode(files.server_key) == 0o600
    assert _mode(files.ca_cert) == 0o644
    assert _mode(files.server_cert) == 0o644
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_valid_files_are_reused(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    before = {p: p.read_bytes() for p in (tmp_path.iterdir())}
    again = ensure_tls(tmp_path, now=NOW + dt.timedelta(days=300))
    assert again == files
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_server_certificate_is_renewed_30_days_before_expiry(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    ca_before = files.ca_cert.read_bytes()
    server_before = files.server_cert.read_bytes()
    key_before = files.server_key.read_bytes()

    later = NOW + dt.timedelta(days=340)
    ensure_tls(tmp_path, now=later)
    assert files.ca_cert.read_bytes() == ca_before
    assert files.server_cert.read_bytes() != server_before
    assert files.server_key.read_bytes() != key_before
    _verify(files, later, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))
    assert _mode(files.server_key) == 0o600


def test_an_expiring_ca_is_replaced_with_its_server_certificate(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    ca_before = files.ca_cert.read_bytes()
    later = NOW + dt.timedelta(days=3640)
    ensure_tls(tmp_path, now=later)
    assert files.ca_cert.read_bytes() != ca_before
    _verify(files, later, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))


@pytest.mark.parametrize("damage", ["server.key", "server.pem", "ca.key", "ca.pem"])
def test_damaged_or_mismatched_files_are_regenerated(tmp_path: Path, damage: str) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    other = ensure_tls(tmp_path / "other", now=NOW)
    if damage.endswith(".key"):
        # a valid key that does not belong to its certificate
        (tmp_path / damage).write_bytes((tmp_path / "other" / damage).read_bytes())
    else:
        (tmp_path / damage).write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    ensure_tls(tmp_path, now=NOW)
    _verify(files, NOW, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))
    assert files.server_cert.read_bytes() != other.server_cert.read_bytes()
    _cert(files.server_cert).verify_directly_issued_by(_cert(files.ca_cert))


def test_a_server_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path, now=NOW)
    other = ensure_tls(tmp_path / "other", now=NOW)
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((tmp_path / "other" / name).read_bytes())
    ensure_tls(tmp_path, now=NOW)
    assert files.server_cert.read_bytes() != other.server_cert.read_bytes()
    _verify(files, NOW, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))


def test_write_private_sets_the_mode_even_over_a_wider_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o666)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temp file left behind
