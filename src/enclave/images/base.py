"""The offline base image: a Debian rootfs built with debootstrap, imported into Docker.

Nothing is pulled from a registry. A :class:`BaseImageRecipe` names what goes into the rootfs;
its content digest (sha256 over a canonical encoding) names the image,
``enclave/base:<first 12 hex>``, and is stored in the image's labels.

The steps take and give files, so a rootfs tarball built on another machine (a transfer
bundle) can be imported the same way as one built here::

    build_rootfs(recipe, tarball)          # needs root and debootstrap, about a minute
    import_rootfs(client, tarball, tag, labels)
    ensure_base_image(client, recipe, cache_dir)   # both, skipping what is already done
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker.errors
import requests.exceptions

from enclave.errors import ConflictError, DockerError, InputError, ServiceError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from docker import DockerClient

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_PACKAGES",
    "LABEL_COMPONENT",
    "LABEL_RECIPE_DIGEST",
    "REPOSITORY",
    "BaseImageRecipe",
    "build_rootfs",
    "debootstrap_argv",
    "ensure_base_image",
    "import_changes",
    "import_rootfs",
    "rootfs_tarball_path",
    "split_tag",
    "tar_argv",
]

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump when the way a rootfs is built changes, so every recipe gets a new digest."""

REPOSITORY = "enclave/base"
LABEL_COMPONENT = "enclave.dev/component"
LABEL_RECIPE_DIGEST = "enclave.dev/recipe-digest"
DEFAULT_PACKAGES: tuple[str, ...] = ("ca-certificates", "python3", "python3-venv")

_RECIPE_SCHEMA = "enclave.dev/base-recipe/v1"
_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # Debian package, suite and variant names
_TAR_EXCLUDES = ("./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*")
_STDERR_LIMIT = 300


@dataclass(frozen=True, slots=True)
class BaseImageRecipe:
    """What goes into the base rootfs. Package order and duplicates do not matter."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    builder_version: int = BUILDER_VERSION

    def __post_init__(self) -> None:
        for what, value in (("suite", self.suite), ("variant", self.variant)):
            if not _NAME.match(value):
                raise InputError(f"base image recipe: invalid {what} {value!r}")
        for package in self.packages:
            if not _NAME.match(package):
                raise InputError(f"base image recipe: invalid package name {package!r}")
        if self.builder_version < 1:
            raise InputError("base image recipe: builder_version must be at least 1")
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))

    def canonical(self) -> bytes:
        """The bytes the digest is taken over: sorted-key compact JSON."""
        document = {
            "schema": _RECIPE_SCHEMA,
            "suite": self.suite,
            "variant": self.variant,
            "packages": list(self.packages),
            "builder_version": self.builder_version,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """The recipe's content digest: 64 lowercase hex characters of sha256."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}:{self.digest[:12]}"

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_COMPONENT: "base", LABEL_RECIPE_DIGEST: self.digest}


def rootfs_tarball_path(recipe: BaseImageRecipe, cache_dir: Path) -> Path:
    """Where :func:`ensure_base_image` keeps (and looks for) the recipe's rootfs tarball."""
    return cache_dir / f"base-rootfs-{recipe.digest}.tar"


def debootstrap_argv(recipe: BaseImageRecipe, target: Path, debootstrap: str) -> list[str]:
    """The debootstrap command line; the default mirror is used, never one named here."""
    return [
        debootstrap,
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        recipe.suite,
        str(target),
    ]


def tar_argv(rootfs: Path, dest: Path) -> list[str]:
    """A GNU tar command line for a stable tarball: sorted names, numeric owners."""
    excludes = [f"--exclude={pattern}" for pattern in _TAR_EXCLUDES]
    return [
        "tar",
        "--create",
        f"--file={dest}",
        f"--directory={rootfs}",
        "--numeric-owner",
        "--sort=name",
        "--one-file-system",
        *excludes,
        ".",
    ]


def build_rootfs(
    recipe: BaseImageRecipe,
    dest_tar: Path,
    *,
    debootstrap: Path | None = None,
    timeout_s: float = 900.0,
) -> Path:
    """Build the recipe's rootfs with debootstrap and write it as a tarball (mode 0o600).

    The work happens in a private temporary directory next to ``dest_tar``, removed even on
    failure; ``dest_tar`` appears only when complete. Needs root and debootstrap (``None``
    looks it up on ``PATH``). Raises :class:`ServiceError` when either is missing or a step
    fails.
    """
    if not _is_root():
        raise ServiceError(
            "building the base rootfs needs root (debootstrap); run as root, or put a rootfs "
            f"tarball built elsewhere at {dest_tar}"
        )
    program = str(debootstrap) if debootstrap else shutil.which("debootstrap")
    if program is None or not Path(program).is_file():
        raise ServiceError("debootstrap is not installed; install it (make setup) and retry")
    dest_tar.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=dest_tar.parent))
    try:
        rootfs = work / "rootfs"
        logger.info("building base rootfs %s with debootstrap", recipe.digest[:12])
        _run(debootstrap_argv(recipe, rootfs, program), "debootstrap", timeout_s)
        if not rootfs.is_dir():
            raise ServiceError(f"debootstrap produced no rootfs at {rootfs}")
        rootfs.chmod(0o755)
        partial = work / "rootfs.tar"
        _run(tar_argv(rootfs, partial), "tar", timeout_s)
        partial.chmod(0o600)
        partial.replace(dest_tar)
    finally:
        _remove_tree(work)
    logger.info("wrote base rootfs tarball %s", dest_tar)
    return dest_tar


