"""The README's console examples are run, and their output must match exactly.

Each ```console block is a sequence of ``$ command`` lines, each followed by its expected output
(stderr, then stdout). Supported commands: ``enclave ...`` (run in-process) and ``echo $?``.
They run in a temp copy of ``examples/`` and ``policies/``.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from enclave.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)


def console_steps() -> list[tuple[str, str]]:
    """(command, expected output) pairs of every console block, in order."""
    steps: list[tuple[str, str]] = []
    for block in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        for chunk in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, _, output = chunk.partition("\n")
            steps.append((command, output))
    return steps


def test_readme_has_console_examples() -> None:
    assert len(console_steps()) >= 5


def test_readme_console_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    monkeypatch.chdir(tmp_path)
    last = 0
    for command, expected in console_steps():
        if command == "echo $?":
            actual = f"{last}\n"
        else:
            argv = shlex.split(command)
            assert argv[0] == "enclave", f"README runs an unsupported command: {command}"
            last = main(argv[1:])
            captured = capsys.readouterr()
            actual = captured.err + captured.out
        assert actual == expected, f"output of `{command}` differs from the README"
