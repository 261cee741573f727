"""Reading a secret (a token, a key) the user hands over in a file, never in argv or the env."""

from __future__ import annotations

import stat
from pathlib import Path

from enclave.errors import InputError

MAX_SECRET_FILE = 64 * 1024


def read_secret_file(path: Path, option: str) -> str:
    """The one-line secret in ``path``; refuses a file others can read, or an empty one."""
    what = f"{option} {path}"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what}: not a regular file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise InputError(f"{what}: readable by others (run: chmod 600 {path})")
        if info.st_size > MAX_SECRET_FILE:
            raise InputError(f"{what}: too large")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"{what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what}: not a text file") from None
    if not text or any(c.isspace() for c in text):
        raise InputError(f"{what}: expected exactly one line")
    return text
