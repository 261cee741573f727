"""enclave's reference model runtime, and adapters for the runtimes it stands in for.

The reference model is a small, real language model: a word-level trigram model trained from
prose that enclave ships (``enclave/data/corpus``). It is served with the OpenAI API by
:func:`create_app` (Starlette) and ``enclave runtime serve`` (uvicorn), and stands in for
vLLM, llama.cpp and TGI in tests. Those runtimes are run through :func:`container_config`.

::

    weights = load_weights(path, sha256)          # IntegrityError on a digest mismatch
    app = create_app(NgramModel(weights), model_name="assistant")
    config = container_config(spec.models[0])     # image, argv, port, health path, mount
"""

from __future__ import annotations

from enclave.runtime.adapters import (
    BUILTIN_WEIGHTS_PATH,
    REFERENCE_IMAGE,
    RuntimeContainer,
    WeightsMount,
    builtin_weights_sha256,
    container_config,
)
from enclave.runtime.app import RuntimeStats, create_app
from enclave.runtime.model import (
    DEFAULT_SEED,
    EMBEDDING_DIMENSIONS,
    Generation,
    NgramModel,
    SamplingParams,
    embed,
)
from enclave.runtime.server import serve
from enclave.runtime.weights import (
    NgramWeights,
    builtin_weights,
    load_weights,
    reference_corpus,
    train,
    write_weights,
)

__all__ = [
    "BUILTIN_WEIGHTS_PATH",
    "DEFAULT_SEED",
    "EMBEDDING_DIMENSIONS",
    "REFERENCE_IMAGE",
    "Generation",
    "NgramModel",
    "NgramWeights",
    "RuntimeContainer",
    "RuntimeStats",
    "SamplingParams",
    "WeightsMount",
    "builtin_weights",
    "builtin_weights_sha256",
    "container_config",
    "create_app",
    "embed",
    "load_weights",
    "reference_corpus",
    "serve",
    "train",
    "write_weights",
]
