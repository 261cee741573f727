"""One enclave's Vault objects: provisioning from the spec, bootstrap material, teardown.

:func:`provision` creates, for enclave ``demo`` (names from
:class:`~enclave.vault.names.EnclavePaths`)::

    enclave-demo-kv/                 KV v2; api-token-key and control/key, each written once
                                     (32 random bytes, never replaced by a re-provision)
    enclave-demo-transit/            transit; ed25519 key audit-signer (private part never
                                     exportable; its public key is readable for verification)
    auth/enclave-demo-approle/       AppRole roles gateway, model-<model>
    auth/enclave-demo-control/       AppRole role controller
    policies enclave-demo-<component>

Each role carries exactly its component's policy (no ``default`` policy), issues *periodic*
service tokens and accepts only single-use secret-ids that expire after :data:`SECRET_ID_TTL`.
A periodic token lives :data:`TOKEN_PERIOD` from its login or its last renewal, and as long as
its holder keeps renewing it (:class:`~enclave.vault.renew.TokenRenewer`): a long-running
component needs no second secret-id, and a dead one's token is gone within one period. The
AppRole mounts' ``max_lease_ttl`` (:data:`TOKEN_MAX_TTL`) caps every period, so no component
token ever holds more than an hour of life. Provisioning is idempotent (a second run changes
nothing) and all or nothing: whatever a failed run created is removed again (and whatever it
changed restored) before its error is re-raised. When Vault is sealed or gone mid-way it
refuses that rollback too; given a :class:`~enclave.vault.pending.PendingRollbacks`, the run
keeps its journal on disk from its first step, and the next admin connection to that Vault
finishes the rollback once Vault is back.

:func:`bootstrap` issues what a component needs to log in: its role-id and a *new* single-use
secret-id that only ever travels response-wrapped (a wrapping token valid at most
:data:`MAX_WRAP_TTL` seconds). :func:`write_bootstrap` stores it in an owner-only file, or a
backend writes its JSON to the component's stdin (:func:`parse_bootstrap` reads it back); never
an environment variable, argument or image. At start-up the component calls :func:`redeem`, and
then keeps its periodic token alive with :class:`~enclave.vault.renew.TokenRenewer`.
:func:`teardown` removes everything again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from enclave.errors import (
    ConflictError,
    InputError,
    VaultError,
    VaultForbiddenError,
    VaultNotFoundError,
    VaultSealedError,
)
from enclave.vault.client import VaultConnection, anonymous, login_approle, translate
from enclave.vault.controlkey import CONTROL_KEY_BYTES, CONTROL_KEY_FIELD
from enclave.vault.names import (
    API_TOKEN_KEY,
    AUDIT_SIGNER_KEY,
    CONTROL_KEY,
    CONTROLLER,
    GATEWAY,
    EnclavePaths,
    model_component,
)
from enclave.vault.pending import PendingRollbacks, RollbackJournal, Undo
from enclave.vault.policies import component_rules, owned_policy, render

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from enclave.spec import LoadedSpec

log = logging.getLogger(__name__)

TOKEN_PERIOD = 15 * 60
"""A component's token lives this long after its login or last renewal (seconds)."""
TOKEN_TTL = TOKEN_PERIOD
"""A component token's first TTL (periodic tokens: the period)."""
TOKEN_MAX_TTL = 60 * 60
"""The AppRole mounts' ``max_lease_ttl``: the longest TTL (and period) any of their tokens can
hold at once (seconds). A periodic token is renewed again and again, each renewal to at most
this."""
SECRET_ID_TTL = 10 * 60
"""How long an unused secret-id stays valid (seconds); each one logs in once."""
MAX_WRAP_TTL = 60
"""Longest a wrapping token delivering a secret-id may live (seconds)."""
API_TOKEN_KEY_BYTES = 32
API_TOKEN_KEY_FIELD = "key"  # noqa: S105 - a field name, not a secret
"""Field of ``<kv>/data/api-token-key`` holding the base64 HMAC key for the API-token store."""
BOOTSTRAP_FORMAT = 1
MAX_BOOTSTRAP_BYTES = 64 * 1024
"""Bootstrap material is a small JSON document; more is not material."""
KV_READY_TIMEOUT = 10.0
"""How long to wait for a new KV v2 mount to finish its set-up (seconds)."""
_KV_UPGRADING = "Upgrading from non-versioned to versioned data"


