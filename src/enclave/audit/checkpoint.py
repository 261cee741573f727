"""Signed checkpoints: "this log had N records and its head hash was H at time T".

A checkpoint pins every record up to ``size``: an edit, deletion or truncation at or before it
changes the hash at ``size`` or removes the record, and re-hashing the chain after an edit cannot
produce a matching signature without the key. Records after the last checkpoint are protected
by the hash chain only until the next checkpoint (at most ``checkpointEvery`` later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from enclave.audit.signing import Signer, encode_signature

CHECKPOINT_DOMAIN = b"enclave-audit-checkpoint/v1\n"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    log_id: str
    size: int
    head: str
    time: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        return signed_message(self.log_id, self.size, self.head, self.time)

    def to_line(self) -> bytes:
        data = {
            "v": 1,
            "log_id": self.log_id,
            "size": self.size,
            "head": self.head,
            "time": self.time,
            "key_id": self.key_id,
            "sig": self.signature,
        }
        return (json.dumps(data, separators=(",", ":")) + "\n").encode("ascii")

    @classmethod
    def from_line(cls, line: bytes) -> Checkpoint:
        """Parse one line of ``checkpoints.jsonl``; ``ValueError``/``KeyError`` when malformed."""
        data = json.loads(line)
        return cls(
            log_id=str(data["log_id"]),
            size=int(data["size"]),
            head=str(data["head"]),
            time=str(data["time"]),
            key_id=str(data["key_id"]),
            signature=str(data["sig"]),
        )


def signed_message(log_id: str, size: int, head: str, time: str) -> bytes:
    return CHECKPOINT_DOMAIN + f"{log_id}\n{size}\n{head}\n{time}".encode("ascii")


def make_checkpoint(signer: Signer, log_id: str, size: int, head: str, time: str) -> Checkpoint:
    signature = encode_signature(signer.sign(signed_message(log_id, size, head, time)))
    return Checkpoint(log_id, size, head, time, signer.key_id, signature)
