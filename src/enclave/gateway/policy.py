"""RBAC and the declared purpose, precomputed from the spec so that each check is a set lookup.

At load, :class:`Policy` works out which purposes this enclave can serve at all (in the catalog,
at or below their classification ceiling, never a prohibited use) and, for every principal,
which actions and purposes its roles grant (a granted purpose the enclave cannot serve is
dropped: the spec loader already refuses such a spec, this is defence in depth). A request then
costs one membership test: ``purpose in principal.purposes``.

On a miss the reason is classified for the client: a purpose this enclave can never serve is
``purpose_not_permitted`` (a declared prohibited use is also a policy violation); a servable
purpose the principal's roles do not grant is ``forbidden``.

An API token carries the roles it was issued for; the principal's effective roles are those
*and* the roles the spec gives it now, so editing the spec narrows every outstanding token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave.gateway.denial import Denial, DenialCode
from enclave.spec.model import Action
from enclave.spec.units import DNS1123_LABEL

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from enclave.spec.catalog import Classification, UsageCatalog
    from enclave.spec.load import LoadedSpec
    from enclave.spec.model import Role
    from enclave.vault.tokens import TokenRecord


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and everything its effective roles grant."""

    name: str
    roles: frozenset[str]
    actions: frozenset[Action]
    purposes: frozenset[str]
    """Purposes it may query for (empty without the ``query`` action)."""
    token_id: str | None = None
    """The API token it authenticated with (safe to log: the id is not the secret)."""

    def can(self, action: Action) -> bool:
        return action in self.actions


class Policy:
    """The RBAC and usage rules of one enclave, ready for per-request checks."""

    def __init__(
        self,
        *,
        classification: Classification,
        catalog: UsageCatalog,
        prohibited: Iterable[str],
        approval_required: Iterable[str],
        roles: Mapping[str, Role],
        principals: Mapping[str, Iterable[str]],
        models: Iterable[str],
    ) -> None:
        self.classification = classification
        self.prohibited = frozenset(prohibited) | frozenset(catalog.prohibited_ids)
        self.approval_required = frozenset(approval_required) | frozenset(
            p.id for p in catalog.purposes if p.requires_approval
        )
        self.models = tuple(models)
        self._model_set = frozenset(self.models)
        self._ceilings = {p.id: p.classification_ceiling for p in catalog.purposes}
        self.servable = frozenset(
            purpose_id
            for purpose_id, ceiling in self._ceilings.items()
            if ceiling.rank >= classification.rank and purpose_id not in self.prohibited
        )
        self._roles = {
            name: (
                frozenset(role.actions),
                frozenset(role.purposes) & self.servable
                if Action.QUERY in role.actions
                else frozenset(),
            )
            for name, role in roles.items()
        }
        self._principal_roles = {name: frozenset(held) for name, held in principals.items()}
        self._cache: dict[tuple[str, frozenset[str]], Principal] = {}

    @classmethod
    def from_spec(cls, loaded: LoadedSpec) -> Policy:
        spec = loaded.spec
        return cls(
            classification=spec.classification,
            catalog=loaded.catalog,
            prohibited=loaded.prohibited,
            approval_required=loaded.approval_required,
            roles=spec.rbac.roles,
            principals={p.name: p.roles for p in spec.rbac.principals},
            models=[m.name for m in spec.models],
        )

    # -- principals -------------------------------------------------------------------------

    @property
    def principal_names(self) -> list[str]:
        return sorted(self._principal_roles)

    def principal(
        self, name: str, *, roles: Iterable[str] | None = None, token_id: str | None = None
    ) -> Principal | None:
        """``name`` as the spec knows it, limited to ``roles`` when given; None if unknown."""
        held = self._principal_roles.get(name)
        if held is None:
            return None
        effective = held if roles is None else held & frozenset(roles)
        key = (name, effective)
        found = self._cache.get(key)
        if found is None:
            actions: set[Action] = set()
            purposes: set[str] = set()
            for role in effective:
                granted = self._roles.get(role)
                if granted is not None:
                    actions |= granted[0]
                    purposes |= granted[1]
            found = Principal(name, effective, frozenset(actions), frozenset(purposes))
            self._cache[key] = found
        if token_id is None:
            return found
        return Principal(found.name, found.roles, found.actions, found.purposes, token_id)

    def resolve_token(self, record: TokenRecord) -> Principal | None:
        """The principal an API token stands for now; None when the spec no longer has it."""
        return self.principal(record.principal, roles=record.roles, token_id=record.id)

    # -- checks -----------------------------------------------------------------------------

    def check_action(self, principal: Principal, action: Action) -> Denial | None:
        if action in principal.actions:
            return None
        return Denial(
            DenialCode.FORBIDDEN,
            f"principal {principal.name!r} is not granted the {action.value!r} action",
        )

    def check_purpose(self, principal: Principal, purpose: str | None) -> Denial | None:
        """RBAC for a query: the ``query`` action and the declared purpose, in one lookup."""
        if purpose is not None and purpose in principal.purposes:
            return None
        if Action.QUERY not in principal.actions:
            return self.check_action(principal, Action.QUERY)
        problem = self.purpose_problem(purpose)
        if problem is not None:
            return problem
        return Denial(
            DenialCode.FORBIDDEN,
            f"principal {principal.name!r} is not granted the purpose {purpose!r}",
        )

    def purpose_problem(self, purpose: str | None) -> Denial | None:
        """Why ``purpose`` can never be served by this enclave, whoever asks; None if it can."""
        if purpose is None:
            return Denial(
                DenialCode.PURPOSE_NOT_PERMITTED,
                "no purpose declared: send the X-Enclave-Purpose header with a catalog purpose",
            )
        if not DNS1123_LABEL.fullmatch(purpose):
            return Denial(
                DenialCode.PURPOSE_NOT_PERMITTED, "the declared purpose is not a catalog id"
            )
        if purpose in self.prohibited:
            return Denial(
                DenialCode.PURPOSE_NOT_PERMITTED,
                f"{purpose!r} is a prohibited use and can never be served",
                use=purpose,
            )
        ceiling = self._ceilings.get(purpose)
        if ceiling is None:
            return Denial(
                DenialCode.PURPOSE_NOT_PERMITTED,
                f"unknown purpose {purpose!r} (not in the catalog)",
            )
        if ceiling.rank < self.classification.rank:
            return Denial(
                DenialCode.PURPOSE_NOT_PERMITTED,
                f"purpose {purpose!r} is permitted only up to {ceiling.value!r}; this enclave "
                f"is {self.classification.value!r}",
            )
        return None

    def requires_approval(self, purpose: str) -> bool:
        return purpose in self.approval_required

    def has_model(self, name: str) -> bool:
        return name in self._model_set