def components(loaded: LoadedSpec) -> tuple[str, ...]:
    """The enclave's Vault identities: the gateway, one per model server, the controller."""
    models = tuple(model_component(m.name) for m in loaded.spec.models)
    return (GATEWAY, *models, CONTROLLER)


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What :func:`provision` found and did. ``created``/``updated`` are empty on a re-run."""

    enclave: str
    paths: EnclavePaths
    components: tuple[str, ...]
    created: tuple[str, ...]
    updated: tuple[str, ...]
    seconds: float

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


@dataclass(slots=True)
class TeardownReport:
    """What :func:`teardown` removed; all empty when there was nothing left to remove."""

    enclave: str
    policies: list[str] = field(default_factory=list)
    auth_mounts: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return len(self.policies) + len(self.auth_mounts) + len(self.mounts)


class _Journal:
    """Every object this run created or changed, with how to undo it (newest last).

    The undo steps go to a :class:`~enclave.vault.pending.RollbackJournal`, on disk when the
    run has one, so that a rollback Vault refused can be finished later.
    """

    def __init__(self, steps: RollbackJournal) -> None:
        self.created: list[str] = []
        self.updated: list[str] = []
        self.steps = steps

    def create(self, what: str, op: str, **args: Any) -> None:
        """Record ``what`` *before* creating it: a create that fails after Vault applied it
        (a timeout) is then still undone; undoing something absent is harmless."""
        self.steps.record(Undo(op, what, args))
        self.created.append(what)

    def update(self, what: str, op: str, **args: Any) -> None:
        self.steps.record(Undo(op, what, args))
        self.updated.append(what)

    def rollback(self, client: Any) -> list[str]:
        """Undo everything, newest first, each step on its own; returns what could not be."""
        return [step.doing for step in self.steps.rollback(client)]


@contextlib.contextmanager
def _journal(
    client: Any, enclave: str, pending: PendingRollbacks | None
) -> Iterator[RollbackJournal]:
    if pending is None:
        yield RollbackJournal(enclave)
        return
    with pending.journal(client, enclave) as steps:  # finishes an earlier run's rollback
        yield steps


def provision(
    client: Any, loaded: LoadedSpec, *, pending: PendingRollbacks | None = None
) -> Provisioned:
    """Create (or confirm) every Vault object of ``loaded``'s enclave; all or nothing.

    Needs a token with :data:`~enclave.vault.policies.ADMIN_POLICY` (or root). Raises
    :class:`~enclave.errors.ConflictError` when an object of that name exists but is not this
    enclave's (another type of mount, another enclave's policy, an exportable key), and a
    :class:`~enclave.errors.VaultError` when Vault fails; either way what this run created has
    been removed again. When Vault is sealed or gone mid-way that cannot be done: the error
    names what is left, and with ``pending`` (where the journal is kept) the next admin
    connection to this Vault removes it; without, :func:`teardown` does.
    """
    with translate("read seal status"):
        sealed = bool(client.sys.read_seal_status().get("sealed"))
    if sealed:
        raise VaultSealedError(f"vault: provision enclave {loaded.name}: Vault is sealed")
    with _journal(client, loaded.name, pending) as steps:
        return _provision(client, loaded, _Journal(steps), pending)


def _provision(
    client: Any, loaded: LoadedSpec, journal: _Journal, pending: PendingRollbacks | None
) -> Provisioned:
    started = time.perf_counter()
    paths = EnclavePaths(loaded.name)
    parts = components(loaded)
    seal = loaded.spec.shutdown.seal_vault
    try:
        mounts = _list(client.sys.list_mounted_secrets_engines, "list secrets engines")
        _ensure_mount(client, journal, mounts, paths.kv, "kv", options={"version": "2"})
        _ensure_mount(client, journal, mounts, paths.transit, "transit")
        _ensure_signer_key(client, journal, paths)
        _ensure_random_key(
            client,
            journal,
            paths,
            path=API_TOKEN_KEY,
            name=API_TOKEN_KEY_FIELD,
            size=API_TOKEN_KEY_BYTES,
        )
        _ensure_random_key(
            client,
            journal,
            paths,
            path=CONTROL_KEY,
            name=CONTROL_KEY_FIELD,
            size=CONTROL_KEY_BYTES,
        )
        auths = _list(client.sys.list_auth_methods, "list auth methods")
        _ensure_auth(client, journal, auths, paths.workload_auth)
        _ensure_auth(client, journal, auths, paths.control_auth)
        for component in parts:
            _ensure_policy(client, journal, paths, component, seal=seal)
            _ensure_role(client, journal, paths, component)
    except BaseException as exc:
        left = journal.rollback(client)
        if left:
            then = (
                "removed at the next admin connection to this Vault once it is back"
                if pending is not None
                else "run teardown once Vault is back"
            )
            log.error(  # noqa: TRY400 - the caller gets the error; no traceback here
                "vault: provision enclave %s failed and %d step(s) could not be undone (%s); %s",
                loaded.name,
                len(left),
                ", ".join(left),
                then,
            )
            if isinstance(exc, VaultError):  # one-line messages: say it where it is seen
                raise type(exc)(
                    f"{exc}; rollback incomplete: {len(left)} object(s) left "
                    f"({', '.join(left)}), {then}"
                ) from None
            exc.add_note(f"rollback incomplete: {', '.join(left)}; {then}")
        raise
    journal.steps.close()
    seconds = time.perf_counter() - started
    log.info(
        "vault: enclave %s provisioned (%d created, %d updated) in %.2f s",
        loaded.name,
        len(journal.created),
        len(journal.updated),
        seconds,
    )
    return Provisioned(
        enclave=loaded.name,
        paths=paths,
        components=parts,
        created=tuple(journal.created),
        updated=tuple(journal.updated),
        seconds=seconds,
    )


def _list(call: Callable[[], Any], doing: str) -> dict[str, Any]:
    with translate(doing):
        listed = call()
    return dict(listed.get("data") or listed)


def _read(call: Callable[[], Any], doing: str) -> Any | None:
    """``call()``'s ``data``, or None when the object does not exist."""
    try:
        with translate(doing):
            return call()["data"]
    except VaultNotFoundError:
        return None


