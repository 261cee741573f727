"""An audit checkpoint signer backed by a Vault transit key (ed25519).

:class:`TransitSigner` implements :class:`enclave.audit.signing.Signer`: the private key never
leaves Vault; the public key is read from the transit key (Vault returns ed25519 public keys
in the clear) so the log can be verified offline, and the key id is the same fingerprint
:class:`~enclave.audit.signing.Ed25519Signer` would compute for that key.

The signer pins the key version it found when it was created: rotating the transit key does
not change the key of a log that is open (a new signer picks up the new version).

:func:`audit_signer` is how a component (gateway, shutdown controller) gets its enclave's
signer: on an HTTP session of its own, because the audit log signs from its own thread while
the component goes on using its client.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.audit.signing import fingerprint
from enclave.errors import VaultError, VaultNotFoundError
from enclave.vault.client import anonymous, translate
from enclave.vault.names import AUDIT_SIGNER_KEY

if TYPE_CHECKING:
    from collections.abc import Iterator

    from enclave.vault.client import VaultConnection
    from enclave.vault.names import EnclavePaths


class TransitSigner:
    """Signs with ``<mount>/sign/<key>``; reads the key once, when created."""

    def __init__(self, client: Any, mount: str, key: str) -> None:
        self._client = client
        self._mount = mount
        self._key = key
        with translate(f"read transit key {mount}/{key}"):
            data = client.secrets.transit.read_key(name=key, mount_point=mount)["data"]
        if data.get("type") != "ed25519":
            raise VaultError(f"vault: transit key {mount}/{key} is not an ed25519 key")
        self._version = int(data["latest_version"])
        try:
            raw = base64.b64decode(data["keys"][str(self._version)]["public_key"], validate=True)
            self._public = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise VaultError(
                f"vault: transit key {mount}/{key}: no usable public key in its description"
            ) from None
        self._id = fingerprint(self._public)

    @property
    def key_id(self) -> str:
        return self._id

    @property
    def version(self) -> int:
        """The transit key version this signer signs with."""
        return self._version

    def sign(self, message: bytes) -> bytes:
        """Raw ed25519 signature of ``message``, checked against the public key before use."""
        with translate(f"sign with transit key {self._mount}/{self._key}"):
            response = self._client.secrets.transit.sign_data(
                name=self._key,
                hash_input=base64.b64encode(message).decode("ascii"),
                key_version=self._version,
                mount_point=self._mount,
            )
        text = str((response.get("data") or {}).get("signature", ""))
        prefix = f"vault:v{self._version}:"
        try:
            signature = base64.b64decode(text.removeprefix(prefix), validate=True)
            self._public.verify(signature, message)
            valid = text.startswith(prefix)
        except (ValueError, binascii.Error, InvalidSignature):
            valid = False
        if not valid:
            raise VaultError(
                f"vault: transit key {self._mount}/{self._key} returned an invalid signature"
            )
        return signature

    def public_key_pem(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"TransitSigner({self._mount}/{self._key} v{self._version}, key_id={self._id})"


@contextlib.contextmanager
def audit_signer(
    connection: VaultConnection, token: str, paths: EnclavePaths
) -> Iterator[TransitSigner]:
    """The enclave's audit checkpoint signer (its transit key), on a client of its own.

    ``token`` is the component's own Vault token (its policy may sign with the key and read
    it). The client is closed when the block exits.
    """
    client = anonymous(connection)
    client.token = token
    try:
        try:
            signer = TransitSigner(client, paths.transit, AUDIT_SIGNER_KEY)
        except VaultNotFoundError:
            raise VaultNotFoundError(
                f"vault: enclave {paths.enclave} has no audit signer key "
                f"{paths.transit}/{AUDIT_SIGNER_KEY} (run `enclave vault provision`)"
            ) from None
        yield signer
    finally:
        client.adapter.close()
