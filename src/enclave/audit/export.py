"""Evidence bundles: a self-contained copy of a log that verifies offline on another machine.

A bundle is a directory holding the log's files as they were at export time (records, signed
checkpoints, the public key, ``log.json``), a ``README.txt`` for the assessor, and
``manifest.json`` listing every file with its sha256. Export is safe while the log is being
written: checkpoints are read first and segments are cut at their last complete line, so every
checkpoint in the bundle pins a record that is in it.

:func:`verify_path` verifies either a live log or a bundle: for a bundle it first checks the
manifest (every listed file present and unchanged, nothing unlisted) and that the log's record
count and head match it, then verifies the log itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from enclave.audit.layout import Layout, LogMeta, fsync_dir, write_file
from enclave.audit.signing import fingerprint, load_public_keys
from enclave.audit.verify import Finding, Report, Tamper, verify_log
from enclave.audit.writer import utc_now
from enclave.errors import ConflictError, InputError

BUNDLE_FORMAT = "enclave-audit-bundle/v1"
MANIFEST = "manifest.json"
README = "README.txt"
_CHUNK = 4 << 20

_README_TEXT = """\
enclave audit evidence bundle ({format})

Log {log_id} of enclave {enclave}: {records} records, head {head}.
Checkpoints are signed with the Ed25519 key in audit.pub (key id {key_id}).

To verify on any machine with enclave installed:

    enclave audit verify . --key <the enclave's public key, obtained independently>

Without enclave: manifest.json lists the sha256 of every file. Each line of seg-*.jsonl is one
record; its "hash" is the sha256 of the line's bytes up to ',"hash":' followed by '}}', and its
"prev" is the previous record's hash. Each line of checkpoints.jsonl signs
"enclave-audit-checkpoint/v1\\n<log_id>\\n<size>\\n<head>\\n<time>" with that key.
"""


@dataclass(frozen=True, slots=True)
class BundleInfo:
    path: Path
    records: int
    head: str
    files: int
    bytes: int


def _copy_lines(source: Path, target: Path, *, complete_only: bool) -> tuple[str, int, bytes]:
    """Copy ``source`` (cut after its last newline when ``complete_only``); digest, size, tail."""
    data = source.read_bytes()
    if complete_only:
        data = data[: data.rfind(b"\n") + 1]
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:_CHUNK]) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    last = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :] if data else b""
    return hashlib.sha256(data).hexdigest(), len(data), last


def export_bundle(log_path: Path, out: Path) -> BundleInfo:
    """Write an evidence bundle of the log at ``log_path`` into the new directory ``out``.

    On failure nothing is left behind: a half-written bundle is removed.
    """
    layout = Layout(log_path)
    meta = layout.read_meta()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConflictError(f"{out}: already exists and is not an empty directory")
    created = not out.exists()
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a missing or unwritable parent, a file or a dangling link in the way
        raise InputError(f"{out}: cannot create the bundle directory: {exc.strerror}") from None
    try:
        return _export(layout, meta, out)
    except BaseException:
        for child in out.iterdir():
            child.unlink()
        if created:
            out.rmdir()
        raise


def _export(layout: Layout, meta: LogMeta, out: Path) -> BundleInfo:
    files: dict[str, dict[str, object]] = {}

    def add(name: str, source: Path, *, complete_only: bool = False) -> bytes:
        digest, size, last = _copy_lines(source, out / name, complete_only=complete_only)
        files[name] = {"sha256": digest, "bytes": size}
        return last

    add("log.json", layout.meta)
    add("audit.pub", layout.public_key)
    if layout.checkpoints.exists():  # before the segments: every checkpoint pins a copied record
        add(layout.checkpoints.name, layout.checkpoints, complete_only=True)
    last_line = b""
    for _, segment in layout.segments():
        last_line = add(segment.name, segment, complete_only=True) or last_line
    records, head = _position(last_line)
    key_id = _key_id(out / "audit.pub")
    readme = _README_TEXT.format(
        format=BUNDLE_FORMAT,
        log_id=meta.log_id,
        enclave=meta.enclave,
        records=records,
        head=head,
        key_id=key_id,
    )
    write_file(out / README, readme.encode(), mode=0o600)
    files[README] = {"sha256": hashlib.sha256(readme.encode()).hexdigest(), "bytes": len(readme)}
    manifest = {
        "format": BUNDLE_FORMAT,
        "created": utc_now(),
        "log_id": meta.log_id,
        "enclave": meta.enclave,
        "records": records,
        "head": head,
        "key_id": key_id,
        "files": dict(sorted(files.items())),
    }
    write_file(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), mode=0o600)
    fsync_dir(out)
    total = sum(int(str(f["bytes"])) for f in files.values())
    return BundleInfo(out, records, head, len(files), total)


def _position(last_line: bytes) -> tuple[int, str]:
    if not last_line:
        return 0, ""
    record = json.loads(last_line)
    return int(record["seq"]), str(record["hash"])


def _key_id(public_key: Path) -> str:
    """The id of the log's current signer key (the last one listed)."""
    return fingerprint(load_public_keys(public_key.read_bytes(), str(public_key))[-1])


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_manifest(path: Path) -> tuple[Finding | None, dict[str, object]]:
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
        listed: dict[str, dict[str, object]] = manifest["files"]
        readable = manifest.get("format") == BUNDLE_FORMAT and isinstance(listed, dict)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        readable = False
    if not readable:
        finding = Finding(Tamper.MALFORMED, str(manifest_path), 0, None, "unreadable manifest")
        return finding, {}
    present = {
        entry.name for entry in os.scandir(path) if entry.is_file() and entry.name != MANIFEST
    }
    for name in sorted(present - set(listed)):
        message = "a file the manifest does not list"
        return Finding(Tamper.INSERTION, str(path / name), 0, None, message), manifest
    for name, entry in listed.items():
        file = path / name
        if "/" in name or name.startswith("."):
            return Finding(Tamper.MALFORMED, str(file), 0, None, "bad name in manifest"), manifest
        if not file.is_file():
            return Finding(Tamper.DELETION, str(file), 0, None, "listed file missing"), manifest
        if _file_digest(file) != entry.get("sha256"):
            message = "sha256 differs from the manifest"
            return Finding(Tamper.EDIT, str(file), 0, None, message), manifest
    return None, manifest


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def verify_path(path: Path, *, public_key_pem: bytes | None = None) -> Report:
    """Verify a live log or an evidence bundle (detected by its ``manifest.json``)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not is_bundle(path):
        return verify_log(path, public_key_pem=public_key_pem)
    finding, manifest = _check_manifest(path)
    if finding is not None:
        report = Report(str(path))
        if finding.kind is Tamper.EDIT and Path(finding.file).name.startswith("seg-"):
            report = verify_log(path, public_key_pem=public_key_pem)  # locate the record
        if report.finding is None:
            report.finding = finding
        return report
    report = verify_log(path, public_key_pem=public_key_pem)
    if report.intact and (report.records, report.head) != (
        manifest.get("records"),
        manifest.get("head"),
    ):
        message = (
            f"log holds {report.records} records (head {report.head[:12]}), manifest says "
            f"{manifest.get('records')}"
        )
        report.finding = Finding(Tamper.EDIT, str(path / MANIFEST), 0, None, message)
    report.notes.append("bundle manifest checked: every file present and unchanged")
    return report
