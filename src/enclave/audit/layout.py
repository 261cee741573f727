"""Where an audit log keeps its files, and reading them back line by line.

::

    <log>/log.json             format, log id, enclave, creation time
    <log>/seg-<first seq>.jsonl append-only segments of records (one JSON line each)
    <log>/checkpoints.jsonl     signed checkpoints, one per line
    <log>/audit.pub             the checkpoint signer's public key (PEM); after a change of
                                signer, every key the log was signed with, oldest first
    <log>/lock                  held (flock) by the one process writing the log
    <log>/quarantine/           torn tails cut off after a crash, kept as evidence

Everything is owner-only: the directory 0700, files 0600 (the public key 0644).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from enclave.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator

LOG_FORMAT = "enclave-audit-log/v1"
_SEGMENT = re.compile(r"^seg-(\d{16})\.jsonl$")
READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LogMeta:
    log_id: str
    enclave: str
    created: str


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "log.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints.jsonl"

    @property
    def public_key(self) -> Path:
        return self.root / "audit.pub"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def segment(self, first_seq: int) -> Path:
        return self.root / f"seg-{first_seq:016d}.jsonl"

    def segments(self) -> list[tuple[int, Path]]:
        """``(first seq, path)`` of every segment, in order."""
        found = []
        for entry in os.scandir(self.root):
            match = _SEGMENT.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), Path(entry.path)))
        return sorted(found)

    def read_meta(self) -> LogMeta:
        try:
            data = json.loads(self.meta.read_bytes())
            if data.get("format") != LOG_FORMAT:
                raise InputError(f"{self.meta}: not an {LOG_FORMAT} log")
            return LogMeta(str(data["log_id"]), str(data["enclave"]), str(data["created"]))
        except FileNotFoundError:
            raise InputError(f"{self.root}: not an audit log (no log.json)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{self.meta}: unreadable ({type(exc).__name__})") from None

    def write_meta(self, meta: LogMeta) -> None:
        data = {
            "format": LOG_FORMAT,
            "log_id": meta.log_id,
            "enclave": meta.enclave,
            "created": meta.created,
        }
        write_file(self.meta, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (a full disk)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of each line; the last one may lack its newline (torn)."""
    offset = 0
    with path.open("rb", buffering=READ_CHUNK) as handle:
        for line in handle:
            yield offset, line
            offset += len(line)
