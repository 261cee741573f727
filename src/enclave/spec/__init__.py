"""The enclave spec: models, the usage catalog, value types and loading with located errors."""

from __future__ import annotations

from enclave.spec.catalog import Classification, ProhibitedUse, Purpose, UsageCatalog
from enclave.spec.load import LoadedSpec, load_catalog, load_spec
from enclave.spec.model import (
    Action,
    Audit,
    Backend,
    Compliance,
    DriftAction,
    Enclave,
    EnclaveSpec,
    Gateway,
    Model,
    Principal,
    Rbac,
    Resources,
    Role,
    Runtime,
    Shutdown,
    Usage,
    Vault,
    Weights,
)
from enclave.spec.units import HostPort, format_duration, format_size

__all__ = [
    "Action",
    "Audit",
    "Backend",
    "Classification",
    "Compliance",
    "DriftAction",
    "Enclave",
    "EnclaveSpec",
    "Gateway",
    "HostPort",
    "LoadedSpec",
    "Model",
    "Principal",
    "ProhibitedUse",
    "Purpose",
    "Rbac",
    "Resources",
    "Role",
    "Runtime",
    "Shutdown",
    "Usage",
    "UsageCatalog",
    "Vault",
    "Weights",
    "format_duration",
    "format_size",
    "load_catalog",
    "load_spec",
]
