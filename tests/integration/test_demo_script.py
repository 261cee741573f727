"""``scripts/demo_requests.py`` end to end, the way ``make demo`` runs it.

A fresh ``enclave init`` workspace and state directory per test; the embedded Vault is started
and the enclave provisioned with the CLI, then the script starts the runtime and the gateway,
sends its three requests and verifies the audit log. The embedded Vault is stopped with
``enclave vault stop`` (which signals only the pid it recorded) whatever happens.

The compliance step (``--compliance``) needs an enclave brought up on Docker: it runs end to end
in ``tests/e2e/test_compliance_enclave.py``; here, what it waives and what it prints are
checked on recorded reports.
"""

from __future__ import annotations

import importlib.util
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from enclave.compliance import Status, Waiver, default_baseline, evaluate, load_baseline
from enclave.compliance.waivers import WaiverEntry
from support import REPO_ROOT
from support.compliance import compliant_facts
from support.gateway_procs import enclave_argv

pytestmark = [pytest.mark.timeout(300)]

SCRIPT = REPO_ROOT / "scripts" / "demo_requests.py"


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{argv[1:4]} exited {done.returncode}:\n{done.stderr}"
    return done


@pytest.mark.vault
def test_demo_sends_three_requests_and_the_log_verifies(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    state = tmp_path / "state"
    spec = workspace / "enclave.yaml"
    cli = [*enclave_argv(), "--state-dir", str(state)]
    try:
        run([*enclave_argv(), "init", str(workspace)])
        run([*cli, "vault", "start"])
        run([*cli, "vault", "provision", str(spec)])
        demo = [sys.executable, str(SCRIPT), "--spec", str(spec), "--state-dir", str(state)]
        first = run(demo, timeout=180)
        second = run(demo, timeout=180)  # idempotent: tokens and weights reused, ports fresh
    finally:
        subprocess.run([*cli, "vault", "stop"], capture_output=True, timeout=60, check=False)

    for done in (first, second):
        lines = done.stdout.splitlines()
        assert any(re.fullmatch(r"permitted: 200 \S.*", line) for line in lines), done.stdout
        assert "prohibited: 403 prohibited_use (autonomous-target-selection)" in lines
        assert any(re.fullmatch(r"approval required: 202 approval apr-\w+", ln) for ln in lines)
        assert any(re.fullmatch(r"approved by carol: 200 \S.*", line) for line in lines)
        assert any(line.startswith("intact: ") for line in lines), done.stdout

    work = state / "demo-requests"
    for name in ("alice.token", "carol.token", "control.key", "gateway.bootstrap"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600, name
    for name in ("alice.token", "carol.token"):
        token = (work / name).read_text(encoding="utf-8").strip()
        assert token not in first.stdout + first.stderr + second.stdout + second.stderr


# -- the compliance step, on recorded reports ------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Iterator[ModuleType]:
    """The script as a module (it is not a package: loaded from its file, registered while
    the tests run, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("_demo_requests_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _results(*, broken: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A report of recorded facts on a development machine (auditd missing, icc on), with
    ``broken`` facts of the enclave's own made to fail too."""
    facts = compliant_facts()
    facts.values["host"]["auditd"].update(installed=False, running=False)
    facts.values["daemon"]["icc"] = True
    for name in broken:
        for _, values in facts.instances["container"]:
            values[name] = True
    report = evaluate(load_baseline(default_baseline()), facts, enclave="demo")
    return [r.as_dict() for r in report.results]


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_the_demo_waives_this_machines_failures_and_nothing_else(demo: ModuleType) -> None:
    results = _results()
    failed = {(r["id"], r["target"]) for r in results if r["status"] == "fail"}
    assert ("HST-01", "host") in failed and ("DKR-01", "docker-daemon") in failed
    entries = demo.demo_waivers(results, NOW)
    assert {(w.check, w.target) for w in entries} == failed
    for entry in entries:
        assert entry.approver == "make demo" and not entry.signature
        assert entry.expires == "2026-11-28T12:00:00Z"
        assert entry.reason.startswith("host: development VM")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("privileged", "CTR-01 fail (container enclave-demo-gateway)"),
        ("vault-error", "VLT-01 error (vault)"),
        ("state-files", "HST-11 fail (host)"),
    ],
)
def test_any_other_failure_or_error_fails_the_demo(
    demo: ModuleType, change: str, named: str
) -> None:
    if change == "privileged":
        results = _results(broken=("privileged",))
    else:
        results = _results()
        check = "VLT-01" if change == "vault-error" else "HST-11"
        status = "error" if change == "vault-error" else "fail"
        for result in results:
            if result["id"] == check:
                result["status"] = status
    with pytest.raises(demo.DemoError, match=re.escape(named)):
        demo.demo_waivers(results, NOW)


def test_earlier_demo_waivers_are_replaced_and_other_waivers_kept(demo: ModuleType) -> None:
    theirs = WaiverEntry(check="AIS-10", reason="r", approver="carol", expires="2099-01-01Z")
    old = WaiverEntry(check="HST-01", reason="r", approver="make demo", expires="2000-01-01Z")
    new = WaiverEntry(check="HST-02", reason="r", approver="make demo", expires="2099-01-01Z")
    assert demo.merge_waivers([theirs, old], [new]) == [theirs, new]


def test_the_summary_line_counts_every_status(demo: ModuleType) -> None:
    facts = compliant_facts()
    facts.values["host"]["auditd"].update(installed=False, running=False)
    waiver = Waiver("HST-01", "host", "host: development VM", "make demo", "2099-01-01Z", True)
    report = evaluate(load_baseline(default_baseline()), facts, enclave="demo", waivers=[waiver])
    counts = report.counts()
    assert counts[Status.WAIVED.value] == 1
    assert demo.summary_line(counts) == (
        f"compliance: {counts['pass']} pass, 0 fail, 0 error, 1 waived (host: development VM), "
        f"{counts['not-applicable']} not-applicable"
    )
    assert "(host" not in demo.summary_line({**counts, "waived": 0})
