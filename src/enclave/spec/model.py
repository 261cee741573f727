"""The enclave spec: one declarative model that every backend, the operator and the CLI share.

``Enclave`` is a whole ``enclave.yaml`` document (``apiVersion``, ``kind``, ``metadata``,
``spec``); :class:`EnclaveSpec` is its ``spec`` and is also the ``spec`` of the ``Enclave``
Kubernetes custom resource, whose schema is generated from this model.

Defaults are the ones a careful operator would pick: nobody holds any role until the spec says
so, the gateway listens on loopback only, prompts and outputs are audited as hashes, and a kill
needs two people to undo.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from enclave.spec.catalog import Classification, Strict
from enclave.spec.units import (
    Address,
    ByteSize,
    Duration,
    ImageRef,
    Name,
    Sha256,
    parse_host_port,
)


class Runtime(StrEnum):
    """Model server runtimes. ``reference`` is enclave's own small model server."""

    REFERENCE = "reference"
    VLLM = "vllm"
    LLAMA_CPP = "llama-cpp"
    TGI = "tgi"


class Action(StrEnum):
    """What a role may do."""

    QUERY = "query"
    """Send requests to the models, for the role's purposes."""
    APPROVE = "approve"
    """Approve requests whose purpose needs human judgement."""
    KILL = "kill"
    """Trigger the emergency shutdown."""
    RESUME = "resume"
    """Approve resuming a killed enclave."""
    AUDIT_READ = "audit-read"
    """Read, search and export the audit log and incidents."""
    TOKEN_ADMIN = "token-admin"  # noqa: S105 - an action name
    """Issue and revoke API tokens for principals."""


class Backend(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"


class DriftAction(StrEnum):
    ALERT = "alert"
    KILL = "kill"


class Metadata(Strict):
    name: Name
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=64
    )


class Weights(Strict):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    """Weights file or directory, relative to the spec file; mounted read-only."""
    sha256: Sha256
    """Digest checked before the model server starts (a directory: digest of its manifest)."""


class Resources(Strict):
    cpus: float = Field(1.0, gt=0, le=512, allow_inf_nan=False)
    memory: ByteSize = Field(1024**3, ge=64 * 1024**2)
    pids: int = Field(256, ge=16, le=65536)


class Model(Strict):
    name: Name
    runtime: Runtime = Runtime.REFERENCE
    image: ImageRef | None = None
    """The server image; defaults to enclave's own image for the ``reference`` runtime."""
    weights: Weights | None = None
    """Required for every runtime except ``reference``, which carries its own."""
    resources: Resources = Field(default_factory=Resources)
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _runtime_needs(self) -> Model:
        if self.runtime is not Runtime.REFERENCE:
            if self.image is None:
                raise ValueError(f"runtime {self.runtime.value!r} needs an 'image'")
            if self.weights is None:
                raise ValueError(f"runtime {self.runtime.value!r} needs 'weights'")
        return self


class RateLimit(Strict):
    requests_per_minute: int = Field(60, alias="requestsPerMinute", ge=1, le=1_000_000)
    """Per principal, across all gateway replicas' shares."""


class Gateway(Strict):
    listen: Address = Field(default_factory=lambda: parse_host_port("127.0.0.1:8443"))
    replicas: int = Field(1, ge=1, le=32)
    rate_limit: RateLimit = Field(default_factory=RateLimit, alias="rateLimit")
    max_request_body: ByteSize = Field(1024**2, alias="maxRequestBody", le=64 * 1024**2)
    request_timeout: Duration = Field(timedelta(seconds=120), alias="requestTimeout")


