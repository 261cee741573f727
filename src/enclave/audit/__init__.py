"""The tamper-evident audit log: records, writer, checkpoints, verification, incidents.

Typical use::

    signer = Ed25519Signer.from_file(state / "audit.key", create=True)
    with AuditLog.open(state / "audit", enclave="demo", signer=signer) as log:
        receipt = log.append(AuditEvent(actor="alice", action="request.chat", ...))
    report = verify_log(state / "audit")
"""

from __future__ import annotations

from enclave.audit.record import ActorKind, AuditEvent, AuditRecord, Decision, sha256_text
from enclave.audit.signing import Ed25519Signer, Signer
from enclave.audit.verify import Finding, Report, Tamper, verify_log
from enclave.audit.writer import AuditLog, AuditReceipt, AuditSettings, TornTail

__all__ = [
    "ActorKind",
    "AuditEvent",
    "AuditLog",
    "AuditReceipt",
    "AuditRecord",
    "AuditSettings",
    "Decision",
    "Ed25519Signer",
    "Finding",
    "Report",
    "Signer",
    "Tamper",
    "TornTail",
    "sha256_text",
    "verify_log",
]
