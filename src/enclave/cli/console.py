"""Where the CLI writes: results to stdout, problems and progress to stderr."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from enclave.errors import Problem, Severity


def out() -> Console:
    """A console on the current stdout (looked up per call, so redirection is honoured)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def print_problems(problems: list[Problem]) -> None:
    """One line per problem on stderr, in the ``file:line:col: path: message`` form."""
    console = err()
    for problem in problems:
        style = "red" if problem.severity is Severity.ERROR else "yellow"
        console.print(str(problem), style=style, markup=False)
