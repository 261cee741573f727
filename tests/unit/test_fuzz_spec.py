"""Thousands of mutated specs: each ends valid, or in a located SpecError / exit 2. Never a crash.

Mutations work on the text (broken YAML, tabs, unicode, duplicated lines, stray anchors) and on
the structure (wrong types, unknown keys, huge values, deleted fields), plus hand-made hostile
documents (alias bombs, deep nesting, enormous scalars).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.cli.main import main
from enclave.errors import SpecError
from enclave.spec import LoadedSpec, load_spec
from support.workspace import TEMPLATE, Workspace, make_workspace


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
        database=None,
    )


ATOMS = st.sampled_from(
    [":", "-", " ", "\t", "\n", "[", "]", "{", "}", "&a", "*a", "!!", "<<", "'", '"', "#", "\x00"]
)
SNIPPETS = st.one_of(ATOMS, st.text(max_size=12), st.sampled_from(["é", "💥", "\u202e", "\ufeff"]))
LEAVES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["x" * 5_000, "1Gi", "500ms", "127.0.0.1:1", "analyst", "kinetic-control"]),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
BASE: dict[str, Any] = yaml.safe_load(TEMPLATE)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="enclave-fuzz-") as root:
        yield make_workspace(Path(root))


WHOLE_FILE = ("file is larger than", "not UTF-8 text", "invalid YAML: nested too deeply")
"""The only problems that may name a file without a line: they are about all of it."""


def check_outcome(path: Path) -> LoadedSpec | SpecError:
    try:
        return load_spec(path)
    except SpecError as exc:
        assert exc.problems, "a SpecError must carry its problems"
        for problem in exc.problems:
            text = str(problem)
            assert "\n" not in text
            assert problem.message
            assert problem.file in {str(path), str(path.parent / "policies/usage/catalog.yaml")}
            if problem.line > 0:
                assert problem.column > 0
                assert text.startswith(f"{problem.file}:{problem.line}:{problem.column}: ")
            else:
                assert problem.message.startswith(WHOLE_FILE), text
        return exc


def mutate_text(text: str, data: st.DataObject) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "dup", "swap", "indent"]))
        i = data.draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if op == "insert":
            at = data.draw(st.integers(0, len(line)))
            lines[i] = line[:at] + data.draw(SNIPPETS) + line[at:]
        elif op == "delete":
            a = data.draw(st.integers(0, len(line)))
            lines[i] = line[:a] + line[a + data.draw(st.integers(1, 8)) :]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = data.draw(st.sampled_from([" ", "  ", "\t"])) + line
    return "".join(lines)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths_of(child, (*prefix, i))


def mutate_structure(data: st.DataObject) -> Any:
    doc = json.loads(json.dumps(BASE))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in paths_of(doc) if p]
        if not paths:
            return data.draw(VALUES)
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = data.draw(st.sampled_from(["replace", "delete", "unknown-key"]))
        if op == "replace":
            parent[path[-1]] = data.draw(VALUES)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=10))] = data.draw(VALUES)
    return doc


@fuzz(1500)
@given(data=st.data())
def test_text_mutations_never_crash(fuzz_dir: Workspace, data: st.DataObject) -> None:
    path = fuzz_dir.write(mutate_text(TEMPLATE, data))
    check_outcome(path)


@fuzz(1500)
@given(data=st.data())
def test_structure_mutations_never_crash(fuzz_dir: Workspace, data: st.DataObject) -> None:
    doc = mutate_structure(data)
    try:
        text = yaml.dump(doc, Dumper=DUMPER, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):  # e.g. lone surrogates: not representable
        return
    outcome = check_outcome(fuzz_dir.write(text))
    if isinstance(outcome, SpecError):
        assert any(p.line > 0 for p in outcome.problems)


@fuzz(300)
@given(data=st.data())
def test_cli_exits_0_or_2_with_located_lines(
    fuzz_dir: Workspace, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fuzz_dir.write(mutate_text(TEMPLATE, data))
    code = main(["validate", "--quiet", str(path)])
    err = capsys.readouterr().err
    assert code in {0, 2}
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert re.match(rf"{re.escape(str(path))}:[1-9][0-9]*:[1-9][0-9]*: ", err), err


HOSTILE = {
    "alias bomb": "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ]
    ),
    "deep nesting": "a: " + "[" * 5000 + "]" * 5000,
    "deep mapping": "".join(f"{' ' * i}k{i}:\n" for i in range(200)),
    "huge scalar": "apiVersion: " + "x" * 400_000,
    "huge int": "metadata: {name: " + "9" * 100_000 + "}",
    "too big": "# " + "x" * 600_000,
    "binary": "\x00\x01\x02",
    "bom": "\ufeffapiVersion: enclave.dev/v1alpha1",
    "recursive alias": "a: &a [*a]",
    "python tag": "a: !!python/object/apply:os.system ['true']",
    "set tag": "a: !!set {x, y}",
    "only comments": "# nothing here\n",
    "scalar document": "just a string",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.timeout(20)
def test_hostile_documents(fuzz_dir: Workspace, name: str) -> None:
    outcome = check_outcome(fuzz_dir.write(HOSTILE[name]))
    assert isinstance(outcome, SpecError)
