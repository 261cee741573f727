"""enclave: provision sandboxed, air-gapped model-serving enclaves and keep them honest.

The public API is what ``__all__`` lists; everything else may change without notice.
"""

from __future__ import annotations

from enclave._version import __version__
from enclave.errors import (
    AuditError,
    ConflictError,
    DockerError,
    EnclaveError,
    InputError,
    IntegrityError,
    NotFoundError,
    Problem,
    ServiceError,
    Severity,
    SpecError,
    VaultError,
)
from enclave.spec import (
    Enclave,
    EnclaveSpec,
    LoadedSpec,
    UsageCatalog,
    load_catalog,
    load_spec,
)

__all__ = [
    "AuditError",
    "ConflictError",
    "DockerError",
    "Enclave",
    "EnclaveError",
    "EnclaveSpec",
    "InputError",
    "IntegrityError",
    "LoadedSpec",
    "NotFoundError",
    "Problem",
    "ServiceError",
    "Severity",
    "SpecError",
    "UsageCatalog",
    "VaultError",
    "__version__",
    "load_catalog",
    "load_spec",
]
