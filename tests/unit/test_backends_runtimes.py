"""Runtime adapters: the container each runtime gets, flag by flag."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main

from enclave.backends.runtimes import (
    BuiltinWeights,
    RuntimeContainer,
    WeightsMount,
    container_config,
)
from enclave.cli.runtime import app as runtime_cli
from enclave.errors import InputError
from enclave.spec import Model, Runtime

DIGEST = "ab" * 32
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL", "AUTH")


def model(runtime: str, path: str = "models/tiny", **extra: Any) -> Model:
    fields: dict[str, Any] = {
        "name": "assistant",
        "runtime": runtime,
        "image": f"registry.local/{runtime}:1",
        "weights": {"path": path, "sha256": DIGEST},
        **extra,
    }
    return Model.model_validate(fields)


def test_vllm() -> None:
    config = container_config(model("vllm"))
    assert config.command == (
        "--model", "/weights",
        "--served-model-name", "assistant",
        "--host", "0.0.0.0",
        "--port", "8000",
    )  # fmt: skip
    assert config.entrypoint is None  # the image's own: vllm serve / the OpenAI api_server
    assert (config.image, config.port, config.health_path) == (
        "registry.local/vllm:1",
        8000,
        "/health",
    )
    assert config.weights == WeightsMount(source="models/tiny", target="/weights", sha256=DIGEST)
    assert config.env["HF_HUB_OFFLINE"] == "1"
    assert config.env["VLLM_NO_USAGE_STATS"] == "1"


def test_vllm_with_one_gguf_file() -> None:
    config = container_config(model("vllm", "models/tiny.Q4.gguf"))
    assert config.command[:2] == ("--model", "/weights/tiny.Q4.gguf")
    assert config.weights is not None and config.weights.target == "/weights/tiny.Q4.gguf"


def test_llama_cpp() -> None:
    config = container_config(model("llama-cpp", "./models/tiny.gguf"))
    assert config.command == (
        "-m", "/weights/tiny.gguf",
        "--host", "0.0.0.0",
        "--port", "8080",
        "--alias", "assistant",
    )  # fmt: skip
    assert config.port == 8080
    assert config.health_path == "/health"
    assert config.weights == WeightsMount(
        source="./models/tiny.gguf", target="/weights/tiny.gguf", sha256=DIGEST
    )


def test_llama_cpp_needs_a_gguf_file() -> None:
    with pytest.raises(InputError, match=r"must name a \.gguf file"):
        container_config(model("llama-cpp", "models/tiny"))


def test_tgi() -> None:
    config = container_config(model("tgi"))
    assert config.command == (
        "--model-id", "/weights",
        "--hostname", "0.0.0.0",
        "--port", "8080",
    )  # fmt: skip
    assert config.port == 8080  # not the image's 80: binds without NET_BIND_SERVICE
    assert config.env["HF_HUB_OFFLINE"] == "1"
    assert config.env["USAGE_STATS"] == "off"
    assert config.weights is not None and config.weights.target == "/weights"


def test_reference_with_its_built_in_weights() -> None:
    spec = Model.model_validate({"name": "assistant"})
    builtin = BuiltinWeights("/var/lib/enclave/cache/reference-weights.json", DIGEST)
    config = container_config(spec, reference_image="enclave/runtime:abc", builtin=builtin)
    assert config.image == "enclave/runtime:abc"
    assert config.entrypoint == ("enclave",)
    assert config.command == (
        "runtime", "serve",
        "--weights", "/weights/reference-weights.json",
        "--sha256", DIGEST,
        "--host", "0.0.0.0",
        "--port", "8000",
        "--model-name", "assistant",
    )  # fmt: skip
    assert config.weights == WeightsMount(
        source=builtin.path, target="/weights/reference-weights.json", sha256=DIGEST
    )
    assert (config.port, config.health_path) == (8000, "/health")
    with pytest.raises(InputError, match="needs weights"):
        container_config(spec, reference_image="enclave/runtime:abc")
    with pytest.raises(InputError, match="no image"):
        container_config(spec, builtin=builtin)


def test_reference_with_weights_from_the_spec() -> None:
    config = container_config(model("reference", "weights/reference.json"))
    assert config.image == "registry.local/reference:1"
    assert config.weights == WeightsMount(
        source="weights/reference.json", target="/weights/reference.json", sha256=DIGEST
    )
    assert config.command[2:6] == ("--weights", "/weights/reference.json", "--sha256", DIGEST)


def test_the_reference_argv_is_what_enclave_runtime_serve_accepts() -> None:
    config = container_config(model("reference", "w.json", args=["--token-delay", "0.5"]))
    group = typer.main.get_command(runtime_cli)
    assert config.command[0] == "runtime"
    serve = group.get_command(group.make_context("runtime", ["serve"]), config.command[1])  # type: ignore[attr-defined]
    params = serve.make_context("serve", list(config.command[2:])).params
    assert params == {
        "weights": params["weights"],
        "sha256": DIGEST,
        "host": "0.0.0.0",
        "port": 8000,
        "model_name": "assistant",
        "token_delay": 0.5,
    }
    assert str(params["weights"]) == "/weights/w.json"


@pytest.mark.parametrize("runtime", [r.value for r in Runtime])
def test_spec_args_are_appended(runtime: str) -> None:
    path = "models/tiny.gguf" if runtime == "llama-cpp" else "models/tiny"
    plain = container_config(model(runtime, path))
    extra = ["--max-model-len", "2048", "--flag=value"]
    config = container_config(model(runtime, path, args=extra))
    assert config.command == (*plain.command, *extra)


@pytest.mark.parametrize("runtime", [r.value for r in Runtime])
def test_every_runtime_is_read_only_offline_and_secret_free(runtime: str) -> None:
    path = "models/tiny.gguf" if runtime == "llama-cpp" else "models/tiny"
    config = container_config(model(runtime, path))
    assert isinstance(config, RuntimeContainer)
    assert config.runtime is Runtime(runtime)
    assert config.name == "assistant"
    assert config.base_url == "/v1"
    assert config.health_path == "/health"
    assert config.weights is not None and config.weights.read_only
    assert config.weights.sha256 == DIGEST
    assert "/tmp" in config.tmpfs
    assert not [name for name in config.env if any(w in name.upper() for w in SECRET_WORDS)]
    if config.runtime is not Runtime.TGI:  # TGI answers to any model name
        assert "assistant" in config.command  # served under the spec's name


def test_a_custom_weights_mount() -> None:
    config = container_config(model("vllm"), weights_mount="/models/")
    assert config.weights is not None and config.weights.target == "/models"
    assert config.command[:2] == ("--model", "/models")
    for bad in ("weights", "/", ""):
        with pytest.raises(InputError, match="must be an absolute path"):
            container_config(model("vllm"), weights_mount=bad)


def test_weights_that_name_no_file() -> None:
    with pytest.raises(InputError, match="must name a file"):
        container_config(model("reference", ".."))
