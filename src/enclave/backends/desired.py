"""An enclave spec as the Docker backend's objects (pure: no engine, no file system).

=======================  =====================================================================
object                   what
=======================  =====================================================================
``enclave-N-internal``   internal network: the gateway and every model server (alias: model)
``enclave-N-ingress``    the gateway's published port; nothing else joins it
``enclave-N-model-M``    model server M (:mod:`enclave.backends.runtimes`), internal only
``enclave-N-gateway``    ``enclave gateway serve`` on both networks, published on
                         ``spec.gateway.listen``; Vault through a unix socket, bootstrap on stdin
=======================  =====================================================================

The gateway container mounts three host directories the caller prepares (:class:`HostPaths`):
the spec bundle read-only at ``/etc/enclave`` (the spec file and its usage policy files), its
state read-write at ``/var/lib/enclave`` (the audit log and its signing key), and the embedded
Vault's socket directory read-only at ``/run/enclave/vault``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from enclave.backends.base import (
    Component,
    ContainerSpec,
    Desired,
    Mount,
    NetworkSpec,
    Port,
)
from enclave.backends.runtimes import BuiltinWeights, container_config
from enclave.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from enclave.spec import LoadedSpec

__all__ = [
    "GATEWAY_PORT",
    "SERVICE_USER",
    "VAULT_SOCKET",
    "HostPaths",
    "container_name",
    "desired_state",
    "network_name",
]

SERVICE_USER = "10001:10001"
GATEWAY_PORT = 8443
SPEC_DIR = "/etc/enclave"
STATE_DIR = "/var/lib/enclave"
VAULT_DIR = "/run/enclave/vault"
VAULT_SOCKET = f"unix://{VAULT_DIR}/bao.sock"
"""Where the gateway finds Vault inside its container."""
ENCLAVE = "/opt/enclave/bin/enclave"
GATEWAY_CPUS = 1.0
GATEWAY_MEMORY = 512 * 1024**2
GATEWAY_PIDS = 256


@dataclass(frozen=True, slots=True)
class HostPaths:
    """Host paths the containers mount (absolute)."""

    spec_bundle: str
    """A directory holding the spec file (``spec_file``) and its usage policy files."""
    spec_file: str
    """The spec's path inside ``spec_bundle`` (relative)."""
    gateway_state: str
    vault_socket_dir: str


def network_name(enclave: str, role: str) -> str:
    return f"enclave-{enclave}-{role}"


def container_name(enclave: str, component: Component, model: str | None = None) -> str:
    if component is Component.MODEL:
        return f"enclave-{enclave}-model-{model}"
    return f"enclave-{enclave}-{component.value}"


def desired_state(
    loaded: LoadedSpec,
    *,
    images: Mapping[str, str],
    paths: HostPaths,
    builtin: BuiltinWeights | None = None,
) -> Desired:
    """The Docker objects of the enclave ``loaded`` declares.

    ``images`` maps a component (``runtime``, ``gateway``) to its image tag;
    ``builtin`` is the reference model's own weights file for reference models that name none.
    """
    name = loaded.name
    internal = network_name(name, "internal")
    ingress = network_name(name, "ingress")
    models: list[ContainerSpec] = []
    upstreams: list[str] = []
    for model in loaded.spec.models:
        config = container_config(model, reference_image=images.get("runtime"), builtin=builtin)
        mounts: tuple[Mount, ...] = ()
        if config.weights is not None:
            source = config.weights.source
            host = source if posixpath.isabs(source) else str(loaded.resolve(source))
            mounts = (Mount(host, config.weights.target, read_only=True),)
        resources = model.resources
        models.append(
            ContainerSpec(
                name=container_name(name, Component.MODEL, model.name),
                component=Component.MODEL,
                image=config.image,
                entrypoint=config.entrypoint,
                command=config.command,
                networks=((internal, (model.name,)),),
                user=SERVICE_USER,
                cpus=resources.cpus,
                memory=int(resources.memory),
                pids=resources.pids,
                env=tuple(sorted(config.env.items())),
                mounts=mounts,
                tmpfs=config.tmpfs,
                health_port=config.port,
                health_path=config.health_path,
                model=model.name,
            )
        )
        upstreams += ["--upstream", f"{model.name}=http://{model.name}:{config.port}"]
    gateway_image = images.get("gateway")
    if not gateway_image:
        raise InputError("no gateway image (build it with 'enclave images build')")
    spec_file = PurePosixPath(paths.spec_file)
    if spec_file.is_absolute() or ".." in spec_file.parts:
        raise InputError(f"spec bundle path {paths.spec_file!r} must be relative, inside it")
    listen = loaded.spec.gateway.listen
    command = (
        "--log-format", "json",
        "--state-dir", STATE_DIR,
        "gateway", "serve",
        "--spec", f"{SPEC_DIR}/{spec_file}",
        "--host", "0.0.0.0",  # noqa: S104 - inside the container; published on listen
        "--port", str(GATEWAY_PORT),
        *upstreams,
        "--bootstrap", "-",
        "--vault-address", VAULT_SOCKET,
    )  # fmt: skip
    gateway = ContainerSpec(
        name=container_name(name, Component.GATEWAY),
        component=Component.GATEWAY,
        image=gateway_image,
        entrypoint=(ENCLAVE,),
        command=command,
        networks=((internal, ("gateway",)), (ingress, ())),
        user=SERVICE_USER,
        cpus=GATEWAY_CPUS,
        memory=GATEWAY_MEMORY,
        pids=GATEWAY_PIDS,
        env=(("ENCLAVE_STATE_DIR", STATE_DIR),),
        mounts=(
            Mount(paths.spec_bundle, SPEC_DIR, read_only=True),
            Mount(paths.gateway_state, STATE_DIR, read_only=False),
            Mount(paths.vault_socket_dir, VAULT_DIR, read_only=True),
        ),
        port=Port(str(listen.host), listen.port, GATEWAY_PORT),
        health_port=GATEWAY_PORT,
        health_path="/healthz",
        bootstrap=True,
    )
    return Desired(
        enclave=name,
        networks=(
            NetworkSpec(internal, "internal", internal=True),
            NetworkSpec(ingress, "ingress", internal=False),
        ),
        containers=(*models, gateway),
    )
