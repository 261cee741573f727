"""Tampering with a real log, in every way the verifier names, is detected and located.

Each test copies one log written by :class:`AuditLog` (42 records in 7 segments, signed
checkpoints at 10, 20, 30, 40 and 42), changes its files on disk the way an attacker or a broken
disk would, and checks the verifier's first finding: its kind, file, line and seq.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from enclave.audit import AuditEvent, AuditLog, AuditSettings, Ed25519Signer, Tamper, verify_log
from enclave.audit.checkpoint import Checkpoint, make_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from enclave.audit import Finding, Report

RECORDS = 42
CHECKPOINTS = [10, 20, 30, 40, 42]


@dataclass(frozen=True, slots=True)
class Built:
    root: Path
    signer: Ed25519Signer


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("verify") / "audit"
    signer = Ed25519Signer.generate()
    settings = AuditSettings(segment_size=1800, checkpoint_records=10, checkpoint_interval=3600.0)
    with AuditLog.open(root, enclave="demo", signer=signer, settings=settings) as log:
        for number in range(1, RECORDS + 1):
            log.append(AuditEvent(actor="tester", action="test.verify", reason=f"event {number}"))
    assert [cp.size for cp in checkpoints(root)] == CHECKPOINTS
    assert len(segments(root)) == 7
    return Built(root, signer)


@pytest.fixture
def built(template: Built, tmp_path: Path) -> Built:
    """A fresh copy of the template log, to tamper with."""
    root = tmp_path / "audit"
    shutil.copytree(template.root, root)
    return Built(root, template.signer)


def segments(root: Path) -> list[Path]:
    return sorted(root.glob("seg-*.jsonl"))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def checkpoints(root: Path) -> list[Checkpoint]:
    return [Checkpoint.from_line(line) for line in lines(root / "checkpoints.jsonl")]


def find(root: Path, seq: int) -> tuple[Path, int]:
    """Where the first line holding ``seq`` is now: (segment, 1-based line)."""
    for path in segments(root):
        for number, line in enumerate(lines(path), 1):
            if json.loads(line)["seq"] == seq:
                return path, number
    raise AssertionError(f"no record {seq}")


def line_of(root: Path, seq: int) -> bytes:
    path, number = find(root, seq)
    return lines(path)[number - 1]


def edit_lines(path: Path, change: Callable[[list[bytes]], object]) -> None:
    content = lines(path)
    change(content)
    path.write_bytes(b"".join(content))


def forge(line: bytes, *, prev: str | None = None, old: bytes = b"", new: bytes = b"") -> bytes:
    """``line`` changed and re-hashed the way an attacker would: a valid record on its own."""
    body = line[: line.rindex(b',"hash":"')]
    if prev is not None:
        body = re.sub(rb'"prev":"[0-9a-f]{64}"', f'"prev":"{prev}"'.encode(), body, count=1)
    if old:
        assert old in body
        body = body.replace(old, new, 1)
    digest = hashlib.sha256(body + b"}").hexdigest()
    return body + f',"hash":"{digest}"}}\n'.encode()


def rechain(root: Path, seq: int, old: bytes, new: bytes) -> None:
    """Edit record ``seq`` and recompute every later hash link, in every segment."""
    head: str | None = None
    for path in segments(root):
        content = lines(path)
        for index, line in enumerate(content):
            record_seq = json.loads(line)["seq"]
            if record_seq == seq:
                content[index] = forge(line, old=old, new=new)
            elif record_seq > seq:
                content[index] = forge(line, prev=head)
            head = json.loads(content[index])["hash"]
        path.write_bytes(b"".join(content))


def finding(report: Report) -> Finding:
    assert report.finding is not None, report.summary()
    assert not report.intact
    assert report.summary().startswith("TAMPERED: ")
    return report.finding


def assert_found(
    report: Report, kind: Tamper, file: Path, line: int, seq: int | None, *, message: str = ""
) -> None:
    found = finding(report)
    assert (found.kind, found.file, found.line, found.seq) == (kind, str(file), line, seq), found
    assert message in found.message


# -- untouched -------------------------------------------------------------------------------


def test_an_untouched_log_is_intact(built: Built) -> None:
    report = verify_log(built.root)
    assert report.intact, report.summary()
    assert report.summary().startswith(f"intact: {RECORDS} records in 7 segment(s)")
    assert report.records == RECORDS
    assert report.segments == 7
    assert report.checkpoints == len(CHECKPOINTS)
    assert report.last_checkpoint is not None
    assert report.last_checkpoint.size == RECORDS
    assert report.unsigned == 0
    assert report.head == json.loads(line_of(built.root, RECORDS))["hash"]
    assert report.key_id == built.signer.key_id
    assert report.key_source == "log"
    pinned = verify_log(built.root, public_key_pem=built.signer.public_key_pem())
    assert pinned.intact
    assert pinned.key_source == "pinned"


# -- edit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"reason":"event 15"', b'"reason":"event 95"'),  # the text
        (b'"decision":"info"', b'"decision":"deny"'),  # the outcome
        (b'"seq":15,', b'"seq":16,'),  # the sequence number
        (b'"actor":"tester"', b'"actor":"tester\n'),  # a byte becomes a line break
    ],
    ids=["reason", "decision", "seq", "newline"],
)
def test_an_edited_record_is_located(built: Built, old: bytes, new: bytes) -> None:
    path, number = find(built.root, 15)
    edit_lines(
        path, lambda content: content.__setitem__(number - 1, content[number - 1].replace(old, new))
    )
    assert_found(verify_log(built.root), Tamper.EDIT, path, number, None)


@pytest.mark.parametrize("field", ["hash", "prev"])
def test_an_edited_hash_or_link_is_located(built: Built, field: str) -> None:
    path, number = find(built.root, 15)

    def flip(content: list[bytes]) -> None:
        line = content[number - 1]
        at = line.index(f'"{field}":"'.encode()) + len(field) + 4
        content[number - 1] = (
            line[:at] + (b"0" if line[at : at + 1] != b"0" else b"1") + line[at + 1 :]
        )

    edit_lines(path, flip)
    assert_found(verify_log(built.root), Tamper.EDIT, path, number, None, message="hash")


def test_a_replaced_record_with_a_valid_own_hash_breaks_the_next_link(built: Built) -> None:
    path, number = find(built.root, 15)
    forged = forge(line_of(built.root, 15), old=b'"reason":"event 15"', new=b'"reason":"forged"')
    edit_lines(path, lambda content: content.__setitem__(number - 1, forged))
    # record 15 is consistent on its own; record 16 no longer links to it
    next_path, next_number = find(built.root, 16)
    assert_found(verify_log(built.root), Tamper.EDIT, next_path, next_number, 16, message="link")


def test_a_rewritten_chain_is_caught_by_the_next_signed_checkpoint(built: Built) -> None:
    rechain(built.root, 12, b'"reason":"event 12"', b'"reason":"nothing happened"')
    path, number = find(built.root, 20)  # every link checks out; the checkpoint at 20 does not
    assert_found(verify_log(built.root), Tamper.EDIT, path, number, 20, message="rewritten")


def test_a_rewritten_tail_is_caught_by_the_final_checkpoint(built: Built) -> None:
    rechain(built.root, 41, b'"reason":"event 41"', b'"reason":"nothing happened"')
    path, number = find(built.root, 42)
    assert_found(verify_log(built.root), Tamper.EDIT, path, number, 42, message="rewritten")


# -- deletion --------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [1, 3, -1], ids=["first-of-segment", "mid", "last"])
def test_a_deleted_record_is_located(built: Built, position: int) -> None:
    path = segments(built.root)[3]
    content = lines(path)
    number = position if position > 0 else len(content)
    seq = json.loads(content[number - 1])["seq"]
    edit_lines(path, lambda content: content.pop(number - 1))
    where, at = find(built.root, seq + 1)  # the record that now sits where it is missing
    if position == -1:
        assert (where, at) == (segments(built.root)[4], 1)
    else:
        assert (where, at) == (path, number)
    message = f"expected {seq}" if position == -1 else f"seq {seq} missing"
    assert_found(verify_log(built.root), Tamper.DELETION, where, at, seq + 1, message=message)


def test_deleted_records_are_reported_as_a_range(built: Built) -> None:
    path, number = find(built.root, 15)
    edit_lines(path, lambda content: content.__delitem__(slice(number - 1, number + 1)))
    assert_found(
        verify_log(built.root), Tamper.DELETION, path, number, 17, message="seq 15..16 missing"
    )


def test_a_deleted_middle_segment_is_located(built: Built) -> None:
    paths = segments(built.root)
    paths[3].unlink()
    first = int(paths[4].name[4:20])
    assert_found(verify_log(built.root), Tamper.DELETION, paths[4], 1, first, message="expected")


def test_a_deleted_first_segment_is_located(built: Built) -> None:
    paths = segments(built.root)
    paths[0].unlink()
    first = int(paths[1].name[4:20])
    assert_found(verify_log(built.root), Tamper.DELETION, paths[1], 1, first, message="expected 1")


# -- insertion -------------------------------------------------------------------------------


def test_a_duplicated_record_is_located(built: Built) -> None:
    copy = line_of(built.root, 15)
    original, original_number = find(built.root, 15)
    path, number = find(built.root, 17)
    edit_lines(path, lambda content: content.insert(number, copy))
    assert_found(
        verify_log(built.root),
        Tamper.INSERTION,
        path,
        number + 1,
        15,
        message=f"first at {original}:{original_number}",
    )


def test_a_copy_right_after_its_original_is_the_inserted_one(built: Built) -> None:
    path, number = find(built.root, 15)
    edit_lines(path, lambda content: content.insert(number, content[number - 1]))
    assert_found(verify_log(built.root), Tamper.INSERTION, path, number + 1, 15)


def test_a_forged_record_slipped_in_before_the_genuine_one_is_located(built: Built) -> None:
    prev = json.loads(line_of(built.root, 15))["hash"]
    forged = forge(
        line_of(built.root, 16), prev=prev, old=b'"reason":"event 16"', new=b'"reason":"forged"'
    )
    path, number = find(built.root, 16)
    edit_lines(path, lambda content: content.insert(number - 1, forged))
    # the forgery links to 15 and hashes correctly; the genuine 16 follows it, and 17 links to
    # the genuine one: the forged line is the one that was never in the chain
    assert lines(path)[number - 1] == forged
    assert_found(verify_log(built.root), Tamper.INSERTION, path, number, 16)


def test_a_forged_record_slipped_in_after_the_genuine_one_is_located(built: Built) -> None:
    prev = json.loads(line_of(built.root, 15))["hash"]
    forged = forge(
        line_of(built.root, 16), prev=prev, old=b'"reason":"event 16"', new=b'"reason":"forged"'
    )
    path, number = find(built.root, 16)
    edit_lines(path, lambda content: content.insert(number, forged))
    assert_found(verify_log(built.root), Tamper.INSERTION, path, number + 1, 16)


# -- reorder ---------------------------------------------------------------------------------


def test_swapped_records_are_located(built: Built) -> None:
    path, number = find(built.root, 15)
    assert find(built.root, 16) == (path, number + 1)

    def swap(content: list[bytes]) -> None:
        content[number - 1], content[number] = content[number], content[number - 1]

    edit_lines(path, swap)
    assert_found(
        verify_log(built.root),
        Tamper.REORDER,
        path,
        number,
        16,
        message="seq 16 comes before seq 15",
    )


def test_a_record_moved_later_is_located(built: Built) -> None:
    path, number = find(built.root, 15)
    later, later_number = find(built.root, 27)
    moved = line_of(built.root, 15)
    edit_lines(path, lambda content: content.pop(number - 1))
    edit_lines(later, lambda content: content.insert(later_number, moved))
    assert_found(verify_log(built.root), Tamper.REORDER, path, number, 16)


def test_swapped_segments_are_located(built: Built) -> None:
    paths = segments(built.root)
    a, b = paths[2], paths[4]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)  # the same as swapping the files' names
    b.write_bytes(a_bytes)
    first = int(b.name[4:20])
    assert_found(verify_log(built.root), Tamper.REORDER, a, 1, first)


# -- truncation ------------------------------------------------------------------------------


def test_a_tail_cut_at_a_record_boundary_is_caught_by_the_last_checkpoint(built: Built) -> None:
    last = segments(built.root)[-1]
    edit_lines(last, lambda content: content.pop())
    assert_found(
        verify_log(built.root),
        Tamper.TRUNCATION,
        built.root / "checkpoints.jsonl",
        0,
        RECORDS,
        message=f"ends at seq {RECORDS - 1}",
    )


def test_a_missing_last_segment_is_a_truncation(built: Built) -> None:
    last = segments(built.root)[-1]
    first = int(last.name[4:20])
    last.unlink()
    assert_found(
        verify_log(built.root), Tamper.TRUNCATION, built.root / "checkpoints.jsonl", 0, first
    )


def test_a_record_cut_in_half_is_a_torn_tail(built: Built) -> None:
    last = segments(built.root)[-1]
    data = last.read_bytes()
    count = data.count(b"\n")
    last.write_bytes(data[: len(data) - len(lines(last)[-1]) // 2])
    assert_found(verify_log(built.root), Tamper.TRUNCATION, last, count, None, message="torn")


def test_a_record_without_its_newline_is_a_torn_tail(built: Built) -> None:
    last = segments(built.root)[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-1])
    assert_found(verify_log(built.root), Tamper.TRUNCATION, last, data.count(b"\n"), None)


def test_a_torn_checkpoint_line_is_a_truncation(built: Built) -> None:
    path = built.root / "checkpoints.jsonl"
    path.write_bytes(path.read_bytes()[:-1])  # it still parses; its write never completed
    assert_found(verify_log(built.root), Tamper.TRUNCATION, path, len(CHECKPOINTS), None)


# -- signatures ------------------------------------------------------------------------------


def test_a_flipped_signature_byte_is_located(built: Built) -> None:
    path = built.root / "checkpoints.jsonl"

    def flip(content: list[bytes]) -> None:
        line = content[2]
        at = line.index(b'"sig":"') + 7 + 10
        content[2] = line[:at] + (b"A" if line[at : at + 1] != b"A" else b"B") + line[at + 1 :]

    edit_lines(path, flip)
    assert_found(
        verify_log(built.root), Tamper.BAD_SIGNATURE, path, 3, 30, message="does not verify"
    )


def test_a_checkpoint_claiming_another_head_does_not_verify(built: Built) -> None:
    path = built.root / "checkpoints.jsonl"
    cp = checkpoints(built.root)[1]
    forged = Checkpoint(cp.log_id, cp.size, "0" * 64, cp.time, cp.key_id, cp.signature)
    edit_lines(path, lambda content: content.__setitem__(1, forged.to_line()))
    assert_found(verify_log(built.root), Tamper.BAD_SIGNATURE, path, 2, 20)


def test_a_pinned_wrong_key_fails_every_signature(built: Built) -> None:
    other = Ed25519Signer.generate()
    report = verify_log(built.root, public_key_pem=other.public_key_pem())
    assert_found(report, Tamper.BAD_SIGNATURE, built.root / "checkpoints.jsonl", 1, 10)
    assert report.key_source == "pinned"
    assert report.key_id == other.key_id


def test_re_signing_with_a_new_key_is_caught_only_by_a_pinned_key(built: Built) -> None:
    """An attacker who rewrites the chain, re-signs every checkpoint with their own key and
    replaces ``audit.pub`` fools a verifier that trusts the log's own key; a pinned key does not
    (the report says so: see its note)."""
    rechain(built.root, 12, b'"reason":"event 12"', b'"reason":"nothing happened"')
    attacker = Ed25519Signer.generate()
    resigned = [
        make_checkpoint(
            attacker, cp.log_id, cp.size, json.loads(line_of(built.root, cp.size))["hash"], cp.time
        )
        for cp in checkpoints(built.root)
    ]
    (built.root / "checkpoints.jsonl").write_bytes(b"".join(cp.to_line() for cp in resigned))
    (built.root / "audit.pub").write_bytes(attacker.public_key_pem())

    trusting = verify_log(built.root)
    assert trusting.intact  # the honest limit of a self-described log...
    assert any("pin it with --key" in note for note in trusting.notes)  # ...which it states
    pinned = verify_log(built.root, public_key_pem=built.signer.public_key_pem())
    assert_found(pinned, Tamper.BAD_SIGNATURE, built.root / "checkpoints.jsonl", 1, 10)


# -- malformed -------------------------------------------------------------------------------


def test_an_unreadable_checkpoint_line_is_malformed(built: Built) -> None:
    path = built.root / "checkpoints.jsonl"
    edit_lines(path, lambda content: content.__setitem__(1, b'{"v":1,"size":"twenty"}\n'))
    assert_found(verify_log(built.root), Tamper.MALFORMED, path, 2, None)


def test_a_missing_public_key_is_malformed(built: Built) -> None:
    (built.root / "audit.pub").unlink()
    assert_found(verify_log(built.root), Tamper.MALFORMED, built.root / "audit.pub", 0, None)


# -- the unsigned tail -----------------------------------------------------------------------


def test_records_after_the_last_checkpoint_are_counted_as_unsigned(built: Built) -> None:
    """Records after the last checkpoint are protected by the chain alone until the next one.

    Someone who can write the files may rewrite them with recomputed hashes and the log still
    verifies: this is the documented limit, and ``Report.unsigned`` says how many are exposed.
    """
    quiet = AuditSettings(checkpoint_records=1000, checkpoint_interval=3600.0)
    with AuditLog.open(built.root, enclave="demo", signer=built.signer, settings=quiet) as log:
        for number in range(3):
            log.append(AuditEvent(actor="tester", action="test.verify", reason=f"late {number}"))
        report = verify_log(built.root)  # while open: the three are durable, not yet signed
        assert report.intact, report.summary()
        assert (report.records, report.unsigned) == (RECORDS + 3, 3)
        assert report.summary().startswith(f"intact: {RECORDS + 3} records")
        assert report.summary().endswith("; 3 record(s) after it not yet signed")

        rechain(built.root, RECORDS + 2, b'"reason":"late 1"', b'"reason":"rewritten"')
        exposed = verify_log(built.root)
        assert exposed.intact  # not detectable yet...
        assert exposed.unsigned == 3  # ...and reported as exposed

        rechain(built.root, RECORDS, b'"reason":"event 42"', b'"reason":"rewritten"')
        path, number = find(built.root, RECORDS)
        assert_found(
            verify_log(built.root), Tamper.EDIT, path, number, RECORDS, message="rewritten"
        )
