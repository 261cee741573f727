"""The automatic kill triggers' inputs: the gateway's audit stream and the violation rate.

:class:`AuditTail` follows an audit log that *another* process writes (the gateway's), reading
only: it never opens the log for writing, takes no lock and changes no file. Each
:meth:`~AuditTail.poll` returns the complete records written since the last one, following the
log across segment rotation; a line still being written is left for the next poll. It starts
at the beginning of the newest segment, so a restarted controller still sees the violations of
the last minute.

:class:`ViolationWindow` counts policy violations (a request or an output denied as a
prohibited use, or a declared prohibited purpose: the records the gateway writes with reason
``prohibited_use``, or ``purpose_not_permitted`` naming a ``use``) in a sliding window (a
minute), by each record's own time. More than ``spec.shutdown.violationsPerMinute`` in the
window triggers a kill.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave.audit.layout import Layout
from enclave.audit.reader import record_time
from enclave.audit.record import AuditRecord, Decision, decode
from enclave.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["AuditTail", "Violation", "ViolationWindow", "is_violation"]

WINDOW = 60.0
"""Seconds the violation rate is counted over."""
PROHIBITED_USE = "prohibited_use"
PURPOSE_NOT_PERMITTED = "purpose_not_permitted"


def is_violation(record: AuditRecord) -> bool:
    """Whether the gateway's ``record`` is a policy violation (what the kill trigger counts)."""
    if record.decision is not Decision.DENY:
        return False
    if record.reason == PROHIBITED_USE:
        return True
    return record.reason == PURPOSE_NOT_PERMITTED and bool((record.details or {}).get("use"))


class AuditTail:
    """New complete records of the audit log at ``root``, read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_id: str | None = None
        self._segment: int | None = None
        self._offset = 0

    def poll(self) -> list[AuditRecord]:
        """Records written since the last poll (none while the log does not exist yet)."""
        layout = Layout(self.root)
        try:
            if self.log_id is None:
                self.log_id = layout.read_meta().log_id
            segments = layout.segments()
        except (InputError, FileNotFoundError):
            return []
        if not segments:
            return []
        if self._segment is None:
            self._segment, self._offset = segments[-1][0], 0
        found: list[AuditRecord] = []
        for first_seq, path in segments:
            if first_seq < self._segment:
                continue
            if first_seq > self._segment:
                self._segment, self._offset = first_seq, 0
            found.extend(self._read(path))
        return found

    def _read(self, path: Path) -> list[AuditRecord]:
        found: list[AuditRecord] = []
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return found
        with handle:
            handle.seek(self._offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written: read it next time
                at = self._offset
                self._offset += len(line)
                try:
                    found.append(decode(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("gateway audit log %s: unreadable record at byte %d", path, at)
        return found


@dataclass(frozen=True, slots=True)
class Violation:
    at: float
    """The record's time (seconds since the epoch)."""
    seq: int
    use: str


class ViolationWindow:
    """Violations in the last ``window`` seconds."""

    def __init__(self, limit: int, *, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._seen: deque[Violation] = deque()
        self._since = float("-inf")

    def add(self, record: AuditRecord) -> bool:
        """Count ``record`` if it is a violation newer than the last :meth:`reset`."""
        if not is_violation(record):
            return False
        at = record_time(record).timestamp()
        if at < self._since:
            return False
        use = str((record.details or {}).get("use") or "-")
        self._seen.append(Violation(at, record.seq, use))
        return True

    def current(self, now: float) -> list[Violation]:
        """The violations of the window ending ``now``."""
        while self._seen and self._seen[0].at <= now - self.window:
            self._seen.popleft()
        return list(self._seen)

    def exceeded(self, now: float) -> list[Violation] | None:
        """The window's violations when there are more than ``limit``; None otherwise."""
        current = self.current(now)
        return current if len(current) > self.limit else None

    def reset(self, since: float) -> None:
        """Forget everything, and ignore records older than ``since`` from now on."""
        self._seen.clear()
        self._since = since
