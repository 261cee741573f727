"""The hvac adapter lets no foreign exception through, and says what went wrong."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import weakref
from pathlib import Path

import hvac.exceptions
import pytest
import requests

from enclave.errors import (
    EnclaveError,
    InputError,
    NotFoundError,
    VaultError,
    VaultForbiddenError,
    VaultNotFoundError,
    VaultSealedError,
    VaultUnavailableError,
)
from enclave.images import service as service_image
from enclave.vault.client import VaultConnection, connect, read_with_retry, translate
from enclave.vault.embedded import SERVICE_GID, SERVICE_UID
from enclave.vault.names import EnclavePaths
from enclave.vault.policies import ADMIN_POLICY, admin_rules, component_rules, render


@pytest.mark.parametrize(
    ("raised", "expected", "words"),
    [
        (hvac.exceptions.Forbidden(errors=["permission denied"]), VaultForbiddenError, "denied"),
        (hvac.exceptions.Unauthorized(), VaultForbiddenError, "not authenticated"),
        (hvac.exceptions.InvalidPath(), VaultNotFoundError, "not found"),
        (hvac.exceptions.VaultDown(), VaultSealedError, "sealed"),
        (hvac.exceptions.VaultNotInitialized(), VaultSealedError, "not initialised"),
        (hvac.exceptions.InvalidRequest(errors=["bad field"]), VaultError, "bad field"),
        (hvac.exceptions.InternalServerError(), VaultError, "InternalServerError"),
        (requests.exceptions.SSLError(), VaultUnavailableError, "TLS verification failed"),
        (requests.exceptions.ConnectionError(), VaultUnavailableError, "unreachable"),
        (requests.exceptions.ReadTimeout(), VaultUnavailableError, "unreachable"),
    ],
)
def test_translate_maps_every_foreign_error(
    raised: Exception, expected: type[EnclaveError], words: str
) -> None:
    with pytest.raises(expected) as caught, translate("read thing"):
        raise raised
    assert str(caught.value).startswith("vault: read thing: ")
    assert words in str(caught.value)
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, EnclaveError)


def test_not_found_has_the_not_found_exit_code() -> None:
    assert issubclass(VaultNotFoundError, NotFoundError)
    assert VaultNotFoundError.exit_code == NotFoundError.exit_code


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_vault_is_one_clear_error() -> None:
    connection = VaultConnection(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(VaultUnavailableError, match="vault: connect: unreachable"):
        connect(connection, "s.not-a-real-token")


def test_a_unix_socket_address_is_absolute(tmp_path: Path) -> None:
    socket_path = tmp_path / "bao.sock"
    connection = VaultConnection(f"unix://{socket_path}")
    assert connection.socket_path == str(socket_path)
    assert VaultConnection("https://127.0.0.1:8200").socket_path is None
    with pytest.raises(InputError, match=r"unix:///absolute/path"):
        VaultConnection("unix://run/bao.sock")


def test_a_missing_unix_socket_is_one_clear_error(tmp_path: Path) -> None:
    connection = VaultConnection(f"unix://{tmp_path / 'nothing.sock'}", timeout=2)
    with pytest.raises(VaultUnavailableError, match=r"^vault: connect: unreachable$"):
        connect(connection, "s.not-a-real-token")
    not_listening = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(not_listening))  # a socket file nobody listens on (a crashed server's)
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        connect(VaultConnection(f"unix://{not_listening}", timeout=2), "s.token")


def test_reads_retry_only_when_unreachable() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError
        return "ok"

    assert read_with_retry(flaky, "read") == "ok"
    assert len(calls) == 3

    def forbidden() -> str:
        calls.append(1)
        raise hvac.exceptions.Forbidden

    calls.clear()
    with pytest.raises(VaultForbiddenError):
        read_with_retry(forbidden, "read")
    assert len(calls) == 1  # a refusal is final: no retry


def test_workload_policies_have_no_sudo_and_no_broad_paths() -> None:
    paths = EnclavePaths("demo")
    for component in ("gateway", "model-assistant"):
        rules = component_rules(paths, component)
        text = render(rules)
        assert "sudo" not in text
        for rule in rules:
            assert rule.path != "*"
            assert rule.path.startswith(("enclave-demo-", "auth/token/")), rule.path
    controller = component_rules(paths, "controller")
    sudo = [r.path for r in controller if "sudo" in r.capabilities]
    assert sudo == [
        "sys/leases/lookup/auth/enclave-demo-approle/login/",
        "sys/leases/revoke-prefix/auth/enclave-demo-approle/login",
    ]
    assert "sys/seal" in render(component_rules(paths, "controller", seal=True))
    with pytest.raises(ValueError, match="unknown component"):
        component_rules(paths, "sidecar")


def test_the_orchestrator_cannot_rewrite_its_own_policy() -> None:
    def matches(rule: str, path: str) -> bool:  # Vault's glob: a trailing * is a prefix
        return path.startswith(rule[:-1]) if rule.endswith("*") else path == rule

    writable = [r.path for r in admin_rules() if {"create", "update"} & set(r.capabilities)]
    assert not [rule for rule in writable if matches(rule, f"sys/policies/acl/{ADMIN_POLICY}")]
    assert [rule for rule in writable if matches(rule, "sys/policies/acl/enclave-demo-gateway")]
    assert not [rule for rule in writable if matches(rule, "sys/policies/acl/root-ish")]


def test_the_vault_socket_is_shared_with_the_service_images_user() -> None:
    assert (SERVICE_UID, SERVICE_GID) == (service_image.USER_ID, service_image.GROUP_ID)


class _KeepAliveVault(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in that keeps connections open: seal status as set, lookup-self 403."""

    protocol_version = "HTTP/1.1"
    sealed = False
    closed: threading.Event

    def do_GET(self) -> None:
        if self.path.startswith("/v1/sys/seal-status"):
            self._answer(200, {"sealed": self.sealed, "initialized": True})
        else:
            self._answer(403, {"errors": ["permission denied"]})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def finish(self) -> None:  # the client closed its keep-alive connection
        super().finish()
        type(self).closed.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("sealed", "raised"), [(True, VaultSealedError), (False, VaultForbiddenError)]
)
def test_a_failed_connect_closes_its_connection(sealed: bool, raised: type[VaultError]) -> None:
    """The client ``connect`` made is closed when its check fails, not left to the collector."""

    class Handler(_KeepAliveVault):
        pass

    Handler.sealed, Handler.closed = sealed, threading.Event()
    handler = Handler
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with pytest.raises(raised) as failed:
                connect(VaultConnection(f"http://127.0.0.1:{server.server_port}"), "s.token")
            # ``failed`` keeps the frames (and so the client) alive: only a close ends it
            assert handler.closed.wait(5.0), "the failed client's connection is still open"
            assert failed.value is not None
        finally:
            server.shutdown()


def test_a_translated_error_does_not_keep_the_foreign_frames_alive() -> None:
    """The hvac error's frames held the HTTP response (its socket) until a garbage collection."""

    class Response:
        pass

    def failing_call() -> None:
        response = Response()
        seen.append(weakref.ref(response))
        raise hvac.exceptions.Forbidden(errors=["permission denied"])

    seen: list[weakref.ref[Response]] = []
    with pytest.raises(VaultForbiddenError) as failed, translate("read thing"):
        failing_call()
    assert failed.value.__context__ is not None  # the foreign error is still reachable...
    assert seen[0]() is None  # ...but not what its frames held
