"""The pure parts of the service images: wheelhouse cache, recipes, digests, Dockerfiles, build
context, and the build flow against a stand-in engine (no Docker, network or pip needed)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import docker.errors
import pytest

from enclave.cli.main import main
from enclave.errors import ConflictError, DockerError, InputError, ServiceError
from enclave.images.base import LABEL_COMPONENT, LABEL_RECIPE_DIGEST, BaseImageRecipe
from enclave.images.service import (
    COMMON,
    COMPONENTS,
    LABEL_BUILD_ID,
    LABEL_VERSION,
    VENV,
    CommonRecipe,
    ComponentRecipe,
    ServiceComponent,
    ServiceImageSettings,
    build_failure,
    build_service_images,
    ensure_service_images,
    list_images,
    write_context,
)
from enclave.images.wheels import (
    STAMP,
    Wheel,
    Wheelhouse,
    cached_wheelhouse,
    ensure_wheelhouse,
    find_project_root,
    pip_wheel_argv,
    source_key,
)

Output = pytest.CaptureFixture[str]

BASE_ID = "sha256:" + "ba" * 32


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheelhouse(directory: Path, extra: bytes = b"") -> Wheelhouse:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "enclave-0.1.0-py3-none-any.whl").write_bytes(b"project" + extra)
    (directory / "python_dateutil-4.0.0-py3-none-any.whl").write_bytes(b"dependency")
    return Wheelhouse.scan(directory)


def _common(house: Wheelhouse, **fields: Any) -> CommonRecipe:
    values: dict[str, Any] = {
        "base_tag": BaseImageRecipe().tag,
        "base_image_id": BASE_ID,
        "wheelhouse": house,
    }
    values.update(fields)
    return CommonRecipe(**values)


@pytest.fixture
def house(tmp_path: Path) -> Wheelhouse:
    return _wheelhouse(tmp_path / "wheels")


# --- wheels -----------------------------------------------------------------------------------


def test_wheel_names_carry_project_and_version() -> None:
    wheel = Wheel("python_dateutil-4.0.0-py3-none-any.whl", "0" * 64)
    assert (wheel.project, wheel.version) == ("python-dateutil", "4.0.0")
    built = Wheel("Foo.Bar-1.0rc1-1-cp311-abi3-manylinux_2_34_x86_64.whl", "0" * 64)
    assert (built.project, built.version) == ("foo-bar", "1.0rc1")
    with pytest.raises(InputError, match="not a wheel file name"):
        Wheel("enclave-0.1.0.tar.gz", "0" * 64)


def test_wheelhouse_scan_hashes_wheels_and_pins_the_project(house: Wheelhouse) -> None:
    (house.directory / STAMP).write_text("{}")
    (house.directory / "notes.txt").write_text("ignored")
    scanned = Wheelhouse.scan(house.directory)
    assert [w.filename for w in scanned.wheels] == [
        "enclave-0.1.0-py3-none-any.whl",
        "python_dateutil-4.0.0-py3-none-any.whl",
    ]
    assert scanned.wheels[0].sha256 == _sha(b"project")
    assert scanned.requirement == "enclave==0.1.0"
    assert scanned.project_wheel.filename == "enclave-0.1.0-py3-none-any.whl"
    expected = json.dumps(sorted([w.filename, w.sha256] for w in scanned.wheels))
    assert scanned.digest == _sha(expected.replace(" ", "").encode())


def test_wheelhouse_digest_ignores_where_it_lies(tmp_path: Path) -> None:
    assert _wheelhouse(tmp_path / "a").digest == _wheelhouse(tmp_path / "b").digest
    assert _wheelhouse(tmp_path / "c", b"!").digest != _wheelhouse(tmp_path / "a").digest


def test_wheelhouse_needs_exactly_one_project_wheel(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        Wheelhouse.scan(tmp_path / "missing")
    (tmp_path / "six-1.0-py3-none-any.whl").write_bytes(b"x")
    with pytest.raises(InputError, match=r"exactly one enclave wheel \(found none\)"):
        Wheelhouse.scan(tmp_path)
    (tmp_path / "enclave-0.1.0-py3-none-any.whl").write_bytes(b"a")
    (tmp_path / "enclave-0.2.0-py3-none-any.whl").write_bytes(b"b")
    with pytest.raises(
        InputError, match=r"found enclave-0\.1\.0-py3-none-any\.whl, enclave-0\.2\.0"
    ):
        Wheelhouse.scan(tmp_path)


def _project(root: Path) -> Path:
    (root / "src" / "enclave").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "enclave"\n')
    (root / "src" / "enclave" / "__init__.py").write_text("x = 1\n")
    return root


def test_source_key_follows_pyproject_and_sources_only(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    key = source_key(root)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    cache = root / "src" / "enclave" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"bytecode")
    (root / "README.md").write_text("not a source")
    (root / "tests").mkdir()
    assert source_key(root) == key
    (root / "src" / "enclave" / "__init__.py").write_text("x = 2\n")
    changed = source_key(root)
    assert changed != key
    (root / "src" / "enclave" / "__init__.py").rename(root / "src" / "enclave" / "other.py")
    assert source_key(root) not in {key, changed}
    (root / "src" / "enclave" / "other.py").write_text("x = 2\n")
    (root / "pyproject.toml").write_text('[project]\nname = "enclave"\nversion = "2"\n')
    assert source_key(root) not in {key, changed}
    with pytest.raises(InputError, match="not a source checkout"):
        source_key(tmp_path)


def test_find_project_root_is_this_checkout() -> None:
    root = find_project_root()
    assert root is not None
    assert (root / "src" / "enclave" / "images" / "wheels.py").is_file()


def test_pip_wheel_argv(tmp_path: Path) -> None:
    argv = pip_wheel_argv(tmp_path / "root", tmp_path / "out", "/venv/bin/python")
    assert argv == [
        "/venv/bin/python",
        "-m",
        "pip",
        "wheel",
        "--no-input",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(tmp_path / "out"),
        str(tmp_path / "root"),
    ]


FAKE_PIP = """#!/bin/sh
# stands in for "python -m pip wheel ... --wheel-dir DIR ROOT"
echo run >> "{calls}"
while [ "$#" -gt 0 ]; do
  if [ "$1" = "--wheel-dir" ]; then dir="$2"; fi
  shift
