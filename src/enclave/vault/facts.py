"""What Vault holds for one enclave, as plain data for the compliance checks (read-only).

:func:`enclave_facts` reads, with an admin client (the embedded default's scoped admin token,
or any token allowed to read these paths): the enclave's ACL policies and their rules, its
AppRole roles' token and secret-id settings, its auth mounts' lease limits, the enabled audit
devices, the audit-signer transit key's type and key id (the fingerprint the enclave's audit
logs name their checkpoints' key by), and whether the control key exists (never its
value). :func:`token_live` says whether a token still works (a revoked initial root token
does not); :func:`embedded_secrets` lists the embedded server's own secrets so that a scanner
can look for them elsewhere without ever writing them out.

Nothing here writes to Vault.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.audit.signing import fingerprint
from enclave.errors import VaultForbiddenError, VaultNotFoundError
from enclave.vault.client import VaultConnection, anonymous, translate
from enclave.vault.names import AUDIT_SIGNER_KEY, CONTROL_KEY, CONTROLLER, EnclavePaths

if TYPE_CHECKING:
    from enclave.vault.embedded import EmbeddedVault

__all__ = ["embedded_root_token", "embedded_secrets", "enclave_facts", "parse_policy", "token_live"]

_PATH_BLOCK = re.compile(r'path\s+"(?P<path>[^"]*)"\s*\{(?P<body>[^{}]*)\}', re.DOTALL)
_CAPABILITIES = re.compile(r"capabilities\s*=\s*\[(?P<caps>[^\]]*)\]", re.DOTALL)
_ROLE_FIELDS = (
    "token_ttl",
    "token_max_ttl",
    "token_period",
    "token_explicit_max_ttl",
    "token_type",
    "token_no_default_policy",
    "token_policies",
    "secret_id_num_uses",
    "secret_id_ttl",
    "bind_secret_id",
)


def parse_policy(text: str) -> tuple[list[dict[str, Any]], bool]:
    """``([{"path", "capabilities"}], parsed)`` of an HCL (or JSON) ACL policy.

    ``parsed`` is False when the text holds something this reader does not understand (then
    the rules it did find are returned, and a check must not treat the policy as narrow).
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
            paths = data["path"]
            found = [
                {"path": str(path), "capabilities": [str(c) for c in body.get("capabilities", [])]}
                for path, body in paths.items()
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return [], False
        return found, True
    rules: list[dict[str, Any]] = []
    for block in _PATH_BLOCK.finditer(text):
        caps = _CAPABILITIES.search(block.group("body"))
        names = re.findall(r'"([^"]*)"', caps.group("caps")) if caps else []
        rules.append({"path": block.group("path"), "capabilities": names})
    leftover = _PATH_BLOCK.sub("", text)
    leftover = re.sub(r"#[^\n]*", "", leftover)
    return rules, not leftover.strip()


def _data(response: Any) -> dict[str, Any]:
    if not isinstance(response, dict):
        return {}
    inner = response.get("data")
    return inner if isinstance(inner, dict) else response


def enclave_facts(client: Any, enclave: str) -> dict[str, Any]:
    """The Vault side of enclave ``enclave``, as JSON-able data (see the module docstring)."""
    paths = EnclavePaths(enclave)
    with translate("read the seal status"):
        seal = client.sys.read_seal_status()
    with translate("look up the token in use"):
        own = _data(client.auth.token.lookup_self())
    with translate("list auth mounts"):
        auths = _data(client.sys.list_auth_methods())
    mounts: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    for mount in (paths.workload_auth, paths.control_auth):
        info = auths.get(f"{mount}/")
        if not isinstance(info, dict):
            continue
        config = info.get("config") or {}
        mounts.append(
            {
                "path": mount,
                "type": str(info.get("type", "")),
                "default_lease_ttl": int(config.get("default_lease_ttl") or 0),
                "max_lease_ttl": int(config.get("max_lease_ttl") or 0),
            }
        )
        roles += _roles(client, mount)
    # The policies that matter are the ones the enclave's roles hand out, whatever their name
    # (and "default" unless a role opts out of it).
    attached: dict[str, set[str]] = {}
    for role in roles:
        names = list(role.get("token_policies") or [])
        if not role.get("token_no_default_policy"):
            names.append("default")
        for name in names:
            attached.setdefault(str(name), set()).add(str(role["name"]))
    policies: list[dict[str, Any]] = []
    for name, users in sorted(attached.items()):
        readable, exists = True, True
        try:
            with translate(f"read policy {name}"):
                text = str(_data(client.sys.read_acl_policy(name)).get("policy") or "")
        except VaultNotFoundError:
            text, exists = "", False
        except VaultForbiddenError:  # outside what this token may read: cannot be judged narrow
            text, readable = "", False
        rules, parsed = parse_policy(text)
        components = sorted(users)
        policies.append(
            {
                "name": name,
                "components": components,
                "workload": any(c != CONTROLLER for c in components),
                "exists": exists,
                "parsed": parsed and readable,
                "rules": rules,
            }
        )
    with translate("list audit devices"):
        devices = _data(client.sys.list_enabled_audit_devices())
    audit_devices = [
        {"path": str(path).rstrip("/"), "type": str(info.get("type", ""))}
        for path, info in sorted(devices.items())
        if isinstance(info, dict)
    ]
    return {
        "sealed": bool(seal.get("sealed")),
        "version": str(seal.get("version") or ""),
        "token_policies": sorted(str(p) for p in own.get("policies") or []),
        "token_is_root": "root" in (own.get("policies") or []),
        "paths": {
            "prefix": paths.prefix,
            "kv": paths.kv,
            "transit": paths.transit,
            "workload_auth": paths.workload_auth,
            "control_auth": paths.control_auth,
        },
        "policies": policies,
        "auth_mounts": mounts,
        "roles": roles,
        "audit_devices": audit_devices,
        "audit_signer": _signer(client, paths),
        "control_key_present": _exists(client, paths.kv, CONTROL_KEY),
    }


def _roles(client: Any, mount: str) -> list[dict[str, Any]]:
    try:
        with translate(f"list the roles of auth/{mount}"):
            listed = _data(client.auth.approle.list_roles(mount_point=mount)).get("keys") or []
    except VaultNotFoundError:
        return []
    found = []
    for role in sorted(str(r) for r in listed):
        with translate(f"read role auth/{mount}/role/{role}"):
            data = _data(client.auth.approle.read_role(role_name=role, mount_point=mount))
        entry: dict[str, Any] = {"mount": mount, "name": role}
        for field in _ROLE_FIELDS:
            value = data.get(field)
            entry[field] = list(value) if isinstance(value, list) else value
        found.append(entry)
    return found


def _signer(client: Any, paths: EnclavePaths) -> dict[str, Any]:
    try:
        with translate(f"read transit key {paths.transit}/{AUDIT_SIGNER_KEY}"):
            data = _data(
                client.secrets.transit.read_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)
            )
    except VaultNotFoundError:
        return {"present": False, "type": "", "exportable": False, "versions": 0, "key_id": ""}
    return {
        "present": True,
        "type": str(data.get("type", "")),
        "exportable": bool(data.get("exportable")),
        "versions": len(data.get("keys") or {}),
        "key_id": _signer_key_id(data),
    }


