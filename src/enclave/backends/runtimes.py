"""Runtime adapters: how to run each model server runtime in a container.

:func:`container_config` turns one ``spec.models[]`` entry into a :class:`RuntimeContainer`:
the image, the argv handed to the image's entrypoint, the port the OpenAI API listens on, the
health path, the read-only weights mount and the environment. It is pure (no Docker, no file
system), so every backend builds the same container from the same spec, and the unit tests pin
each runtime's flags.

=============  ==========================  =====  ===========================================
runtime        image entrypoint            port   argv
=============  ==========================  =====  ===========================================
reference      ``enclave``                 8000   ``runtime serve --weights W --sha256 D ...``
vllm           the image's (``vllm``)      8000   ``--model /weights --served-model-name N``
                                                  (``--model /weights/F.gguf`` for one GGUF file)
llama-cpp      the image's (llama-server)  8080   ``-m /weights/F.gguf --alias N``
tgi            the image's (launcher)      8080   ``--model-id /weights``
=============  ==========================  =====  ===========================================

Every server binds ``0.0.0.0`` inside its container (the container has no published ports; the
gateway reaches it over the enclave's internal network) and serves ``/health``. TGI is given
port 8080 rather than its image's default 80 so it can bind as a non-root user with every
capability dropped; its launcher takes no served-model name and answers to any ``model`` in
a request. Environment variables switch off every phone-home the runtimes know of (Hugging
Face Hub downloads and telemetry, vLLM and TGI usage stats); none holds a secret. The spec's
``args`` are appended after the adapter's own, so they can override a flag (the runtimes take
the last value given).

The weights mount's ``source`` is the spec's ``weights.path`` as written (relative to the spec
file); the backend resolves it, checks ``sha256`` before starting anything, and mounts it
read-only at ``target``. A file is mounted at ``/weights/<file name>``, a directory at
``/weights``. A ``reference`` model without weights in the spec serves the reference model
trained from the corpus enclave ships: the caller writes that file on the host and passes it as
``builtin`` (the backends sit below the runtime and never train a model), and it is mounted
like any other. Its image, when the spec names none, is the one enclave builds
(``reference_image``, see :mod:`enclave.images.service`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enclave.errors import InputError
from enclave.spec.model import Runtime

if TYPE_CHECKING:
    from collections.abc import Mapping

    from enclave.spec.model import Model

__all__ = [
    "BuiltinWeights",
    "RuntimeContainer",
    "WeightsMount",
    "container_config",
]

HEALTH_PATH = "/health"
_OFFLINE_HF = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}
_SCRATCH = {"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "HF_HOME": "/tmp/huggingface"}  # noqa: S108 - a private tmpfs in the container


@dataclass(frozen=True, slots=True)
class WeightsMount:
    """A read-only bind of the model's weights into the container."""

    source: str
    """``weights.path`` from the spec, as written (relative to the spec file)."""
    target: str
    """Absolute path inside the container."""
    sha256: str
    """The digest the backend checks before the container starts."""
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class RuntimeContainer:
    """Everything a backend needs to run one model server (before hardening)."""

    name: str
    """The model's name; also the name it is served under in the OpenAI API."""
    runtime: Runtime
    image: str
    command: tuple[str, ...]
    """Arguments for the image's entrypoint (Docker ``command``, Kubernetes ``args``)."""
    port: int
    """Container port of the OpenAI-compatible API (``/v1/...``)."""
    health_path: str
    """``GET`` answers 200 once the server is ready."""
    weights: WeightsMount | None
    entrypoint: tuple[str, ...] | None = None
    """Replaces the image's entrypoint when set (Kubernetes ``command``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    tmpfs: tuple[str, ...] = ("/tmp",)  # noqa: S108 - a private tmpfs in the container
    """Writable scratch directories (the root file system is read-only)."""

    @property
    def base_url(self) -> str:
        """The API base URL path the gateway appends ``/chat/completions`` etc. to."""
        return "/v1"


@dataclass(frozen=True, slots=True)
class BuiltinWeights:
    """The reference model's own weights, written on the host by the caller."""

    path: str
    """Absolute host path of the weights file."""
    sha256: str


def container_config(
    model: Model,
    *,
    weights_mount: str = "/weights",
    reference_image: str | None = None,
    builtin: BuiltinWeights | None = None,
) -> RuntimeContainer:
    """The container that runs ``model`` (one ``spec.models[]`` entry)."""
    if not posixpath.isabs(weights_mount) or posixpath.normpath(weights_mount) == "/":
        raise InputError(f"weights mount {weights_mount!r} must be an absolute path below /")
    mount_dir = posixpath.normpath(weights_mount)
    if model.runtime is Runtime.REFERENCE:
        return _reference(model, mount_dir, reference_image, builtin)
    return _ADAPTERS[model.runtime](model, mount_dir)