def _read_when_ready(call: Callable[[], Any], doing: str) -> Any | None:
    """:func:`_read` on a KV v2 mount, which for a moment after it was enabled answers every
    request with 400 "Upgrading from non-versioned to versioned data" (Vault and OpenBao)."""
    deadline = time.monotonic() + KV_READY_TIMEOUT
    while True:
        try:
            return _read(call, doing)
        except VaultError as exc:
            if type(exc) is not VaultError or _KV_UPGRADING not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        log.debug("vault: %s: the KV mount is still being set up; waiting", doing)
        time.sleep(0.02)


def _ensure_mount(
    client: Any,
    journal: _Journal,
    mounts: dict[str, Any],
    path: str,
    kind: str,
    *,
    options: dict[str, str] | None = None,
) -> None:
    existing = mounts.get(f"{path}/")
    if existing is not None:
        have = dict(existing.get("options") or {})
        wrong = any(have.get(k) != v for k, v in (options or {}).items())
        if existing.get("type") != kind or wrong:
            raise ConflictError(f"vault: mount {path}/ exists but is not enclave's {kind} engine")
        return
    journal.create(f"mount {path}", "disable-mount", path=path)
    with translate(f"enable {kind} at {path}"):
        client.sys.enable_secrets_engine(
            kind, path=path, description=f"enclave: {path}", options=options
        )
    log.debug("vault: enabled %s engine at %s", kind, path)


def _ensure_signer_key(client: Any, journal: _Journal, paths: EnclavePaths) -> None:
    name, mount = AUDIT_SIGNER_KEY, paths.transit
    transit = client.secrets.transit
    key = _read(lambda: transit.read_key(name=name, mount_point=mount), f"read key {name}")
    if key is not None:
        if key.get("type") != "ed25519" or key.get("exportable"):
            raise ConflictError(
                f"vault: transit key {mount}/{name} exists but is not a non-exportable ed25519 key"
            )
        return

    journal.create(f"transit key {mount}/{name}", "delete-transit-key", mount=mount, name=name)
    with translate(f"create transit key {name}"):
        transit.create_key(name=name, key_type="ed25519", exportable=False, mount_point=mount)


