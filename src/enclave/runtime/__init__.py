"""enclave's reference model runtime.

The reference model is a small, real language model: a word-level trigram model trained from
prose that enclave ships (``enclave/data/corpus``). It is served with the OpenAI API by
:func:`create_app` (Starlette) and ``enclave runtime serve`` (uvicorn), and stands in for
vLLM, llama.cpp and TGI in tests. How each runtime is run in a container (the reference one
included) is :mod:`enclave.backends.runtimes`.

::

    weights = load_weights(path, sha256)          # IntegrityError on a digest mismatch
    app = create_app(NgramModel(weights), model_name="assistant")
"""

from __future__ import annotations

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
    "DEFAULT_SEED",
    "EMBEDDING_DIMENSIONS",
    "Generation",
    "NgramModel",
    "NgramWeights",
    "RuntimeStats",
    "SamplingParams",
    "builtin_weights",
    "create_app",
    "embed",
    "load_weights",
    "reference_corpus",
    "serve",
    "train",
    "write_weights",
]
