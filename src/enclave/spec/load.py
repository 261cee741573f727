"""Loading a spec from disk: YAML -> located data -> models -> cross-references.

Every problem found is reported at once, each with file, line, column and field path::

    enclave.yaml:14:7: spec.rbac.principals[1].roles[0]: unknown role 'analyts' (known: ...)
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from enclave.errors import Problem, Severity, SpecError
from enclave.spec.catalog import Classification, UsageCatalog
from enclave.spec.model import Enclave, EnclaveSpec, Rbac, Shutdown, Usage
from enclave.spec.references import Sections, check_references
from enclave.spec.yamlsrc import MAX_BYTES, Document, Path, format_path, parse_yaml

if typing.TYPE_CHECKING:
    from pydantic_core import ErrorDetails

_MAX_INPUT_REPR = 60
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A valid enclave spec with its catalog, and the warnings found while loading it."""

    enclave: Enclave
    catalog: UsageCatalog
    source: FsPath
    catalog_source: FsPath
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.enclave.metadata.name

    @property
    def spec(self) -> EnclaveSpec:
        return self.enclave.spec

    @property
    def prohibited(self) -> list[str]:
        """Every prohibited use enforced: the catalog's and the spec's additions."""
        return sorted(set(self.catalog.prohibited_ids) | set(self.spec.usage.prohibited))

    @property
    def approval_required(self) -> list[str]:
        """Purposes whose requests wait for a human approval."""
        gated = {p.id for p in self.catalog.purposes if p.requires_approval}
        return sorted(gated | set(self.spec.usage.require_approval))

    @property
    def permitted(self) -> list[str]:
        """Purposes some role may query for."""
        return sorted({p for role in self.spec.rbac.roles.values() for p in role.purposes})

    def resolve(self, relative: str) -> FsPath:
        """A path written in the spec, resolved against the spec file's directory."""
        return (self.source.parent / relative).resolve()

    def problem(self, path: Path, message: str) -> Problem:
        """A problem found later with the field at ``path`` (``("spec", "vault", "caBundle")``),
        located in the spec file (read again for it; only the file if that fails)."""
        try:
            doc = parse_yaml(_read(self.source), str(self.source), keep_going=True)
        except SpecError:
            return Problem(str(self.source), 0, 0, format_path(path), message)
        return doc.problem(path, message)


def _read(path: FsPath) -> bytes:
    """The file's bytes, up to one past the size :func:`parse_yaml` refuses (a device such as
    /dev/zero, or a pipe that never ends, is cut there rather than read forever)."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([Problem(str(path), 0, 0, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(str(path), 0, 0, "", "is a directory, not a file")]) from None
    except OSError as exc:
        raise SpecError([Problem(str(path), 0, 0, "", f"cannot read: {exc.strerror}")]) from None


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_INPUT_REPR:
        text = text[: _MAX_INPUT_REPR - 3] + "..."
    return text


def _unwrap(annotation: Any) -> Any:
    """The model or container type behind Optional/Annotated wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _fields_at(root: type[BaseModel], path: Path) -> list[str]:
    """The field names (aliases) allowed at ``path``; empty when unknown."""
    current: Any = root
    for part in path:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            match = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part), None
            )
            if match is None:
                return []
            current = match.annotation
        elif origin is list:
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _message(error: ErrorDetails, root: type[BaseModel], path: Path) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _fields_at(root, path[:-1])
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        return f"unknown field ({hint})"
    if kind in {"value_error", "assertion_error"} and "error" in ctx:
        return str(ctx["error"])
    if kind in {"literal_error", "enum"}:
        return f"must be one of {ctx.get('expected', '?')} (got {_describe(error['input'])})"
    message = error["msg"]
    return f"{message[0].lower()}{message[1:]} (got {_describe(error['input'])})"


