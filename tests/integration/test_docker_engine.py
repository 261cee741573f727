"""The harness's Docker engine is real: an internal network has no way out.

The only traffic sent goes to a canary server this test starts itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import docker.errors
import pytest

from enclave.images.base import LABEL_COMPONENT, LABEL_RECIPE_DIGEST, BaseImageRecipe
from support.docker_engine import (
    HTTP_GET_PROBE,
    TCP_CONNECT_PROBE,
    UNREACHABLE_REASONS,
    DockerResources,
    container_ip,
    wait_for_http,
)

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

CANARY_PORT = 8080


def test_base_image_is_labelled_and_runs_python(
    docker_client: DockerClient, base_image: str, docker_resources: DockerResources
) -> None:
    recipe = BaseImageRecipe()
    assert base_image == recipe.tag
    labels = docker_client.images.get(base_image).labels
    assert labels[LABEL_COMPONENT] == "base"
    assert labels[LABEL_RECIPE_DIGEST] == recipe.digest

    result = docker_resources.run(
        base_image,
        ["python3", "-c", "import os, ssl, venv; print(os.getuid())"],
        role="python",
    )
    assert (result.exit_code, result.output.strip()) == (0, "65534")


def test_internal_network_cannot_reach_a_canary_outside(
    docker_client: DockerClient, base_image: str, docker_resources: DockerResources
) -> None:
    canary_net = docker_resources.network("canary")
    enclave_net = docker_resources.network("enclave", internal=True)
    assert enclave_net.attrs["Internal"] is True
    assert canary_net.attrs["Internal"] is False

    canary = docker_resources.container(
        base_image,
        ["python3", "-m", "http.server", str(CANARY_PORT), "--bind", "0.0.0.0"],
        role="canary",
        network=canary_net.name,
    )
    wait_for_http(canary, CANARY_PORT)
    canary_ip = container_ip(canary, canary_net)

    # Positive control: on the canary's own network the same server answers.
    reached = docker_resources.run(
        base_image,
        ["python3", "-c", HTTP_GET_PROBE, f"http://{canary_ip}:{CANARY_PORT}/", "5"],
        role="probe-canary-net",
        network=canary_net.name,
    )
    assert reached.exit_code == 0, reached.output
    assert reached.last_json()["status"] == 200

    # From the internal network there is no route to it.
    blocked = docker_resources.run(
        base_image,
        ["python3", "-c", TCP_CONNECT_PROBE, canary_ip, str(CANARY_PORT), "3"],
        role="probe-enclave-net",
        network=enclave_net.name,
    )
    assert blocked.exit_code == 0, blocked.output
    verdict = blocked.last_json()
    assert verdict["connected"] is False, verdict
    assert verdict["reason"] in UNREACHABLE_REASONS, verdict


def test_resources_are_removed_by_id(
    docker_client: DockerClient, base_image: str, test_run_id: str
) -> None:
    resources = DockerResources(docker_client, test_run_id)
    network = resources.network("cleanup", internal=True)
    container = resources.container(
        base_image, ["sleep", "30"], role="cleanup", network=network.name
    )
    assert container.labels["enclave.dev/test"] == test_run_id
    assert resources.cleanup() == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id or "")
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network.id or "")
