"""One whole run against a live enclave: find its spec and baseline, collect, verify waivers,
judge. What ``enclave check`` (and, later, ``enclave monitor``) calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from enclave import lifecycle
from enclave.backends.docker import DockerBackend, connect
from enclave.compliance.baseline import Baseline, default_baseline, load_baseline
from enclave.compliance.engine import evaluate
from enclave.compliance.facts import Sources, VaultAccess, collect, embedded_access
from enclave.compliance.waivers import judge, load_waivers, sign_file, waivers_file
from enclave.errors import DockerError, EnclaveError, InputError, SpecError
from enclave.spec import load_spec
from enclave.vault.controlkey import read_control_key
from enclave.vault.names import EnclavePaths

if TYPE_CHECKING:
    from pathlib import Path

    from enclave.compliance.model import Report
    from enclave.spec import LoadedSpec

__all__ = ["CheckSettings", "bundled_spec", "check_enclave", "sign_waivers"]


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """Where to look; every field has the default a person would want."""

    name: str
    state_dir: Path
    spec: Path | None = None
    """The spec under review; default: the one the gateway runs (its spec bundle)."""
    baseline: Path | None = None
    """Default: ``spec.compliance.baseline`` when that directory exists, else the shipped one."""
    docker_timeout: float = 10.0


def bundled_spec(state_dir: Path, name: str) -> Path:
    """The spec file in the bundle the gateway container mounts."""
    root = lifecycle.enclave_dir(state_dir, name) / "spec"
    found = sorted(p for p in root.glob("*.y*ml") if p.is_file()) if root.is_dir() else []
    if len(found) != 1:
        raise InputError(
            f"enclave {name}: no spec bundle under {root} (is it up? or pass --spec FILE)"
        )
    return found[0]


def _spec(settings: CheckSettings) -> tuple[LoadedSpec | None, str]:
    path = settings.spec
    if path is None:
        try:
            path = bundled_spec(settings.state_dir, settings.name)
        except InputError as exc:
            return None, str(exc)
        try:
            loaded = load_spec(path)
        except SpecError as exc:
            return None, f"the gateway's spec bundle does not load: {exc}"
    else:
        loaded = load_spec(path)  # the user's file: a bad one is their input error
    if loaded.name != settings.name:
        raise InputError(f"{path}: metadata.name is {loaded.name!r}, not {settings.name!r}")
    return loaded, ""


def _baseline(settings: CheckSettings, loaded: LoadedSpec | None) -> Baseline:
    if settings.baseline is not None:
        return load_baseline(settings.baseline)
    if loaded is not None:
        named = loaded.resolve(loaded.spec.compliance.baseline)
        if named.is_dir():
            return load_baseline(named)
    return load_baseline(default_baseline())


def _vault(loaded: LoadedSpec | None, state_dir: Path) -> tuple[VaultAccess | None, str]:
    if loaded is not None and loaded.spec.vault.address != "embedded":
        return None, f"vault: {loaded.spec.vault.address}: only the embedded Vault is checked yet"
    return embedded_access(state_dir), ""


def _control_key(access: VaultAccess | None, name: str) -> tuple[bytes | None, str]:
    if access is None:
        return None, "no access to Vault"
    try:
        client = access.admin()
    except EnclaveError as exc:
        return None, str(exc)
    try:
        return read_control_key(client, EnclavePaths(name)), ""
    except EnclaveError as exc:
        return None, str(exc)
    finally:
        client.adapter.close()


def check_enclave(settings: CheckSettings) -> Report:
    """Run the baseline against the enclave ``settings.name`` on this host."""
    started = datetime.now(UTC)
    begin = time.perf_counter()
    loaded, spec_problem = _spec(settings)
    baseline = _baseline(settings, loaded)
    access, vault_error = _vault(loaded, settings.state_dir)
    backend, backend_error = None, ""
    client = None
    try:
        client = connect(settings.docker_timeout)
        backend = DockerBackend(client)
    except DockerError as exc:
        backend_error = str(exc)
    try:
        facts = collect(
            Sources(settings.name, settings.state_dir, loaded, spec_problem),
            backend=backend,
            backend_error=backend_error,
            vault=access,
            vault_error=vault_error,
            now=started,
        )
    finally:
        if client is not None:
            client.close()
    entries = load_waivers(waivers_file(settings.state_dir, settings.name))
    waivers = []
    if entries:
        key, problem = _control_key(access, settings.name)
        waivers = judge(
            entries, enclave=settings.name, key=key, key_problem=problem, now=started,
            known=baseline.ids,
        )  # fmt: skip
    return evaluate(
        baseline,
        facts,
        enclave=settings.name,
        waivers=waivers,
        started=started,
        collect_seconds=time.perf_counter() - begin,
    )


def sign_waivers(settings: CheckSettings) -> list[str]:
    """Sign the unsigned waivers of the enclave with its control key; the checks signed."""
    path = waivers_file(settings.state_dir, settings.name)
    if not path.is_file():
        raise InputError(f"no waivers file at {path}")
    key, problem = _control_key(embedded_access(settings.state_dir), settings.name)
    if key is None:
        raise EnclaveError(f"cannot sign waivers: {problem}")
    return sign_file(path, key, settings.name)