def _mount(model: Model, mount_dir: str, *, as_file: bool) -> WeightsMount:
    if model.weights is None:  # the spec requires weights for every runtime but reference
        raise InputError(f"model {model.name!r}: runtime {model.runtime.value!r} needs weights")
    target = mount_dir
    if as_file:
        base = posixpath.basename(model.weights.path.rstrip("/"))
        if base in {"", ".", ".."}:
            raise InputError(f"model {model.name!r}: weights.path must name a file")
        target = posixpath.join(mount_dir, base)
    return WeightsMount(source=model.weights.path, target=target, sha256=model.weights.sha256)


def _reference(
    model: Model, mount_dir: str, image: str | None, builtin: BuiltinWeights | None
) -> RuntimeContainer:
    if model.weights is not None:
        mount = _mount(model, mount_dir, as_file=True)
    elif builtin is not None:
        target = posixpath.join(mount_dir, posixpath.basename(builtin.path))
        mount = WeightsMount(source=builtin.path, target=target, sha256=builtin.sha256)
    else:
        raise InputError(
            f"model {model.name!r}: the reference runtime needs weights (the spec's, or the "
            "built-in ones the caller writes)"
        )
    if model.image is None and image is None:
        raise InputError(f"model {model.name!r}: no image for the reference runtime")
    path, digest = mount.target, mount.sha256
    port = 8000
    command = (
        "runtime",
        "serve",
        "--weights",
        path,
        "--sha256",
        digest,
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the container, on the internal network only
        "--port",
        str(port),
        "--model-name",
        model.name,
        *model.args,
    )
    return RuntimeContainer(
        name=model.name,
        runtime=model.runtime,
        image=model.image or image or "",
        entrypoint=("enclave",),
        command=command,
        port=port,
        health_path=HEALTH_PATH,
        weights=mount,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        # the reference server writes nothing; /tmp is there for Python's own needs
    )


def _vllm(model: Model, mount_dir: str) -> RuntimeContainer:
    single_file = model.weights is not None and model.weights.path.endswith(".gguf")
    mount = _mount(model, mount_dir, as_file=single_file)
    port = 8000
    command = (
        "--model",
        mount.target,
        "--served-model-name",
        model.name,
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the container, on the internal network only
        "--port",
        str(port),
        *model.args,
    )
    env = {**_OFFLINE_HF, **_SCRATCH, "VLLM_NO_USAGE_STATS": "1"}
    return _external(model, command, port, mount, env)


def _llama_cpp(model: Model, mount_dir: str) -> RuntimeContainer:
    mount = _mount(model, mount_dir, as_file=True)
    if not mount.target.endswith(".gguf"):
        raise InputError(
            f"model {model.name!r}: llama-cpp weights.path must name a .gguf file, "
            f"not {model.weights.path if model.weights else ''!r}"
        )
    port = 8080
    command = (
        "-m",
        mount.target,
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the container, on the internal network only
        "--port",
        str(port),
        "--alias",
        model.name,
        *model.args,
    )
    return _external(model, command, port, mount, {**_SCRATCH})


def _tgi(model: Model, mount_dir: str) -> RuntimeContainer:
    mount = _mount(model, mount_dir, as_file=False)
    port = 8080
    command = (
        "--model-id",
        mount.target,
        "--hostname",
        "0.0.0.0",  # noqa: S104 - inside the container, on the internal network only
        "--port",
        str(port),
        *model.args,
    )
    env = {**_OFFLINE_HF, **_SCRATCH, "USAGE_STATS": "off"}
    return _external(model, command, port, mount, env)


def _external(
    model: Model,
    command: tuple[str, ...],
    port: int,
    mount: WeightsMount,
    env: dict[str, str],
) -> RuntimeContainer:
    if model.image is None:  # the spec requires an image for every runtime but reference
        raise InputError(f"model {model.name!r}: runtime {model.runtime.value!r} needs an image")
    return RuntimeContainer(
        name=model.name,
        runtime=model.runtime,
        image=model.image,
        command=command,
        port=port,
        health_path=HEALTH_PATH,
        weights=mount,
        env=dict(sorted(env.items())),
    )


_ADAPTERS = {
    Runtime.VLLM: _vllm,
    Runtime.LLAMA_CPP: _llama_cpp,
    Runtime.TGI: _tgi,
}
