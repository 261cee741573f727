"""The wheelhouse: the project's own wheel and a wheel for every runtime dependency.

Service images are built from a directory of wheels, never from a package index. In a real air
gap that directory arrives in a transfer bundle; on a connected build host it is made from the
source checkout with the venv's pip (``pip wheel <project root> -w DIR``, which uses whatever
index pip is configured with) and cached::

    wheelhouse = ensure_wheelhouse(project_root, cache_dir)   # about 20 s, then cached
    wheelhouse = Wheelhouse.scan(directory)                    # a directory from a bundle

The cache lives in ``cache_dir/<source key>/``, where the source key (:func:`source_key`) is a
sha256 over ``pyproject.toml``, every file under ``src/`` and the interpreter that builds the
wheels; a stamp file records each wheel's sha256, so a damaged or partial directory is rebuilt,
not trusted. Wheelhouses of other source keys are removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import InputError
from enclave.images.base import _run

__all__ = [
    "PROJECT",
    "STAMP",
    "Wheel",
    "Wheelhouse",
    "build_wheelhouse",
    "cached_wheelhouse",
    "ensure_wheelhouse",
    "find_project_root",
    "pip_wheel_argv",
    "source_key",
]

logger = logging.getLogger(__name__)

PROJECT = "enclave"
"""The distribution the wheelhouse must hold exactly one wheel of."""

STAMP = "wheelhouse.json"
"""The stamp file in a cached wheelhouse: source key and every wheel's sha256."""

