"""The one exception tree of enclave.

Every failure enclave reports to a caller is an :class:`EnclaveError`. Foreign exceptions
(PyYAML, pydantic, docker, hvac, ...) are translated where they enter, so no caller ever has to
catch a third-party type. Each class carries the process exit code the CLI uses for it::

    EnclaveError            1  an operation failed
    ├── InputError          2  the user's input is wrong (files, flags, arguments)
    │   └── SpecError       2  an enclave spec or usage catalog is invalid; holds every Problem
    ├── ConflictError       3  the operation would overwrite or contradict existing state
    ├── NotFoundError       4  a named object does not exist
    ├── ServiceError        5  a service enclave depends on is unavailable or failed
    │   ├── DockerError     5  the Docker engine
    │   ├── FirewallError   5  the host firewall (iptables)
    │   └── VaultError      5  Vault / OpenBao
    │       ├── VaultSealedError       Vault is sealed or not initialised
    │       ├── VaultUnavailableError  Vault cannot be reached (refused, timeout, TLS)
    │       ├── VaultForbiddenError    permission denied, or the credential is invalid/revoked
    │       └── VaultNotFoundError     the path does not exist (also a NotFoundError)
    ├── IntegrityError      6  evidence failed verification (tampering, corruption, truncation)
    └── AuditError          1  the audit log cannot record (a request is then refused)

Exit code 0 means success; 70 is reserved for an internal error (a bug in enclave), which the
CLI reports in one line as well.

Messages are meant for one line of output; they never contain a
secret. Constructors do not log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

EXIT_OK = 0
EXIT_INTERNAL = 70


class Severity(StrEnum):
    """How bad a :class:`Problem` is. Only errors make a spec invalid."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One located finding in an input file.

    ``path`` is the field path inside the document (``spec.rbac.principals[1].roles[0]``),
    empty for problems that concern the whole file. ``line`` and ``column`` are 1-based; 0 means
    the location is unknown.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        prefix = "" if self.severity is Severity.ERROR else " warning:"
        message = self.message.replace("\r", "\\r").replace("\n", "\\n")
        return f"{where}:{prefix}{field} {message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "severity": self.severity.value,
        }


class EnclaveError(Exception):
    """Base of every error enclave raises on purpose."""

    exit_code: ClassVar[int] = 1


class InputError(EnclaveError):
    """The user's input is wrong: a file, a flag or an argument."""

    exit_code: ClassVar[int] = 2


class SpecError(InputError):
    """An enclave spec (or a file it references) is invalid.

    ``problems`` holds every error found, in file order, not only the first.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity is Severity.ERROR]
        first = str(errors[0]) if errors else "invalid input"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class ConflictError(EnclaveError):
    """The operation would overwrite or contradict existing state."""

    exit_code: ClassVar[int] = 3


class NotFoundError(EnclaveError):
    """A named object does not exist."""

    exit_code: ClassVar[int] = 4


class ServiceError(EnclaveError):
    """A service enclave depends on is unavailable or failed."""

    exit_code: ClassVar[int] = 5


class DockerError(ServiceError):
    """The Docker engine is unreachable or refused an operation."""


class FirewallError(ServiceError):
    """The host firewall (iptables) is missing, refused, or failed."""


class VaultError(ServiceError):
    """Vault (or OpenBao) is unreachable, sealed, or refused an operation."""


class VaultSealedError(VaultError):
    """Vault is sealed (or not initialised): nothing can be read or written."""


class VaultUnavailableError(VaultError):
    """Vault cannot be reached: connection refused, timeout, or TLS verification failed."""


class VaultForbiddenError(VaultError):
    """Permission denied (HTTP 403), or the credential in use is invalid or revoked."""


class VaultNotFoundError(VaultError, NotFoundError):
    """The Vault path does not exist (HTTP 404)."""

    exit_code: ClassVar[int] = NotFoundError.exit_code


class IntegrityError(EnclaveError):
    """Evidence (an audit log, a bundle, a signature) failed verification."""

    exit_code: ClassVar[int] = 6


class AuditError(EnclaveError):
    """The audit log cannot record; whatever needed the record must not proceed."""


EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EnclaveError.exit_code: "the operation failed",
    InputError.exit_code: "invalid input (spec, catalog, flags or arguments)",
    ConflictError.exit_code: "refused: would overwrite or contradict existing state",
    NotFoundError.exit_code: "not found",
    ServiceError.exit_code: "a required service (Docker, Vault) is unavailable or failed",
    IntegrityError.exit_code: "verification failed: evidence was tampered with or is damaged",
    EXIT_INTERNAL: "internal error in enclave (please report it)",
}
"""Every exit code the CLI uses, with its meaning (rendered by ``enclave --help``)."""