done
{body}
"""


def _fake_python(tmp_path: Path, body: str) -> tuple[str, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PIP.format(calls=calls, body=body))
    script.chmod(0o755)
    return str(script), calls


WRITES_WHEELS = """
printf project > "$dir/enclave-0.1.0-py3-none-any.whl"
printf dep > "$dir/six-1.0-py3-none-any.whl"
echo "Successfully built enclave"
"""


def test_ensure_wheelhouse_builds_once_then_uses_the_cache(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    python, calls = _fake_python(tmp_path, WRITES_WHEELS)
    cache = tmp_path / "cache"
    assert cached_wheelhouse(root, cache) is None
    first = ensure_wheelhouse(root, cache, python=python)
    assert first.directory == cache / source_key(root)
    assert first.requirement == "enclave==0.1.0"
    assert sorted(p.name for p in cache.iterdir()) == [source_key(root)]  # no work dir left
    assert (cache.stat().st_mode & 0o777) == 0o700
    stamp = json.loads((first.directory / STAMP).read_text())
    assert stamp["wheels"] == {
        "enclave-0.1.0-py3-none-any.whl": _sha(b"project"),
        "six-1.0-py3-none-any.whl": _sha(b"dep"),
    }
    assert ensure_wheelhouse(root, cache, python=python) == first
    assert calls.read_text().count("run") == 1


def test_a_damaged_wheelhouse_is_rebuilt_and_stale_ones_pruned(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    python, calls = _fake_python(tmp_path, WRITES_WHEELS)
    cache = tmp_path / "cache"
    first = ensure_wheelhouse(root, cache, python=python)
    (first.directory / "six-1.0-py3-none-any.whl").write_bytes(b"tampered")
    assert cached_wheelhouse(root, cache) is None
    ensure_wheelhouse(root, cache, python=python)
    assert calls.read_text().count("run") == 2
    (cache / "unrelated").mkdir()
    (root / "src" / "enclave" / "new.py").write_text("")
    second = ensure_wheelhouse(root, cache, python=python)
    assert sorted(p.name for p in cache.iterdir()) == sorted([second.directory.name, "unrelated"])


def test_pip_failure_is_a_service_error_and_leaves_nothing(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    python, _ = _fake_python(
        tmp_path, 'echo "ERROR: No matching distribution found for pydantic" >&2\nexit 1'
    )
    cache = tmp_path / "cache"
    with pytest.raises(ServiceError, match=r"pip wheel failed \(exit 1\): ERROR: No matching"):
        ensure_wheelhouse(root, cache, python=python)
    assert list(cache.iterdir()) == []


# --- recipes, digests, Dockerfiles ------------------------------------------------------------


def test_components_are_runtime_and_gateway_entering_their_subcommand() -> None:
    assert [(c.name, c.entrypoint) for c in COMPONENTS] == [
        ("runtime", (f"{VENV}/bin/enclave", "runtime", "serve")),
        ("gateway", (f"{VENV}/bin/enclave", "gateway", "serve")),
    ]


@pytest.mark.parametrize(
    ("name", "command"),
    [("base", ("x",)), (COMMON, ("x",)), ("Runtime", ("x",)), ("a", ()), ("a", ("--evil",))],
)
def test_invalid_components(name: str, command: tuple[str, ...]) -> None:
    with pytest.raises(InputError):
        ServiceComponent(name, command)


def test_settings_reject_bad_namespaces_and_duplicates() -> None:
    assert ServiceImageSettings(namespace="registry.local/enclave").namespace
    with pytest.raises(InputError, match="not a repository path"):
        ServiceImageSettings(namespace="Enclave")
    twice = (COMPONENTS[0], COMPONENTS[0])
    with pytest.raises(InputError, match="duplicate"):
        ServiceImageSettings(components=twice)


def test_common_dockerfile_installs_offline_in_a_throwaway_stage(house: Wheelhouse) -> None:
    text = _common(house).dockerfile()
    base = BaseImageRecipe().tag
    build, final = text.split("\n\n")
    build_lines = [line for line in build.splitlines() if not line.startswith("#")]
    assert build_lines[:4] == [
        f"FROM {base} AS venv",
        "ARG ENCLAVE_BUILD_ID",
        f"LABEL {LABEL_BUILD_ID}=${{ENCLAVE_BUILD_ID}}",
        "COPY wheels/ /tmp/wheels/",
    ]
    assert "pip install --no-index --find-links /tmp/wheels" in build
    assert "'enclave==0.1.0'" in build
    assert "pip uninstall --yes --disable-pip-version-check pip setuptools" in build
    assert final.splitlines()[0] == f"FROM {base}"
    assert "COPY --from=venv /opt/enclave /opt/enclave" in final
    assert "wheels" not in final and "pip" not in final  # nothing of stage 1 but the venv
    assert "useradd --uid 10001 --gid 10001" in final
    assert "USER 10001:10001" in final
    assert final.rstrip().endswith('ENTRYPOINT ["/opt/enclave/bin/enclave"]')
    assert text.count("FROM ") == 2


def test_component_dockerfile_is_metadata_only(house: Wheelhouse) -> None:
    common = _common(house)
    recipe = ComponentRecipe(COMPONENTS[0], common)
    lines = [line for line in recipe.dockerfile().splitlines() if not line.startswith("#")]
    assert lines == [
        f"FROM {common.tag}",
        "USER 10001:10001",
        'ENTRYPOINT ["/opt/enclave/bin/enclave", "runtime", "serve"]',
    ]


def test_digests_tags_and_labels(house: Wheelhouse) -> None:
    common = _common(house)
    document = json.loads(common.canonical())
    assert set(document) == {"schema", "builder_version", "base", "wheels", "dockerfile"}
    assert document["base"] == {"tag": BaseImageRecipe().tag, "image_id": BASE_ID}
    assert document["dockerfile"] == common.dockerfile()
    assert common.digest == _sha(common.canonical())
    assert common.tag == f"enclave/common:{common.digest[:12]}"
    assert common.labels == {
        LABEL_COMPONENT: COMMON,
        LABEL_RECIPE_DIGEST: common.digest,
        LABEL_VERSION: "0.1.0",
    }
    recipe = ComponentRecipe(COMPONENTS[1], common)
    assert json.loads(recipe.canonical())["common"] == common.digest
    assert recipe.tag == f"enclave/gateway:{recipe.digest[:12]}"
    assert recipe.labels[LABEL_COMPONENT] == "gateway"
    assert recipe.labels[LABEL_RECIPE_DIGEST] == recipe.digest


def test_every_input_feeds_the_common_digest(tmp_path: Path, house: Wheelhouse) -> None:
    reference = _common(house).digest
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "enclave-0.1.0-py3-none-any.whl").write_bytes(b"project")
    (renamed / "dateutil-4.0.0-py3-none-any.whl").write_bytes(b"dependency")
    variants = [
        _common(house, base_image_id="sha256:" + "cd" * 32),
        _common(house, base_tag="enclave/base:000000000000"),
        _common(house, builder_version=2),
        _common(_wheelhouse(tmp_path / "changed", b"!")),
        _common(Wheelhouse.scan(renamed)),
    ]
    assert len({v.digest for v in variants} | {reference}) == len(variants) + 1
    # the namespace names the image, it does not change what is in it
    assert _common(house, namespace="elsewhere").digest == reference
    assert _common(house, namespace="elsewhere").tag.startswith("elsewhere/common:")


def test_every_input_feeds_the_component_digest(tmp_path: Path, house: Wheelhouse) -> None:
    common = _common(house)
    reference = ComponentRecipe(COMPONENTS[0], common).digest
    variants = [
        ComponentRecipe(COMPONENTS[0], _common(house, base_image_id="sha256:" + "cd" * 32)),
        ComponentRecipe(COMPONENTS[0], _common(_wheelhouse(tmp_path / "w", b"!"))),
        ComponentRecipe(ServiceComponent("runtime", ("runtime", "other")), common),
        ComponentRecipe(ServiceComponent("model", ("runtime", "serve")), common),
    ]
    assert len({v.digest for v in variants} | {reference}) == len(variants) + 1


def test_build_context_holds_the_dockerfile_and_listed_wheels_only(
    tmp_path: Path, house: Wheelhouse
) -> None:
    (house.directory / STAMP).write_text("{}")
    (house.directory / "secret.txt").write_text("never in a context")
    context = tmp_path / "context"
    context.mkdir()
    write_context(context, "FROM scratch\n", house)
    found = sorted(p.relative_to(context).as_posix() for p in context.rglob("*"))
    assert found == [
        "Dockerfile",
        "wheels",
        "wheels/enclave-0.1.0-py3-none-any.whl",
        "wheels/python_dateutil-4.0.0-py3-none-any.whl",
    ]
    assert (context / "wheels" / "enclave-0.1.0-py3-none-any.whl").read_bytes() == b"project"
    bare = tmp_path / "bare"
    bare.mkdir()
    write_context(bare, "FROM x\n")
    assert [p.name for p in bare.iterdir()] == ["Dockerfile"]


def test_build_failure_names_the_step_and_the_last_output() -> None:
    # the engine's shape: stderr arrives coloured, interleaved with stdout
    log = [
        {"stream": "Step 5/12 : RUN python3 -m venv /opt/enclave"},
        {"stream": "\n"},
        {"stream": " ---> Running in 0123456789ab\n"},
        {"stream": "\x1b[91mERROR: No matching distribution found for uvloop\n\x1b[0m"},
        {"stream": "Looking in links: /tmp/wheels\n"},
        {"stream": "Removing intermediate container 0123456789ab\n"},
    ]
    error = build_failure(
        "enclave/common:abc",
        "The command '/bin/sh -c python3 -m venv /opt/enclave' returned a non-zero code: 1",
        iter(log),
    )
    assert str(error) == (
        "building enclave/common:abc: a RUN step exited 1: "
        "ERROR: No matching distribution found for uvloop"
    )
    only_stdout = [{"stream": "last words\n"}, {"stream": "\x1b[0m"}]
    assert str(build_failure("t:x", "returned a non-zero code: 2", iter(only_stdout))).endswith(
        "exited 2: last words"
    )
    assert str(build_failure("t:x", "pull access denied\nmore", iter([]))) == (
        "building t:x: pull access denied"
    )


# --- the build flow against a stand-in engine -------------------------------------------------


class _Image:
    def __init__(self, image_id: str, labels: dict[str, str], tags: list[str]) -> None:
        self.id = image_id
        self.labels = labels
        self.tags = tags
        self.attrs: dict[str, Any] = {"Size": 1000, "Created": "2026-01-02T03:04:05.123456789Z"}


class _Images:
    def __init__(self) -> None:
        self.by_tag: dict[str, _Image] = {}
        self.builds: list[dict[str, Any]] = []
        self.list_calls: list[dict[str, Any]] = []
        self.fail_with: Exception | None = None

    def get(self, tag: str) -> _Image:
        if tag not in self.by_tag:
            raise docker.errors.ImageNotFound(f"no such image: {tag}")
        return self.by_tag[tag]

    def build(self, **kwargs: Any) -> tuple[_Image, Iterator[dict[str, str]]]:
        context = Path(kwargs["path"])
        kwargs["files"] = sorted(p.relative_to(context).as_posix() for p in context.rglob("*"))
        kwargs["dockerfile_text"] = (context / "Dockerfile").read_text()
        self.builds.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        image = _Image(f"sha256:{len(self.builds):064x}", kwargs["labels"], [kwargs["tag"]])
        self.by_tag[kwargs["tag"]] = image
        return image, iter([])

    def list(self, **kwargs: Any) -> list[_Image]:
        self.list_calls.append(kwargs)
        if kwargs.get("all"):
            return []  # no build stage left behind
        wanted = kwargs["filters"]["label"]
        unique = {id(i): i for i in self.by_tag.values() if wanted in i.labels}
        return list(unique.values())


class _Client:
    def __init__(self) -> None:
        self.images = _Images()
        recipe = BaseImageRecipe()
        self.images.by_tag[recipe.tag] = _Image(BASE_ID, recipe.labels, [recipe.tag])

    def close(self) -> None:
        pass


def _as_client(fake: _Client) -> Any:
    return cast("Any", fake)


def test_build_service_images_builds_what_is_missing_then_nothing(
    tmp_path: Path, house: Wheelhouse
) -> None:
    fake = _Client()
    heard: list[tuple[str, str]] = []
    result = build_service_images(
        _as_client(fake),
        cache_dir=tmp_path / "cache",
        wheelhouse=house.directory,
        progress=lambda what, name: heard.append((what, name)),
    )
    assert [(o.component, o.built) for o in result.images] == [
        ("base", False),
        (COMMON, True),
        ("runtime", True),
        ("gateway", True),
    ]
    assert not result.wheelhouse_built
    assert set(result.tags) == {"runtime", "gateway"}
    assert heard == [(o.component, o.tag) for o in result.images[1:]]
    common, runtime, _ = fake.images.builds
    for build in fake.images.builds:
        assert build["pull"] is False
        assert build["network_mode"] == "none"
        assert build["rm"] is True and build["forcerm"] is True
        assert build["use_config_proxy"] is False
        assert build["tag"].split(":")[1] == build["labels"][LABEL_RECIPE_DIGEST][:12]
    assert common["files"] == [
        "Dockerfile",
        "wheels",
        "wheels/enclave-0.1.0-py3-none-any.whl",
        "wheels/python_dateutil-4.0.0-py3-none-any.whl",
    ]
    assert set(common["buildargs"]) == {"ENCLAVE_BUILD_ID"}
    assert runtime["files"] == ["Dockerfile"]
    assert runtime["buildargs"] is None
    assert runtime["dockerfile_text"].splitlines()[1] == f"FROM {common['tag']}"
    stage_cleanups = [c for c in fake.images.list_calls if c.get("all")]
    assert len(stage_cleanups) == 1  # only the common image has a build stage
    assert stage_cleanups[0]["filters"]["label"] == (
        f"{LABEL_BUILD_ID}={common['buildargs']['ENCLAVE_BUILD_ID']}"
    )

    again = ensure_service_images(
        _as_client(fake), cache_dir=tmp_path / "cache", wheelhouse=house.directory
    )
    assert again == result.tags
    assert len(fake.images.builds) == 3


def test_a_tag_built_from_another_recipe_is_a_conflict(tmp_path: Path, house: Wheelhouse) -> None:
    fake = _Client()
    tags = ensure_service_images(_as_client(fake), cache_dir=tmp_path, wheelhouse=house.directory)
    fake.images.by_tag[tags["gateway"]].labels = {LABEL_RECIPE_DIGEST: "other"}
    with pytest.raises(ConflictError, match="not built from this recipe"):
        ensure_service_images(_as_client(fake), cache_dir=tmp_path, wheelhouse=house.directory)


def test_build_errors_become_one_line_docker_errors(tmp_path: Path, house: Wheelhouse) -> None:
    fake = _Client()
    log = iter([{"stream": "useradd: UID 10001 is not unique\n"}])
    fake.images.fail_with = docker.errors.BuildError("returned a non-zero code: 4", log)
    with pytest.raises(DockerError, match=r"a RUN step exited 4: useradd: UID 10001 is not"):
        ensure_service_images(_as_client(fake), cache_dir=tmp_path, wheelhouse=house.directory)
    fake.images.fail_with = docker.errors.APIError("500", explanation="no space left on device")
    with pytest.raises(DockerError, match=r"building enclave/common:\w+: no space left"):
        ensure_service_images(_as_client(fake), cache_dir=tmp_path, wheelhouse=house.directory)


def test_list_images_sorts_tags_and_trims_times() -> None:
    fake = _Client()
    fake.images.by_tag["z/gateway:1"] = _Image(
        "sha256:1", {LABEL_COMPONENT: "gateway", LABEL_RECIPE_DIGEST: "d" * 64}, ["z/gateway:1"]
    )
    fake.images.by_tag["untagged"] = _Image("sha256:2", {LABEL_COMPONENT: "x"}, [])
    found = list_images(_as_client(fake))
    assert [i.tag for i in found] == [BaseImageRecipe().tag, "z/gateway:1"]
    assert found[1].as_dict() == {
        "tag": "z/gateway:1",
        "component": "gateway",
        "digest": "d" * 64,
        "id": "sha256:1",
        "size": 1000,
        "created": "2026-01-02T03:04:05Z",
    }


# --- CLI against the stand-in engine ----------------------------------------------------------


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> _Client:
    fake = _Client()
    monkeypatch.setattr("enclave.cli.images.connect_engine", lambda: fake)
    return fake


def test_cli_images_build_then_list(
    capsys: Output, tmp_path: Path, engine: _Client, house: Wheelhouse
) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    wheels = ["--wheelhouse", str(house.directory)]
    assert main([*state, "images", "build", *wheels, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [i["built"] for i in report["images"]] == [False, True, True, True]
    assert report["wheelhouse"]["digest"] == house.digest

    assert main([*state, "images", "build", *wheels]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(line.endswith("up to date") for line in lines)

    assert main([*state, "images", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(i["component"] for i in listed) == ["base", COMMON, "gateway", "runtime"]
    assert main([*state, "images", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["TAG", "COMPONENT", "DIGEST", "SIZE", "CREATED"]
    assert len(table) == 5


def test_cli_unusable_wheelhouse_exits_2(capsys: Output, tmp_path: Path, engine: _Client) -> None:
    code = main(["--state-dir", str(tmp_path), "images", "build", "--wheelhouse", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("enclave: error: wheelhouse ")
    assert len(captured.err.splitlines()) == 1


def test_cli_without_an_engine_exits_5(capsys: Output, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable() -> None:
        raise DockerError("cannot reach the Docker engine (is dockerd running?): refused")

    monkeypatch.setattr("enclave.cli.images.connect_engine", unreachable)
    assert main(["images", "list"]) == 5
    assert capsys.readouterr().err == (
        "enclave: error: cannot reach the Docker engine (is dockerd running?): refused\n"
    )
