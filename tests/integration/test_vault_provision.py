"""Per-enclave Vault provisioning against a real OpenBao: objects, least privilege, bootstrap,
rollback, teardown, and no plaintext secret anywhere it could leak.

Provisioning runs with a token carrying only the orchestrator policy (not root), so the tests
also prove that policy suffices. Each enclave gets a unique name and is torn down (by the root
token) after its test. Sealing needs a server of its own: the session's OpenBao is shared, so
the sealed/unreachable tests start a throwaway one (``spare_openbao``) whose unseal key they
keep.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import hvac
import pytest

import enclave.vault.provision as provision_module
from enclave.audit import AuditEvent, AuditLog, AuditSettings, verify_log
from enclave.audit.signing import load_public_key
from enclave.cli.main import main
from enclave.errors import (
    ConflictError,
    InputError,
    VaultError,
    VaultForbiddenError,
    VaultSealedError,
    VaultUnavailableError,
)
from enclave.spec import LoadedSpec, load_spec
from enclave.vault.client import VaultConnection, anonymous, connect, login_approle, translate
from enclave.vault.controlkey import CONTROL_KEY_FIELD, read_control_key
from enclave.vault.facts import parse_policy
from enclave.vault.names import (
    API_TOKEN_KEY,
    API_TOKENS,
    AUDIT_SIGNER_KEY,
    CONTROL_KEY,
    CONTROLLER,
    GATEWAY,
    EnclavePaths,
    model_component,
)
from enclave.vault.pending import PendingRollbacks, Undo
from enclave.vault.policies import Rule, admin_rules, component_rules, render
from enclave.vault.provision import (
    API_TOKEN_KEY_FIELD,
    MAX_WRAP_TTL,
    TOKEN_PERIOD,
    BootstrapMaterial,
    bootstrap,
    components,
    provision,
    read_bootstrap,
    redeem,
    teardown,
    write_bootstrap,
)
from enclave.vault.tokens import issue, read_key, read_record, verify_token
from enclave.vault.transit import TransitSigner, audit_signer
from support import service_missing
from support.openbao import (
    OpenBaoStartError,
    bao_binary,
    free_port,
    health_status,
    hvac_client,
    log_tail,
    orchestrator_token,
    render_config,
)
from support.openbao import _stop as stop_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from support.openbao import OpenBaoServer
    from support.workspace import Workspace

pytestmark = pytest.mark.vault

MODEL = model_component("assistant")
POLICY_PATH = re.compile(r'^path "([^"]+)" \{', re.MULTILINE)


# -- helpers -----------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def spec_for(workspace: Workspace, name: str, *replacements: tuple[str, str]) -> LoadedSpec:
    path = workspace.example(("name: demo", f"name: {name}"), *replacements, name=f"{name}.yaml")
    return load_spec(path)


def leftovers(root: Any, enclave: str) -> dict[str, list[str]]:
    """Every Vault object of ``enclave`` that still exists (empty: nothing left).

    Policies count when their text grants anything on the enclave's mounts, whatever their
    name (a name prefix would also match enclave ``<name>-x``'s).
    """
    paths = EnclavePaths(enclave)
    mounts = root.sys.list_mounted_secrets_engines()["data"]
    auths = root.sys.list_auth_methods()["data"]
    own = (f'"{paths.kv}/', f'"{paths.transit}/', f"/auth/{paths.workload_auth}/")
    policies = [
        name
        for name in root.sys.list_acl_policies()["data"]["keys"]
        if name != "root"
        and any(m in root.sys.read_acl_policy(name)["data"]["policy"] for m in own)
    ]
    ours = (paths.workload_auth, paths.control_auth)
    found = {
        "mounts": sorted(m for m in mounts if m.rstrip("/") in (paths.kv, paths.transit)),
        "auth": sorted(m for m in auths if m.rstrip("/") in ours),
        "policies": sorted(policies),
        "roles": [],
    }
    for mount in found["auth"]:
        try:
            roles = root.auth.approle.list_roles(mount_point=mount.rstrip("/"))["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            roles = []
        found["roles"] += [f"{mount}{role}" for role in roles]
    return {kind: names for kind, names in found.items() if names}


def forbidden(call: Callable[[], object]) -> None:
    """``call`` must be refused by Vault (HTTP 403), nothing else."""
    with pytest.raises(VaultForbiddenError), translate("probe"):
        call()


def policy_paths(text: str) -> list[str]:
    return POLICY_PATH.findall(text)


@dataclass
class Enclaves:
    """Provisions enclaves with the orchestrator's token; tears each down with root after."""

    workspace: Workspace
    admin: Any
    root: Any
    connection: VaultConnection
    made: list[str] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    def spec(self, prefix: str = "demo", *replacements: tuple[str, str]) -> LoadedSpec:
        loaded = spec_for(self.workspace, unique(prefix), *replacements)
        self.made.append(loaded.name)
        return loaded

    def provision(self, prefix: str = "demo", *replacements: tuple[str, str]) -> LoadedSpec:
        loaded = self.spec(prefix, *replacements)
        provision(self.admin, loaded)
        return loaded

    def login(self, loaded: LoadedSpec, component: str) -> Any:
        """Log in as ``component`` the way it does at start-up (bootstrap file, redeem)."""
        material = bootstrap(self.admin, loaded, component, self.connection)
        path = write_bootstrap(material, self.workspace.root / "state" / f"{component}.json")
        client = redeem(self.connection, path)
        self.clients.append(client)
        return client

    def track(self, client: Any) -> Any:
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.adapter.close()
        for name in self.made:
            teardown(self.root, name)
        for name in self.made:
            assert leftovers(self.root, name) == {}, name


@pytest.fixture
def connection(openbao: OpenBaoServer) -> VaultConnection:
    return VaultConnection(openbao.address)


@pytest.fixture
def admin_token(openbao_client: Any) -> Iterator[str]:
    """A token holding only the orchestrator policy (what the embedded default hands out)."""
    with orchestrator_token(openbao_client) as token:
        yield token


@pytest.fixture
def admin(connection: VaultConnection, admin_token: str) -> Iterator[Any]:
    client = connect(connection, admin_token)
    try:
        yield client
    finally:
        client.adapter.close()


@pytest.fixture
def enclaves(
    workspace: Workspace, admin: Any, openbao_client: Any, connection: VaultConnection
) -> Iterator[Enclaves]:
    made = Enclaves(workspace, admin, openbao_client, connection)
    try:
        yield made
    finally:
        made.close()


# -- what provisioning creates ---------------------------------------------------------------


def test_provisioning_creates_exactly_the_enclaves_objects(
    enclaves: Enclaves, openbao_client: Any
) -> None:
    loaded = enclaves.spec()
    result = provision(enclaves.admin, loaded)
    paths = EnclavePaths(loaded.name)
    root = openbao_client

    assert result.components == (GATEWAY, MODEL, CONTROLLER)
    assert result.seconds < 30  # measured and reported, not a benchmark (see bench/)
    assert leftovers(root, loaded.name) == {
        "mounts": [f"{paths.kv}/", f"{paths.transit}/"],
        "auth": sorted([f"{paths.control_auth}/", f"{paths.workload_auth}/"]),
        "policies": sorted(paths.policy(c) for c in (GATEWAY, MODEL, CONTROLLER)),
        "roles": sorted(
            [
                f"{paths.control_auth}/{CONTROLLER}",
                f"{paths.workload_auth}/{GATEWAY}",
                f"{paths.workload_auth}/{MODEL}",
            ]
        ),
    }
    mounts = root.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{paths.kv}/"]["type"] == "kv"
    assert mounts[f"{paths.kv}/"]["options"]["version"] == "2"
    assert mounts[f"{paths.transit}/"]["type"] == "transit"
    auths = root.sys.list_auth_methods()["data"]
    assert {auths[f"{m}/"]["type"] for m in (paths.workload_auth, paths.control_auth)} == {
        "approle"
    }
    for mount in (paths.workload_auth, paths.control_auth):  # caps every token's period
        assert 0 < root.sys.read_auth_method_tuning(mount)["data"]["max_lease_ttl"] <= 3600

    key = root.secrets.transit.read_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)["data"]
    assert key["type"] == "ed25519"
    assert key["exportable"] is False
    assert key["allow_plaintext_backup"] is False

    secret = root.secrets.kv.v2.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"]
    assert len(base64.b64decode(secret[API_TOKEN_KEY_FIELD], validate=True)) == 32
    control = root.secrets.kv.v2.read_secret_version(
        path=CONTROL_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"]
    assert len(base64.b64decode(control[CONTROL_KEY_FIELD], validate=True)) == 32
    assert control[CONTROL_KEY_FIELD] != secret[API_TOKEN_KEY_FIELD]

    for component in (GATEWAY, MODEL, CONTROLLER):
        role = root.auth.approle.read_role(
            role_name=component, mount_point=paths.auth_mount(component)
        )["data"]
        assert role["token_policies"] == [paths.policy(component)]
        assert role["token_no_default_policy"] is True
        assert role["token_type"] == "service"
        # periodic: renewed by its holder, each renewal for one period, never over an hour
        assert role["token_period"] == TOKEN_PERIOD
        assert 0 < role["token_period"] <= 3600
        assert 0 < role["token_ttl"] <= 3600
        assert role["token_explicit_max_ttl"] == 0
        assert role["bind_secret_id"] is True
        assert role["secret_id_num_uses"] == 1
        assert 0 < role["secret_id_ttl"] <= 15 * 60


SELF_PATHS = frozenset({"auth/token/lookup-self", "auth/token/renew-self"})


def least_privilege_problems(
    paths: EnclavePaths, component: str, text: str, *, seal: bool
) -> list[str]:
    """Every way a component's policy is wider than the documented decision allows
    (:mod:`enclave.vault.policies`): empty when it is exactly as narrow as designed.

    - no bare ``*``, no ``+`` segment, and a glob only as the last segment, one area deep
      inside the enclave's own KV data (``<kv>/data/<area>/*``), never a prefix glob;
    - every path is the enclave's own (its KV or transit mount), the token's own self paths,
      or, for the controller, exactly its own workload lease paths (and ``sys/seal`` when the
      spec asks for break-glass sealing);
    - ``sudo`` on the controller's two lease paths (and ``sys/seal``) and nowhere else.
    """
    rules, parsed = parse_policy(text)
    problems = [] if parsed and rules else [f"unreadable policy: {text!r}"]
    login = f"auth/{paths.workload_auth}/login"
    sudo_allowed: set[str] = set()
    if component == CONTROLLER:
        sudo_allowed = {f"sys/leases/lookup/{login}/", f"sys/leases/revoke-prefix/{login}"}
        if seal:
            sudo_allowed.add("sys/seal")
    own = (f"{paths.kv}/", f"{paths.transit}/")
    sudo_found = set()
    for rule in rules:
        path, caps = rule["path"], set(rule["capabilities"])
        if "sudo" in caps:
            sudo_found.add(path)
            if path not in sudo_allowed:
                problems.append(f"sudo on {path}")
        if "+" in path or ("*" in path and not path.endswith("/*")) or path.count("*") > 1:
            problems.append(f"a glob other than one trailing segment: {path}")
        elif path.endswith("*"):
            area = path.removeprefix(f"{paths.kv}/data/").removesuffix("/*")
            if not path.startswith(f"{paths.kv}/data/") or not area or "*" in area:
                problems.append(f"a glob outside the enclave's own KV data areas: {path}")
        if not path.startswith(own) and path not in SELF_PATHS | sudo_allowed:
            problems.append(f"a path outside the enclave: {path}")
        if caps - {"create", "read", "update", "delete", "list", "sudo"}:
            problems.append(f"unexpected capabilities on {path}: {sorted(caps)}")
    if sudo_found != sudo_allowed:
        problems.append(f"sudo on {sorted(sudo_found)}, expected exactly {sorted(sudo_allowed)}")
    return problems


def test_policies_are_least_privilege(enclaves: Enclaves, openbao_client: Any) -> None:
    """The two documented deviations (the controller's ``sudo`` on its own lease paths, and
    trailing globs inside a component's own KV area) are exactly that wide, in Vault."""
    plain = enclaves.provision()
    sealing = enclaves.provision(
        "sealing",
        ("resumeExcludesTrigger: true", "sealVault: true\n    resumeExcludesTrigger: true"),
    )
    for loaded, seal in ((plain, False), (sealing, True)):
        paths = EnclavePaths(loaded.name)
        globs = {}
        for component in (GATEWAY, MODEL, CONTROLLER):
            text = openbao_client.sys.read_acl_policy(paths.policy(component))["data"]["policy"]
            assert least_privilege_problems(paths, component, text, seal=seal) == [], component
            globs[component] = {p for p in policy_paths(text) if "*" in p}
            if component != CONTROLLER:
                assert "sudo" not in text
                assert not any(p.startswith("sys/") for p in policy_paths(text)), component
        assert globs == {
            GATEWAY: {f"{paths.kv}/data/{API_TOKENS}/*"},
            MODEL: {f"{paths.kv}/data/models/assistant/*"},
            CONTROLLER: {f"{paths.kv}/data/{API_TOKENS}/*"},
        }


@pytest.mark.parametrize(
    ("component", "extra"),
    [
        (GATEWAY, Rule("*", ("read",))),
        (GATEWAY, Rule("enclave-*", ("read",))),
        (MODEL, Rule("{kv}/*", ("read",))),
        (MODEL, Rule("{kv}/data/*", ("read",))),
        (MODEL, Rule("{kv}/data/models/+/config", ("read",))),
        (GATEWAY, Rule("enclave-other-kv/data/api-tokens/*", ("read",))),
        (GATEWAY, Rule("{kv}/data/api-tokens/*", ("read", "sudo"))),
        (GATEWAY, Rule("sys/leases/lookup/auth/{auth}/login/", ("list", "sudo"))),
        (CONTROLLER, Rule("sys/leases/revoke-prefix/auth/", ("update", "sudo"))),
        (CONTROLLER, Rule("sys/leases/revoke-prefix/auth/{auth}/", ("update", "sudo"))),
        (CONTROLLER, Rule("sys/seal", ("update", "sudo"))),  # not asked for by the spec
        (CONTROLLER, Rule("sys/policies/acl/{prefix}-gateway", ("update",))),
        (CONTROLLER, Rule("auth/token/create", ("update",))),
    ],
)
def test_the_least_privilege_check_catches_a_widened_policy(component: str, extra: Rule) -> None:
    """Each rule a careless change might add is reported by the check above."""
    paths = EnclavePaths("demo")
    rules = component_rules(paths, component)
    assert least_privilege_problems(paths, component, render(rules), seal=False) == []
    path = extra.path.format(kv=paths.kv, auth=paths.workload_auth, prefix=paths.prefix)
    widened = render([*rules, Rule(path, extra.capabilities)])
    assert least_privilege_problems(paths, component, widened, seal=False), path


def test_provisioning_twice_changes_nothing(enclaves: Enclaves, openbao_client: Any) -> None:
    loaded = enclaves.spec()
    paths = EnclavePaths(loaded.name)
    first = provision(enclaves.admin, loaded)
    assert first.changed

    def snapshot() -> dict[str, Any]:
        root = openbao_client
        return {
            "objects": leftovers(root, loaded.name),
            "key": root.secrets.kv.v2.read_secret_version(
                path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
            )["data"],
            "control": root.secrets.kv.v2.read_secret_version(
                path=CONTROL_KEY, mount_point=paths.kv, raise_on_deleted_version=True
            )["data"],
            "policies": {
                c: root.sys.read_acl_policy(paths.policy(c))["data"]["policy"]
                for c in first.components
            },
            "role_ids": {
                c: root.auth.approle.read_role_id(c, mount_point=paths.auth_mount(c))["data"]
                for c in first.components
            },
            "signer": root.secrets.transit.read_key(
                name=AUDIT_SIGNER_KEY, mount_point=paths.transit
            )["data"]["keys"],
        }

    before = snapshot()
    second = provision(enclaves.admin, loaded)
    assert (second.created, second.updated, second.changed) == ((), (), False)
    assert snapshot() == before
    assert before["key"]["metadata"]["version"] == 1  # the HMAC key is never rewritten
    assert before["control"]["metadata"]["version"] == 1  # nor the control key


def test_an_enclave_provisioned_by_an_earlier_version_is_brought_up_to_date(
    enclaves: Enclaves, openbao_client: Any
) -> None:
    """No control key, roles issuing 15 min / 1 h tokens: a re-provision adds and updates,
    and leaves the API-token key alone."""
    loaded = enclaves.provision()
    paths = EnclavePaths(loaded.name)
    kv = openbao_client.secrets.kv.v2
    kv.delete_metadata_and_all_versions(path=CONTROL_KEY, mount_point=paths.kv)
    for component in (GATEWAY, CONTROLLER):
        openbao_client.auth.approle.create_or_update_approle(
            component,
            mount_point=paths.auth_mount(component),
            token_period=0,
            token_ttl=900,
            token_max_ttl=3600,
        )
    api_key = kv.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]

    result = provision(enclaves.admin, loaded)
    assert result.created == (f"secret {paths.kv}/{CONTROL_KEY}",)
    assert sorted(result.updated) == sorted(
        f"role {paths.auth_mount(c)}/{c}" for c in (GATEWAY, CONTROLLER)
    )
    gateway = enclaves.login(loaded, GATEWAY)
    assert gateway.auth.token.lookup_self()["data"]["period"] == TOKEN_PERIOD
    assert len(read_control_key(gateway, paths)) == 32
    after = kv.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]
    assert after == api_key