def _ensure_random_key(
    client: Any, journal: _Journal, paths: EnclavePaths, *, path: str, name: str, size: int
) -> None:
    """``<kv>/<path>`` = ``{name: base64(size random bytes)}``, written once, never replaced.

    Replacing the API-token key would invalidate every issued API token; replacing the control
    key would cut running gateways off from their controller.
    """
    kv, mount = client.secrets.kv.v2, paths.kv
    meta = _read_when_ready(
        lambda: kv.read_secret_metadata(path=path, mount_point=mount), f"read {path} metadata"
    )
    if meta is not None:
        return
    journal.create(f"secret {mount}/{path}", "delete-secret", mount=mount, path=path)
    value = base64.b64encode(secrets.token_bytes(size)).decode("ascii")
    with translate(f"write {path}"):
        # cas=0: only if it does not exist yet, so a concurrent run cannot replace it either
        kv.create_or_update_secret(path=path, secret={name: value}, cas=0, mount_point=mount)


def _ensure_auth(client: Any, journal: _Journal, auths: dict[str, Any], path: str) -> None:
    existing = auths.get(f"{path}/")
    if existing is not None:
        if existing.get("type") != "approle":
            raise ConflictError(f"vault: auth mount {path}/ exists but is not an AppRole mount")
        return
    journal.create(f"auth mount {path}", "disable-auth", path=path)
    with translate(f"enable approle at auth/{path}"):
        client.sys.enable_auth_method(
            "approle",
            path=path,
            description=f"enclave: {path}",
            config={"default_lease_ttl": f"{TOKEN_TTL}s", "max_lease_ttl": f"{TOKEN_MAX_TTL}s"},
        )


def _ensure_policy(
    client: Any, journal: _Journal, paths: EnclavePaths, component: str, *, seal: bool
) -> None:
    name = paths.policy(component)
    text = render(component_rules(paths, component, seal=seal))
    policies = client.sys
    current = _read(lambda: policies.read_acl_policy(name), f"read policy {name}")
    have = None if current is None else str(current.get("policy", ""))
    if have == text:
        return
    if have is None:
        journal.create(f"policy {name}", "delete-policy", name=name)
    else:
        if not owned_policy(paths, have):
            raise ConflictError(f"vault: policy {name} exists and belongs to another enclave")
        journal.update(f"policy {name}", "restore-policy", name=name, policy=have)
    with translate(f"write policy {name}"):
        policies.create_or_update_acl_policy(name=name, policy=text)


def _role_settings(paths: EnclavePaths, component: str) -> dict[str, Any]:
    return {
        "bind_secret_id": True,
        "secret_id_num_uses": 1,
        "secret_id_ttl": SECRET_ID_TTL,
        "token_period": TOKEN_PERIOD,
        "token_ttl": TOKEN_TTL,
        "token_max_ttl": 0,  # ignored for periodic tokens; the mount's max_lease_ttl caps them
        "token_explicit_max_ttl": 0,  # a component renews for as long as it runs
        "token_policies": [paths.policy(component)],
        "token_no_default_policy": True,
        "token_type": "service",
    }


def _ensure_role(client: Any, journal: _Journal, paths: EnclavePaths, component: str) -> None:
    approle, mount = client.auth.approle, paths.auth_mount(component)
    wanted = _role_settings(paths, component)
    current = _read(
        lambda: approle.read_role(role_name=component, mount_point=mount), f"read role {component}"
    )
    if current is not None:
        previous = {k: current.get(k) for k in wanted}
        if previous == wanted:
            return
        journal.update(
            f"role {mount}/{component}",
            "restore-role",
            mount=mount,
            role=component,
            settings=previous,
        )
    else:
        journal.create(f"role {mount}/{component}", "delete-role", mount=mount, role=component)
    with translate(f"write role {component}"):
        approle.create_or_update_approle(component, mount_point=mount, **wanted)