_STAMP_SCHEMA = "enclave.dev/wheelhouse/v1"
_KEY_SCHEMA = "enclave.dev/wheel-sources/v1"
_KEY = re.compile(r"^[0-9a-f]{64}$")
# name-version(-build)?-python-abi-platform.whl, the name and version escaped (PEP 427)
_WHEEL = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(?:-\d[^-]*)?"
    r"-[^-]+-[^-]+-[^-]+\.whl$"
)
_SKIPPED_PARTS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Wheel:
    """One wheel file: its name (which carries project, version and tags) and its sha256."""

    filename: str
    sha256: str

    def __post_init__(self) -> None:
        self._parts()

    @property
    def project(self) -> str:
        """The normalised project name (PEP 503): ``python_dateutil`` -> ``python-dateutil``."""
        return re.sub(r"[-_.]+", "-", self._parts()["name"]).lower()

    @property
    def version(self) -> str:
        return self._parts()["version"]

    def _parts(self) -> re.Match[str]:
        match = _WHEEL.match(self.filename)
        if match is None:
            raise InputError(f"not a wheel file name: {self.filename!r}")
        return match


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    """A directory of wheels holding exactly one wheel of :data:`PROJECT`."""

    directory: Path
    wheels: tuple[Wheel, ...]

    def __post_init__(self) -> None:
        found = [wheel.filename for wheel in self.wheels if wheel.project == PROJECT]
        if len(found) != 1:
            raise InputError(
                f"wheelhouse {self.directory} must hold exactly one {PROJECT} wheel "
                f"(found {', '.join(found) or 'none'})"
            )

    @classmethod
    def scan(cls, directory: Path) -> Wheelhouse:
        """Read ``directory`` (only ``*.whl`` files count) and hash every wheel in it.

        Raises :class:`InputError` when it is not a directory, holds no wheel of the project,
        or holds more than one.
        """
        if not directory.is_dir():
            raise InputError(f"wheelhouse {directory} is not a directory")
        wheels = tuple(
            Wheel(path.name, _sha256_file(path))
            for path in sorted(directory.iterdir())
            if path.suffix == ".whl" and path.is_file()
        )
        return cls(directory, wheels)

    @property
    def project_wheel(self) -> Wheel:
        return next(wheel for wheel in self.wheels if wheel.project == PROJECT)

    @property
    def requirement(self) -> str:
        """What to install from it: the project, pinned to the version of its wheel."""
        return f"{PROJECT}=={self.project_wheel.version}"

    def canonical(self) -> bytes:
        document = sorted([wheel.filename, wheel.sha256] for wheel in self.wheels)
        return json.dumps(document, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """sha256 over every wheel's file name and sha256 (not over the directory's path)."""
        return hashlib.sha256(self.canonical()).hexdigest()


def find_project_root() -> Path | None:
    """The source checkout this module runs from (editable install), or ``None``."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / PROJECT).is_dir():
        return root
    return None


def source_key(project_root: Path) -> str:
    """sha256 over what the wheelhouse is built from: ``pyproject.toml``, every file under
    ``src/`` (bytecode caches excepted), and the Python version and machine that build it (the
    binary wheels pip picks depend on both)."""
    pyproject = project_root / "pyproject.toml"
    src = project_root / "src"
    if not pyproject.is_file() or not src.is_dir():
        raise InputError(f"{project_root} is not a source checkout (no pyproject.toml and src/)")
    files: list[list[str]] = []
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(project_root)
        if _SKIPPED_PARTS.intersection(relative.parts) or path.suffix in _SKIPPED_SUFFIXES:
            continue
        if path.is_file():
            files.append([relative.as_posix(), _sha256_file(path)])
    document = {
        "schema": _KEY_SCHEMA,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(),
        "pyproject": _sha256_file(pyproject),
        "files": files,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def pip_wheel_argv(project_root: Path, dest: Path, python: str) -> list[str]:
    """The command line that fills ``dest`` with the project's and its dependencies' wheels."""
    return [
        python,
        "-m",
        "pip",
        "wheel",
        "--no-input",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(dest),
        str(project_root),
    ]


def cached_wheelhouse(project_root: Path, cache_dir: Path) -> Wheelhouse | None:
    """The cached wheelhouse for the checkout's current sources, if present and intact."""
    return _load_cached(cache_dir / source_key(project_root))


def build_wheelhouse(
    project_root: Path,
    cache_dir: Path,
    *,
    python: str | None = None,
    timeout_s: float = 900.0,
) -> Wheelhouse:
    """Build the wheelhouse with pip into ``cache_dir/<source key>/`` (replacing what is there).

    pip writes into a private temporary directory next to the destination, which appears only
    when complete. ``python`` is the interpreter whose pip runs (default: this one, the venv's).
    Raises :class:`ServiceError` when pip fails, with its last line of error output.
    """
    key = source_key(project_root)
    dest = cache_dir / key
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache_dir))
    try:
        wheels = work / "wheels"
        wheels.mkdir()
        logger.info("building the wheelhouse for %s (%s)", project_root, key[:12])
        _run(pip_wheel_argv(project_root, wheels, python or sys.executable), "pip wheel", timeout_s)
        house = Wheelhouse.scan(wheels)
        stamp = {
            "schema": _STAMP_SCHEMA,
            "source_key": key,
            "wheels": {wheel.filename: wheel.sha256 for wheel in house.wheels},
        }
        (wheels / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        wheels.replace(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(cache_dir, keep=key)
    logger.info("wrote the wheelhouse %s (%d wheels)", dest, len(house.wheels))
    return Wheelhouse(dest, house.wheels)


def ensure_wheelhouse(
    project_root: Path, cache_dir: Path, *, python: str | None = None
) -> Wheelhouse:
    """The cached wheelhouse for the checkout's sources, built first when missing or stale."""
    cached = cached_wheelhouse(project_root, cache_dir)
    if cached is not None:
        logger.debug("wheelhouse %s is up to date", cached.directory)
        return cached
    return build_wheelhouse(project_root, cache_dir, python=python)


def _load_cached(directory: Path) -> Wheelhouse | None:
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("schema") != _STAMP_SCHEMA:
        return None
    try:
        house = Wheelhouse.scan(directory)
    except InputError:
        return None
    if {wheel.filename: wheel.sha256 for wheel in house.wheels} != stamp.get("wheels"):
        logger.warning("wheelhouse %s does not match its stamp; rebuilding it", directory)
        return None
    return house


def _prune(cache_dir: Path, *, keep: str) -> None:
    """Remove the wheelhouses of other source keys (only directories named like a key)."""
    for path in cache_dir.iterdir():
        if path.name != keep and _KEY.match(path.name) and path.is_dir():
            logger.debug("removing the stale wheelhouse %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
