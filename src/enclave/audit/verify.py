"""Verify an audit log: every hash link, sequence, segment, checkpoint signature and the tail.

Verification reads the stored bytes only: each record's hash covers its exact line, so nothing
is re-encoded and the check runs at disk speed. The first problem stops the walk and is reported
with its location and the kind of tampering:

``edit``          a record's bytes changed, or the chain was rewritten (a signed checkpoint
                  disagrees with the record it pins)
``deletion``      records are missing (a gap in the sequence, a missing segment)
``insertion``     a record that was never in the chain (a duplicate sequence number)
``reorder``       records or segments are out of order
``truncation``    the log ends before its last signed checkpoint, or in a torn record
``bad-signature`` a checkpoint's signature does not verify with the log's public key
``malformed``     the log's files cannot be read as a log at all

A log whose signer changed lists every key it was signed with in ``audit.pub`` (or the pinned
``--key`` file), and each checkpoint is checked with the key it names.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from enclave.audit.checkpoint import Checkpoint
from enclave.audit.layout import Layout, LogMeta, iter_lines
from enclave.audit.record import HASH_SUFFIX_LEN, LINE_PREFIX, genesis_hash
from enclave.audit.signing import fingerprint, load_public_keys, verify_signature
from enclave.errors import InputError

_SEQ_AT = len(LINE_PREFIX)
_PREV_KEY = b',"prev":"'
_SUFFIX_KEY = b',"hash":"'


class Tamper(StrEnum):
    EDIT = "edit"
    DELETION = "deletion"
    INSERTION = "insertion"
    REORDER = "reorder"
    TRUNCATION = "truncation"
    BAD_SIGNATURE = "bad-signature"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Finding:
    """The first problem found: what kind, where (file and 1-based line), and a sentence."""

    kind: Tamper
    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.kind.value} at {where}: {self.message}"


@dataclass(slots=True)
class Report:
    """The outcome of verifying one log."""

    path: str
    records: int = 0
    segments: int = 0
    head: str = ""
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    key_id: str = ""
    key_source: str = ""
    finding: Finding | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.finding is None

    @property
    def unsigned(self) -> int:
        """Records after the last checkpoint (protected by the chain only, not yet signed)."""
        signed = self.last_checkpoint.size if self.last_checkpoint else 0
        return max(0, self.records - signed)

    def summary(self) -> str:
        if self.finding is not None:
            return f"TAMPERED: {self.finding}"
        if self.last_checkpoint is None:
            signed = "no signed checkpoint yet"
        else:
            cp = self.last_checkpoint
            signed = f"last checkpoint at seq {cp.size} ({cp.time}, key {cp.key_id})"
        tail = f"; {self.unsigned} record(s) after it not yet signed" if self.unsigned else ""
        return f"intact: {self.records} records in {self.segments} segment(s), {signed}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "intact": self.intact,
            "records": self.records,
            "segments": self.segments,
            "head": self.head,
            "checkpoints": self.checkpoints,
            "last_checkpoint": asdict(self.last_checkpoint) if self.last_checkpoint else None,
            "unsigned_records": self.unsigned,
            "key_id": self.key_id,
            "key_source": self.key_source,
            "finding": (
                {**asdict(self.finding), "kind": self.finding.kind.value} if self.finding else None
            ),
            "notes": self.notes,
            "summary": self.summary(),
        }


class _Stop(Exception):  # noqa: N818 - internal control flow, carries the first finding
    def __init__(self, finding: Finding) -> None:
        self.finding = finding


def _parse_prefix(body: bytes) -> tuple[int, str] | None:
    """``(seq, prev)`` from a record body in the v1 form, or None."""
    comma = body.find(b",", _SEQ_AT)
    if comma < 0 or body[comma : comma + len(_PREV_KEY)] != _PREV_KEY:
        return None
    digits = body[_SEQ_AT:comma]
    if not digits.isdigit():
        return None
    start = comma + len(_PREV_KEY)
    return int(digits), body[start : start + 64].decode("ascii", "replace")


def _split(line: bytes) -> tuple[bytes, bytes] | None:
    if (
        not line.startswith(LINE_PREFIX)
        or not line.endswith(b'"}\n')
        or line[-HASH_SUFFIX_LEN : -HASH_SUFFIX_LEN + len(_SUFFIX_KEY)] != _SUFFIX_KEY
    ):
        return None
    return line[:-HASH_SUFFIX_LEN] + b"}", line[-67:-3]


def _keys(layout: Layout, public_key_pem: bytes | None, report: Report) -> dict[str, Any]:
    """The signer keys, by key id, oldest first; ``report.key_id`` is the newest one's."""
    if public_key_pem is not None:
        report.key_source = "pinned"
        keys = load_public_keys(public_key_pem, "--key")
    else:
        try:
            pem = layout.public_key.read_bytes()
        except OSError:
            missing = Finding(Tamper.MALFORMED, str(layout.public_key), 0, None, "missing")
            raise _Stop(missing) from None
        report.key_source = "log"
        report.notes.append(
            "the public key was read from the log itself; pin it with --key for independent "
            "assurance"
        )
        keys = load_public_keys(pem, str(layout.public_key))
    by_id = {fingerprint(key): key for key in keys}
    report.key_id = list(by_id)[-1]
    if len(by_id) > 1:
        report.notes.append(
            f"the log was signed with {len(by_id)} keys in turn: {', '.join(by_id)}"
        )
    return by_id


