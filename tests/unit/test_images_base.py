"""The pure parts of the offline base image: recipe digest and tag, command lines, builds
driven by a stand-in debootstrap (no root, network or Docker needed)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import tarfile
from typing import TYPE_CHECKING, Any, cast

import docker.errors
import pytest

from enclave.errors import ConflictError, DockerError, InputError, ServiceError
from enclave.images import base
from enclave.images.base import (
    LABEL_COMPONENT,
    LABEL_RECIPE_DIGEST,
    BaseImageRecipe,
    build_rootfs,
    debootstrap_argv,
    ensure_base_image,
    import_changes,
    import_rootfs,
    rootfs_tarball_path,
    split_tag,
    tar_argv,
)

if TYPE_CHECKING:
    from pathlib import Path

    from docker import DockerClient


def test_digest_is_sha256_of_the_canonical_encoding() -> None:
    recipe = BaseImageRecipe()
    document = json.loads(recipe.canonical())
    assert document == {
        "builder_version": 1,
        "packages": ["ca-certificates", "python3", "python3-venv"],
        "schema": "enclave.dev/base-recipe/v1",
        "suite": "bookworm",
        "variant": "minbase",
    }
    assert (
        recipe.canonical() == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    )
    assert recipe.digest == hashlib.sha256(recipe.canonical()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", recipe.digest)


def test_package_order_and_duplicates_do_not_change_the_digest() -> None:
    a = BaseImageRecipe(packages=("python3", "ca-certificates", "python3-venv"))
    b = BaseImageRecipe(packages=("python3-venv", "python3", "ca-certificates", "python3"))
    assert a == b
    assert a.digest == b.digest == BaseImageRecipe().digest


@pytest.mark.parametrize(
    "changed",
    [
        BaseImageRecipe(suite="trixie"),
        BaseImageRecipe(variant="buildd"),
        BaseImageRecipe(packages=(*base.DEFAULT_PACKAGES, "curl")),
        BaseImageRecipe(builder_version=2),
    ],
)
def test_every_field_feeds_the_digest(changed: BaseImageRecipe) -> None:
    assert changed.digest != BaseImageRecipe().digest


def test_tag_and_labels_come_from_the_digest() -> None:
    recipe = BaseImageRecipe()
    assert recipe.tag == f"enclave/base:{recipe.digest[:12]}"
    assert recipe.labels == {LABEL_COMPONENT: "base", LABEL_RECIPE_DIGEST: recipe.digest}


@pytest.mark.parametrize(
    "fields",
    [
        {"suite": "--foreign"},
        {"variant": "min base"},
        {"packages": ("python3,curl",)},
        {"packages": ("-x",)},
        {"packages": ("",)},
        {"builder_version": 0},
    ],
)
def test_invalid_recipes_are_input_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        BaseImageRecipe(**fields)


def test_debootstrap_argv(tmp_path: Path) -> None:
    argv = debootstrap_argv(BaseImageRecipe(), tmp_path / "root", "/usr/sbin/debootstrap")
    assert argv == [
        "/usr/sbin/debootstrap",
        "--variant=minbase",
        "--include=ca-certificates,python3,python3-venv",
        "bookworm",
        str(tmp_path / "root"),
    ]


def test_tar_argv_is_stable_and_numeric(tmp_path: Path) -> None:
    argv = tar_argv(tmp_path / "root", tmp_path / "out.tar")
    assert argv[0] == "tar"
    assert {"--numeric-owner", "--sort=name", "--one-file-system"} <= set(argv)
    assert f"--directory={tmp_path / 'root'}" in argv
    assert f"--file={tmp_path / 'out.tar'}" in argv
    assert argv[-1] == "."


def test_rootfs_tarball_path_names_the_full_digest(tmp_path: Path) -> None:
    recipe = BaseImageRecipe()
    assert rootfs_tarball_path(recipe, tmp_path) == tmp_path / f"base-rootfs-{recipe.digest}.tar"


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("enclave/base:abc", ("enclave/base", "abc")),
        ("localhost:5000/enclave/base:abc", ("localhost:5000/enclave/base", "abc")),
    ],
)
def test_split_tag(tag: str, expected: tuple[str, str]) -> None:
    assert split_tag(tag) == expected


@pytest.mark.parametrize("tag", ["enclave/base", "localhost:5000/enclave/base", ":x", "a:"])
def test_split_tag_rejects_untagged_names(tag: str) -> None:
    with pytest.raises(InputError):
        split_tag(tag)


def test_import_changes_set_a_shell_and_quote_labels() -> None:
    changes = import_changes({"b": 'say "hi"', "a": "1"})
    assert changes == ['CMD ["/bin/bash"]', 'LABEL "a"="1"', 'LABEL "b"="say \\"hi\\""']
    with pytest.raises(InputError):
        import_changes({"a": "x\nRUN evil"})


# --- build_rootfs with a stand-in debootstrap -------------------------------------------------

FAKE_OK = """#!/bin/sh
for target; do :; done
mkdir -p "$target/usr/bin" "$target/etc"
echo "bookworm" > "$target/etc/debian_version"
echo "args: $*" > "$target/etc/args"
echo "I: Base system installed successfully." >&2
"""

FAKE_FAIL = """#!/bin/sh
for target; do :; done
mkdir -p "$target/partial"
echo "I: Retrieving InRelease" >&2
echo "E: Failed getting release file" >&2
exit 1
"""


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-debootstrap"
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_is_root", lambda: True)


@pytest.mark.usefixtures("as_root")
def test_build_rootfs_writes_a_private_tarball_and_removes_its_work_dir(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "rootfs.tar"
    assert build_rootfs(BaseImageRecipe(), out, debootstrap=_script(tmp_path, FAKE_OK)) == out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert [p.name for p in out.parent.iterdir()] == ["rootfs.tar"]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        args = tar.extractfile("./etc/args")
        assert args is not None
        assert b"--variant=minbase" in args.read()
        assert {m.uname for m in tar.getmembers()} == {""}
    assert names == sorted(names)
    assert "./etc/debian_version" in names


@pytest.mark.usefixtures("as_root")
def test_build_rootfs_failure_reports_the_last_stderr_line_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "rootfs.tar"
    with pytest.raises(ServiceError, match=r"debootstrap failed \(exit 1\): E: Failed getting"):
        build_rootfs(BaseImageRecipe(), out, debootstrap=_script(tmp_path, FAKE_FAIL))
    assert list(out.parent.iterdir()) == []


@pytest.mark.usefixtures("as_root")
def test_build_rootfs_times_out(tmp_path: Path) -> None:
    slow = _script(tmp_path, "#!/bin/sh\nsleep 30\n")
    with pytest.raises(ServiceError, match="did not finish"):
        build_rootfs(BaseImageRecipe(), tmp_path / "c" / "r.tar", debootstrap=slow, timeout_s=0.5)
    assert list((tmp_path / "c").iterdir()) == []


@pytest.mark.usefixtures("as_root")
def test_build_rootfs_needs_a_rootfs_from_debootstrap(tmp_path: Path) -> None:
    silent = _script(tmp_path, "#!/bin/sh\nexit 0\n")
    with pytest.raises(ServiceError, match="produced no rootfs"):
        build_rootfs(BaseImageRecipe(), tmp_path / "c" / "r.tar", debootstrap=silent)


@pytest.mark.usefixtures("as_root")
def test_build_rootfs_without_debootstrap(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="debootstrap is not installed"):
        build_rootfs(BaseImageRecipe(), tmp_path / "r.tar", debootstrap=tmp_path / "missing")


def test_build_rootfs_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_is_root", lambda: False)
    with pytest.raises(ServiceError, match="needs root"):
        build_rootfs(BaseImageRecipe(), tmp_path / "r.tar")


# --- import / ensure against a stand-in client ------------------------------------------------


class _Image:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.id = "sha256:" + "ab" * 32


class _Images:
    def __init__(self) -> None:
        self.by_tag: dict[str, _Image] = {}

    def get(self, tag: str) -> _Image:
        if tag not in self.by_tag:
            raise docker.errors.ImageNotFound(f"no such image: {tag}")
        return self.by_tag[tag]


class _Api:
    def __init__(self, images: _Images, answer: bytes = b'{"status":"sha256:abab"}\r\n') -> None:
        self.images = images
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def import_image(self, **kwargs: Any) -> bytes:
        kwargs["data"] = kwargs.pop("src").read()
        self.calls.append(kwargs)
        if b"error" not in self.answer:
            labels = dict(
                json.loads(f"[{c[6:].replace('=', ',', 1)}]")
                for c in kwargs["changes"]
                if c.startswith("LABEL ")
            )
            self.images.by_tag[f"{kwargs['repository']}:{kwargs['tag']}"] = _Image(labels)
        return self.answer


class _Client:
    def __init__(self, answer: bytes | None = None) -> None:
        self.images = _Images()
        self.api = _Api(self.images) if answer is None else _Api(self.images, answer)


def _client(fake: _Client) -> DockerClient:
    return cast("DockerClient", fake)


def test_import_rootfs_streams_the_file_with_tag_and_labels(tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"tar bytes")
    fake = _Client()
    image_id = import_rootfs(_client(fake), tarball, "enclave/base:abc", {"k": "v"})
    assert image_id == "sha256:" + "ab" * 32
    (call,) = fake.api.calls
    assert call == {
        "repository": "enclave/base",
        "tag": "abc",
        "changes": ['CMD ["/bin/bash"]', 'LABEL "k"="v"'],
        "data": b"tar bytes",
    }


def test_import_rootfs_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        import_rootfs(_client(_Client()), tmp_path / "nope.tar", "a/b:c", {})
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"not a tar")
    bad = _Client(answer=b'{"errorDetail":{"message":"bad tar"},"error":"bad tar"}\r\n')
    with pytest.raises(DockerError, match="bad tar"):
        import_rootfs(_client(bad), tarball, "a/b:c", {})


def test_ensure_base_image_reuses_a_cached_tarball_then_skips(tmp_path: Path) -> None:
    recipe = BaseImageRecipe()
    cache = tmp_path / "cache"
    cache.mkdir()
    rootfs_tarball_path(recipe, cache).write_bytes(b"prebuilt elsewhere")
    fake = _Client()
    assert ensure_base_image(_client(fake), recipe, cache) == recipe.tag
    assert ensure_base_image(_client(fake), recipe, cache) == recipe.tag
    (call,) = fake.api.calls
    assert call["data"] == b"prebuilt elsewhere"
    assert fake.images.get(recipe.tag).labels == recipe.labels


def test_ensure_base_image_refuses_a_foreign_image_under_its_tag(tmp_path: Path) -> None:
    recipe = BaseImageRecipe()
    fake = _Client()
    fake.images.by_tag[recipe.tag] = _Image({LABEL_RECIPE_DIGEST: "something-else"})
    with pytest.raises(ConflictError, match="not built from this recipe"):
        ensure_base_image(_client(fake), recipe, tmp_path)


def test_docker_failures_become_docker_errors(tmp_path: Path) -> None:
    class _Broken(_Images):
        def get(self, tag: str) -> _Image:
            raise docker.errors.APIError("500", explanation="engine on fire")

    fake = _Client()
    fake.images = _Broken()
    with pytest.raises(DockerError, match=r"looking up enclave/base:\w+: engine on fire"):
        ensure_base_image(_client(fake), BaseImageRecipe(), tmp_path)
