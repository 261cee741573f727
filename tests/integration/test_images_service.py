"""Service images built for real: FROM the offline base, wheels installed with no index and no
network, run hardened (no network, read-only root, no capabilities, uid 10001).

The images are built once per module under a namespace of this test run's own
(``enclave-test-<run id>/...``), so the first call really builds; the teardown removes exactly
the tags it created (an image another tag still names is only untagged, never deleted).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker.errors
import pytest

from enclave import __version__
from enclave.cli.main import main
from enclave.errors import DockerError
from enclave.images.base import LABEL_COMPONENT, LABEL_RECIPE_DIGEST, BaseImageRecipe
from enclave.images.service import (
    COMMON,
    COMPONENTS,
    LABEL_BUILD_ID,
    USER_ID,
    VENV,
    ServiceBuild,
    ServiceImageSettings,
    build_service_images,
)
from support import STATE_DIR, private_dir
from support.docker_engine import DockerResources, ProbeResult

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

Output = pytest.CaptureFixture[str]
CACHE = STATE_DIR / "cache"
USER = f"{USER_ID}:{USER_ID}"


@dataclass(frozen=True, slots=True)
class Built:
    first: ServiceBuild
    settings: ServiceImageSettings


@pytest.fixture(scope="module")
def built(docker_client: DockerClient, base_image: str, test_run_id: str) -> Iterator[Built]:
    settings = ServiceImageSettings(namespace=f"enclave-test-{test_run_id}")
    try:
        first = build_service_images(docker_client, cache_dir=private_dir(CACHE), settings=settings)
        assert first.images[0].tag == base_image
        yield Built(first, settings)
    finally:
        _remove_namespace(docker_client, settings.namespace)


def _remove_namespace(client: DockerClient, namespace: str) -> None:
    """Remove every tag under this run's own namespace (components before common)."""
    tags = [
        tag
        for image in client.images.list(filters={"reference": f"{namespace}/*"})
        for tag in image.tags
        if tag.startswith(f"{namespace}/")
    ]
    for tag in sorted(tags, key=lambda t: t.startswith(f"{namespace}/{COMMON}:")):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag)


def _run(
    client: DockerClient,
    resources: DockerResources,
    image: str,
    command: list[str],
    *,
    entrypoint: list[str] | None = None,
) -> ProbeResult:
    """Run a hardened one-shot container to its end; it is recorded for removal by id."""
    container = client.containers.create(
        image,
        command,
        entrypoint=entrypoint,
        name=resources.name("image"),
        labels=resources.labels,
        network_mode="none",
        user=USER,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        pids_limit=64,
        mem_limit="256m",
        detach=True,
    )
    assert container.id
    resources.container_ids.append(container.id)
    container.start()
    status = container.wait(timeout=60)
    output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    return ProbeResult(exit_code=int(status["StatusCode"]), output=output)


def test_first_build_builds_common_and_every_component(built: Built) -> None:
    outcomes = {o.component: o.built for o in built.first.images}
    assert outcomes == {"base": False, COMMON: True, **{c.name: True for c in COMPONENTS}}
    assert set(built.first.tags) == {c.name for c in COMPONENTS}
    for outcome in built.first.images[1:]:
        assert outcome.tag.startswith(f"{built.settings.namespace}/{outcome.component}:")


def test_images_are_labelled_thin_and_non_root(built: Built, docker_client: DockerClient) -> None:
    common_tag = next(o.tag for o in built.first.images if o.component == COMMON)
    common = docker_client.images.get(common_tag)
    base = docker_client.images.get(BaseImageRecipe().tag)
    # the common image adds two layers to the base (the user, the venv); components add none
    assert len(common.attrs["RootFS"]["Layers"]) == len(base.attrs["RootFS"]["Layers"]) + 2
    for component in COMPONENTS:
        tag = built.first.tags[component.name]
        image = docker_client.images.get(tag)
        config = image.attrs["Config"]
        assert image.labels[LABEL_COMPONENT] == component.name
        assert tag.endswith(":" + image.labels[LABEL_RECIPE_DIGEST][:12])
        assert config["User"] == USER
        assert config["Entrypoint"] == list(component.entrypoint)
        assert not config["Cmd"]  # the base image's shell CMD does not leak through
        assert image.attrs["RootFS"]["Layers"] == common.attrs["RootFS"]["Layers"]
        history = json.dumps(image.history())
        assert "/tmp/wheels" not in history  # the wheels were only in the throwaway stage
    leftovers = docker_client.images.list(all=True, filters={"label": LABEL_BUILD_ID})
    assert leftovers == []