class Vault(Strict):
    address: Annotated[str, Field(min_length=1, max_length=2048)] = "embedded"
    """``embedded`` (enclave runs OpenBao on this host) or the https URL of a Vault server."""
    ca_bundle: str | None = Field(None, alias="caBundle")
    """PEM file of CAs trusted for ``address``, relative to the spec file."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value == "embedded":
            return value
        url = urlsplit(value)
        if url.scheme not in {"https", "http"} or not url.hostname:
            raise ValueError(f"{value!r} must be 'embedded' or an https:// URL")
        if url.scheme == "http" and url.hostname not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"{value!r}: plain http is allowed only on loopback")
        return value


class Role(Strict):
    actions: list[Action] = Field(min_length=1, max_length=16)
    purposes: list[Name] = Field(default_factory=list, max_length=256)
    """Catalog purposes this role may query for (only meaningful with the ``query`` action)."""


class Principal(Strict):
    name: Name
    roles: list[Name] = Field(min_length=1, max_length=64)


class Rbac(Strict):
    roles: dict[Name, Role] = Field(default_factory=dict, max_length=256)
    principals: list[Principal] = Field(default_factory=list, max_length=4096)


class Usage(Strict):
    catalog: Annotated[str, Field(min_length=1, max_length=4096)] = "policies/usage/catalog.yaml"
    """The usage catalog file, relative to the spec file."""
    prohibited: list[Name] = Field(default_factory=list, max_length=256)
    """Prohibited uses this enclave screens for, on top of every one in the catalog."""
    require_approval: list[Name] = Field(
        default_factory=list, alias="requireApproval", max_length=256
    )
    """Purposes that need a human approval here, on top of those the catalog marks."""


class Shutdown(Strict):
    heartbeat: Duration = timedelta(seconds=1)
    """How often the controller renews the gateways' lease."""
    lease: Duration = timedelta(seconds=2)
    """How long a gateway serves without a heartbeat before it denies everything."""
    violations_per_minute: int = Field(5, alias="violationsPerMinute", ge=1, le=100_000)
    """Policy violations per minute that trigger an automatic kill."""
    resume_approvals: int = Field(2, alias="resumeApprovals", ge=1, le=16)
    """Distinct principals holding ``resume`` needed to resume a killed enclave."""
    resume_excludes_trigger: bool = Field(True, alias="resumeExcludesTrigger")
    """The principal who killed the enclave cannot approve its resumption."""
    seal_vault: bool = Field(False, alias="sealVault")
    """Also seal Vault on kill (break-glass: affects everything else using that Vault)."""


class Audit(Strict):
    checkpoint_every: Duration = Field(timedelta(seconds=1), alias="checkpointEvery")
    checkpoint_records: int = Field(1000, alias="checkpointRecords", ge=1, le=10_000_000)
    segment_size: ByteSize = Field(64 * 1024**2, alias="segmentSize", ge=1024**2)
    store_content: bool = Field(False, alias="storeContent")
    """Store raw prompts and outputs, not only their hashes (off: records hold hashes)."""


class Compliance(Strict):
    baseline: Annotated[str, Field(min_length=1, max_length=4096)] = "policies/baseline"
    interval: Duration = timedelta(seconds=60)
    on_drift: DriftAction = Field(DriftAction.ALERT, alias="onDrift")
    drill_interval: Duration = Field(timedelta(days=30), alias="drillInterval")
    """A kill drill must have passed within this interval."""


class EnclaveSpec(Strict):
    """The ``spec`` of an enclave: what to run, who may use it for what, and its safeguards."""

    classification: Classification
    models: list[Model] = Field(min_length=1, max_length=64)
    backend: Backend = Backend.DOCKER
    gateway: Gateway = Field(default_factory=Gateway)
    vault: Vault = Field(default_factory=Vault)
    rbac: Rbac = Field(default_factory=Rbac)
    usage: Usage = Field(default_factory=Usage)
    shutdown: Shutdown = Field(default_factory=Shutdown)
    audit: Audit = Field(default_factory=Audit)
    compliance: Compliance = Field(default_factory=Compliance)


class Enclave(Strict):
    """A whole ``enclave.yaml`` document."""

    api_version: Literal["enclave.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Enclave"]
    metadata: Metadata
    spec: EnclaveSpec