def _checkpoints(
    layout: Layout, meta: LogMeta, keys: dict[str, Any], report: Report
) -> dict[int, Checkpoint]:
    pinned: dict[int, Checkpoint] = {}
    path = layout.checkpoints
    if not path.exists():
        return pinned
    last: Checkpoint | None = None
    for number, (_, line) in enumerate(iter_lines(path), 1):
        where = (str(path), number)
        if not line.endswith(b"\n"):  # even if it parses: the write never completed
            raise _Stop(Finding(Tamper.TRUNCATION, *where, None, "torn checkpoint"))
        try:
            cp = Checkpoint.from_line(line)
        except (ValueError, KeyError, TypeError):
            raise _Stop(Finding(Tamper.MALFORMED, *where, None, "unreadable checkpoint")) from None
        if cp.log_id != meta.log_id:
            raise _Stop(Finding(Tamper.EDIT, *where, cp.size, "checkpoint of another log"))
        named = keys.get(cp.key_id)  # the key id is not signed: any listed key may vouch
        candidates = [named] if named is not None else list(keys.values())
        if not any(verify_signature(key, cp.message(), cp.signature) for key in candidates):
            raise _Stop(Finding(Tamper.BAD_SIGNATURE, *where, cp.size, "signature does not verify"))
        if last is not None and (cp.size < last.size or cp.time < last.time):
            raise _Stop(Finding(Tamper.REORDER, *where, cp.size, "checkpoints out of order"))
        pinned[cp.size] = cp
        last = cp
        report.checkpoints += 1
    report.last_checkpoint = last
    return pinned


def _scan_for(segments: list[tuple[int, Path]], seq: int) -> bool:
    return _where(segments, seq) is not None


def _walk(layout: Layout, meta: LogMeta, pinned: dict[int, Checkpoint], report: Report) -> None:
    segments = layout.segments()
    report.segments = len(segments)
    expected, head = 1, genesis_hash(meta.log_id).encode()
    pins = {size: cp.head.encode() for size, cp in pinned.items()}
    for index, (first_seq, path) in enumerate(segments):
        if first_seq != expected:
            kind = Tamper.DELETION if first_seq > expected else Tamper.REORDER
            if first_seq > expected and _scan_for(segments[index + 1 :], expected):
                kind = Tamper.REORDER
            message = f"segment starts at seq {first_seq}, expected {expected}"
            raise _Stop(Finding(kind, str(path), 1, first_seq, message))
        expected, head = _walk_segment(segments, index, expected, head, pins)
        report.records, report.head = expected - 1, head.decode("ascii")
    if report.last_checkpoint is not None and report.records < report.last_checkpoint.size:
        size = report.last_checkpoint.size
        message = f"the log ends at seq {report.records} but a checkpoint signed size {size}"
        raise _Stop(
            Finding(Tamper.TRUNCATION, str(layout.checkpoints), 0, report.records + 1, message)
        )