def test_a_changed_spec_converges_by_updating_only_what_changed(
    enclaves: Enclaves, workspace: Workspace, openbao_client: Any
) -> None:
    loaded = enclaves.provision()
    paths = EnclavePaths(loaded.name)
    sealing = spec_for(
        workspace,
        loaded.name,
        ("resumeExcludesTrigger: true", "sealVault: true\n    resumeExcludesTrigger: true"),
    )
    result = provision(enclaves.admin, sealing)
    assert result.created == ()
    assert result.updated == (f"policy {paths.policy(CONTROLLER)}",)
    text = openbao_client.sys.read_acl_policy(paths.policy(CONTROLLER))["data"]["policy"]
    assert 'path "sys/seal"' in text


# -- least privilege, proven by each component's own token --------------------------------------


@pytest.mark.parametrize("component", [GATEWAY, MODEL, CONTROLLER])
def test_each_component_is_refused_everything_outside_its_policy(
    enclaves: Enclaves, component: str
) -> None:
    demo = enclaves.provision("demo")
    other = enclaves.provision("other")
    mine, theirs = EnclavePaths(demo.name), EnclavePaths(other.name)
    me = enclaves.login(demo, component)
    victim = enclaves.login(other, GATEWAY)
    victim_accessor = victim.auth.token.lookup_self()["data"]["accessor"]

    kv, transit = me.secrets.kv.v2, me.secrets.transit
    # another enclave's secrets and signing key
    forbidden(
        lambda: kv.read_secret_version(
            path=API_TOKEN_KEY, mount_point=theirs.kv, raise_on_deleted_version=True
        )
    )
    forbidden(
        lambda: kv.read_secret_version(
            path="models/assistant/x", mount_point=theirs.kv, raise_on_deleted_version=True
        )
    )
    forbidden(
        lambda: transit.sign_data(
            name=AUDIT_SIGNER_KEY, hash_input="YQ==", mount_point=theirs.transit
        )
    )
    # policies: neither write nor read
    evil = (
        'path "*" {\n  capabilities = ["create", "read", "update", "delete", "list", "sudo"]\n}\n'
    )
    forbidden(lambda: me.sys.create_or_update_acl_policy(mine.policy(component), evil))
    forbidden(lambda: me.sys.create_or_update_acl_policy(mine.policy("evil"), evil))
    forbidden(me.sys.list_acl_policies)
    forbidden(lambda: me.sys.read_acl_policy(mine.policy(component)))
    # other tokens, new tokens, new identities
    forbidden(lambda: me.auth.token.revoke_accessor(victim_accessor))
    forbidden(lambda: me.auth.token.lookup_accessor(victim_accessor))
    forbidden(lambda: me.auth.token.create(policies=[mine.policy(GATEWAY)]))
    forbidden(
        lambda: me.auth.approle.generate_secret_id(
            component, mount_point=mine.auth_mount(component)
        )
    )
    forbidden(lambda: me.auth.approle.read_role_id(GATEWAY, mount_point=mine.workload_auth))
    # sys paths: mounts, auth methods, audit devices, other enclaves' leases
    forbidden(lambda: me.sys.enable_secrets_engine("kv", path=f"{mine.prefix}-evil"))
    forbidden(me.sys.list_mounted_secrets_engines)
    forbidden(lambda: me.sys.enable_auth_method("approle", path=f"{mine.prefix}-evil"))
    forbidden(lambda: me.sys.disable_secrets_engine(mine.kv))
    forbidden(me.sys.list_enabled_audit_devices)
    forbidden(lambda: me.sys.list_leases(f"auth/{theirs.workload_auth}/login/"))
    forbidden(lambda: me.sys.revoke_prefix(f"auth/{theirs.workload_auth}/login"))
    forbidden(lambda: me.sys.revoke_prefix(f"auth/{mine.control_auth}/login"))
    # no writes into the enclave's own store
    forbidden(
        lambda: kv.create_or_update_secret(
            path=API_TOKEN_KEY, secret={"k": "v"}, mount_point=mine.kv
        )
    )
    forbidden(
        lambda: kv.read_secret_version(
            path=CONTROL_KEY, mount_point=theirs.kv, raise_on_deleted_version=True
        )
    )
    forbidden(
        lambda: kv.create_or_update_secret(
            path=CONTROL_KEY, secret={"key": "AAAA"}, mount_point=mine.kv
        )
    )
    if component == MODEL:  # the gateway and the controller check people's API tokens
        forbidden(
            lambda: kv.read_secret_version(
                path=API_TOKEN_KEY, mount_point=mine.kv, raise_on_deleted_version=True
            )
        )
    if component == CONTROLLER:  # it reads one token record by id, never the list
        forbidden(lambda: kv.list_secrets(path="api-tokens", mount_point=mine.kv))
    if component == MODEL:  # only the gateway and the controller hold the control key
        forbidden(lambda: read_control_key(me, mine))
    if component == MODEL:
        forbidden(
            lambda: transit.sign_data(
                name=AUDIT_SIGNER_KEY, hash_input="YQ==", mount_point=mine.transit
            )
        )
    if component != CONTROLLER:
        forbidden(lambda: me.sys.list_leases(f"auth/{mine.workload_auth}/login/"))
    if component == GATEWAY:
        forbidden(
            lambda: kv.read_secret_version(
                path="models/assistant/x", mount_point=mine.kv, raise_on_deleted_version=True
            )
        )
        forbidden(lambda: me.sys.revoke_prefix(f"auth/{mine.workload_auth}/login"))

    # the refusals did no harm: the victim's token still works
    victim.auth.token.lookup_self()


