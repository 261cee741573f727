"""The usage catalog: which purposes an enclave may serve, and which uses are prohibited.

The catalog is the negotiated part of the contract, kept in its own file
(``policies/usage/catalog.yaml``) so that one catalog can govern many enclaves. A spec refers to
it and may only *narrow* it: grant a subset of the purposes, add approval requirements, add
prohibitions. Nothing in a spec can waive a prohibition or an approval the catalog requires.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from enclave.spec.units import Name

API_VERSION = "enclave.dev/v1alpha1"

Text = Annotated[str, Field(min_length=1, max_length=4096)]


class Classification(StrEnum):
    """Information classification levels, lowest first."""

    UNCLASSIFIED = "unclassified"
    CUI = "cui"
    CONFIDENTIAL = "confidential"
    SECRET = "secret"  # noqa: S105 - a classification level, not a password
    TOP_SECRET = "top-secret"  # noqa: S105 - a classification level

    @property
    def rank(self) -> int:
        return list(Classification).index(self)


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class Purpose(Strict):
    """A permitted use of the models."""

    id: Name
    description: Text
    classification_ceiling: Classification = Field(alias="classificationCeiling")
    """The highest classification of enclave in which this purpose may be served."""
    requires_approval: bool = Field(False, alias="requiresApproval")
    """Every request for this purpose waits for a human approver."""


class ProhibitedUse(Strict):
    """A use that no spec, role or approval can permit."""

    id: Name
    description: Text
    rationale: Text


class UsageCatalog(Strict):
    """The permitted-use catalog and the prohibited uses of a contract."""

    api_version: Literal["enclave.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["UsageCatalog"]
    purposes: list[Purpose] = Field(min_length=1, max_length=256)
    prohibited: list[ProhibitedUse] = Field(min_length=1, max_length=256)

    def purpose(self, purpose_id: str) -> Purpose | None:
        return next((p for p in self.purposes if p.id == purpose_id), None)

    @property
    def purpose_ids(self) -> list[str]:
        return [p.id for p in self.purposes]

    @property
    def prohibited_ids(self) -> list[str]:
        return [p.id for p in self.prohibited]
