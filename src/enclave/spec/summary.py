"""A short, plain-data summary of a loaded spec: what runs, who may do what, which safeguards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enclave.spec.units import format_duration, format_size

if TYPE_CHECKING:
    from enclave.spec.load import LoadedSpec


def summarize(loaded: LoadedSpec) -> dict[str, Any]:
    """The facts a reviewer checks first, as JSON-ready data."""
    spec = loaded.spec
    roles = spec.rbac.roles
    return {
        "name": loaded.name,
        "classification": spec.classification.value,
        "backend": spec.backend.value,
        "models": [
            {
                "name": m.name,
                "runtime": m.runtime.value,
                "cpus": m.resources.cpus,
                "memory": format_size(m.resources.memory),
            }
            for m in spec.models
        ],
        "gateway": {"listen": str(spec.gateway.listen), "replicas": spec.gateway.replicas},
        "vault": spec.vault.address,
        "permittedPurposes": loaded.permitted,
        "approvalRequired": [p for p in loaded.approval_required if p in loaded.permitted],
        "prohibited": loaded.prohibited,
        "principals": {
            p.name: sorted({a.value for r in p.roles for a in roles[r].actions})
            for p in spec.rbac.principals
        },
        "shutdown": {
            "heartbeat": format_duration(spec.shutdown.heartbeat),
            "lease": format_duration(spec.shutdown.lease),
            "violationsPerMinute": spec.shutdown.violations_per_minute,
            "resumeApprovals": spec.shutdown.resume_approvals,
        },
        "audit": {
            "checkpointEvery": format_duration(spec.audit.checkpoint_every),
            "storeContent": spec.audit.store_content,
        },
        "compliance": {
            "interval": format_duration(spec.compliance.interval),
            "onDrift": spec.compliance.on_drift.value,
        },
    }
