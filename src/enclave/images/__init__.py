"""Offline image builds: no registry, a local rootfs tarball is imported into Docker."""

from __future__ import annotations

from enclave.images.base import (
    BaseImageRecipe,
    build_rootfs,
    ensure_base_image,
    import_rootfs,
    rootfs_tarball_path,
)

__all__ = [
    "BaseImageRecipe",
    "build_rootfs",
    "ensure_base_image",
    "import_rootfs",
    "rootfs_tarball_path",
]
