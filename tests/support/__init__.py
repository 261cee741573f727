"""Test harness for real services: the Docker engine and an OpenBao server.

Fixtures live in ``tests/conftest.py``; the helpers they use live here so that they are typed
and importable (``from support.docker_engine import DockerResources``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The project root (the directory holding pyproject.toml)."""

STATE_DIR = REPO_ROOT / ".state"
"""Ignored, owner-only working state: caches, logs."""


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def service_missing(reason: str) -> NoReturn:
    """A real service a test needs is unavailable: skip locally, fail in CI.

    In CI a missing Docker engine or OpenBao is a broken environment, never a reason to
    silently pass.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(reason)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) owner-only (0o700) and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
