"""Settings every command shares, resolved once by the entry point and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_state_dir() -> Path:
    """``/var/lib/enclave`` for root, else ``$XDG_STATE_HOME/enclave`` (``~/.local/state``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/enclave")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "enclave"


@dataclass(slots=True)
class CliContext:
    """What the global options decided. ``state_dir`` holds enclave's private state (0700)."""

    state_dir: Path


CONTEXT = CliContext(state_dir=default_state_dir())


def state_dir() -> Path:
    """The state directory, created owner-only on first use."""
    CONTEXT.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return CONTEXT.state_dir
