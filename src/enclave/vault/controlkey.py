"""The control key: what the shutdown controller signs gateway commands with.

It lives at ``<kv>/data/control/key`` (field ``key``, base64 of :data:`CONTROL_KEY_BYTES`
random bytes). :func:`enclave.vault.provision.provision` writes it once and never replaces it;
only the gateway's and the controller's policies may read it; ``teardown`` removes it with the
KV mount. Each reads it with its own identity after logging in (:func:`read_control_key`).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from enclave.errors import VaultError, VaultNotFoundError
from enclave.vault.client import translate
from enclave.vault.names import CONTROL_KEY

if TYPE_CHECKING:
    from enclave.vault.names import EnclavePaths

CONTROL_KEY_BYTES = 32
CONTROL_KEY_FIELD = "key"


def read_control_key(client: Any, paths: EnclavePaths) -> bytes:
    """The enclave's control key, read with ``client``.

    :class:`~enclave.errors.VaultNotFoundError` when it does not exist (an enclave provisioned
    by an earlier version: provisioning it again creates the key).
    """
    doing = f"read {paths.kv}/{CONTROL_KEY}"
    try:
        with translate(doing):
            response = client.secrets.kv.v2.read_secret_version(
                path=CONTROL_KEY, mount_point=paths.kv, raise_on_deleted_version=True
            )
    except VaultNotFoundError:
        raise VaultNotFoundError(
            f"vault: {doing}: not found (provision enclave {paths.enclave!r} again to create it)"
        ) from None
    data = ((response or {}).get("data") or {}).get("data") or {}
    value = data.get(CONTROL_KEY_FIELD)
    try:
        key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < CONTROL_KEY_BYTES:
        raise VaultError(
            f"vault: {paths.kv}/{CONTROL_KEY} has no usable '{CONTROL_KEY_FIELD}' "
            f"(base64, >= {CONTROL_KEY_BYTES} bytes)"
        )
    return key
