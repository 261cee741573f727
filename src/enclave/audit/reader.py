"""Reading an audit log: every record, the last N, or those matching filters.

Reading does not verify (``verify_log`` does); a line that cannot be parsed stops the read with
an :class:`~enclave.errors.IntegrityError` naming it, rather than being skipped silently.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from enclave.audit.layout import Layout, iter_lines
from enclave.audit.record import AuditRecord, Decision, decode
from enclave.errors import InputError, IntegrityError
from enclave.spec.units import parse_duration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def iter_records(path: Path, *, start: int = 1) -> Iterator[AuditRecord]:
    """Every complete record of the log at ``path`` with ``seq >= start``, in order."""
    layout = Layout(path)
    layout.read_meta()
    segments = layout.segments()
    for index, (first_seq, segment) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= start:
            continue
        for offset, line in iter_lines(segment):
            if not line.endswith(b"\n"):
                return  # a torn tail is not a record
            if first_seq < start and not _seq_at_least(line, start):
                continue
            try:
                yield decode(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(
                    f"{segment}: unreadable record at byte {offset} ({type(exc).__name__}); "
                    "run `enclave audit verify`"
                ) from None


def _seq_at_least(line: bytes, start: int) -> bool:
    comma = line.find(b",", 13)
    digits = line[13:comma]
    return digits.isdigit() and int(digits) >= start


def tail(path: Path, count: int) -> list[AuditRecord]:
    """The last ``count`` records."""
    # a count beyond what a deque can hold means every record
    return list(deque(iter_records(path), maxlen=min(max(count, 0), sys.maxsize)))


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (``2026-11-27T10:00:00Z``) or an age (``15m``, ``2h``, ``7d`` ago)."""
    now = now or datetime.now(UTC)
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"invalid time {text!r} (use ISO-8601 like 2026-11-27T10:00:00Z, or an age like 2h)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_seq_range(text: str) -> tuple[int, int | None]:
    """``42`` -> (42, 42); ``40-50`` -> (40, 50); ``40-`` -> (40, None)."""
    first, dash, last = text.partition("-")
    try:
        start = int(first)
        end = (int(last) if last else None) if dash else start
    except ValueError:
        raise InputError(f"invalid sequence range {text!r} (use N, N-M or N-)") from None
    if start < 1 or (end is not None and end < start):
        raise InputError(f"invalid sequence range {text!r} (use N, N-M or N-)")
    return start, end


def record_time(record: AuditRecord) -> datetime:
    return datetime.fromisoformat(record.time.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Filters:
    """Search criteria; ``None`` matches anything. ``action`` may end in ``*`` (a prefix)."""

    actor: str | None = None
    action: str | None = None
    decision: Decision | None = None
    since: datetime | None = None
    until: datetime | None = None
    first_seq: int = 1
    last_seq: int | None = None

    def matches(self, record: AuditRecord) -> bool:
        return (
            record.seq >= self.first_seq
            and (self.last_seq is None or record.seq <= self.last_seq)
            and (self.actor is None or record.actor == self.actor)
            and self._action_matches(record.action)
            and (self.decision is None or record.decision is self.decision)
            and self._time_matches(record)
        )

    def _action_matches(self, action: str) -> bool:
        if self.action is None:
            return True
        if self.action.endswith("*"):
            return action.startswith(self.action[:-1])
        return action == self.action

    def _time_matches(self, record: AuditRecord) -> bool:
        if self.since is None and self.until is None:
            return True
        when = record_time(record)
        return (self.since is None or when >= self.since) and (
            self.until is None or when <= self.until
        )


def search(path: Path, filters: Filters, *, limit: int | None = None) -> list[AuditRecord]:
    """Records matching ``filters``, oldest first, at most ``limit``."""
    found: list[AuditRecord] = []
    for record in iter_records(path, start=filters.first_seq):
        if filters.last_seq is not None and record.seq > filters.last_seq:
            break
        if filters.matches(record):
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
    return found


def to_json_line(record: AuditRecord) -> str:
    return json.dumps(record.as_dict(), separators=(",", ":"))


__all__ = [
    "Filters",
    "iter_records",
    "parse_when",
    "record_time",
    "search",
    "tail",
    "to_json_line",
]