def test_each_component_can_do_its_own_job(enclaves: Enclaves, openbao_client: Any) -> None:
    loaded = enclaves.provision()
    paths = EnclavePaths(loaded.name)
    plaintext = f"model-secret-{secrets.token_hex(8)}"
    openbao_client.secrets.kv.v2.create_or_update_secret(
        path="models/assistant/config", secret={"password": plaintext}, mount_point=paths.kv
    )

    gateway = enclaves.login(loaded, GATEWAY)
    model = enclaves.login(loaded, MODEL)
    controller = enclaves.login(loaded, CONTROLLER)

    for component, client in ((GATEWAY, gateway), (MODEL, model), (CONTROLLER, controller)):
        me = client.auth.token.lookup_self()["data"]
        assert me["policies"] == [paths.policy(component)]  # and not "default"
        assert 0 < me["ttl"] <= 3600
        assert me["period"] == TOKEN_PERIOD
        assert me["type"] == "service"
        assert client.auth.token.renew_self()["auth"]["lease_duration"] == TOKEN_PERIOD

    control_key = read_control_key(gateway, paths)
    assert read_control_key(controller, paths) == control_key
    assert len(control_key) == 32

    key = gateway.secrets.kv.v2.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"][API_TOKEN_KEY_FIELD]
    assert len(base64.b64decode(key)) == 32
    signer = TransitSigner(gateway, paths.transit, AUDIT_SIGNER_KEY)
    assert len(signer.sign(b"checkpoint")) == 64

    read = model.secrets.kv.v2.read_secret_version(
        path="models/assistant/config", mount_point=paths.kv, raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"password": plaintext}

    issued = issue(openbao_client, paths, "bob", ["safety-officer"])
    record = read_record(controller, paths, issued.info.id)
    assert verify_token(record, read_key(controller, paths), issued.token)
    leases = controller.sys.list_leases(f"auth/{paths.workload_auth}/login/")["data"]["keys"]
    assert len(leases) >= 2  # the gateway's and the model server's logins
    TransitSigner(controller, paths.transit, AUDIT_SIGNER_KEY).sign(b"incident")


