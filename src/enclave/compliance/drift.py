"""The compliance monitor's accepted result, and drift from it (see :mod:`.monitor`).

The accepted result is stored as ``accepted.json`` in the monitor's directory.

**The accepted result.** The first run's result becomes the accepted one (a
``compliance.accept`` record says so, with its counts: failures it held are accepted too, and
the run says how many). ``enclave monitor NAME --accept`` runs the baseline once and makes
*that* result the accepted one: after a deliberate change, a remediation, or a waiver. Every
later run is compared with it; a scheduled monitor reads it afresh for each run.

**Drift.** One result is one check on one target (``CTR-01`` on ``container
enclave-demo-gateway``); it has drifted when:

======================================  ==========  =============================================
accepted                                now         meaning
======================================  ==========  =============================================
pass, not-applicable, waived or absent  fail        newly failing (``waived``: the waiver lapsed;
                                                    absent: a new target, or a new check)
pass, not-applicable, waived or absent  error       can no longer be judged: never a pass
error                                   fail        now known to fail
======================================  ==========  =============================================

A result accepted as ``fail`` that now errors is not drift (it was accepted failing); results
that now pass after failing are counted as ``resolved``, results that are gone as ``gone``.
Neither is drift. Drift is reported *on every run that finds it*, until it is fixed or accepted:
an enclave resumed after a drift kill with the drift still there is killed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from enclave.audit.layout import write_file
from enclave.compliance.model import Severity, Status
from enclave.errors import IntegrityError, ServiceError

if TYPE_CHECKING:
    from pathlib import Path

    from enclave.compliance.model import Report

__all__ = [
    "ACCEPT",
    "FIRST_RUN",
    "Accepted",
    "Diff",
    "Drifted",
    "diff",
    "drift_reason",
    "drifts",
    "load_accepted",
    "save_accepted",
]

ACCEPTED_FORMAT = "enclave-compliance-accepted/v1"
MAX_REASON = 1500
"""Characters of the drift report sent to the controller."""
FIRST_RUN = "first-run"
ACCEPT = "accept"
_WORSE = frozenset({Status.FAIL, Status.ERROR})

Key = tuple[str, str]
"""(check id, target)"""


def now_utc() -> str:
    """The time now, to the second, as the accepted result and the run records write it."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the accepted result ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A result accepted as the one later runs are compared with."""

    enclave: str
    accepted_at: str
    how: str
    """``first-run`` or ``accept``."""
    report_started: str
    baseline_sha256: str
    statuses: dict[Key, Status]
    sha256: str = ""
    """Of ``accepted.json`` as stored (set by :func:`save_accepted` and :func:`load_accepted`)."""

    @classmethod
    def of(cls, report: Report, how: str, *, at: str | None = None) -> Accepted:
        return cls(
            enclave=report.enclave,
            accepted_at=at or now_utc(),
            how=how,
            report_started=report.started,
            baseline_sha256=report.baseline_sha256,
            statuses={(r.check.id, r.target): r.status for r in report.results},
        )

    def counts(self) -> dict[str, int]:
        found = {status.value: 0 for status in Status}
        for status in self.statuses.values():
            found[status.value] += 1
        return found

    def encode(self) -> bytes:
        head = {
            "format": ACCEPTED_FORMAT,
            "enclave": self.enclave,
            "accepted_at": self.accepted_at,
            "how": self.how,
            "report_started": self.report_started,
            "baseline_sha256": self.baseline_sha256,
        }
        results = ",\n  ".join(
            json.dumps([c, t, s.value]) for (c, t), s in sorted(self.statuses.items())
        )  # one result per line: a diff of two accepted files reads like the drift
        text = json.dumps(head, indent=1).removesuffix("\n}")
        return f'{text},\n "results": [\n  {results}\n ]\n}}\n'.encode()

    @classmethod
    def decode(cls, raw: bytes, source: Path) -> Accepted:
        def damaged(why: str) -> IntegrityError:
            return IntegrityError(
                f"{source}: the accepted compliance result is damaged ({why}); "
                "accept a new one with 'enclave monitor NAME --accept'"
            )

        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise damaged(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != ACCEPTED_FORMAT:
            raise damaged(f"format is not {ACCEPTED_FORMAT}")
        try:
            statuses = {(str(c), str(t)): Status(s) for c, t, s in data["results"]}
            return cls(
                enclave=str(data["enclave"]),
                accepted_at=str(data["accepted_at"]),
                how=str(data["how"]),
                report_started=str(data["report_started"]),
                baseline_sha256=str(data["baseline_sha256"]),
                statuses=statuses,
                sha256=hashlib.sha256(raw).hexdigest(),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(f"{type(exc).__name__}: {exc}") from None


def load_accepted(path: Path) -> Accepted | None:
    """The accepted result at ``path``; None when there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return Accepted.decode(raw, path)


def save_accepted(path: Path, accepted: Accepted) -> Accepted:
    """Store ``accepted`` at ``path`` (atomically, 0600); it, with its ``sha256``."""
    raw = accepted.encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        write_file(path, raw, mode=0o600)
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Accepted(
        accepted.enclave,
        accepted.accepted_at,
        accepted.how,
        accepted.report_started,
        accepted.baseline_sha256,
        accepted.statuses,
        hashlib.sha256(raw).hexdigest(),
    )


# -- drift --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drifted:
    """One result that drifted from the accepted one."""

    check: str
    target: str
    severity: Severity
    was: Status | None
    """Its status in the accepted result; None when it was not there."""
    now: Status

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "target": self.target,
            "severity": self.severity.value,
            "was": None if self.was is None else self.was.value,
            "now": self.now.value,
        }

    def __str__(self) -> str:
        was = "new" if self.was is None else self.was.value
        return f"{self.check} ({self.target}: {was} -> {self.now.value})"


@dataclass(frozen=True, slots=True)
class Diff:
    """A run's results against the accepted ones."""

    drifted: tuple[Drifted, ...] = ()
    """Worst first: by severity, then check id and target."""
    resolved: int = 0
    """Accepted as fail or error, pass now."""
    gone: int = 0
    """In the accepted result, not in this run."""
    baseline_changed: bool = False


def drifts(was: Status | None, now: Status) -> bool:
    """Whether a result that was ``was`` (None: absent) and is ``now`` has drifted."""
    if now is Status.FAIL:
        return was is not Status.FAIL
    if now is Status.ERROR:
        return was not in _WORSE
    return False


def diff(accepted: Accepted, report: Report) -> Diff:
    """Compare ``report`` with the accepted result (the table in the module docstring)."""
    drifted: list[Drifted] = []
    resolved = 0
    seen: set[Key] = set()
    for result in report.results:
        key = (result.check.id, result.target)
        seen.add(key)
        was = accepted.statuses.get(key)
        if drifts(was, result.status):
            drifted.append(
                Drifted(result.check.id, result.target, result.check.severity, was, result.status)
            )
        elif was in _WORSE and result.status is Status.PASS:
            resolved += 1
    drifted.sort(key=lambda d: (-d.severity.rank, d.check, d.target))
    return Diff(
        tuple(drifted),
        resolved,
        len(accepted.statuses.keys() - seen),
        accepted.baseline_sha256 != report.baseline_sha256,
    )


def drift_reason(enclave: str, drifted: tuple[Drifted, ...], limit: int = MAX_REASON) -> str:
    """The one line the controller records (and puts in the kill's trigger), worst first."""
    head = f"compliance drift in enclave {enclave}: {len(drifted)} result(s): "
    parts: list[str] = []
    used = len(head)
    for n, item in enumerate(drifted):
        text = str(item)
        more = f" (and {len(drifted) - n} more)"
        if used + len(text) + 2 + len(more) > limit:
            return head + "; ".join(parts) + more
        parts.append(text)
        used += len(text) + 2
    return head + "; ".join(parts)
