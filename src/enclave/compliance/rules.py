"""Rules: CEL expressions over the collected facts, and the few checks written in Python.

CEL (the Common Expression Language, as Kubernetes admission policies use it) is evaluated by
the ``common-expression-language`` package (the Rust ``cel`` interpreter behind typed Python
bindings). A rule is compiled once, when the baseline is loaded, so that a syntax error or an
unknown fact is a located load error, never a surprise in the middle of a run. It sees these
variables (the *fact roots*, documented in :mod:`enclave.compliance.facts`)::

    enclave spec container network containers networks firewall daemon host vault gateway
    audit drill

CEL never coerces between int and double in arithmetic (comparisons across them are fine),
and reading a field that is not there is an error, not ``false``: use ``has(x.f)``. A rule's
value must be a bool; anything else, or an evaluation error, makes the result ``error``.

A check that needs code names a function ``python: enclave.compliance.<module>:<function>``
instead; only functions inside :mod:`enclave.compliance` can be named (a baseline is data, it
must not be a way to run arbitrary code). Such a function takes the facts (a mapping of the
roots above) and returns ``(passed, evidence)``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

__all__ = [
    "FACT_ROOTS",
    "CompiledRule",
    "PythonCheck",
    "RuleError",
    "compile_rule",
    "fact_paths",
    "resolve_python",
    "value_at",
]

FACT_ROOTS = frozenset(
    {
        "enclave",
        "spec",
        "container",
        "network",
        "containers",
        "networks",
        "firewall",
        "daemon",
        "host",
        "vault",
        "gateway",
        "audit",
        "drill",
    }
)
PYTHON_PACKAGE = "enclave.compliance."

_BOUND = re.compile(
    r"\.\s*(?:all|exists|exists_one|existsOne|map|filter|sortBy|transformList|transformMap)"
    r"\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)
_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = re.compile(rf"(?<![\w.\"'])({_IDENT})((?:\s*\.\s*{_IDENT})*)(\s*\()?")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")

PythonCheck = Callable[[Mapping[str, Any]], tuple[bool, dict[str, Any]]]


class RuleError(Exception):
    """A rule that cannot be compiled or run; the message is one line."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One compiled CEL expression and the fact roots it reads."""

    source: str
    program: cel.Program
    roots: frozenset[str]
    paths: tuple[str, ...]
    """The fact paths it reads (``container.cap_add``...), the default evidence."""

    def run(self, context: cel.Context | Mapping[str, Any]) -> Any:
        try:
            return self.program.execute(context)  # type: ignore[arg-type]
        except Exception as exc:
            raise RuleError(_explain(exc)) from None


def _explain(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, KeyError):
        return f"no such fact {first}"
    return f"{type(exc).__name__}: {first}"[:300]


def compile_rule(source: str) -> CompiledRule:
    """Compile ``source``; :class:`RuleError` names the problem and its place in the rule."""
    try:
        program = cel.compile(source)
    except Exception as exc:
        message = str(exc)
        found = _POSITION.search(message)
        if found:
            line, column, reason = found.groups()
            raise RuleError(f"CEL syntax error at {line}:{column} of the rule: {reason}") from None
        raise RuleError(
            f"CEL: {message.splitlines()[0] if message else type(exc).__name__}"
        ) from None
    bound = set(_BOUND.findall(source))
    unknown = sorted(set(program.variables()) - FACT_ROOTS - bound)
    if unknown:
        raise RuleError(
            f"unknown fact {', '.join(repr(u) for u in unknown)} "
            f"(facts: {', '.join(sorted(FACT_ROOTS))})"
        )
    roots = frozenset(set(program.variables()) & FACT_ROOTS - bound)
    return CompiledRule(source, program, roots, fact_paths(source, roots))


def fact_paths(source: str, roots: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The dotted fact paths ``source`` reads (``container.mounts`` for
    ``container.mounts.all(m, ...)``), in order of first appearance."""
    text = _STRING.sub('""', source)
    found: dict[str, None] = {}
    for match in _PATH.finditer(text):
        root, rest, call = match.group(1), match.group(2), match.group(3)
        if root not in roots:
            continue
        parts = [p.strip() for p in rest.split(".") if p.strip()]
        if call and parts:
            parts = parts[:-1]  # the last name is a method: container.env.exists(...)
        found[".".join([root, *parts])] = None
    return tuple(found)


_MISSING = "<missing>"


def value_at(facts: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in ``facts``; ``"<missing>"`` when it is not there."""
    current: Any = facts
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            return _MISSING
    return current


def resolve_python(reference: str) -> PythonCheck:
    """The function ``module:function`` names; :class:`RuleError` when it is not allowed or
    cannot be found."""
    module_name, _, function = reference.partition(":")
    if not module_name.startswith(PYTHON_PACKAGE):
        raise RuleError(f"python checks must live in {PYTHON_PACKAGE}*, not {module_name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuleError(f"cannot import {module_name!r}: {exc}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise RuleError(f"{module_name!r} has no function {function!r}")
    checks: PythonCheck = found
    return checks
