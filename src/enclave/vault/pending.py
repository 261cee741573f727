"""Provisioning's rollback journal, kept on disk until the rollback is complete.

:func:`enclave.vault.provision.provision` records each object *before* it creates (or changes)
it, with how to undo that (an :class:`Undo`); a failed run undoes them, newest first. When
Vault was sealed or went away mid-way, it refuses the rollback too: the steps it could not
undo stay in a journal file under the state directory, and the next admin connection to that
Vault finishes them (:meth:`PendingRollbacks.finish`; the embedded Vault's start, ``enclave
up``, ``enclave vault provision`` and every other command holding an admin client do). Every
step is idempotent: undoing something that is already gone succeeds.

::

    <dir>/<enclave>@<vault id>.jsonl   0600  a header line {format, enclave, vault, started},
                                             then {"step": ...} before each object is made and
                                             {"undone": n} as step n is undone

``<dir>`` is ``<state>/vault/rollbacks`` for the embedded Vault and ``<state>/vault-rollbacks``
for an external one; ``<vault id>`` is a digest of the Vault's address, so that a journal is
only ever finished against the Vault it was written for. The file is only ever appended to
(each line fsynced; a torn last line is a step that never began) and exists only while a run
is going on or its rollback is unfinished: a run creates it with its first step and removes it
when it succeeds or its rollback completes. The run holds an ``flock`` on it all along, and
:meth:`PendingRollbacks.finish` leaves a locked journal alone. A journal holds names and
settings (paths, policy text, role settings), never a secret value.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from enclave.errors import EnclaveError, VaultError, VaultNotFoundError
from enclave.vault.client import translate
from enclave.vault.names import EnclavePaths
from enclave.vault.policies import owned_policy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Undo:
    """How to undo one provisioning step: ``op`` with its arguments, and what it is about."""

    op: str
    what: str
    args: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "what": self.what, "args": self.args}

    @classmethod
    def from_dict(cls, data: Any, paths: EnclavePaths) -> Undo:
        """A step read back from a journal; only ever about ``paths``' own objects, so that an
        edited journal cannot turn an admin connection against anything else."""
        if not isinstance(data, dict) or data.get("op") not in _OPS:
            raise ValueError("not an undo step")
        args = data.get("args") or {}
        if not isinstance(args, dict) or not _own(str(data["op"]), args, paths):
            raise ValueError("an undo step about objects of another enclave")
        return cls(str(data["op"]), str(data["what"]), args)

    def run(self, client: Any, enclave: str) -> None:
        """Undo the step; raises :class:`VaultError` (nothing else) when Vault refuses."""
        try:
            with translate(f"rollback: {self.doing}"):
                _OPS[self.op](client, EnclavePaths(enclave), **self.args)
        except VaultNotFoundError:
            pass  # already gone (or its mount is): nothing left to undo

    @property
    def doing(self) -> str:
        return f"{'restore' if self.op.startswith('restore') else 'remove'} {self.what}"


def _disable_mount(client: Any, _paths: EnclavePaths, path: str) -> None:
    client.sys.disable_secrets_engine(path)


def _delete_transit_key(client: Any, _paths: EnclavePaths, mount: str, name: str) -> None:
    transit = client.secrets.transit
    transit.read_key(name=name, mount_point=mount)  # absent: not found, nothing to do
    transit.update_key_configuration(name=name, deletion_allowed=True, mount_point=mount)
    transit.delete_key(name=name, mount_point=mount)


def _delete_secret(client: Any, _paths: EnclavePaths, mount: str, path: str) -> None:
    client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)


def _disable_auth(client: Any, _paths: EnclavePaths, path: str) -> None:
    client.sys.disable_auth_method(path)


def _delete_policy(client: Any, paths: EnclavePaths, name: str) -> None:
    current = client.sys.read_acl_policy(name)["data"]  # absent: not found, nothing to do
    if owned_policy(paths, str(current.get("policy", ""))):  # never another enclave's
        client.sys.delete_acl_policy(name)


def _restore_policy(client: Any, _paths: EnclavePaths, name: str, policy: str) -> None:
    client.sys.create_or_update_acl_policy(name, policy)


def _delete_role(client: Any, _paths: EnclavePaths, mount: str, role: str) -> None:
    client.auth.approle.delete_role(role_name=role, mount_point=mount)


def _restore_role(
    client: Any, _paths: EnclavePaths, mount: str, role: str, settings: dict[str, Any]
) -> None:
    client.auth.approle.create_or_update_approle(role, mount_point=mount, **settings)


_OPS: dict[str, Any] = {
    "disable-mount": _disable_mount,
    "delete-transit-key": _delete_transit_key,
    "delete-secret": _delete_secret,
    "disable-auth": _disable_auth,
    "delete-policy": _delete_policy,
    "restore-policy": _restore_policy,
    "delete-role": _delete_role,
    "restore-role": _restore_role,
}


def _own(op: str, args: dict[str, Any], paths: EnclavePaths) -> bool:
    """Whether a step's arguments name only the enclave's own mounts, policies and roles."""
    auth = {paths.workload_auth, paths.control_auth}
    if op == "disable-mount":
        return args.get("path") in {paths.kv, paths.transit}
    if op == "delete-transit-key":
        return args.get("mount") == paths.transit
    if op == "delete-secret":
        return args.get("mount") == paths.kv
    if op == "disable-auth":
        return args.get("path") in auth
    if op in {"delete-policy", "restore-policy"}:
        return str(args.get("name", "")).startswith(f"{paths.prefix}-")
    return args.get("mount") in auth  # delete-role, restore-role


@dataclass(frozen=True, slots=True)
class FinishedRollback:
    """What :meth:`PendingRollbacks.finish` did for one enclave."""

    enclave: str
    undone: tuple[str, ...]
    left: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.left


class RollbackJournal:
    """One provisioning run's undo steps, newest last.

    With a ``path`` the steps are also appended to that file (created, and locked, with the
    first step) until :meth:`close` or a complete :meth:`rollback` removes it.
    """

    def __init__(self, enclave: str, path: Path | None = None, vault: str = "") -> None:
        self.enclave = enclave
        self.path = path
        self.vault = vault
        self.steps: list[Undo] = []
        self._undone: set[int] = set()
        self._fd = -1

    @property
    def remaining(self) -> list[Undo]:
        """The steps not undone yet, oldest first."""
        return [step for n, step in enumerate(self.steps) if n not in self._undone]

    def record(self, step: Undo) -> None:
        """Add ``step``; it is on disk before this returns (so before the object exists)."""
        if self.path is not None and self._fd < 0:
            self._create()
        self.steps.append(step)
        self._append({"step": step.as_dict()})

    def rollback(self, client: Any) -> list[Undo]:
        """Undo what is left, newest first, each on its own; returns what still is.

        When nothing is left the journal's file is removed.
        """
        left = []
        for n in reversed(range(len(self.steps))):
            if n in self._undone:
                continue
            try:
                self.steps[n].run(client, self.enclave)
            except EnclaveError as exc:
                log.warning("%s", exc)
                left.append(self.steps[n])
                continue
            self._undone.add(n)
            self._append({"undone": n})
        if not left:
            self.close()
        return left

    def close(self) -> None:
        """Nothing (more) to undo: remove the file (and its directory, if now empty)."""
        if self._fd >= 0:
            if self.path is not None:
                self.path.unlink(missing_ok=True)  # while the lock is still held
                with contextlib.suppress(OSError):  # not empty: other journals are pending
                    self.path.parent.rmdir()
            self.release()

    def release(self) -> None:
        """Let go of the file (and its lock), keeping it: what it lists is still to be undone."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _create(self) -> None:
        assert self.path is not None  # noqa: S101 - only called with a path
        while True:
            _private_dirs(self.path.parent)
            try:
                fd = _open_locked(self.path, wait=True)
                break
            except FileNotFoundError:  # another run removed the emptied directory meanwhile
                continue
        if os.fstat(fd).st_size:  # the earlier run's journal could not be read: keep it
            os.close(fd)
            raise VaultError(
                f"vault: provision enclave {self.enclave}: an unreadable rollback journal "
                f"{self.path} is in the way; remove it and run `enclave vault teardown`"
            )
        self._fd = fd
        header = {
            "format": JOURNAL_FORMAT,
            "enclave": self.enclave,
            "vault": self.vault,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._append(header)

    def _append(self, entry: dict[str, Any]) -> None:
        if self._fd < 0:
            return
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    @classmethod
    def adopt(cls, fd: int, path: Path, enclave: str) -> RollbackJournal:
        """``enclave``'s journal in ``path``, whose locked descriptor ``fd`` it takes over."""
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                handle.seek(0)
                lines = handle.read().split(b"\n")
            header = json.loads(lines[0])
            if header.get("format") != JOURNAL_FORMAT:
                raise ValueError("format")  # noqa: TRY301 - one message for every problem
            if header["enclave"] != enclave:
                raise ValueError("the journal of another enclave")  # noqa: TRY301
            journal = cls(enclave, path, str(header.get("vault", "")))
            paths = EnclavePaths(enclave)
            body = [raw for raw in lines[1:] if raw]
            for number, raw in enumerate(body, 1):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    if number == len(body):
                        break  # the torn last line of a crash: that step never began
                    raise
                if "step" in entry:
                    journal.steps.append(Undo.from_dict(entry["step"], paths))
                elif "undone" in entry:
                    journal._undone.add(int(entry["undone"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VaultError(
                f"vault: the rollback journal {path} is unreadable ({type(exc).__name__}); "
                "remove it and run `enclave vault teardown` for its enclave"
            ) from None
        journal._fd = fd
        os.lseek(fd, 0, os.SEEK_END)
        return journal


class PendingRollbacks:
    """The rollback journals of one Vault (by address), in one directory."""

    def __init__(self, directory: Path, vault: str) -> None:
        self.directory = directory
        self.vault = vault
        self._suffix = "@" + hashlib.sha256(vault.encode()).hexdigest()[:12] + ".jsonl"

    @classmethod
    def external(cls, state_dir: Path, address: str) -> PendingRollbacks:
        """The journals of the external Vault at ``address``."""
        return cls(state_dir / "vault-rollbacks", address)

    def path(self, enclave: str) -> Path:
        return self.directory / f"{enclave}{self._suffix}"

    @contextlib.contextmanager
    def journal(self, client: Any, enclave: str) -> Iterator[RollbackJournal]:
        """A new journal for a provisioning run of ``enclave``.

        An earlier run's unfinished rollback is finished first (with ``client``); if that still
        cannot be done, :class:`VaultError` says what is left and the new run does not start.
        Nothing is written until the run records its first step.
        """
        earlier = self._take(enclave, wait=True)
        if earlier is not None:
            count = len(earlier.remaining)
            left = earlier.rollback(client)
            _report(enclave, count - len(left), left)
            if left:
                earlier.release()
                raise VaultError(
                    f"vault: provision enclave {enclave}: the rollback of an earlier failed "
                    f"run is still incomplete ({', '.join(step.doing for step in left)})"
                )
        journal = RollbackJournal(enclave, self.path(enclave), self.vault)
        try:
            yield journal
        finally:
            journal.release()

    def pending(self) -> list[str]:
        """Enclaves with a journal here (their rollback is not finished, or a run is going on)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            entry.name.removesuffix(self._suffix)
            for entry in self.directory.iterdir()
            if entry.name.endswith(self._suffix)
        )

    def finish(self, client: Any) -> list[FinishedRollback]:
        """Finish every pending rollback here with ``client``; each one logged on one line.

        A journal whose run is still going on (it holds the file's lock) is left alone.
        """
        done = []
        for name in self.pending():
            journal = self._take(name, wait=False)
            if journal is None:
                continue
            steps = [step.doing for step in journal.remaining]
            left = journal.rollback(client)
            journal.release()
            _report(name, len(steps) - len(left), left)
            gone = {step.doing for step in left}
            done.append(
                FinishedRollback(
                    name,
                    tuple(s for s in steps if s not in gone),
                    tuple(step.doing for step in left),
                )
            )
        return done

    def _take(self, enclave: str, *, wait: bool) -> RollbackJournal | None:
        """The journal of ``enclave`` with its lock, or None (none, or a run holds it)."""
        path = self.path(enclave)
        if not path.exists():
            return None
        try:
            fd = _open_locked(path, wait=wait, create=False)
        except (BlockingIOError, FileNotFoundError):
            return None
        if os.fstat(fd).st_size == 0:  # created by a run that has not recorded a step yet
            os.close(fd)
            return None
        try:
            return RollbackJournal.adopt(fd, path, enclave)
        except VaultError as exc:  # never block every command on one damaged file
            os.close(fd)
            log.warning("%s", exc)
            return None


def _report(enclave: str, undone: int, left: list[Undo]) -> None:
    if left:
        log.warning(
            "vault: the rollback of enclave %s's failed provisioning is still incomplete (%s left)",
            enclave,
            ", ".join(step.doing for step in left),
        )
        return
    log.warning(
        "vault: finished the rollback of enclave %s's failed provisioning now that Vault is "
        "back (%d step(s) undone)",
        enclave,
        undone,
    )


def _private_dirs(path: Path) -> None:
    """``path`` and every missing directory above it, each created owner-only (0700)."""
    missing = [path, *path.parents]
    for directory in reversed([d for d in missing if not d.exists()]):
        directory.mkdir(mode=0o700, exist_ok=True)


def _open_locked(path: Path, *, wait: bool, create: bool = True) -> int:
    """``path`` opened for appending and locked; retried if it was replaced or removed while
    we waited (a finished run removes its journal while it holds the lock)."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            current = path.stat()
        except FileNotFoundError:
            os.close(fd)
            if not create:
                raise
            continue
        except BaseException:
            os.close(fd)
            raise
        if held.st_nlink and (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            return fd
        os.close(fd)
        if not create:
            raise FileNotFoundError(path)
