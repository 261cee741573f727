"""The compliance baseline's checks, and what a run of them reports.

A :class:`Check` is one entry of a baseline file (``policies/baseline/*.yaml``); a
:class:`CheckResult` is one check judged against one target (a container, a network, the
host, Vault, ...); a :class:`Report` is every result of one run with the collectors' timings
and the waivers that were considered. Reporters (table, JSON, JUnit, SARIF, OSCAL, Markdown and
HTML: :mod:`enclave.compliance.reporters`) only read a :class:`Report`, through
:meth:`Report.as_dict` or its fields:

=============  ==============================================================================
field          meaning
=============  ==============================================================================
check id       ``CTR-01``: stable, the key of waivers, SARIF rule ids, OSCAL findings
title          one line
severity       ``low`` < ``medium`` < ``high`` < ``critical`` (``--fail-on`` compares ranks)
status         ``pass``, ``fail``, ``error`` (could not be judged: never a pass),
               ``not-applicable``, ``waived`` (failed, under a valid waiver; still shown)
evidence       the fact values the rule looked at (never a secret: facts hold none)
target         what was judged: ``container enclave-demo-gateway``, ``host``, ``vault``...
mappings       NIST SP 800-53, CIS Docker, CIS Kubernetes, NIST AI RMF, DoD Dir. 3000.09 ids
=============  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

API_VERSION = "enclave.dev/v1alpha1"
CHECK_ID = r"^[A-Z]{2,5}-[0-9]{2,3}$"


class Severity(StrEnum):
    """How much a failure matters, lowest first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Target(StrEnum):
    """What a check is judged against. Per-instance targets give one result per instance."""

    DOCKER_CONTAINER = "docker-container"
    DOCKER_NETWORK = "docker-network"
    DOCKER_DAEMON = "docker-daemon"
    HOST = "host"
    VAULT = "vault"
    GATEWAY = "gateway"
    AUDIT = "audit"
    SPEC = "spec"


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 - a result status, not a password
    FAIL = "fail"
    ERROR = "error"
    NOT_APPLICABLE = "not-applicable"
    WAIVED = "waived"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


Text = Annotated[str, Field(min_length=1, max_length=4096)]
Ids = list[Annotated[str, Field(min_length=1, max_length=64)]]


class Mappings(_Strict):
    """Control ids a check gives evidence for. Each list may be empty where none applies."""

    nist_800_53: Ids = Field(alias="nist-800-53", min_length=1, max_length=32)
    """NIST SP 800-53 Rev. 5 controls (``AC-6``, ``AC-6(9)``...): every check maps to one."""
    cis_docker: Ids = Field(default_factory=list, alias="cis-docker", max_length=16)
    """CIS Docker Benchmark v1.6.0 recommendation numbers (``5.4``)."""
    cis_kubernetes: Ids = Field(default_factory=list, alias="cis-kubernetes", max_length=16)
    nist_ai_rmf: Ids = Field(default_factory=list, alias="nist-ai-rmf", max_length=16)
    """NIST AI RMF 1.0 subcategories (``MANAGE 2.4``)."""
    dodd_3000_09: Ids = Field(default_factory=list, alias="dodd-3000.09", max_length=16)
    """DoD Directive 3000.09 (2023) paragraphs, where the check bears on human judgement over
    the use of force."""

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "nist-800-53": list(self.nist_800_53),
            "cis-docker": list(self.cis_docker),
            "cis-kubernetes": list(self.cis_kubernetes),
            "nist-ai-rmf": list(self.nist_ai_rmf),
            "dodd-3000.09": list(self.dodd_3000_09),
        }


class Check(_Strict):
    """One check of the baseline, as written in its YAML file."""

    id: Annotated[str, Field(pattern=CHECK_ID)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    severity: Severity
    target: Target
    rationale: Text
    rule: Annotated[str, Field(min_length=1, max_length=8192)] | None = None
    """A CEL expression over the facts; true means the check passes."""
    python: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.]*:[a-z_][a-z0-9_]*$")] | None = None
    """``module:function`` under ``enclave.compliance.`` for a check that needs code."""
    applies: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """A CEL expression; false makes the result ``not-applicable``."""
    evidence: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")],
        Annotated[str, Field(min_length=1, max_length=4096)],
    ] = Field(default_factory=dict, max_length=16)
    """Named CEL expressions whose values are the evidence; without it, the fact paths the
    rule reads are."""
    remediation: Text
    mappings: Mappings

    @model_validator(mode="after")
    def _one_rule(self) -> Check:
        if (self.rule is None) == (self.python is None):
            raise ValueError("give exactly one of 'rule' (CEL) or 'python' (module:function)")
        return self


class BaselineFile(_Strict):
    api_version: str = Field(alias="apiVersion", pattern=f"^{API_VERSION}$")
    kind: Annotated[str, Field(pattern="^ComplianceBaseline$")]
    checks: list[Check] = Field(min_length=1, max_length=1000)


@dataclass(frozen=True, slots=True)
class Waiver:
    """A waiver as found in the waivers file, and whether it counts."""

    check: str
    target: str | None
    reason: str
    approver: str
    expires: str
    valid: bool
    problem: str = ""
    """Why it does not count (expired, unsigned, bad signature); empty when valid."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "target": self.target,
            "reason": self.reason,
            "approver": self.approver,
            "expires": self.expires,
            "valid": self.valid,
            "problem": self.problem,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    target: str
    status: Status
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    """For ``error``: why it could not be judged; for ``fail``: a short summary."""
    waiver: Waiver | None = None
    """The valid waiver that turned a ``fail`` into ``waived``."""

    def as_dict(self) -> dict[str, Any]:
        check = self.check
        return {
            "id": check.id,
            "title": check.title,
            "severity": check.severity.value,
            "target_kind": check.target.value,
            "target": self.target,
            "status": self.status.value,
            "evidence": self.evidence,
            "message": self.message,
            "rationale": check.rationale,
            "remediation": check.remediation,
            "mappings": check.mappings.as_dict(),
            "waiver": self.waiver.as_dict() if self.waiver else None,
        }


@dataclass(frozen=True, slots=True)
class Collected:
    """How one collector fared."""

    name: str
    seconds: float
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": round(self.seconds, 4), "error": self.error}


@dataclass(slots=True)
class Report:
    """Every result of one run of the baseline against one enclave."""

    enclave: str
    started: str
    """UTC, ISO 8601."""
    seconds: float
    baseline: str
    baseline_sha256: str
    results: list[CheckResult]
    collectors: list[Collected] = field(default_factory=list)
    waivers: list[Waiver] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = {status.value: 0 for status in Status}
        for result in self.results:
            found[result.status.value] += 1
        return found

    def failing(self, threshold: Severity) -> list[CheckResult]:
        """Failed results at or above ``threshold``."""
        return [
            r
            for r in self.results
            if r.status is Status.FAIL and r.check.severity.rank >= threshold.rank
        ]

    def erroring(self, threshold: Severity) -> list[CheckResult]:
        return [
            r
            for r in self.results
            if r.status is Status.ERROR and r.check.severity.rank >= threshold.rank
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "enclave": self.enclave,
            "started": self.started,
            "seconds": round(self.seconds, 4),
            "baseline": {"path": self.baseline, "sha256": self.baseline_sha256},
            "summary": self.counts(),
            "collectors": [c.as_dict() for c in self.collectors],
            "waivers": [w.as_dict() for w in self.waivers],
            "results": [r.as_dict() for r in self.results],
        }
