"""Checks of command-line values that every command shares, made before anything is touched.

Each raises :class:`~enclave.errors.InputError` (exit 2) with one line naming the argument or
option and what is wrong with its value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from enclave.errors import InputError
from enclave.spec.units import check_name

if TYPE_CHECKING:
    from pathlib import Path


def enclave_name(value: str) -> str:
    """An enclave's name as an argument: a DNS-1123 label (it names files and objects)."""
    return name(value, "NAME")


def optional_enclave_name(value: str | None) -> str | None:
    """:func:`enclave_name`, for an argument that may be left out."""
    return None if value is None else enclave_name(value)


def name(value: str, what: str) -> str:
    """``value`` if it is a DNS-1123 label; ``what`` (the argument or option) names it."""
    try:
        return check_name(value)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def http_url(value: str, what: str) -> str:
    """``value`` if it is an http(s) URL with a host and a valid port."""
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        raise InputError(f"{what} {value!r}: the port must be 1-65535") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InputError(f"{what} {value!r}: expected an http:// or https:// URL with a host")
    if port == 0:
        raise InputError(f"{what} {value!r}: the port must be 1-65535")
    return value


def port(value: int | None, what: str = "--port") -> int | None:
    """``value`` if it is a TCP port (0: any free one)."""
    if value is not None and not 0 <= value <= 65535:
        raise InputError(f"{what} {value}: must be between 0 and 65535")
    return value


def directory(path: Path | None, what: str) -> Path | None:
    """``path`` if it is an existing directory."""
    if path is not None and not path.is_dir():
        problem = "not a directory" if path.exists() else "no such directory"
        raise InputError(f"{what} {path}: {problem}")
    return path


def output_file(path: Path, what: str) -> Path:
    """``path`` if a file can be written there: its directory exists, it is no directory."""
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        problem = "not a directory" if parent.exists() else "no such directory"
        raise InputError(f"{what} {path}: {parent}: {problem}")
    return path
