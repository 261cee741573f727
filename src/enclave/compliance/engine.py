"""Judging collected facts against a baseline: pure, no I/O.

For each check and each of its targets (every container for a ``docker-container`` check,
every network for ``docker-network``, else the one host, Vault, gateway...):

1. a fact root the check reads could not be collected -> ``error`` (the collector's reason);
2. ``applies`` is false -> ``not-applicable``;
3. the rule (or Python check) is true -> ``pass``, false -> ``fail``, anything else or an
   evaluation error -> ``error``;
4. a ``fail`` under a valid waiver for that check (and target, when the waiver names one)
   -> ``waived``, with the waiver attached.

Each result carries its evidence: the check's named evidence expressions, or else the value of
every fact path its rule reads.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import cel

from enclave.compliance.collectors import json_safe
from enclave.compliance.model import CheckResult, Report, Status, Target, Waiver
from enclave.compliance.rules import CompiledRule, RuleError, value_at

if TYPE_CHECKING:
    from collections.abc import Mapping

    from enclave.compliance.baseline import Baseline, LoadedCheck
    from enclave.compliance.facts import Facts

__all__ = ["INSTANCE_ROOTS", "TARGET_ROOTS", "evaluate"]

INSTANCE_ROOTS: dict[Target, str] = {
    Target.DOCKER_CONTAINER: "container",
    Target.DOCKER_NETWORK: "network",
}
TARGET_ROOTS: dict[Target, str] = {
    Target.DOCKER_CONTAINER: "container",
    Target.DOCKER_NETWORK: "network",
    Target.DOCKER_DAEMON: "daemon",
    Target.HOST: "host",
    Target.VAULT: "vault",
    Target.GATEWAY: "gateway",
    Target.AUDIT: "audit",
    Target.SPEC: "spec",
}
_KIND_LABEL = {Target.DOCKER_CONTAINER: "containers", Target.DOCKER_NETWORK: "networks"}


class _Subject:
    """One target instance: its facts as a dict (evidence, Python checks) and as a CEL context
    (rules) that holds only ``roots``, the fact roots its target's rules read.

    Converting facts into CEL values is most of the engine's cost: a container's context must
    not carry every other container (``containers``) unless a container rule reads them, or
    the time grows with the square of the number of containers.
    """

    def __init__(self, label: str, values: dict[str, Any], roots: frozenset[str]) -> None:
        self.label = label
        self.values = values
        self._roots = roots
        self._context: cel.Context | None = None

    @property
    def context(self) -> cel.Context:
        if self._context is None:
            self._context = cel.Context(
                variables={r: v for r, v in self.values.items() if r in self._roots}
            )
        return self._context


def _subjects(facts: Facts, roots: Mapping[Target, frozenset[str]]) -> dict[Target, list[_Subject]]:
    shared = facts.values
    found: dict[Target, list[_Subject]] = {}
    for target in Target:
        root = INSTANCE_ROOTS.get(target)
        needed = roots.get(target, frozenset())
        if root is None:
            found[target] = [_Subject(target.value, shared, needed)]
        else:
            found[target] = [
                _Subject(label, {**shared, root: values}, needed)
                for label, values in facts.instances.get(root, [])
            ]
    return found


def _needed(loaded: LoadedCheck) -> set[str]:
    roots = {TARGET_ROOTS[loaded.check.target]}
    for rule in (loaded.rule, loaded.applies, *loaded.evidence.values()):
        if rule is not None:
            roots |= rule.roots
    return roots


def _evidence(loaded: LoadedCheck, subject: _Subject, rule: CompiledRule | None) -> dict[str, Any]:
    if loaded.evidence:
        found: dict[str, Any] = {}
        for name, expression in loaded.evidence.items():
            try:
                found[name] = json_safe(expression.run(subject.context))
            except RuleError as exc:
                found[name] = f"<error: {exc}>"
        return found
    if rule is None:
        return {}
    return {path: value_at(subject.values, path) for path in rule.paths}


def _judge(loaded: LoadedCheck, subject: _Subject) -> CheckResult:  # noqa: PLR0911 - one per outcome
    check = loaded.check
    if loaded.applies is not None:
        try:
            applies = loaded.applies.run(subject.context)
        except RuleError as exc:
            return CheckResult(check, subject.label, Status.ERROR, message=f"applies: {exc}")
        if applies is False:
            evidence = _evidence(loaded, subject, loaded.applies)
            return CheckResult(check, subject.label, Status.NOT_APPLICABLE, evidence)
        if applies is not True:
            return CheckResult(
                check, subject.label, Status.ERROR, message=f"applies gave {applies!r}, not a bool"
            )
    if loaded.python is not None:
        try:
            passed, evidence = loaded.python(subject.values)
        except (KeyError, TypeError, ValueError) as exc:
            return CheckResult(
                check, subject.label, Status.ERROR, message=f"{type(exc).__name__}: {exc}"
            )
        status = Status.PASS if passed else Status.FAIL
        return CheckResult(check, subject.label, status, json_safe(evidence))
    assert loaded.rule is not None  # noqa: S101 - a check has a rule or a function
    evidence = _evidence(loaded, subject, loaded.rule)
    try:
        value = loaded.rule.run(subject.context)
    except RuleError as exc:
        return CheckResult(check, subject.label, Status.ERROR, evidence, str(exc))
    if not isinstance(value, bool):
        return CheckResult(
            check, subject.label, Status.ERROR, evidence, f"the rule gave {value!r}, not a bool"
        )
    return CheckResult(check, subject.label, Status.PASS if value else Status.FAIL, evidence)


def _waiver_for(result: CheckResult, waivers: Mapping[str, list[Waiver]]) -> Waiver | None:
    for waiver in waivers.get(result.check.id, ()):
        if waiver.valid and waiver.target in (None, result.target):
            return waiver
    return None


def evaluate(
    baseline: Baseline,
    facts: Facts,
    *,
    enclave: str,
    waivers: list[Waiver] | None = None,
    started: datetime | None = None,
    collect_seconds: float = 0.0,
) -> Report:
    """Every check of ``baseline`` judged against ``facts`` (see the module docstring)."""
    begin = time.perf_counter()
    started = started or datetime.now(UTC)
    by_check: dict[str, list[Waiver]] = {}
    for entry in waivers or ():
        by_check.setdefault(entry.check, []).append(entry)
    roots: dict[Target, frozenset[str]] = {}
    for loaded in baseline.checks:
        target = loaded.check.target
        roots[target] = roots.get(target, frozenset()) | _needed(loaded)
    subjects = _subjects(facts, roots)
    results: list[CheckResult] = []
    for loaded in baseline.checks:
        target = loaded.check.target
        missing = sorted(r for r in _needed(loaded) if r in facts.errors)
        if missing:
            label = _KIND_LABEL.get(target, target.value)
            why = "; ".join(dict.fromkeys(facts.errors[r] for r in missing))
            results.append(CheckResult(loaded.check, label, Status.ERROR, message=why))
            continue
        for subject in subjects[target]:
            result = _judge(loaded, subject)
            if result.status is Status.FAIL:
                waiver = _waiver_for(result, by_check)
                if waiver is not None:
                    result = CheckResult(
                        result.check, result.target, Status.WAIVED, result.evidence,
                        result.message, waiver,
                    )  # fmt: skip
            results.append(result)
    return Report(
        enclave=enclave,
        started=started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        seconds=collect_seconds + time.perf_counter() - begin,
        baseline=baseline.path,
        baseline_sha256=baseline.sha256,
        results=results,
        collectors=list(facts.collected),
        waivers=list(waivers or ()),
    )
