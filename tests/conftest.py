"""Shared fixtures: the real Docker engine and a real OpenBao server.

Services a test needs are started here, once per session. When one is missing the test is
skipped locally and fails in CI (``CI=true``); see :func:`support.service_missing`.

Fixtures (other tests rely on these names and types):

- ``test_run_id`` (session) -> ``str``: labels everything this session creates.
- ``docker_client`` (session) -> ``docker.DockerClient``: a pinged engine client.
- ``base_image`` (session) -> ``str``: the offline base image's tag (built once, cached).
- ``docker_resources`` (function) -> ``DockerResources``: creates labelled containers and
  networks and removes them by id at teardown.
- ``openbao`` (session) -> ``OpenBaoServer``: a running, unsealed OpenBao.
- ``openbao_client`` (function) -> ``hvac.Client`` with the root token, closed after.
- ``workspace`` (function) -> ``Workspace``: a temp dir with the usage catalog, for spec tests.

Tests using the Docker fixtures are marked ``docker`` and those using OpenBao ``vault``
automatically; a test carrying either marker gets the service started (or skipped) even if it
asks for no fixture.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from enclave.errors import EnclaveError
from enclave.images.base import BaseImageRecipe, ensure_base_image
from support import STATE_DIR, private_dir, service_missing
from support.docker_engine import (
    DockerResources,
    connect_engine,
    new_run_id,
    remove_leftovers,
)
from support.openbao import (
    OpenBaoServer,
    OpenBaoStartError,
    bao_binary,
    hvac_client,
    running_openbao,
)
from support.workspace import Workspace, make_workspace

if TYPE_CHECKING:
    from pathlib import Path

    from docker import DockerClient

DOCKER_FIXTURES = frozenset({"docker_client", "base_image", "docker_resources"})
VAULT_FIXTURES = frozenset({"openbao", "openbao_client"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the services their fixtures need, so ``-m 'not docker'`` works."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)
        if names & VAULT_FIXTURES:
            item.add_marker(pytest.mark.vault)


@pytest.fixture(autouse=True)
def _services_for_markers(request: pytest.FixtureRequest) -> None:
    """A test marked ``docker`` or ``vault`` gets that service even without its fixture."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")
    if request.node.get_closest_marker("vault") is not None:
        request.getfixturevalue("openbao")


@pytest.fixture(autouse=True)
def _collect_what_the_test_dropped(request: pytest.FixtureRequest) -> Iterator[None]:
    """An integration or end-to-end test collects its garbage when it ends (after its own
    fixtures), so a connection or file it left open fails that test (``ResourceWarning`` is an
    error) instead of whichever later test a garbage collection happens to run in."""
    yield
    if "unit" not in request.node.path.parts:
        gc.collect()


@pytest.fixture(scope="session")
def test_run_id() -> str:
    """Unique per session; the value of the ``enclave.dev/test`` label."""
    return new_run_id()


@pytest.fixture(scope="session")
def docker_client(test_run_id: str) -> Iterator[DockerClient]:
    """A client for a running engine (started via scripts/ensure-docker.sh if needed).

    At session end anything still labelled with this run's id is removed by id, and its
    presence is reported as an error: the per-test tracker should have removed it.
    """
    client = connect_engine()
    try:
        yield client
        leaked = remove_leftovers(client, test_run_id)
        if leaked:
            pytest.fail(f"docker objects outlived their test (now removed): {leaked}")
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: DockerClient) -> str:
    """The offline base image's tag; the first build takes about a minute, then it is cached."""
    cache = private_dir(private_dir(STATE_DIR) / "cache")
    try:
        return ensure_base_image(docker_client, BaseImageRecipe(), cache)
    except EnclaveError as exc:
        service_missing(f"offline base image unavailable: {exc}")


@pytest.fixture
def docker_resources(docker_client: DockerClient, test_run_id: str) -> Iterator[DockerResources]:
    """Records every container and network a test creates; removes them by id afterwards."""
    resources = DockerResources(docker_client, test_run_id)
    try:
        yield resources
    finally:
        problems = resources.cleanup()
        if problems:
            pytest.fail(f"could not remove test docker objects: {problems}")


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """A real OpenBao server (raft storage, file audit device), initialised and unsealed."""
    bao = bao_binary()
    if not bao.is_file():
        service_missing(f"OpenBao binary not found at {bao} (install the dev extras)")
    try:
        with running_openbao(bao) as server:
            yield server
    except OpenBaoStartError as exc:
        pytest.fail(f"OpenBao did not start: {exc}")


@pytest.fixture
def openbao_client(openbao: OpenBaoServer) -> Iterator[Any]:
    """An ``hvac.Client`` authenticated with the root token; its session is closed after."""
    with hvac_client(openbao.address, openbao.root_token) as client:
        yield client


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A temp directory with the usage catalog in place; writes spec files (no service)."""
    return make_workspace(tmp_path)


@pytest.fixture(autouse=True)
def _restore_enclave_logging() -> Iterator[None]:
    """CLI tests configure the ``enclave`` logger (handlers, level, propagation): undo it."""
    logger = logging.getLogger("enclave")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
