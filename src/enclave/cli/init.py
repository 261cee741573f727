"""``enclave init``: write a commented example spec and the usage catalog it refers to."""

from __future__ import annotations

import os
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from enclave.cli.console import out
from enclave.errors import ConflictError, InputError
from enclave.spec.units import check_name

CATALOG_PATH = Path("policies/usage/catalog.yaml")
SCREENS_PATH = Path("policies/usage/screens.yaml")


def _template(name: str) -> str:
    return (files("enclave") / "data" / name).read_text(encoding="utf-8")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path(),
    name: Annotated[str, typer.Option(help="metadata.name of the enclave.")] = "demo",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented enclave.yaml and the usage policies (catalog, screens) into DIRECTORY.

    Refuses (exit 3) to overwrite an existing file unless --force is given.
    """
    try:
        check_name(name)
    except ValueError as exc:
        raise InputError(f"--name: {exc}") from None
    if (directory.exists() or directory.is_symlink()) and not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    spec_text = _template("enclave.yaml").replace("name: demo ", f"name: {name} ", 1)
    targets = {
        directory / "enclave.yaml": spec_text,
        directory / CATALOG_PATH: _template("catalog.yaml"),
        directory / SCREENS_PATH: _template("screens.yaml"),
    }
    existing = [path for path in targets if path.exists() or path.is_symlink()]
    for path in existing:
        if path.is_symlink() or not path.is_file():
            raise InputError(f"{path}: not a regular file; enclave init writes only files")
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise ConflictError(f"{names} already exist(s) (use --force to overwrite)")
    for path, text in targets.items():
        try:
            _write_atomically(path, text)
        except OSError as exc:
            raise InputError(f"{path}: cannot write it: {exc.strerror or exc}") from None
    console = out()
    for path in targets:
        console.print(f"wrote {path}", markup=False)
    console.print(f"next: enclave validate {directory / 'enclave.yaml'}", markup=False)
