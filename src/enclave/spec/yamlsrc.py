"""A YAML reader that remembers where every value came from, and refuses what a spec never needs.

PyYAML composes the text into a node graph (which carries line and column marks); this module
turns that graph into plain Python data itself, so that it can

* record the location of every value and every mapping key by field path,
* report duplicate keys as errors instead of silently keeping the last one (and keep reading:
  a loader that reports every problem at once gets them in :attr:`Document.problems`),
* bound the work an input may cause (file size, nesting depth, and the total number of values
  after alias expansion, which defuses "billion laughs" alias bombs),
* accept only the plain YAML types (maps, lists, strings, numbers, booleans, null).

Merge keys (``<<: *defaults``) are supported, since anchors are a normal way to share settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from enclave.errors import Problem, SpecError

MAX_BYTES = 512 * 1024
MAX_DEPTH = 48
MAX_VALUES = 50_000

Path = tuple[str | int, ...]

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")
)


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based line and column."""

    line: int
    column: int


@dataclass(slots=True)
class Document:
    """Plain data read from one YAML file, with the location of each value and key."""

    filename: str
    data: Any
    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    """Problems found while reading that did not stop it (a duplicate key: the first is kept)."""

    def locate(self, path: Path, *, key: bool = False) -> Mark:
        """The location of ``path``, or of its nearest ancestor that exists in the file."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Mark(1, 1))

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        mark = self.locate(path, key=key)
        return Problem(self.filename, mark.line, mark.column, format_path(path), message)


def format_path(path: Path) -> str:
    """``("spec", "rbac", "principals", 1, "roles", 0)`` -> ``spec.rbac.principals[1].roles[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif not isinstance(part, str):  # a YAML key such as null or true
            out += f"[{part!r}]"
        elif part.replace("-", "").replace("_", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0
        self.scalars = SafeConstructor()

    def fail(self, node: Node, message: str) -> SpecError:
        mark = _mark(node)
        return SpecError([Problem(self.doc.filename, mark.line, mark.column, "", message)])

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(
                node, f"document expands to more than {MAX_VALUES} values (alias bomb?)"
            )
        if depth > MAX_DEPTH:
            raise self.fail(node, f"document is nested deeper than {MAX_DEPTH} levels")
        self.doc.values.setdefault(path, _mark(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            return self.mapping(node, path, depth)
        raise self.fail(node, "unsupported YAML node")  # pragma: no cover - PyYAML has 3 kinds

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag == _TIMESTAMP:  # a date-like plain value stays the string it was written as
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r} (only plain values)")
        try:
            return self.scalars.construct_object(node)
        except ConstructorError as exc:
            raise self.fail(node, f"invalid value: {exc.problem}") from None
        except (ValueError, OverflowError) as exc:
            raise self.fail(node, f"invalid value: {exc}") from None

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        explicit: dict[Any, Mark] = {}
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self.merge_sources(value_node))
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, "mapping keys must be plain strings")
            key = self.scalar(key_node)
            if key in explicit:
                mark = _mark(key_node)
                self.doc.problems.append(
                    Problem(
                        self.doc.filename, mark.line, mark.column, format_path((*path, key)),
                        f"duplicate key {key!r} (first at line {explicit[key].line})",
                    )
                )  # fmt: skip
                continue
            explicit[key] = _mark(key_node)
            self.doc.keys[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        for key_node, value_node in merged:
            key = self.scalar(key_node) if isinstance(key_node, ScalarNode) else None
            if key is None or key in result:
                continue
            self.doc.keys[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def merge_sources(self, node: Node) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise self.fail(source, "a merge key '<<' needs a mapping or a list of mappings")
            pairs.extend(source.value)
        return pairs


def parse_yaml(raw: bytes, filename: str, *, keep_going: bool = False) -> Document:
    """Read one YAML document; raise :class:`SpecError` with a located problem when it is bad.

    A duplicate key raises too, unless ``keep_going``: then the document (first value kept)
    comes back with the duplicates in :attr:`Document.problems`, for a caller that reports
    them together with everything else it finds.
    """
    doc = Document(filename, None)
    if len(raw) > MAX_BYTES:
        raise SpecError([Problem(filename, 0, 0, "", f"file is larger than {MAX_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [Problem(filename, 0, 0, "", f"not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        reason = exc.problem or exc.context or "malformed YAML"
        raise SpecError([Problem(filename, line, column, "", f"invalid YAML: {reason}")]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: locate it
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        reason = f"unacceptable character #x{exc.character:04X}: {exc.reason}"
        raise SpecError([Problem(filename, line, column, "", f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(filename, 0, 0, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([Problem(filename, 0, 0, "", "invalid YAML: nested too deeply")]) from None
    if root is None:
        raise SpecError([Problem(filename, 1, 1, "", "file is empty")])
    doc.data = _Builder(doc).build(root, (), 0)
    if doc.problems and not keep_going:
        raise SpecError(doc.problems)
    return doc
