"""Tests against real services: the Docker engine and OpenBao."""

from __future__ import annotations
