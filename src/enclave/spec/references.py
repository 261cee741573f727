"""Checks that need more than one field: references between roles, principals and the catalog.

They run on whatever sections of a spec are individually valid, so that one broken section does
not hide the reference errors in the others: a user sees every mistake in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave.errors import Problem, Severity
from enclave.spec.model import Action, Model, Rbac, Shutdown, Usage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from enclave.spec.catalog import Classification, UsageCatalog
    from enclave.spec.yamlsrc import Document, Path

SPEC: Path = ("spec",)


@dataclass(frozen=True, slots=True)
class Sections:
    """The sections of a spec that validated on their own (``None``: invalid or absent)."""

    classification: Classification | None
    models: list[Model] | None
    rbac: Rbac | None
    usage: Usage | None
    shutdown: Shutdown | None


def _known(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if listed else "none"


def _duplicates(doc: Document, names: list[str], path: Path, what: str) -> list[Problem]:
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            line = doc.locate((*path, first[name], "name")).line
            problems.append(
                doc.problem((*path, i, "name"), f"duplicate {what} {name!r} (first at line {line})")
            )
        else:
            first[name] = i
    return problems


def check_references(
    doc: Document, parts: Sections, catalog: UsageCatalog | None, catalog_file: str
) -> list[Problem]:
    """Every cross-reference problem of the spec in ``doc`` (errors and warnings)."""
    problems: list[Problem] = []
    if parts.models is not None:
        names = [m.name for m in parts.models]
        problems += _duplicates(doc, names, (*SPEC, "models"), "model")
    if parts.rbac is not None:
        problems += _check_rbac(doc, parts.rbac)
        if catalog is not None:
            problems += _check_role_purposes(doc, parts, catalog, catalog_file)
    if parts.usage is not None and catalog is not None:
        problems += _check_usage(doc, parts.usage, catalog, catalog_file)
    if parts.shutdown is not None:
        problems += _check_shutdown(doc, parts.shutdown, parts.rbac)
    if parts.rbac is not None and parts.usage is not None and catalog is not None:
        problems += _check_approvers(doc, parts.rbac, parts.usage, catalog)
    return problems


def _check_rbac(doc: Document, rbac: Rbac) -> list[Problem]:
    base = (*SPEC, "rbac", "principals")
    problems = _duplicates(doc, [p.name for p in rbac.principals], base, "principal")
    for i, principal in enumerate(rbac.principals):
        for j, role in enumerate(principal.roles):
            if role not in rbac.roles:
                problems.append(
                    doc.problem(
                        (*base, i, "roles", j),
                        f"unknown role {role!r} (known: {_known(rbac.roles)})",
                    )
                )
    return problems


def _check_role_purposes(
    doc: Document, parts: Sections, catalog: UsageCatalog, catalog_file: str
) -> list[Problem]:
    assert parts.rbac is not None  # noqa: S101 - guarded by the caller
    problems: list[Problem] = []
    prohibited = set(catalog.prohibited_ids) | set(parts.usage.prohibited if parts.usage else [])
    for role_name, role in parts.rbac.roles.items():
        path = (*SPEC, "rbac", "roles", role_name)
        if role.purposes and Action.QUERY not in role.actions:
            problems.append(
                _warning(
                    doc, (*path, "purposes"), "purposes have no effect without the 'query' action"
                )
            )
        for k, purpose_id in enumerate(role.purposes):
            problems += _check_purpose_ref(
                doc,
                (*path, "purposes", k),
                purpose_id=purpose_id,
                catalog=catalog,
                catalog_file=catalog_file,
                prohibited=prohibited,
                parts=parts,
            )
    return problems


def _warning(doc: Document, path: Path, message: str) -> Problem:
    found = doc.problem(path, message)
    return Problem(found.file, found.line, found.column, found.path, message, Severity.WARNING)


def _check_purpose_ref(
    doc: Document,
    path: Path,
    *,
    purpose_id: str,
    catalog: UsageCatalog,
    catalog_file: str,
    prohibited: set[str],
    parts: Sections,
) -> list[Problem]:
    if purpose_id in prohibited:
        message = f"{purpose_id!r} is a prohibited use and can never be a permitted purpose"
        return [doc.problem(path, message)]
    purpose = catalog.purpose(purpose_id)
    if purpose is None:
        known = _known(catalog.purpose_ids)
        return [
            doc.problem(
                path, f"unknown purpose {purpose_id!r} (not in {catalog_file}; known: {known})"
            )
        ]
    level = parts.classification
    if level is not None and level.rank > purpose.classification_ceiling.rank:
        ceiling = purpose.classification_ceiling.value
        return [
            doc.problem(
                path,
                f"purpose {purpose_id!r} is permitted only up to {ceiling!r}; "
                f"this enclave is {level.value!r}",
            )
        ]
    return []


def _check_usage(
    doc: Document, usage: Usage, catalog: UsageCatalog, catalog_file: str
) -> list[Problem]:
    problems: list[Problem] = []
    base = (*SPEC, "usage")
    for i, use in enumerate(usage.prohibited):
        if use not in catalog.prohibited_ids:
            problems.append(
                doc.problem(
                    (*base, "prohibited", i),
                    f"unknown prohibited use {use!r} (not in {catalog_file}; "
                    f"known: {_known(catalog.prohibited_ids)})",
                )
            )
    for i, purpose_id in enumerate(usage.require_approval):
        path = (*base, "requireApproval", i)
        if purpose_id in catalog.prohibited_ids or purpose_id in usage.prohibited:
            problems.append(
                doc.problem(path, f"{purpose_id!r} is a prohibited use; it cannot be approved")
            )
        elif catalog.purpose(purpose_id) is None:
            problems.append(
                doc.problem(
                    path,
                    f"unknown purpose {purpose_id!r} (not in {catalog_file}; "
                    f"known: {_known(catalog.purpose_ids)})",
                )
            )
    return problems


def _holders(rbac: Rbac, action: Action) -> list[str]:
    roles = {name for name, role in rbac.roles.items() if action in role.actions}
    return [p.name for p in rbac.principals if roles.intersection(p.roles)]


def _check_shutdown(doc: Document, shutdown: Shutdown, rbac: Rbac | None) -> list[Problem]:
    problems: list[Problem] = []
    base = (*SPEC, "shutdown")
    if shutdown.lease <= shutdown.heartbeat:
        problems.append(
            doc.problem((*base, "lease"), "lease must be longer than the heartbeat interval")
        )
    elif shutdown.lease > 2 * shutdown.heartbeat:
        problems.append(
            _warning(
                doc,
                (*base, "lease"),
                "lease is more than two heartbeat intervals: a lost controller is noticed "
                "only after the whole lease (the dead-man switch should trip within two)",
            )
        )
    if rbac is not None:
        resumers = _holders(rbac, Action.RESUME)
        available = len(resumers)
        if shutdown.resume_excludes_trigger and set(_holders(rbac, Action.KILL)) & set(resumers):
            available -= 1
        if available < shutdown.resume_approvals:
            problems.append(
                _warning(
                    doc,
                    (*base, "resumeApprovals"),
                    f"{shutdown.resume_approvals} distinct approvals needed to resume but only "
                    f"{available} principal(s) holding 'resume' can be counted on (the one who "
                    "killed it is excluded): once killed, this enclave may never be resumed",
                )
            )
    return problems


def _check_approvers(
    doc: Document, rbac: Rbac, usage: Usage, catalog: UsageCatalog
) -> list[Problem]:
    granted = {p for role in rbac.roles.values() for p in role.purposes}
    gated = {p.id for p in catalog.purposes if p.requires_approval} | set(usage.require_approval)
    needing = sorted(granted & gated)
    if needing and not _holders(rbac, Action.APPROVE):
        message = (
            f"no principal holds 'approve': requests for {', '.join(needing)} can never be approved"
        )
        return [_warning(doc, (*SPEC, "rbac"), message)]
    return []
