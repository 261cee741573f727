"""The incident index: a cache of summaries, kept up to date with the log; listing and loading."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from enclave.audit.export import is_bundle
from enclave.audit.incidents.fields import _expect, _int, _str
from enclave.audit.incidents.model import INDEX_FORMAT, Incident, IncidentStatus, IncidentSummary
from enclave.audit.incidents.replay import (
    _advance_summary,
    _incident_changes,
    _load,
    _stored_hash,
)
from enclave.audit.layout import Layout
from enclave.errors import EnclaveError, InputError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Index:
    log_id: str
    through: int = 0
    head: str = ""
    summaries: dict[str, IncidentSummary] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = {
            "format": INDEX_FORMAT,
            "log_id": self.log_id,
            "through": self.through,
            "head": self.head,
            "incidents": [s.as_dict() for s in self.summaries.values()],
        }
        return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def index_path(log_path: Path) -> Path:
    """Where the incident index of the log at ``log_path`` is kept."""
    return log_path / "incidents" / "index.json"


def _read_index(log_path: Path, log_id: str) -> _Index | None:
    path = index_path(log_path)
    try:
        data = json.loads(path.read_bytes())
        _expect(data.get("format") == INDEX_FORMAT, "another format")
        _expect(data.get("log_id") == log_id, "the index of another log")
        index = _Index(log_id, _int(data, "through"), _str(data, "head"))
        for item in data["incidents"]:
            summary = IncidentSummary.from_dict(item)
            index.summaries[summary.id] = summary
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError) as exc:
        log.info("incident index %s is unusable (%s); rebuilding it", path, exc)
        return None
    return index


def _save_index(log_path: Path, index: _Index) -> None:
    """Write the index atomically (owner-only); a cache, so not fsync-ed."""
    path = index_path(log_path)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(index.to_bytes())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _try_save_index(log_path: Path, index: _Index) -> None:
    try:
        _save_index(log_path, index)
    except OSError as exc:
        log.info("could not write the incident index of %s: %s", log_path, exc)


def _catch_up(layout: Layout, index: _Index) -> bool:
    """Fold the records after ``index.through`` into ``index``.

    False (and ``index`` untouched) when the record at ``through`` is not the one the index
    was built from: the log is not the log the index describes.
    """
    check = index.through > 0
    last: bytes | None = None
    for seq, line, change in _incident_changes(layout, max(index.through, 1)):
        if check:
            if seq != index.through or _stored_hash(line) != index.head:
                return False
            check = False
            continue
        if change is not None:
            previous = index.summaries.get(change.incident)
            index.summaries[change.incident] = _advance_summary(previous, change)
        index.through, last = seq, line
    if last is not None:
        index.head = _stored_hash(last)
    return not check


def _refresh(log_path: Path, *, rebuild: bool = False) -> tuple[_Index, bool]:
    """The index, up to date with the log; and whether it changed (and should be saved)."""
    layout = Layout(log_path)
    meta = layout.read_meta()
    cached = None if rebuild else _read_index(log_path, meta.log_id)
    if cached is not None:
        through = cached.through
        try:
            if _catch_up(layout, cached):
                return cached, cached.through != through
        except IntegrityError:  # the cache contradicts the records: rebuild to know for sure
            log.info("incident index of %s disagrees with the log; rebuilding it", log_path)
        else:
            log.info("incident index of %s does not match the log; rebuilding it", log_path)
    index = _Index(meta.log_id)
    _catch_up(layout, index)
    return index, True


def _current_index(log_path: Path) -> _Index:
    index, changed = _refresh(log_path)
    if (changed or not index_path(log_path).exists()) and not is_bundle(log_path):
        _try_save_index(log_path, index)  # an evidence bundle is never written to
    return index


def rebuild_index(log_path: Path) -> list[IncidentSummary]:
    """Rebuild ``<log>/incidents/index.json`` from the records alone; return its summaries."""
    if is_bundle(log_path):
        raise InputError(f"{log_path}: an evidence bundle is read-only")
    index, _ = _refresh(log_path, rebuild=True)
    try:
        _save_index(log_path, index)
    except OSError as exc:
        raise EnclaveError(f"{index_path(log_path)}: cannot write: {exc.strerror}") from None
    return _sorted(index.summaries.values())


def _sorted(summaries: Iterable[IncidentSummary]) -> list[IncidentSummary]:
    return sorted(summaries, key=lambda s: s.first_seq)


def list_incidents(
    log_path: Path, *, status: IncidentStatus | None = None
) -> list[IncidentSummary]:
    """Every incident of the log at ``log_path`` (oldest first), or those with ``status``."""
    summaries = _sorted(_current_index(log_path).summaries.values())
    return [s for s in summaries if status is None or s.status is status]


def load_incident(log_path: Path, incident_id: str) -> Incident:
    """The incident ``incident_id``, read from its audit records. :class:`NotFoundError` if none."""
    summary = _current_index(log_path).summaries.get(incident_id)
    if summary is None:
        raise NotFoundError(f"no incident {incident_id!r} in the audit log {log_path}")
    layout = Layout(log_path)
    try:
        incident = _load(layout, incident_id, summary.first_seq)
    except IntegrityError:
        incident = None
    if incident is None or incident.timeline[0].seq != summary.first_seq:
        incident = _load(layout, incident_id, 1)  # the records, not the cache, have the last word
    if incident is None:
        raise NotFoundError(f"no incident {incident_id!r} in the audit log {log_path}")
    return incident
