"""``scripts/demo_requests.py`` end to end, the way ``make demo`` runs it.

A fresh ``enclave init`` workspace and state directory per test; the embedded Vault is started
and the enclave provisioned with the CLI, then the script starts the runtime and the gateway,
sends its three requests and verifies the audit log. The embedded Vault is stopped with
``enclave vault stop`` (which signals only the pid it recorded) whatever happens.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO_ROOT
from support.gateway_procs import enclave_argv

pytestmark = [pytest.mark.vault, pytest.mark.timeout(300)]

SCRIPT = REPO_ROOT / "scripts" / "demo_requests.py"


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{argv[1:4]} exited {done.returncode}:\n{done.stderr}"
    return done


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
