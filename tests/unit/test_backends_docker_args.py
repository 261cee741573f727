"""What the Docker backend asks the engine for, read from the arguments it builds (no engine)."""

from __future__ import annotations

from pathlib import Path

from enclave.backends.desired import HostPaths, desired_state
from enclave.backends.docker import _create_args, container_health_ok
from enclave.backends.runtimes import BuiltinWeights
from enclave.spec import load_spec
from support.workspace import make_workspace

IMAGES = {"runtime": "enclave/runtime:aaa", "gateway": "enclave/gateway:bbb"}
PATHS = HostPaths("/s/spec", "enclave.yaml", "/s/gw", "/s/vault/run")


def test_every_container_is_asked_for_the_hardening(tmp_path: Path) -> None:
    loaded = load_spec(make_workspace(tmp_path).example())
    desired = desired_state(
        loaded, images=IMAGES, paths=PATHS, builtin=BuiltinWeights("/c/w.json", "ab" * 32)
    )
    model, gateway = (_create_args("demo", c) for c in desired.containers)
    for args in (model, gateway):
        assert args["read_only"] is True and args["privileged"] is False
        assert args["cap_drop"] == ["ALL"] and "cap_add" not in args
        assert args["security_opt"] == ["no-new-privileges:true"]
        assert args["user"] == "10001:10001" and args["ipc_mode"] == "private"
        assert args["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
        assert args["mem_limit"] == args["memswap_limit"] > 0
        assert args["nano_cpus"] > 0 and args["pids_limit"] > 0
        assert args["restart_policy"] == {"Name": "unless-stopped"}
        assert args["labels"]["enclave.dev/name"] == "demo"
        assert len(args["labels"]["enclave.dev/config"]) == 32
        for key in ("network_mode", "pid_mode", "userns_mode", "devices", "volumes"):
            assert key not in args
        assert all("docker.sock" not in str(m) for m in args["mounts"])
    assert "ports" not in model and "stdin_open" not in model
    assert model["network"] == "enclave-demo-internal"
    assert gateway["ports"] == {"8443/tcp": ("127.0.0.1", 8443)}
    assert gateway["stdin_open"] is True  # bootstrap material on stdin, StdinOnce
    assert not any("bootstrap" in str(v) and "/" in str(v) for v in gateway["environment"])
    assert container_health_ok(desired.containers[1]) == (200, 503)
    assert container_health_ok(desired.containers[0]) == (200,)
