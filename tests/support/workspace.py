"""A workspace holding the example spec and the usage catalog, for spec tests."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

TEMPLATE = (files("enclave") / "data" / "enclave.yaml").read_text(encoding="utf-8")
CATALOG = (files("enclave") / "data" / "catalog.yaml").read_text(encoding="utf-8")


@dataclass
class Workspace:
    """A directory with ``policies/usage/catalog.yaml``; writes spec files into it."""

    root: Path

    def write(self, text: str, name: str = "enclave.yaml") -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path

    def example(self, *replacements: tuple[str, str], name: str = "enclave.yaml") -> Path:
        """The example spec with each ``(old, new)`` replaced exactly once."""
        text = TEMPLATE
        for old, new in replacements:
            assert old in text, f"{old!r} is not in the example spec"
            text = text.replace(old, new, 1)
        return self.write(text, name)


def make_workspace(root: Path) -> Workspace:
    catalog = root / "policies" / "usage" / "catalog.yaml"
    catalog.parent.mkdir(parents=True, exist_ok=True)
    catalog.write_text(CATALOG, encoding="utf-8")
    return Workspace(root)
