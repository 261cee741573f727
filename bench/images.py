"""Offline image builds: service images on an existing base, and the up-to-date no-op.

Measures, in one run on one machine:

* the wheelhouse from this checkout (``pip wheel``; cached when the sources did not change);
* the base image imported from the cached rootfs tarball (the air-gap path: a tarball from a
  transfer bundle), when that tarball exists;
* the service images when the base exists but they do not: the common image (venv installed
  from the wheels, no index, no network) and each thin component image;
* the up-to-date no-op ``ensure_service_images`` from the checkout, median of a few rounds;
* with ``ENCLAVE_BENCH_BASE_FROM_NOTHING=1``: the base image from nothing (debootstrap into a
  fresh tarball + import; needs root and a Debian mirror). Target (issue 6): <= 90 s.

Every image it builds lies under a namespace of its own (``enclave-bench-<random>/...``) and is
removed by tag at the end; an image it did not create is never removed (removing a tag that
another tag shares only untags it).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import docker.errors
from docker import DockerClient

from enclave.images.base import BaseImageRecipe, build_rootfs, import_rootfs, rootfs_tarball_path
from enclave.images.service import (
    WHEELS_CACHE,
    ServiceImageSettings,
    build_service_images,
    connect_engine,
)
from enclave.images.wheels import cached_wheelhouse, ensure_wheelhouse, find_project_root
from support import STATE_DIR, private_dir

NOOP_ROUNDS = 5
FROM_NOTHING = os.environ.get("ENCLAVE_BENCH_BASE_FROM_NOTHING", "") == "1"
CACHE = STATE_DIR / "cache"


def _mb(size: float) -> str:
    return f"{size / 1e6:.0f} MB"


def _remove_tags(client: DockerClient, tags: list[str]) -> None:
    for tag in tags:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag)


def _import_base(client: DockerClient, namespace: str, created: list[str]) -> str:
    recipe = BaseImageRecipe()
    tarball = rootfs_tarball_path(recipe, CACHE)
    if not tarball.is_file():
        return "| base image import from the cached rootfs tarball | - | no tarball cached |"
    tag = f"{namespace}/base:{recipe.digest[:12]}"
    created.append(tag)
    start = time.perf_counter()
    import_rootfs(client, tarball, tag, recipe.labels)
    seconds = time.perf_counter() - start
    return (
        f"| base image import from the cached rootfs tarball ({_mb(tarball.stat().st_size)}) "
        f"| {seconds:.1f} | |"
    )


def base_from_nothing(
    client: DockerClient, namespace: str, created: list[str]
) -> tuple[float, float]:
    """Debootstrap a fresh rootfs tarball and import it as ``<namespace>/base-from-nothing``.

    Returns (debootstrap seconds, total seconds); the tag is appended to ``created`` before
    anything is built, for the caller to remove. Also used by ``bench.enclave_up``.
    """
    recipe = BaseImageRecipe()
    tag = f"{namespace}/base-from-nothing:{recipe.digest[:12]}"
    created.append(tag)
    with tempfile.TemporaryDirectory(prefix="enclave-bench-rootfs-") as tmp:
        start = time.perf_counter()
        tarball = build_rootfs(recipe, Path(tmp) / "rootfs.tar")
        built = time.perf_counter() - start
        import_rootfs(client, tarball, tag, recipe.labels)
        seconds = time.perf_counter() - start
    return built, seconds


def _base_from_nothing(client: DockerClient, namespace: str, created: list[str]) -> str:
    if not FROM_NOTHING:
        return (
            "| base image from nothing (debootstrap + import) | - | set "
            "ENCLAVE_BENCH_BASE_FROM_NOTHING=1; target <= 90 s |"
        )
    built, seconds = base_from_nothing(client, namespace, created)
    return (
        f"| base image from nothing (debootstrap {built:.1f} s + import) | {seconds:.1f} "
        "| target <= 90 s |"
    )


def main() -> None:
    root = find_project_root()
    if root is None:
        raise SystemExit("bench.images needs the source checkout (an editable install)")
    cache = private_dir(CACHE)
    namespace = f"enclave-bench-{uuid.uuid4().hex[:8]}"
    settings = ServiceImageSettings(namespace=namespace)
    created: list[str] = []
    rows: list[str] = []
    client = connect_engine()
    try:
        fresh = cached_wheelhouse(root, cache / WHEELS_CACHE) is None
        start = time.perf_counter()
        house = ensure_wheelhouse(root, cache / WHEELS_CACHE)
        wheel_bytes = sum((house.directory / w.filename).stat().st_size for w in house.wheels)
        rows.append(
            f"| wheelhouse from the checkout ({len(house.wheels)} wheels, {_mb(wheel_bytes)}) "
            f"| {time.perf_counter() - start:.1f} | {'built' if fresh else 'cached'} |"
        )
        rows.append(_import_base(client, namespace, created))

        first = build_service_images(
            client,
            cache_dir=cache,
            wheelhouse=house.directory,
            settings=settings,
            progress=lambda _what, tag: created.append(tag),
        )
        built = [o for o in first.images if o.built]
        assert [o.component for o in built] == ["common", *(c.name for c in settings.components)]
        parts = ", ".join(f"{o.component} {o.seconds:.1f} s" for o in built)
        total = sum(o.seconds for o in built)
        rows.append(
            f"| service images, base present ({len(built)} images) | {total:.1f} | {parts} |"
        )

        noop: list[float] = []
        rebuilt = 0
        for _ in range(NOOP_ROUNDS):
            start = time.perf_counter()
            again = build_service_images(
                client,
                cache_dir=cache,
                project_root=root,
                settings=settings,
                progress=lambda _what, tag: created.append(tag),
            )
            noop.append(time.perf_counter() - start)
            rebuilt += sum(o.built for o in again.images) + again.wheelhouse_built
        note = f"max {max(noop):.2f} s" + (
            f"; INVALID: {rebuilt} rebuilds (the sources changed during the run)" if rebuilt else ""
        )
        rows.append(
            f"| up-to-date no-op from the checkout, median of {NOOP_ROUNDS} "
            f"| {statistics.median(noop):.2f} | {note} |"
        )
        rows.append(_base_from_nothing(client, namespace, created))

        base = client.images.get(first.images[0].tag)
        common = client.images.get(first.images[1].tag)
        venv = common.attrs["Size"] - base.attrs["Size"]
    finally:
        _remove_tags(client, [tag for tag in reversed(created) if tag.startswith(namespace)])
        client.close()
    print("offline images (docker classic builder, no network for RUN steps)")
    print("| measure | seconds | note |")
    print("| --- | --- | --- |")
    for row in rows:
        print(row)
    print()
    print("| image | size |")
    print("| --- | --- |")
    print(f"| base | {_mb(base.attrs['Size'])} |")
    print(
        f"| common = each component (layers shared; user + venv add {_mb(venv)}) "
        f"| {_mb(common.attrs['Size'])} |"
    )