def test_enclave_runs_in_a_hardened_container(
    built: Built, docker_client: DockerClient, docker_resources: DockerResources
) -> None:
    for component in COMPONENTS:
        tag = built.first.tags[component.name]
        version = _run(
            docker_client,
            docker_resources,
            tag,
            ["--version"],
            entrypoint=[f"{VENV}/bin/enclave"],
        )
        assert (version.exit_code, version.output.strip()) == (0, f"enclave {__version__}")
        helped = _run(docker_client, docker_resources, tag, ["--help"])
        assert helped.exit_code == 0, helped.output
        assert f"Usage: enclave {' '.join(component.command)}" in helped.output


def test_the_user_owns_nothing_and_the_image_carries_no_installer(
    built: Built, docker_client: DockerClient, docker_resources: DockerResources
) -> None:
    script = (
        "id -u; id -g; "
        f"find / -xdev \\( -uid {USER_ID} -o -gid {USER_ID} \\) -print 2>/dev/null; "
        f"find {VENV} -perm /022 ! -type l -print; "
        f"test ! -e {VENV}/bin/pip && test ! -e /tmp/wheels && echo clean; "
        f"{VENV}/bin/python -c 'import pip' 2>/dev/null || echo no-pip"
    )
    result = _run(
        docker_client,
        docker_resources,
        built.first.tags["runtime"],
        ["-c", script],
        entrypoint=["/bin/sh"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(USER_ID), str(USER_ID), "clean", "no-pip"]


def test_a_second_call_builds_nothing_and_is_fast(
    built: Built, docker_client: DockerClient
) -> None:
    # the same wheelhouse: on a developer's machine the sources (and so the wheels) may change
    # while the test runs; the cached wheelhouse itself is covered by the unit tests
    start = time.perf_counter()
    again = build_service_images(
        docker_client,
        cache_dir=CACHE,
        wheelhouse=built.first.wheelhouse.directory,
        settings=built.settings,
    )
    elapsed = time.perf_counter() - start
    assert [o.built for o in again.images] == [False] * len(again.images)
    assert again.tags == built.first.tags
    assert elapsed < 3.0, f"an up-to-date check took {elapsed:.2f} s"


def test_a_wheelhouse_missing_a_dependency_fails_in_one_line_and_leaves_nothing(
    built: Built, docker_client: DockerClient, tmp_path: Path
) -> None:
    house = tmp_path / "wheels"
    house.mkdir()
    project = built.first.wheelhouse.project_wheel.filename
    shutil.copyfile(built.first.wheelhouse.directory / project, house / project)
    with pytest.raises(DockerError) as caught:
        build_service_images(
            docker_client, cache_dir=CACHE, wheelhouse=house, settings=built.settings
        )
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(r"building enclave-test-\w+/common:\w+: a RUN step exited 1: ERROR: ", message)
    assert "No matching distribution" in message
    stages = docker_client.images.list(all=True, filters={"label": LABEL_BUILD_ID})
    assert stages == []


def test_cli_images_list_json_shows_the_built_images(capsys: Output, built: Built) -> None:
    assert main(["--state-dir", str(STATE_DIR), "images", "list", "--json"]) == 0
    listed = {row["tag"]: row for row in json.loads(capsys.readouterr().out)}
    for outcome in built.first.images:
        row = listed[outcome.tag]
        assert row["component"] == outcome.component
        assert outcome.tag.endswith(":" + row["digest"][:12])
        assert row["size"] > 100_000_000
        assert row["created"].endswith("Z")
