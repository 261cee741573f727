"""How long loading a spec takes, and what the located, checked loading costs over a bare parse.

Compares, in one run on one machine (ratios, not absolute times, are what to compare):

* bare: ``yaml.safe_load`` + ``Enclave.model_validate`` (no locations, no catalog, no checks);
* located: ``load_spec`` (located YAML, duplicate-key and bomb guards, catalog, cross-references);
* invalid: ``load_spec`` on a spec with five mistakes, collecting every error.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from enclave.errors import SpecError
from enclave.spec import Enclave, load_spec
from support.workspace import Workspace, make_workspace

ROUNDS = 7
PER_ROUND = 200


def _timed(fn: Callable[[], object]) -> float:
    """Median seconds per call over ``ROUNDS`` rounds of ``PER_ROUND`` calls."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(PER_ROUND):
            fn()
        samples.append((time.perf_counter() - start) / PER_ROUND)
    return statistics.median(samples)


def _invalid(workspace: Workspace) -> Path:
    return workspace.example(
        ("name: assistant", "name: Assistant"),
        ("  gateway:\n", "  gatway:\n"),
        ("purposes: [translation,", "purposes: [translaton,"),
        ("roles: [analyst]}", "roles: [analyts]}"),
        ("heartbeat: 1s ", "heartbeat: 1x "),
        name="invalid.yaml",
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        workspace = make_workspace(Path(root))
        good = workspace.example()
        bad = _invalid(workspace)
        text = good.read_text(encoding="utf-8")

        def bare() -> None:
            Enclave.model_validate(yaml.safe_load(text))

        def located() -> None:
            load_spec(good)

        def invalid() -> None:
            try:
                load_spec(bad)
            except SpecError:
                return
            raise AssertionError("the invalid spec loaded")

        results = {
            name: _timed(fn)
            for name, fn in [("bare", bare), ("located", located), ("invalid", invalid)]
        }
    print(
        f"spec loading ({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, median of {ROUNDS}x{PER_ROUND} calls)"
    )
    print("| case | ms per spec | ratio to bare |")
    print("| --- | --- | --- |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds * 1000:.2f} | {seconds / results['bare']:.2f} |")
