"""The shutdown controller as a host process: start it detached, find it, stop it.

``enclave up`` starts ``enclave controller run`` for the enclave as a host process (it will
need the Docker API to stop containers; a container holding the Docker socket would hold far
more). It is started in its own session so it outlives the command that started it, with its
Vault bootstrap material written to its stdin and its output appended to
``<state>/enclaves/<name>/controller.log`` (0600). Its pid is kept in ``controller.pid``; a
pid is trusted only while ``/proc/<pid>/cmdline`` still names the controller of that enclave,
so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave.errors import EnclaveError

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.spec import LoadedSpec

__all__ = ["describe", "ensure", "running", "stop"]

START_GRACE = 0.5
"""Seconds a new controller must stay up before it counts as started."""
STOP_TIMEOUT = 5.0


def _dir(state_dir: Path, name: str) -> Path:
    return state_dir / "enclaves" / name


def pid_file(state_dir: Path, name: str) -> Path:
    return _dir(state_dir, name) / "controller.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return _dir(state_dir, name) / "controller.log"


def controller_argv(loaded: LoadedSpec, state_dir: Path, gateway_url: str) -> list[str]:
    script = Path(sys.executable).with_name("enclave")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "enclave.cli.main"]
    return [
        *entry,
        "--state-dir", str(state_dir),
        "--log-format", "json",
        "controller", "run",
        "--spec", str(loaded.source.resolve()),
        "--gateway", gateway_url,
        "--bootstrap", "-",
    ]  # fmt: skip


def running(state_dir: Path, name: str) -> int | None:
    """The pid of enclave ``name``'s controller, when one runs."""
    try:
        pid = int(json.loads(pid_file(state_dir, name).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _is_controller(pid, name) else None


def _is_controller(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # exited, not yet reaped
        return False
    words = [a.decode("utf-8", "replace") for a in argv]
    spec_named = any(w.endswith((".yaml", ".yml")) for w in words)
    return "controller" in words and "run" in words and spec_named and _names(words, name)


def _names(words: list[str], name: str) -> bool:
    """Whether the argv is this enclave's (its state dir holds enclaves/<name>/controller.pid)."""
    try:
        state = words[words.index("--state-dir") + 1]
    except (ValueError, IndexError):
        return False
    return (Path(state) / "enclaves" / name / "controller.pid").exists()


def ensure(
    loaded: LoadedSpec,
    state_dir: Path,
    gateway_url: str,
    material: Callable[[], bytes],
) -> bool:
    """Start the controller unless it runs; True when this call started it."""
    name = loaded.name
    if running(state_dir, name) is not None:
        return False
    directory = _dir(state_dir, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = log_file(state_dir, name)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            controller_argv(loaded, state_dir, gateway_url)[0],
            controller_argv(loaded, state_dir, gateway_url),
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(read_end)
        os.close(log_fd)
    try:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(material())
    except BrokenPipeError:
        pass
    pid_file(state_dir, name).write_text(json.dumps({"pid": pid}) + "\n")
    time.sleep(START_GRACE)
    if not _is_controller(pid, name):
        _reap(pid)
        raise EnclaveError(
            f"the shutdown controller of {name} exited at start: {_last_line(log_path)}"
        )
    return True


def stop(state_dir: Path, name: str) -> bool:
    """Stop the controller (SIGTERM, then SIGKILL); True when one was running."""
    pid = running(state_dir, name)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            pid_file(state_dir, name).unlink()
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _is_controller(pid, name):
        _reap(pid)
        time.sleep(0.05)
    if _is_controller(pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pid)
    with contextlib.suppress(FileNotFoundError):
        pid_file(state_dir, name).unlink()
    return True


def describe(state_dir: Path, name: str) -> dict[str, Any]:
    pid = running(state_dir, name)
    return {"running": pid is not None, "pid": pid, "log": str(log_file(state_dir, name))}


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child (a controller started by this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "no output"
    last = lines[-1]
    with contextlib.suppress(ValueError):
        record = json.loads(last)
        if isinstance(record, dict) and "message" in record:
            last = str(record["message"])
    return last[:300]