def _signer_key_id(data: dict[str, Any]) -> str:
    """The fingerprint of the transit key's latest ed25519 public key ("" if it has none)."""
    try:
        version = str(data["latest_version"])
        raw = base64.b64decode(data["keys"][version]["public_key"], validate=True)
        return fingerprint(Ed25519PublicKey.from_public_bytes(raw))
    except (KeyError, TypeError, ValueError, binascii.Error):
        return ""


def _exists(client: Any, mount: str, path: str) -> bool:
    try:
        with translate(f"read {mount}/metadata/{path}"):
            client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
    except VaultNotFoundError:
        return False
    return True


def token_live(connection: VaultConnection, token: str) -> bool:
    """Whether ``token`` still authenticates (a ``lookup-self`` with it succeeds)."""
    client = anonymous(connection)
    client.token = token
    try:
        with translate("look up a token"):
            client.auth.token.lookup_self()
    except VaultForbiddenError:
        return False
    finally:
        client.adapter.close()
    return True


def _init_data(vault: EmbeddedVault) -> dict[str, Any]:
    try:
        data = json.loads(vault.init_file.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def embedded_root_token(vault: EmbeddedVault) -> str | None:
    """The embedded server's initial root token as recorded at initialisation, if any."""
    token = _init_data(vault).get("root_token")
    return token if isinstance(token, str) and token else None


def embedded_secrets(vault: EmbeddedVault) -> frozenset[str]:
    """The embedded server's own secrets (unseal keys, initial root token, admin token)."""
    data = _init_data(vault)
    found = {str(k) for k in data.get("unseal_keys_b64") or [] if k}
    if data.get("root_token"):
        found.add(str(data["root_token"]))
    try:
        admin = vault.admin_token_file.read_text().strip()
    except OSError:
        admin = ""
    if admin:
        found.add(admin)
    return frozenset(s for s in found if len(s) >= 16)
