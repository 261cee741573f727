"""Audit log throughput: durable group-commit appends, verification, export + offline verify.

Targets (issue "Tamper-evident audit log"): >= 20,000 durable appends/s from 32 concurrent
writers; verify >= 200,000 records/s; export + offline verify of 1,000,000 records in < 10 s.
A naive writer (one ``write`` + ``fdatasync`` per record, one thread) is measured in the same run
as the baseline the group commit is compared with. The appends are measured ``ROUNDS`` times each,
on a fresh log each time (on a shared machine one round can differ from the next by a third):
the table gives the median with the range, and the verdict judges the median.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from enclave.audit import AuditEvent, AuditLog, Decision, Ed25519Signer
from enclave.audit.checkpoint import make_checkpoint
from enclave.audit.export import export_bundle, verify_path
from enclave.audit.layout import Layout, LogMeta
from enclave.audit.record import encode, genesis_hash, sha256_text
from enclave.audit.verify import verify_log
from enclave.audit.writer import utc_now

if TYPE_CHECKING:
    from collections.abc import Callable

WRITERS = 32
PER_WRITER = 1500
ROUNDS = 3
NAIVE_RECORDS = 2000
BIG = 1_000_000
EVENT = AuditEvent(
    actor="alice",
    action="request.chat",
    decision=Decision.ALLOW,
    purpose="translation",
    model="assistant",
    request_id="req-0001",
    prompt_sha256=sha256_text("prompt"),
    output_sha256=sha256_text("output"),
    latency_ms=12.5,
)


def group_commit(root: Path) -> tuple[float, list[float]]:
    """(records/s, per-append latencies) for WRITERS threads appending PER_WRITER each."""
    latencies: list[float] = []
    lock = threading.Lock()
    with AuditLog.open(root, enclave="bench", signer=Ed25519Signer.generate()) as log:

        def work() -> None:
            mine = []
            for _ in range(PER_WRITER):
                start = time.perf_counter()
                log.append(EVENT)
                mine.append(time.perf_counter() - start)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=work) for _ in range(WRITERS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    assert verify_log(root).intact
    return WRITERS * PER_WRITER / elapsed, latencies


def group_commit_async(root: Path) -> tuple[float, list[float]]:
    """The same with WRITERS asyncio tasks on one event loop (the gateway's path)."""
    latencies: list[float] = []

    async def run(log: AuditLog) -> float:
        async def work() -> None:
            for _ in range(PER_WRITER):
                start = time.perf_counter()
                await log.append_async(EVENT)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(WRITERS)))
        return time.perf_counter() - start

    with AuditLog.open(root, enclave="bench", signer=Ed25519Signer.generate()) as log:
        elapsed = asyncio.run(run(log))
    assert verify_log(root).intact
    return WRITERS * PER_WRITER / elapsed, latencies


def rounds(
    measure: Callable[[Path], tuple[float, list[float]]], root: Path
) -> tuple[list[float], list[float]]:
    """ROUNDS runs of ``measure``, each on a fresh log: (their rates, every latency)."""
    rates: list[float] = []
    latencies: list[float] = []
    for number in range(ROUNDS):
        rate, measured = measure(root / str(number))
        rates.append(rate)
        latencies.extend(measured)
    return rates, latencies


def _percentiles(latencies: list[float]) -> str:
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return f"{p50:.2f} ms / {p99:.2f} ms"


def _spread(rates: list[float]) -> str:
    return (
        f"{statistics.median(rates):,.0f} records/s "
        f"(median of {len(rates)}: {min(rates):,.0f}-{max(rates):,.0f})"
    )


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**fail**"


def _row(measure: str, result: str, target: str = "", verdict: str = "") -> None:
    print(f"| {measure} | {result} | {target} | {verdict} |")


def naive(root: Path) -> float:
    """records/s for one thread doing write + fdatasync per record (no batching)."""
    root.mkdir()
    fd = os.open(root / "naive.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    prev = genesis_hash("naive")
    start = time.perf_counter()
    for seq in range(1, NAIVE_RECORDS + 1):
        line, prev = encode(EVENT, seq=seq, prev=prev, time=utc_now(), enclave="bench")
        os.write(fd, line)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return NAIVE_RECORDS / elapsed


def synthesize(root: Path, records: int) -> None:
    """A valid log of ``records`` records, written directly (fast) in the writer's format."""
    signer = Ed25519Signer.generate()
    layout = Layout(root)
    root.mkdir(mode=0o700)
    meta = LogMeta("bench-log", "bench", utc_now())
    layout.write_meta(meta)
    layout.public_key.write_bytes(signer.public_key_pem())
    head, stamp = genesis_hash(meta.log_id), utc_now()
    segment_records = 150_000
    with layout.checkpoints.open("wb") as checkpoints:
        for first in range(1, records + 1, segment_records):
            last = min(first + segment_records - 1, records)
            lines = []
            for seq in range(first, last + 1):
                line, head = encode(EVENT, seq=seq, prev=head, time=stamp, enclave="bench")
                lines.append(line)
                if seq % 1000 == 0 or seq == records:
                    cp = make_checkpoint(signer, meta.log_id, seq, head, stamp)
                    checkpoints.write(cp.to_line())
            layout.segment(first).write_bytes(b"".join(lines))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="enclave-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        rates, latencies = rounds(group_commit, root / "group")
        async_rates, async_latencies = rounds(group_commit_async, root / "group-async")
        baseline = naive(root / "naive")

        synthesize(root / "big", BIG)
        start = time.perf_counter()
        report = verify_log(root / "big")
        verify_s = time.perf_counter() - start
        assert report.intact and report.records == BIG, report.summary()

        start = time.perf_counter()
        export_bundle(root / "big", root / "bundle")
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        bundle = verify_path(root / "bundle")
        offline_s = time.perf_counter() - start
        assert bundle.intact and bundle.records == BIG, bundle.summary()

    rate, async_rate = statistics.median(rates), statistics.median(async_rates)
    verify_rate, bundle_s = BIG / verify_s, export_s + offline_s
    print(f"audit log ({os.cpu_count()} cpus)")
    print("| measure | result | target | verdict |")
    print("| --- | --- | --- | --- |")
    _row(
        f"durable appends, {WRITERS} threads",
        _spread(rates),
        ">= 20,000",
        _verdict(rate >= 20_000),
    )
    _row("append latency p50 / p99, threads", _percentiles(latencies))
    _row(
        f"durable appends, {WRITERS} asyncio tasks",
        _spread(async_rates),
        ">= 20,000",
        _verdict(async_rate >= 20_000),
    )
    _row("append latency p50 / p99, asyncio", _percentiles(async_latencies))
    _row("naive baseline: 1 writer, fsync per record", f"{baseline:,.0f} records/s")
    _row("group commit (threads, median) / naive", f"{rate / baseline:.1f}x")
    _row(
        f"verify {BIG:,} records",
        f"{verify_rate:,.0f} records/s",
        ">= 200,000",
        _verdict(verify_rate >= 200_000),
    )
    _row(
        f"export + offline verify of {BIG:,} records",
        f"{export_s:.2f} s + {offline_s:.2f} s = {bundle_s:.2f} s",
        "< 10 s",
        _verdict(bundle_s < 10),
    )


if __name__ == "__main__":
    main()
