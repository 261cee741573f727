"""The compliance engine on recorded facts: how its time grows with the number of containers.

Targets (issue "Compliance engine"): the full baseline on the demo enclave <= 2 s wall; each
additional container adds <= 50 ms (measured with 1, 10 and 50 containers).

What is timed is :func:`~enclave.compliance.evaluate` -- every check of the shipped baseline
judged, evidence gathered, waivers applied -- on the facts recorded from a real demo enclave
(``tests/support/compliance_facts.json``), with the container facts replicated: the gateway
plus N-1 copies of the model container, each renamed, so every per-container check runs N
times and the checks over all containers see N. Loading (compiling every CEL rule) and the
reporters at 50 containers are timed too. Collecting the facts from Docker, Vault and the host
is not: it needs a live enclave, and ``enclave check``'s collectors report their own times.
Loading is timed cold (a fresh copy of the baseline: compiled baselines are kept by path and
content) and cached.

Each figure is the median of ROUNDS runs. Run alone with ``PYTHONPATH=tests python -m
bench.compliance``.
"""

from __future__ import annotations

import copy
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from enclave.compliance import Facts, Report, default_baseline, evaluate, load_baseline
from enclave.compliance.report import to_json
from enclave.compliance.reporters import to_html, to_junit, to_markdown, to_oscal, to_sarif
from support.compliance import compliant_facts

ROUNDS = 7
SIZES = (1, 10, 50)
TARGET_FULL_S = 2.0
TARGET_PER_CONTAINER_S = 0.050


def _median(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def scaled_facts(containers: int) -> Facts:
    """The recorded facts with the gateway and ``containers - 1`` renamed model containers."""
    facts = compliant_facts()
    by_component = {
        values["component"]: (label, values) for label, values in facts.instances["container"]
    }
    gateway = by_component["gateway"]
    _, model = by_component["model"]
    found: list[tuple[str, Any]] = [gateway]
    for n in range(1, containers):
        values = copy.deepcopy(model)
        values["name"] = f"{model['name']}-{n}"
        values["id"] = f"{n:04x}{model['id'][4:]}"
        found.append((f"container {values['name']}", values))
    facts.instances["container"] = found
    facts.values["containers"] = [values for _, values in found]
    return facts


def _cold_load(path: Path) -> object:
    """Load a fresh copy of the baseline: ``load_baseline`` keeps compiled baselines by path
    and content, so only a path it has not seen measures parsing and compiling."""
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        copy_dir = Path(tmp) / "baseline"
        shutil.copytree(path, copy_dir)
        return load_baseline(copy_dir)


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**fail**"


def main() -> None:
    print(
        f"compliance engine ({platform.python_implementation()} {platform.python_version()}, "
        f"median of {ROUNDS})"
    )
    path = default_baseline()
    load_s = _median(partial(_cold_load, path))
    cached_s = _median(partial(load_baseline, path))
    baseline = load_baseline(path)
    print(
        f"baseline: {len(baseline.checks)} checks, loaded and compiled in {load_s * 1e3:.1f} ms "
        f"({cached_s * 1e3:.1f} ms when its content was compiled before)"
    )
    print()
    print("| containers | results | evaluate | per container vs 1 | vs previous size | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    timings: dict[int, float] = {}
    reports: dict[int, Report] = {}
    previous = SIZES[0]
    for size in SIZES:
        facts = scaled_facts(size)
        reports[size] = evaluate(baseline, facts, enclave="demo")
        timings[size] = _median(partial(evaluate, baseline, facts, enclave="demo"))
        row = f"| {size} | {len(reports[size].results)} | {timings[size] * 1e3:.1f} ms"
        if size == SIZES[0]:
            ok = timings[size] + load_s <= TARGET_FULL_S
            print(f"{row} | - | - | load + evaluate <= {TARGET_FULL_S:.0f} s: {_verdict(ok)} |")
            continue
        per = (timings[size] - timings[SIZES[0]]) / (size - SIZES[0])
        marginal = (timings[size] - timings[previous]) / (size - previous)
        ok = max(per, marginal) <= TARGET_PER_CONTAINER_S
        print(
            f"{row} | {per * 1e3:.2f} ms | {marginal * 1e3:.2f} ms "
            f"| <= {TARGET_PER_CONTAINER_S * 1e3:.0f} ms: {_verdict(ok)} |"
        )
        previous = size
    largest = reports[SIZES[-1]]
    print()
    print(f"| reporter ({SIZES[-1]} containers) | median |")
    print("| --- | --- |")
    for name, render in (
        ("json", to_json),
        ("junit", to_junit),
        ("sarif", to_sarif),
        ("markdown", to_markdown),
        ("oscal", to_oscal),
        ("html", to_html),
    ):
        seconds = _median(partial(render, largest))
        print(f"| {name} | {seconds * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