def teardown(client: Any, enclave: str) -> TeardownReport:
    """Remove every Vault object of ``enclave``; idempotent (a second run removes nothing).

    Policies go first (found by name and checked to be this enclave's), then the AppRole
    mounts (disabling one revokes every token it issued), then the KV and transit mounts.
    """
    paths = EnclavePaths(enclave)
    report = TeardownReport(enclave)
    with translate("list policies"):
        names = list(client.sys.list_acl_policies()["data"]["keys"])
    for name in sorted(n for n in names if n.startswith(f"{paths.prefix}-")):
        current = _read(partial(client.sys.read_acl_policy, name), f"read policy {name}")
        if current is None or not owned_policy(paths, str(current.get("policy", ""))):
            continue
        with translate(f"delete policy {name}"):
            client.sys.delete_acl_policy(name)
        report.policies.append(name)
    auths = _list(client.sys.list_auth_methods, "list auth methods")
    for path in (paths.workload_auth, paths.control_auth):
        if f"{path}/" in auths:
            with translate(f"disable auth/{path}"):
                client.sys.disable_auth_method(path)
            report.auth_mounts.append(path)
    mounts = _list(client.sys.list_mounted_secrets_engines, "list secrets engines")
    for path in (paths.kv, paths.transit):
        if f"{path}/" in mounts:
            with translate(f"disable {path}"):
                client.sys.disable_secrets_engine(path)
            report.mounts.append(path)
    log.info("vault: enclave %s torn down (%d objects removed)", enclave, report.removed)
    return report