def _walk_segment(
    segments: list[tuple[int, Path]],
    index: int,
    expected: int,
    head: bytes,
    pins: dict[int, bytes],
) -> tuple[int, bytes]:
    """The hot loop: check one segment's lines; return the next expected seq and the head."""
    path = segments[index][1]
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop()  # what follows the last newline: empty unless the tail is torn
    sha256, prefix, suffix = hashlib.sha256, LINE_PREFIX, _SUFFIX_KEY
    cut, at = HASH_SUFFIX_LEN - 1, len(LINE_PREFIX)  # lines have lost their newline here
    for number, line in enumerate(lines, 1):
        if line[:at] != prefix or line[-cut : 9 - cut] != suffix or line[-2:] != b'"}':
            raise _Stop(Finding(Tamper.EDIT, str(path), number, None, "not a v1 record line"))
        stored = line[-66:-2]
        digest = sha256(line[:-cut])
        digest.update(b"}")
        if digest.hexdigest().encode() != stored:
            raise _Stop(
                Finding(Tamper.EDIT, str(path), number, None, "record does not match its hash")
            )
        comma = line.find(b",", at)
        seq_text = line[at:comma]
        if not seq_text.isdigit() or line[comma : comma + 9] != _PREV_KEY:
            raise _Stop(Finding(Tamper.EDIT, str(path), number, None, "unreadable seq/prev"))
        seq = int(seq_text)
        if seq != expected:
            raise _Stop(_sequence_finding(segments, index, number, seq, expected))
        if line[comma + 9 : comma + 73] != head:
            message = (
                f"does not link to record {seq - 1}: it or its predecessor was altered or replaced"
            )
            raise _Stop(Finding(Tamper.EDIT, str(path), number, seq, message))
        head = stored
        pin = pins.get(seq)
        if pin is not None and pin != head:
            message = (
                "the chain was rewritten: this record's hash differs from the signed checkpoint "
                f"at size {seq}"
            )
            raise _Stop(Finding(Tamper.EDIT, str(path), number, seq, message))
        expected += 1
    if torn:
        message = "torn record: the log ends mid-record"
        raise _Stop(Finding(Tamper.TRUNCATION, str(path), len(lines) + 1, None, message))
    return expected, head


def _where(segments: list[tuple[int, Path]], seq: int) -> tuple[str, int] | None:
    """The first ``(file, line)`` holding a record with ``seq`` (slow path only)."""
    for _, path in segments:
        for number, (_, line) in enumerate(iter_lines(path), 1):
            parts = _split(line)
            parsed = _parse_prefix(parts[0]) if parts else None
            if parsed is not None and parsed[0] == seq:
                return str(path), number
    return None


def _line_at(path: Path, number: int) -> bytes | None:
    for at, (_, line) in enumerate(iter_lines(path), 1):
        if at == number:
            return line
    return None


def _chain_continues_from(
    segments: list[tuple[int, Path]], index: int, number: int, earlier: tuple[str, int]
) -> bool:
    """Whether the record at ``number`` is the genuine one of two with its seq (slow path).

    A forged record slipped in *before* the genuine one links and hashes correctly, so the walk
    only stumbles on the genuine one; the record after it links to the genuine one, though.
    """
    path = segments[index][1]
    current = _line_at(path, number)
    following = _line_at(path, number + 1)
    if following is None and index + 1 < len(segments):
        following = _line_at(segments[index + 1][1], 1)
    if current is None or following is None or current == _line_at(Path(earlier[0]), earlier[1]):
        return False
    mine, after = _split(current), _split(following)
    linked = _parse_prefix(after[0]) if after else None
    return mine is not None and linked is not None and linked[1].encode() == mine[1]


def _sequence_finding(
    segments: list[tuple[int, Path]], index: int, number: int, seq: int, expected: int
) -> Finding:
    name = str(segments[index][1])
    if seq < expected:
        earlier = _where(segments, seq)
        if earlier is not None and _chain_continues_from(segments, index, number, earlier):
            message = (
                f"seq {seq} appears again at {name}:{number}, and the chain continues from "
                "there: this one was never in the chain"
            )
            return Finding(Tamper.INSERTION, earlier[0], earlier[1], seq, message)
        also = f" (first at {earlier[0]}:{earlier[1]})" if earlier else ""
        message = f"seq {seq} appears again{also}: a record that was never in the chain"
        return Finding(Tamper.INSERTION, name, number, seq, message)
    if _where(segments[index:], expected) is not None:
        return Finding(Tamper.REORDER, name, number, seq, f"seq {seq} comes before seq {expected}")
    missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
    return Finding(Tamper.DELETION, name, number, seq, f"{missing} missing")


def verify_log(path: Path, *, public_key_pem: bytes | None = None) -> Report:
    """Verify the log at ``path``. Raises :class:`InputError` only if it is not a log at all."""
    layout = Layout(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a directory")
    meta = layout.read_meta()
    report = Report(str(path))
    try:
        keys = _keys(layout, public_key_pem, report)
        pinned = _checkpoints(layout, meta, keys, report)
        _walk(layout, meta, pinned, report)
    except _Stop as stop:
        report.finding = stop.finding
    return report