def split_tag(tag: str) -> tuple[str, str]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); a registry port is not a tag."""
    repository, sep, name = tag.rpartition(":")
    if not sep or not repository or not name or "/" in name:
        raise InputError(f"image tag {tag!r} must look like repository:tag")
    return repository, name


def import_changes(labels: Mapping[str, str]) -> list[str]:
    """The Dockerfile-style changes applied on import: a shell CMD and the labels."""
    changes = ['CMD ["/bin/bash"]']
    for key, value in sorted(labels.items()):
        if any(c in key + value for c in "\n\r\0"):
            raise InputError(f"image label {key!r} contains a control character")
        changes.append(f"LABEL {json.dumps(key)}={json.dumps(value)}")
    return changes


def import_rootfs(client: DockerClient, tarball: Path, tag: str, labels: Mapping[str, str]) -> str:
    """Import a rootfs tarball as image ``tag`` with ``labels``; returns the image id."""
    if not tarball.is_file():
        raise InputError(f"rootfs tarball not found: {tarball}")
    repository, name = split_tag(tag)
    changes = import_changes(labels)
    logger.info("importing %s as %s", tarball.name, tag)
    try:
        with tarball.open("rb") as stream:
            result = client.api.import_image(
                src=stream, repository=repository, tag=name, changes=changes
            )
        _raise_for_stream_error(result, tag)
        image_id: str = client.images.get(tag).id or ""
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _docker_error(f"importing {tarball.name} as {tag}", exc) from exc
    if not image_id:
        raise DockerError(f"importing {tarball.name} as {tag}: the engine reported no image id")
    return image_id


def ensure_base_image(client: DockerClient, recipe: BaseImageRecipe, cache_dir: Path) -> str:
    """Make sure the recipe's image exists; returns its tag.

    Skips everything when the tag exists (and carries the recipe digest), reuses a tarball
    already at :func:`rootfs_tarball_path`, and otherwise builds one there first.
    """
    tag = recipe.tag
    try:
        existing = client.images.get(tag)
    except docker.errors.ImageNotFound:
        existing = None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _docker_error(f"looking up {tag}", exc) from exc
    if existing is not None:
        found = existing.labels.get(LABEL_RECIPE_DIGEST)
        if found != recipe.digest:
            raise ConflictError(
                f"image {tag} exists but was not built from this recipe "
                f"(recipe digest {found!r}); remove it and retry"
            )
        logger.debug("base image %s already present", tag)
        return tag
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tarball = rootfs_tarball_path(recipe, cache_dir)
    if tarball.is_file():
        logger.info("reusing cached base rootfs %s", tarball)
    else:
        build_rootfs(recipe, tarball)
    import_rootfs(client, tarball, tag, recipe.labels)
    return tag


def _is_root() -> bool:
    return os.geteuid() == 0


def _run(argv: Sequence[str], what: str, timeout_s: float) -> None:
    """Run ``argv`` in its own process group; on failure raise with stderr's last line."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ServiceError(f"{what} did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        last = _last_line(stderr.decode(errors="replace"))
        raise ServiceError(f"{what} failed (exit {proc.returncode}): {last}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no error output"
    return lines[-1][:_STDERR_LIMIT]


def _mounts_below(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (debootstrap mounts /proc, /sys, maybe /dev)."""
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    found: list[Path] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if point == path or path in point.parents:
            found.append(point)
    return found


def _remove_tree(path: Path) -> None:
    """Remove a work directory, unmounting leftovers first; never cross into a mount."""
    for point in sorted(_mounts_below(path), key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
    if _mounts_below(path):
        logger.error("not removing %s: something is still mounted below it", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def _raise_for_stream_error(result: object, tag: str) -> None:
    """The import endpoint answers 200 with a JSON stream; errors arrive inside it."""
    text = result.decode(errors="replace") if isinstance(result, bytes) else str(result)
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise DockerError(f"importing {tag}: {message['error']}")


def _docker_error(action: str, exc: Exception) -> DockerError:
    if isinstance(exc, docker.errors.APIError):
        detail = exc.explanation or str(exc)
    elif isinstance(exc, requests.exceptions.ConnectionError):
        detail = "cannot reach the Docker engine (is dockerd running?)"
    else:
        detail = str(exc) or type(exc).__name__
    return DockerError(f"{action}: {detail}")
