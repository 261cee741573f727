"""The compliance engine: a hardening baseline as data, facts collected once, rules in CEL.

Typical use::

    baseline = load_baseline(default_baseline())
    facts = collect(Sources(name, state_dir, loaded), backend=DockerBackend(client),
                    vault=embedded_access(state_dir))
    report = evaluate(baseline, facts, enclave=name)

:mod:`~enclave.compliance.baseline` loads and compiles the checks (located errors),
:mod:`~enclave.compliance.facts` collects, :mod:`~enclave.compliance.engine` judges (pure),
:mod:`~enclave.compliance.waivers` verifies signed waivers, :mod:`~enclave.compliance.report`
renders.
"""

from __future__ import annotations

from enclave.compliance.baseline import Baseline, LoadedCheck, default_baseline, load_baseline
from enclave.compliance.engine import evaluate
from enclave.compliance.facts import Facts, Sources, VaultAccess, collect, embedded_access
from enclave.compliance.model import (
    Check,
    CheckResult,
    Collected,
    Mappings,
    Report,
    Severity,
    Status,
    Target,
    Waiver,
)

__all__ = [
    "Baseline",
    "Check",
    "CheckResult",
    "Collected",
    "Facts",
    "LoadedCheck",
    "Mappings",
    "Report",
    "Severity",
    "Sources",
    "Status",
    "Target",
    "VaultAccess",
    "Waiver",
    "collect",
    "default_baseline",
    "embedded_access",
    "evaluate",
    "load_baseline",
]
