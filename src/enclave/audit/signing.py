"""Checkpoint signing: a small interface, an Ed25519 implementation, and public-key helpers.

The signing key is held by the component that writes the log, or by Vault
(:class:`enclave.vault.transit.TransitSigner` implements :class:`Signer`); verification only
ever needs the public key. A log whose signer changed (a re-provisioned enclave's new transit
key) lists every key it was signed with, oldest first, in one PEM file
(:func:`load_public_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path


class Signer(Protocol):
    """Signs checkpoint messages."""

    @property
    def key_id(self) -> str:
        """A short, stable fingerprint of the public key."""
        ...

    def sign(self, message: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """sha256 of the raw public key, first 16 hex characters."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Ed25519Signer:
    """An Ed25519 key held in a PEM file readable by its owner only."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = key.public_key()
        self._id = fingerprint(self._public)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> Ed25519Signer:
        """Load the key at ``path``; with ``create``, make one (0600) when there is none."""
        if create and not path.exists():
            signer = cls.generate()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = signer._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            return signer
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(
                f"{path}: cannot load the signing key ({type(exc).__name__})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(f"{path}: not an Ed25519 private key")
        return cls(key)

    @property
    def key_id(self) -> str:
        return self._id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_key_pem(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_public_key(pem: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InputError(f"{source}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{source}: not an Ed25519 public key")
    return key


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(pem: bytes, source: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in ``pem`` (one or more PEM blocks), in file order."""
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        raise InputError(f"{source}: not a PEM public key")
    return [load_public_key(block + b"\n", source) for block in blocks]


def verify_signature(key: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_signature(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")