def _problems_from(exc: ValidationError, doc: Document, root: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        path: Path = loc[:-1] if is_key else loc
        message = _message(error, root, path)
        key = is_key or error["type"] == "extra_forbidden"
        if error["type"] == "missing":
            mark = doc.locate(path[:-1])
            problems.append(
                Problem(doc.filename, mark.line, mark.column, format_path(path), message)
            )
        else:
            problems.append(doc.problem(path, message, key=key))
    return problems


def _validate(model: type[BaseModel], doc: Document) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        return None, _problems_from(exc, doc, model)


def _section(spec_data: Any, name: str) -> Any:
    info = EnclaveSpec.model_fields[name]
    if not isinstance(spec_data, dict):
        return None
    raw = spec_data.get(info.alias or name)
    if raw is None or info.annotation is None:
        return info.get_default(call_default_factory=True)
    try:
        return TypeAdapter[Any](info.annotation).validate_python(raw)
    except ValidationError:
        return None


def _sections(data: Any, enclave: Enclave | None) -> Sections:
    if enclave is not None:
        s = enclave.spec
        return Sections(s.classification, s.models, s.rbac, s.usage, s.shutdown)
    spec_data = data.get("spec") if isinstance(data, dict) else None
    return Sections(
        classification=_typed(_section(spec_data, "classification"), Classification),
        models=_typed(_section(spec_data, "models"), list),
        rbac=_typed(_section(spec_data, "rbac"), Rbac),
        usage=_typed(_section(spec_data, "usage"), Usage),
        shutdown=_typed(_section(spec_data, "shutdown"), Shutdown),
    )


def _typed(value: Any, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


def load_catalog(path: FsPath) -> UsageCatalog:
    """Load a usage catalog file, reporting every problem with its location."""
    doc = parse_yaml(_read(path), str(path), keep_going=True)
    catalog, problems = _validate(UsageCatalog, doc)
    if catalog is not None:
        problems = _catalog_consistency(doc, catalog)
    problems = [*doc.problems, *problems]
    if problems:
        raise SpecError(problems)
    assert isinstance(catalog, UsageCatalog)  # noqa: S101 - narrowed for the type checker
    return catalog


def _catalog_consistency(doc: Document, catalog: UsageCatalog) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    entries: list[tuple[Path, str]] = [
        (("purposes", i), p.id) for i, p in enumerate(catalog.purposes)
    ]
    entries += [(("prohibited", i), p.id) for i, p in enumerate(catalog.prohibited)]
    for where, ident in entries:
        if ident in seen:
            line = doc.locate((*seen[ident], "id")).line
            problems.append(
                doc.problem((*where, "id"), f"duplicate id {ident!r} (first at line {line})")
            )
        else:
            seen[ident] = where
    return problems


def _catalog_for(
    source: FsPath, doc: Document, usage: Usage | None
) -> tuple[UsageCatalog | None, FsPath, list[Problem]]:
    relative = usage.catalog if usage is not None else Usage().catalog
    path = (source.parent / relative).resolve()
    if usage is None and isinstance(doc.data, dict):
        return None, path, []
    try:
        return load_catalog(path), path, []
    except SpecError as exc:
        if exc.problems and exc.problems[0].message == "file not found":
            problem = doc.problem(("spec", "usage", "catalog"), f"catalog file not found: {path}")
            return None, path, [problem]
        return None, path, exc.problems


def load_spec(path: FsPath | str) -> LoadedSpec:
    """Load and check an ``enclave.yaml``; raise :class:`SpecError` listing every error."""
    source = FsPath(path)
    doc = parse_yaml(_read(source), str(path), keep_going=True)
    enclave, problems = _validate(Enclave, doc)
    problems = [*doc.problems, *problems]
    if not isinstance(doc.data, dict):
        raise SpecError(problems)
    parts = _sections(doc.data, enclave)
    catalog, catalog_path, catalog_problems = _catalog_for(source, doc, parts.usage)
    problems += catalog_problems
    problems += check_references(doc, parts, catalog, _relative_name(catalog_path, source))
    problems.sort(key=lambda p: (p.file != doc.filename, p.file, p.line, p.column))
    if any(p.severity is Severity.ERROR for p in problems):
        raise SpecError(problems)
    assert isinstance(enclave, Enclave) and catalog is not None  # noqa: S101 - no errors left
    return LoadedSpec(enclave, catalog, source.resolve(), catalog_path, problems)


def _relative_name(target: FsPath, source: FsPath) -> str:
    try:
        return str(target.relative_to(source.resolve().parent))
    except ValueError:
        return str(target)
