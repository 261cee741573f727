"""Fixtures for unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.workspace import Workspace, make_workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A temp directory with the usage catalog in place; writes spec files."""
    return make_workspace(tmp_path)
