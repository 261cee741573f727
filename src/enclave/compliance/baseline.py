"""Loading a baseline: every ``*.yaml`` of a directory, checked and compiled, errors located.

A baseline file::

    apiVersion: enclave.dev/v1alpha1
    kind: ComplianceBaseline
    checks:
      - id: CTR-01
        title: Containers are not privileged
        severity: critical          # low | medium | high | critical
        target: docker-container    # docker-container | docker-network | docker-daemon |
                                    # host | vault | gateway | audit | spec
        rationale: ...
        rule: container.privileged == false          # CEL over the facts; or
        # python: enclave.compliance.pychecks:name   # a check that needs code
        applies: container.component == "model"      # optional: else not-applicable
        evidence: {added: container.cap_add}          # optional named CEL expressions
        remediation: ...
        mappings:
          nist-800-53: [AC-6, CM-7]
          cis-docker: ["5.4"]
          nist-ai-rmf: [MANAGE 2.4]
          dodd-3000.09: []

Every problem is reported at once with file, line, column and field path, the way a spec's
are (:mod:`enclave.spec.yamlsrc`); a rule that does not compile is one of them::

    policies/baseline/container.yaml:14:11: checks[0].rule: CEL syntax error at 1:22 ...
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from pydantic import ValidationError

from enclave.compliance.model import BaselineFile, Check
from enclave.compliance.rules import (
    CompiledRule,
    PythonCheck,
    RuleError,
    compile_rule,
    resolve_python,
)
from enclave.errors import Problem, SpecError
from enclave.spec.load import _problems_from
from enclave.spec.yamlsrc import Document, parse_yaml

__all__ = ["Baseline", "LoadedCheck", "default_baseline", "load_baseline"]

MAX_FILES = 64


@dataclass(frozen=True, slots=True)
class LoadedCheck:
    """A check ready to run: its rule compiled (or its function found), and where it is."""

    check: Check
    where: str
    """``file:line`` of the check's entry."""
    rule: CompiledRule | None = None
    python: PythonCheck | None = None
    applies: CompiledRule | None = None
    evidence: dict[str, CompiledRule] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Baseline:
    path: str
    sha256: str
    """sha256 over every file's name and bytes, in name order: which baseline judged."""
    checks: tuple[LoadedCheck, ...]

    def check(self, check_id: str) -> LoadedCheck:
        for loaded in self.checks:
            if loaded.check.id == check_id:
                return loaded
        raise KeyError(check_id)

    @property
    def ids(self) -> list[str]:
        return [c.check.id for c in self.checks]


def default_baseline() -> Path:
    """The baseline shipped in the package (``enclave/data/baseline``, a copy of
    ``policies/baseline``); the package is installed as files, never zipped."""
    return Path(str(files("enclave") / "data" / "baseline"))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SpecError([Problem(str(path), 0, 0, "", "baseline not found")])
    found = sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
    if not found:
        raise SpecError([Problem(str(path), 0, 0, "", "no *.yaml baseline file in directory")])
    if len(found) > MAX_FILES:
        raise SpecError([Problem(str(path), 0, 0, "", f"more than {MAX_FILES} baseline files")])
    return found


_CACHE: dict[tuple[str, str], Baseline] = {}
_CACHE_SIZE = 8


def load_baseline(path: Path) -> Baseline:
    """Load the baseline at ``path`` (a directory of ``*.yaml``, or one file).

    The files are read every time; parsing and compiling happen once per content (a monitor
    re-running the baseline every minute pays for reading it, not for compiling 80 rules).
    Raises :class:`~enclave.errors.SpecError` listing every problem, each located.
    """
    digest = hashlib.sha256()
    problems: list[Problem] = []
    sources: list[tuple[Path, bytes]] = []
    for source in _files(path):
        try:
            raw = source.read_bytes()
        except OSError as exc:
            problems.append(Problem(str(source), 0, 0, "", f"cannot read: {exc.strerror}"))
            continue
        digest.update(source.name.encode() + b"\0" + raw + b"\0")
        sources.append((source, raw))
    key = (str(path), digest.hexdigest())
    cached = _CACHE.get(key)
    if cached is not None and not problems:
        return cached
    loaded: list[LoadedCheck] = []
    first: dict[str, str] = {}
    for source, raw in sources:
        try:
            doc = parse_yaml(raw, str(source))
        except SpecError as exc:
            problems += exc.problems
            continue
        try:
            parsed = BaselineFile.model_validate(doc.data)
        except ValidationError as exc:
            problems += _problems_from(exc, doc, BaselineFile)
            continue
        for index, check in enumerate(parsed.checks):
            where = doc.locate(("checks", index))
            here = f"{source}:{where.line}"
            if check.id in first:
                problems.append(
                    doc.problem(
                        ("checks", index, "id"), f"duplicate check id {check.id!r} (first at "
                        f"{first[check.id]})",
                    )
                )  # fmt: skip
                continue
            first[check.id] = here
            compiled, found = _compile(doc, index, check, here)
            problems += found
            if compiled is not None:
                loaded.append(compiled)
    if problems:
        raise SpecError(problems)
    baseline = Baseline(str(path), key[1], tuple(loaded))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = baseline
    return baseline


def _compile(
    doc: Document, index: int, check: Check, where: str
) -> tuple[LoadedCheck | None, list[Problem]]:
    problems: list[Problem] = []

    def compiled(field_path: tuple[str | int, ...], source: str) -> CompiledRule | None:
        try:
            return compile_rule(source)
        except RuleError as exc:
            problems.append(doc.problem(("checks", index, *field_path), str(exc)))
            return None

    rule = compiled(("rule",), check.rule) if check.rule is not None else None
    applies = compiled(("applies",), check.applies) if check.applies is not None else None
    evidence = {name: compiled(("evidence", name), text) for name, text in check.evidence.items()}
    python = None
    if check.python is not None:
        try:
            python = resolve_python(check.python)
        except RuleError as exc:
            problems.append(doc.problem(("checks", index, "python"), str(exc)))
    if problems:
        return None, problems
    kept = {name: rule for name, rule in evidence.items() if rule is not None}
    return LoadedCheck(check, where, rule, python, applies, kept), []