# -- bootstrap material ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootstrapMaterial:
    """What one component needs to log in once. Its repr never shows the role-id or token."""

    enclave: str
    component: str
    address: str
    auth_mount: str
    role_id: str = field(repr=False)
    wrapping_token: str = field(repr=False)
    wrap_ttl: int
    created: str
    """When the wrapping token was issued (ISO 8601, UTC, as Vault reported it)."""

    @property
    def creation_path(self) -> str:
        """The path a genuine wrapping token for this component was created at."""
        return f"auth/{self.auth_mount}/role/{self.component}/secret-id"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "format": BOOTSTRAP_FORMAT,
            "enclave": self.enclave,
            "component": self.component,
            "address": self.address,
            "auth_mount": self.auth_mount,
            "role_id": self.role_id,
            "wrapping_token": self.wrapping_token,
            "wrap_ttl": self.wrap_ttl,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> BootstrapMaterial:
        if data.get("format") != BOOTSTRAP_FORMAT:
            raise InputError(f"{source}: not enclave bootstrap material (format 1)")
        try:
            return cls(
                enclave=_text(data, "enclave"),
                component=_text(data, "component"),
                address=_text(data, "address"),
                auth_mount=_text(data, "auth_mount"),
                role_id=_text(data, "role_id"),
                wrapping_token=_text(data, "wrapping_token"),
                wrap_ttl=int(data["wrap_ttl"]),
                created=_text(data, "created"),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: incomplete bootstrap material") from None


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(key)
    return value


def bootstrap(
    client: Any,
    loaded: LoadedSpec,
    component: str,
    connection: VaultConnection,
    *,
    wrap_ttl: int = MAX_WRAP_TTL,
    address: str | None = None,
) -> BootstrapMaterial:
    """A new single-use secret-id for ``component``, response-wrapped, with its role-id.

    The material names where the component finds Vault *as the component sees it*: ``address``
    (e.g. ``unix:///run/enclave/vault/bao.sock`` inside a container that has the embedded
    Vault's socket directory mounted), or by default ``connection.address``. ``wrap_ttl`` (1 to
    :data:`MAX_WRAP_TTL` seconds) is how long the material can be redeemed.
    """
    if address is not None:
        VaultConnection(address)  # a malformed address is refused here, not in the component
    if component not in components(loaded):
        known = ", ".join(components(loaded))
        raise InputError(f"enclave {loaded.name} has no component {component!r} (known: {known})")
    if not 1 <= wrap_ttl <= MAX_WRAP_TTL:
        raise InputError(f"wrap TTL must be 1 to {MAX_WRAP_TTL} s, not {wrap_ttl}")
    paths = EnclavePaths(loaded.name)
    mount, approle = paths.auth_mount(component), client.auth.approle
    with translate(f"read the role-id of {component}"):
        role = approle.read_role_id(role_name=component, mount_point=mount)
    role_id = str(role["data"]["role_id"])
    with translate(f"issue a wrapped secret-id for {component}"):
        response = approle.generate_secret_id(
            role_name=component, mount_point=mount, wrap_ttl=f"{wrap_ttl}s"
        )
    wrap = response.get("wrap_info") if isinstance(response, dict) else None
    if not wrap or not wrap.get("token"):
        _destroy_unwrapped(approle, component, mount, response)
        raise VaultError(f"vault: the secret-id for {component} came back unwrapped; discarded")
    log.info("vault: issued bootstrap material for %s/%s", loaded.name, component)
    return BootstrapMaterial(
        enclave=loaded.name,
        component=component,
        address=connection.address if address is None else address,
        auth_mount=mount,
        role_id=role_id,
        wrapping_token=str(wrap["token"]),
        wrap_ttl=int(wrap.get("ttl") or wrap_ttl),
        created=str(wrap.get("creation_time") or _utc_now()),
    )


def _destroy_unwrapped(approle: Any, component: str, mount: str, response: Any) -> None:
    data = response.get("data") if isinstance(response, dict) else None
    accessor = (data or {}).get("secret_id_accessor")
    if accessor:
        with translate(f"destroy an unwrapped secret-id of {component}"):
            approle.destroy_secret_id_accessor(
                role_name=component, secret_id_accessor=accessor, mount_point=mount
            )


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_bootstrap(material: BootstrapMaterial, path: Path) -> Path:
    """Write ``material`` as JSON to ``path``, owner-only (0600 from creation), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = json.dumps(material.as_dict(), indent=2, sort_keys=True).encode() + b"\n"
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_bootstrap(path: Path) -> BootstrapMaterial:
    """Load material written by :func:`write_bootstrap`."""
    try:
        with path.open("rb") as handle:  # bounded: a device or a pipe may never end
            body = handle.read(MAX_BOOTSTRAP_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read bootstrap material ({exc.strerror})") from None
    if len(body) > MAX_BOOTSTRAP_BYTES:
        raise InputError(f"{path}: more than 64 KiB; not bootstrap material")
    return parse_bootstrap(body, str(path))


def parse_bootstrap(body: bytes, source: str) -> BootstrapMaterial:
    """Material from its JSON text (a file's, or a component's stdin); ``source`` names it in
    errors, which never repeat the text."""
    try:
        data = json.loads(body)
    except ValueError:
        raise InputError(f"{source}: bootstrap material is not JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: not enclave bootstrap material")
    return BootstrapMaterial.from_dict(data, source)


def redeem(connection: VaultConnection, material: BootstrapMaterial | Path) -> Any:
    """What a component does at start-up: unwrap its secret-id, log in; the logged-in client.

    The wrapping token is checked first to have been created for this component's role (so a
    substituted token is refused). A token that was already used or has expired raises
    :class:`~enclave.errors.VaultForbiddenError`: if this component did not use it, someone
    else did, and the material must be treated as intercepted.
    """
    if not isinstance(material, BootstrapMaterial):
        material = read_bootstrap(material)
    who = f"{material.enclave}/{material.component}"
    wrapped = anonymous(connection)
    try:
        info = _wrapping_call(
            lambda: wrapped.adapter.post(
                "/v1/sys/wrapping/lookup", json={"token": material.wrapping_token}
            ),
            who,
        )
        created_at = str((info.get("data") or {}).get("creation_path", ""))
        if created_at != material.creation_path:
            log.warning("vault: bootstrap of %s: wrapping token from an unexpected path", who)
            raise VaultForbiddenError(
                f"vault: bootstrap of {who}: the wrapping token was not issued for this "
                "component; refusing it"
            )
        wrapped.token = material.wrapping_token
        unwrapped = _wrapping_call(wrapped.sys.unwrap, who)
        secret_id = str(unwrapped["data"]["secret_id"])
    finally:
        wrapped.token = None
        wrapped.adapter.close()
    client = login_approle(connection, material.role_id, secret_id, material.auth_mount)
    log.info("vault: %s logged in", who)
    return client


def _wrapping_call(call: Callable[[], Any], who: str) -> Any:
    try:
        with translate(f"bootstrap of {who}"):
            return call()
    except VaultError as exc:
        if type(exc) is not VaultError:  # sealed, unreachable, ...: say so as it is
            raise
        log.warning("vault: bootstrap of %s: wrapping token already used or expired", who)
        raise VaultForbiddenError(
            f"vault: bootstrap of {who}: the wrapping token was already used or has expired "
            "(if this component did not use it, treat the material as intercepted)"
        ) from None
