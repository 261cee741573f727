"""TLS material for the embedded OpenBao: a private CA and a loopback server certificate.

:func:`ensure_tls` writes, under one directory::

    ca.pem       0644  the CA certificate clients trust (EC P-256, about ten years)
    ca.key       0600  its private key
    server.pem   0644  the listener's certificate for 127.0.0.1 / localhost (about a year)
    server.key   0600  its private key

Existing files are reused while they are valid: a CA that no longer loads, whose key does not
match, or that expires within :data:`RENEW_BEFORE` is replaced (and with it the server
certificate); a server certificate that is not signed by the CA, lacks the loopback names, or
expires within :data:`RENEW_BEFORE` is replaced on its own. Files are written atomically and
are created with their final mode, so a key is never readable by anyone else, not even briefly.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a little clock skew


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the CA and the server certificate live."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def under(cls, directory: Path) -> TlsFiles:
        return cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
        )


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, the file having ``mode`` from its creation on.

    The bytes go to a fresh temp file in the same directory (``O_EXCL``, created with ``mode``
    and ``fchmod``-ed to it, whatever the umask), are fsynced, and replace ``path`` by rename.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)


def ensure_tls(directory: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """The CA and server certificate under ``directory``, created or renewed as needed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = TlsFiles.under(directory)
    moment = now or dt.datetime.now(dt.UTC)
    ca = _load_ca(files, moment)
    if ca is None:
        log.info("vault tls: creating a CA in %s", directory)
        ca = _new_ca(files, moment)
        files.server_cert.unlink(missing_ok=True)
    ca_cert, ca_key = ca
    if not _server_valid(files, ca_cert, moment):
        log.info("vault tls: issuing a server certificate for %s", LOOPBACK)
        _new_server(files, ca_cert, ca_key, moment)
    return files


def _load_ca(
    files: TlsFiles, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if key.public_key() != cert.public_key():
        log.warning("vault tls: %s does not match %s; replacing both", files.ca_key, files.ca_cert)
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        log.info("vault tls: the CA expires %s; replacing it", cert.not_valid_after_utc)
        return None
    return cert, key


def _server_valid(files: TlsFiles, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        key.public_key() == cert.public_key()
        and LOOPBACK in names.get_values_for_type(x509.IPAddress)
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - RENEW_BEFORE > now
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_ca(
    files: TlsFiles, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave"),
            x509.NameAttribute(NameOID.COMMON_NAME, "enclave embedded Vault CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(files.ca_key, _pem_key(key), mode=0o600)
    write_private(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key


def _new_server(
    files: TlsFiles,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.server_key, _pem_key(key), mode=0o600)
    write_private(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