# -- bootstrap material ------------------------------------------------------------------------


def test_bootstrap_file_is_owner_only_and_holds_no_secret_id(
    enclaves: Enclaves, workspace: Workspace, connection: VaultConnection
) -> None:
    loaded = enclaves.provision()
    material = bootstrap(enclaves.admin, loaded, GATEWAY, connection)
    assert (material.enclave, material.component) == (loaded.name, GATEWAY)
    assert material.address == connection.address
    assert material.auth_mount == EnclavePaths(loaded.name).workload_auth
    assert 0 < material.wrap_ttl <= MAX_WRAP_TTL
    for shown in (repr(material), str(material)):
        assert material.wrapping_token not in shown
        assert material.role_id not in shown

    path = write_bootstrap(material, workspace.root / "state" / "boot" / "gateway.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_bootstrap(path) == material
    text = path.read_text()

    unwrapper = enclaves.track(anonymous(connection))
    unwrapper.token = material.wrapping_token
    secret_id = unwrapper.sys.unwrap()["data"]["secret_id"]
    assert secret_id not in text
    assert secret_id != material.wrapping_token
    assert sorted(json.loads(text)) == sorted(material.as_dict())


def test_wrapped_secret_id_is_single_use(
    enclaves: Enclaves, connection: VaultConnection, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = enclaves.provision()
    material = bootstrap(enclaves.admin, loaded, MODEL, connection)
    enclaves.track(redeem(connection, material))
    with pytest.raises(VaultForbiddenError, match="already used or has expired"):
        redeem(connection, material)
    assert "already used or expired" in caplog.text

    # and the secret-id inside logs in once only
    material = bootstrap(enclaves.admin, loaded, MODEL, connection)
    unwrapper = enclaves.track(anonymous(connection))
    unwrapper.token = material.wrapping_token
    secret_id = unwrapper.sys.unwrap()["data"]["secret_id"]
    with pytest.raises(VaultError), translate("unwrap again"):
        unwrapper.sys.unwrap()
    login = material.role_id, secret_id, material.auth_mount
    enclaves.track(login_approle(connection, *login))
    with pytest.raises(VaultError):
        login_approle(connection, *login)


def test_wrapped_secret_id_expires(enclaves: Enclaves, connection: VaultConnection) -> None:
    loaded = enclaves.provision()
    material = bootstrap(enclaves.admin, loaded, GATEWAY, connection, wrap_ttl=2)
    assert material.wrap_ttl == 2
    time.sleep(3.5)
    with pytest.raises(VaultForbiddenError, match="already used or has expired"):
        redeem(connection, material)


@pytest.mark.parametrize("ttl", [0, -1, MAX_WRAP_TTL + 1, 3600])
def test_wrap_ttl_cannot_be_zero_or_longer_than_a_minute(
    enclaves: Enclaves, connection: VaultConnection, ttl: int
) -> None:
    loaded = enclaves.spec()  # refused before Vault is asked
    with pytest.raises(InputError, match="wrap TTL"):
        bootstrap(enclaves.admin, loaded, GATEWAY, connection, wrap_ttl=ttl)


def test_bootstrap_refuses_unknown_components_and_substituted_tokens(
    enclaves: Enclaves, connection: VaultConnection
) -> None:
    loaded = enclaves.provision()
    with pytest.raises(InputError, match="no component 'model-nope'"):
        bootstrap(enclaves.admin, loaded, "model-nope", connection)
    # a genuine wrapping token, but for another component's role, is refused unused
    gateway = bootstrap(enclaves.admin, loaded, GATEWAY, connection)
    model = bootstrap(enclaves.admin, loaded, MODEL, connection)
    swapped = BootstrapMaterial(**{**_fields(gateway), "wrapping_token": model.wrapping_token})
    with pytest.raises(VaultForbiddenError, match="not issued for this component"):
        redeem(connection, swapped)
    enclaves.track(redeem(connection, model))  # still unused, so still good


def _fields(material: BootstrapMaterial) -> dict[str, Any]:
    return {
        name: getattr(material, name)
        for name in (
            "enclave",
            "component",
            "address",
            "auth_mount",
            "role_id",
            "wrapping_token",
            "wrap_ttl",
            "created",
        )
    }


def test_bootstrap_file_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_bootstrap(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        read_bootstrap(bad)
    bad.write_text(json.dumps({"format": 1, "enclave": "demo"}))
    with pytest.raises(InputError, match="incomplete"):
        read_bootstrap(bad)


# -- rollback ----------------------------------------------------------------------------------


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch, name: str, number: int, error: Exception
) -> list[int]:
    """Make provisioning's step ``name`` raise ``error`` on its ``number``-th call."""
    real = getattr(provision_module, name)
    calls: list[int] = []

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == number:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(provision_module, name, step)
    return calls


def test_failure_mid_way_rolls_back_everything_it_created(
    enclaves: Enclaves, openbao_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = enclaves.spec()
    calls = fail_on_call(
        monkeypatch, "_ensure_role", 2, VaultUnavailableError("vault: write role: unreachable")
    )
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        provision(enclaves.admin, loaded)
    assert len(calls) == 2  # the mounts, key, HMAC key, auth mounts, 2 policies, 1 role existed
    assert leftovers(openbao_client, loaded.name) == {}


def test_failed_re_provision_keeps_what_existed_before(
    enclaves: Enclaves, workspace: Workspace, openbao_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = enclaves.provision()
    paths = EnclavePaths(loaded.name)
    before = leftovers(openbao_client, loaded.name)
    key = openbao_client.secrets.kv.v2.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"]
    grown = spec_for(
        workspace,
        loaded.name,
        ("  gateway:\n", "    - name: translator\n      runtime: reference\n\n  gateway:\n"),
    )
    fail_on_call(monkeypatch, "_ensure_role", 3, VaultUnavailableError("vault: down"))
    with pytest.raises(VaultUnavailableError):
        provision(enclaves.admin, grown)
    assert leftovers(openbao_client, loaded.name) == before  # the new policy went again
    same = openbao_client.secrets.kv.v2.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"]
    assert same == key


def test_a_real_vault_refusal_mid_way_rolls_back(
    enclaves: Enclaves, openbao_client: Any, connection: VaultConnection
) -> None:
    """An orchestrator token that may do everything but write AppRole roles: Vault answers 403
    at the first role, after mounts, keys and policies exist; all of them go again."""
    name = unique("limited")
    rules = [r for r in admin_rules() if r.path != "auth/enclave-*"]
    rules.append(Rule("auth/enclave-*", ("read", "list")))
    openbao_client.sys.create_or_update_acl_policy(name, render(rules))
    token = openbao_client.auth.token.create(policies=[name], ttl="10m")["auth"]
    limited = enclaves.track(connect(connection, token["client_token"]))
    try:
        loaded = enclaves.spec()
        with pytest.raises(VaultForbiddenError, match="write role gateway: permission denied"):
            provision(limited, loaded)
        assert leftovers(openbao_client, loaded.name) == {}
    finally:
        openbao_client.auth.token.revoke_accessor(token["accessor"])
        openbao_client.sys.delete_acl_policy(name)


def test_unreachable_vault_is_a_clear_error(workspace: Workspace) -> None:
    loaded = spec_for(workspace, unique("demo"))
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        hvac_client(nowhere, "not-a-token") as client,
        pytest.raises(VaultUnavailableError, match="unreachable"),
    ):
        provision(client, loaded)


def test_a_policy_name_owned_by_another_enclave_is_not_taken_over(
    enclaves: Enclaves, workspace: Workspace, openbao_client: Any
) -> None:
    """Policy names are ambiguous: enclave ``a``'s model ``m-gateway`` and enclave
    ``a-model-m``'s gateway share a policy name. Whoever holds it keeps it."""
    first = enclaves.spec("clash")
    provision(enclaves.admin, first)  # a plain enclave ...
    second_name = f"{first.name}-model-m"  # ... and one whose gateway policy name collides
    enclaves.made.append(second_name)
    other = spec_for(workspace, second_name)
    provision(enclaves.admin, other)
    before = leftovers(openbao_client, first.name)

    clashing = spec_for(
        workspace, first.name, ("name: assistant", "name: m-gateway")
    )  # enclave first's model "m-gateway" -> policy enclave-<first>-model-m-gateway
    with pytest.raises(ConflictError, match="belongs to another enclave"):
        provision(enclaves.admin, clashing)
    assert leftovers(openbao_client, first.name) == before
    gateway_policy = openbao_client.sys.read_acl_policy(EnclavePaths(second_name).policy(GATEWAY))
    assert EnclavePaths(second_name).kv in gateway_policy["data"]["policy"]


def journal_of(pending: PendingRollbacks, enclave: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pending.path(enclave).read_bytes().splitlines()]


def test_the_journal_is_on_disk_while_a_run_goes_on_and_holds_no_secret(
    enclaves: Enclaves, openbao_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = enclaves.spec()
    paths = EnclavePaths(loaded.name)
    state = tmp_path / "state"  # not there yet: the journal makes it, owner-only
    pending = PendingRollbacks.external(state, "https://vault.example:8200")
    seen: list[list[dict[str, Any]]] = []
    real = provision_module._ensure_role

    def look(*args: Any, **kwargs: Any) -> None:
        exists = pending.path(loaded.name).exists()
        if exists:
            for item in (state, pending.directory, pending.path(loaded.name)):
                assert stat.S_IMODE(item.stat().st_mode) in {0o700, 0o600}, item
        seen.append(journal_of(pending, loaded.name) if exists else [])
        assert PendingRollbacks(pending.directory, pending.vault).finish(enclaves.admin) == []
        real(*args, **kwargs)  # (a finish meanwhile left the running run's journal alone)

    monkeypatch.setattr(provision_module, "_ensure_role", look)
    provision(enclaves.admin, loaded, pending=pending)
    assert pending.pending() == [] and not pending.directory.exists()  # no journal, no dir
    header, *steps = seen[0]
    assert header["enclave"] == loaded.name and header["vault"] == pending.vault
    assert [s["step"]["what"] for s in steps][:3] == [
        f"mount {paths.kv}",
        f"mount {paths.transit}",
        f"transit key {paths.transit}/{AUDIT_SIGNER_KEY}",
    ]
    text = json.dumps(seen)
    for path in (API_TOKEN_KEY, CONTROL_KEY):
        value = openbao_client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=paths.kv, raise_on_deleted_version=True
        )["data"]["data"]
        assert next(iter(value.values())) not in text

    runs = len(seen)
    again = provision(enclaves.admin, loaded, pending=pending)  # nothing to do: nothing written
    assert not again.changed
    assert seen[runs:] and all(journal == [] for journal in seen[runs:])
    assert pending.pending() == []


def test_a_rollback_vault_refused_is_finished_before_the_next_run_and_only_for_its_vault(
    enclaves: Enclaves,
    openbao_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = enclaves.spec()
    pending = PendingRollbacks(tmp_path / "rollbacks", enclaves.connection.address)
    fail_on_call(monkeypatch, "_ensure_role", 2, VaultUnavailableError("vault: down"))
    refused = VaultUnavailableError("vault: rollback: unreachable")
    monkeypatch.setattr(Undo, "run", lambda *_: (_ for _ in ()).throw(refused))
    with pytest.raises(VaultUnavailableError, match=r"rollback incomplete: \d+ object"):
        provision(enclaves.admin, loaded, pending=pending)
    monkeypatch.undo()
    left = leftovers(openbao_client, loaded.name)
    assert left["policies"] and left["roles"]
    entries = journal_of(pending, loaded.name)
    assert not [e for e in entries if "undone" in e]

    other = PendingRollbacks(pending.directory, "https://another.vault:8200")
    assert other.pending() == [] and other.finish(enclaves.admin) == []
    assert leftovers(openbao_client, loaded.name) == left

    caplog.set_level(logging.WARNING, logger="enclave.vault")
    result = provision(enclaves.admin, loaded, pending=pending)  # starts by finishing it
    assert f"finished the rollback of enclave {loaded.name}" in caplog.text
    assert result.changed and pending.pending() == []
    assert leftovers(openbao_client, loaded.name)["roles"]  # this run's, complete


def test_a_damaged_journal_is_reported_and_kept(
    enclaves: Enclaves, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = enclaves.spec()
    pending = PendingRollbacks(tmp_path / "rollbacks", enclaves.connection.address)
    pending.directory.mkdir()
    pending.path(loaded.name).write_text("not a journal\n")
    assert pending.finish(enclaves.admin) == []
    assert "is unreadable" in caplog.text
    with pytest.raises(VaultError, match=r"unreadable rollback journal .* is in the way"):
        provision(enclaves.admin, loaded, pending=pending)
    assert pending.path(loaded.name).read_text() == "not a journal\n"
    assert leftovers(enclaves.root, loaded.name) == {}


# -- teardown ----------------------------------------------------------------------------------


def test_teardown_removes_everything_revokes_tokens_and_is_idempotent(
    enclaves: Enclaves, openbao_client: Any
) -> None:
    loaded = enclaves.provision()
    neighbour = enclaves.provision(f"{loaded.name}-x")  # shares the name prefix
    neighbour_objects = leftovers(openbao_client, neighbour.name)
    tokens = [enclaves.login(loaded, c) for c in (GATEWAY, MODEL, CONTROLLER)]
    for client in tokens:
        client.auth.token.lookup_self()

    report = teardown(enclaves.admin, loaded.name)
    assert report.removed == 3 + 2 + 2
    assert sorted(report.policies) == sorted(
        EnclavePaths(loaded.name).policy(c) for c in components(loaded)
    )
    assert leftovers(openbao_client, loaded.name) == {}
    for client in tokens:
        with pytest.raises(VaultForbiddenError), translate("lookup-self after teardown"):
            client.auth.token.lookup_self()

    again = teardown(enclaves.admin, loaded.name)
    assert again.removed == 0
    assert leftovers(openbao_client, neighbour.name) == neighbour_objects


def test_teardown_of_an_enclave_that_never_existed_is_a_no_op(admin: Any) -> None:
    assert teardown(admin, unique("never")).removed == 0


# -- no plaintext secret anywhere --------------------------------------------------------------


def test_no_secret_reaches_the_audit_log_the_state_dir_or_the_logs(
    enclaves: Enclaves, openbao: OpenBaoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connection, openbao_client, workspace = enclaves.connection, enclaves.root, enclaves.workspace
    loaded = enclaves.provision()
    paths = EnclavePaths(loaded.name)
    state = workspace.root / "state"
    plaintext = f"plaintext-{secrets.token_hex(16)}"
    openbao_client.secrets.kv.v2.create_or_update_secret(
        path="models/assistant/config", secret={"password": plaintext}, mount_point=paths.kv
    )

    # the model server: material through a file, unwrapped by hand to learn the secret-id
    material = bootstrap(enclaves.admin, loaded, MODEL, connection)
    model_file = write_bootstrap(material, state / "model.json")
    unwrapper = enclaves.track(anonymous(connection))
    unwrapper.token = read_bootstrap(model_file).wrapping_token
    secret_id = str(unwrapper.sys.unwrap()["data"]["secret_id"])
    login = material.role_id, secret_id, material.auth_mount
    model = enclaves.track(login_approle(connection, *login))
    read = model.secrets.kv.v2.read_secret_version(
        path="models/assistant/config", mount_point=paths.kv, raise_on_deleted_version=True
    )
    assert read["data"]["data"]["password"] == plaintext

    # the gateway: the normal start-up path
    gateway_material = bootstrap(enclaves.admin, loaded, GATEWAY, connection)
    gateway_file = write_bootstrap(gateway_material, state / "gateway.json")
    gateway = enclaves.track(redeem(connection, gateway_file))
    hmac_key = gateway.secrets.kv.v2.read_secret_version(
        path=API_TOKEN_KEY, mount_point=paths.kv, raise_on_deleted_version=True
    )["data"]["data"][API_TOKEN_KEY_FIELD]
    control_key = base64.b64encode(read_control_key(gateway, paths)).decode()
    TransitSigner(gateway, paths.transit, AUDIT_SIGNER_KEY).sign(b"checkpoint")

    secret_values = {
        "plaintext": plaintext,
        "hmac key": hmac_key,
        "control key": control_key,
        "control key (hex)": read_control_key(gateway, paths).hex(),
        "secret-id": secret_id,
        "model token": str(model.token),
        "gateway token": str(gateway.token),
    }
    wrapping_tokens = {
        "model wrapping token": material.wrapping_token,
        "gateway wrapping token": gateway_material.wrapping_token,
    }
    assert "provisioned" in caplog.text  # the logs were captured, so the grep means something

    audit = openbao.audit_log.read_text()
    assert f"{paths.kv}/data/models/assistant/config" in audit  # the reads were audited
    files = {p: p.read_text(errors="replace") for p in workspace.root.rglob("*") if p.is_file()}
    assert model_file in files
    for what, value in {**secret_values, **wrapping_tokens}.items():
        assert value not in audit, f"{what} in the OpenBao audit log"
        assert value not in caplog.text, f"{what} in the logs"
    for what, value in secret_values.items():
        assert not [p for p, text in files.items() if value in text], f"{what} in {workspace.root}"
    # the material files hold their (now spent) wrapping token by design, and nothing else does
    for what, value in wrapping_tokens.items():
        holders = [p for p, text in files.items() if value in text]
        assert holders == [model_file if what.startswith("model") else gateway_file], what


# -- sealed Vault (a throwaway server: the session's is shared) --------------------------------


@dataclass
class SpareOpenBao:
    address: str
    root_token: str = field(repr=False)
    unseal_key: str = field(repr=False)

    def root(self) -> Any:
        return hvac.Client(url=self.address, token=self.root_token, timeout=10)

    def seal(self) -> None:
        with hvac_client(self.address, self.root_token) as client:
            client.sys.seal()

    def unseal(self) -> None:
        with hvac_client(self.address) as client:
            client.sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + 30
        while health_status(self.address) != 200:
            assert time.monotonic() < deadline, "spare OpenBao did not become active"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def spare_openbao() -> Iterator[SpareOpenBao]:
    """An OpenBao of this module's own, which its tests may seal (and unseal: the key is kept)."""
    bao = bao_binary()
    if not bao.is_file():
        service_missing(f"OpenBao binary not found at {bao}")
    work = Path(tempfile.mkdtemp(prefix="enclave-spare-openbao-"))
    (work / "data").mkdir(mode=0o700)
    port = free_port()
    config = work / "config.hcl"
    config.write_text(
        render_config(
            data_dir=work / "data",
            audit_log=work / "audit.log",
            port=port,
            cluster_port=free_port(),
            node_id="enclave-spare",
        )
    )
    config.chmod(0o600)
    address = f"http://127.0.0.1:{port}"
    log_file: IO[bytes] = (work / "server.log").open("ab")
    proc = subprocess.Popen(
        [str(bao), "server", f"-config={config}"],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
        cwd=work,
    )
    try:
        deadline = time.monotonic() + 30
        while health_status(address) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise OpenBaoStartError(log_tail(work / "server.log"))
            time.sleep(0.05)
        with hvac_client(address) as client:
            init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        server = SpareOpenBao(address, str(init["root_token"]), str(init["keys"][0]))
        server.unseal()
        yield server
    finally:
        stop_server(proc)
        log_file.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def spare(spare_openbao: SpareOpenBao, workspace: Workspace) -> Iterator[tuple[Any, LoadedSpec]]:
    """A root client on the spare server and a fresh spec; unsealed and torn down after."""
    loaded = spec_for(workspace, unique("sealed"))
    client = spare_openbao.root()
    try:
        yield client, loaded
    finally:
        if client.sys.read_seal_status()["sealed"]:
            spare_openbao.unseal()
        teardown(client, loaded.name)
        client.adapter.close()


def test_sealed_vault_is_a_clear_error_and_creates_nothing(
    spare_openbao: SpareOpenBao, spare: tuple[Any, LoadedSpec]
) -> None:
    client, loaded = spare
    spare_openbao.seal()
    with pytest.raises(VaultSealedError, match="sealed"):
        provision(client, loaded)
    spare_openbao.unseal()
    assert leftovers(client, loaded.name) == {}


def test_vault_sealed_mid_way_is_rolled_back_by_the_next_admin_connection(
    spare_openbao: SpareOpenBao,
    spare: tuple[Any, LoadedSpec],
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``enclave vault provision`` against an external Vault that is sealed between two steps:
    Vault refuses the rollback too, the error names what is left, the journal keeps it under
    the state directory, and the next command holding an admin connection (here ``token
    list``), once Vault is unsealed, finishes the rollback and says so."""
    client, loaded = spare
    spec = workspace.example(
        ("name: demo", f"name: {loaded.name}"),
        ("address: embedded", f"address: {spare_openbao.address}"),
        name="external.yaml",
    )
    token_file = workspace.root / "admin.token"
    token_file.write_text(spare_openbao.root_token)
    token_file.chmod(0o600)
    state = workspace.root / "state"
    cli = ("--state-dir", str(state))
    vtf = ("--vault-token-file", str(token_file))
    real = provision_module._ensure_policy

    def seal_first(*args: Any, **kwargs: Any) -> None:
        spare_openbao.seal()
        monkeypatch.setattr(provision_module, "_ensure_policy", real)
        real(*args, **kwargs)

    monkeypatch.setattr(provision_module, "_ensure_policy", seal_first)
    code = main([*cli, "vault", "provision", str(spec), *vtf])
    failed = capsys.readouterr()
    assert code == 5, failed.err
    (line,) = failed.err.strip().splitlines()[-1:]
    assert "Vault is sealed" in line and "; rollback incomplete: 7 object(s) left (" in line
    for what in ("remove mount", "remove transit key", "remove secret", "remove auth mount"):
        assert what in line, line
    assert "removed at the next admin connection to this Vault once it is back" in line
    pending = PendingRollbacks.external(state, spare_openbao.address)
    assert pending.pending() == [loaded.name]
    journal = pending.path(loaded.name)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600

    spare_openbao.unseal()
    paths = EnclavePaths(loaded.name)
    assert leftovers(client, loaded.name) == {  # what the sealed Vault kept from the rollback
        "mounts": [f"{paths.kv}/", f"{paths.transit}/"],
        "auth": sorted([f"{paths.control_auth}/", f"{paths.workload_auth}/"]),
    }
    code = main([*cli, "token", "list", str(spec), *vtf])
    after = capsys.readouterr()
    assert code == 0, after.err
    assert f"finished the rollback of enclave {loaded.name}'s failed provisioning" in after.err
    assert "(7 step(s) undone)" in after.err
    assert leftovers(client, loaded.name) == {}  # mounts, auth mounts, policies, roles: none
    assert pending.pending() == []
    assert main([*cli, "token", "list", str(spec), *vtf]) == 0  # nothing left to say
    assert "rollback" not in capsys.readouterr().err


def test_a_signing_key_in_a_sealed_vault_delays_checkpoints_and_loses_no_record(
    spare_openbao: SpareOpenBao,
    spare: tuple[Any, LoadedSpec],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An audit log signed by the enclave's transit key, as the gateway's is, while its Vault
    is sealed (an outage): appends go on and stay durable, the failed checkpoint is reported
    once and retried, and after the unseal a checkpoint covers every record; the log verifies
    offline with the public key read from Vault."""
    caplog.set_level(logging.WARNING, logger="enclave.audit")
    client, loaded = spare
    provision(client, loaded)
    connection = VaultConnection(spare_openbao.address)
    gateway = redeem(connection, bootstrap(client, loaded, GATEWAY, connection))
    paths = EnclavePaths(loaded.name)
    root = tmp_path / "audit"
    settings = AuditSettings(checkpoint_records=1_000_000, checkpoint_interval=0.1)

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    try:
        with (
            audit_signer(connection, gateway.token, paths) as signer,
            AuditLog.open(root, enclave=loaded.name, signer=signer, settings=settings) as log,
        ):
            log.append(AuditEvent(actor="tester", action="test.append", reason="before"))
            until(lambda: verify_log(root).unsigned == 0)
            spare_openbao.seal()
            started = time.monotonic()
            for number in range(10):
                log.append(AuditEvent(actor="tester", action="test.append", reason=f"{number}"))
            assert time.monotonic() - started < 5  # never waiting for Vault
            until(lambda: log.checkpoint_failures >= 2)
            sealed = verify_log(root)
            assert sealed.intact and (sealed.records, sealed.unsigned) == (11, 10)
            spare_openbao.unseal()
            until(lambda: log.checkpoint_failures == 0 and verify_log(root).unsigned == 0)
            public_pem = signer.public_key_pem()
    finally:
        gateway.adapter.close()
    failures = [r.getMessage() for r in caplog.records if "could not be signed" in r.getMessage()]
    assert len(failures) == 1 and "Vault is sealed" in failures[0]
    raw = client.secrets.transit.read_key(name=AUDIT_SIGNER_KEY, mount_point=paths.transit)
    vault_key = base64.b64decode(raw["data"]["keys"]["1"]["public_key"])
    assert load_public_key(public_pem, "signer").public_bytes_raw() == vault_key
    report = verify_log(root, public_key_pem=public_pem)
    assert report.intact and report.records == 11 and report.unsigned == 0


def test_controller_may_seal_only_when_the_spec_says_so(
    spare_openbao: SpareOpenBao, spare: tuple[Any, LoadedSpec], workspace: Workspace
) -> None:
    client, loaded = spare
    connection = VaultConnection(spare_openbao.address)
    provision(client, loaded)
    controller = redeem(connection, bootstrap(client, loaded, CONTROLLER, connection))
    try:
        forbidden(controller.sys.seal)
    finally:
        controller.adapter.close()

    sealing = spec_for(
        workspace,
        loaded.name,
        ("resumeExcludesTrigger: true", "sealVault: true\n    resumeExcludesTrigger: true"),
    )
    assert provision(client, sealing).updated
    controller = redeem(connection, bootstrap(client, sealing, CONTROLLER, connection))
    try:
        with translate("break-glass seal"):
            controller.sys.seal()
    finally:
        controller.adapter.close()
    assert client.sys.read_seal_status()["sealed"] is True
    spare_openbao.unseal()


def test_a_new_kv_mount_that_is_still_being_set_up_is_waited_for() -> None:
    """A KV v2 mount answers 400 "Upgrading from non-versioned to versioned data" for a moment
    after it is enabled; provisioning reads through that, and only that."""
    answers: list[Exception | dict[str, Any]] = [
        hvac.exceptions.InvalidRequest(
            errors=["Upgrading from non-versioned to versioned data. This backend will be ..."]
        ),
        hvac.exceptions.InvalidRequest(errors=["Upgrading from non-versioned to versioned data"]),
        {"data": {"versions": {}}},
    ]

    def call() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert provision_module._read_when_ready(call, "read") == {"versions": {}}
    assert answers == []

    def refused() -> None:
        raise hvac.exceptions.InvalidRequest(errors=["something else"])

    with pytest.raises(VaultError, match="something else"):
        provision_module._read_when_ready(refused, "read")
